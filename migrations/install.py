"""Install a fresh database: create the user container and the package -> generation mapping."""

from __future__ import annotations

from typing import TYPE_CHECKING

from persistent.mapping import PersistentMapping

from db.models import install_root
from migrations.registry import GENERATIONS_KEY

if TYPE_CHECKING:
    from migrations.context import EvolveContext


def evolve(context: EvolveContext) -> None:
    """Create the root containers of a new database."""
    install_root(context.root)
    if GENERATIONS_KEY not in context.root:  # an application's install may have run first elsewhere
        context.root[GENERATIONS_KEY] = PersistentMapping()
