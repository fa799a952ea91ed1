"""RelStorage on PostgreSQL: the postgres backend of the storage factory."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from psycopg2.extensions import make_dsn, parse_dsn
from relstorage.adapters import postgresql
from relstorage.options import Options
from relstorage.storage import RelStorage
from ZODB.interfaces import IStorage

from db import forks
from db.errors import ConfigurationError
from db.file_storage import make_private_dir
from db.pg import roundtrips, store_temps
from db.pg.connect import (
    POOL_SIZE,
    ConnectionBudget,
    connect,
    remember_budget,
    remember_deadlock_timeout,
    unavailable_on_connect_error,
    unit_errors,
    web_workers,
)
from db.pg.dsn import keyword_dsn, mask_dsn, with_server_settings
from db.settings import CodxJuniorGlobalSettings, env_name
from db.storage import StorageSpec

log = logging.getLogger(__name__)


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
        found = check_server(
            dsn,
            settings.db_keep_history,
            settings.db_pg_temp_tablespace,
            settings.db_pool_size,
            settings.db_pg_deadlock_timeout_ms,
        )
        session_dsn = relstorage_dsn(settings, dsn, found.deadlock_timeout_ms, found.options)
        # Looked up at call time, as RelStorage's own ZConfig factory does (a subclass may be patched in).
        adapter = postgresql.PostgreSQLAdapter(dsn=session_dsn, options=options)
        prepare_adapter(adapter, settings)
        return RelStorage(adapter, options=options)


def prepare_adapter(adapter: Any, settings: CodxJuniorGlobalSettings) -> None:
    """Hook a PostgreSQL adapter before it opens its first connection.

    Its connections then take the fast read path (unless ``db_pg_fast_reads`` is off), its
    store connections own their temp tables (db/pg/store_temps.py, unless
    ``db_pg_own_temp_tables`` is off; ``db_pg_fast_reads=false`` turns that off too: it asks
    for plain RelStorage) and join them to object_state by index (``db_pg_store_index_joins``),
    and they are known to a forked child (db/forks.py).
    """
    if settings.db_pg_fast_reads:
        roundtrips.install(adapter)
        if settings.db_pg_own_temp_tables:
            store_temps.install(adapter, index_joins=settings.db_pg_store_index_joins)
    forks.track_connections(adapter)


def relstorage_dsn(
    settings: CodxJuniorGlobalSettings,
    dsn: str,
    deadlock_timeout_ms: int | None = None,
    resolved_options: str | None = None,
) -> str:
    """The DSN RelStorage's own sessions use: ``dsn`` plus the server settings codx-db asks for.

    They go in libpq's startup options, so they cost no statement and are in force from the
    session's start: ``db_pg_temp_tablespace`` as ``temp_tablespaces`` (before RelStorage creates
    its temp tables) and ``deadlock_timeout_ms`` (what ``check_server`` found this role may set)
    as ``deadlock_timeout``. A superuser-only setting the role may not set would make the server
    refuse the connection: hence the check first.

    ``resolved_options``: the options libpq really sent for ``dsn`` (``check_server`` reads them),
    which may come from ``PGOPTIONS`` or a service file: libpq reads those only when the DSN has
    no ``options`` of its own, so they are carried over before ours are added.
    """
    server: dict[str, str] = {}
    if settings.db_pg_temp_tablespace is not None:
        server["temp_tablespaces"] = settings.db_pg_temp_tablespace
    if deadlock_timeout_ms is not None:
        server["deadlock_timeout"] = f"{deadlock_timeout_ms}ms"
    if not server:
        return dsn
    if resolved_options and not parse_dsn(dsn).get("options"):
        dsn = make_dsn(dsn, options=resolved_options)
    return with_server_settings(dsn, **server)


# One statement, one round trip (a second only when a non-superuser on PostgreSQL 15+ would get a
# shorter deadlock_timeout: may it set it?): what the schema holds, what the temp tablespace allows,
# the connection budget and deadlock_timeout. The database's own default tablespace needs no CREATE privilege for temp
# tables (PostgreSQL skips the check for it, see PrepareTempTablespaces), so it counts as usable.
# reserved_connections exists from PostgreSQL 16 on (missing_ok: NULL before).
_SERVER_CHECK = """
SELECT ARRAY(
           SELECT table_name::text FROM information_schema.tables
           WHERE table_schema = current_schema() AND table_name IN ('object_state', 'current_object')),
       (SELECT has_tablespace_privilege(t.oid, 'CREATE')
               OR t.oid = (SELECT dattablespace FROM pg_database WHERE datname = current_database())
          FROM pg_tablespace t WHERE t.spcname = %s),
       current_user::text,
       current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int
           + COALESCE(current_setting('reserved_connections', true), '0')::int,
       (SELECT rolconnlimit FROM pg_roles WHERE rolname = current_user),
       (SELECT datconnlimit FROM pg_database WHERE datname = current_database()),
       (SELECT setting::int FROM pg_settings WHERE name = 'deadlock_timeout'),
       (SELECT rolsuper FROM pg_roles WHERE rolname = session_user),
       current_setting('server_version_num')::int
