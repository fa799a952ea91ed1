"""RelStorage's store temp tables without truncation under the commit lock, and 4 round trips per write.

RelStorage creates ``temp_store`` and ``temp_store_replacements`` (and ``temp_blob_chunk``) on
each store connection as ``ON COMMIT DELETE ROWS`` tables. At every commit PostgreSQL truncates
all such tables of the session (heap and index files: ftruncate) inside ``CommitTransaction``,
before it releases the locks, so under RelStorage's commit lock (``pg_advisory_xact_lock(-1)``,
held to the end of the transaction). Measured: 6.6-8.2 ms per commit, against 0.33-0.40 ms for
``ON COMMIT PRESERVE ROWS`` tables emptied with ``DELETE`` (docs/design/load.md §0, §4.1).

So codx-db creates those tables itself, with RelStorage's own columns (read from RelStorage's
source at install time) and ``ON COMMIT PRESERVE ROWS``, before RelStorage's
``CREATE TEMPORARY TABLE IF NOT EXISTS`` finds them. The invariant that replaces the truncation:
**the first message of every store transaction empties them** (``DELETE FROM temp_store; DELETE
FROM temp_store_replacements;`` prefixed to the transaction's first statement, the same message):
rows left by a transaction that ended in any way (committed and moved, aborted, failed) can never
reach the next move. Every ``TRUNCATE_EVERY`` transactions (or ``TRUNCATE_ROWS`` rows copied in)
the prefix is a ``TRUNCATE`` instead, which bounds the space ``DELETE`` leaves behind (autovacuum
never visits temp tables); that truncation runs at the start of a transaction, not at its commit.

``temp_blob_chunk`` stays RelStorage's when a blob directory is configured: its ``DELETE``
trigger (procs/temp_blob_chunk_delete_trigger.sql) ``lo_unlink``s a row's large object unless
``blob_chunk`` still names it. Right after a commit it does, but by the next transaction another
writer may have replaced that blob or a pack removed it (``blob_chunk``'s own trigger then
unlinked it already): a ``DELETE`` would unlink twice and fail, every time, on that connection.
PostgreSQL's truncation fires no trigger. Without a blob directory RelStorage never writes a row
to it (only ``mover.upload_blob`` does, for ``storeBlob``/``restoreBlob``), so it is created
``PRESERVE ROWS`` too and nothing of the session is truncated at commit any more.

Round trips (§4.2): psycopg2 sends ``BEGIN`` alone before a transaction's first statement, and
after RelStorage's ``...; COMMIT; ...`` message (the move and the commit in one round trip)
RelStorage calls ``conn.commit()`` only to bring psycopg2's idea of the transaction in line: a
second, waited ``COMMIT`` the server answers with a warning. Here the store connection runs in
psycopg2's autocommit mode and codx-db opens each transaction itself: ``BEGIN ISOLATION LEVEL
READ COMMITTED, READ WRITE`` (what psycopg2 sent for RelStorage's store sessions) goes in the
prefix, and ``commit()``/``rollback()`` send a statement only if the server still has a
transaction open. A write then waits for 4 round trips instead of 6: the poll (load connection),
``BEGIN; DELETE...; COPY`` (libpq stops a multi-statement message at ``COPY ... FROM STDIN`` and
psycopg2 streams the rows), ``lock_objects_and_detect_conflicts``, and the move with its COMMIT.
Not with a blob directory: psycopg2 refuses large objects (blob uploads) in autocommit mode; then
psycopg2 keeps its transactions and only the temp tables change.

Plans (tests/test_pg_store_plans.py): PostgreSQL keeps no statistics for temp tables and guesses
~390 rows for temp_store, so below ~100k objects it planned ``lock_objects_and_detect_conflicts``'
two joins as hash joins over a sequential scan of all of object_state: every commit read the
table twice (1.9 of that function's 2.4 ms at 3,900 objects, growing with the database; with
history kept the move scanned current_object too). A commit holds a handful of rows, so the
statement that calls that function carries ``INDEX_JOINS`` in its message: ``SET LOCAL`` turns
hash and merge joins off for the rest of that commit's transaction only (the lock, the move),
and the joins probe the primary key once per row. Every other transaction (RelStorage's pack
and pre-pack, which use store connections too, its loads, codx-db's own sessions) keeps
PostgreSQL's planning. ``db_pg_store_index_joins=false`` leaves the planner alone.

Safe to keep: ``db_pg_own_temp_tables=false`` (``CODX_JUNIOR_DB_PG_OWN_TEMP_TABLES``) leaves
RelStorage's store connections alone, and so does ``db_pg_fast_reads=false`` (plain RelStorage
throughout). ``install`` checks every attribute it relies on (``missing_hooks``); a release
without one gets one warning and RelStorage unchanged.
"""

