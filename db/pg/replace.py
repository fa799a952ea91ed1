"""Replace a PostgreSQL database's contents in one transaction (restore/copy ``--force``).

RelStorage can only empty a database (``zap_all``, committed at once) and then fill it one
transaction at a time: a failure or a kill in between leaves an empty or half-filled database.
So the new contents are first written and verified in a staging schema of the same database,
then moved into the live tables in a single PostgreSQL transaction: until it commits, every
reader sees the old data; a crash before the commit leaves the old data and a staging schema
that the next run drops.

The staging tables are copies of the live ones (``CREATE TABLE ... (LIKE ... INCLUDING ALL)``);
RelStorage writes into them through a connection whose ``search_path`` puts the staging schema
first, so its unqualified table names and its stored functions (in ``public``) reach them.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from psycopg2 import sql
from psycopg2.extensions import make_dsn, parse_dsn
from ZODB.interfaces import IStorage

from db.errors import TransferError
from db.pg.connect import STARTUP_LOCK_KEY

log = logging.getLogger(__name__)

STAGING_SCHEMA = "codx_db_staging"
# The only schema RelStorage 4's PostgreSQL installer works in (see refuse_shared_schema).
RELSTORAGE_SCHEMA = "public"
# The one-row table RelStorage locks (FOR UPDATE) to serialise commits; it is not data.
COMMIT_LOCK_TABLE = "commit_row_lock"
# Rows a new RelStorage schema holds before any data: (table, which rows).
SEED_ROWS = [(COMMIT_LOCK_TABLE, "true"), ("transaction", "tid = 0")]


@contextlib.contextmanager
def _connection(dsn: str) -> Iterator[Any]:
    import psycopg2

    conn = psycopg2.connect(dsn, application_name="codx-db replace")
    try:
        yield conn
    finally:
        conn.close()


def drop_leftover_staging(dsn: str) -> bool:
    """Drop a staging schema a killed run left; True if there was one.

    Call it only under the startup lock: then no other copy into this database is running.
    """
    with _connection(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (STAGING_SCHEMA,))
        if cur.fetchone() is None:
            return False
        cur.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(STAGING_SCHEMA)))
        conn.commit()
    log.warning("dropped the schema %s left by a copy or restore that did not finish", STAGING_SCHEMA)
    return True


def _live_schema(cur: Any) -> str:
    cur.execute("SELECT current_schema()")
    return str(cur.fetchone()[0])


def _relstorage_tables() -> frozenset[str]:
    """The tables RelStorage's PostgreSQL schema may hold (its installer's list; ours if it moved)."""
    try:
        from relstorage.adapters.postgresql.schema import PostgreSQLSchemaInstaller

        names = tuple(PostgreSQLSchemaInstaller.all_tables) + tuple(PostgreSQLSchemaInstaller.obsolete_tables)
    except (ImportError, AttributeError):  # another RelStorage: the tables of 4.x
        names = _RELSTORAGE_4_TABLES
    return frozenset(names)


_RELSTORAGE_4_TABLES = (
    *("commit_row_lock", "pack_lock", "transaction", "new_oid", "object_state", "blob_chunk", "current_object"),
    *("object_ref", "object_refs_added", "pack_object", "pack_state", "pack_state_tid", "temp_store"),
    *("temp_blob_chunk", "temp_pack_visit", "temp_undo", "commit_lock"),
)


_RELSTORAGE_VIEWS = ("current_object_state",)  # RelStorage's PostgreSQL schema: its one view


def _all_tables(cur: Any, schema: str) -> list[str]:
    cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY tablename", (schema,))
    return [row[0] for row in cur.fetchall()]


def _tables(cur: Any, schema: str) -> list[str]:
    """RelStorage's tables in ``schema``: the only ones staged and replaced (never another application's)."""
    own = _relstorage_tables()
    return [table for table in _all_tables(cur, schema) if table in own]


def refuse_shared_schema(dsn: str, location: str) -> None:
    """TransferError when the target's schema is not one RelStorage can use, or holds tables not RelStorage's.

    The database may be shared with another application; a copy or restore replaces every
    table it writes to, so codx-db needs a database of its own, and RelStorage its schema
    public there. Checked before anything is created there.
    """
    import psycopg2

    try:
        with _connection(dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT current_schema()")
            schema = cur.fetchone()[0]
            own = _relstorage_tables()
            found = [table for table in _all_tables(cur, schema) if table not in own] if schema else []
    except psycopg2.Error:
        return  # cannot connect: opening the storage says why, in its own words
    if schema != RELSTORAGE_SCHEMA:
        # RelStorage 4 installs its stored procedures in public and checks for its tables in
        # every schema: in another schema it fails half-way (UndefinedTable, AssertionError).
        where = f"the schema {schema}" if schema else "no schema (its search_path names none that exists)"
        raise TransferError(
            f"{location} is {where}: RelStorage keeps codx-db's tables only in the schema "
            f"{RELSTORAGE_SCHEMA} (its stored procedures live there, and it looks for its tables in every "
            "schema), so a codx-db database on PostgreSQL is a database of its own: create one for it; "
            "nothing was written"
        )
    if found:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise TransferError(
            f"{location} holds tables that are not codx-db's ({shown}): a copy or restore replaces "
            "every table it writes to, so codx-db needs a database (or schema) of its own; nothing was written"
        )


# Short sessions codx-db opens to ask the server a question (pg_identity, pg_size, the
# explanation of a lost connection): they cache no data, so they do not make a database "in use".
PROBE_APPLICATION_NAMES = ("codx-db transfer", "codx-db diagnosis")
# The advisory lock key as pg_locks shows it: a bigint key is split into two 32-bit oids.
_LOCK_CLASSID, _LOCK_OBJID = (STARTUP_LOCK_KEY >> 32) & 0xFFFFFFFF, STARTUP_LOCK_KEY & 0xFFFFFFFF
SHOWN_SESSIONS = 5
SETTLE_SECONDS = 2.0


def _other_sessions(cur: Any) -> list[tuple[str | None, str | None]]:
    """(application_name, client address) of the other client sessions on the current database.

    The caller holds codx-db's startup lock, so the one session holding it is the caller's own.
    Another role's session shows without its application_name or address: it still counts.
    A session closed a moment ago (this process's own storages, just closed) stays listed
    until its server process exits: ask again for up to ``SETTLE_SECONDS`` before answering.
    """
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        sessions = _listed_sessions(cur)
        if not sessions or time.monotonic() >= deadline:
            return sessions
        time.sleep(0.05)


def _listed_sessions(cur: Any) -> list[tuple[str | None, str | None]]:
    # pg_stat_activity is read once per transaction unless the snapshot is cleared.
    cur.execute("SELECT pg_stat_clear_snapshot()")
    cur.execute(
        "SELECT application_name, host(client_addr) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
        "AND coalesce(application_name, '') <> ALL(%s) "
        "AND pid NOT IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 1) "
        "ORDER BY application_name, client_addr",
        (list(PROBE_APPLICATION_NAMES), _LOCK_CLASSID, _LOCK_OBJID),
    )
    return [(row[0] or None, row[1]) for row in cur.fetchall()]


# Why a connected application must stop first before its database is replaced (restore, copy).
REPLACED = (
    "An application connected while its database is replaced keeps serving its cached data and loses the "
    "writes it makes afterwards"
)


def _in_use_message(
    location: str, sessions: list[tuple[str | None, str | None]], outcome: str, why: str = REPLACED
) -> str:
    counts = Counter(
        f"{repr(name) if name else 'an unnamed session'} from {address or 'a local socket'}"
        for name, address in sessions
    )
    shown = [f"{who} ({n} sessions)" if n > 1 else who for who, n in list(counts.items())[:SHOWN_SESSIONS]]
    more = f" and {len(counts) - SHOWN_SESSIONS} more" if len(counts) > SHOWN_SESSIONS else ""
    count = len(sessions)
    return (
        f"{location} is in use: {count} other session{'s' if count != 1 else ''} connected to the database "
        f"({', '.join(shown)}{more}). {why}: stop the applications first; {outcome}"
    )


def refuse_sessions_in_use(
    dsn: str, location: str, *, why: str = REPLACED, outcome: str = "nothing was written"
) -> None:
    """TransferError when other sessions are connected to the database (call under the startup lock).

    The message names them, ``why`` they must stop first, and the ``outcome``.
    """
    with _connection(dsn) as conn, conn.cursor() as cur:
        sessions = _other_sessions(cur)
    if sessions:
        raise TransferError(_in_use_message(location, sessions, outcome, why))


def _sequences(cur: Any, schema: str) -> list[str]:
    cur.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind = 'S' AND n.nspname = %s ORDER BY c.relname",
        (schema,),
    )
    return [row[0] for row in cur.fetchall()]


def keeps_history(dsn: str) -> bool:
    """True when the live RelStorage schema keeps history (it has ``current_object``)."""
    with _connection(dsn) as conn, conn.cursor() as cur:
        return "current_object" in _tables(cur, _live_schema(cur))


@contextlib.contextmanager
def staging_storage(dsn: str) -> Iterator[IStorage]:
    """A RelStorage writing into a fresh, empty staging copy of the live schema.

    The staging schema is dropped when the block ends, unless ``replace_from_staging`` moved
    it into place (it drops it in the same transaction).
    """
    from relstorage.adapters.postgresql import PostgreSQLAdapter
    from relstorage.options import Options
    from relstorage.storage import RelStorage

    history = keeps_history(dsn)
    with _connection(dsn) as conn, conn.cursor() as cur:
        live = _live_schema(cur)
        staging = sql.Identifier(STAGING_SCHEMA)
        try:
            cur.execute(sql.SQL("CREATE SCHEMA {}").format(staging))
        except Exception as exc:  # noqa: BLE001 - psycopg2's errors: say what is needed
            raise TransferError(
                f"cannot create the schema {STAGING_SCHEMA} in the target database to stage the new data "
                f"({str(exc).strip().splitlines()[0]}): the role needs CREATE on the database"
            ) from None
        for table in _tables(cur, live):
            cur.execute(
                sql.SQL("CREATE TABLE {}.{} (LIKE {}.{} INCLUDING ALL)").format(
                    staging, sql.Identifier(table), sql.Identifier(live), sql.Identifier(table)
                )
            )
        for sequence in _sequences(cur, live):
            cur.execute(sql.SQL("CREATE SEQUENCE {}.{}").format(staging, sql.Identifier(sequence)))
        # Views (a history-keeping schema reads through current_object_state) are bound to the
        # live tables: recreate them over the staging ones. Their definitions are printed with
        # unqualified names while only the live schema is on the search path.
        cur.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(live)))
        cur.execute("SELECT viewname, definition FROM pg_views WHERE schemaname = %s ORDER BY viewname", (live,))
        views = [(view, definition) for view, definition in cur.fetchall() if view in _RELSTORAGE_VIEWS]
        cur.execute(sql.SQL("SET search_path = {}, {}").format(staging, sql.Identifier(live)))
        for view, definition in views:
            cur.execute(sql.SQL("CREATE VIEW {}.{} AS ").format(staging, sql.Identifier(view)) + sql.SQL(definition))
        # The rows RelStorage puts in a new schema: the commit lock's row, and (history-keeping)
        # transaction 0, which object_state.prev_tid of every first version points to.
        for table, condition in SEED_ROWS:
            if table in _tables(cur, live):
                cur.execute(
                    sql.SQL("INSERT INTO {}.{} SELECT * FROM {}.{} WHERE ").format(
                        staging, sql.Identifier(table), sql.Identifier(live), sql.Identifier(table)
                    )
                    + sql.SQL(condition)
                )
        conn.commit()
    try:
        options = Options(
            keep_history=history,
            create_schema=False,
            driver="psycopg2",
            name="codx-db staging",
            cache_local_mb=0,
        )
        adapter = PostgreSQLAdapter(dsn=_staging_dsn(dsn, live), options=options)
        storage = RelStorage(adapter, options=options)
        try:
            yield storage
        finally:
            storage.close()
    finally:
        drop_leftover_staging_quietly(dsn)


def drop_leftover_staging_quietly(dsn: str) -> None:
    with _connection(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(STAGING_SCHEMA)))
        conn.commit()


def _staging_dsn(dsn: str, live: str) -> str:
    """The DSN with a search_path that finds the staging tables first, then RelStorage's functions."""
    options = parse_dsn(dsn).get("options", "")
    path = f"{STAGING_SCHEMA},{live}".replace("\\", "\\\\").replace(" ", "\\ ")
    return make_dsn(dsn, options=f"{options} -c search_path={path}".strip())


def replace_from_staging(dsn: str, location: str = "the target database") -> None:
    """Move the staged data into the live tables in one transaction (old data visible until it commits).

    RelStorage's commit lock is held meanwhile, so no application commits in between. Call it
    under the startup lock, so no application finishes opening the database meanwhile.
    """
    with _connection(dsn) as conn, conn.cursor() as cur:
        # Again, now that the copy is done: a session that connected meanwhile (a RelStorage
        # user that does not take codx-db's startup lock, or an application waiting for it)
        # may hold or be about to hold data the replacement makes stale.
        sessions = _other_sessions(cur)
        if sessions:
            raise TransferError(_in_use_message(location, sessions, "nothing was replaced"))
        live = _live_schema(cur)
        tables = [t for t in _tables(cur, live) if t != COMMIT_LOCK_TABLE]
        staged = set(_tables(cur, STAGING_SCHEMA))
        missing = [t for t in tables if t not in staged]
        if missing:
            raise TransferError(f"the staging schema lacks the tables {', '.join(missing)}: nothing was replaced")
        ordered = _parents_first(cur, live, tables)
        if COMMIT_LOCK_TABLE in _tables(cur, live):
            cur.execute(
                sql.SQL("SELECT tid FROM {}.{} FOR UPDATE").format(
                    sql.Identifier(live), sql.Identifier(COMMIT_LOCK_TABLE)
                )
            )
        for table in reversed(ordered):  # rows that reference others go first
            cur.execute(sql.SQL("DELETE FROM {}.{}").format(sql.Identifier(live), sql.Identifier(table)))
        for table in ordered:
            columns = sql.SQL(", ").join(sql.Identifier(c) for c in _columns(cur, live, table))
            cur.execute(
                sql.SQL("INSERT INTO {}.{} ({}) SELECT {} FROM {}.{}").format(
                    sql.Identifier(live),
                    sql.Identifier(table),
                    columns,
                    columns,
                    sql.Identifier(STAGING_SCHEMA),
                    sql.Identifier(table),
                )
            )
        for sequence in _sequences(cur, live):
            # New object ids continue after the highest either side handed out.
            query = "SELECT setval({}, GREATEST((SELECT last_value FROM {}.{}), (SELECT last_value FROM {}.{})))"
            cur.execute(
                sql.SQL(query).format(
                    sql.Literal(f"{live}.{sequence}"),
                    sql.Identifier(live),
                    sql.Identifier(sequence),
                    sql.Identifier(STAGING_SCHEMA),
                    sql.Identifier(sequence),
                )
            )
        cur.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(STAGING_SCHEMA)))
        conn.commit()


def _columns(cur: Any, schema: str, table: str) -> list[str]:
    cur.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
        "ORDER BY ordinal_position",
        (schema, table),
    )
    return [row[0] for row in cur.fetchall()]


def _parents_first(cur: Any, schema: str, tables: list[str]) -> list[str]:
    """The tables ordered so that each comes after the tables its foreign keys point to."""
    cur.execute(
        "SELECT c.conrelid::regclass::text, c.confrelid::regclass::text FROM pg_constraint c "
        "JOIN pg_namespace n ON n.oid = c.connamespace WHERE c.contype = 'f' AND n.nspname = %s",
        (schema,),
    )
    parents: dict[str, set[str]] = {t: set() for t in tables}
    for child, parent in cur.fetchall():
        child, parent = child.split(".")[-1].strip('"'), parent.split(".")[-1].strip('"')
        if child in parents and parent in parents and child != parent:
            parents[child].add(parent)
    ordered: list[str] = []
    while parents:
        ready = sorted(t for t, needs in parents.items() if not needs - set(ordered))
        if not ready:
            raise TransferError(f"circular foreign keys between {', '.join(sorted(parents))}: nothing was replaced")
        for table in ready:
            ordered.append(table)
            del parents[table]
    return ordered
