"""Fixtures: every backend (memory, file, postgres) behind one ``settings``/``database`` pair.

PostgreSQL comes from testcontainers when a Docker-compatible engine answers (``DOCKER_HOST``,
e.g. the rootful podman that ``scripts/provision-testcontainers.sh`` starts), otherwise from
the server named by ``CODX_JUNIOR_TEST_PG_DSN`` (default: the local server on 127.0.0.1:5432).
Each test gets a fresh database on that server. With ``CI=true`` a Postgres test fails,
never skips, when no server can be had. The run ends with the source each Postgres test used.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from psycopg2.extensions import make_dsn, parse_dsn

from db.database import Database
from db.settings import CodxJuniorGlobalSettings

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TEST_PG_DSN = "host=127.0.0.1 port=5432 dbname=postgres user=postgres"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Settings must come from the tests, not from the developer's environment or .env file.
for _name in list(os.environ):
    if _name.startswith("CODX_JUNIOR_") and _name != "CODX_JUNIOR_TEST_PG_DSN":
        del os.environ[_name]


@dataclass
class PostgresServer:
    """A PostgreSQL server the tests may create databases on."""

    admin_dsn: str  # keyword DSN of a maintenance database
    source: str  # how it was obtained, for the report

    def create_database(self) -> str:
        """Create a fresh, empty database; return its DSN."""
        name = f"codx_test_{uuid.uuid4().hex[:12]}"
        with _admin(self.admin_dsn) as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        return make_dsn(self.admin_dsn, dbname=name)

    def execute(self, *statements: str) -> None:
        """Run administrative SQL (roles, ownership) on the server."""
        with _admin(self.admin_dsn) as cur:
            for statement in statements:
                cur.execute(statement)

    def drop_database(self, dsn: str) -> None:
        name = parse_dsn(dsn)["dbname"]
        with _admin(self.admin_dsn) as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class _admin:
    def __init__(self, dsn: str) -> None:
        self.conn = psycopg2.connect(dsn, connect_timeout=10)
        self.conn.autocommit = True

    def __enter__(self) -> Any:
        self.cur = self.conn.cursor()
        return self.cur

    def __exit__(self, *exc: object) -> None:
        self.cur.close()
        self.conn.close()


def _docker_engine_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=5)
        client.ping()
        client.close()
    except Exception:  # noqa: BLE001 - any failure means "no engine here"
        return False
    return True


_pg_failure: list[str] = []
PG_SOURCE = "pg_source"  # the user property naming a test's server (it reaches pytest-xdist's controller)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server per test process (each pytest-xdist worker): a testcontainer, else a running server."""
    if _docker_engine_answers():
        try:
            from testcontainers.community.postgres import PostgresContainer
        except ImportError:  # testcontainers < 4.14
            from testcontainers.postgres import PostgresContainer

        container = PostgresContainer("postgres:15", driver=None)
        container.start()
        try:
            admin = make_dsn(
                host=container.get_container_host_ip(),
                port=container.get_exposed_port(5432),
                dbname=container.dbname,
                user=container.username,
                password=container.password,
            )
            yield PostgresServer(admin, f"testcontainers postgres:15 ({container.image})")
        finally:
            container.stop()
        return
    dsn = os.environ.get("CODX_JUNIOR_TEST_PG_DSN", DEFAULT_TEST_PG_DSN)
    masked = make_dsn(dsn, password="***") if "password" in parse_dsn(dsn) else dsn
    try:
        psycopg2.connect(dsn, connect_timeout=5).close()
    except psycopg2.OperationalError as exc:
        message = f"no PostgreSQL for the tests (no Docker engine; {masked}: {exc})".strip()
        _pg_failure.append(message)
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    yield PostgresServer(make_dsn(dsn), f"local server ({masked}; no Docker engine answered)")


