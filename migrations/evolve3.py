"""Index username look-alikes (confusable skeletons), so new names cannot imitate stored ones.

Generation 3 refuses a new username that looks like a stored one (``admin``
spelt with a Cyrillic U+0430 "a" beside ``admin``): the container keeps ``by_skeleton``, each UTS #39 skeleton
mapped to the tuple of users whose names have it (see ``db.unicode_policy``; their ids from generation 8).
This step builds it from the stored users, in batches.

Look-alikes stored before this generation are kept as they are: both users share one entry,
both still log in by their exact names (lookups use the unchanged username index), and
``codx-db check`` lists them as a warning for an admin to rename one.

Idempotent: the index is created once (kept if an interrupted run created it) and a user
already in its entry is not added twice. Writers keep the index up to date from the moment
it exists, so users changed while the step runs are indexed under their current names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from BTrees.OOBTree import OOBTree

from db.users.models import USERS_KEY, username_skeleton

if TYPE_CHECKING:
    from migrations.context import EvolveContext


def evolve(context: EvolveContext) -> None:
    """Build the look-alike (skeleton) index from every stored user."""
    container = context.root[USERS_KEY]
    if container.by_skeleton is None:
        container.by_skeleton = OOBTree()
    for user in context.iter_batched(container.users.values(), len(container.users)):
        # Read "current": a rename committing meanwhile conflicts with this batch instead of
        # leaving the user indexed under its old name.
        context.connection.readCurrent(user)
        container.add_skeleton(user, username_skeleton(user.username))
