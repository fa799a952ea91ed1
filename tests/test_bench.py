"""The benchmark runs end to end (tiny sizes): it is how issue 6's figures are made.

Not a timing test: it checks that every system runs, that the report has its sections and
that the tuning run prints its table. The figures themselves come from full runs
(bench/README.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, PostgresServer

pytestmark = pytest.mark.postgres


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_a_tiny_benchmark_run_reports_every_system(pg_server: PostgresServer, tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    result = _run(
        "bench",
        "--systems", "codx-file,codx-pg,zodb-file,zodb-pg,psycopg2",
        "--users", "200", "--bulk", "300", "--batch", "100",
        "--seconds", "0.05", "--max-ops", "20", "--concurrency-seconds", "0.5", "--no-matrix",
        "--pg-dsn", pg_server.admin_dsn, "--json", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for heading in ("Ratios:", "Throughput", "SQL round trips per operation", "round-trip floor", "Targets"):
        assert heading in result.stdout, heading
    report = json.loads(out.read_text())
    for system in ("codx-file", "codx-pg", "zodb-file", "zodb-pg", "psycopg2"):
        found = report["systems"][system]
        assert not found.get("error"), (system, found.get("error"))
        assert found["results"]["get"]["ops"] > 0
    # codx-db's reads wait for one round trip and pipeline their ROLLBACK (db/pg_roundtrips.py).
    get = report["systems"]["codx-pg"]["results"]["get"]
    assert get["roundtrips_per_op"] == pytest.approx(1.0) and get["pipelined_per_op"] == pytest.approx(1.0)


def _matrix_systems() -> list[str]:
    import importlib.util

    # sqlalchemy is a [bench] extra: the matrix runs it when it is installed.
    return ["codx-pg", "zodb-pg"] + (["sqlalchemy"] if importlib.util.find_spec("sqlalchemy") else [])


def test_a_tiny_matrix_reports_every_cell_checked(pg_server: PostgresServer, tmp_path: Path) -> None:
    out = tmp_path / "matrix.json"
    systems = _matrix_systems()
    result = _run(
        "bench", "--matrix-only", "--matrix-processes", "1", "--matrix-threads", "1,2",
        "--matrix-seconds", "0.5", "--matrix-rounds", "2", "--matrix-users", "200",
        "--matrix-systems", ",".join(systems), "--pg-dsn", pg_server.admin_dsn, "--json", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Concurrency matrix" in result.stdout and "8 threads >= 3x 1 thread" in result.stdout
    report = json.loads(out.read_text())
    assert report["systems"] == {}  # --matrix-only: no per-operation run
    seeded = report["matrix"]["config"]["users"]
    for system in systems:
        found = report["matrix"]["systems"][system]
        assert not found.get("error"), (system, found)
        cells = {(c["processes"], c["threads"]): c for c in found["cells"]}
        assert set(cells) == {(1, 1), (1, 2)}, (system, found["cells"])
        for cell in found["cells"]:
            assert "error" not in cell, (system, cell)
            assert cell["errors"] == 0 and cell["errors_by_class"] == {}, (system, cell)
            assert cell["acknowledged"] > 0 and cell["creates_per_s"] > 0
            check = cell["check"]
            # Each round runs on its own copy of the seeded database: the seed plus its own creates
            # (the check shows the last round's figures when every round passed).
            added = check["acknowledged"] + check["failed_present"]
            assert check["rounds"] == 2 and 0 < check["acknowledged"] < cell["acknowledged"], (system, check)
            assert check["missing"] == 0 and check["count"] == check["expected"] == seeded + added, (system, check)
            assert check["ok"] and check["consistency_ok"] is not False, (system, check)
        assert cells[(1, 1)]["ratio"] == pytest.approx(1.0)
        assert "ratio" in cells[(1, 2)]
    # codx-db's own check ran on its database after each cell.
    assert all(c["check"]["consistency_ok"] is True for c in report["matrix"]["systems"]["codx-pg"]["cells"])
    statuses = {t["target"]: t["status"] for t in report["targets"]}
    assert statuses["no give-ups (errors after retries) in any cell (codx-pg)"] == "MET"
    assert statuses["PG creates: 4 processes >= 1.5x 1 process (codx-pg)"] == "NOT MEASURED"
    assert statuses["PG create (single writer) >= 1.5x raw ZODB on RelStorage"] in ("MET", "NOT MET")


def test_the_matrix_check_finds_a_missing_acknowledged_user(pg_dsn: str) -> None:
    from bench.matrix_store import check, seed
    from bench.workload import user

    assert seed("codx-pg", pg_dsn, {}, 50) == 50
    stored, ghost = user(3).username, "never-created"
    found = check("codx-pg", pg_dsn, {}, [stored, ghost], [user(4).username, "given-up"])
    assert (found["missing"], found["missing_first"], found["count"]) == (1, [ghost], 50)
    assert found["failed_present"] == 1  # user 4 is stored although its writer was told it failed
    assert found["consistency_ok"] is True


def test_the_tuning_run_prints_its_table(pg_server: PostgresServer) -> None:
    result = _run("bench.tuning", "--users", "300", "--gets", "50", "--pg-dsn", pg_server.admin_dsn)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cold gets/s" in result.stdout and "db_cache_dir (second start)" in result.stdout


def test_the_truncate_sweep_prints_a_row_per_value(pg_server: PostgresServer) -> None:
    result = _run(
        "bench.truncate_sweep",
        "--rows", "1000,20", "--seconds", "0.5", "--rounds", "2", "--population", "100",
        "--pg-dsn", pg_server.admin_dsn,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith(("| 1000 |", "| 20 |"))]
    assert len(rows) == 2, result.stdout
    # 20 rows: a create copies ~6 objects in, so the tables are truncated every few creates;
    # 1,000 rows: once in ~150 creates. More truncations at 20 shows the value reached the writer.
    truncations = [int(row.rsplit("|", 2)[1]) for row in rows]
    assert truncations[1] > truncations[0], rows


def test_the_conflicts_run_names_what_concurrent_creates_met(pg_server: PostgresServer) -> None:
    result = _run(
        "bench.conflicts",
        "--processes", "1,2", "--seconds", "1", "--rounds", "1", "--population", "200",
        "--pg-dsn", pg_server.admin_dsn,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split("|") for line in result.stdout.splitlines() if line.startswith("| 1 |")]
    assert [row[2].strip() for row in rows] == ["1", "2"], result.stdout
    single = rows[0]
    assert int(single[3]) > 0 and float(single[4]) > 0  # creates/s, client CPU per create
    assert float(single[7]) == 0.0 and single[8].strip() == "-"  # one process: nothing to conflict with


# RelStorage's commit, as a plain psycopg2 client sends it (relstorage/adapters/postgresql/
# adapter.py): the move and COMMIT in one message, then conn.commit() to resync psycopg2.
_MOVE_AND_COMMIT = "SELECT set_config('rs.tid', '1', false); COMMIT; SELECT current_setting('rs.tid')"


def _sequence(dsn: str, autocommit: bool) -> tuple[int, int, list[str]]:
    from bench import pg

    conn = pg.connect(dsn, autocommit=autocommit)
    try:
        before, hidden = pg.roundtrips(), pg.hidden_commits()
        with conn.cursor() as cur:
            # Autocommit (how a store connection can avoid the second COMMIT): the client opens
            # the transaction itself, in the message of its first statement.
            cur.execute("BEGIN; SELECT 1" if autocommit else "SELECT 1")
            cur.execute(_MOVE_AND_COMMIT)
            assert cur.fetchone() == ("1",)
        conn.commit()
        return pg.roundtrips() - before, pg.hidden_commits() - hidden, list(conn.notices)
    finally:
        conn.close()


def test_the_counter_sees_the_commit_psycopg2_sends_after_a_commit_inside_a_statement(pg_dsn: str) -> None:
    trips, hidden, notices = _sequence(pg_dsn, autocommit=False)
    # The server's warning proves the second COMMIT went over the wire.
    assert any("no transaction in progress" in n for n in notices), notices
    assert (trips, hidden) == (4, 1)  # BEGIN, SELECT 1, move+COMMIT, the hidden COMMIT


def test_the_counter_counts_no_commit_when_psycopg2_sends_none(pg_dsn: str) -> None:
    trips, hidden, notices = _sequence(pg_dsn, autocommit=True)
    assert not any("no transaction in progress" in n for n in notices), notices
    assert (trips, hidden) == (2, 0)


def test_an_ordinary_commit_is_one_round_trip_and_not_hidden(pg_dsn: str) -> None:
    from bench import pg

    conn = pg.connect(pg_dsn)
    try:
        before, hidden = pg.roundtrips(), pg.hidden_commits()
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        conn.commit()
        conn.commit()  # nothing open: psycopg2 sends nothing
        conn.rollback()
        assert (pg.roundtrips() - before, pg.hidden_commits() - hidden) == (3, 0)
    finally:
        conn.close()


def test_a_cell_fails_when_any_round_fails_its_check() -> None:
    from bench.matrix_store import merge_checks

    good = {"ok": True, "missing": 0, "count": 510, "expected": 510, "failed_present": 0, "acknowledged": 10}
    bad = {"ok": False, "missing": 2, "count": 505, "expected": 507, "failed_present": 1, "acknowledged": 6}
    merged = merge_checks([good, bad, good])
    assert merged["ok"] is False and merged["rounds"] == 3
    # The failing round's own figures, which agree with each other; totals beside them.
    assert (merged["missing"], merged["count"], merged["expected"], merged["failed_present"]) == (2, 505, 507, 1)
    assert (merged["missing_all_rounds"], merged["failed_present_all_rounds"]) == (2, 1)
    totals = {"missing_all_rounds": 0, "failed_present_all_rounds": 0}
    assert merge_checks([good, good]) == {**good, **totals, "rounds": 2}
