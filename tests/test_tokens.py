"""Access tokens and API keys through UserDB (issue 13 item 6), on every backend."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from db.database import Database
from db.errors import InvalidUserData, UserNotFound
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB
from db.users.credentials import CREDENTIALS_KEY, PURGE_ON_ISSUE, CredentialStore
from migrations.runner import GENERATION_KEY

START = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
PASSWORD = "violet-harbour-tide"


class Clock:
    """A clock the test moves: UserDB(clock=...) issues and checks tokens at its time."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def users(database: Database, clock: Clock) -> UserDB:
    users = UserDB(database, clock=clock)
    users.create(username="alice", email="alice@example.com", password=PASSWORD)
    users.create(username="bob")
    return users


# -- tokens ----------------------------------------------------------------------------------------


def test_a_token_finds_its_user_until_it_expires(users: UserDB, clock: Clock) -> None:
    token = users.issue_token("ALICE", ttl=timedelta(hours=2))
    assert token.startswith("cxt_")
    found = users.get_by_token(token)
    assert found is not None and found.username == "alice"
    clock.now += timedelta(hours=2) - timedelta(microseconds=1)
    assert users.get_by_token(token) is not None
    clock.now += timedelta(microseconds=1)
    assert users.get_by_token(token) is None


def test_the_default_lifetime_comes_from_the_settings(clock: Clock) -> None:
    database = Database(CodxJuniorGlobalSettings.load(db_backend="memory", db_token_ttl_hours=3))
    try:
        users = UserDB(database, clock=clock)
        users.create(username="carl")
        token = users.issue_token("carl")
        clock.now += timedelta(hours=3) - timedelta(seconds=1)
        assert users.get_by_token(token) is not None
        clock.now += timedelta(seconds=1)
        assert users.get_by_token(token) is None
    finally:
        database.close()


def test_tokens_are_refused_for_bad_input_and_unknown_or_disabled_users(users: UserDB) -> None:
    users.update("bob", is_active=False)
    with pytest.raises(InvalidUserData, match="'bob' is disabled: no token"):
        users.issue_token("bob")
    with pytest.raises(UserNotFound):
        users.issue_token("ghost")
    for ttl in (timedelta(0), timedelta(days=401), 3600):
        with pytest.raises(InvalidUserData, match="ttl: must be"):
            users.issue_token("alice", ttl=ttl)  # type: ignore[arg-type]
    for token in ("", "cxt_forged", "x" * 10_000, None, 42):
        assert users.get_by_token(token) is None  # type: ignore[arg-type]
        assert users.get_by_api_key(token) is None  # type: ignore[arg-type]


def test_revoke_one_token_or_all_of_a_user(users: UserDB) -> None:
    first, second, other = users.issue_token("alice"), users.issue_token("alice"), users.issue_token("bob")
    assert users.revoke_token(first) is True
    assert users.revoke_token(first) is False
    assert users.get_by_token(first) is None and users.get_by_token(second) is not None
    assert users.revoke_tokens("Alice") == 1
    assert users.revoke_tokens("alice") == 0
    assert users.get_by_token(second) is None
    assert users.get_by_token(other) is not None  # bob's untouched
    with pytest.raises(UserNotFound):
        users.revoke_tokens("ghost")


def test_a_password_change_ends_every_session_but_keeps_api_keys(users: UserDB) -> None:
    token, key = users.issue_token("alice"), users.create_api_key("alice", "ci")
    bob_token = users.issue_token("bob")
    users.set_password("alice", "another-long-phrase")
    assert users.get_by_token(token) is None
    assert users.get_by_api_key(key) is not None  # machine credentials survive (as DRF tokens)
    assert users.get_by_token(bob_token) is not None
    # A rehash at login is not a password change.
    fresh = users.issue_token("alice")
    assert users.authenticate("alice", "another-long-phrase") is not None
    assert users.get_by_token(fresh) is not None


