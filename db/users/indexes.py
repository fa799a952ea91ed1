"""Index classes with small internal nodes and the user count split into shards (generation 6).

Generation 7 keeps the id and name indexes as one such tree per key prefix (db/users/partitioned.py).

Why (docs/design/load.md §1 items 4-6, §3.1): every insert ``readCurrent``s the internal
nodes of the BTree it descends, and a bucket split rewrites its parent node. With BTrees'
defaults (buckets of 30, internal nodes of 250 children) a database of thousands of users
has ONE internal node, the root, above every bucket: each split, wherever it happens, changes
the node every other writer has just read, and on PostgreSQL that writer's commit fails
(VoteReadConflictError, UnableToLockRowsToReadCurrentError) or deadlocks. Internal nodes of at
most ``INTERNAL_SIZE`` children make the tree a little deeper, so a split rewrites a node that
only the writers of the same key range read. Measured (bench/README.md "index layout"): two
processes creating users retried 58 per 1,000 creates with the root-only layout and 7-12 with
internal nodes of 16. Bigger buckets were tried first (60-500 entries): fewer splits, but every
insert re-pickles its whole bucket, so one writer got slower by more than two gained.

The sizes are class attributes, which BTrees reads from the type of the tree in C
(BTreeTemplate.c ``_get_max_size``) and in Python (_base.py ``type(self).max_leaf_size``).
A subclass keeps the C implementation and its bucket conflict resolution (its buckets are
plain ``OOBucket``/``OOSet``).

The classes are stored by their import path: ``db.users.indexes.IndexTree`` and
``db.users.indexes.IndexSet`` must stay importable under these names.

The count: one ``Length`` written by every create and delete serialises writers on its row
lock (held from vote to commit). ``ShardedLength`` spreads it over ``COUNT_SHARDS`` small
``Length`` objects; a process always writes the same shard (picked from a per-process salt
and its pid), so processes rarely queue on one count object. Rarely, not never: the pick is
random, so k processes all write different shards with probability (15/16)(14/16)...: 2
processes 94%, 4 processes 67%, 8 processes 12%. What sharing costs (four writers, three 5-second
runs each, shards forced, 2026-12-01): two of the four on one shard 314 creates/s against 317
all apart (Length resolves the conflicts: no retry), all four on one 266.
"""

from __future__ import annotations

import os
import secrets
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from typing import Any

from BTrees.Length import Length
from BTrees.OOBTree import OOBTree, OOTreeSet

# Buckets: BTrees' own default (bigger ones cost a single writer more than they gain; load.md §3.1).
LEAF_SIZE = 30
# Internal nodes: small, so a bucket split rewrites a node only writers of nearby keys read.
INTERNAL_SIZE = 16
# Shards of the user count.
COUNT_SHARDS = 16


class IndexTree(OOBTree):  # type: ignore[misc]
    """An ``OOBTree`` whose internal nodes hold up to ``INTERNAL_SIZE`` children (BTrees' default: 250)."""

    max_leaf_size = LEAF_SIZE
    max_internal_size = INTERNAL_SIZE


class IndexSet(OOTreeSet):  # type: ignore[misc]
    """An ``OOTreeSet`` whose internal nodes hold up to ``INTERNAL_SIZE`` children (BTrees' default: 250)."""

    max_leaf_size = LEAF_SIZE
    max_internal_size = INTERNAL_SIZE


# The credential store's indexes (db/users/credentials.py ``CredentialStore``), rebuilt the same way.
CREDENTIAL_INDEX_CLASSES: dict[str, type] = {
    "tokens": IndexTree,
    "tokens_by_user": IndexTree,
    "token_expiry": IndexSet,
    "api_keys": IndexTree,
    "api_keys_by_user": IndexTree,
}
# Of those, the ones whose values are per-user digest sets: ``IndexSet`` too.
PER_USER_SET_INDEXES = ("tokens_by_user", "api_keys_by_user")

_SALT = secrets.randbits(16)


def process_shard() -> int:
    """The count shard this process writes: fixed per process, different across processes.

    The pid is read at each call, so a forked child (same salt) usually picks another shard.
    """
    return ((_SALT ^ os.getpid()) & 0xFFFF) % COUNT_SHARDS


def new_counts(start: int = 0) -> tuple[Length, ...]:
    """``COUNT_SHARDS`` new shards summing to ``start`` (all of it in shard 0)."""
    return tuple(Length(start if shard == 0 else 0) for shard in range(COUNT_SHARDS))


