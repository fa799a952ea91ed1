"""codx-junior's user fields round-trip through codx-db (issue 13 item 1), on every backend."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import email_validator
import pytest

from db.database import Database
from db.errors import InvalidUserData
from db.models import USERS_KEY
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB
from db.users.history import TRACKED_FIELDS
from db.users.schemas import CodxUser, ProjectPermission
from tests.conftest import run_cli
from tests.test_user_db import snapshot_state


@pytest.fixture
def users(database: Database) -> Iterator[UserDB]:
    yield UserDB(database)


def reread(settings: CodxJuniorGlobalSettings, database: Database, username: str) -> CodxUser:
    """The user as a fresh process reads it from storage (memory: from this database's storage)."""
    if settings.db_backend == "memory":
        return UserDB(database).get(username)
    database.close()
    again = Database(settings)
    try:
        return UserDB(again).get(username)
    finally:
        again.close()


# What codx-junior writes for one user (model/model.py CodxUser and ProjectPermission).
CODX_JUNIOR_PROJECTS = [
    {"project_id": "5d0c6a0e", "permissions": "tasks,coder", "children": True, "apps": ["kanban", "coder"]},
    {"project_id": "docs", "permissions": [], "children": None, "apps": []},
    {"project_id": "wiki", "permissions": ["read", "write"], "children": False},
]


def test_every_codx_junior_field_round_trips(
    settings: CodxJuniorGlobalSettings, database: Database, users: UserDB
) -> None:
    created = users.create(
        username="Alice Smith",
        email="",
        avatar="/only_icon.png",
        theme="",
        role="admin",
        github="alice-dev",
        apps=["coder", "viewer", "coder"],  # order and duplicates kept
        projects=CODX_JUNIOR_PROJECTS,
        is_active=False,
    )
    stored = reread(settings, database, "alice smith")
    assert stored == created
    assert stored.username == "Alice Smith" and stored.email is None and stored.theme == ""
    assert stored.avatar == "/only_icon.png" and stored.role == "admin" and stored.disabled
    assert stored.github == "alice-dev" and stored.apps == ("coder", "viewer", "coder")
    assert stored.projects == (
        ProjectPermission(project_id="5d0c6a0e", permissions="tasks,coder", children=True, apps=("kanban", "coder")),
        ProjectPermission(project_id="docs", permissions=(), children=None, apps=()),
        ProjectPermission(project_id="wiki", permissions=("read", "write"), children=False, apps=()),
    )
    # What codx-junior reads back: a list where it wrote a list, a string where it wrote one.
    dumped = stored.model_dump(mode="json")
    assert [p["permissions"] for p in dumped["projects"]] == ["tasks,coder", [], ["read", "write"]]
    assert dumped["apps"] == ["coder", "viewer", "coder"]


@pytest.mark.parametrize(
    ("username", "email"),
    [
        ("John Smith", "john@localhost"),
        ("john@example.com", "John.Smith@Host.Local"),
        ("o'brien+bot", "ops@ci.internal"),
        ("Zoë Ünal", "zoe@box.test"),
        ("admin", "admin@router.home.arpa"),
        ("x", "a@dev.localhost"),
    ],
)
def test_names_with_spaces_and_special_use_email_domains_are_kept(
    settings: CodxJuniorGlobalSettings, database: Database, users: UserDB, username: str, email: str
) -> None:
    users.create(username=username, email=email)
    stored = reread(settings, database, username.upper())
    local, _, domain = email.rpartition("@")
    assert stored.username == username and stored.email == f"{local}@{domain.lower()}"


def test_special_use_domains_leave_email_validator_as_it_was(users: UserDB) -> None:
    before = list(email_validator.SPECIAL_USE_DOMAIN_NAMES)
    users.create(username="a", email="a@localhost")
    users.create(username="b", email="b@printer.local")
    assert list(email_validator.SPECIAL_USE_DOMAIN_NAMES) == before
    with pytest.raises(email_validator.EmailNotValidError):  # its own answer is unchanged
        email_validator.validate_email("b@printer.local", check_deliverability=False)
    assert users.get_by_email("A@LOCALHOST").username == "a"


def test_usernames_keep_their_exact_spelling_and_stay_unique_by_key(users: UserDB) -> None:
    fullwidth = "\uff22ob"  # fullwidth B: NFKC makes it "Bob"
    created = users.create(username=f"  {fullwidth}  ")
    assert created.username == fullwidth  # only the surrounding spaces go
    assert users.get("bob") == created == users.get(fullwidth)
    with pytest.raises(Exception, match="username"):
        users.create(username="BOB")


def test_email_empty_string_is_no_email_and_clears_it(users: UserDB) -> None:
    assert users.create(username="a", email="").email is None
    assert users.create(username="b", email="b@example.com").email == "b@example.com"
    assert users.update("b", email="").email is None
    assert users.create(username="c", email="c@example.com").email  # b's old address is free again
    assert users.update("a", email="b@example.com").email == "b@example.com"


def test_apps_and_project_grants_update(users: UserDB) -> None:
    users.create(username="bob")
    updated = users.update("bob", apps=["viewer"], projects=[{"project_id": "p", "permissions": ["x"], "apps": ["k"]}])
    assert updated.apps == ("viewer",)
    assert updated.projects == (ProjectPermission(project_id="p", permissions=("x",), children=True, apps=("k",)),)
    assert users.update("bob", apps=()).apps == ()
    assert "apps" in TRACKED_FIELDS


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"username": "a\tb"}, "username: must not contain control"),
        ({"username": "x" * 255}, "username: must be at most 254"),
        ({"username": "\u200b"}, "username: must not contain U+200B"),
        ({"username": "ok", "apps": ["coder", ""]}, "apps: [1] must be 1-64 characters"),
        ({"username": "ok", "apps": ["x"] * 65}, "apps: at most 64 entries"),
        ({"username": "ok", "apps": "coder"}, "apps"),  # a string is not a list of names
        ({"username": "ok", "apps": ["bell\x07"]}, "apps: [0] must not contain control"),
        ({"username": "ok", "theme": "dark mode"}, "theme: must be 0-64"),
        ({"username": "ok", "email": "a@-bad.local"}, "email: not a valid email address"),
        ({"username": "ok", "email": "a b@localhost"}, "email: not a valid email address"),
        ({"username": "ok", "projects": [{"project_id": "p", "permissions": ["ok", "\x00"]}]}, "permissions"),
        ({"username": "ok", "projects": [{"project_id": "p", "children": "yes"}]}, "children"),
        ({"username": "ok", "projects": [{"project_id": "p", "apps": [5]}]}, "apps"),
    ],
)
def test_bad_codx_junior_values_are_refused_naming_the_field(
    users: UserDB, database: Database, fields: dict, fragment: str
) -> None:
    before = snapshot_state(database)
    with pytest.raises(InvalidUserData) as excinfo:
        users.create(**fields)
    assert fragment in str(excinfo.value)
    assert snapshot_state(database) == before


