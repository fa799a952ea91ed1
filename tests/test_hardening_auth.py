"""Hardening (issue 11, items 2, 3 and part of 8): no page, stored hash or echoed value can hang or flood.

* a page past the end answers at once, however large the offset (and a drifted count
  cannot make a filtered walk run past the last user);
* a password hash whose cost would hold a worker for minutes is refused at import, and
  ``authenticate`` refuses one already stored without hashing it;
* an error about a 100 kB value quotes a short cut of it and names the field.

The hang tests carry a ``timeout`` mark: before the fixes they ran for hours, and the mark
turns that into a failure (no timed assertion).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import argon2
import bcrypt
import pytest

from db import passwords
from db.database import Database
from db.errors import CodxDBError, CodxJuniorFileError, InvalidUserData
from db.importer import import_codx_junior
from db.models import USERS_KEY
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB
from tests.conftest import run_cli

PASSWORD = "correct horse battery"
HUGE = 10**15  # 1e15 / 20,000 users per GC step: ~5e10 empty steps before the fix
BIG = "a" * 100_000  # a 100 kB value
SHORT = 300  # an error message quoting BIG must stay below this


@pytest.fixture
def users(database: Database) -> UserDB:
    return UserDB(database)


@pytest.fixture
def memory_db() -> Iterator[Database]:
    database = Database(CodxJuniorGlobalSettings.load(db_backend="memory"))
    yield database
    database.close()


def _store_hash(database: Database, username: str, stored_hash: str) -> None:
    """Write a hash as an older codx-db version could have (no bounds then)."""

    def write(uow: Any) -> None:
        uow.root[USERS_KEY].find_by_username(username).password_hash = stored_hash

    database.run(write)


def _bcrypt_like(cost: int) -> str:
    """A well-formed bcrypt hash string of this cost (verifying it costs 2**cost rounds)."""
    return f"$2b${cost:02d}$" + "N9qo8uLOickgx2ZMRZoMye" + "IjZAgcfl7p92ldGxad68LJZdL17lhWy"


def _argon2_like(m: int, t: int, p: int) -> str:
    """A well-formed argon2id hash string with these parameters."""
    return f"$argon2id$v=19$m={m},t={t},p={p}$c29tZXNhbHRzb21lc2FsdA$" + "A" * 43


OVERSIZED = [
    pytest.param(_bcrypt_like(31), id="bcrypt-cost-31"),
    pytest.param(_bcrypt_like(15), id="bcrypt-cost-15"),
    pytest.param(_argon2_like(4 * 1024 * 1024, 3, 1), id="argon2-m-4GiB"),
    pytest.param(_argon2_like(65_536, 100_000, 1), id="argon2-t-100000"),
    pytest.param(_argon2_like(65_536, 3, 255), id="argon2-p-255"),
    pytest.param(_argon2_like(262_144, 5, 1), id="argon2-memory-x-time"),
]


# -- item 2: a page past the end -------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_page_past_the_end_answers_at_once(users: UserDB) -> None:
    users.create(username="alice")
    users.create(username="bob", is_active=False)
    assert [u.username for u in users.list(offset=1)] == ["bob"]
    assert users.list(offset=2) == []
    assert users.list(offset=HUGE) == []
    assert users.list(offset=HUGE, active=True) == []
    assert users.list(offset=HUGE, active=False, prefix="b") == []
    assert users.list(offset=10**100) == []  # beyond sys.maxsize too: no OverflowError


@pytest.mark.timeout(60)
def test_a_filtered_deep_page_stops_at_the_last_user_even_with_a_drifted_count(users: UserDB) -> None:
    # The count (a BTrees Length) can drift from the index (`codx-db check` reports it):
    # an offset below that count must still stop walking at the last user.
    users.create(username="alice")
    users.create(username="bob", is_active=False)
    users.database.run(lambda uow: uow.root[USERS_KEY].length.set(2 * HUGE))
    assert users.list(offset=HUGE, active=True) == []
    assert users.list(offset=HUGE, prefix="a") == []
    assert users.list(offset=HUGE) == []
    assert [u.username for u in users.list(offset=1, active=None)] == ["bob"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("offset", ["100000000000000", str(10**40)])
def test_cli_list_with_a_huge_offset_answers_at_once(
    persistent_settings: CodxJuniorGlobalSettings, offset: str
) -> None:
    database = Database(persistent_settings)
    UserDB(database).create(username="alice")
    database.close()
    result = run_cli(persistent_settings, "--json", "user", "list", "--offset", offset, timeout=100)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


# -- item 3: password hashes whose cost would hang a login ----------------------------------------


@pytest.mark.parametrize("stored_hash", OVERSIZED)
def test_import_refuses_a_hash_beyond_the_cost_bounds(memory_db: Database, stored_hash: str) -> None:
    users = UserDB(memory_db)
    records = [{"username": "fine", "password": PASSWORD}, {"username": "mallory", "password_hash": stored_hash}]
    with pytest.raises(InvalidUserData) as info:
        users.import_users(records)
    message = str(info.value)
    assert "records[1].password_hash:" in message
    assert stored_hash not in message and stored_hash[7:29] not in message  # nor its salt
    assert users.count() == 0


@pytest.mark.parametrize(
    "stored_hash",
    [
        pytest.param(_bcrypt_like(4), id="bcrypt-cost-4"),
        pytest.param(_bcrypt_like(14), id="bcrypt-cost-14"),
        pytest.param(_argon2_like(262_144, 4, 16), id="argon2-256MiB-t4-p16"),
        pytest.param(_argon2_like(102_400, 10, 1), id="argon2-100MiB-t10"),
        pytest.param(_argon2_like(8, 1, 1), id="argon2-weak"),  # weak is rehashed at login, not refused
    ],
)
def test_import_accepts_hashes_within_the_bounds(memory_db: Database, stored_hash: str) -> None:
    assert UserDB(memory_db).import_users([{"username": "legacy", "password_hash": stored_hash}]) == 1


@pytest.mark.parametrize("stored_hash", [p for p in OVERSIZED if p.id.startswith("bcrypt")])
def test_codx_junior_import_refuses_a_bcrypt_cost_beyond_the_bounds(
    memory_db: Database, tmp_path: Path, stored_hash: str
) -> None:
    path = tmp_path / "global_settings.json"
    path.write_text(
        json.dumps(
            {
                "users": [{"username": "alice"}, {"username": "mallory"}],
                "user_logins": [
                    {"username": "alice", "password": bcrypt.hashpw(b"x", bcrypt.gensalt(rounds=4)).decode()},
                    {"username": "mallory", "password": stored_hash},
                ],
            }
        )
    )
    with pytest.raises(CodxJuniorFileError) as info:
        import_codx_junior(memory_db, path)
    message = str(info.value)
    assert "user_logins[1] ('mallory'): password" in message
    assert "cost" in message
    assert stored_hash not in message
    assert UserDB(memory_db).count() == 0


# method="thread": a hash runs in C without returning to Python, where the default
# (signal) timeout could not interrupt it.
@pytest.mark.timeout(60, method="thread")
@pytest.mark.parametrize("stored_hash", OVERSIZED)
def test_login_refuses_a_stored_hash_beyond_the_bounds_without_hashing_it(
    users: UserDB, stored_hash: str, caplog: pytest.LogCaptureFixture
) -> None:
    users.create(username="mallory", email="m@example.com")
    _store_hash(users.database, "mallory", stored_hash)
    with caplog.at_level(logging.WARNING, logger="db"):
        assert users.authenticate("mallory", PASSWORD) is None
        assert users.authenticate("m@example.com", PASSWORD) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert all("'mallory'" in w and "hash is refused" in w for w in warnings)
    assert not any(stored_hash in w or stored_hash[7:29] in w for w in warnings)
    # Setting a new password is the way out, and it logs in.
    users.set_password("mallory", PASSWORD)
    assert users.authenticate("mallory", PASSWORD) is not None


@pytest.mark.timeout(60, method="thread")
@pytest.mark.parametrize("stored_hash", OVERSIZED)
def test_verify_password_refuses_a_hash_beyond_the_bounds(stored_hash: str) -> None:
    assert passwords.verify_password(stored_hash, PASSWORD) == (False, False)
    assert passwords.hash_cost_problem(stored_hash) is not None


class _Counting:
    """Counts the verifications each scheme runs; the real hashing still runs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.argon2 = 0
        self.bcrypt = 0
        counter = self

        class CountingHasher(argon2.PasswordHasher):
            def verify(self, hash: str | bytes, password: str | bytes) -> bool:
                counter.argon2 += 1
                return super().verify(hash, password)

        real = passwords._hasher
        hasher = CountingHasher(
            time_cost=real.time_cost,
            memory_cost=real.memory_cost,
            parallelism=real.parallelism,
            hash_len=real.hash_len,
            salt_len=real.salt_len,
            type=real.type,
        )
        real_checkpw: Callable[[bytes, bytes], bool] = bcrypt.checkpw

        def checkpw(password: bytes, hashed: bytes) -> bool:
            counter.bcrypt += 1
            return real_checkpw(password, hashed)

        monkeypatch.setattr(passwords, "_hasher", hasher)
        monkeypatch.setattr(passwords.bcrypt, "checkpw", checkpw)

    def reset(self) -> tuple[int, int]:
        counts = (self.argon2, self.bcrypt)
        self.argon2 = self.bcrypt = 0
        return counts


