"""Group commit: the writing threads of one process share one transaction per batch.

Writers of one process that commit one by one queue on the same objects (the user count, the
rightmost bucket of the id index, the BTree nodes above them) and fail each other's readCurrent
checks (docs/design/load.md §1, §3.2). Here each write is a *request* in a per-``Database``
queue. One thread at a time is the *leader*: it takes up to ``db_group_commit_max`` queued
requests and runs them in ONE unit of work (``Database.run``, so with run's retry policy):

- a savepoint before each request; a request that raises (not a ``TransientError``) is rolled
  back to its savepoint, with its notes, and that error is its answer alone;
- a ``TransientError`` (a conflict on a load) or a failed commit retries the whole batch, as
  ``run`` retries any unit of work (the functions are replayable: run's own contract);
- a batch that still fails (retries spent, or an error outside every request, e.g. a value that
  cannot be stored) is *split*: each request's own thread runs it alone through ``run``, so one
  poison request cannot fail the others;
- answers are handed out only after the commit: an acknowledged write is a committed one.

The leader then promotes the oldest waiting request's thread to lead the next batch and returns:
each thread leads at most one batch, so its own call is never held up by a stream of others.

Connections and persistent objects stay on the leader's thread: request functions must return
plain data (a detached snapshot, None, bool, str), never a stored object.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import traceback
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from transaction.interfaces import TransientError

from db import forks
from db.errors import CodxDBError, CommitOutcomeUnknown

if TYPE_CHECKING:
    from db.database import Database, UnitOfWork

log = logging.getLogger(__name__)

T = TypeVar("T")


class GroupCommitInterrupted(CodxDBError):
    """The thread committing this write's batch was interrupted mid-commit: it may or may not be saved."""


@dataclass(frozen=True)
class GroupCommitStats:
    """What one ``Database``'s queue has done in this process (``Database.group_commit_stats()``)."""

    batches: int  # batches committed together
    requests: int  # requests submitted to the queue
    retried: int  # extra runs of a batch after a conflict
    split: int  # requests re-run alone because their batch failed
    largest: int  # the largest batch
    sizes: dict[int, int]  # batch size -> how many batches of that size committed
    waiting: int  # requests queued now, not yet taken by a leader

    @property
    def mean(self) -> float:
        """Requests per committed batch."""
        total = sum(self.sizes.values())
        return sum(size * count for size, count in self.sizes.items()) / total if total else 0.0


_WAITING, _DONE, _SOLO = "waiting", "done", "solo"


@dataclass(eq=False)
class _Request(Generic[T]):
    fn: Callable[[UnitOfWork], T]
    note: str | None
    user: str | None
    # Set once: when the request is answered, or when its thread is promoted to lead.
    event: threading.Event = field(default_factory=threading.Event)
    lead: bool = False
    state: str = _WAITING
    result: Any = None
    error: BaseException | None = None

    def answer(self, ok: bool, value: Any) -> None:
        if ok:
            self.result = value
        else:
            self.error = value
        self.state = _DONE

    def deliver(self) -> None:
        """Wake the request's (waiting) thread with its answer."""
        if self.error is not None:
            _detached(self.error)
        self.event.set()


