"""Add codx-junior's user fields: avatar, theme, role (from is_superuser), github, projects.

Generation 0 stored only username, email, full_name, is_active and is_superuser. codx-junior's
users also carry an avatar, a UI theme, a role (``admin`` or ``user``), a GitHub login and
per-project permissions. Each stored user gets them written explicitly: avatar ``""``, theme
``"dim"`` (codx-junior's default), role ``"admin"`` for superusers and ``"user"`` otherwise,
github ``""`` and no projects. ``disabled`` needs no storage: it is ``not is_active``.

Runs in batches (one commit each) and is idempotent: a user that already has its own
``role`` attribute was done by an earlier, interrupted run and is skipped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from db.users.models import USERS_KEY

if TYPE_CHECKING:
    from migrations.context import EvolveContext


def evolve(context: EvolveContext) -> None:
    """Write the generation-1 fields into every stored user."""
    container = context.root[USERS_KEY]
    total = len(container.users)
    for user in context.iter_batched(container.users.values(), total):
        user._p_activate()  # a ghost's __dict__ is empty until its state is loaded
        if "role" not in user.__dict__:  # __dict__ holds what is stored, not class defaults
            user.avatar = ""
            user.theme = "dim"
            user.role = "admin" if user.is_superuser else "user"
            user.github = ""
            user.projects = ()
