"""``db_pg_temp_tablespace``: RelStorage's temp tables in a tablespace of the operator's choice.

The server is a private instance of this test run (tests/test_crash.py's ``PrivatePostgres``),
because a tablespace needs a directory the server's own user owns: the test makes one beside
the cluster and runs ``CREATE TABLESPACE`` there. The application role ``codx`` is not a
superuser, so the CREATE privilege on the tablespace is really checked.

What is asserted is where PostgreSQL put the temp tables (``pg_class.reltablespace`` of every
session's ``temp_store``), read by an admin session: the catalog lists other sessions' temp
tables too. No timing is asserted (the speed is a bench figure, docs/deployment-tuning.md).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from psycopg2.extensions import make_dsn, parse_dsn

from db.database import Database
from db.errors import ConfigurationError
from db.pg.dsn import with_server_settings
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB
from tests.conftest import run_cli_in_process
from tests.test_crash import PrivatePostgres, start_private_postgres

SETTING = "CODX_JUNIOR_DB_PG_TEMP_TABLESPACE"


class TablespaceServer:
    """A private server with a tablespace ``codx_tmp`` and a non-superuser role ``codx``."""

    def __init__(self, server: PrivatePostgres) -> None:
        self.server = server

    def admin(self, dbname: str = "postgres") -> psycopg2.extensions.connection:
        conn = psycopg2.connect(make_dsn(self.server.admin_dsn, dbname=dbname))
        conn.autocommit = True
        return conn

    def sql(self, statement: str, dbname: str = "postgres") -> list[tuple[object, ...]]:
        conn = self.admin(dbname)
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def new_database(self) -> tuple[str, str]:
        """A fresh database owned by ``codx``: its name and the DSN codx-db uses (role codx)."""
        name = f"codx_tt_{uuid.uuid4().hex[:10]}"
        self.sql(f'CREATE DATABASE "{name}" OWNER codx')
        return name, make_dsn(self.server.admin_dsn, dbname=name, user="codx")

    def temp_store_tablespaces(self, dbname: str) -> list[str]:
        """The tablespace of every session's RelStorage ``temp_store`` in ``dbname``."""
        rows = self.sql(
            "SELECT COALESCE(t.spcname, 'default') FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace LEFT JOIN pg_tablespace t ON t.oid = c.reltablespace "
            "WHERE c.relname = 'temp_store' AND c.relpersistence = 't' AND n.nspname LIKE 'pg_temp_%'",
            dbname,
        )
        return [str(row[0]) for row in rows]


@pytest.fixture(scope="module")
def ts_server() -> Iterator[TablespaceServer]:
    server = start_private_postgres()
    try:
        # The directory must belong to the server's user (postgres when the tests run as root).
        location = server.dir / "codx_tmp"
        location.mkdir(mode=0o700)
        if server.as_postgres:
            shutil.chown(location, "postgres", "postgres")
        found = TablespaceServer(server)
        found.sql("CREATE ROLE codx LOGIN")
        found.sql(f"CREATE TABLESPACE codx_tmp LOCATION '{location}'")
        found.sql("GRANT CREATE ON TABLESPACE codx_tmp TO codx")
        # A second one the role may not use.
        private = server.dir / "codx_private"
        private.mkdir(mode=0o700)
        if server.as_postgres:
            shutil.chown(private, "postgres", "postgres")
        found.sql(f"CREATE TABLESPACE codx_private LOCATION '{private}'")
        yield found
    finally:
        server.destroy()


def _settings(dsn: str, **extra: object) -> CodxJuniorGlobalSettings:
    return CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=dsn, db_startup="evolve", **extra)


def _schema_tables(server: TablespaceServer, dbname: str) -> list[str]:
    rows = server.sql("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'", dbname)
    return sorted(str(row[0]) for row in rows)


