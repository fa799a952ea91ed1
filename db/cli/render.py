"""The one place that turns a command's result into output: text for people, JSON for scripts.

``render_text`` and ``to_jsonable`` dispatch on the result's type (``functools.singledispatch``):
each result type has its own renderer, so no output is chosen by the shape of the data.

Tables and reports are written by hand rather than with Rich: their exact text (column
headers and widths, ``key:`` alignment, one problem per line) is what scripts and tests read,
and Rich would change it, add a dependency and an import cost to every command, and save
only a few dozen lines.
"""

from __future__ import annotations

import json
import shlex
import unicodedata
from functools import singledispatch
from typing import Any

from pydantic import BaseModel

from db.cli.results import CheckResult, Message, RevisionList, UserList
from db.display import capped, joined, plural, shorten
from db.importer import ImportReport
from db.ops.reports import (
    CheckReport,
    InfoReport,
    MigrationReport,
    PackReport,
    PendingStep,
    RepairReport,
    Report,
    TransferReport,
    Verification,
)
from db.users.schemas import CodxUser


def render(result: Any, as_json: bool) -> str:
    """The text the CLI prints on stdout for ``result``."""
    if as_json:
        return json.dumps(to_jsonable(result), indent=2, ensure_ascii=False)
    return "\n".join(render_text(result))


# -- JSON ---------------------------------------------------------------------------------------


@singledispatch
def to_jsonable(result: Any) -> Any:
    """A JSON-ready form of ``result``."""
    raise TypeError(f"no JSON rendering for {type(result).__name__}")


@to_jsonable.register
def _(result: Report) -> Any:
    return result.to_dict()


@to_jsonable.register
def _(result: ImportReport) -> Any:
    return result.to_dict()


@to_jsonable.register
def _(result: BaseModel) -> Any:
    return result.model_dump(mode="json")


@to_jsonable.register
def _(result: Message) -> Any:
    return result.fields


@to_jsonable.register
def _(result: UserList) -> Any:
    return [user.model_dump(mode="json") for user in result.users]


@to_jsonable.register
def _(result: RevisionList) -> Any:
    return [revision.model_dump(mode="json") for revision in result.revisions]


@to_jsonable.register
def _(result: CheckResult) -> Any:
    return {"location": result.location, **result.report.to_dict()}


# -- text ---------------------------------------------------------------------------------------


@singledispatch
def render_text(result: Any) -> list[str]:
    """The lines people read for ``result``."""
    raise TypeError(f"no text rendering for {type(result).__name__}")


@render_text.register
def _(result: Message) -> list[str]:
    return [f"{key}: {value}" for key, value in result.fields.items()]


@render_text.register
def _(result: InfoReport) -> list[str]:
    data = result.to_dict()
    per_process, allowed = data.pop("pg_connections_per_process", None), data.pop("pg_connections_allowed", None)
    lines = [f"{key}: {value}" for key, value in data.items()]
    if per_process is not None:
        server = "" if allowed is None else f" (the server allows {allowed} for this role, all processes together)"
        lines.append(f"PostgreSQL connections: up to {per_process} per process{server}")
    return lines


@render_text.register
def _(user: CodxUser) -> list[str]:
    lines = []
    for key, value in user.model_dump(mode="json").items():
        if key == "projects":
            # Up to a thousand projects: the first ones here, all of them with --json.
            value = joined(
                [f"{p['project_id']}={p['permissions']}{'' if p['children'] else ' (no children)'}" for p in value],
                what="(--json shows all)",
            )
        lines.append(f"{key:<13} {'' if value is None else value}")
    return lines


