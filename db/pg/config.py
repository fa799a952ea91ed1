"""A ZConfig storage file (``db_config_file``): ZODB's own loader, the only ZConfig import.

Such a file usually describes RelStorage on PostgreSQL (relstorage.conf), which is why it
lives here; a ``<filestorage>`` section works too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ZConfig
import ZODB.config
from ZODB.interfaces import IStorage

from db.errors import ConfigurationError
from db.file_read_only import open_read_only_file, read_only_errors
from db.file_storage import open_file_storage
from db.pg.connect import unavailable_on_connect_error, unit_errors
from db.pg.dsn import keyword_dsn
from db.pg.storage import prepare_adapter
from db.settings import CodxJuniorGlobalSettings
from db.storage import StorageSpec


@dataclass(frozen=True)
class ConfigFileStorage:
    """A config file's ``<filestorage>`` section: the parts codx-db reads from it."""

    path: Path
    blob_dir: Path | None
    read_only: bool


def config_file_storage(settings: CodxJuniorGlobalSettings) -> ConfigFileStorage | None:
    """The ``<filestorage>`` that ``db_config_file`` describes, or None for another storage."""
    return _file_storage_section(_load_factory(settings))


def _file_storage_section(factory: Any) -> ConfigFileStorage | None:
    config = getattr(factory, "config", None)
    path = getattr(config, "path", None)
    if type(factory).__name__ != "FileStorage" or not path:
        return None
    blob_dir = getattr(config, "blob_dir", None)
    read_only = bool(getattr(config, "read_only", False))
    # The file a link names, as for db_file_path: one file, one lock, whatever name reaches it
    # (two names, two locks: two processes wrote it at once), and pack renames the file, not the link.
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise ConfigurationError(f"db_config_file: {path} cannot be resolved ({exc})") from None
    return ConfigFileStorage(resolved, Path(blob_dir) if blob_dir else None, read_only)


def _load_factory(settings: CodxJuniorGlobalSettings) -> Any:
    """ZODB's storage factory for ``db_config_file``, failing fast on a file that does not parse."""
    assert settings.db_config_file is not None
    path = settings.db_config_file
    try:
        schema = ZODB.config.getStorageSchema()
        with open(path, encoding="utf-8") as file:
            config, _ = ZConfig.loadConfigFile(schema, file, url=path.resolve().as_uri())
    except (ZConfig.ConfigurationError, OSError) as exc:
        raise ConfigurationError(f"db_config_file: {path}: {exc}") from None
    return config.storage


def config_file_spec(settings: CodxJuniorGlobalSettings) -> StorageSpec:
    """The storage ``db_config_file`` describes, failing fast on a file that does not parse."""
    factory = _load_factory(settings)
    section = _file_storage_section(factory)
    if section is not None:
        return _file_storage_spec(section, settings.db_read_only)
    if settings.db_read_only:
        raise ConfigurationError(
            f"db_read_only: only a file opens read-only, and {settings.db_config_file} describes no <filestorage>"
        )
    dsn = _relstorage_dsn(factory)

    def open_from_config() -> IStorage:
        with unavailable_on_connect_error(dsn):
            storage: IStorage = factory.open()
        adapter = getattr(storage, "_adapter", None)
        if adapter is not None and type(adapter).__name__ == "PostgreSQLAdapter":
            # The connections opened from here on: a pool's; none is open yet.
            prepare_adapter(adapter, settings)
        return storage

    # A lost connection is not explained by asking the server (only the postgres backend does).
    return StorageSpec(open_from_config, dsn=dsn, errors=unit_errors(None))


def _file_storage_spec(section: ConfigFileStorage, read_only: bool) -> StorageSpec:
    """A ``<filestorage>`` opened as the file backend opens its file, not by ZODB's plain factory.

    So the file and its side files are private (0600) whatever the umask, a second process
    gets ``StorageInUse`` naming the holder, a file that is not a FileStorage is refused
    untouched, and ``read-only`` opens it without its lock. The section's other options
    (create, quota, pack-gc, pack-keep-old, packer) are not used.
    """
    if section.read_only or read_only:
        return StorageSpec(lambda: open_read_only_file(section.path, section.blob_dir), errors=read_only_errors)
    return StorageSpec(lambda: open_file_storage(section.path, section.blob_dir))


def _relstorage_dsn(factory: Any) -> str | None:
    """The PostgreSQL DSN inside a ``<relstorage>`` section, if that is what the file holds."""
    adapter = getattr(getattr(factory, "config", None), "adapter", None)
    adapter_config = getattr(adapter, "config", None)
    dsn = getattr(adapter_config, "dsn", None)
    if adapter_config is None or dsn is None or not type(adapter).__name__.startswith("PostgreSQL"):
        return None
    try:
        adapter_config.dsn = keyword_dsn(str(dsn))
    except Exception:  # noqa: BLE001 - the message would quote the DSN
        raise ConfigurationError("db_config_file: the <postgresql> dsn does not parse") from None
    return str(adapter_config.dsn)
