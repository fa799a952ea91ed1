"""fork after first use (gunicorn --preload, multiprocessing with fork): every process its own storage.

A forked child inherits the parent's open PostgreSQL sockets and FileStorage file descriptors.
Used from two processes, one socket interleaves two conversations ("message type 0x43 arrived
from server while idle", ``KeyError``); closed in the child, it would send the server a
Terminate that ends the parent's session. The child must leave them alone and open its own.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2
import pytest
from psycopg2.extensions import parse_dsn

from db.database import Database
from db.errors import StorageInUse
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB
from tests.conftest import run_cli

CHILDREN = 3


def _fork(work: Callable[[], None], report: Path) -> int:
    """Run ``work`` in a forked child; its traceback (if any) goes to ``report``."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            work()
            # A long-lived child frees what it dropped sooner or later: now, here.
            gc.collect()
            code = 0
        except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test
            report.write_text(traceback.format_exc())
        finally:
            os._exit(code)
    return pid


def _wait(pid: int, report: Path, deadline: float = 120) -> None:
    """Wait for a child; one stuck on a socket it shares with us is killed, and that fails."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            problem = report.read_text() if report.exists() else ""
            assert os.waitstatus_to_exitcode(status) == 0, problem
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"child {pid} did not finish: stuck on an inherited connection?")


def _backend_pids(dsn: str) -> set[int]:
    """Server processes of this database's RelStorage sessions (ours, at this moment)."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name LIKE 'RS:%%'",
            (parse_dsn(dsn)["dbname"],),
        )
        pids = {row[0] for row in cur.fetchall()}
    conn.close()
    return pids


@pytest.fixture(params=[True, False], ids=["fast-reads", "plain"])
def pg_settings(request: pytest.FixtureRequest, pg_dsn: str) -> CodxJuniorGlobalSettings:
    return CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=pg_dsn, db_pg_fast_reads=request.param)


@pytest.fixture
def pg_database(pg_settings: CodxJuniorGlobalSettings) -> Iterator[Database]:
    database = Database(pg_settings)
    try:
        yield database
    finally:
        database.close()


@pytest.mark.postgres
def test_forked_children_open_their_own_connections(
    pg_database: Database, pg_settings: CodxJuniorGlobalSettings, tmp_path: Path
) -> None:
    users = UserDB(pg_database)
    users.create(username="parent-0")
    assert users.get("parent-0").username == "parent-0"  # the pool holds connections now
    assert pg_settings.db_dsn is not None
    dsn = pg_settings.db_dsn.get_secret_value()
    before = _backend_pids(dsn)
    assert before, "the parent holds RelStorage sessions before it forks"

    def child(index: int) -> Callable[[], None]:
        def work() -> None:
            for n in range(5):
                users.create(username=f"child-{index}-{n}")
                users.update(f"child-{index}-{n}", full_name=f"Child {index}")
            assert users.get("parent-0").username == "parent-0"
            assert users.count() >= 6

        return work

    reports = [tmp_path / f"child-{i}.txt" for i in range(CHILDREN)]
    pids = [_fork(child(i), reports[i]) for i in range(CHILDREN)]
    for n in range(1, 6):  # the parent keeps working while its children do
        users.create(username=f"parent-{n}")
        assert users.get(f"parent-{n - 1}").username == f"parent-{n - 1}"
    for pid, report in zip(pids, reports, strict=True):
        _wait(pid, report)

    # Nothing a child did ended one of the parent's sessions (a Terminate on a shared socket would).
    assert before <= _backend_pids(dsn)
    assert users.count() == 6 + CHILDREN * 5
    assert users.get("child-2-4").full_name == "Child 2"
    pg_database.close()
    result = run_cli(pg_settings, "check")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.postgres
def test_a_child_closing_what_it_inherited_leaves_the_parents_sessions(
    pg_database: Database, pg_settings: CodxJuniorGlobalSettings, tmp_path: Path
) -> None:
    # Code that kept the ZODB.DB (or a storage) from before the fork and closes it in the child:
    # on the shared sockets that would send the server Terminate messages for the parent's sessions.
    users = UserDB(pg_database)
    users.create(username="parent")
    zodb = pg_database.open()
    assert pg_settings.db_dsn is not None
    dsn = pg_settings.db_dsn.get_secret_value()
    before = _backend_pids(dsn)

    def child() -> None:
        zodb.close()
        users.create(username="child")  # its own storage, opened now

    report = tmp_path / "child.txt"
    _wait(_fork(child, report), report)
    assert before <= _backend_pids(dsn)
    assert users.get("child").username == "child"
    assert users.count() == 2


_POOL_USERS: UserDB | None = None


def _pool_job(index: int) -> str:
    assert _POOL_USERS is not None
    _POOL_USERS.create(username=f"worker-{index}")
    return _POOL_USERS.get(f"worker-{index}").username


@pytest.mark.postgres
def test_a_multiprocessing_fork_pool_after_first_use(
    pg_database: Database, pg_settings: CodxJuniorGlobalSettings
) -> None:
    global _POOL_USERS
    users = _POOL_USERS = UserDB(pg_database)
    users.create(username="parent")
    try:
        with multiprocessing.get_context("fork").Pool(2) as pool:
            names = pool.map(_pool_job, range(6), chunksize=1)
            users.create(username="parent-again")  # while the pool's workers are alive
        assert names == [f"worker-{i}" for i in range(6)]
    finally:
        _POOL_USERS = None
    assert users.count() == 8
    assert users.get("worker-5").username == "worker-5"
    pg_database.close()
    result = run_cli(pg_settings, "check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_child_of_a_file_database_owner_gets_storage_in_use(tmp_path: Path) -> None:
    # A FileStorage file serves one process: the child is told so, naming its parent, and
    # the parent (its lock, its file) carries on untouched.
    settings = CodxJuniorGlobalSettings.load(db_backend="file", db_file_path=tmp_path / "data" / "users.fs")
    database = Database(settings)
    users = UserDB(database)
    try:
        users.create(username="parent")

        def child() -> None:
            with pytest.raises(StorageInUse, match=rf"pid {os.getppid()}.*fork"):
                users.get("parent")
            with pytest.raises(StorageInUse):  # still, on a second try
                users.create(username="child")

        report = tmp_path / "child.txt"
        _wait(_fork(child, report), report)
        users.create(username="parent-again")
        assert [u.username for u in users.list()] == ["parent", "parent-again"]
        with pytest.raises(StorageInUse):  # the parent still holds the lock
            Database(settings).open()
    finally:
        database.close()
    result = run_cli(settings, "check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_child_of_a_closed_file_database_opens_it(tmp_path: Path) -> None:
    settings = CodxJuniorGlobalSettings.load(db_backend="file", db_file_path=tmp_path / "data" / "users.fs")
    database = Database(settings)
    users = UserDB(database)
    users.create(username="parent")
    database.close()

    def child() -> None:
        users.create(username="child")
        database.close()

    report = tmp_path / "child.txt"
    _wait(_fork(child, report), report)
    try:
        assert [u.username for u in users.list()] == ["child", "parent"]
    finally:
        database.close()