@render_text.register
def _(result: UserList) -> list[str]:
    users = result.users
    columns = ("username", "email", "full_name", "role", "is_active")
    headers = ("USERNAME", "EMAIL", "FULL NAME", "ROLE", "ACTIVE")
    rows = [[_cell(getattr(u, c)) for c in columns] for u in users]
    widths = [max([_width(h)] + [_width(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = [
        "  ".join(c + " " * (w - _width(c)) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [list(headers), *rows]
    ]
    count = f"{len(users)} user{'s' if len(users) != 1 else ''}"
    if result.more:
        last = users[-1].username
        count += f"; more follow: --after {shlex.quote(last)} for the next page, or a larger --limit"
    lines.append(f"({count})")
    return lines


@render_text.register
def _(result: RevisionList) -> list[str]:
    if not result.revisions:
        # What the CLI has always printed for an empty history (an empty user table); kept
        # byte for byte while the output is frozen.
        return render_text(UserList([]))
    lines = []
    for revision in result.revisions:
        by = f" by {revision.by}" if revision.by else ""
        lines.append(f"{revision.tid}  {revision.at.isoformat(timespec='microseconds')}{by}  {revision.description}")
        for name, (old, new) in revision.changes.items():
            lines.append(f"    {name}: {_literal(old)} -> {_literal(new)}")
    return lines


@render_text.register
def _(result: CheckResult) -> list[str]:
    outcome = result.report
    report = outcome.after if isinstance(outcome, RepairReport) else outcome
    lines: list[str] = []
    if isinstance(outcome, RepairReport):
        lines += _problem_lines("before repair", outcome.before)
        if outcome.repaired:
            lines.append(f"repaired ({len(outcome.fixed)} fixes):")
            lines += [f"  {line}" for line in capped(outcome.fixed)]
        elif outcome.before.problems:
            lines.append("not repaired: some problems need a person (see above); nothing was changed")
    lines += [
        f"database:   {result.location}",
        f"generation: {report.generation} (code {report.code_generation})",
        f"users: {report.users}  count: {report.count}  "
        f"username index: {report.username_entries}  email index: {report.email_entries}  "
        f"inactive index: {'-' if report.inactive_entries is None else report.inactive_entries}",
    ]
    lines += _problem_lines("problems", report)
    lines += [f"warning: {line}" for line in capped([f"{w.code}: {w.message}" for w in report.warnings])]
    if report.ok:
        lines.append("ok: no problems found")
    if report.behind:
        lines.append(
            f"the database is at generation {report.generation}, the code at {report.code_generation}: "
            "run `codx-db migrate --apply` (it also finishes an interrupted migration), then check again"
        )
    elif report.repairable:
        lines.append("run `codx-db check --repair` to rebuild the indexes")
    return lines


@render_text.register
def _(report: MigrationReport) -> list[str]:
    current = "new database" if report.current is None else report.current
    lines = [
        f"current generation: {current}",
        f"target generation:  {report.target} (minimum {report.minimum})",
    ]
    lines += _step_lines(report.pending, report.applied, report.dry_run)
    for other in report.packages:
        current = "new" if other.current is None else other.current
        lines.append(f"{other.package}: generation {current} -> {other.target}")
        lines += _step_lines(other.pending, other.applied, report.dry_run)
    pending = report.pending or any(other.pending for other in report.packages)
    applied = report.applied or any(other.applied for other in report.packages)
    if not pending:
        lines.append("up to date: nothing to do")
    elif not applied:
        lines.append("run `codx-db migrate --apply` to apply")
    return lines


def _step_lines(pending: list[PendingStep], applied: list[int], dry_run: bool) -> list[str]:
    lines = []
    for step in pending:
        done = "applied" if step.generation in applied else "pending"
        if dry_run and done == "applied":
            done = "ran (dry run, aborted)"
        lines.append(f"  {step.generation:>3}  {done:<8}  {step.description}")
    return lines


@render_text.register
def _(report: TransferReport) -> list[str]:
    lines = [
        f"{report.operation}:".ljust(14) + f"{report.source} -> {report.target}",
        f"copied:       {report.copied} {report.unit} in {report.seconds:.1f} s",
    ]
    if report.replaced is not None:
        lines.append(
            f"replaced:     a database at generation {report.replaced.get('generation')} "
            f"with {plural(report.replaced.get('users'), 'user')} (--force)"
        )
    return lines + render_text(report.verification)


@render_text.register
def _(verification: Verification) -> list[str]:
    lines = [
        f"generation:   source {verification.source_generation}, target {verification.target_generation}",
        f"users:        source {verification.source_users}, target {verification.target_users}",
        f"compared:     {verification.compared} users equal field by field (password hashes included)",
    ]
    if verification.as_of is not None:
        lines.append(
            f"snapshot:     transaction {verification.as_of}; "
            f"{verification.changed_since} users changed in the source since"
        )
    if verification.ok:
        lines.append("verified:     ok")
    else:
        lines.append(f"verified:     FAILED, {len(verification.differences)} differences:")
        lines.extend(f"  {difference}" for difference in verification.differences)
    return lines


@render_text.register
def _(report: PackReport) -> list[str]:
    return [
        f"packed:       {report.location} ({report.backend}, history older than {report.days:g} days)",
        f"size:         {_bytes(report.bytes_before)} -> {_bytes(report.bytes_after)}",
        f"records:      {report.records_before} -> {report.records_after}",
        f"took:         {report.seconds:.1f} s",
        *(f"note:         {note}" for note in report.notes),
    ]


@render_text.register
def _(report: ImportReport) -> list[str]:
    # The codx-junior import report still renders itself; its text moves here once the
    # importer's move to db/ops/ has landed.
    return report.lines()


# -- helpers ------------------------------------------------------------------------------------


def _problem_lines(title: str, report: CheckReport) -> list[str]:
    if not report.problems:
        return []
    shown = capped([f"{problem.code}: {problem.message}" for problem in report.problems])
    return [f"{title}: {len(report.problems)}", *(f"  {line}" for line in shown)]


def _width(text: str) -> int:
    """Terminal columns: East Asian wide characters take two (名前 is as wide as 'abcd')."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _literal(value: Any) -> str:
    # A changed project list can hold a thousand entries: `user get --json` shows them whole.
    return "-" if value is None else shorten(json.dumps(value, ensure_ascii=False))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _bytes(value: int | None) -> str:
    if value is None:
        return "unknown"
    if value < 10 * 1024:
        return f"{value} B"
    if value < 10 * 1024 * 1024:
        return f"{value / 1024:.1f} KiB"
    return f"{value / 1024 / 1024:.1f} MiB"
