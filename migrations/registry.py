"""Generations per package: which packages keep data in the database, and where each one stands.

codx-db's own data (``codx_db``) and an application's (codx-api's) live in one database, and
each evolves on its own numbers, as zope.generations keys them per package. To register
an application's steps::

    # codx_api/generations/__init__.py   GENERATION = 1; MINIMUM_GENERATION = 1
    # codx_api/generations/install.py    def evolve(context: EvolveContext) -> None: ...  (a new database)
    # codx_api/generations/evolve1.py    def evolve(context: EvolveContext) -> None: ...  (0 -> 1)
    from migrations import SchemaManager, register

    register(SchemaManager(package="codx_api", steps="codx_api.generations"))  # before db.open()

Every ``Database.open`` then installs or evolves each registered package under the startup
lock (``db_startup`` applies to each), codx_db first. A step gets an ``EvolveContext``
(migrations/context.py) and never commits on its own; its module docstring's first line is
its description in ``codx-db migrate``.

Register from day one: a package with no entry in a database counts as new there, so its
``install`` runs on the next open even if the application stored data before registering.
An install must therefore create only what is missing.

Where the numbers live: ``root["codx_db.generations"]`` maps package -> generation.
codx_db's number is also (and authoritatively) at ``root["codx_db.generation"]``, the key
codx-db has always had, written together with the mapping: an older codx-db reads it and
refuses a newer database instead of mistaking it for an empty one.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import MutableMapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from persistent.mapping import PersistentMapping

from db.errors import GenerationError
from db.users.models import USERS_KEY
from migrations.context import Step

log = logging.getLogger(__name__)

CODX_DB = "codx_db"
GENERATION_KEY = "codx_db.generation"  # codx_db's generation, as every codx-db version has kept it
GENERATIONS_KEY = "codx_db.generations"  # {package: generation} (generation 4 on)


@dataclass(frozen=True)
class SchemaManager:
    """A package's generation steps: ``steps`` names an importable package holding them.

    That package defines ``GENERATION`` (the latest) and ``MINIMUM_GENERATION`` (the oldest
    its code still reads) and holds ``install.py`` and ``evolve1.py`` .. ``evolve{GENERATION}.py``,
    each with ``evolve(context)``. The numbers are read when used, not when registered.
    """

    package: str
    steps: str

    @property
    def module(self) -> ModuleType:
        """The steps package, imported."""
        try:
            return importlib.import_module(self.steps)
        except ImportError as exc:
            raise GenerationError(
                f"the generation steps of {self.package} ({self.steps!r}) cannot be imported: {exc}"
            ) from exc

    @property
    def generation(self) -> int:
        """The latest generation the code writes (``GENERATION``)."""
        return self._number("GENERATION")

    @property
    def minimum(self) -> int:
        """The oldest generation the code reads correctly (``MINIMUM_GENERATION``)."""
        return self._number("MINIMUM_GENERATION")

    def _number(self, name: str) -> int:
        value = getattr(self.module, name, None)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise GenerationError(f"{self.steps}.{name} must be a whole number >= 0, not {value!r}")
        return value

    def install_step(self) -> Step:
        """``install.py``: builds the package's data in a database that has none."""
        return self._load("install", 0)

    def load_step(self, generation: int) -> Step:
        """``evolve{generation}.py``: takes the package's data from ``generation - 1`` to ``generation``."""
        return self._load(f"evolve{generation}", generation)

    def _load(self, name: str, generation: int) -> Step:
        where = f"{self.steps.replace('.', '/')}/{name}.py"
        try:
            module = importlib.import_module(f"{self.steps}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{self.steps}.{name}":
                raise  # the step exists and imports something missing: show that
            raise GenerationError(f"{where} is missing: {self.package} needs it for generation {generation}") from None
        if not callable(getattr(module, "evolve", None)):
            raise GenerationError(f"{where} has no evolve(context) function")
        doc = (module.__doc__ or "").strip().splitlines()
        description = doc[0] if doc else (f"generation {generation}" if generation else "install")
        return Step(generation, description, module, self.package)


_managers: dict[str, SchemaManager] = {}
_lock = threading.Lock()
_opened = False  # a database has run the generations in this process (see register)


def register(manager: SchemaManager) -> None:
    """Keep ``manager``'s package at its generations in every database opened from now on.

    Idempotent: registering the same package and steps again does nothing; the same package
    with other steps is a mistake and raises ``GenerationError``. Register before the first
    ``db.open()``: a database already open picks the package up at its next open.
    """
    if not manager.package or not manager.package.isidentifier():
        raise GenerationError(f"a package name must be a Python identifier such as 'codx_api', not {manager.package!r}")
    with _lock:
        known = _managers.get(manager.package)
    if known == manager:
        return
    if known is not None:
        raise GenerationError(
            f"{manager.package} is already registered with the steps in {known.steps!r}, "
            f"not {manager.steps!r}: register each package once"
        )
    manager.generation, manager.minimum  # noqa: B018 - fail here, naming the package, not at the next open
    with _lock:
        _managers.setdefault(manager.package, manager)
        opened = _opened
    if opened:
        log.warning(
            "generations of %s registered after a database was opened: they run at its next open "
            "(or `codx-db migrate --apply` in a process that registers them)",
            manager.package,
        )


def managers() -> list[SchemaManager]:
    """The registered packages, codx_db first (other packages' steps may read users), then by registration."""
    with _lock:
        registered = list(_managers.values())
    return sorted(registered, key=lambda m: m.package != CODX_DB)  # stable: keeps registration order


def get(package: str) -> SchemaManager:
    """The manager registered for ``package``."""
    with _lock:
        manager = _managers.get(package)
    if manager is None:
        raise GenerationError(f"no generations are registered for {package!r} in this process")
    return manager


def mark_opened() -> None:
    """Note that a database ran the generations (a later ``register`` then warns)."""
    global _opened
    _opened = True


def read_generation(root: Any) -> int | None:
    """codx_db's generation stamped in a root, or None for an empty database.

    A database holding users but no stamp predates the generation key: generation 0.
    """
    generation = root.get(GENERATION_KEY)
    if generation is not None:
        return int(generation)
    return 0 if USERS_KEY in root else None


def read_package_generation(root: Any, package: str) -> int | None:
    """A package's generation in a root; None when the database holds none of its data yet."""
    if package == CODX_DB:
        return read_generation(root)
    value = (root.get(GENERATIONS_KEY) or {}).get(package)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise GenerationError(
            f"the generation stored for {package} in root[{GENERATIONS_KEY!r}] is {value!r}, not a number: "
            "restore a backup, or set it to the generation the data is at"
        )
    return value


def read_generations(root: Any) -> dict[str, int | None]:
    """Every registered package's generation in a root, plus any other package the root records."""
    generations = {m.package: read_package_generation(root, m.package) for m in managers()}
    for package in root.get(GENERATIONS_KEY) or {}:
        generations.setdefault(package, read_package_generation(root, package))
    return generations


def stamp(root: MutableMapping[str, Any], package: str, generation: int) -> None:
    """Record ``package`` at ``generation`` (codx_db: in its own key, and in the mapping once it exists)."""
    mapping = root.get(GENERATIONS_KEY)
    if package == CODX_DB:
        root[GENERATION_KEY] = generation
        if mapping is None:
            return  # below generation 4: evolve4 creates the mapping from this key
    elif mapping is None:
        mapping = root[GENERATIONS_KEY] = PersistentMapping()
    mapping[package] = generation
