"""How often codx-db's store temp tables are truncated: one writer's CPU per create, client and server.

    python -m bench.truncate_sweep [--rows 5000,2000,1000,500] [--seconds 5] [--rounds 3]

codx-db empties its ``ON COMMIT PRESERVE ROWS`` temp tables with ``DELETE`` at the start of
each store transaction and with ``TRUNCATE`` once ``store_temps.TRUNCATE_ROWS`` rows were
copied in since the last one (db/pg/store_temps.py). A ``DELETE`` leaves dead rows behind
(autovacuum never visits temp tables), and every statement that reads ``temp_store`` (the
next ``DELETE``, the lock and move joins) walks them; a ``TRUNCATE`` costs new files. For
each value: a fresh child process creates distinct users for ``seconds`` on one database of
``--population`` users, and the CPU of its PostgreSQL backends (``/proc``, so a local
server only) and of the client is divided by its creates. Rounds go value by value and are
repeated (odd rounds in reverse: each run adds users), so a machine whose speed drifts, or
a database that grows, touches every value alike; the client's CPU per create, which the
setting does not change, shows how much the machine itself moved.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from bench import pg
from bench.procs import SPAWN


def _worker(dsn: str, rows: int, tag: str, seconds: float, results: Any) -> None:
    from db.database import Database
    from db.pg import store_temps
    from db.settings import CodxJuniorGlobalSettings
    from db.user_db import UserDB

    store_temps.TRUNCATE_ROWS = rows
    database = Database(CodxJuniorGlobalSettings.load(_env_file=None, db_backend="postgres", db_dsn=dsn))
    users = UserDB(database)
    try:
        users.create(username=f"{tag}x0")  # opens the load and store sessions before the clock
        pids = pg.backend_pids(dsn)
        server_before, client_before = pg.backend_cpu(pids), time.process_time()
        truncates_before, done, start = store_temps.Counters.truncates, 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            done += 1
            users.create(username=f"{tag}u{done}", email=f"{tag}u{done}@example.com")
        elapsed = time.perf_counter() - start
        client = time.process_time() - client_before
        server_after = pg.backend_cpu(pids)
        server = None if server_before is None or server_after is None else server_after - server_before
        truncates = store_temps.Counters.truncates - truncates_before
        per_create = None if server is None else server / done
        results.put({"rate": done / elapsed, "client": client / done, "server": per_create, "truncates": truncates})
    finally:
        database.close()


def _run(dsn: str, rows: int, tag: str, seconds: float) -> dict[str, Any]:
    results = SPAWN.Queue()
    process = SPAWN.Process(target=_worker, args=(dsn, rows, tag, seconds, results))
    process.start()
    try:
        found: dict[str, Any] = results.get(timeout=seconds + 120)
        process.join(timeout=60)
    finally:
        if process.is_alive():
            process.kill()
    if process.exitcode != 0:
        raise RuntimeError(f"the writer exited with {process.exitcode}")
    return found


def _populate(dsn: str, population: int) -> None:
    from db.database import Database
    from db.settings import CodxJuniorGlobalSettings
    from db.user_db import UserDB

    database = Database(CodxJuniorGlobalSettings.load(_env_file=None, db_backend="postgres", db_dsn=dsn))
    try:
        UserDB(database).import_users(
            ({"username": f"seed{i}", "email": f"seed{i}@example.com"} for i in range(population)), batch_size=1000
        )
    finally:
        database.close()


def sweep(admin_dsn: str, values: list[int], seconds: float, population: int, rounds: int) -> list[dict[str, Any]]:
    """One row per ``TRUNCATE_ROWS`` value: medians over ``rounds`` runs of one writer."""
    runs: dict[int, list[dict[str, Any]]] = {value: [] for value in values}
    with pg.fresh_database(admin_dsn, "truncsweep") as dsn:
        _populate(dsn, population)
        for r in range(rounds):
            # Each run adds users: odd rounds go backwards, so no value always meets the bigger database.
            for value in values if r % 2 == 0 else values[::-1]:
                runs[value].append(_run(dsn, value, f"r{r}t{value}p", seconds))
    rows = []
    for value in values:
        found = runs[value]

        def median(key: str, found: list[dict[str, Any]] = found) -> float | None:
            seen = sorted(f[key] for f in found if f[key] is not None)
            return seen[len(seen) // 2] if seen else None

        rows.append(
            {
                "rows": value,
                "rate": median("rate"),
                "client_ms": 1e3 * (median("client") or 0.0),
                "server_ms": None if median("server") is None else 1e3 * (median("server") or 0.0),
                "truncates": sum(f["truncates"] for f in found),
                "server_per_client": median_ratio(found),
            }
        )
    return rows


def median_ratio(found: list[dict[str, Any]]) -> float | None:
    """Median of server / client CPU per run: the machine's drift cancels out within one run."""
    ratios = sorted(f["server"] / f["client"] for f in found if f["server"] is not None and f["client"])
    return ratios[len(ratios) // 2] if ratios else None


def _cell(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.truncate_sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="5000,2000,1000,500", help="TRUNCATE_ROWS values to compare")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--population", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3, help="runs per value (medians)")
    parser.add_argument("--pg-dsn", default=os.environ.get("CODX_BENCH_PG_DSN", pg.DEFAULT_ADMIN_DSN))
    args = parser.parse_args(argv)
    admin_dsn = args.pg_dsn
    problem = pg.check_server(admin_dsn)
    if problem:
        print(problem)
        return 1
    values = [int(value) for value in args.rows.split(",")]
    print(f"truncate sweep: one writer, {args.seconds:g} s per run, {args.rounds} runs per value, medians")
    print("| TRUNCATE_ROWS | creates/s | client CPU ms/create | server CPU ms/create | server/client | truncations |")
    print("|---|---|---|---|---|---|")
    for row in sweep(admin_dsn, values, args.seconds, args.population, args.rounds):
        print(
            f"| {row['rows']} | {_cell(row['rate'], '.0f')} | {row['client_ms']:.2f} "
            f"| {_cell(row['server_ms'], '.2f')} | {_cell(row['server_per_client'], '.2f')} | {row['truncates']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
