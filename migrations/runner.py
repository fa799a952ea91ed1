"""The generations runner: read, check and advance each registered package's generation.

Why our own runner rather than zope.generations: zope.generations finds steps through
zope.component utilities, commits on the thread-local transaction manager, and only *logs*
a failing step above the minimum generation. codx-db needs a failing step to raise (and
leave the database at the last completed generation), batched steps that commit along the
way, and a dry run; that is about a hundred lines on top of ZODB. The packages and their
numbers are in migrations/registry.py; what a step is given, in migrations/context.py.

The functions work on codx_db unless told otherwise: ``status(zodb, target)`` and
``evolve(zodb, target)`` mean codx-db's own generation, as they always have.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import transaction
import ZODB
from ZODB.FileStorage.FileStorage import packed_version

from db.errors import GenerationError, GenerationTooHigh, GenerationTooLow, StepFailed
from db.settings import CodxJuniorGlobalSettings, StartupPolicy
from migrations import registry
from migrations.context import DEFAULT_BATCH_SIZE, EvolveContext, Progress, Step
from migrations.registry import CODX_DB, GENERATION_KEY, GENERATIONS_KEY, SchemaManager, read_generation

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "FILESTORAGE_HEADER",
    "GENERATIONS_KEY",
    "GENERATION_KEY",
    "EvolveContext",
    "MigrationStatus",
    "Progress",
    "Step",
    "evolve",
    "holds_database",
    "install",
    "load_step",
    "on_open",
    "open_for_migration",
    "read_generation",
    "status",
    "statuses",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MigrationStatus:
    """Where a package's data in a database stands against its code."""

    current: int | None  # None: a new, empty database (for this package: none of its data yet)
    target: int
    minimum: int
    pending: list[Step]
    package: str = CODX_DB

    @property
    def up_to_date(self) -> bool:
        return self.current is not None and not self.pending


def load_step(generation: int) -> Step:
    """Import codx-db's ``migrations.evolve{generation}``; its docstring is its description."""
    return registry.get(CODX_DB).load_step(generation)


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


def _plan(manager: SchemaManager, current: int | None, target: int | None = None) -> MigrationStatus:
    latest = manager.generation
    target = latest if target is None else target
    if current is not None and current > latest:
        raise GenerationTooHigh(manager.package, current, latest)
    if target > latest or target < 0:
        whose = "" if manager.package == CODX_DB else f"{manager.package} "
        raise GenerationError(f"{whose}target generation {target} does not exist (this code knows 0..{latest})")
    pending = [] if current is None else [manager.load_step(n) for n in range(current + 1, target + 1)]
    return MigrationStatus(current, target, manager.minimum, pending, manager.package)


def status(zodb: ZODB.DB, target: int | None = None, package: str = CODX_DB) -> MigrationStatus:
    """A package's current generation, target, and the steps that would run."""
    manager = registry.get(package)
    with _connection(zodb) as (connection, _):
        current = registry.read_package_generation(connection.root(), package)
    return _plan(manager, current, target)


def check_target(target: int | None, package: str = CODX_DB) -> None:
    """GenerationError if ``target`` is no generation of ``package``: checked before anything is opened."""
    _plan(registry.get(package), None, target)


def statuses(zodb: ZODB.DB) -> list[MigrationStatus]:
    """Every registered package's status against its latest generation, codx_db first."""
    with _connection(zodb) as (connection, _):
        root = connection.root()
        current = {m.package: registry.read_package_generation(root, m.package) for m in registry.managers()}
    return [_plan(m, current[m.package]) for m in registry.managers()]


def install(zodb: ZODB.DB) -> bool:
    """Install every registered package the database holds nothing of, in one transaction.

    Each is stamped at its latest generation. True when the database was new (codx_db was
    installed), False if it was not empty. A package newer than its code is refused before
    anything is installed.
    """
    with _connection(zodb) as (connection, manager):
        root = connection.root()
        new: list[SchemaManager] = []
        for schema in registry.managers():
            current = registry.read_package_generation(root, schema.package)
            if current is None:
                new.append(schema)
            elif current > schema.generation:
                raise GenerationTooHigh(schema.package, current, schema.generation)
        if not new:
            return False
        for schema in new:
            step = schema.install_step()
            context = EvolveContext(connection, manager, f"codx-db: install {schema.package}", None, False)
            try:
                step.module.evolve(context)
            except Exception as exc:
                manager.abort()  # all or nothing: a half-installed root would pass for installed
                raise StepFailed(schema.package, 0, step.description, None, exc) from exc
            registry.stamp(root, schema.package, schema.generation)
        manager.get().note("codx-db: install " + ", ".join(_at(s.package, s.generation) for s in new))
        manager.commit()
    for schema in new:
        if schema.package == CODX_DB:
            log.info("installed a new codx-db database at generation %d", schema.generation)
        else:
            log.info("installed %s at generation %d", schema.package, schema.generation)
    return any(schema.package == CODX_DB for schema in new)


