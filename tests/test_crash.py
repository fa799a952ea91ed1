"""Crashes and outages: kill -9 mid-commit, a torn FileStorage tail, PostgreSQL going away.

The outage tests never touch the machine's shared PostgreSQL (other tests use it at the same
time): they start a private server of their own (initdb into a temporary directory, a free
port), stop it, and start it again.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from psycopg2.extensions import make_dsn

from db.check import check
from db.database import Database
from db.errors import DatabaseUnavailable
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB
from tests.conftest import IN_CI, ROOT, settings_env

# -- kill -9 in the middle of a stream of commits -------------------------------------------------


@pytest.mark.slow
def test_kill_9_mid_stream_loses_nothing_acknowledged(persistent_settings: CodxJuniorGlobalSettings) -> None:
    """scripts/crash.py, briefly: writers killed with SIGKILL, then every acknowledged change is there."""
    result = subprocess.run(
        [sys.executable, "scripts/crash.py", "--rounds", "2", "--min-acks", "15", "--json"],
        env=settings_env(persistent_settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    report = json.loads(result.stdout)
    print(json.dumps(report, indent=2))  # the figures, for the test log
    for r in report["details"]:
        assert r["missing"] == [] and r["resurrected"] == [] and r["unexpected"] == [], r
        assert r["half_pairs"] == [], r
        assert r["check_ok"], r["check_problems"]
        assert r["acknowledged_users"] >= 15
    assert report["ok"] and result.returncode == 0, result.stderr[-2000:]


def test_a_torn_last_transaction_is_dropped_whole(tmp_path: Path) -> None:
    """A FileStorage file cut anywhere inside its last transaction reopens without it.

    This is what a power cut during a commit leaves behind. The writer is killed (no clean
    close, so no fresh index), then copies of its file are cut at several points.
    """
    path = tmp_path / "data" / "users.fs"
    code = (
        "import os\n"
        "from db import db\n"
        "from db.user_db import UserDB\n"
        "users = UserDB(db)\n"
        "sizes = []\n"
        "for i in range(6):\n"
        "    users.create(username=f'user{i}', email=f'user{i}@example.com')\n"
        f"    sizes.append(os.path.getsize({str(path)!r}))\n"
        "print(*sizes, flush=True)\n"
        "input()\n"  # hold the file open until killed
    )
    writer = subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, "CODX_JUNIOR_DB_FILE_PATH": str(path)},
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None
    sizes = [int(n) for n in writer.stdout.readline().split()]
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(30)
    original = path.read_bytes()
    last_start, last_end = sizes[-2], sizes[-1]
    assert len(original) == last_end

    for cut in (last_end - 1, (last_start + last_end) // 2, last_start + 9, last_start + 1):
        copy = tmp_path / f"cut{cut}" / "users.fs"
        copy.parent.mkdir(mode=0o700)
        copy.write_bytes(original[:cut])
        database = Database(CodxJuniorGlobalSettings.load(db_file_path=copy))
        try:
            users = UserDB(database)
            assert [u.username for u in users.list()] == [f"user{i}" for i in range(5)], cut
            assert users.find("user5") is None
            assert check(database).ok
            # The file is usable again: the next commit lands after the dropped tail.
            users.create(username="user5", email="user5@example.com")
            assert users.count() == 6
        finally:
            database.close()


# -- PostgreSQL outage, on a private server -------------------------------------------------------


class PrivatePostgres:
    """A throwaway PostgreSQL cluster of this test run: initdb, a free port, stop and start."""

    def __init__(self) -> None:
        self.bin_dir = _pg_bin_dir()
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        # Not under pytest's tmp_path: its parents are private to root, and the server runs
        # as the postgres user.
        self.dir = Path(tempfile.mkdtemp(prefix="codx-private-pg-"))
        if self.as_postgres:
            shutil.chown(self.dir, "postgres")
        self.data = self.dir / "data"
        self.port = _free_port()
        self.admin_dsn = f"host=127.0.0.1 port={self.port} dbname=postgres user=postgres connect_timeout=5"
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")

    def create_database(self) -> str:
        """A fresh database on this server; its DSN."""
        name = f"codx_outage_{uuid.uuid4().hex[:12]}"
        conn = psycopg2.connect(self.admin_dsn)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return make_dsn(self.admin_dsn, dbname=name)

    def start(self, *settings: str) -> None:
        """Start it; ``settings`` are extra ``name=value`` server settings."""
        extra = "".join(f" -c {setting}" for setting in settings)
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off{extra}"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.dir / "log"), "-w", "start")

    def stop(self, mode: str = "immediate") -> None:
        """``immediate`` is a crash as far as clients can tell: every connection drops at once."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def is_running(self) -> bool:
        status = [*self.as_postgres, str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "status"]
        return subprocess.run(status, capture_output=True).returncode == 0

    def destroy(self) -> None:
        if self.is_running():
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _run(self, tool: str, *args: str) -> None:
        result = subprocess.run(
            [*self.as_postgres, str(self.bin_dir / tool), *args], capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {result.stderr.strip() or result.stdout.strip()}")


def _pg_bin_dir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    found = os.environ.get("CODX_JUNIOR_TEST_PG_BIN") or (str(Path(candidates[-1]).parent) if candidates else "")
    if not found or not (Path(found) / "initdb").exists():
        raise FileNotFoundError("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
    return Path(found)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_private_postgres(*settings: str) -> PrivatePostgres:
    """A started private server (``settings``: ``name=value``); in CI a failure fails the test, else skips it."""
    try:
        server = PrivatePostgres()
        server.start(*settings)
    except (FileNotFoundError, RuntimeError) as exc:
        if IN_CI:
            pytest.fail(f"cannot start a private PostgreSQL: {exc}", pytrace=False)
        pytest.skip(f"cannot start a private PostgreSQL: {exc}")
    return server


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    server = start_private_postgres()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def outage_db(private_pg: PrivatePostgres) -> Iterator[tuple[PrivatePostgres, Database]]:
    if not private_pg.is_running():
        private_pg.start()
    dsn = private_pg.create_database()
    settings = CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=dsn)
    database = Database(settings)
    try:
        yield private_pg, database
    finally:
        if not private_pg.is_running():
            private_pg.start()
        database.close()


def _cli(database: Database, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "db", *args],
        env=settings_env(database.settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.postgres
@pytest.mark.slow
def test_postgres_outage_fails_clearly_then_recovers_in_the_same_process(
    outage_db: tuple[PrivatePostgres, Database],
) -> None:
    server, database = outage_db
    users = UserDB(database)
    users.create(username="before", email="before@example.com")
    users.create(username="also-before")

    server.stop("immediate")
    try:
        # Every kind of unit of work fails with the one documented error, several times over.
        for attempt in range(3):
            with pytest.raises(DatabaseUnavailable):
                users.create(username=f"during{attempt}")
            with pytest.raises(DatabaseUnavailable):
                users.get("before")
            with pytest.raises(DatabaseUnavailable):
                users.update("also-before", full_name="not now")
            with pytest.raises(DatabaseUnavailable):
                check(database)
        # The command line says it in one line, exit code 1, no traceback.
        for args in (("user", "get", "before"), ("check",), ("--json", "user", "list")):
            result = _cli(database, *args)
            assert result.returncode == 1, result
            assert "Traceback" not in result.stderr
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("codx-db: error:"), result.stderr
            assert "PostgreSQL" in lines[0] or "unreachable" in lines[0]
    finally:
        server.start()

    # Same process, same Database object: the next units of work succeed.
    deadline = time.monotonic() + 10
    while True:
        try:
            assert users.get("before").email == "before@example.com"
            break
        except DatabaseUnavailable:
            # The server accepts connections a moment after pg_ctl returns on a slow machine.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    users.create(username="after")
    assert users.update("also-before", full_name="now").full_name == "now"
    assert {u.username for u in users.list()} == {"before", "also-before", "after"}
    assert check(database).ok
    assert _cli(database, "user", "get", "after").returncode == 0


@pytest.mark.postgres
@pytest.mark.slow
def test_postgres_lost_in_the_middle_of_a_unit_of_work_is_database_unavailable(
    outage_db: tuple[PrivatePostgres, Database],
) -> None:
    server, database = outage_db
    UserDB(database).create(username="before")
    database.close()  # a fresh process-wide cache: the users must be loaded from the server
    fresh = Database(database.settings)
    try:
        with pytest.raises(DatabaseUnavailable), fresh.transaction() as uow:
            assert "codx_db.users" in uow.root  # the root is loaded; the users are not yet
            server.stop("immediate")
            UserDB(fresh).get("before")
    finally:
        server.start()
        fresh.close()
