"""docker-compose.yml, started for real.

The stack runs under docker-compose (v1, the Debian package) against rootful podman's Docker API,
with images built on this machine: ``eval "$(bash scripts/provision-testcontainers.sh)"`` sets the
engine up and builds the two base images (postgres:15 and a python:3.11-slim stand-in) from
Debian packages, since no registry is reachable. The codx-db image is built once per session from
the Dockerfile and removed at the end; each stack removes its containers and volumes.

podman here runs no systemd timers, so health checks never run by themselves: the tests run them
by hand (``podman healthcheck run``) until PostgreSQL is healthy, then compose sees it healthy.

In CI (CI=true) a missing engine or image fails these tests; elsewhere they are skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import IN_CI, ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"
BASE_IMAGES = ("docker.io/library/postgres:15", "docker.io/library/python:3.11-slim")
PROVISION = 'eval "$(bash scripts/provision-testcontainers.sh)"'
# The second one is issue 15's: a space, a slash, a plus and an equals sign, which broke both the
# DSN the compose file built and the host command's postgresql:// URI.
PASSWORDS = ["plainPassw0rd", "correct horse/+=9 battery"]


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def env_file_line(name: str, value: str) -> str:
    """A compose.env line as compose.env.example says to write it (single quotes, \\ and ' escaped)."""
    return f"{name}='" + value.replace("\\", "\\\\").replace("'", "\\'") + "'\n"


# -- the file alone --------------------------------------------------------------------------------


def test_docker_compose_file_is_valid(tmp_path: Path) -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        _unavailable("docker-compose is not installed (Debian package docker-compose; .ci/run installs it)")
    # The committed file reads credentials from compose.env, which is never committed.
    shutil.copy(COMPOSE_FILE, tmp_path / "docker-compose.yml")
    shutil.copy(ROOT / "compose.env.example", tmp_path / "compose.env")
    shutil.copy(ROOT / "Dockerfile", tmp_path / "Dockerfile")
    shutil.copytree(ROOT / "compose", tmp_path / "compose")
    result = subprocess.run(
        [compose, "--env-file", str(tmp_path / "compose.env"), "-f", str(tmp_path / "docker-compose.yml"), "config"],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    config = result.stdout
    assert "image: postgres:15\n" in config  # the major version only: minor releases are security fixes
    assert "pg_isready -q -h 127.0.0.1" in config and "start_period: 1m" in config
    assert "CODX_JUNIOR_DB_BACKEND: postgres" in config
    # The password is written once, in compose.env, and reaches libpq apart from the DSN.
    assert "PGPASSWORD: change-me" in config and "POSTGRES_PASSWORD: change-me" in config
    dsn = re.search(r"CODX_JUNIOR_DB_DSN: (.*)", config)
    assert dsn is not None and "password" not in dsn.group(1) and "change-me" not in dsn.group(1)
    assert "change-me" not in COMPOSE_FILE.read_text()
    # Tuning: RelStorage's temp tables on a tmpfs tablespace, created on first init, checked at open.
    assert "exec docker-entrypoint.sh postgres -c temp_tablespaces=codx_tmp" in config
    assert "- /var/lib/postgresql/tmp:size=256m\n" in config and "TUNING PLACEHOLDER" not in COMPOSE_FILE.read_text()
    assert f"- {tmp_path / 'compose' / 'initdb'}:/docker-entrypoint-initdb.d:ro" in config
    assert "CODX_JUNIOR_DB_PG_TEMP_TABLESPACE: codx_tmp" not in config  # an old volume must still start
    assert (
        "CREATE TABLESPACE codx_tmp LOCATION '/var/lib/postgresql/tmp';"
        in (ROOT / "compose" / "initdb" / "10-codx-tmp.sql").read_text()
    )
    # Volumes belong to the compose project: no fixed name shared by every checkout.
    assert config.endswith("volumes:\n  cache: {}\n  pgdata: {}\n\n") and "codx-db-pgdata" not in config


def test_dockerignore_keeps_secrets_and_history_out_of_the_image() -> None:
    # podman and docker both read .dockerignore; what it lets through is what the Dockerfile copies.
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*"  # everything is excluded unless listed
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    assert not {".git", "compose.env", ".env"} & allowed
    copied = set()
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            copied.update(Path(p).as_posix() for p in line.split()[1:-1])
    assert copied <= allowed, copied - allowed


# -- the stack, for real ---------------------------------------------------------------------------


def _run(
    args: list[str], env: dict[str, str], timeout: float = 180, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)  # type: ignore[call-overload, no-any-return]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Engine:
    """docker-compose and podman on this machine, and the codx-db image of this session."""

    def __init__(self, compose: str, podman: str, docker_host: str) -> None:
        self.compose = compose
        self.podman = podman
        self.docker_host = docker_host
        self.image = f"localhost/codx-db-test:{uuid.uuid4().hex[:12]}"
        self.tags: list[str] = []

    @property
    def env(self) -> dict[str, str]:
        # Only what compose needs: a POSTGRES_PASSWORD in the caller's environment would win
        # over compose.env.
        return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "DOCKER_HOST": self.docker_host}

    def podman_run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return _run([self.podman, *args], self.env, timeout=timeout)

    def build(self) -> None:
        # --layers=false: one image and no intermediate ones left behind (each session builds anew).
        result = self.podman_run("build", "--layers=false", "-q", "-t", self.image, str(ROOT), timeout=600)
        assert result.returncode == 0, f"building the codx-db image failed:\n{result.stderr[-3000:]}"

    def tag_for(self, project: str) -> None:
        # docker-compose v1 names the image of a `build:` service <project>_<service>; with that
        # tag present it uses the session's image instead of building again.
        tag = f"localhost/{project}_codx-db:latest"
        assert self.podman_run("tag", self.image, tag).returncode == 0
        self.tags.append(tag)

    def remove_images(self) -> None:
        for tag in [*self.tags, self.image]:
            self.podman_run("rmi", "--force", tag)


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    compose, podman = shutil.which("docker-compose"), shutil.which("podman")
    docker_host = os.environ.get("DOCKER_HOST", "")
    if compose is None or podman is None or not docker_host:
        _unavailable(f"docker-compose, podman and DOCKER_HOST are needed (run: {PROVISION})")
    assert compose is not None and podman is not None
    found = Engine(compose, podman, docker_host)
    if _run([compose, "version"], found.env, timeout=30).returncode != 0:
        _unavailable(f"docker-compose cannot run (run: {PROVISION})")
    ping = _run(
        ["curl", "-fsS", "--max-time", "5", "--unix-socket", docker_host.removeprefix("unix://"), "http://d/_ping"],
        found.env,
    )
    if ping.returncode != 0:
        _unavailable(f"no container engine answers on DOCKER_HOST={docker_host} (run: {PROVISION})")
    missing = [image for image in BASE_IMAGES if found.podman_run("image", "exists", image).returncode != 0]
    if missing:
        _unavailable(f"base images missing: {', '.join(missing)} (run: {PROVISION})")
    found.build()
    try:
        yield found
    finally:
        found.remove_images()


class Stack:
    """One compose project: its own env file, host port, containers and volumes."""

    def __init__(self, engine: Engine, directory: Path, password: str) -> None:
        self.engine = engine
        self.password = password
        self.project = f"codxtest{uuid.uuid4().hex[:10]}"
        self.port = _free_port()
        self.env_file = directory / "compose.env"
        self.env_file.write_text(
            "POSTGRES_USER=codx\n"
            + env_file_line("POSTGRES_PASSWORD", password)
            + "POSTGRES_DB=codx\n"
            + f"CODX_DB_PG_PORT={self.port}\n"
        )
        engine.tag_for(self.project)

    def __call__(self, *args: str, input: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        command = [self.engine.compose, "-p", self.project, "-f", str(COMPOSE_FILE), "--env-file", str(self.env_file)]
        return _run([*command, *args], self.engine.env, timeout=timeout, cwd=ROOT, input=input)

    def ok(self, *args: str, input: str | None = None) -> str:
        result = self(*args, input=input)
        assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def codx_db(self, *args: str, input: str | None = None) -> str:
        return self.ok("run", "--rm", "-T", "codx-db", *args, input=input)

    def up_postgres(self) -> None:
        self.ok("up", "-d", "postgres")
        container = self.ok("ps", "-q", "postgres").strip()
        assert container, "compose started no postgres container"
        # Health checks by hand (no systemd timers under this podman): compose's
        # `depends_on: condition: service_healthy` then sees the status the check recorded.
        deadline = time.monotonic() + 90
        while True:
            check = self.engine.podman_run("healthcheck", "run", container, timeout=30)
            if check.returncode == 0:
                return
            if time.monotonic() > deadline:
                logs = self("logs", "postgres").stdout[-3000:]
                pytest.fail(f"postgres never became healthy: {check.stdout}{check.stderr}\n{logs}")
            time.sleep(0.5)

    def volumes(self) -> list[str]:
        listed = self.engine.podman_run("volume", "ls", "--format", "{{.Name}}").stdout.split()
        return [name for name in listed if name.startswith(self.project + "_")]

    def destroy(self) -> None:
        self("down", "-v", "--remove-orphans", timeout=120)
        for volume in self.volumes():  # in case `down` itself failed
            self.engine.podman_run("volume", "rm", "--force", volume)


@pytest.fixture
def stack(engine: Engine, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    made = Stack(engine, tmp_path, request.param)
    try:
        yield made
    finally:
        made.destroy()


def host_command() -> str:
    """The host-side commands docker-compose.yml prints, as a shell script."""
    text = COMPOSE_FILE.read_text()
    block = text.split("# host-command-begin\n", 1)[1].split("# host-command-end", 1)[0]
    return "".join(line.removeprefix("#").removeprefix("   ") + "\n" for line in block.splitlines())


# In the app's container, after a write by codx-db: where PostgreSQL put the temp tables of
# RelStorage's sessions (still open: the Database is not closed) and of a plain session of the
# app's role (the server's temp_tablespaces), and which tablespaces exist.
TEMP_TABLESPACES = """
import os
import psycopg2
from db.user_db import UserDB
users = UserDB()
users.create(username="tmpfs-probe", email="tmpfs-probe@example.com")
conn = psycopg2.connect(os.environ["CODX_JUNIOR_DB_DSN"])
conn.autocommit = True
with conn.cursor() as cur:
    where = (
        "SELECT DISTINCT COALESCE(t.spcname, 'default') FROM pg_class c "
        "LEFT JOIN pg_tablespace t ON t.oid = c.reltablespace WHERE c.relpersistence = 't' AND c.relname = %s"
    )
    cur.execute(where, ("temp_store",))
    print("temp_store in", sorted(row[0] for row in cur.fetchall()))
    cur.execute("CREATE TEMP TABLE app_probe (x int)")
    cur.execute(where, ("app_probe",))
    print("app_probe in", sorted(row[0] for row in cur.fetchall()))
    cur.execute("SELECT spcname FROM pg_tablespace ORDER BY spcname")
    print("tablespaces", [row[0] for row in cur.fetchall()])
conn.close()
print("created", users.get("tmpfs-probe").username)
"""


AUTHENTICATE = """
import os
import sys
from db.user_db import UserDB
users = UserDB()
user = users.authenticate("alice", sys.stdin.readline().rstrip("\\n"))
wrong = users.authenticate("alice", "not her password")
print("authenticated", user.username if user else None, "wrong", wrong)
print("uid", os.getuid(), "cache writable", os.access("/var/cache/codx-db", os.W_OK))
"""


@pytest.mark.slow
@pytest.mark.compose
@pytest.mark.timeout(900)
@pytest.mark.parametrize("stack", PASSWORDS, indirect=True, ids=["plain", "spaces-slash-plus-equals"])
def test_compose_stack_end_to_end(stack: Stack, engine: Engine) -> None:
    stack.up_postgres()
    # Volumes are the project's own (<project>_pgdata), never a fixed global name.
    assert sorted(stack.volumes()) == [f"{stack.project}_cache", f"{stack.project}_pgdata"]

    info = stack.codx_db("info")
    assert "backend: postgres" in info and "host=postgres" in info and "users: 0" in info
    assert stack.password not in info

    # A user round trip through compose.
    stack.codx_db("user", "add", "alice", "--email", "alice@example.com", "--password-stdin", input="alice's pw 1\n")
    assert "alice@example.com" in stack.codx_db("user", "get", "alice")
    auth = stack.ok(
        "run", "--rm", "-T", "--entrypoint", "python", "codx-db", "-c", AUTHENTICATE, input="alice's pw 1\n"
    )
    assert "authenticated alice wrong None" in auth
    # The app runs as a non-root user, and can write its cache volume.
    assert "uid 999 cache writable True" in auth

    # down and up again: the data is still there (the volume outlives the containers).
    stack.ok("down")
    assert sorted(stack.volumes()) == [f"{stack.project}_cache", f"{stack.project}_pgdata"]
    stack.up_postgres()
    assert "alice@example.com" in stack.codx_db("user", "get", "alice")
    # The tmpfs came back empty: a write still works and its temp tables are on it (the start
    # command recreated the tablespace's PG_15_<catalog> directory).
    info = stack.codx_db("info")
    assert "users: 1" in info
    probe = stack.ok("run", "--rm", "-T", "--entrypoint", "python", "codx-db", "-c", TEMP_TABLESPACES)
    assert "temp_store in ['codx_tmp']" in probe and "app_probe in ['codx_tmp']" in probe, probe
    assert "'codx_tmp'" in probe.split("tablespaces", 1)[1] and "created tmpfs-probe" in probe, probe

    # From the host, with the command docker-compose.yml prints: no URL encoding of the password.
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HOME": os.environ.get("HOME", "/root"),
        "PYTHONPATH": str(ROOT),  # this checkout's codx-db
        "CODX_DB_PG_PORT": str(stack.port),
    }
    host = _run(["bash", "-euc", host_command()], env, input=stack.password + "\n", cwd=ROOT)
    assert host.returncode == 0, host.stderr
    assert "backend: postgres" in host.stdout and "users: 2" in host.stdout
    assert f"port={stack.port}" in host.stdout and stack.password not in host.stdout + host.stderr
