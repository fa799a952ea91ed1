"""The systems the benchmark compares, by name."""

from __future__ import annotations

import importlib

from bench.systems.base import System

# name -> "module:class"; imported lazily so a missing optional package only hurts its system.
SYSTEMS: dict[str, str] = {
    "codx-file": "bench.systems.codx:CodxFile",
    "codx-pg": "bench.systems.codx:CodxPostgres",
    "zodb-file": "bench.systems.zodb_raw:ZodbFile",
    "zodb-pg": "bench.systems.zodb_raw:ZodbPostgres",
    "sqlalchemy": "bench.systems.sqlalchemy_orm:SqlAlchemyOrm",
    "psycopg2": "bench.systems.psycopg2_raw:Psycopg2Raw",
    "tinydb": "bench.systems.tinydb_json:TinyDbJson",
}
STORAGE = {
    "codx-file": "file",
    "codx-pg": "postgres",
    "zodb-file": "file",
    "zodb-pg": "postgres",
    "sqlalchemy": "postgres",
    "psycopg2": "postgres",
    "tinydb": "file",
}
# The codx-db system each other system is compared with (same storage).
BASELINE = {name: ("codx-file" if storage == "file" else "codx-pg") for name, storage in STORAGE.items()}


def system_class(name: str) -> type[System]:
    """The class of the system called ``name``."""
    module, _, cls = SYSTEMS[name].partition(":")
    found: type[System] = getattr(importlib.import_module(module), cls)
    return found


__all__ = ["BASELINE", "STORAGE", "SYSTEMS", "System", "system_class"]
