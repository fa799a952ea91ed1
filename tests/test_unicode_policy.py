"""Issue 11 item 13: look-alike usernames, invisible characters, password normalisation.

Written with ``\\u`` escapes throughout: a Cyrillic "a" and a Latin one must be told apart by
the reader too.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest

import migrations
from db.check import check
from db.database import Database
from db.errors import InvalidUserData, UserAlreadyExists
from db.models import USERS_KEY
from db.passwords import hash_password, verify_password
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB
from tests.conftest import run_cli
from tests.fixtures.make_fixture import FIXTURE_USERS, LOOKALIKE_USERS
from tests.test_migrations import FIXTURE_BACKENDS, fixture_settings, stored_generation

PASSWORD = "correct horse battery"
CYRILLIC_ADMIN = "\u0430dmin"  # Cyrillic U+0430 for the "a"
ACUTE_ADMIN = "admi\u0144"  # n with an acute accent
CAFE_NFC = "caf\u00e9-au-lait"
CAFE_NFD = "cafe\u0301-au-lait"


@pytest.fixture
def users(database: Database) -> UserDB:
    return UserDB(database)


# -- look-alike usernames ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stored", "lookalike"),
    [
        ("admin", ACUTE_ADMIN),
        ("admin", "adrnin"),  # "rn" for "m"
        ("admin", "admi\u0301n"),  # a combining accent on its own (NFKC composes nothing here)
        ("admin", "ADM\u0131N"),  # dotless i
        ("alice", "a1ice"),
        ("scope", "\u0455\u0441\u043e\u0440\u0435"),  # all Cyrillic: one script, still a look-alike
        ("\u0441\u043e\u0440\u0435", "cope"),  # and the other way round
    ],
)
def test_a_username_that_looks_like_a_stored_one_is_refused(
    users: UserDB, database: Database, stored: str, lookalike: str
) -> None:
    # Before: every one of these was created beside the stored name.
    users.create(username=stored, password=PASSWORD)
    with pytest.raises(UserAlreadyExists) as excinfo:
        users.create(username=lookalike)
    assert excinfo.value.field == "username" and excinfo.value.like == stored
    assert f"looks like the existing user {stored!r}" in str(excinfo.value)
    assert users.count() == 1


def test_a_mixed_script_lookalike_is_refused_before_it_reaches_the_index(users: UserDB) -> None:
    users.create(username="admin")
    with pytest.raises(InvalidUserData) as excinfo:
        users.create(username=CYRILLIC_ADMIN)
    assert "username: mixes the scripts Cyrillic, Latin" in str(excinfo.value)


def test_a_rename_to_a_lookalike_is_refused_and_a_case_change_is_not(users: UserDB) -> None:
    users.create(username="admin")
    users.create(username="alice")
    with pytest.raises(UserAlreadyExists) as excinfo:
        users.update("alice", username=ACUTE_ADMIN)
    assert excinfo.value.like == "admin"
    assert users.get("alice").username == "alice"
    assert users.update("admin", username="Admin").username == "Admin"  # the user's own skeleton
    # Deleting a user frees its look-alikes, renaming moves its entry.
    users.update("Admin", username="root")
    assert users.create(username=ACUTE_ADMIN).username == ACUTE_ADMIN


def test_lookalikes_inside_one_import_are_refused(users: UserDB) -> None:
    with pytest.raises(InvalidUserData) as excinfo:
        users.import_users([{"username": "admin"}, {"username": ACUTE_ADMIN}])
    assert "records[1].username: looks like records[0]" in str(excinfo.value)
    users.create(username="alice")
    with pytest.raises(UserAlreadyExists) as excinfo2:
        users.import_users([{"username": "bob"}, {"username": "al\u00efce"}])
    assert excinfo2.value.where == "records[1]" and excinfo2.value.like == "alice"
    assert users.count() == 1


@pytest.mark.parametrize(
    "username",
    [
        "\u0438\u0432\u0430\u043d",  # all Cyrillic
        "\u540d\u524d",  # Han
        "\u3084\u307e\u3060\u592a\u90ce",  # Hiragana + Han (Japanese)
        "\u0928\u093f\u0936\u093e",  # Devanagari with a vowel sign (a combining mark)
        "Zo\u00eb.\u00dcnal_42-x",
        "Alice Smith",
        "alice@example.com",
    ],
)
def test_what_codx_junior_users_have_is_accepted(users: UserDB, username: str) -> None:
    # Before: spaces, "@" and combining marks were refused.
    user = users.create(username=username, password=PASSWORD)
    assert user.username == username
    assert users.authenticate(username, PASSWORD) == user


@pytest.mark.parametrize(
    ("username", "fragment"),
    [
        ("p\u0430ypal", "mixes the scripts Cyrillic, Latin"),
        ("\u03b1lpha-beta", "mixes the scripts Greek, Latin"),
        ("two  spaces", "two spaces in a row"),
        ("admin\u200b", "U+200B (ZERO WIDTH SPACE)"),
        ("ad\u202emin", "U+202E (RIGHT-TO-LEFT OVERRIDE)"),
        ("\u2066admin", "U+2066 (LEFT-TO-RIGHT ISOLATE)"),
        ("admin\u3164x", "U+1160 (HANGUL JUNGSEONG FILLER)"),  # NFKC of U+3164, invisible
        ("x" + "\u0301" * 5, "at most 4 combining marks"),  # no precomposed x-acute
    ],
)
def test_spoofing_usernames_are_refused_naming_the_rule(
    users: UserDB, database: Database, username: str, fragment: str
) -> None:
    with pytest.raises(InvalidUserData) as excinfo:
        users.create(username=username)
    assert "username: " in str(excinfo.value) and fragment in str(excinfo.value)
    assert users.count() == 0


def test_a_username_cannot_be_another_users_email_nor_the_reverse(users: UserDB) -> None:
    # Login takes a username or an email: "bob@example.com" as someone else's username would
    # capture bob's logins by email.
    users.create(username="bob", email="bob@example.com", password=PASSWORD)
    with pytest.raises(UserAlreadyExists) as excinfo:
        users.create(username="Bob@Example.com")
    assert excinfo.value.field == "email"
    users.create(username="carol@example.com")
    with pytest.raises(UserAlreadyExists) as excinfo:
        users.create(username="dave", email="carol@example.com")
    assert excinfo.value.field == "username"
    assert users.authenticate("bob@example.com", PASSWORD) is not None


# -- display text --------------------------------------------------------------------------------


@pytest.mark.parametrize("control", ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2069", "\u200e"])
def test_bidi_controls_in_a_full_name_are_refused_naming_the_code_point(users: UserDB, control: str) -> None:
    # Before: "Mallory \u202egnp.exe" was stored and displayed reversed.
    with pytest.raises(InvalidUserData) as excinfo:
        users.create(username="mallory", full_name=f"Mallory {control}gnp.exe")
    assert f"full_name: must not contain U+{ord(control):04X} (" in str(excinfo.value)
    users.create(username="mallory")
    with pytest.raises(InvalidUserData) as excinfo:
        users.update("mallory", full_name=f"x{control}y")
    assert f"U+{ord(control):04X}" in str(excinfo.value)
    assert users.get("mallory").full_name == ""


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("avatar", "/avatars/\u202egnp.exe"),
        ("projects", [{"project_id": "docs\u2067", "permissions": "tasks"}]),
        ("projects", [{"project_id": "docs", "permissions": "tasks\u200b"}]),
        ("full_name", "Tag\U000e0041smuggled"),  # a Unicode tag character: invisible ASCII
    ],
)
def test_invisible_characters_in_other_display_text_are_refused(users: UserDB, field: str, value: object) -> None:
    with pytest.raises(InvalidUserData) as excinfo:
        users.create(username="mallory", **{field: value})
    assert field in str(excinfo.value) and "must not contain U+" in str(excinfo.value)


def test_joiners_and_emoji_in_a_full_name_are_kept(users: UserDB) -> None:
    # Persian needs the zero-width non-joiner; family emoji are joined by U+200D.
    for name in (
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",
        "Ana \U0001f468\u200d\U0001f469\u200d\U0001f467 \u2764\ufe0f",
    ):
        user = users.create(username=f"u{len(name)}", full_name=name)
        assert user.full_name == unicodedata.normalize("NFC", name)


# -- passwords -----------------------------------------------------------------------------------


def test_a_password_typed_in_nfc_or_nfd_is_the_same_password(users: UserDB) -> None:
    # Before: a user who set "café" in NFC could not log in from a keyboard sending NFD.
    users.create(username="zoe", password=CAFE_NFC)
    assert users.authenticate("zoe", CAFE_NFD) is not None
    users.set_password("zoe", CAFE_NFD)
    assert users.authenticate("zoe", CAFE_NFC) is not None
    assert users.authenticate("zoe", "\uff43afe\u0301-au-lait") is not None  # fullwidth c: NFKC
    assert users.authenticate("zoe", "cafe-au-lait") is None


def test_a_hash_of_an_unnormalised_password_still_verifies_and_asks_for_a_rehash() -> None:
    from db.passwords import _hasher

    raw_hash = _hasher.hash(CAFE_NFD)  # what codx-db wrote before passwords were normalised
    assert verify_password(raw_hash, CAFE_NFD) == (True, True)
    assert verify_password(raw_hash, CAFE_NFC) == (False, False)  # NFC was never that password
    new_hash = hash_password(CAFE_NFD)
    assert verify_password(new_hash, CAFE_NFC) == (True, False)
    assert verify_password(new_hash, CAFE_NFD) == (True, False)


def test_login_with_an_old_unnormalised_hash_rehashes_it(users: UserDB, database: Database) -> None:
    from db.passwords import _hasher

    users.create(username="zoe")
    with database.transaction() as uow:
        uow.root[USERS_KEY].find_by_username("zoe").password_hash = _hasher.hash(CAFE_NFD)
    assert users.authenticate("zoe", CAFE_NFD) is not None
    with database.transaction() as uow:
        stored = uow.root[USERS_KEY].find_by_username("zoe").password_hash
    assert verify_password(stored, CAFE_NFC) == (True, False)  # now the NFKC form
    assert users.authenticate("zoe", CAFE_NFC) is not None


# -- skeleton ------------------------------------------------------------------------------------


def test_the_ascii_fast_path_gives_the_general_skeleton() -> None:
    import string

    from db.unicode_policy import _confusables, _drop_invisible, skeleton

    table = _confusables()
    for a in string.printable:
        for b in "aIl0Om1 @.":
            text = a + b + "x"
            general = _drop_invisible(unicodedata.normalize("NFD", text)).translate(table)
            general = _drop_invisible(unicodedata.normalize("NFD", general.casefold())).translate(table)
            assert skeleton(text) == general, text


# -- an existing database ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", FIXTURE_BACKENDS)
def test_lookalikes_stored_at_generation_2_survive_generation_3(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    settings = fixture_settings("generation2.fs", backend, tmp_path, request)
    applied = run_cli(settings, "migrate", "--apply")
    assert applied.returncode == 0, applied.stderr
    assert stored_generation(settings) == migrations.GENERATION

    checked = run_cli(settings, "check", "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr  # a warning, not an error
    report = json.loads(checked.stdout)
    assert report["ok"] and report["problems"] == []
    [warning] = report["warnings"]
    assert warning["code"] == "username-lookalike"
    assert all(repr(name) in warning["message"] for name in ("admin", CYRILLIC_ADMIN, ACUTE_ADMIN))
    text = run_cli(settings, "check")
    assert text.returncode == 0 and "warning: username-lookalike" in text.stdout

    database = Database(settings)
    try:
        users = UserDB(database)
        assert users.count() == len(FIXTURE_USERS) + len(LOOKALIKE_USERS)
        logins = {name: password for name, _, _, password, _, _ in FIXTURE_USERS + LOOKALIKE_USERS}
        for name in ("admin", CYRILLIC_ADMIN, ACUTE_ADMIN):
            found = users.authenticate(name, logins[name])
            assert found is not None and found.username == name
            assert users.get(name).username == name  # each one by its exact key
        # Both look-alikes can still change their other fields...
        assert users.update(CYRILLIC_ADMIN, full_name="Renamed soon").full_name == "Renamed soon"
        # ...but no new one may join them.
        with pytest.raises(UserAlreadyExists):
            users.create(username="adrnin")  # "rn" for "m"
        # The NFD password hashed by generation 2 works, from either form, and is rehashed.
        assert users.authenticate("cafe-lover", CAFE_NFD) is not None
        assert users.authenticate("cafe-lover", CAFE_NFC) is not None
        # Renaming one look-alike away clears the warning.
        users.update(ACUTE_ADMIN, username="admin-acute")
        users.update(CYRILLIC_ADMIN, username="cyrillic-admin")
        after = check(database)
        assert after.ok and after.warnings == []
    finally:
        database.close()


def test_check_finds_and_repairs_a_damaged_skeleton_index(database: Database, users: UserDB) -> None:
    from db.check import repair
    from db.unicode_policy import skeleton

    users.create(username="admin")
    users.create(username="bob")
    with database.transaction() as uow:
        container = uow.root[USERS_KEY]
        del container.by_skeleton[skeleton("bob")]
        container.by_skeleton["stale"] = (container.find_by_username("admin"),)
    report = check(database)
    codes = {p.code for p in report.problems}
    assert {"skeleton-unindexed", "skeleton-wrong-key"} <= codes and report.repairable
    fixed = repair(database)
    assert fixed.ok and fixed.repaired
    with pytest.raises(UserAlreadyExists):
        users.create(username="b0b")  # a zero for the "o": the repaired entry refuses it again


def test_check_does_not_check_a_skeleton_index_still_being_built(settings: CodxJuniorGlobalSettings) -> None:
    database = Database(settings)
    try:
        UserDB(database).create(username="admin")
        with database.transaction() as uow:
            uow.root[USERS_KEY].by_skeleton.clear()  # as an interrupted generation 3 leaves it
            uow.root["codx_db.generation"] = 2
        assert check(database).ok
    finally:
        database.close()
