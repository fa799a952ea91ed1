"""Issue 11, items 6, 8 and 10: a closed stdout, numeric arguments, capped output, empty databases.

Every test runs the real command line in a child process, on real files and real PostgreSQL.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from db.codx_junior import MAX_IMPORT_FILE_BYTES
from db.database import Database
from db.models import USERS_KEY, User, UserContainer
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB
from db.users.passwords import MAX_PASSWORD_LENGTH
from migrations.runner import FILESTORAGE_HEADER, GENERATION_KEY
from tests.conftest import ROOT, run_cli, settings_env

PASSWORD = "s3cret-Passw0rd"
EMPTY = "empty: no codx-db database here yet"


def _run(env: dict[str, str], *args: str, stdout: int, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "db", *args],
        env=env,
        cwd=ROOT,
        stdout=stdout,
        stderr=subprocess.PIPE,
        input=input,
        text=True,
        timeout=300,
    )


def run_with_closed_stdout(
    env: dict[str, str], *args: str, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI with stdout on a pipe whose reader has already gone (`codx-db ... | true`).

    The read end is closed before the child starts, so every write to stdout fails with
    EPIPE whatever the timing: the same as a reader that exits before the output comes.
    """
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return _run(env, *args, stdout=write_end, input=input)
    finally:
        os.close(write_end)


def assert_quiet_stderr(result: subprocess.CompletedProcess[str]) -> None:
    for word in ("Traceback", "BrokenPipe", "Exception ignored", "unexpected"):
        assert word not in result.stderr, result.stderr


# -- item 6: a reader that leaves early ----------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file database with two users (one with a password and history) and a backup of it."""
    directory = tmp_path_factory.mktemp("template")
    settings = CodxJuniorGlobalSettings.load(db_backend="file", db_file_path=directory / "users.fs")
    database = Database(settings)
    users = UserDB(database)
    users.create(username="alice", email="alice@example.com", password=PASSWORD)
    users.create(username="bob")
    users.update("bob", full_name="Bob B")
    database.close()
    result = run_cli(settings, "backup", str(directory / "backup.fs"))
    assert result.returncode == 0, result.stderr
    return directory


@pytest.fixture
def file_env(template: Path, tmp_path: Path) -> dict[str, str]:
    shutil.copy(template / "users.fs", tmp_path / "users.fs")
    shutil.copy(template / "backup.fs", tmp_path / "backup.fs")
    (tmp_path / "import.json").write_text(json.dumps({"users": [{"username": "dave"}]}), encoding="utf-8")
    return settings_env(CodxJuniorGlobalSettings.load(db_backend="file", db_file_path=tmp_path / "users.fs"))


PRINTING_COMMANDS = [
    pytest.param(("info",), id="info"),
    pytest.param(("check",), id="check"),
    pytest.param(("check", "--repair"), id="check-repair"),
    pytest.param(("migrate",), id="migrate"),
    pytest.param(("user", "get", "alice"), id="user-get"),
    pytest.param(("user", "list"), id="user-list"),
    pytest.param(("user", "history", "bob"), id="user-history"),
    pytest.param(("user", "add", "carol", "--no-password"), id="user-add"),
    pytest.param(("user", "update", "bob", "--full-name", "Robert"), id="user-update"),
    pytest.param(("user", "passwd", "alice", "--password-stdin"), id="user-passwd"),
    pytest.param(("user", "delete", "bob", "--yes"), id="user-delete"),
    pytest.param(("copy", "--to-file", "{tmp}/copy.fs"), id="copy"),
    pytest.param(("import-codx-junior", "{tmp}/import.json"), id="import"),
    pytest.param(("pack",), id="pack"),
    pytest.param(("backup", "{tmp}/new-backup.fs"), id="backup"),
    pytest.param(("restore", "{tmp}/backup.fs", "--force"), id="restore"),
]


@pytest.mark.parametrize("json_flag", [(), ("--json",)], ids=["text", "json"])
@pytest.mark.parametrize("command", PRINTING_COMMANDS)
def test_a_closed_stdout_is_not_an_error(
    command: tuple[str, ...], json_flag: tuple[str, ...], file_env: dict[str, str], tmp_path: Path
) -> None:
    """`codx-db ... | true`: the work is done, exit 0, no traceback (issue 11, item 6)."""
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in command]
    result = run_with_closed_stdout(file_env, *args, *json_flag, input=PASSWORD + "\n")
    assert result.returncode == 0, result.stderr
    assert_quiet_stderr(result)
    if command[0] == "backup":
        assert (tmp_path / "new-backup.fs").stat().st_size > 0  # the work was done
    if command[:2] == ("user", "add"):
        listed = _run(file_env, "user", "get", "carol", stdout=subprocess.PIPE)
        assert listed.returncode == 0, listed.stderr


