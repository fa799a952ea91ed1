"""The storage factory: the one place that turns settings into a ZODB storage.

memory -> MappingStorage, file -> FileStorage, postgres -> RelStorage on PostgreSQL,
``db_config_file`` -> whatever the ZConfig file describes (ZODB's own loader).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ZConfig
import ZODB.config
from ZODB.FileStorage import FileStorage
from ZODB.interfaces import IStorage

from db import forks, pg_roundtrips
from db.errors import ConfigurationError, DatabaseTimeout, DatabaseUnavailable, StorageInUse
from db.settings import CodxJuniorGlobalSettings, keyword_dsn

log = logging.getLogger(__name__)

# One PostgreSQL advisory lock key for "someone is opening (creating, evolving) this database".
# Derived from a fixed name so every codx-db version agrees on it.
STARTUP_LOCK_KEY = int.from_bytes(hashlib.sha256(b"codx-db startup").digest()[:8], "big", signed=True)


class StorageSpec:
    """A storage not yet opened: how to open it, and (for PostgreSQL) the DSN to lock on."""

    def __init__(self, open_storage: Callable[[], IStorage], dsn: str | None = None) -> None:
        self.open = open_storage
        self.dsn = dsn


def storage_spec(settings: CodxJuniorGlobalSettings) -> StorageSpec:
    """Describe the storage the settings ask for, failing fast on a bad config file."""
    if settings.db_config_file is not None:
        return _config_file_spec(settings.db_config_file, settings.db_pg_fast_reads)
    if settings.db_backend == "memory":
        return StorageSpec(_open_memory)
    if settings.db_backend == "file":
        return StorageSpec(lambda: open_file_storage(settings.db_file_path, settings.db_blob_dir))
    if settings.db_backend == "postgres":
        assert settings.db_dsn is not None  # guaranteed by the settings validator
        dsn = keyword_dsn(settings.db_dsn.get_secret_value())
        return StorageSpec(lambda: _open_relstorage(settings, dsn), dsn=dsn)
    raise ConfigurationError(f"db_backend: unknown backend {settings.db_backend!r}")


def open_storage(settings: CodxJuniorGlobalSettings) -> IStorage:
    """Open the storage the settings ask for (PostgreSQL: under the startup lock)."""
    spec = storage_spec(settings)
    with startup_lock(spec.dsn):
        return spec.open()


def _open_memory() -> IStorage:
    from ZODB.MappingStorage import MappingStorage

    return MappingStorage("codx-db memory")


def open_file_storage(path: Path, blob_dir: Path | None = None) -> IStorage:
    """Open (creating if needed, 0600 in a 0700 directory) a FileStorage file."""
    from zc.lockfile import LockError

    make_private_dir(path.parent)
    if not path.exists():
        # Create the file ourselves so its mode is 0600 whatever the umask.
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except OSError as exc:
            raise ConfigurationError(f"db_file_path: cannot create {path}: {exc.strerror}") from None
    kwargs: dict[str, Any] = {}
    if blob_dir is not None:
        make_private_dir(blob_dir)
        kwargs["blob_dir"] = str(blob_dir)
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        log.warning("%s was readable by other users: making it private (0600)", path)
        path.chmod(0o600)
    try:
        storage = PrivateFileStorage(str(path), **kwargs)
    except LockError:
        raise StorageInUse(_in_use_message(path)) from None
    storage.make_side_files_private()
    return storage


class PrivateFileStorage(FileStorage):
    """A FileStorage whose side files are private too.

    FileStorage creates ``.tmp`` (the transaction being committed: password hashes), ``.lock``
    and ``.index`` with the umask's mode; in a shared directory other users could read them.
    """

    def make_side_files_private(self) -> None:
        """chmod 0600 the side files that exist now."""
        for suffix in (".tmp", ".lock", ".index"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(self._file_name + suffix, 0o600)

    def _save_index(self) -> None:
        # The index is rewritten (a new file) at close and after a pack.
        super()._save_index()
        self.make_side_files_private()


def _in_use_message(path: Path) -> str:
    try:
        pid = Path(str(path) + ".lock").read_text().strip() or "unknown"
    except OSError:
        pid = "unknown"
    return (
        f"{path} is in use by another process (pid {pid}): a FileStorage file serves one "
        "process at a time. Stop that process, or use the postgres backend "
        "(CODX_JUNIOR_DB_BACKEND=postgres) for several processes."
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


def relstorage_options(settings: CodxJuniorGlobalSettings) -> dict[str, Any]:
    """RelStorage options from settings (kept separate so tools can reuse them)."""
    options: dict[str, Any] = {
        "keep_history": settings.db_keep_history,
        "cache_local_mb": settings.db_cache_local_mb,
        "commit_lock_timeout": settings.db_commit_lock_timeout,
        "driver": "psycopg2",
        "create_schema": True,
        "name": "codx-db postgres",
    }
    if settings.db_cache_dir is not None:
        make_private_dir(settings.db_cache_dir)
        options["cache_local_dir"] = str(settings.db_cache_dir)
    if settings.db_blob_dir is not None:
        make_private_dir(settings.db_blob_dir)
        options["blob_dir"] = str(settings.db_blob_dir)
        options["shared_blob_dir"] = False
    return options


def _open_relstorage(settings: CodxJuniorGlobalSettings, dsn: str) -> IStorage:
    from relstorage.adapters.postgresql import PostgreSQLAdapter
    from relstorage.options import Options
    from relstorage.storage import RelStorage

    options = Options(**relstorage_options(settings))
    with _unavailable_on_connect_error(dsn):
        _check_history_mode(dsn, settings.db_keep_history)
        adapter = PostgreSQLAdapter(dsn=dsn, options=options)
        # Both before RelStorage opens its first connection.
        if settings.db_pg_fast_reads:
            pg_roundtrips.install(adapter)
        forks.track_connections(adapter)
        return RelStorage(adapter, options=options)


def _check_history_mode(dsn: str, keep_history: bool) -> None:
    """Refuse, naming the setting, a keep-history value that contradicts an existing schema.

    RelStorage fixes the mode when it creates its tables; opening with the other mode fails
    deep inside RelStorage (a foreign-key error or a schema mismatch) without saying why.
    """
    import psycopg2

    with (
        contextlib.closing(psycopg2.connect(dsn, application_name="codx-db schema check")) as conn,
        conn.cursor() as cur,
    ):
        cur.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = current_schema() AND table_name IN ('object_state', 'current_object')"
        )
        tables = {row[0] for row in cur.fetchall()}
    if "object_state" not in tables:
        return  # a new database: RelStorage creates it in the mode asked for
    existing = "current_object" in tables  # only history-preserving schemas have it
    if existing != keep_history:
        mode = "keeps history" if existing else "is history-free"
        raise ConfigurationError(
            f"db_keep_history: the PostgreSQL database {mode}, but CODX_JUNIOR_DB_KEEP_HISTORY="
            f"{str(keep_history).lower()}: set it to {str(existing).lower()}, or copy the data into "
            "a new database of the other kind with `codx-db copy`"
        )


def _config_file_spec(path: Path, fast_reads: bool = True) -> StorageSpec:
    try:
        schema = ZODB.config.getStorageSchema()
        with open(path, encoding="utf-8") as file:
            config, _ = ZConfig.loadConfigFile(schema, file, url=path.resolve().as_uri())
    except (ZConfig.ConfigurationError, OSError) as exc:
        raise ConfigurationError(f"db_config_file: {path}: {_scrub(str(exc), None)}") from None
    factory = config.storage
    dsn = _relstorage_dsn(factory)

    def open_from_config() -> IStorage:
        with _unavailable_on_connect_error(dsn):
            storage = factory.open()
        adapter = getattr(storage, "_adapter", None)
        if adapter is not None and type(adapter).__name__ == "PostgreSQLAdapter":
            # The connections opened from here on (a pool's; none is open yet) take the fast
            # path and are known to a forked child.
            if fast_reads:
                pg_roundtrips.install(adapter)
            forks.track_connections(adapter)
        return storage

    return StorageSpec(open_from_config, dsn=dsn)


def _relstorage_dsn(factory: Any) -> str | None:
    """The PostgreSQL DSN inside a ``<relstorage>`` section, if that is what the file holds."""
    adapter = getattr(getattr(factory, "config", None), "adapter", None)
    adapter_config = getattr(adapter, "config", None)
    dsn = getattr(adapter_config, "dsn", None)
    if dsn is None or not type(adapter).__name__.startswith("PostgreSQL"):
        return None
    try:
        adapter_config.dsn = keyword_dsn(str(dsn))
    except Exception:  # noqa: BLE001 - the message would quote the DSN
        raise ConfigurationError("db_config_file: the <postgresql> dsn does not parse") from None
    return str(adapter_config.dsn)


@contextlib.contextmanager
def startup_lock(dsn: str | None) -> Iterator[None]:
    """Serialise opening an (empty or old) PostgreSQL database between processes.

    RelStorage creates its schema and codx-db runs its generations on open; two processes
    doing that at the same moment on an empty database race. A session-level advisory
    lock on the target database makes them take turns. No-op for other storages.
    """
    if dsn is None:
        yield
        return
    import psycopg2
    import psycopg2.errors

    with _unavailable_on_connect_error(dsn):
        conn = psycopg2.connect(dsn, application_name="codx-db startup lock")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            try:
                cur.execute("SELECT pg_advisory_lock(%s)", (STARTUP_LOCK_KEY,))
            except psycopg2.errors.QueryCanceled as exc:
                raise DatabaseTimeout(
                    "PostgreSQL cancelled the wait for codx-db's startup lock, which another process holds "
                    f"while it opens or migrates this database: statement_timeout ({_first_line(exc)}). Wait for "
                    "that process, or raise statement_timeout for this database or role"
                ) from None
        yield
    finally:
        # Closing the session releases the lock even if unlock is never reached.
        conn.close()


@contextlib.contextmanager
def _unavailable_on_connect_error(dsn: str | None) -> Iterator[None]:
    import psycopg2
    import psycopg2.errors

    try:
        yield
    except psycopg2.errors.QueryCanceled as exc:  # connected, then a statement ran out of time
        raise DatabaseTimeout(
            f"PostgreSQL cancelled a statement while opening the database: statement_timeout ({_first_line(exc)}). "
            "Raise statement_timeout for this database or role"
        ) from None
    except psycopg2.OperationalError as exc:
        raise DatabaseUnavailable(
            "cannot connect to PostgreSQL: " + _scrub(str(exc).strip().splitlines()[0], dsn)
        ) from None


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _scrub(message: str, dsn: str | None) -> str:
    """Remove a DSN password from a message that might quote it."""
    if not dsn:
        return message
    from psycopg2.extensions import parse_dsn

    try:
        password = parse_dsn(dsn).get("password")
    except Exception:  # noqa: BLE001 - if it does not parse, nothing of it can be trusted
        return "connection failed"
    if password:
        message = message.replace(password, "***")
    return message
