"""PostgreSQL helpers: a fresh database per system, and counting SQL round trips.

Round trips are counted in the client: every ``execute`` is one, so is the ``BEGIN`` psycopg2
sends before the first statement of a transaction, and a ``COMMIT``/``ROLLBACK`` that ends
one. What psycopg2 sends is decided by its *own* status (``connection.status``), not libpq's:
it sends ``BEGIN`` when it is ``STATUS_READY`` and ``COMMIT``/``ROLLBACK`` when it is
``STATUS_BEGIN`` (outside autocommit), so that is what is counted. The two differ after
RelStorage's commit: ``lock_and_choose_tid_and_move`` travels with ``COMMIT`` in one message
(libpq: IDLE), then RelStorage calls ``conn.commit()`` to resync psycopg2, whose status is
still BEGIN, so a second, waited ``COMMIT`` goes out (the server answers "there is no
transaction in progress"). That one is counted, and also apart as ``hidden_commits``.
The same connection class serves RelStorage, SQLAlchemy and raw psycopg2, so the counts
compare like with like. codx-db's reads put ``BEGIN`` in the same message as the poll (one round
trip) and send their ``ROLLBACK`` without waiting for the reply (db/pg/roundtrips.py): those are
counted apart, as pipelined.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg2
import psycopg2.extensions
from psycopg2.extensions import make_dsn, parse_dsn

DEFAULT_ADMIN_DSN = "host=127.0.0.1 port=5432 dbname=postgres user=postgres"
DATABASE_PREFIX = "codx_bench_"
# "name=value;name=value": settings given to every benchmark database (ALTER DATABASE ... SET),
# e.g. synchronous_commit=off. An environment variable so child processes see it too.
SETTINGS_ENV = "CODX_BENCH_PG_SETTINGS"

T = TypeVar("T")

_IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE
# psycopg2's own view of the transaction: READY -> it sends BEGIN before a statement;
# BEGIN -> commit()/rollback() send COMMIT/ROLLBACK (psycopg/pqpath.c pq_begin_locked, pq_commit).
_READY = psycopg2.extensions.STATUS_READY
_BEGIN = psycopg2.extensions.STATUS_BEGIN


@dataclass(frozen=True, slots=True)
class Trip:
    """One logged client call: what it sent, how many round trips, how long it took."""

    what: str
    trips: int
    seconds: float


class RoundTrips:
    """Process-wide count of SQL round trips made through ``CountingConnection``.

    Set ``log`` to a list to also record each call with its duration (``python -m bench.profile``).
    """

    count = 0
    # COMMITs psycopg2 sent although libpq was already IDLE (included in ``count``): RelStorage's
    # resync after the COMMIT it sent inside lock_and_choose_tid_and_move's message.
    hidden_commits = 0
    log: list[Trip] | None = None


def roundtrips() -> int:
    """SQL round trips waited for so far in this process."""
    return RoundTrips.count


def hidden_commits() -> int:
    """COMMITs sent after the server had already committed, so far in this process (in ``roundtrips``)."""
    return RoundTrips.hidden_commits


def pipelined() -> int:
    """Statements sent without waiting for their reply so far (codx-db's ROLLBACK after a read).

    db/pg/roundtrips.py sends them through libpq directly, past the counting connection.
    """
    from db.pg.roundtrips import Counters

    return int(Counters.pipelined_rollbacks)


def _counted(conn: Any, query: Any, trips: int, call: Callable[[], T]) -> T:
    # psycopg2 sends BEGIN on its own before the first statement of a transaction: when its own
    # status is READY (libpq's may differ, e.g. IDLE right after a COMMIT inside a statement).
    begin = not conn.autocommit and conn.status == _READY
    trips += begin
    RoundTrips.count += trips
    if RoundTrips.log is None:
        return call()
    started = time.perf_counter()
    try:
        return call()
    finally:
        text = " ".join((query.decode() if isinstance(query, bytes) else str(query)).split())
        RoundTrips.log.append(Trip(("BEGIN; " if begin else "") + text[:100], trips, time.perf_counter() - started))


class CountingCursor(psycopg2.extensions.cursor):
    """A cursor that counts its round trips."""

    def execute(self, query: Any, vars: Any = None) -> None:
        _counted(self.connection, query, 1, lambda: super(CountingCursor, self).execute(query, vars))

    def executemany(self, query: Any, vars_list: Any) -> None:
        params = list(vars_list)
        # psycopg2 runs one statement per parameter set.
        _counted(
            self.connection,
            query,
            max(len(params), 1),
            lambda: super(CountingCursor, self).executemany(query, params),
        )

    def copy_expert(self, sql: Any, file: Any, size: int = 8192) -> None:
        _counted(self.connection, sql, 1, lambda: super(CountingCursor, self).copy_expert(sql, file, size))


class CountingConnection(psycopg2.extensions.connection):
    """A psycopg2 connection whose cursors, commits and rollbacks are counted."""

    def __init__(self, dsn: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(dsn, *args, **kwargs)
        self.cursor_factory = CountingCursor

    def _end(self, what: str, call: Callable[[], None]) -> None:
        if self.autocommit or self.status != _BEGIN:
            call()  # psycopg2 sends nothing (pq_commit / pq_abort return early)
            return
        RoundTrips.count += 1
        if self.info.transaction_status == _IDLE:
            # The server has no transaction (a COMMIT went out inside a statement): psycopg2
            # still sends this one, a waited round trip for a warning.
            RoundTrips.hidden_commits += 1
            what = f"{what} (hidden: server already IDLE)"
        if RoundTrips.log is None:
            call()
            return
        started = time.perf_counter()
        call()
        RoundTrips.log.append(Trip(what, 1, time.perf_counter() - started))

    def commit(self) -> None:
        self._end("COMMIT", super().commit)

    def rollback(self) -> None:
        self._end("ROLLBACK", super().rollback)


def install_relstorage_counter() -> None:
    """Make RelStorage's psycopg2 driver use ``CountingConnection`` (call before opening it).

    RelStorage's psycopg2 driver looks for ``RSPsycopg2Connection`` on the psycopg2 module and
    only defines its own class when that is missing (relstorage/adapters/postgresql/drivers/
    psycopg2.py), so a class put there first serves every RelStorage connection. RelStorage sets
    a ``replica`` attribute on it, which our class (having a ``__dict__``) accepts.
    """
    psycopg2.RSPsycopg2Connection = CountingConnection  # type: ignore[attr-defined]


def connect(dsn: str, autocommit: bool = False) -> CountingConnection:
    """A counting psycopg2 connection."""
    conn = psycopg2.connect(dsn, connection_factory=CountingConnection)
    conn.autocommit = autocommit
    return conn


def _admin(admin_dsn: str) -> Any:
    conn = psycopg2.connect(admin_dsn, connect_timeout=10)
    conn.autocommit = True
    return conn


def check_server(admin_dsn: str) -> str | None:
    """None if the server answers, else why not (for a clear message)."""
    try:
        _admin(admin_dsn).close()
    except psycopg2.OperationalError as exc:
        return str(exc).strip().splitlines()[0]
    return None


def create_database(admin_dsn: str, label: str, template: str | None = None) -> str:
    """Create a fresh ``codx_bench_<label>_<random>`` database; return its DSN.

    Empty, or with ``template`` (the DSN of another benchmark database, with no session open on
    it) a copy of that one: PostgreSQL copies its files, far faster than filling it again.
    """
    name = f"{DATABASE_PREFIX}{label.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
    source = "" if template is None else f' TEMPLATE "{parse_dsn(template)["dbname"]}"'
    conn = _admin(admin_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"{source}')
            try:
                for setting, value in database_settings().items():
                    cur.execute(f'ALTER DATABASE "{name}" SET {setting} = %s', (value,))
            except Exception:
                cur.execute(f'DROP DATABASE "{name}"')  # a setting refused: leave nothing behind
                raise
    finally:
        conn.close()
    return make_dsn(admin_dsn, dbname=name)


def database_settings() -> dict[str, str]:
    """The settings ``--pg-setting`` asked for (from ``CODX_BENCH_PG_SETTINGS``)."""
    found = {}
    for item in os.environ.get(SETTINGS_ENV, "").split(";"):
        name, sep, value = item.partition("=")
        if sep and name.strip():
            if not name.strip().replace("_", "").replace(".", "").isalnum():
                raise ValueError(f"not a PostgreSQL setting name: {name!r}")
            found[name.strip()] = value.strip()
    return found


def drop_database(admin_dsn: str, dsn: str) -> None:
    """Drop a database made by ``create_database`` (closing its sessions)."""
    name = parse_dsn(dsn)["dbname"]
    if not name.startswith(DATABASE_PREFIX):
        raise ValueError(f"refusing to drop {name!r}: not a benchmark database")
    conn = _admin(admin_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()


@contextlib.contextmanager
def fresh_database(admin_dsn: str, label: str, keep: bool = False, template: str | None = None) -> Iterator[str]:
    """A fresh database (empty, or a copy of ``template``) for the block, dropped at the end unless ``keep``."""
    dsn = create_database(admin_dsn, label, template)
    try:
        yield dsn
    finally:
        if not keep:
            drop_database(admin_dsn, dsn)


def backend_cpu(pids: list[int]) -> float | None:
    """User + system CPU seconds of these local processes so far; None if one cannot be read."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
                head, _, tail = stat.read().rpartition(")")
        except OSError:
            return None  # a server in a container or on another host: its PIDs are not ours
        if not head.endswith("(postgres"):
            return None  # not a PostgreSQL backend of this machine (the same PID elsewhere)
        fields = tail.split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def backend_pids(dsn: str) -> list[int]:
    """PIDs of the client backends connected to ``dsn``'s database (writers' load and store sessions)."""
    conn = connect(dsn, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND backend_type = 'client backend'"  # not an autovacuum worker of the fresh tables
            )
            return [row[0] for row in cur.fetchall()]
    finally:
        conn.close()
