"""UserDB.login: authenticate and a token in one call, the token only for the password verified.

Two calls (``authenticate`` then ``issue_token``, as examples/fastapi_app.py did) leave a gap: a
password change or a deactivation committed between them still got a token issued for the old
password. ``login`` issues it in a unit of work that checks the user still has the hash the
password matched.
"""

from __future__ import annotations

import threading
from typing import Any

import bcrypt
import pytest

from db.database import Database
from db.errors import InvalidUserData
from db.models import USERS_KEY
from db.user_db import UserDB
from db.users import login as login_module
from db.users.credentials import CREDENTIALS_KEY

PASSWORD = "Correct-Horse-77"


@pytest.fixture
def users(database: Database) -> UserDB:
    users = UserDB(database)
    users.create(username="alice", email="alice@example.com", password=PASSWORD)
    return users


def test_login_answers_the_user_and_a_working_token(users: UserDB) -> None:
    found = users.login("Alice@Example.com", PASSWORD)
    assert found is not None
    user, token = found
    assert user.username == "alice"
    assert users.get_by_token(token) == users.get("alice")
    assert users.login("alice", "wrong password") is None
    assert users.login("nobody", PASSWORD) is None
    users.update("alice", is_active=False)
    assert users.login("alice", PASSWORD) is None


def test_a_codx_junior_bcrypt_hash_logs_in_and_is_rehashed(users: UserDB) -> None:
    legacy = bcrypt.hashpw(b"short1", bcrypt.gensalt(rounds=4)).decode()
    users.import_users([{"username": "old", "password_hash": legacy}])
    found = users.login("old", "short1")  # the token is issued for the argon2id hash that replaced it
    assert found is not None and users.get_by_token(found[1]) is not None
    assert users.login("old", "short1") is not None


@pytest.mark.parametrize("change", ["password", "deactivation"])
def test_a_change_between_the_check_and_the_token_wins(
    users: UserDB, database: Database, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    original = login_module.verify_password

    def verify_then_change(stored: Any, password: str) -> Any:
        answer = original(stored, password)

        def other_request() -> None:  # another worker, committing right after the check
            other = UserDB(database)
            if change == "password":
                other.set_password("alice", "Another-Horse-88")
            else:
                other.update("alice", is_active=False)

        worker = threading.Thread(target=other_request)
        worker.start()
        worker.join(60)
        return answer

    monkeypatch.setattr(login_module, "verify_password", verify_then_change)
    assert users.login("alice", PASSWORD) is None
    monkeypatch.setattr(login_module, "verify_password", original)
    with database.transaction() as uow:
        store = uow.root.get(CREDENTIALS_KEY)
        assert store is None or len(store.tokens) == 0  # no token was issued


def test_two_logins_that_both_rehash_both_succeed(users: UserDB, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two requests (two tabs) log in an imported bcrypt user at once: both verified the old hash;
    the first replaces it with argon2id, the second finds it replaced. The password is right for
    the new hash too, so both get a token. (A barrier after both rehashes makes the race certain.)"""
    legacy = bcrypt.hashpw(b"tab-password-1", bcrypt.gensalt(rounds=4)).decode()
    users.import_users([{"username": "old", "password_hash": legacy}])
    original = login_module.hash_password
    both_hashed = threading.Barrier(2, timeout=60)

    def hash_then_wait(password: str) -> str:
        new_hash = original(password)
        both_hashed.wait()  # both logins verified the bcrypt hash and hold a new one
        return new_hash

    monkeypatch.setattr(login_module, "hash_password", hash_then_wait)
    results: list[bool] = []

    def log_in() -> None:
        found = users.login("old", "tab-password-1")
        results.append(found is not None and users.get_by_token(found[1]) is not None)

    threads = [threading.Thread(target=log_in) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert results == [True, True]
    assert users.login("old", "wrong") is None


@pytest.mark.parametrize("ttl", [5, "1h", -1.0])
def test_a_bad_ttl_is_refused_before_the_password_is_checked_or_rehashed(users: UserDB, ttl: Any) -> None:
    """The same error for a right and a wrong password, and an imported hash is not replaced first."""
    legacy = bcrypt.hashpw(b"tab-password-1", bcrypt.gensalt(rounds=4)).decode()
    users.import_users([{"username": "old", "password_hash": legacy}])
    for password in ("tab-password-1", "wrong"):
        with pytest.raises(InvalidUserData, match="ttl"):
            users.login("old", password, ttl=ttl)

    def stored(uow: Any) -> str:
        return str(uow.root[USERS_KEY].find_by_username("old").password_hash)

    assert users.database.run(stored) == legacy


def test_first_login_claims_a_password_less_account_in_the_same_call(users: UserDB) -> None:
    """codx-junior's first login: a user with no password (the default admin, a GitHub user) sets
    it by logging in. One call, so an unknown name answers as a wrong password does (None), not
    UserNotFound (a 404 that tells which names exist)."""
    users.create(username="gh-user", github="gh-user")  # no password
    users.create(username="off", is_active=False)
    assert users.login("nobody", PASSWORD, first_login=True) is None
    assert users.login("off", PASSWORD, first_login=True) is None
    assert users.login("gh-user", PASSWORD) is None  # without first_login: no claim
    found = users.login("gh-user", PASSWORD, first_login=True)
    assert found is not None and users.get_by_token(found[1]) == found[0]
    assert users.login("gh-user", "another-password-9", first_login=True) is None  # claimed: a wrong password now
    assert users.login("gh-user", PASSWORD, first_login=True) is not None
    assert users.login("alice", "wrong password", first_login=True) is None  # has a password: no claim
    assert users.login("alice", PASSWORD, first_login=True) is not None


def test_a_first_login_with_a_weak_password_sets_nothing(users: UserDB) -> None:
    users.create(username="gh-user")
    with pytest.raises(InvalidUserData, match="password"):
        users.login("gh-user", "short", first_login=True)
    assert users.has_password("gh-user") is False


def test_two_first_logins_one_claims_the_other_is_refused(users: UserDB) -> None:
    users.create(username="admin2", role="admin")
    start = threading.Barrier(2, timeout=60)
    results: dict[str, bool] = {}

    def claim(password: str) -> None:
        start.wait()
        results[password] = users.login("admin2", password, first_login=True) is not None

    threads = [threading.Thread(target=claim, args=(pw,)) for pw in ("first-horse-11", "second-horse-22")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(results.values()) == [False, True]
    [winner] = [pw for pw, ok in results.items() if ok]
    assert users.login("admin2", winner) is not None