"""
# PostgreSQL 15 lets a superuser grant the right to set a superuser-only parameter. Startup
# options are checked against the login role (session_user), not a role SET ROLE switched to.
_MAY_SET_DEADLOCK_TIMEOUT = "SELECT has_parameter_privilege(session_user, 'deadlock_timeout', 'SET')"
# Budgets already warned about in this process: one warning, not one per reopen.
_warned: set[tuple[str, ConnectionBudget, int | None]] = set()
_told_deadlock: set[tuple[str, str, int]] = set()
_warned_lock = threading.Lock()


@dataclass(frozen=True)
class ServerCheck:
    """What ``check_server`` found that the sessions RelStorage opens should carry."""

    deadlock_timeout_ms: int | None  # set it on RelStorage's sessions (None: keep the server's)
    options: str | None = None  # libpq's options as sent (from the DSN, PGOPTIONS or a service file)


def check_server(
    dsn: str,
    keep_history: bool,
    temp_tablespace: str | None,
    pool_size: int | None = None,
    deadlock_timeout_ms: int = 0,
) -> ServerCheck:
    """Refuse, naming the setting, what the server would get wrong or silently ignore.

    - ``db_keep_history`` contradicting an existing schema: RelStorage fixes the mode when it
      creates its tables; opening with the other mode fails deep inside RelStorage (a
      foreign-key error or a schema mismatch) without saying why.
    - ``db_pg_temp_tablespace`` naming a tablespace that does not exist or that this role may
      not create in: PostgreSQL ignores such a ``temp_tablespaces`` entry without a word and
      puts the temp tables in the default tablespace, so the tuning would silently be off.

    Runs before RelStorage opens anything: a refusal writes nothing.

    With ``pool_size``, also reads the connection budget (same statement) and warns once when
    this process's pool (times ``WEB_CONCURRENCY`` workers, when set) may open more sessions
    than the server allows this role: not an error, RelStorage opens them lazily, under load.

    With ``deadlock_timeout_ms`` (``db_pg_deadlock_timeout_ms``) below the server's value, finds
    whether this role may set it (a second statement only for a non-superuser on PostgreSQL 15+).
    """
    conn = connect(dsn, "codx-db schema check")
    try:
        with conn.cursor() as cur:
            cur.execute(_SERVER_CHECK, (temp_tablespace,))
            row = cur.fetchone()
            assert row is not None  # a SELECT without FROM returns one row
            server_timeout, superuser, version = row[7], bool(row[8]), row[9]
            options = conn.info.dsn_parameters.get("options") or None
            # A deadlock_timeout the operator put in the options is theirs: leave it.
            wanted = 0 < deadlock_timeout_ms < (server_timeout or 0) and "deadlock_timeout" not in (options or "")
            may_set = superuser
            if wanted and not superuser and version >= 150000:
                cur.execute(_MAY_SET_DEADLOCK_TIMEOUT)
                may_set = bool(cur.fetchone()[0])  # type: ignore[index]
    finally:
        conn.close()
    tables, tablespace_usable, role = set(row[0]), row[1], row[2]
    _check_history_mode(tables, keep_history)
    if temp_tablespace is not None:
        _check_temp_tablespace(temp_tablespace, tablespace_usable, role)
    if pool_size is not None:
        budget = ConnectionBudget(row[3], row[4], row[5], row[6], pool_size)
        remember_budget(dsn, budget)
        _warn_over_budget(dsn, budget)
    if wanted and may_set:
        shown = f"{deadlock_timeout_ms}ms (set by codx-db; the server's: {server_timeout}ms)"
    elif wanted:
        shown = f"{server_timeout}ms (the server's: role {role} may not set it)"
        _tell_deadlock_timeout_kept(dsn, role, server_timeout, deadlock_timeout_ms)
    else:
        source = "the connection options'" if "deadlock_timeout" in (options or "") else "the server's"
        shown = f"{server_timeout}ms ({source})"
    remember_deadlock_timeout(dsn, shown)  # for `codx-db info`
    return ServerCheck(deadlock_timeout_ms if wanted and may_set else None, options)


def _tell_deadlock_timeout_kept(dsn: str, role: str, server_ms: int, wanted_ms: int) -> None:
    key = (mask_dsn(dsn), role, server_ms)  # once per process and server setting; no password kept
    with _warned_lock:
        if key in _told_deadlock:
            return
        _told_deadlock.add(key)
    log.info(
        "deadlock_timeout stays at the server's %d ms: role %s may not set it, so a deadlock between two "
        "writes stalls both that long before one is retried. To use %s=%d: GRANT SET ON PARAMETER "
        "deadlock_timeout TO %s (PostgreSQL 15+), or set deadlock_timeout on the server "
        "(docs/deployment-tuning.md); %s=0 silences this",
        server_ms,
        role,
        env_name("db_pg_deadlock_timeout_ms"),
        wanted_ms,
        role,
        env_name("db_pg_deadlock_timeout_ms"),
    )


def _warn_over_budget(dsn: str, budget: ConnectionBudget) -> None:
    workers = web_workers()
    wanted = budget.per_process * (workers or 1)
    if wanted <= budget.allowed:
        return
    key = (mask_dsn(dsn), budget, workers)  # no password kept, even in memory
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    if workers:
        scope = f"with {workers} workers (WEB_CONCURRENCY={workers}) up to {wanted}"
    else:
        scope = "each further process on this server (uvicorn/gunicorn workers: WEB_CONCURRENCY) adds as many"
    log.warning(
        "connection budget: %s=%d lets this process open up to %d PostgreSQL sessions (a load and a store "
        "session per unit of work; %s), but the server allows %d for this role (%s): under load new sessions "
        "will fail with 'too many clients'. Lower %s or the workers, or raise max_connections "
        "(docs/deployment-tuning.md, connection budget)",
        POOL_SIZE,
        budget.pool_size,
        budget.per_process,
        scope,
        budget.allowed,
        budget.server_terms(),
        POOL_SIZE,
    )


def _check_history_mode(tables: set[str], keep_history: bool) -> None:
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


def _check_temp_tablespace(name: str, usable: bool | None, role: str) -> None:
    setting = f"db_pg_temp_tablespace: {env_name('db_pg_temp_tablespace')}={name}"
    if usable is None:
        raise ConfigurationError(
            f"{setting}, but the PostgreSQL server has no tablespace {name!r} (PostgreSQL would silently "
            f"use the default one): create it (CREATE TABLESPACE {name} LOCATION '...', see "
            "docs/deployment-tuning.md) or unset the setting"
        )
    if not usable:
        raise ConfigurationError(
            f"{setting}, but role {role!r} may not create tables in tablespace {name!r} (PostgreSQL would "
            f"silently use the default one): GRANT CREATE ON TABLESPACE {name} TO {role}, or unset the setting"
        )
