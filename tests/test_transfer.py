"""Copy, backup, restore, pack and their verification, on the file and PostgreSQL backends."""

from __future__ import annotations

import io
import json
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
from psycopg2.extensions import make_dsn, parse_dsn
from ZODB.FileStorage import FileStorage

import migrations
from db.cli.render import render_text
from db.database import Database
from db.errors import StorageInUse
from db.models import USERS_KEY
from db.progress import Progress
from db.settings import CodxJuniorGlobalSettings
from db.storage import open_file_storage, open_storage
from db.transfer import (
    TargetNotEmpty,
    TransferError,
    backup,
    copy_database,
    pack,
    restore,
    target_settings,
    verify,
)
from db.user_db import UserDB
from tests.conftest import ROOT, PostgresServer, make_settings, settings_env

PASSWORDS = {"alice": "alice-passw0rd", "bob": "bob-passw0rd-2", "dave": "dave-from-junior"}
# What codx-junior stored for dave: UserDB accepts bcrypt hashes and upgrades them at login.
DAVE_BCRYPT = "$2b$04$SNHZ3t7xWaX/l.8j/vl/X.1LZJwd/c5CvaeDUh30Ow3z7pHPFbjp2"


# -- helpers -------------------------------------------------------------------------------------


def file_settings(path: Path) -> CodxJuniorGlobalSettings:
    return CodxJuniorGlobalSettings.load(db_backend="file", db_file_path=path)


def pg_settings(dsn: str) -> CodxJuniorGlobalSettings:
    return CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=dsn)


def populate(settings: CodxJuniorGlobalSettings) -> None:
    """Users with every kind of field, a bcrypt hash, history, and a deleted user."""
    database = Database(settings)
    try:
        users = UserDB(database)
        users.create(
            username="alice",
            email="alice@example.com",
            full_name="Alice Liddell",
            password=PASSWORDS["alice"],
            role="admin",
            avatar="/avatars/alice.png",
            theme="dark",
            github="alice-gh",
            projects=[
                {"project_id": "codx-junior", "permissions": "tasks,coder", "children": True},
                {"project_id": "docs", "permissions": "tasks", "children": False},
            ],
        )
        users.create(username="bob", password=PASSWORDS["bob"], is_active=False)
        users.create(username="carol", email="carol@example.com")  # no password
        users.create(username="dave", email="Dave@Example.com")
        with database.transaction() as uow:
            uow.root[USERS_KEY].find_by_username("dave").password_hash = DAVE_BCRYPT
        users.create(username="temp")
        users.update("temp", username="erin", theme="light")
        users.create(username="gone")
        users.delete("gone")
    finally:
        database.close()


def stored_states(settings: CodxJuniorGlobalSettings) -> dict[str, dict[str, Any]]:
    """Every stored user's state (password hash included), by id: what must survive a copy."""
    zodb = ZODB.DB(open_storage(settings))
    try:
        with zodb.transaction() as conn:
            return {key: dict(user.__getstate__()) for key, user in conn.root()[USERS_KEY].users.items()}
    finally:
        zodb.close()


def check_logins(settings: CodxJuniorGlobalSettings) -> None:
    database = Database(settings)
    try:
        users = UserDB(database)
        assert users.authenticate("alice", PASSWORDS["alice"]) is not None
        assert users.authenticate("alice", "wrong-password") is None
        assert users.authenticate("bob", PASSWORDS["bob"]) is None  # inactive
        assert users.authenticate("dave@example.com", PASSWORDS["dave"]) is not None
        with database.transaction() as uow:
            assert uow.root[USERS_KEY].find_by_username("dave").password_hash.startswith("$argon2id$")
    finally:
        database.close()


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "db", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def source(tmp_path: Path) -> CodxJuniorGlobalSettings:
    settings = file_settings(tmp_path / "dev" / "users.fs")
    populate(settings)
    return settings


@pytest.fixture
def second_pg_dsn(pg_server: PostgresServer) -> Iterator[str]:
    dsn = pg_server.create_database()
    try:
        yield dsn
    finally:
        pg_server.drop_database(dsn)


