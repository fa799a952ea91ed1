"""A ``<filestorage>`` in a config file (``db_config_file``) opens like the file backend does."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from db.database import Database
from db.errors import ReadOnlyDatabase, StorageInUse
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB
from tests.conftest import ROOT, holding


def config_settings(tmp_path: Path, path: Path, extra: str = "") -> CodxJuniorGlobalSettings:
    config = tmp_path / "db.conf"
    config.write_text(f"<filestorage>\n  path {path}\n{extra}</filestorage>\n", encoding="utf-8")
    return CodxJuniorGlobalSettings.load(db_config_file=config, db_password_validators="")


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_the_database_and_its_side_files_are_private(tmp_path: Path, umask_022: None) -> None:
    """The file holds password hashes: 0600, whatever the umask (as with CODX_JUNIOR_DB_FILE_PATH)."""
    (tmp_path / "data").mkdir()
    path = tmp_path / "data" / "users.fs"
    database = Database(config_settings(tmp_path, path))
    try:
        UserDB(database).create(username="eve", password="Corr3ct-horse-battery")
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()}
    finally:
        database.close()
    modes.update({p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()})
    assert {"users.fs", "users.fs.lock", "users.fs.tmp", "users.fs.index"} <= set(modes)
    assert {name: mode for name, mode in modes.items() if mode & 0o077} == {}


def test_a_second_process_gets_storage_in_use(tmp_path: Path) -> None:
    path = tmp_path / "users.fs"
    settings = config_settings(tmp_path, path)
    assert settings.db_config_file is not None
    env = {"CODX_JUNIOR_DB_CONFIG_FILE": str(settings.db_config_file)}
    with holding(env) as holder, pytest.raises(StorageInUse, match=rf"in use by another process \(pid {holder.pid}\)"):
        Database(settings).open()


def test_a_read_only_filestorage_is_opened_read_only(tmp_path: Path) -> None:
    path = tmp_path / "users.fs"
    database = Database(config_settings(tmp_path, path))
    UserDB(database).create(username="eve")
    database.close()
    (tmp_path / "users.fs.lock").unlink()
    reader = Database(config_settings(tmp_path, path, "  read-only true\n"))
    try:
        assert UserDB(reader).count() == 1
        with pytest.raises(ReadOnlyDatabase):
            UserDB(reader).create(username="mallory")
    finally:
        reader.close()
    assert not (tmp_path / "users.fs.lock").exists()  # read-only takes no lock


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "db", *args],
        env={**os.environ, "CODX_JUNIOR_DB_CONFIG_FILE": str(config), "CODX_JUNIOR_DB_PASSWORD_VALIDATORS": ""},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_cli_reads_a_config_filestorage_in_use_read_only(tmp_path: Path) -> None:
    """As for CODX_JUNIOR_DB_FILE_PATH (tests/test_read_only.py): reading commands read it, writing ones refuse."""
    path = tmp_path / "users.fs"
    settings = config_settings(tmp_path, path)
    assert settings.db_config_file is not None
    database = Database(settings)
    UserDB(database).create(username="eve")
    database.close()
    with holding({"CODX_JUNIOR_DB_CONFIG_FILE": str(settings.db_config_file)}) as holder:
        listed = cli(settings.db_config_file, "user", "list")
        added = cli(settings.db_config_file, "user", "add", "bob", "--no-password")
    assert listed.returncode == 0 and "eve" in listed.stdout, listed.stderr
    assert "read-only" in listed.stderr
    assert added.returncode == 1 and f"in use by another process (pid {holder.pid})" in added.stderr


def test_reading_commands_create_no_database_where_the_config_points(tmp_path: Path) -> None:
    path = tmp_path / "users.fs"  # its directory exists: ZConfig refuses a path whose directory does not
    settings = config_settings(tmp_path, path)
    assert settings.db_config_file is not None
    for args in (["info"], ["user", "list"], ["check"]):
        result = cli(settings.db_config_file, *args)
        assert "Traceback" not in result.stderr, result.stderr
    assert not path.exists()
    info = cli(settings.db_config_file, "info")
    assert info.returncode == 0 and "empty" in info.stdout, info.stdout


def test_a_config_naming_a_link_locks_the_file_the_link_names(tmp_path: Path) -> None:
    """Two names, one file, one lock: a process on the real path and one on a config naming a link
    to it must not both write it (they corrupted it), and pack keeps the link."""
    (tmp_path / "vol").mkdir()
    real, link = tmp_path / "vol" / "users.fs", tmp_path / "link.fs"
    database = Database(CodxJuniorGlobalSettings.load(db_file_path=real, db_password_validators=""))
    UserDB(database).create(username="eve")
    database.close()
    link.symlink_to(real)
    in_use = r"in use by another process \(pid {}\)"
    with (
        holding({"CODX_JUNIOR_DB_FILE_PATH": str(real)}) as holder,
        pytest.raises(StorageInUse, match=in_use.format(holder.pid)),
    ):
        Database(config_settings(tmp_path, link)).open()
    settings = config_settings(tmp_path, link)
    assert settings.db_config_file is not None
    assert cli(settings.db_config_file, "pack").returncode == 0
    assert cli(settings.db_config_file, "user", "add", "carol", "--no-password").returncode == 0
    assert link.is_symlink()
    database = Database(CodxJuniorGlobalSettings.load(db_file_path=real))
    try:
        assert UserDB(database).find("carol") is not None
    finally:
        database.close()


def test_a_start_up_import_on_a_read_only_config_filestorage_starts(tmp_path: Path) -> None:
    """A database with users and no import record gets the record at its first start with
    import_from; on a read-only <filestorage> that write refused the start (a review)."""
    import asyncio
    import json

    from fastapi import FastAPI

    from db.fastapi import STATE_KEY, lifespan

    path = tmp_path / "users.fs"
    database = Database(CodxJuniorGlobalSettings.load(db_file_path=path))
    UserDB(database).create(username="old")
    database.close()
    source = tmp_path / "global_settings.json"
    source.write_text(json.dumps({"users": [{"username": "new"}]}))
    reader = Database(config_settings(tmp_path, path, "  read-only true\n"))

    async def start() -> int:
        async with lifespan(reader, import_from=source)(FastAPI()) as state:
            return await state[STATE_KEY].count()

    assert asyncio.run(start()) == 1
    reader.close()
