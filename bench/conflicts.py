"""Where concurrent creates meet: N processes creating at once, retries by index, CPU per create.

    python -m bench.conflicts [--processes 1,4] [--seconds 6] [--rounds 2] [--population 3000] [--separate]

Each run starts from a fresh copy of one seeded database (``--population`` users with the
benchmark's scattered names, bench/workload.py): N spawned processes open codx-db, create one
user each to warm up, then create distinct users together for ``--seconds``. Per run: creates/s,
client CPU per create (each process's own clock) and server CPU per create (its PostgreSQL
backends, from ``/proc``: a local server only), how many of the 2 cores were busy
(``/proc/stat``), and retries per 1,000 creates by what they conflicted on: db/database.py logs
the oid a ZODB conflict names, and after the run the indexes are walked to name it (``users
node``: an internal node of the users index, ``by_email bucket``...). RelStorage's lock errors
name no object: ``(no oid)``. Runs go N by N, odd rounds in reverse order.

``--separate`` gives each process its own copy: nothing shared, so no conflicts and no reloads
of objects another process changed. Its N-process figures are what this machine allows N
processes at all, the ceiling for any index layout.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import time
from collections import Counter
from typing import Any

from bench import pg
from bench.procs import SPAWN, in_child
from bench.workload import user, users

STRIDE = 10_000_000  # index range of one writer's users (bench.workload.user)


class _Retries(logging.Handler):
    """The retry records of ``Database.run``: (error class, oid or None)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[tuple[str, str | None]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("retrying unit of work after ") and record.args:
            args = tuple(record.args)
            where = str(args[2]) if len(args) > 2 else ""
            self.seen.append((str(args[0]), where.removeprefix(" on oid ") or None))


def _open(dsn: str) -> Any:
    from db.database import Database
    from db.settings import CodxJuniorGlobalSettings

    return Database(CodxJuniorGlobalSettings.load(_env_file=None, db_backend="postgres", db_dsn=dsn))


def _writer(dsn: str, base: int, seconds: float, ready: Any, go: Any, finish: Any, results: Any) -> None:
    from db.user_db import UserDB

    retries = _Retries()
    logger = logging.getLogger("db.database")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(retries)
    database = _open(dsn)
    try:
        created = UserDB(database)
        created.create(username=user(base).username)  # opens the sessions and warms the caches
        ready.put(os.getpid())
        go.wait()
        done, clock, start = 0, time.process_time(), time.perf_counter()
        while time.perf_counter() - start < seconds:
            done += 1
            record = user(base + done)
            created.create(username=record.username, email=record.email, full_name=record.full_name)
        elapsed, client = time.perf_counter() - start, time.process_time() - clock
        results.put({"done": done, "elapsed": elapsed, "client": client, "retries": retries.seen})
        finish.wait()
    finally:
        database.close()


def _seed(dsn: str, population: int) -> None:
    from db.user_db import UserDB

    database = _open(dsn)
    try:
        records = ({"username": r.username, "email": r.email, "full_name": r.full_name} for r in users(0, population))
        UserDB(database).import_users(records, batch_size=1000)
    finally:
        database.close()


def _label_oids(dsn: str) -> dict[str, str]:
    """oid (as the retry log shows it) -> "index part" for every node and bucket of the user indexes."""
    from ZODB.utils import oid_repr

    from db.users.models import USERS_KEY
    from db.users.partitioned import PartitionedTree

    labels: dict[str, str] = {}

    def walk(tree: Any, name: str) -> None:
        stack = [tree]
        while stack:
            node = stack.pop()
            labels[oid_repr(node._p_oid)] = f"{name} node"
            state = node.__getstate__()
            if not state or (len(state[0]) == 1 and type(state[0][0]) is tuple):
                continue  # empty, or its one bucket inline
            for child in state[0][0::2]:
                if type(child) is type(node):
                    stack.append(child)
                else:
                    labels[oid_repr(child._p_oid)] = f"{name} bucket"

    database = _open(dsn)
    try:
        with database.transaction() as uow:
            container = uow.root[USERS_KEY]
            for name in (
                "users",
                "by_username",
                "by_email",
                "by_skeleton",
                "by_github",
                "by_project",
                "inactive",
                "admins",
            ):
                index = getattr(container, name, None)
                if isinstance(index, PartitionedTree):
                    labels[oid_repr(index._p_oid)] = f"{name} (partitioned)"
                    walk(index.parts, f"{name} parts")
                    for part in index.parts.values():
                        walk(part, name)
                elif index is not None:
                    walk(index, name)
            for shard in container.counts or ():
                labels[oid_repr(shard._p_oid)] = "count"
            labels[oid_repr(container._p_oid)] = "container"
    finally:
        database.close()
    return labels


def _cpu_stat() -> list[int]:
    with open("/proc/stat", encoding="ascii") as stat:
        return [int(field) for field in stat.readline().split()[1:]]


def run(dsns: list[str], processes: int, seconds: float, first_base: int) -> dict[str, Any]:
    """``processes`` writers at once (writer i on ``dsns[i % len(dsns)]``); one result row."""
    ready, results = SPAWN.Queue(), SPAWN.Queue()
    go, finish = SPAWN.Event(), SPAWN.Event()
    bases = [first_base + i * STRIDE for i in range(processes)]
    workers = [
        SPAWN.Process(target=_writer, args=(dsns[i % len(dsns)], base, seconds, ready, go, finish, results))
        for i, base in enumerate(bases)
    ]
    for worker in workers:
        worker.start()
    try:
        for _ in workers:
            ready.get(timeout=180)
        backends = [pid for dsn in dict.fromkeys(dsns) for pid in pg.backend_pids(dsn)]
        server_before, stat_before = pg.backend_cpu(backends), _cpu_stat()
        go.set()
        found = [results.get(timeout=seconds + 180) for _ in workers]
        server_after, stat_after = pg.backend_cpu(backends), _cpu_stat()
        finish.set()
        for worker in workers:
            worker.join(timeout=60)
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
    done = sum(f["done"] for f in found)
    elapsed = max(f["elapsed"] for f in found)
    ticks = [after - before for before, after in zip(stat_before, stat_after, strict=True)]
    busy = (os.cpu_count() or 1) * (1 - (ticks[3] + ticks[4]) / max(1, sum(ticks)))  # idle + iowait
    server = None if server_before is None or server_after is None else server_after - server_before
    labels = in_child(_label_oids, dsns[0]) if len(dsns) == 1 else {}
    where: Counter[str] = Counter()
    for f in found:
        for _error, oid in f["retries"]:
            where["(no oid)" if oid is None else labels.get(oid, "other object")] += 1
    return {
        "processes": processes,
        "rate": done / elapsed,
        "client_ms": 1e3 * sum(f["client"] for f in found) / done,
        "server_ms": None if server is None else 1e3 * server / done,
        "busy": busy,
        "retries_per_1k": 1e3 * sum(where.values()) / done,
        "where": {name: 1e3 * count / done for name, count in where.most_common()},
    }


def measure(
    admin_dsn: str, counts: list[int], seconds: float, rounds: int, population: int, separate: bool
) -> list[dict[str, Any]]:
    """One row per run: every N of ``counts`` in each round, on a fresh copy of one seeded database."""
    rows = []
    with pg.fresh_database(admin_dsn, "conflicts_seed") as seed:
        in_child(_seed, seed, population)
        for r in range(rounds):
            for n, processes in enumerate(counts if r % 2 == 0 else counts[::-1]):
                with contextlib.ExitStack() as stack:
                    copies = processes if separate else 1
                    dsns = [
                        stack.enter_context(pg.fresh_database(admin_dsn, "conflicts", template=seed))
                        for _ in range(copies)
                    ]
                    first_base = STRIDE * (1 + 64 * (r * len(counts) + n))
                    rows.append({"round": r + 1, **run(dsns, processes, seconds, first_base)})
    return rows


def _cell(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.conflicts", description=__doc__.splitlines()[0])
    parser.add_argument("--processes", default="1,4", help="process counts to compare")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--population", type=int, default=3000)
    parser.add_argument("--separate", action="store_true", help="each process on its own copy (the ceiling)")
    parser.add_argument("--pg-dsn", default=os.environ.get("CODX_BENCH_PG_DSN", pg.DEFAULT_ADMIN_DSN))
    args = parser.parse_args(argv)
    problem = pg.check_server(args.pg_dsn)
    if problem:
        print(problem)
        return 1
    counts = [int(value) for value in args.processes.split(",")]
    shared = "each process on its own copy" if args.separate else "one database"
    print(f"conflicts: {args.population:,} users, {args.seconds:g} s per run, {args.rounds} rounds, {shared}")
    print("| round | processes | creates/s | client CPU ms/create | server CPU ms/create | cores busy "
          "| retries /1k creates | on (per 1k creates) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for row in measure(args.pg_dsn, counts, args.seconds, args.rounds, args.population, args.separate):
        where = ", ".join(f"{name} {value:.1f}" for name, value in row["where"].items()) or "-"
        print(
            f"| {row['round']} | {row['processes']} | {row['rate']:.0f} | {row['client_ms']:.2f} "
            f"| {_cell(row['server_ms'], '.2f')} | {row['busy']:.2f} | {row['retries_per_1k']:.1f} | {where} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
