"""codx-db's own store temp tables on PostgreSQL (db/pg/store_temps.py): never a stale row moved.

RelStorage's temp_store tables are ON COMMIT PRESERVE ROWS here, emptied by the first message of
each store transaction. These tests hold every way a transaction can end to that: committed,
aborted after its rows reached temp_store, failed on a conflict, failed on a server error, its
client killed mid-commit. "Nothing stale" is read from object_state: a commit's tid names
exactly the objects that commit wrote.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest
import transaction
from persistent.mapping import PersistentMapping
from ZODB.POSException import ConflictError
from ZODB.utils import u64

from db.database import Database
from db.models import USERS_KEY
from db.ops.check import check
from db.pg import store_temps
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB
from tests.conftest import ROOT

pytestmark = pytest.mark.postgres


def _settings(pg_dsn: str, **extra: Any) -> CodxJuniorGlobalSettings:
    return CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=pg_dsn, **extra)


@pytest.fixture
def database(pg_dsn: str) -> Iterator[Database]:
    database = Database(_settings(pg_dsn))
    try:
        yield database
    finally:
        database.close()


def _zoids_at(pg_dsn: str, tid: int) -> set[int]:
    with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT zoid FROM object_state WHERE tid = %s", (tid,))
        rows = {row[0] for row in cur.fetchall()}
    conn.close()
    return rows


def _store_connection(conn: Any) -> Any:
    """The psycopg2 store connection of a ZODB connection's RelStorage instance (after a write)."""
    pool = conn._storage._store_connection_pool
    assert pool._connections, "no pooled store connection"
    return pool._connections[-1].connection


def _rows_survive_a_commit(store: Any, table: str) -> bool:
    """True if the table is ON COMMIT PRESERVE ROWS: a row inserted and committed is still there.

    A plain psycopg2 cursor, so codx-db's prefix (which empties the tables) is not sent.
    """
    with store.cursor(cursor_factory=psycopg2.extensions.cursor) as cur:
        if not store.autocommit:
            store.rollback()
        columns = "(zoid, chunk_num)" if table == "temp_blob_chunk" else "(zoid, prev_tid)"
        cur.execute(f"INSERT INTO {table} {columns} VALUES (-1, 0)")
        psycopg2.extensions.connection.commit(store)
        cur.execute(f"SELECT count(*) FROM {table} WHERE zoid = -1")
        (count,) = cur.fetchone()
        cur.execute(f"DELETE FROM {table} WHERE zoid = -1")
        psycopg2.extensions.connection.commit(store)
    return bool(count)


def _two_objects(zodb: Any) -> None:
    with zodb.transaction() as conn:
        conn.root()["a"] = PersistentMapping(n=0)
        conn.root()["b"] = PersistentMapping(n=0)


class _FailingVote:
    """A second resource manager that votes after RelStorage (its rows are in temp_store) and fails."""

    def __init__(self, manager: Any) -> None:
        self.transaction_manager = manager

    def sortKey(self) -> str:
        return "~~~ after every storage"

    def tpc_begin(self, txn: Any) -> None: ...
    def commit(self, txn: Any) -> None: ...
    def tpc_vote(self, txn: Any) -> None:
        raise RuntimeError("vote refused")

    def tpc_abort(self, txn: Any) -> None: ...
    def abort(self, txn: Any) -> None: ...
    def tpc_finish(self, txn: Any) -> None: ...


@pytest.mark.parametrize("keep_history", [False, True], ids=["history-free", "keep-history"])
def test_a_commit_writes_only_its_own_objects_after_a_commit_and_an_abort(pg_dsn: str, keep_history: bool) -> None:
    database = Database(_settings(pg_dsn, db_keep_history=keep_history))
    try:
        _commit_abort_commit(database, pg_dsn)
    finally:
        database.close()


