"""Which class each index of the user container has, per generation (checked by ``codx-db check``).

Generation 6 made every index an ``IndexTree``/``IndexSet`` (small internal nodes, db/users/indexes.py);
generation 7 keeps the id and name indexes as ``PartitionedTree`` (a tree per key prefix,
db/users/partitioned.py). The steps (migrations/evolve6.py, evolve7.py) copy an index into its class.
Generation 8 keeps the classes; the name indexes' entries become user ids (migrations/evolve8.py).
Generation 9 keeps them too; ``by_email`` also holds the login claims of usernames holding an "@"
(migrations/evolve9.py, ``models.login_claim``).
"""

from __future__ import annotations

from db.users.indexes import IndexSet, IndexTree
from db.users.partitioned import PartitionedTree

# The container attributes generation 7 has, with the class of each (evolve6/evolve7 copy an index into it).
INDEX_CLASSES: dict[str, type] = {
    "users": PartitionedTree,
    "by_username": PartitionedTree,
    "by_email": PartitionedTree,
    "by_skeleton": PartitionedTree,
    "by_github": IndexTree,
    "by_project": IndexTree,
    "inactive": IndexSet,
    "admins": IndexSet,
}
# The indexes generation 7 partitions.
PARTITIONED = tuple(name for name, cls in INDEX_CLASSES.items() if cls is PartitionedTree)
# What generation 6 built (and evolve6 still builds): every one of them an IndexTree.
GENERATION6_CLASSES: dict[str, type] = {**INDEX_CLASSES, **dict.fromkeys(PARTITIONED, IndexTree)}
# The indexes whose entries name users (generation 8: by id; before, the ``User`` itself; the
# look-alike index a tuple of them). ``by_github`` keeps ``User`` entries: only users with a
# GitHub login are in it, so few commits rewrite its buckets.
NAME_INDEXES = ("by_username", "by_email", "by_skeleton")
