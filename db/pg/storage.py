"""RelStorage on PostgreSQL: the postgres backend of the storage factory."""

from __future__ import annotations

from typing import Any

from relstorage.adapters import postgresql
from relstorage.options import Options
from relstorage.storage import RelStorage
from ZODB.interfaces import IStorage

from db import forks
from db.errors import ConfigurationError
from db.file_storage import make_private_dir
from db.pg import roundtrips, store_temps
from db.pg.connect import connect, unavailable_on_connect_error, unit_errors
from db.pg.dsn import keyword_dsn
from db.settings import CodxJuniorGlobalSettings
from db.storage import StorageSpec


def postgres_spec(settings: CodxJuniorGlobalSettings) -> StorageSpec:
    """The storage ``db_backend=postgres`` asks for (not opened yet)."""
    assert settings.db_dsn is not None  # guaranteed by the settings validator
    dsn = keyword_dsn(settings.db_dsn.get_secret_value())
    return StorageSpec(lambda: open_relstorage(settings, dsn), dsn=dsn, errors=unit_errors(dsn))


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


def open_relstorage(settings: CodxJuniorGlobalSettings, dsn: str) -> IStorage:
    """Open RelStorage on ``dsn`` (creating its schema in an empty database)."""
    options = Options(**relstorage_options(settings))
    with unavailable_on_connect_error(dsn):
        check_history_mode(dsn, settings.db_keep_history)
        # Looked up at call time, as RelStorage's own ZConfig factory does (a subclass may be patched in).
        adapter = postgresql.PostgreSQLAdapter(dsn=dsn, options=options)
        prepare_adapter(adapter, settings.db_pg_fast_reads, settings.db_pg_own_temp_tables)
        return RelStorage(adapter, options=options)


def prepare_adapter(adapter: Any, fast_reads: bool, own_temp_tables: bool = True) -> None:
    """Hook a PostgreSQL adapter before it opens its first connection.

    Its connections then take the fast read path (unless ``db_pg_fast_reads`` is off), its
    store connections own their temp tables (db/pg/store_temps.py, unless
    ``db_pg_own_temp_tables`` is off; ``db_pg_fast_reads=false`` turns that off too: it asks
    for plain RelStorage) and they are known to a forked child (db/forks.py).
    """
    if fast_reads:
        roundtrips.install(adapter)
        if own_temp_tables:
            store_temps.install(adapter)
    forks.track_connections(adapter)


def check_history_mode(dsn: str, keep_history: bool) -> None:
    """Refuse, naming the setting, a keep-history value that contradicts an existing schema.

    RelStorage fixes the mode when it creates its tables; opening with the other mode fails
    deep inside RelStorage (a foreign-key error or a schema mismatch) without saying why.
    """
    conn = connect(dsn, "codx-db schema check")
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema() AND table_name IN ('object_state', 'current_object')"
            )
            tables = {row[0] for row in cur.fetchall()}
    finally:
        conn.close()
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
