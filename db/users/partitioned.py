"""The id and name indexes as one small tree per key prefix (generation 7).

Why (bench/README.md "Indexes in partitions"): every insert ``readCurrent``s the internal nodes
it descends (BTrees' ``_set``), and a bucket split rewrites its parent, so a commit fails
(VoteReadConflictError, UnableToLockRowsToReadCurrentError) when another process split a bucket
under a node it had descended. In one tree of a few thousand names, the root and a dozen nodes
below it sit above every key: with 4 processes creating users against 3,000, 9-10% of creates
were retried, three quarters of them on internal nodes of ``by_username``, ``by_email`` and
``by_skeleton``, the rest mostly on ``users`` (new ids of every process land at the ends of the
block of existing ids, under the same nodes).

Here each key prefix has its own ``IndexTree``, kept in the ``parts`` tree by prefix. An insert
reads ``parts`` (a read: no ``readCurrent``) and descends only its partition, so a split fails
only writers of keys with the same prefix, and ``parts`` itself changes only when a new prefix
appears. Ids start with a per-process prefix (db/users/repository.py ``new_user_id``): each
process writes its own partition of ``users``. Measured the same way: 1-2% of creates retried.

Ordered like one tree: partitions are named by the first bytes of a key's UTF-8 form, and UTF-8
keeps code point order, so every key of a partition sorts before every key of a later one (a key
shorter than the prefix sorts first in both); walking the partitions in order walks all keys in
order (``by_username`` lists users sorted by name).

Partitions that empty stay (empty): deleting one from ``parts`` would race with a concurrent
insert into that same tree object (the two commits touch different objects and both commit), and
the key would land in a tree no longer in the index (``by_project``'s sets stay for the same reason).

Stored by its import path: ``db.users.partitioned.PartitionedTree`` must stay importable.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from persistent import Persistent

from db.users.indexes import IndexTree, check_index

# Bytes of a key's UTF-8 form that name its partition: 2, so at most 65,536 partitions. Hex ids
# (and random uuids of older databases): 256. Names: their first two characters when ASCII (a few
# hundred partitions in practice), the first two bytes otherwise (64 CJK characters share one).
PREFIX_LENGTH = 2

_MISSING: Any = object()


def partition_of(key: str) -> str:
    """The name of the partition that holds ``key``: its first ``PREFIX_LENGTH`` UTF-8 bytes, as a str.

    The bytes are read as Latin-1, one character per byte, so names of partitions compare as the
    bytes do; an ASCII prefix is its own name (``"al"`` for ``"alice"``).
    """
    head = key[:PREFIX_LENGTH]
    if head.isascii():
        return head
    return key.encode("utf-8", "surrogatepass")[:PREFIX_LENGTH].decode("latin-1")


class PartitionedTree(Persistent):  # type: ignore[misc]
    """A ``str``-keyed mapping kept as one ``IndexTree`` per key prefix (``partition_of``), in ``parts``.

    Answers the part of the ``OOBTree`` API codx-db uses (get, in, [], del, pop, update, clear,
    len, ordered keys/values/items with ``min``/``excludemin``). ``len`` walks the partitions' buckets,
    as ``len`` of a BTree does; the user count is the sharded ``Length`` (``UserContainer.length``).
    """

    def __init__(self, items: Iterable[tuple[str, Any]] = ()) -> None:
        self.parts: Any = IndexTree()  # partition name -> IndexTree of key -> value
        self.update(items)

    def part(self, key: str) -> Any | None:
        """The partition tree ``key`` belongs to, or None if it has none yet (nothing is written)."""
        return self.parts.get(partition_of(key))

    def _writable_part(self, key: str) -> Any:
        name = partition_of(key)
        tree = self.parts.get(name)
        if tree is None:
            tree = self.parts[name] = IndexTree()
        return tree

    def get(self, key: str, default: Any = None) -> Any:
        tree = self.part(key)
        return default if tree is None else tree.get(key, default)

    def __getitem__(self, key: str) -> Any:
        tree = self.part(key)
        if tree is None:
            raise KeyError(key)
        return tree[key]

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        tree = self.part(key)
        return tree is not None and key in tree

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str):
            raise TypeError(f"PartitionedTree keys are str, not {type(key).__name__}")
        self._writable_part(key)[key] = value

    def __delitem__(self, key: str) -> None:
        tree = self.part(key)
        if tree is None:
            raise KeyError(key)
        del tree[key]

    def pop(self, key: str, default: Any = _MISSING) -> Any:
        tree = self.part(key)
        if tree is None or key not in tree:
            if default is _MISSING:
                raise KeyError(key)
            return default
        return tree.pop(key)

    def update(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> None:
        """Insert many pairs (or a mapping, as ``OOBTree.update``): grouped by partition, one ``update`` each."""
        pairs_in = items.items() if isinstance(items, Mapping) else items
        groups: dict[str, list[tuple[str, Any]]] = {}
        for key, value in pairs_in:
            if not isinstance(key, str):
                raise TypeError(f"PartitionedTree keys are str, not {type(key).__name__}")
            groups.setdefault(partition_of(key), []).append((key, value))
        for pairs in groups.values():
            self._writable_part(pairs[0][0]).update(pairs)

    def clear(self) -> None:
        """Remove every key (the partitions stay, empty: see the module's note)."""
        for tree in self.parts.values():
            tree.clear()

    def __len__(self) -> int:
        return sum(len(tree) for tree in self.parts.values())

    def __bool__(self) -> bool:
        return any(tree for tree in self.parts.values())

    def __iter__(self) -> Iterator[str]:
        return self.keys()

    def items(self, min: str | None = None, excludemin: bool = False) -> Iterator[tuple[str, Any]]:
        """(key, value) in key order, from ``min`` (excluded with ``excludemin``) on."""
        if min is None:
            for tree in self.parts.values():
                yield from tree.items()
            return
        for name, tree in self.parts.items(min=partition_of(min)):
            if name == partition_of(min):
                yield from tree.items(min=min, excludemin=excludemin)
            else:
                yield from tree.items()

    def keys(self, min: str | None = None, excludemin: bool = False) -> Iterator[str]:
        return (key for key, _ in self.items(min, excludemin))

    def values(self, min: str | None = None, excludemin: bool = False) -> Iterator[Any]:
        return (value for _, value in self.items(min, excludemin))

    def misplaced(self) -> list[tuple[str, str]]:
        """(partition, key) for each key stored in a partition not its own: a lookup never finds it."""
        return [(name, key) for name, tree in self.parts.items() for key in tree if partition_of(key) != name]

    def doubled(self, name: str, key: str) -> bool:
        """True when misplaced ``key`` (in partition ``name``) is also in its own partition, with another value."""
        own = self.part(key)
        return own is not None and key in own and own[key] is not self.parts[name][key]

    def rehome(self, label: str, derived: bool = False) -> list[str]:
        """Move each misplaced key into its own partition (``codx-db repair``); one line per change, naming ``label``.

        A key also in its own partition: the misplaced copy is dropped when it holds the same
        value, or when the index is ``derived`` (rebuilt from the users right after); otherwise
        which one is right is for a person (``check`` reports it as not repairable).
        """
        moved: list[str] = []
        for name, key in self.misplaced():
            if key in self:
                if derived or not self.doubled(name, key):
                    del self.parts[name][key]
                    moved.append(f"{label}: dropped a second entry for {key!r} from partition {name!r}")
                else:
                    moved.append(f"{label}: {key!r} is in partition {name!r} and in its own: left as it is")
                continue
            self[key] = self.parts[name].pop(key)
            moved.append(f"{label}: moved {key!r} from partition {name!r} to {partition_of(key)!r}")
        return moved

    def _check(self) -> None:
        """Raise AssertionError when ``parts`` or a partition is damaged (misplaced keys: ``misplaced``)."""
        check_index(self.parts)
        for tree in self.parts.values():
            check_index(tree)


def tree_for(index: Any, key: str) -> Any | None:
    """The tree that holds (or would take) ``key``: its partition for a ``PartitionedTree``, else ``index``."""
    return index.part(key) if isinstance(index, PartitionedTree) else index
