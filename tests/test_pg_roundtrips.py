"""Read-only units of work on PostgreSQL: one round trip waited for, the same snapshot rules.

db/pg_roundtrips.py sends BEGIN with RelStorage's poll and does not wait for the ROLLBACK's reply.
These tests hold it to what RelStorage promised before: one snapshot per unit of work, no
snapshot (no open transaction) left behind on an idle pooled connection, and the same results
when libpq cannot be reached for the pipelined send or when RelStorage iterates the storage.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from psycopg2.extensions import parse_dsn
from ZODB.utils import u64

from db import pg_roundtrips
from db.database import Database
from db.models import USERS_KEY
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB
from tests.conftest import ROOT

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_database(pg_dsn: str) -> Iterator[Database]:
    database = Database(CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=pg_dsn))
    try:
        yield database
    finally:
        database.close()


def _open_transactions(dsn: str) -> list[tuple[str, str]]:
    """(application_name, state) of this database's sessions that are inside a transaction."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT application_name, state FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid() AND (state LIKE 'idle in transaction%%' "
            "OR backend_xmin IS NOT NULL)",
            (parse_dsn(dsn)["dbname"],),
        )
        rows = cur.fetchall()
    conn.close()
    return rows


def _wait_for_no_open_transactions(dsn: str) -> list[tuple[str, str]]:
    # The pipelined ROLLBACK reaches the server a moment after the unit of work returns.
    deadline = time.monotonic() + 5
    while (found := _open_transactions(dsn)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def test_a_unit_of_work_reads_one_snapshot(pg_database: Database, pg_dsn: str) -> None:
    users = UserDB(pg_database)
    users.create(username="alice", full_name="Alice")
    users.create(username="bob", full_name="Bob")
    other = Database(CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=pg_dsn))
    reader = Database(CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=pg_dsn))
    try:
        reading = UserDB(reader)
        with reader.transaction():
            assert reading.get("alice").full_name == "Alice"  # the poll: the snapshot starts here
            UserDB(other).update("bob", full_name="Bob 2")  # committed meanwhile, elsewhere
            # bob was never loaded by this process: it comes from the server, in the snapshot.
            assert reading.get("bob").full_name == "Bob"
            assert [name for name, _ in _open_transactions(pg_dsn) if name == "RS: Load"], (
                "the unit of work holds its snapshot while it runs"
            )
        assert reading.get("bob").full_name == "Bob 2"  # the next unit sees the change
    finally:
        other.close()
        reader.close()


def test_no_transaction_outlives_a_unit_of_work(pg_database: Database, pg_dsn: str) -> None:
    users = UserDB(pg_database)
    users.create(username="alice")
    before = pg_roundtrips.Counters.pipelined_rollbacks
    for _ in range(20):
        assert users.get("alice").username == "alice"
    assert pg_roundtrips.Counters.pipelined_rollbacks - before >= 20
    assert _wait_for_no_open_transactions(pg_dsn) == []
    assert users.count() == 1  # the connection is still usable after its pipelined ROLLBACK


def test_reads_without_libpq_access_wait_for_the_rollback(
    pg_database: Database, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg_roundtrips, "_LIBPQ", None)
    users = UserDB(pg_database)
    users.create(username="alice")
    before = pg_roundtrips.Counters.waited_rollbacks
    for _ in range(5):
        assert users.get("alice").username == "alice"
    assert pg_roundtrips.Counters.waited_rollbacks - before >= 5
    assert _open_transactions(pg_dsn) == []


def test_storage_iteration_then_reads(pg_database: Database, pg_dsn: str) -> None:
    # RelStorage iterates through a server-side cursor on the load connection, which psycopg2
    # refuses in autocommit mode unless WITH HOLD: pg_roundtrips declares it so, inside its open
    # transaction (same snapshot; the ROLLBACK drops it).
    users = UserDB(pg_database)
    for name in ("alice", "bob"):
        users.create(username=name)
    with pg_database.transaction() as uow:
        # The unit's own RelStorage instance, whose load connection the unit of work ends.
        storage = uow.connection._storage
        assert sum(1 for _ in storage.iterator()) >= 3  # root, install, two creates
        assert storage.record_iternext()[0]  # an oid
        assert users.get("alice").username == "alice"  # same unit, same connection
    for _ in range(5):
        assert users.get("bob").username == "bob"
    users.update("alice", full_name="After")
    assert users.get("alice").full_name == "After"
    assert _wait_for_no_open_transactions(pg_dsn) == []


