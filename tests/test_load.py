"""No give-ups under load: every write either lands or says ``WriteContention``; nothing from below leaks.

The load test runs real processes (multiprocessing spawn) x threads, each thread creating
distinct users through the public ``UserDB`` API with the product's default settings (only the
DSN set): every call must return a user, and the database must hold exactly the acknowledged
ones afterwards, ``codx-db check`` clean. The conflict tests force conflicts and check what
comes out: success, ``WriteContention`` (retries and deadline spent) or ``DatabaseTimeout``
(a lock wait ran out ``db_commit_lock_timeout``), never a ZODB or RelStorage exception type.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from ZODB.utils import oid_repr, u64

from db.database import Database, UnitOfWork
from db.errors import DatabaseTimeout, WriteContention
from db.fastapi import add_exception_handler
from db.models import USERS_KEY
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB
from tests.conftest import BACKENDS, make_settings, run_cli_in_process

SPAWN = multiprocessing.get_context("spawn")
CREATES_PER_THREAD = 20
CHILD_DEADLINE = 240  # seconds a cell may take at most before the test fails (a hang, not a speed check)


# -- many writers ---------------------------------------------------------------------------------


class _RetryCounter(logging.Handler):
    """Counts ``run``'s "retrying unit of work after X" debug records, by X."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.by_type: Counter[str] = Counter()
        self.lock_ = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("retrying unit of work after "):
            with self.lock_:
                self.by_type[str(record.args[0]) if record.args else "?"] += 1


def _writer_process(dsn: str, process: int, threads: int, creates: int, start: Any, results: Any) -> None:
    """One process: ``threads`` threads, each creating ``creates`` distinct users; report to ``results``."""
    retries = _RetryCounter()
    logger = logging.getLogger("db.database")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(retries)
    database = Database(CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=dsn))
    users = UserDB(database)
    acknowledged: list[str] = []
    failures: Counter[str] = Counter()
    samples: list[str] = []
    lock = threading.Lock()

    def write(thread: int) -> None:
        for i in range(creates):
            name = f"load-{process}-{thread}-{i}"
            try:
                user = users.create(username=name, email=f"{name}@example.com")
            except Exception as exc:  # noqa: BLE001 - every failure is counted by type
                with lock:
                    failures[f"{type(exc).__module__}.{type(exc).__name__}"] += 1
                    if len(samples) < 3:
                        samples.append(f"{type(exc).__name__}: {str(exc)[:300]}")
                continue
            with lock:
                if user.username == name:
                    acknowledged.append(name)
                else:
                    failures[f"wrong user {user.username!r}"] += 1

    try:
        database.open()  # open (installed already) before the common start
        start.wait()
        workers = [threading.Thread(target=write, args=(t,)) for t in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        database.close()
    results.put(
        {
            "process": process,
            "acknowledged": acknowledged,
            "failures": dict(failures),
            "samples": samples,
            "retries": dict(retries.by_type),
        }
    )


@pytest.fixture
def pg_settings(pg_dsn: str) -> CodxJuniorGlobalSettings:
    return CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=pg_dsn)


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize(("processes", "threads"), [(2, 8), (4, 4), (1, 16)], ids=["2x8", "4x4", "1x16"])
def test_every_create_under_load_lands(
    pg_dsn: str, pg_settings: CodxJuniorGlobalSettings, processes: int, threads: int
) -> None:
    """N processes x T threads create distinct users with default settings: no give-ups, all there, check clean."""
    database = Database(pg_settings)
    database.open()  # install before the writers start, as a deployed database would be
    database.close()
    start = SPAWN.Barrier(processes)
    results: Any = SPAWN.Queue()
    children = [
        SPAWN.Process(target=_writer_process, args=(pg_dsn, p, threads, CREATES_PER_THREAD, start, results))
        for p in range(processes)
    ]
    for child in children:
        child.start()
    reports = []
    try:
        for _ in children:
            reports.append(results.get(timeout=CHILD_DEADLINE))
    except queue.Empty:
        pytest.fail(f"{processes - len(reports)} writer processes did not report in {CHILD_DEADLINE} s")
    finally:
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
                child.join()
    acknowledged = [name for report in reports for name in report["acknowledged"]]
    failures: Counter[str] = Counter()
    retries: Counter[str] = Counter()
    for report in reports:
        failures.update(report["failures"])
        retries.update(report["retries"])
    samples = [s for report in reports for s in report["samples"]]
    # The figures, for the record (pytest -s, or in the failure message below).
    print(
        f"\n{processes}x{threads}: {len(acknowledged)} acknowledged of {processes * threads * CREATES_PER_THREAD}, "
        f"failures {dict(failures)}, retries {dict(retries)}"
    )
    assert not failures, (dict(failures), samples, dict(retries))
    assert len(acknowledged) == processes * threads * CREATES_PER_THREAD

    users = UserDB(Database(pg_settings))
    try:
        assert users.count() == len(acknowledged)
        for name in acknowledged:
            assert users.get(name).username == name
    finally:
        users.database.close()
    result = run_cli_in_process(pg_settings, "check")
    assert result.returncode == 0, result.stdout + result.stderr


