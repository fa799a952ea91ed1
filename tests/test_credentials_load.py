"""Credentials under concurrent logins: generation-6 index classes and group commit for token writes.

codx-junior's login is authenticate + issue_token, so under load many threads (and processes)
issue tokens at once (docs/design/load.md §3.4). No timing assertions: only outcomes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import ZODB
from BTrees.OOBTree import OOBTree, OOTreeSet

from db.check import check, repair
from db.database import Database, UnitOfWork
from db.errors import InvalidUserData
from db.models import USERS_KEY
from db.settings import CodxJuniorGlobalSettings
from db.storage import open_storage
from db.user_db import UserDB
from db.users import credentials
from db.users.credentials import CREDENTIALS_KEY, CredentialStore
from db.users.indexes import IndexSet, IndexTree
from migrations import runner
from tests.conftest import ROOT, make_settings, settings_env
from tests.test_generation6 import generation5_database
from tests.test_group_commit import Calls, busy_leader, history_db, stats, wait_queued  # noqa: F401 - a fixture

PASSWORD = "violet-harbour-tide"
THREADS = 16
LOGINS = 10
HANG = 300.0
NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)

# The store's indexes and the class each has from generation 6 on.
CREDENTIAL_CLASSES = {
    "tokens": IndexTree,
    "tokens_by_user": IndexTree,
    "token_expiry": IndexSet,
    "api_keys": IndexTree,
    "api_keys_by_user": IndexTree,
}


def store_of(database: Database) -> Any:
    """Run ``fn`` on the credential store in a unit of work."""
    return lambda fn: database.run(lambda uow: fn(uow.root[CREDENTIALS_KEY]))


def layout(store: CredentialStore) -> dict[str, Any]:
    """Each index's class, and the classes of the per-user digest sets."""
    found: dict[str, Any] = {name: type(getattr(store, name)) for name in CREDENTIAL_CLASSES}
    for name in ("tokens_by_user", "api_keys_by_user"):
        found[f"{name} sets"] = {type(digests) for digests in getattr(store, name).values()}
    return found


def login(users: UserDB, username: str) -> str:
    """What codx-junior's login does: check the password, then issue a token."""
    user = users.authenticate(username, PASSWORD)
    assert user is not None and user.username == username
    return users.issue_token(username)


def run_threads(count: int, target: Any) -> list[BaseException]:
    errors: list[BaseException] = []

    def guarded(index: int) -> None:
        try:
            target(index)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller's assertion
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HANG)
        assert not thread.is_alive()
    return errors


def assert_tokens(database: Database, issued: dict[str, list[str]]) -> None:
    """Every token finds its user; the store holds exactly these tokens; check is clean."""
    users = UserDB(database)
    for username, tokens in issued.items():
        assert len(set(tokens)) == len(tokens) == LOGINS
        for token in tokens:
            found = users.get_by_token(token)
            assert found is not None and found.username == username
    total = sum(len(tokens) for tokens in issued.values())
    sizes = store_of(database)(
        lambda s: (len(s.tokens), len(s.token_expiry), [len(d) for d in s.tokens_by_user.values()])
    )
    assert sizes == (total, total, [LOGINS] * len(issued))
    assert store_of(database)(layout) == {
        **CREDENTIAL_CLASSES,
        "tokens_by_user sets": {IndexSet},
        "api_keys_by_user sets": set(),
    }
    report = check(database)
    assert report.ok, report.problems
    assert report.warnings == []


@pytest.fixture
def shared(persistent_settings: CodxJuniorGlobalSettings) -> Iterator[Database]:
    database = Database(persistent_settings)
    yield database
    database.close()


@pytest.mark.slow
def test_sixteen_threads_logging_in_get_working_tokens(shared: Database) -> None:
    users = UserDB(shared)
    names = [f"user{i:02d}" for i in range(THREADS)]
    for name in names:
        users.create(username=name, password=PASSWORD)
    issued: dict[str, list[str]] = {name: [] for name in names}

    def logins(index: int) -> None:
        for _ in range(LOGINS):
            issued[names[index]].append(login(users, names[index]))

    assert run_threads(THREADS, logins) == []
    assert_tokens(shared, issued)


CHILD = """
import json, sys, threading
from db.database import Database
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB

database = Database(CodxJuniorGlobalSettings.load())
users = UserDB(database)
names = sys.argv[1:]
issued = {name: [] for name in names}
errors = []

def logins(name):
    try:
        for _ in range(LOGINS):
            assert users.authenticate(name, PASSWORD) is not None
            issued[name].append(users.issue_token(name))
    except BaseException as exc:
        errors.append(repr(exc))

threads = [threading.Thread(target=logins, args=(name,)) for name in names]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
database.close()
print(json.dumps({"issued": issued, "errors": errors}))
""".replace("LOGINS", str(LOGINS)).replace("PASSWORD", repr(PASSWORD))