from __future__ import annotations

import inspect
import logging
import re
from typing import TYPE_CHECKING, Any

import psycopg2
import psycopg2.extensions

from db.pg import hooks

log = logging.getLogger(__name__)

BEGIN = "BEGIN ISOLATION LEVEL READ COMMITTED, READ WRITE;"
CLEAN = "DELETE FROM temp_store;DELETE FROM temp_store_replacements;"
TRUNCATE = "TRUNCATE temp_store, temp_store_replacements;"
# One TRUNCATE (new files for the tables and indexes) per this many transactions, or once this many
# rows were copied in since the last: every statement reading temp_store walks the dead rows, and
# 1,000 took 3-9% less PostgreSQL CPU per create than 5,000 (python -m bench.truncate_sweep).
TRUNCATE_EVERY = 1000
TRUNCATE_ROWS = 1000
_IDLE = getattr(psycopg2.extensions, "TRANSACTION_STATUS_IDLE", None)
# Sent before RelStorage's call of LOCK_CALL, in its message (see "Plans" above).
INDEX_JOINS = "SET LOCAL enable_hashjoin = off;SET LOCAL enable_mergejoin = off;"
LOCK_CALL = "lock_objects_and_detect_conflicts("

# RelStorage's DDL, PostgreSQLObjectMover.on_store_opened (relstorage/adapters/postgresql/mover.py).
_TEMPLATE = re.compile(
    r"CREATE TEMPORARY TABLE IF NOT EXISTS \{NAME\} \((?P<columns>[^;]*?)\)\s*ON COMMIT DELETE ROWS;", re.S
)
_BLOB_TABLE = re.compile(
    r"CREATE TEMPORARY TABLE IF NOT EXISTS temp_blob_chunk \((?P<columns>[^;]*?)\)\s*ON COMMIT DELETE ROWS;", re.S
)


class Counters:
    """Process-wide counts, for tests and benchmarks."""

    cleans = 0  # store transactions whose first message emptied the temp tables (DELETE or TRUNCATE)
    truncates = 0  # of which TRUNCATE
    begins = 0  # BEGINs sent in the same message as the first statement


def table_ddl(mover: Any, with_blob_table: bool) -> list[str] | None:
    """``CREATE TEMPORARY TABLE`` statements for our tables, RelStorage's columns; None if unreadable."""
    try:
        source = inspect.getsource(type(mover).on_store_opened)
    except (OSError, TypeError, AttributeError):
        return None
    found = _TEMPLATE.search(source)
    blob = _BLOB_TABLE.search(source)
    names = ("temp_store", "temp_store_replacements")
    if found is None or blob is None or not all(f"format(NAME='{name}')" in source for name in names):
        return None
    tables = [(name, found["columns"]) for name in names]
    if with_blob_table:
        tables.append(("temp_blob_chunk", blob["columns"]))
    return [
        f"CREATE TEMPORARY TABLE IF NOT EXISTS {name} ({columns.strip()}) ON COMMIT PRESERVE ROWS"
        for name, columns in tables
    ]


