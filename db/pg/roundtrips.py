"""Fewer waited SQL round trips per unit of work on RelStorage/PostgreSQL.

Reads: one waited round trip per read-only unit of work instead of three (below).
Writes: RelStorage sets ``lock_timeout`` (BEGIN, SET, COMMIT: three round trips) on its store
connection before every write transaction, although the value never changes and a committed
``SET`` lasts for the session; here it is set once, when the connection opens.

RelStorage reads through a "load connection" in a REPEATABLE READ, READ ONLY transaction so
that every object a unit of work loads comes from one snapshot, the one its poll for
invalidations saw. With psycopg2 driving the transaction, a unit of work that finds its
objects in the cache costs three round trips, each waited for: ``BEGIN`` (psycopg2 sends it
alone before the first statement), the poll, and ``ROLLBACK`` at the end.

This module keeps the same transaction and the same snapshot and changes only how the
boundaries travel:

- the load connection runs in psycopg2's autocommit mode and codx-db starts the transaction
  itself, sending ``BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;`` in the same message
  as the first statement (the poll): one round trip instead of two;
- ``ROLLBACK`` is sent when RelStorage ends the transaction, exactly as before, but its reply
  is not waited for: it is read (and dropped) just before the connection's next statement,
  by which time it has long arrived. The snapshot ends at the same moment as before, so an
  idle pooled connection holds no snapshot and no locks.

The asynchronous send uses libpq's ``PQsendQuery`` on psycopg2's own connection
(``connection.pgconn_ptr``, through ctypes). If libpq cannot be reached that way, the
``ROLLBACK`` is sent and waited for as usual: two round trips instead of one, same results.

Only RelStorage's load connections are changed that way; the store connection (writes,
locks, commits) is driven by RelStorage as before, minus the repeated ``SET lock_timeout``.

Safe to keep: ``db_pg_fast_reads=false`` (``CODX_JUNIOR_DB_PG_FAST_READS``) leaves RelStorage
alone, and ``install`` first checks every RelStorage and psycopg2 attribute it patches or
calls (``missing_hooks``): a release without one gets a warning, once, and plain RelStorage.
pyproject.toml bounds the versions this was written against.
"""

from __future__ import annotations

import ctypes
import inspect
import logging
import select
import threading
from typing import TYPE_CHECKING, Any

import psycopg2
import psycopg2.extensions

from db.pg import hooks

# The logger keeps the name it had before the module moved into db/pg/: operators' logging
# configuration (and tests) select its warnings by that name.
log = logging.getLogger("db.pg_roundtrips")

# What RelStorage's PostgreSQL connection manager asks psycopg2 for on load connections
# (``_do_open_for_load``: REPEATABLE READ, read only, not deferrable).
BEGIN = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;"
# getattr: a psycopg2 without them is reported by missing_hooks(), not by an import error.
_IDLE = getattr(psycopg2.extensions, "TRANSACTION_STATUS_IDLE", None)
_ACTIVE = getattr(psycopg2.extensions, "TRANSACTION_STATUS_ACTIVE", None)


class _LibPQ:
    """The few libpq functions used here, from the very library psycopg2 calls."""

    def __init__(self, lib: Any) -> None:
        self.send = lib.PQsendQuery
        self.send.argtypes, self.send.restype = [ctypes.c_void_p, ctypes.c_char_p], ctypes.c_int
        self.get_result = lib.PQgetResult
        self.get_result.argtypes, self.get_result.restype = [ctypes.c_void_p], ctypes.c_void_p
        self.clear = lib.PQclear
        self.clear.argtypes, self.clear.restype = [ctypes.c_void_p], None


def _load_libpq() -> _LibPQ | None:
    """libpq through psycopg2's extension module, or None (then ROLLBACKs are waited for)."""
    try:
        from psycopg2 import _psycopg

        # dlsym on the extension's handle also searches the libraries it was linked with,
        # so this finds the very libpq psycopg2 calls (psycopg2-binary bundles its own).
        return _LibPQ(ctypes.CDLL(_psycopg.__file__))
    except (OSError, AttributeError, ImportError) as exc:
        log.info("libpq not reachable through psycopg2 (%s): ROLLBACK of reads will be waited for", exc)
        return None


_LIBPQ = _load_libpq()


