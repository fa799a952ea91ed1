"""Generation 9: a username holding an "@" claims its key in ``by_email`` (migrations/evolve9.py).

The race the claims close is in tests/test_login_races.py; here: the step on a generation-8
database, what the claims change for lookups and writes, and check and repair.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import ZODB

from db.check import check, repair
from db.codx_junior import to_codx_junior
from db.database import Database
from db.errors import CodxDBError, GenerationError, UserAlreadyExists, UserNotFound
from db.ops.check_claims import claim_of
from db.settings import CodxJuniorGlobalSettings
from db.storage import open_storage
from db.user_db import UserDB
from db.users import repository
from db.users.models import USERS_KEY, User, email_key, entry_id
from migrations import runner
from migrations.registry import CODX_DB, stamp


def _claims(settings: CodxJuniorGlobalSettings) -> dict[str, str]:
    """``by_email`` as {key: username of the user it names}, read with plain ZODB."""
    zodb = ZODB.DB(open_storage(settings))
    try:
        with zodb.transaction() as conn:
            container = conn.root()[USERS_KEY]
            return {key: container.users[entry_id(entry)].username for key, entry in container.by_email.items()}
    finally:
        zodb.close()


def _edit(settings: CodxJuniorGlobalSettings, change: Any) -> None:
    """Run ``change(root, container)`` in one transaction of plain ZODB (no codx-db policy)."""
    zodb = ZODB.DB(open_storage(settings))
    try:
        with zodb.transaction() as conn:
            change(conn.root(), conn.root()[USERS_KEY])
    finally:
        zodb.close()


def _as_generation8(root: Any, container: Any) -> None:
    """Drop every claim and stamp generation 8, as a database generation-8 code wrote."""
    for user in list(container.users.values()):
        claim = claim_of(user)
        if claim is not None and entry_id(container.by_email.get(claim)) == user.id:
            del container.by_email[claim]
    stamp(root, CODX_DB, 8)


@pytest.fixture
def populated(persistent_settings: CodxJuniorGlobalSettings) -> Iterator[CodxJuniorGlobalSettings]:
    database = Database(persistent_settings)
    users = UserDB(database)
    users.create(username="alice@example.com")  # a claim, no email
    users.create(username="bob@example.com", email="bob@work.example")  # a claim and an email
    users.create(username="carol@example.com", email="carol@example.com")  # both one key: one entry
    users.create(username="dave", email="dave@example.com")  # no claim
    users.create(username="eve@example.com")
    database.close()
    yield persistent_settings


def test_a_generation8_database_is_refused_then_evolve9_adds_every_claim(populated: CodxJuniorGlobalSettings) -> None:
    def legacy(root: Any, container: Any) -> None:
        _as_generation8(root, container)
        # What the race (or data from before the checks) could leave: eve's username is frank's email.
        frank = User(id="f" * 32, username="frank", email="eve@example.com")
        container.add(frank)  # add() writes the email entry; frank's username claims nothing

    _edit(populated, legacy)
    assert _claims(populated) == {
        "bob@work.example": "bob@example.com",
        "carol@example.com": "carol@example.com",
        "dave@example.com": "dave",
        "eve@example.com": "frank",
    }
    with pytest.raises(GenerationError, match="migrate"):
        Database(populated).open()

    with runner.open_for_migration(populated) as zodb:
        assert [step.generation for step in runner.evolve(zodb)] == [9]
    assert _claims(populated) == {
        "alice@example.com": "alice@example.com",
        "bob@example.com": "bob@example.com",
        "bob@work.example": "bob@example.com",
        "carol@example.com": "carol@example.com",
        "dave@example.com": "dave",
        "eve@example.com": "frank",  # an email is never taken over by a claim
    }
    with runner.open_for_migration(populated) as zodb:
        assert runner.evolve(zodb) == []  # stamped 9: nothing left to run
    database = Database(populated)
    try:
        report = check(database)
        assert report.ok, report.problems
        assert [w.code for w in report.warnings] == ["login-ambiguous"]
        assert "eve@example.com" in report.warnings[0].message and "frank" in report.warnings[0].message
    finally:
        database.close()


def test_claims_are_no_emails_but_block_them(populated: CodxJuniorGlobalSettings) -> None:
    database = Database(populated)
    users = UserDB(database)
    try:
        with pytest.raises(UserNotFound):
            users.get_by_email("alice@example.com")  # a claim, not alice's email
        assert users.get_by_email("bob@work.example").username == "bob@example.com"
        assert users.get_by_email("carol@example.com").username == "carol@example.com"
        with pytest.raises(UserAlreadyExists) as refused:
            users.create(username="mallory", email="ALICE@example.com")
        assert refused.value.field == "username"
        with pytest.raises(UserAlreadyExists):
            users.create(username="dave@example.com")  # dave's email
        login = database.run(
            lambda uow: repository.find_login(repository.container(uow), "alice@example.com").username  # type: ignore[union-attr]
        )
        assert login == "alice@example.com"

        # The claim follows the username, and the email entry the email; neither steals the other.
        users.update("alice@example.com", username="alice2@example.com")
        users.update("bob@example.com", email="bob@example.com")  # now one key for both
        users.update("carol@example.com", email="carol@home.example")  # the claim stays
        users.update("eve@example.com", username="eve")  # no "@": no claim
        users.delete("dave")
    finally:
        database.close()
    assert _claims(populated) == {
        "alice2@example.com": "alice2@example.com",
        "bob@example.com": "bob@example.com",
        "carol@example.com": "carol@example.com",
        "carol@home.example": "carol@example.com",
    }
    database = Database(populated)
    try:
        assert check(database).ok
        UserDB(database).delete("bob@example.com")
        UserDB(database).delete("carol@example.com")
        report = check(database)
        assert report.ok and not report.warnings
    finally:
        database.close()
    assert _claims(populated) == {"alice2@example.com": "alice2@example.com"}


def test_check_reports_a_missing_claim_and_repair_restores_it(populated: CodxJuniorGlobalSettings) -> None:
    def drop(root: Any, container: Any) -> None:
        del container.by_email[email_key("alice@example.com")]

    _edit(populated, drop)
    database = Database(populated)
    try:
        report = check(database)
        assert [(p.code, p.repairable) for p in report.problems] == [("email-claim-missing", True)]
        fixed = repair(database)
        assert any("alice@example.com" in line for line in fixed.fixed), fixed
        assert check(database).ok
        with pytest.raises(UserAlreadyExists):
            UserDB(database).create(username="mallory", email="alice@example.com")
    finally:
        database.close()


def test_a_username_with_a_fullwidth_at_claims_its_folded_key(persistent_settings: CodxJuniorGlobalSettings) -> None:
    """NFKC folds a fullwidth at sign (U+FF20) into "@": such a username is a login by that address."""
    database = Database(persistent_settings)
    users = UserDB(database)
    try:
        users.create(username="x\uff20y.example")
        with pytest.raises(UserAlreadyExists):
            users.create(username="bob", email="x@y.example")
        users.create(username="carl", email="z@w.example")
        with pytest.raises(UserAlreadyExists):
            users.create(username="z\uff20w.example")  # carl's email, spelled with the fullwidth sign
        assert check(database).ok
    finally:
        database.close()
    assert _claims(persistent_settings)["x@y.example"] == "x\uff20y.example"


@pytest.mark.parametrize("release", ["update", "delete"])
def test_an_email_from_before_the_claims_hands_its_key_to_the_claim_when_released(
    populated: CodxJuniorGlobalSettings, release: str
) -> None:
    def legacy(root: Any, container: Any) -> None:
        # frank's email is eve's username, stored before generation 9 (the race, or older data):
        # frank holds the key, eve's claim is not there.
        del container.by_email["eve@example.com"]
        container.add(User(id="f" * 32, username="frank", email="eve@example.com"))

    _edit(populated, legacy)
    database = Database(populated)
    users = UserDB(database)
    try:
        assert [w.code for w in check(database).warnings] == ["login-ambiguous"]
        if release == "update":
            users.update("frank", email="frank@example.com")
        else:
            users.delete("frank")
        report = check(database)
        assert report.ok and not report.warnings, (report.problems, report.warnings)
        with pytest.raises(UserAlreadyExists):
            users.create(username="grace", email="eve@example.com")
    finally:
        database.close()
    assert _claims(populated)["eve@example.com"] == "eve@example.com"


def test_a_sync_keeps_a_pair_from_before_the_claims_and_refuses_a_new_one(populated: CodxJuniorGlobalSettings) -> None:
    """A full-list sync (codx-junior's admin save) must go on working on a database that holds a
    login-ambiguous pair from before generation 9 (a warning, as for other updates), while a
    pair the sync would make is refused, in any record order, and nothing is written."""

    def legacy(root: Any, container: Any) -> None:
        del container.by_email["eve@example.com"]
        container.add(User(id="f" * 32, username="frank", email="eve@example.com"))

    _edit(populated, legacy)
    database = Database(populated)
    users = UserDB(database)
    try:
        users.create(username="admin", role="admin")
        records = [to_codx_junior(user) for user in users.iter_users()]
        next(r for r in records if r["username"] == "dave")["theme"] = "light"
        assert users.sync(records).updated == ["dave"]
        assert [w.code for w in check(database).warnings] == ["login-ambiguous"]

        before = [user.model_dump() for user in users.iter_users()]
        for order in (records, records[::-1]):
            changed = [dict(r) for r in order]
            next(r for r in changed if r["username"] == "dave")["email"] = "alice@example.com"  # alice's claim
            with pytest.raises(CodxDBError, match=r"records\[\d+\]"):
                users.sync(changed)
        assert [user.model_dump() for user in users.iter_users()] == before
    finally:
        database.close()