# -- forced conflicts -----------------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def conflict_settings(request: pytest.FixtureRequest, tmp_path: Path) -> CodxJuniorGlobalSettings:
    """No retry count: only the (short) deadline retries."""
    return make_settings(request.param, request, tmp_path, db_conflict_retries=0, db_conflict_deadline=0.2)


@pytest.fixture
def conflict_database(conflict_settings: CodxJuniorGlobalSettings) -> Iterator[Database]:
    """A database holding one user, "same", that the tests' writers fight over."""
    database = Database(conflict_settings)
    UserDB(database).create(username="same", email="same@example.com")
    try:
        yield database
    finally:
        database.close()


def _overtaken_update(database: Database) -> BaseException | None:
    """Update "same" in a unit of work that another thread's update of "same" commits under, once.

    Returns what the overtaken unit of work raised (None: it succeeded).
    """
    users = UserDB(database)
    loaded, other_committed = threading.Event(), threading.Event()
    other_errors: list[BaseException] = []

    def other() -> None:
        loaded.wait()
        try:
            users.update("same", full_name="the other writer")
        except BaseException as exc:  # noqa: BLE001 - checked below
            other_errors.append(exc)
        finally:
            other_committed.set()

    def overtaken(uow: UnitOfWork) -> None:
        users.update("same", full_name="the overtaken writer")  # joins this unit of work
        if not loaded.is_set():  # only the first attempt waits: a retry must be able to succeed
            loaded.set()
            other_committed.wait()

    thread = threading.Thread(target=other)
    thread.start()
    try:
        database.run(overtaken)
    except BaseException as exc:  # noqa: BLE001 - returned to the test
        return exc
    finally:
        loaded.set()
        thread.join()
        assert not other_errors, other_errors
    return None


def test_a_conflict_past_retries_and_deadline_is_write_contention(
    conflict_settings: CodxJuniorGlobalSettings,
) -> None:
    database = Database(conflict_settings.with_overrides(db_conflict_deadline=0))
    UserDB(database).create(username="same", email="same@example.com")
    try:
        _check_write_contention(database)
    finally:
        database.close()


def _check_write_contention(database: Database) -> None:
    error = _overtaken_update(database)
    assert isinstance(error, WriteContention), repr(error)
    assert error.attempts == 1
    assert isinstance(error.__cause__, Exception) and type(error.__cause__).__module__.split(".")[0] in (
        "ZODB",
        "relstorage",
        "transaction",
    )
    assert "CODX_JUNIOR_DB_CONFLICT_DEADLINE" in str(error)
    # What conflicted is named: ZODB's ConflictError carries the user's oid and class.
    assert error.oid is not None or error.conflict, str(error)
    assert UserDB(database).get("same").full_name == "the other writer"  # nothing of the overtaken write


