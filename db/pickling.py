"""Pickling stored objects without a Python call per pickled value (``db_fast_pickling``).

ZODB's ``ObjectWriter`` gives its pickler a Python ``persistent_id``, and the pickler calls it
for EVERY object it meets: each key and value of an index bucket, each field of a ``User``.
A create re-pickles four buckets of ~30 entries and one user: ~360 calls, ~80 µs of a
create's ~1.8 ms of client CPU, and a larger share of a group commit's batch, where the
per-transaction work is paid once (bench/README.md "Pickling with a C-speed persistent_id").

Before the pickler runs, ``fast_persistent_id`` walks the state once, mostly in C (a set of
plain types checked against ``map(type, ...)``), and hands the pickler a C callable that
answers exactly what ZODB's ``persistent_id`` would:

- a state holding no persistent object at all (a user's dict of fields): ``deque(maxlen=0).append``,
  which takes any object and returns None (pickle it by value), as ZODB answers for each;
- a state of tuples holding persistent objects (a bucket and its next bucket): ``dict.get`` of
  {object: ZODB's own answer for it}, computed by ZODB's ``persistent_id`` in the pickler's
  order (depth first, left to right), so new objects get their oids in the same order;
- anything else (a value of a type not known to pickle plainly, a persistent object met twice,
  persistent objects beside mutable containers, whose ``dict.get`` would raise): ZODB's own path.

The records are byte-identical to ZODB's (tests/test_pickling.py compares them).

This wraps ZODB's private ``ObjectWriter._dump``. ``db_fast_pickling=false``
(``CODX_JUNIOR_DB_FAST_PICKLING``) keeps ZODB's own path for a database; when ZODB lacks what the
wrapper needs (another ZODB than pyproject.toml allows), nothing is wrapped and a warning says so.
"""

from __future__ import annotations

import collections
import datetime
import logging
import threading
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import Any

import ZODB.serialize
from persistent import Persistent

from db.settings import CodxJuniorGlobalSettings

log = logging.getLogger(__name__)

# Types whose values ZODB's persistent_id answers None for, and that pickle to nothing but such
# values: met anywhere in a state, they need no call. (A datetime reduces to bytes and its tzinfo:
# checked one by one, in ``_Walk.value``.)
_PLAIN: frozenset[type] = frozenset({str, bytes, int, float, bool, type(None), datetime.date, datetime.timedelta})
_ZONED = (datetime.datetime, datetime.time)  # plain when naive or in a ``datetime.timezone``
# Unhashable (``dict.get`` would raise on them), or, for frozenset, pickled (protocol 3) through a
# list the pickler makes and passes to ``persistent_id``.
_MUTABLE = (list, dict, set, frozenset)
_NO_REFS: Callable[[Any], None] = collections.deque(maxlen=0).append  # any object -> None, in C
_FLAG = "codx_fast_pickling"  # set on each ZODB.DB by the open hook: this database's choice
_ABSENT = object()

_identity_types: dict[type, bool] = {}  # persistent class -> compared and hashed by identity


class _Fallback(Exception):
    """This state takes ZODB's own path."""


def _by_identity(cls: type) -> bool:
    """True when instances of ``cls`` are persistent and compared by identity (``dict.get`` is exact)."""
    found = _identity_types.get(cls)
    if found is None:
        found = _identity_types[cls] = (
            issubclass(cls, Persistent)
            and getattr(cls, "__eq__", None) is object.__eq__
            and getattr(cls, "__hash__", None) is object.__hash__
        )
    return found


