"""Plain-text tables of a run (ratios first), from its JSON-shaped report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.systems import BASELINE
from bench.workload import BULK, DESCRIPTIONS, OPERATIONS

ROWS = (*OPERATIONS, BULK)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    """Columns separated by two spaces; ``align`` has an ``l`` or ``r`` per column (default: ``lrrr...``)."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    align = align or "l" + "r" * (len(headers) - 1)
    lines = []
    for n, row in enumerate([headers, *rows]):
        cells = [str(c).ljust(widths[i]) if align[i] == "l" else str(c).rjust(widths[i]) for i, c in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _rate(report: dict[str, Any], system: str, op: str) -> float | None:
    found = report["systems"].get(system)
    if not found or found.get("error") or op not in found["results"]:
        return None
    return float(found["results"][op]["ops_per_s"])


def _fmt_rate(rate: float | None) -> str:
    if rate is None:
        return "-"
    return f"{rate:,.0f}" if rate >= 10 else f"{rate:.1f}"


def ratio_table(report: dict[str, Any]) -> str:
    """codx-db ops/s divided by each other system's, same storage (> 1: codx-db is faster)."""
    others = [s for s in report["systems"] if not s.startswith("codx-")]
    headers = ["codx-db / system", *[f"{s} ({BASELINE[s].removeprefix('codx-')})" for s in others]]
    rows = []
    for op in ROWS:
        row = [op]
        for system in others:
            mine, theirs = _rate(report, BASELINE[system], op), _rate(report, system, op)
            row.append("-" if mine is None or not theirs else f"{mine / theirs:.2f}x")
        rows.append(row)
    return table(headers, rows)


def rate_table(report: dict[str, Any]) -> str:
    """Operations per second (bulk: users per second) of every system."""
    systems = list(report["systems"])
    rows = [[op, *[_fmt_rate(_rate(report, s, op)) for s in systems]] for op in ROWS]
    return table(["ops/s", *systems], rows)


def roundtrip_table(report: dict[str, Any]) -> str | None:
    """SQL round trips per operation of the PostgreSQL systems."""
    systems = [
        s
        for s, found in report["systems"].items()
        if not found.get("error") and any(r.get("roundtrips") is not None for r in found["results"].values())
    ]
    if not systems:
        return None
    rows = []
    for op in ROWS:
        row = [op]
        for system in systems:
            found = report["systems"][system]["results"].get(op, {})
            per_op = found.get("roundtrips_per_op")
            piped = found.get("pipelined_per_op") or 0
            hidden = found.get("hidden_commits_per_op") or 0
            cell = "-" if per_op is None else f"{per_op:.2f}"
            cell += f" ({hidden:.2f}h)" if hidden >= 0.005 else ""
            row.append(cell + (f" +{piped:.2f}p" if piped >= 0.005 else ""))
        rows.append(row)
    return table(["SQL round trips/op", *systems], rows)


def system_notes(report: dict[str, Any]) -> str:
    rows = []
    for name, found in report["systems"].items():
        if found.get("error"):
            rows.append([name, "ERROR", found["error"], "", ""])
            continue
        rows.append(
            [
                name,
                found["description"],
                f"{found['populate_seconds']:.2f}",
                f"{found['open_seconds'] * 1000:.0f}",
                f"{found['peak_rss_mb']:.0f}",
            ]
        )
    return table(["system", "what", "populate s", "reopen ms", "peak RSS MB"], rows, "llrrr")


def concurrency_table(report: dict[str, Any]) -> str | None:
    found = report.get("concurrency")
    if not found:
        return None
    rows = []
    for system, r in found.items():
        if "error" in r:
            rows.append([system, "ERROR: " + r["error"], "", "", ""])
            continue
        each = " + ".join(f"{x:,.0f}" for x in r["two_each"])
        rows.append([system, f"{r['one']:,.0f}", f"{r['two']:,.0f} ({each})", f"{r['ratio']:.2f}x", str(r["retries"])])
    return table(["creates/s", "1 process", "2 processes (each)", "2 / 1", "conflict retries"], rows)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def matrix_table(report: dict[str, Any]) -> str | None:
    """The concurrency matrix: one row per system and cell, then retries and give-ups by class."""
    found = report.get("matrix")
    if not found:
        return None
    rows, notes = [], []
    for system, data in found["systems"].items():
        if data.get("error"):
            rows.append([system, *["-"] * 8, "ERROR: " + data["error"]])
            continue
        for c in data["cells"]:
            cell = f"{c['processes']} x {c['threads']}"
            if "error" in c:
                rows.append([system, cell, str(c["processes"] * c["threads"]), *["-"] * 6, "ERROR: " + c["error"]])
                continue
            check = c["check"]
            verdict = "ok" if check["ok"] else f"FAILED: missing {check['missing']}, count {check['count']:,}"
            if not check["ok"]:
                verdict += f" vs {check['expected']:,}"
            if check.get("consistency_ok") is False:
                verdict += f"; {check['consistency']}"
            if check["failed_present"]:
                verdict += f" ({check['failed_present']} given up yet stored)"
            per_1000 = c.get("retries_per_1000")
            rows.append(
                [
                    system,
                    cell,
                    str(c["writers"]),
                    f"{c['creates_per_s']:,.0f}",
                    f"{c['ratio']:.2f}x" if "ratio" in c else "-",
                    f"{c['retries']}" + (f" ({per_1000:.0f}/1k)" if per_1000 is not None else ""),
                    str(c["errors"]),
                    f"{c['batch_mean']:.1f}" if c.get("batch_mean") is not None else "n/a",
                    f"{c['acknowledged']:,}",
                    verdict,
                ]
            )
            if c["retries_all_rounds"]:
                notes.append(f"  {system} {cell} retries (all rounds): {_counts(c['retries_all_rounds'])}")
            if c["errors_by_class"]:
                notes.append(f"  {system} {cell} GIVE-UPS: {_counts(c['errors_by_class'])}")
                for name, message in c.get("error_samples", {}).items():
                    notes.append(f"    first {name}: {message}")
            if c.get("close_errors"):
                failed, first = len(c["close_errors"]), c["close_errors"][0]
                notes.append(f"  {system} {cell}: closing failed after the round in {failed} process(es): {first}")
            if c.get("pool_warnings"):
                warned = c["pool_warnings"]
                notes.append(f"  {system} {cell}: ZODB warned {warned} times: more connections open than its pool")
    headers = [
        "system",
        "procs x threads",
        "writers",
        "creates/s",
        "vs 1x1",
        "retries (per 1k creates)",
        "give-ups",
        "batch mean",
        "acknowledged",
        "check",
    ]
    return "\n".join([table(headers, rows, "llrrrrrrrl"), *notes])


def scaling_table(report: dict[str, Any]) -> str | None:
    found = report.get("scaling")
    if not found:
        return None
    rows = []
    for storage, sizes in found.items():
        for row in sizes:
            if row.get("error"):
                rows.append([storage, f"{row['users']:,}", "ERROR: " + row["error"], *[""] * 7])
                continue
            us = row["us_per_op"]
            rows.append(
                [
                    storage,
                    f"{row['users']:,}",
                    f"{us['get']:,.0f}",
                    f"{us['get_by_email']:,.0f}",
                    f"{us['page']:,.0f}",
                    f"{us['page_after']:,.0f}" if "page_after" in us else "-",
                    f"{row['open_seconds']:.2f}",
                    f"{_before_offset_pages(row):.0f} / {row['peak_rss_mb']:.0f}",
                    f"{row['store_mb']:,.0f}" if row.get("store_mb") is not None else "-",
                    f"{row['filled'] / row['populate_seconds']:,.0f}" if row.get("populate_seconds") else "-",
                ]
            )
    headers = [
        "storage",
        "users",
        "get us",
        "email us",
        "page us",
        "after= us",
        "open s",
        "peak RSS MB before / after offset pages",
        "store MB",
        "fill/s",
    ]
    return table(headers, rows)


def _before_offset_pages(row: dict[str, Any]) -> float:
    after = row.get("peak_rss_after_mb", {})
    return float(after.get("page_after", after.get("get_by_email", 0)))


def targets_table(report: dict[str, Any]) -> str:
    rows = [[t["status"], t["target"], t["measured"], t["note"]] for t in report["targets"]]
    return table(["status", "target", "measured", "note"], rows, "llll")


def render(report: dict[str, Any]) -> str:
    """The whole run as text."""
    meta, config = report["meta"], report["config"]
    parts = [
        "codx-db benchmark",
        f"  {meta['when']}  python {meta['python']}  {meta['cpus']} CPUs  {meta['postgres']}",
        f"  codx-db tree: {meta['git']}; 1-min load average {meta['load_start']:.1f} at start,"
        f" {meta.get('load_end', 0):.1f} at end",
        f"  population {config['users']:,} users; bulk {config['bulk']:,} in batches of {config['batch']:,};"
        f" up to {config['seconds']}s or {config['max_ops']:,} ops per operation; seed {config['seed']}",
        "  Users are created WITHOUT a password: argon2id hashing costs ~20 ms per user by design and",
        "  would dominate every create. Each system runs in its own process on fresh stores;",
        "  every PostgreSQL system gets its own fresh database on the same server.",
    ]
    if config.get("pg_settings"):
        parts.append(f"  PostgreSQL settings of the benchmark databases: {config['pg_settings']}")
    if config.get("codx_settings"):
        parts.append(f"  codx-db settings overrides: {config['codx_settings']}")
    if report["systems"]:
        parts += ["", "Ratios: codx-db ops/s / system ops/s on the same storage (> 1: codx-db is faster)"]
        parts.append(ratio_table(report))
        parts += ["", "Throughput (ops/s; get_many: gets/s; bulk: users/s)", rate_table(report)]
        trips = roundtrip_table(report)
        if trips:
            parts += [
                "",
                "SQL round trips per operation (client side: BEGIN, statements, COMMIT/ROLLBACK)",
                trips,
                "  +Np: statements sent without waiting for their reply (codx-db's ROLLBACK after a read)",
                "  (Nh): of the waited ones, COMMITs psycopg2 sends after RelStorage's COMMIT inside the move's",
                '        message (the server already committed: "no transaction in progress")',
            ]
        parts += ["", system_notes(report)]
        parts += ["", "Operations:"] + [f"  {op:13s} {DESCRIPTIONS[op]}" for op in ROWS]
    floor = report.get("floor")
    if floor and "error" not in floor:
        one, three = floor["one_roundtrip"], floor["three_roundtrips"]
        parts += [
            "",
            "PostgreSQL round-trip floor (psycopg2 alone, same server): a get as 1 statement "
            f"{one['ops_per_s']:,.0f}/s ({one['us_per_op']:.0f} us);",
            f"  as BEGIN + statement + ROLLBACK, as psycopg2 drives RelStorage, {three['ops_per_s']:,.0f}/s"
            f" ({three['us_per_op']:.0f} us): {floor['ratio']:.2f}x of the 1-statement get;",
        ]
        if "pipelined" in floor:
            piped = floor["pipelined"]
            parts.append(
                f"  as codx-db sends it (BEGIN in the statement's message, ROLLBACK not waited for) "
                f"{piped['ops_per_s']:,.0f}/s ({piped['us_per_op']:.0f} us): {floor['pipelined_ratio']:.2f}x."
            )
    conc = concurrency_table(report)
    if conc:
        parts += [
            "",
            f"Concurrent creates on PostgreSQL ({config['concurrency_seconds']}s per measurement,"
            f" on {config['users']:,} users)",
            conc,
        ]
    matrix = matrix_table(report)
    if matrix:
        m = report["matrix"]["config"]
        skipped = ", ".join(f"{p}x{t}" for p, t in m["skipped"])
        parts += [
            "",
            f"Concurrency matrix: creates on PostgreSQL, each system on a fresh database of {m['users']:,} users;"
            f" best of {m['rounds']} round(s) of {m['seconds']}s per cell",
            "  (retries, batch mean: best round; give-ups, acknowledged, check: all rounds"
            + (f"; skipped, over {m['max_writers']} writers: {skipped})" if skipped else ")"),
            matrix,
        ]
    scale = scaling_table(report)
    if scale:
        parts += ["", "Scaling (codx-db; time per operation in a fresh process per size, cold caches)", scale]
    parts += ["", "Targets (issue 6)", targets_table(report)]
    return "\n".join(parts)