def test_deactivation_revokes_tokens_and_blocks_api_keys(users: UserDB) -> None:
    token, key = users.issue_token("alice"), users.create_api_key("alice")
    users.update("alice", full_name="Alice")  # another change revokes nothing
    assert users.get_by_token(token) is not None
    users.update("alice", disabled=True)
    assert users.get_by_token(token) is None and users.get_by_api_key(key) is None
    users.update("alice", is_active=True)
    assert users.get_by_token(token) is None  # revoked, not merely hidden
    assert users.get_by_api_key(key) is not None  # blocked while inactive only


def test_delete_revokes_tokens_and_api_keys(database: Database, users: UserDB) -> None:
    token, key = users.issue_token("alice"), users.create_api_key("alice")
    users.delete("alice")
    assert users.get_by_token(token) is None and users.get_by_api_key(key) is None

    def leftovers(uow: object) -> tuple[int, int, int, int]:
        store: CredentialStore = uow.root[CREDENTIALS_KEY]  # type: ignore[attr-defined]
        return len(store.tokens), len(store.tokens_by_user), len(store.api_keys), len(store.api_keys_by_user)

    assert database.run(leftovers) == (0, 0, 0, 0)
    # A new user with the same name gets nothing of the old one's.
    users.create(username="alice")
    assert users.get_by_token(token) is None and users.get_by_api_key(key) is None
    assert users.api_keys("alice") == []


def test_expired_tokens_are_purged_by_issue_and_by_purge(users: UserDB, database: Database, clock: Clock) -> None:
    for _ in range(PURGE_ON_ISSUE + 5):
        users.issue_token("bob", ttl=timedelta(minutes=1))
    live = users.issue_token("bob", ttl=timedelta(hours=1))
    clock.now += timedelta(minutes=2)
    count = lambda: database.run(lambda uow: len(uow.root[CREDENTIALS_KEY].tokens))  # noqa: E731
    users.issue_token("alice")  # the writer pays: at most PURGE_ON_ISSUE expired tokens go
    assert count() == 2 + 5
    assert users.purge_expired_tokens(limit=2) == 2
    assert users.purge_expired_tokens() == 3
    assert users.purge_expired_tokens() == 0
    assert count() == 2 and users.get_by_token(live) is not None
    with pytest.raises(InvalidUserData, match="limit: must be an integer"):
        users.purge_expired_tokens(limit=0)


# -- API keys --------------------------------------------------------------------------------------


def test_api_keys_are_created_listed_and_revoked(users: UserDB, clock: Clock) -> None:
    ci = users.create_api_key("alice", "ci")
    clock.now += timedelta(seconds=1)
    laptop = users.create_api_key("Alice", "laptop")
    bobs = users.create_api_key("bob")
    assert ci.startswith("cxk_") and ci != laptop
    assert users.get_by_api_key(ci).username == "alice"  # type: ignore[union-attr]
    assert users.get_by_token(ci) is None  # a key is not a token
    listed = users.api_keys("alice")
    assert [(k.name, k.created_at, k.imported) for k in listed] == [
        ("ci", START, False),
        ("laptop", START + timedelta(seconds=1), False),
    ]
    assert all(ci not in repr(k) and laptop not in k.model_dump_json() for k in listed)

    assert users.revoke_api_key(ci) is True and users.revoke_api_key(ci) is False
    assert users.get_by_api_key(ci) is None
    # By key id (an admin UI has no secret): only the named user's key.
    laptop_id = users.api_keys("alice")[0].key_id
    assert users.revoke_api_key_id("bob", laptop_id) is False
    assert users.revoke_api_key_id("alice", "not-an-id") is False
    assert users.revoke_api_key_id("alice", laptop_id) is True
    assert users.get_by_api_key(laptop) is None and users.api_keys("alice") == []
    assert users.get_by_api_key(bobs) is not None
    with pytest.raises(UserNotFound):
        users.api_keys("ghost")
    with pytest.raises(UserNotFound):
        users.create_api_key("ghost")
    with pytest.raises(InvalidUserData, match="name: must be at most 100"):
        users.create_api_key("alice", "n" * 101)