def _commit_abort_commit(database: Database, pg_dsn: str) -> None:
    zodb = database.open()
    _two_objects(zodb)
    conn = zodb.open()
    try:
        root = conn.root()
        root["a"]["n"] = 1
        transaction.commit()  # a's rows stay in temp_store: PRESERVE ROWS
        store = _store_connection(conn)
        assert store.codx_store and store.codx_store_manual
        with store.cursor(cursor_factory=psycopg2.extensions.cursor) as cur:
            cur.execute("SELECT count(*) FROM temp_store")
            assert cur.fetchone() == (1,), "the committed rows are still there (what the prefix is for)"
        root["a"]["n"] = 2
        transaction.get().join(_FailingVote(transaction.manager))
        with pytest.raises(RuntimeError, match="vote refused"):
            transaction.commit()  # after RelStorage's vote: a's new row was in temp_store
        transaction.abort()
        root["b"]["n"] = 1
        transaction.commit()
        tid = u64(root["b"]._p_serial)
        assert _zoids_at(pg_dsn, tid) == {u64(root["b"]._p_oid)}
        assert _store_connection(conn) is store  # the same session, the same temp tables
        assert root["a"]["n"] == 1
    finally:
        transaction.abort()
        conn.close()
    with zodb.transaction() as conn:
        assert conn.root()["a"]["n"] == 1 and conn.root()["b"]["n"] == 1


def test_a_conflict_leaves_nothing_stale(database: Database, pg_dsn: str) -> None:
    zodb = database.open()
    _two_objects(zodb)
    other = Database(_settings(pg_dsn))
    manager = transaction.TransactionManager()
    conn = zodb.open(transaction_manager=manager)
    try:
        root = conn.root()
        assert root["a"]["n"] == 0
        with other.open().transaction() as other_conn:
            other_conn.root()["a"]["n"] = 10
        root["a"]["n"] = 1  # from the old state: a conflict at vote, after its rows went to temp_store
        with pytest.raises(ConflictError):
            manager.commit()
        manager.abort()
        root["b"]["n"] = 1
        manager.commit()
        assert _zoids_at(pg_dsn, u64(root["b"]._p_serial)) == {u64(root["b"]._p_oid)}
        assert root["a"]["n"] == 10
    finally:
        manager.abort()
        conn.close()
        other.close()


def test_a_server_error_in_a_store_transaction_leaves_the_connection_usable(pg_dsn: str) -> None:
    database = Database(_settings(pg_dsn, db_commit_lock_timeout=1, db_conflict_retries=0))
    blocker = psycopg2.connect(pg_dsn)
    blocker.autocommit = True
    try:
        users = UserDB(database)
        users.create(username="alice")
        users.create(username="bob")
        with database.transaction() as uow:
            oid = u64(uow.root[USERS_KEY].find_by_username("alice")._p_oid)
        with blocker.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (oid,))  # RelStorage's row lock on alice
        with pytest.raises(Exception, match="lock timeout"):
            users.update("alice", full_name="blocked")  # lock_timeout: the server fails the statement
        with blocker.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (oid,))
        updated = users.update("bob", full_name="after")
        assert updated.full_name == "after"
        assert users.get("alice").full_name != "blocked"
        assert check(database).problems == []
    finally:
        blocker.close()
        database.close()


KILLED_CHILD = """
import sys, time
from db.database import Database
from db.models import USERS_KEY
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB

class Blocker:
    def sortKey(self): return "~~~ after every storage"
    def tpc_begin(self, txn): pass
    def commit(self, txn): pass
    def tpc_vote(self, txn):
        print("voted", flush=True)
        time.sleep(600)
    def tpc_abort(self, txn): pass
    def abort(self, txn): pass
    def tpc_finish(self, txn): pass

database = Database(CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=sys.argv[1]))
users = UserDB(database)
with database.transaction() as uow:
    users.update("alice", full_name="killed")
    uow.connection.transaction_manager.get().join(Blocker())
"""


def test_a_client_killed_mid_commit_leaves_nothing_stale(database: Database, pg_dsn: str) -> None:
    users = UserDB(database)
    users.create(username="alice", full_name="Alice")
    users.create(username="bob")
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_CHILD, pg_dsn],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip() == "voted", child.stderr.read() if child.stderr else line
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    updated = users.update("bob", full_name="after the kill")
    assert updated.full_name == "after the kill"
    assert users.get("alice").full_name == "Alice"
    zodb = database.open()
    with zodb.transaction() as conn:
        bob = conn.root()[USERS_KEY].find_by_username("bob")
        tid = u64(bob._p_serial)
        alice_oid = u64(conn.root()[USERS_KEY].find_by_username("alice")._p_oid)
    assert alice_oid not in _zoids_at(pg_dsn, tid)
    assert check(database).problems == []


