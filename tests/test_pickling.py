"""db/pickling.py: records pickled with a C-speed persistent_id are ZODB's own, byte for byte."""

from __future__ import annotations

import datetime
import logging
import zoneinfo
from pathlib import Path
from typing import Any

import pytest
import transaction
import ZODB
import ZODB.serialize
from hypothesis import given, settings
from hypothesis import strategies as st
from persistent import Persistent
from persistent.mapping import PersistentMapping
from ZODB.MappingStorage import MappingStorage

from db import pickling
from db.database import Database
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB


class Holder(Persistent):  # type: ignore[misc]
    """A stored object whose state the tests pickle."""


class Equal(Persistent):  # type: ignore[misc]
    """A persistent class compared by value: ``dict.get`` could confuse two of them."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Equal)

    def __hash__(self) -> int:
        return 1


UTC = datetime.UTC
PLUS_TWO = datetime.timezone(datetime.timedelta(hours=2))

atoms = st.one_of(
    st.text(max_size=8),
    st.binary(max_size=8),
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
    st.sampled_from(
        [
            datetime.datetime(2026, 12, 1, 15, 0),
            datetime.datetime(2026, 12, 1, 15, 0, tzinfo=UTC),
            datetime.datetime(2026, 12, 1, 15, 0, tzinfo=PLUS_TWO),
            datetime.date(2026, 12, 1),
            datetime.time(15, 0, tzinfo=UTC),
            datetime.timedelta(hours=3),
        ]
    ),
)
# A leaf ("stored", i) / ("new", i) stands for a persistent object, made for each database apart.
refs = st.tuples(st.sampled_from(["stored", "new"]), st.integers(0, 2))
recipes = st.recursive(
    st.one_of(atoms, refs.map(lambda r: ("ref", *r))),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda xs: ("tuple", xs)),
        st.lists(inner, max_size=4).map(lambda xs: ("list", xs)),
        st.dictionaries(st.text(max_size=4), inner, max_size=3).map(lambda d: ("dict", d)),
        st.frozensets(st.text(max_size=4), max_size=3),
    ),
    max_leaves=40,
)


def _build(recipe: Any, stored: list[Holder], new: list[Holder]) -> Any:
    if isinstance(recipe, tuple) and recipe and recipe[0] == "ref":
        return (stored if recipe[1] == "stored" else new)[recipe[2]]
    if isinstance(recipe, tuple) and recipe and recipe[0] == "tuple":
        return tuple(_build(x, stored, new) for x in recipe[1])
    if isinstance(recipe, tuple) and recipe and recipe[0] == "list":
        return [_build(x, stored, new) for x in recipe[1]]
    if isinstance(recipe, tuple) and recipe and recipe[0] == "dict":
        return {k: _build(v, stored, new) for k, v in recipe[1].items()}
    return recipe


def _dump(fast: bool, recipe: Any, meta: Any) -> tuple[bytes, list[bytes | None], list[Any]]:
    """Pickle the recipe's state in a fresh database: the record, the new objects' oids, what the writer queued."""
    zodb = ZODB.DB(MappingStorage())
    try:
        conn = zodb.open()
        holder = conn.root()["h"] = Holder()
        stored = [Holder() for _ in range(3)]
        conn.root()["s"] = PersistentMapping({str(i): obj for i, obj in enumerate(stored)})
        transaction.commit()
        zodb.codx_fast_pickling = fast
        new = [Holder() for _ in range(3)]
        writer = ZODB.serialize.ObjectWriter(holder)
        record = writer._dump(meta, _build(recipe, stored, new))
        queued = [obj._p_oid for obj in writer._stack]
        transaction.abort()
        return record, [obj._p_oid for obj in new], queued
    finally:
        zodb.close()


@pytest.fixture(autouse=True, scope="module")
def _installed() -> None:
    assert pickling.install()


@settings(max_examples=300, deadline=None)
@given(recipe=recipes, meta=st.sampled_from([Holder, (Holder, ()), (("tests.test_pickling", "Holder"), None)]))
def test_records_and_new_oids_are_zodbs_own(recipe: Any, meta: Any) -> None:
    assert _dump(True, recipe, meta) == _dump(False, recipe, meta)


def test_a_bucket_and_a_user_take_the_fast_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the setting on, ZODB's persistent_id runs for persistent objects only; off, for every value."""
    calls = {"n": 0}
    original = ZODB.serialize.ObjectWriter.persistent_id

    def counting(self: Any, obj: Any) -> Any:
        calls["n"] += 1
        return original(self, obj)

    monkeypatch.setattr(ZODB.serialize.ObjectWriter, "persistent_id", counting)
    per_create = {}
    for fast in (True, False):
        db_settings = CodxJuniorGlobalSettings(
            db_backend="file", db_file_path=tmp_path / f"{fast}.fs", db_fast_pickling=fast
        )
        database = Database(db_settings)
        try:
            users = UserDB(database)
            for i in range(40):
                users.create(username=f"user{i:03d}", email=f"user{i:03d}@example.com", full_name="A User")
            calls["n"] = 0
            for i in range(40, 60):
                users.create(username=f"user{i:03d}", email=f"user{i:03d}@example.com", full_name="A User")
            per_create[fast] = calls["n"] / 20
            assert database.open().codx_fast_pickling is fast
        finally:
            database.close()
    assert per_create[False] > 100, per_create  # a call per key and value of four buckets and a user
    # On: one per next-bucket reference and new object, and ZODB's path for the tree nodes a
    # split rewrites (the first bucket is referenced twice there): measured 30 against 340.
    assert per_create[True] * 5 < per_create[False], per_create


