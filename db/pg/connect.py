"""PostgreSQL connections and their errors: connecting, the startup lock, a unit of work's errors.

Every psycopg2 error that reaches a codx-db caller is turned into a codx-db error here, with
any DSN password scrubbed from the message.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
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
from db.pg.dsn import first_line, scrub

# One PostgreSQL advisory lock key for "someone is opening (creating, evolving) this database".
# Derived from a fixed name so every codx-db version agrees on it.
STARTUP_LOCK_KEY = int.from_bytes(hashlib.sha256(b"codx-db startup").digest()[:8], "big", signed=True)

IDLE_LIMIT = "idle_in_transaction_session_timeout"
# SQLSTATEs (psycopg2.errors.QueryCanceled, .IdleInTransactionSessionTimeout).
QUERY_CANCELED = "57014"
IDLE_IN_TRANSACTION_SESSION_TIMEOUT = "25P03"
LOCK_NOT_AVAILABLE = "55P03"  # psycopg2.errors.LockNotAvailable: lock_timeout ran out
COMMIT_LOCK_TIMEOUT = "CODX_JUNIOR_DB_COMMIT_LOCK_TIMEOUT"


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
            return storage_errors()
        return storage_errors(functools.partial(explain_lost_connection, explain_dsn, started))

    return errors


@contextlib.contextmanager
def storage_errors(explain_lost: Callable[[], str | None] | None = None) -> Iterator[None]:
    """Turn a lost database connection into one clear ``DatabaseUnavailable``.

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
