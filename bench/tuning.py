"""``python -m bench.tuning``: what codx-db's cache settings do to gets on PostgreSQL.

One PostgreSQL database with ``--users`` users (random names). For each setting a fresh child
process opens it, times ``--gets`` random gets cold (the first after start), then the same
number again (warm), and reports its peak RSS:

- ``db_cache_local_mb``: RelStorage's process-wide cache of object states (pickles), shared
  by every pooled connection; a miss there is an SQL round trip per object.
- ``db_cache_dir``: RelStorage's persistent cache: written when the database closes, read
  when it opens, so a restarted process starts warm (the "cold" column shows it: the first
  process of that row fills the directory, the figures are from a second one).
- ``db_cache_size``: ZODB's per-connection cache of live objects; a miss there is an
  unpickle (from RelStorage's cache, or a round trip).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import pg
from bench.procs import in_child, peak_rss_mb
from bench.report import table

SETTINGS: list[tuple[str, dict[str, Any]]] = [
    ("defaults (local 64 MB, cache 10,000)", {}),
    ("db_cache_local_mb=16", {"db_cache_local_mb": 16}),
    ("db_cache_local_mb=256", {"db_cache_local_mb": 256}),
    ("db_cache_size=50000", {"db_cache_size": 50_000}),
    ("db_cache_dir (second start)", {"db_cache_dir": None}),  # filled in with a directory
]


def _fill(dsn: str, users: int, seed: int) -> list[str]:
    from db.database import Database
    from db.settings import CodxJuniorGlobalSettings
    from db.user_db import UserDB

    rng = random.Random(seed)
    names = [f"u{rng.getrandbits(64):016x}" for _ in range(users)]
    database = Database(CodxJuniorGlobalSettings.load(_env_file=None, db_backend="postgres", db_dsn=dsn))
    try:
        UserDB(database).import_users(({"username": n, "email": f"{n}@example.com"} for n in names), batch_size=2000)
    finally:
        database.close()
    return names


def _measure(dsn: str, settings: dict[str, Any], names: list[str], gets: int, seed: int) -> dict[str, float]:
    from db.database import Database
    from db.settings import CodxJuniorGlobalSettings
    from db.user_db import UserDB

    database = Database(CodxJuniorGlobalSettings.load(_env_file=None, db_backend="postgres", db_dsn=dsn, **settings))
    try:
        started = time.perf_counter()
        database.open()
        opened = time.perf_counter() - started
        users = UserDB(database)
        rng = random.Random(seed)
        picks = [rng.choice(names) for _ in range(gets)]
        results = {"open_s": opened}
        for label in ("cold", "warm"):
            started = time.perf_counter()
            for name in picks:
                users.get(name)
            results[label] = gets / (time.perf_counter() - started)
        results["peak_rss_mb"] = peak_rss_mb()
        return results
    finally:
        database.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tuning", description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--gets", type=int, default=20_000, help="random gets per pass (cold, then warm)")
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--pg-dsn", default=pg.DEFAULT_ADMIN_DSN)
    args = parser.parse_args(argv)

    rows = []
    with pg.fresh_database(args.pg_dsn, "tuning") as dsn, tempfile.TemporaryDirectory() as workdir:
        names = in_child(_fill, dsn, args.users, args.seed)
        for label, settings in SETTINGS:
            if "db_cache_dir" in settings:
                settings = {"db_cache_dir": Path(workdir) / "rs-cache"}
                in_child(_measure, dsn, settings, names, args.gets, args.seed)  # fills the directory
            found = in_child(_measure, dsn, settings, names, args.gets, args.seed)
            rows.append(
                [
                    label,
                    f"{found['open_s']:.2f}",
                    f"{found['cold']:,.0f}",
                    f"{found['warm']:,.0f}",
                    f"{found['peak_rss_mb']:.0f}",
                ]
            )
            print(f"... {label}: {found['cold']:,.0f} / {found['warm']:,.0f} gets/s", file=sys.stderr, flush=True)
    print(f"\nGets on PostgreSQL, {args.users:,} users, {args.gets:,} random gets per pass (each its own unit of work)")
    print(table(["setting", "open s", "cold gets/s", "warm gets/s", "peak RSS MB"], rows))


if __name__ == "__main__":
    main()
