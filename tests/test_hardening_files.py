"""Files codx-db is given or writes (issue 11, items 4, 5, 7).

- A file that is not a FileStorage is never chmodded, locked, replaced or given side files.
- Every file written beside the database is private (0600) under a permissive umask, while
  it is being written too; what a killed pack leaves is removed by the next run.
- A full disk is a ``StorageFull`` naming the file and the free space, one clean CLI line,
  and the database reopens intact.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from ZODB.FileStorage.FileStorage import packed_version as FILESTORAGE_MAGIC

from db.database import Database
from db.errors import NotADatabaseFile, StorageFull
from db.settings import CodxJuniorGlobalSettings
from db.transfer import backup, copy_database, pack, restore
from db.user_db import UserDB
from tests.conftest import ROOT, mounted_tmpfs, settings_env

NOTES = b"my notes: nothing to do with codx-db\n"


def file_settings(path: Path) -> CodxJuniorGlobalSettings:
    return CodxJuniorGlobalSettings.load(db_backend="file", db_file_path=path)


def cli(
    env: dict[str, str], *args: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "db", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        input=stdin,
        timeout=timeout,
        preexec_fn=lambda: os.umask(0o022),  # a usual, permissive umask
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def listing(directory: Path) -> dict[str, int]:
    """Every file in ``directory`` with its mode."""
    return {p.name: mode(p) for p in sorted(directory.iterdir())}


def small_database(path: Path, users: int = 3) -> CodxJuniorGlobalSettings:
    settings = file_settings(path)
    database = Database(settings)
    try:
        user_db = UserDB(database)
        with database.transaction():
            for i in range(users):
                user_db.create(username=f"user{i:05d}", email=f"user{i:05d}@example.com")
    finally:
        database.close()
    return settings


def user_count(settings: CodxJuniorGlobalSettings) -> int:
    database = Database(settings)
    try:
        return UserDB(database).count()
    finally:
        database.close()


# -- item 4: a file that is not a database -------------------------------------------------------


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    directory = tmp_path / "documents"
    directory.mkdir()
    path = directory / "notes.txt"
    path.write_bytes(NOTES)
    path.chmod(0o644)
    return path


def assert_untouched(notes: Path) -> None:
    assert notes.read_bytes() == NOTES
    assert listing(notes.parent) == {"notes.txt": 0o644}


def test_a_file_that_is_not_a_database_is_never_modified(notes: Path) -> None:
    env = settings_env(file_settings(notes))
    for args in (["user", "list"], ["info"], ["check"], ["pack"], ["user", "add", "eve", "--no-password"]):
        result = cli(env, *args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr and "unexpected" not in result.stderr, lines
        assert str(notes) in lines[0] and "is not a FileStorage database file" in lines[0], lines
        assert_untouched(notes)

    with pytest.raises(NotADatabaseFile, match=r"notes\.txt is not a FileStorage database file"):
        UserDB(Database(file_settings(notes))).count()
    assert_untouched(notes)


def test_transfers_never_read_or_replace_a_file_that_is_not_a_database(notes: Path, tmp_path: Path) -> None:
    source = small_database(tmp_path / "db" / "users.fs")
    with pytest.raises(NotADatabaseFile):
        copy_database(source, notes, force=True)  # today: notes.txt was replaced by a database
    assert_untouched(notes)
    with pytest.raises(NotADatabaseFile):
        restore(notes, file_settings(tmp_path / "restored" / "users.fs"), force=True)
    assert_untouched(notes)
    with pytest.raises(NotADatabaseFile):
        copy_database(file_settings(notes), tmp_path / "copy.fs")
    with pytest.raises(NotADatabaseFile):
        backup(file_settings(notes), tmp_path / "backup.fs")
    with pytest.raises(NotADatabaseFile):
        pack(file_settings(notes))
    assert_untouched(notes)
    assert not (tmp_path / "copy.fs").exists() and not (tmp_path / "backup.fs").exists()

    env = settings_env(source)
    result = cli(env, "copy", "--to-file", str(notes), "--force")
    assert result.returncode == 1 and "is not a FileStorage database file" in result.stderr, result.stderr
    assert_untouched(notes)


def test_a_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo, 0o644)
    result = cli(settings_env(file_settings(fifo)), "user", "list", timeout=30)
    assert result.returncode == 1 and "is not a regular file" in result.stderr, result.stderr
    assert listing(tmp_path) == {"pipe": 0o644}


def test_an_empty_file_is_a_new_database(tmp_path: Path) -> None:
    """A 0-byte file is what a crash leaves between creating a database file and its first write."""
    path = tmp_path / "users.fs"
    path.touch(mode=0o600)
    env = settings_env(file_settings(path))
    result = cli(env, "user", "add", "eve", "--no-password")
    assert result.returncode == 0, result.stderr
    assert path.read_bytes()[:4] == FILESTORAGE_MAGIC
    assert user_count(file_settings(path)) == 1


# -- item 5: files beside the database are private ---------------------------------------------------


def test_side_files_are_private_under_a_permissive_umask(tmp_path: Path) -> None:
    path = tmp_path / "data" / "users.fs"
    env = settings_env(file_settings(path))
    assert cli(env, "user", "add", "eve", "--password-stdin", stdin="eve-passw0rd-1\neve-passw0rd-1\n").returncode == 0
    assert cli(env, "pack").returncode == 0
    files = listing(path.parent)
    assert {"users.fs", "users.fs.lock", "users.fs.tmp", "users.fs.index", "users.fs.old"} <= set(files)
    assert set(files.values()) == {0o600}, files


PACKER = """
import sys
from pathlib import Path
from db.settings import CodxJuniorGlobalSettings
from db.transfer import pack
print("packing", flush=True)
pack(CodxJuniorGlobalSettings.load(db_backend="file", db_file_path=Path(sys.argv[1])))
"""


def history_database(path: Path) -> CodxJuniorGlobalSettings:
    """A database with a lot of history (every user rewritten several times): a pack takes a while."""
    settings = small_database(path, users=3000)
    database = Database(settings)
    try:
        user_db = UserDB(database)
        for round_ in range(3):
            with database.transaction():
                for i in range(3000):
                    user_db.update(f"user{i:05d}", full_name=f"round {round_}")
    finally:
        database.close()
    return settings


def test_the_pack_file_is_private_while_written_and_a_killed_packs_leftover_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "data" / "users.fs"
    settings = history_database(path)
    pack_file = Path(f"{path}.pack")
    packer = subprocess.Popen(
        [sys.executable, "-c", PACKER, str(path)],
        cwd=ROOT,
        env=settings_env(settings),
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.umask(0o022),
    )
    try:
        assert packer.stdout is not None and packer.stdout.readline() == "packing\n"
        while not pack_file.exists() and packer.poll() is None:
            pass  # a busy wait: the .pack file exists only while the pack runs
        os.kill(packer.pid, signal.SIGSTOP)  # hold it there: the mode is read mid-pack
        assert pack_file.exists(), "the pack ended before its .pack file was seen: make the database bigger"
        assert mode(pack_file) == 0o600
    finally:
        packer.kill()
        packer.wait(timeout=30)
    assert pack_file.exists()  # what the killed pack left: a copy of the data

    result = cli(settings_env(settings), "user", "list", "--limit", "1")
    assert result.returncode == 0, result.stderr
    assert "left behind by a pack that did not finish" in result.stderr
    assert not pack_file.exists()
    assert user_count(settings) == 3000


def test_a_damaged_last_transaction_is_cut_into_a_private_file(tmp_path: Path) -> None:
    """A crash mid-commit (here: the file cut inside its last transaction, holding a password hash)."""
    path = tmp_path / "data" / "users.fs"
    settings = small_database(path)
    whole = path.stat().st_size
    env = settings_env(settings)
    assert cli(env, "user", "add", "eve", "--password-stdin", stdin="eve-passw0rd-1\neve-passw0rd-1\n").returncode == 0
    grown = path.stat().st_size
    with open(path, "r+b") as file:
        file.truncate(grown - 20)  # the last transaction (eve and her hash) loses its end

    result = cli(env, "user", "list")
    assert result.returncode == 0, result.stderr
    saved = Path(f"{path}.tr0")
    assert saved.exists() and mode(saved) == 0o600
    assert "incomplete transaction" in result.stderr
    assert b"argon2" in saved.read_bytes()  # the cut bytes held the hash: they must be private
    assert path.stat().st_size == whole
    assert set(listing(path.parent).values()) == {0o600}
    assert user_count(settings) == 3


# -- item 7: a full disk ------------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real, tiny file system (tmpfs, 384 KiB) mounted inside the test's directory."""
    with mounted_tmpfs(tmp_path, "384k") as mount_point:
        yield mount_point


