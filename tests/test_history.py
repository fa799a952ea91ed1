"""Per-user history and revert, on storages that keep history; a clear error on those that do not."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from db.database import Database
from db.errors import HistoryUnavailable, InvalidUserData, UserAlreadyExists
from db.models import USERS_KEY
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB
from tests.conftest import ROOT, make_settings, settings_env

HISTORY_BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("file", id="file"),
    pytest.param("postgres", id="postgres-keep-history", marks=pytest.mark.postgres),
]


@pytest.fixture(params=HISTORY_BACKENDS)
def history_db(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = make_settings(request.param, request, tmp_path, db_keep_history=True)
    database = Database(settings)
    yield database
    database.close()


def test_history_lists_versions_newest_first_with_who_and_what(history_db: Database) -> None:
    users = UserDB(history_db, actor="admin@codx")
    users.create(username="alice", email="alice@example.com", password="first-passw0rd")
    users.update("alice", full_name="Alice Liddell", role="admin")
    with history_db.transaction(user="ops-bob"):
        UserDB(history_db).update("alice", email="alice@wonderland.example")
    users.set_password("alice", "second-passw0rd")

    revisions = users.history("ALICE")
    assert [r.description for r in revisions] == [
        "codx-db: set password of alice",
        "codx-db: update user alice: email",
        "codx-db: update user alice: full_name, is_superuser, role",
        "codx-db: create user alice",
    ]
    assert [r.by for r in revisions] == ["admin@codx", "ops-bob", "admin@codx", "admin@codx"]
    assert revisions[0].changes == {"password": [None, "changed"]}
    assert revisions[1].changes == {"email": ["alice@example.com", "alice@wonderland.example"]}
    assert revisions[2].changes["role"] == ["user", "admin"]
    assert revisions[3].changes["username"] == [None, "alice"]
    assert revisions[3].user.full_name == "" and revisions[2].user.full_name == "Alice Liddell"
    assert all(r.at <= datetime.now(UTC) for r in revisions)
    assert revisions == sorted(revisions, key=lambda r: r.at, reverse=True)
    assert len(users.history("alice", limit=2)) == 2
    dumped = json.dumps([r.model_dump(mode="json") for r in revisions])
    assert "passw0rd" not in dumped and "argon2" not in dumped


def test_revert_restores_fields_as_a_new_change_but_not_the_password(history_db: Database) -> None:
    users = UserDB(history_db)
    users.create(username="alice", email="alice@example.com", password="first-passw0rd")
    first = users.history("alice")[0]
    users.update("alice", username="alicia", email="alicia@example.com", theme="dark", role="admin")
    users.set_password("alicia", "second-passw0rd")

    restored = users.revert("alicia", first.tid)
    assert (restored.username, restored.email, restored.theme, restored.role) == (
        "alice",
        "alice@example.com",
        "dim",
        "user",
    )
    assert users.find("alicia") is None and users.get_by_email("alice@example.com").username == "alice"
    assert users.authenticate("alice", "second-passw0rd") is not None  # the password stays
    latest = users.history("alice")[0]
    assert latest.description.startswith("codx-db: revert user alicia to ")
    assert latest.changes["username"] == ["alicia", "alice"]


def test_revert_by_time_and_errors(history_db: Database) -> None:
    users = UserDB(history_db)
    users.create(username="alice")
    before_change = datetime.now(UTC)
    users.update("alice", full_name="Changed")
    assert users.revert("alice", before_change.isoformat()).full_name == ""
    with pytest.raises(HistoryUnavailable):
        users.revert("alice", (datetime.now(UTC) - timedelta(days=365)).isoformat())
    with pytest.raises(InvalidUserData):
        users.revert("alice", "last tuesday")


def test_revert_respects_unique_names(history_db: Database) -> None:
    users = UserDB(history_db)
    users.create(username="alice")
    first = users.history("alice")[0].tid
    users.update("alice", username="alicia")
    users.create(username="ALICE")  # someone took the old name
    with pytest.raises(UserAlreadyExists):
        users.revert("alicia", first)
    assert users.get("alicia").username == "alicia"


@pytest.mark.postgres
def test_history_free_postgres_says_so(pg_dsn: str) -> None:
    database = Database(CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=pg_dsn))
    try:
        users = UserDB(database)
        users.create(username="alice")
        with pytest.raises(HistoryUnavailable) as excinfo:
            users.history("alice")
        assert "keeps no history" in str(excinfo.value) and "KEEP_HISTORY" in str(excinfo.value)
        with pytest.raises(HistoryUnavailable):
            users.revert("alice", datetime.now(UTC).isoformat())
    finally:
        database.close()
    env = settings_env(CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=pg_dsn))
    result = subprocess.run(
        [sys.executable, "-m", "db", "user", "history", "alice"], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 1 and "keeps no history" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_history_and_revert(tmp_path: Path) -> None:
    settings = CodxJuniorGlobalSettings.load(db_file_path=tmp_path / "u.fs")
    env = settings_env(settings)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "db", *args], env=env, cwd=ROOT, capture_output=True, text=True)

    assert cli("user", "add", "alice", "--no-password").returncode == 0
    assert cli("--actor", "ops-bob", "user", "update", "alice", "--full-name", "Alice").returncode == 0
    shown = cli("user", "history", "alice")
    assert shown.returncode == 0, shown.stderr
    assert "by ops-bob  codx-db: update user alice: full_name" in shown.stdout
    assert 'full_name: "" -> "Alice"' in shown.stdout
    assert "(codx-db cli)  codx-db: create user alice" in shown.stdout
    revisions = json.loads(cli("user", "history", "alice", "--json").stdout)
    reverted = cli("user", "revert", "alice", "--to", revisions[-1]["tid"], "--json")
    assert reverted.returncode == 0, reverted.stderr
    assert json.loads(reverted.stdout)["full_name"] == ""


@pytest.mark.parametrize(("is_superuser", "role"), [(True, "admin"), (False, "user")])
def test_a_revision_from_before_generation_1_reads_its_role_as_evolve1_set_it(is_superuser: bool, role: str) -> None:
    """Generation 1 added ``role`` from ``is_superuser``; a revision written before it has neither ``role`` nor
    the later fields, and an admin's must not read as a user (a revert of it was refused: "role 'user'
    contradicts is_superuser=True")."""
    from db.users.history import snapshot

    stored = {
        "id": "0f" * 16,
        "username": "boss",
        "email": None,
        "full_name": "",
        "is_active": True,
        "is_superuser": is_superuser,
        "password_hash": None,
        "created_at": datetime(2026, 1, 1, tzinfo=UTC),
    }
    found = snapshot(stored)
    assert found.role == role and found.is_superuser is is_superuser
    assert found.theme == "dim" and found.projects == ()


