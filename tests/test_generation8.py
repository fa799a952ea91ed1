"""Generation 8: the name indexes hold user ids, not ``User`` references (migrations/evolve8.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import ZODB
from ZODB.serialize import referencesf

from db.check import check, repair
from db.database import Database
from db.errors import GenerationError, UserAlreadyExists, UserNotFound
from db.models import USERS_KEY, User, UserContainer, entry_members, username_skeleton
from db.settings import CodxJuniorGlobalSettings
from db.storage import open_storage
from db.user_db import UserDB
from db.users.layout import NAME_INDEXES
from migrations import runner
from migrations.registry import GENERATION_KEY, GENERATIONS_KEY
from tests.test_generation6 import snapshot
from tests.test_generation7 import generation6_database
from tests.test_migrations import FIXTURE_BACKENDS


def _forms_in(container: UserContainer) -> dict[str, set[str]]:
    """For each name index, the kinds of its entries' members: {"id"}, {"user"} or both."""
    return {
        name: {
            "user" if isinstance(member, User) else "id" if isinstance(member, str) else "other"
            for entry in getattr(container, name).values()
            for member in entry_members(entry)
        }
        for name in NAME_INDEXES
    }


def _forms(settings: CodxJuniorGlobalSettings) -> dict[str, set[str]]:
    """``_forms_in`` of a database no process has open (read with plain ZODB)."""
    zodb = ZODB.DB(open_storage(settings))
    try:
        with zodb.transaction() as conn:
            return _forms_in(conn.root()[USERS_KEY])
    finally:
        zodb.close()


def _as_generation7(container: UserContainer, every: int = 1) -> None:
    """Write entries as generation-7 code did (the ``User`` itself), every ``every``-th key."""
    for name in NAME_INDEXES:
        index = getattr(container, name)
        for i, key in enumerate(list(index.keys())):
            if i % every == 0:
                entry = index[key]
                users = tuple(m if isinstance(m, User) else container.users[m] for m in entry_members(entry))
                index[key] = users if isinstance(entry, tuple) else users[0]


