"""Index inactive users, so listing active or inactive users loads only the page.

Generation 1 filtered ``list(active=...)`` by loading every user to read ``is_active``: on a
large database one page could read the whole user table. Generation 2 keeps the username keys
of inactive users in an ``OOTreeSet`` on the container (``inactive``), maintained by every
write; this step builds it from the stored users, in batches.

Idempotent: the set is created once (kept if an interrupted run created it) and adding a
key twice is harmless. Readers use the set only once ``inactive_complete`` is set, in the
step's last transaction; writers keep it up to date from the moment it exists.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from BTrees.OOBTree import OOTreeSet

from db.users.models import USERS_KEY, username_key

if TYPE_CHECKING:
    from migrations.context import EvolveContext


def evolve(context: EvolveContext) -> None:
    """Build the inactive-users index from every stored user."""
    container = context.root[USERS_KEY]
    if container.inactive is None:
        container.inactive = OOTreeSet()
    for user in context.iter_batched(container.users.values(), len(container.users)):
        # An application still running may change a user meanwhile: reading it "current"
        # makes such a change conflict with this batch instead of being missed.
        context.connection.readCurrent(user)
        if not user.is_active:
            container.inactive.add(username_key(user.username))
    # Only now may list(active=...) rely on the set (it is committed with the generation).
    container.inactive_complete = True
