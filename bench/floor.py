"""The round-trip floor of a consistent read on PostgreSQL, measured with psycopg2 alone.

RelStorage starts every unit of work with ``BEGIN`` and a poll query on a REPEATABLE READ,
read-only connection and ends it with ``ROLLBACK``: three round trips, as psycopg2 drives them,
even when the object is already in its cache. codx-db sends the ``BEGIN`` in the poll's message
and does not wait for the ``ROLLBACK``'s reply (db/pg/roundtrips.py): one round trip waited for.
Doing each around a plain ``SELECT`` shows what a ZODB-on-RelStorage get can reach at best,
next to the one-statement get.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg2

from bench import pg
from bench.runner import import_users
from bench.systems.psycopg2_raw import SELECT, Psycopg2Raw
from bench.workload import Budget, rng, timed_loop, user
from db.pg import roundtrips as pg_roundtrips

# The statement the psycopg2 system's get sends.
_SELECT = SELECT + " WHERE lower(username) = %s"


def measure(admin_dsn: str, users: int, seconds: float, max_ops: int, seed: int) -> dict[str, Any]:
    """Gets per second: one autocommit statement, and BEGIN + statement + ROLLBACK."""
    with pg.fresh_database(admin_dsn, "floor") as dsn:
        system = Psycopg2Raw(dsn)
        system.open()
        try:
            import_users(system, 0, users, 1000)
        finally:
            system.close()
        one = pg.connect(dsn, autocommit=True)
        three = pg.connect(dsn)
        three.set_session(isolation_level="REPEATABLE READ", readonly=True)
        # codx-db's way: the connection class db/pg/roundtrips.py gives RelStorage's load connections.
        piped = psycopg2.connect(dsn, connection_factory=pg_roundtrips.connection_class(pg.CountingConnection))
        piped.codx_take_over()
        budget = Budget(seconds, max_ops)
        try:
            pick = rng(seed, "floor")

            def getter(conn: Any, end: bool) -> Callable[[int], int]:
                """One get on ``conn``; ``end``: then end its transaction (as RelStorage does)."""

                def get(_: int) -> int:
                    with conn.cursor() as cur:
                        cur.execute(_SELECT, (user(pick.randrange(users)).username,))
                        cur.fetchone()
                    if end:
                        conn.rollback()
                    return 1

                return get

            get_one, get_three, get_piped = getter(one, False), getter(three, True), getter(piped, True)

            started = time.perf_counter()
            results: dict[str, Any] = {
                "one_roundtrip": timed_loop("get", get_one, budget, pg.roundtrips).as_dict(),
                "three_roundtrips": timed_loop("get", get_three, budget, pg.roundtrips).as_dict(),
                "pipelined": timed_loop("get", get_piped, budget, pg.roundtrips).as_dict(),
            }
        finally:
            one.close()
            three.close()
            piped.close()
    results["ratio"] = results["three_roundtrips"]["ops_per_s"] / results["one_roundtrip"]["ops_per_s"]
    results["pipelined_ratio"] = results["pipelined"]["ops_per_s"] / results["one_roundtrip"]["ops_per_s"]
    results["seconds"] = time.perf_counter() - started
    return results
