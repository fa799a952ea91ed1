"""Crash test: kill -9 a process in the middle of a stream of commits, then verify the database.

    CODX_JUNIOR_DB_FILE_PATH=/tmp/crash/users.fs python scripts/crash.py --rounds 5
    CODX_JUNIOR_DB_BACKEND=postgres CODX_JUNIOR_DB_DSN='host=... dbname=...' python scripts/crash.py

Each round starts a writer process that commits without pause: single creates, pairs of
creates in one unit of work, and renames that also set an email. The writer prints a line
after each unit of work *returns* (flushed), so a printed line is a promise that the change
is durable. After ``--min-acks`` lines and a random extra moment the writer gets SIGKILL.
The database is then reopened and verified:

* every acknowledged change is there (creates, both halves of each pair, renames);
* nothing half-done is visible: a pair is both or neither, even the one in flight;
* nothing appears that was never attempted;
* ``codx-db check`` is clean.

Exit code 0 when every round passed, else 1. Settings come from the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run from a checkout without installing: the repository root wins over any installed codx-db.
sys.path.insert(0, str(ROOT))


def child(prefix: str) -> None:
    """The writer: commit forever, acknowledging each unit of work once it has returned."""
    from db import db
    from db.user_db import UserDB

    users = UserDB(db)
    db.open()
    print("ready", flush=True)
    i = 0
    while True:
        step = i % 3
        if step == 0:
            name = f"{prefix}-{i}"
            # Every fourth create hashes a password: a slower unit of work, other timings.
            users.create(username=name, password="crash-password" if i % 4 == 0 else None)
            print(f"create {name}", flush=True)
        elif step == 1:
            a, b = f"{prefix}-{i}-a", f"{prefix}-{i}-b"
            with db.transaction(note="crash pair"):
                users.create(username=a)
                users.create(username=b, email=f"{b}@example.com")
            print(f"pair {a} {b}", flush=True)
        else:
            old, new = f"{prefix}-{i - 2}", f"{prefix}-{i - 2}-r"
            users.update(old, username=new, email=f"{new}@example.com")
            print(f"rename {old} {new}", flush=True)
        i += 1


def one_round(index: int, min_acks: int, rng: random.Random) -> dict[str, Any]:
    """Start a writer, kill it mid-stream, verify what it acknowledged."""
    prefix = f"crash-{uuid.uuid4().hex[:6]}-{index}"
    writer = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--child", prefix],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None
    first = writer.stdout.readline().strip()
    if first != "ready":
        writer.kill()
        raise SystemExit(f"crash.py: the writer did not start: {first!r} {writer.communicate()[1][-2000:]}")
    lines: list[str] = []
    while len(lines) < min_acks:
        line = writer.stdout.readline()
        if not line:
            raise SystemExit(f"crash.py: the writer died by itself: {writer.communicate()[1][-2000:]}")
        lines.append(line.strip())
    # A random extra moment, so the kill lands anywhere in a unit of work: before, during
    # or after its commit.
    time.sleep(rng.uniform(0.0, 0.25))
    os.kill(writer.pid, signal.SIGKILL)
    rest, _ = writer.communicate(timeout=30)  # acknowledgements already in the pipe count
    lines += [line for line in rest.splitlines() if line.strip()]
    return {"round": index, "killed_after_acks": len(lines), **verify(prefix, lines)}


def verify(prefix: str, lines: list[str]) -> dict[str, Any]:
    """Reopen the database and compare it with the acknowledged lines."""
    from db.check import check
    from db.database import Database
    from db.settings import CodxJuniorGlobalSettings
    from db.user_db import UserDB

    began = time.perf_counter()
    database = Database(CodxJuniorGlobalSettings.load())
    try:
        database.open()
        reopen_seconds = time.perf_counter() - began
        users = UserDB(database)
        present = {u.username for u in _all_with_prefix(users, prefix)}
        expected: set[str] = set()
        gone: set[str] = set()
        pairs: list[tuple[str, str]] = []
        for line in lines:
            kind, *names = line.split()
            if kind == "create":
                expected.add(names[0])
            elif kind == "pair":
                expected.update(names)
                pairs.append((names[0], names[1]))
            elif kind == "rename":
                expected.discard(names[0])
                gone.add(names[0])
                expected.add(names[1])
        # The unit of work in flight when the writer died may or may not have committed;
        # if it did, it is visible whole (a committed in-flight rename replaces its old name).
        in_flight = _in_flight(prefix, len(lines))
        renamed_from = in_flight["renamed_from"]
        if renamed_from and in_flight["names"] <= present:
            expected.discard(renamed_from)
            gone.add(renamed_from)
            expected |= in_flight["names"]
        missing = sorted(expected - present)
        resurrected = sorted(gone & present)
        unexpected = sorted(present - expected - in_flight["names"])
        half = [p for p in pairs if (p[0] in present) != (p[1] in present)]
        a, b = in_flight["pair"] or ("", "")
        if in_flight["pair"] and (a in present) != (b in present):
            half.append((a, b))
        renamed_ok = all(
            (u := users.find(name)) is not None and u.email == f"{name}@example.com"
            for name in expected
            if name.endswith("-r")
        )
        report = check(database)
    finally:
        database.close()
    ok = not missing and not resurrected and not unexpected and not half and renamed_ok and report.ok
    return {
        "ok": ok,
        "acknowledged_users": len(expected),
        "present_users": len(present),
        "in_flight_committed": sorted(present & in_flight["names"]),
        "missing": missing,
        "resurrected": resurrected,
        "unexpected": unexpected,
        "half_pairs": half,
        "renames_complete": renamed_ok,
        "check_ok": report.ok,
        "check_problems": [f"{p.code}: {p.message}" for p in report.problems],
        "reopen_seconds": round(reopen_seconds, 3),
    }


def _all_with_prefix(users: Any, prefix: str) -> list[Any]:
    found: list[Any] = []
    while True:
        page = users.list(offset=len(found), limit=1000, prefix=prefix)
        found += page
        if len(page) < 1000:
            return found


def _in_flight(prefix: str, acked: int) -> dict[str, Any]:
    """Names the next (unacknowledged) unit of work would have written."""
    i = acked
    if i % 3 == 0:
        return {"names": {f"{prefix}-{i}"}, "pair": None, "renamed_from": None}
    if i % 3 == 1:
        pair = (f"{prefix}-{i}-a", f"{prefix}-{i}-b")
        return {"names": set(pair), "pair": pair, "renamed_from": None}
    return {"names": {f"{prefix}-{i - 2}-r"}, "pair": None, "renamed_from": f"{prefix}-{i - 2}"}


def main(argv: list[str] | None = None) -> int:
    """Run the rounds and print the report; exit 1 if any round failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="writers to kill (default 3)")
    parser.add_argument("--min-acks", type=int, default=30, help="acknowledged units before the kill (default 30)")
    parser.add_argument("--seed", type=int, default=None, help="random seed of the kill moments")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--child", metavar="PREFIX", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    from db.settings import CodxJuniorGlobalSettings

    settings = CodxJuniorGlobalSettings.load()
    rng = random.Random(args.seed)
    rounds = [one_round(i, args.min_acks, rng) for i in range(args.rounds)]
    report = {
        "backend": settings.kind,
        "rounds": len(rounds),
        "ok": all(r["ok"] for r in rounds),
        "acknowledged_users": sum(r["acknowledged_users"] for r in rounds),
        "missing": sum(len(r["missing"]) for r in rounds),
        "half_pairs": sum(len(r["half_pairs"]) for r in rounds),
        "in_flight_committed": sum(len(r["in_flight_committed"]) > 0 for r in rounds),
        "details": rounds,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report)
    return 0 if report["ok"] else 1


def _print(report: dict[str, Any]) -> None:
    print(f"crash: {report['rounds']} writers killed with SIGKILL on {report['backend']}")
    for r in report["details"]:
        flight = "committed" if r["in_flight_committed"] else "not committed"
        print(
            f"  round {r['round']}: killed after {r['killed_after_acks']} acknowledged units; "
            f"{r['acknowledged_users']} acknowledged users, {len(r['missing'])} missing, "
            f"{len(r['half_pairs'])} half pairs, in-flight unit {flight}; reopen {r['reopen_seconds']} s; "
            f"check {'clean' if r['check_ok'] else 'PROBLEMS'}"
        )
        for key in ("missing", "resurrected", "unexpected", "half_pairs", "check_problems"):
            if r[key]:
                print(f"    {key}: {r[key]}")
    print("result: " + ("ok" if report["ok"] else "FAILED"))


if __name__ == "__main__":
    sys.exit(main())