@pytest.mark.parametrize(
    ("state", "path"),
    [
        (("a", 1, b"x", None), "none"),
        ({"name": "a", "when": datetime.datetime(2026, 1, 1, tzinfo=UTC)}, "none"),
        (("a", "stored"), "dict.get"),
        (("a", ("b", "stored")), "dict.get"),
        (("stored", "stored"), "zodb"),  # met twice: ZODB would pickle two fresh pid tuples
        ({"x": "stored"}, "zodb"),  # beside a dict: dict.get would raise on it
        ((frozenset({"a"}), "stored"), "zodb"),  # protocol 3 pickles a frozenset through a list
        (("equal",), "zodb"),  # compared by value: dict.get could answer for the wrong object
        ((datetime.datetime(2026, 1, 1, tzinfo=zoneinfo.ZoneInfo("Europe/Madrid")),), "zodb"),
        ((type("Str", (str,), {})("a"),), "zodb"),  # a str subclass: not known to pickle plainly
        ((Holder,), "none"),
    ],
)
def test_the_path_each_state_takes(state: Any, path: str) -> None:
    stored, equal = Holder(), Equal()

    def swap(value: Any) -> Any:
        if value == "stored":
            return stored
        if value == "equal":
            return equal
        if isinstance(value, tuple):
            return tuple(swap(v) for v in value)
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        return value

    answers: list[Any] = []

    def pid(obj: Any) -> Any:
        answers.append(obj)
        return (b"\0" * 8, type(obj))

    fast = pickling.fast_persistent_id(Holder, swap(state), pid)
    if path == "zodb":
        assert fast is None
        assert answers == []  # no oid handed out for a state that falls back
    elif path == "none":
        assert fast is pickling._NO_REFS
    else:
        assert fast is not None and fast is not pickling._NO_REFS
        assert answers == [stored]
        assert fast(stored) == (b"\0" * 8, Holder) and fast("a") is None


def test_a_zodb_without_the_hooks_is_left_alone(caplog: pytest.LogCaptureFixture) -> None:
    class Writer:  # an ObjectWriter of another ZODB: no _dump
        def persistent_id(self, obj: Any) -> None:
            return None

    with caplog.at_level(logging.WARNING, logger="db.pickling"):
        assert pickling.missing_hooks(Writer) == ["_dump"]
        assert not pickling.install(Writer)
        assert not pickling.install(Writer)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings
    assert "_dump" in warnings[0] and "db_fast_pickling=false" in warnings[0]
    assert "_dump" not in Writer.__dict__
    assert pickling.missing_hooks(ZODB.serialize.ObjectWriter) == []


def test_the_setting_off_marks_the_database(tmp_path: Path) -> None:
    database = Database(
        CodxJuniorGlobalSettings(db_backend="file", db_file_path=tmp_path / "u.fs", db_fast_pickling=False)
    )
    try:
        UserDB(database).create(username="alice")
        assert database.open().codx_fast_pickling is False
    finally:
        database.close()
