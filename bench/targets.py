"""The targets of issue 6, each checked against figures measured in the same run.

Targets read the run's JSON-shaped report (``report["systems"][name]["results"][op]["ops_per_s"]``
and friends), so a saved ``--json`` file can be checked again without re-running anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

MET = "MET"
NOT_MET = "NOT MET"
NOT_MEASURED = "NOT MEASURED"


@dataclass
class TargetResult:
    """One target: what was asked, what was measured, and the verdict."""

    target: str
    measured: str
    status: str
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rate(report: dict[str, Any], system: str, op: str) -> float | None:
    found = report.get("systems", {}).get(system)
    if not found or found.get("error"):
        return None
    result = found["results"].get(op)
    return None if result is None else float(result["ops_per_s"])


def _ratio_target(report: dict[str, Any], label: str, system: str, other: str, op: str, minimum: float) -> TargetResult:
    mine, theirs = _rate(report, system, op), _rate(report, other, op)
    if mine is None or theirs is None or theirs == 0:
        return TargetResult(label, "-", NOT_MEASURED, f"needs {system} and {other} in --systems")
    ratio = mine / theirs
    return TargetResult(
        label,
        f"{ratio:.2f}x ({mine:,.0f} vs {theirs:,.0f} ops/s)",
        MET if ratio >= minimum else NOT_MET,
    )


def _rate_target(report: dict[str, Any], label: str, system: str, op: str, minimum: float) -> TargetResult:
    rate = _rate(report, system, op)
    if rate is None:
        return TargetResult(label, "-", NOT_MEASURED, f"needs {system} in --systems")
    return TargetResult(label, f"{rate:,.0f}/s", MET if rate >= minimum else NOT_MET)


def comparison_targets(report: dict[str, Any]) -> list[TargetResult]:
    """Targets on the side-by-side run (per-operation and bulk figures)."""
    users = report.get("config", {}).get("users", 0)
    vs_psycopg2 = _ratio_target(
        report, "PG get (own unit of work) >= 0.6x raw psycopg2", "codx-pg", "psycopg2", "get", 0.6
    )
    floor = report.get("floor", {})
    if "ratio" in floor:
        vs_psycopg2.note = (
            f"floor: BEGIN+poll in one message, ROLLBACK pipelined = {floor.get('pipelined_ratio', 0):.2f}x of"
            f" 1 statement (psycopg2's own 3 round trips: {floor['ratio']:.2f}x)"
        )
    results = [
        _ratio_target(report, "PG get (own unit of work) >= 2x SQLAlchemy ORM", "codx-pg", "sqlalchemy", "get", 2.0),
        vs_psycopg2,
    ]
    for op in ("create", "update", "delete"):
        results.append(_ratio_target(report, f"PG {op} >= 1.2x raw ZODB on RelStorage", "codx-pg", "zodb-pg", op, 1.2))
    for op in ("create", "update", "delete"):
        found = _ratio_target(report, f"PG {op} vs raw psycopg2 (report only)", "codx-pg", "psycopg2", op, 0.0)
        if found.status == MET:
            found.status = "INFO"
        results.append(found)
    results += [
        _ratio_target(report, "file get (own unit of work) >= 0.5x raw ZODB", "codx-file", "zodb-file", "get", 0.5),
        _rate_target(report, "file gets inside one unit of work >= 150k/s", "codx-file", "get_many", 150_000),
        _ratio_target(report, "file create >= 0.8x raw ZODB on FileStorage", "codx-file", "zodb-file", "create", 0.8),
    ]
    tiny = _ratio_target(
        report, f"file create >= 50x TinyDB (at {users:,} users)", "codx-file", "tinydb", "create", 50.0
    )
    if users != 10_000 and tiny.status != NOT_MEASURED:
        tiny.note = "the target is stated at 10,000 users; this run used --users " + f"{users:,}"
    results += [
        tiny,
        _rate_target(report, "bulk import >= 30k users/s on file", "codx-file", "bulk", 30_000),
        _rate_target(report, "bulk import >= 15k users/s on PostgreSQL", "codx-pg", "bulk", 15_000),
    ]
    return results


def concurrency_targets(report: dict[str, Any]) -> list[TargetResult]:
    """PostgreSQL, two processes creating at once: aggregate >= 1.5x one process."""
    label = "PG two processes creating: aggregate >= 1.5x one process"
    found = report.get("concurrency", {}).get("codx-pg")
    if not found:
        return [TargetResult(label, "-", NOT_MEASURED, "needs codx-pg and the concurrency step")]
    ratio = found["ratio"]
    return [
        TargetResult(
            label,
            f"{ratio:.2f}x ({found['two']:,.0f} vs {found['one']:,.0f} creates/s)",
            MET if ratio >= 1.5 else NOT_MET,
        )
    ]


def scaling_targets(report: dict[str, Any]) -> list[TargetResult]:
    """At the largest size: get and page within 2x of the smallest; memory; open time."""
    scaling = report.get("scaling")
    if not scaling:
        return [TargetResult("scaling targets (1M users)", "-", NOT_MEASURED, "run with --scaling")]
    results: list[TargetResult] = []
    for storage, rows in scaling.items():
        rows = [row for row in rows if not row.get("error")]
        if len(rows) < 2:
            continue
        small, large = rows[0], rows[-1]
        sizes = f"{large['users']:,} vs {small['users']:,} users"
        for op in ("get", "get_by_email", "page", "page_after"):
            if op not in large["us_per_op"]:
                continue
            slow = large["us_per_op"][op] / small["us_per_op"][op]
            results.append(
                TargetResult(
                    f"{storage}: {op} at {large['users']:,} within 2x of {small['users']:,}",
                    f"{slow:.2f}x ({large['us_per_op'][op]:,.0f} vs {small['us_per_op'][op]:,.0f} us)",
                    MET if slow <= 2.0 else NOT_MET,
                )
            )
        bound = large["rss_bound_mb"]
        after = large.get("peak_rss_after_mb", {})
        before_offset_pages = after.get("page_after", after.get("get_by_email"))
        note = large.get("rss_bound_note", "")
        if before_offset_pages is not None:
            note = f"{before_offset_pages:,.0f} MB before the offset pages; " + note
        results.append(
            TargetResult(
                f"{storage}: peak RSS at {large['users']:,} within the cache bound ({bound:,.0f} MB)",
                f"{large['peak_rss_mb']:,.0f} MB ({sizes}: {small['peak_rss_mb']:,.0f} MB)",
                MET if large["peak_rss_mb"] <= bound else NOT_MET,
                note,
            )
        )
        if storage == "file":
            results.append(
                TargetResult(
                    f"file: open the {large['users']:,}-user database <= 2 s",
                    f"{large['open_seconds']:.2f} s",
                    MET if large["open_seconds"] <= 2.0 else NOT_MET,
                )
            )
    return results


def _cell(report: dict[str, Any], system: str, processes: int, threads: int) -> dict[str, Any] | None:
    for c in report.get("matrix", {}).get("systems", {}).get(system, {}).get("cells", []):
        if c["processes"] == processes and c["threads"] == threads and "error" not in c:
            return c  # type: ignore[no-any-return]
    return None


def _scaling_target(report: dict[str, Any], label: str, cell: tuple[int, int], minimum: float) -> TargetResult:
    one, many = _cell(report, "codx-pg", 1, 1), _cell(report, "codx-pg", *cell)
    if one is None or many is None or not one["creates_per_s"]:
        wanted = f"needs the matrix with codx-pg cells 1x1 and {cell[0]}x{cell[1]}"
        return TargetResult(label, "-", NOT_MEASURED, wanted)
    ratio = many["creates_per_s"] / one["creates_per_s"]
    return TargetResult(
        label,
        f"{ratio:.2f}x ({many['creates_per_s']:,.0f} vs {one['creates_per_s']:,.0f} creates/s)",
        MET if ratio >= minimum else NOT_MET,
        f"retries {many['retries']} in the best round ({', '.join(sorted(many['retries_by_class'])) or 'none'})",
    )


def matrix_targets(report: dict[str, Any]) -> list[TargetResult]:
    """The concurrency matrix (docs/design/load.md §5): scaling, give-ups, correctness, single writer."""
    results = [
        _scaling_target(report, "PG creates: 2 processes >= 1.3x 1 process (codx-pg)", (2, 1), 1.3),
        _scaling_target(report, "PG creates: 4 processes >= 1.5x 1 process (codx-pg)", (4, 1), 1.5),
        _scaling_target(report, "PG creates: 8 threads >= 3x 1 thread, one process (codx-pg)", (1, 8), 3.0),
    ]
    systems = report.get("matrix", {}).get("systems", {})
    codx = systems.get("codx-pg", {})
    measured = [c for c in codx.get("cells", []) if "error" not in c]
    failed = [c for c in codx.get("cells", []) if "error" in c]
    label = "no give-ups (errors after retries) in any cell (codx-pg)"
    if not measured:
        results.append(TargetResult(label, "-", NOT_MEASURED, "needs the matrix with codx-pg"))
    else:
        given_up = [c for c in measured if c["errors"]]
        peers = [
            f"{name} {sum(c['errors'] for c in found.get('cells', []) if 'error' not in c)}"
            for name, found in systems.items()
            if name != "codx-pg"
        ]
        results.append(
            TargetResult(
                label,
                f"{sum(c['errors'] for c in measured)} in {len(measured)} cells"
                + (f" ({len(failed)} cells failed to run)" if failed else ""),
                MET if not given_up and not failed else NOT_MET,
                ("peers' give-ups: " + ", ".join(peers)) if peers else "",
            )
        )
    label = "every cell's check: acknowledged creates present, count exact, codx-db check clean"
    cells = [(name, c) for name, found in systems.items() for c in found.get("cells", []) if "error" not in c]
    if not cells:
        results.append(TargetResult(label, "-", NOT_MEASURED, "needs the matrix"))
    else:
        bad = [f"{name} {c['processes']}x{c['threads']}" for name, c in cells if not c["check"]["ok"]]
        results.append(
            TargetResult(
                label,
                f"{len(cells) - len(bad)} of {len(cells)} cells",
                MET if not bad else NOT_MET,
                ("failed: " + ", ".join(bad)) if bad else "",
            )
        )
    label = "PG create (single writer) >= 1.5x raw ZODB on RelStorage"
    mine, theirs = _cell(report, "codx-pg", 1, 1), _cell(report, "zodb-pg", 1, 1)
    if mine is not None and theirs is not None and theirs["creates_per_s"]:
        ratio = mine["creates_per_s"] / theirs["creates_per_s"]
        measured_text = f"{ratio:.2f}x ({mine['creates_per_s']:,.0f} vs {theirs['creates_per_s']:,.0f} creates/s)"
        results.append(TargetResult(label, measured_text, MET if ratio >= 1.5 else NOT_MET, "matrix 1x1 cells"))
    else:
        found = _ratio_target(report, label, "codx-pg", "zodb-pg", "create", 1.5)
        if found.status != NOT_MEASURED:
            found.note = "per-operation create (no matrix 1x1 cells)"
        else:
            found.note = "needs codx-pg and zodb-pg in the matrix or in --systems"
        results.append(found)
    return results


CHECKS: tuple[Callable[[dict[str, Any]], list[TargetResult]], ...] = (
    comparison_targets,
    concurrency_targets,
    matrix_targets,
    scaling_targets,
)


def evaluate(report: dict[str, Any]) -> list[TargetResult]:
    """Every target, in the order of the issue."""
    return [result for check in CHECKS for result in check(report)]
