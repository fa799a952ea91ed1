"""UserDB.sync: codx-junior's admin whole-list save (issue 13 item 5), on every backend."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from db.async_user_db import AsyncUserDB
from db.codx_junior import to_codx_junior
from db.database import Database
from db.errors import InvalidUserData, UserAlreadyExists
from db.ops.check import check
from db.user_db import UserDB
from db.users.credentials import CREDENTIALS_KEY
from db.users.sync import SyncReport

PASSWORD = "violet-harbour-tide"
IMPORTED_KEY = "ck-imported-0123456789abcdef"


@pytest.fixture
def users(database: Database) -> UserDB:
    users = UserDB(database)
    users.create(username="admin", role="admin", avatar="/only_icon.png")
    users.create(username="alice", email="alice@example.com", full_name="Alice A.", password=PASSWORD, apps=["kanban"])
    users.create(username="bob", github="bob-gh")
    users.create(username="dave")
    return users


def saved_list(users: UserDB) -> list[dict[str, Any]]:
    """What codx-junior's admin UI holds: every user in its shape, secrets empty."""
    return [to_codx_junior(user) for user in users.iter_users()]


def state(users: UserDB) -> list[dict[str, Any]]:
    return [user.model_dump() for user in users.iter_users()]


def by_name(records: list[dict[str, Any]], username: str) -> dict[str, Any]:
    return next(record for record in records if record["username"] == username)


def test_the_report_lists_created_updated_deleted_and_unchanged(users: UserDB) -> None:
    records = [r for r in saved_list(users) if r["username"] != "dave"]
    by_name(records, "alice")["theme"] = "light"
    records.append({"username": "newbie", "email": "newbie@example.com", "apps": ["coder"]})
    report = users.sync(records)
    assert report == SyncReport(created=["newbie"], updated=["alice"], deleted=["dave"], unchanged=["admin", "bob"])
    assert report.changed
    assert users.find("dave") is None
    assert users.get("alice").theme == "light"
    assert users.get("newbie").apps == ("coder",)
    assert users.count() == 4
    again = users.sync(records)  # the same list again changes nothing
    assert again.unchanged == ["admin", "alice", "bob", "newbie"] and not again.changed


def test_an_unchanged_user_is_not_written(users: UserDB) -> None:
    before = users.get("bob")
    users.sync(saved_list(users))
    assert users.get("bob").updated_at == before.updated_at


def test_omitted_fields_mean_codx_junior_defaults_but_full_name_is_kept(users: UserDB) -> None:
    records = saved_list(users)
    alice = by_name(records, "alice")
    for field in ("email", "apps", "theme"):
        del alice[field]
    assert users.sync(records).updated == ["alice"]
    stored = users.get("alice")
    assert (stored.email, stored.apps, stored.theme) == (None, (), "dim")
    assert stored.full_name == "Alice A."  # codx-junior has no full_name: its save must not wipe it


def test_a_bad_record_names_every_problem_and_writes_nothing(users: UserDB) -> None:
    before = state(users)
    records = saved_list(users)
    records[1]["email"] = "x"
    records[2]["disabled"] = "no"
    records.append({"username": "newbie", "github_only": True})
    with pytest.raises(InvalidUserData) as caught:
        users.sync(records)
    errors = caught.value.errors
    assert any(e.startswith("records[1].email:") for e in errors)
    assert "records[2].disabled: must be true or false" in errors
    assert any(e.startswith("records[4].github_only: unknown field") for e in errors)
    assert state(users) == before


@pytest.mark.parametrize(
    ("second", "named"),
    [
        ({"username": "ALICE"}, "records[1].username: the same as records[0]"),
        ({"username": "carol", "email": "Alice@Example.com"}, "records[1].email: the same as records[0]"),
        ({"username": "carol", "github": "ALICE-GH"}, "records[1].github: the same as records[0]"),
        ({"username": "carol", "api_key": IMPORTED_KEY}, "records[1].api_key: the same as records[0]"),
    ],
)
def test_records_that_share_a_key_are_refused(users: UserDB, second: dict[str, Any], named: str) -> None:
    before = state(users)
    first = {"username": "alice", "email": "alice@example.com", "github": "alice-gh", "api_key": IMPORTED_KEY}
    with pytest.raises(InvalidUserData) as caught:
        users.sync([first, second, {"username": "admin", "role": "admin"}])
    assert named in caught.value.errors
    assert state(users) == before


