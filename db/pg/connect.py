"""PostgreSQL connections and their errors: connecting, the startup lock, a unit of work's errors.

Every psycopg2 error that reaches a codx-db caller is turned into a codx-db error here, with
any DSN password scrubbed from the message.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from relstorage.adapters.interfaces import (
    UnableToAcquireCommitLockError,
    UnableToLockRowsDeadlockError,
    UnableToLockRowsToModifyError,
)
from ZODB.POSException import ConflictError

from db.errors import DatabaseTimeout, DatabaseUnavailable, TransactionTooLarge
from db.pg.dsn import first_line, mask_dsn, scrub

# One PostgreSQL advisory lock key for "someone is opening (creating, evolving) this database".
# Derived from a fixed name so every codx-db version agrees on it.
STARTUP_LOCK_KEY = int.from_bytes(hashlib.sha256(b"codx-db startup").digest()[:8], "big", signed=True)

IDLE_LIMIT = "idle_in_transaction_session_timeout"
# SQLSTATEs (psycopg2.errors.QueryCanceled, .IdleInTransactionSessionTimeout).
QUERY_CANCELED = "57014"
IDLE_IN_TRANSACTION_SESSION_TIMEOUT = "25P03"
LOCK_NOT_AVAILABLE = "55P03"  # psycopg2.errors.LockNotAvailable: lock_timeout ran out
COMMIT_LOCK_TIMEOUT = "CODX_JUNIOR_DB_COMMIT_LOCK_TIMEOUT"
POOL_SIZE = "CODX_JUNIOR_DB_POOL_SIZE"
TOO_MANY_CONNECTIONS = "53300"  # psycopg2.errors.TooManyConnections
# SQLSTATE 53300 (too_many_connections) refuses a new session. libpq reports a refused connection
# without its SQLSTATE (psycopg2's pgcode is None), so the server's FATAL texts are matched:
# max_connections used up, the rest reserved (superuser_reserved_connections, PG 16's
# reserved_connections), or a role's / database's CONNECTION LIMIT.
_SERVER_FULL = ("too many clients", "remaining connection slots are reserved", "too many connections for")
# PostgreSQL sessions one unit of work may hold: RelStorage's load session and, while it commits,
# a store session (both kept open by the pool afterwards). Measured: docs/deployment-tuning.md.
SESSIONS_PER_UNIT = 2


@dataclass(frozen=True)
class ConnectionBudget:
    """What the server allows (read at open, ``check_server``) against what this process may open."""

    max_connections: int
    reserved: int  # superuser_reserved_connections + reserved_connections (PG 16)
    role_limit: int  # the role's CONNECTION LIMIT, -1: none
    database_limit: int  # the database's CONNECTION LIMIT, -1: none
    pool_size: int

    @property
    def allowed(self) -> int:
        """Sessions this role may have on this database at once, all processes together."""
        limits = [self.max_connections - self.reserved]
        limits += [limit for limit in (self.role_limit, self.database_limit) if limit >= 0]
        return max(0, min(limits))

    @property
    def per_process(self) -> int:
        return SESSIONS_PER_UNIT * self.pool_size

    def server_terms(self) -> str:
        """The server's figures, for a message."""
        terms = f"max_connections={self.max_connections} minus {self.reserved} reserved"
        if self.role_limit >= 0:
            terms += f", role CONNECTION LIMIT {self.role_limit}"
        if self.database_limit >= 0:
            terms += f", database CONNECTION LIMIT {self.database_limit}"
        return terms


# DSN (password masked: no secret kept) -> the budget its last open read (check_server): a full
# server can no longer be asked.
_budgets: dict[str, ConnectionBudget] = {}
_seen_lock = threading.Lock()


def remember_budget(dsn: str, budget: ConnectionBudget) -> None:
    with _seen_lock:
        _budgets[mask_dsn(dsn)] = budget


def known_budget(dsn: str | None) -> ConnectionBudget | None:
    """The budget read when ``dsn`` was last opened in this process, if it was."""
    with _seen_lock:
        return _budgets.get(mask_dsn(dsn)) if dsn is not None else None


# DSN (masked) -> the deadlock_timeout RelStorage's sessions got at its last open (check_server),
# said for ``codx-db info``: e.g. "100ms (set by codx-db; the server's: 1000ms)".
_deadlock_timeouts: dict[str, str] = {}


def remember_deadlock_timeout(dsn: str, description: str) -> None:
    with _seen_lock:
        _deadlock_timeouts[mask_dsn(dsn)] = description


def known_deadlock_timeout(dsn: str | None) -> str | None:
    """How ``deadlock_timeout`` was left when ``dsn`` was last opened in this process, if it was."""
    with _seen_lock:
        return _deadlock_timeouts.get(mask_dsn(dsn)) if dsn is not None else None


def web_workers() -> int | None:
    """uvicorn/gunicorn's worker count when the environment says it (``WEB_CONCURRENCY``)."""
    try:
        workers = int(os.environ.get("WEB_CONCURRENCY", ""))
    except ValueError:
        return None
    return workers if workers >= 1 else None