def test_many_commits_keep_temp_store_small(database: Database) -> None:
    zodb = database.open()
    _two_objects(zodb)
    truncates = store_temps.Counters.truncates
    conn = zodb.open()
    try:
        root = conn.root()
        for i in range(2500):  # one 1 KB row each
            root["a"]["n"] = i
            root["a"]["pad"] = "x" * 900
            transaction.commit()
        store = _store_connection(conn)
        with store.cursor(cursor_factory=psycopg2.extensions.cursor) as cur:
            cur.execute("SELECT pg_total_relation_size('temp_store')")
            (size,) = cur.fetchone()
    finally:
        transaction.abort()
        conn.close()
    assert store_temps.Counters.truncates - truncates >= 2
    # Without the TRUNCATEs: 2.1 MB after 2,000 commits, growing (deleted rows' space is not reused).
    assert size <= 1536 * 1024, size


def test_the_setting_off_keeps_relstorage_tables(pg_dsn: str) -> None:
    for own in (True, False):
        database = Database(_settings(pg_dsn, db_pg_own_temp_tables=own))
        try:
            zodb = database.open()
            conn = zodb.open()
            try:
                conn.root()[f"x{own}"] = PersistentMapping()
                transaction.commit()
                store = _store_connection(conn)
                assert getattr(store, "codx_store", False) is own
                for table in ("temp_store", "temp_store_replacements", "temp_blob_chunk"):
                    assert _rows_survive_a_commit(store, table) is own, table
            finally:
                transaction.abort()
                conn.close()
        finally:
            database.close()


def test_fast_reads_off_means_plain_relstorage(pg_dsn: str) -> None:
    database = Database(_settings(pg_dsn, db_pg_fast_reads=False))
    try:
        conn = database.open().open()
        try:
            conn.root()["x"] = PersistentMapping()
            transaction.commit()
            store = _store_connection(conn)
            assert not getattr(store, "codx_store", False)
            assert not _rows_survive_a_commit(store, "temp_store")
        finally:
            transaction.abort()
            conn.close()
    finally:
        database.close()


def test_blobs_keep_relstorage_blob_table_and_round_trip(pg_dsn: str, tmp_path: Path) -> None:
    from ZODB.blob import Blob

    settings = _settings(pg_dsn, db_blob_dir=tmp_path / "blobs")
    database = Database(settings)
    try:
        conn = database.open().open()
        try:
            blob = Blob(b"first")
            conn.root()["blob"] = blob
            transaction.commit()
            with blob.open("w") as file:
                file.write(b"second" * 1000)
            transaction.commit()
            store = _store_connection(conn)
            assert store.codx_store and not store.codx_store_manual  # psycopg2: no lobject in autocommit
            assert _rows_survive_a_commit(store, "temp_store")
            assert not _rows_survive_a_commit(store, "temp_blob_chunk")  # its trigger unlinks blobs
            conn.root()["other"] = PersistentMapping()
            transaction.commit()
        finally:
            transaction.abort()
            conn.close()
    finally:
        database.close()
    reader = Database(_settings(pg_dsn, db_blob_dir=tmp_path / "blobs2"))
    try:
        with reader.open().transaction() as conn, conn.root()["blob"].open() as file:
            assert file.read() == b"second" * 1000
    finally:
        reader.close()


COUNT_CHILD = """
import json, sys
import psycopg2.extensions
from bench import pg
pg.install_relstorage_counter()

def _end(self, what, call):
    # What psycopg2 itself decides: it sends COMMIT/ROLLBACK when it began a transaction, even
    # when libpq already saw the server idle (RelStorage's hidden COMMIT).
    if not self.autocommit and self.status == psycopg2.extensions.STATUS_BEGIN:
        pg.RoundTrips.count += 1
    call()

pg.CountingConnection._end = _end
from db.database import Database
from db.models import USERS_KEY
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB

own = sys.argv[2] == "on"
database = Database(CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=sys.argv[1], db_pg_own_temp_tables=own))
users = UserDB(database)
users.create(username=f"alice-{own}")
users.update(f"alice-{own}", full_name="warm")
before = pg.roundtrips()
for i in range(20):
    users.update(f"alice-{own}", full_name=f"name {i}")
print(json.dumps({"write": (pg.roundtrips() - before) / 20}))
database.close()
"""