def test_a_list_that_leaves_no_active_admin_is_refused(users: UserDB) -> None:
    before = state(users)
    records = saved_list(users)
    by_name(records, "admin")["disabled"] = True
    with pytest.raises(InvalidUserData, match="no active admin would remain"):
        users.sync(records)
    with pytest.raises(InvalidUserData, match="no active admin would remain"):
        users.sync([r for r in records if r["username"] != "admin"])
    assert state(users) == before
    # Explicitly allowed, the same list goes through.
    assert users.sync(records, require_admin=False).updated == ["admin"]


def test_a_rename_without_id_is_a_delete_and_a_create(users: UserDB) -> None:
    old = users.get("bob")
    token = users.issue_token("bob")
    records = saved_list(users)
    by_name(records, "bob")["username"] = "Bob"  # a case-only change is another user in codx-junior
    report = users.sync(records)
    assert report.created == ["Bob"] and report.deleted == ["bob"]
    assert users.get("Bob").id != old.id and users.get("Bob").username == "Bob"
    assert users.get("Bob").github == "bob-gh"  # the deleted user's GitHub login was freed first
    assert users.get_by_token(token) is None


def test_a_rename_with_id_keeps_the_user(users: UserDB) -> None:
    old = users.get("bob")
    token = users.issue_token("bob")
    records = [user.model_dump() for user in users.iter_users()]  # codx-db's own field names
    by_name(records, "bob")["username"] = "robert"
    report = users.sync(records)
    assert report.updated == ["robert"] and report.deleted == [] and report.created == []
    assert users.get("robert").id == old.id
    assert users.get_by_token(token) is not None  # a rename is no reason to log out


def test_unknown_ids_and_passwords_are_refused(users: UserDB) -> None:
    before = state(users)
    records = saved_list(users)
    records[1]["id"] = "0" * 32
    with pytest.raises(InvalidUserData, match=r"records\[1\]\.id: no user with this id"):
        users.sync(records)
    records = saved_list(users)
    records[2]["password"] = PASSWORD
    with pytest.raises(InvalidUserData, match=r"records\[2\]\.password: sync does not set passwords"):
        users.sync(records)
    assert state(users) == before


def test_a_clash_with_a_kept_user_writes_nothing(users: UserDB) -> None:
    before = state(users)
    records = saved_list(users)
    by_name(records, "dave")["github"] = "bob-gh"  # bob keeps it: records clash in the list itself
    with pytest.raises(InvalidUserData, match="github: the same as"):
        users.sync(records)
    records = saved_list(users)
    records.append({"username": "a\u0430dmin"})  # mixed scripts: refused by the username rule
    with pytest.raises(InvalidUserData):
        users.sync(records)
    records = saved_list(users)
    by_name(records, "dave")["username"] = "Alice"  # a new user next to the kept 'alice'
    with pytest.raises(InvalidUserData, match="the same as"):
        users.sync(records)
    assert state(users) == before


def test_a_new_user_that_looks_like_a_kept_one_is_refused(users: UserDB) -> None:
    before = state(users)
    records = saved_list(users)
    records.append({"username": "a1ice"})  # the same confusable skeleton as the kept 'alice'
    with pytest.raises(InvalidUserData, match=r"records\[4\]\.username: looks like records\[1\]"):
        users.sync(records)
    assert state(users) == before


def test_tokens_and_keys_of_a_deleted_user_stop_working(users: UserDB) -> None:
    dave = users.get("dave").id
    token = users.issue_token("dave")
    key = users.create_api_key("dave", "ci")
    assert users.get_by_token(token) is not None and users.get_by_api_key(key) is not None
    assert users.sync([r for r in saved_list(users) if r["username"] != "dave"]).deleted == ["dave"]
    assert users.get_by_token(token) is None
    assert users.get_by_api_key(key) is None
    # Revoked, not left behind for a user that no longer exists.
    left = users.database.run(
        lambda uow: (len(uow.root[CREDENTIALS_KEY].tokens), dave in uow.root[CREDENTIALS_KEY].api_keys_by_user)
    )
    assert left == (0, False)


