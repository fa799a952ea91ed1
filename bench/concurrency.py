"""Two processes creating users at once on PostgreSQL: aggregate ops/s against one process."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from bench import pg
from bench.procs import SPAWN
from bench.runner import import_users
from bench.systems import system_class
from bench.workload import CONCURRENT_BASE, CONCURRENT_STRIDE, user


@dataclass
class ConcurrencyResult:
    """Creates per second with one process and with two at once (same database, same duration)."""

    system: str
    seconds: float
    one: float
    two: float
    two_each: list[float]
    retries: int  # conflict retries codx-db logged (two processes)

    @property
    def ratio(self) -> float:
        return self.two / self.one if self.one else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


class _RetryCounter(logging.Handler):
    """Counts codx-db's conflict retries from its debug log (``Database.run``), by exception class."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0
        self.by_class: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        # logging.Handler.handle holds the handler's lock here: threads count one at a time.
        if record.getMessage().startswith("retrying unit of work"):
            self.count += 1
            args = record.args if isinstance(record.args, tuple) else ()
            name = str(args[0]) if args else "?"
            self.by_class[name] = self.by_class.get(name, 0) + 1


def _worker(
    system_name: str,
    dsn: str,
    options: dict[str, Any],
    worker: int,
    seconds: float,
    barrier: Any,
    results: Any,
) -> None:
    """Open the system, wait for the others, create users for ``seconds``; report the count."""
    retries = _RetryCounter()
    logger = logging.getLogger("db.database")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(retries)
    system = system_class(system_name)(dsn, options)
    system.open()
    base = CONCURRENT_BASE + worker * CONCURRENT_STRIDE
    try:
        system.create(user(base))  # warm the connection and caches before the clock starts
        barrier.wait()
        done = 1
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            system.create(user(base + done))
            done += 1
        elapsed = time.perf_counter() - start
        results.put((worker, done - 1, elapsed, retries.count))
    finally:
        system.close()


def _run(
    system_name: str, dsn: str, options: dict[str, Any], processes: int, seconds: float, round_: int
) -> list[tuple[int, int, float, int]]:
    barrier = SPAWN.Barrier(processes)
    results = SPAWN.Queue()
    workers = [
        SPAWN.Process(
            target=_worker,
            args=(system_name, dsn, options, round_ * 10 + w, seconds, barrier, results),
        )
        for w in range(processes)
    ]
    for process in workers:
        process.start()
    found = [results.get(timeout=seconds + 120) for _ in workers]
    for process in workers:
        process.join(timeout=60)
        if process.exitcode != 0:
            raise RuntimeError(f"{system_name} worker exited with {process.exitcode}")
    return found


def measure(
    system_name: str, admin_dsn: str, options: dict[str, Any], seconds: float, population: int
) -> ConcurrencyResult:
    """One process, then two at once, each creating users for ``seconds`` on a fresh database."""
    with pg.fresh_database(admin_dsn, f"{system_name}-concurrent") as dsn:
        system = system_class(system_name)(dsn, options)
        system.open()
        try:
            import_users(system, 0, population, 1000)
        finally:
            system.close()
        one = _run(system_name, dsn, options, 1, seconds, 0)
        two = _run(system_name, dsn, options, 2, seconds, 1)
    rates = [count / elapsed for _, count, elapsed, _ in two]
    return ConcurrencyResult(
        system=system_name,
        seconds=seconds,
        one=one[0][1] / one[0][2],
        two=sum(rates),
        two_each=rates,
        retries=sum(r for *_, r in two),
    )
