"""The file backend opened read-only (``db_read_only``): a snapshot of a file, changing nothing.

A FileStorage file serves one process at a time through its lock file. Opened read-only it takes
no lock, creates no side file, never cuts a damaged tail nor rewrites its index: what it reads
is the file as it was at the open (a transaction being written then is not read), while the
process holding the file goes on writing. The command line uses it for the commands that only
read when the file is in use (db/cli/app.py), so `codx-db user list` works beside codx-api.

A pack by the holding process during a read replaces the file under the reader: the read may
then fail; running it again reads the packed file.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ZODB.FileStorage import FileStorage
from ZODB.FileStorage.FileStorage import packed_version as FILESTORAGE_MAGIC
from ZODB.interfaces import IStorage
from ZODB.POSException import ReadOnlyError

from db.errors import ConfigurationError, ReadOnlyDatabase

READ_ONLY_HINT = "opened read-only (CODX_JUNIOR_DB_READ_ONLY, or a command that only reads a file in use)"


def open_read_only_file(path: Path, blob_dir: Path | None = None) -> IStorage:
    """Open an existing FileStorage file read-only; ConfigurationError when there is none."""
    from db.file_storage import file_storage_exists  # NotADatabaseFile for a file of another kind

    if not file_storage_exists(path) or path.stat().st_size <= len(FILESTORAGE_MAGIC):
        raise ConfigurationError(f"db_file_path: no database at {path} to open read-only (nothing was created)")
    kwargs: dict[str, Any] = {"read_only": True}
    if blob_dir is not None and blob_dir.is_dir():
        kwargs["blob_dir"] = str(blob_dir)
    # The holder saves the index only now and then: read-only, a stale one is the rule, not news
    # (FileStorage warns "Ignoring index" and reads the file instead, as it must).
    stale_index = _DropMessage("Ignoring index for %s")
    logger = logging.getLogger("ZODB.FileStorage")
    logger.addFilter(stale_index)
    try:
        return FileStorage(str(path), **kwargs)
    except OSError as exc:
        raise ConfigurationError(f"db_file_path: cannot read {path}: {exc.strerror}") from None
    finally:
        logger.removeFilter(stale_index)


class _DropMessage(logging.Filter):
    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != self.message


@contextlib.contextmanager
def read_only_errors(started: float | None = None) -> Iterator[None]:
    """A unit of work's error mapping: ZODB's ReadOnlyError (raised at commit) -> ReadOnlyDatabase."""
    try:
        yield
    except ReadOnlyError:
        raise ReadOnlyDatabase(f"the database is {READ_ONLY_HINT}: the change was not saved") from None
