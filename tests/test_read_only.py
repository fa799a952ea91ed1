"""Reading a database file another process holds, or one this process may not write.

A FileStorage file serves one process at a time (its lock). ``db_read_only`` opens it read-only
instead: no lock, nothing created or changed, writes refused (ReadOnlyDatabase). The command
line falls back to it for the commands that only read (info, check, migrate without --apply,
user get/list/history) when the file is in use, so `codx-db user list` works beside a running
codx-api. Real processes, real files.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from db.database import Database
from db.errors import ConfigurationError, ReadOnlyDatabase
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB
from tests.conftest import ROOT

HOLD = (
    "import sys\n"
    "from db import db\n"
    "from db.user_db import UserDB\n"
    "users = UserDB(db)\n"
    "print('open', flush=True)\n"
    "for line in sys.stdin:\n"
    "    users.create(username=line.strip())\n"
    "    print('created', flush=True)\n"
)


def files(directory: Path) -> dict[str, tuple[int, int]]:
    """name -> (size, mtime_ns) of every file in ``directory``."""
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


@pytest.fixture
def path(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "users.fs"
    database = Database(CodxJuniorGlobalSettings.load(db_file_path=path))
    try:
        UserDB(database).create(username="alice", email="alice@example.com")
    finally:
        database.close()
    return path


@contextlib.contextmanager
def hold(path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process with the file open (as codx-api would), creating a user per stdin line."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD],
        env={**os.environ, "CODX_JUNIOR_DB_FILE_PATH": str(path)},
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "open"
    try:
        yield process
    finally:
        process.communicate("", timeout=60)


@pytest.fixture
def holder(path: Path) -> Iterator[subprocess.Popen[str]]:
    with hold(path) as process:
        yield process


def create_in(holder: subprocess.Popen[str], username: str) -> None:
    assert holder.stdin is not None and holder.stdout is not None
    holder.stdin.write(username + "\n")
    holder.stdin.flush()
    assert holder.stdout.readline().strip() == "created"


def test_a_read_only_database_reads_and_refuses_writes_changing_nothing(path: Path) -> None:
    before = files(path.parent)
    database = Database(CodxJuniorGlobalSettings.load(db_file_path=path, db_read_only=True))
    users = UserDB(database)
    try:
        assert users.get("alice").email == "alice@example.com"
        assert [user.username for user in users.iter_users()] == ["alice"]
        with pytest.raises(ReadOnlyDatabase, match="read-only") as caught:
            users.create(username="bob")
        assert "CODX_JUNIOR_DB_READ_ONLY" in str(caught.value)
        with pytest.raises(ReadOnlyDatabase):
            users.update("alice", full_name="Alice")
        assert users.count() == 1 and users.get("alice").full_name == ""
    finally:
        database.close()
    assert files(path.parent) == before  # no lock file, no index rewritten, not a byte appended


def test_read_only_reads_beside_a_process_that_holds_and_writes_the_file(
    path: Path, holder: subprocess.Popen[str]
) -> None:
    create_in(holder, "bob")
    database = Database(CodxJuniorGlobalSettings.load(db_file_path=path, db_read_only=True))
    try:
        users = UserDB(database)
        assert [user.username for user in users.iter_users()] == ["alice", "bob"]
        create_in(holder, "carol")  # written after the open: a snapshot does not see it
        assert users.find("carol") is None and users.count() == 2
    finally:
        database.close()
    again = Database(CodxJuniorGlobalSettings.load(db_file_path=path, db_read_only=True))
    try:
        assert UserDB(again).find("carol") is not None  # a new open sees it
    finally:
        again.close()


def test_read_only_refuses_a_missing_file_creating_nothing(tmp_path: Path) -> None:
    path = tmp_path / "nothing" / "users.fs"
    database = Database(CodxJuniorGlobalSettings.load(db_file_path=path, db_read_only=True))
    with pytest.raises(ConfigurationError, match=f"no database at {path}"):
        database.open()
    database.close()
    assert not path.parent.exists()


@pytest.mark.parametrize("backend", ["memory", "postgres"])
def test_read_only_is_for_the_file_backend(backend: str) -> None:
    extra = {"db_dsn": "host=127.0.0.1 dbname=none"} if backend == "postgres" else {}
    with pytest.raises(ConfigurationError, match="db_read_only"):
        CodxJuniorGlobalSettings.load(db_backend=backend, db_read_only=True, **extra)


def cli(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "db", *args],
        env={**os.environ, "CODX_JUNIOR_DB_FILE_PATH": str(path)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_cli_reads_a_file_in_use_and_still_refuses_to_write_it(path: Path, holder: subprocess.Popen[str]) -> None:
    create_in(holder, "bob")
    listed = cli(path, "user", "list")
    assert listed.returncode == 0, listed.stderr
    assert "alice" in listed.stdout and "bob" in listed.stdout
    assert f"in use by another process (pid {holder.pid})" in listed.stderr and "read-only" in listed.stderr
    for args in (["info"], ["check"], ["user", "get", "bob"], ["user", "history", "alice"], ["migrate"]):
        result = cli(path, *args)
        assert result.returncode == 0, (args, result.stderr)
        assert "Traceback" not in result.stderr
    info = cli(path, "info", "--json")
    assert '"users": 2' in info.stdout
    for args in (["user", "add", "dave", "--no-password"], ["check", "--repair"], ["user", "delete", "bob"]):
        result = cli(path, *args)
        assert result.returncode == 1, (args, result.stdout)
        assert f"in use by another process (pid {holder.pid})" in result.stderr
        assert "Traceback" not in result.stderr
    create_in(holder, "dave")  # the holder still writes: nothing above took its lock


def test_the_cli_without_a_holder_opens_read_write_as_before(path: Path) -> None:
    result = cli(path, "user", "list")
    assert result.returncode == 0 and "read-only" not in result.stderr


def test_a_file_the_holder_created_reads_without_a_stale_index_warning(tmp_path: Path) -> None:
    """The holder saved the index of its new file at its first byte: stale at once, expected, not news."""
    path = tmp_path / "fresh" / "users.fs"
    with hold(path) as holder:
        create_in(holder, "bob")
        listed = cli(path, "user", "list")
    assert listed.returncode == 0 and "bob" in listed.stdout, listed.stderr
    assert listed.stderr.splitlines() == [
        f"codx-db: note: {path} is in use by another process (pid {holder.pid}): reading it read-only, as it is now"
    ]


def test_authenticate_on_a_read_only_database_skips_the_rehash(tmp_path: Path) -> None:
    """A user imported with codx-junior's bcrypt hash is rehashed at its first login; on a read-only
    database that write raised ReadOnlyDatabase, and only for the right password (a wrong one gave
    None): a 503 that told the password was right."""
    import bcrypt

    settings = CodxJuniorGlobalSettings.load(db_backend="file", db_file_path=tmp_path / "users.fs")
    database = Database(settings)
    legacy = bcrypt.hashpw(b"old-codx-junior-pw", bcrypt.gensalt(rounds=4)).decode()
    UserDB(database).import_users([{"username": "bob", "password_hash": legacy}])
    database.close()
    before = files(tmp_path)
    reader = Database(settings.with_overrides(db_read_only=True))
    users = UserDB(reader)
    assert users.authenticate("bob", "old-codx-junior-pw") is not None
    assert users.authenticate("bob", "wrong") is None
    reader.close()
    assert files(tmp_path) == before