class Counters:
    """Process-wide counts, for benchmarks and tests: what this module sent on its own."""

    begins = 0  # BEGINs sent in the same message as a statement
    pipelined_rollbacks = 0  # ROLLBACKs sent without waiting for the reply
    waited_rollbacks = 0  # ROLLBACKs sent and waited for (no libpq access, or after an error)


class _ReadCursorMixin:
    """A load-connection cursor that opens the transaction in its first statement's message."""

    __slots__ = ()

    def execute(self, query: Any, vars: Any = None) -> Any:
        conn: Any = self.connection  # type: ignore[attr-defined]
        if not conn.codx_manual:
            return super().execute(query, vars)  # type: ignore[misc]
        with conn.codx_lock:
            return super().execute(conn.codx_begin_with(self, query), vars)  # type: ignore[misc]

    def executemany(self, query: Any, vars_list: Any) -> Any:
        conn: Any = self.connection  # type: ignore[attr-defined]
        if not conn.codx_manual:
            return super().executemany(query, vars_list)  # type: ignore[misc]
        with conn.codx_lock:
            conn.codx_begin_alone()
            return super().executemany(query, vars_list)  # type: ignore[misc]

    def callproc(self, procname: Any, parameters: Any = None) -> Any:
        conn: Any = self.connection  # type: ignore[attr-defined]
        if not conn.codx_manual:
            return super().callproc(procname, parameters)  # type: ignore[misc]
        with conn.codx_lock:
            conn.codx_begin_alone()
            return super().callproc(procname, parameters)  # type: ignore[misc]


if TYPE_CHECKING:
    # To mypy the mixin is the connection it is mixed into (cursor_factory, info, rollback...).
    _ConnectionBase = psycopg2.extensions.connection
else:
    _ConnectionBase = object


class _ReadConnectionMixin(_ConnectionBase):
    """Transaction boundaries of a load connection, driven by codx-db (see the module doc).

    ``codx_manual`` is False until ``codx_take_over`` runs, so the class can serve RelStorage's
    store connections unchanged: RelStorage builds every connection from one class.
    """

    if not TYPE_CHECKING:  # mypy would then refuse the attributes below, which the concrete class has
        __slots__ = ()
    # Instances get these slots from the concrete class ``connection_class()`` builds.
    codx_manual: bool
    codx_pending: bool
    codx_plain_cursor: Any  # a cursor class (psycopg2 types cursor_factory as a callable)
    # psycopg2 serialises every libpq call on a connection under its own lock; our ctypes
    # calls and the pending flag get this one (a pooled ZODB connection stays on one thread,
    # but the root storage's load connection can be reached from several).
    codx_lock: threading.Lock

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.codx_manual = False
        self.codx_pending = False
        self.codx_lock = threading.Lock()

    def codx_take_over(self) -> None:
        if self.info.transaction_status != _IDLE:
            super().rollback()
        self.autocommit = True
        # Subclass whatever cursor class the connection had (a benchmark's counting cursor, say).
        factory: Any = self.cursor_factory  # None when unset, whatever the stubs say
        self.codx_plain_cursor = factory or psycopg2.extensions.cursor
        self.cursor_factory = _subclass(_ReadCursorMixin, self.codx_plain_cursor, "CodxReadCursor", ())
        self.codx_manual = True

    def codx_drain(self) -> None:
        """Read and drop the reply to a pipelined ROLLBACK, so libpq is ready for a statement."""
        if not self.codx_pending:
            return
        self.codx_pending = False
        assert _LIBPQ is not None
        pgconn = self.pgconn_ptr
        if pgconn is None:  # closed meanwhile
            return
        while (result := _LIBPQ.get_result(pgconn)) is not None:
            _LIBPQ.clear(result)
        # A failed ROLLBACK (the server went away) is not reported here: the next statement
        # fails on the same broken connection and RelStorage reconnects as it always does.

    def codx_begin_with(self, cursor: Any, query: Any) -> Any:
        """The query to send: prefixed with BEGIN when no transaction is open."""
        self.codx_drain()
        if self.info.transaction_status != _IDLE:
            return query
        if cursor.name is not None:  # a server-side cursor: DECLARE cannot take a prefix
            self.codx_begin_alone()
            return query
        Counters.begins += 1
        if isinstance(query, bytes):
            return BEGIN.encode() + query
        if not isinstance(query, str):  # psycopg2.sql.Composable
            query = query.as_string(self)
        return BEGIN + query

    def codx_begin_alone(self) -> None:
        self.codx_drain()
        if self.info.transaction_status == _IDLE:
            with self.codx_plain_cursor(self) as cur:
                cur.execute(BEGIN)

    def _codx_end(self) -> None:
        with self.codx_lock:
            if self.codx_pending:
                # RelStorage ends a transaction several times over; the ROLLBACK already sent
                # covers them all (no statement can have run since: each one drains first).
                return
            status = self.info.transaction_status
            if status == _IDLE:
                return
            pgconn = self.pgconn_ptr
            active = status == _ACTIVE  # a reply still unread
            if (
                _LIBPQ is not None
                and pgconn is not None
                and not active
                and _quiet(self)
                and _LIBPQ.send(pgconn, b"ROLLBACK")
            ):
                self.codx_pending = True
                Counters.pipelined_rollbacks += 1
                return
            # No libpq access, or the server spoke unasked: roll back the plain way. On a lost
            # connection this raises, and RelStorage drops the connection as it always did.
            Counters.waited_rollbacks += 1
            with self.codx_plain_cursor(self) as cur:
                cur.execute("ROLLBACK")

    def rollback(self) -> None:
        if not self.codx_manual:
            super().rollback()
            return
        self._codx_end()

    def commit(self) -> None:
        if not self.codx_manual:
            super().commit()
            return
        self._codx_end()  # a READ ONLY transaction has nothing to commit

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        named = bool(args and args[0]) or kwargs.get("name") is not None
        if named and self.codx_manual and len(args) < 3 and "withhold" not in kwargs:
            # psycopg2 refuses a named (server-side) cursor in autocommit mode unless it is
            # WITH HOLD. RelStorage uses them to iterate the storage; declared inside our open
            # transaction, such a cursor reads the same snapshot and dies with the ROLLBACK.
            kwargs["withhold"] = True
        return super().cursor(*args, **kwargs)


