"""Concurrent writers: indexes with bigger buckets, the user count in shards.

On PostgreSQL, two processes creating users at once kept failing each other's commits: a
bucket split rewrites the BTree node every other writer had read (``readCurrent``), and one
``Length`` written by every create queued them all (docs/design/load.md §3.1). This step
copies each index of the user container (``users``, ``by_username``, ``by_email``,
``by_skeleton``, ``by_github``, ``by_project``, ``inactive``, ``admins``) into an
``IndexTree``/``IndexSet`` of db/users/indexes.py (``GENERATION6_CLASSES``; evolve7 then
partitions the id and name indexes), entry by entry, in batches, and swaps them all in its last
transaction; the old count moves into the first of ``COUNT_SHARDS`` shards.
The credential store's indexes (``tokens``, ``tokens_by_user``, ``token_expiry``, ``api_keys``,
``api_keys_by_user``: random digests, written at every login) are copied and swapped the same
way, and each user's digest set becomes an ``IndexSet`` as its entry is copied.

Stop processes running older code before ``codx-db migrate --apply`` (their writes to the old
indexes during the copy would be lost at the swap); processes running this code refuse a
generation-5 database (``MINIMUM_GENERATION`` is 6), or wait on the startup lock while it runs.

Idempotent: an interrupted run left its partial copies in ``container.rebuilding``; a new run
starts them again from empty, and an index already of the new class is kept as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from persistent.mapping import PersistentMapping

from db.users.credentials import CREDENTIALS_KEY
from db.users.indexes import (
    CREDENTIAL_INDEX_CLASSES,
    PER_USER_SET_INDEXES,
    IndexSet,
    copy_into,
    new_counts,
)
from db.users.layout import GENERATION6_CLASSES, INDEX_CLASSES
from db.users.models import USERS_KEY

if TYPE_CHECKING:
    from migrations.context import EvolveContext


def evolve(context: EvolveContext) -> None:
    """Copy every index into its bigger-bucket class, swap them in, shard the count."""
    container = context.root[USERS_KEY]
    store = context.root.get(CREDENTIALS_KEY)  # absent on a database that never wrote a credential
    # An index already of its current class (one a generation-7 run partitioned, when this step
    # runs again) is kept: copying it back would undo that step.
    current = {name: type(getattr(container, name, None)) for name in GENERATION6_CLASSES}
    classes = {name: cls for name, cls in GENERATION6_CLASSES.items() if current[name] is not INDEX_CLASSES[name]}
    user_todo = copy_indexes(context, container, classes, ())
    credential_todo = (
        {} if store is None else copy_indexes(context, store, CREDENTIAL_INDEX_CLASSES, PER_USER_SET_INDEXES)
    )
    # The swap, committed with the generation stamp by the runner: readers never see a half copy.
    swap_indexes(container, user_todo)
    if store is not None:
        swap_indexes(store, credential_todo)
    if container.counts is None:
        container.counts = new_counts(int(container.__dict__["length"]()))
        del container.__dict__["length"]
        container._p_changed = True


def copy_indexes(
    context: EvolveContext, holder: Any, classes: Mapping[str, type], set_valued: tuple[str, ...]
) -> dict[str, type]:
    """Copy each index of ``holder`` not yet of its class into ``holder.rebuilding``, in batches.

    ``set_valued`` names indexes whose values are per-user sets: each is copied into an
    ``IndexSet`` (a new object, in the same batch). Returns the indexes copied.
    """
    todo = {
        name: cls
        for name, cls in classes.items()
        if getattr(holder, name, None) is not None and type(getattr(holder, name)) is not cls
    }
    # Started afresh on every run: copies left by an interrupted run are dropped, not trusted.
    if todo or "rebuilding" in holder.__dict__:
        holder.rebuilding = PersistentMapping({name: cls() for name, cls in todo.items()})
    for name in todo:
        old, new = getattr(holder, name), holder.rebuilding[name]
        context.report(f"copying the {name} index")
        copy = _copy_sets if name in set_valued else copy_into
        batch: list[Any] = []
        for key in context.iter_batched(old.keys(), len(old)):
            batch.append(key)
            if len(batch) == context.batch_size:
                copy(old, new, batch)  # before iter_batched commits this batch
                batch = []
        copy(old, new, batch)
    return todo


def _copy_sets(source: Any, target: Any, keys: list[Any]) -> None:
    target.update([(key, IndexSet(source[key])) for key in keys])


def swap_indexes(holder: Any, todo: Mapping[str, type]) -> None:
    for name in todo:
        setattr(holder, name, holder.rebuilding[name])
    if "rebuilding" in holder.__dict__:
        del holder.rebuilding