# -- the setting alone -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["codx tmp", "CodxTmp", "1tmp", "tmp;drop", 'codx"tmp', "x" * 64, "tmp\\x"])
def test_a_name_postgres_would_not_take_unquoted_is_refused(name: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        CodxJuniorGlobalSettings.load(db_backend="memory", db_pg_temp_tablespace=name)
    message = str(caught.value)
    assert SETTING in message and "identifier" in message


@pytest.mark.parametrize(("value", "kept"), [("", None), ("  ", None), ("codx_tmp", "codx_tmp"), ("t$1", "t$1")])
def test_an_empty_name_means_unset(value: str, kept: str | None) -> None:
    assert CodxJuniorGlobalSettings.load(db_backend="memory", db_pg_temp_tablespace=value).db_pg_temp_tablespace == kept


def test_server_settings_join_the_dsn_options_already_there() -> None:
    dsn = "host=db dbname=codx user=codx password='p w' options='-c search_path=app'"
    params = parse_dsn(with_server_settings(dsn, temp_tablespaces="codx_tmp"))
    assert params["options"] == "-c search_path=app -c temp_tablespaces=codx_tmp"
    assert params["password"] == "p w" and params["dbname"] == "codx"
    assert parse_dsn(with_server_settings("dbname=codx", temp_tablespaces="t"))["options"] == "-c temp_tablespaces=t"


# -- on a server -----------------------------------------------------------------------------------


@pytest.mark.postgres
def test_relstorage_temp_tables_go_to_the_tablespace(ts_server: TablespaceServer) -> None:
    # Without the setting: the default tablespace (so the assertion below can fail). Another
    # database: a closed session's temp tables go when its backend exits, a moment later.
    control, control_dsn = ts_server.new_database()
    database = Database(_settings(control_dsn))
    try:
        UserDB(database).create(username="before", email="before@example.com", password="a long password 1")
        assert ts_server.temp_store_tablespaces(control) and set(ts_server.temp_store_tablespaces(control)) == {
            "default"
        }
    finally:
        database.close()

    dbname, dsn = ts_server.new_database()
    database = Database(_settings(dsn, db_pg_temp_tablespace="codx_tmp"))
    try:
        users = UserDB(database)
        users.create(username="alice", email="alice@example.com", password="a long password 1")
        # Every RelStorage session that made the temp tables (load and store) made them there.
        assert ts_server.temp_store_tablespaces(dbname) and set(ts_server.temp_store_tablespaces(dbname)) == {
            "codx_tmp"
        }
        assert users.get("alice").email == "alice@example.com"
        # codx-db's own sessions (the startup lock, the schema check) do not carry it: only RelStorage's.
        info = run_cli_in_process(_settings(dsn, db_pg_temp_tablespace="codx_tmp"), "info")
        assert info.returncode == 0, info.stderr
        assert "temp_tablespace: codx_tmp" in info.stdout and "users: 1" in info.stdout
    finally:
        database.close()


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("tablespace", "expected"),
    [("codx_missing", "has no tablespace 'codx_missing'"), ("codx_private", "may not create tables in tablespace")],
    ids=["missing", "no-create-privilege"],
)
def test_an_unusable_tablespace_is_refused_before_anything_is_written(
    ts_server: TablespaceServer, tablespace: str, expected: str
) -> None:
    dbname, dsn = ts_server.new_database()
    database = Database(_settings(dsn, db_pg_temp_tablespace=tablespace))
    try:
        with pytest.raises(ConfigurationError) as caught:
            UserDB(database).create(username="alice", email="alice@example.com", password="a long password 1")
    finally:
        database.close()
    message = str(caught.value)
    assert f"db_pg_temp_tablespace: {SETTING}={tablespace}" in message and expected in message
    assert "password" not in message.lower()
    # Refused before RelStorage opened: no schema, no object, no temp table left behind.
    assert _schema_tables(ts_server, dbname) == []
    assert ts_server.temp_store_tablespaces(dbname) == []


@pytest.mark.postgres
def test_the_database_default_tablespace_needs_no_grant(ts_server: TablespaceServer) -> None:
    # PostgreSQL lets any role put temp tables in the database's default tablespace without a
    # CREATE grant (pg_default's ACL names no one else): the check must not refuse it.
    dbname, dsn = ts_server.new_database()
    assert ts_server.sql("SELECT has_tablespace_privilege('codx', 'pg_default', 'CREATE')") == [(False,)]
    database = Database(_settings(dsn, db_pg_temp_tablespace="pg_default"))
    try:
        UserDB(database).create(username="alice", email="alice@example.com", password="a long password 1")
        assert set(ts_server.temp_store_tablespaces(dbname)) == {"default"}
    finally:
        database.close()


def test_the_setting_reaches_only_relstorage_dsn(tmp_path: Path) -> None:
    from db.pg.storage import relstorage_dsn

    settings = CodxJuniorGlobalSettings.load(
        db_backend="postgres", db_dsn="host=h dbname=codx user=codx password=s3cret", db_pg_temp_tablespace="codx_tmp"
    )
    dsn = "host=h dbname=codx user=codx password=s3cret"
    assert parse_dsn(relstorage_dsn(settings, dsn))["options"] == "-c temp_tablespaces=codx_tmp"
    assert relstorage_dsn(settings.with_overrides(db_pg_temp_tablespace=None), dsn) == dsn
