"""The database: one ``ZODB.DB`` per process and a connection per unit of work.

``Database.transaction()`` is the unit of work: a pooled connection with its own explicit
transaction manager, committed at the end and aborted on error. A nested call in the same
thread (or asyncio task) joins the open unit of work; only the outermost one commits. ``Database.run(fn)``
does the same around a function and retries it after a conflict when it owns the
transaction (a ``with`` block cannot be replayed, a function can).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import transaction
import ZODB
from persistent.mapping import PersistentMapping
from transaction.interfaces import TransientError
from ZODB.Connection import Connection

from db import forks
from db.actors import check_actor
from db.contention import VoteMarker, commit_outcome_unknown, conflict_where, pool_exhausted, write_contention
from db.errors import DatabaseUnavailable, StorageInUse
from db.group_commit import GroupCommitStats, queue_for

# Re-exported: migrations and db/__init__.py register their hooks through db.database.
from db.open_hooks import OpenHook as OpenHook
from db.open_hooks import open_hooks
from db.open_hooks import register_open_hook as register_open_hook
from db.settings import CodxJuniorGlobalSettings
from db.storage import StorageErrors, no_storage_errors, storage_spec

log = logging.getLogger(__name__)

T = TypeVar("T")

# Characters of transaction description kept; FileStorage refuses more than 65535 bytes.
NOTE_LIMIT = 8000


class UnitOfWork:
    """One open transaction on one connection; only valid inside its ``with`` block."""

    def __init__(self, connection: Connection, manager: transaction.TransactionManager) -> None:
        self.connection = connection
        self.transaction_manager = manager
        self.root: PersistentMapping = connection.root()
        self.thread = threading.get_ident()
        self.closed = False
        self._omitted_notes = 0
        self.named_by: str | None = None  # the actor a UserDB write named the transaction after
        self.named_changes: set[str] = set()  # users that actor changed (history.note_actor)

    @property
    def transaction(self) -> transaction.Transaction:
        """The ``transaction.Transaction`` under way (for notes, user, extended info)."""
        return self.transaction_manager.get()

    def note(self, text: str) -> None:
        """Add a line to the transaction's description (shown by history and undo logs).

        A unit of work creating thousands of users would write a description longer than
        FileStorage accepts (64 KiB): past NOTE_LIMIT characters lines are only counted, and
        the count is added when the unit commits.
        """
        txn = self.transaction
        if len(txn.description) + len(text) < NOTE_LIMIT:
            txn.note(text)
        else:
            self._omitted_notes += 1

    def finish_notes(self) -> None:
        """Say how many notes did not fit (called just before commit)."""
        if self._omitted_notes:
            self.transaction.note(f"... and {self._omitted_notes} more changes")
            self._omitted_notes = 0


class Database:
    """A codx-db database: opened lazily from settings, closed explicitly."""

    def __init__(self, settings: CodxJuniorGlobalSettings | None = None) -> None:
        self._settings = settings
        self._zodb: ZODB.DB | None = None
        self._open_lock = threading.Lock()
        # The open unit of work, per thread *and* per asyncio task (a thread-local would let
        # two requests served by one worker thread, or by one event loop, share it).
        self._current: contextvars.ContextVar[UnitOfWork | None] = contextvars.ContextVar(
            f"codx_db_uow_{id(self)}", default=None
        )
        # Set in a forked child that inherited an open storage: the parent's pid.
        self._forked_from: int | None = None
        # The open storage's error mapping (db/storage.py: a backend's own errors -> codx-db's).
        self._errors: StorageErrors = no_storage_errors
        # At most db_pool_size units of work hold a connection at once (_own_unit): ZODB would
        # open more and discard them afterwards. Made at first use from the settings in force;
        # dropped by close() (so configure() resizes it) and in a forked child.
        self._gate: threading.BoundedSemaphore | None = None
        self._gate_lock = threading.Lock()
        forks.on_fork_in_child(self)

    # -- configuration and lifecycle ---------------------------------------------------------

    @property
    def settings(self) -> CodxJuniorGlobalSettings:
        """The settings in force (loaded from the environment on first use)."""
        if self._settings is None:
            self._settings = CodxJuniorGlobalSettings.load()
        return self._settings

    def configure(self, settings: CodxJuniorGlobalSettings | None = None, **overrides: Any) -> None:
        """Use these settings from now on (closing the database if it was open).

        ``db.configure(my_settings)`` for an application's own settings object;
        ``db.configure(db_backend="memory")`` to override single settings from the environment.
        """
        if settings is not None and overrides:
            settings = settings.with_overrides(**overrides)
        elif settings is None:
            settings = CodxJuniorGlobalSettings.load(**overrides)
        self.close()
        self._settings = settings

    @property
    def is_open(self) -> bool:
        """True once the storage has been opened (by ``open()`` or the first unit of work)."""
        return self._zodb is not None

    def open(self) -> ZODB.DB:
        """Open storage and database once; install or check generations under the startup lock."""
        zodb = self._zodb
        if zodb is not None:
            return zodb
        with self._open_lock:
            if self._zodb is None:
                self._zodb = self._open_zodb_here()
            return self._zodb

    def _open_zodb_here(self) -> ZODB.DB:
        try:
            return self._open_zodb()
        except StorageInUse as exc:
            if self._forked_from is None:
                raise
            raise StorageInUse(
                f"{exc} This process (pid {os.getpid()}) is a fork of pid {self._forked_from}, which had "
                "the database open when it forked: open it only after forking (gunicorn without --preload), "
                "or close it before forking (db.close())."
            ) from None

    def _open_zodb(self) -> ZODB.DB:
        from db.storage import startup_lock

        settings = self.settings
        spec = storage_spec(settings)
        self._errors = spec.errors
        with startup_lock(spec.dsn):
            storage = spec.open()
            try:
                zodb = ZODB.DB(
                    storage,
                    pool_size=settings.db_pool_size,
                    cache_size=settings.db_cache_size,
                    database_name="codx-db",
                )
            except BaseException:
                storage.close()  # release the FileStorage lock / PostgreSQL connections
                raise
            try:
                # Install a fresh database, or apply the startup policy to an old one (the
                # generations hook), while still holding the lock so concurrent starters take turns.
                for _name, hook in open_hooks():
                    hook(zodb, settings)
            except BaseException:
                zodb.close()
                raise
        log.info("opened codx-db database (%s: %s)", settings.kind, settings.location)
        return zodb

    def close(self) -> None:
        """Close the database (FileStorage writes its index, RelStorage its persistent cache)."""
        with self._open_lock:
            zodb, self._zodb = self._zodb, None
        # Units still running release the gate they took; the next ones get a new one.
        self._gate = None
        if zodb is not None:
            zodb.close()

    def after_fork_in_child(self) -> None:
        """Forget the parent's storage without closing it (db/forks.py); the next use opens ours.

        A memory database shares nothing with the parent: the child keeps its copy.
        """
        # Another thread of the parent may have held the lock at the fork: it stays held here.
        self._open_lock = threading.Lock()
        # Likewise the gate's slots taken by the parent's threads: never released here.
        self._gate_lock = threading.Lock()
        self._gate = None
        if self._zodb is not None and self.settings.kind != "memory":
            self._zodb = None
            self._forked_from = os.getppid()

    # -- units of work -----------------------------------------------------------------------

    def current(self) -> UnitOfWork | None:
        """The unit of work this code runs in, if any: open, and opened by this thread.

        A context variable is copied into tasks and threads started inside a unit of work; a
        copy must neither join a unit that has ended nor share a connection with another
        thread, so those get None and run their own unit of work.
        """
        uow = self._current.get()
        if uow is None or uow.closed or uow.thread != threading.get_ident():
            return None
        return uow

    @contextlib.contextmanager
    def transaction(self, note: str | None = None, user: str | None = None) -> Iterator[UnitOfWork]:
        """A unit of work: commit at the end, abort on error; nested calls join the open one."""
        check_actor(user, "user")
        current = self.current()
        if current is not None:
            if note:
                current.note(note)
            yield current
            return
        with self._own_unit(note, user) as uow:
            yield uow

    def run(
        self,
        fn: Callable[[UnitOfWork], T],
        note: str | None = None,
        user: str | None = None,
        retries: int | None = None,
    ) -> T:
        """Call ``fn(uow)`` in a unit of work, retried after transient errors when it owns it.

        Retried while retries remain (``retries``, default ``db_conflict_retries``) *or* the
        ``db_conflict_deadline`` has not passed: a count alone runs out in a burst of writers
        on a fast machine, a time alone gives nothing on a slow one. Then ``WriteContention``.
        """
        check_actor(user, "user")
        current = self.current()
        if current is not None:
            if note:
                current.note(note)
            return fn(current)
        settings = self.settings
        retries = settings.db_conflict_retries if retries is None else retries
        started = time.monotonic()
        deadline = started + settings.db_conflict_deadline
        attempt = 0
        while True:
            attempt += 1
            try:
                with self._own_unit(note, user) as uow:
                    return fn(uow)
            except TransientError as exc:
                now = time.monotonic()
                if attempt > retries and now >= deadline:
                    raise write_contention(exc, attempt, now - started) from exc
                name, where = type(exc).__name__, conflict_where(exc)  # where: the object, if named
                log.debug("retrying unit of work after %s (attempt %d)%s", name, attempt, where)
                # Jittered exponential backoff (up to 10 ms, then 20, 40... capped at 0.5 s) so
                # writers that conflicted do not collide again in lockstep; no sleep past the deadline
                # once the retries are spent.
                delay = random.uniform(0, min(0.5, 0.01 * 2 ** min(attempt - 1, 6)))
                time.sleep(delay if attempt <= retries else min(delay, deadline - now))

    def submit(self, fn: Callable[[UnitOfWork], T], note: str | None = None, user: str | None = None) -> T:
        """Like ``run(fn, note, user)``, but committed together with other threads' writes (group commit).

        Inside a unit of work it joins it, as ``run`` does. Otherwise the call waits in this
        database's queue (db/group_commit.py) and returns once the batch holding it committed;
        ``fn`` may run on another thread, in a unit of work shared with other writes, and again
        after a conflict (replayable, as for ``run``). Its error rolls back its changes alone.
        So ``fn`` must return plain data (a detached snapshot, None, bool, str), never a stored
        object, and do no slow work (hash passwords before submitting): its batch waits for it.
        ``user`` is the transaction's user when every write of the batch has the same one.
        ``db_group_commit=false`` makes it ``run``.
        """
        check_actor(user, "user")
        if self.current() is not None or not self.settings.db_group_commit:
            return self.run(fn, note=note, user=user)
        return queue_for(self).submit(self, fn, note, user)

    def group_commit_stats(self) -> GroupCommitStats:
        """Batches and requests of this database's group-commit queue in this process."""
        return queue_for(self).stats()

    @contextlib.contextmanager
    def _own_unit(self, note: str | None, user: str | None) -> Iterator[UnitOfWork]:
        zodb = self.open()
        gate = self._gate
        if gate is None:
            with self._gate_lock:
                if self._gate is None:
                    self._gate = threading.BoundedSemaphore(self.settings.db_pool_size)
                gate = self._gate
        if not gate.acquire(timeout=self.settings.db_pool_timeout):
            raise pool_exhausted(self.settings)
        try:
            with self._connection_unit(zodb, note, user) as uow:
                yield uow
        finally:
            gate.release()

    @contextlib.contextmanager
    def _connection_unit(self, zodb: ZODB.DB, note: str | None, user: str | None) -> Iterator[UnitOfWork]:
        # Explicit mode: the connection polls the storage once, at begin(), instead of also
        # at open and after completion (each poll is an SQL round trip on RelStorage).
        manager = transaction.TransactionManager(explicit=True)
        errors = self._errors
        with errors(None):
            connection = zodb.open(transaction_manager=manager)
        started = time.monotonic()
        try:
            with errors(None):
                txn = manager.begin()
            if user:
                txn.user = user
            uow = UnitOfWork(connection, manager)
            if note:
                uow.note(note)
            self._current.set(uow)
            try:
                # Loads inside the body may hit a lost PostgreSQL connection too.
                with errors(started):
                    yield uow
            except BaseException:
                _abort_quietly(manager)
                raise
            finally:
                # set(None), not reset(token): the end of a unit may run in another context
                # (a framework finishing a dependency on another worker thread). Copies of the
                # variable elsewhere still point here: `closed` tells them it is over.
                uow.closed = True
                self._current.set(None)
            uow.finish_notes()
            # Only a storage that maps lost connections (PostgreSQL) needs to know when the vote began.
            marker = None if errors is no_storage_errors else VoteMarker()
            if marker is not None:
                uow.transaction.join(marker)
            try:
                with errors(started):
                    manager.commit()
            except DatabaseUnavailable as exc:
                if marker is not None and marker.voting:  # lost once the vote began: maybe committed
                    raise commit_outcome_unknown(exc) from exc
                raise
        finally:
            if _in_transaction(manager):
                _abort_quietly(manager)
            connection.close()


def _abort_quietly(manager: transaction.TransactionManager) -> None:
    """Abort, keeping the error that got us here rather than one from a dead connection."""
    try:
        manager.abort()
    except Exception:
        log.debug("abort failed after an error", exc_info=True)


def _in_transaction(manager: transaction.TransactionManager) -> bool:
    try:
        manager.get()
    except transaction.interfaces.NoTransaction:
        return False
    return True


@contextlib.contextmanager
def snapshot(zodb: ZODB.DB) -> Iterator[Connection]:
    """A read-only look at the database: its own transaction, always aborted, then closed."""
    manager = transaction.TransactionManager(explicit=True)
    connection = zodb.open(transaction_manager=manager)
    try:
        manager.begin()
        try:
            yield connection
        finally:
            _abort_quietly(manager)
    finally:
        connection.close()
