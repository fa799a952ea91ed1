"""Less to pickle per write: the name indexes hold user ids instead of ``User`` references.

Every commit re-pickles each index bucket it changed, and ZODB's ``ObjectWriter.persistent_id``
runs in Python for every ``User`` reference in them (a str key or id is pickled in C). A create
changes three name buckets of ~20 entries each; with 8 threads committing together, pickling was
~36% of the group commit's client time, ``persistent_id`` ~24% (bench/README.md "Name indexes
hold ids"). This step rewrites the entries of ``by_username``, ``by_email`` and ``by_skeleton``
(``layout.NAME_INDEXES``) from ``User`` to the user's id, in batches; each batch first loads the
users it names in one query (``Connection.prefetch``), not one round trip each.

Stop processes running older code before ``codx-db migrate --apply``: they read an id entry as
a user and fail (``MINIMUM_GENERATION`` is 8, so processes running this code refuse a
generation-7 database, or wait on the startup lock while the step runs). Idempotent: an entry
already an id is left alone, so an interrupted run converts what is left.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from db.users.layout import NAME_INDEXES
from db.users.models import USERS_KEY, User, entry_id, entry_members

if TYPE_CHECKING:
    from migrations.context import EvolveContext


def evolve(context: EvolveContext) -> None:
    """Rewrite every ``User`` entry of the name indexes as the user's id."""
    container = context.root[USERS_KEY]
    for name in NAME_INDEXES:
        index = getattr(container, name)
        if index is None:
            continue
        context.report(f"storing ids in the {name} index")
        # Keys first (a list): the loop rewrites values of the tree it would otherwise walk.
        keys = list(index.keys())
        for start in range(0, len(keys), context.batch_size):
            entries = [(key, index.get(key)) for key in keys[start : start + context.batch_size]]
            ghosts = [
                m for _, entry in entries for m in entry_members(entry) if isinstance(m, User) and m._p_changed is None
            ]
            if ghosts:
                context.connection.prefetch(ghosts)  # reading a user's id loads it
            for key, entry in entries:
                converted = _ids(entry)
                if converted is not entry:
                    index[key] = converted
            context.commit_batch(start + len(entries), len(keys))


def _ids(entry: Any) -> Any:
    """``entry`` with its users as ids; the same object if there was nothing to convert."""
    if isinstance(entry, User):
        return entry.id
    if isinstance(entry, tuple) and any(isinstance(member, User) for member in entry):
        return tuple(entry_id(member) for member in entry)
    return entry
