"""The matrix's store side: seeding a system's database, counting it, checking it after a round.

``seed``, ``count`` and ``check`` run in a fresh child process (``bench.procs.in_child``), as a
reader the writers never saw; ``check_round`` starts one and ``merge_checks`` sums up a cell.
"""

from __future__ import annotations

from typing import Any

from bench.procs import in_child
from bench.runner import import_users
from bench.systems import system_class
from bench.workload import user


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


def check_round(name: str, dsn: str, opts: dict[str, Any], found: list[dict[str, Any]], seeded: int) -> dict[str, Any]:
    """In a fresh process, what one round's writers were told against its database (a copy of the seed)."""
    acknowledged: list[str] = []
    failed: list[str] = []
    for f in found:
        for base, attempted, failed_indexes in f["writers"]:
            gone = set(failed_indexes)
            acknowledged += [user(i).username for i in range(base, base + attempted) if i not in gone]
            failed += [user(i).username for i in failed_indexes]
    result = in_child(check, name, dsn, opts, acknowledged, failed)
    result["acknowledged"] = len(acknowledged)
    result["expected"] = seeded + len(acknowledged) + result["failed_present"]
    result["ok"] = (
        result["missing"] == 0 and result["count"] == result["expected"] and result["consistency_ok"] is not False
    )
    return result


def merge_checks(checks: list[dict[str, Any]]) -> dict[str, Any]:
    """Every round's check as one: ok if each is; the figures of one round (the first failing one,
    else the last), so count, expected and missing agree; totals over the rounds beside them."""
    shown = next((c for c in checks if not c["ok"]), checks[-1])
    return {
        **shown,
        "ok": all(c["ok"] for c in checks),
        "missing_all_rounds": sum(c["missing"] for c in checks),
        "failed_present_all_rounds": sum(c["failed_present"] for c in checks),
        "rounds": len(checks),
    }
