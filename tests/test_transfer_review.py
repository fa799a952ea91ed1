"""Defects a review found in copy, backup, restore and pack (one test or more per defect)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg2
import pytest
from psycopg2.extensions import make_dsn, parse_dsn

from db.database import Database
from db.errors import StorageInUse, TransferError
from db.ops.progress import QuietProgress
from db.settings import CodxJuniorGlobalSettings
from db.transfer import backup, copy_database, restore, target_settings
from db.user_db import UserDB
from tests.test_restore_force import add_users, usernames
from tests.test_transfer import file_settings, pg_settings, populate, stored_states

# -- a PostgreSQL target in use by an application --------------------------------------------------


def backup_of_new_and_pg_target_of_old(pg_dsn: str, tmp_path: Path) -> tuple[Path, CodxJuniorGlobalSettings]:
    """A backup holding new00000..new00002, and a PostgreSQL target holding old00000 and old00001."""
    live = file_settings(tmp_path / "live" / "users.fs")
    add_users(live, "new", 3)
    path = tmp_path / "backup.fs"
    assert backup(live, path).ok
    target = pg_settings(pg_dsn)
    add_users(target, "old", 2)
    return path, target


@pytest.mark.postgres
def test_restore_force_refuses_a_postgres_database_an_application_is_connected_to(pg_dsn: str, tmp_path: Path) -> None:
    """The application would keep its cache and lose later writes: refuse, name the sessions, write nothing."""
    path, target = backup_of_new_and_pg_target_of_old(pg_dsn, tmp_path)
    app = Database(target)
    try:
        UserDB(app).count()  # the application's sessions are open, its cache warm
        with pytest.raises(TransferError) as refused:
            restore(path, target, force=True)
        message = str(refused.value)
        assert "stop" in message and "nothing was written" in message
        assert "RS: " in message  # RelStorage's application_name for its sessions
        assert "session" in message
        secret = parse_dsn(pg_dsn).get("password")  # CI's server has one, the local one none
        assert not secret or f"password={secret}" not in message  # masked (password=***) if named at all
        assert usernames(target) == ["old00000", "old00001"]
    finally:
        app.close()
    # Once the application stopped, the same restore goes through.
    assert restore(path, target, force=True).ok
    assert usernames(target) == ["new00000", "new00001", "new00002"]


class ConnectsAfterCopy(QuietProgress):
    """An application that connects to the target while the copy runs (it waits for the startup lock)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn: Any = None

    def finish(self) -> None:
        self.conn = psycopg2.connect(self.dsn, application_name="late-app")


@pytest.mark.postgres
def test_restore_force_keeps_the_old_data_when_an_application_connects_during_the_copy(
    pg_dsn: str, tmp_path: Path
) -> None:
    path, target = backup_of_new_and_pg_target_of_old(pg_dsn, tmp_path)
    late = ConnectsAfterCopy(pg_dsn)
    try:
        with pytest.raises(TransferError, match=r"1 other session .*'late-app'.*nothing was replaced"):
            restore(path, target, force=True, progress=late)
    finally:
        late.conn.close()
    assert usernames(target) == ["old00000", "old00001"]


