"""Concurrency matrix: creates on PostgreSQL by P processes x T threads each, every cell checked.

Each system gets a database seeded with ``users`` users, and every round of every cell a fresh
copy of it. In a round all writers (spawned processes, threads in each) create distinct users,
start together on a barrier and stop after ``seconds``; the best of ``rounds`` rounds counts.
After each round, a fresh process checks what the writers were told: every acknowledged user is
there, and the count is exactly the seed plus the acknowledged creates (plus any give-up that was
committed after all, reported apart); codx-db also runs its own ``check``. Give-ups (errors
after retries) are counted by exception class: a cell with one is a failed cell, however fast.

codx-db retries conflicts itself (``Database.run``; retries counted from its debug log, as in
bench/concurrency.py). The peers get the same policy in the worker, as their users would write
it: up to ``db_conflict_retries`` (10) retries of a transient error with the same jittered backoff.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from bench import matrix_store, pg
from bench.concurrency import _RetryCounter
from bench.procs import SPAWN, in_child
from bench.systems import system_class
from bench.workload import user

SYSTEMS = ("codx-pg", "zodb-pg", "sqlalchemy")
RETRIES = 10  # codx-db's default db_conflict_retries, given to the peers too
# Index ranges of the users the matrix creates: one block of STRIDE per writer and round.
MATRIX_BASE = 100_000_000
STRIDE = 100_000
SLOT_WRITERS = 128
ERROR_CAP = 100  # a writer stops after this many give-ups (a broken system must not spin)


@dataclass
class MatrixConfig:
    """The grid and its budget."""

    processes: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    threads: list[int] = field(default_factory=lambda: [1, 8, 16])
    systems: list[str] = field(default_factory=lambda: list(SYSTEMS))
    seconds: float = 3.0
    rounds: int = 2
    users: int = 3_000
    max_writers: int = 32  # cells with more writers are skipped (each holds ~2 PostgreSQL connections)

    def cells(self) -> list[tuple[int, int]]:
        return [(p, t) for p in self.processes for t in self.threads if p * t <= self.max_writers]

    def skipped(self) -> list[tuple[int, int]]:
        return [(p, t) for p in self.processes for t in self.threads if p * t > self.max_writers]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "skipped": [list(c) for c in self.skipped()]}


def _transient(exc: BaseException) -> bool:
    """Would a plain user of this system retry it? ZODB conflicts; PostgreSQL deadlock/serialization."""
    from transaction.interfaces import TransientError

    if isinstance(exc, TransientError):
        return True
    code = getattr(getattr(exc, "orig", exc), "pgcode", None)
    return code in ("40001", "40P01")


class _Pool(logging.Filter):
    """Counts (and keeps off stderr) ZODB's "DB.open() has N open connections" pool warnings."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("DB.open() has"):
            self.count += 1
            return False
        return True


@dataclass
class _Writer:
    base: int
    attempted: int = 0
    created: int = 0  # acknowledged inside the timed window
    failed: list[int] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    samples: dict[str, str] = field(default_factory=dict)  # the first message of each give-up class
    retries: dict[str, int] = field(default_factory=dict)


def _create(system: Any, writer: _Writer, retry: bool) -> bool:
    """Create the writer's next user; False on a give-up (counted by class)."""
    index = writer.base + writer.attempted
    writer.attempted += 1
    for attempt in range(1, RETRIES + 2):
        try:
            system.create(user(index))
            return True
        except Exception as exc:  # noqa: BLE001 - every give-up is counted, none stops the cell
            name = type(exc).__name__
            if retry and attempt <= RETRIES and _transient(exc):
                writer.retries[name] = writer.retries.get(name, 0) + 1
                time.sleep(random.uniform(0, min(0.5, 0.01 * 2 ** (attempt - 1))))
                continue
            writer.errors[name] = writer.errors.get(name, 0) + 1
            writer.samples.setdefault(name, " ".join(str(exc).split())[:160])
            writer.failed.append(index)
            return False
    return False  # pragma: no cover


def _process(
    name: str, dsn: str, options: dict[str, Any], bases: list[int], seconds: float, barrier: Any, out: Any
) -> None:
    """One writer process: open, warm each thread, wait for every process, create for ``seconds``."""
    try:
        out.put(_writers(name, dsn, options, bases, seconds, barrier))
    except BaseException as exc:
        barrier.abort()  # the other processes must not wait for us
        out.put({"crash": f"{type(exc).__name__}: {exc}"})
        raise


