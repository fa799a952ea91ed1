"""A create after another process's writes loads its stale index buckets in one query, not one each.

Every create reads and writes a bucket of ``by_username``, ``by_email`` and ``by_skeleton``. When
other processes write the same database, the buckets a create needs were often changed there since
this process cached them: ZODB turns them into ghosts and loaded each one when first touched, a
round trip apiece (measured with two processes creating at once: 2.9 loads per create, ~0.45 ms of
each create). ``repository.add`` now finds those buckets (and its ``users`` bucket and count shard)
from the cached internal nodes first and asks RelStorage for all the ghosts in one query
(``Connection.prefetch``).

Counted, not timed, as in tests/test_roundtrips.py: every statement psycopg2 sends is a round trip.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.postgres

CHILD = """
import json, subprocess, sys
from bench.pg import RoundTrips, install_relstorage_counter
install_relstorage_counter()
from db.database import Database
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB
from db.users.models import USERS_KEY

def open_db():
    return Database(CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=sys.argv[1]))

# The other process stands for one long-lived worker: the same id prefix in every run (a new
# process would add its own partition of the users index each time, a change every process reads
# once; a worker does that at its first create only, done in "warm-other" below).
SAME_WORKER = "import os; from db.users import repository; repository._id_prefix = (os.getpid(), '5a5a'); "
OTHER = SAME_WORKER + (
    "import sys; from db.database import Database; from db.settings import CodxJuniorGlobalSettings; "
    "from db.user_db import UserDB; d = Database(CodxJuniorGlobalSettings.load(db_backend='postgres', "
    "db_dsn=sys.argv[1])); UserDB(d).create(username=sys.argv[2], email=sys.argv[2] + '@example.com'); d.close()"
)
MANY = SAME_WORKER + (
    "import sys; from db.database import Database; from db.settings import CodxJuniorGlobalSettings; "
    "from db.user_db import UserDB; d = Database(CodxJuniorGlobalSettings.load(db_backend='postgres', "
    "db_dsn=sys.argv[1])); UserDB(d).import_users({'username': f'{sys.argv[2]}{i:02d}', "
    "'email': f'{sys.argv[2]}{i:02d}@example.com'} for i in range(40)); d.close()"
)
other = OTHER if sys.argv[2] == "one" else MANY
here = open_db()
users = UserDB(here)
users.import_users({"username": f"seed{i:04d}", "email": f"seed{i:04d}@example.com"} for i in range(900))
for i in range(0, 900, 7):
    users.get(f"seed{i:04d}")  # this process caches the indexes
subprocess.run([sys.executable, "-c", other, sys.argv[1], "warm-other"], check=True)
users.create(username="warm", email="warm@example.com")
loads = []
for n in range(6):
    # Another process writes next to the keys this one will write: username, email and
    # look-alike keys land in the same buckets, now stale here.
    key = f"seed{100 * n + 50:04d}"
    subprocess.run([sys.executable, "-c", other, sys.argv[1], key + "b"], check=True)
    RoundTrips.log = []
    users.create(username=key + "a", email=key + "a@example.com")
    trips = RoundTrips.log
    RoundTrips.log = None
    # Loads only: a lazy load of one object, or a prefetch of several (new oids, a separate COPY
    # when the store's first message carried something else, are not loads).
    loads.append(sum(t.trips for t in trips if "load_current" in t.what or "WHERE zoid = ANY" in t.what))

def levels(tree):
    # Levels of internal nodes from the root down to the buckets (the tree object is the first);
    # a partitioned index (generation 7): its deepest partition.
    if hasattr(tree, "parts"):
        return max(levels(part) for part in tree.parts.values())
    count, node = 0, tree
    while type(node) is type(tree):
        state = node.__getstate__()
        if state is None or (len(state[0]) == 1 and type(state[0][0]) is tuple):
            break  # empty, or its only bucket inline
        count, node = count + 1, state[0][0]
    return count

with here.transaction() as uow:
    container = uow.root[USERS_KEY]
    depth = max(levels(container.by_username), levels(container.by_email), levels(container.by_skeleton))
here.close()
print(json.dumps({"loads": loads, "depth": depth}))
"""


def _loads(pg_dsn: str, other: str = "one") -> tuple[list[int], int]:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, pg_dsn, other], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    return found["loads"], found["depth"]


def test_stale_buckets_of_a_create_load_in_one_query(pg_dsn: str) -> None:
    loads, _ = _loads(pg_dsn)
    print(loads)
    # Before: 3-4 loads per create (one per stale bucket). Now one query for them all; a
    # second only for an internal node a split in the other process changed (none here).
    assert loads == [1] * len(loads), loads


def test_stale_internal_nodes_of_a_create_load_a_level_at_a_time(pg_dsn: str) -> None:
    # The other process writes 40 users beside the keys this one will write: buckets there
    # split, so the internal nodes above them changed too, in by_username, by_email and
    # by_skeleton (and sometimes the root above those). Each stale internal node was loaded
    # alone on the way down: 4 to 7 loads per create before. Now the ghosts of one level load
    # together: at most one query per level of internal nodes (measured in the child: two here,
    # the root and one below, ~940 users in buckets of up to 30 under nodes of up to 16) and one
    # for the buckets.
    loads, depth = _loads(pg_dsn, "many")
    print(loads, depth)
    assert depth >= 2, depth  # the old way loads the stale nodes of 3 trees on one level alone
    assert max(loads) <= depth + 1, (loads, depth)
    assert min(loads) >= 2, loads  # the scenario did make internal nodes stale