# -- copy ----------------------------------------------------------------------------------------


@pytest.mark.postgres
def test_copy_file_to_postgres_and_back_loses_nothing(
    source: CodxJuniorGlobalSettings, pg_dsn: str, tmp_path: Path
) -> None:
    original = stored_states(source)
    assert len(original) == 5

    to_pg = copy_database(source, target_settings(dsn=pg_dsn))
    assert to_pg.ok, to_pg.verification.differences
    assert to_pg.unit == "objects" and to_pg.copied > 5  # RelStorage's history-free copier
    assert to_pg.verification.compared == 5 and to_pg.verification.target_generation == migrations.GENERATION
    assert stored_states(pg_settings(pg_dsn)) == original

    back = tmp_path / "back" / "users.fs"
    to_file = copy_database(pg_settings(pg_dsn), back)
    assert to_file.ok and to_file.unit == "transactions"
    assert stored_states(file_settings(back)) == original
    assert (back.stat().st_mode & 0o777) == 0o600

    # Both copies serve the same users, passwords included (dave's bcrypt hash too).
    check_logins(pg_settings(pg_dsn))
    check_logins(file_settings(back))


def _foreign_rows(dsn: str) -> int:
    import psycopg2

    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM orders")
            return int(cur.fetchone()[0])
    finally:
        conn.close()


@pytest.mark.postgres
@pytest.mark.parametrize("occupied", [False, True], ids=["beside-nothing", "beside-a-codx-db-database"])
def test_copy_never_touches_a_table_that_is_not_codx_dbs(
    source: CodxJuniorGlobalSettings, pg_dsn: str, occupied: bool
) -> None:
    """A database shared with another application's tables: refused, even with --force, and nothing written.

    copy and restore staged and then replaced every table of the target's schema: another
    application's tables were emptied (DELETE, refilled from an empty staging copy).
    """
    import psycopg2

    if occupied:
        database = Database(pg_settings(pg_dsn))
        UserDB(database).create(username="zed")
        database.close()
    conn = psycopg2.connect(pg_dsn)
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE orders (id int PRIMARY KEY, item text)")
        cur.execute("INSERT INTO orders VALUES (1, 'tea'), (2, 'cake')")
    conn.close()
    before = stored_states(pg_settings(pg_dsn)) if occupied else None
    with pytest.raises(TransferError) as excinfo:
        copy_database(source, target_settings(dsn=pg_dsn), force=True)
    message = str(excinfo.value)
    assert "orders" in message and "of its own" in message, message
    assert _foreign_rows(pg_dsn) == 2
    if occupied:
        assert stored_states(pg_settings(pg_dsn)) == before
    else:  # nothing created: RelStorage's tables neither
        conn = psycopg2.connect(pg_dsn)
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()")
            assert cur.fetchone()[0] == 1
        conn.close()