class _StoreCursorMixin:
    """A store-connection cursor whose transaction's first statement carries the prefix."""

    __slots__ = ()

    def execute(self, query: Any, vars: Any = None) -> Any:
        conn: Any = self.connection  # type: ignore[attr-defined]
        if not conn.codx_store:
            return super().execute(query, vars)  # type: ignore[misc]
        query = conn.codx_starting(self, query)
        if conn.codx_index_joins:
            query = conn.codx_index_joins_for(query)
        return super().execute(query, vars)  # type: ignore[misc]

    def copy_expert(self, sql: Any, file: Any, size: int = 8192) -> Any:
        conn: Any = self.connection  # type: ignore[attr-defined]
        if not conn.codx_store:
            return super().copy_expert(sql, file, size)  # type: ignore[misc]
        # libpq's PQexec stops at the COPY's CopyIn reply: the prefix's results are read and
        # dropped, and psycopg2 streams the rows as usual (tests/test_pg_temp_tables.py).
        result = super().copy_expert(conn.codx_starting(self, sql), file, size)  # type: ignore[misc]
        try:
            conn.codx_store_rows += len(file)  # RelStorage's TempStoreCopyBuffer: rows
        except TypeError:
            conn.codx_store_rows += 1
        return result

    def _codx_alone(self, method: str, *args: Any, **kwargs: Any) -> Any:
        conn: Any = self.connection  # type: ignore[attr-defined]
        if conn.codx_store:
            conn.codx_starting(None, None)
        return getattr(super(), method)(*args, **kwargs)

    def executemany(self, query: Any, vars_list: Any) -> Any:
        return self._codx_alone("executemany", query, vars_list)

    def callproc(self, procname: Any, parameters: Any = None) -> Any:
        return self._codx_alone("callproc", procname, parameters)

    def copy_from(self, *args: Any, **kwargs: Any) -> Any:
        return self._codx_alone("copy_from", *args, **kwargs)

    def copy_to(self, *args: Any, **kwargs: Any) -> Any:
        return self._codx_alone("copy_to", *args, **kwargs)


if TYPE_CHECKING:
    _ConnectionBase = psycopg2.extensions.connection
else:
    _ConnectionBase = object