def _at(package: str, generation: int) -> str:
    return f"at generation {generation}" if package == CODX_DB else f"{package} at generation {generation}"


def evolve(
    zodb: ZODB.DB,
    target: int | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    package: str | None = None,
) -> list[Step]:
    """Run the pending steps, one transaction per generation; return the steps that ran.

    Without ``package`` or ``target``: every registered package to its latest, codx_db first.
    ``target`` alone is codx_db's target; ``package`` picks the one package to evolve.
    A failing step is aborted and raised as ``StepFailed``; the package stays at its last
    completed generation. With ``dry_run`` every step runs and is then aborted.
    """
    if not dry_run:
        install(zodb)
    if package is None and target is None:
        chosen = registry.managers()
    else:
        chosen = [registry.get(CODX_DB if package is None else package)]
    ran: list[Step] = []
    with _connection(zodb) as (connection, manager):
        root = connection.root()
        # Every plan first: a package newer than its code refuses the run before any step.
        plans = [(s, _plan(s, registry.read_package_generation(root, s.package), target)) for s in chosen]
        for schema, plan in plans:
            for step in plan.pending:
                _run_step(connection, manager, schema, plan, step, dry_run, progress, batch_size)
                ran.append(step)
    return ran


def _run_step(
    connection: Any,
    manager: transaction.TransactionManager,
    schema: SchemaManager,
    plan: MigrationStatus,
    step: Step,
    dry_run: bool,
    progress: Progress | None,
    batch_size: int,
) -> None:
    whose = "" if schema.package == CODX_DB else f"{schema.package} "
    note = f"codx-db: evolve {whose}to generation {step.generation}: {step.description}"
    context = EvolveContext(connection, manager, note, progress, dry_run, batch_size)
    context.report(f"{whose}generation {step.generation}: {step.description}")
    try:
        step.module.evolve(context)
        registry.stamp(connection.root(), schema.package, step.generation)
        if not dry_run:  # a dry run keeps going in one transaction, aborted at the end
            manager.get().note(note)
            manager.commit()
            manager.begin()
    except Exception as exc:
        manager.abort()
        stays_at = plan.current if dry_run else step.generation - 1
        raise StepFailed(schema.package, step.generation, step.description, stays_at, exc) from exc
    if schema.package == CODX_DB:
        log.info("evolved the database to generation %d", step.generation)
    else:
        log.info("evolved %s to generation %d", schema.package, step.generation)


def on_open(
    zodb: ZODB.DB, policy: StartupPolicy, batch_size: int = DEFAULT_BATCH_SIZE, *, read_only: bool = False
) -> None:
    """Install a new database (or a newly registered package), then apply the startup policy to each package.

    ``read_only``: nothing is installed or evolved; a database below the minimum is refused.
    """
    registry.mark_opened()
    if read_only:
        policy = "refuse"
    elif install(zodb):
        return
    for plan in statuses(zodb):
        if plan.up_to_date or (read_only and plan.current is None and plan.package != CODX_DB):
            continue  # read-only: a package not installed yet is not read either
        schema = registry.get(plan.package)
        current = plan.current or 0
        if policy == "evolve":
            evolve(zodb, package=schema.package, batch_size=batch_size)
        elif current < plan.minimum:
            if policy == "minimum":
                evolve(zodb, plan.minimum, package=schema.package, batch_size=batch_size)
            else:
                raise GenerationTooLow(schema.package, current, plan.minimum, plan.target)
        elif schema.package == CODX_DB:
            log.warning(
                "the database is at generation %d, the code's latest is %d: run `codx-db migrate`",
                current,
                plan.target,
            )
        else:
            log.warning(
                "%s is at generation %d in the database, its code's latest is %d: run `codx-db migrate`",
                schema.package,
                current,
                plan.target,
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
    path = settings.db_file_path if settings.kind == "file" else _config_file_path(settings)
    if path is not None:
        from db.file_storage import file_storage_exists

        # Refuses (NotADatabaseFile) a FIFO, a directory or a file that is not a FileStorage,
        # without opening it: reading a FIFO would wait for a writer forever.
        if not file_storage_exists(path):
            return False
        return path.stat().st_size > len(FILESTORAGE_HEADER)
    from db.storage import storage_spec

    dsn = storage_spec(settings).dsn
    return True if dsn is None else _postgres_holds_database(dsn)


def _config_file_path(settings: CodxJuniorGlobalSettings) -> Path | None:
    """The file of a config file's ``<filestorage>`` (None: another storage, or no config file)."""
    if settings.kind != "config":
        return None
    from db.pg.config import config_file_storage

    section = config_file_storage(settings)
    return None if section is None else section.path


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