@pytest.mark.postgres
@pytest.mark.slow
def test_two_processes_of_eight_threads_logging_in(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    settings = make_settings("postgres", request, tmp_path)
    database = Database(settings)
    try:
        names = [f"user{i:02d}" for i in range(THREADS)]
        users = UserDB(database)
        for name in names:
            users.create(username=name, password=PASSWORD)
        env = settings_env(settings)
        env["PYTHONPATH"] = str(ROOT)
        halves = [names[: THREADS // 2], names[THREADS // 2 :]]
        children = [
            subprocess.Popen(
                [sys.executable, "-c", CHILD, *half],
                env=env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for half in halves
        ]
        issued: dict[str, list[str]] = {}
        for child in children:
            stdout, stderr = child.communicate(timeout=HANG)
            assert child.returncode == 0, stderr
            result = json.loads(stdout.strip().splitlines()[-1])
            assert result["errors"] == []
            issued.update(result["issued"])
        assert sorted(issued) == names
        assert_tokens(database, issued)
    finally:
        database.close()


@pytest.mark.slow
def test_revoking_all_tokens_of_a_user_while_others_log_in(shared: Database) -> None:
    """Tokens of the victim acknowledged before the revoke was called never survive it.

    A token whose issue was still under way when revoke_tokens was called may have committed
    before the revoke (then it is removed and counted) or after (then it survives): either is
    right, and the only thing the outside can tell is the total: every victim token is either
    counted by the revoke or still works, never both, never neither. A token issued after the
    revoke returned works.
    """
    users = UserDB(shared)
    names = ["victim", *(f"other{i}" for i in range(7))]
    for name in names:
        users.create(username=name)
    lock = threading.Lock()
    acknowledged: list[tuple[str, str, bool]] = []  # (username, token, issue started after the revoke returned)
    revoked, stop = threading.Event(), threading.Event()
    victim_tokens = threading.Semaphore(0)

    def issuer(index: int) -> None:
        name = names[index % len(names)] if index < len(names) else "victim"
        for _ in range(200):  # bounded: stop is set long before
            if stop.is_set():
                return
            after = revoked.is_set()
            token = users.issue_token(name)
            with lock:
                acknowledged.append((name, token, after))
            if name == "victim":
                victim_tokens.release()

    calls = Calls()
    for index in range(len(names) + 3):  # four threads issue for the victim
        calls.start(f"issuer{index}", lambda index=index: issuer(index))
    for _ in range(6):
        assert victim_tokens.acquire(timeout=HANG)
    with lock:
        before_call = [token for name, token, _ in acknowledged if name == "victim"]
    count = users.revoke_tokens("victim")
    revoked.set()
    while True:  # until a victim token issued after the revoke returned is acknowledged
        assert victim_tokens.acquire(timeout=HANG)
        with lock:
            if any(after for name, _, after in acknowledged if name == "victim"):
                break
    stop.set()
    outcomes = calls.join()
    assert all(outcome is None for outcome in outcomes.values()), outcomes

    assert len(before_call) >= 6 and count >= len(before_call)
    for token in before_call:
        assert users.get_by_token(token) is None
    victim = [(token, after) for name, token, after in acknowledged if name == "victim"]
    dead = [token for token, _ in victim if users.get_by_token(token) is None]
    assert len(dead) == count  # each victim token was removed by the revoke or works, never both
    assert all(users.get_by_token(token) is not None for token, after in victim if after)
    assert all(users.get_by_token(token) is not None for name, token, _ in acknowledged if name != "victim")
    alive = len(victim) - count
    assert store_of(shared)(lambda s: len(s.tokens_by_user.get(users.get("victim").id, ()))) == alive
    report = check(shared)
    assert report.ok, report.problems


def test_a_deactivation_committed_meanwhile_makes_the_token_write_retry(database: Database) -> None:
    """The token write reads its user as current: a deactivation committed meanwhile conflicts with it.

    The clock is read inside the token's unit of work, after the user was read: there the
    user is deactivated and committed by another thread. Without the readCurrent the token
    would be stored for an inactive user and work again after a reactivation.
    """
    UserDB(database).create(username="alice")
    calls = [0]

    def clock() -> datetime:
        calls[0] += 1
        if calls[0] == 1:

            def deactivate() -> None:
                with database.transaction():  # its own unit of work, outside the group-commit queue
                    UserDB(database).update("alice", disabled=True)

            thread = threading.Thread(target=deactivate)
            thread.start()
            thread.join(HANG)
        return NOW

    users = UserDB(database, clock=clock)
    with pytest.raises(InvalidUserData, match="disabled"):
        users.issue_token("alice")
    assert calls[0] == 1  # the retry read the deactivated user and stopped before the clock
    UserDB(database).update("alice", is_active=True)
    assert store_of(database)(lambda s: len(s.tokens)) == 0


def test_credential_writes_of_a_shared_batch_name_their_actors(history_db: Database) -> None:  # noqa: F811
    alice, bob = UserDB(history_db, actor="alice@codx"), UserDB(history_db, actor="bob@codx")
    for name in ("dave", "erin"):
        alice.create(username=name)
    calls = Calls()
    with busy_leader(history_db):
        calls.start("a", lambda: alice.set_password_if_unset("dave", "a-long-passw0rd-indeed"))
        calls.start("b", lambda: bob.set_password_if_unset("erin", "another-long-passw0rd"))
        calls.start("t", lambda: bob.issue_token("dave"))
        wait_queued(history_db, 3)
    assert calls.join() == {"a": True, "b": True, "t": calls.outcomes["t"]}
    assert stats(history_db).sizes.get(3) == 1  # one shared transaction
    assert alice.history("dave")[0].by == "alice@codx"
    assert alice.history("erin")[0].by == "bob@codx"
    assert alice.get_by_token(calls.outcomes["t"]).username == "dave"  # type: ignore[union-attr]


# -- generation 6 converts an existing store -----------------------------------------------------------


def old_layout_store() -> CredentialStore:
    """A store as every database before generation 6 has it: BTrees' own classes."""
    store = CredentialStore()
    for name, cls in CREDENTIAL_CLASSES.items():
        setattr(store, name, OOTreeSet() if cls is IndexSet else OOBTree())
    return store


def generation5_with_credentials(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Any, dict]:
    settings = generation5_database(backend, tmp_path, request)
    secrets: dict[str, Any] = {"tokens": {}, "keys": {}, "imported": {}}
    with runner.open_for_migration(settings) as zodb, zodb.transaction() as conn:
        container = conn.root()[USERS_KEY]
        store = conn.root()[CREDENTIALS_KEY] = old_layout_store()
        active = [user for user in container.users.values() if user.is_active][:400]
        for number, user in enumerate(active):
            secrets["tokens"].setdefault(user.username, []).extend(
                credentials.issue_token(store, user.id, timedelta(days=1), NOW) for _ in range(1 + number % 2)
            )
            if number % 4 == 0:
                secrets["keys"][user.username] = credentials.create_api_key(store, user.id, "ci", NOW)
            if number % 50 == 0:
                key = f"imported-{number}-key"
                assert credentials.import_api_key(store, user.id, key, "junior", NOW)
                secrets["imported"][user.username] = key
        for name in ("tokens_by_user", "api_keys_by_user"):  # the per-user sets too
            index = getattr(store, name)
            for user_id in list(index):
                index[user_id] = OOTreeSet(index[user_id])
    return settings, secrets


def stored_layout(settings: CodxJuniorGlobalSettings) -> dict[str, Any]:
    zodb = ZODB.DB(open_storage(settings))
    try:
        with zodb.transaction() as conn:
            store = conn.root()[CREDENTIALS_KEY]
            return {
                **layout(store),
                "oids": {name: getattr(store, name)._p_oid for name in CREDENTIAL_CLASSES},
                "sizes": {name: len(getattr(store, name)) for name in CREDENTIAL_CLASSES},
                "rebuilding": "rebuilding" in store.__dict__,
            }
    finally:
        zodb.close()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["file", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_evolve6_converts_the_credential_store(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    settings, secrets = generation5_with_credentials(backend, tmp_path, request)
    before = stored_layout(settings)
    assert before["tokens"] is OOBTree and before["tokens_by_user sets"] == {OOTreeSet}
    tokens = sum(len(t) for t in secrets["tokens"].values())
    assert before["sizes"]["tokens"] == tokens > 500

    messages: list[str] = []
    with runner.open_for_migration(settings) as zodb:
        runner.evolve(zodb, batch_size=100, progress=lambda message, done, total: messages.append(message))
    assert any("tokens index" in message for message in messages)
    after = stored_layout(settings)
    assert {name: after[name] for name in CREDENTIAL_CLASSES} == CREDENTIAL_CLASSES
    assert after["tokens_by_user sets"] == after["api_keys_by_user sets"] == {IndexSet}
    assert after["sizes"] == before["sizes"] and not after["rebuilding"]

    database = Database(settings)
    try:
        users = UserDB(database, clock=lambda: NOW)
        for username, issued in secrets["tokens"].items():
            for token in issued:
                assert users.get_by_token(token).username == username  # type: ignore[union-attr]
        for username, key in [*secrets["keys"].items(), *secrets["imported"].items()]:
            assert users.get_by_api_key(key).username == username  # type: ignore[union-attr]
        report = check(database)
        assert report.ok, report.problems
        assert [w for w in report.warnings if w.code == "index-old-layout"] == []
        name = next(iter(secrets["tokens"]))
        assert users.revoke_tokens(name) == len(secrets["tokens"][name])
        assert users.get_by_token(users.issue_token(name)).username == name  # type: ignore[union-attr]
    finally:
        database.close()

    # Twice: nothing to do, and a re-run of the step keeps the same objects.
    with runner.open_for_migration(settings) as zodb:
        assert runner.evolve(zodb) == []
    again = stored_layout(settings)
    assert again["oids"] == after["oids"]


def test_a_fresh_store_has_the_new_classes(database: Database) -> None:
    users = UserDB(database)
    users.create(username="alice")
    users.issue_token("alice")
    users.create_api_key("alice", "ci")
    found = store_of(database)(layout)
    assert found == {**CREDENTIAL_CLASSES, "tokens_by_user sets": {IndexSet}, "api_keys_by_user sets": {IndexSet}}


def test_check_warns_about_an_old_class_credential_index(database: Database) -> None:
    users = UserDB(database)
    users.create(username="alice")
    users.issue_token("alice")

    def downgrade(uow: UnitOfWork) -> None:
        store = uow.root[CREDENTIALS_KEY]
        store.tokens = OOBTree(store.tokens)

    database.run(downgrade)
    report = check(database)
    assert report.ok, report.problems
    assert [w.code for w in report.warnings] == ["index-old-layout"]
    assert "tokens" in report.warnings[0].message


def test_check_finds_a_token_missing_from_its_user_set(database: Database) -> None:
    users = UserDB(database)
    user_id = users.create(username="alice").id
    users.issue_token("alice")
    users.issue_token("alice")

    def drop_one(uow: UnitOfWork) -> None:
        digests = uow.root[CREDENTIALS_KEY].tokens_by_user[user_id]
        digests.remove(digests.minKey())

    database.run(drop_one)
    report = check(database)
    assert [p.code for p in report.problems] == ["credential-inconsistent"] * 2  # the record, and the totals
    assert not report.repairable


def test_two_first_logins_in_one_batch_exactly_one_wins(database: Database) -> None:
    users = UserDB(database)
    users.create(username="admin", is_superuser=True)
    calls = Calls()
    with busy_leader(database):
        for password in ("violet-harbour-tide", "amber-meadow-stream"):
            calls.start(password, lambda password=password: users.set_password_if_unset("admin", password))
        wait_queued(database, 2)
    outcomes = calls.join()
    assert stats(database).sizes.get(2) == 1  # both in one transaction: the second sees the first's password
    assert sorted(outcomes.values()) == [False, True], outcomes
    winner = next(password for password, won in outcomes.items() if won)
    loser = next(password for password, won in outcomes.items() if not won)
    assert users.authenticate("admin", winner) is not None and users.authenticate("admin", loser) is None


def orphan_alice(database: Database) -> tuple[str, str, str]:
    """alice with a token and an API key, then removed as code before 1e7c964 could leave her:
    the user gone, her credentials kept (a deletion racing a login)."""
    users = UserDB(database)
    user_id = users.create(username="alice").id
    token, key = users.issue_token("alice"), users.create_api_key("alice", "ci")

    def remove_user_only(uow: UnitOfWork) -> None:
        container = uow.root[USERS_KEY]
        container.remove(container.users[user_id])

    database.run(remove_user_only)
    return user_id, token, key


def test_check_finds_credentials_whose_user_is_gone_and_repair_drops_them(database: Database) -> None:
    users = UserDB(database)
    users.create(username="bob")
    bob_token = users.issue_token("bob")
    user_id, token, key = orphan_alice(database)

    report = check(database)
    orphans = [p for p in report.problems if p.code == "credential-orphan"]
    assert [p.code for p in report.problems] == ["credential-orphan"] * 2, report.problems
    assert all(user_id in p.message for p in orphans)
    assert report.repairable

    result = repair(database)
    assert result.repaired and result.after.ok, result.after.problems
    assert any("credential" in fix for fix in result.fixed), result.fixed

    def left(uow: UnitOfWork) -> tuple[int, int, bool, bool]:
        store = uow.root[CREDENTIALS_KEY]
        return (
            len(store.tokens),
            len(store.api_keys),
            user_id in store.tokens_by_user,
            user_id in store.api_keys_by_user,
        )

    assert database.run(left) == (1, 0, False, False)  # bob's token only
    assert users.get_by_token(bob_token) is not None
    assert users.get_by_token(token) is None and users.get_by_api_key(key) is None