class _StoreConnectionMixin(_ConnectionBase):
    """Store-connection side of a RelStorage psycopg2 connection (see the module doc)."""

    if not TYPE_CHECKING:
        __slots__ = ()
    codx_store: bool  # this is a store connection taken over by codx-db
    codx_store_manual: bool  # ... in autocommit mode, codx-db sending BEGIN/COMMIT/ROLLBACK
    codx_clean_due: bool  # the next statement must carry the prefix
    codx_store_txns: int
    codx_store_rows: int  # rows copied in since the last TRUNCATE
    codx_store_cursor: Any  # the cursor class before take-over (plain statements)
    codx_index_joins: bool  # prefix RelStorage's lock call with INDEX_JOINS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.codx_store = False
        self.codx_store_manual = False
        self.codx_clean_due = True
        self.codx_store_txns = 0
        self.codx_store_rows = 0
        self.codx_index_joins = False

    def codx_store_take_over(self, ddl: list[str], manual: bool, index_joins: bool) -> None:
        """Create our temp tables (before RelStorage's DDL) and drive this store connection."""
        factory: Any = self.cursor_factory
        self.codx_store_cursor = factory or psycopg2.extensions.cursor
        with self.codx_store_cursor(self) as cur:
            for statement in ddl:
                cur.execute(statement)
        super().commit()
        if manual:
            self.autocommit = True
        self.cursor_factory = _subclass(_StoreCursorMixin, self.codx_store_cursor)
        self.codx_store_manual = manual
        self.codx_clean_due = True
        self.codx_index_joins = index_joins
        self.codx_store = True

    def codx_index_joins_for(self, query: Any) -> Any:
        """``query`` with ``INDEX_JOINS`` in front if it calls ``LOCK_CALL`` (a commit's lock phase)."""
        if isinstance(query, bytes):
            return INDEX_JOINS.encode() + query if LOCK_CALL.encode() in query else query
        if not isinstance(query, str):  # psycopg2.sql.Composable: RelStorage sends plain text here
            return query
        return INDEX_JOINS + query if LOCK_CALL in query else query

    def codx_starting(self, cursor: Any, query: Any) -> Any:
        """``query`` with the transaction's prefix when it is the first statement of one.

        ``cursor`` None (or a named cursor, whose DECLARE takes no prefix): the prefix, if due,
        is sent alone now and ``query`` is returned unchanged.

        The prefix is due once: a statement that carried it and raised either never reached
        the server (the transaction is then still IDLE, and the next statement carries it
        again) or did (the DELETEs ran, or the transaction failed and is rolled back, which
        makes it due again). Sending it again inside a transaction that goes on would delete
        that transaction's own rows.
        """
        idle = self.info.transaction_status == _IDLE
        if not (idle or self.codx_clean_due):
            return query
        # A transaction begun by something else than these cursors (psycopg2's large objects;
        # RelStorage 4.3 always runs a statement first) is not idle, but not emptied yet.
        prefix = BEGIN if idle and self.codx_store_manual else ""
        Counters.begins += bool(prefix)
        self.codx_store_txns += 1
        if self.codx_store_txns % TRUNCATE_EVERY == 0 or self.codx_store_rows >= TRUNCATE_ROWS:
            self.codx_store_txns = self.codx_store_rows = 0
            prefix += TRUNCATE
            Counters.truncates += 1
        else:
            prefix += CLEAN
        Counters.cleans += 1
        self.codx_clean_due = False
        if cursor is None or cursor.name is not None or query is None:
            with self.codx_store_cursor(self) as cur:
                cur.execute(prefix)
            return query
        if isinstance(query, bytes):
            return prefix.encode() + query
        if not isinstance(query, str):  # psycopg2.sql.Composable
            query = query.as_string(self)
        return prefix + query

    def _codx_store_end(self, statement: str) -> None:
        if self.info.transaction_status == _IDLE:
            return  # RelStorage's hidden COMMIT ended it: nothing to send, nothing to wait for
        with self.codx_store_cursor(self) as cur:
            cur.execute(statement)

    def commit(self) -> None:
        if getattr(self, "codx_store", False):
            self.codx_clean_due = True
            if self.codx_store_manual:
                self._codx_store_end("COMMIT")
                return
        super().commit()

    def rollback(self) -> None:
        if getattr(self, "codx_store", False):
            self.codx_clean_due = True
            if self.codx_store_manual:
                self._codx_store_end("ROLLBACK")
                return
        super().rollback()

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        named = bool(args and args[0]) or kwargs.get("name") is not None
        if named and getattr(self, "codx_store_manual", False) and len(args) < 3 and "withhold" not in kwargs:
            # psycopg2 refuses a named cursor in autocommit mode unless WITH HOLD (see roundtrips).
            kwargs["withhold"] = True
        return super().cursor(*args, **kwargs)


_CLASSES: dict[tuple[type, type], type] = {}


def _subclass(mixin: type, base: type, slots: tuple[str, ...] = ()) -> type:
    cls = _CLASSES.get((mixin, base))
    if cls is None:
        name = "CodxStoreCursor" if mixin is _StoreCursorMixin else "CodxStoreConnection"
        cls = type(name, (mixin, base), {"__module__": __name__, "__slots__": slots})
        _CLASSES[(mixin, base)] = cls
    return cls


_SLOTS: tuple[str, ...] = ("codx_store", "codx_store_manual", "codx_clean_due", "codx_store_txns")
_SLOTS += ("codx_store_rows", "codx_store_cursor", "codx_index_joins")
_CONNECTION_NEEDS = ("info", "autocommit", "cursor_factory", "cursor", "rollback", "commit")