def server_full(exc: BaseException) -> bool:
    """A new session refused because the server (or the role or database) has all it allows (53300)."""
    return getattr(exc, "pgcode", None) == TOO_MANY_CONNECTIONS or any(marker in str(exc) for marker in _SERVER_FULL)


def server_full_error(exc: BaseException, dsn: str | None) -> DatabaseUnavailable:
    """``DatabaseUnavailable`` naming the connection budget (not retried: see docs/deployment-tuning.md)."""
    budget = known_budget(dsn)
    workers = web_workers()
    times = f" x {workers} workers (WEB_CONCURRENCY={workers})" if workers else " x the worker processes"
    if budget is None:
        mine = f"each codx-db process opens up to {SESSIONS_PER_UNIT} x {POOL_SIZE} sessions{times}"
        server = "the server's max_connections minus its reserved slots"
    else:
        mine = f"{POOL_SIZE}={budget.pool_size} lets each codx-db process open up to {budget.per_process}{times}"
        server = f"{budget.allowed} sessions ({budget.server_terms()})"
    return DatabaseUnavailable(
        f"PostgreSQL refused a new session, its connections are used up ({scrub(first_line(exc), dsn)}); "
        f"nothing was saved. Connection budget: {mine}, all within {server}, with every other client "
        f"(pg_stat_activity). Lower {POOL_SIZE} or the workers, or raise max_connections "
        "(docs/deployment-tuning.md, connection budget)"
    )


@contextlib.contextmanager
def unavailable_on_connect_error(dsn: str | None) -> Iterator[None]:
    """Connecting (or a statement run while opening) failed: a scrubbed codx-db error."""
    try:
        yield
    except psycopg2.errors.QueryCanceled as exc:  # connected, then a statement ran out of time
        raise DatabaseTimeout(
            f"PostgreSQL cancelled a statement while opening the database: statement_timeout ({first_line(exc)}). "
            "Raise statement_timeout for this database or role"
        ) from None
    except psycopg2.OperationalError as exc:
        if server_full(exc):
            raise server_full_error(exc, dsn) from None
        raise DatabaseUnavailable("cannot connect to PostgreSQL: " + scrub(first_line(exc), dsn)) from None


def connect(dsn: str, application_name: str, timeout: int | None = None) -> psycopg2.extensions.connection:
    """A new session; ``DatabaseUnavailable`` (password scrubbed) if the server cannot be reached."""
    options: dict[str, Any] = {"application_name": application_name}
    if timeout is not None:
        options["connect_timeout"] = timeout
    with unavailable_on_connect_error(dsn):
        conn: psycopg2.extensions.connection = psycopg2.connect(dsn, **options)
    return conn


@contextlib.contextmanager
def advisory_lock(dsn: str) -> Iterator[None]:
    """Hold codx-db's startup lock on the database at ``dsn`` (a session lock, released on close)."""
    conn = connect(dsn, "codx-db startup lock")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            try:
                cur.execute("SELECT pg_advisory_lock(%s)", (STARTUP_LOCK_KEY,))
            except psycopg2.errors.QueryCanceled as exc:
                raise DatabaseTimeout(
                    "PostgreSQL cancelled the wait for codx-db's startup lock, which another process holds "
                    f"while it opens or migrates this database: statement_timeout ({first_line(exc)}). Wait for "
                    "that process, or raise statement_timeout for this database or role"
                ) from None
        yield
    finally:
        # Closing the session releases the lock even if unlock is never reached.
        conn.close()


def unit_errors(explain_dsn: str | None) -> Callable[[float | None], AbstractContextManager[None]]:
    """A backend's ``StorageSpec.errors``: ``storage_errors`` that may explain a lost connection.

    ``explain_dsn`` is the session to ask the server on (None: never ask); ``started`` is when
    the unit of work began (None: opening a connection, nothing to explain).
    """

    def errors(started: float | None = None) -> AbstractContextManager[None]:
        if explain_dsn is None or started is None:
            return storage_errors(dsn=explain_dsn)
        return storage_errors(functools.partial(explain_lost_connection, explain_dsn, started), explain_dsn)

    return errors


