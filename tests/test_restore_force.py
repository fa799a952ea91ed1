"""restore/copy --force never empties a target before the source is known good (issue 11, item 1).

Bad backups (cut short, cut at 60 %, a FileStorage that is not codx-db's) are refused with the
target untouched; a good one replaces the target at once (PostgreSQL: one transaction; file: a
new file renamed over the old one); a restore killed with SIGKILL at any moment leaves the old
users or the new ones, never an empty or half-written database.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ZODB
from ZODB.FileStorage import FileStorage

from db.database import Database
from db.errors import TransferError
from db.models import USERS_KEY
from db.settings import CodxJuniorGlobalSettings
from db.storage import open_storage
from db.transfer import backup, copy_database, restore, verify
from db.user_db import UserDB
from migrations import GENERATION
from tests.conftest import ROOT, make_settings, settings_env
from tests.test_transfer import cli, file_settings, stored_states

BACKENDS = ["file", pytest.param("postgres", marks=pytest.mark.postgres)]


def add_users(settings: CodxJuniorGlobalSettings, prefix: str, count: int) -> None:
    """``count`` users without passwords (no hashing: fast), in one transaction."""
    database = Database(settings)
    try:
        users = UserDB(database)
        with database.transaction():
            for i in range(count):
                users.create(username=f"{prefix}{i:05d}", email=f"{prefix}{i:05d}@example.com")
    finally:
        database.close()


def usernames(settings: CodxJuniorGlobalSettings) -> list[str]:
    """The stored usernames, sorted; [] for a database emptied of codx-db's data."""
    zodb = ZODB.DB(open_storage(settings))
    try:
        with zodb.transaction() as conn:
            container = conn.root().get(USERS_KEY)
            return [] if container is None else sorted(user.username for user in container.users.values())
    finally:
        zodb.close()


@pytest.fixture
def good_backup(tmp_path: Path) -> Path:
    """A real codx-db backup of 40 users."""
    live = file_settings(tmp_path / "live" / "users.fs")
    add_users(live, "new", 40)
    path = tmp_path / "good.fs"
    assert backup(live, path).ok
    return path


