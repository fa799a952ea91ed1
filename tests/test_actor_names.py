"""Who makes a change (``actor``, a transaction's ``user``): checked where it is given, named when refused.

Before, an actor of 70,000 characters failed only at commit on FileStorage ("user name too long"),
after the work was done; an int was stored as its text; a newline broke history's one-line output.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from db.actors import MAX_ACTOR_CHARS
from db.async_user_db import AsyncUserDB
from db.database import Database
from db.user_db import UserDB
from tests.conftest import make_settings, run_cli

BAD_ACTORS: list[tuple[Any, type[Exception], str]] = [
    (123, TypeError, "actor must be a string or None, not int"),
    (b"alice", TypeError, "not bytes"),
    ("   ", ValueError, "actor is blank"),
    ("x" * (MAX_ACTOR_CHARS + 1), ValueError, f"at most {MAX_ACTOR_CHARS} characters"),
    ("alice\nbob", ValueError, "unprintable character U+000A"),
    ("alice\x00", ValueError, "unprintable character U+0000"),
]


@pytest.fixture
def database(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    database = Database(make_settings("file", request, tmp_path, db_keep_history=True))
    yield database
    database.close()


@pytest.mark.parametrize(("actor", "error", "message"), BAD_ACTORS)
def test_a_bad_actor_is_refused_by_name_before_anything_is_written(
    database: Database, actor: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        UserDB(database, actor=actor)
    with pytest.raises(error, match=re.escape(message)):
        AsyncUserDB(database, actor=actor)
    user_message = re.escape(message.replace("actor", "user"))
    with pytest.raises(error, match=user_message):
        database.run(lambda uow: uow.root.__setitem__("touched", True), user=actor)
    with pytest.raises(error, match=user_message):
        database.submit(lambda uow: uow.root.__setitem__("touched", True), user=actor)
    with pytest.raises(error, match=user_message), database.transaction(user=actor) as uow:
        uow.root["touched"] = True
    assert database.run(lambda uow: "touched" not in uow.root)
    assert database.run(lambda uow: uow.root.get("touched")) is None


def test_a_good_actor_is_recorded_as_given(database: Database) -> None:
    longest = "ä" * MAX_ACTOR_CHARS
    users = UserDB(database, actor=longest)
    users.create(username="alice")
    assert users.history("alice")[0].by == longest
    assert UserDB(database, actor=None).actor is None


def test_async_user_db_refuses_it_too(database: Database) -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="actor is blank"):
            AsyncUserDB(database, actor=" ")
        users = AsyncUserDB(database, actor="codx-api")
        await users.create(username="bob")

    asyncio.run(main())
    assert UserDB(database).history("bob")[0].by == "codx-api"


def test_cli_actor_is_a_usage_error(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    settings = make_settings("file", request, tmp_path)
    result = run_cli(settings, "--actor", "a\nb", "user", "add", "carol", "--no-password")
    assert result.returncode == 2, result
    assert "--actor" in result.stderr and "unprintable character U+000A" in result.stderr, result.stderr
    assert not settings.db_file_path.exists(), "nothing is created"


def test_an_empty_actor_names_nobody_and_a_no_break_space_is_a_space(database: Database) -> None:
    """ "" was always "nobody named" (a falsy user): kept. A no-break space is a space in a name."""
    assert UserDB(database, actor="").actor is None
    assert UserDB(database, actor="Ana\u00a0María").actor == "Ana\u00a0María"
    with pytest.raises(ValueError, match="U\\+200B"):
        UserDB(database, actor="ana\u200bmaria")


def test_a_login_that_cannot_name_an_actor_does_not_break_the_cli(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default actor is "LOGIN (codx-db cli)": a 90-character $LOGNAME made every user command
    fail with "unexpected ValueError" (a review); the tool's name stands in."""
    settings = make_settings("file", request, tmp_path, db_keep_history=True)
    monkeypatch.setenv("LOGNAME", "a" * 90)
    monkeypatch.setenv("USER", "a" * 90)
    added = run_cli(settings, "user", "add", "dana", "--no-password")
    assert added.returncode == 0, added.stderr
    history = run_cli(settings, "--json", "user", "history", "dana")
    assert '"by": "codx-db cli"' in history.stdout.replace('": "', '": "'), history.stdout
