"""The PostgreSQL connection budget: the warning at open, "too many clients" named, ``codx-db info``.

The server is a private instance of this test run (tests/test_crash.py's ``PrivatePostgres``)
with ``max_connections=20`` (3 reserved for superusers: 17 for the application role ``codx``, a
non-superuser, as in production). "Full" is real: the test opens plain psycopg2 sessions as
``codx`` until the server refuses one, then asks codx-db for a new session. Nothing is mocked.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from psycopg2.extensions import make_dsn

from db.database import Database
from db.errors import DatabaseUnavailable, UserNotFound
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB
from tests.conftest import run_cli_in_process
from tests.test_crash import PrivatePostgres, start_private_postgres

pytestmark = pytest.mark.postgres

MAX_CONNECTIONS = 20
ALLOWED = MAX_CONNECTIONS - 3  # superuser_reserved_connections' default


class BudgetServer:
    """A private server with few connections, a role ``codx`` and a role ``codx_limited`` (CONNECTION LIMIT 4)."""

    def __init__(self, server: PrivatePostgres) -> None:
        self.server = server

    def sql(self, statement: str, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        conn = psycopg2.connect(make_dsn(self.server.admin_dsn, dbname=dbname))
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(statement)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def new_database(self, role: str = "codx") -> tuple[str, str]:
        """A fresh database owned by ``role``: its name and the DSN codx-db uses (as that role)."""
        name = f"codx_budget_{uuid.uuid4().hex[:10]}"
        self.sql(f'CREATE DATABASE "{name}" OWNER {role}')
        return name, make_dsn(self.server.admin_dsn, dbname=name, user=role)

    def sessions(self, dbname: str) -> int:
        return int(self.sql(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{dbname}'")[0][0])


@pytest.fixture(scope="module")
def budget_server() -> Iterator[BudgetServer]:
    server = start_private_postgres(f"max_connections={MAX_CONNECTIONS}")
    try:
        found = BudgetServer(server)
        found.sql("CREATE ROLE codx LOGIN")
        found.sql("CREATE ROLE codx_limited LOGIN CONNECTION LIMIT 4")
        yield found
    finally:
        server.destroy()


@pytest.fixture
def fill() -> Iterator[Any]:
    """``fill(dsn)``: open sessions on ``dsn`` until the server refuses one; all closed at the end."""
    held: list[psycopg2.extensions.connection] = []

    def fill_up(dsn: str) -> None:
        while True:
            try:
                held.append(psycopg2.connect(dsn, connect_timeout=5))
            except psycopg2.OperationalError as exc:
                assert "too many clients" in str(exc) or "remaining connection slots are reserved" in str(exc), exc
                return
            assert len(held) <= MAX_CONNECTIONS, "the server never refused a session"

    yield fill_up
    for conn in held:
        conn.close()


def _settings(dsn: str, **extra: object) -> CodxJuniorGlobalSettings:
    return CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=dsn, db_startup="evolve", **extra)


def _budget_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "db.pg.storage" and "connection budget" in r.getMessage()
    ]


def _open(dsn: str, **extra: object) -> None:
    database = Database(_settings(dsn, **extra))
    try:
        database.open()
    finally:
        database.close()


# -- the warning at open -------------------------------------------------------------------------


def test_a_pool_larger_than_the_server_allows_is_warned_about_once(
    budget_server: BudgetServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    _, dsn = budget_server.new_database()
    caplog.set_level(logging.WARNING, logger="db.pg.storage")
    _open(dsn, db_pool_size=10)  # 2 x 10 = 20 sessions > 17
    _open(dsn, db_pool_size=10)  # reopened: not again
    [warning] = _budget_warnings(caplog)
    assert "CODX_JUNIOR_DB_POOL_SIZE=10" in warning and "up to 20 PostgreSQL sessions" in warning
    assert f"allows {ALLOWED} for this role (max_connections={MAX_CONNECTIONS} minus 3 reserved)" in warning
    assert "WEB_CONCURRENCY" in warning and "too many clients" in warning


def test_a_pool_the_server_can_hold_is_not_warned_about(
    budget_server: BudgetServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    _, dsn = budget_server.new_database()
    caplog.set_level(logging.WARNING, logger="db.pg.storage")
    _open(dsn, db_pool_size=8)  # 16 <= 17
    assert _budget_warnings(caplog) == []


def test_web_concurrency_multiplies_the_budget(
    budget_server: BudgetServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, dsn = budget_server.new_database()
    caplog.set_level(logging.WARNING, logger="db.pg.storage")
    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    _open(dsn, db_pool_size=2)  # 4 x 4 = 16 <= 17
    assert _budget_warnings(caplog) == []
    _open(dsn, db_pool_size=3)  # 6 x 4 = 24 > 17, though one process (6) would fit
    [warning] = _budget_warnings(caplog)
    assert "CODX_JUNIOR_DB_POOL_SIZE=3" in warning and "with 4 workers (WEB_CONCURRENCY=4) up to 24" in warning


def test_a_role_connection_limit_counts(
    budget_server: BudgetServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    _, dsn = budget_server.new_database("codx_limited")
    caplog.set_level(logging.WARNING, logger="db.pg.storage")
    _open(dsn, db_pool_size=3)  # 6 > the role's 4
    [warning] = _budget_warnings(caplog)
    assert "allows 4 for this role" in warning and "role CONNECTION LIMIT 4" in warning


# -- a full server -------------------------------------------------------------------------------


def test_a_full_server_at_open_is_named(
    budget_server: BudgetServer, fill: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    name, dsn = budget_server.new_database()
    fill(dsn)
    database = Database(_settings(dsn))
    try:
        with pytest.raises(DatabaseUnavailable) as raised:
            UserDB(database).create(username="alice")
    finally:
        database.close()
    message = str(raised.value)
    assert "PostgreSQL refused a new session, its connections are used up" in message
    assert "2 x CODX_JUNIOR_DB_POOL_SIZE" in message and "x 4 workers (WEB_CONCURRENCY=4)" in message
    assert "max_connections" in message and "connection budget" in message
    # Not even RelStorage's schema was created.
    assert budget_server.sql(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'object_state'", name
    ) == [(0,)]


class _HoldInCommit:
    """A data manager of the same transaction that stops its commit after every tpc_begin.

    RelStorage borrows its store session in tpc_begin: while this waits, the unit holds it.
    """

    transaction_manager = None

    def __init__(self) -> None:
        self.holding = threading.Event()
        self.release = threading.Event()

    def sortKey(self) -> str:
        return "~codx-test-hold"  # after the ZODB connection

    def tpc_begin(self, txn: object) -> None:
        pass

    def commit(self, txn: object) -> None:
        pass

    def tpc_vote(self, txn: object) -> None:
        self.holding.set()
        assert self.release.wait(60)

    def tpc_finish(self, txn: object) -> None:
        pass

    def tpc_abort(self, txn: object) -> None:
        pass

    def abort(self, txn: object) -> None:
        pass


def test_a_full_server_mid_unit_is_named_and_nothing_is_written(
    budget_server: BudgetServer, fill: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opened, then the server fills up: a read needing a new load session, a write a new store session."""
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    name, dsn = budget_server.new_database()
    database = Database(_settings(dsn, db_pool_size=40))
    users = UserDB(database)
    hold = _HoldInCommit()
    errors: list[BaseException] = []

    def holder() -> None:
        # Holds a ZODB connection (its load session) and, inside its commit, a store session.
        try:
            with database.transaction() as uow:
                uow.root["codx-test-marker"] = 1
                uow.transaction.join(hold)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    try:
        users.create(username="seed")
        # Two ZODB connections in the pool, each with its load session; one store session pooled.
        with database.transaction():
            _read_in_another_thread(users)
        thread = threading.Thread(target=holder)
        thread.start()
        assert hold.holding.wait(60), errors
        try:
            fill(dsn)
            # The pool's other ZODB connection has its load session, but no store session is free.
            with pytest.raises(DatabaseUnavailable) as on_write:
                users.create(username="newcomer")
            # Two units at once: the second needs a new ZODB connection, i.e. a new load session.
            with database.transaction(), pytest.raises(DatabaseUnavailable) as on_read:
                _read_in_another_thread(users)
        finally:
            hold.release.set()
            thread.join(60)
        assert errors == []
        for raised in (on_write, on_read):
            message = str(raised.value)
            assert "PostgreSQL refused a new session, its connections are used up" in message, message
            assert "CODX_JUNIOR_DB_POOL_SIZE=40 lets each codx-db process open up to 80" in message
            assert f"{ALLOWED} sessions (max_connections={MAX_CONNECTIONS} minus 3 reserved)" in message
        assert users.count() == 1
        with pytest.raises(UserNotFound):
            users.get("newcomer")
    finally:
        database.close()
    assert budget_server.sql("SELECT count(*) FROM object_state", name)[0][0] > 0  # the schema, seed