class ShardedLength:
    """A ``Length``-like view of the count shards: ``()`` sums them, writes go to this process's shard.

    Not persistent itself: the shards are. ``_p_activate``/``_p_serial`` let code that asks
    "was the count written after transaction X" (db/ops/verify.py) treat it as one object.
    """

    def __init__(self, shards: Sequence[Length]) -> None:
        self.shards = shards

    def __call__(self) -> int:
        prefetch(self.shards)  # one query for the shards not in memory, not one round trip each
        return sum(int(shard()) for shard in self.shards)

    def value(self) -> int:
        return self()

    def change(self, delta: int) -> None:
        """Add ``delta`` to this process's shard (Length resolves concurrent changes to it)."""
        self.shards[process_shard()].change(delta)

    def set(self, value: int) -> None:
        """Make the total ``value`` by changing this process's shard only (the others keep merging)."""
        shard = self.shards[process_shard()]
        shard.set(int(shard()) + value - self())

    def _p_activate(self) -> None:
        for shard in self.shards:
            shard._p_activate()

    @property
    def _p_serial(self) -> bytes:
        return max(bytes(shard._p_serial) for shard in self.shards)


def copy_into(source: Any, target: Any, keys: Sequence[Any]) -> None:
    """Copy ``keys`` of ``source`` (a BTree or a tree set) into ``target`` of the same kind."""
    if isinstance(target, OOTreeSet):
        target.update(keys)
    else:
        target.update([(key, source[key]) for key in keys])


def check_index(tree: Any) -> None:
    """Raise AssertionError when an ``IndexTree``/``IndexSet`` is damaged.

    ``BTrees.check.check`` knows only BTrees' own classes (it looks the exact type up), so a
    subclass gets this instead: the C-level pointer check (``_check``), then every key in
    strictly ascending order along the buckets and found again by a search from the root,
    which goes through every internal node's separator keys.
    """
    tree._check()
    previous: Any = None
    for count, key in enumerate(tree.keys()):
        if count and not previous < key:
            raise AssertionError(f"key {key!r} follows {previous!r}: out of order")
        if key not in tree:
            raise AssertionError(f"key {key!r} is in a bucket but a search from the root does not find it")
        previous = key


def buckets_for(wanted: Sequence[tuple[Any, Any]]) -> list[Any | None]:
    """For each ``(tree, key)``: the bucket that holds ``key`` or would take it, not loaded if a ghost.

    None for a tree that is None, empty, or keeps its only bucket inline in its own state (any
    other object that is not an ``OOBTree`` comes back as it was given). The descents go down
    together, a level at a time: the internal nodes of a level that are ghosts (changed by
    another process since this one cached them: a bucket below split) are loaded in one
    ``prefetch``, not one round trip each on the way down. An internal node's state is
    ``((child0, key1, child1, key2, ...), firstbucket)``: the child for ``key`` is the one after
    the last separating key that is <= ``key``.
    """
    nodes: list[Any | None] = [tree for tree, _ in wanted]
    while True:
        level = [i for i, node in enumerate(nodes) if isinstance(node, OOBTree)]
        if not level:
            return nodes
        prefetch(nodes[i] for i in level)
        for i in level:
            parent: Any = nodes[i]
            state = parent.__getstate__()
            items = None if state is None else state[0]
            if items is None or (len(items) == 1 and type(items[0]) is tuple):
                nodes[i] = None  # empty, or the one bucket inline
            else:
                nodes[i] = items[2 * bisect_right(items[1::2], wanted[i][1])]


def prefetch(objects: Iterable[Any]) -> None:
    """Load the ghosts among ``objects`` (None entries skipped) in one query, if there are several.

    A ghost is loaded when first touched, a round trip apiece on RelStorage; its ``prefetch``
    fetches many in one query (storages without it: nothing happens). One ghost costs one
    round trip either way, so it is left to load itself.
    """
    ghosts: dict[int, Any] = {}
    for obj in objects:
        if obj is not None and obj._p_changed is None and obj._p_oid is not None:
            ghosts[id(obj)] = obj
    if len(ghosts) > 1:
        jar = next(iter(ghosts.values()))._p_jar
        if jar is not None:
            jar.prefetch(list(ghosts.values()))


def read_current_entry(tree: Any, key: Any) -> None:
    """``readCurrent`` what adding to the set ``tree[key]`` writes: the set and its buckets, or the bucket for ``key``.

    For the credential store (db/users/credentials.py): a revocation (password change,
    deactivation, deletion) that saw no credential, or not the newest, wrote nothing an issue
    committed meanwhile wrote, so both committed and the new credential outlived the revocation.
    With these read current, the revocation's commit conflicts, it runs again on a fresh snapshot
    and revokes that credential too (the other order was covered already: an issue
    ``readCurrent``s its user, which the revocation changed).
    """
    (bucket,) = buckets_for([(tree, key)])
    _read_current(tree if bucket is None else bucket)  # None: the entries are inline in the tree
    digests = tree.get(key)
    if digests is None:
        return
    _read_current(digests)
    set_bucket = getattr(digests, "_firstbucket", None)
    while set_bucket is not None:
        _read_current(set_bucket)
        set_bucket = set_bucket._next


def _read_current(obj: Any) -> None:
    if getattr(obj, "_p_jar", None) is None or obj._p_oid is None:
        return  # not stored yet (this transaction's), or inline in its parent's record
    obj._p_activate()  # a ghost's serial is unknown, and readCurrent would skip it
    obj._p_jar.readCurrent(obj)