class _Walk:
    """One state's walk: the persistent objects in the pickler's order, and whether ``dict.get`` can serve.

    It calls nothing of ZODB's: a state that falls back has had no oid assigned by it.
    """

    __slots__ = ("found", "mutable", "seen")

    def __init__(self) -> None:
        self.found: dict[Any, None] = {}  # persistent objects, in the order met (a dict keeps it)
        self.seen: set[int] = set()  # containers already walked (the pickler memoizes them)
        self.mutable = False

    def values(self, values: Iterable[Any]) -> None:
        for value in values:
            if type(value) not in _PLAIN:
                self.value(value)

    def value(self, value: Any) -> None:
        kind = type(value)
        if kind in _PLAIN:
            return
        if kind is tuple or kind in _MUTABLE:
            if id(value) in self.seen:
                return
            self.seen.add(id(value))
            if kind in _MUTABLE:
                self.mutable = True
            if kind is dict:
                # The pickler meets each key, then its value; only the order of persistent
                # objects matters, and with a dict there are none (mutable: ZODB's path).
                if not _PLAIN.issuperset(map(type, value)):
                    self.values(value)
                if not _PLAIN.issuperset(map(type, value.values())):
                    self.values(value.values())
            elif not _PLAIN.issuperset(map(type, value)):
                self.values(value)
            return
        if kind in _ZONED:
            if value.tzinfo is None or type(value.tzinfo) is datetime.timezone:
                return
            raise _Fallback
        if isinstance(value, type):
            # ZODB answers None for a class unless it is a persistent class (an oid of its own).
            oid = getattr(value, "_p_oid", _ABSENT)
            if oid is _ABSENT or hasattr(oid, "__get__"):
                return
            raise _Fallback
        if not _by_identity(kind) or value in self.found:
            raise _Fallback  # an unknown type, or a reference the pickler would meet twice
        self.found[value] = None


def fast_persistent_id(classmeta: Any, state: Any, pid: Callable[[Any], Any]) -> Callable[[Any], Any] | None:
    """A C callable answering as ``pid`` (ZODB's ``persistent_id``) for all that pickling these meets, or None.

    When it returns one, it has called ``pid`` once for each persistent object of ``state``, in
    the pickler's order (new objects get their oids as the pickler would give them).
    """
    walk = _Walk()
    try:
        walk.value(classmeta)
        walk.value(state)
    except _Fallback:
        return None
    if not walk.found:
        return _NO_REFS
    if walk.mutable:
        return None
    return {obj: pid(obj) for obj in walk.found}.get


_install_lock = threading.Lock()
_warned: set[tuple[str, ...]] = set()


def missing_hooks(writer: Any) -> list[str]:
    """What ``writer`` (ZODB's ``ObjectWriter``) lacks of what the wrapper uses; [] when it has it all."""
    missing = [name for name in ("_dump", "persistent_id") if not callable(getattr(writer, name, None))]
    if missing:
        return missing
    try:
        probe = writer()
    except Exception:  # noqa: BLE001 - a constructor that changed is a missing hook too
        return ["ObjectWriter()"]
    return [name for name in ("_p", "_jar") if not hasattr(probe, name)] or (
        [] if hasattr(probe._p, "persistent_id") else ["_p.persistent_id"]
    )


def _wrapped(original: Callable[..., bytes]) -> Callable[..., bytes]:
    def _dump(self: Any, classmeta: Any, state: Any) -> bytes:
        """ZODB's ``ObjectWriter._dump``, its pickler's ``persistent_id`` made C for this record when it can be."""
        jar = self._jar
        fast = None
        if jar is not None and getattr(jar.db(), _FLAG, False):
            fast = fast_persistent_id(classmeta, state, self.persistent_id)
        if fast is None:
            return original(self, classmeta, state)
        pickler = self._p
        pickler.persistent_id = fast
        try:
            return original(self, classmeta, state)
        finally:
            pickler.persistent_id = self.persistent_id  # as ObjectWriter.__init__ set it

    _dump.codx_original = original  # type: ignore[attr-defined]
    return _dump


def install(writer: Any = None) -> bool:
    """Wrap ``writer._dump`` (ZODB's ``ObjectWriter``) once per process; False (one warning) if a hook is missing."""
    writer = ZODB.serialize.ObjectWriter if writer is None else writer
    with _install_lock:
        if hasattr(writer.__dict__.get("_dump"), "codx_original"):
            return True
        missing = missing_hooks(writer)
        if missing:
            if tuple(missing) not in _warned:
                _warned.add(tuple(missing))
                log.warning(
                    "ZODB %s lacks what db/pickling.py needs (%s): ZODB's own pickling path. Install the ZODB "
                    "pyproject.toml allows, or set db_fast_pickling=false to say so on purpose.",
                    _zodb_version(),
                    ", ".join(missing),
                )
            return False
        writer._dump = _wrapped(writer._dump)
        return True


def _zodb_version() -> str:
    try:
        return metadata.version("ZODB")
    except metadata.PackageNotFoundError:
        return "?"


def open_hook(zodb: Any, settings: CodxJuniorGlobalSettings) -> None:
    """Record this database's choice on its ``ZODB.DB``; wrap ZODB's writer when the choice is on."""
    setattr(zodb, _FLAG, bool(settings.db_fast_pickling and install()))
