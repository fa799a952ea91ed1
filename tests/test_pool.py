"""The connection pool: never more connections than ``db_pool_size``; a thread beyond it waits, bounded.

ZODB's pool does not refuse an extra connection: past ``pool_size`` it logs "DB.open() has N
open connections with a pool_size of M" and discards connections when they are returned (for
RelStorage: a closed PostgreSQL session, a new one next time, temp tables re-created, an empty
pickle cache). codx-db's gate makes a thread beyond the pool wait for a connection instead, up
to ``db_pool_timeout``, then raise ``DatabaseTimeout`` naming both settings.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import ZODB
from ZODB.Connection import Connection

from db.database import Database, UnitOfWork
from db.errors import DatabaseTimeout
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB
from tests.conftest import BACKENDS, make_settings

POOL = 4
THREADS = 16
UNITS = 20
# Each unit waits this long at most for more units to be inside at once: on a database without
# a gate, threads pile up past the pool within it; with the gate none ever gets past POOL. It
# bounds a wait that is not asserted on (the assertions are on connections, not on time).
OVERLAP_WAIT = 0.01


@pytest.fixture(params=BACKENDS)
def pool_settings(request: pytest.FixtureRequest, tmp_path: Path) -> CodxJuniorGlobalSettings:
    """Settings for each backend with a small pool (and the default wait for a connection)."""
    return make_settings(request.param, request, tmp_path, db_pool_size=POOL)


@pytest.fixture
def pool_database(pool_settings: CodxJuniorGlobalSettings) -> Iterator[Database]:
    database = Database(pool_settings)
    database.open()
    try:
        yield database
    finally:
        database.close()


@pytest.fixture
def short_wait_database(pool_settings: CodxJuniorGlobalSettings) -> Iterator[Database]:
    """Like pool_database, with a short wait for a connection (the tests that run it out)."""
    database = Database(pool_settings.with_overrides(db_pool_timeout=0.5))
    database.open()
    try:
        yield database
    finally:
        database.close()


class OpenCounter:
    """Wraps the real ``DB.open`` of one ZODB.DB: every connection it hands out, and the pool's peak size."""

    def __init__(self, zodb: ZODB.DB) -> None:
        self.zodb = zodb
        self.real_open = zodb.open
        self.lock = threading.Lock()
        self.connections: list[Connection] = []  # strong refs: a discarded connection stays countable
        self.peak_pool = 0
        zodb.open = self.open  # type: ignore[method-assign]

    def open(self, *args: Any, **kwargs: Any) -> Connection:
        connection = self.real_open(*args, **kwargs)
        with self.lock:
            if all(c is not connection for c in self.connections):
                self.connections.append(connection)
            self.peak_pool = max(self.peak_pool, len(self.zodb.pool.all))
        return connection