def _writers(
    name: str, dsn: str, options: dict[str, Any], bases: list[int], seconds: float, barrier: Any
) -> dict[str, Any]:
    retries, pool = _RetryCounter(), _Pool()
    logger = logging.getLogger("db.database")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(retries)
    logging.getLogger("ZODB.DB").addFilter(pool)
    system = system_class(name)(dsn, options)
    system.open()
    retry = not name.startswith("codx-")
    writers = [_Writer(base) for base in bases]
    ready = threading.Barrier(len(writers) + 1)
    go = threading.Event()
    deadline = [0.0]

    def run(writer: _Writer) -> None:
        _create(system, writer, retry)  # warm the connection and caches before the clock starts
        ready.wait()
        go.wait()
        while time.perf_counter() < deadline[0] and sum(writer.errors.values()) < ERROR_CAP:
            writer.created += _create(system, writer, retry)

    try:
        threads = [threading.Thread(target=run, args=(w,)) for w in writers]
        for thread in threads:
            thread.start()
        ready.wait()
        batches_before = system.commit_batches()
        retried_before = dict(retries.by_class)
        barrier.wait()
        started = time.perf_counter()
        deadline[0] = started + seconds
        go.set()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        batches_after = system.commit_batches()
    finally:
        close_error = _close(system)
    retried = {k: v - retried_before.get(k, 0) for k, v in retries.by_class.items() if v > retried_before.get(k, 0)}
    for w in writers:
        for k, v in w.retries.items():
            retried[k] = retried.get(k, 0) + v
    errors: dict[str, int] = {}
    for w in writers:
        for k, v in w.errors.items():
            errors[k] = errors.get(k, 0) + v
    samples: dict[str, str] = {}
    for w in writers:
        for k, message in w.samples.items():
            samples.setdefault(k, message)
    batches = None
    if batches_before is not None and batches_after is not None:
        batches = [batches_after[0] - batches_before[0], batches_after[1] - batches_before[1]]
    return {
        "elapsed": elapsed,
        "created": sum(w.created for w in writers),
        "writers": [[w.base, w.attempted, w.failed] for w in writers],
        "errors": errors,
        "error_samples": samples,
        "retries": retried,
        "batches": batches,
        "pool_warnings": pool.count,
        "close_error": close_error,
    }


def _close(system: Any) -> str | None:
    """Close the system; a failure here comes after the measurement and is reported, not fatal.

    Raw ZODB's ``DB.close()`` can raise ``KeyError`` from ``TransactionManager.unregisterSynch``
    after threads used ``DB.transaction()`` with more connections than the pool keeps (seen with
    8 threads and pool_size 7): the round's creates were acknowledged and are checked anyway.
    """
    try:
        system.close()
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return None


def _round(
    name: str, dsn: str, options: dict[str, Any], processes: int, threads: int, seconds: float, slot: int
) -> list[dict[str, Any]]:
    def base(writer: int) -> int:
        return MATRIX_BASE + (slot * SLOT_WRITERS + writer) * STRIDE

    if base(processes * threads) >= 2**32:  # user() maps indexes below 2**32 one to one
        raise ValueError("too many cells x rounds x writers for distinct user indexes")
    barrier, out = SPAWN.Barrier(processes), SPAWN.Queue()
    workers = [
        SPAWN.Process(
            target=_process,
            args=(name, dsn, options, [base(p * threads + t) for t in range(threads)], seconds, barrier, out),
        )
        for p in range(processes)
    ]
    for process in workers:
        process.start()
    try:
        found = [out.get(timeout=seconds + 300) for _ in workers]
    finally:
        for process in workers:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
    crashed = [f["crash"] for f in found if "crash" in f]
    if crashed:
        raise RuntimeError(f"{name} writer process failed: {crashed[0]}")
    return found


def _merge(into: dict[str, int], counts: dict[str, int]) -> None:
    for key, value in counts.items():
        into[key] = into.get(key, 0) + value


def _rate(found: list[dict[str, Any]]) -> float:
    return float(sum(f["created"] / f["elapsed"] for f in found if f["elapsed"] > 0))


def _cell(
    cell: tuple[int, int], rounds_found: list[list[dict[str, Any]]], checks: list[dict[str, Any]]
) -> dict[str, Any]:
    """One cell from its rounds (each with its own check)."""
    processes, threads = cell
    rates = [_rate(found) for found in rounds_found]
    best = max(range(len(rates)), key=rates.__getitem__)
    errors: dict[str, int] = {}
    retries_total: dict[str, int] = {}
    batches, requests, pool_warnings = 0, 0, 0
    close_errors: list[str] = []
    samples: dict[str, str] = {}
    have_batches = True
    for found in rounds_found:
        for f in found:
            _merge(errors, f["errors"])
            _merge(retries_total, f["retries"])
            pool_warnings += f["pool_warnings"]
            for k, v in f["error_samples"].items():
                samples.setdefault(k, v)
            if f["close_error"]:
                close_errors.append(f["close_error"])
    for f in rounds_found[best]:
        if f["batches"] is None:
            have_batches = False
        else:
            batches, requests = batches + f["batches"][0], requests + f["batches"][1]
    best_retries: dict[str, int] = {}
    for f in rounds_found[best]:
        _merge(best_retries, f["retries"])
    created_best = sum(f["created"] for f in rounds_found[best])
    return {
        "processes": processes,
        "threads": threads,
        "writers": processes * threads,
        "round_rates": rates,
        "creates_per_s": rates[best],
        "retries": sum(best_retries.values()),
        "retries_by_class": best_retries,
        "retries_per_1000": 1000 * sum(best_retries.values()) / created_best if created_best else None,
        "retries_all_rounds": retries_total,
        "errors": sum(errors.values()),
        "errors_by_class": errors,
        "error_samples": samples,
        "acknowledged": sum(c["acknowledged"] for c in checks),
        "batch_mean": requests / batches if have_batches and batches else None,
        "pool_warnings": pool_warnings,
        "close_errors": close_errors,
        "check": matrix_store.merge_checks(checks),
    }


