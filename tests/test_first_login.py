"""First login (issue 13 item 3) and the password policy on new clear passwords (item 7) through UserDB."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import bcrypt
import pytest

from db.database import Database, UnitOfWork
from db.errors import InvalidUserData, UserNotFound
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB

T = TypeVar("T")
P1, P2 = "violet-harbour-tide", "amber-canyon-drift"


@pytest.fixture
def users(database: Database) -> UserDB:
    return UserDB(database)


def test_the_first_password_is_set_once(users: UserDB) -> None:
    users.create(username="dave")
    assert users.has_password("Dave") is False
    token = users.issue_token("dave")  # a GitHub login may have issued one before any password
    assert users.set_password_if_unset("dave", P1) is True
    assert users.has_password("dave") is True
    assert users.set_password_if_unset("DAVE", P2) is False
    assert users.authenticate("dave", P1) is not None and users.authenticate("dave", P2) is None
    assert users.get_by_token(token) is not None  # setting a first password ends no session


def test_first_login_is_refused_to_inactive_and_unknown_users(users: UserDB) -> None:
    users.create(username="off", is_active=False)
    assert users.set_password_if_unset("off", P1) is False
    assert users.has_password("off") is False
    for call in (lambda: users.has_password("ghost"), lambda: users.set_password_if_unset("ghost", P1)):
        with pytest.raises(UserNotFound):
            call()
    with pytest.raises(InvalidUserData, match="username: must be a string"):
        users.has_password(None)  # type: ignore[arg-type]


class GatedDatabase(Database):
    """A real Database whose units of work wait at a barrier before committing, on their first attempt only.

    Two threads making the same calls then overlap in each unit of work: both read the user
    before either commits. ``calls`` counts how many times each unit of work's body ran
    (a conflict makes ``Database.run`` run it again).
    """

    def __init__(self, settings: CodxJuniorGlobalSettings, parties: int) -> None:
        super().__init__(settings)
        self.barrier = threading.Barrier(parties, timeout=60)
        self.gated = threading.Event()
        self.calls = 0
        self.lock = threading.Lock()

    def run(
        self,
        fn: Callable[[UnitOfWork], T],
        note: str | None = None,
        user: str | None = None,
        retries: int | None = None,
    ) -> T:
        first = [True]

        def gated(uow: UnitOfWork) -> T:
            with self.lock:
                self.calls += 1
            result = fn(uow)
            if self.gated.is_set() and first[0]:
                first[0] = False
                self.barrier.wait()
            return result

        return super().run(gated, note, user, retries)


@pytest.fixture
def gated(persistent_settings: CodxJuniorGlobalSettings) -> Iterator[GatedDatabase]:
    # Each write in its own unit of work, as two processes' writes are: the conflict and its
    # retry are what this races. Threads of one process share a batch instead (group commit:
    # tests/test_credentials_load.py races them there).
    database = GatedDatabase(persistent_settings.model_copy(update={"db_group_commit": False}), parties=2)
    yield database
    database.close()


def test_two_racing_first_logins_exactly_one_wins(gated: GatedDatabase) -> None:
    users = UserDB(gated)
    users.create(username="admin", is_superuser=True)
    results: dict[str, Any] = {}

    def first_login(password: str) -> None:
        try:
            if not users.has_password("admin"):
                results[password] = users.set_password_if_unset("admin", password)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            results[password] = exc

    gated.gated.set()
    gated.calls = 0
    threads = [threading.Thread(target=first_login, args=(password,)) for password in (P1, P2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    gated.gated.clear()

    assert sorted(results.values()) == [False, True], results
    # Each thread ran has_password, the policy's read of the user and the write: 6 bodies;
    # the loser's write conflicted and ran again, now seeing the winner's password.
    assert gated.calls == 7
    winner = P1 if results[P1] else P2
    loser = P2 if winner == P1 else P1
    assert users.authenticate("admin", winner) is not None
    assert users.authenticate("admin", loser) is None


# -- the password policy: new clear passwords only -------------------------------------------------


@pytest.fixture
def strict() -> Iterator[UserDB]:
    database = Database(CodxJuniorGlobalSettings.load(db_backend="memory", db_password_min_length=20))
    yield UserDB(database)
    database.close()


def test_every_new_clear_password_passes_the_policy(strict: UserDB) -> None:
    short = "tide-harbour-1"  # 14 characters
    with pytest.raises(InvalidUserData, match="password: must be at least 20 characters"):
        strict.create(username="ann", password=short)
    assert strict.find("ann") is None
    strict.create(username="ann", email="ann.smith@example.com")
    for call in (lambda: strict.set_password("ann", short), lambda: strict.set_password_if_unset("ann", short)):
        with pytest.raises(InvalidUserData, match="at least 20"):
            call()
    assert strict.has_password("ann") is False
    # The similarity rule sees the stored user (its name and email), read before hashing.
    with pytest.raises(InvalidUserData, match="too similar to the email address"):
        strict.set_password("ann", "ann.smith@example.com!")
    with pytest.raises(InvalidUserData) as excinfo:
        strict.import_users(
            [{"username": "bo", "password": P1 + "-long-enough"}, {"username": "cy", "password": short}]
        )
    assert excinfo.value.errors == ["records[1].password: must be at least 20 characters"]
    assert strict.count() == 1
    assert strict.set_password_if_unset("ann", P1 + "-long-enough") is True


def test_imported_hashes_and_logins_never_go_through_the_policy(strict: UserDB) -> None:
    legacy = bcrypt.hashpw(b"short1", bcrypt.gensalt(rounds=4)).decode()  # codx-junior's bcrypt, 6 characters
    assert strict.import_users([{"username": "old", "password_hash": legacy}]) == 1
    assert strict.authenticate("old", "short1") is not None  # verified, then rehashed to argon2id
    assert strict.authenticate("old", "short1") is not None  # and the argon2id hash works too


def test_the_policy_length_governs_not_a_hard_minimum() -> None:
    database = Database(
        CodxJuniorGlobalSettings.load(db_backend="memory", db_password_min_length=1, db_password_validators="length")
    )
    try:
        users = UserDB(database)
        users.create(username="pin", password="7")
        assert users.authenticate("pin", "7") is not None
        with pytest.raises(InvalidUserData, match="password: must not be empty"):
            users.set_password("pin", "")
    finally:
        database.close()