@pytest.mark.parametrize(
    "command",
    [
        ("backup", "{tmp}/new-backup.fs"),
        ("copy", "--to-file", "{tmp}/copy.fs"),
        ("restore", "{tmp}/backup.fs", "--force"),
        ("import-codx-junior", "{tmp}/import.json"),
        ("user", "get", "nobody"),
    ],
    ids=lambda command: command[0] if command[0] != "user" else "error",
)
def test_closed_stdout_and_stderr_are_not_an_error(
    command: tuple[str, ...], file_env: dict[str, str], tmp_path: Path
) -> None:
    """`codx-db backup x 2>&1 | true`: progress lines on stderr meet the closed pipe too."""
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in command]
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "db", *args], env=file_env, cwd=ROOT, stdout=write_end, stderr=write_end, timeout=300
        )
    finally:
        os.close(write_end)
    assert result.returncode == (1 if command[0] == "user" else 0)
    if command[0] == "backup":
        assert (tmp_path / "new-backup.fs").stat().st_size > 0


def test_a_closed_stdout_keeps_the_exit_code_of_a_failure(file_env: dict[str, str]) -> None:
    """A failure still says so (exit 1, one line on stderr) when stdout is gone, even with --json."""
    missing = run_with_closed_stdout(file_env, "user", "get", "nobody", "--json")
    assert missing.returncode == 1
    assert_quiet_stderr(missing)
    assert "nobody" in missing.stderr


def test_a_closed_stdout_keeps_the_exit_code_of_check_problems(tmp_path: Path) -> None:
    settings = _file_settings(tmp_path)
    _database_with_many_users(settings, 3, unindexed=True)
    for json_flag in ((), ("--json",)):
        result = run_with_closed_stdout(settings_env(settings), "check", *json_flag)
        assert result.returncode == 1, result.stderr  # problems found: the answer is still 1
        assert_quiet_stderr(result)


# -- item 8: numeric arguments ------------------------------------------------------------------------


@pytest.mark.parametrize("days", ["nan", "NaN", "inf", "-inf", "1e308", "-1", "1e400", "abc"])
def test_pack_days_is_checked_by_the_parser(days: str, file_env: dict[str, str], tmp_path: Path) -> None:
    before = (tmp_path / "users.fs").read_bytes()
    result = _run(file_env, "pack", "--days", days, stdout=subprocess.PIPE)
    assert result.returncode == 2, result.stderr
    assert "--days" in result.stderr and "usage:" in result.stderr
    assert_quiet_stderr(result)
    assert (tmp_path / "users.fs").read_bytes() == before  # nothing was packed


def test_pack_keeps_a_century_of_history(file_env: dict[str, str]) -> None:
    """The largest --days allowed still packs (a pack time before 1970 keeps everything)."""
    result = _run(file_env, "pack", "--days", "36500", stdout=subprocess.PIPE)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("user", "list", "--limit", "nan"),
        ("user", "list", "--limit", "1e308"),
        ("user", "list", "--limit", "-1"),
        ("user", "list", "--limit", str(10**30)),
        ("user", "list", "--offset", "-1"),
        ("user", "list", "--offset", "inf"),
        ("user", "history", "alice", "--limit", "-1"),
        ("user", "history", "alice", "--limit", str(10**30)),
        ("migrate", "--to", "-1"),
        ("migrate", "--to", str(10**30)),
        ("migrate", "--to", "nan"),
    ],
)
def test_other_numeric_arguments_fail_cleanly(args: tuple[str, ...], file_env: dict[str, str]) -> None:
    """Guard: every other numeric argument gets a clear error (usage or codx-db), never a traceback."""
    result = _run(file_env, *args, stdout=subprocess.PIPE)
    assert result.returncode in (1, 2), result.stderr
    assert_quiet_stderr(result)
    assert result.stderr.count("error:") == 1, result.stderr


# -- item 8: deeply nested import files -----------------------------------------------------------------