@pytest.mark.postgres
def test_copy_to_another_schema_of_the_same_database(pg_dsn: str, tmp_path: Path) -> None:
    """Another schema (the DSN's search_path) is not "the same database"; RelStorage cannot use it: say so."""
    conn = psycopg2.connect(pg_dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("CREATE SCHEMA tenant2")
    finally:
        conn.close()
    source = pg_settings(pg_dsn)
    populate(source)
    tenant = make_dsn(pg_dsn, options="-c search_path=tenant2")
    with pytest.raises(TransferError) as refused:
        copy_database(source, target_settings(dsn=tenant))
    message = str(refused.value)
    assert "same database" not in message
    assert "the schema tenant2" in message and "public" in message and "nothing was written" in message
    conn = psycopg2.connect(pg_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'tenant2'")
            assert cur.fetchone()[0] == 0  # nothing created there
    finally:
        conn.close()
    with pytest.raises(TransferError, match="same database"):
        copy_database(source, target_settings(dsn=make_dsn(pg_dsn, host="localhost")), force=True)


# -- a <filestorage> config file as a copy target ----------------------------------------------------


def filestorage_config(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<filestorage>\n{body}\n</filestorage>\n", encoding="utf-8")
    return path


class FailsAfterCopy(QuietProgress):
    """The copy is written, then the process fails (as a kill or a full disk would)."""

    def finish(self) -> None:
        raise RuntimeError("stopped after the copy")


class SourceChangesAfterCopy(QuietProgress):
    """Someone writes to the source between the copy and its verification: the verification fails."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def finish(self) -> None:
        database = Database(self.source)
        try:
            UserDB(database).create(username="written-meanwhile")
        finally:
            database.close()


def test_copy_to_a_filestorage_config_leaves_nothing_when_it_fails_or_does_not_verify(tmp_path: Path) -> None:
    """A failed copy into a config's <filestorage> must not leave a partial database that reads as ok."""
    source = file_settings(tmp_path / "dev" / "users.fs")
    populate(source)
    target_file = tmp_path / "target" / "users.fs"
    target_file.parent.mkdir()  # ZConfig wants the file's directory to exist
    config = filestorage_config(tmp_path / "target.conf", f"path {target_file}")
    with pytest.raises(RuntimeError, match="stopped after the copy"):
        copy_database(source, target_settings(config_file=config), progress=FailsAfterCopy())
    assert not target_file.exists() or target_file.stat().st_size <= 4

    report = copy_database(source, target_settings(config_file=config), progress=SourceChangesAfterCopy(source))
    assert not report.ok
    assert not target_file.exists() or target_file.stat().st_size <= 4

    report = copy_database(source, target_settings(config_file=config))
    assert report.ok
    assert stored_states(file_settings(target_file)) == stored_states(source)
    assert target_file.stat().st_mode & 0o077 == 0

    read_only = filestorage_config(tmp_path / "read-only.conf", f"path {tmp_path / 'target' / 'ro.fs'}\nread-only true")
    with pytest.raises(TransferError, match="read-only <filestorage>: it cannot be a target"):
        copy_database(source, target_settings(config_file=read_only))
    assert not (tmp_path / "target" / "ro.fs").exists()


def test_copy_to_a_mappingstorage_config_is_refused_clearly(tmp_path: Path) -> None:
    source = file_settings(tmp_path / "dev" / "users.fs")
    add_users(source, "u", 2)
    config = tmp_path / "memory.conf"
    config.write_text("<mappingstorage>\n</mappingstorage>\n", encoding="utf-8")
    with pytest.raises(TransferError, match=r"MappingStorage.*cannot copy into.*--to-file.*nothing was written"):
        copy_database(source, target_settings(config_file=config))


# -- file targets: side files of the database, symlinks ------------------------------------------------


@pytest.mark.parametrize("suffix", [".pack", ".old", ".tr3", ".index.index_tmp"])
def test_backup_and_copy_refuse_a_side_file_of_the_database(suffix: str, tmp_path: Path) -> None:
    """FileStorage deletes or overwrites these names (next open, next pack): a backup there would be lost."""
    source = file_settings(tmp_path / "data" / "users.fs")
    add_users(source, "u", 2)
    side = tmp_path / "data" / f"users.fs{suffix}"
    link = tmp_path / "elsewhere" / "backup.fs"
    link.parent.mkdir()
    link.symlink_to(side)  # the same name reached through a symlink
    for target in (side, link):
        with pytest.raises(TransferError, match=r"side file of the database .*users\.fs.*choose another"):
            backup(source, target)
        with pytest.raises(TransferError, match=r"side file of the database .*users\.fs.*choose another"):
            copy_database(source, target)
    assert sorted(p.name for p in side.parent.iterdir()) == sorted(
        ["users.fs", "users.fs.index", "users.fs.lock", "users.fs.tmp"]
    )


def test_restore_and_copy_into_a_symlink_replace_the_file_it_points_to(tmp_path: Path) -> None:
    """A database reached through a symlink (into a mounted volume) is replaced there; the link stays."""
    real = tmp_path / "volume" / "users.fs"
    add_users(file_settings(real), "old", 2)
    link = tmp_path / "app" / "users.fs"
    link.parent.mkdir()
    link.symlink_to(real)
    other = file_settings(tmp_path / "other" / "users.fs")
    add_users(other, "new", 3)
    path = tmp_path / "backup.fs"
    assert backup(other, path).ok

    assert restore(path, file_settings(link), force=True).ok
    assert link.is_symlink() and link.resolve() == real
    assert usernames(file_settings(real)) == ["new00000", "new00001", "new00002"]

    add_users(other, "more", 1)
    assert copy_database(other, link, force=True).ok
    assert link.is_symlink()
    assert usernames(file_settings(real)) == ["more00000", "new00000", "new00001", "new00002"]
    assert not list(link.parent.glob("users.fs.*"))  # nothing written beside the link


# -- backup files: no lock left beside them; a second backup to the same path -------------------------


def test_a_backup_leaves_no_lock_file_and_a_concurrent_backup_is_named_as_such(tmp_path: Path) -> None:
    from zc.lockfile import LockFile

    source = file_settings(tmp_path / "data" / "users.fs")
    add_users(source, "u", 2)
    first = tmp_path / "backups" / "first.fs"
    assert backup(source, first).ok
    assert not Path(f"{first}.lock").exists()
    assert sorted(p.name for p in first.parent.iterdir()) == ["first.fs", "first.fs.index"]

    second = tmp_path / "backups" / "second.fs"
    running = LockFile(f"{second}.lock")  # another backup to the same path, still writing
    try:
        with pytest.raises(StorageInUse) as refused:
            backup(source, second)
    finally:
        running.close()
    message = str(refused.value)
    assert "another backup or copy" in message and str(second) in message
    assert "replacing its database" not in message
    assert not second.exists()