def test_a_full_disk_is_a_clean_error_and_the_database_reopens_intact(tiny_disk: Path) -> None:
    path = tiny_disk / "users.fs"
    settings = file_settings(path)
    database = Database(settings)
    created = 0
    try:
        users = UserDB(database)
        with pytest.raises(StorageFull) as excinfo:
            for i in range(100_000):
                users.create(username=f"user{i:05d}", full_name="x" * 190)
                created += 1
        message = str(excinfo.value)
        assert str(path) in message and "free:" in message and "bytes" in message
        # Aborting gave back the bytes of the failed transaction: fill them. The storage is
        # still usable: the next write fails the same clean way (no stuck buffer, no OSError).
        filler = tiny_disk / "filler"
        with open(filler, "wb", buffering=0) as file, pytest.raises(OSError):
            while True:
                file.write(b"\0" * 1024)
        with pytest.raises(StorageFull), database.transaction():
            # More than the slack left in the files' last pages.
            for i in range(30):
                users.create(username=f"more{i:02d}", full_name="z" * 190)
        assert users.count() == created
    finally:
        database.close()  # no traceback from FileStorage.close either
    assert created > 10

    env = settings_env(settings)
    # Opening frees a few pages (FileStorage empties its .tmp): add until the disk is full again.
    for attempt in range(50):
        result = cli(env, "user", "add", f"late{attempt:02d}", "--full-name", "y" * 190, "--no-password")
        if result.returncode != 0:
            break
        created += 1
    assert result.returncode == 1, "the disk never filled up"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("codx-db: error: no space left on the disk holding"), lines
    assert str(path) in lines[0]

    filler.unlink()
    assert user_count(settings) == created
    checked = cli(env, "check", "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # With space again (the file system grown to 1 MiB), writing works.
    subprocess.run(["mount", "-o", "remount,size=1m", str(tiny_disk)], check=True)
    assert cli(env, "user", "add", "late", "--no-password").returncode == 0, "no write after space was freed"
    assert user_count(settings) == created + 1


def test_a_config_file_filestorage_pointing_at_a_non_database_is_refused(notes: Path, tmp_path: Path) -> None:
    config = tmp_path / "storage.conf"
    config.write_text(f"<filestorage>\n  path {notes}\n</filestorage>\n")
    settings = CodxJuniorGlobalSettings.load(db_config_file=config)
    with pytest.raises(NotADatabaseFile, match="is not a FileStorage database file"):
        UserDB(Database(settings)).count()
    assert_untouched(notes)


def test_a_python_2_filestorage_is_named_as_such_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "old.fs"
    path.write_bytes(b"FS21" + b"\0" * 100)
    path.chmod(0o644)
    result = cli(settings_env(file_settings(path)), "user", "add", "eve", "--no-password")
    assert result.returncode == 1 and "Python 2 format (FS21)" in result.stderr and "zodbupdate" in result.stderr
    assert listing(tmp_path) == {"old.fs": 0o644}


def test_a_file_that_cannot_be_opened_for_writing_is_named_and_nothing_is_left(tmp_path: Path) -> None:
    """An immutable database file (chattr +i: even root cannot write it): a named error, no side files made."""
    path = tmp_path / "users.fs"
    settings = CodxJuniorGlobalSettings.load(db_backend="file", db_file_path=path)
    database = Database(settings)
    UserDB(database).create(username="alice")
    database.close()
    for side in tmp_path.glob("users.fs.*"):
        if side.suffix in (".lock", ".tmp"):
            side.unlink()
    before = sorted(p.name for p in tmp_path.iterdir())
    subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        env = {**os.environ, **settings_env(settings), "HOME": str(tmp_path)}

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "db", *args], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
            )

        result, listed = run("user", "add", "bob", "--no-password"), run("user", "list")
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)
    assert result.returncode == 1
    assert "unexpected" not in result.stderr, result.stderr
    assert str(path) in result.stderr and "write" in result.stderr, result.stderr
    # A command that only reads reads it read-only, saying so.
    assert listed.returncode == 0 and "alice" in listed.stdout, listed.stderr
    assert f"{path} cannot be opened for writing" in listed.stderr and "read-only" in listed.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
