"""Less to pickle per write: the name indexes hold user ids instead of ``User`` references.

Every commit re-pickles each index bucket it changed, and ZODB's ``ObjectWriter.persistent_id``
runs in Python for every ``User`` reference in them (a str key or id is pickled in C). With a
create changing three name buckets of ~20 entries each, that was most of its pickling, and with 8
threads committing together most of the group commit's client time (bench/README.md "Name
indexes hold ids"). This step rewrites the entries of ``by_username``, ``by_email`` and
``by_skeleton`` (``layout.NAME_INDEXES``) from ``User`` to the user's id, key by key, in batches.

Safe while this code's processes run: ``UserContainer.user_for`` reads both forms, so
``MINIMUM_GENERATION`` stays 7, and rewriting a key's value changes only its bucket (BTrees merge
a concurrent change of another key of that bucket). Idempotent: an entry already an id is left
alone, so an interrupted run converts what is left.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from db.users.layout import NAME_INDEXES
from db.users.models import USERS_KEY, User, entry_id

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
        for key in context.iter_batched(keys, len(keys)):
            entry = index.get(key)
            converted = _ids(entry)
            if converted is not entry:
                index[key] = converted


def _ids(entry: Any) -> Any:
    """``entry`` with its users as ids; the same object if there was nothing to convert."""
    if isinstance(entry, User):
        return entry.id
    if isinstance(entry, tuple) and any(isinstance(member, User) for member in entry):
        return tuple(entry_id(member) for member in entry)
    return entry
