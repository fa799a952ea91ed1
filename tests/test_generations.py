"""Generations per package: a second package's steps beside codx_db's, the typed errors, open hooks."""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ZODB

import migrations
from db import database as database_module
from db import open_hooks as open_hooks_module
from db.database import Database, register_open_hook
from db.errors import GenerationError, GenerationTooHigh, GenerationTooLow, StepFailed
from db.models import USERS_KEY, User
from db.settings import CodxJuniorGlobalSettings
from db.storage import open_storage
from migrations import SchemaManager, register, registry, runner
from migrations.registry import GENERATION_KEY, GENERATIONS_KEY
from tests.conftest import ROOT, settings_env
from tests.test_migrations import FIXTURE_BACKENDS, fixture_settings

# Each step records itself in the package's own data (root[name]["log"]) and, when
# CODX_TEST_STEP_LOG names a file, in that file too (one line per run, from any process).
STEP = '''"""{doc}"""

import os

from persistent.list import PersistentList
from persistent.mapping import PersistentMapping


def evolve(context):
    root = context.root
    if {name!r} not in root:
        root[{name!r}] = PersistentMapping(log=PersistentList())
    root[{name!r}]["log"].append({what!r})
    if os.environ.get("CODX_TEST_STEP_LOG"):
        with open(os.environ["CODX_TEST_STEP_LOG"], "a") as log:
            log.write({what!r} + "\\n")
{extra}
'''


class StepsPackage:
    """An application's generation steps, written as real files into an importable directory."""

    def __init__(self, where: Path, name: str) -> None:
        self.name = name
        self.path = where / name
        self.path.mkdir(parents=True)
        self.write("install", "Create the test package's data.")

    def set(self, generation: int, minimum: int = 0) -> None:
        (self.path / "__init__.py").write_text(f"GENERATION = {generation}\nMINIMUM_GENERATION = {minimum}\n")
        module = sys.modules.get(self.name)
        if module is not None:  # already imported: its numbers are read at each use
            importlib.reload(module)

    def write(self, step: str, doc: str, extra: str = "") -> None:
        text = STEP.format(doc=doc, name=self.name, what=step, extra=extra)
        (self.path / f"{step}.py").write_text(text)
        sys.modules.pop(f"{self.name}.{step}", None)
        importlib.invalidate_caches()

    def register(self) -> SchemaManager:
        manager = SchemaManager(package=self.name, steps=self.name)
        register(manager)
        return manager


@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made by the test end with it (the registry is process-wide)."""
    monkeypatch.setattr(registry, "_managers", dict(registry._managers))
    monkeypatch.setattr(registry, "_opened", False)
    monkeypatch.setattr(open_hooks_module, "_open_hooks", dict(open_hooks_module._open_hooks))


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_registry: None) -> Iterator[StepsPackage]:
    """A fresh steps package at generation 0 (install only), importable, not yet registered."""
    where = tmp_path / "packages"
    where.mkdir()
    monkeypatch.syspath_prepend(str(where))
    steps = StepsPackage(where, f"codx_test_{uuid.uuid4().hex[:8]}")
    steps.set(0)
    yield steps
    for name in [m for m in sys.modules if m == steps.name or m.startswith(steps.name + ".")]:
        del sys.modules[name]


def file_settings(tmp_path: Path, **extra: Any) -> CodxJuniorGlobalSettings:
    return CodxJuniorGlobalSettings.load(db_backend="file", db_file_path=tmp_path / "users.fs", **extra)


def stored(settings: CodxJuniorGlobalSettings, package: str | None = None) -> dict[str, Any]:
    """The generation keys and (if named) a package's log, read with plain ZODB (no hooks run)."""
    zodb = ZODB.DB(open_storage(settings))
    try:
        with zodb.transaction() as conn:
            root = conn.root()
            mapping = root.get(GENERATIONS_KEY)
            data = root.get(package) if package else None
            return {
                "legacy": root.get(GENERATION_KEY),
                "mapping": None if mapping is None else dict(mapping),
                "log": None if data is None else list(data["log"]),
                "names": sorted(u.username for u in root[USERS_KEY].users.values()) if USERS_KEY in root else None,
            }
    finally:
        zodb.close()