def generation7_database(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> CodxJuniorGlobalSettings:
    """test_generation7's fixture evolved to 7, every name entry a ``User`` as generation-7 code wrote them."""
    settings = generation6_database(backend, tmp_path, request)
    with runner.open_for_migration(settings) as zodb:
        assert [step.generation for step in runner.evolve(zodb, target=7)] == [7]
        with zodb.transaction() as conn:
            _as_generation7(conn.root()[USERS_KEY])
    assert _forms(settings) == {name: {"user"} for name in NAME_INDEXES}
    return settings


@pytest.mark.parametrize("backend", FIXTURE_BACKENDS)
def test_evolve8_stores_ids_and_keeps_everything_else(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    settings = generation7_database(backend, tmp_path, request)
    before = snapshot(settings)  # entries as (key, id): the same whichever form is stored
    messages: list[str] = []
    with runner.open_for_migration(settings) as zodb:
        ran = runner.evolve(zodb, batch_size=400, progress=lambda message, done, total: messages.append(message))
    assert [step.generation for step in ran] == [8, 9]
    assert [m for m in messages if m.startswith("storing ids")] == [
        f"storing ids in the {n} index" for n in NAME_INDEXES
    ]
    assert _forms(settings) == {name: {"id"} for name in NAME_INDEXES}
    after = snapshot(settings)
    assert after["generation"] == 9
    # The same keys naming the same users, the same index objects and count.
    assert {k: v for k, v in after.items() if k != "generation"} == {
        k: v for k, v in before.items() if k != "generation"
    }

    database = Database(settings)
    try:
        report = check(database)
        assert report.ok, report.problems
        assert not [w for w in report.warnings if w.code == "index-user-entries"]
        users = UserDB(database)
        listed = [u.username for u in users.list(limit=1000)]
        assert listed == sorted(listed, key=str.casefold) and len(listed) == 1000
        user = users.get(listed[5])
        assert users.get_by_id(user.id) == user
        if user.email:
            assert users.get_by_email(user.email.upper()) == user
        created = users.create(username="newcomer", email="newcomer@example.com")
        assert users.get("NEWCOMER") == created and users.get_by_email("newcomer@example.com") == created
        users.update(listed[5], username="renamed")
        assert users.get("renamed").id == user.id
        users.delete("renamed")
        assert check(database).ok
    finally:
        database.close()
    with runner.open_for_migration(settings) as zodb:
        assert runner.evolve(zodb) == []  # at 8: nothing left to run


def test_a_generation7_database_is_refused_until_evolve8(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    # This code writes ids, which older code would read as users: MINIMUM_GENERATION is 8.
    settings = generation7_database("file", tmp_path, request)
    with pytest.raises(GenerationError, match="migrate --apply"):
        Database(settings).open()
    assert _forms(settings) == {name: {"user"} for name in NAME_INDEXES}  # nothing written
    database = Database(settings.model_copy(update={"db_startup": "minimum"}))  # evolves at open
    try:
        assert UserDB(database).count() > 2000
    finally:
        database.close()
    assert _forms(settings) == {name: {"id"} for name in NAME_INDEXES}


def test_evolve8_after_an_interrupted_run_and_a_dry_run(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    settings = generation7_database("file", tmp_path, request)
    size = settings.db_file_path.stat().st_size
    with runner.open_for_migration(settings) as zodb:
        assert [step.generation for step in runner.evolve(zodb, dry_run=True, batch_size=500)] == [8, 9]
    assert _forms(settings) == {name: {"user"} for name in NAME_INDEXES}
    assert settings.db_file_path.stat().st_size == size
    # An interrupted run: some batches committed, the generation still 7.
    with runner.open_for_migration(settings) as zodb:
        runner.evolve(zodb, batch_size=500)
        with zodb.transaction() as conn:
            _as_generation7(conn.root()[USERS_KEY], every=3)
            conn.root()[GENERATION_KEY] = 7
            conn.root()[GENERATIONS_KEY]["codx_db"] = 7
    assert _forms(settings)["by_email"] == {"id", "user"}
    before = snapshot(settings)
    with runner.open_for_migration(settings) as zodb:
        assert [step.generation for step in runner.evolve(zodb, batch_size=500)] == [8, 9]
    assert _forms(settings) == {name: {"id"} for name in NAME_INDEXES}
    assert snapshot(settings)["entries"] == before["entries"]


def test_user_entries_written_by_older_code_still_work_and_repair_turns_them_into_ids(database: Database) -> None:
    # A process of older code left running through `migrate --apply` writes users, not ids.
    users = UserDB(database)
    for name in ("alice", "bob", "carol", "dave"):
        users.create(username=name, email=f"{name}@example.com")
    assert check(database).ok and not check(database).warnings
    database.run(lambda uow: _as_generation7(uow.root[USERS_KEY], every=2))
    assert database.run(lambda uow: _forms_in(uow.root[USERS_KEY]))["by_username"] == {"id", "user"}
    # Reads and writes work on both forms, and on a look-alike tuple holding both.
    assert users.get("ALICE").username == "alice" and users.get_by_email("carol@example.com").username == "carol"
    assert [u.username for u in users.list()] == ["alice", "bob", "carol", "dave"]
    with pytest.raises(UserAlreadyExists) as taken:
        users.create(username="a1ice")  # looks like "alice", whose look-alike entry holds a User
    assert taken.value.like == "alice"
    database.run(lambda uow: _add_lookalike_member(uow.root[USERS_KEY], "alice", "carol"))
    users.update("alice", username="alice2", email="alice2@example.com")
    assert users.get("alice2").email == "alice2@example.com" and users.get_by_email("alice2@example.com")
    with pytest.raises(UserNotFound):
        users.get("alice")
    users.delete("bob")
    report = check(database)
    carol = users.get("carol")

    def old_entry(uow: Any) -> Any:
        return uow.root[USERS_KEY].by_skeleton[username_skeleton("alice")]

    assert database.run(old_entry) == (carol.id,)  # the rename took alice (a User member) out
    # carol in alice's old look-alike entry (planted above): the one problem, and repairable.
    assert {p.code for p in report.problems} == {"skeleton-wrong-key"}
    warned = [w.message for w in report.warnings if w.code == "index-user-entries"]
    assert warned and all("name a user object" in message for message in warned)

    fixed = repair(database)
    assert fixed.after.ok and not fixed.after.warnings, fixed.after
    assert any("entries naming a user object now hold its id" in line for line in fixed.fixed)
    assert not [line for line in fixed.fixed if "username: entry" in line]  # converted, not reported one by one
    assert database.run(lambda uow: _forms_in(uow.root[USERS_KEY])) == {name: {"id"} for name in NAME_INDEXES}
    assert repair(database).fixed == []  # nothing left


def _add_lookalike_member(container: UserContainer, key_of: str, member_of: str) -> None:
    """Put a second user, as an id, into ``key_of``'s look-alike entry (holding a ``User``): a mixed tuple."""
    key = username_skeleton(key_of)
    other = container.find_by_username(member_of)
    assert other is not None and isinstance(container.by_skeleton[key][0], User)
    container.by_skeleton[key] = (*container.by_skeleton[key], other.id)


def test_a_page_fills_up_past_an_entry_naming_no_user(database: Database) -> None:
    users = UserDB(database)
    users.import_users({"username": f"user{i:02d}"} for i in range(30))

    def dangle(uow: Any) -> None:
        uow.root[USERS_KEY].by_username["user10x"] = "no-such-id"  # between user10 and user11

    database.run(dangle)
    assert [u.username for u in users.list(offset=5, limit=10)] == [f"user{i:02d}" for i in range(5, 15)]
    assert [u.username for u in users.iter_users(batch=7)] == [f"user{i:02d}" for i in range(30)]
    assert {p.code for p in check(database).problems} == {"username-dangling"}


def test_a_name_index_pickle_holds_no_user_reference(database: Database) -> None:
    # The point of generation 8: a commit re-pickles the name buckets it changed, and each
    # reference in them costs a Python call (ZODB's persistent_id); ids are plain strings.
    users = UserDB(database)
    users.import_users({"username": f"user{i:03d}", "email": f"u{i}@example.com"} for i in range(300))
    found: dict[str, list[bytes]] = {}
    user_oids: set[bytes] = set()

    def walk(uow: Any) -> None:
        container = uow.root[USERS_KEY]
        user_oids.update(user._p_oid for user in container.users.values())
        for name in NAME_INDEXES:
            for part in getattr(container, name).parts.values():
                part._p_activate()  # a ghost's _firstbucket reads as None
                found.setdefault(name, []).append(part._p_oid)  # a small tree keeps its bucket inline
                bucket = part._firstbucket
                while bucket is not None and bucket._p_oid is not None:  # not the inline one
                    bucket._p_activate()
                    found[name].append(bucket._p_oid)
                    bucket = bucket._next

    database.run(walk)
    assert len(user_oids) == 300
    # The 300 names share a partition of several buckets; emails and skeletons spread over more.
    assert {name: len(oids) > 10 for name, oids in found.items()} == dict.fromkeys(NAME_INDEXES, True)
    storage = database.open().storage
    for name, oids in found.items():
        for oid in oids:
            data, _ = storage.load(oid)
            assert not set(referencesf(data)) & user_oids, name