def test_credentials_survive_a_sync_that_leaves_the_user_unchanged_or_updated(users: UserDB) -> None:
    token = users.issue_token("alice")
    key = users.create_api_key("alice", "ci")
    records = saved_list(users)  # token and api_key are "" in the saved list
    assert "alice" in users.sync(records).unchanged
    assert users.get_by_token(token) is not None and users.get_by_api_key(key) is not None
    by_name(records, "alice")["avatar"] = "/new.png"
    assert users.sync(records).updated == ["alice"]
    assert users.get_by_token(token) is not None and users.get_by_api_key(key) is not None
    assert users.authenticate("alice", PASSWORD) is not None  # passwords are not synced away


def test_disabling_through_sync_ends_the_users_sessions(users: UserDB) -> None:
    token = users.issue_token("alice")
    records = saved_list(users)
    by_name(records, "alice")["disabled"] = True
    assert users.sync(records).updated == ["alice"]
    assert users.get_by_token(token) is None
    by_name(records, "alice")["disabled"] = False
    users.sync(records)
    assert users.get_by_token(token) is None  # revoked, not just hidden


def test_an_api_key_in_a_record_is_imported_and_a_token_ignored(users: UserDB) -> None:
    records = saved_list(users)
    by_name(records, "bob")["api_key"] = IMPORTED_KEY
    by_name(records, "dave")["token"] = "eyJhbGciOiJIUzI1NiJ9.codx-junior-jwt"
    report = users.sync(records)
    assert report.api_keys_added == ["bob"] and report.tokens_ignored == ["dave"]
    assert report.unchanged == ["admin", "alice", "bob", "dave"]
    assert users.get_by_api_key(IMPORTED_KEY).username == "bob"  # type: ignore[union-attr]
    assert users.get_by_token("eyJhbGciOiJIUzI1NiJ9.codx-junior-jwt") is None
    assert "codx-junior-jwt" not in repr(report) and IMPORTED_KEY not in repr(report)
    assert users.sync(records).api_keys_added == []  # already bob's: nothing new
    # The same key given to another user: refused, nothing written.
    before = state(users)
    by_name(records, "bob")["api_key"] = ""
    by_name(records, "dave")["api_key"] = IMPORTED_KEY
    with pytest.raises(InvalidUserData, match=r"records\[\d\]\.api_key: already belongs to another user"):
        users.sync(records)
    assert state(users) == before


def test_records_must_be_a_list_of_mappings(users: UserDB) -> None:
    for bad in ("admin", {"username": "admin"}, 5):
        with pytest.raises(InvalidUserData, match="records: must be a list"):
            users.sync(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidUserData, match=r"records\[0\]\.record: must be a mapping"):
        users.sync(["admin"])  # type: ignore[list-item]


def test_the_async_twin_syncs(database: Database) -> None:
    async def main() -> SyncReport:
        users = AsyncUserDB(database)
        return await users.sync([{"username": "admin", "role": "admin"}, {"username": "alice"}])

    assert anyio.run(main) == SyncReport(created=["admin", "alice"])


def test_a_new_codx_junior_api_key_replaces_the_one_it_saved_before(users: UserDB) -> None:
    """codx-junior keeps one api_key per user: saving another (rotating a leaked key) ends the old one.

    The list codx-junior saves back holds "" for every key (secrets never come back): that keeps them.
    """
    own = users.create_api_key("bob", name="ci")  # made in codx-db: never replaced by a sync
    records = saved_list(users)
    by_name(records, "bob")["api_key"] = "old-leaked-key-0123456789abcdef"
    users.sync(records)
    assert users.get_by_api_key("old-leaked-key-0123456789abcdef") is not None
    by_name(records, "bob")["api_key"] = "new-rotated-key-0123456789abcdef"
    report = users.sync(records)
    assert report.api_keys_added == ["bob"]
    assert users.get_by_api_key("old-leaked-key-0123456789abcdef") is None
    assert users.get_by_api_key("new-rotated-key-0123456789abcdef") is not None
    users.sync(saved_list(users))  # api_key "" for everyone: nothing revoked
    assert users.get_by_api_key("new-rotated-key-0123456789abcdef") is not None
    assert users.get_by_api_key(own) is not None
    assert [k.name for k in users.api_keys("bob")] == ["ci", "codx-junior"]


