"""The ``codx-db`` argument parser: one sub-command per operation, each naming its handler."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from db.actors import check_actor
from db.cli import commands as cmd
from db.display import shorten

# Pack times older than this are all the same (before any codx-db data), and still valid.
MAX_PACK_DAYS = 36_500


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (one sub-command per operation)."""
    parser = argparse.ArgumentParser(
        prog="codx-db",
        description="codx-db: the user database of codx-api (ZODB on a file or PostgreSQL).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks")
    parser.add_argument("--actor", type=_actor, help="who makes the changes, recorded in history (default: your login)")
    # The same options after a sub-command; SUPPRESS keeps a sub-parser's default from
    # overwriting a value given before the sub-command ("codx-db --json user list").
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser("info", parents=[common], help="backend, location, generation, users")
    info.set_defaults(handler=cmd.cmd_info, reads=True)

    check = commands.add_parser(
        "check", parents=[common], help="verify indexes, counts, generation; --repair rebuilds indexes"
    )
    check.add_argument("--repair", action="store_true", help="rebuild the indexes and count from the users")
    check.set_defaults(handler=cmd.cmd_check, reads=True)

    migrate = commands.add_parser("migrate", parents=[common], help="show pending generations; --apply runs them")
    mode = migrate.add_mutually_exclusive_group()
    mode.add_argument("--apply", action="store_true", help="run the pending steps")
    mode.add_argument("--dry-run", action="store_true", help="run the steps, then abort")
    migrate.add_argument("--to", type=int, metavar="N", help="target generation (default: latest)")
    migrate.set_defaults(handler=cmd.cmd_migrate, reads=True)
    _add_data_commands(commands, common)

    user = commands.add_parser("user", parents=[common], help="manage users")
    users = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")

    add = users.add_parser("add", parents=[common], help="create a user (password prompted)")
    add.add_argument("username")
    add.add_argument("--email")
    add.add_argument("--full-name", default="")
    add.add_argument("--superuser", action="store_true", help="same as --role admin")
    add.add_argument("--inactive", action="store_true")
    _add_profile_options(add)
    pw = add.add_mutually_exclusive_group()
    pw.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    pw.add_argument("--no-password", action="store_true", help="create without a password")
    add.set_defaults(handler=cmd.cmd_user_add, creates=True)

    get = users.add_parser("get", parents=[common], help="show a user (by username or email)")
    get.add_argument("username", help="username, or an email address")
    get.set_defaults(handler=cmd.cmd_user_get, reads=True)

    ls = users.add_parser("list", parents=[common], help="list users sorted by username")
    ls.add_argument("--offset", type=int, default=0)
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--prefix")
    ls.add_argument("--after", metavar="USERNAME", help="start after this username (fast deep paging)")
    state = ls.add_mutually_exclusive_group()
    state.add_argument("--active", dest="active", action="store_const", const=True)
    state.add_argument("--inactive", dest="active", action="store_const", const=False)
    ls.set_defaults(handler=cmd.cmd_user_list, active=None, reads=True)

    upd = users.add_parser("update", parents=[common], help="change fields of a user")
    upd.add_argument("username")
    upd.add_argument("--rename", metavar="NEW_USERNAME", help="new username")
    email = upd.add_mutually_exclusive_group()
    email.add_argument("--email")
    email.add_argument("--no-email", action="store_true", help="remove the email address")
    upd.add_argument("--full-name")
    su = upd.add_mutually_exclusive_group()
    su.add_argument("--superuser", dest="is_superuser", action="store_const", const=True)
    su.add_argument("--no-superuser", dest="is_superuser", action="store_const", const=False)
    act = upd.add_mutually_exclusive_group()
    act.add_argument("--active", dest="is_active", action="store_const", const=True)
    act.add_argument("--inactive", dest="is_active", action="store_const", const=False)
    _add_profile_options(upd)
    upd.add_argument("--no-projects", action="store_true", help="remove every project permission")
    upd.add_argument("--no-apps", action="store_true", help="remove every app")
    upd.set_defaults(handler=cmd.cmd_user_update, is_superuser=None, is_active=None)

    passwd = users.add_parser("passwd", parents=[common], help="set a user's password")
    passwd.add_argument("username")
    passwd.add_argument("--password-stdin", action="store_true")
    passwd.set_defaults(handler=cmd.cmd_user_passwd)

    delete = users.add_parser("delete", parents=[common], help="delete a user")
    delete.add_argument("username")
    delete.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    delete.set_defaults(handler=cmd.cmd_user_delete)

    history = users.add_parser("history", parents=[common], help="past versions of a user")
    history.add_argument("username")
    history.add_argument("--limit", type=int, default=20)
    history.set_defaults(handler=cmd.cmd_user_history, reads=True)

    revert = users.add_parser("revert", parents=[common], help="restore a past version as a new change")
    revert.add_argument("username")
    revert.add_argument("--to", required=True, metavar="WHEN", help="revision id from `user history`, or an ISO time")
    revert.set_defaults(handler=cmd.cmd_user_revert)
    return parser


