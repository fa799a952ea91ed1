"""Generation 6: indexes with bigger buckets (IndexTree/IndexSet) and the user count in shards."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import ZODB
from BTrees.OOBTree import OOBTree, OOTreeSet

import migrations
from db.check import check
from db.database import Database
from db.errors import GenerationError
from db.models import USERS_KEY, User, entry_id
from db.settings import CodxJuniorGlobalSettings
from db.storage import open_storage
from db.user_db import UserDB
from db.users.indexes import COUNT_SHARDS, INTERNAL_SIZE, LEAF_SIZE, IndexSet, IndexTree
from db.users.layout import INDEX_CLASSES
from migrations import runner
from migrations.registry import GENERATION_KEY, GENERATIONS_KEY
from tests.conftest import BACKENDS, ROOT, make_settings, settings_env
from tests.test_migrations import FIXTURE_BACKENDS, fixture_settings

POPULATION = 2500


def _entries(index: Any) -> Any:
    """An index's content as plain data: user values become ids, sets and tuples stay in order."""
    if isinstance(index, OOTreeSet):
        return list(index)
    found = []
    for key, value in index.items():
        if isinstance(value, User):
            value = value.id
        elif isinstance(value, tuple):
            value = tuple(entry_id(member) for member in value)
        elif isinstance(value, OOTreeSet):
            value = list(value)
        found.append((key, value))
    return found


def snapshot(settings: CodxJuniorGlobalSettings) -> dict[str, Any]:
    """Generation, count, and every index's class, oid and entries, read with plain ZODB."""
    zodb = ZODB.DB(open_storage(settings))
    try:
        with zodb.transaction() as conn:
            container = conn.root()[USERS_KEY]
            counts = container.counts
            return {
                "generation": conn.root()[GENERATION_KEY],
                "count": len(container),
                "counts": None if counts is None else [(shard._p_oid, shard()) for shard in counts],
                "classes": {name: type(getattr(container, name)) for name in INDEX_CLASSES},
                "oids": {name: getattr(container, name)._p_oid for name in INDEX_CLASSES},
                "entries": {name: _entries(getattr(container, name)) for name in INDEX_CLASSES},
                "rebuilding": "rebuilding" in container.__dict__,
            }
    finally:
        zodb.close()


