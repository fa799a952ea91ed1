"""Mixed load on codx-db from several processes, then a consistency check and a report.

    CODX_JUNIOR_DB_BACKEND=postgres CODX_JUNIOR_DB_DSN='host=... dbname=...' \\
        python scripts/load.py --processes 4 --seconds 30

Each process runs random UserDB calls (create, get, update, rename, delete, list, count,
set_password, authenticate) over a small pool of usernames, so processes collide on the
same users all the time. Outcomes the API documents (UserAlreadyExists, UserNotFound) are
counted as such. Conflicts that codx-db retried are counted from its debug log; a conflict
still there after the configured retries (``db_conflict_retries``) reaches the caller as a
ZODB TransientError, which the caller may retry: those are counted apart ("gave up"). Anything
else is an error. At the end ``codx-db check`` runs on the database.

Exit code 0 when there was no error and the check is clean, else 1. The settings come from
the environment (``CODX_JUNIOR_*``), as for the application; the DSN is never printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import sys
import time
from collections import Counter
from multiprocessing import get_context
from pathlib import Path
from queue import Empty
from typing import Any

# Run from a checkout without installing: the repository root wins over any installed codx-db.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transaction.interfaces import TransientError

from db.errors import UserAlreadyExists, UserNotFound

PASSWORD = "load-test-password"
# Relative weights of the operations. Password hashing costs ~20 ms of CPU (argon2id at the
# OWASP minimum), so those two stay rare or they would dominate a 2-core machine.
WEIGHTS = {
    "create": 20,
    "get": 22,
    "update": 15,
    "rename": 7,
    "delete": 8,
    "list": 10,
    "count": 8,
    "set_password": 3,
    "authenticate": 7,
}


class _RetryCounter(logging.Handler):
    """Counts the "retrying unit of work" debug records of ``db.database``."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.retries: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("retrying unit of work"):
            self.retries[str(record.args[0]) if record.args else "?"] += 1  # type: ignore[index]


def worker(
    index: int,
    start: Any,
    results: Any,
    seconds: float,
    pool: int,
    prefix: str,
    seed: int,
    weights: dict[str, int],
) -> None:
    """One load process: open the database, wait at the start barrier, run, put the result."""
    from db import db
    from db.user_db import UserDB

    counter = _RetryCounter()
    log = logging.getLogger("db.database")
    log.addHandler(counter)
    log.setLevel(logging.DEBUG)
    log.propagate = False

    rng = random.Random(seed * 1000 + index)
    users = UserDB(db)
    db.open()  # before the start signal: opening is not part of the measured load
    ops: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    gave_up: Counter[str] = Counter()
    latencies: list[float] = []
    kinds, chances = zip(*weights.items(), strict=True)

    def name() -> str:
        return f"{prefix}{rng.randrange(pool)}"

    start.wait(timeout=120)
    deadline = time.time() + seconds
    while time.time() < deadline:
        kind = rng.choices(kinds, chances)[0]
        began = time.perf_counter()
        try:
            _run_one(kind, users, rng, name)
            outcomes[f"{kind}:ok"] += 1
        except UserAlreadyExists:
            outcomes[f"{kind}:exists"] += 1
        except UserNotFound:
            outcomes[f"{kind}:not-found"] += 1
        except TransientError as exc:
            gave_up[f"{kind}: {type(exc).__name__}"] += 1
        except Exception as exc:  # noqa: BLE001 - every other outcome is what the report is for
            errors[f"{kind}: {type(exc).__name__}: {str(exc)[:200]}"] += 1
        latencies.append(time.perf_counter() - began)
        ops[kind] += 1
    db.close()
    results.put(
        {
            "ops": dict(ops),
            "outcomes": dict(outcomes),
            "errors": dict(errors),
            "gave_up": dict(gave_up),
            "retries": dict(counter.retries),
            "latencies": latencies,
        }
    )


def _run_one(kind: str, users: Any, rng: random.Random, name: Any) -> None:
    if kind == "create":
        username = name()
        email = f"{username}@example.com" if rng.random() < 0.5 else None
        users.create(username=username, email=email, full_name=f"Load {username}")
    elif kind == "get":
        users.get(name())
    elif kind == "update":
        change = rng.choice(("full_name", "email", "is_active"))
        if change == "full_name":
            users.update(name(), full_name=f"Name {rng.randrange(10**6)}")
        elif change == "email":
            # A small pool of addresses: two users asking for the same one is a documented clash.
            users.update(name(), email=f"shared{rng.randrange(20)}@example.com")
        else:
            users.update(name(), is_active=rng.random() < 0.8)
    elif kind == "rename":
        users.update(name(), username=name())
    elif kind == "delete":
        users.delete(name())
    elif kind == "list":
        users.list(prefix=name()[:-1], limit=20)
    elif kind == "count":
        users.count()
    elif kind == "set_password":
        users.set_password(name(), PASSWORD)
    elif kind == "authenticate":
        users.authenticate(name(), PASSWORD)
    else:  # pragma: no cover - WEIGHTS and this function are edited together
        raise AssertionError(kind)