def _add_profile_options(parser: argparse.ArgumentParser) -> None:
    """codx-junior's profile fields, shared by ``user add`` and ``user update``."""
    parser.add_argument("--avatar", help="avatar URL or path")
    parser.add_argument("--theme", help="UI theme (codx-junior default: dim)")
    parser.add_argument("--role", choices=["user", "admin"], help="admin also makes the user a superuser")
    parser.add_argument("--github", help="GitHub login")
    parser.add_argument(
        "--app",
        dest="apps",
        action="append",
        metavar="NAME",
        help="a codx-junior app the user may open, e.g. coder, viewer (repeat; replaces the list)",
    )
    for flag, children, text in (
        ("--project", True, "permission on a project and its children (repeat; replaces the list)"),
        ("--project-no-children", False, "permission on that project only"),
    ):
        parser.add_argument(
            flag, dest="projects", action="append", type=_project(children), metavar="ID=PERMISSIONS", help=text
        )


def _actor(text: str) -> str | None:
    try:
        return check_actor(text, "the name")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _days(text: str) -> float:
    """``--days``: a finite number of days, 0 to a century (nan, inf and 1e308 are refused here)."""
    try:
        days = float(text)
    except ValueError:
        days = math.nan
    if not 0 <= days <= MAX_PACK_DAYS:  # also false for nan
        raise argparse.ArgumentTypeError(f"expected a number of days from 0 to {MAX_PACK_DAYS}, got {shorten(text)!r}")
    return days


def _project(children: bool) -> Callable[[str], dict[str, Any]]:
    def parse(spec: str) -> dict[str, Any]:
        project_id, sep, permissions = spec.partition("=")
        if not sep or not project_id.strip():
            raise argparse.ArgumentTypeError(f"expected PROJECT_ID=PERMISSIONS, got {spec!r}")
        return {"project_id": project_id, "permissions": permissions, "children": children}

    return parse


def _add_data_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """copy, import-codx-junior, pack, backup, restore."""
    copy = commands.add_parser("copy", parents=[common], help="copy the whole database elsewhere, then verify")
    to = copy.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-dsn", metavar="DSN", help="a PostgreSQL database (better: password in PGPASSWORD/.pgpass)")
    to.add_argument("--to-file", metavar="PATH", type=Path, help="a FileStorage file")
    to.add_argument("--to-config", metavar="FILE", type=Path, help="a ZConfig file such as relstorage.conf")
    copy.add_argument(
        "--force",
        action="store_true",
        help="replace a target holding data (a file only once the copy is verified)",
    )
    copy.set_defaults(handler=cmd.cmd_copy)

    imp = commands.add_parser("import-codx-junior", parents=[common], help="import users from codx-junior")
    imp.add_argument("path", type=Path, help="codx-junior's global_settings.json")
    imp.add_argument("--dry-run", action="store_true", help="report what would be imported; write nothing")
    imp.add_argument(
        "--skip-invalid",
        action="store_true",
        help="import every valid user; name each refused entry with its reason and fix (default: all or nothing)",
    )
    imp.set_defaults(handler=cmd.cmd_import_codx_junior, creates=True)

    pack = commands.add_parser("pack", parents=[common], help="drop old history and unreachable objects")
    pack.add_argument("--days", type=_days, default=0, metavar="N", help="keep history of the last N days (0)")
    pack.set_defaults(handler=cmd.cmd_pack)

    backup = commands.add_parser("backup", parents=[common], help="snapshot the database into a new file")
    backup.add_argument("path", type=Path, help="the backup file to create (a FileStorage file)")
    backup.set_defaults(handler=cmd.cmd_backup)

    restore = commands.add_parser("restore", parents=[common], help="load a backup into the configured database")
    restore.add_argument("path", type=Path, help="a file written by `codx-db backup`")
    restore.add_argument("--force", action="store_true", help="replace a database holding data (once verified)")
    restore.set_defaults(handler=cmd.cmd_restore, creates=True)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("codx-db")
    except PackageNotFoundError:
        return "unknown (not installed)"