def generation5_database(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> CodxJuniorGlobalSettings:
    """The generation-2 fixture (written by generation-2 code) evolved to 5, then 2,500 more users.

    Its indexes are BTrees' own classes and its count one ``Length``, as every database made
    before generation 6; the users are added through ``UserContainer.add``, the code path
    every write takes, on that old layout.
    """
    settings = fixture_settings("generation2.fs", backend, tmp_path, request)
    with runner.open_for_migration(settings) as zodb:
        assert [step.generation for step in runner.evolve(zodb, target=5)] == [3, 4, 5]
        for start in range(0, POPULATION, 1000):
            with zodb.transaction() as conn:
                container = conn.root()[USERS_KEY]
                for i in range(start, min(start + 1000, POPULATION)):
                    user = User(
                        id=f"{i:032x}",
                        username=f"user{i}",
                        email=f"user{i}@example.com" if i % 3 else None,
                        is_active=i % 7 != 0,
                        role="admin" if i % 100 == 0 else "user",
                        github=f"gh{i}" if i % 2 else "",
                        projects=((f"p{i % 5}", "tasks", True, ()),) if i % 4 == 0 else (),
                    )
                    container.add(user)
    return settings


@pytest.mark.parametrize("backend", FIXTURE_BACKENDS)
def test_evolve6_copies_every_index_into_the_new_classes(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    settings = generation5_database(backend, tmp_path, request)
    before = snapshot(settings)
    assert before["generation"] == 5 and before["counts"] is None
    assert set(before["classes"].values()) == {OOBTree, OOTreeSet}  # the old layout, really
    stored = before["count"]  # the fixture's users and ours
    assert stored == len(before["entries"]["users"]) and stored > POPULATION
    with pytest.raises(GenerationError, match="migrate --apply"):
        Database(settings).open()  # refused below the minimum (7)

    messages: list[str] = []
    with runner.open_for_migration(settings) as zodb:
        ran = runner.evolve(zodb, batch_size=500, progress=lambda message, done, total: messages.append(message))
    assert [step.generation for step in ran] == [6, 7, 8, 9]  # test_generation7.py, test_generation8.py
    assert any("copying the users index" in message for message in messages)

    after = snapshot(settings)
    assert after["generation"] == migrations.GENERATION == 9
    assert after["classes"] == INDEX_CLASSES
    assert after["entries"] == before["entries"]
    assert after["count"] == before["count"]
    assert after["counts"] is not None and len(after["counts"]) == COUNT_SHARDS
    assert not after["rebuilding"]

    database = Database(settings)
    try:
        report = check(database)
        assert report.ok, report.problems
        assert not [w for w in report.warnings if w.code in ("index-old-layout", "count-not-sharded")]
        users = UserDB(database)
        assert users.count() == stored
        users.create(username="newcomer", email="newcomer@example.com", github="gh-new")
        users.delete("user1")
        assert users.count() == stored
        assert users.get_by_github("gh-new").username == "newcomer"  # type: ignore[union-attr]
        assert check(database).ok
    finally:
        database.close()


def test_evolve6_twice_changes_nothing(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    settings = generation5_database("file", tmp_path, request)
    with runner.open_for_migration(settings) as zodb:
        runner.evolve(zodb, batch_size=700)
    first = snapshot(settings)
    with runner.open_for_migration(settings) as zodb:
        assert runner.evolve(zodb) == []  # nothing pending
        with zodb.transaction() as conn:  # as if interrupted before the stamp: run the step again
            conn.root()[GENERATION_KEY] = 5
            conn.root()[GENERATIONS_KEY]["codx_db"] = 5
        assert [step.generation for step in runner.evolve(zodb, batch_size=700)] == [6, 7, 8, 9]
    again = snapshot(settings)
    # The same index objects and count shards (not copies), holding the same entries.
    assert again == first


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_fresh_database_has_the_new_layout_with_small_internal_nodes(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    database = Database(make_settings(backend, request, tmp_path))
    try:
        users = UserDB(database)
        for i in range(500):
            users.create(username=f"u{i:03d}", email=f"u{i:03d}@example.com")

        def layout(uow: Any) -> tuple[dict[str, type], list[int], list[type]]:
            container = uow.root[USERS_KEY]
            # Generation 7 keeps the users index as a tree per id prefix: one process, one partition.
            (tree,) = container.users.parts.values()
            sizes, bucket = [], tree._firstbucket
            while bucket is not None:
                sizes.append(len(bucket))
                bucket = bucket._next
            # The root's children: BTree nodes, not buckets, once there are more buckets than
            # INTERNAL_SIZE (BTrees' default keeps up to 250 buckets under the root).
            children = list(tree.__getstate__()[0][::2])
            return {name: type(getattr(container, name)) for name in INDEX_CLASSES}, sizes, [type(c) for c in children]

        classes, sizes, children = database.run(layout)
        assert classes == INDEX_CLASSES and users.count() == 500
        assert sum(sizes) == 500 and max(sizes) <= LEAF_SIZE
        assert len(sizes) > INTERNAL_SIZE
        assert 2 <= len(children) <= INTERNAL_SIZE and set(children) == {IndexTree}
        assert users.count() == 500
        assert check(database).ok
    finally:
        database.close()


CREATE_40 = """
import sys
from db.database import Database
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB

database = Database(CodxJuniorGlobalSettings.load())
users = UserDB(database)
for i in range(40):
    users.create(username=f"{sys.argv[1]}-{i}", email=f"{sys.argv[1]}-{i}@example.com")
database.close()
"""


@pytest.mark.postgres
def test_the_sharded_count_is_exact_under_two_processes_creating(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    settings = make_settings("postgres", request, tmp_path)
    database = Database(settings)
    try:
        UserDB(database).create(username="first")
        env = settings_env(settings)
        children = [
            subprocess.Popen(
                [sys.executable, "-c", CREATE_40, name],
                env=env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name in ("left", "right")
        ]
        for child in children:
            _, stderr = child.communicate(timeout=300)
            assert child.returncode == 0, stderr
        users = UserDB(database)
        assert users.count() == 81
        assert len(users.list(limit=1000)) == 81
        report = check(database)
        assert report.ok, report.problems
        assert report.count == 81
    finally:
        database.close()


def test_check_warns_about_an_old_class_index_and_finds_a_damaged_new_one(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    database = Database(make_settings("memory", request, tmp_path))
    try:
        users = UserDB(database)
        for name in ("alice", "bob", "carol", "alan", "alma"):
            users.create(username=name, role="admin" if name == "bob" else "user")
        with database.transaction() as uow:
            container = uow.root[USERS_KEY]
            container.admins = OOTreeSet(container.admins)  # a generation-5 class on a generation-6 database
        report = check(database)
        assert report.ok, report.problems
        assert [w.code for w in report.warnings] == ["index-old-layout"]
        assert "admins" in report.warnings[0].message

        with database.transaction() as uow:
            tree = uow.root[USERS_KEY].by_username.parts["al"]  # generation 7: a tree per name prefix
            assert isinstance(tree, IndexTree) and not isinstance(uow.root[USERS_KEY].inactive, OOBTree)
            bucket = tree._firstbucket
            (state, *rest) = bucket.__getstate__()
            keys, values = list(state[0::2]), list(state[1::2])
            keys.reverse()  # the same entries, out of order
            bucket.__setstate__((tuple(x for pair in zip(keys, values, strict=True) for x in pair), *rest))
        report = check(database)
        assert "btree-damaged" in {p.code for p in report.problems}
        assert any("by_username" in p.message or "username" in p.message for p in report.problems)
    finally:
        database.close()
    assert IndexSet.max_internal_size == IndexTree.max_internal_size == INTERNAL_SIZE < 250


def test_a_dry_run_of_evolve6_writes_nothing(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    settings = generation5_database("file", tmp_path, request)
    before = snapshot(settings)
    size = settings.db_file_path.stat().st_size
    with runner.open_for_migration(settings) as zodb:
        assert [step.generation for step in runner.evolve(zodb, dry_run=True, batch_size=500)] == [6, 7, 8, 9]
    assert snapshot(settings) == before
    assert settings.db_file_path.stat().st_size == size


def test_startup_minimum_evolves_a_generation5_database_at_open(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    settings = generation5_database("file", tmp_path, request)
    stored = snapshot(settings)["count"]
    database = Database(settings.model_copy(update={"db_startup": "minimum"}))
    try:
        users = UserDB(database)
        assert users.count() == stored
        users.create(username="after-open")
        assert users.count() == stored + 1
    finally:
        database.close()
    after = snapshot(settings)
    assert after["generation"] == 9 and after["classes"] == INDEX_CLASSES
