"""Where a copy, backup or restore reads from (sources) and writes to (targets).

A source opens its storage for reading (a FileStorage file without its lock when an
application may keep writing, PostgreSQL in one snapshot, or an open ``Database``). A target
is locked, refused when it holds data (unless forced), and replaced only once the new copy has
verified: a file by renaming the verified copy over it, PostgreSQL in one transaction from a
staging schema. A crash at any moment leaves the old data or the new.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ZODB
from ZODB.interfaces import IStorage
from ZODB.POSException import POSKeyError
from ZODB.utils import z64

from db.database import Database
from db.display import plural
from db.errors import StorageInUse, TargetNotEmpty, TransferError
from db.ops.files import (
    file_has_data,
    install_file,
    remove_leftover_partials,
    remove_storage_files,
    resolved,
    target_in_use,
)
from db.ops.verify import describe_file, describe_storage
from db.settings import CodxJuniorGlobalSettings
from db.storage import (
    create_private,
    file_storage_exists,
    make_private_dir,
    open_file_storage,
    startup_lock,
    storage_spec,
)

log = logging.getLogger(__name__)

# -- sources ------------------------------------------------------------------------------------


class Source:
    """Where a transfer reads from."""

    location: str
    identity: tuple[str, ...] | None = None
    file: Path | None = None  # the FileStorage file read, symlinks resolved (None: not a file)

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


class FileSource(Source):
    def __init__(self, path: Path, read_only: bool, location: str, whole: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self.location = location
        self.whole = whole  # a backup file: it must end with a complete transaction
        self.file = resolved(path)
        self.identity = ("file", str(self.file))

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


class SpecSource(Source):
    def __init__(self, settings: CodxJuniorGlobalSettings) -> None:
        self.spec = storage_spec(settings)
        self.location = settings.location
        self.file = settings_file(settings)
        self.identity = _settings_identity(settings)

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


class DatabaseSource(Source):
    """An open ``Database``: an application backing itself up."""

    def __init__(self, database: Database) -> None:
        self.db = database
        settings = database.settings
        self.location = settings.location
        self.file = settings_file(settings)
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


def settings_source(settings: CodxJuniorGlobalSettings, read_only: bool) -> Source:
    if settings.kind == "memory":
        raise TransferError(
            "a memory database lives only inside its process: call db.transfer.backup(database, path) there"
        )
    if settings.kind == "file":
        path = settings.db_file_path
        if not file_storage_exists(path) or not file_has_data(path):
            raise TransferError(f"{path} holds no database: nothing to read")
        return FileSource(path, read_only=read_only, location=str(path))
    return SpecSource(settings)


# -- targets ------------------------------------------------------------------------------------


class Prepared:
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


class Target:
    """Where a transfer writes to."""

    location: str

    def identity(self) -> tuple[str, ...] | None:
        """What makes two locations the same database."""
        raise NotImplementedError

    def prepared(self, force: bool) -> contextlib.AbstractContextManager[Prepared]:
        """Lock the target, empty it (``force``) or refuse, and open it for the copy."""
        raise NotImplementedError


class FileTarget(Target):
    """A FileStorage file, written under a temporary name and renamed into place once verified.

    The file's lock is held throughout, so no application opens it half-written, and a
    failed copy leaves whatever was there before untouched.
    """

    def __init__(self, path: Path, backup: bool = False) -> None:
        # A symlink (into a mounted volume) stays a symlink: the file it points to is replaced.
        self.path = resolved(path)
        self.location = str(path)
        # A backup is a new file no application opens: only another backup or copy contends
        # for its lock, and the lock file goes when the backup ends.
        self.backup = backup

    def identity(self) -> tuple[str, ...] | None:
        return ("file", str(self.path))

    @contextlib.contextmanager
    def prepared(self, force: bool) -> Iterator[Prepared]:
        from zc.lockfile import LockError, LockFile

        path = self.path
        # Before anything is created beside it: a file that is not a FileStorage is never replaced.
        exists = file_storage_exists(path)
        make_private_dir(path.parent)  # each missing directory 0700
        create_private(Path(f"{path}.lock"))
        try:
            lock = LockFile(str(path) + ".lock")
        except LockError:
            raise target_in_use(path, self.backup) from None
        try:
            # Under the lock, no other copy into this file runs: any partial copy is a leftover.
            remove_leftover_partials(path)
            replaced = None
            if exists and file_has_data(path):
                replaced = describe_file(path)
                if not force:
                    raise TargetNotEmpty(_not_empty_message(self.location, replaced))
            partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
            try:
                # open_file_storage creates the file 0600, as for an application's database.
                prepared = Prepared(open_file_storage(partial), replaced)
                try:
                    yield prepared
                finally:
                    prepared.close()
                if prepared.commit:
                    install_file(partial, path)
            finally:
                remove_storage_files(partial)
        finally:
            if self.backup:
                # Removed while still held: a second backup that opened it meanwhile finds the file there.
                Path(f"{path}.lock").unlink(missing_ok=True)
            lock.close()


class StorageTarget(Target):
    """A storage from settings: PostgreSQL (replaced in one transaction), or a ZConfig file."""

    def __init__(self, settings: CodxJuniorGlobalSettings) -> None:
        self.spec = storage_spec(settings)
        self.location = settings.location

    def identity(self) -> tuple[str, ...] | None:
        return pg_identity(self.spec.dsn) if self.spec.dsn else None

    @contextlib.contextmanager
    def prepared(self, force: bool) -> Iterator[Prepared]:
        # Held for the whole copy: an application starting on the target meanwhile would
        # otherwise find it empty and install a fresh database into it, and a second copy
        # would share the staging schema.
        with startup_lock(self.spec.dsn):
            if self.spec.dsn is not None:
                from db.pg.replace import refuse_sessions_in_use, refuse_shared_schema

                refuse_shared_schema(self.spec.dsn, self.location)  # before anything is created
                # An application connected to the target would keep its cache of the old data
                # and lose the writes it makes after the replacement.
                refuse_sessions_in_use(self.spec.dsn, self.location)
            storage = self.spec.open()  # creates RelStorage's tables in a new database
            try:
                replaced = None
                if has_data(storage):
                    replaced = describe_storage(self.spec.open)
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
            # Lazy: only a PostgreSQL target loads psycopg2.
            from db.pg.replace import drop_leftover_staging, replace_from_staging, staging_storage

            drop_leftover_staging(dsn)
            # The copy goes to a staging schema; the live tables change only in the final,
            # single transaction, once the copy has verified.
            with staging_storage(dsn) as staging:
                prepared = Prepared(staging, replaced)
                try:
                    yield prepared
                finally:
                    prepared.close()
                if prepared.commit:
                    replace_from_staging(dsn, self.location)

    def _in_place(self, storage: IStorage, replaced: dict[str, Any] | None) -> Iterator[Prepared]:
        """A storage that is not PostgreSQL (a ZConfig file): only an empty one can be a target."""
        prepared = Prepared(storage, replaced)
        try:
            if not callable(getattr(storage, "copyTransactionsFrom", None)):
                # ZODB's MappingStorage (and any storage without it): the copy cannot start, and
                # an in-memory storage would vanish with this process anyway.
                raise TransferError(
                    f"{self.location} describes a {type(storage).__name__}, which codx-db cannot copy into (it has "
                    "no copyTransactionsFrom; an in-memory storage ends with the process): copy to a file with "
                    "--to-file or to PostgreSQL with --to-dsn; nothing was written"
                )
            if replaced is not None:
                raise TransferError(
                    f"{self.location} holds data and cannot be replaced safely (only a FileStorage file "
                    "or PostgreSQL can): empty it, or copy to a new file with --to-file"
                )
            yield prepared
        finally:
            prepared.close()


def settings_target(settings: CodxJuniorGlobalSettings) -> Target:
    if settings.kind == "memory":
        raise TransferError("a memory database cannot be a target: it disappears with its process")
    if settings.kind == "file":
        return FileTarget(settings.db_file_path)
    from db.pg.config import config_file_storage  # lazy: loads RelStorage, as a config file does anyway

    if settings.kind == "config" and (section := config_file_storage(settings)) is not None:
        # A config's <filestorage> is a file like any other: written under a temporary name
        # and renamed into place once verified, so a failed or killed copy leaves no part of it.
        if section.read_only:
            raise TransferError(f"{settings.location} describes a read-only <filestorage>: it cannot be a target")
        return FileTarget(section.path)
    return StorageTarget(settings)


def _not_empty_message(location: str, found: dict[str, Any]) -> str:
    return (
        f"{location} already holds a database (generation {found.get('generation')}, "
        f"{plural(found.get('users'), 'user')}): pass --force to replace it (everything in it is deleted)"
    )


# -- helpers --------------------------------------------------------------------------------------


def has_data(storage: IStorage) -> bool:
    """True when the storage holds a root object (every ZODB database has one)."""
    try:
        storage.load(z64)
    except POSKeyError:
        return False
    return True


def settings_file(settings: CodxJuniorGlobalSettings) -> Path | None:
    """The FileStorage file ``settings`` describe (a config's ``<filestorage>`` too), resolved; else None."""
    if settings.kind == "file":
        return resolved(settings.db_file_path)
    if settings.kind == "config":
        from db.pg.config import config_file_storage  # lazy: loads RelStorage, as a config file does anyway

        section = config_file_storage(settings)
        return resolved(section.path) if section is not None else None
    return None


def _settings_identity(settings: CodxJuniorGlobalSettings) -> tuple[str, ...] | None:
    file = settings_file(settings)
    if file is not None:
        return ("file", str(file))
    if settings.kind == "memory":
        return None
    spec = storage_spec(settings)
    return pg_identity(spec.dsn) if spec.dsn else None


def pg_identity(dsn: str | None) -> tuple[str, ...] | None:
    """What identifies a PostgreSQL database whatever the DSN's spelling (None without a DSN)."""
    if dsn is None:
        return None
    from db.pg.admin import pg_identity as identity  # lazy: psycopg2 only for PostgreSQL

    return identity(dsn)