def run(
    processes: int, seconds: float, pool: int, prefix: str, seed: int, weights: dict[str, int] | None = None
) -> dict[str, Any]:
    """Run the load and the final check; return the report."""
    from db.check import check
    from db.database import Database
    from db.settings import CodxJuniorGlobalSettings

    settings = CodxJuniorGlobalSettings.load()
    if settings.kind == "file" and processes > 1:
        raise SystemExit(
            "load.py: a FileStorage file serves one process; use --processes 1, or the postgres "
            "backend (CODX_JUNIOR_DB_BACKEND=postgres, CODX_JUNIOR_DB_DSN=...)"
        )
    # Install the database once here, so the workers do not all queue on the startup lock.
    database = Database(settings)
    database.open()
    database.close()

    # Spawned, not forked: nothing of this process's ZODB or sockets must leak into a worker.
    ctx = get_context("spawn")
    start = ctx.Barrier(processes)  # every worker has imported and opened before any begins
    queue = ctx.Queue()
    workers = [
        ctx.Process(target=worker, args=(i, start, queue, seconds, pool, prefix, seed, weights or WEIGHTS))
        for i in range(processes)
    ]
    for process in workers:
        process.start()
    results = []
    for _ in workers:
        try:
            results.append(queue.get(timeout=seconds + 120))
        except Empty:
            break
    for process in workers:
        process.join(30)
    died = [p.exitcode for p in workers if p.exitcode != 0]
    if died or len(results) != processes:
        raise SystemExit(f"load.py: {len(died)} load process(es) failed (exit codes {died})")

    database = Database(settings)
    try:
        report = check(database)
        final_users = report.users
    finally:
        database.close()

    ops: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    gave_up: Counter[str] = Counter()
    retries: Counter[str] = Counter()
    latencies: list[float] = []
    for result in results:
        ops.update(result["ops"])
        outcomes.update(result["outcomes"])
        errors.update(result["errors"])
        gave_up.update(result["gave_up"])
        retries.update(result["retries"])
        latencies.extend(result["latencies"])
    total = sum(ops.values())
    return {
        "backend": settings.kind,
        "processes": processes,
        "seconds": seconds,
        "user_pool": pool,
        "seed": seed,
        "operations": total,
        "operations_per_second": round(total / seconds, 1) if seconds else None,
        "by_operation": dict(sorted(ops.items())),
        "outcomes": dict(sorted(outcomes.items())),
        "conflicts_retried": sum(retries.values()),
        "conflicts_by_type": dict(retries),
        "gave_up_after_retries": sum(gave_up.values()),
        "gave_up_by_operation": dict(gave_up),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors.most_common(10)),
        "latency_ms": _latency(latencies),
        "users_at_end": final_users,
        "check_ok": report.ok,
        "check_problems": [f"{p.code}: {p.message}" for p in report.problems],
    }


def _latency(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    ordered = sorted(samples)
    return {
        "p50": round(statistics.median(ordered) * 1000, 2),
        "p95": round(ordered[int(len(ordered) * 0.95) - 1 if len(ordered) > 1 else 0] * 1000, 2),
        "max": round(ordered[-1] * 1000, 2),
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print the report; exit 1 on errors or check problems."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4, help="load processes (default 4)")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of the load (default 10)")
    parser.add_argument("--users", type=int, default=50, help="size of the username pool (default 50)")
    parser.add_argument("--prefix", default="load-", help="username prefix (default load-)")
    parser.add_argument("--seed", type=int, default=int(os.environ.get("LOAD_SEED", "1")), help="random seed")
    parser.add_argument(
        "--mix",
        metavar="OP=W,...",
        help=f"operation weights, e.g. create=5,delete=2 (operations: {', '.join(WEIGHTS)}; default: a mix)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.processes < 1 or args.seconds <= 0 or args.users < 1:
        parser.error("--processes, --seconds and --users must be positive")
    weights = _parse_mix(parser, args.mix) if args.mix else None

    # RelStorage warns about every reconnect attempt; the report says what matters.
    logging.basicConfig(level=logging.ERROR)
    report = run(args.processes, args.seconds, args.users, args.prefix, args.seed, weights)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report)
    return 0 if report["errors"] == 0 and report["check_ok"] else 1


def _parse_mix(parser: argparse.ArgumentParser, mix: str) -> dict[str, int]:
    weights: dict[str, int] = {}
    for item in mix.split(","):
        op, _, weight = item.partition("=")
        if op.strip() not in WEIGHTS or not weight.strip().isdigit():
            parser.error(f"--mix: {item!r} is not OP=WEIGHT with OP one of {', '.join(WEIGHTS)}")
        weights[op.strip()] = int(weight)
    if not any(weights.values()):
        parser.error("--mix: at least one weight must be above 0")
    return weights


def _print(report: dict[str, Any]) -> None:
    print(
        f"load: {report['processes']} processes x {report['seconds']:g} s on {report['backend']}, "
        f"{report['user_pool']} usernames (seed {report['seed']})"
    )
    print(f"operations:        {report['operations']} ({report['operations_per_second']}/s)")
    print("  " + ", ".join(f"{k} {v}" for k, v in report["by_operation"].items()))
    expected = {k: v for k, v in report["outcomes"].items() if not k.endswith(":ok")}
    print("expected refusals: " + (", ".join(f"{k} {v}" for k, v in expected.items()) or "none"))
    print(f"conflicts retried: {report['conflicts_retried']} {report['conflicts_by_type'] or ''}".rstrip())
    print(
        f"gave up (conflict after all retries): {report['gave_up_after_retries']} "
        f"{report['gave_up_by_operation'] or ''}".rstrip()
    )
    print(f"errors:            {report['errors']}")
    for message, count in report["error_kinds"].items():
        print(f"  {count} x {message}")
    lat = report["latency_ms"]
    if lat:
        print(f"latency ms:        p50 {lat['p50']}  p95 {lat['p95']}  max {lat['max']}")
    print(f"users at end:      {report['users_at_end']}")
    print("check:             " + ("clean" if report["check_ok"] else "PROBLEMS"))
    for line in report["check_problems"]:
        print(f"  {line}")


if __name__ == "__main__":
    sys.exit(main())