@contextlib.contextmanager
def storage_errors(explain_lost: Callable[[], str | None] | None = None, dsn: str | None = None) -> Iterator[None]:
    """Turn a lost database connection into one clear ``DatabaseUnavailable``.

    A new session the server refused because its connections are used up (RelStorage opens
    load and store sessions lazily, inside a unit of work) is a ``DatabaseUnavailable`` naming
    the connection budget (the figures ``check_server`` read from ``dsn`` at open).

    A server-side limit is named instead (``DatabaseTimeout``): ``statement_timeout`` by its
    SQLSTATE; ``idle_in_transaction_session_timeout`` by its SQLSTATE when libpq reports it,
    else by ``explain_lost`` (the server asked afterwards, see ``explain_lost_connection``).

    Also a commit that ran PostgreSQL out of lock slots: RelStorage reports it as a
    ConflictError (a TransientError, which ``run`` would retry ten times, failing the same
    way each time); it becomes ``TransactionTooLarge``, which is never retried.

    And a lock wait at commit that ran out: on an object another session holds, after
    RelStorage's ``commit_lock_timeout`` (PostgreSQL's ``lock_timeout``; a ConflictError, which
    ``run`` would retry, waiting the full timeout each time), or on the commit lock itself (a
    StorageError; RelStorage's ``lock_and_choose_tid()`` waits for it up to a fixed 10 minutes,
    whatever ``commit_lock_timeout`` says): ``DatabaseTimeout``, never retried. The instant
    readCurrent failures and deadlocks are real conflicts and stay retried.
    """
    try:
        yield
    except ConflictError as exc:
        if "max_locks_per_transaction" in str(exc):
            raise TransactionTooLarge(
                "this unit of work changes more stored objects than PostgreSQL can lock at once "
                "(max_locks_per_transaction x max_connections): split it into smaller transactions "
                "(UserDB.import_users(..., batch_size=1000)) or raise max_locks_per_transaction"
            ) from None
        if isinstance(exc, UnableToLockRowsToModifyError) and _lock_wait_ran_out(exc):
            raise _lock_timeout(
                exc, f"longer than {COMMIT_LOCK_TIMEOUT} for an object this unit of work changes"
            ) from None
        raise
    except UnableToAcquireCommitLockError as exc:
        raise _lock_timeout(exc, "10 minutes (RelStorage's fixed limit) for the commit lock") from None
    except psycopg2.InternalError as exc:  # psycopg2.errors.IdleInTransactionSessionTimeout is one
        if getattr(exc, "pgcode", None) != IDLE_IN_TRANSACTION_SESSION_TIMEOUT:
            raise
        raise DatabaseTimeout(
            f"the server closed an idle transaction: {IDLE_LIMIT} ({first_line(exc)}). Keep slow work out "
            f"of `with db.transaction():`, or raise {IDLE_LIMIT}."
        ) from None
    except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
        line = first_line(exc)
        code = getattr(exc, "pgcode", None)
        if server_full(exc):  # before explain_lost: a full server has no session to ask on
            raise server_full_error(exc, dsn) from None
        if code == QUERY_CANCELED:  # psycopg2.errors.QueryCanceled
            if "statement timeout" in line:  # other causes: a cancel request, a replica conflict
                raise DatabaseTimeout(
                    f"PostgreSQL cancelled the statement: statement_timeout ({line}). The server's limit "
                    "on one statement (set on the server, database or role) ran out: raise it, or look for what "
                    "held the statement up (a lock: pg_locks)"
                ) from None
            raise DatabaseUnavailable(f"PostgreSQL cancelled the statement: {line}") from None
        explanation = explain_lost() if explain_lost is not None and code is None else None
        if explanation is not None:
            raise DatabaseTimeout(explanation) from None
        raise DatabaseUnavailable(f"the database is unreachable: {line}") from None


def _lock_wait_ran_out(exc: Exception) -> bool:
    """A lock_timeout, not a deadlock (RelStorage keeps the driver's error as ``__relstorage_cause__``)."""
    if isinstance(exc, UnableToLockRowsDeadlockError):
        return False
    cause = getattr(exc, "__relstorage_cause__", None) or exc.__cause__
    return getattr(cause, "pgcode", None) == LOCK_NOT_AVAILABLE


def _lock_timeout(exc: Exception, waited: str) -> DatabaseTimeout:
    cause = getattr(exc, "__relstorage_cause__", None) or exc.__cause__
    detail = first_line(cause) if isinstance(cause, Exception) else type(exc).__name__
    return DatabaseTimeout(
        f"the commit waited {waited} ({detail}); nothing was saved. Another session held it that long: "
        f"look for a long transaction in pg_stat_activity and pg_locks ({COMMIT_LOCK_TIMEOUT} bounds object locks)"
    )


def explain_lost_connection(dsn: str, started: float) -> str | None:
    """Why the server may have closed a unit of work's connection: its idle-in-transaction limit.

    libpq reports that session end as "server closed the connection unexpectedly" (the
    server's FATAL message is lost with the socket), so ask the server, on a new session
    of the same role and database, what limit applies and compare with how long the unit
    of work was open (since ``started``, ``time.monotonic()``). Called only on that error.
    """
    open_for = time.monotonic() - started
    try:
        conn = psycopg2.connect(dsn, connect_timeout=2, application_name="codx-db diagnosis")
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT setting::bigint FROM pg_settings WHERE name = %s", (IDLE_LIMIT,))
                row = cur.fetchone()
        finally:
            conn.close()
    except psycopg2.Error:
        return None  # the server is really gone: "unreachable" is the right word
    limit_ms = int(row[0]) if row else 0
    if not limit_ms or open_for * 1000 < limit_ms:
        return None
    return (
        f"the server closed an idle transaction: {IDLE_LIMIT} ({limit_ms} ms on this database or role) "
        f"ended the session while this unit of work was open ({open_for:.1f} s). Keep slow work out of "
        f"`with db.transaction():`, or raise {IDLE_LIMIT}."
    )