def _quiet(conn: Any) -> bool:
    """True if the server sent nothing since the last reply (a zero-timeout poll, ~1 us).

    Between statements a healthy server sends nothing unasked. One that terminated the
    backend (a restart, an administrator) has sent its FATAL message and closed the socket:
    then the plain, waited statement is sent instead and fails, where RelStorage drops or
    reconnects the connection as it always did, rather than a pipelined send "succeeding"
    into a dead socket or a skipped statement hiding it.
    """
    try:
        # poll, not select: select() cannot watch a descriptor >= 1024 (FD_SETSIZE).
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN)  # POLLERR / POLLHUP come unasked
        return not poller.poll(0)
    except (OSError, ValueError, psycopg2.InterfaceError):
        return False


_CLASSES: dict[tuple[type, type], type] = {}


def _subclass(mixin: type, base: type, name: str, slots: tuple[str, ...]) -> type:
    """``class name(mixin, base)``, made once per base class."""
    cls = _CLASSES.get((mixin, base))
    if cls is None:
        cls = type(name, (mixin, base), {"__module__": __name__, "__slots__": slots})
        _CLASSES[(mixin, base)] = cls
    return cls


def connection_class(base: type) -> type:
    """``base`` (a psycopg2 connection class) with load-connection boundaries; see the module doc.

    Its instances behave like ``base`` until ``codx_take_over()`` is called on them.
    """
    slots = ("codx_manual", "codx_pending", "codx_plain_cursor", "codx_lock")
    return _subclass(_ReadConnectionMixin, base, "CodxConnection", slots)


# What a psycopg2 connection must offer the mixins above.
_CONNECTION_NEEDS = ("pgconn_ptr", "info", "autocommit", "cursor_factory", "fileno", "cursor", "rollback", "commit")


