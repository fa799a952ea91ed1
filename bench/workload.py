"""The workload every system runs: deterministic users, the operations, and the timing loop."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bench import pg

# Operations in the order they run against a populated store (bulk runs on a store of its own).
OPERATIONS = ("create", "get", "get_by_email", "get_many", "update", "page", "page_after", "delete")
BULK = "bulk"
PAGE_SIZE = 50
GET_MANY_BATCH = 100

# Index ranges that never overlap: the populated users, the users each phase creates.
CREATE_BASE = 10_000_000
CONCURRENT_BASE = 20_000_000
CONCURRENT_STRIDE = 1_000_000

DESCRIPTIONS = {
    "create": "create one user, one transaction each (no password)",
    "get": "get by username, own transaction",
    "get_by_email": "get by email, own transaction",
    "get_many": f"{GET_MANY_BATCH} gets by username inside one transaction (per get)",
    "update": "update full_name, one transaction each",
    "page": f"page of {PAGE_SIZE} sorted by username at a random offset, own transaction",
    "page_after": f"page of {PAGE_SIZE} after a random username (keyset paging), own transaction",
    "delete": "delete one user, one transaction each",
    "bulk": "bulk import into an empty store, one transaction per batch (per user)",
}


@dataclass(frozen=True, slots=True)
class UserRecord:
    """One user of the workload, as plain data every system can store."""

    index: int
    username: str
    email: str
    full_name: str


def user(index: int) -> UserRecord:
    """The user number ``index``: unique, and in no particular order by username.

    Multiplying by an odd constant modulo 2**32 is a bijection, so names never collide
    while consecutive indexes land far apart in the sorted indexes (like real names do).
    """
    key = (index * 0x9E3779B1) & 0xFFFFFFFF
    username = f"u{key:08x}"
    return UserRecord(index, username, f"{username}@example.com", f"User {index}")


def users(start: int, count: int) -> Iterator[UserRecord]:
    """``count`` users from index ``start``."""
    return (user(i) for i in range(start, start + count))


def batches(start: int, count: int, size: int) -> Iterator[list[UserRecord]]:
    """The users ``start .. start+count`` in lists of at most ``size``."""
    for first in range(start, start + count, size):
        yield list(users(first, min(size, start + count - first)))


@dataclass
class Budget:
    """How long one operation may run: at most ``max_ops``, stopping after ``seconds``."""

    seconds: float
    max_ops: int
    min_ops: int = 3


@dataclass
class OpResult:
    """What one operation measured on one system."""

    op: str
    ops: int
    seconds: float
    roundtrips: int | None = None  # SQL round trips waited for in the timed loop (PostgreSQL systems)
    extra: dict[str, Any] = field(default_factory=dict)
    pipelined: int | None = None  # statements sent without waiting for a reply (codx-db's ROLLBACKs)
    # COMMITs psycopg2 sent after RelStorage's COMMIT inside a statement (included in roundtrips)
    hidden_commits: int | None = None

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    @property
    def us_per_op(self) -> float:
        return self.seconds / self.ops * 1e6 if self.ops else 0.0

    @property
    def roundtrips_per_op(self) -> float | None:
        return None if self.roundtrips is None or not self.ops else self.roundtrips / self.ops

    @property
    def pipelined_per_op(self) -> float | None:
        return None if self.pipelined is None or not self.ops else self.pipelined / self.ops

    @property
    def hidden_commits_per_op(self) -> float | None:
        return None if self.hidden_commits is None or not self.ops else self.hidden_commits / self.ops

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(ops_per_s=self.ops_per_s, us_per_op=self.us_per_op)
        data["roundtrips_per_op"] = self.roundtrips_per_op
        data["pipelined_per_op"] = self.pipelined_per_op
        data["hidden_commits_per_op"] = self.hidden_commits_per_op
        return data


def timed_loop(
    op: str,
    step: Callable[[int], int],
    budget: Budget,
    roundtrips: Callable[[], int] | None = None,
) -> OpResult:
    """Call ``step(i)`` for i = 0, 1, ... until the budget is spent; ``step`` returns ops done."""
    before = roundtrips() if roundtrips else None
    sent = pg.pipelined() if roundtrips else 0
    hidden = pg.hidden_commits() if roundtrips else 0
    done = 0
    i = 0
    start = time.perf_counter()
    deadline = start + budget.seconds
    while done < budget.max_ops:
        done += step(i)
        i += 1
        if done >= budget.min_ops and time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - start
    trips = roundtrips() - before if roundtrips and before is not None else None
    piped = pg.pipelined() - sent if roundtrips else None
    hidden_sent = pg.hidden_commits() - hidden if roundtrips else None
    return OpResult(op, done, elapsed, trips, pipelined=piped, hidden_commits=hidden_sent)


def rng(seed: int, op: str) -> random.Random:
    """The random sequence of one operation: the same on every system."""
    return random.Random(f"{seed}:{op}")


def sample_indexes(seed: int, op: str, population: int, count: int) -> Sequence[int]:
    """``count`` random population indexes (with repeats when count > population)."""
    generator = rng(seed, op)
    return [generator.randrange(population) for _ in range(count)]
