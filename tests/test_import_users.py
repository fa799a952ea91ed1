"""UserDB.import_users: many users in one unit of work, all or none, on every backend."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from typing import Any

import bcrypt
import pytest

from db.database import Database
from db.errors import InvalidUserData, TransactionTooLarge, UserAlreadyExists
from db.passwords import hash_password
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB
from tests.test_crash import start_private_postgres
from tests.test_user_db import snapshot_state

PASSWORD = "correct horse battery"


@pytest.fixture
def users(database: Database) -> Iterator[UserDB]:
    yield UserDB(database)


def records(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {"username": f"user{i:05d}", "email": f"user{i}@Example.COM", "full_name": f"User {i}"}
        for i in range(start, start + n)
    ]


def test_imports_every_record_with_the_rules_of_create(users: UserDB) -> None:
    assert users.import_users(records(250)) == 250
    assert users.count() == 250
    user = users.get("USER00042")
    assert user.email == "user42@example.com"  # domain normalised as create does
    assert user.full_name == "User 42" and user.role == "user" and not user.is_superuser
    assert users.get_by_email("user249@example.com").username == "user00249"
    assert [u.username for u in users.list(limit=3)] == ["user00000", "user00001", "user00002"]
    assert len({u.id for u in users.list(limit=250)}) == 250


def test_passwords_given_clear_or_as_argon2_or_bcrypt_hashes_log_in(users: UserDB) -> None:
    bcrypt_hash = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    users.import_users(
        [
            {"username": "clear", "password": PASSWORD},
            {"username": "argon", "password_hash": hash_password(PASSWORD)},
            {"username": "legacy", "password_hash": bcrypt_hash, "role": "admin"},
            {"username": "nopass"},
        ]
    )
    for name in ("clear", "argon", "legacy"):
        assert users.authenticate(name, PASSWORD) is not None, name
        assert users.authenticate(name, "wrong password!") is None
    assert users.get("legacy").is_superuser
    assert users.authenticate("nopass", PASSWORD) is None


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ({"username": "a\tb"}, "records[1].username: must not contain control"),
        ({"username": "x", "email": "no-at-sign"}, "records[1].email: not a valid email address"),
        ({"username": "x", "password": "short"}, "records[1].password: must be at least"),
        ({"username": "x", "password_hash": "$2b$12$tooshort"}, "records[1].password_hash: not a well-formed bcrypt"),
        ({"username": "x", "password_hash": "plain text"}, "records[1].password_hash: must be an argon2"),
        ({"username": "x", "password": PASSWORD, "password_hash": "h"}, "records[1].password: give password or"),
        ({"username": "x", "is_admin": True}, "records[1]: unknown field(s) is_admin"),
        ({"username": "x", "role": "admin", "is_superuser": False}, "records[1]"),
        ({"username": "USER00000"}, "records[1].username: the same as records[0]"),
        ({"username": "x", "email": "USER0@example.com"}, "records[1].email: the same as records[0]"),
        ("alice", "records[1]: must be a mapping"),
    ],
)
def test_bad_input_names_the_record_and_writes_nothing(
    users: UserDB, database: Database, bad: Any, expected: str
) -> None:
    users.create(username="existing")
    before = snapshot_state(database)
    with pytest.raises(InvalidUserData) as raised:
        users.import_users([records(1)[0], bad, *records(5, start=10)])
    assert expected in str(raised.value)
    assert "tooshort" not in str(raised.value)  # a hash is never quoted
    assert snapshot_state(database) == before


def test_every_problem_is_listed_up_to_a_cap(users: UserDB) -> None:
    with pytest.raises(InvalidUserData) as raised:
        users.import_users([{"username": f"bad\tname {i}"} for i in range(80)])
    assert len(raised.value.errors) == 51
    assert raised.value.errors[-1] == "... and 30 more problems"


def test_a_stored_name_or_email_refuses_the_whole_import(users: UserDB, database: Database) -> None:
    users.create(username="user00003")
    users.create(username="someone", email="user7@example.com")
    before = snapshot_state(database)
    with pytest.raises(UserAlreadyExists, match="records\\[3\\]: a user with username 'user00003'"):
        users.import_users(records(10))
    assert snapshot_state(database) == before
    with pytest.raises(UserAlreadyExists, match="email"):
        users.import_users(records(5, start=5))
    assert snapshot_state(database) == before


def test_savepoints_keep_the_import_whole(users: UserDB, database: Database) -> None:
    assert users.import_users(records(100), savepoint_every=7) == 100
    assert users.count() == 100 and users.get("user00099").full_name == "User 99"
    # A failure after several savepoints still leaves nothing of the unit of work behind.
    before = snapshot_state(database)
    with pytest.raises(RuntimeError), database.transaction():
        users.import_users(records(50, start=100), savepoint_every=7)
        assert users.count() == 150  # inside the unit, the import is visible
        raise RuntimeError("the caller gives up")
    assert snapshot_state(database) == before


def test_inside_a_unit_of_work_the_import_joins_it(users: UserDB) -> None:
    with users.database.transaction():
        users.create(username="first")
        users.import_users(records(3))
        assert users.count() == 4
    assert users.count() == 4


@pytest.mark.parametrize("bad", ["user00001", {"username": "x"}, 42, None])
def test_records_must_be_an_iterable_of_mappings(users: UserDB, bad: Any) -> None:
    with pytest.raises(InvalidUserData, match="records: must be an iterable of mappings"):
        users.import_users(bad)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10"])
def test_savepoint_every_must_be_a_positive_integer(users: UserDB, bad: Any) -> None:
    with pytest.raises(InvalidUserData, match="savepoint_every"):
        users.import_users(records(1), savepoint_every=bad)
    assert users.count() == 0


def test_an_empty_import_is_fine(users: UserDB) -> None:
    assert users.import_users([]) == 0
    assert users.import_users(iter(())) == 0


def test_batches_commit_on_their_own(users: UserDB, database: Database) -> None:
    assert users.import_users(records(25), batch_size=7) == 25
    assert users.count() == 25 and users.get("user00024").full_name == "User 24"
    # Stored names are checked before the first batch: nothing of a bad import is written.
    before = snapshot_state(database)
    with pytest.raises(UserAlreadyExists):
        users.import_users(records(30, start=20), batch_size=3)
    assert snapshot_state(database) == before


def test_a_failing_batch_says_how_many_were_imported(users: UserDB, monkeypatch: pytest.MonkeyPatch) -> None:
    original = UserDB._import_batch
    calls = []

    def second_fails(self: UserDB, *args: Any) -> int:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the server went away")
        return original(self, *args)

    monkeypatch.setattr(UserDB, "_import_batch", second_fails)
    with pytest.raises(RuntimeError) as raised:
        users.import_users(records(10), batch_size=4)
    assert "codx-db: 4 of 10 users were imported before this batch failed" in raised.value.__notes__
    assert users.count() == 4


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "100"])
def test_batch_size_must_be_a_positive_integer(users: UserDB, bad: Any) -> None:
    with pytest.raises(InvalidUserData, match="batch_size"):
        users.import_users(records(1), batch_size=bad)


def test_batches_cannot_commit_inside_a_unit_of_work(users: UserDB) -> None:
    with pytest.raises(InvalidUserData, match="batch_size: batches commit on their own"), users.database.transaction():
        users.import_users(records(2), batch_size=1)
    assert users.count() == 0


@pytest.mark.slow
def test_one_transaction_too_large_for_postgres_locks_fails_fast_and_clearly(caplog: pytest.LogCaptureFixture) -> None:
    # RelStorage takes an advisory lock for every stored object a commit changes; PostgreSQL's
    # lock table holds max_locks_per_transaction x (max_connections + its own processes), plus
    # whatever shared memory is left over, which differs between machines. A private server
    # with a tiny table (10 x 22 guaranteed: no WAL senders, one worker, one autovacuum worker)
    # shows the limit: 30,000 random names on 30,000 users touch every bucket of the three
    # name-keyed indexes (over 1,300 locks for 500 of them, measured), far past any slack.
    server = start_private_postgres(
        "max_locks_per_transaction=10",
        "max_connections=20",
        "max_wal_senders=0",
        "max_worker_processes=1",
        "autovacuum_max_workers=1",
        "huge_pages=off",
    )
    try:
        database = Database(CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=server.create_database()))
        try:
            users = UserDB(database)
            rng = random.Random(7)
            names = [f"u{rng.getrandbits(64):016x}" for _ in range(60_000)]
            batch = [{"username": name, "email": f"{name}@example.com"} for name in names]
            # Batches in name order touch a few adjacent buckets each (under 20 locks, measured):
            # far inside the guaranteed table on any machine. Random batches of 100 would touch
            # ~330 buckets each, near the edge, and failed on a machine with less slack.
            in_order = sorted(batch[:30_000], key=lambda record: record["username"])
            assert users.import_users(in_order, batch_size=100) == 30_000
            # Random names, in one transaction: new users land in every bucket of the indexes.
            caplog.clear()
            with (
                caplog.at_level(logging.DEBUG, logger="db.database"),
                pytest.raises(TransactionTooLarge, match="max_locks_per_transaction"),
            ):
                users.import_users(batch[30_000:])
            # Refused once, not retried as a conflict (it would fail the same way each time).
            assert not [r for r in caplog.records if r.getMessage().startswith("retrying unit of work")]
            assert users.count() == 30_000
            # The advice the error gives works: the same kind of import, in small batches.
            rest = sorted(batch[30_000:32_000], key=lambda record: record["username"])
            assert users.import_users(rest, batch_size=100) == 2_000
            assert users.count() == 32_000
        finally:
            database.close()
    finally:
        server.destroy()


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        (
            [{"username": "ann", "email": "x@example.com"}, {"username": "X@example.com"}],
            "records[1].username: the same as records[0].email",
        ),
        (
            [{"username": "x@example.com"}, {"username": "ann", "email": "X@example.com"}],
            "records[1].email: the same as records[0].username",
        ),
    ],
)
def test_a_username_that_is_another_records_email_names_both_records(
    users: UserDB, database: Database, batch: list[dict[str, Any]], expected: str
) -> None:
    """A login by that address would find two users: refused like any in-batch duplicate, before writing."""
    before = snapshot_state(database)
    with pytest.raises(InvalidUserData) as raised:
        users.import_users(batch)
    assert expected in str(raised.value)
    assert snapshot_state(database) == before
    # One record holding the same address as its username and its email is one user: fine.
    assert users.import_users([{"username": "y@example.com", "email": "Y@example.com"}]) == 1