def open_and_close(settings: CodxJuniorGlobalSettings) -> None:
    database = Database(settings)
    try:
        database.open()
    finally:
        database.close()


def add_users(settings: CodxJuniorGlobalSettings, *names: str) -> None:
    database = Database(settings)
    try:
        with database.transaction() as uow:
            for i, name in enumerate(names):
                uow.root[USERS_KEY].add(User(id=f"{i:032x}", username=name))
    finally:
        database.close()


# -- a second package ------------------------------------------------------------------------------


def test_a_second_package_installs_into_an_existing_database_then_evolves(
    persistent_settings: CodxJuniorGlobalSettings, package: StepsPackage
) -> None:
    settings = persistent_settings.with_overrides(db_startup="evolve")
    add_users(settings, "ada", "bob")  # codx_db alone, as before the application registered
    assert stored(settings) == {
        "legacy": migrations.GENERATION,
        "mapping": {"codx_db": migrations.GENERATION},
        "log": None,
        "names": ["ada", "bob"],
    }

    package.register()
    open_and_close(settings)  # no entry for the package: it counts as new there, its install runs
    after_install = stored(settings, package.name)
    assert after_install["mapping"] == {"codx_db": migrations.GENERATION, package.name: 0}
    assert after_install["log"] == ["install"] and after_install["legacy"] == migrations.GENERATION

    package.set(1)
    package.write("evolve1", "Evolve the test package to 1.")
    open_and_close(settings)
    after_evolve = stored(settings, package.name)
    assert after_evolve["mapping"] == {"codx_db": migrations.GENERATION, package.name: 1}
    assert after_evolve["log"] == ["install", "evolve1"] and after_evolve["names"] == ["ada", "bob"]

    with runner.open_for_migration(settings) as zodb:
        plans = runner.statuses(zodb)
    assert [(p.package, p.current, p.up_to_date) for p in plans] == [
        ("codx_db", migrations.GENERATION, True),
        (package.name, 1, True),
    ]


@pytest.mark.parametrize("backend", FIXTURE_BACKENDS)
def test_an_int_only_database_evolves_through_4_beside_a_second_package(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, package: StepsPackage
) -> None:
    settings = fixture_settings("generation2.fs", backend, tmp_path, request)
    assert stored(settings)["legacy"] == 2 and stored(settings)["mapping"] is None  # one integer, as 0.1 wrote
    package.register()
    with runner.open_for_migration(settings) as zodb:
        ran = runner.evolve(zodb, 3)  # codx_db to 3 only; the new package is installed first
        assert [(s.package, s.generation) for s in ran] == [("codx_db", 3)]
        at_3 = stored_in(zodb)
        # The package's install created the mapping; codx_db's stamp mirrors its own key into it.
        assert at_3 == {"legacy": 3, "mapping": {package.name: 0, "codx_db": 3}}
        ran = runner.evolve(zodb, 4)
        assert [(s.package, s.generation) for s in ran] == [("codx_db", 4)]
        assert (
            runner.load_step(4).description == "Generations per package: the root gets the codx_db.generations mapping."
        )
    after = stored(settings, package.name)
    assert after["legacy"] == 4 and after["mapping"] == {package.name: 0, "codx_db": 4}
    assert after["log"] == ["install"] and after["names"]


def stored_in(zodb: ZODB.DB) -> dict[str, Any]:
    with zodb.transaction() as conn:
        root = conn.root()
        return {"legacy": root.get(GENERATION_KEY), "mapping": dict(root.get(GENERATIONS_KEY) or {})}


def test_the_legacy_key_stays_authoritative_for_codx_db(tmp_path: Path) -> None:
    settings = file_settings(tmp_path, db_startup="evolve")
    open_and_close(settings)
    zodb = ZODB.DB(open_storage(settings))
    try:
        with zodb.transaction() as conn:
            conn.root()[GENERATION_KEY] = 3  # as if an older codx-db had stamped it; the mapping says 4
        assert runner.status(zodb).current == 3
        # evolve4 and evolve5 are idempotent
        assert [s.generation for s in runner.evolve(zodb)] == list(range(4, migrations.GENERATION + 1))
        assert stored_in(zodb) == {"legacy": migrations.GENERATION, "mapping": {"codx_db": migrations.GENERATION}}
    finally:
        zodb.close()


