"""FileStorage, the file backend: one private file (0600, in a 0700 directory) per database.

Opening refuses a file that is not a FileStorage database without touching it, cuts a damaged
tail into a private ``.trN`` file, keeps every side file private, and turns a full disk into
``StorageFull``. A FileStorage file serves one process: a second one gets ``StorageInUse``.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import itertools
import logging
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ZODB.FileStorage import FileStorage
from ZODB.FileStorage.FileStorage import TempFormatter
from ZODB.FileStorage.FileStorage import packed_version as FILESTORAGE_MAGIC
from ZODB.interfaces import IStorage

from db.errors import ConfigurationError, FileNotWritable, NotADatabaseFile, StorageFull, StorageInUse
from db.settings import CodxJuniorGlobalSettings
from db.storage import StorageSpec

log = logging.getLogger(__name__)


def file_spec(settings: CodxJuniorGlobalSettings) -> StorageSpec:
    """The storage ``db_backend=file`` asks for (not opened yet); read-only: db/file_read_only.py."""
    if settings.db_read_only:
        from db.file_read_only import open_read_only_file, read_only_errors

        return StorageSpec(
            lambda: open_read_only_file(settings.db_file_path, settings.db_blob_dir), errors=read_only_errors
        )
    return StorageSpec(lambda: open_file_storage(settings.db_file_path, settings.db_blob_dir))


def file_storage_exists(path: Path) -> bool:
    """True if ``path`` is a FileStorage file, False if it does not exist; ``NotADatabaseFile`` otherwise.

    Reads at most four bytes and changes nothing: it runs before anything is created, locked
    or chmodded beside ``path``. An empty (0-byte) file counts as a new database: FileStorage
    treats it so, and it is what a crash leaves between creating a database file and writing
    its first bytes.
    """
    try:
        status = path.stat()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror}") from None
    if stat.S_ISDIR(status.st_mode):
        raise NotADatabaseFile(path, "is a directory, not a FileStorage database file")
    if not stat.S_ISREG(status.st_mode):
        raise NotADatabaseFile(path, "is not a regular file, so not a FileStorage database file")
    if status.st_size == 0:
        return True
    try:
        with open(path, "rb") as file:
            head = file.read(len(FILESTORAGE_MAGIC))
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror}") from None
    if head == PYTHON2_FILESTORAGE_MAGIC and head != FILESTORAGE_MAGIC:
        raise NotADatabaseFile(
            path,
            "is a FileStorage file in the Python 2 format (FS21), which this ZODB cannot open: "
            "convert a copy with `zodbupdate --convert-py3`",
        )
    if head != FILESTORAGE_MAGIC:
        magic = FILESTORAGE_MAGIC.decode()
        raise NotADatabaseFile(path, f"is not a FileStorage database file (it does not begin with {magic})")
    return True


def open_file_storage(path: Path, blob_dir: Path | None = None) -> IStorage:
    """Open (creating if needed, 0600 in a 0700 directory) a FileStorage file.

    Every file written beside it (``.lock``, ``.tmp``, ``.index``, ``.pack``, ``.trN``) is
    created 0600 before its first byte; a ``.pack`` left by a killed pack is removed.
    """
    from zc.lockfile import LockError

    exists = file_storage_exists(path)  # before anything is created, locked or chmodded
    make_private_dir(path.parent)
    if not exists:
        # Create the file ourselves so its mode is 0600 whatever the umask.
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except OSError as exc:
            raise ConfigurationError(f"db_file_path: cannot create {path}: {exc.strerror}") from None
    kwargs: dict[str, Any] = {}
    if blob_dir is not None:
        make_private_dir(blob_dir)
        kwargs["blob_dir"] = str(blob_dir)
    # FileStorage opens these with "w+b" / os.open without a mode of its own: a file that
    # already exists keeps its (private) mode.
    sides = [Path(f"{path}{suffix}") for suffix in (".lock", ".tmp")]
    made = [side for side in sides if not side.exists()]
    try:
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            log.warning("%s was readable by other users: making it private (0600)", path)
            path.chmod(0o600)
        for side in sides:
            create_private(side)
        _cut_incomplete_tail(path)
        storage = PrivateFileStorage(str(path), **kwargs)
    except LockError:
        raise _in_use(path) from None
    except OSError as exc:
        _remove_ours(made)  # a failed open leaves nothing of its own beside the file
        if exc.errno in DISK_FULL_ERRNOS:
            raise StorageFull(path, free_bytes(path)) from None
        if isinstance(exc, PermissionError):
            # FileStorage opens its file read-write unless told it only reads (db/file_read_only.py).
            summary = f"{path} cannot be opened for writing ({exc.strerror})"
            raise FileNotWritable(
                f"db_file_path: {summary}: codx-db needs write access to the file and its directory to write; "
                "commands that only read (info, check, user list) read it read-only, as does "
                "CODX_JUNIOR_DB_READ_ONLY=true",
                summary,
            ) from None
        raise
    storage.make_side_files_private()
    storage.remove_leftover_pack()
    return storage


def _remove_ours(paths: list[Path]) -> None:
    """Remove side files this open made: empty, or a lock file naming this process (zc.lockfile's pid)."""
    for side in paths:
        with contextlib.suppress(OSError):
            if side.stat().st_size == 0 or str(os.getpid()) in side.read_text("ascii", "replace").split():
                side.unlink()


# What FileStorage files written under Python 2 begin with (ZODB 6 on Python 3 writes b"FS30").
PYTHON2_FILESTORAGE_MAGIC = b"FS21"

# errno values that mean "the disk (or the user's quota) is full".
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def free_bytes(path: Path) -> int | None:
    """Bytes free for this user on the file system holding ``path`` (None if unknown)."""
    try:
        status = os.statvfs(path.parent)
    except OSError:
        return None
    return status.f_bavail * status.f_frsize


def create_private(path: Path) -> None:
    """Create ``path`` (0600) if missing, or make an existing one private; never truncate it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ConfigurationError(f"cannot create {path}: {exc.strerror}") from None
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _cut_incomplete_tail(path: Path) -> None:
    """Cut a damaged last transaction ourselves, keeping the cut bytes in a private ``.trN`` file.

    FileStorage would do it on open, but it writes the cut bytes (which may hold a password
    hash) to ``.trN`` with the umask's mode. Done under the file's lock: the tail of a file
    another process holds may be a transaction being committed, not damage.
    """
    from zc.lockfile import LockFile

    if _tail_is_complete(path):
        return
    lock = LockFile(f"{path}.lock")  # LockError when another process holds the file
    try:
        reader = FileStorage(str(path), read_only=True)
        try:
            end = reader.getSize()  # just past the last complete transaction
        finally:
            reader.close()
        size = path.stat().st_size
        if end >= size:
            return
        for number in itertools.count():
            saved = Path(f"{path}.tr{number}")
            try:
                fd = os.open(saved, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            break
        with open(fd, "wb") as out, open(path, "r+b") as data:
            data.seek(end)
            shutil.copyfileobj(data, out)
            out.flush()
            os.fsync(out.fileno())
            data.truncate(end)
            os.fsync(data.fileno())
        log.warning(
            "%s ended with an incomplete transaction (a crash or a full disk): cut at byte %d of %d, "
            "the cut bytes are kept in %s (private; delete it once you no longer need it)",
            path,
            end,
            size,
            saved,
        )
    finally:
        lock.close()


def _tail_is_complete(path: Path) -> bool:
    """A cheap check of a FileStorage file's end: its last transaction is whole and committed.

    Every transaction record ends with its own length; the header that length points back to
    must repeat it, with a committed status (a crash mid-commit leaves status "c").
    """
    size = path.stat().st_size
    if size <= len(FILESTORAGE_MAGIC):
        return True
    with open(path, "rb") as file:
        file.seek(max(size - 8, 0))
        length = int.from_bytes(file.read(8), "big")
        start = size - 8 - length
        if length < TRANSACTION_HEADER or start < len(FILESTORAGE_MAGIC):
            return False
        file.seek(start)
        header = file.read(TRANSACTION_HEADER)
    return int.from_bytes(header[8:16], "big") == length and header[16:17] in (b" ", b"p", b"u")


def _close_discarding(file: Any) -> None:
    """Close a buffered file whose buffer cannot be written (close flushes, fails, closes anyway)."""
    with contextlib.suppress(OSError):
        file.close()


# A FileStorage transaction header: tid (8), length (8), status (1), three lengths (2, 2, 2).
TRANSACTION_HEADER = 23


class PrivateFileStorage(FileStorage):
    """A FileStorage whose side files are private too, and whose full disk is a ``StorageFull``.

    FileStorage creates ``.tmp`` (the transaction being committed: password hashes), ``.lock``,
    ``.index`` and ``.pack`` (a whole copy of the data) with the umask's mode; in a shared
    directory other users could read them. Each is created 0600 before FileStorage opens it
    ("wb" keeps an existing file's mode), which leaves the process umask alone.
    """

    # FileStorage's own buffered files, replaced after a full disk (annotations only: FileStorage sets them).
    _file: Any
    _tfile: Any

    def make_side_files_private(self) -> None:
        """chmod 0600 the side files that exist now (``.trN`` too, if FileStorage cut a tail itself)."""
        base = Path(self._file_name)
        names = [f"{base}{suffix}" for suffix in (".tmp", ".lock", ".index")]
        names += [str(p) for p in base.parent.glob(f"{glob.escape(base.name)}.tr*") if p.suffix[3:].isdigit()]
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.chmod(name, 0o600)

    def remove_leftover_pack(self) -> None:
        """Remove a ``.pack`` file a killed pack left (it is a copy of the data)."""
        leftover = Path(f"{self._file_name}.pack")
        if leftover.exists():
            leftover.unlink()
            log.warning("removed %s, left behind by a pack that did not finish", leftover)

    def pack(self, t: float, referencesf: Any, gc: bool | None = None) -> Any:
        pack_file = Path(f"{self._file_name}.pack")
        create_private(pack_file)  # the packer opens it "w+b": it keeps this mode
        try:
            return self._full_disk_is_storage_full(super().pack, t, referencesf, gc)
        finally:
            # A pack that found nothing to do never used it; a finished one renamed it.
            pack_file.unlink(missing_ok=True)

    def _save_index(self) -> None:
        # The index is rewritten (a new file) at open, close and after a pack.
        if not self._is_read_only:
            create_private(Path(f"{self.__name__}.index.index_tmp"))
        try:
            super()._save_index()
        except OSError as exc:
            if exc.errno not in DISK_FULL_ERRNOS:
                raise
            # The index only speeds up opening: FileStorage rebuilds a missing one.
            Path(f"{self.__name__}.index.index_tmp").unlink(missing_ok=True)
            log.info("%s: no space left to save the index (it is rebuilt on the next open)", self.__name__)
        self.make_side_files_private()

    # -- a full disk ---------------------------------------------------------------------------
    # FileStorage writes through buffered files. When the disk fills, the unwritten bytes stay
    # in the buffer, and every later flush (tpc_abort's truncate, close) fails again: two more
    # tracebacks and a storage that cannot close. These overrides turn the first failure into
    # StorageFull and start the buffers afresh, so the transaction aborts cleanly and the
    # storage keeps working once space is freed.

    def store(self, oid: bytes, oldserial: bytes, data: bytes, version: str, transaction: Any) -> Any:
        return self._full_disk_is_storage_full(super().store, oid, oldserial, data, version, transaction)

    def restore(self, oid: bytes, serial: bytes, data: bytes, version: str, prev_txn: Any, transaction: Any) -> Any:
        return self._full_disk_is_storage_full(super().restore, oid, serial, data, version, prev_txn, transaction)

    def tpc_vote(self, transaction: Any) -> Any:
        try:
            return super().tpc_vote(transaction)
        except OSError as exc:
            if exc.errno not in DISK_FULL_ERRNOS:
                raise
            with self._lock:
                self._reopen_data_file()
            raise StorageFull(Path(self._file_name), free_bytes(Path(self._file_name))) from None

    def _abort(self) -> None:
        try:
            super()._abort()
        except OSError as exc:
            if exc.errno not in DISK_FULL_ERRNOS:
                raise
            self._reopen_data_file()
            self._nextpos = 0
            self._blob_tpc_abort()

    def _clear_temp(self) -> None:
        try:
            super()._clear_temp()
        except OSError as exc:
            if exc.errno not in DISK_FULL_ERRNOS:
                raise
            self._tindex.clear()
            stuck: Any = self._tfile
            self._tfile = open(f"{self._file_name}.tmp", "w+b")  # noqa: SIM115 - kept open
            self._tfmt = TempFormatter(self._tfile)
            _close_discarding(stuck)

    def _reopen_data_file(self) -> None:
        """Drop the bytes a full disk left in the data file's buffer; cut what reached the disk."""
        stuck: Any = self._file
        self._file = open(self._file_name, "r+b")  # noqa: SIM115 - kept open
        _close_discarding(stuck)
        self._file.truncate(self._pos)  # no half transaction at the end

    def _full_disk_is_storage_full(self, call: Callable[..., Any], *args: Any) -> Any:
        try:
            return call(*args)
        except OSError as exc:
            if exc.errno not in DISK_FULL_ERRNOS:
                raise
            raise StorageFull(Path(self._file_name), free_bytes(Path(self._file_name))) from None


def _in_use(path: Path) -> StorageInUse:
    try:
        pid = Path(str(path) + ".lock").read_text().strip() or "unknown"
    except OSError:
        pid = "unknown"
    summary = f"{path} is in use by another process (pid {pid})"
    return StorageInUse(
        f"{summary}: a FileStorage file serves one process at a time. Stop that process, or use the "
        "postgres backend (CODX_JUNIOR_DB_BACKEND=postgres) for several processes.",
        summary,
    )


def make_private_dir(directory: Path) -> None:
    if directory.is_dir():
        return
    # Every directory we create is private (0700), not only the last one.
    missing = [directory, *(p for p in directory.parents if not p.exists())]
    try:
        for path in reversed(missing):
            path.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(f"cannot create directory {directory}: {exc.strerror}") from None
