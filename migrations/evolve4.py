"""Generations per package: the root gets the codx_db.generations mapping.

Up to generation 3 the database held one number, codx-db's, at ``root["codx_db.generation"]``.
An application keeping its own persistent data in the same database (codx-api) needs its own
numbers, evolved by its own steps (``migrations.register``). This step creates
``root["codx_db.generations"]``, a mapping of package name to generation, and copies codx_db's
number into it; the runner then stamps generation 4 into both.

codx_db's own key stays and stays authoritative: codx-db 0.1 reads only it, and so refuses
this database as newer (4 > its 2 or 3) instead of mistaking it for an empty one.

Idempotent: the mapping is created once (kept, with any package already in it, if an
interrupted run or an application's install created it) and codx_db's entry is overwritten.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from persistent.mapping import PersistentMapping

from migrations.registry import CODX_DB, GENERATIONS_KEY, read_generation

if TYPE_CHECKING:
    from migrations.context import EvolveContext


def evolve(context: EvolveContext) -> None:
    """Create the package -> generation mapping, starting from codx_db's number."""
    root = context.root
    mapping = root.get(GENERATIONS_KEY)
    if mapping is None:
        mapping = root[GENERATIONS_KEY] = PersistentMapping()
    mapping[CODX_DB] = read_generation(root)