def test_a_backend_killed_inside_a_unit_of_work_is_dropped_quietly(
    pg_database: Database, pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    users = UserDB(pg_database)
    users.create(username="alice")
    admin = psycopg2.connect(pg_dsn)
    admin.autocommit = True
    try:
        with pg_database.transaction():
            assert users.get("alice").username == "alice"  # the load connection is in its transaction
            with admin.cursor() as cur:
                cur.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                    "AND application_name = 'RS: Load' AND state LIKE 'idle in transaction%%'",
                    (parse_dsn(pg_dsn)["dbname"],),
                )
                assert cur.fetchall() == [(True,)]
            time.sleep(0.2)
        # The end of the unit saw the lost connection (a waited ROLLBACK failed, as it did
        # before pipelining): RelStorage dropped it, and the next unit reconnects unnoticed.
        with caplog.at_level("WARNING"):
            assert users.get("alice").username == "alice"
        assert not [r for r in caplog.records if "reconnect" in r.getMessage().lower()]
    finally:
        admin.close()


def test_not_installed_with_a_blob_directory(pg_dsn: str, tmp_path: Path) -> None:
    # RelStorage reads blobs with large objects, which psycopg2 refuses in autocommit mode.
    settings = CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=pg_dsn, db_blob_dir=tmp_path / "blobs")
    database = Database(settings)
    try:
        UserDB(database).create(username="alice")
        connmanager = database.open().storage._adapter.connmanager
        assert not getattr(connmanager, "codx_fast_reads", False)
        assert UserDB(database).get("alice").username == "alice"
    finally:
        database.close()


def test_the_lock_timeout_set_once_still_bounds_every_write(pg_dsn: str) -> None:
    # RelStorage used to SET lock_timeout (and commit) before every write; it is now set once
    # per store connection. After many writes on the same connection it must still apply.
    settings = CodxJuniorGlobalSettings.load(
        db_backend="postgres", db_dsn=pg_dsn, db_commit_lock_timeout=1, db_conflict_retries=0
    )
    database = Database(settings)
    blocker = psycopg2.connect(pg_dsn)
    blocker.autocommit = True
    try:
        users = UserDB(database)
        users.create(username="alice")
        for i in range(5):
            users.update("alice", full_name=f"name {i}")  # the store connection restarts each time
        with database.transaction() as uow:
            oid = u64(uow.root[USERS_KEY].find_by_username("alice")._p_oid)
        with blocker.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (oid,))  # RelStorage's lock on that object
        started = time.monotonic()
        with pytest.raises(Exception, match="lock timeout"):
            users.update("alice", full_name="blocked")
        assert time.monotonic() - started < 10
        with blocker.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (oid,))
        assert users.update("alice", full_name="after").full_name == "after"
    finally:
        blocker.close()
        database.close()


def test_a_relstorage_config_file_takes_the_fast_path_too(pg_dsn: str, tmp_path: Path) -> None:
    # db_config_file opens RelStorage through ZConfig; pg_roundtrips is installed right after,
    # before the pool's connections open.
    config = tmp_path / "relstorage.conf"
    text = (ROOT / "relstorage.conf").read_text()
    config.write_text(re.sub(r"(?m)^(\s*)dsn .*$", lambda m: f"{m.group(1)}dsn {pg_dsn}", text))
    database = Database(CodxJuniorGlobalSettings.load(db_config_file=config))
    try:
        users = UserDB(database)
        users.create(username="alice")
        before = pg_roundtrips.Counters.pipelined_rollbacks
        for _ in range(10):
            assert users.get("alice").username == "alice"
        assert pg_roundtrips.Counters.pipelined_rollbacks - before >= 10
    finally:
        database.close()


