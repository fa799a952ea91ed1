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
        "--seconds", "0.05", "--max-ops", "20", "--concurrency-seconds", "0.5",
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


def test_the_tuning_run_prints_its_table(pg_server: PostgresServer) -> None:
    result = _run("bench.tuning", "--users", "300", "--gets", "50", "--pg-dsn", pg_server.admin_dsn)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cold gets/s" in result.stdout and "db_cache_dir (second start)" in result.stdout