def test_more_threads_than_the_pool_never_open_more_connections(
    pool_database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """16 threads x 20 units of work with pool 4: no ZODB pool warning, at most 4 connections ever."""
    counter = OpenCounter(pool_database.open())
    inside = 0
    peak_inside = 0
    cond = threading.Condition()
    errors: list[BaseException] = []

    def unit(uow: UnitOfWork) -> object:
        nonlocal inside, peak_inside
        with cond:
            inside += 1
            peak_inside = max(peak_inside, inside)
            cond.notify_all()
            cond.wait_for(lambda: inside > POOL, timeout=OVERLAP_WAIT)
            inside -= 1
        return uow.root.get("codx_db")

    def worker() -> None:
        try:
            for _ in range(UNITS):
                pool_database.run(unit)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    caplog.set_level(logging.WARNING, logger="ZODB.DB")
    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors, errors
    pool_records = [r.getMessage() for r in caplog.records if "open connections with a pool_size" in r.getMessage()]
    assert not pool_records, pool_records[:3]
    assert len(counter.connections) <= POOL, f"{len(counter.connections)} connections opened"
    assert counter.peak_pool <= POOL
    assert peak_inside <= POOL


def _hold_the_pool(database: Database, holders: int) -> tuple[threading.Event, list[threading.Thread]]:
    """Start ``holders`` threads that each sit in a unit of work until the returned event is set."""
    release = threading.Event()
    all_inside = threading.Barrier(holders + 1)

    def hold(uow: UnitOfWork) -> None:
        all_inside.wait()
        release.wait()

    threads = [threading.Thread(target=database.run, args=(hold,)) for _ in range(holders)]
    for thread in threads:
        thread.start()
    all_inside.wait()
    return release, threads


def test_a_thread_beyond_the_pool_gets_database_timeout_naming_the_settings(short_wait_database: Database) -> None:
    pool_database = short_wait_database
    release, holders = _hold_the_pool(pool_database, POOL)
    try:
        with pytest.raises(DatabaseTimeout) as excinfo:
            pool_database.run(lambda uow: uow.root.get("codx_db"))
    finally:
        release.set()
        for thread in holders:
            thread.join()
    message = str(excinfo.value)
    assert "CODX_JUNIOR_DB_POOL_SIZE" in message and "CODX_JUNIOR_DB_POOL_TIMEOUT" in message, message
    assert f"all {POOL} connections" in message, message
    # The slots came back: the pool serves again.
    assert UserDB(pool_database).count() == 0


def test_a_waiting_thread_gets_the_connection_a_holder_returns(pool_database: Database) -> None:
    """Not a timeout when a connection comes back in time: the waiter runs on it."""
    release, holders = _hold_the_pool(pool_database, POOL)
    result: list[object] = []
    waiter = threading.Thread(target=lambda: result.append(UserDB(pool_database).count()))
    waiter.start()
    release.set()
    for thread in [*holders, waiter]:
        thread.join()
    assert result == [0]


def test_nested_units_join_and_take_no_connection(tmp_path: Path) -> None:
    """A pool of one: a unit of work inside another (UserDB calls, run, transaction) does not wait for it."""
    settings = CodxJuniorGlobalSettings.load(db_backend="memory", db_pool_size=1, db_pool_timeout=0.5)
    database = Database(settings)
    users = UserDB(database)
    try:
        with database.transaction():
            users.create(username="nested")
            assert database.run(lambda uow: users.count()) == 1
            with database.transaction():
                assert users.get("nested").username == "nested"
        assert users.count() == 1
    finally:
        database.close()


def test_configure_resizes_the_gate() -> None:
    """configure() closes the database; the next open uses the new pool size."""
    database = Database(CodxJuniorGlobalSettings.load(db_backend="memory", db_pool_size=1, db_pool_timeout=0.5))
    try:
        database.run(lambda uow: None)
        database.configure(database.settings, db_pool_size=2)
        release, holders = _hold_the_pool(database, 2)  # two at once: the old gate (1) would block here
        release.set()
        for thread in holders:
            thread.join()
    finally:
        database.close()


def test_a_forked_child_gets_a_fresh_gate(tmp_path: Path) -> None:
    """A slot held by a parent's thread at fork() is never returned in the child: the child starts free."""
    database = Database(CodxJuniorGlobalSettings.load(db_backend="memory", db_pool_size=1, db_pool_timeout=0.5))
    report = tmp_path / "child.txt"
    try:
        release, holders = _hold_the_pool(database, 1)
        try:
            pid = _fork(lambda: database.run(lambda uow: uow.root.get("codx_db")), report)
            _, status = os.waitpid(pid, 0)
        finally:
            release.set()
            for thread in holders:
                thread.join()
        assert os.waitstatus_to_exitcode(status) == 0, report.read_text() if report.exists() else ""
    finally:
        database.close()


def _fork(work: Callable[[], object], report: Path) -> int:
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            work()
            gc.collect()
            code = 0
        except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test
            report.write_text(traceback.format_exc())
        finally:
            os._exit(code)
    return pid


def test_pool_settings_defaults() -> None:
    """40 = AnyIO's default thread limiter (sync FastAPI endpoints); the wait defaults to the commit-lock timeout."""
    settings = CodxJuniorGlobalSettings.load(db_backend="memory")
    assert settings.db_pool_size == 40
    assert settings.db_pool_timeout == settings.db_commit_lock_timeout
    assert CodxJuniorGlobalSettings.load(db_backend="memory", db_commit_lock_timeout=7).db_pool_timeout == 7