@pytest.mark.parametrize("depth", [2_000, 200_000])
def test_deeply_nested_json_is_refused_naming_the_file(depth: int, tmp_path: Path) -> None:
    path = tmp_path / "global_settings.json"
    path.write_text('{"users": [' + "[" * depth + "]" * depth + "]}", encoding="utf-8")
    settings = _file_settings(tmp_path)
    result = run_cli(settings, "import-codx-junior", str(path))
    assert result.returncode == 1
    assert_quiet_stderr(result)
    assert str(path) in result.stderr and "nests too deeply" in result.stderr, result.stderr
    assert not settings.db_file_path.exists()  # the file is read before the database is opened


@pytest.mark.parametrize("kind", ["fifo", "device", "huge"])
def test_an_import_path_that_is_no_regular_json_file_is_refused_at_once(kind: str, tmp_path: Path) -> None:
    """A FIFO waited for a writer forever, /dev/zero filled memory: refused before reading, named."""
    path = tmp_path / "global_settings.json"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path = Path("/dev/zero")
    else:
        with open(path, "wb") as file:
            file.truncate(MAX_IMPORT_FILE_BYTES + 1)  # sparse: no disk used
    settings = _file_settings(tmp_path)
    result = run_cli(settings, "import-codx-junior", str(path), timeout=60)
    assert result.returncode == 1
    assert_quiet_stderr(result)
    expected = "larger than" if kind == "huge" else "not a regular file"
    assert str(path) in result.stderr and expected in result.stderr, result.stderr
    assert not settings.db_file_path.exists()


def test_a_password_on_stdin_is_read_bounded(tmp_path: Path) -> None:
    """--password-stdin read a line of any length into memory; now at most one past the limit."""
    from db.cli import Cli

    class CountingInput(io.StringIO):
        longest = 0

        def readline(self, size: int | None = -1, /) -> str:
            line = super().readline(-1 if size is None else size)
            CountingInput.longest = max(CountingInput.longest, len(line))
            return line

    stderr = io.StringIO()
    cli = Cli(Database(_file_settings(tmp_path)), stdin=CountingInput("x" * 5_000_000), stderr=stderr)
    assert cli.run(["user", "add", "ann", "--password-stdin"]) == 1
    assert "at most 1024 characters" in stderr.getvalue(), stderr.getvalue()
    assert CountingInput.longest <= MAX_PASSWORD_LENGTH + 2


# -- item 8: long lists are capped ----------------------------------------------------------------------


def _file_settings(tmp_path: Path) -> CodxJuniorGlobalSettings:
    return CodxJuniorGlobalSettings.load(db_backend="file", db_file_path=tmp_path / "data" / "users.fs")


def _database_with_many_users(settings: CodxJuniorGlobalSettings, count: int, unindexed: bool = False) -> None:
    """``count`` users written directly (fast); ``unindexed``: none of them in the username index."""
    database = Database(settings)
    try:
        with database.transaction() as uow:
            container: UserContainer = uow.root[USERS_KEY]
            for i in range(count):
                container.add(User(id=f"{i:032x}", username=f"user{i:06d}", is_active=i % 2 == 0))
            if unindexed:
                for key in list(container.by_username):
                    del container.by_username[key]
    finally:
        database.close()


def test_check_caps_the_problems_it_prints(tmp_path: Path) -> None:
    settings = _file_settings(tmp_path)
    _database_with_many_users(settings, 1_500, unindexed=True)
    text = run_cli(settings, "check")
    assert text.returncode == 1
    assert "problems: 1500" in text.stdout
    assert text.stdout.count("username-unindexed") <= 50
    assert "... and 1450 more" in text.stdout
    assert "codx-db check --repair" in text.stdout  # the generation is current: the indexes are the fix

    report = json.loads(run_cli(settings, "check", "--json").stdout)
    assert report["problem_count"] == 1500 and len(report["problems"]) == 1000

    repaired = run_cli(settings, "check", "--repair")
    assert repaired.returncode == 0, repaired.stderr
    assert "repaired (1500 fixes)" in repaired.stdout
    assert repaired.stdout.count("username: entry") <= 50 and "... and 1450 more" in repaired.stdout
    assert len(repaired.stdout.splitlines()) < 150