@pytest.mark.parametrize("backend", ["file", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_copy_refuses_a_target_holding_data_unless_forced(
    backend: str, source: CodxJuniorGlobalSettings, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    occupied = make_settings(backend, request, tmp_path / "target")
    database = Database(occupied)
    UserDB(database).create(username="zed")
    database.close()
    target: Any = occupied.db_file_path if backend == "file" else occupied

    with pytest.raises(TargetNotEmpty) as excinfo:
        copy_database(source, target)
    assert f"generation {migrations.GENERATION}, 1 user)" in str(excinfo.value) and "--force" in str(excinfo.value)
    assert [state["username"] for state in stored_states(occupied).values()] == ["zed"]

    report = copy_database(source, target, force=True)
    assert report.ok and report.replaced == {"generation": migrations.GENERATION, "users": 1}
    assert stored_states(occupied) == stored_states(source)


def test_copy_refuses_the_source_itself_an_empty_source_and_a_file_in_use(
    source: CodxJuniorGlobalSettings, tmp_path: Path
) -> None:
    with pytest.raises(TransferError, match="same database"):
        copy_database(source, tmp_path / "dev" / ".." / "dev" / "users.fs")
    with pytest.raises(TransferError, match="holds no database"):
        copy_database(file_settings(tmp_path / "nothing.fs"), tmp_path / "out.fs")
    assert not (tmp_path / "out.fs").exists()

    in_use = tmp_path / "app" / "users.fs"
    storage = open_file_storage(in_use)  # an application holding the file
    try:
        with pytest.raises(StorageInUse, match="in use by another process"):
            copy_database(source, in_use, force=True)
    finally:
        storage.close()


@pytest.mark.postgres
def test_copy_to_a_config_file_target_and_the_same_database_spelled_differently(
    source: CodxJuniorGlobalSettings, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # relstorage.conf reads its DSN from the environment, as in production.
    monkeypatch.setenv("CODX_JUNIOR_DB_DSN", pg_dsn)
    report = copy_database(source, target_settings(config_file=ROOT / "relstorage.conf"))
    assert report.ok and report.target == f"config file {ROOT / 'relstorage.conf'}"
    assert stored_states(pg_settings(pg_dsn)) == stored_states(source)

    params = parse_dsn(pg_dsn)
    uri = f"postgresql://{params['user']}@{params['host']}:{params.get('port', 5432)}/{params['dbname']}"
    if "password" in params:
        uri = uri.replace("@", f":{params['password']}@", 1)
    with pytest.raises(TransferError, match="same database"):
        copy_database(pg_settings(pg_dsn), target_settings(dsn=uri), force=True)
    assert stored_states(pg_settings(pg_dsn)) == stored_states(source)  # not zapped


def test_verify_names_each_difference_without_showing_values(source: CodxJuniorGlobalSettings, tmp_path: Path) -> None:
    copy = tmp_path / "copy.fs"
    assert copy_database(source, copy).ok
    database = Database(file_settings(copy))
    UserDB(database).set_password("alice", "another-passw0rd")
    UserDB(database).update("erin", theme="dim")
    database.close()

    a, b = ZODB.DB(FileStorage(str(source.db_file_path))), ZODB.DB(FileStorage(str(copy)))
    try:
        result = verify(a, b)
    finally:
        a.close()
        b.close()
    assert not result.ok and result.compared == 3
    text = "\n".join(result.differences)
    assert "'alice'" in text and "password_hash" in text and "'erin'" in text and "theme" in text
    assert "$argon2" not in text and "another" not in text


@pytest.mark.postgres
def test_cli_copy_masks_the_dsn_password(
    source: CodxJuniorGlobalSettings, pg_server: PostgresServer, pg_dsn: str
) -> None:
    """A real password-protected role, owner of the target (the container checks the password)."""
    role, password = f"codx_{uuid.uuid4().hex[:8]}", "C0pySecretPw"
    pg_server.execute(
        f"CREATE ROLE {role} LOGIN PASSWORD '{password}'",
        f'ALTER DATABASE "{parse_dsn(pg_dsn)["dbname"]}" OWNER TO {role}',
    )
    dsn = make_dsn(pg_dsn, user=role, password=password)
    result = cli(settings_env(source), "copy", "--to-dsn", dsn, "--json")
    assert result.returncode == 0, result.stderr
    assert password not in result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and "password=***" in report["target"]
    assert report["verification"]["users_compared_equal"] == 5
    assert "copy: verifying" in result.stderr  # progress goes to stderr

    again = cli(settings_env(source), "copy", "--to-dsn", dsn)
    assert again.returncode == 1 and "already holds a database" in again.stderr
    assert password not in again.stdout + again.stderr


# -- backup and restore --------------------------------------------------------------------------


class WritesAfterCopy(Progress):
    """A progress display that makes the application write between the copy and its verification."""

    def __init__(self, settings: CodxJuniorGlobalSettings) -> None:
        super().__init__("backup", stream=io.StringIO(), tty=False)
        self.settings = settings

    def finish(self) -> None:
        super().finish()
        database = Database(self.settings)
        try:
            users = UserDB(database)
            users.create(username="late")
            users.update("alice", theme="dim")
            users.delete("carol")
        finally:
            database.close()


def test_backup_verifies_what_the_source_did_not_change_since_the_snapshot(
    source: CodxJuniorGlobalSettings, tmp_path: Path
) -> None:
    report = backup(source, tmp_path / "backup.fs", progress=WritesAfterCopy(source))
    verification = report.verification
    assert report.ok, verification.differences
    # late created, alice changed, carol deleted after the snapshot: counted, not compared.
    assert (verification.compared, verification.changed_since) == (3, 3)
    assert verification.as_of is not None and verification.target_users == 5
    assert sorted(s["username"] for s in stored_states(file_settings(tmp_path / "backup.fs")).values()) == [
        "alice",
        "bob",
        "carol",
        "dave",
        "erin",
    ]
    with pytest.raises(TransferError, match="already exists"):
        backup(source, tmp_path / "backup.fs")


def test_backup_of_an_open_database_and_restore(tmp_path: Path) -> None:
    """An application backs up its own database (here the memory backend, which has no file)."""
    database = Database(CodxJuniorGlobalSettings.load(db_backend="memory"))
    try:
        UserDB(database).create(username="mem", password="memory-passw0rd")
        with pytest.raises(TransferError, match="memory database"):
            backup(database.settings, tmp_path / "nope.fs")
        report = backup(database, tmp_path / "memory.fs")
        assert report.ok and report.verification.compared == 1
    finally:
        database.close()

    target = file_settings(tmp_path / "restored" / "users.fs")
    restored = restore(tmp_path / "memory.fs", target)
    assert restored.ok and restored.verification.target_users == 1
    with pytest.raises(TargetNotEmpty):
        restore(tmp_path / "memory.fs", target)
    assert restore(tmp_path / "memory.fs", target, force=True).replaced == {
        "generation": migrations.GENERATION,
        "users": 1,
    }
    with pytest.raises(TransferError, match="not a codx-db backup"):
        restore(tmp_path / "missing.fs", target)


WRITER = """
import sys, time
from pathlib import Path
from db import db
from db.user_db import UserDB
users = UserDB(db)
base = users.count()
print(base, flush=True)
stop = Path(sys.argv[1])
for i in range(100000):
    if stop.exists():
        break
    users.create(username=f"w{i:05d}")
    print(base + i + 1, flush=True)
    time.sleep(0.005)
db.close()
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["file", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_backup_while_another_process_writes_then_restore(
    backend: str, source: CodxJuniorGlobalSettings, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "file":
        live, empty = source, file_settings(tmp_path / "restored" / "users.fs")
    else:
        live, empty = (
            pg_settings(request.getfixturevalue("pg_dsn")),
            pg_settings(request.getfixturevalue("second_pg_dsn")),
        )
        assert copy_database(source, live).ok
    env = settings_env(live)
    stop = tmp_path / "stop"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(stop)], env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None
    try:
        reached = [int(writer.stdout.readline())]
        while reached[-1] < reached[0] + 20:  # the writer is well under way
            reached.append(int(writer.stdout.readline()))
        # The file backend's writer holds the file's lock: the backup reads it without locking.
        result = cli(env, "backup", str(tmp_path / "backup.fs"), "--json")
    finally:
        stop.touch()
        out, _ = writer.communicate(timeout=60)
    reached += [int(line) for line in out.split()]
    assert writer.returncode == 0
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"], report["verification"]["differences"]
    snapshot_users = report["verification"]["target_users"]
    assert snapshot_users in reached and reached[0] + 20 <= snapshot_users < reached[-1], (snapshot_users, reached)

    backup_env = settings_env(file_settings(tmp_path / "backup.fs"))
    checked = cli(backup_env, "check", "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert json.loads(checked.stdout)["users"] == snapshot_users

    restored = restore(tmp_path / "backup.fs", empty)
    assert restored.ok and restored.verification.target_users == snapshot_users
    assert stored_states(empty) == stored_states(file_settings(tmp_path / "backup.fs"))


# -- pack ------------------------------------------------------------------------------------------


def _make_garbage(settings: CodxJuniorGlobalSettings) -> None:
    database = Database(settings)
    try:
        users = UserDB(database)
        for i in range(30):
            users.create(username=f"tmp{i:02d}", email=f"tmp{i:02d}@example.com")
        for i in range(30):
            users.delete(f"tmp{i:02d}")
        for theme in ("light", "dark") * 5:
            users.update("alice", theme=theme)
    finally:
        database.close()


@pytest.mark.parametrize("backend", ["file", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_pack_reports_sizes_and_keeps_every_user(
    backend: str, source: CodxJuniorGlobalSettings, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    settings = source if backend == "file" else pg_settings(request.getfixturevalue("pg_dsn"))
    if backend == "postgres":
        assert copy_database(source, settings).ok
    _make_garbage(settings)
    before = stored_states(settings)

    report = pack(settings)
    assert report.backend == backend and report.bytes_before and report.bytes_after
    if backend == "file":
        # History and the deleted users' objects are gone; the old file is kept, both private.
        assert report.bytes_after < report.bytes_before
        assert (source.db_file_path.stat().st_mode & 0o777) == 0o600
        assert Path(f"{source.db_file_path}.old").exists()
    else:
        # History-free: a pack is the garbage collection of the deleted users' objects.
        assert report.records_before is not None and report.records_after is not None
        assert report.records_after < report.records_before
    assert stored_states(settings) == before
    check_logins(settings)


def test_an_application_packs_its_own_open_database(source: CodxJuniorGlobalSettings) -> None:
    _make_garbage(source)
    database = Database(source)
    try:
        UserDB(database).count()  # open: the application holds the file's lock
        with pytest.raises(StorageInUse, match="inside the application"):
            pack(source)
        report = pack(database)
        assert report.bytes_after is not None and report.bytes_before is not None
        assert report.bytes_after < report.bytes_before
        assert UserDB(database).count() == 5
    finally:
        database.close()


def test_cli_pack_and_backup_reports(source: CodxJuniorGlobalSettings, tmp_path: Path) -> None:
    env = settings_env(source)
    packed = cli(env, "pack", "--days", "1", "--json")
    assert packed.returncode == 0, packed.stderr
    report = json.loads(packed.stdout)
    assert report["days"] == 1 and report["bytes_before"] >= report["bytes_after"] > 0

    text = cli(env, "backup", str(tmp_path / "b.fs"))
    assert text.returncode == 0, text.stderr
    assert "verified:     ok" in text.stdout and "backup: verifying" in text.stderr


# -- progress display ------------------------------------------------------------------------------


def test_progress_is_a_bar_on_a_terminal_and_lines_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(range(0, 1000, 3))
    monkeypatch.setattr(time, "monotonic", lambda: float(next(clock)))
    lines = io.StringIO()
    plain = Progress("copy", stream=lines, tty=False)
    plain.start("objects", 10)
    for _ in range(10):
        plain.advance()
    plain.finish()
    assert lines.getvalue().splitlines()[0] == "copy: copying objects (10)"
    assert "copy: 10/10 objects" in lines.getvalue() and "\r" not in lines.getvalue()

    screen = io.StringIO()
    bar = Progress("copy", stream=screen, tty=True)
    bar.start("transactions", 4)
    for _ in range(4):
        bar.advance()
    bar.finish()
    assert "\rcopy [" in screen.getvalue() and "100% 4/4 transactions" in screen.getvalue()


def test_no_secret_reaches_a_report(source: CodxJuniorGlobalSettings, tmp_path: Path) -> None:
    report = copy_database(source, tmp_path / "c.fs")
    text = json.dumps(report.to_dict()) + "\n".join(render_text(report))
    assert "$argon2" not in text and "$2b$" not in text
    assert os.fspath(tmp_path / "c.fs") in text