def _read_in_another_thread(users: UserDB) -> None:
    failure: list[BaseException] = []

    def read() -> None:
        try:
            users.get("seed")
        except BaseException as exc:  # noqa: BLE001 - raised again in the test's thread
            failure.append(exc)

    thread = threading.Thread(target=read)
    thread.start()
    thread.join(60)
    if failure:
        raise failure[0]


# -- codx-db info --------------------------------------------------------------------------------


def test_info_shows_the_pool_and_the_connections_per_process(budget_server: BudgetServer) -> None:
    _, dsn = budget_server.new_database()
    empty = run_cli_in_process(_settings(dsn, db_pool_size=6), "info")
    assert empty.returncode == 0, empty.stderr
    assert "pool_size: 6" in empty.stdout and "PostgreSQL connections: up to 12 per process" in empty.stdout
    database = Database(_settings(dsn, db_pool_size=6))
    UserDB(database).create(username="alice")
    database.close()
    info = run_cli_in_process(_settings(dsn, db_pool_size=6), "info")
    assert info.returncode == 0, info.stderr
    assert (
        f"PostgreSQL connections: up to 12 per process (the server allows {ALLOWED} for this role, "
        "all processes together)" in info.stdout.splitlines()
    )
    as_json = run_cli_in_process(_settings(dsn, db_pool_size=6), "info", "--json")
    assert '"pg_connections_per_process": 12' in as_json.stdout and '"pool_size": 6' in as_json.stdout


