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
import pytest
from psycopg2.extensions import parse_dsn

from db.database import Database
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