class _SystemRun:
    """One system's side of the matrix: its seeded database, its rounds so far, its finished cells."""

    def __init__(self, name: str, seed_dsn: str, options: dict[str, Any], config: MatrixConfig) -> None:
        self.name, self.seed_dsn, self.options, self.config = name, seed_dsn, options, config
        self.rounds: dict[tuple[int, int], list[list[dict[str, Any]]]] = {cell: [] for cell in config.cells()}
        self.checks: dict[tuple[int, int], list[dict[str, Any]]] = {cell: [] for cell in config.cells()}
        self.done: dict[tuple[int, int], dict[str, Any]] = {}
        self.seeded = in_child(matrix_store.seed, name, seed_dsn, options, config.users)

    def step(self, r: int, number: int, cell: tuple[int, int], admin_dsn: str, progress: Callable[[str], None]) -> None:
        """Round ``r`` of ``cell`` (the ``number``-th of the grid) on a fresh copy of the seed, then its check."""
        if cell in self.done:  # failed in an earlier round
            return
        name, options, config = self.name, self.options, self.config
        opts = {**options, "pool_size": cell[1]} if name == "sqlalchemy" else options
        progress(f"matrix {name}: {cell[0]} process(es) x {cell[1]} thread(s), round {r + 1}/{config.rounds}")
        try:
            with pg.fresh_database(admin_dsn, f"{name}-round", template=self.seed_dsn) as dsn:
                found = _round(name, dsn, opts, *cell, config.seconds, number * config.rounds + r)
                self.rounds[cell].append(found)
                self.checks[cell].append(matrix_store.check_round(name, dsn, opts, found, self.seeded))
            if r == config.rounds - 1:
                self.done[cell] = _cell(cell, self.rounds[cell], self.checks[cell])
        except Exception as exc:  # noqa: BLE001 - one failing cell must not hide the others
            self.done[cell] = {"processes": cell[0], "threads": cell[1], "error": f"{type(exc).__name__}: {exc}"}

    def result(self) -> dict[str, Any]:
        cells = [self.done[cell] for cell in self.config.cells()]
        one = next((c for c in cells if c["processes"] == 1 and c["threads"] == 1 and "error" not in c), None)
        for c in cells:
            if one and "error" not in c and one["creates_per_s"]:
                c["ratio"] = c["creates_per_s"] / one["creates_per_s"]
        return {"cells": cells, "seeded": self.config.users}


def run_matrix(
    admin_dsn: str, options: dict[str, Any], config: MatrixConfig, progress: Callable[[str], None]
) -> dict[str, Any]:
    """The matrix of every configured system (JSON-shaped, for the report).

    Each system gets a fresh database (dropped at the end), seeded first; every round of every
    cell then runs on its own copy of it (``CREATE DATABASE ... TEMPLATE``), so each starts
    from the same users, whatever the rounds before it added (a fast system's database would
    otherwise grow faster, and its later rounds start colder). The rounds are interleaved twice
    over: round 1 of every cell, then round 2 of every cell, and within a cell every system one
    after the other. A machine whose speed drifts during the run then favours neither the cells
    measured early (the 1 x 1 cell every ratio divides by runs first) nor a system measured
    early: the peers' ratios (codx-db's single writer against raw ZODB's, say) compare rounds
    taken a few seconds apart. Each round is checked on its copy before the copy is dropped.
    """
    found: dict[str, Any] = {"config": config.as_dict(), "systems": {}}
    runs: list[_SystemRun] = []
    with contextlib.ExitStack() as stack:
        for name in config.systems:
            try:
                dsn = stack.enter_context(pg.fresh_database(admin_dsn, f"{name}-matrix"))
                runs.append(_SystemRun(name, dsn, options if name.startswith("codx-") else {}, config))
            except Exception as exc:  # noqa: BLE001 - one system that cannot start must not hide the others
                found["systems"][name] = {"error": f"{type(exc).__name__}: {exc}", "cells": []}
        for r in range(config.rounds):
            for number, cell in enumerate(config.cells()):
                for run in runs:
                    run.step(r, number, cell, admin_dsn, progress)
        for run in runs:
            found["systems"][run.name] = run.result()
    found["systems"] = {name: found["systems"][name] for name in config.systems}  # the configured order
    return found