def in_order(records: list[dict[str, Any]], order: str) -> list[dict[str, Any]]:
    return records if order == "listed" else records[::-1]


@pytest.mark.parametrize("order", ["listed", "reversed"])
def test_kept_users_swap_and_cycle_keys_in_any_order(users: UserDB, order: str) -> None:
    """A sync describes the final state: keys may pass between kept users whatever the record order."""
    users.update("alice", github="alice-gh")
    users.update("dave", email="dave@example.com")
    alice, bob, dave = (users.get(name).id for name in ("alice", "bob", "dave"))
    records = [user.model_dump() for user in users.iter_users()]  # with ids: a rename keeps the user
    to_alice, to_bob, to_dave = (by_name(records, name) for name in ("alice", "bob", "dave"))
    to_alice.update(email="dave@example.com", github="bob-gh")
    to_bob.update(username="dave", github="dave-gh", disabled=True, is_active=False)
    to_dave.update(username="bob", email="alice@example.com", github="alice-gh")
    report = users.sync(in_order(records, order))
    assert (report.updated, report.unchanged, report.created, report.deleted) == (
        ["alice", "bob", "dave"],
        ["admin"],
        [],
        [],
    )
    assert (users.get("dave").id, users.get("bob").id) == (bob, dave)
    assert (users.get_by_email("dave@example.com").id, users.get_by_email("alice@example.com").id) == (alice, dave)
    found = {login: users.get_by_github(login) for login in ("bob-gh", "dave-gh", "alice-gh")}
    assert {login: user.id for login, user in found.items() if user} == {
        "bob-gh": alice,
        "dave-gh": bob,
        "alice-gh": dave,
    }
    assert [user.username for user in users.list(active=False)] == ["dave"]
    assert users.authenticate("dave@example.com", PASSWORD).id == alice  # type: ignore[union-attr]
    assert check(users.database).problems == []


@pytest.mark.parametrize("order", ["listed", "reversed"])
def test_a_kept_users_email_can_become_another_kept_users_username(users: UserDB, order: str) -> None:
    alice, dave = users.get("alice").id, users.get("dave").id
    records = [user.model_dump() for user in users.iter_users()]
    by_name(records, "alice")["email"] = "alice@new.example"
    by_name(records, "dave")["username"] = "alice@example.com"
    assert users.sync(in_order(records, order)).updated == ["alice", "alice@example.com"]
    assert users.get("alice@example.com").id == dave
    assert users.get_by_email("alice@new.example").id == alice
    assert users.authenticate("alice@new.example", PASSWORD).id == alice  # type: ignore[union-attr]
    assert check(users.database).problems == []


@pytest.mark.parametrize("order", ["listed", "reversed"])
def test_a_kept_user_may_take_a_name_like_the_one_another_kept_user_leaves(users: UserDB, order: str) -> None:
    records = [user.model_dump() for user in users.iter_users()]
    to_alice, to_dave = by_name(records, "alice"), by_name(records, "dave")
    to_alice["username"] = "carol"
    to_dave["username"] = "a1ice"  # looks like 'alice', which no one holds once the sync is done
    assert users.sync(in_order(records, order)).updated == ["a1ice", "carol"]
    assert check(users.database).problems == []
    to_alice["username"] = "alice"  # now both are listed: look-alikes in the final state
    with pytest.raises(InvalidUserData, match=r"records\[3\]\.username: looks like records\[1\]"):
        users.sync(records)


def test_a_kept_user_takes_a_key_of_a_deleted_user(users: UserDB) -> None:
    records = [r for r in saved_list(users) if r["username"] != "alice"]
    by_name(records, "bob")["email"] = "alice@example.com"
    by_name(records, "dave")["github"] = "bob-gh"
    by_name(records, "bob")["github"] = ""
    report = users.sync(records)
    assert (report.deleted, report.updated) == (["alice"], ["bob", "dave"])
    assert users.get_by_email("alice@example.com").username == "bob"
    assert users.get_by_github("bob-gh").username == "dave"  # type: ignore[union-attr]


