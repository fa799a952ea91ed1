"""What a command gives back to the CLI: a typed result to render, and whether it succeeded.

Commands never print and never exit: the CLI renders the result (``db/cli/render.py``) on
stdout and turns ``ok`` into the exit code, so a failed check or copy still prints its whole
report (the only document on stdout with ``--json``) and then exits 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from db.errors import CodxDBError
from db.ops.reports import CheckReport, RepairReport
from db.users.schemas import CodxUser


class CommandError(CodxDBError):
    """A problem with what was asked on the command line (exit 1, one line)."""


class UsageError(CommandError):
    """The command line itself is incomplete (exit 2, like argparse's own errors)."""


@dataclass
class Outcome:
    """A command's result; ``ok=False`` exits 1 after the result is printed."""

    result: Any
    ok: bool = True


@dataclass
class Message:
    """A short confirmation (``deleted: alice``): one ``key: value`` line per entry."""

    fields: dict[str, Any]


@dataclass
class UserList:
    """A page of users (a table); ``more``: users follow the page (the text says how to see them)."""

    users: list[CodxUser]
    more: bool = False


@dataclass
class RevisionList:
    """Past versions of a user, newest first."""

    revisions: list[Any]


@dataclass
class CheckResult:
    """A check or repair report, with the location it is about."""

    location: str
    report: CheckReport | RepairReport