def test_a_conflict_within_the_deadline_is_retried_with_no_retry_count(conflict_database: Database) -> None:
    """db_conflict_retries=0 but a deadline left: the overtaken unit of work runs again and lands."""
    assert _overtaken_update(conflict_database) is None
    assert UserDB(conflict_database).get("same").full_name == "the overtaken writer"


def test_two_writers_on_one_user_get_success_or_write_contention_only(conflict_database: Database) -> None:
    users = UserDB(conflict_database)
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    start = threading.Barrier(2)

    def writer(index: int) -> None:
        start.wait()
        for i in range(30):
            try:
                users.update("same", full_name=f"writer {index} update {i}")
                outcome = "ok"
            except WriteContention:
                outcome = "WriteContention"
            except BaseException as exc:  # noqa: BLE001 - any other type is the failure
                outcome = f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
            with lock:
                outcomes[outcome] += 1

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(outcomes) <= {"ok", "WriteContention"}, dict(outcomes)
    assert sum(outcomes.values()) == 60


def test_write_contention_answers_503_with_retry_after() -> None:
    """Not 409: the request is fine; other writers kept the server from applying it in time."""
    app = FastAPI()
    add_exception_handler(app)

    @app.get("/busy")
    def busy() -> None:
        raise WriteContention(12, 30.4, "ConflictError: database conflict error", oid="0x2a", class_name="x.User")

    response = TestClient(app).get("/busy")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert "12 times in 30.4 s" in response.json()["detail"]


# -- lock waits that ran out: named, not retried -----------------------------------------------


@pytest.mark.postgres
def test_an_object_lock_wait_past_the_commit_lock_timeout_is_database_timeout(pg_dsn: str) -> None:
    """Another session holds a user's lock past db_commit_lock_timeout: DatabaseTimeout, not retried.

    (RelStorage's commit lock itself is waited for up to a fixed 10 minutes, whatever the
    setting: UnableToAcquireCommitLockError is mapped too, but not tested here.)
    """
    database = Database(CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=pg_dsn, db_commit_lock_timeout=1))
    users = UserDB(database)
    blocker = psycopg2.connect(pg_dsn)
    blocker.autocommit = True
    try:
        users.create(username="alice")
        with database.transaction() as uow:
            key = u64(uow.root[USERS_KEY].find_by_username("alice")._p_oid)  # RelStorage's lock on it
        with blocker.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (key,))
        with pytest.raises(DatabaseTimeout) as excinfo:
            users.update("alice", full_name="blocked")
        assert "CODX_JUNIOR_DB_COMMIT_LOCK_TIMEOUT" in str(excinfo.value)
        assert "an object" in str(excinfo.value) and "lock timeout" in str(excinfo.value)
        with blocker.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (key,))
        assert users.update("alice", full_name="after").full_name == "after"
    finally:
        blocker.close()
        database.close()


@pytest.mark.parametrize("backend", ["file", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_retry_names_the_object_it_conflicted_on(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    """The retry log names the oid of a ZODB conflict (bench/conflicts.py counts retries by index with it)."""
    database = Database(make_settings(backend, request, tmp_path))
    try:
        users = UserDB(database)
        alice = users.create(username="alice")
        attempts: list[bytes] = []

        def rename(uow: UnitOfWork) -> None:
            user = uow.root[USERS_KEY].users[alice.id]
            user.full_name = f"attempt {len(attempts) + 1}"
            attempts.append(user._p_oid)
            if len(attempts) == 1:  # another thread changes the same user first: this commit conflicts
                other = threading.Thread(target=users.update, args=("alice",), kwargs={"full_name": "meanwhile"})
                other.start()
                other.join()

        with caplog.at_level(logging.DEBUG, logger="db.database"):
            database.run(rename)
        retried = [r.getMessage() for r in caplog.records if r.getMessage().startswith("retrying unit of work")]
        assert len(attempts) == 2 and len(retried) == 1, retried
        assert retried[0].endswith(f"(attempt 1) on oid {oid_repr(attempts[0])}"), retried
        assert users.get("alice").full_name == "attempt 2"
    finally:
        database.close()
