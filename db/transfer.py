"""Moving and keeping the data: copy between backends, backup, restore, pack, verification.

Copies use ZODB's own machinery, as RelStorage's ``zodbconvert`` does: ``target.copyTransactionsFrom(
source)``. Into a history-free RelStorage that copies the current state of every object
(``record_iternext``); into a FileStorage or a history-keeping RelStorage it replays the source's
transactions (``iterator()``; a history-free RelStorage yields one transaction per tid that still
holds current objects). Object ids and transaction ids are kept. A PostgreSQL source is read in
one REPEATABLE READ snapshot (RelStorage's load connection), a FileStorage source up to the last
complete transaction, so a copy of a database in use is consistent.

Every copy is then verified: same generation, same user count, every user equal field by field
(password hashes included), and ``db.check`` finds nothing wrong in the target that is not
already wrong in the source.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import transaction
import ZODB
import zope.interface
from ZODB.BaseStorage import TransactionRecord
from ZODB.interfaces import IStorage
from ZODB.POSException import POSKeyError
from ZODB.serialize import referencesf
from ZODB.utils import oid_repr, u64, z64

from db.check import check_root
from db.database import Database
from db.display import capped
from db.errors import (
    ConfigurationError,
    DatabaseUnavailable,
    StorageInUse,
    TargetNotEmpty,
    TransferError,
)
from db.models import USERS_KEY, UserContainer
from db.pg_replace import drop_leftover_staging, replace_from_staging, staging_storage
from db.progress import Progress, QuietProgress
from db.settings import CodxJuniorGlobalSettings, mask_dsn
from db.storage import (
    create_private,
    file_storage_exists,
    make_private_dir,
    open_file_storage,
    startup_lock,
    storage_spec,
)
from migrations import GENERATION
from migrations.runner import read_generation

log = logging.getLogger(__name__)

# FileStorage files begin with a 4-byte magic number; anything longer holds transactions.
FILESTORAGE_HEADER = 4
MAX_LISTED_DIFFERENCES = 50


# -- reports -------------------------------------------------------------------------------------


@dataclass
class Verification:
    """A comparison of two databases: generation, user count, every user field by field."""

    source_generation: int | None
    target_generation: int | None
    source_users: int | None
    target_users: int | None
    compared: int = 0  # users found equal, field by field
    changed_since: int = 0  # users the (live) source wrote after the snapshot: not comparable
    as_of: str | None = None  # the snapshot's transaction id when the source was live
    differences: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing differs."""
        return not self.differences

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "ok": self.ok,
            "source_generation": self.source_generation,
            "target_generation": self.target_generation,
            "source_users": self.source_users,
            "target_users": self.target_users,
            "users_compared_equal": self.compared,
            "users_changed_since_snapshot": self.changed_since,
            "snapshot_tid": self.as_of,
            "differences": self.differences,
        }

    def lines(self) -> list[str]:
        """The comparison for people."""
        lines = [
            f"generation:   source {self.source_generation}, target {self.target_generation}",
            f"users:        source {self.source_users}, target {self.target_users}",
            f"compared:     {self.compared} users equal field by field (password hashes included)",
        ]
        if self.as_of is not None:
            lines.append(
                f"snapshot:     transaction {self.as_of}; {self.changed_since} users changed in the source since"
            )
        if self.ok:
            lines.append("verified:     ok")
        else:
            lines.append(f"verified:     FAILED, {len(self.differences)} differences:")
            lines.extend(f"  {difference}" for difference in self.differences)
        return lines


@dataclass
class TransferReport:
    """What a copy, backup or restore did, and its verification."""

    operation: str  # copy | backup | restore
    source: str  # where from (safe to print: DSN passwords masked)
    target: str
    unit: str  # "transactions" or "objects": what the storage's copy machinery copied
    copied: int
    seconds: float
    verification: Verification
    replaced: dict[str, Any] | None = None  # what the target held before (force)

    @property
    def ok(self) -> bool:
        """True when the copy verified."""
        return self.verification.ok

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (``--json``)."""
        return {
            "operation": self.operation,
            "ok": self.ok,
            "source": self.source,
            "target": self.target,
            "copied": self.copied,
            "unit": self.unit,
            "seconds": round(self.seconds, 3),
            "replaced": self.replaced,
            "verification": self.verification.to_dict(),
        }

    def lines(self) -> list[str]:
        """The report for people."""
        lines = [
            f"{self.operation}:".ljust(14) + f"{self.source} -> {self.target}",
            f"copied:       {self.copied} {self.unit} in {self.seconds:.1f} s",
        ]
        if self.replaced is not None:
            lines.append(
                f"replaced:     a database at generation {self.replaced.get('generation')} "
                f"with {_count(self.replaced.get('users'), 'user')} (--force)"
            )
        return lines + self.verification.lines()


@dataclass
class PackReport:
    """What a pack removed: sizes before and after."""

    location: str
    backend: str
    days: float
    seconds: float
    bytes_before: int | None  # FileStorage: the file; PostgreSQL: the object-state tables
    bytes_after: int | None
    records_before: int | None  # object records (FileStorage: current objects; PostgreSQL: object_state rows)
    records_after: int | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (``--json``)."""
        return {
            "location": self.location,
            "backend": self.backend,
            "days": self.days,
            "seconds": round(self.seconds, 3),
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "records_before": self.records_before,
            "records_after": self.records_after,
            "notes": self.notes,
        }

    def lines(self) -> list[str]:
        """The report for people."""
        return [
            f"packed:       {self.location} ({self.backend}, history older than {self.days:g} days)",
            f"size:         {_bytes(self.bytes_before)} -> {_bytes(self.bytes_after)}",
            f"records:      {self.records_before} -> {self.records_after}",
            f"took:         {self.seconds:.1f} s",
            *(f"note:         {note}" for note in self.notes),
        ]


