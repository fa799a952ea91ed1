"""The generations runner: read, check and advance the generation stored in the database.

Why our own runner rather than zope.generations: zope.generations finds steps through
zope.component utilities, commits on the thread-local transaction manager, and only *logs*
a failing step above the minimum generation. codx-db needs a failing step to raise (and
leave the database at the last completed generation), batched steps that commit along the
way, and a dry run; that is about a hundred lines on top of ZODB.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TypeVar

import transaction
import ZODB
from persistent.mapping import PersistentMapping
from ZODB.FileStorage.FileStorage import packed_version

import migrations
from db.errors import GenerationError
from db.models import USERS_KEY
from db.settings import CodxJuniorGlobalSettings, StartupPolicy

log = logging.getLogger(__name__)

GENERATION_KEY = "codx_db.generation"

Progress = Callable[[str, int, int | None], None]  # (message, done, total or None)
T = TypeVar("T")
DEFAULT_BATCH_SIZE = 1000


@dataclass(frozen=True)
class Step:
    """One generation step: ``evolve{generation}.py``; its docstring's first line describes it."""

    generation: int
    description: str
    module: ModuleType = field(repr=False, compare=False)


@dataclass(frozen=True)
class MigrationStatus:
    """Where a database stands against this code."""

    current: int | None  # None: a new, empty database
    target: int
    minimum: int
    pending: list[Step]

    @property
    def up_to_date(self) -> bool:
        return self.current is not None and not self.pending


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


def load_step(generation: int) -> Step:
    """Import ``migrations.evolve{generation}``; its docstring is its description."""
    module = importlib.import_module(f"migrations.evolve{generation}")
    if not callable(getattr(module, "evolve", None)):
        raise GenerationError(f"migrations/evolve{generation}.py has no evolve(context) function")
    doc = (module.__doc__ or "").strip().splitlines()
    return Step(generation, doc[0] if doc else f"generation {generation}", module)


def read_generation(root: Any) -> int | None:
    """The generation stamped in a root, or None for an empty database.

    A database holding users but no stamp predates the generation key: generation 0.
    """
    generation = root.get(GENERATION_KEY)
    if generation is not None:
        return int(generation)
    return 0 if USERS_KEY in root else None


@contextmanager
def _connection(zodb: ZODB.DB) -> Iterator[tuple[Any, transaction.TransactionManager]]:
    manager = transaction.TransactionManager(explicit=True)
    connection = zodb.open(transaction_manager=manager)
    try:
        manager.begin()
        yield connection, manager
    finally:
        with suppress(transaction.interfaces.NoTransaction):
            manager.abort()
        connection.close()


def status(zodb: ZODB.DB, target: int | None = None) -> MigrationStatus:
    """Current generation, target, and the steps that would run."""
    target = migrations.GENERATION if target is None else target
    with _connection(zodb) as (connection, _):
        current = read_generation(connection.root())
    _check_not_newer(current)
    if target > migrations.GENERATION or target < 0:
        raise GenerationError(f"target generation {target} does not exist (this code knows 0..{migrations.GENERATION})")
    start = 0 if current is None else current
    pending = [] if current is None else [load_step(n) for n in range(start + 1, target + 1)]
    return MigrationStatus(current, target, migrations.MINIMUM_GENERATION, pending)


def _check_not_newer(current: int | None) -> None:
    if current is not None and current > migrations.GENERATION:
        raise GenerationError(
            f"the database is at generation {current}, newer than this code "
            f"(generation {migrations.GENERATION}): upgrade codx-db before opening it"
        )


def install(zodb: ZODB.DB) -> bool:
    """Install and stamp a new database at the latest generation; False if it was not empty."""
    from migrations import install as install_step

    with _connection(zodb) as (connection, manager):
        root = connection.root()
        if read_generation(root) is not None:
            return False
        install_step.evolve(EvolveContext(connection, manager, "install", None, False))
        root[GENERATION_KEY] = migrations.GENERATION
        manager.get().note(f"codx-db: install at generation {migrations.GENERATION}")
        manager.commit()
    log.info("installed a new codx-db database at generation %d", migrations.GENERATION)
    return True


