"""codx-junior's user flows replayed through codx-db's public API (issue 13 item 9), on file and PostgreSQL.

Each test does what codx-junior's ``security/user_management.py`` / ``api/users.py`` / ``app.py``
do, call by call, with the codx-db call that replaces it, and asserts codx-junior's answer.
The users are tests/fixtures/codx_junior_global_settings.json (its bcrypt logins included).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from db.codx_junior import from_codx_junior, project_access, summary, to_codx_junior
from db.database import Database
from db.errors import InvalidUserData
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB
from tests.test_import import PASSWORDS

SAMPLE = Path(__file__).parent / "fixtures" / "codx_junior_global_settings.json"
KEYS = ["username", "email", "avatar", "theme", "projects", "role", "token", "disabled", "github", "apps", "api_key"]
PROJECT = "5d0c6a0e-8a4b-4f57-9a54-3f1d2b7c9e10"
BOB_KEY = "codx-junior-key-for-bob-0123456789"
FIRST = "lantern-orchard-meadow"
OTHER = "granite-velvet-compass"


@pytest.fixture
def users(persistent_settings: CodxJuniorGlobalSettings) -> Iterator[UserDB]:
    """The sample's users, each with the login whose username is exactly its own (codx-junior's find_user_login)."""
    data = json.loads(SAMPLE.read_text())
    logins: dict[str, str] = {}
    for login in data["user_logins"]:
        logins.setdefault(login["username"], login["password"])
    records = []
    for user in data["users"]:
        record = from_codx_junior(user)
        if user["username"] in logins:
            record["password_hash"] = logins[user["username"]]
        records.append(record)
    database = Database(persistent_settings)
    try:
        users = UserDB(database)
        users.import_users(records)
        yield users
    finally:
        database.close()


def login(users: UserDB, username: str, password: str) -> dict[str, Any] | None:
    """codx-junior's POST /api/users/login: the user with a fresh token, or None (its ``null``)."""
    if users.find(username) is not None and not users.has_password(username):
        users.set_password_if_unset(username, password)  # the first login sets the password
    user = users.authenticate(username, password)
    return None if user is None else to_codx_junior(user, token=users.issue_token(user.username))


def token_login(users: UserDB, token: str) -> dict[str, Any] | None:
    """codx-junior's login with ``Authentication: Bearer <token>``."""
    user = users.get_by_token(token)
    return None if user is None else to_codx_junior(user, token=token)


def test_password_login(users: UserDB) -> None:
    alice = login(users, "alice", PASSWORDS["alice"])
    assert alice is not None and list(alice) == KEYS
    assert alice["token"] and alice["api_key"] == "" and alice["apps"] == ["kanban"]
    assert alice["projects"] == [
        {"project_id": PROJECT, "permissions": "tasks,coder", "children": True, "apps": []},
        {"project_id": "docs-site", "permissions": "tasks", "children": False, "apps": []},
    ]
    bob = login(users, "bob", PASSWORDS["bob"])  # a $2y$ bcrypt hash from codx-junior
    assert bob is not None and bob["projects"][0]["permissions"] == []
    assert login(users, "alice", "wrong-password-1") is None
    assert login(users, "carol", PASSWORDS["carol"]) is None  # disabled
    assert login(users, "ghost", "whatever-password") is None


def test_first_login_sets_the_password_once(users: UserDB) -> None:
    assert users.has_password("dave") is False
    assert login(users, "dave", FIRST) is not None
    assert login(users, "dave", OTHER) is None  # the second "first login" does not replace it
    assert login(users, "dave", FIRST) is not None
    assert users.set_password_if_unset("dave", OTHER) is False


def test_token_login(users: UserDB) -> None:
    alice = login(users, "alice", PASSWORDS["alice"])
    assert alice is not None
    again = token_login(users, alice["token"])
    assert again is not None and again["username"] == "alice" and again["token"] == alice["token"]
    assert token_login(users, "cxt_" + "A" * 43) is None  # forged
    users.set_password("alice", OTHER)  # a password change ends every session
    assert token_login(users, alice["token"]) is None
    token = users.issue_token("alice")
    assert users.revoke_tokens("alice") == 1
    assert token_login(users, token) is None
    token = users.issue_token("alice")
    saved = [to_codx_junior(user) for user in users.iter_users()]
    next(r for r in saved if r["username"] == "alice")["disabled"] = True
    users.sync(saved)  # the admin disables alice in the settings UI
    assert token_login(users, token) is None