def test_info_on_a_file_database_has_no_connection_lines(tmp_path: Any) -> None:
    settings = CodxJuniorGlobalSettings.load(db_backend="file", db_file_path=tmp_path / "users.fs")
    info = run_cli_in_process(settings, "info")
    assert info.returncode == 0 and "pool_size" not in info.stdout and "PostgreSQL" not in info.stdout


# -- the bound the budget is built on -------------------------------------------------------------


@pytest.mark.parametrize("group_commit", [True, False], ids=["group-commit", "no-group-commit"])
def test_one_process_opens_at_most_two_sessions_per_pooled_connection(
    budget_server: BudgetServer, group_commit: bool
) -> None:
    """9 threads reading and writing with a pool of 3: never more than 2 x 3 sessions (sampled throughout)."""
    name, dsn = budget_server.new_database()
    database = Database(_settings(dsn, db_pool_size=3, db_group_commit=group_commit))
    users = UserDB(database)
    users.create(username="seed")
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], budget_server.sessions(name))

    def work(thread: int) -> None:
        for n in range(5):
            users.create(username=f"t{thread}n{n}")
            users.get("seed")

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        workers = [threading.Thread(target=work, args=(thread,)) for thread in range(9)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
    finally:
        done.set()
        sampler.join(60)
    try:
        assert users.count() == 1 + 9 * 5
        assert 1 <= peak[0] <= 2 * 3, peak[0]
        assert budget_server.sessions(name) <= 2 * 3  # kept open after the burst, still within the bound
    finally:
        database.close()