def _reads_take_the_fast_path(database: Database, reads: int = 10) -> bool:
    users = UserDB(database)
    users.create(username=f"reader-{len(users.list())}")
    name = users.list()[0].username
    pipelined, waited = pg_roundtrips.Counters.pipelined_rollbacks, pg_roundtrips.Counters.waited_rollbacks
    for _ in range(reads):
        assert users.get(name).username == name
    return (
        pg_roundtrips.Counters.pipelined_rollbacks - pipelined >= reads
        and pg_roundtrips.Counters.waited_rollbacks == waited
    )


def test_the_setting_turns_the_shortcut_off(pg_dsn: str) -> None:
    settings = CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=pg_dsn, db_pg_fast_reads=False)
    database = Database(settings)
    try:
        assert not _reads_take_the_fast_path(database)
        connmanager = database.open().storage._adapter.connmanager
        assert not getattr(connmanager, "codx_installed", False)
        assert _wait_for_no_open_transactions(pg_dsn) == []
    finally:
        database.close()


@pytest.fixture
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pg_roundtrips, "_warned", set(), raising=False)


def _hook_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "db.pg_roundtrips" and r.levelname == "WARNING"]


def _open_twice_and_use(pg_dsn: str) -> None:
    for _ in range(2):
        database = Database(CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=pg_dsn))
        try:
            assert not _reads_take_the_fast_path(database)
            users = UserDB(database)
            users.update(users.list()[0].username, full_name="still writes")
        finally:
            database.close()


def test_a_relstorage_without_the_load_hook_opens_plain(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fresh_warnings: None
) -> None:
    # A RelStorage release that renamed the private method pg_roundtrips wraps: the hook is
    # really gone from the classes, RelStorage itself does the same work under another name.
    from relstorage.adapters.connmanager import AbstractConnectionManager
    from relstorage.adapters.postgresql.connmanager import Psycopg2ConnectionManager

    monkeypatch.setattr(
        Psycopg2ConnectionManager, "_open_load_connection", Psycopg2ConnectionManager._do_open_for_load, raising=False
    )
    monkeypatch.delattr(Psycopg2ConnectionManager, "_do_open_for_load")
    monkeypatch.delattr(AbstractConnectionManager, "_do_open_for_load")

    def open_for_load(self):  # type: ignore[no-untyped-def]
        conn, cursor = self._open_load_connection()
        self._call_hooks(self._on_load_opened, conn, cursor, cursor, restart=False)
        return conn, cursor

    monkeypatch.setattr(AbstractConnectionManager, "open_for_load", open_for_load)
    with caplog.at_level("WARNING"):
        _open_twice_and_use(pg_dsn)
    warnings = _hook_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "_do_open_for_load" in warnings[0] and "plain RelStorage" in warnings[0]


def test_a_driver_whose_connect_is_not_a_class_opens_plain(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fresh_warnings: None
) -> None:
    # pg_roundtrips subclasses RelStorage's psycopg2 connection class (driver.connect); a
    # RelStorage whose driver connects through a function must not fail to open.
    import relstorage.adapters.postgresql as rs_postgresql

    class FunctionConnectAdapter(rs_postgresql.PostgreSQLAdapter):  # type: ignore[misc]
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            driver = self.connmanager.driver
            cls = driver.connect
            driver.connect = lambda *a, **kw: cls(*a, **kw)

    monkeypatch.setattr(rs_postgresql, "PostgreSQLAdapter", FunctionConnectAdapter)
    with caplog.at_level("WARNING"):
        _open_twice_and_use(pg_dsn)
    warnings = _hook_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "driver.connect" in warnings[0]


def test_the_shortcut_works_above_file_descriptor_1024(pg_dsn: str) -> None:
    # select.select() refuses descriptors >= 1024 (FD_SETSIZE): a busy server's sockets are there.
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        if hard != resource.RLIM_INFINITY and hard < 1200:
            pytest.skip(f"cannot open 1200 files here (hard limit {hard})")
        resource.setrlimit(resource.RLIMIT_NOFILE, (1200, hard))
    filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    database = Database(CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=pg_dsn))
    try:
        assert _reads_take_the_fast_path(database)
        with database.transaction() as uow:
            load_connection = uow.connection._storage._load_connection.connection
            assert load_connection.fileno() > 1024  # what this test is about
    finally:
        database.close()
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
