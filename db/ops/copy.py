"""Copying a whole database: between backends (copy), into a new file (backup), from a file (restore).

Copies use ZODB's own machinery, as RelStorage's ``zodbconvert`` does: ``target.copyTransactionsFrom(
source)``. Into a history-free RelStorage that copies the current state of every object
(``record_iternext``); into a FileStorage or a history-keeping RelStorage it replays the source's
transactions (``iterator()``; a history-free RelStorage yields one transaction per tid that still
holds current objects). Object ids and transaction ids are kept. A PostgreSQL source is read in
one REPEATABLE READ snapshot (RelStorage's load connection), a FileStorage source up to the last
complete transaction, so a copy of a database in use is consistent.

Every copy is then verified (``db.ops.verify``) before the target is replaced (``db.ops.endpoints``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ZODB
import zope.interface
from ZODB.BaseStorage import TransactionRecord
from ZODB.interfaces import IStorage
from ZODB.serialize import referencesf
from ZODB.utils import oid_repr, z64

from db.database import Database
from db.errors import ConfigurationError, TransferError
from db.ops.endpoints import (
    DatabaseSource,
    FileSource,
    FileTarget,
    Source,
    Target,
    has_data,
    settings_source,
    settings_target,
)
from db.ops.files import file_has_data, side_file_suffix
from db.ops.progress import ProgressSink, QuietProgress
from db.ops.reports import TransferReport
from db.ops.verify import generation_of, reading, verify
from db.settings import CodxJuniorGlobalSettings
from db.storage import file_storage_exists
from db.users.models import USERS_KEY, UserContainer
from migrations import GENERATION


def copy_database(
    source: CodxJuniorGlobalSettings,
    target: CodxJuniorGlobalSettings | Path,
    *,
    force: bool = False,
    progress: ProgressSink | None = None,
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
    src = settings_source(source, read_only=False)
    tgt = FileTarget(target) if isinstance(target, Path) else settings_target(target)
    _refuse_side_file(src, tgt)
    return _transfer("copy", src, tgt, force=force, live=False, progress=progress)


def backup(
    source: CodxJuniorGlobalSettings | Database,
    path: Path,
    *,
    progress: ProgressSink | None = None,
) -> TransferReport:
    """Write a consistent snapshot of a database, in use or not, to a new FileStorage file.

    From settings: a FileStorage file is read without taking its lock (an application may keep
    writing: the copy stops at the last complete transaction), PostgreSQL in one snapshot.
    From an open ``Database`` (an application backing itself up): through its own storage.
    The verification compares every user the source has not changed since the snapshot.
    """
    src = DatabaseSource(source) if isinstance(source, Database) else settings_source(source, read_only=True)
    tgt = FileTarget(path, backup=True)
    _refuse_side_file(src, tgt)
    if path.exists():
        raise TransferError(f"{path} already exists: a backup is always written to a new file")
    return _transfer("backup", src, tgt, force=False, live=True, progress=progress)


def restore(
    path: Path,
    target: CodxJuniorGlobalSettings,
    *,
    force: bool = False,
    progress: ProgressSink | None = None,
) -> TransferReport:
    """Load a backup file into the database ``target`` describes (empty unless ``force``), then verify."""
    if not file_storage_exists(path) or not file_has_data(path):
        raise TransferError(f"{path} is not a codx-db backup (missing or empty file)")
    src = FileSource(path, read_only=True, location=str(path), whole=True)
    return _transfer("restore", src, settings_target(target), force=force, live=False, progress=progress)


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


def _refuse_side_file(source: Source, target: Target) -> None:
    """Refuse a target named like a file FileStorage keeps beside the source database: it would be lost."""
    if source.file is None or not isinstance(target, FileTarget):
        return
    suffix = side_file_suffix(source.file, target.path)
    if suffix is not None:
        raise TransferError(
            f"{target.location} is a side file of the database {source.file} (FileStorage deletes or "
            f"overwrites its {suffix} file when it opens or packs the database): choose another name; "
            "nothing was written"
        )


# -- the copy itself -----------------------------------------------------------------------------


def _transfer(
    operation: str,
    source: Source,
    target: Target,
    *,
    force: bool,
    live: bool,
    progress: ProgressSink | None,
) -> TransferReport:
    progress = progress if progress is not None else QuietProgress()
    if source.identity is not None and source.identity == target.identity():
        raise TransferError(f"the source and the target are the same database ({target.location})")
    with source.storage() as src:
        if not has_data(src):
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


def _check_source(source: Source) -> None:
    """Refuse a source that is not a whole, readable codx-db database (before the target is touched).

    It must have the codx-db user container at its root and a generation this code knows,
    and every object reachable from the root must load: a backup missing one object would
    otherwise be found out only after the target was replaced.
    """
    with source.database() as zodb, reading(zodb) as root:
        where = source.location
        if not isinstance(root.get(USERS_KEY), UserContainer):
            raise TransferError(
                f"{where} is not a codx-db database (its root has no codx-db users): nothing was changed"
            )
        generation = generation_of(root)
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

    def __init__(self, storage: IStorage, progress: ProgressSink) -> None:
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