@pytest.mark.parametrize("order", ["listed", "reversed"])
@pytest.mark.parametrize(
    ("changes", "value"),
    [
        # dave's new username is alice's email: a login by that name could mean either
        ({"dave": {"username": "alice@example.com"}}, "alice@example.com"),
        ({"bob": {"email": "ops@example.com"}, "dave": {"username": "ops@example.com"}}, "ops@example.com"),
        ({"bob": {"username": "ops@example.com"}, "dave": {"email": "ops@example.com"}}, "ops@example.com"),
    ],
)
def test_a_username_that_is_another_records_email_is_refused(
    users: UserDB, changes: dict[str, dict[str, str]], value: str, order: str
) -> None:
    """Refused in the unit of work, whichever record comes first (a pair stored so before
    generation 9 still syncs: tests/test_generation9.py), naming the record; nothing written."""
    before = state(users)
    records = [user.model_dump() for user in users.iter_users()]
    for username, fields in changes.items():
        by_name(records, username).update(fields)
    with pytest.raises(UserAlreadyExists, match=rf"records\[\d\]: a user with (username|email) '{value}'"):
        users.sync(records if order == "listed" else records[::-1])
    assert state(users) == before


def test_a_refused_sync_writes_nothing_even_after_it_began_writing(users: UserDB) -> None:
    """The no-admin check runs last, after deletes, swaps and creates: they are all rolled back."""
    users.update("dave", email="dave@example.com")
    before = state(users)
    records = [user.model_dump() for user in users.iter_users() if user.username != "bob"]
    by_name(records, "alice")["email"] = "dave@example.com"
    by_name(records, "dave")["email"] = "alice@example.com"
    by_name(records, "admin").update(disabled=True, is_active=False)
    records.append({"username": "carol", "github": "bob-gh"})
    with pytest.raises(InvalidUserData, match="no active admin would remain"):
        users.sync(records)
    assert state(users) == before
    assert users.get_by_email("alice@example.com").username == "alice"
    assert users.get_by_email("dave@example.com").username == "dave"
    assert users.get_by_github("bob-gh").username == "bob"  # type: ignore[union-attr]
    assert users.find("carol") is None
    assert check(users.database).problems == []


def test_a_refused_sync_inside_a_callers_unit_of_work_leaves_nothing_of_its_own(users: UserDB) -> None:
    """The caller catches the refusal and goes on: its commit must not save half a sync (deletes come first)."""
    users.sync([*saved_list(users), {"username": "carol", "api_key": IMPORTED_KEY}])
    before = state(users)
    clash = [r for r in saved_list(users) if r["username"] != "alice"]  # alice deleted, then...
    by_name(clash, "dave")["api_key"] = IMPORTED_KEY  # ...carol's key refused for dave
    with users.database.transaction(note="admin UI save"):
        with pytest.raises(InvalidUserData, match="no active admin would remain"):
            users.sync([{"username": "bob"}])  # would delete the admin, alice, dave and carol first
        with pytest.raises(InvalidUserData, match="api_key"):
            users.sync(clash)
        users.update("bob", full_name="Bob")  # the request goes on
    after = state(users)
    assert [u["username"] for u in after] == [u["username"] for u in before]
    assert by_name(after, "bob")["full_name"] == "Bob"
    assert users.get_by_api_key(IMPORTED_KEY).username == "carol"  # type: ignore[union-attr]
    assert check(users.database).problems == []


def test_a_rename_by_id_frees_the_old_name_for_a_new_record(users: UserDB) -> None:
    """The records are the final state: bob (by id) becomes robert and a new bob is created."""
    records = saved_list(users)
    bob = users.get("bob")
    by_name(records, "bob").update(id=bob.id, username="robert")
    records.append({"username": "bob", "email": "new-bob@example.com"})
    for order in (records, records[::-1]):
        state_before = state(users)
        report = users.sync(order)
        assert users.get("robert").id == bob.id
        assert users.get("bob").id != bob.id and users.get("bob").email == "new-bob@example.com"
        assert report.created == ["bob"] and "robert" in report.updated
        assert check(users.database).problems == []
        users.delete("bob")
        users.update("robert", username="bob")
        assert state(users)[0]["username"] == state_before[0]["username"]
