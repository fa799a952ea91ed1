"""The matrix's store side: seeding a system's database, counting it, checking it after a cell.

Each runs in a fresh child process (``bench.procs.in_child``), as a reader the writers never saw.
"""

from __future__ import annotations

from typing import Any

from bench.runner import import_users
from bench.systems import system_class


def seed(name: str, dsn: str, options: dict[str, Any], users: int) -> int:
    system = system_class(name)(dsn, options)
    system.open()
    try:
        import_users(system, 0, users, 1_000)
        return system.count()
    finally:
        system.close()


def count(name: str, dsn: str, options: dict[str, Any]) -> int:
    system = system_class(name)(dsn, options)
    system.open()
    try:
        return system.count()
    finally:
        system.close()


def check(name: str, dsn: str, options: dict[str, Any], acknowledged: list[str], failed: list[str]) -> dict[str, Any]:
    """In a fresh process: which acknowledged users are missing, the count, the system's own check."""
    system = system_class(name)(dsn, options)
    system.open()
    try:
        present = system.existing(acknowledged)
        missing = [n for n in acknowledged if n.lower() not in present]
        failed_present = len(system.existing(failed)) if failed else 0
        own = system.consistency()
        return {
            "missing": len(missing),
            "missing_first": missing[:5],
            "count": system.count(),
            "failed_present": failed_present,
            "consistency_ok": None if own is None else own[0],
            "consistency": None if own is None else own[1],
        }
    finally:
        system.close()