def test_revert_to_a_revisions_own_time_restores_that_revision(history_db: Database) -> None:
    """history() shows each revision's time; giving it back to revert must pick that revision, not
    the one before (a demoted admin came back as admin: the time was rounded, sometimes down)."""
    users = UserDB(history_db)
    users.create(username="mallory", role="admin")
    for i in range(24):
        users.update("mallory", full_name=f"v{i}", role="user" if i % 2 else "admin")
    for revision in users.history("mallory", limit=24)[1:]:
        assert users.revert("mallory", revision.at).full_name == revision.user.full_name
        assert users.get("mallory").role == revision.user.role
    # The text history prints that time to the microsecond, so a time copied from it works too.
    from db.cli.render import render
    from db.cli.results import RevisionList

    for revision in users.history("mallory", limit=5)[1:]:
        line = next(
            line for line in render(RevisionList([revision]), as_json=False).splitlines() if revision.tid in line
        )
        copied = line.split()[1]
        assert users.revert("mallory", copied).full_name == revision.user.full_name


def test_revert_checks_only_the_fields_it_changes(history_db: Database) -> None:
    """A user stored before today's rules (a mixed-script name kept from before generation 3) can be
    updated in its other fields; reverting such an update must work too, not refuse the name."""
    users = UserDB(history_db)
    users.create(username="keeper", full_name="First")

    def legacy_name(uow: Any) -> None:  # as older code could store it
        container = uow.root[USERS_KEY]
        user = container.find_by_username("keeper")
        before = container.indexed(user)
        user.username = "\u0430dmin"  # Cyrillic a + Latin: refused today
        container.reindex(user, before)

    history_db.run(legacy_name)
    users.update("\u0430dmin", full_name="Second")
    before_update = users.history("\u0430dmin", limit=2)[1]
    assert users.revert("\u0430dmin", before_update.tid).full_name == "First"
    assert users.get("\u0430dmin").full_name == "First"


def test_many_changes_in_one_transaction_fit_its_metadata(history_db: Database) -> None:
    """Per-user notes are bounded: FileStorage refuses a transaction whose extension passes 64 KiB."""
    users = UserDB(history_db)
    users.import_users([{"username": f"bulk{i:04d}"} for i in range(1_500)])
    with history_db.transaction(note="rename everyone"):
        for i in range(1_500):
            users.update(f"bulk{i:04d}", full_name=f"Bulk user number {i} with a long enough name")
    assert users.get("bulk1499").full_name.endswith("1499 with a long enough name")
    first, last = users.history("bulk0000")[0], users.history("bulk1499")[0]
    assert "bulk0000" in first.description and first.tid == last.tid


def test_many_changes_to_users_with_long_non_ascii_names_fit_its_metadata(history_db: Database) -> None:
    """The per-user notes are bounded in bytes: 150 updates of users with 244-character CJK names in
    one unit of work made FileStorage refuse it ("too much extension data": 3 bytes a character)."""
    users = UserDB(history_db, actor="管理者")
    digits = str.maketrans("0123456789", "〇一二三四五六七八九")
    names = ["名" * 240 + f"{i:04d}".translate(digits) for i in range(150)]
    users.import_users([{"username": name} for name in names])
    with history_db.transaction(note="rename everyone"):
        for name in names:
            users.update(name, full_name="Renamed")
    assert users.get(names[-1]).full_name == "Renamed"
    first, last = users.history(names[0])[0], users.history(names[-1])[0]
    assert first.tid == last.tid and first.by == "管理者"
    assert first.description.startswith("codx-db: update user 名"), first.description


def test_two_actors_in_one_unit_of_work_are_each_named(history_db: Database) -> None:
    """Before, the first UserDB's actor became the transaction's user and the second's change was
    recorded as the first's: dave's history said alice. A caller's own user still wins."""
    alice, bob = UserDB(history_db, actor="alice"), UserDB(history_db, actor="bob")
    for name in ("carol", "dave", "erin"):
        alice.create(username=name)
    with history_db.transaction(note="two admins"):
        alice.update("carol", full_name="by alice")
        bob.update("dave", full_name="by bob")
        bob.grant_project("dave", "p1", "tasks")
    assert alice.history("carol")[0].by == "alice"
    assert [r.by for r in alice.history("dave")[:1]] == ["bob"]
    with history_db.transaction(user="ops"):
        bob.update("erin", full_name="by ops")
    assert alice.history("erin")[0].by == "ops"
    # Both changing one user: both named, in order (the first named the transaction).
    with history_db.transaction():
        alice.update("carol", full_name="first alice")
        bob.update("carol", theme="dark")
        alice.update("carol", full_name="then alice again")
    assert alice.history("carol")[0].by == "alice, bob"
