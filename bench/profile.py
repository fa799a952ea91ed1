"""``python -m bench.profile``: where one operation of one system spends its time.

Prints, for each operation asked: time per operation, the SQL round trips of one call with the
time each took (PostgreSQL systems), and the cProfile functions that cost most. Used to find
overhead in codx-db's own layer (db/database.py, db/user_db.py, db/models.py, db/schemas.py).

    python -m bench.profile --system codx-pg --ops get,create --n 500
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
import time
from collections.abc import Callable

from bench import pg
from bench.runner import fresh_location, import_users
from bench.systems import STORAGE, SYSTEMS, System, system_class
from bench.workload import CREATE_BASE, GET_MANY_BATCH, PAGE_SIZE, rng, user

OPS = ("create", "get", "get_by_email", "get_many", "update", "page", "page_after", "delete", "bulk")


def _op(system: System, op: str, population: int, seed: int, batch: int) -> Callable[[int], None]:
    pick = rng(seed, f"profile-{op}")
    victims = pick.sample(range(population), population)

    def call(i: int) -> None:
        if op == "create":
            system.create(user(CREATE_BASE + i))
        elif op == "get":
            system.get(user(pick.randrange(population)).username)
        elif op == "get_by_email":
            system.get_by_email(user(pick.randrange(population)).email)
        elif op == "get_many":
            system.get_many([user(pick.randrange(population)).username for _ in range(GET_MANY_BATCH)])
        elif op == "update":
            system.update(user(pick.randrange(population)).username, f"Profiled {i}")
        elif op == "page":
            system.page(pick.randrange(population - PAGE_SIZE), PAGE_SIZE)
        elif op == "page_after":
            system.page_after(user(pick.randrange(population)).username, PAGE_SIZE)
        elif op == "delete":
            system.delete(user(victims[i]).username)
        else:
            system.bulk(list(user(CREATE_BASE * 2 + i * batch + j) for j in range(batch)))

    return call


def _sql_trace(call: Callable[[int], None], i: int) -> list[pg.Trip]:
    pg.RoundTrips.log = []
    try:
        call(i)
        return pg.RoundTrips.log
    finally:
        pg.RoundTrips.log = None


def profile(system_name: str, ops: list[str], n: int, population: int, seed: int, batch: int, top: int) -> str:
    """Profile ``ops`` on a fresh, populated store; return the text report."""
    storage = STORAGE[system_name]
    if storage == "postgres":
        pg.install_relstorage_counter()
    out = io.StringIO()
    with fresh_location(storage, f"{system_name}-profile", tempfile.gettempdir(), pg.DEFAULT_ADMIN_DSN) as location:
        system = system_class(system_name)(location, {})
        system.open()
        try:
            import_users(system, 0, population, 1000)
            for op in ops:
                call = _op(system, op, population, seed, batch)
                count = min(n, population // 2) if op == "delete" else n
                for i in range(3):  # warm up (and, for delete, use victims 0..2)
                    call(i)
                if storage == "postgres":
                    trips = _sql_trace(call, 3)
                    print(f"\n== {system_name} {op}: one call, {sum(t.trips for t in trips)} SQL round trips", file=out)
                    for trip in trips:
                        print(f"   {trip.trips} trip(s) {trip.seconds * 1e6:8.0f} us  {trip.what}", file=out)
                profiler = cProfile.Profile()
                started = time.perf_counter()
                profiler.enable()
                for i in range(4, 4 + count):
                    call(i)
                profiler.disable()
                elapsed = time.perf_counter() - started
                print(
                    f"\n== {system_name} {op}: {count} calls, {elapsed / count * 1e6:,.0f} us/call (profiled)", file=out
                )
                stream = io.StringIO()
                stats = pstats.Stats(profiler, stream=stream)
                stats.sort_stats("tottime").print_stats(top)
                print(_trim(stream.getvalue()), file=out)
        finally:
            system.close()
    return out.getvalue()


def _trim(text: str) -> str:
    # Keep the table, drop pstats' preamble, shorten site-packages paths.
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith("ncalls")), 0)
    return "\n".join(_short(line) for line in lines[start:] if line.strip())


def _short(line: str) -> str:
    for marker in ("site-packages/", "/lib/python3.11/"):
        at = line.find(marker)
        if at >= 0:
            path_start = line.rfind(" ", 0, at) + 1
            return line[:path_start] + line[at + len(marker) :]
    return line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    p.add_argument("--system", default="codx-file", choices=list(SYSTEMS))
    p.add_argument("--ops", default="create,get,update,page", help=f"comma list of {', '.join(OPS)}")
    p.add_argument("--n", type=int, default=500, help="calls per operation (bulk: batches)")
    p.add_argument("--users", type=int, default=5_000, help="population")
    p.add_argument("--batch", type=int, default=1_000, help="users per bulk batch")
    p.add_argument("--top", type=int, default=25, help="functions shown per operation")
    p.add_argument("--seed", type=int, default=6)
    args = p.parse_args(argv)
    ops = [op.strip() for op in args.ops.split(",") if op.strip()]
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        p.error(f"unknown operation(s) {unknown}")
    print(profile(args.system, ops, args.n, args.users, args.seed, args.batch, args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
