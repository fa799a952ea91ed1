"""Questions to a PostgreSQL server about a codx-db database: which database it is, how big it is."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg2

from db.errors import DatabaseUnavailable
from db.pg.dsn import scrub
from db.settings import mask_dsn


def pg_identity(dsn: str) -> tuple[str, ...]:
    """What identifies a codx-db database on PostgreSQL whatever the DSN's spelling (localhost, 127.0.0.1, socket).

    A codx-db database is a schema: RelStorage's tables live in the DSN's current schema, so
    two schemas of one PostgreSQL database (search_path in the DSN's options) are two databases.
    """
    with _connection(dsn) as conn, conn.cursor() as cur:
        # The server's start time and the database's oid: two databases share both only
        # if they are the same database; the schema's oid tells its schemas apart.
        cur.execute(
            "SELECT pg_postmaster_start_time()::text, d.oid::text, "
            "(SELECT n.oid::text FROM pg_namespace n WHERE n.nspname = current_schema()) "
            "FROM pg_database d WHERE d.datname = current_database()"
        )
        started, oid, schema = cur.fetchone()
    return ("postgres", started, oid, schema or "")


def pg_size(dsn: str) -> tuple[int, int]:
    """(bytes, object records) of the object-state tables of the DSN's current schema."""
    with _connection(dsn) as conn, conn.cursor() as cur:
        # The tables holding object states (with their indexes and TOAST): RelStorage's pack
        # bookkeeping tables (object_ref...) grow on the first pack and would hide the gain.
        cur.execute(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND n.nspname = current_schema() "
            "AND c.relname IN ('object_state', 'current_object', 'blob_chunk')"
        )
        size = int(cur.fetchone()[0])
        cur.execute("SELECT count(*) FROM object_state")
        return size, int(cur.fetchone()[0])


@contextlib.contextmanager
def _connection(dsn: str) -> Iterator[Any]:
    """A short psycopg2 connection; a failure names the server, never the password."""
    try:
        conn = psycopg2.connect(dsn, application_name="codx-db transfer", connect_timeout=10)
    except psycopg2.OperationalError as exc:
        reason = scrub((str(exc).strip().splitlines() or ["connection failed"])[0], dsn)
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL ({mask_dsn(dsn)}): {reason}") from None
    try:
        yield conn
    finally:
        conn.close()
