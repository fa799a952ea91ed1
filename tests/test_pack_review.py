"""pack's errors are codx-db's one line: ZODB's own log of a failed pack is not shown as well."""

from __future__ import annotations

import logging
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from db.database import Database
from db.errors import StorageFull
from db.transfer import pack
from db.user_db import UserDB
from tests.conftest import IN_CI
from tests.test_transfer import file_settings


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real tmpfs of 512 KiB inside the test's directory (needs root), unmounted afterwards."""
    mount_point = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        reason = f"cannot mount a tmpfs for the full-disk test (needs root): {result.stderr.strip()}"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


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
