"""Concurrent writers: the id and name indexes in one tree per key prefix.

Every insert ``readCurrent``s the internal nodes it descends, and a bucket split rewrites its
parent: with one tree per index, a split anywhere near the top failed the commits of the other
processes creating at that moment (9-10% of creates retried with 4 processes against 3,000 users,
bench/README.md "Indexes in partitions"). This step copies ``users``, ``by_username``,
``by_email`` and ``by_skeleton`` into ``PartitionedTree``s (db/users/partitioned.py: one
``IndexTree`` per 2-byte key prefix), entry by entry, in batches, and swaps them in with the
generation stamp. The other indexes, the count and every user object are unchanged.

Stop processes running older code before ``codx-db migrate --apply`` (their creates during the
copy would be lost at the swap); processes running this code refuse a generation-6 database
(``MINIMUM_GENERATION`` is 7), or wait on the startup lock while it runs.

Idempotent: an interrupted run left its partial copy in ``container.rebuilding``; a new run
starts them again from empty, and an index already partitioned is kept as it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from db.users.layout import PARTITIONED
from db.users.models import USERS_KEY
from db.users.partitioned import PartitionedTree
from migrations.evolve6 import copy_indexes, swap_indexes

if TYPE_CHECKING:
    from migrations.context import EvolveContext


def evolve(context: EvolveContext) -> None:
    """Copy each index of ``layout.PARTITIONED`` not yet partitioned into a ``PartitionedTree``; swap them in."""
    container = context.root[USERS_KEY]
    todo = copy_indexes(context, container, dict.fromkeys(PARTITIONED, PartitionedTree), ())
    # The swap, committed with the generation stamp by the runner: readers never see a half copy.
    swap_indexes(container, todo)
