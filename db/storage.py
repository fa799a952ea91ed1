"""The storage factory: the one place that turns settings into a ZODB storage.

memory -> MappingStorage, file -> FileStorage (db/file_storage.py), postgres -> RelStorage on
PostgreSQL (db/pg/storage.py), ``db_config_file`` -> whatever the ZConfig file describes
(db/pg/config.py). A backend's module is imported the first time it is used, so a file-only
process never loads psycopg2, RelStorage or ZConfig.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

from ZODB.interfaces import IStorage

from db.errors import ConfigurationError
from db.settings import CodxJuniorGlobalSettings

# A unit of work's error mapping: given when the unit started (None while opening a connection),
# a context manager turning the backend's own errors into codx-db errors.
StorageErrors = Callable[[float | None], AbstractContextManager[None]]


def no_storage_errors(started: float | None = None) -> AbstractContextManager[None]:
    """The error mapping of a backend whose errors need none (memory, file)."""
    return contextlib.nullcontext()


class StorageSpec:
    """A storage not yet opened: how to open it, the DSN to lock on (PostgreSQL), its error mapping."""

    def __init__(
        self,
        open_storage: Callable[[], IStorage],
        dsn: str | None = None,
        errors: StorageErrors = no_storage_errors,
    ) -> None:
        self.open = open_storage
        self.dsn = dsn
        self.errors = errors

    def lock(self) -> AbstractContextManager[None]:
        """Serialise opening this storage between processes (see ``startup_lock``)."""
        return startup_lock(self.dsn)


# Backend name -> "module:function(settings) -> StorageSpec", imported on first use.
BACKENDS: dict[str, str] = {
    "memory": "db.storage:memory_spec",
    "file": "db.file_storage:file_spec",
    "postgres": "db.pg.storage:postgres_spec",
}
CONFIG_FILE_BACKEND = "db.pg.config:config_file_spec"


def storage_spec(settings: CodxJuniorGlobalSettings) -> StorageSpec:
    """Describe the storage the settings ask for, failing fast on a bad config file."""
    if settings.db_config_file is not None:
        target = CONFIG_FILE_BACKEND
    elif settings.db_backend in BACKENDS:
        target = BACKENDS[settings.db_backend]
    else:
        raise ConfigurationError(f"db_backend: unknown backend {settings.db_backend!r}")
    module, function = target.split(":")
    make_spec: Callable[[CodxJuniorGlobalSettings], StorageSpec] = getattr(importlib.import_module(module), function)
    return make_spec(settings)


def open_storage(settings: CodxJuniorGlobalSettings) -> IStorage:
    """Open the storage the settings ask for (PostgreSQL: under the startup lock)."""
    spec = storage_spec(settings)
    with spec.lock():
        return spec.open()


def memory_spec(settings: CodxJuniorGlobalSettings) -> StorageSpec:
    """The in-memory storage (tests, demos): gone when the process ends."""

    def open_memory() -> IStorage:
        from ZODB.MappingStorage import MappingStorage

        return MappingStorage("codx-db memory")

    return StorageSpec(open_memory)


@contextlib.contextmanager
def startup_lock(spec_or_dsn: StorageSpec | str | None) -> Iterator[None]:
    """Serialise opening an (empty or old) PostgreSQL database between processes.

    RelStorage creates its schema and codx-db runs its generations on open; two processes
    doing that at the same moment on an empty database race. A session-level advisory
    lock on the target database makes them take turns. No-op for other storages.
    """
    dsn = spec_or_dsn.dsn if isinstance(spec_or_dsn, StorageSpec) else spec_or_dsn
    if dsn is None:
        yield
        return
    from db.pg.connect import advisory_lock  # lazy backend

    with advisory_lock(dsn):
        yield


# Names that lived here before the backends got modules of their own; importing them loads
# the backend (so a plain `import db.storage` stays light).
_MOVED = {
    "open_file_storage": "db.file_storage",
    "file_storage_exists": "db.file_storage",
    "make_private_dir": "db.file_storage",
    "create_private": "db.file_storage",
    "PrivateFileStorage": "db.file_storage",
    "relstorage_options": "db.pg.storage",
    "STARTUP_LOCK_KEY": "db.pg.connect",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