# -- refusals and failures -------------------------------------------------------------------------


def test_a_package_newer_than_its_code_is_refused(tmp_path: Path, package: StepsPackage) -> None:
    settings = file_settings(tmp_path)
    package.set(1)
    package.register()
    open_and_close(settings)
    zodb = ZODB.DB(open_storage(settings))
    with zodb.transaction() as conn:
        conn.root()[GENERATIONS_KEY][package.name] = 3
    zodb.close()

    with pytest.raises(GenerationTooHigh) as excinfo:
        open_and_close(settings)
    error = excinfo.value
    assert (error.package, error.found, error.known) == (package.name, 3, 1)
    assert "newer than this code" in str(error) and f"upgrade {package.name}" in str(error)


def test_codx_db_newer_than_the_code_keeps_its_message(tmp_path: Path) -> None:
    settings = file_settings(tmp_path)
    open_and_close(settings)
    zodb = ZODB.DB(open_storage(settings))
    with zodb.transaction() as conn:
        conn.root()[GENERATION_KEY] = migrations.GENERATION + 5
    zodb.close()
    with pytest.raises(GenerationTooHigh) as excinfo:
        open_and_close(settings)
    assert (excinfo.value.package, excinfo.value.found) == ("codx_db", migrations.GENERATION + 5)
    assert str(excinfo.value) == (
        f"the database is at generation {migrations.GENERATION + 5}, newer than this code "
        f"(generation {migrations.GENERATION}): upgrade codx-db before opening it"
    )


def test_refuse_below_the_minimum_raises_generation_too_low(tmp_path: Path, package: StepsPackage) -> None:
    package.register()
    open_and_close(file_settings(tmp_path))  # the package installed at 0
    package.set(1, minimum=1)
    package.write("evolve1", "Evolve the test package to 1.")

    with pytest.raises(GenerationTooLow) as excinfo:
        open_and_close(file_settings(tmp_path, db_startup="refuse"))
    error = excinfo.value
    assert (error.package, error.found, error.minimum, error.known) == (package.name, 0, 1, 1)
    assert "codx-db migrate --apply" in str(error) and package.name in str(error)
    assert stored(file_settings(tmp_path), package.name)["log"] == ["install"]

    open_and_close(file_settings(tmp_path, db_startup="minimum"))  # the other policy evolves it
    assert stored(file_settings(tmp_path), package.name)["log"] == ["install", "evolve1"]


def test_codx_db_below_the_minimum_raises_generation_too_low(tmp_path: Path) -> None:
    settings = file_settings(tmp_path)
    open_and_close(settings)
    zodb = ZODB.DB(open_storage(settings))
    with zodb.transaction() as conn:
        conn.root()[GENERATION_KEY] = 0
    zodb.close()
    with pytest.raises(GenerationTooLow) as excinfo:
        open_and_close(settings)
    minimum = migrations.MINIMUM_GENERATION
    assert (excinfo.value.package, excinfo.value.found, excinfo.value.minimum) == ("codx_db", 0, minimum)
    assert str(excinfo.value).startswith(f"the database is at generation 0; this code needs at least {minimum}")


FAILING = """
    user = next(iter(root["codx_db.users"].users.values()))
    user.full_name = "written by a failing step"
    raise RuntimeError("disk on fire")
"""