# -- databases made before the credential store ------------------------------------------------------


def test_a_database_without_the_store_reads_as_no_credentials_and_gets_it_on_first_write(
    database: Database, clock: Clock
) -> None:
    users = UserDB(database, clock=clock)
    users.create(username="old")
    generation = database.run(lambda uow: uow.root[GENERATION_KEY])

    def drop_store(uow: object) -> None:
        del uow.root[CREDENTIALS_KEY]  # type: ignore[attr-defined]

    database.run(drop_store)  # as a database installed before tokens existed
    assert users.get_by_token("cxt_anything") is None and users.get_by_api_key("cxk_anything") is None
    assert users.revoke_token("cxt_anything") is False and users.revoke_api_key("cxk_x") is False
    assert users.revoke_tokens("old") == 0 and users.purge_expired_tokens() == 0
    assert users.api_keys("old") == [] and users.revoke_api_key_id("old", "0" * 12) is False
    users.set_password("old", PASSWORD)  # the revocation hooks cope too
    users.update("old", is_active=False)
    users.update("old", is_active=True)
    assert database.run(lambda uow: CREDENTIALS_KEY in uow.root) is False  # reads and hooks wrote nothing

    token = users.issue_token("old")
    assert users.get_by_token(token).username == "old"  # type: ignore[union-attr]
    key = users.create_api_key("old")
    assert users.get_by_api_key(key).username == "old"  # type: ignore[union-attr]
    # No generation was needed for it.
    assert database.run(lambda uow: uow.root[GENERATION_KEY]) == generation
    users.delete("old")
    assert users.get_by_token(token) is None and users.get_by_api_key(key) is None


# -- secrets stay secret ---------------------------------------------------------------------------


def test_no_secret_in_logs_reprs_or_errors(users: UserDB, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token, key = users.issue_token("alice"), users.create_api_key("alice", "ci")
    seen: list[str] = [repr(users), repr(users._credentials), repr(users.api_keys("alice"))]
    seen.append(repr(users.get_by_token(token)))
    seen.append(repr(users.get_by_api_key(key)))
    users.database.run(lambda uow: seen.extend(repr(v) for v in uow.root[CREDENTIALS_KEY].tokens.values()))
    users.database.run(lambda uow: seen.extend(repr(v) for v in uow.root[CREDENTIALS_KEY].api_keys.values()))
    users.update("bob", is_active=False)
    for bad in (
        lambda: users.create_api_key("alice", name=key + "\x00"),
        lambda: users.create_api_key("alice", name=token * 3),
        lambda: users.issue_token("bob"),
        lambda: users.set_password("alice", "password1"),
        lambda: users.set_password_if_unset("alice", "alice-example.com"),
    ):
        with pytest.raises(InvalidUserData) as excinfo:
            bad()
        seen.append(str(excinfo.value))
    assert users.revoke_token(token) and users.revoke_api_key(key)
    assert users.get_by_token(token) is None
    text = "\n".join(seen) + caplog.text
    assert "is too common" in text and "is disabled" in text  # the errors were seen
    for secret in (token, key, token[4:24], key[4:24], PASSWORD, "password1", "alice-example.com"):
        assert secret not in text, secret


def test_a_revert_to_an_inactive_version_revokes_tokens(tmp_path: Path, clock: Clock) -> None:
    database = Database(CodxJuniorGlobalSettings.load(db_backend="file", db_file_path=tmp_path / "users.fs"))
    try:
        users = UserDB(database, clock=clock)
        users.create(username="erin", is_active=False)
        inactive_tid = users.history("erin")[0].tid
        users.update("erin", is_active=True)
        token = users.issue_token("erin")
        users.revert("erin", inactive_tid)
        assert users.get("erin").is_active is False
        users.update("erin", is_active=True)
        assert users.get_by_token(token) is None  # revoked by the revert, not merely hidden
    finally:
        database.close()