@pytest.fixture
def pg_dsn(pg_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test."""
    request.node.user_properties.append((PG_SOURCE, pg_server.source))
    dsn = pg_server.create_database()
    try:
        yield dsn
    finally:
        pg_server.drop_database(dsn)


@pytest.fixture
def pg_password_dsn(pg_server: PostgresServer, pg_dsn: str) -> Iterator[Callable[[str], str]]:
    """Make a login role with a given password owning the test database; return its DSN.

    A testcontainers server checks passwords (scram), the local one may trust: a test that
    puts a password in a DSN needs a role that really has it, to pass on both.
    """
    dbname = parse_dsn(pg_dsn)["dbname"]
    roles: list[str] = []

    def make(password: str) -> str:
        role = f"codx_role_{uuid.uuid4().hex[:10]}"
        quoted = password.replace("'", "''")
        pg_server.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{quoted}'", f'ALTER DATABASE "{dbname}" OWNER TO {role}')
        roles.append(role)
        return make_dsn(pg_dsn, user=role, password=password)

    yield make
    if roles:
        # The role owns the database and its tables: drop them first (pg_dsn's own drop
        # afterwards finds nothing), then the role, which is cluster-wide.
        pg_server.drop_database(pg_dsn)
        pg_server.execute(*(f"DROP ROLE IF EXISTS {role}" for role in roles))


BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("file", id="file"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]
PERSISTENT_BACKENDS = [p for p in BACKENDS if p.values[0] != "memory"]
# The contract also holds with db/pg_roundtrips.py switched off (db_pg_fast_reads=false).
CONTRACT_BACKENDS = [*BACKENDS, pytest.param("postgres-plain", id="postgres-plain", marks=pytest.mark.postgres)]


def make_settings(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, **extra: Any
) -> CodxJuniorGlobalSettings:
    """Settings for ``backend``, on a fresh file or PostgreSQL database."""
    if backend in ("postgres", "postgres-plain"):
        dsn = request.getfixturevalue("pg_dsn")
        if backend == "postgres-plain":
            extra = {"db_pg_fast_reads": False, **extra}
        return CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=dsn, **extra)
    if backend == "file":
        return CodxJuniorGlobalSettings.load(db_backend="file", db_file_path=tmp_path / "data" / "users.fs", **extra)
    return CodxJuniorGlobalSettings.load(db_backend="memory", **extra)


@pytest.fixture(params=CONTRACT_BACKENDS)
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> CodxJuniorGlobalSettings:
    """Settings for each backend in turn."""
    return make_settings(request.param, request, tmp_path)


@pytest.fixture(params=PERSISTENT_BACKENDS)
def persistent_settings(request: pytest.FixtureRequest, tmp_path: Path) -> CodxJuniorGlobalSettings:
    """Settings for the backends another process can open (file, postgres)."""
    return make_settings(request.param, request, tmp_path)


@pytest.fixture
def database(settings: CodxJuniorGlobalSettings) -> Iterator[Database]:
    """An open Database on each backend, closed after the test."""
    database = Database(settings)
    try:
        yield database
    finally:
        database.close()


def settings_env(settings: CodxJuniorGlobalSettings) -> dict[str, str]:
    """Environment variables that make a child process use the same settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODX_JUNIOR_")}
    env["CODX_JUNIOR_DB_BACKEND"] = settings.db_backend
    if settings.db_backend == "file":
        env["CODX_JUNIOR_DB_FILE_PATH"] = str(settings.db_file_path)
    if settings.db_dsn is not None:
        env["CODX_JUNIOR_DB_DSN"] = settings.db_dsn.get_secret_value()
    return env


def run_python(code: str, env: dict[str, str], timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run Python code in a child process from the repository root."""
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def run_cli(settings: CodxJuniorGlobalSettings, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``python -m db ARGS`` in a child process on the database ``settings`` describe."""
    return subprocess.run(
        [sys.executable, "-m", "db", *args],
        env=settings_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_cli_in_process(
    settings: CodxJuniorGlobalSettings, *args: str, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI in this process on a fresh ``Database(settings)``: a drop-in for ``run_cli``.

    The CLI closes the database at the end, as a process would. Tests that need a process
    boundary (environment-loaded settings, kill -9, file locks between processes, argv) keep
    ``run_cli``.
    """
    from db.cli import Cli

    stdout, stderr = io.StringIO(), io.StringIO()
    cli = Cli(Database(settings), stdin=io.StringIO(input or ""), stdout=stdout, stderr=stderr)
    code = cli.run(list(args))
    return subprocess.CompletedProcess(["codx-db", *args], code, stdout.getvalue(), stderr.getvalue())


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say where every Postgres test got its server (read from the reports: workers' too)."""
    sources: dict[str, str] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            for name, value in getattr(report, "user_properties", ()):
                if name == PG_SOURCE:
                    sources[report.nodeid] = value
    if not sources and not _pg_failure:
        return
    terminalreporter.section("PostgreSQL source per test")
    for message in _pg_failure:
        terminalreporter.write_line(f"NO SERVER: {message}")
    by_source: dict[str, list[str]] = {}
    for nodeid, source in sources.items():
        by_source.setdefault(source, []).append(nodeid)
    for source, nodeids in by_source.items():
        terminalreporter.write_line(f"{len(nodeids)} tests used: {source}")
        for nodeid in nodeids:
            terminalreporter.write_line(f"  {nodeid} -> {source}")


@contextlib.contextmanager
def holding(env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """Another process with the database ``env`` names open, until the block ends."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "from db import db; db.open(); print('open', flush=True); input()"],
        env={**os.environ, **env},
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        yield holder
    finally:
        holder.communicate("", timeout=60)


@contextlib.contextmanager
def mounted_tmpfs(tmp_path: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` (``384k``) inside the test's directory (needs root), unmounted afterwards."""
    mount_point = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        reason = f"cannot mount a tmpfs for the full-disk test (needs root): {result.stderr.strip()}"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
