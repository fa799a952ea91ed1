"""Bucket size sweep for the generation-6 indexes: creates/s and conflict retries, 1 and 2 processes.

    python -m bench.leaf_sweep [--sizes 30,60,120,250,500] [--seconds 3] [--population 3000]

For each leaf size: a fresh PostgreSQL database (``CODX_BENCH_PG_DSN`` or the local
server) holding ``population`` users, then one process creating distinct users for
``seconds``, then two at once. ``IndexTree``/``IndexSet.max_leaf_size`` is set in every
process before it opens the database (BTrees reads it from the class at each node's first
split). The row "30, one Length" is the generation-5 layout: default buckets and the single
count object every create writes. Retries are the unit-of-work retries db/database.py logs,
by exception class (UnableToLockRowsToReadCurrentError, UnableToLockRowsDeadlockError, ...).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections import Counter
from typing import Any

from bench import pg
from bench.procs import SPAWN


class _Retries(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.by_class: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("retrying unit of work after "):
            self.by_class[message.split()[5]] += 1


def _set_leaf(leaf: int) -> None:
    from db.users.indexes import IndexSet, IndexTree

    IndexTree.max_leaf_size = leaf
    IndexSet.max_leaf_size = leaf


def _open(dsn: str) -> Any:
    from db.database import Database
    from db.settings import CodxJuniorGlobalSettings

    return Database(CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=dsn))


def _populate(dsn: str, leaf: int, population: int, legacy_count: bool) -> None:
    """``population`` users in one transaction per 1,000 (the trees get their internal nodes)."""
    from BTrees.Length import Length

    from db.users.models import USERS_KEY, User

    _set_leaf(leaf)
    database = _open(dsn)
    try:
        for start in range(0, population, 1000):
            with database.transaction() as uow:
                container = uow.root[USERS_KEY]
                for i in range(start, min(start + 1000, population)):
                    container.add(User(id=f"{i:032x}", username=f"seed{i}", email=f"seed{i}@example.com"))
        if legacy_count:
            with database.transaction() as uow:  # back to generation 5's single Length
                container = uow.root[USERS_KEY]
                container.__dict__["length"] = Length(len(container))
                container.counts = None
    finally:
        database.close()


def bytes_per_create(leaf: int, population: int, creates: int = 200) -> float:
    """Bytes a create appends to a FileStorage holding ``population`` users: the pickles written.

    Unlike creates/s this does not depend on the machine's load: it shows what bigger
    buckets cost each commit (the whole bucket is re-pickled on every insert into it).
    """
    import tempfile
    from pathlib import Path

    from db.database import Database
    from db.settings import CodxJuniorGlobalSettings
    from db.user_db import UserDB
    from db.users.models import USERS_KEY, User

    _set_leaf(leaf)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "users.fs"
        database = Database(CodxJuniorGlobalSettings.load(db_backend="file", db_file_path=path))
        try:
            with database.transaction() as uow:
                container = uow.root[USERS_KEY]
                for i in range(population):
                    container.add(User(id=f"{i:032x}", username=f"seed{i}", email=f"seed{i}@example.com"))
            users = UserDB(database)
            before = path.stat().st_size
            for i in range(creates):
                users.create(username=f"new{i}", email=f"new{i}@example.com")
            return (path.stat().st_size - before) / creates
        finally:
            database.close()


def _worker(dsn: str, leaf: int, worker: int, seconds: float, barrier: Any, results: Any) -> None:
    from db.user_db import UserDB

    _set_leaf(leaf)
    retries = _Retries()
    logger = logging.getLogger("db.database")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(retries)
    database = _open(dsn)
    users = UserDB(database)
    prefix = f"w{worker}p{os.getpid()}"
    try:
        users.create(username=f"{prefix}x0")  # warm connections and caches before the clock
        barrier.wait()
        done = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            done += 1
            users.create(username=f"{prefix}u{done}", email=f"{prefix}u{done}@example.com")
        results.put((done, time.perf_counter() - start, dict(retries.by_class)))
    finally:
        database.close()


def _run(dsn: str, leaf: int, processes: int, seconds: float, round_: int) -> tuple[float, int, Counter[str]]:
    """Creates/s summed over ``processes``, creates done, and the retries by exception class."""
    barrier, results = SPAWN.Barrier(processes), SPAWN.Queue()
    workers = [
        SPAWN.Process(target=_worker, args=(dsn, leaf, round_ * 10 + w, seconds, barrier, results))
        for w in range(processes)
    ]
    for process in workers:
        process.start()
    found = [results.get(timeout=seconds + 120) for _ in workers]
    for process in workers:
        process.join(timeout=60)
        if process.exitcode != 0:
            raise RuntimeError(f"a worker exited with {process.exitcode}")
    retries: Counter[str] = Counter()
    for _, _, by_class in found:
        retries.update(by_class)
    return sum(done / elapsed for done, elapsed, _ in found), sum(done for done, _, _ in found), retries


def sweep(admin_dsn: str, sizes: list[int], seconds: float, population: int, rounds: int = 1) -> list[dict[str, Any]]:
    """One row per layout: 1- and 2-process creates/s (best of ``rounds``); retries over every 2-process round."""
    rows: list[dict[str, Any]] = []
    layouts = [(30, True), *((size, False) for size in sizes)]
    for leaf, legacy in layouts:
        label = f"{leaf}, one Length" if legacy else f"{leaf}, 16 shards"
        with pg.fresh_database(admin_dsn, f"leaf{leaf}") as dsn:
            _populate(dsn, leaf, population, legacy)
            # Best of ``rounds``: the machine is shared, a slow round is someone else's load.
            one = max(_run(dsn, leaf, 1, seconds, 2 * r)[0] for r in range(rounds))
            runs = [_run(dsn, leaf, 2, seconds, 2 * r + 1) for r in range(rounds)]
        two = max(rate for rate, _, _ in runs)
        creates = sum(done for _, done, _ in runs)
        retries: Counter[str] = Counter()
        for _, _, by_class in runs:
            retries.update(by_class)  # every 2-process round: per 1,000 creates, less load-dependent than creates/s
        written = bytes_per_create(leaf, population)
        rows.append({"layout": label, "one": one, "two": two, "creates": creates, "retries": retries, "bytes": written})
        print(_line(rows[-1]), flush=True)
    return rows


def _line(row: dict[str, Any]) -> str:
    retries: Counter[str] = row["retries"]
    named = ", ".join(f"{name} {count}" for name, count in retries.most_common()) or "-"
    ratio = row["two"] / row["one"] if row["one"] else 0.0
    per_1000 = 1000 * sum(retries.values()) / max(row["creates"], 1)
    return (
        f"| {row['layout']} | {row['one']:.0f} | {row['two']:.0f} | {ratio:.2f} | {row['creates']} "
        f"| {per_1000:.0f} ({named}) | {row['bytes']:.0f} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.leaf_sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="30,60,120,250,500")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--population", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=1, help="best of this many runs per cell")
    args = parser.parse_args(argv)
    admin_dsn = os.environ.get("CODX_BENCH_PG_DSN", pg.DEFAULT_ADMIN_DSN)
    problem = pg.check_server(admin_dsn)
    if problem:
        print(problem)
        return 1
    print(f"leaf sweep: {args.seconds:g} s per run, best of {args.rounds}, {args.population} users first, PostgreSQL")
    print(
        "| layout | 1 process creates/s | 2 processes creates/s | 2p/1p | 2p creates "
        "| 2p retries per 1,000 creates | bytes per create (FileStorage) |"
    )
    print("|---|---|---|---|---|---|---|")
    sweep(admin_dsn, [int(size) for size in args.sizes.split(",")], args.seconds, args.population, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
