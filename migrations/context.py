"""What a generation step is given (``EvolveContext``) and what the runner knows of a step (``Step``).

``EvolveContext`` is the whole API of a step: ``root``, ``connection``, ``iter_batched``,
``commit_batch``, ``report`` and ``dry_run``. A step never commits on its own (no
``transaction.commit()``): the runner commits it with its generation stamp, and a large
step commits batches through ``iter_batched``/``commit_batch``, which a dry run skips.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import TypeVar

import transaction
import ZODB
from persistent.mapping import PersistentMapping

Progress = Callable[[str, int, int | None], None]  # (message, done, total or None)
T = TypeVar("T")
DEFAULT_BATCH_SIZE = 1000


@dataclass(frozen=True)
class Step:
    """One generation step: ``evolve{generation}.py`` of a package; its docstring's first line describes it."""

    generation: int
    description: str
    module: ModuleType = field(repr=False, compare=False)
    package: str = "codx_db"


class EvolveContext:
    """What a step gets: the connection, its root, and batched iteration for large steps."""

    def __init__(
        self,
        connection: ZODB.Connection.Connection,
        manager: transaction.TransactionManager,
        step_note: str,
        progress: Progress | None,
        dry_run: bool,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        self.connection = connection
        self.root: PersistentMapping = connection.root()
        self.dry_run = dry_run
        self.batch_size = batch_size
        self.batches = 0
        self._manager = manager
        self._note = step_note
        self._progress = progress

    def iter_batched(self, items: Iterable[T], total: int | None = None) -> Iterator[T]:
        """Yield ``items``, committing after every ``batch_size`` of them.

        A step over many users must not be one giant transaction (RelStorage holds it all in
        memory and in one commit). The generation is stamped only when the step returns, so
        a step using this must be idempotent: after an interruption it runs again from the
        start and must recognise what a committed batch already did.
        """
        done = 0
        for item in items:
            yield item
            done += 1
            if done % self.batch_size == 0:
                self.commit_batch(done, total)
        self.report(f"{done} done", done, total)

    def commit_batch(self, done: int, total: int | None = None) -> None:
        """Commit the work so far (not in a dry run, where everything is aborted at the end)."""
        self.batches += 1
        if not self.dry_run:
            txn = self._manager.get()
            txn.note(f"{self._note} (batch {self.batches}, {done} done)")
            self._manager.commit()
            self._manager.begin()
            self.connection.cacheGC()  # keep memory bounded on a million users
        self.report(f"{done} done", done, total)

    def report(self, message: str, done: int = 0, total: int | None = None) -> None:
        """Tell the caller (the CLI's progress display) how far the step is."""
        if self._progress is not None:
            self._progress(message, done, total)
