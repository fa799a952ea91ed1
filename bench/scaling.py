"""Scaling: codx-db lookups and a page at growing sizes, on file and on PostgreSQL.

For each storage one store grows through the sizes (populated with the fast path:
``UserDB.import_users`` per batch). At each size a fresh child process opens it (timed),
runs get, get_by_email and a page at a random offset, and reports time per operation and
its peak RSS, so figures of different sizes never share a process.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.procs import in_child, peak_rss_mb, rss_mb
from bench.runner import fresh_location, import_users
from bench.systems import system_class
from bench.workload import PAGE_SIZE, Budget, rng, timed_loop, user

SYSTEM = {"file": "codx-file", "postgres": "codx-pg"}
# Offset pages last: they load every bucket before the offset, which sets the peak RSS.
OPERATIONS = ("get", "get_by_email", "page_after", "page")
# Resident size allowed per cached object (a User or a BTree bucket, unpickled) in the bound.
KIB_PER_CACHED_OBJECT = 2


def fill_options(storage: str, size: int, options: dict[str, Any]) -> dict[str, Any]:
    """Settings for filling only: caches big enough that the fill never reloads a BTree bucket.

    With the default caches (10,000 objects, 64 MB local cache) every create past a few hundred
    thousand users loads the buckets of three random index keys back from the storage, and on
    PostgreSQL each load is an SQL round trip: filling to 1M users would take hours. The
    measurements then reopen the store with the run's own settings.
    """
    big: dict[str, Any] = {"db_cache_size": max(10_000, size * 2)}
    if storage == "postgres":
        big["db_cache_local_mb"] = max(64, size // 1_000)
    return {**options, **big}


def _populate(storage: str, location: str, options: dict[str, Any], start: int, count: int, batch: int) -> float:
    system = system_class(SYSTEM[storage])(location, fill_options(storage, start + count, options))
    system.open()
    try:
        started = time.perf_counter()
        import_users(system, start, count, batch)
        elapsed = time.perf_counter() - started
        if system.count() != start + count:
            raise AssertionError(f"scaling: {system.count()} users, expected {start + count}")
    finally:
        system.close()
    if storage == "postgres":
        _vacuum(location)
    return elapsed


def _vacuum(dsn: str) -> None:
    """VACUUM ANALYZE after a fill: a history-free RelStorage rewrites bucket rows on every
    commit, and a server without autovacuum (like the one these figures came from) would
    otherwise serve lookups through millions of dead row versions."""
    import psycopg2

    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("VACUUM ANALYZE")
    finally:
        conn.close()


def _measure(
    storage: str, location: str, options: dict[str, Any], size: int, seconds: float, max_ops: int, seed: int
) -> dict[str, Any]:
    system = system_class(SYSTEM[storage])(location, options)
    # Imports belong to the baseline, not to "open".
    import db.database
    import db.user_db  # noqa: F401

    base_rss = rss_mb()
    started = time.perf_counter()
    system.open()
    open_seconds = time.perf_counter() - started
    open_rss = rss_mb()
    budget = Budget(seconds, max_ops)
    us_per_op: dict[str, float] = {}
    ops: dict[str, int] = {}
    peak_after: dict[str, float] = {}
    try:
        for op in OPERATIONS:
            result = timed_loop(op, _step(system, op, size, rng(seed, f"scaling-{op}")), budget)
            us_per_op[op] = result.us_per_op
            ops[op] = result.ops
            peak_after[op] = peak_rss_mb()
        settings = system.database.settings  # type: ignore[attr-defined]
    finally:
        system.close()
    bound, note = _rss_bound(storage, settings, base_rss)
    return {
        "users": size,
        "open_seconds": open_seconds,
        "us_per_op": us_per_op,
        "ops": ops,
        "base_rss_mb": base_rss,
        "open_rss_mb": open_rss,
        "peak_rss_mb": peak_rss_mb(),
        # Lookups and keyset pages run first, offset pages last: the peak before the offset
        # pages is what everything else needs.
        "peak_rss_after_mb": peak_after,
        "rss_bound_mb": bound,
        "rss_bound_note": note,
        "store_mb": _store_mb(storage, location),
    }


def _step(system: Any, op: str, size: int, generator: random.Random) -> Callable[[int], int]:
    """One random ``op`` on a store of ``size`` users, returning 1 (ops done)."""
    last_offset = max(size - PAGE_SIZE, 1)

    def step(_: int) -> int:
        if op == "get":
            system.get(user(generator.randrange(size)).username)
        elif op == "get_by_email":
            system.get_by_email(user(generator.randrange(size)).email)
        elif op == "page":
            system.page(generator.randrange(last_offset), PAGE_SIZE)
        else:
            system.page_after(user(generator.randrange(size)).username, PAGE_SIZE)
        return 1

    return step


def _rss_bound(storage: str, settings: Any, base_rss: float) -> tuple[float, str]:
    """Memory the settings allow above the interpreter's own: object cache (+ local cache on PG)."""
    objects_mb = settings.db_cache_size * KIB_PER_CACHED_OBJECT / 1024
    bound = base_rss + objects_mb
    note = (
        f"bound = RSS after imports ({base_rss:.0f} MB) + db_cache_size {settings.db_cache_size:,} objects"
        f" x {KIB_PER_CACHED_OBJECT} KiB ({objects_mb:.0f} MB)"
    )
    if storage == "postgres":
        bound += settings.db_cache_local_mb
        note += f" + db_cache_local_mb {settings.db_cache_local_mb} MB (one connection in use)"
    else:
        note += "; FileStorage also keeps an index of every object in memory, which grows with the users"
    return bound, note


def _store_mb(storage: str, location: str) -> float | None:
    if storage == "postgres":
        import psycopg2

        with psycopg2.connect(location) as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_database_size(current_database())")
            found = cur.fetchone()
        return found[0] / 2**20 if found else None
    path = Path(location)
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file()) / 2**20


def run_scaling(
    sizes: list[int],
    storages: list[str],
    admin_dsn: str,
    workdir: str,
    options: dict[str, Any],
    seconds: float,
    max_ops: int,
    batch: int,
    seed: int,
    progress: Any = None,
) -> dict[str, list[dict[str, Any]]]:
    """Rows per storage, one per size (ascending)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for storage in storages:
        rows: list[dict[str, Any]] = []
        with fresh_location(storage, f"scaling-{storage}", workdir, admin_dsn) as location:
            have = 0
            for size in sorted(sizes):
                try:
                    populate = in_child(_populate, storage, location, options, have, size - have, batch)
                    previous, have = have, size
                    row = in_child(_measure, storage, location, options, size, seconds, max_ops, seed)
                    row["populate_seconds"] = populate
                    row["filled"] = size - previous
                except Exception as exc:  # noqa: BLE001 - report the failure in the table, keep going
                    rows.append({"users": size, "error": f"{type(exc).__name__}: {exc}"})
                    break
                rows.append(row)
                if progress:
                    progress(f"scaling {storage} {size:,} users: open {row['open_seconds']:.2f}s")
        found[storage] = rows
    return found