def test_github_login(users: UserDB) -> None:
    for login_name in ("alice-dev", "Alice-Dev"):
        found = users.get_by_github(login_name)
        assert found is not None and found.username == "alice"
    token = users.issue_token("alice")  # codx-junior's oauth branch: no password
    assert token_login(users, token) is not None
    assert users.get_by_github("nobody-here") is None
    assert users.get_by_github("") is None  # codx-junior's scan would match every user without a login


def test_user_update_changes_what_codx_junior_copies(users: UserDB) -> None:
    updated = users.update("alice", email="alice@elsewhere.example", avatar="/a.png", theme="light")
    shape = to_codx_junior(updated)
    assert (shape["email"], shape["avatar"], shape["theme"], shape["role"]) == (
        "alice@elsewhere.example",
        "/a.png",
        "light",
        "user",
    )
    with pytest.raises(InvalidUserData, match="email"):
        users.update("alice", email="x")


def test_project_grant_and_access(users: UserDB) -> None:
    users.grant_project("bob", "proj-x", "admin")  # add_user_to_project
    assert project_access(users.get("bob"), "proj-x") == "admin"
    assert project_access(users.get("erin"), "anything") == "admin"  # role admin
    assert project_access(users.get("dave"), "proj-x") == ""
    users.grant_project("bob", "proj-x", "tasks")  # a second grant replaces the first
    assert project_access(users.get("bob"), "proj-x") == "tasks"
    assert [p.project_id for p in users.get("bob").projects].count("proj-x") == 1


def test_users_with_project_access(users: UserDB) -> None:
    members = [summary(user) for user in users.with_project_access(PROJECT)]
    assert {m["username"] for m in members} == {"admin", "erin", "alice", "carol"}  # disabled carol too
    assert all(list(m) == ["username", "avatar"] for m in members)
    admins_only = {summary(user)["username"] for user in users.with_project_access("nobody-has-it")}
    assert admins_only == {"admin", "erin"}


def test_admin_whole_list_save(users: UserDB) -> None:
    alice_token = users.issue_token("alice")
    saved = [to_codx_junior(user) for user in users.iter_users()]  # GET /api/global/settings users
    assert all(r["token"] == "" and r["api_key"] == "" for r in saved)
    before = [user.model_dump() for user in users.iter_users()]
    bad = [dict(r) for r in saved]
    bad[2]["email"] = "x"
    with pytest.raises(InvalidUserData) as caught:
        users.sync(bad)
    assert any(e.startswith("records[2].email:") for e in caught.value.errors)
    with pytest.raises(InvalidUserData, match="no active admin"):
        users.sync([r for r in saved if r["role"] != "admin"])
    assert [user.model_dump() for user in users.iter_users()] == before  # nothing written
    edited = [r for r in saved if r["username"] != "dave"]
    next(r for r in edited if r["username"] == "alice")["theme"] = "light"
    next(r for r in edited if r["username"] == "bob")["username"] = "Bob"
    edited.append({"username": "newbie", "apps": ["coder"]})
    report = users.sync(edited)
    assert (report.created, report.updated, report.deleted) == (["Bob", "newbie"], ["alice"], ["bob", "dave"])
    assert token_login(users, alice_token) is not None  # its empty token field left the session alone
    assert users.get("alice").theme == "light" and users.get("newbie").apps == ("coder",)


def test_api_key(users: UserDB) -> None:
    saved = [to_codx_junior(user) for user in users.iter_users()]
    next(r for r in saved if r["username"] == "bob")["api_key"] = BOB_KEY  # a key codx-junior gave bob
    assert users.sync(saved).api_keys_added == ["bob"]
    found = users.get_by_api_key(BOB_KEY)
    assert found is not None and found.username == "bob"
    key = users.create_api_key("alice", "ci")
    listed = users.api_keys("alice")
    assert [info.name for info in listed] == ["ci"] and key not in repr(listed)
    assert users.get_by_api_key(key) is not None
    assert users.revoke_api_key(key) is True
    assert users.get_by_api_key(key) is None
    users.update("bob", disabled=True)
    assert users.get_by_api_key(BOB_KEY) is None  # a disabled user's key does not authenticate