def evolve(
    zodb: ZODB.DB,
    target: int | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> list[Step]:
    """Run the pending steps up to ``target``, one transaction per generation.

    A failing step is aborted and raised as GenerationError; the database stays at the
    last completed generation. With ``dry_run`` every step runs and is then aborted.
    """
    if not dry_run:
        install(zodb)
    plan = status(zodb, target)
    if plan.current is None:
        return []
    with _connection(zodb) as (connection, manager):
        for step in plan.pending:
            note = f"codx-db: evolve to generation {step.generation}: {step.description}"
            context = EvolveContext(connection, manager, note, progress, dry_run, batch_size)
            context.report(f"generation {step.generation}: {step.description}")
            try:
                step.module.evolve(context)
                connection.root()[GENERATION_KEY] = step.generation
                if not dry_run:  # a dry run keeps going in one transaction, aborted at the end
                    manager.get().note(note)
                    manager.commit()
                    manager.begin()
            except Exception as exc:
                manager.abort()
                raise GenerationError(
                    f"generation {step.generation} ({step.description}) failed: "
                    f"{type(exc).__name__}: {exc}; the database stays at generation "
                    f"{plan.current if dry_run else step.generation - 1}"
                ) from exc
            log.info("evolved the database to generation %d", step.generation)
    return plan.pending


def on_open(zodb: ZODB.DB, policy: StartupPolicy, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
    """Install a new database, then apply the startup policy to an old one."""
    if install(zodb):
        return
    plan = status(zodb)
    if plan.up_to_date:
        return
    current = plan.current or 0
    if policy == "evolve":
        evolve(zodb, batch_size=batch_size)
    elif current < migrations.MINIMUM_GENERATION:
        if policy == "minimum":
            evolve(zodb, migrations.MINIMUM_GENERATION, batch_size=batch_size)
        else:
            raise GenerationError(
                f"the database is at generation {current}; this code needs at least "
                f"{migrations.MINIMUM_GENERATION} (latest {migrations.GENERATION}): "
                "run `codx-db migrate --apply` first"
            )
    else:
        log.warning(
            "the database is at generation %d, the code's latest is %d: run `codx-db migrate`",
            current,
            migrations.GENERATION,
        )


# The header FileStorage writes into a new file; a file holding only this has no root object.
# (ZODB's own constant: b"FS30" under Python 3; b"FS21" was Python 2's, which it cannot open.)
FILESTORAGE_HEADER: bytes = packed_version


def holds_database(settings: CodxJuniorGlobalSettings) -> bool:
    """False when nothing is there yet: no file, an empty file, no RelStorage tables, no root object.

    Answered without opening a storage, because opening creates what is missing (the file and
    its header, RelStorage's tables, ZODB's root object, then codx-db's install): a command
    that only reads must leave an empty database as it found it. True when this cannot tell
    (memory, a FileStorage described by a config file, a server that does not answer): the
    open that follows decides, and says what is wrong.
    """
    if settings.kind == "memory":
        return True
    if settings.kind == "file":
        from db.storage import file_storage_exists

        # Refuses (NotADatabaseFile) a FIFO, a directory or a file that is not a FileStorage,
        # without opening it: reading a FIFO would wait for a writer forever.
        if not file_storage_exists(settings.db_file_path):
            return False
        return settings.db_file_path.stat().st_size > len(FILESTORAGE_HEADER)
    from db.storage import storage_spec

    dsn = storage_spec(settings).dsn
    return True if dsn is None else _postgres_holds_database(dsn)


def _postgres_holds_database(dsn: str) -> bool:
    """True when RelStorage's tables exist and hold ZODB's root object (oid 0)."""
    import psycopg2

    try:
        conn = psycopg2.connect(dsn, application_name="codx-db probe")
    except psycopg2.Error:
        return True  # the open that follows reports why it cannot connect
    try:
        with conn.cursor() as cur:
            # to_regclass: the tables RelStorage would use, on the search path it would use.
            cur.execute("SELECT to_regclass('object_state'), to_regclass('current_object')")
            object_state, current_object = cur.fetchone() or (None, None)
            if object_state is None:
                return False
            # History-preserving schemas say which state is current in current_object.
            table = "current_object" if current_object is not None else "object_state"
            cur.execute(f"SELECT 1 FROM {table} WHERE zoid = 0")
            return cur.fetchone() is not None
    except psycopg2.Error:
        return True  # e.g. no permission to read the tables: the open reports it
    finally:
        conn.close()


@contextmanager
def open_for_migration(settings: CodxJuniorGlobalSettings) -> Iterator[ZODB.DB]:
    """Open the database *without* the startup policy, holding the startup lock throughout.

    Used by ``codx-db migrate``: other processes opening the database wait until it is done.
    """
    from db.storage import startup_lock, storage_spec

    spec = storage_spec(settings)
    with startup_lock(spec.dsn):
        zodb = ZODB.DB(spec.open(), database_name="codx-db migrate")
        try:
            yield zodb
        finally:
            zodb.close()