def missing_hooks(adapter: Any) -> list[str]:
    """What ``install`` relies on that this RelStorage / psycopg2 lacks."""
    missing = [] if _IDLE is not None else ["psycopg2.extensions.TRANSACTION_STATUS_IDLE"]
    connmanager = getattr(adapter, "connmanager", None)
    if not callable(getattr(connmanager, "_do_open_for_store", None)):
        missing.append("connmanager._do_open_for_store()")
    if not hasattr(adapter, "options"):
        missing.append("adapter.options")
    if table_ddl(getattr(adapter, "mover", None), False) is None:
        missing.append("mover.on_store_opened() creating temp_store, temp_store_replacements, temp_blob_chunk")
    driver = getattr(connmanager, "driver", None)
    connect = getattr(driver, "connect", None)
    if not (isinstance(connect, type) and issubclass(connect, psycopg2.extensions.connection)):
        missing.append("driver.connect (a psycopg2 connection class)")
    else:
        missing += [f"psycopg2 connection.{name}" for name in _CONNECTION_NEEDS if not hasattr(connect, name)]
    if not callable(getattr(driver, "cursor", None)):
        missing.append("driver.cursor()")
    read_committed = getattr(driver, "ISOLATION_LEVEL_READ_COMMITTED", None)
    if read_committed is None or getattr(connmanager, "isolation_store", None) != read_committed:
        missing.append("connmanager.isolation_store == READ COMMITTED")
    return missing


_warned: set[tuple[str, ...]] = set()


def install(adapter: Any, index_joins: bool = True) -> bool:
    """Own the store temp tables of one RelStorage PostgreSQL adapter's future store connections.

    Call before RelStorage opens a store connection (one opened before is left as it was).
    ``index_joins``: their commits' lock calls get ``INDEX_JOINS`` (``db_pg_store_index_joins``); if
    RelStorage no longer sends that call as expected, one warning and PostgreSQL's plans.
    Returns False, changing nothing, when a hook is missing (warned about once) or the driver
    is not psycopg2 (then silently: RelStorage's other drivers are not patched here).
    """
    connmanager: Any = getattr(adapter, "connmanager", None)
    if getattr(getattr(connmanager, "driver", None), "__name__", None) != "psycopg2":
        return False
    missing = missing_hooks(adapter)
    if missing:
        hooks.warn_missing_once(
            log,
            _warned,
            "db/pg/store_temps.py",
            missing,
            "RelStorage keeps its own temp tables (truncated under the commit lock at every commit)",
            "CODX_JUNIOR_DB_PG_OWN_TEMP_TABLES",
        )
        return False
    if getattr(connmanager, "codx_own_temp_tables", False):
        return True
    blobs = bool(getattr(adapter.options, "blob_dir", None))
    ddl = table_ddl(adapter.mover, with_blob_table=not blobs)
    assert ddl is not None  # checked by missing_hooks
    if index_joins and not _sends_lock_call(adapter):
        hooks.warn_missing_once(
            log,
            _warned,
            "db/pg/store_temps.py",
            [f"adapter._best_lock_objects_and_detect_conflicts() sending {LOCK_CALL}...)"],
            "commits keep PostgreSQL's plans for the lock phase (it may scan object_state)",
            "CODX_JUNIOR_DB_PG_STORE_INDEX_JOINS",
        )
        index_joins = False
    manual = not blobs  # psycopg2 refuses large objects (blob uploads) in autocommit mode
    driver = connmanager.driver
    driver.connect = _subclass(_StoreConnectionMixin, driver.connect, _SLOTS)
    open_for_store = connmanager._do_open_for_store

    def _do_open_for_store(**open_args: Any) -> tuple[Any, Any]:
        conn, cursor = open_for_store(**open_args)
        if isinstance(conn, _StoreConnectionMixin) and not conn.codx_store:
            cursor.close()
            try:
                conn.codx_store_take_over(ddl, manual, index_joins)
            except Exception:
                connmanager.close(conn, None)
                raise
            cursor = driver.cursor(conn)
        return conn, cursor

    connmanager._do_open_for_store = _do_open_for_store
    connmanager.codx_own_temp_tables = True
    connmanager.codx_store_manual = manual
    return True


def _sends_lock_call(adapter: Any) -> bool:
    """Whether RelStorage's adapter calls ``LOCK_CALL`` as one statement text (what INDEX_JOINS matches)."""
    try:
        source = inspect.getsource(type(adapter)._best_lock_objects_and_detect_conflicts)
    except (OSError, TypeError, AttributeError):
        return False
    return f"'SELECT * FROM {LOCK_CALL}" in source