def test_a_failing_step_of_a_second_package_leaves_codx_db_untouched(tmp_path: Path, package: StepsPackage) -> None:
    settings = file_settings(tmp_path, db_startup="evolve")
    package.register()
    add_users(settings, "ada")
    before = stored(settings, package.name)
    package.set(1)
    package.write("evolve1", "A step that writes into codx_db's users, then fails.", FAILING)

    with pytest.raises(StepFailed) as excinfo:
        open_and_close(settings)
    error = excinfo.value
    assert (error.package, error.generation, error.stays_at) == (package.name, 1, 0)
    assert isinstance(error.__cause__, RuntimeError)
    assert "disk on fire" in str(error) and f"{package.name} stays at generation 0" in str(error)
    assert stored(settings, package.name) == before  # nothing of the step is left, codx_db's keys included
    database = Database(file_settings(tmp_path, db_startup="refuse"))  # above the minimum: opens, warns
    try:
        with database.transaction() as uow:
            assert [u.full_name for u in uow.root[USERS_KEY].users.values()] == [""]
    finally:
        database.close()


def test_a_failing_install_leaves_a_new_database_empty(tmp_path: Path, package: StepsPackage) -> None:
    settings = file_settings(tmp_path)
    package.write("install", "An install that fails.", '    raise RuntimeError("no room")\n')
    package.register()
    with pytest.raises(StepFailed) as excinfo:
        open_and_close(settings)
    assert excinfo.value.stays_at is None and "nothing was installed" in str(excinfo.value)
    # All or nothing: codx_db's install ran first in the same transaction and was aborted too.
    assert stored(settings) == {"legacy": None, "mapping": None, "log": None, "names": None}

    package.write("install", "Create the test package's data.")
    open_and_close(settings)
    assert stored(settings, package.name)["mapping"] == {"codx_db": migrations.GENERATION, package.name: 0}


# -- registration ----------------------------------------------------------------------------------


