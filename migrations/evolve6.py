"""Concurrent writers: indexes with bigger buckets, the user count in shards.

On PostgreSQL, two processes creating users at once kept failing each other's commits: a
bucket split rewrites the BTree node every other writer had read (``readCurrent``), and one
``Length`` written by every create queued them all (docs/design/load.md §3.1). This step
copies each index of the user container (``users``, ``by_username``, ``by_email``,
``by_skeleton``, ``by_github``, ``by_project``, ``inactive``, ``admins``) into an
``IndexTree``/``IndexSet`` of db/users/indexes.py, entry by entry, in batches, and swaps them
all in its last transaction; the old count moves into the first of ``COUNT_SHARDS`` shards.

Stop processes running older code before ``codx-db migrate --apply`` (their writes to the old
indexes during the copy would be lost at the swap); processes running this code refuse a
generation-5 database (``MINIMUM_GENERATION`` is 6), or wait on the startup lock while it runs.

Idempotent: an interrupted run left its partial copies in ``container.rebuilding``; a new run
starts them again from empty, and an index already of the new class is kept as it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from persistent.mapping import PersistentMapping

from db.users.indexes import INDEX_CLASSES, copy_into, new_counts
from db.users.models import USERS_KEY

if TYPE_CHECKING:
    from migrations.context import EvolveContext


def evolve(context: EvolveContext) -> None:
    """Copy every index into its bigger-bucket class, swap them in, shard the count."""
    container = context.root[USERS_KEY]
    todo = {
        name: cls
        for name, cls in INDEX_CLASSES.items()
        if getattr(container, name) is not None and type(getattr(container, name)) is not cls
    }
    # Started afresh on every run: copies left by an interrupted run are dropped, not trusted.
    container.rebuilding = PersistentMapping({name: cls() for name, cls in todo.items()})
    for name in todo:
        old, new = getattr(container, name), container.rebuilding[name]
        context.report(f"copying the {name} index")
        batch: list[Any] = []
        for key in context.iter_batched(old.keys(), len(old)):
            batch.append(key)
            if len(batch) == context.batch_size:
                copy_into(old, new, batch)  # before iter_batched commits this batch
                batch = []
        copy_into(old, new, batch)
    # The swap, committed with the generation stamp by the runner: readers never see a half copy.
    for name in todo:
        setattr(container, name, container.rebuilding[name])
    del container.rebuilding
    if container.counts is None:
        container.counts = new_counts(int(container.__dict__["length"]()))
        del container.__dict__["length"]
        container._p_changed = True
