"""A commit on PostgreSQL joins its few temp_store rows to object_state by index, whatever the size.

PostgreSQL keeps no statistics for temp tables: it guesses ~390 rows for temp_store, so in a
database of a few thousand to ~100k objects it plans RelStorage's two joins in
``lock_objects_and_detect_conflicts`` as hash joins over a sequential scan of all of
object_state. Every commit then read the whole table twice (measured at 3,900 objects: 1.9 of the
2.4 ms of that function; the cost grows with the database). codx-db's store sessions turn hash
and merge joins off (``db_pg_store_index_joins``), so those joins probe object_state_pkey.

The counts come from PostgreSQL's own statistics (``pg_stat_user_tables``), which a backend
flushes before it leaves ``pg_stat_activity``.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest
import transaction
from persistent.mapping import PersistentMapping
from psycopg2.extensions import parse_dsn

from db.database import Database
from db.pg import store_temps
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB

pytestmark = pytest.mark.postgres

SEEDED = 1500
CREATES = 40


def _settings(pg_dsn: str, **extra: Any) -> CodxJuniorGlobalSettings:
    return CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=pg_dsn, **extra)


def _object_state_scans(pg_dsn: str) -> tuple[int, int]:
    """(sequential, index) scans of the current states, once every other session has gone.

    object_state, and current_object when RelStorage keeps history (it joins that one instead).
    """
    dbname = parse_dsn(pg_dsn)["dbname"]
    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            deadline = time.monotonic() + 30
            while True:
                cur.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,)
                )
                found = cur.fetchone()
                assert found is not None
                if found[0] == 0:
                    break
                assert time.monotonic() < deadline, f"{found[0]} sessions still on {dbname}"
                time.sleep(0.05)
            cur.execute("SELECT pg_stat_clear_snapshot()")
            cur.execute(
                "SELECT sum(seq_scan), sum(coalesce(idx_scan, 0)) FROM pg_stat_user_tables"
                " WHERE relname IN ('object_state', 'current_object')"
            )
            row = cur.fetchone()
            assert row is not None
            return int(row[0]), int(row[1])
    finally:
        conn.close()


def _seed(pg_dsn: str, keep_history: bool) -> None:
    database = Database(_settings(pg_dsn, db_keep_history=keep_history))
    try:
        records = [{"username": f"seed{i:05d}", "email": f"seed{i:05d}@example.com"} for i in range(SEEDED)]
        UserDB(database).import_users(records)
    finally:
        database.close()


def _creates(pg_dsn: str, **extra: Any) -> None:
    database = Database(_settings(pg_dsn, **extra))
    try:
        users = UserDB(database)
        for i in range(CREATES):
            users.create(username=f"new{i:03d}", email=f"new{i:03d}@example.com")
    finally:
        database.close()


@pytest.mark.parametrize("keep_history", [False, True], ids=["history-free", "keep-history"])
def test_commits_do_not_scan_object_state(pg_dsn: str, keep_history: bool) -> None:
    # Before: 2 scans per create history-free, 4 of current_object keeping history.
    _seed(pg_dsn, keep_history)
    seq_before, idx_before = _object_state_scans(pg_dsn)
    _creates(pg_dsn, db_keep_history=keep_history)
    seq_after, idx_after = _object_state_scans(pg_dsn)
    # Opening the database and polling may scan a little; a commit's joins must not.
    assert seq_after - seq_before <= 5, (seq_before, seq_after)
    assert idx_after - idx_before >= CREATES, (idx_before, idx_after)


def test_the_setting_off_leaves_postgresql_planning(pg_dsn: str) -> None:
    _seed(pg_dsn, keep_history=False)
    seq_before, _ = _object_state_scans(pg_dsn)
    _creates(pg_dsn, db_pg_store_index_joins=False)
    seq_after, _ = _object_state_scans(pg_dsn)
    # PostgreSQL's own plan for these sizes: the hash joins, a scan of object_state each.
    assert seq_after - seq_before >= CREATES, (seq_before, seq_after)


def _store_setting(conn: Any, name: str) -> str:
    """A setting of the psycopg2 store connection of a ZODB connection, outside any commit."""
    store = conn._storage._store_connection_pool._connections[-1].connection
    with store.cursor(cursor_factory=psycopg2.extensions.cursor) as cur:
        cur.execute(f"SHOW {name}")
        row = cur.fetchone()
    store.rollback()
    return str(row[0])


def test_the_join_settings_end_with_the_commit(pg_dsn: str) -> None:
    # RelStorage's pack and pre-pack run on store connections too: they must keep hash joins.
    database = Database(_settings(pg_dsn))
    try:
        conn = database.open().open()
        try:
            conn.root()["x"] = PersistentMapping(n=1)
            transaction.commit()
            assert _store_setting(conn, "enable_hashjoin") == "on"
            assert _store_setting(conn, "enable_mergejoin") == "on"
        finally:
            transaction.abort()
            conn.close()
    finally:
        database.close()


def test_a_relstorage_sending_another_lock_call_keeps_its_plans(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A release whose lock phase is sent differently: one warning naming the setting, commits
    # still work, with PostgreSQL's plans.
    from relstorage.adapters.postgresql.adapter import PostgreSQLAdapter

    original = PostgreSQLAdapter._best_lock_objects_and_detect_conflicts

    def renamed(self: Any, cursor: Any, read_current_oids: Any) -> Any:
        return original(self, cursor, read_current_oids)

    monkeypatch.setattr(PostgreSQLAdapter, "_best_lock_objects_and_detect_conflicts", renamed)
    monkeypatch.setattr(store_temps, "_warned", set())
    _seed(pg_dsn, keep_history=False)
    seq_before, _ = _object_state_scans(pg_dsn)
    with caplog.at_level("WARNING"):
        _creates(pg_dsn)
    seq_after, _ = _object_state_scans(pg_dsn)
    warnings = [r.getMessage() for r in caplog.records if r.name == store_temps.log.name]
    assert len(warnings) == 1, warnings
    assert "lock_objects_and_detect_conflicts" in warnings[0] and "STORE_INDEX_JOINS" in warnings[0]
    assert seq_after - seq_before >= CREATES, (seq_before, seq_after)
