"""Server-side timeouts on PostgreSQL are named for what they are, not "unreachable".

``statement_timeout`` and ``idle_in_transaction_session_timeout`` are set on the test's own
fresh database (``ALTER DATABASE ... SET``: every new session there gets them), never on the
shared server.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg2
import pytest
from psycopg2.extensions import parse_dsn

from db.database import Database
from db.errors import DatabaseTimeout, DatabaseUnavailable
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB

pytestmark = pytest.mark.postgres


def _alter_database(dsn: str, setting: str, value: str) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{parse_dsn(dsn)["dbname"]}" SET {setting} = %s', (value,))
    finally:
        conn.close()


@pytest.fixture(params=[True, False], ids=["fast-reads", "plain"])
def fast_reads(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def seeded(pg_dsn: str) -> str:
    """The test database with a user in it, written before any timeout is set."""
    database = Database(CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=pg_dsn))
    try:
        UserDB(database).create(username="alice", full_name="Alice")
    finally:
        database.close()
    return pg_dsn


@pytest.fixture
def reopen(seeded: str, fast_reads: bool) -> Iterator[Database]:
    database = Database(
        CodxJuniorGlobalSettings.load(
            db_backend="postgres", db_dsn=seeded, db_pg_fast_reads=fast_reads, db_conflict_retries=0
        )
    )
    try:
        yield database
    finally:
        database.close()


def test_statement_timeout_is_named(seeded: str, fast_reads: bool) -> None:
    _alter_database(seeded, "statement_timeout", "300ms")
    database = Database(
        CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=seeded, db_pg_fast_reads=fast_reads)
    )
    blocker = psycopg2.connect(seeded)
    try:
        users = UserDB(database)
        assert users.get("alice").full_name == "Alice"  # opened, sessions made with the timeout
        with blocker.cursor() as cur:  # every read of the objects table now waits for this lock
            cur.execute("SET statement_timeout = 0")
            cur.execute("LOCK TABLE object_state IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(DatabaseTimeout, match="statement_timeout") as caught:
            users.update("alice", full_name="blocked")
        assert not isinstance(caught.value, DatabaseUnavailable)
        assert "unreachable" not in str(caught.value) and "cannot connect" not in str(caught.value)
        blocker.rollback()
        assert users.update("alice", full_name="after").full_name == "after"  # the next unit works
    finally:
        blocker.close()
        database.close()


def test_idle_in_transaction_timeout_is_named(seeded: str, reopen: Database) -> None:
    _alter_database(seeded, "idle_in_transaction_session_timeout", "300ms")
    users = UserDB(reopen)
    assert users.count() == 1  # opened: the sessions carry the timeout
    with (
        pytest.raises(DatabaseTimeout, match="idle_in_transaction_session_timeout") as caught,
        reopen.transaction() as uow,
    ):
        assert uow.root is not None  # the unit's snapshot is open on the server
        time.sleep(1.5)  # the caller does something slow inside its unit of work
        users.get("alice")  # not cached in this process yet: a read from the server
    assert "unreachable" not in str(caught.value)
    assert users.get("alice").full_name == "Alice"  # the next unit reconnects


def test_statement_timeout_while_opening_is_named(seeded: str) -> None:
    # Another process holds the startup lock (a long migration, say): our wait for it is a
    # statement, which the database's statement_timeout cancels. That is not "cannot connect".
    from db.storage import STARTUP_LOCK_KEY

    _alter_database(seeded, "statement_timeout", "300ms")
    holder = psycopg2.connect(seeded)
    holder.autocommit = True
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (STARTUP_LOCK_KEY,))
        database = Database(CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=seeded))
        with pytest.raises(DatabaseTimeout, match="statement_timeout") as caught:
            database.open()
        assert "cannot connect" not in str(caught.value)
    finally:
        holder.close()
    database = Database(CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=seeded))
    try:
        assert UserDB(database).get("alice").full_name == "Alice"
    finally:
        database.close()
