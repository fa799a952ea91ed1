"""Hooks a ``Database`` runs on a freshly opened ZODB.DB before anyone uses it.

codx-db's generations install or evolve the database there (migrations/__init__.py registers
them). Kept apart from db/database.py, which calls them (``open_hooks``) and re-exports the names.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ZODB

    from db.settings import CodxJuniorGlobalSettings

# Something to do with a freshly opened ZODB.DB before anyone uses it (codx-db's generations
# install or evolve the database). Runs under the startup lock; raising refuses the open.
OpenHook = Callable[["ZODB.DB", "CodxJuniorGlobalSettings"], None]

# name -> hook, in registration order. The core knows no hook by name: `import db` wires
# codx-db's generations in (db/__init__.py), so the arrows point down, from migrations to here.
_open_hooks: dict[str, OpenHook] = {}
_open_hooks_lock = threading.Lock()


def register_open_hook(name: str, hook: OpenHook) -> None:
    """Run ``hook(zodb, settings)`` whenever a ``Database`` opens, after the hooks registered before it.

    Idempotent by name: registering a name again replaces its hook and keeps its place (a
    module imported twice, or reloaded, does not run twice). A hook registered after a
    ``Database`` opened runs from that database's next open on.
    """
    with _open_hooks_lock:
        _open_hooks[name] = hook


def open_hooks() -> list[tuple[str, OpenHook]]:
    """The registered hooks, in the order they run."""
    with _open_hooks_lock:
        return list(_open_hooks.items())