def _interrupt_generation_2(settings: CodxJuniorGlobalSettings) -> None:
    """What a killed `migrate --apply` from generation 1 leaves: half an inactive index, generation 1."""
    database = Database(settings)
    try:
        with database.transaction() as uow:
            container: UserContainer = uow.root[USERS_KEY]
            for key in list(container.inactive)[::2]:
                container.inactive.remove(key)
            container.inactive_complete = False
            uow.root[GENERATION_KEY] = 1
    finally:
        database.close()


def test_check_after_an_interrupted_migration_advises_migrate(tmp_path: Path) -> None:
    settings = _file_settings(tmp_path)
    _database_with_many_users(settings, 400)
    _interrupt_generation_2(settings)
    result = run_cli(settings, "check")
    assert result.returncode == 1
    assert "codx-db migrate --apply" in result.stdout, result.stdout
    assert "check --repair" not in result.stdout, result.stdout
    assert "... and" in result.stdout  # 100 problems: capped
    report = json.loads(run_cli(settings, "check", "--json").stdout)
    assert report["generation"] == 1 and report["remedy"] == "codx-db migrate --apply"

    # The advice works: the migration finishes and the check is clean.
    assert run_cli(settings, "migrate", "--apply").returncode == 0
    again = run_cli(settings, "check")
    assert again.returncode == 0 and "ok: no problems found" in again.stdout, again.stdout


def test_the_import_report_caps_its_lists(tmp_path: Path) -> None:
    count = 300
    users = [{"username": f"u{i:05d}"} for i in range(count)]
    logins = [{"username": f"ghost{i}", "password": ""} for i in range(count)]
    extra = {f"field{i}": 1 for i in range(count)}
    users[0].update(extra)
    path = tmp_path / "global_settings.json"
    path.write_text(json.dumps({"users": users, "user_logins": logins}), encoding="utf-8")
    settings = _file_settings(tmp_path)
    result = run_cli(settings, "import-codx-junior", str(path), "--dry-run")
    assert result.returncode == 0, result.stderr
    for line in result.stdout.splitlines():
        assert len(line) < 1000, line[:200]
    assert len(result.stdout.splitlines()) < 100
    assert f"created:      {count}" in result.stdout
    assert f"and {count - 20} more" in result.stdout
    full = json.loads(run_cli(settings, "import-codx-junior", str(path), "--dry-run", "--json").stdout)
    assert len(full["created"]) == count  # --json keeps every name


def test_user_get_caps_a_long_project_list(file_env: dict[str, str]) -> None:
    projects = [arg for i in range(120) for arg in ("--project", f"p{i:03d}=read")]
    assert _run(file_env, "user", "update", "bob", *projects, stdout=subprocess.PIPE).returncode == 0
    shown = _run(file_env, "user", "get", "bob", stdout=subprocess.PIPE)
    assert shown.returncode == 0, shown.stderr
    assert "... and 70 more" in shown.stdout
    assert "p119" not in shown.stdout
    full = json.loads(_run(file_env, "user", "get", "bob", "--json", stdout=subprocess.PIPE).stdout)
    assert len(full["projects"]) == 120
    history = _run(file_env, "user", "history", "bob", stdout=subprocess.PIPE)
    assert history.returncode == 0 and "projects: [] -> [" in history.stdout, history.stderr
    assert max(len(line) for line in history.stdout.splitlines()) < 400


# -- item 10: commands that read write nothing ----------------------------------------------------------


READ_ONLY = [("check",), ("check", "--repair"), ("migrate",), ("user", "list"), ("user", "get", "alice")]
READ_ONLY += [("user", "history", "alice"), ("pack",), ("backup", "{tmp}/backup.fs")]


