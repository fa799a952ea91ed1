"""codx-junior's CodxUser shape (issue 13 item 1): to_codx_junior / from_codx_junior and the helpers."""

from __future__ import annotations

from typing import Any

import pytest

from db.codx_junior import api_key_of, from_codx_junior, project_access, summary, to_codx_junior
from db.database import Database
from db.errors import InvalidUserData
from db.user_db import UserDB

# codx-junior's CodxUser keys, in model/model.py's order.
KEYS = ["username", "email", "avatar", "theme", "projects", "role", "token", "disabled", "github", "apps", "api_key"]

# Every field codx-junior stores, with the values that are easy to lose: a name with a space and
# an @, a special-use email domain, theme "", children None, permissions as a list and as a
# string, project apps, user apps with a duplicate, disabled.
ALICE: dict[str, Any] = {
    "username": "Alice Smith@home",
    "email": "alice@host.local",
    "avatar": "/avatars/alice.png",
    "theme": "",
    "projects": [
        {"project_id": "5d0c6a0e-1", "permissions": "tasks,coder", "children": None, "apps": ["coder", "viewer"]},
        {"project_id": "p2", "permissions": [], "children": False, "apps": []},
        {"project_id": "p3", "permissions": ["tasks", "kanban"], "children": True, "apps": []},
    ],
    "role": "user",
    "token": "",
    "disabled": True,
    "github": "Alice-Dev",
    "apps": ["kanban", "coder", "kanban"],
    "api_key": "",
}


def test_every_codx_junior_field_round_trips_through_create_and_get(database: Database) -> None:
    users = UserDB(database)
    created = users.create(**from_codx_junior(ALICE))
    back = to_codx_junior(users.get(ALICE["username"]))
    assert list(back) == KEYS
    assert back == ALICE
    assert to_codx_junior(created) == ALICE
    assert users.get_by_id(created.id).is_active is False  # disabled -> is_active


def test_secrets_never_come_back() -> None:
    kwargs = from_codx_junior({**ALICE, "token": "eyJhbGciOi.jwt.value", "api_key": "ck-0123456789abcdefghij"})
    assert "token" not in kwargs and "api_key" not in kwargs
    assert "eyJhbGciOi" not in repr(kwargs) and "ck-0123" not in repr(kwargs)
    # The key is read on its own, for the credential store (which keeps its hash only).
    assert api_key_of({"api_key": "ck-0123456789abcdefghij"}) == "ck-0123456789abcdefghij"
    assert api_key_of({"api_key": ""}) is None and api_key_of({}) is None


def test_to_codx_junior_returns_the_token_only_when_given(database: Database) -> None:
    users = UserDB(database)
    users.create(username="bob", email=None)
    bob = users.get("bob")
    shape = to_codx_junior(bob)
    assert shape["token"] == "" and shape["api_key"] == "" and shape["email"] == ""
    token = users.issue_token("bob")
    assert to_codx_junior(bob, token=token)["token"] == token
    assert not any("hash" in key for key in shape)


def test_omitted_and_none_fields_take_codx_junior_defaults() -> None:
    kwargs = from_codx_junior({"username": "dave", "email": None, "theme": None, "projects": None, "apps": None})
    assert kwargs == {
        "username": "dave",
        "email": None,
        "full_name": "",
        "is_superuser": False,
        "is_active": True,
        "avatar": "",
        "theme": "dim",
        "role": "user",
        "github": "",
        "projects": [],
        "apps": [],
    }
    grant = from_codx_junior({"username": "d", "projects": [{"project_id": "p"}]})["projects"]
    assert grant == [{"project_id": "p", "permissions": [], "children": True, "apps": []}]


def test_the_default_admin_has_no_login_and_is_an_admin() -> None:
    kwargs = from_codx_junior({"username": "admin", "role": "admin", "avatar": "/only_icon.png"})
    assert kwargs["is_superuser"] is True and kwargs["role"] == "admin"


@pytest.mark.parametrize(
    ("record", "named"),
    [
        ({"username": "a", "github_only": True}, "github_only: unknown field"),
        ({"username": ""}, "username: is missing"),
        ({"email": "a@example.com"}, "username: is missing"),
        ({"username": "a", "email": "not-an-email"}, "email:"),
        ({"username": "a", "disabled": "yes"}, "disabled: must be true or false"),
        ({"username": "a", "disabled": True, "is_active": True}, "disabled: contradicts is_active"),
        ({"username": "a", "role": "admin", "is_superuser": False}, "contradicts is_superuser"),
        ({"username": "a", "token": 5}, "token: must be a string"),
        ({"username": "a", "projects": [{"permissions": "x"}]}, "projects.0.project_id"),
        ({"username": "a\tb"}, "username:"),
    ],
)
def test_bad_records_are_refused_naming_the_field(record: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidUserData) as caught:
        from_codx_junior(record)
    assert named in str(caught.value)


def test_unknown_fields_are_all_named_at_once() -> None:
    with pytest.raises(InvalidUserData) as caught:
        from_codx_junior({"username": "a", "github_admin": True, "token_limit_rules": []})
    assert "github_admin: unknown field" in str(caught.value)
    assert "token_limit_rules: unknown field" in str(caught.value)


def test_project_access_is_codx_junior_get_user_project_access(database: Database) -> None:
    users = UserDB(database)
    alice = users.create(**from_codx_junior({**ALICE, "disabled": False}))
    erin = users.create(username="erin", role="admin")
    assert project_access(alice, "5d0c6a0e-1") == "tasks,coder"
    assert project_access(alice, "p3") == ["tasks", "kanban"]  # as written
    assert project_access(alice, "p2") == []
    assert project_access(alice, "nowhere") == ""
    assert project_access(erin, "nowhere") == "admin"
    assert summary(alice) == {"username": "Alice Smith@home", "avatar": "/avatars/alice.png"}


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"email": "not-an-email", "theme": 7}, ["username: is missing", "email", "theme"]),
        ({"username": "ann", "disabled": "no", "email": "nope"}, ["disabled: must be true or false", "email"]),
        ({"username": "ann", "colour": "red", "projects": "p1"}, ["colour: unknown field", "projects"]),
    ],
)
def test_a_record_with_several_bad_fields_names_every_one(record: dict[str, Any], expected: list[str]) -> None:
    """One answer listing every problem, not the first kind only (a form shows them all at once)."""
    with pytest.raises(InvalidUserData) as caught:
        from_codx_junior(record)
    errors = caught.value.errors
    for part in expected:
        assert any(error.startswith(part) for error in errors), (part, errors)
    assert sum(error.startswith("username") for error in errors) == (0 if "username" in record else 1)