# -- public operations ---------------------------------------------------------------------------


def copy_database(
    source: CodxJuniorGlobalSettings,
    target: CodxJuniorGlobalSettings | Path,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> TransferReport:
    """Copy the whole database described by ``source`` into an empty ``target``, then verify it.

    ``target`` is settings (PostgreSQL, a ZConfig file) or the path of a FileStorage file.
    The source is read and checked in full first (codx-db root, known generation, every object
    loads). A target holding data is refused unless ``force``; then it is replaced only once
    the new copy has verified: PostgreSQL in one transaction (from a staging schema), a file by
    renaming the new file over it. A crash at any moment leaves the old data or the new. The source must
    not change during the copy (a FileStorage source is locked; stop writers on PostgreSQL),
    since the verification compares it with the target afterwards.
    """
    src = _settings_source(source, read_only=False)
    tgt = _FileTarget(target) if isinstance(target, Path) else _settings_target(target)
    return _transfer("copy", src, tgt, force=force, live=False, progress=progress)


def backup(
    source: CodxJuniorGlobalSettings | Database,
    path: Path,
    *,
    progress: Progress | None = None,
) -> TransferReport:
    """Write a consistent snapshot of a database, in use or not, to a new FileStorage file.

    From settings: a FileStorage file is read without taking its lock (an application may keep
    writing: the copy stops at the last complete transaction), PostgreSQL in one snapshot.
    From an open ``Database`` (an application backing itself up): through its own storage.
    The verification compares every user the source has not changed since the snapshot.
    """
    src = _DatabaseSource(source) if isinstance(source, Database) else _settings_source(source, read_only=True)
    if path.exists():
        raise TransferError(f"{path} already exists: a backup is always written to a new file")
    return _transfer("backup", src, _FileTarget(path), force=False, live=True, progress=progress)


def restore(
    path: Path,
    target: CodxJuniorGlobalSettings,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> TransferReport:
    """Load a backup file into the database ``target`` describes (empty unless ``force``), then verify."""
    if not file_storage_exists(path) or not _file_has_data(path):
        raise TransferError(f"{path} is not a codx-db backup (missing or empty file)")
    src = _FileSource(path, read_only=True, location=str(path), whole=True)
    return _transfer("restore", src, _settings_target(target), force=force, live=False, progress=progress)


def pack(source: CodxJuniorGlobalSettings | Database, days: float = 0) -> PackReport:
    """Pack a database: drop history older than ``days`` and objects no longer reachable.

    FileStorage keeps the file as it was before as ``<file>.old``. On a history-free
    RelStorage a pack is the garbage collection of unreachable objects (``days`` only
    matters with history). Sizes are measured before and after.
    """
    if days < 0:
        raise TransferError(f"days must be 0 or more, not {days}")
    settings = source.settings if isinstance(source, Database) else source
    measure = _size_measure(settings)
    started = time.monotonic()
    before = measure()
    notes: list[str] = []
    path = settings.db_file_path if settings.kind == "file" else None
    mode = path.stat().st_mode & 0o777 if path is not None and path.exists() else None
    if isinstance(source, Database):
        source.open().pack(days=days)
    else:
        src = _settings_source(settings, read_only=False)
        with src.storage() as storage:
            if not _has_data(storage):
                raise TransferError(f"{settings.location} holds no database: nothing to pack")
            zodb = ZODB.DB(storage, database_name="codx-db pack")
            try:
                zodb.pack(days=days)
            finally:
                zodb.close()
    if path is not None and mode is not None:
        # FileStorage writes the packed file anew with the umask's mode: keep it private.
        os.chmod(path, mode)
    after = measure()
    if path is not None and Path(f"{path}.old").exists():
        notes.append(f"the file as it was before the pack is kept as {path}.old")
    elif settings.kind == "postgres":
        notes.append("PostgreSQL reuses the freed space; the files shrink after VACUUM FULL")
    if days:
        notes.append(f"objects that became unreachable in the last {days} days are kept (--days 0 collects them all)")
    return PackReport(
        location=settings.location,
        backend=settings.kind,
        days=days,
        seconds=time.monotonic() - started,
        bytes_before=before[0],
        bytes_after=after[0],
        records_before=before[1],
        records_after=after[1],
        notes=notes,
    )


def target_settings(*, dsn: str | None = None, config_file: Path | None = None) -> CodxJuniorGlobalSettings:
    """Settings for a copy's target: the other options (keep-history, timeouts...) from the environment.

    The persistent cache and blob directories are not shared with the source's settings:
    a cache directory belongs to one database.
    """
    if (dsn is None) == (config_file is None):
        raise ConfigurationError("a copy target is a DSN or a config file (exactly one)")
    if dsn is not None:
        return CodxJuniorGlobalSettings.load(
            db_backend="postgres", db_dsn=dsn, db_config_file=None, db_cache_dir=None, db_blob_dir=None
        )
    return CodxJuniorGlobalSettings.load(db_config_file=config_file, db_cache_dir=None, db_blob_dir=None)


def verify(source: ZODB.DB, target: ZODB.DB, as_of: bytes | None = None) -> Verification:
    """Compare two codx-db databases: generation, user count, every user field by field.

    Each side is read in one snapshot. ``as_of`` is for a source that kept running after the
    target was taken at that transaction id: source objects written later are counted as
    changed rather than compared; everything older must be equal.
    """
    with _reading(source) as s_root, _reading(target) as t_root:
        report = Verification(
            source_generation=_generation(s_root),
            target_generation=_generation(t_root),
            source_users=_user_count(s_root),
            target_users=_user_count(t_root),
            as_of=None if as_of is None else f"{u64(as_of):016x}",
        )
        differences = report.differences
        if report.source_generation is None or report.target_generation is None:
            # Two databases without a generation are not "equal": they are not codx-db databases.
            differences.append(
                f"generation: source {report.source_generation}, target {report.target_generation} "
                "(a codx-db database always has one)"
            )
        elif not _newer(s_root, as_of) and report.source_generation != report.target_generation:
            differences.append(f"generation: source {report.source_generation}, target {report.target_generation}")
        s_users, t_users = s_root.get(USERS_KEY), t_root.get(USERS_KEY)
        if not isinstance(s_users, UserContainer) or not isinstance(t_users, UserContainer):
            if isinstance(s_users, UserContainer) or isinstance(t_users, UserContainer):
                differences.append("user container: present on one side only")
            else:
                differences.append("user container: missing on both sides (not codx-db databases)")
            return report
        if not _newer(s_users.length, as_of) and report.source_users != report.target_users:
            differences.append(f"user count: source {report.source_users}, target {report.target_users}")
        _compare_users(s_users, t_users, as_of, report)
        source_problems = {p.message for p in check_root(s_root).problems}
        for problem in check_root(t_root).problems:
            if problem.message not in source_problems:
                differences.append(f"target check: {problem.code}: {problem.message}")
        differences[:] = capped(differences, MAX_LISTED_DIFFERENCES)
        return report


# -- the copy itself -----------------------------------------------------------------------------


def _transfer(
    operation: str,
    source: _Source,
    target: _Target,
    *,
    force: bool,
    live: bool,
    progress: Progress | None,
) -> TransferReport:
    progress = progress if progress is not None else QuietProgress()
    if source.identity is not None and source.identity == target.identity():
        raise TransferError(f"the source and the target are the same database ({target.location})")
    with source.storage() as src:
        if not _has_data(src):
            raise TransferError(f"{source.location} holds no database: nothing to {operation}")
    started = time.monotonic()
    if not live:
        # Everything is read and checked before the target is touched: a bad source must
        # never cost the target its data.
        progress.note("checking the source")
        _check_source(source)
    with target.prepared(force) as prepared:
        # The source is closed before the verification opens a fresh view of it: a locked
        # FileStorage cannot be opened twice, and a live source must be read after the copy.
        with source.storage() as src:
            counting = _CountingSource(src, progress)
            try:
                prepared.storage.copyTransactionsFrom(counting)
            finally:
                counting.close()
        progress.finish()
        copied_seconds = time.monotonic() - started
        as_of = prepared.storage.lastTransaction() if live else None
        progress.note("verifying")
        target_db = prepared.take_db()
        try:
            with source.database() as source_db:
                verification = verify(source_db, target_db, as_of)
        finally:
            target_db.close()
        prepared.commit = verification.ok
        if verification.ok:
            progress.note("installing the verified copy")
    return TransferReport(
        operation=operation,
        source=source.location,
        target=target.location,
        unit=counting.unit or "transactions",
        copied=counting.count,
        seconds=copied_seconds,
        verification=verification,
        replaced=prepared.replaced,
    )


def _check_source(source: _Source) -> None:
    """Refuse a source that is not a whole, readable codx-db database (before the target is touched).

    It must have the codx-db user container at its root and a generation this code knows,
    and every object reachable from the root must load: a backup missing one object would
    otherwise be found out only after the target was replaced.
    """
    with source.database() as zodb, _reading(zodb) as root:
        where = source.location
        if not isinstance(root.get(USERS_KEY), UserContainer):
            raise TransferError(
                f"{where} is not a codx-db database (its root has no codx-db users): nothing was changed"
            )
        generation = _generation(root)
        if generation is None or not 0 <= generation <= GENERATION:
            raise TransferError(
                f"{where} is at generation {generation}, which this code does not know (0..{GENERATION}): "
                "nothing was changed; use a codx-db version that does"
            )
        _load_every_object(zodb, root._p_jar, where)


def _load_every_object(zodb: ZODB.DB, connection: Any, where: str) -> int:
    """Load (and unpickle) every object reachable from the root; return how many."""
    storage = zodb.storage
    seen = {z64}
    todo = [z64]
    loaded = 0
    while todo:
        oid = todo.pop()
        loaded += 1
        try:
            data, _ = storage.load(oid)
            connection.get(oid)._p_activate()  # its class resolves and its state unpickles
            references = referencesf(data)
        except Exception as exc:  # noqa: BLE001 - whatever the damage, the answer is "refuse"
            raise TransferError(
                f"{where}: object {oid_repr(oid)} cannot be read ({type(exc).__name__}): the database is "
                "damaged or incomplete: nothing was changed"
            ) from None
        for reference in references:
            if reference not in seen:
                seen.add(reference)
                todo.append(reference)
        if loaded % 1000 == 0:
            connection.cacheGC()  # bounded memory on large databases
    return loaded


class _CountingSource:
    """The source as ``copyTransactionsFrom`` sees it, counting what it reads for the progress display.

    It declares the source's interfaces: RelStorage chooses its copier by whether the source
    provides ``IStorageCurrentRecordIteration``.
    """

    def __init__(self, storage: IStorage, progress: Progress) -> None:
        self._storage = storage
        self._progress = progress
        self._iterators: list[Any] = []
        self.unit: str | None = None
        self.count = 0
        self.total: int | None = None
        zope.interface.directlyProvides(self, zope.interface.providedBy(storage))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    def __len__(self) -> int:
        return len(self._storage)

    def iterator(self, start: bytes | None = None, stop: bytes | None = None) -> _CountingIterator:
        """The source's transactions, counted as they are read."""
        if self.unit is None:
            self._begin("transactions", _transaction_count(self._storage), approximate=False)
        inner = self._storage.iterator(start, stop)
        self._iterators.append(inner)
        return _CountingIterator(inner, self)

    def record_iternext(self, next: Any = None) -> Any:
        """The source's current object records, one at a time, counted."""
        if self.unit is None:
            # RelStorage's count is the planner's estimate.
            self._begin("objects", len(self._storage), approximate=not hasattr(self._storage, "_index"))
        result = self._storage.record_iternext(next)
        self.counted()
        return result

    def counted(self) -> None:
        """One more unit read."""
        self.count += 1
        self._progress.advance()

    def close(self) -> None:
        """Close the iterators handed out (RelStorage's hold a cursor)."""
        for inner in self._iterators:
            with contextlib.suppress(Exception):
                inner.close()
        self._iterators.clear()

    def _begin(self, unit: str, total: int | None, approximate: bool) -> None:
        self.unit, self.total = unit, total
        self._progress.start(unit, total, approximate)


class _CountingIterator:
    """A storage iterator that counts the transactions it yields."""

    def __init__(self, inner: Any, owner: _CountingSource) -> None:
        self._inner = iter(inner)
        self._owner = owner

    def __iter__(self) -> _CountingIterator:
        return self

    def __next__(self) -> Any:
        record = next(self._inner)
        self._owner.counted()
        if not hasattr(record, "extension_bytes"):
            # MappingStorage's records predate ``extension_bytes``, which FileStorage's
            # tpc_begin reads: give them the standard transaction metadata.
            record = _MetaData(record)
        return record

    def __len__(self) -> int:
        # RelStorage's history-preserving copier asks; 0 would make it count by iterating twice.
        return self._owner.total or 0

    def iterator(self) -> _CountingIterator:
        return self


class _MetaData(TransactionRecord):
    """A transaction record with standard metadata, delegating its data records."""

    def __init__(self, record: Any) -> None:
        super().__init__(record.tid, record.status, record.user, record.description, record.extension)
        self._record = record

    def __iter__(self) -> Iterator[Any]:
        return iter(self._record)


def _transaction_count(storage: IStorage) -> int | None:
    iterator = storage.iterator()
    try:
        try:
            count = len(iterator)
        except TypeError:
            count = 0
        if not count:
            # FileIterator's len() is always 0: one pass over the transaction headers is cheap.
            count = sum(1 for _ in iterator)
        return count or None
    finally:
        with contextlib.suppress(Exception):
            iterator.close()


# -- sources ------------------------------------------------------------------------------------


class _Source:
    """Where a transfer reads from."""

    location: str
    identity: tuple[str, ...] | None = None

    def storage(self) -> contextlib.AbstractContextManager[IStorage]:
        """The storage to copy from, closed afterwards."""
        raise NotImplementedError

    @contextlib.contextmanager
    def database(self) -> Iterator[ZODB.DB]:
        """A fresh view of the source, for the verification."""
        with self.storage() as storage:
            zodb = ZODB.DB(storage, database_name="codx-db source", pool_size=1)
            try:
                yield zodb
            finally:
                zodb.close()


class _FileSource(_Source):
    def __init__(self, path: Path, read_only: bool, location: str, whole: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self.location = location
        self.whole = whole  # a backup file: it must end with a complete transaction
        self.identity = ("file", os.path.realpath(path))

    @contextlib.contextmanager
    def storage(self) -> Iterator[IStorage]:
        from ZODB.FileStorage import FileStorage

        if not file_storage_exists(self.path):
            raise TransferError(f"{self.location}: no such database file")
        # Read-only: no lock is taken, so the application owning the file keeps running; the
        # copy stops at the last complete transaction. Otherwise lock it like an application.
        try:
            storage = FileStorage(str(self.path), read_only=True) if self.read_only else open_file_storage(self.path)
        except StorageInUse as exc:
            raise StorageInUse(
                f"{exc} (`codx-db backup` reads a file in use; copy and pack need it to themselves, "
                "or run db.transfer.pack(database) inside the application)"
            ) from None
        try:
            size = self.path.stat().st_size
            if self.whole and storage.getSize() < size:
                raise TransferError(
                    f"{self.location} is damaged: it ends with an incomplete transaction (complete up to byte "
                    f"{storage.getSize()} of {size}; the file was cut short or damaged): nothing was changed"
                )
            yield storage
        finally:
            storage.close()


class _SpecSource(_Source):
    def __init__(self, settings: CodxJuniorGlobalSettings) -> None:
        self.spec = storage_spec(settings)
        self.location = settings.location
        self.identity = _pg_identity(self.spec.dsn) if self.spec.dsn else None

    @contextlib.contextmanager
    def storage(self) -> Iterator[IStorage]:
        # The lock only while opening: RelStorage may create its schema then. The copy itself
        # reads one snapshot and must not stop applications from starting.
        with startup_lock(self.spec.dsn):
            storage = self.spec.open()
        try:
            yield storage
        finally:
            storage.close()


class _DatabaseSource(_Source):
    """An open ``Database``: an application backing itself up."""

    def __init__(self, database: Database) -> None:
        self.db = database
        settings = database.settings
        self.location = settings.location
        self.identity = _settings_identity(settings)

    @contextlib.contextmanager
    def storage(self) -> Iterator[IStorage]:
        storage = self.db.open().storage
        new_instance = getattr(storage, "new_instance", None)
        if new_instance is None:
            yield storage  # FileStorage and MappingStorage iterate without disturbing the application
            return
        # RelStorage: a private instance, so the copy reads its own snapshot.
        instance = new_instance()
        try:
            yield instance
        finally:
            instance.release()

    @contextlib.contextmanager
    def database(self) -> Iterator[ZODB.DB]:
        yield self.db.open()


def _settings_source(settings: CodxJuniorGlobalSettings, read_only: bool) -> _Source:
    if settings.kind == "memory":
        raise TransferError(
            "a memory database lives only inside its process: call db.transfer.backup(database, path) there"
        )
    if settings.kind == "file":
        path = settings.db_file_path
        if not file_storage_exists(path) or not _file_has_data(path):
            raise TransferError(f"{path} holds no database: nothing to read")
        return _FileSource(path, read_only=read_only, location=str(path))
    return _SpecSource(settings)


# -- targets ------------------------------------------------------------------------------------


class _Prepared:
    """An open, empty target storage; ``commit`` says whether to keep what was written."""

    def __init__(self, storage: IStorage, replaced: dict[str, Any] | None) -> None:
        self.storage = storage
        self.replaced = replaced
        self.commit = False
        self.closed = False

    def take_db(self) -> ZODB.DB:
        """A ZODB.DB over the target storage (closing it closes the storage)."""
        self.closed = True
        return ZODB.DB(self.storage, database_name="codx-db target", pool_size=1)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.storage.close()


class _Target:
    """Where a transfer writes to."""

    location: str

    def identity(self) -> tuple[str, ...] | None:
        """What makes two locations the same database."""
        raise NotImplementedError

    def prepared(self, force: bool) -> contextlib.AbstractContextManager[_Prepared]:
        """Lock the target, empty it (``force``) or refuse, and open it for the copy."""
        raise NotImplementedError


class _FileTarget(_Target):
    """A FileStorage file, written under a temporary name and renamed into place once verified.

    The file's lock is held throughout, so no application opens it half-written, and a
    failed copy leaves whatever was there before untouched.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.location = str(path)

    def identity(self) -> tuple[str, ...] | None:
        return ("file", os.path.realpath(self.path))

    @contextlib.contextmanager
    def prepared(self, force: bool) -> Iterator[_Prepared]:
        from zc.lockfile import LockError, LockFile

        path = self.path
        # Before anything is created beside it: a file that is not a FileStorage is never replaced.
        exists = file_storage_exists(path)
        _private_dirs(path.parent)
        create_private(Path(f"{path}.lock"))
        try:
            lock = LockFile(str(path) + ".lock")
        except LockError:
            raise StorageInUse(f"{path} is in use by another process: stop it before replacing its database") from None
        try:
            # Under the lock, no other copy into this file runs: any partial copy is a leftover.
            _remove_leftover_partials(path)
            replaced = None
            if exists and _file_has_data(path):
                replaced = _describe_file(path)
                if not force:
                    raise TargetNotEmpty(_not_empty_message(self.location, replaced))
            partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
            try:
                # open_file_storage creates the file 0600, as for an application's database.
                prepared = _Prepared(open_file_storage(partial), replaced)
                try:
                    yield prepared
                finally:
                    prepared.close()
                if prepared.commit:
                    _install_file(partial, path)
            finally:
                _remove_storage_files(partial)
        finally:
            lock.close()


class _StorageTarget(_Target):
    """A storage from settings: PostgreSQL (replaced in one transaction), or a ZConfig file."""

    def __init__(self, settings: CodxJuniorGlobalSettings) -> None:
        self.spec = storage_spec(settings)
        self.location = settings.location

    def identity(self) -> tuple[str, ...] | None:
        return _pg_identity(self.spec.dsn) if self.spec.dsn else None

    @contextlib.contextmanager
    def prepared(self, force: bool) -> Iterator[_Prepared]:
        # Held for the whole copy: an application starting on the target meanwhile would
        # otherwise find it empty and install a fresh database into it, and a second copy
        # would share the staging schema.
        with startup_lock(self.spec.dsn):
            storage = self.spec.open()  # creates RelStorage's tables in a new database
            try:
                replaced = None
                if _has_data(storage):
                    replaced = _describe(self.spec.open)
                    if not force:
                        raise TargetNotEmpty(_not_empty_message(self.location, replaced))
            except BaseException:
                storage.close()
                raise
            if self.spec.dsn is None:
                yield from self._in_place(storage, replaced)
                return
            storage.close()
            dsn = self.spec.dsn
            drop_leftover_staging(dsn)
            # The copy goes to a staging schema; the live tables change only in the final,
            # single transaction, once the copy has verified.
            with staging_storage(dsn) as staging:
                prepared = _Prepared(staging, replaced)
                try:
                    yield prepared
                finally:
                    prepared.close()
                if prepared.commit:
                    replace_from_staging(dsn)

    def _in_place(self, storage: IStorage, replaced: dict[str, Any] | None) -> Iterator[_Prepared]:
        """A storage that is not PostgreSQL (a ZConfig file): only an empty one can be a target."""
        prepared = _Prepared(storage, replaced)
        try:
            if replaced is not None:
                raise TransferError(
                    f"{self.location} holds data and cannot be replaced safely (only a FileStorage file "
                    "or PostgreSQL can): empty it, or copy to a new file with --to-file"
                )
            yield prepared
        finally:
            prepared.close()


def _settings_target(settings: CodxJuniorGlobalSettings) -> _Target:
    if settings.kind == "memory":
        raise TransferError("a memory database cannot be a target: it disappears with its process")
    if settings.kind == "file":
        return _FileTarget(settings.db_file_path)
    return _StorageTarget(settings)


def _count(number: Any, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _not_empty_message(location: str, found: dict[str, Any]) -> str:
    return (
        f"{location} already holds a database (generation {found.get('generation')}, "
        f"{_count(found.get('users'), 'user')}): pass --force to replace it (everything in it is deleted)"
    )


# -- helpers --------------------------------------------------------------------------------------


def _has_data(storage: IStorage) -> bool:
    """True when the storage holds a root object (every ZODB database has one)."""
    try:
        storage.load(z64)
    except POSKeyError:
        return False
    return True


def _file_has_data(path: Path) -> bool:
    try:
        return path.stat().st_size > FILESTORAGE_HEADER
    except FileNotFoundError:
        return False


def _describe(open_storage: Callable[[], IStorage]) -> dict[str, Any]:
    """Generation and user count of a non-empty storage (for messages and reports)."""
    try:
        zodb = ZODB.DB(open_storage(), database_name="codx-db describe", pool_size=1)
    except Exception:  # noqa: BLE001 - a description must not hide the real problem
        return {"generation": "unknown", "users": "unknown"}
    try:
        with _reading(zodb) as root:
            return {"generation": _generation(root), "users": _user_count(root)}
    except Exception:  # noqa: BLE001 - unreadable content: say so, do not fail
        return {"generation": "unknown", "users": "unknown"}
    finally:
        zodb.close()


def _describe_file(path: Path) -> dict[str, Any]:
    from ZODB.FileStorage import FileStorage

    return _describe(lambda: FileStorage(str(path), read_only=True))


def _install_file(partial: Path, path: Path) -> None:
    """Move a verified copy into place, with its index: the old file until the rename, the new one after."""
    with open(partial, "rb") as file:
        os.fsync(file.fileno())  # the new bytes are on disk before the name points at them
    index = Path(f"{path}.index")
    # The old index must never describe the new file: FileStorage rebuilds a missing one.
    index.unlink(missing_ok=True)
    os.replace(partial, path)
    partial_index = Path(f"{partial}.index")
    if partial_index.exists():
        os.replace(partial_index, index)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # and the rename itself survives a power cut
    finally:
        os.close(directory)


def _remove_leftover_partials(path: Path) -> None:
    """Remove the partial copies a killed copy or restore into ``path`` left beside it."""
    for leftover in sorted(path.parent.glob(f".{glob.escape(path.name)}.partial-*")):
        leftover.unlink(missing_ok=True)
        log.warning("removed %s, left by a copy or restore that did not finish", leftover)


def _private_dirs(directory: Path) -> None:
    """Create missing directories 0700, each of them (the storage factory's own helper)."""
    make_private_dir(directory)


def _remove_storage_files(path: Path) -> None:
    for suffix in ("", ".index", ".lock", ".tmp", ".index.index_tmp"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


@contextlib.contextmanager
def _reading(zodb: ZODB.DB) -> Iterator[Any]:
    """The root of one read-only snapshot (aborted at the end)."""
    manager = transaction.TransactionManager(explicit=True)
    connection = zodb.open(transaction_manager=manager)
    try:
        manager.begin()
        yield connection.root()
    finally:
        with contextlib.suppress(transaction.interfaces.NoTransaction):
            manager.abort()
        connection.close()


def _generation(root: Any) -> int | None:
    try:
        return read_generation(root)
    except (TypeError, ValueError):
        return None


def _user_count(root: Any) -> int | None:
    container = root.get(USERS_KEY)
    return len(container) if isinstance(container, UserContainer) else None


def _newer(obj: Any, as_of: bytes | None) -> bool:
    """True when a live source wrote ``obj`` after the snapshot ``as_of``."""
    if as_of is None:
        return False
    obj._p_activate()
    return obj._p_serial > as_of


def _compare_users(source: UserContainer, target: UserContainer, as_of: bytes | None, report: Verification) -> None:
    """Walk both id-ordered user trees together, comparing stored states field by field."""
    s_items, t_items = iter(source.users.items()), iter(target.users.items())
    s_next, t_next = next(s_items, None), next(t_items, None)
    seen = 0
    while s_next is not None or t_next is not None:
        if t_next is None or (s_next is not None and s_next[0] < t_next[0]):
            assert s_next is not None
            if _newer(s_next[1], as_of):
                report.changed_since += 1  # created after the snapshot
            else:
                report.differences.append(f"user {_name(s_next[1])}: in the source only")
            s_next = next(s_items, None)
        elif s_next is None or t_next[0] < s_next[0]:
            if as_of is not None:
                report.changed_since += 1  # deleted from the source after the snapshot
            else:
                report.differences.append(f"user {_name(t_next[1])}: in the target only")
            t_next = next(t_items, None)
        else:
            s_user, t_user = s_next[1], t_next[1]
            if _newer(s_user, as_of):
                report.changed_since += 1
            else:
                differing = _differing_fields(s_user, t_user)
                if differing:
                    # Field names only: values may be hashes or personal data.
                    report.differences.append(f"user {_name(s_user)}: differs in {', '.join(differing)}")
                else:
                    report.compared += 1
            s_next, t_next = next(s_items, None), next(t_items, None)
        seen += 1
        if seen % 1000 == 0:
            # Keep memory bounded on large databases.
            source._p_jar.cacheGC()
            target._p_jar.cacheGC()


def _differing_fields(source: Any, target: Any) -> list[str]:
    source._p_activate()
    target._p_activate()
    s_state, t_state = source.__getstate__(), target.__getstate__()
    names = sorted(set(s_state) | set(t_state))
    return [name for name in names if s_state.get(name, _MISSING) != t_state.get(name, _MISSING)]


_MISSING = object()


def _name(user: Any) -> str:
    return f"{getattr(user, 'username', '?')!r} (id {getattr(user, 'id', '?')})"


def _settings_identity(settings: CodxJuniorGlobalSettings) -> tuple[str, ...] | None:
    if settings.kind == "file":
        return ("file", os.path.realpath(settings.db_file_path))
    if settings.kind == "memory":
        return None
    spec = storage_spec(settings)
    return _pg_identity(spec.dsn) if spec.dsn else None


def _pg_identity(dsn: str | None) -> tuple[str, ...] | None:
    """What identifies a PostgreSQL database whatever the DSN's spelling (localhost, 127.0.0.1, socket)."""
    if dsn is None:
        return None
    with _pg_connection(dsn) as conn, conn.cursor() as cur:
        # The server's start time and the database's oid: two databases share both only
        # if they are the same database.
        cur.execute(
            "SELECT pg_postmaster_start_time()::text, oid::text FROM pg_database WHERE datname = current_database()"
        )
        started, oid = cur.fetchone()
    return ("postgres", started, oid)


def _size_measure(settings: CodxJuniorGlobalSettings) -> Callable[[], tuple[int | None, int | None]]:
    """A function giving (bytes, object records) of the database now."""
    if settings.kind == "file":
        path = settings.db_file_path

        def file_size() -> tuple[int | None, int | None]:
            from ZODB.FileStorage import FileStorage

            if not file_storage_exists(path) or not _file_has_data(path):
                return None, None
            storage = FileStorage(str(path), read_only=True)
            try:
                return path.stat().st_size, len(storage)
            finally:
                storage.close()

        return file_size
    dsn = storage_spec(settings).dsn if settings.kind != "memory" else None
    if dsn is None:
        return lambda: (None, None)

    def pg_size() -> tuple[int | None, int | None]:
        with _pg_connection(dsn) as conn, conn.cursor() as cur:
            # The tables holding object states (with their indexes and TOAST): RelStorage's pack
            # bookkeeping tables (object_ref...) grow on the first pack and would hide the gain.
            cur.execute(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind = 'r' AND n.nspname = current_schema() "
                "AND c.relname IN ('object_state', 'current_object', 'blob_chunk')"
            )
            size = int(cur.fetchone()[0])
            cur.execute("SELECT count(*) FROM object_state")
            return size, int(cur.fetchone()[0])

    return pg_size


@contextlib.contextmanager
def _pg_connection(dsn: str) -> Iterator[Any]:
    """A short psycopg2 connection; a failure names the server, never the password."""
    import psycopg2
    from psycopg2.extensions import parse_dsn

    try:
        conn = psycopg2.connect(dsn, application_name="codx-db transfer", connect_timeout=10)
    except psycopg2.OperationalError as exc:
        reason = (str(exc).strip().splitlines() or ["connection failed"])[0]
        password = parse_dsn(dsn).get("password")
        if password:
            reason = reason.replace(password, "***")
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL ({mask_dsn(dsn)}): {reason}") from None
    try:
        yield conn
    finally:
        conn.close()


def _bytes(value: int | None) -> str:
    if value is None:
        return "unknown"
    if value < 10 * 1024:
        return f"{value} B"
    if value < 10 * 1024 * 1024:
        return f"{value / 1024:.1f} KiB"
    return f"{value / 1024 / 1024:.1f} MiB"


__all__ = [
    "PackReport",
    "TargetNotEmpty",
    "TransferError",
    "TransferReport",
    "Verification",
    "backup",
    "copy_database",
    "pack",
    "restore",
    "target_settings",
    "verify",
]