def test_a_write_waits_for_four_round_trips(pg_dsn: str) -> None:
    counts = {}
    for mode in ("on", "off"):
        result = subprocess.run(
            [sys.executable, "-c", COUNT_CHILD, pg_dsn, mode], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        counts[mode] = json.loads(result.stdout.strip().splitlines()[-1])["write"]
    # poll; BEGIN + DELETEs + COPY; lock objects; move + COMMIT. RelStorage alone: BEGIN sent
    # alone, and the second COMMIT after the hidden one.
    assert counts == {"on": 4, "off": 6}


def test_a_relstorage_without_the_store_hook_keeps_its_own_tables(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A RelStorage release that renamed the private method store_temps wraps: really gone from
    # the classes, RelStorage itself opening store connections under another name.
    from relstorage.adapters.connmanager import AbstractConnectionManager

    monkeypatch.setattr(store_temps, "_warned", set())
    monkeypatch.setattr(
        AbstractConnectionManager, "_open_store", AbstractConnectionManager._do_open_for_store, raising=False
    )
    monkeypatch.delattr(AbstractConnectionManager, "_do_open_for_store")

    def open_for_store(self, **open_args):  # type: ignore[no-untyped-def]
        conn, cursor = self._open_store(**open_args)
        self._call_hooks(self._on_store_opened, conn, cursor, cursor, restart=False)
        return conn, cursor

    monkeypatch.setattr(AbstractConnectionManager, "open_for_store", open_for_store)
    with caplog.at_level("WARNING"):
        for _ in range(2):
            database = Database(_settings(pg_dsn))
            try:
                conn = database.open().open()
                try:
                    conn.root()["x"] = PersistentMapping(n=len(caplog.records))
                    transaction.commit()
                    store = _store_connection(conn)
                    assert not getattr(store, "codx_store", False)
                    assert not _rows_survive_a_commit(store, "temp_store")
                finally:
                    transaction.abort()
                    conn.close()
            finally:
                database.close()
    warnings = [r.getMessage() for r in caplog.records if r.name == store_temps.log.name]
    assert len(warnings) == 1, warnings
    assert "_do_open_for_store" in warnings[0] and "OWN_TEMP_TABLES" in warnings[0]


def test_big_transactions_truncate_sooner(database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_temps, "TRUNCATE_ROWS", 300)
    zodb = database.open()
    truncates = store_temps.Counters.truncates
    conn = zodb.open()
    try:
        root = conn.root()
        for batch in range(3):
            for i in range(200):
                root[f"o{i}"] = PersistentMapping(batch=batch)
            transaction.commit()
        root["last"] = PersistentMapping()
        transaction.commit()
        assert store_temps.Counters.truncates - truncates == 1  # before the third batch
        assert {root[f"o{i}"]["batch"] for i in range(200)} == {2}
        assert _zoids_at(database.settings.db_dsn.get_secret_value(), u64(root["last"]._p_serial)) == {
            u64(root._p_oid),
            u64(root["last"]._p_oid),
        }
    finally:
        transaction.abort()
        conn.close()


def test_a_keep_history_pack_then_writes(pg_dsn: str) -> None:
    # RelStorage's pack opens its connections as store connections (open_for_pre_pack): ours.
    database = Database(_settings(pg_dsn, db_keep_history=True))
    try:
        users = UserDB(database)
        users.create(username="alice")
        for i in range(5):
            users.update("alice", full_name=f"name {i}")
        database.open().pack()
        users.update("alice", full_name="after the pack")
        users.create(username="bob")
        assert users.get("alice").full_name == "after the pack"
        assert check(database).problems == []
    finally:
        database.close()


def test_the_setting_is_on_by_default_and_the_environment_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from db.errors import ConfigurationError

    assert CodxJuniorGlobalSettings.load().db_pg_own_temp_tables is True
    monkeypatch.setenv("CODX_JUNIOR_DB_PG_OWN_TEMP_TABLES", "false")
    assert CodxJuniorGlobalSettings.load().db_pg_own_temp_tables is False
    monkeypatch.setenv("CODX_JUNIOR_DB_PG_OWN_TEMP_TABLES", "maybe")
    with pytest.raises(ConfigurationError, match="CODX_JUNIOR_DB_PG_OWN_TEMP_TABLES"):
        CodxJuniorGlobalSettings.load()