def test_registration_is_idempotent_and_checked(
    package: StepsPackage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manager = package.register()
    register(SchemaManager(package=package.name, steps=package.name))  # the same again: nothing happens
    assert [m.package for m in registry.managers()] == ["codx_db", package.name]
    with pytest.raises(GenerationError, match="already registered"):
        register(SchemaManager(package=package.name, steps="somewhere.else"))
    with pytest.raises(GenerationError, match="cannot be imported"):
        register(SchemaManager(package="codx_other", steps="codx_test_no_such_package"))
    with pytest.raises(GenerationError, match="Python identifier"):
        register(SchemaManager(package="codx-api", steps=package.name))
    (package.path / "__init__.py").write_text("GENERATION = '1'\n")
    importlib.reload(sys.modules[package.name])
    with pytest.raises(GenerationError, match=r"GENERATION must be a whole number >= 0, not '1'"):
        register(SchemaManager(package="codx_bad", steps=package.name))
    package.set(2)  # evolve1.py and evolve2.py do not exist
    with pytest.raises(GenerationError, match=rf"{package.name}/evolve1.py is missing"):
        manager.load_step(1)

    open_and_close(file_settings(tmp_path))
    later = StepsPackage(package.path.parent, package.name + "_later")
    later.set(0)
    with caplog.at_level(logging.WARNING, logger="migrations.registry"):
        later.register()  # takes effect at the next open: logged, not raised
    assert "registered after a database was opened" in caplog.text
    open_and_close(file_settings(tmp_path))
    assert stored(file_settings(tmp_path), later.name)["log"] == ["install"]


def test_open_hooks_run_in_order_under_open_and_a_failing_one_refuses_it(
    tmp_path: Path, isolated_registry: None
) -> None:
    calls: list[str] = []
    register_open_hook("test first", lambda zodb, settings: calls.append("first"))
    register_open_hook("test second", lambda zodb, settings: calls.append(settings.kind))
    register_open_hook("test first", lambda zodb, settings: calls.append("first, replaced"))  # keeps its place
    settings = file_settings(tmp_path)
    open_and_close(settings)
    assert calls == ["first, replaced", "file"]
    # db/__init__.py wires codx-db's own hooks first: pickling's choice, then the generations.
    names = [name for name, _ in database_module.open_hooks()]
    assert names[:2] == ["codx-db fast pickling", "codx-db generations"]

    def refuse(zodb: ZODB.DB, settings: CodxJuniorGlobalSettings) -> None:
        raise GenerationError("refused by a hook")

    register_open_hook("test second", refuse)
    database = Database(settings)
    with pytest.raises(GenerationError, match="refused by a hook"):
        database.open()
    assert not database.is_open
    register_open_hook("test second", lambda zodb, settings: None)
    open_and_close(settings)  # the refused open released the file (no StorageInUse)


# -- two processes ---------------------------------------------------------------------------------


def _start_together(settings: CodxJuniorGlobalSettings, package: StepsPackage, log: Path, startup: str) -> str:
    env = {
        **settings_env(settings),
        "CODX_JUNIOR_DB_STARTUP": startup,
        "CODX_TEST_STEP_LOG": str(log),
        "PYTHONPATH": os.pathsep.join([str(package.path.parent), str(ROOT)]),
    }
    start_at = time.time() + 3
    code = (
        "import logging, time\n"
        f"time.sleep(max(0, {start_at} - time.time()))\n"
        "logging.basicConfig(level=logging.INFO, format='%(name)s %(message)s')\n"
        "from migrations import SchemaManager, register\n"
        f"register(SchemaManager(package={package.name!r}, steps={package.name!r}))\n"
        "from db import db\n"
        "db.open(); db.close()\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    return "".join(err for _, err in outputs)


@pytest.mark.postgres
@pytest.mark.slow
def test_two_processes_on_an_empty_postgres_database_run_each_step_once(
    pg_dsn: str, tmp_path: Path, package: StepsPackage
) -> None:
    settings = CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=pg_dsn)
    log = tmp_path / "steps.log"
    package.set(1)
    logs = _start_together(settings, package, log, "refuse")
    assert log.read_text().splitlines() == ["install"], logs
    assert logs.count("installed a new codx-db database") == 1, logs
    assert logs.count(f"installed {package.name} at generation 1\n") == 1, logs

    # Both packages one generation behind their code: each pending step runs in one process only.
    zodb = ZODB.DB(open_storage(settings))
    with zodb.transaction() as conn:
        conn.root()[GENERATION_KEY] = migrations.GENERATION - 1
    zodb.close()
    package.set(2)
    package.write("evolve2", "Evolve the test package to 2.")
    logs = _start_together(settings, package, log, "evolve")
    assert log.read_text().splitlines() == ["install", "evolve2"], logs
    assert logs.count(f"evolved the database to generation {migrations.GENERATION}\n") == 1, logs
    assert logs.count(f"evolved {package.name} to generation 2\n") == 1, logs
    after = stored(settings, package.name)
    assert after["mapping"] == {"codx_db": migrations.GENERATION, package.name: 2}
    assert after["legacy"] == migrations.GENERATION


def test_migrate_reports_each_registered_package(package: StepsPackage, tmp_path: Path) -> None:
    """An application's package (registered in the process running the command) is shown, pending and
    applied, in text and JSON; 'nothing to do' only when no package has a step pending."""
    import io
    import json

    from db.cli import Cli

    settings = file_settings(tmp_path)
    package.register()
    database = Database(settings)
    database.open()  # installs both packages at their latest (0 for the test package)
    database.close()
    package.write("evolve1", "Give every user a badge.")
    package.set(1)

    def migrate(*args: str) -> tuple[int, str]:
        out = io.StringIO()
        code = Cli(Database(settings), stdout=out, stderr=io.StringIO()).run(["migrate", *args])
        return code, out.getvalue()

    code, text = migrate()
    assert code == 0 and f"{package.name}: generation 0 -> 1" in text and "Give every user a badge." in text
    assert "nothing to do" not in text
    code, text = migrate("--json")
    [other] = json.loads(text)["packages"]
    assert (other["package"], other["current"], other["target"], other["applied"]) == (package.name, 0, 1, [])
    code, text = migrate("--apply", "--json")
    assert code == 0, text
    [other] = json.loads(text)["packages"]
    assert (other["current"], other["applied"]) == (1, [1]) and json.loads(text)["applied"] == []
    assert stored(settings, package.name)["log"] == ["install", "evolve1"]
    code, text = migrate()
    assert "up to date: nothing to do" in text