def _children(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize("explicit", [True, False], ids=["configured-path", "default-path"])
def test_info_on_a_missing_file_creates_nothing(explicit: bool, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODX_JUNIOR_")}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    if explicit:
        env["CODX_JUNIOR_DB_FILE_PATH"] = str(tmp_path / "data" / "users.fs")
    result = _run(env, "info", stdout=subprocess.PIPE)
    assert result.returncode == 0, result.stderr
    assert EMPTY in result.stdout
    assert _children(tmp_path) == []  # no file, no directory, no side file
    as_json = json.loads(_run(env, "info", "--json", stdout=subprocess.PIPE).stdout)
    assert as_json["status"].startswith(EMPTY) and as_json["users"] == 0 and as_json["generation"] is None


@pytest.mark.parametrize("content", [None, b"", FILESTORAGE_HEADER], ids=["absent", "empty", "header-only"])
@pytest.mark.parametrize("command", READ_ONLY, ids=" ".join)
def test_read_only_commands_on_an_empty_file_write_nothing(
    content: bytes | None, command: tuple[str, ...], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    path = data / "users.fs"
    if content is not None:
        path.write_bytes(content)
    env = settings_env(CodxJuniorGlobalSettings.load(db_backend="file", db_file_path=path))
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in command]
    result = _run(env, *args, stdout=subprocess.PIPE)
    assert result.returncode == 1, result.stdout + result.stderr
    assert EMPTY in result.stderr, result.stderr
    assert_quiet_stderr(result)
    assert _children(data) == ([] if content is None else ["users.fs"])
    assert content is None or path.read_bytes() == content
    assert not (tmp_path / "backup.fs").exists()
    info = _run(env, "info", stdout=subprocess.PIPE)
    assert info.returncode == 0 and EMPTY in info.stdout, info.stdout + info.stderr
    assert _children(data) == ([] if content is None else ["users.fs"])


def _tables(dsn: str) -> list[str]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
            )
            return sorted(row[0] for row in cur.fetchall())
    finally:
        conn.close()


@pytest.fixture
def pg_env(pg_dsn: str) -> Iterator[dict[str, str]]:
    yield settings_env(CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=pg_dsn))


@pytest.mark.postgres
def test_read_only_commands_on_an_empty_postgres_database_create_no_tables(
    pg_dsn: str, pg_env: dict[str, str], tmp_path: Path
) -> None:
    info = _run(pg_env, "info", stdout=subprocess.PIPE)
    assert info.returncode == 0, info.stderr
    assert EMPTY in info.stdout
    for command in READ_ONLY:
        args = [arg.replace("{tmp}", str(tmp_path)) for arg in command]
        result = _run(pg_env, *args, stdout=subprocess.PIPE)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        assert EMPTY in result.stderr, (command, result.stderr)
    assert _tables(pg_dsn) == []
    # A later restore needs no --force: the database is still empty.
    backup = tmp_path / "backup.fs"
    source = CodxJuniorGlobalSettings.load(db_backend="file", db_file_path=tmp_path / "src.fs")
    UserDB(database := Database(source)).create(username="alice")
    database.close()
    assert run_cli(source, "backup", str(backup)).returncode == 0
    restored = _run(pg_env, "restore", str(backup), stdout=subprocess.PIPE)
    assert restored.returncode == 0, restored.stderr
    assert "alice" in _run(pg_env, "user", "list", stdout=subprocess.PIPE).stdout


@pytest.mark.postgres
def test_info_on_postgres_tables_without_a_root_creates_nothing(pg_dsn: str, pg_env: dict[str, str]) -> None:
    """RelStorage's tables but no root object (a process killed while creating it): still empty."""
    from db.storage import open_storage

    settings = CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=pg_dsn)
    open_storage(settings).close()  # RelStorage creates its schema, nothing else
    tables = _tables(pg_dsn)
    assert "object_state" in tables
    for command in (("info",), ("check",), ("user", "list")):
        result = _run(pg_env, *command, stdout=subprocess.PIPE)
        assert EMPTY in result.stdout + result.stderr, (command, result.stdout, result.stderr)
    conn = psycopg2.connect(pg_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM object_state")
            assert cur.fetchone() == (0,)
    finally:
        conn.close()


@pytest.mark.postgres
def test_a_database_holding_users_is_not_empty(pg_dsn: str, pg_env: dict[str, str]) -> None:
    settings = CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=pg_dsn)
    database = Database(settings)
    UserDB(database).create(username="alice")
    database.close()
    listed = _run(pg_env, "user", "list", stdout=subprocess.PIPE)
    assert listed.returncode == 0 and "alice" in listed.stdout, listed.stderr
    info = json.loads(_run(pg_env, "info", "--json", stdout=subprocess.PIPE).stdout)
    assert info["status"] == "ok" and info["users"] == 1


def test_user_commands_on_a_missing_file_create_nothing(tmp_path: Path) -> None:
    env = settings_env(_file_settings(tmp_path))
    for command in (("user", "list"), ("user", "get", "a"), ("user", "passwd", "a"), ("user", "delete", "a", "-y")):
        result = _run(env, *command, stdout=subprocess.PIPE, input=PASSWORD + "\n")
        assert result.returncode == 1 and EMPTY in result.stderr, (command, result.stderr)
    assert _children(tmp_path) == []
