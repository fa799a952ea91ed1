"""Install a fresh database: create the user container and the credential store."""

from __future__ import annotations

from typing import TYPE_CHECKING

from db.models import install_root
from db.users.credentials import install_credentials

if TYPE_CHECKING:
    from migrations.runner import EvolveContext


def evolve(context: EvolveContext) -> None:
    """Create the root containers of a new database."""
    install_root(context.root)
    # Tokens and API keys. A database installed before this line has no store and needs no
    # generation for it: the first write that needs it creates it (db/users/credential_service.py).
    install_credentials(context.root)
