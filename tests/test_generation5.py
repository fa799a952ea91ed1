"""Generation 5: 4-field grants and the GitHub, project and admin indexes built for stored users."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import ZODB

import migrations
from db.check import check, repair
from db.database import Database
from db.errors import GenerationError
from db.models import USERS_KEY, User
from db.settings import CodxJuniorGlobalSettings
from db.storage import open_storage
from db.user_db import UserDB
from migrations import runner
from migrations.registry import GENERATION_KEY, GENERATIONS_KEY
from tests.test_migrations import FIXTURE_BACKENDS, fixture_settings

# (username, role, github, stored grants as generations 1-4 wrote them)
OLD_USERS = [
    ("root", "admin", "", ()),
    ("alice", "user", "Alice-Dev", (("p1", "tasks,coder", True), ("p2", "", False))),
    ("bob", "user", "alice-dev", (("p1", "admin", True),)),  # the same login as alice, stored later
    ("carol", "admin", "carol", (("p2", "x", True),)),
    ("dave", "user", "", ()),
]


def generation4_database(settings: CodxJuniorGlobalSettings) -> None:
    """A database as generation 4 left it: 3-field grants, no lookup indexes, a shared GitHub login."""
    database = Database(settings)
    database.open()
    database.close()
    zodb = ZODB.DB(open_storage(settings))
    try:
        with zodb.transaction() as conn:
            root = conn.root()
            container = root[USERS_KEY]
            for attribute in ("by_github", "by_project", "admins"):
                delattr(container, attribute)  # the class default (None) shows through, as in generation 4
            for i, (username, role, github, projects) in enumerate(OLD_USERS):
                # Ids in creation order (as UserDB makes them): the first of a shared login wins.
                user = User(id=f"{i:032x}", username=username, role=role, is_superuser=role == "admin", github=github)
                user.projects = projects
                del user.apps  # generation 4 had no apps attribute
                container.add(user)
            root[GENERATION_KEY] = 4
            root[GENERATIONS_KEY]["codx_db"] = 4
    finally:
        zodb.close()


def stored_state(settings: CodxJuniorGlobalSettings) -> dict[str, Any]:
    """Generation, indexes and grants, read with plain ZODB (no open hooks run)."""
    zodb = ZODB.DB(open_storage(settings))
    try:
        with zodb.transaction() as conn:
            root = conn.root()
            container = root[USERS_KEY]
            by_github, by_project, admins = container.by_github, container.by_project, container.admins
            ids = {user.id: user.username for user in container.users.values()}
            return {
                "generation": root[GENERATION_KEY],
                "github": None if by_github is None else {k: u.username for k, u in by_github.items()},
                "project": None
                if by_project is None
                else {k: sorted(ids[i] for i in members) for k, members in by_project.items()},
                "admins": None if admins is None else sorted(ids[i] for i in admins),
                "grants": {u.username: u.projects for u in container.users.values()},
            }
    finally:
        zodb.close()


def file_settings(tmp_path: Path) -> CodxJuniorGlobalSettings:
    return CodxJuniorGlobalSettings.load(db_backend="file", db_file_path=tmp_path / "users.fs")


EXPECTED = {
    "generation": migrations.GENERATION,
    "github": {"alice-dev": "alice", "carol": "carol"},
    "project": {"p1": ["alice", "bob"], "p2": ["alice", "carol"]},
    "admins": ["carol", "root"],
    "grants": {
        "root": (),
        "alice": (("p1", "tasks,coder", True, ()), ("p2", "", False, ())),
        "bob": (("p1", "admin", True, ()),),
        "carol": (("p2", "x", True, ()),),
        "dave": (),
    },
}


def test_evolve5_builds_the_indexes_and_reports_a_shared_github_login(tmp_path: Path) -> None:
    settings = file_settings(tmp_path)
    generation4_database(settings)
    # Below the minimum: the default policy refuses to serve it (the indexes are not there).
    database = Database(settings)
    with pytest.raises(GenerationError, match="migrate --apply"):
        database.open()
    database.close()

    messages: list[str] = []
    with runner.open_for_migration(settings) as zodb:
        ran = runner.evolve(zodb, progress=lambda message, done, total: messages.append(message), batch_size=2)
    assert [step.generation for step in ran] == list(range(5, migrations.GENERATION + 1))
    assert stored_state(settings) == EXPECTED
    shared = [m for m in messages if "share a GitHub login" in m]
    assert len(shared) == 1 and "'bob' (as 'alice')" in shared[0] and "--github ''" in shared[0]

    database = Database(settings)
    try:
        users = UserDB(database)
        assert users.get_by_github("ALICE-DEV").username == "alice"  # type: ignore[union-attr]
        assert [u.username for u in users.with_project_access("p1")] == ["alice", "bob", "carol", "root"]
        report = check(database)
        assert report.ok, report.problems
        assert [w.code for w in report.warnings] == ["github-duplicate"]
        assert "'bob'" in report.warnings[0].message and "'alice'" in report.warnings[0].message
        # bob keeps his (shared) login and can change other fields; the fix frees it.
        users.update("bob", full_name="Bob")
        users.update("bob", github="")
        assert check(database).warnings == []
    finally:
        database.close()


def test_evolve5_is_idempotent(tmp_path: Path) -> None:
    settings = file_settings(tmp_path)
    generation4_database(settings)
    with runner.open_for_migration(settings) as zodb:
        runner.evolve(zodb)
    first = stored_state(settings)
    zodb = ZODB.DB(open_storage(settings))
    try:
        with zodb.transaction() as conn:  # as if interrupted after its batches: run it again
            conn.root()[GENERATION_KEY] = 4
            conn.root()[GENERATIONS_KEY]["codx_db"] = 4
        assert [step.generation for step in runner.evolve(zodb, batch_size=1)] == list(
            range(5, migrations.GENERATION + 1)
        )
    finally:
        zodb.close()
    assert stored_state(settings) == first == EXPECTED


def test_a_dry_run_writes_nothing(tmp_path: Path) -> None:
    settings = file_settings(tmp_path)
    generation4_database(settings)
    before = stored_state(settings)
    size = settings.db_file_path.stat().st_size
    with runner.open_for_migration(settings) as zodb:
        steps = runner.evolve(zodb, dry_run=True, batch_size=2)
        assert [step.generation for step in steps] == list(range(5, migrations.GENERATION + 1))
    assert stored_state(settings) == before
    assert before["github"] is None and before["grants"]["alice"][0] == ("p1", "tasks,coder", True)
    assert settings.db_file_path.stat().st_size == size


@pytest.mark.parametrize("backend", FIXTURE_BACKENDS)
def test_the_committed_generation2_fixture_evolves_through_5(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    settings = fixture_settings("generation2.fs", backend, tmp_path, request)
    with runner.open_for_migration(settings) as zodb:
        assert [step.generation for step in runner.evolve(zodb)] == list(range(3, migrations.GENERATION + 1))
    database = Database(settings)
    try:
        assert check(database).ok
        users = UserDB(database)
        alice = users.get("alice")
        assert users.get_by_github(alice.github) == alice
        for project in alice.projects:
            assert alice in users.with_project_access(project.project_id)
    finally:
        database.close()


def test_check_repair_rebuilds_the_lookup_indexes(tmp_path: Path) -> None:
    settings = file_settings(tmp_path)
    database = Database(settings)
    try:
        users = UserDB(database)
        users.create(username="root", role="admin")
        users.create(username="alice", github="alice-dev", projects=[{"project_id": "p"}])
        with database.transaction() as uow:
            container = uow.root[USERS_KEY]
            del container.by_github["alice-dev"]
            container.by_github["ghost"] = container.find_by_username("root")
            container.by_project["p"].clear()
            container.by_project["q"] = type(container.admins)(["nobody"])
            container.admins.clear()
        codes = sorted({p.code for p in check(database).problems})
        assert codes == [
            "admin-unindexed",
            "github-unindexed",
            "github-wrong-key",
            "project-dangling",
            "project-unindexed",
        ]
        result = repair(database)
        assert result.repaired and result.ok, result.after.problems
        assert users.get_by_github("alice-dev").username == "alice"  # type: ignore[union-attr]
        assert [u.username for u in users.with_project_access("p")] == ["alice", "root"]
    finally:
        database.close()
