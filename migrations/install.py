"""Install a fresh database: the user container, the credential store, the package -> generation mapping."""

from __future__ import annotations

from typing import TYPE_CHECKING

from persistent.mapping import PersistentMapping

from db.users.credentials import install_credentials
from db.users.models import install_root
from migrations.registry import GENERATIONS_KEY

if TYPE_CHECKING:
    from migrations.context import EvolveContext


def evolve(context: EvolveContext) -> None:
    """Create the root containers of a new database."""
    install_root(context.root)
    # Tokens and API keys. A database installed before this line has no store and needs no
    # generation for it: the first write that needs it creates it (db/users/credential_service.py).
    install_credentials(context.root)
    if GENERATIONS_KEY not in context.root:  # an application's install may have run first elsewhere
        context.root[GENERATIONS_KEY] = PersistentMapping()
