"""pack's errors are codx-db's one line: ZODB's own log of a failed pack is not shown as well."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from db.database import Database
from db.errors import StorageFull
from db.transfer import pack
from db.user_db import UserDB
from tests.conftest import mounted_tmpfs
from tests.test_transfer import file_settings


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real tmpfs of 512 KiB inside the test's directory (needs root), unmounted afterwards."""
    with mounted_tmpfs(tmp_path, "512k") as mount_point:
        yield mount_point


def test_pack_on_a_full_disk_logs_no_zodb_traceback(small_disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = file_settings(small_disk / "users.fs")
    database = Database(settings)
    try:
        users = UserDB(database)
        with pytest.raises(StorageFull):
            for i in range(100_000):
                users.create(username=f"fill{i:05d}", full_name="x" * 190)
    finally:
        database.close()
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StorageFull):
        pack(settings)
    assert [r for r in caplog.records if r.name == "ZODB.DB"] == []
    # Only during codx-db's pack: ZODB's log is untouched afterwards.
    logging.getLogger("ZODB.DB").error("packing")
    assert [r.getMessage() for r in caplog.records if r.name == "ZODB.DB"] == ["packing"]


# -- PostgreSQL: RelStorage's garbage collection races concurrent commits (zodb/relstorage#325) ----
# A review packed a history-free database while two processes created users: 15 acknowledged users
# stayed in the indexes with their objects deleted (POSKeyError on every read). pack now runs only
# with no other session connected, under the startup lock (an application starting waits).


@pytest.mark.postgres
def test_a_postgresql_pack_is_refused_while_an_application_is_connected(pg_dsn: str) -> None:
    from db.errors import TransferError
    from db.settings import CodxJuniorGlobalSettings

    settings = CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=pg_dsn)
    app = Database(settings)
    users = UserDB(app)
    users.create(username="kept")
    users.create(username="gone")
    users.delete("gone")
    try:
        with pytest.raises(TransferError, match=r"in use: .*other session.*nothing was packed"):
            pack(settings)
        with pytest.raises(TransferError, match="codx-db pack"):
            pack(app)  # in the application itself: its own sessions are writers too
    finally:
        app.close()
    report = pack(settings)  # nobody connected: it runs
    assert report.records_after is not None and report.records_before is not None
    assert report.records_after < report.records_before
    assert UserDB(Database(settings)).get("kept").username == "kept"


def test_a_pack_with_nothing_to_pack_keeps_the_previous_old_file(tmp_path: Path) -> None:
    """ZODB's FileStorage.pack deletes <file>.old before it finds there is nothing to pack: a second
    pack in a row lost the copy from before the first (the README says it is kept)."""
    settings = file_settings(tmp_path / "users.fs")
    database = Database(settings)
    users = UserDB(database)
    for i in range(5):
        users.create(username=f"u{i}")
        users.update(f"u{i}", full_name="history to pack")
    database.close()
    original = settings.db_file_path.read_bytes()
    first = pack(settings)
    old = Path(f"{settings.db_file_path}.old")
    assert old.read_bytes() == original and any(".old" in note for note in first.notes)
    second = pack(settings)
    assert old.exists() and old.read_bytes() == original, "the copy from before the first pack is gone"
    assert any(".old" in note for note in second.notes)
    assert not Path(f"{settings.db_file_path}.old.keep").exists()


def test_the_old_file_a_killed_pack_held_aside_comes_back(tmp_path: Path) -> None:
    """A pack killed after FileStorage deleted <file>.old leaves only the hard link <file>.old.keep:
    the next pack deleted it, and with it the only copy of the file before the last pack (a review)."""
    import os

    settings = file_settings(tmp_path / "users.fs")
    database = Database(settings)
    UserDB(database).create(username="u")
    database.close()
    pack(settings)  # the next one has nothing to pack: it writes no new .old
    old, keep = Path(f"{settings.db_file_path}.old"), Path(f"{settings.db_file_path}.old.keep")
    before = old.read_bytes()
    os.link(old, keep)
    old.unlink()  # where the killed pack stopped
    pack(settings)
    assert old.read_bytes() == before
    assert not keep.exists()