class GroupCommit:
    """The queue of one ``Database`` (``queue_for``); ``submit`` is ``Database.submit``'s slow path."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: collections.deque[_Request[Any]] = collections.deque()
        self._leading = False  # a thread leads, or has been promoted and is about to
        self._requests = self._retried = self._split = 0
        self._sizes: Counter[int] = Counter()
        self._delivered = 0  # size of the last batch

    def stats(self) -> GroupCommitStats:
        with self._lock:
            return GroupCommitStats(
                batches=sum(self._sizes.values()),
                requests=self._requests,
                retried=self._retried,
                split=self._split,
                largest=max(self._sizes, default=0),
                sizes=dict(self._sizes),
                waiting=len(self._queue),
            )

    def submit(self, database: Database, fn: Callable[[UnitOfWork], T], note: str | None, user: str | None) -> T:
        request: _Request[T] = _Request(fn, note, user)
        try:
            with self._lock:
                self._requests += 1
                self._queue.append(request)
                if not self._leading:
                    # Invariant: a non-empty queue has a leader, so an idle queue was empty and
                    # this request is at its head.
                    self._leading = request.lead = True
            if not request.lead:
                request.event.wait()
            if request.state == _WAITING:  # promoted (or first): lead one batch, ours at its head
                self._lead(database, request)
        except BaseException:
            # Interrupted (KeyboardInterrupt) while waiting, or once promoted but before _lead took
            # its batch: out of the queue, and the next in line leads (else nobody would, and every
            # later submit would wait forever). Inside _lead, _lead has handed off already.
            self._withdraw(request)
            raise
        if request.state == _SOLO:
            return database.run(fn, note=note, user=user)
        if request.error is not None:
            raise request.error
        result: T = request.result
        return result

    # -- the leader ------------------------------------------------------------------------------

    def _lead(self, database: Database, own: _Request[Any]) -> None:
        batch: list[_Request[Any]] = []
        committing = [False]  # True once the batch body returned: the commit is under way
        try:
            limit = database.settings.db_group_commit_max
            # The threads the last batch answered are likely writing again: yield to them
            # while they keep joining the queue, at most once per thread answered (a
            # scheduler hint, never a wait on them), so batches do not alternate 1, N, 1, N.
            for _ in range(self._delivered - 1):
                queued = len(self._queue)
                if queued >= self._delivered:
                    break
                time.sleep(0)
                if len(self._queue) == queued:
                    break
            with self._lock:
                batch = [self._queue.popleft() for _ in range(min(limit, len(self._queue)))]
            self._run_batch(database, batch, committing)
        except BaseException as exc:
            # Interrupted (KeyboardInterrupt, SystemExit, or a bug here) outside any request's
            # own error handling: nobody may be left waiting for this batch.
            self._abandon(own, batch, exc, committing[0])
            raise
        finally:
            self._hand_off()
        for request in batch:
            if request is not own:
                request.deliver()

    def _run_batch(self, database: Database, batch: list[_Request[Any]], committing: list[bool]) -> None:
        if len(batch) == 1:
            # Alone: exactly ``run`` (no savepoint to take; its error aborts its own unit).
            (request,) = batch
            try:
                request.answer(True, database.run(request.fn, note=request.note, user=request.user))
            except Exception as exc:  # noqa: BLE001 - its answer
                request.answer(False, exc)
            with self._lock:
                self._sizes[1] += 1
                self._delivered = 1
            return
        actors = {request.user or None for request in batch}
        common = actors.pop() if len(actors) == 1 else None
        runs = [0]
        # First without savepoints: a savepoint pickles every object changed so far, so with one
        # per request the buckets the batch shares were pickled once per request (bench/README.md
        # "group commit"). Requests rarely fail; when one does, the batch is aborted and run
        # again with a savepoint per request, so that one is rolled back alone.
        careful = [False]
        last: list[list[tuple[bool, Any]] | None] = [None]  # the outcomes of the body that went to commit

        def body(uow: UnitOfWork) -> list[tuple[bool, Any]]:
            runs[0] += 1
            committing[0] = False
            txn = uow.transaction
            outcomes: list[tuple[bool, Any]] = []
            for request in batch:
                savepoint = txn.savepoint() if careful[0] else None
                description, omitted = txn.description, uow._omitted_notes
                try:
                    if request.note:
                        uow.note(request.note)
                    outcomes.append((True, request.fn(uow)))
                except (TransientError, KeyboardInterrupt, SystemExit):
                    raise  # a conflict: run retries the whole batch; an interrupt of this thread
                except BaseException as exc:  # this request's own answer (or, without savepoints, the signal)
                    if savepoint is None:
                        raise _NeedSavepoints from exc
                    savepoint.rollback()
                    # Its notes go with its changes (a savepoint keeps no transaction metadata).
                    txn.description, uow._omitted_notes = description, omitted
                    outcomes.append((False, exc))
            committing[0] = True
            last[0] = outcomes
            return outcomes

        try:
            try:
                outcomes = database.run(body, user=common)
            except _NeedSavepoints:
                careful[0] = True
            if careful[0]:  # outside the except: the requests' errors must not chain to the signal
                outcomes = database.run(body, user=common)
        except CommitOutcomeUnknown as exc:
            # The server may have committed the batch: running its writes again could do them
            # twice. Each request gets the error (its own instance: no shared traceback), but one
            # whose own error was rolled back before the commit keeps that error.
            for request, (ok, value) in zip(batch, last[0] or [(True, None)] * len(batch), strict=True):
                request.answer(False, value if not ok else CommitOutcomeUnknown(str(exc)))
            return
        except Exception as exc:  # noqa: BLE001 - split: each request gets its own answer alone
            log.debug("group commit of %d writes failed (%s): each runs alone", len(batch), type(exc).__name__)
            with self._lock:
                self._retried += max(0, runs[0] - 1)
                self._split += len(batch)
            for request in batch:
                request.state = _SOLO
            return
        with self._lock:
            self._retried += runs[0] - 1
            self._sizes[len(batch)] += 1
            self._delivered = len(batch)
        for request, (ok, value) in zip(batch, outcomes, strict=True):
            request.answer(ok, value)

    def _abandon(self, own: _Request[Any], batch: list[_Request[Any]], exc: BaseException, committing: bool) -> None:
        """After an interrupted leader: answer its batch, or give it back to the queue."""
        own.state, own.error = _DONE, exc  # this thread raises exc itself
        requeue = []
        for request in batch:
            if request is own:
                continue
            if request.state == _WAITING and committing:
                # The commit may have happened: running it again could do a write twice.
                request.answer(False, GroupCommitInterrupted(_INTERRUPTED))
            if request.state == _WAITING:
                requeue.append(request)
            else:
                request.deliver()
        with self._lock:
            if own in self._queue:  # interrupted before it took its batch
                self._queue.remove(own)
            self._queue.extendleft(reversed(requeue))  # back at the head, in their order

    def _withdraw(self, request: _Request[Any]) -> None:
        """Take a request whose thread gave up waiting out of the queue (not if a batch holds it)."""
        with self._lock:
            if request not in self._queue:
                return  # taken by a leader: answered after its commit, to nobody
            promoted = request.lead
            self._queue.remove(request)
        if promoted:  # it was to lead the next batch: the next one in line leads instead
            self._hand_off()

    def _hand_off(self) -> None:
        with self._lock:
            if self._queue:
                head = self._queue[0]
                head.lead = True
                head.event.set()
            else:
                self._leading = False


class _NeedSavepoints(Exception):  # a signal inside the leader, never seen by a caller
    """A request failed in a batch run without savepoints: run the batch again with them."""


_INTERRUPTED = (
    "the thread committing this write together with others was interrupted during the commit: "
    "the write may or may not have been saved; read it back before trying again"
)


def _detached(exc: BaseException) -> BaseException:
    """An error for another thread: its traceback keeps line numbers but no frame's locals.

    The locals are the leader's stored objects; a caller's error reporter that shows locals
    would load them on a connection another thread may be using by then.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if current.__traceback__ is not None:
            traceback.clear_frames(current.__traceback__)
        current = current.__cause__ or current.__context__
    return exc


# -- one queue per Database, fresh in a forked child ------------------------------------------------

_queues: weakref.WeakKeyDictionary[Database, GroupCommit] = weakref.WeakKeyDictionary()
_queues_lock = threading.Lock()


def queue_for(database: Database) -> GroupCommit:
    """The group-commit queue of ``database`` in this process."""
    with _queues_lock:
        queue = _queues.get(database)
        if queue is None:
            queue = _queues[database] = GroupCommit()
        return queue


class _ForkListener:
    def after_fork_in_child(self) -> None:
        # The parent's leaders and waiters are threads the child does not have: a copied queue
        # would wait forever for them. Locks may have been held by those threads at the fork.
        global _queues_lock
        _queues_lock = threading.Lock()
        _queues.clear()


_FORK_LISTENER = _ForkListener()  # forks holds listeners weakly
forks.on_fork_in_child(_FORK_LISTENER)
