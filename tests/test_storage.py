"""The storage core on every backend: units of work, processes, threads, locking, start-up."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from persistent.mapping import PersistentMapping

from db.database import Database
from db.errors import StorageInUse
from db.models import USERS_KEY, UserContainer
from db.settings import CodxJuniorGlobalSettings
from migrations import GENERATION
from migrations.runner import GENERATION_KEY
from tests.conftest import ROOT, holding, run_python, settings_env


def test_first_open_creates_root_containers(database: Database) -> None:
    with database.transaction() as uow:
        assert isinstance(uow.root[USERS_KEY], UserContainer)
        assert uow.root[GENERATION_KEY] == GENERATION


def test_committed_data_is_read_back(database: Database) -> None:
    with database.transaction() as uow:
        uow.root["greeting"] = "hello"
    with database.transaction() as uow:
        assert uow.root["greeting"] == "hello"


def test_exception_leaves_nothing_behind(database: Database) -> None:
    with pytest.raises(RuntimeError), database.transaction() as uow:
        uow.root["half"] = "written"
        raise RuntimeError("boom")
    with database.transaction() as uow:
        assert "half" not in uow.root


def test_nested_unit_joins_and_only_outer_commits(database: Database) -> None:
    with pytest.raises(ValueError), database.transaction() as outer:
        with database.transaction() as inner:
            assert inner is outer
            inner.root["inner"] = 1
        # The inner block ended without committing: an error now aborts both writes.
        raise ValueError("abort everything")
    with database.transaction() as uow:
        assert "inner" not in uow.root


def test_run_joins_an_open_unit(database: Database) -> None:
    with database.transaction() as uow:
        seen = database.run(lambda inner: inner)
        assert seen is uow


def test_two_threads_writing_the_same_object_both_land(database: Database) -> None:
    """Both threads change one object at once; the loser's conflict is retried."""
    with database.transaction() as uow:
        uow.root["counter"] = PersistentMapping({"n": 0})
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []
    attempts = []

    def increment(uow):  # type: ignore[no-untyped-def]
        attempts.append(1)
        counter = uow.root["counter"]
        value = counter["n"]
        if len(attempts) <= 2:
            barrier.wait(timeout=10)  # both have read the same value before either commits
        counter["n"] = value + 1

    def worker() -> None:
        try:
            database.run(increment, note="increment")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    with database.transaction() as uow:
        assert uow.root["counter"]["n"] == 2
    assert len(attempts) >= 3, "one of the two writers should have been retried"


def test_many_threads_never_share_a_connection(database: Database) -> None:
    from BTrees.OOBTree import OOBTree

    with database.transaction() as uow:
        uow.root["tree"] = OOBTree()  # resolves concurrent inserts of different keys
    seen: dict[int, set[int]] = {}
    lock = threading.Lock()

    def work(i: int) -> None:
        for j in range(10):

            def write(uow, j=j):  # type: ignore[no-untyped-def]
                with lock:
                    seen.setdefault(id(uow.connection), set()).add(threading.get_ident())
                uow.root["tree"][f"t{i}-{j}"] = j

            database.run(write)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    with database.transaction() as uow:
        assert len(uow.root["tree"]) == 60
    # A pooled connection may serve several threads over time, but never two at once;
    # the pool holds at most as many connections as threads ever ran at the same moment.
    assert len(seen) <= 6


def test_data_committed_in_one_process_is_read_by_another(
    persistent_settings: CodxJuniorGlobalSettings,
) -> None:
    env = settings_env(persistent_settings)
    writer = run_python(
        "from db import db\n"
        "def w(uow): uow.root['from_child'] = 'written by pid %d' % __import__('os').getpid()\n"
        "db.run(w); db.close()\n",
        env,
    )
    assert writer.returncode == 0, writer.stderr
    database = Database(persistent_settings)
    try:
        with database.transaction() as uow:
            assert uow.root["from_child"].startswith("written by pid")
    finally:
        database.close()


def test_import_opens_nothing(tmp_path: Path) -> None:
    path = tmp_path / "never" / "users.fs"
    env = {**os.environ, "CODX_JUNIOR_DB_FILE_PATH": str(path)}
    result = run_python("from db import db; assert not db.is_open; print('ok')", env)
    assert result.returncode == 0, result.stderr
    assert not path.parent.exists()