def test_old_three_field_grants_are_read_until_generation_5_rewrites_them(database: Database, users: UserDB) -> None:
    users.create(username="old")
    with database.transaction() as uow:
        user = uow.root[USERS_KEY].find_by_username("old")
        user.projects = (("docs", "tasks", False), ("p1", "", True))  # as generations 1-4 stored them
    assert users.get("old").projects == (
        ProjectPermission(project_id="docs", permissions="tasks", children=False, apps=()),
        ProjectPermission(project_id="p1", permissions="", children=True, apps=()),
    )
    # A write gives them the 4-field form.
    assert users.update("old", apps=["coder"]).projects[0].project_id == "docs"
    granted = users.grant_project("old", "p2", "x")
    assert [p.project_id for p in granted.projects] == ["docs", "p1", "p2"]
    with database.transaction() as uow:
        assert all(len(p) == 4 for p in uow.root[USERS_KEY].find_by_username("old").projects)


def test_revert_restores_apps(tmp_path: Path) -> None:
    database = Database(CodxJuniorGlobalSettings.load(db_backend="file", db_file_path=tmp_path / "users.fs"))
    try:
        users = UserDB(database)
        users.create(username="carol", apps=["coder"])
        first = users.history("carol")[0].tid
        users.update("carol", apps=["viewer", "coder"])
        changes = users.history("carol")[0].changes
        assert changes["apps"] == [("coder",), ("viewer", "coder")]
        assert users.revert("carol", first).apps == ("coder",)
    finally:
        database.close()


def test_cli_sets_and_clears_apps(tmp_path: Path) -> None:
    settings = CodxJuniorGlobalSettings.load(db_backend="file", db_file_path=tmp_path / "users.fs")
    added = run_cli(settings, "user", "add", "Dana Lee", "--no-password", "--app", "coder", "--app", "viewer", "--json")
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["apps"] == ["coder", "viewer"]
    updated = run_cli(settings, "user", "update", "dana lee", "--no-apps", "--json")
    assert updated.returncode == 0, updated.stderr
    assert json.loads(updated.stdout)["apps"] == []
    both = run_cli(settings, "user", "update", "dana lee", "--no-apps", "--app", "x")
    assert both.returncode != 0 and "--no-apps and --app contradict" in both.stderr