def missing_hooks(adapter: Any) -> list[str]:
    """The RelStorage / psycopg2 attributes ``install`` patches or calls that ``adapter`` lacks."""
    missing = [
        f"psycopg2.extensions.{name}"
        for name, value in (("TRANSACTION_STATUS_IDLE", _IDLE), ("TRANSACTION_STATUS_ACTIVE", _ACTIVE))
        if value is None
    ]
    connmanager = getattr(adapter, "connmanager", None)
    if not callable(getattr(connmanager, "_do_open_for_load", None)):
        missing.append("connmanager._do_open_for_load()")
    set_timeout = getattr(getattr(adapter, "locker", None), "_on_store_opened_set_row_lock_timeout", None)
    if not callable(set_timeout) or "restart" not in _parameters(set_timeout):
        missing.append("locker._on_store_opened_set_row_lock_timeout(cursor, restart)")
    if not hasattr(adapter, "options"):
        missing.append("adapter.options")
    driver = getattr(connmanager, "driver", None)
    if driver is None:
        missing.append("connmanager.driver")
    elif getattr(driver, "__name__", None) == "psycopg2":
        connect = getattr(driver, "connect", None)
        if not (isinstance(connect, type) and issubclass(connect, psycopg2.extensions.connection)):
            missing.append("driver.connect (a psycopg2 connection class)")
        else:
            missing += [f"psycopg2 connection.{name}" for name in _CONNECTION_NEEDS if not hasattr(connect, name)]
        if not callable(getattr(driver, "cursor", None)):
            missing.append("driver.cursor()")
    return missing


def _parameters(fn: Any) -> tuple[str, ...]:
    try:
        return tuple(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return ()


_warned: set[tuple[str, ...]] = set()


def install(adapter: Any) -> bool:
    """Take the fewer round trips on one RelStorage PostgreSQL adapter's future connections.

    Idempotent; call before RelStorage opens its connections (a connection opened before is
    left as it was). Reads take the fast path with the psycopg2 driver only, and not with a
    blob directory: RelStorage reads blobs with large objects (``conn.lobject()``), which
    psycopg2 refuses in autocommit mode. Returns False, changing nothing, when a hook is
    missing (see ``missing_hooks``; warned about once).
    """
    missing = missing_hooks(adapter)
    if missing:
        hooks.warn_missing_once(
            log,
            _warned,
            "db/pg/roundtrips.py",
            missing,
            "using plain RelStorage (three round trips per read-only unit of work instead of one)",
            "CODX_JUNIOR_DB_PG_FAST_READS",
        )
        return False
    connmanager = adapter.connmanager
    if getattr(connmanager, "codx_installed", False):
        return True
    connmanager.codx_installed = True
    _set_lock_timeout_once(adapter.locker)
    driver = connmanager.driver
    if getattr(driver, "__name__", None) != "psycopg2":
        return True
    if getattr(adapter.options, "blob_dir", None):
        log.info("blob_dir is set: RelStorage's reads keep psycopg2's own transactions (3 round trips)")
        return True
    driver.connect = connection_class(driver.connect)
    open_for_load = connmanager._do_open_for_load

    def _do_open_for_load() -> tuple[Any, Any]:
        conn, cursor = open_for_load()
        if isinstance(conn, _ReadConnectionMixin):  # not a connection made before install()
            cursor.close()
            conn.codx_take_over()
            cursor = driver.cursor(conn)
        return conn, cursor

    connmanager._do_open_for_load = _do_open_for_load
    connmanager.codx_fast_reads = True
    return True


def _set_lock_timeout_once(locker: Any) -> None:
    """Set the store connection's ``lock_timeout`` when it opens, not again at each write.

    RelStorage's PostgreSQL locker runs ``SET lock_timeout`` and commits on every restart of
    the store connection, always with ``commit_lock_timeout`` (the only other caller, the
    deprecated ``nowait`` path, is unused). A session setting committed once stays until the
    connection closes; a later rolled-back transaction cannot undo it. A reconnect is an
    open again (``restart=False``), which sets it.
    """
    set_timeout = locker._on_store_opened_set_row_lock_timeout

    def _on_store_opened_set_row_lock_timeout(cursor: Any, restart: bool = False) -> None:
        # The SET also served RelStorage as a probe: on a connection the server closed (a
        # restart, say) it fails here, where RelStorage reconnects and carries on, instead
        # of in the middle of the commit. Keep that: skip it only while the server is quiet.
        if not restart or not _quiet(cursor.connection):
            set_timeout(cursor, restart)

    locker._on_store_opened_set_row_lock_timeout = _on_store_opened_set_row_lock_timeout
