"""One waited SQL round trip per read-only unit of work on RelStorage/PostgreSQL.

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

Only RelStorage's load connections are changed; the store connection (writes, locks,
commits) is left exactly as RelStorage drives it.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Any

import psycopg2
import psycopg2.extensions

log = logging.getLogger(__name__)

BEGIN = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;"
_IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE


def _load_libpq() -> tuple[Any, Any, Any] | None:
    """libpq's PQsendQuery, PQgetResult and PQclear, from the library psycopg2 itself uses."""
    try:
        from psycopg2 import _psycopg

        # dlsym on the extension's handle also searches the libraries it was linked with,
        # so this finds the very libpq psycopg2 calls (psycopg2-binary bundles its own).
        lib = ctypes.CDLL(_psycopg.__file__)
        send, get, clear = lib.PQsendQuery, lib.PQgetResult, lib.PQclear
    except (OSError, AttributeError, ImportError) as exc:
        log.info("libpq not reachable through psycopg2 (%s): ROLLBACK of reads will be waited for", exc)
        return None
    send.argtypes, send.restype = [ctypes.c_void_p, ctypes.c_char_p], ctypes.c_int
    get.argtypes, get.restype = [ctypes.c_void_p], ctypes.c_void_p
    clear.argtypes, clear.restype = [ctypes.c_void_p], None
    return send, get, clear


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
        if conn.codx_manual:
            query = conn.codx_begin_with(self, query)
        return super().execute(query, vars)  # type: ignore[misc]

    def executemany(self, query: Any, vars_list: Any) -> Any:
        conn: Any = self.connection  # type: ignore[attr-defined]
        if conn.codx_manual:
            conn.codx_begin_alone()
        return super().executemany(query, vars_list)  # type: ignore[misc]

    def callproc(self, procname: Any, parameters: Any = None) -> Any:
        conn: Any = self.connection  # type: ignore[attr-defined]
        if conn.codx_manual:
            conn.codx_begin_alone()
        return super().callproc(procname, parameters)  # type: ignore[misc]


class _ReadConnectionMixin:
    """Transaction boundaries of a load connection, driven by codx-db (see the module doc).

    ``codx_manual`` is False until ``codx_take_over`` runs, so the class can serve RelStorage's
    store connections unchanged: RelStorage builds every connection from one class.
    """

    __slots__ = ()
    # Instances get these slots from the concrete class built in ``_connection_class``.
    codx_manual: bool
    codx_pending: bool
    codx_plain_cursor: type

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self.codx_manual = False
        self.codx_pending = False

    def codx_take_over(self) -> None:
        if self.info.transaction_status != _IDLE:  # type: ignore[attr-defined]
            super().rollback()  # type: ignore[misc]
        self.autocommit = True
        # Subclass whatever cursor class the connection had (a benchmark's counting cursor, say).
        self.codx_plain_cursor = self.cursor_factory or psycopg2.extensions.cursor
        self.cursor_factory = _subclass(_ReadCursorMixin, self.codx_plain_cursor, "CodxReadCursor", ())
        self.codx_manual = True

    def codx_drain(self) -> None:
        """Read and drop the reply to a pipelined ROLLBACK, so libpq is ready for a statement."""
        if not self.codx_pending:
            return
        self.codx_pending = False
        assert _LIBPQ is not None
        _, get, clear = _LIBPQ
        pgconn = self.pgconn_ptr  # type: ignore[attr-defined]
        if pgconn is None:  # closed meanwhile
            return
        while (result := get(pgconn)) is not None:
            clear(result)
        # A failed ROLLBACK (the server went away) is not reported here: the next statement
        # fails on the same broken connection and RelStorage reconnects as it always does.

    def codx_begin_with(self, cursor: Any, query: Any) -> Any:
        """The query to send: prefixed with BEGIN when no transaction is open."""
        self.codx_drain()
        if self.info.transaction_status != _IDLE:  # type: ignore[attr-defined]
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
        if self.info.transaction_status == _IDLE:  # type: ignore[attr-defined]
            with self.codx_plain_cursor(self) as cur:
                cur.execute(BEGIN)

    def _codx_end(self) -> None:
        if self.codx_pending:
            # RelStorage ends a transaction several times over; the ROLLBACK already sent
            # covers them all (no statement can have run since: each one drains first).
            return
        status = self.info.transaction_status  # type: ignore[attr-defined]
        if status == _IDLE:
            return
        pgconn = self.pgconn_ptr  # type: ignore[attr-defined]
        active = status == psycopg2.extensions.TRANSACTION_STATUS_ACTIVE  # a reply still unread
        if _LIBPQ is not None and pgconn is not None and not active and _LIBPQ[0](pgconn, b"ROLLBACK"):
            self.codx_pending = True
            Counters.pipelined_rollbacks += 1
            return
        # No libpq access, or the send failed: roll back the plain way (raises if broken).
        Counters.waited_rollbacks += 1
        with self.codx_plain_cursor(self) as cur:
            cur.execute("ROLLBACK")

    def rollback(self) -> None:
        if not self.codx_manual:
            super().rollback()  # type: ignore[misc]
            return
        self._codx_end()

    def commit(self) -> None:
        if not self.codx_manual:
            super().commit()  # type: ignore[misc]
            return
        self._codx_end()  # a READ ONLY transaction has nothing to commit

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        named = bool(args and args[0]) or kwargs.get("name") is not None
        if named and self.codx_manual and len(args) < 3:
            # psycopg2 refuses a named (server-side) cursor in autocommit mode unless it is
            # WITH HOLD. RelStorage uses them to iterate the storage; declared inside our open
            # transaction, such a cursor reads the same snapshot and dies with the ROLLBACK.
            kwargs["withhold"] = True
        return super().cursor(*args, **kwargs)  # type: ignore[misc]


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
    return _subclass(_ReadConnectionMixin, base, "CodxConnection", ("codx_manual", "codx_pending", "codx_plain_cursor"))


def install(adapter: Any) -> None:
    """Make one RelStorage PostgreSQL adapter's future load connections take the fast path.

    Idempotent. Applies to the psycopg2 driver only; other drivers are left alone.
    """
    connmanager = adapter.connmanager
    driver = connmanager.driver
    if getattr(driver, "__name__", None) != "psycopg2" or getattr(connmanager, "codx_fast_reads", False):
        return
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
