"""Install a fresh database: create the user container."""

from __future__ import annotations

from typing import TYPE_CHECKING

from db.models import install_root

if TYPE_CHECKING:
    from migrations.runner import EvolveContext


def evolve(context: EvolveContext) -> None:
    """Create the root containers of a new database."""
    install_root(context.root)