def test_file_backend_creates_private_files(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "users.fs"
    database = Database(CodxJuniorGlobalSettings.load(db_file_path=path))
    try:
        database.open()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700
    finally:
        database.close()


def test_file_backend_refuses_a_second_process(tmp_path: Path) -> None:
    path = tmp_path / "users.fs"
    with holding({"CODX_JUNIOR_DB_FILE_PATH": str(path)}) as holder:
        database = Database(CodxJuniorGlobalSettings.load(db_file_path=path))
        with pytest.raises(StorageInUse) as excinfo:
            database.open()
        message = str(excinfo.value)
        assert str(path) in message
        assert f"pid {holder.pid}" in message
        assert "postgres" in message
        # The CLI says the same in one line, exit code 1, for a command that writes (one that
        # only reads reads the file read-only: tests/test_read_only.py).
        cli = subprocess.run(
            [sys.executable, "-m", "db", "user", "add", "bob", "--no-password"],
            env={**os.environ, "CODX_JUNIOR_DB_FILE_PATH": str(path)},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 1
        assert f"in use by another process (pid {holder.pid})" in cli.stderr
        assert "Traceback" not in cli.stderr


@pytest.mark.postgres
@pytest.mark.slow
def test_eight_processes_open_an_empty_postgres_database_together(pg_dsn: str) -> None:
    env = {**os.environ, "CODX_JUNIOR_DB_BACKEND": "postgres", "CODX_JUNIOR_DB_DSN": pg_dsn}
    start_at = time.time() + 3  # every child waits for the same instant, then opens
    code = (
        "import time, os\n"
        f"time.sleep(max(0, {start_at} - time.time()))\n"
        "from db import db\n"
        "from db.user_db import UserDB\n"
        "UserDB(db).create(username='user%d' % os.getpid())\n"
        "db.close(); print('ok')\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    results = [p.communicate(timeout=180) for p in procs]
    failures = [err for (out, err), p in zip(results, procs, strict=True) if p.returncode != 0]
    assert not failures, failures[0]
    from db.user_db import UserDB

    database = Database(CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=pg_dsn))
    try:
        assert UserDB(database).count() == 8
        with database.transaction() as uow:
            assert uow.root[GENERATION_KEY] == GENERATION
    finally:
        database.close()


@pytest.mark.postgres
def test_relstorage_conf_opens_postgres(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODX_JUNIOR_DB_DSN", pg_dsn)
    settings = CodxJuniorGlobalSettings.load(db_config_file=ROOT / "relstorage.conf")
    assert settings.kind == "config"
    database = Database(settings)
    try:
        with database.transaction() as uow:
            uow.root["via"] = "relstorage.conf"
        assert type(database.open().storage).__name__ == "RelStorage"
    finally:
        database.close()
    # The same database opened through the postgres backend sees it.
    other = Database(CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=pg_dsn))
    try:
        with other.transaction() as uow:
            assert uow.root["via"] == "relstorage.conf"
    finally:
        other.close()


@pytest.mark.postgres
def test_relstorage_conf_works_with_zodbpack_and_zodbconvert(pg_dsn: str, tmp_path: Path) -> None:
    source = tmp_path / "users.fs"
    database = Database(CodxJuniorGlobalSettings.load(db_file_path=source))
    with database.transaction() as uow:
        uow.root["copied"] = True
    database.close()
    convert = tmp_path / "convert.conf"
    convert.write_text(
        f"%import relstorage\n<filestorage source>\n  path {source}\n</filestorage>\n"
        f"%include {ROOT / 'relstorage.conf'}\n"
    )
    env = {**os.environ, "CODX_JUNIOR_DB_DSN": pg_dsn}
    bin_dir = Path(sys.executable).parent
    result = subprocess.run(
        [str(bin_dir / "zodbconvert"), str(convert)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    result = subprocess.run(
        [str(bin_dir / "zodbpack"), "--days", "0", str(ROOT / "relstorage.conf")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    copy = Database(CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=pg_dsn))
    try:
        with copy.transaction() as uow:
            assert uow.root["copied"] is True
    finally:
        copy.close()


def test_memory_backend_is_private_to_its_database() -> None:
    a = Database(CodxJuniorGlobalSettings.load(db_backend="memory"))
    b = Database(CodxJuniorGlobalSettings.load(db_backend="memory"))
    try:
        with a.transaction() as uow:
            uow.root["only_in_a"] = 1
        with b.transaction() as uow:
            assert "only_in_a" not in uow.root
    finally:
        a.close()
        b.close()


def test_configure_switches_the_global_database(tmp_path: Path) -> None:
    code = (
        "from db import db\n"
        "from db.settings import CodxJuniorGlobalSettings\n"
        "db.configure(CodxJuniorGlobalSettings.load(db_backend='memory'))\n"
        "with db.transaction() as uow: uow.root['x'] = 1\n"
        "assert db.settings.db_backend == 'memory'\n"
        f"db.configure(db_file_path={str(tmp_path / 'u.fs')!r})\n"
        "assert db.settings.db_backend == 'file'\n"
        "with db.transaction() as uow: assert 'x' not in uow.root\n"
        "db.close(); print('ok')\n"
    )
    result = run_python(code, dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "u.fs").exists()


@pytest.mark.postgres
def test_keep_history_contradicting_the_schema_names_the_setting(pg_dsn: str) -> None:
    from db.errors import ConfigurationError

    Database(CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=pg_dsn)).open().close()
    with pytest.raises(ConfigurationError) as excinfo:
        Database(CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=pg_dsn, db_keep_history=True)).open()
    message = str(excinfo.value)
    assert "is history-free" in message and "CODX_JUNIOR_DB_KEEP_HISTORY=true" in message and "codx-db copy" in message


def test_a_file_that_cannot_be_created_names_the_setting(tmp_path: Path) -> None:
    from db.errors import ConfigurationError

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(ConfigurationError, match="db_file_path"):
        CodxJuniorGlobalSettings.load(db_file_path=blocker / "users.fs")
    with pytest.raises(ConfigurationError, match="db_file_path: cannot create"):
        Database(CodxJuniorGlobalSettings.load(db_file_path="/proc/codx-users.fs")).open()


def test_a_copied_context_never_joins_a_finished_unit_or_another_threads(database: Database) -> None:
    """Tasks and threads started inside a unit of work get a copy of its context variable."""
    import contextvars

    from db.user_db import UserDB

    users = UserDB(database)
    with database.transaction():
        users.create(username="a")
        copied = contextvars.copy_context()
    copied.run(users.create, username="b")  # the unit above has ended: this one runs alone
    assert users.count() == 2

    seen: list[object] = []
    with database.transaction():
        copied = contextvars.copy_context()
        thread = threading.Thread(target=copied.run, args=(lambda: seen.append(database.current()),))
        thread.start()
        thread.join()
    assert seen == [None]  # never the other thread's connection


def test_configure_with_overrides_validates_them() -> None:
    from db.errors import ConfigurationError

    database = Database(CodxJuniorGlobalSettings.load(db_backend="memory"))
    database.configure(database.settings, db_backend="postgres", db_dsn="postgresql://app:hunter2@h/codx")
    assert "hunter2" not in repr(database.settings) and "password=***" in database.settings.location
    with pytest.raises(ConfigurationError, match="CODX_JUNIOR_DB_POOL_SIZE"):
        database.configure(database.settings, db_pool_size=0)


def test_a_database_path_that_is_a_symlink_works_on_the_file_it_names(tmp_path: Path) -> None:
    """CODX_JUNIOR_DB_FILE_PATH is often a link into a mounted volume: pack and restore must
    replace the volume's file, not the link (later writes would land outside the volume)."""
    volume, app = tmp_path / "volume", tmp_path / "app"
    volume.mkdir()
    app.mkdir()
    real, link = volume / "users.fs", app / "users.fs"
    env = {**os.environ, "CODX_JUNIOR_DB_FILE_PATH": str(real), "CODX_JUNIOR_DB_PASSWORD_VALIDATORS": ""}

    def cli(*args: str, path: Path = link) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "db", *args],
            env={**env, "CODX_JUNIOR_DB_FILE_PATH": str(path)},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert cli("user", "add", "u1", "--no-password", path=real).returncode == 0
    link.symlink_to(real)
    assert CodxJuniorGlobalSettings.load(db_file_path=link).db_file_path == real
    for args in (["pack"], ["user", "add", "u2", "--no-password"], ["backup", str(tmp_path / "b.fs")]):
        result = cli(*args)
        assert result.returncode == 0, (args, result.stderr)
    assert cli("restore", str(tmp_path / "b.fs"), "--force").returncode == 0
    assert cli("user", "add", "u3", "--no-password").returncode == 0
    assert link.is_symlink() and sorted(p.name for p in app.iterdir()) == ["users.fs"]
    listed = cli("user", "list", path=real)
    assert all(name in listed.stdout for name in ("u1", "u2", "u3")), listed.stdout
