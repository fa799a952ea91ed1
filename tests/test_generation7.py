"""Generation 7: the users-by-id index as one tree per id prefix (``PartitionedTree``)."""

from __future__ import annotations

import multiprocessing
import random
from pathlib import Path
from typing import Any

import pytest
import transaction
import ZODB
from ZODB.POSException import ConflictError

import migrations
from db.check import check, repair
from db.database import Database
from db.errors import GenerationError, UserNotFound
from db.models import USERS_KEY, User
from db.settings import CodxJuniorGlobalSettings
from db.storage import open_storage
from db.user_db import UserDB
from db.users.indexes import IndexTree
from db.users.layout import GENERATION6_CLASSES, INDEX_CLASSES, PARTITIONED
from db.users.partitioned import PartitionedTree, partition_of
from db.users.repository import new_user_id, process_id_prefix
from migrations import runner
from migrations.registry import GENERATION_KEY, GENERATIONS_KEY
from tests.conftest import make_settings
from tests.test_generation6 import generation5_database, snapshot
from tests.test_migrations import FIXTURE_BACKENDS

STORAGE_BACKENDS = [
    pytest.param("file", id="file"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


def generation6_database(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> CodxJuniorGlobalSettings:
    """test_generation6's fixture (2,500 users and more) evolved to generation 6: one ``users`` IndexTree."""
    settings = generation5_database(backend, tmp_path, request)
    with runner.open_for_migration(settings) as zodb:
        assert [step.generation for step in runner.evolve(zodb, target=6)] == [6]
    return settings


@pytest.mark.parametrize("backend", FIXTURE_BACKENDS)
def test_evolve7_partitions_the_id_and_name_indexes_and_keeps_everything_else(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    settings = generation6_database(backend, tmp_path, request)
    before = snapshot(settings)
    assert before["generation"] == 6 and before["classes"] == GENERATION6_CLASSES
    with pytest.raises(GenerationError, match="migrate --apply"):
        Database(settings).open()  # refused below the minimum (7)
    assert "index-old-layout" not in _checked(settings)  # at 6, one IndexTree is that generation's layout

    messages: list[str] = []
    with runner.open_for_migration(settings) as zodb:
        ran = runner.evolve(zodb, batch_size=400, progress=lambda message, done, total: messages.append(message))
    assert [step.generation for step in ran] == [7, 8, 9]
    assert any("copying the users index" in message for message in messages)

    after = snapshot(settings)
    assert after["generation"] == migrations.GENERATION == 9
    assert after["classes"] == INDEX_CLASSES
    assert PARTITIONED == ("users", "by_username", "by_email", "by_skeleton")
    assert {name for name, cls in INDEX_CLASSES.items() if cls is PartitionedTree} == set(PARTITIONED)
    assert after["entries"] == before["entries"]  # the same keys -> users, in the same order
    assert after["count"] == before["count"] and after["counts"] == before["counts"]
    # Only those indexes were copied: every other one is the same object.
    assert {k: v for k, v in after["oids"].items() if k not in PARTITIONED} == {
        k: v for k, v in before["oids"].items() if k not in PARTITIONED
    }
    assert all(after["oids"][name] != before["oids"][name] for name in PARTITIONED) and not after["rebuilding"]

    database = Database(settings)
    try:
        report = check(database)
        assert report.ok, report.problems
        assert not [w for w in report.warnings if w.code == "index-old-layout"]
        users = UserDB(database)
        stored = users.count()
        created = users.create(username="newcomer", email="newcomer@example.com")
        assert users.get_by_id(created.id).username == "newcomer"
        old = users.get("user7")
        assert users.get_by_id(old.id).username == "user7"  # a fixture id, in its partition
        users.delete("user1")
        assert users.count() == stored and check(database).ok
    finally:
        database.close()


def _checked(settings: CodxJuniorGlobalSettings) -> list[str]:
    """Warning codes of ``codx-db check`` on a database the code would refuse to open (read with plain ZODB)."""
    from db.ops.check import check_root

    zodb = ZODB.DB(open_storage(settings))
    try:
        with zodb.transaction() as conn:
            report = check_root(conn.root())
            assert report.ok, report.problems
            return [warning.code for warning in report.warnings]
    finally:
        zodb.close()


def test_evolve7_after_an_interrupted_copy(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    # Running 6 and 7 again on a database already at 7 changes nothing: test_generation6's
    # test_evolve6_twice_changes_nothing (6 does not copy the partitions back into one tree).
    settings = generation6_database("file", tmp_path, request)
    with runner.open_for_migration(settings) as zodb:
        runner.evolve(zodb, batch_size=700)
    first = snapshot(settings)
    # A copy left half done by an interrupted run of 7 (back to one tree, a partial copy stored).
    with runner.open_for_migration(settings) as zodb:
        with zodb.transaction() as conn:
            container = conn.root()[USERS_KEY]
            container.users = IndexTree(dict(container.users.items()))
            container.rebuilding = {"users": PartitionedTree(list(container.users.items())[:10])}
            conn.root()[GENERATION_KEY] = 6
            conn.root()[GENERATIONS_KEY]["codx_db"] = 6
        assert [step.generation for step in runner.evolve(zodb, batch_size=700)] == [7, 8, 9]
    again = snapshot(settings)
    assert again["entries"] == first["entries"] and again["classes"] == INDEX_CLASSES and not again["rebuilding"]


def test_a_dry_run_of_evolve7_writes_nothing(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    settings = generation6_database("file", tmp_path, request)
    before = snapshot(settings)
    size = settings.db_file_path.stat().st_size
    with runner.open_for_migration(settings) as zodb:
        assert [step.generation for step in runner.evolve(zodb, dry_run=True, batch_size=500)] == [7, 8, 9]
    assert snapshot(settings) == before
    assert settings.db_file_path.stat().st_size == size


def test_partitioned_tree_answers_like_one_ordered_tree() -> None:
    rng = random.Random(7)
    keys = {f"{rng.getrandbits(20):05x}{i}" for i in range(2000)} | {"", "a", "ab", "abc", "b", "ff", "f"}
    # Names: partitions by UTF-8 bytes keep code point order (é is 2 bytes, 日 3, 😀 4).
    keys |= {"é", "éa", "aé", "a\x7f", "aÿ", "日本", "日", "本", "😀", "😀x", "zé", "ÿ", "Ā", "\x00"}
    keys |= {"".join(rng.choice("aé日😀z") for _ in range(rng.randint(1, 4))) for _ in range(300)}
    tree = PartitionedTree()
    assert not tree and len(tree) == 0 and tree.get("a") is None and "a" not in tree
    tree.update((key, key.upper()) for key in keys)
    tree["zz-late"] = "Z"
    expected = dict.fromkeys(sorted(keys | {"zz-late"}))
    assert list(tree) == list(tree.keys()) == list(expected)  # one order across partitions
    assert [value for value in tree.values()] == [tree[key] for key in expected]
    assert tree and len(tree) == len(expected)
    for low in ("", "a", "ab", "abc", "a0", "5", "fff", "zz-late", "zzz", "aé", "é", "日", "😀", "ÿ"):
        assert list(tree.keys(min=low)) == [k for k in expected if k >= low], low
        assert list(tree.keys(min=low, excludemin=True)) == [k for k in expected if k > low], low
    assert tree.pop("abc") == "ABC" and "abc" not in tree and tree.pop("abc", None) is None
    with pytest.raises(KeyError):
        tree.pop("abc")
    with pytest.raises(KeyError):
        del tree["never"]
    with pytest.raises(KeyError):
        tree["never"]
    del tree["ab"]
    assert tree.get("ab", "gone") == "gone" and "a" in tree and 5 not in tree
    with pytest.raises(TypeError, match="keys are str, not int"):
        tree[5] = "five"  # type: ignore[index]
    with pytest.raises(TypeError, match="keys are str, not bytes"):
        tree.update([("ok", 1), (b"x", 2)])  # type: ignore[list-item]
    assert "ok" not in tree  # the bad batch wrote nothing
    assert set(tree.parts.keys()) == {partition_of(key) for key in tree}
    assert partition_of("alice") == "al" and partition_of("日本") == "\xe6\x97"  # the first two bytes of 日
    assert len({partition_of(key) for key in keys if key[:1] == "日"}) == 1  # 64 CJK characters share one
    assert tree.misplaced() == [] and tree.rehome("test") == []
    tree._check()
    mapped = PartitionedTree()
    mapped.update({"ab": 1, "cd": 2})  # a mapping, as OOBTree.update takes one: its items, not its keys
    assert list(mapped.items()) == [("ab", 1), ("cd", 2)]
    parts = len(tree.parts)
    tree.clear()
    assert not tree and len(tree) == 0 and list(tree) == [] and len(tree.parts) == parts


def test_check_finds_a_user_in_the_wrong_partition(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    database = Database(make_settings("memory", request, tmp_path))
    try:
        users = UserDB(database)
        alice = users.create(username="alice")
        users.create(username="bob")
        assert check(database).ok
        with database.transaction() as uow:
            container = uow.root[USERS_KEY]
            user = container.users.pop(alice.id)
            wrong = "zz" if not alice.id.startswith("zz") else "yy"
            container.users.parts[wrong] = IndexTree({alice.id: user})  # where a lookup never looks
        report = check(database)
        assert not report.ok
        assert [(p.code, p.repairable) for p in report.problems] == [("index-wrong-partition", True)]
        assert alice.id in report.problems[0].message and repr(wrong) in report.problems[0].message
        with pytest.raises(UserNotFound):
            users.get_by_id(alice.id)  # a lookup by id does not find it
        result = repair(database)
        assert result.ok and result.fixed == [f"users: moved {alice.id!r} from partition {wrong!r} to {alice.id[:2]!r}"]
        assert users.get_by_id(alice.id).username == "alice" and check(database).ok
    finally:
        database.close()


def _send_prefix(queue: Any) -> None:
    queue.put(process_id_prefix())


def test_forked_processes_write_different_partitions() -> None:
    # Forked children share the parent's salt and have neighbouring pids: with "salt ^ pid" their
    # ids shared the first two digits (one partition); hashed, 8 children land in several.
    parent = process_id_prefix()  # computed (and cached) before the fork, as a server's master does
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    children = [context.Process(target=_send_prefix, args=(queue,)) for _ in range(8)]
    for child in children:
        child.start()
    prefixes = {queue.get(timeout=60) for _ in children}
    for child in children:
        child.join(60)
    assert parent not in prefixes and len({prefix[:2] for prefix in prefixes}) >= 4  # of 8 (salt ^ pid: 1 or 2)
    assert new_user_id().startswith(process_id_prefix()) and len(new_user_id()) == 32


def _fill(tree: Any) -> None:
    tree.update([(f"aa{i:04d}", i) for i in range(0, 400, 4)])
    tree["bb0000"] = "other process"


@pytest.mark.parametrize("backend", STORAGE_BACKENDS)
@pytest.mark.parametrize("cls", [IndexTree, PartitionedTree], ids=["one-tree", "partitioned"])
def test_a_split_in_one_partition_does_not_fail_a_commit_in_another(
    backend: str, cls: type, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The conflict generation 7 removes, shown with two connections as two processes.

    Writer A (prefix "aa") splits a bucket and commits; writer B (prefix "bb") inserted one
    key meanwhile. In one tree, both descended the same root, which A's split rewrote: B's
    commit fails (readCurrent). Partitioned, B's tree is not A's: B commits.
    """
    zodb = ZODB.DB(open_storage(make_settings(backend, request, tmp_path)))
    try:
        with zodb.transaction() as conn:
            conn.root()["t"] = tree = cls()
            _fill(tree)
        tm_a, tm_b = transaction.TransactionManager(), transaction.TransactionManager()
        conn_a, conn_b = zodb.open(tm_a), zodb.open(tm_b)
        tree_b = conn_b.root()["t"]
        tree_b["bb0001"] = "B"  # B's write, not committed yet
        tree_a = conn_a.root()["t"]
        for i in range(1, 40):  # 39 keys into the first bucket: it splits
            tree_a[f"aa0000-{i:02d}"] = i
        tm_a.commit()
        if cls is IndexTree:
            with pytest.raises(ConflictError):
                tm_b.commit()
            tm_b.abort()
        else:
            tm_b.commit()
        conn_a.close()
        conn_b.close()
        with zodb.transaction() as conn:
            final = conn.root()["t"]
            assert ("bb0001" in final) is (cls is PartitionedTree) and "aa0000-39" in final
            assert len(final) == 100 + 1 + 39 + (cls is PartitionedTree)
            final._check()
    finally:
        zodb.close()


def test_repair_drops_second_entries_in_wrong_partitions_and_leaves_two_users_under_one_id(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    database = Database(make_settings("memory", request, tmp_path))
    try:
        users = UserDB(database)
        bob = users.create(username="bob")
        carol = users.create(username="carol")
        with database.transaction() as uow:
            container = uow.root[USERS_KEY]
            stray = container.by_username.parts["ca"] = IndexTree()
            stray["bob"] = container.by_username["bob"]  # bob twice: in "bo" and in "ca"
            stray["bobby"] = container.users[bob.id]  # a dangling key, misplaced too
            same = container.users[carol.id]
            wrong = "zz" if not carol.id.startswith("zz") else "yy"
            container.users.parts[wrong] = IndexTree({carol.id: same})  # carol twice, the same object
        report = check(database)
        assert {p.code for p in report.problems} >= {"index-wrong-partition"}
        assert all(p.repairable for p in report.problems), report.problems
        result = repair(database)
        assert result.ok, result.after.problems
        assert any("dropped a second entry for 'bob'" in line for line in result.fixed)
        assert users.count() == 2 and [u.username for u in users.list()] == ["bob", "carol"]

        with database.transaction() as uow:  # now two different users under carol's id
            container = uow.root[USERS_KEY]
            impostor = User(id=carol.id, username="carol")
            container.users.parts[wrong] = IndexTree({carol.id: impostor})
        report = check(database)
        assert "users-id-twice" in [p.code for p in report.problems if not p.repairable]
        result = repair(database)
        assert not result.repaired and not result.ok  # left for a person: nothing written
        assert users.count() == 2
    finally:
        database.close()
