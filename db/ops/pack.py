"""Packing a database: dropping history older than N days and objects no longer reachable."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import ZODB
from ZODB.interfaces import IStorage

from db.database import Database
from db.errors import TransferError
from db.ops.endpoints import has_data, settings_source
from db.ops.files import file_has_data
from db.ops.reports import PackReport
from db.settings import CodxJuniorGlobalSettings
from db.storage import file_storage_exists, startup_lock, storage_spec

Sizes = tuple[int | None, int | None]  # (bytes, object records); None when unknown


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
    with _old_file_kept(path):
        _pack(source, settings, days)
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


def _pack(source: CodxJuniorGlobalSettings | Database, settings: CodxJuniorGlobalSettings, days: float) -> None:
    if isinstance(source, Database):
        if storage_spec(settings).dsn is not None:  # PostgreSQL, also through a config file
            raise TransferError(
                f"{settings.location}: on PostgreSQL a pack runs with no application connected "
                f"({_PACK_RACE}): stop the applications and run `codx-db pack`; nothing was packed"
            )
        with _without_zodb_pack_log():
            source.open().pack(days=days)
    else:
        with _storage_alone(settings) as storage:
            if not has_data(storage):
                raise TransferError(f"{settings.location} holds no database: nothing to pack")
            zodb = ZODB.DB(storage, database_name="codx-db pack")
            try:
                with _without_zodb_pack_log():
                    zodb.pack(days=days)
            finally:
                zodb.close()


@contextlib.contextmanager
def _old_file_kept(path: Path | None) -> Iterator[None]:
    """Keep ``<file>.old`` when the pack writes no new one.

    ZODB's FileStorage.pack deletes the ``.old`` before it finds there is nothing to pack (a second
    pack in a row): the copy from before the last pack was lost. A hard link (no copy) keeps it
    until the pack is over; one a killed pack left is put back as ``.old`` by the next pack.
    """
    if path is None:
        yield
        return
    old, keep = Path(f"{path}.old"), Path(f"{path}.old.keep")
    if keep.exists():  # left by a killed pack (or another pack running now): the copy comes back first
        if old.exists():
            keep.unlink()
        else:
            os.replace(keep, old)
    if old.exists():
        os.link(old, keep)
    try:
        yield
    finally:
        if keep.exists():
            if old.exists():
                keep.unlink()
            else:
                os.replace(keep, old)


_PACK_RACE = (
    "RelStorage's garbage collection races concurrent commits and can delete the objects they write "
    "(zodb/relstorage#325)"
)


@contextlib.contextmanager
def _storage_alone(settings: CodxJuniorGlobalSettings) -> Iterator[IStorage]:
    """The storage to pack; on PostgreSQL with no other session connected, and none opening until the end.

    A review packed a history-free database while two processes created users: 15 acknowledged
    users kept their index entries and lost their objects. Holding the startup lock makes an
    application starting meanwhile wait at its open. A file is locked by FileStorage itself.
    """
    spec = storage_spec(settings)
    if spec.dsn is None:  # a file, memory, or a config file's <filestorage>
        with settings_source(settings, read_only=False).storage() as storage:
            yield storage
        return
    from db.pg.replace import refuse_sessions_in_use

    with startup_lock(spec.dsn):
        refuse_sessions_in_use(spec.dsn, settings.location, why=_PACK_RACE, outcome="nothing was packed")
        storage = spec.open()
        try:
            yield storage
        finally:
            storage.close()


class _DropPackLog(logging.Filter):
    """Drops ZODB.DB's ``logger.exception("packing")``: the error it logs is raised to the caller anyway."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "packing" and record.levelno >= logging.ERROR)


@contextlib.contextmanager
def _without_zodb_pack_log() -> Iterator[None]:
    """Silence ZODB's log of a failed pack while codx-db packs.

    ZODB logs the error with its traceback, then re-raises it: codx-db reports it in one line
    (a full disk: StorageFull), so the log would only repeat it, as a traceback.
    """
    logger = logging.getLogger("ZODB.DB")
    drop = _DropPackLog()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _size_measure(settings: CodxJuniorGlobalSettings) -> Callable[[], Sizes]:
    """A function giving (bytes, object records) of the database now."""
    if settings.kind == "file":
        path = settings.db_file_path

        def file_size() -> Sizes:
            from ZODB.FileStorage import FileStorage

            if not file_storage_exists(path) or not file_has_data(path):
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

    def postgres_size() -> Sizes:
        from db.pg.admin import pg_size  # lazy: psycopg2 only for PostgreSQL

        return pg_size(dsn)

    return postgres_size
