"""SQL round trips of a read-only unit of work on RelStorage: ours against the naive way.

Counted, not timed: every statement, BEGIN and COMMIT/ROLLBACK psycopg2 sends is one round trip
(bench/pg.py's counting connection, installed before RelStorage opens its connections); a
ROLLBACK codx-db sends without waiting for its reply is counted apart, as pipelined.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

CHILD = """
import json, sys
from bench.pg import hidden_commits, install_relstorage_counter, pipelined, roundtrips
install_relstorage_counter()
import transaction
from db.database import Database
from db.models import USERS_KEY
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB

database = Database(CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=sys.argv[1]))
users = UserDB(database)
users.create(username="alice")
users.get("alice")  # warm the caches

n = 50
before, sent = roundtrips(), pipelined()
for _ in range(n):
    users.get("alice")
ours = (roundtrips() - before) / n
ours_pipelined = (pipelined() - sent) / n

before, hidden = roundtrips(), hidden_commits()
for i in range(20):
    users.update("alice", full_name=f"name {i}")
write = (roundtrips() - before) / 20
write_hidden = (hidden_commits() - hidden) / 20

zodb = database.open()
before, sent = roundtrips(), pipelined()
for _ in range(n):
    with zodb.transaction() as conn:  # the naive way: ZODB.DB.transaction()
        conn.root()[USERS_KEY].find_by_username("alice").username
naive = (roundtrips() - before) / n + (pipelined() - sent) / n
database.close()
counts = {"ours": ours, "ours_pipelined": ours_pipelined, "naive": naive}
print(json.dumps({**counts, "write": write, "write_hidden": write_hidden}))
"""


@pytest.mark.postgres
def test_a_read_only_unit_of_work_costs_the_fewest_round_trips(pg_dsn: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, pg_dsn], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    print(counts)
    # One message, BEGIN + the poll for invalidations, waited for; then a ROLLBACK whose reply
    # is read only before the next statement (db/pg_roundtrips.py). psycopg2's own way costs three.
    assert counts["ours"] == 1
    assert counts["ours_pipelined"] == 1
    assert counts["naive"] >= counts["ours"] + counts["ours_pipelined"] + 3
    # A write: the poll, then RelStorage's store protocol without the SET lock_timeout + COMMIT
    # it used to repeat each time, with BEGIN in the COPY's message and no second COMMIT after
    # the hidden one (db/pg/store_temps.py): BEGIN + COPY, lock objects, lock and move + COMMIT.
    # The counter sees the second COMMIT psycopg2 would send (bench/pg.py, counted apart as hidden).
    assert counts["write_hidden"] == 0
    assert counts["write"] == 4


PAGE_CHILD = """
import json, random, sys
from bench.pg import install_relstorage_counter, roundtrips
install_relstorage_counter()
from db.database import Database
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB

settings = CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=sys.argv[1])
writer = Database(settings)
# Names in shuffled order: ids grow with time, so a page in name order names ids all over
# the users index (as in a database filled over months), not one run of neighbouring ids.
names = [f"user{i:04d}" for i in range(300)]
random.Random(8).shuffle(names)
UserDB(writer).import_users({"username": name} for name in names)
writer.close()

reader = Database(settings)  # a new storage: its caches are cold
users = UserDB(reader)
users.count()
before = roundtrips()
page = users.list(offset=100, limit=50)
trips = roundtrips() - before
assert [u.username for u in page] == [f"user{i:04d}" for i in range(100, 150)]
reader.close()
print(json.dumps({"trips": trips}))
"""


@pytest.mark.postgres
def test_a_cold_page_loads_its_users_in_one_query(pg_dsn: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PAGE_CHILD, pg_dsn], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    trips = json.loads(result.stdout.strip().splitlines()[-1])["trips"]
    print(trips)
    # The poll, the username index buckets on the way to offset 100, the users index's levels
    # above the page's 50 ids (one prefetch per level, db/users/listing.py), one prefetch for the
    # 50 users: without the prefetches each would be a round trip of its own.
    assert trips < 20, trips  # 17 here; 35 without the users index prefetch; 13 at generation 7
