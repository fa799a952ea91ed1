"""codx-junior adoption: apps, 4-field project grants, GitHub/project/admin indexes.

codx-junior finds a user by GitHub login and lists a project's users by scanning its whole
user list. Generation 5 keeps three indexes on the user container, maintained by every write:
``by_github`` (GitHub login key -> user, unique), ``by_project`` (project id -> set of user
ids) and ``admins`` (ids of the admins, who have every project). It also rewrites stored
project grants ``(project_id, permissions, children)`` as ``(..., apps)``; users get ``apps``
from the class default ``()`` until they are next written.

Two users sharing a GitHub login (possible before this generation) keep it: the first by id
(= creation order = codx-junior's file order, whose first match won) is indexed; the others
are reported here and by ``codx-db check`` (warning ``github-duplicate``) for a person to fix
(``codx-db user update NAME --github ''``).

Stop processes running older code before ``codx-db migrate --apply``: they would not maintain
the new indexes. Runs in batches and is idempotent: the indexes are created once (kept if an
interrupted run created them), adding an id twice is harmless, and only 3-field grants are
rewritten.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from BTrees.OOBTree import OOBTree, OOTreeSet

from db.users.models import USERS_KEY, github_key
from db.users.schemas import upgrade_project_tuple

if TYPE_CHECKING:
    from migrations.context import EvolveContext

log = logging.getLogger(__name__)

# Usernames named in the report line (the check lists every pair).
MAX_NAMED = 20


def evolve(context: EvolveContext) -> None:
    """Rewrite old project grants and build the GitHub, project and admin indexes."""
    container = context.root[USERS_KEY]
    if container.by_github is None:
        container.by_github = OOBTree()
    if container.by_project is None:
        container.by_project = OOBTree()
    if container.admins is None:
        container.admins = OOTreeSet()
    duplicates: list[str] = []
    for user in context.iter_batched(container.users.values(), len(container.users)):
        # Read "current": a change committing meanwhile conflicts with this batch instead
        # of being indexed under its old values.
        context.connection.readCurrent(user)
        if any(len(entry) == 3 for entry in user.projects):
            user.projects = tuple(upgrade_project_tuple(entry) for entry in user.projects)
        if user.role == "admin":
            container.admins.add(user.id)
        for entry in user.projects:
            members = container.by_project.get(entry[0])
            if members is None:
                members = container.by_project[entry[0]] = OOTreeSet()
            members.add(user.id)
        if user.github:
            first = container.by_github.setdefault(github_key(user.github), user)
            if first is not user:
                duplicates.append(f"{user.username!r} (as {first.username!r})")
    if duplicates:
        named = ", ".join(duplicates[:MAX_NAMED]) + (
            f" and {len(duplicates) - MAX_NAMED} more" if len(duplicates) > MAX_NAMED else ""
        )
        message = (
            f"{len(duplicates)} users share a GitHub login with an earlier user, who keeps it: {named}; "
            "fix: `codx-db user update NAME --github ''` (or give each its own login)"
        )
        log.warning("generation 5: %s", message)
        context.report(message)
