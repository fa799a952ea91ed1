"""A revocation and a credential issued while it runs: the credential never outlives the revocation.

A password change, a deactivation or a deletion revokes the user's tokens (and, deleting, its
API keys) in its own snapshot. Here a token or key is issued, and committed, after the revoking
unit of work read the user's credentials and before it commits; that unit then must conflict,
run again (``Database.run`` retries) and revoke the new credential too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from db.database import Database, UnitOfWork
from db.user_db import UserDB
from db.users.credentials import CREDENTIALS_KEY


def _revoke_while_issuing(
    database: Database, revoke: Callable[[UserDB], Any], issue: Callable[[UserDB], str]
) -> tuple[str, int]:
    """Run ``revoke`` in a unit of work that, on its first run, waits for ``issue`` to commit; (credential, runs)."""
    users = UserDB(database)
    issued: list[str] = []
    runs = [0]

    def revoking(uow: UnitOfWork) -> None:
        runs[0] += 1
        revoke(users)  # joins this unit of work
        if runs[0] == 1:
            worker = threading.Thread(target=lambda: issued.append(issue(UserDB(database))))
            worker.start()
            worker.join(60)
            assert issued, "the credential was not issued"

    database.run(revoking)
    return issued[0], runs[0]


@pytest.fixture
def users(database: Database) -> UserDB:
    users = UserDB(database)
    users.create(username="alice", password="Correct-Horse-77")
    users.create(username="bob")
    users.issue_token("bob")  # the credential store exists; alice has no credential yet
    return users


@pytest.mark.parametrize("first", [False, True], ids=["alice-without-credentials", "alice-with-a-token"])
def test_a_token_issued_during_a_password_change_is_revoked(users: UserDB, database: Database, first: bool) -> None:
    if first:
        users.issue_token("alice")
    token, runs = _revoke_while_issuing(
        database, lambda u: u.set_password("alice", "Another-Horse-88"), lambda u: u.issue_token("alice")
    )
    assert runs == 2  # the revocation conflicted with the issue, and ran again
    assert users.get_by_token(token) is None
    assert users.authenticate("alice", "Another-Horse-88") is not None


def test_a_token_issued_during_a_deactivation_stays_revoked(users: UserDB, database: Database) -> None:
    token, runs = _revoke_while_issuing(
        database, lambda u: u.update("alice", is_active=False), lambda u: u.issue_token("alice")
    )
    assert runs == 2
    users.update("alice", is_active=True)
    assert users.get_by_token(token) is None  # not revived by the re-activation


def test_an_api_key_created_during_a_deletion_leaves_no_orphan(users: UserDB, database: Database) -> None:
    key, runs = _revoke_while_issuing(database, lambda u: u.delete("alice"), lambda u: u.create_api_key("alice"))
    assert runs == 2
    assert users.get_by_api_key(key) is None
    with database.transaction() as uow:
        store = uow.root[CREDENTIALS_KEY]
        owners = {record.user_id for record in store.api_keys.values()}
    assert owners == set()  # bob has a token, no key; alice's key went with her
