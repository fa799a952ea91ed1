"""Generations: install, evolve the committed fixtures, failures, newer databases, concurrency, resume."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import ZODB
from ZODB.FileStorage import FileStorage

import migrations
from db.database import Database
from db.errors import GenerationError
from db.models import USERS_KEY, User, UserContainer, username_key
from db.settings import CodxJuniorGlobalSettings
from db.storage import open_storage
from db.user_db import UserDB
from migrations import runner
from migrations.runner import GENERATION_KEY
from tests.conftest import ROOT, run_cli, settings_env
from tests.fixtures.make_fixture import FIXTURE_USERS

FIXTURES = Path(__file__).parent / "fixtures"


# -- helpers ---------------------------------------------------------------------------------


def fixture_settings(
    name: str, backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> CodxJuniorGlobalSettings:
    """A copy of a committed fixture database, as a file or copied into a fresh PostgreSQL database."""
    copy = tmp_path / "fixture.fs"
    shutil.copy(FIXTURES / name, copy)
    if backend == "file":
        return CodxJuniorGlobalSettings.load(db_backend="file", db_file_path=copy)
    dsn = request.getfixturevalue("pg_dsn")
    settings = CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=dsn)
    source = FileStorage(str(copy), read_only=True)
    target = open_storage(settings)
    try:
        target.copyTransactionsFrom(source)
    finally:
        source.close()
        target.close()
    return settings


def stored_generation(settings: CodxJuniorGlobalSettings) -> int:
    zodb = ZODB.DB(open_storage(settings))
    try:
        with zodb.transaction() as conn:
            return conn.root().get(GENERATION_KEY, 0)
    finally:
        zodb.close()


def has_own(user: User, name: str) -> bool:
    """True if the stored state of ``user`` holds ``name`` (not just the class default)."""
    user._p_activate()
    return name in user.__dict__


FIXTURE_BACKENDS = [
    pytest.param("file", id="file"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


# -- a fresh database --------------------------------------------------------------------------


def test_fresh_database_is_stamped_at_the_latest_generation(database: Database) -> None:
    with database.transaction() as uow:
        assert uow.root[GENERATION_KEY] == migrations.GENERATION
        assert isinstance(uow.root[USERS_KEY].inactive, object) and uow.root[USERS_KEY].inactive is not None
    zodb = database.open()
    assert runner.status(zodb).up_to_date


def test_every_step_has_a_description() -> None:
    for generation in range(1, migrations.GENERATION + 1):
        step = runner.load_step(generation)
        assert step.description and not step.description.startswith("generation ")
    assert migrations.MINIMUM_GENERATION <= migrations.GENERATION


# -- the committed fixtures --------------------------------------------------------------------


@pytest.mark.parametrize("backend", FIXTURE_BACKENDS)
def test_generation0_fixture_evolves_to_latest(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    settings = fixture_settings("generation0.fs", backend, tmp_path, request)

    # The default policy refuses to open it, naming the command to run.
    with pytest.raises(GenerationError) as excinfo:
        Database(settings).open()
    assert "generation 0" in str(excinfo.value) and "codx-db migrate" in str(excinfo.value)

    status = run_cli(settings, "migrate")
    assert status.returncode == 0, status.stderr
    assert "current generation: 0" in status.stdout
    for generation in range(1, migrations.GENERATION + 1):
        assert f"{generation}  pending" in status.stdout
    assert runner.load_step(1).description in status.stdout

    dry = run_cli(settings, "migrate", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["applied"] == list(range(1, migrations.GENERATION + 1))
    assert stored_generation(settings) == 0

    applied = run_cli(settings, "migrate", "--apply")
    assert applied.returncode == 0, applied.stderr
    assert f"generation 1: {runner.load_step(1).description}" in applied.stderr  # progress
    assert stored_generation(settings) == migrations.GENERATION

    database = Database(settings)
    try:
        users = UserDB(database)
        assert users.count() == len(FIXTURE_USERS)
        for username, email, full_name, password, is_superuser, is_active in FIXTURE_USERS:
            user = users.get(username)
            assert (user.email, user.full_name, user.is_superuser, user.is_active) == (
                email,
                full_name,
                is_superuser,
                is_active,
            )
            assert user.role == ("admin" if is_superuser else "user")
            assert (user.avatar, user.theme, user.github, user.projects) == ("", "dim", "", ())
            assert user.disabled is (not is_active)
            if password is not None and is_active:
                assert users.authenticate(username, password) == user
        assert [u.username for u in users.list(active=False)] == ["frank"]
        assert users.find("temp-renamed") is None
    finally:
        database.close()

    again = run_cli(settings, "migrate")
    assert "up to date" in again.stdout


@pytest.mark.parametrize("backend", FIXTURE_BACKENDS)
def test_generation1_fixture_evolves_keeping_its_fields(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    settings = fixture_settings("generation1.fs", backend, tmp_path, request)
    # Below the minimum (generation 5: the lookup indexes), the default policy refuses to open it.
    database = Database(settings)
    try:
        with pytest.raises(GenerationError, match=r"run `codx-db migrate --apply`"):
            UserDB(database).get("alice")
    finally:
        database.close()

    assert run_cli(settings, "migrate", "--apply").returncode == 0
    database = Database(settings)
    try:
        users = UserDB(database)
        with database.transaction() as uow:
            assert set(uow.root[USERS_KEY].inactive) == {"frank"}
        assert [u.username for u in users.list(active=False)] == ["frank"]
        alice = users.get("alice")
        assert alice.avatar == "/avatars/alice.png" and alice.github == "alice-gh"
        assert [(p.project_id, p.permissions, p.children) for p in alice.projects] == [
            ("codx-junior", "tasks,coder", True),
            ("docs", "tasks", False),
        ]
        assert users.authenticate("alice", "alice-passw0rd") == alice
        # Writes keep the new index right.
        users.update("alice", disabled=True)
        assert [u.username for u in users.list(active=False)] == ["alice", "frank"]
    finally:
        database.close()


@pytest.mark.parametrize("policy", ["evolve", "minimum"])
def test_startup_policies(policy: str, tmp_path: Path) -> None:
    copy = tmp_path / "g0.fs"
    shutil.copy(FIXTURES / "generation0.fs", copy)
    settings = CodxJuniorGlobalSettings.load(db_file_path=copy, db_startup=policy)
    database = Database(settings)
    try:
        assert UserDB(database).get("admin").role == "admin"
    finally:
        database.close()
    expected = migrations.GENERATION if policy == "evolve" else migrations.MINIMUM_GENERATION
    assert stored_generation(settings) == expected


def test_migrate_to_a_given_generation(tmp_path: Path) -> None:
    copy = tmp_path / "g0.fs"
    shutil.copy(FIXTURES / "generation0.fs", copy)
    settings = CodxJuniorGlobalSettings.load(db_file_path=copy)
    result = run_cli(settings, "migrate", "--apply", "--to", "1", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["applied"] == [1]
    assert stored_generation(settings) == 1
    bad = run_cli(settings, "migrate", "--to", "99")
    assert bad.returncode == 1 and "target generation 99 does not exist" in bad.stderr


# -- failures --------------------------------------------------------------------------------


@pytest.fixture
def failing_step(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """A generation GENERATION+1 whose step writes, commits two batches, then fails."""
    generation = migrations.GENERATION + 1
    module = types.ModuleType(f"migrations.evolve{generation}")
    module.__doc__ = "A step that fails half-way (test)."

    def evolve(context: runner.EvolveContext) -> None:
        container = context.root[USERS_KEY]
        for user in context.iter_batched(list(container.users.values()), len(container.users)):
            user.full_name = "touched by the failing step"
            if user.username == "u5":
                raise RuntimeError("disk on fire")

    module.evolve = evolve  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(migrations, "GENERATION", generation)
    yield module


def _populate(database: Database, count: int) -> None:
    with database.transaction() as uow:
        container = uow.root[USERS_KEY]
        for i in range(count):
            container.add(User(id=f"{i:032x}", username=f"u{i}"))


def test_a_failing_step_raises_and_leaves_the_last_completed_generation(
    settings: CodxJuniorGlobalSettings, failing_step: types.ModuleType
) -> None:
    latest = migrations.GENERATION - 1
    database = Database(settings)
    zodb = database.open()  # installs and stamps the (patched) latest generation
    _populate(database, 8)
    with database.transaction() as uow:
        uow.root[GENERATION_KEY] = latest  # up to date for the real code; one step pending
    try:
        with pytest.raises(GenerationError) as excinfo:
            runner.evolve(zodb, batch_size=100)  # one batch: everything is rolled back
        message = str(excinfo.value)
        assert f"generation {latest + 1}" in message and "disk on fire" in message
        assert f"stays at generation {latest}" in message
        assert runner.status(zodb).current == latest
        with database.transaction() as uow:
            assert {u.full_name for u in uow.root[USERS_KEY].users.values()} == {""}
    finally:
        database.close()


def test_a_failing_batched_step_keeps_committed_batches_and_resumes(
    tmp_path: Path, failing_step: types.ModuleType
) -> None:
    settings = CodxJuniorGlobalSettings.load(db_file_path=tmp_path / "u.fs")
    database = Database(settings)
    database.open()
    _populate(database, 8)
    with database.transaction() as uow:
        uow.root[GENERATION_KEY] = migrations.GENERATION - 1
    database.close()
    with runner.open_for_migration(settings) as zodb:
        with pytest.raises(GenerationError):
            runner.evolve(zodb, batch_size=2)
        assert runner.status(zodb).current == migrations.GENERATION - 1
        with zodb.transaction() as conn:
            touched = [u for u in conn.root()[USERS_KEY].users.values() if u.full_name]
        # Batches committed before the failure stay; the generation is not stamped.
        assert 2 <= len(touched) < 8

        failing_step.evolve = lambda context: None  # type: ignore[attr-defined]  # "fixed"
        runner.evolve(zodb, batch_size=2)
        assert runner.status(zodb).up_to_date


def test_a_database_newer_than_the_code_is_refused(settings: CodxJuniorGlobalSettings) -> None:
    database = Database(settings)
    with database.transaction() as uow:
        uow.root[GENERATION_KEY] = migrations.GENERATION + 5
    database.close()
    if settings.db_backend == "memory":
        # A memory database dies with its Database: check the rule on an open ZODB instead.
        return
    with pytest.raises(GenerationError) as excinfo:
        Database(settings).open()
    message = str(excinfo.value)
    assert str(migrations.GENERATION + 5) in message and str(migrations.GENERATION) in message


def test_newer_database_refused_by_the_runner_directly() -> None:
    database = Database(CodxJuniorGlobalSettings.load(db_backend="memory"))
    zodb = database.open()
    with zodb.transaction() as conn:
        conn.root()[GENERATION_KEY] = migrations.GENERATION + 1
    with pytest.raises(GenerationError, match="newer than this code"):
        runner.on_open(zodb, "evolve")
    database.close()


# -- concurrency and interruption --------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.slow
def test_eight_processes_open_an_old_postgres_database_together(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    settings = fixture_settings("generation0.fs", "postgres", tmp_path, request)
    env = {**settings_env(settings), "CODX_JUNIOR_DB_STARTUP": "evolve"}
    start_at = time.time() + 3
    code = (
        "import logging, time\n"
        f"time.sleep(max(0, {start_at} - time.time()))\n"
        "logging.basicConfig(level=logging.INFO, format='%(name)s %(message)s')\n"
        "from db import db\nfrom db.user_db import UserDB\n"
        "print('users', UserDB(db).count()); db.close()\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(8)
    ]
    outputs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    assert all(out.strip() == f"users {len(FIXTURE_USERS)}" for out, _ in outputs)
    logs = "".join(err for _, err in outputs)
    for generation in range(1, migrations.GENERATION + 1):
        assert logs.count(f"evolved the database to generation {generation}\n") == 1, logs
    assert stored_generation(settings) == migrations.GENERATION


def _old_database_with_many_users(settings: CodxJuniorGlobalSettings, count: int) -> None:
    """A generation-0 database: users without the generation-1 attributes, no inactive index."""
    database = Database(settings)
    database.open()
    with database.transaction() as uow:
        container: UserContainer = uow.root[USERS_KEY]
        for i in range(count):
            user = User(id=f"{i:032x}", username=f"user{i:06d}", is_superuser=i % 10 == 0, is_active=i % 7 != 0)
            for name in ("avatar", "theme", "role", "github", "projects"):
                delattr(user, name)  # as generation 0 stored it: class defaults only
            container.add(user)
        del container.inactive  # back to the class defaults: no index, not complete
        del container.inactive_complete
        uow.root[GENERATION_KEY] = 0
    database.close()


@pytest.mark.parametrize("backend", FIXTURE_BACKENDS)
def test_an_interrupted_batched_step_resumes(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    from tests.conftest import make_settings

    settings = make_settings(backend, request, tmp_path).model_copy(update={"db_migrate_batch_size": 50})
    count = 6000
    _old_database_with_many_users(settings, count)
    env = {**settings_env(settings), "CODX_JUNIOR_DB_MIGRATE_BATCH_SIZE": "50"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "db", "migrate", "--apply"],
        env=env,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "1000 done" in line:
            proc.send_signal(signal.SIGKILL)  # in the middle of step 1, after 20 committed batches
            break
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    with runner.open_for_migration(settings) as zodb:
        assert runner.status(zodb).current == 0
        with zodb.transaction() as conn:
            done = sum(has_own(u, "role") for u in conn.root()[USERS_KEY].users.values())
        assert 1000 <= done < count

    resumed = subprocess.run(
        [sys.executable, "-m", "db", "migrate", "--apply"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"{count} done ({count}/{count})" in resumed.stderr
    database = Database(settings)
    try:
        users = UserDB(database)
        assert users.count() == count
        with database.transaction() as uow:
            container = uow.root[USERS_KEY]
            assert all(has_own(u, "role") for u in container.users.values())
            admins = sum(u.role == "admin" for u in container.users.values())
            assert admins == sum(1 for i in range(count) if i % 10 == 0)
            assert len(container.inactive) == sum(1 for i in range(count) if i % 7 == 0)
            assert username_key("user000000") in container.inactive
        assert users.get("user000010").role == "admin"
    finally:
        database.close()


def test_migrate_on_a_new_database_says_so_and_apply_installs_it(tmp_path: Path) -> None:
    settings = CodxJuniorGlobalSettings.load(db_file_path=tmp_path / "new.fs")
    status = run_cli(settings, "migrate")
    assert status.returncode == 1 and "no database at" in status.stderr  # a typo is not a database
    # A target that does not exist is refused before anything is opened: no database is made.
    refused = run_cli(settings, "migrate", "--apply", "--to", "99")
    assert refused.returncode == 1 and "target generation 99 does not exist" in refused.stderr
    assert not (tmp_path / "new.fs").exists()
    report = json.loads(run_cli(settings, "migrate", "--apply", "--json").stdout)
    assert report["current"] == migrations.GENERATION and report["pending"] == []
    assert stored_generation(settings) == migrations.GENERATION


def test_migrate_to_a_generation_below_the_database_says_generations_only_go_up(tmp_path: Path) -> None:
    """Not "up to date: nothing to do": a person asking for 5 on a generation-9 database wants to
    go back, which no step does (a backup does)."""
    settings = CodxJuniorGlobalSettings.load(db_file_path=tmp_path / "users.fs")
    assert run_cli(settings, "user", "add", "ann", "--no-password").returncode == 0
    for args in (("migrate", "--to", "5"), ("migrate", "--apply", "--to", "5")):
        result = run_cli(settings, *args)
        assert result.returncode == 1, result.stdout
        assert f"generation {migrations.GENERATION}" in result.stderr and "only go up" in result.stderr
        assert "Traceback" not in result.stderr
    assert stored_generation(settings) == migrations.GENERATION


def test_migrate_to_an_old_generation_where_there_is_no_database_creates_none(tmp_path: Path) -> None:
    """Before, `migrate --apply --to 3` on an empty location installed the code's generation and said
    "up to date" (found by a review); a new database is always installed at the code's generation."""
    settings = CodxJuniorGlobalSettings.load(db_file_path=tmp_path / "users.fs")
    result = run_cli(settings, "migrate", "--apply", "--to", "3")
    assert result.returncode == 1, result.stdout
    assert "no database" in result.stderr and f"generation {migrations.GENERATION}" in result.stderr
    assert not settings.db_file_path.exists()
