"""Run the workload on one system, in a child process of its own, on fresh stores."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import pg
from bench.procs import peak_rss_mb
from bench.systems import STORAGE, System, system_class
from bench.workload import (
    BULK,
    CREATE_BASE,
    GET_MANY_BATCH,
    PAGE_SIZE,
    Budget,
    OpResult,
    batches,
    rng,
    timed_loop,
    user,
)


@dataclass
class RunConfig:
    """Everything a child needs to run the workload on one system."""

    system: str
    users: int  # population for the per-operation measurements
    bulk: int  # users imported by the bulk measurement
    batch: int  # users per bulk transaction
    seconds: float  # time budget per operation
    max_ops: int  # cap per operation
    seed: int
    admin_dsn: str
    workdir: str
    codx_settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class SystemResult:
    """What one system measured."""

    system: str
    storage: str
    description: str
    results: dict[str, OpResult]
    populate_seconds: float = 0.0
    open_seconds: float = 0.0  # reopening the populated store
    peak_rss_mb: float = 0.0
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "storage": self.storage,
            "description": self.description,
            "results": {op: r.as_dict() for op, r in self.results.items()},
            "populate_seconds": self.populate_seconds,
            "open_seconds": self.open_seconds,
            "peak_rss_mb": self.peak_rss_mb,
            "error": self.error,
            "notes": self.notes,
        }


@contextlib.contextmanager
def fresh_location(storage: str, label: str, workdir: str, admin_dsn: str) -> Iterator[str]:
    """A new, empty place to store users: a file path, or a fresh PostgreSQL database."""
    if storage == "postgres":
        with pg.fresh_database(admin_dsn, label) as dsn:
            yield dsn
        return
    directory = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=workdir))
    try:
        suffix = ".json" if label.startswith("tinydb") else ".fs"
        yield str(directory / f"users{suffix}")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def open_system(config: RunConfig, location: str) -> System:
    """An open system of the configured kind on ``location``."""
    cls = system_class(config.system)
    options = config.codx_settings if config.system.startswith("codx-") else {}
    system = cls(location, options)
    system.open()
    return system


def counter(storage: str) -> Callable[[], int] | None:
    return pg.roundtrips if storage == "postgres" else None


def import_users(system: System, start: int, count: int, batch: int) -> None:
    """Import ``count`` users from index ``start`` through the system's bulk path."""
    for chunk in batches(start, count, batch):
        system.bulk(chunk)


def run_system(config: RunConfig) -> SystemResult:
    """Run the whole workload on one system (call in a fresh process)."""
    storage = STORAGE[config.system]
    if storage == "postgres":
        pg.install_relstorage_counter()
    cls = system_class(config.system)
    result = SystemResult(config.system, storage, cls.description, {})
    trips = counter(storage)

    # 1. Bulk import into an empty store of its own.
    with fresh_location(storage, f"{config.system}-bulk", config.workdir, config.admin_dsn) as location:
        system = open_system(config, location)
        try:
            chunks = list(batches(0, config.bulk, config.batch))
            before = trips() if trips else 0
            started = time.perf_counter()
            for chunk in chunks:
                system.bulk(chunk)
            elapsed = time.perf_counter() - started
            result.results[BULK] = OpResult(
                BULK, config.bulk, elapsed, trips() - before if trips else None, {"batch": config.batch}
            )
            _check(system.count() == config.bulk, f"bulk: count {system.count()} != {config.bulk}")
        finally:
            system.close()

    # 2. The operations, on a store populated with ``users`` users.
    with fresh_location(storage, config.system, config.workdir, config.admin_dsn) as location:
        system = open_system(config, location)
        try:
            started = time.perf_counter()
            import_users(system, 0, config.users, config.batch)
            result.populate_seconds = time.perf_counter() - started
            _check(system.count() == config.users, "populate: wrong count")
            result.results.update(_operations(system, config, trips))
        finally:
            system.close()
        started = time.perf_counter()
        system = open_system(config, location)
        result.open_seconds = time.perf_counter() - started
        system.close()
    result.peak_rss_mb = peak_rss_mb()
    return result


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise AssertionError(f"sanity check failed: {message}")


def _operations(system: System, config: RunConfig, trips: Callable[[], int] | None) -> dict[str, OpResult]:
    n = config.users
    budget = Budget(config.seconds, config.max_ops)
    results: dict[str, OpResult] = {}

    def pick(op: str) -> Callable[[int], int]:
        generator = rng(config.seed, op)
        return lambda _: generator.randrange(n)

    results["create"] = timed_loop("create", lambda i: (system.create(user(CREATE_BASE + i)), 1)[1], budget, trips)
    created = results["create"].ops

    get_index = pick("get")

    def get(i: int) -> int:
        wanted = user(get_index(i))
        _check(system.username_of(system.get(wanted.username)) == wanted.username, "get")
        return 1

    results["get"] = timed_loop("get", get, budget, trips)

    email_index = pick("get_by_email")

    def get_by_email(i: int) -> int:
        wanted = user(email_index(i))
        _check(system.username_of(system.get_by_email(wanted.email.upper())) == wanted.username, "email")
        return 1

    results["get_by_email"] = timed_loop("get_by_email", get_by_email, budget, trips)

    many_index = pick("get_many")

    def get_many(i: int) -> int:
        names = [user(many_index(i)).username for _ in range(GET_MANY_BATCH)]
        found = system.get_many(names)
        _check([system.username_of(u) for u in found] == names, "get_many")
        return len(names)

    results["get_many"] = timed_loop("get_many", get_many, Budget(config.seconds, config.max_ops * 20), trips)

    update_index = pick("update")

    def update(i: int) -> int:
        system.update(user(update_index(i)).username, f"Renamed {i}")
        return 1

    results["update"] = timed_loop("update", update, budget, trips)

    page_rng = rng(config.seed, "page")
    total = n + created

    def page(_: int) -> int:
        found = system.page(page_rng.randrange(max(total - PAGE_SIZE, 1)), PAGE_SIZE)
        names = [system.username_of(u).lower() for u in found]
        _check(len(names) == min(PAGE_SIZE, total) and names == sorted(names), "page")
        return 1

    results["page"] = timed_loop("page", page, budget, trips)

    after_index = pick("page_after")

    def page_after(i: int) -> int:
        start = user(after_index(i)).username.lower()
        found = system.page_after(start, PAGE_SIZE)
        names = [system.username_of(u).lower() for u in found]
        _check(names == sorted(names) and all(name > start for name in names), "page_after")
        return 1

    results["page_after"] = timed_loop("page_after", page_after, budget, trips)

    # Distinct victims from the original population, in random order.
    victims = rng(config.seed, "delete").sample(range(n), min(n, config.max_ops))

    def delete(i: int) -> int:
        system.delete(user(victims[i]).username)
        return 1

    results["delete"] = timed_loop("delete", delete, Budget(config.seconds, len(victims)), trips)
    expected = n + created - results["delete"].ops
    _check(system.count() == expected, f"after delete: count {system.count()} != {expected}")
    return results