def occupied_target(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> CodxJuniorGlobalSettings:
    target = make_settings(backend, request, tmp_path / "target")
    add_users(target, "old", 7)
    return target


def not_codx_file(path: Path) -> Path:
    """A FileStorage holding a ZODB database that is not codx-db's (no users, no generation)."""
    zodb = ZODB.DB(FileStorage(str(path)))
    with zodb.transaction() as conn:
        conn.root()["something"] = "else"
    zodb.close()
    return path


def cut(source: Path, path: Path, size: int) -> Path:
    path.write_bytes(source.read_bytes()[:size])
    return path


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_bad_backup_leaves_the_target_untouched(
    backend: str, good_backup: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    target = occupied_target(backend, request, tmp_path)
    before = stored_states(target)
    size = good_backup.stat().st_size
    bad = {
        "first 1000 bytes": cut(good_backup, tmp_path / "short.fs", 1000),
        "cut at 60 %": cut(good_backup, tmp_path / "sixty.fs", size * 6 // 10),
        "not codx-db": not_codx_file(tmp_path / "other.fs"),
    }
    env = settings_env(target)
    for name, path in bad.items():
        with pytest.raises(TransferError) as excinfo:
            restore(path, target, force=True)
        assert str(path) in str(excinfo.value), name
        assert stored_states(target) == before, name

        result = cli(env, "restore", str(path), "--force")
        assert result.returncode == 1, (name, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr and "unexpected" not in result.stderr, (name, result.stderr)
        assert "verified:     ok" not in result.stdout, name
        assert stored_states(target) == before, name

    # copy --force from a file that is not a codx-db database is refused the same way. (A file
    # cut at 60 % opened as a database is a crashed database: FileStorage recovers its whole
    # transactions, and that is a legitimate source.)
    for name in ("first 1000 bytes", "not codx-db"):
        path = bad[name]
        with pytest.raises(TransferError):
            copy_database(file_settings(path), target if backend == "postgres" else target.db_file_path, force=True)
        assert stored_states(target) == before, name

    report = restore(good_backup, target, force=True)
    assert report.ok and report.replaced == {"generation": GENERATION, "users": 7}
    assert usernames(target) == [f"new{i:05d}" for i in range(40)]


def test_a_missing_object_in_the_backup_is_found_before_the_target_is_touched(
    good_backup: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A backup whose transactions are all whole but which lacks the object of one user."""
    target = occupied_target("file", request, tmp_path)
    before = stored_states(target)
    zodb = ZODB.DB(FileStorage(str(good_backup), read_only=True))
    with zodb.transaction() as conn:
        victim_oid = next(iter(conn.root()[USERS_KEY].users.values()))._p_oid
    zodb.close()
    stripped = tmp_path / "stripped.fs"
    source, out = FileStorage(str(good_backup), read_only=True), FileStorage(str(stripped))
    try:
        for txn in source.iterator():
            out.tpc_begin(txn, txn.tid, txn.status)
            for record in txn:
                if record.oid != victim_oid:
                    out.restore(record.oid, record.tid, record.data, "", None, txn)
            out.tpc_vote(txn)
            out.tpc_finish(txn)
    finally:
        source.close()
        out.close()

    with pytest.raises(TransferError, match="cannot be read") as excinfo:
        restore(stripped, target, force=True)
    assert str(stripped) in str(excinfo.value)
    assert stored_states(target) == before


# Moments to kill a restore: when a progress line containing the marker appears, plus a delay.
# The delays only choose moments; no assertion depends on them.
KILL_MOMENTS = [
    ("checking", 0.0),
    ("copying", 0.0),
    ("copying", 0.3),
    ("verifying", 0.0),
    ("verifying", 0.3),
    ("installing", 0.0),
    ("installing", 0.05),
]


def _kill_restore_at(env: dict[str, str], backup_path: Path, marker: str, delay: float) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "db", "restore", str(backup_path), "--force"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    for line in process.stderr:
        if marker in line:
            break
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_kill_9_during_restore_force_leaves_old_or_new_never_empty(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    live = file_settings(tmp_path / "live" / "users.fs")
    add_users(live, "new", 4000)
    backup_path = tmp_path / "big.fs"
    assert backup(live, backup_path).ok
    new_names = usernames(live)
    target = occupied_target(backend, request, tmp_path)
    old_names = usernames(target)
    env = settings_env(target)

    outcomes: list[str] = []
    for marker, delay in KILL_MOMENTS:
        if outcomes and outcomes[-1] == "new":
            restore_old(target, tmp_path, old_names)  # put the old users back for the next round
        _kill_restore_at(env, backup_path, marker, delay)
        names = usernames(target)
        assert names in (old_names, new_names), (marker, delay, len(names))
        outcomes.append("old" if names == old_names else "new")
    assert "old" in outcomes  # at least one kill landed before the end
    # The next run cleans up after the killed ones and succeeds.
    result = cli(env, "restore", str(backup_path), "--force")
    assert result.returncode == 0, result.stdout + result.stderr
    assert usernames(target) == new_names
    if backend == "file":
        assert target.db_file_path is not None
        leftovers = [p.name for p in target.db_file_path.parent.iterdir() if ".partial" in p.name]
        assert leftovers == []
    else:
        assert staging_schemas(target) == []


def staging_schemas(target: CodxJuniorGlobalSettings) -> list[str]:
    import psycopg2

    assert target.db_dsn is not None
    with psycopg2.connect(target.db_dsn.get_secret_value()) as conn, conn.cursor() as cur:
        cur.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'codx_db_%'")
        names = [row[0] for row in cur.fetchall()]
    conn.close()
    return names


def restore_old(target: CodxJuniorGlobalSettings, tmp_path: Path, old_names: list[str]) -> None:
    old_backup = tmp_path / f"old-{time.monotonic_ns()}.fs"
    scratch = file_settings(tmp_path / f"scratch-{time.monotonic_ns()}" / "users.fs")
    add_users(scratch, "old", len(old_names))
    assert backup(scratch, old_backup).ok
    assert restore(old_backup, target, force=True).ok
    assert usernames(target) == old_names


def test_two_databases_without_a_generation_do_not_verify(tmp_path: Path) -> None:
    """``None == None`` is not a match: neither side is a codx-db database."""
    left = ZODB.DB(FileStorage(str(not_codx_file(tmp_path / "left.fs"))))
    right = ZODB.DB(FileStorage(str(not_codx_file(tmp_path / "right.fs"))))
    try:
        report = verify(left, right)
    finally:
        left.close()
        right.close()
    assert not report.ok
    assert any("generation: source None, target None" in d for d in report.differences), report.differences


@pytest.mark.postgres
def test_restore_force_into_a_history_keeping_postgres_database(good_backup: Path, pg_dsn: str) -> None:
    """The staging schema copies whatever tables RelStorage made: history-keeping ones too."""
    target = CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=pg_dsn, db_keep_history=True)
    add_users(target, "old", 5)
    report = restore(good_backup, target, force=True)
    assert report.ok and report.replaced == {"generation": GENERATION, "users": 5}
    assert usernames(target) == [f"new{i:05d}" for i in range(40)]
    add_users(target, "after", 2)  # new object ids do not collide with the restored ones
    assert len(usernames(target)) == 42
    assert staging_schemas(target) == []
