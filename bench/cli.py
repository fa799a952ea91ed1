"""``python -m bench``: the same user workload on every system, one table, the targets checked."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import pg
from bench.procs import in_child
from bench.report import render
from bench.runner import RunConfig, run_system
from bench.systems import STORAGE, SYSTEMS
from bench.targets import evaluate

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY_SYSTEMS = ("codx-pg", "psycopg2")
QUICK: dict[str, Any] = {"users": 2_000, "bulk": 5_000, "seconds": 0.5, "max_ops": 1_000, "concurrency_seconds": 1.0}
DEFAULTS: dict[str, Any] = {
    "users": 10_000,
    "bulk": 20_000,
    "seconds": 1.5,
    "max_ops": 5_000,
    "concurrency_seconds": 3.0,
}
# The concurrency matrix (bench/matrix.py): the whole grid with --matrix-only, a short one in a
# default run, a tiny one with --quick. Any --matrix-* option overrides its entry.
MATRIX_FULL: dict[str, Any] = {"processes": [1, 2, 4, 8], "threads": [1, 8, 16], "seconds": 3.0, "rounds": 2}
MATRIX_SHORT: dict[str, Any] = {"processes": [1, 2, 4], "threads": [1, 8], "seconds": 1.5, "rounds": 2}
MATRIX_QUICK: dict[str, Any] = {"processes": [1, 2], "threads": [1, 4], "seconds": 0.5, "rounds": 1, "users": 500}


def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(part.replace("_", "")) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of sizes: {text!r} (e.g. 1000,100000,1000000)") from None
    if not sizes or sizes[0] < 100:
        raise argparse.ArgumentTypeError(f"sizes must be >= 100: {text!r}")
    return sizes


def _systems(text: str) -> list[str]:
    if text in ("", "none"):
        return []
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SYSTEMS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown system(s) {unknown}; choose from {', '.join(SYSTEMS)}")
    return names


def _counts(text: str) -> list[int]:
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of counts: {text!r} (e.g. 1,2,4)") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"counts must be >= 1: {text!r}")
    return values


def _matrix_systems(text: str) -> list[str]:
    from bench.matrix import SYSTEMS as MATRIX_SYSTEMS

    names = _systems(text)
    unknown = [name for name in names if name not in MATRIX_SYSTEMS]
    if unknown:
        raise argparse.ArgumentTypeError(f"not a matrix system: {unknown}; choose from {', '.join(MATRIX_SYSTEMS)}")
    return names


def _setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.startswith("db_"):
        raise argparse.ArgumentTypeError(f"expected db_NAME=VALUE (a CodxJuniorGlobalSettings field), got {text!r}")
    return key, value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark codx-db against raw ZODB, SQLAlchemy, psycopg2 and TinyDB on one workload.",
    )
    p.add_argument("--quick", action="store_true", help="small sizes and short budgets (under a minute)")
    p.add_argument("--systems", type=_systems, default=list(SYSTEMS), help=f"comma list of {', '.join(SYSTEMS)}")
    p.add_argument("--users", type=int, help="population for the per-operation figures (default 10000)")
    p.add_argument("--bulk", type=int, help="users imported by the bulk measurement (default 20000)")
    p.add_argument("--batch", type=int, default=10_000, help="users per bulk transaction (default 10000)")
    p.add_argument("--seconds", type=float, help="time budget per operation and system (default 1.5)")
    p.add_argument("--max-ops", type=int, help="at most this many of each operation (default 5000)")
    p.add_argument("--seed", type=int, default=6, help="random seed of the key choices")
    p.add_argument(
        "--concurrency-seconds", type=float, help="duration of each concurrent-create measurement (default 3)"
    )
    p.add_argument("--no-concurrency", action="store_true", help="skip the two-process create measurement")
    m = p.add_argument_group("concurrency matrix (bench/matrix.py)")
    m.add_argument(
        "--matrix",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the concurrency matrix (default: yes, a short one; --quick: a tiny one)",
    )
    m.add_argument("--matrix-only", action="store_true", help="run only the matrix (the whole grid by default)")
    m.add_argument("--matrix-processes", type=_counts, help="processes per cell, e.g. 1,2,4,8")
    m.add_argument("--matrix-threads", type=_counts, help="threads per process, e.g. 1,8,16")
    m.add_argument(
        "--matrix-systems",
        type=_matrix_systems,
        default=["codx-pg", "zodb-pg", "sqlalchemy"],
        help="systems of the matrix (default codx-pg,zodb-pg,sqlalchemy; without --matrix-only, only those"
        " also in --systems)",
    )
    m.add_argument("--matrix-seconds", type=float, help="seconds per round (full 3, default run 1.5, quick 0.5)")
    m.add_argument("--matrix-rounds", type=int, help="rounds per cell, the best counts (2; quick 1)")
    m.add_argument("--matrix-users", type=int, help="users seeded in each system's database (3000; quick 500)")
    m.add_argument("--matrix-max-writers", type=int, default=32, help="skip cells with more writers (32)")
    p.add_argument("--scaling", type=_sizes, help="also run the scaling mode at these sizes, e.g. 1000,100000,1000000")
    p.add_argument("--scaling-only", action="store_true", help="run only the scaling mode")
    # Before notes were capped (12724cf), codx-db appended a note per create to the batch's
    # transaction and FileStorage refused it past 64 KiB (~2,000 creates; see bench/README.md).
    # Far above 2,000 users per transaction, a fill into a large PostgreSQL database touches
    # more stored index buckets than PostgreSQL can lock (TransactionTooLarge).
    p.add_argument("--scaling-batch", type=int, default=2_000, help="users per transaction when filling (2000)")
    p.add_argument("--scaling-storages", default="file,postgres", help="file,postgres (default both)")
    p.add_argument(
        "--codx-setting",
        type=_setting,
        action="append",
        default=[],
        metavar="db_NAME=VALUE",
        help="override a codx-db setting, e.g. db_cache_local_mb=256 (repeatable)",
    )
    p.add_argument(
        "--pg-dsn",
        default=os.environ.get("CODX_BENCH_PG_DSN", pg.DEFAULT_ADMIN_DSN),
        help="admin DSN of the PostgreSQL server (env CODX_BENCH_PG_DSN); fresh databases are made there",
    )
    p.add_argument(
        "--pg-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a PostgreSQL setting for every benchmark database, e.g. synchronous_commit=off (repeatable)",
    )
    p.add_argument("--workdir", default=tempfile.gettempdir(), help="where file stores are made (temporary)")
    p.add_argument("--json", metavar="PATH", help="also write the full report as JSON (- for stdout, no table)")
    return p


def _meta(admin_dsn: str, needs_pg: bool) -> dict[str, Any]:
    postgres = "PostgreSQL: not used"
    if needs_pg:
        import psycopg2

        with psycopg2.connect(admin_dsn) as conn, conn.cursor() as cur:
            cur.execute("SHOW server_version")
            version = cur.fetchone()
            cur.execute("SHOW synchronous_commit")
            sync = cur.fetchone()
        postgres = f"PostgreSQL {version[0] if version else '?'} (synchronous_commit={sync[0] if sync else '?'})"
    return {
        "when": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "postgres": postgres,
        "git": _git_state(),
        "argv": sys.argv[1:],
        # Other work on the machine moves every figure: say how busy it was.
        "load_start": os.getloadavg()[0],
    }


def _git_state() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "db", "migrations"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{head} ({'with uncommitted changes in db/ or migrations/' if dirty else 'clean'})"


def _progress(message: str) -> None:
    print(f"... {message}", file=sys.stderr, flush=True)


def _matrix_config(args: argparse.Namespace) -> Any:
    """The matrix to run (a ``bench.matrix.MatrixConfig``), or None."""
    wanted = args.matrix if args.matrix is not None else not args.scaling_only
    if not (wanted or args.matrix_only):
        return None
    from bench.matrix import MatrixConfig

    base = MATRIX_FULL if args.matrix_only else MATRIX_QUICK if args.quick else MATRIX_SHORT
    systems = args.matrix_systems if args.matrix_only else [s for s in args.matrix_systems if s in args.systems]
    return MatrixConfig(
        processes=args.matrix_processes or base["processes"],
        threads=args.matrix_threads or base["threads"],
        systems=systems,
        seconds=args.matrix_seconds or base["seconds"],
        rounds=args.matrix_rounds or base["rounds"],
        users=args.matrix_users or base.get("users", 3_000),
        max_writers=args.matrix_max_writers,
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    sizes = QUICK if args.quick else DEFAULTS
    users = args.users or sizes["users"]
    bulk = args.bulk or sizes["bulk"]
    seconds = args.seconds or sizes["seconds"]
    max_ops = args.max_ops or sizes["max_ops"]
    concurrency_seconds = args.concurrency_seconds or sizes["concurrency_seconds"]
    systems = [] if args.scaling_only or args.matrix_only else args.systems
    matrix = _matrix_config(args)
    options = dict(args.codx_setting)
    storages = [s.strip() for s in args.scaling_storages.split(",") if s.strip()]
    scaling = args.scaling or ([1_000, 100_000, 1_000_000] if args.scaling_only else None)
    if users < 100:
        print("error: --users must be at least 100", file=sys.stderr)
        return 2

    if args.pg_setting:
        os.environ[pg.SETTINGS_ENV] = ";".join(args.pg_setting)
        pg.database_settings()  # fail now on a bad name
    needs_pg = (
        any(STORAGE[s] == "postgres" for s in systems)
        or bool(scaling and "postgres" in storages)
        or bool(matrix and matrix.systems)
    )
    if needs_pg:
        problem = pg.check_server(args.pg_dsn)
        if problem:
            print(f"error: PostgreSQL at {args.pg_dsn!r} does not answer: {problem}", file=sys.stderr)
            print("  start it, or pass --pg-dsn, or choose file systems only with --systems", file=sys.stderr)
            return 2

    report: dict[str, Any] = {
        "meta": _meta(args.pg_dsn, needs_pg),
        "config": {
            "users": users,
            "bulk": bulk,
            "batch": args.batch,
            "seconds": seconds,
            "max_ops": max_ops,
            "seed": args.seed,
            "concurrency_seconds": concurrency_seconds,
            "codx_settings": options,
            "pg_settings": pg.database_settings(),
            "quick": args.quick,
            "matrix": matrix.as_dict() if matrix else None,
        },
        "systems": {},
    }
    for name in systems:
        _progress(f"{name}: bulk {bulk:,}, then {users:,} users and the operations")
        config = RunConfig(name, users, bulk, args.batch, seconds, max_ops, args.seed, args.pg_dsn, args.workdir)
        config.codx_settings = options
        try:
            report["systems"][name] = in_child(run_system, config).as_dict()
        except Exception as exc:  # noqa: BLE001 - one failing system must not hide the others
            report["systems"][name] = {"system": name, "error": f"{type(exc).__name__}: {exc}", "results": {}}

    if "psycopg2" in systems:
        from bench import floor

        _progress("PostgreSQL round-trip floor: 1 vs 3 round trips per get (psycopg2)")
        try:
            report["floor"] = in_child(floor.measure, args.pg_dsn, users, seconds, max_ops, args.seed)
        except Exception as exc:  # noqa: BLE001
            report["floor"] = {"error": f"{type(exc).__name__}: {exc}"}

    if not args.no_concurrency and not args.matrix_only:
        from bench.concurrency import measure

        report["concurrency"] = {}
        for name in [s for s in CONCURRENCY_SYSTEMS if s in systems]:
            _progress(f"{name}: 1 then 2 processes creating for {concurrency_seconds}s each")
            try:
                # On the run's population: with few users both writers hit the same BTree
                # buckets far more often than they would in a real user base.
                found = measure(
                    name, args.pg_dsn, options if name.startswith("codx-") else {}, concurrency_seconds, users
                )
                report["concurrency"][name] = found.as_dict()
            except Exception as exc:  # noqa: BLE001
                report["concurrency"][name] = {"error": f"{type(exc).__name__}: {exc}"}

    if matrix and matrix.systems:
        from bench.matrix import run_matrix

        report["matrix"] = run_matrix(args.pg_dsn, options, matrix, _progress)

    if scaling and not args.matrix_only:
        from bench.scaling import run_scaling

        report["scaling"] = run_scaling(
            scaling,
            storages,
            args.pg_dsn,
            args.workdir,
            options,
            seconds=max(seconds, 0.5),
            max_ops=max_ops,
            batch=args.scaling_batch,
            seed=args.seed,
            progress=_progress,
        )

    report["meta"]["load_end"] = os.getloadavg()[0]
    report["targets"] = [t.as_dict() for t in evaluate(report)]
    if args.json == "-":
        json.dump(report, sys.stdout, indent=2, default=str)
        print()
        return 0
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    print(render(report))
    return 0
