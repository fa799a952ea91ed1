"""Over-long text is refused before Unicode normalisation, whose cost grows with its square.

CPython's canonical reordering sorts each run of combining marks by insertion: a login of
40,000 alternating marks took 3 s in ``unicodedata.normalize``, holding the GIL (every other
thread of the process stalled, the event loop of the async face included). Each test records
the longest text any ``unicodedata.normalize`` call receives while it runs, and checks the
answer: a named error (or None for a login), and nothing written.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from typing import Any

import pytest

from db.database import Database
from db.errors import InvalidUserData
from db.user_db import UserDB
from db.users.keys import KEY_INPUT_MAX

# Base letter, then marks of classes 230 and 220 alternating: the reordering's worst case.
LONG = "a" + "\u0301\u0316" * 2_500
LONG_EMAIL = LONG + "@example.com"


@pytest.fixture
def longest(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The length of the longest text passed to ``unicodedata.normalize`` so far (one-element list)."""
    seen = [0]
    original = unicodedata.normalize

    def normalize(form: str, text: str) -> str:
        seen[0] = max(seen[0], len(text))
        return original(form, text)

    monkeypatch.setattr(unicodedata, "normalize", normalize)
    return seen


@pytest.fixture
def users(database: Database) -> UserDB:
    users = UserDB(database)
    users.create(username="alice", email="alice@example.com", password="Correct-Horse-77")
    return users


def _refused(call: Callable[[], Any], field: str) -> str:
    with pytest.raises(InvalidUserData) as caught:
        call()
    message = str(caught.value)
    assert field in message and "at most" in message, message
    return message


def test_a_long_login_fails_without_normalising_it(users: UserDB, longest: list[int]) -> None:
    assert users.authenticate(LONG, "Correct-Horse-77") is None
    assert users.authenticate(LONG_EMAIL, "Correct-Horse-77") is None
    assert longest[0] <= KEY_INPUT_MAX
    assert users.authenticate("alice", "Correct-Horse-77") is not None


@pytest.mark.parametrize(
    ("method", "field"),
    [
        ("find", "username"),
        ("get", "username"),
        ("has_password", "username"),
        ("delete", "username"),
        ("get_by_email", "email"),
    ],
)
def test_a_long_lookup_is_refused_by_name(users: UserDB, longest: list[int], method: str, field: str) -> None:
    _refused(lambda: getattr(users, method)(LONG), field)
    assert longest[0] <= KEY_INPUT_MAX
    assert users.count() == 1


@pytest.mark.parametrize("field", ["prefix", "after"])
def test_a_long_page_bound_is_refused_by_name(users: UserDB, longest: list[int], field: str) -> None:
    _refused(lambda: users.list(**{field: LONG}), field)
    assert longest[0] <= KEY_INPUT_MAX


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"username": "bob", "email": LONG_EMAIL}, "email"),
        ({"username": "bob", "full_name": LONG}, "full_name"),
        ({"username": LONG}, "username"),
    ],
)
def test_a_long_field_is_refused_before_normalising(
    users: UserDB, longest: list[int], fields: dict[str, str], name: str
) -> None:
    _refused(lambda: users.create(**fields), name)
    _refused(lambda: users.update("alice", **{k: v for k, v in fields.items() if k != "username"} or fields), name)
    assert longest[0] <= KEY_INPUT_MAX
    assert users.count() == 1
    assert users.get("alice").email == "alice@example.com"


def test_a_long_credential_lookup_is_refused_by_name(users: UserDB, longest: list[int]) -> None:
    _refused(lambda: users.issue_token(LONG), "username")
    _refused(lambda: users.revoke_tokens(LONG), "username")
    assert longest[0] <= KEY_INPUT_MAX
