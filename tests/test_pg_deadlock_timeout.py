"""``db_pg_deadlock_timeout_ms``: a deadlock between two writers stalls them 100 ms, not the server's 1 s.

RelStorage takes a commit's readCurrent locks (shared) before its write locks (exclusive, waited
for): two writers can each hold what the other waits for, and PostgreSQL looks for such a cycle
only after ``deadlock_timeout`` (1 s by default). bench/README.md ("Deadlock timeout") measured
matrix rounds with a deadlock falling to a third of the others' rate. codx-db sets a shorter one
on RelStorage's sessions when the role may (a superuser, or PostgreSQL 15's ``GRANT SET ON
PARAMETER``); otherwise it says once, at INFO, how to allow it, and connects as before.

A private server (tests/test_crash.py's ``PrivatePostgres``): the test creates a role and grants
on a parameter, which are cluster-wide. What is asserted is the setting in force in the sessions
RelStorage really opened (its load and store connections, read through a plain cursor).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest
from psycopg2.extensions import make_dsn, parse_dsn

from db.database import Database
from db.errors import ConfigurationError
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB
from tests.conftest import run_cli_in_process
from tests.test_crash import start_private_postgres
from tests.test_pg_budget import BudgetServer

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def server() -> Iterator[BudgetServer]:
    private = start_private_postgres()
    try:
        found = BudgetServer(private)  # its helpers, on a server with the default connection limit
        found.sql("CREATE ROLE codx LOGIN")
        yield found
    finally:
        private.destroy()


def _show(conn: Any, name: str = "deadlock_timeout") -> str:
    with conn.cursor(cursor_factory=psycopg2.extensions.cursor) as cur:
        cur.execute(f"SHOW {name}")
        row = cur.fetchone()
    if not conn.autocommit:
        conn.rollback()
    return str(row[0])


def _in_force(dsn: str, name: str = "deadlock_timeout", **settings: Any) -> tuple[str, str]:
    """Setting ``name`` in the load and the store session RelStorage opened for a write."""
    database = Database(CodxJuniorGlobalSettings.load(_env_file=None, db_backend="postgres", db_dsn=dsn, **settings))
    try:
        UserDB(database).create(username=f"u{uuid.uuid4().hex[:8]}", email=None)
        with database.transaction() as uow:
            storage = uow.connection._storage
            load = storage._load_connection.connection
            store = storage._store_connection_pool._connections[-1].connection
            return _show(load, name), _show(store, name)
    finally:
        database.close()


def test_a_superuser_gets_the_short_timeout_on_relstorage_sessions(server: BudgetServer) -> None:
    _, dsn = server.new_database(role="postgres")
    assert _in_force(dsn) == ("100ms", "100ms")
    assert _in_force(dsn, db_pg_deadlock_timeout_ms=250) == ("250ms", "250ms")
    # 0: the server's own value.
    assert _in_force(dsn, db_pg_deadlock_timeout_ms=0) == ("1s", "1s")


def test_a_role_without_the_right_keeps_the_server_value_and_is_told_how(
    server: BudgetServer, caplog: pytest.LogCaptureFixture
) -> None:
    _, dsn = server.new_database()
    with caplog.at_level(logging.INFO, logger="db.pg.storage"):
        assert _in_force(dsn) == ("1s", "1s")  # connected and wrote: no "permission denied to set parameter"
    told = [r.getMessage() for r in caplog.records if "deadlock_timeout" in r.getMessage()]
    assert len(told) == 1 and "GRANT SET ON PARAMETER deadlock_timeout TO codx" in told[0], told
    assert "CODX_JUNIOR_DB_PG_DEADLOCK_TIMEOUT_MS" in told[0]


def test_a_grant_on_the_parameter_is_enough(server: BudgetServer) -> None:
    _, dsn = server.new_database()
    admin = psycopg2.connect(server.server.admin_dsn)
    version = admin.server_version
    admin.close()
    if version < 150000:
        pytest.skip("GRANT SET ON PARAMETER is PostgreSQL 15+")
    server.sql("GRANT SET ON PARAMETER deadlock_timeout TO codx")
    try:
        assert _in_force(dsn) == ("100ms", "100ms")
    finally:
        server.sql("REVOKE SET ON PARAMETER deadlock_timeout FROM codx")


def test_a_shorter_timeout_the_server_already_gives_is_kept(server: BudgetServer) -> None:
    name, dsn = server.new_database(role="postgres")
    server.sql(f"ALTER DATABASE \"{name}\" SET deadlock_timeout = '40ms'")
    assert _in_force(dsn) == ("40ms", "40ms")


def test_a_deadlock_timeout_in_the_dsn_options_is_left_alone(server: BudgetServer) -> None:
    _, dsn = server.new_database(role="postgres")
    assert _in_force(make_dsn(dsn, options="-c deadlock_timeout=2s")) == ("2s", "2s")


def test_options_from_pgoptions_still_reach_relstorage_sessions(
    server: BudgetServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # libpq reads PGOPTIONS only when the DSN has no options: adding ours must not drop them.
    _, dsn = server.new_database(role="postgres")
    monkeypatch.setenv("PGOPTIONS", "-c work_mem=7MB")
    assert _in_force(dsn, "work_mem") == ("7MB", "7MB")
    assert _in_force(dsn) == ("100ms", "100ms")


def test_relstorage_dsn_merges_every_setting_into_the_options() -> None:
    from db.pg.storage import relstorage_dsn

    settings = CodxJuniorGlobalSettings.load(
        _env_file=None, db_backend="postgres", db_dsn="dbname=codx", db_pg_temp_tablespace="codx_tmp"
    )
    both = "-c temp_tablespaces=codx_tmp -c deadlock_timeout=100ms"
    assert parse_dsn(relstorage_dsn(settings, "dbname=codx", 100))["options"] == both
    # The options libpq really sent (PGOPTIONS here) come first when the DSN has none ...
    resolved = relstorage_dsn(settings, "dbname=codx", 100, "-c work_mem=7MB")
    assert parse_dsn(resolved)["options"] == f"-c work_mem=7MB {both}"
    # ... and the DSN's own win when it has some (libpq then never read PGOPTIONS).
    own = relstorage_dsn(settings, "dbname=codx options='-c work_mem=1MB'", 100, "-c work_mem=1MB")
    assert parse_dsn(own)["options"] == f"-c work_mem=1MB {both}"
    plain = settings.with_overrides(db_pg_temp_tablespace=None)
    assert relstorage_dsn(plain, "dbname=codx", None, "-c work_mem=7MB") == "dbname=codx"


@pytest.mark.parametrize(
    ("user", "shown"),
    [
        ("postgres", "100ms (set by codx-db; the server's: 1000ms)"),
        ("codx", "1000ms (the server's: role codx may not set it)"),
    ],
    ids=["superuser", "no-right"],
)
def test_info_says_which_deadlock_timeout_the_sessions_got(server: BudgetServer, user: str, shown: str) -> None:
    _, dsn = server.new_database(role=user)
    settings = CodxJuniorGlobalSettings.load(_env_file=None, db_backend="postgres", db_dsn=dsn)
    database = Database(settings)
    try:
        UserDB(database).create(username="alice", email=None)  # the database exists: info opens it
    finally:
        database.close()
    info = run_cli_in_process(settings, "info")
    assert info.returncode == 0, info.stderr
    assert f"pg_deadlock_timeout: {shown}" in info.stdout, info.stdout


@pytest.mark.parametrize("value", ["-1", "60001", "soon"])
def test_a_bad_value_is_refused_by_name(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODX_JUNIOR_DB_PG_DEADLOCK_TIMEOUT_MS", value)
    with pytest.raises(ConfigurationError) as caught:
        CodxJuniorGlobalSettings.load(_env_file=None)
    assert "CODX_JUNIOR_DB_PG_DEADLOCK_TIMEOUT_MS" in str(caught.value)