@pytest.mark.timeout(60, method="thread")
def test_each_failed_login_runs_one_argon2_verification_whoever_it_names(
    memory_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Unknown users, users without a password, inactive ones and refused hashes cost one
    # argon2 verification at the current parameters, like a wrong password of an argon2 user.
    users = UserDB(memory_db)
    users.create(username="argon", password=PASSWORD)
    users.create(username="nopass")
    users.create(username="inactive", password=PASSWORD, is_active=False)
    users.create(username="mallory")
    _store_hash(memory_db, "mallory", _bcrypt_like(31))
    legacy = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    users.import_users([{"username": "legacy", "password_hash": legacy}])
    counting = _Counting(monkeypatch)
    for login in ("nobody", "nobody@example.com", "nopass", "inactive", "mallory", "argon"):
        assert users.authenticate(login, "wrong password") is None
        assert counting.reset() == (1, 0), login
    # A bcrypt account verifies with bcrypt (its timing differs until the first login
    # rehashes it to argon2id: documented in the README).
    assert users.authenticate("legacy", "wrong password") is None
    assert counting.reset() == (0, 1)
    assert users.authenticate("legacy", PASSWORD) is not None
    assert counting.reset() == (0, 1)
    assert users.authenticate("legacy", "wrong password") is None
    assert counting.reset() == (1, 0)


# -- item 8 (part): a 100 kB value is not echoed --------------------------------------------------


def _short_error(call: Callable[[], object], field: str, limit: int = SHORT) -> str:
    with pytest.raises(CodxDBError) as info:
        call()
    message = str(info.value)
    assert len(message) < limit, message[:limit]
    assert field in message
    return message


@pytest.mark.parametrize(
    ("call", "field"),
    [
        pytest.param(lambda u: u.create(username=BIG), "username", id="create-username"),
        pytest.param(lambda u: u.create(username="bob", email=BIG + "@example.com"), "email", id="create-email"),
        pytest.param(lambda u: u.get(BIG), "username", id="get"),
        pytest.param(lambda u: u.get_by_email(BIG + "@example.com"), "email", id="get-by-email"),
        pytest.param(lambda u: u.update(BIG, full_name="x"), "username", id="update-unknown"),
        pytest.param(lambda u: u.update("alice", username=BIG), "username", id="update-username"),
        pytest.param(lambda u: u.update("alice", email=BIG), "email", id="update-email"),
        pytest.param(lambda u: u.update("alice", **{BIG: 1}), "unknown field", id="update-unknown-field"),
        pytest.param(lambda u: u.create(username="b", projects=[{BIG: 1}]), "projects.0", id="create-project-key"),
        pytest.param(lambda u: u.set_password(BIG, PASSWORD), "username", id="set-password"),
        pytest.param(lambda u: u.delete(BIG), "username", id="delete"),
        pytest.param(lambda u: u.history(BIG), "username", id="history"),
        pytest.param(lambda u: u.import_users([{BIG: 1}]), "records[0]", id="import-unknown-field"),
        pytest.param(lambda u: u.import_users([{"username": BIG}]), "records[0].username", id="import-username"),
        pytest.param(
            lambda u: u.import_users([{"username": "x", **{f"{i}{BIG[:1000]}": 1 for i in range(100)}}]),
            "records[0]",
            id="import-many-unknown-fields",
        ),
    ],
)
def test_an_error_about_a_100kb_value_is_short_and_names_the_field(
    users: UserDB, call: Callable[[UserDB], object], field: str
) -> None:
    users.create(username="alice", email="alice@example.com")
    _short_error(lambda: call(users), field)


def test_revert_of_a_padded_username_does_not_echo_it(memory_db: Database) -> None:
    users = UserDB(memory_db)
    users.create(username="alice")
    # Usernames are trimmed, so "alice" followed by 100 kB of spaces names alice.
    _short_error(lambda: users.revert("alice" + " " * 100_000, to="2000-01-01T00:00:00"), "alice")


def test_codx_junior_import_of_a_100kb_username_is_short(memory_db: Database, tmp_path: Path) -> None:
    path = tmp_path / "global_settings.json"
    path.write_text(
        json.dumps(
            {
                "users": [
                    {"username": BIG},
                    {"username": "b" + BIG, "projects": [{"project_id": BIG, "permissions": 5}]},
                    {"username": "c", "projects": [{"project_id": BIG, "children": 5}]},
                ],
                "user_logins": [{"username": "d" + BIG, "password": "plain"}],
            }
        )
    )
    # Four problems and the file's path: each problem short.
    message = _short_error(lambda: import_codx_junior(memory_db, path), "users[0]", 4 * SHORT + len(str(path)))
    for where in ("users[1]", "users[2]", "user_logins[0]"):
        assert where in message


@pytest.mark.timeout(60, method="thread")
def test_a_password_longer_than_any_accepted_one_is_refused_without_hashing(
    memory_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No password longer than MAX_PASSWORD_LENGTH can be set, so none can match: a 10 MB
    # one is refused before any hashing (the refusal depends on the input alone, so its
    # speed tells nothing about the account).
    users = UserDB(memory_db)
    users.create(username="alice", password=PASSWORD)
    counting = _Counting(monkeypatch)
    huge = "x" * (10 * 1024 * 1024)
    for login in ("alice", "nobody"):
        assert users.authenticate(login, huge) is None
        assert counting.reset() == (0, 0), login
    longest = "y" * passwords.MAX_PASSWORD_LENGTH
    assert users.authenticate("alice", longest) is None
    assert counting.reset() == (1, 0)


def test_an_imported_bcrypt_hash_of_a_password_over_72_bytes_still_verifies() -> None:
    """codx-junior's bcrypt (< 5) hashed only the first 72 bytes; bcrypt 5 raises on longer input."""
    import bcrypt as bcrypt_module

    from db.users.passwords import verify_password

    long_password = "correct horse battery staple " * 4  # 116 bytes
    stored = bcrypt_module.hashpw(long_password.encode()[:72], bcrypt_module.gensalt(rounds=4)).decode()
    assert verify_password(stored, long_password) == (True, True)  # matches, and asks for argon2id
    assert verify_password(stored, long_password[:71] + "x" + long_password[72:])[0] is False


@pytest.mark.parametrize(
    ("stored_hash", "said"),
    [
        pytest.param(_bcrypt_like(3), "bcrypt cost 3 is below 4", id="bcrypt-cost-3"),
        pytest.param(_argon2_like(1, 1, 1), "below argon2's minimums", id="argon2-m1-t1-p1"),
        pytest.param(_argon2_like(65_536, 0, 1), "below argon2's minimums", id="argon2-t0"),
        pytest.param(_argon2_like(65_536, 3, 0), "below argon2's minimums", id="argon2-p0"),
    ],
)
def test_import_refuses_a_hash_that_can_never_verify_saying_why(
    memory_db: Database, stored_hash: str, said: str
) -> None:
    """Parameters below what bcrypt or argon2 accept: such a hash never verifies, so the import refuses it
    (it was imported, for a user who could never log in), and the message says too low, not too costly."""
    with pytest.raises(InvalidUserData) as info:
        UserDB(memory_db).import_users([{"username": "legacy", "password_hash": stored_hash}])
    message = str(info.value)
    assert said in message and "too long" not in message, message
    assert stored_hash not in message
    assert UserDB(memory_db).count() == 0
