"""The ``codx-db`` command line (also ``python -m db``).

Exit codes: 0 success; 1 a codx-db error (not found, exists, invalid, unavailable...), printed
as one line on stderr; 2 a usage error. ``--json`` prints the result as JSON on stdout.
Passwords are read from a prompt or from stdin, never from the command line.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import math
import sys
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel

from db.display import capped, joined, shorten
from db.errors import CodxDBError, InvalidUserData
from db.progress import write
from db.schemas import CodxUser

Handler = Callable[[argparse.Namespace], Any]


class CommandError(CodxDBError):
    """A problem with what was asked on the command line (exit 1, one line)."""


class UsageError(CommandError):
    """The command line itself is incomplete (exit 2, like argparse's own errors)."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("codx-db")
    except PackageNotFoundError:
        return "unknown (not installed)"


EMPTY = "empty: no codx-db database here yet"
# Pack times older than this are all the same (before any codx-db data), and still valid.
MAX_PACK_DAYS = 36_500


def _require_existing_database(args: argparse.Namespace) -> None:
    """Refuse to work on an empty database (no file, no tables, no root) rather than create one.

    Opening a database creates it: a command that only reads (check, user list, backup...)
    would leave a new file, RelStorage's tables or a root behind, after which `copy` and
    `restore` need --force; a typo in the location would show "0 users". Commands that
    create (user add, import, restore, migrate --apply) may; `info` reports the emptiness.
    """
    if getattr(args, "creates", False) or getattr(args, "apply", False) or args.handler is cmd_info:
        return
    from db import db
    from migrations.runner import holds_database

    settings = db.settings
    if not holds_database(settings):
        setting = {"file": "CODX_JUNIOR_DB_FILE_PATH", "config": "CODX_JUNIOR_DB_CONFIG_FILE"}
        raise CommandError(
            f"{EMPTY} (no database at {settings.location}): check "
            f"{setting.get(settings.kind, 'CODX_JUNIOR_DB_DSN')} if you expected one; "
            "the first write creates it, e.g. `codx-db user add`"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code."""
    # Never a UnicodeEncodeError traceback on a terminal or pipe that is not UTF-8.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="codx-db: %(levelname)s: %(message)s",
    )
    if not args.verbose:
        # RelStorage logs connection failures as warnings before raising; the CLI's own
        # one-line error says the same thing.
        logging.getLogger("relstorage").setLevel(logging.ERROR)
    try:
        _require_existing_database(args)
        result = args.handler(args)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        _err(f"codx-db: error: {exc}")
        return 2
    except CodxDBError as exc:
        _fail(args, str(exc))
        return 1
    except KeyboardInterrupt:
        _err("codx-db: interrupted")
        return 130
    except Exception as exc:
        if args.verbose:
            raise
        _fail(args, f"unexpected {type(exc).__name__}: {exc} (run with -v for details)")
        return 1
    finally:
        _close_database()
    if result is not None:
        _out(_render(args, result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (one sub-command per operation)."""
    parser = argparse.ArgumentParser(
        prog="codx-db",
        description="codx-db: the user database of codx-api (ZODB on a file or PostgreSQL).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks")
    parser.add_argument("--actor", help="who makes the changes, recorded in history (default: your login)")
    # The same options after a sub-command; SUPPRESS keeps a sub-parser's default from
    # overwriting a value given before the sub-command ("codx-db --json user list").
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser("info", parents=[common], help="backend, location, generation, users")
    info.set_defaults(handler=cmd_info)

    check = commands.add_parser(
        "check", parents=[common], help="verify indexes, counts, generation; --repair rebuilds indexes"
    )
    check.add_argument("--repair", action="store_true", help="rebuild the indexes and count from the users")
    check.set_defaults(handler=cmd_check)

    migrate = commands.add_parser("migrate", parents=[common], help="show pending generations; --apply runs them")
    mode = migrate.add_mutually_exclusive_group()
    mode.add_argument("--apply", action="store_true", help="run the pending steps")
    mode.add_argument("--dry-run", action="store_true", help="run the steps, then abort")
    migrate.add_argument("--to", type=int, metavar="N", help="target generation (default: latest)")
    migrate.set_defaults(handler=cmd_migrate)
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
    add.set_defaults(handler=cmd_user_add, creates=True)

    get = users.add_parser("get", parents=[common], help="show a user (by username or email)")
    get.add_argument("username", help="username, or an email address")
    get.set_defaults(handler=cmd_user_get)

    ls = users.add_parser("list", parents=[common], help="list users sorted by username")
    ls.add_argument("--offset", type=int, default=0)
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--prefix")
    ls.add_argument("--after", metavar="USERNAME", help="start after this username (fast deep paging)")
    state = ls.add_mutually_exclusive_group()
    state.add_argument("--active", dest="active", action="store_const", const=True)
    state.add_argument("--inactive", dest="active", action="store_const", const=False)
    ls.set_defaults(handler=cmd_user_list, active=None)

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
    upd.set_defaults(handler=cmd_user_update, is_superuser=None, is_active=None)

    passwd = users.add_parser("passwd", parents=[common], help="set a user's password")
    passwd.add_argument("username")
    passwd.add_argument("--password-stdin", action="store_true")
    passwd.set_defaults(handler=cmd_user_passwd)

    delete = users.add_parser("delete", parents=[common], help="delete a user")
    delete.add_argument("username")
    delete.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    delete.set_defaults(handler=cmd_user_delete)

    history = users.add_parser("history", parents=[common], help="past versions of a user")
    history.add_argument("username")
    history.add_argument("--limit", type=int, default=20)
    history.set_defaults(handler=cmd_user_history)

    revert = users.add_parser("revert", parents=[common], help="restore a past version as a new change")
    revert.add_argument("username")
    revert.add_argument("--to", required=True, metavar="WHEN", help="revision id from `user history`, or an ISO time")
    revert.set_defaults(handler=cmd_user_revert)
    return parser


def _add_profile_options(parser: argparse.ArgumentParser) -> None:
    """codx-junior's profile fields, shared by ``user add`` and ``user update``."""
    parser.add_argument("--avatar", help="avatar URL or path")
    parser.add_argument("--theme", help="UI theme (codx-junior default: dim)")
    parser.add_argument("--role", choices=["user", "admin"], help="admin also makes the user a superuser")
    parser.add_argument("--github", help="GitHub login")
    parser.add_argument(
        "--project",
        dest="projects",
        action="append",
        type=_project(children=True),
        metavar="ID=PERMISSIONS",
        help="permission on a project and its children (repeat; replaces the list)",
    )
    parser.add_argument(
        "--project-no-children",
        dest="projects",
        action="append",
        type=_project(children=False),
        metavar="ID=PERMISSIONS",
        help="permission on that project only",
    )


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


def _profile_changes(args: argparse.Namespace) -> dict[str, Any]:
    changes = {name: getattr(args, name) for name in ("avatar", "theme", "role", "github")}
    changes = {name: value for name, value in changes.items() if value is not None}
    if args.projects is not None:
        changes["projects"] = args.projects
    return changes


# -- commands ---------------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> dict[str, Any]:
    """Backend, location (secrets masked), generation, status and user count."""
    from db import db
    from db.errors import GenerationError
    from db.models import USERS_KEY
    from migrations import GENERATION
    from migrations.runner import GENERATION_KEY, holds_database, open_for_migration, read_generation

    settings = db.settings
    if not holds_database(settings):
        # Opening would create it: report the emptiness and leave the location as it is.
        return {
            "backend": settings.kind,
            "location": settings.location,
            "generation": None,
            "code_generation": GENERATION,
            "status": f"{EMPTY} (the first write creates it, e.g. `codx-db user add`)",
            "users": 0,
        }
    try:
        with db.transaction() as uow:
            generation, users, status = uow.root.get(GENERATION_KEY), len(uow.root[USERS_KEY]), "ok"
    except GenerationError as exc:
        # An old (or newer) database: still say where it stands, without evolving it.
        with open_for_migration(settings) as zodb, zodb.transaction() as conn:
            root = conn.root()
            generation = read_generation(root)
            users = len(root[USERS_KEY]) if USERS_KEY in root else 0
        status = str(exc)
    if status == "ok" and generation is not None and generation < GENERATION:
        status = "usable; `codx-db migrate --apply` would evolve it to the latest generation"
    return {
        "backend": settings.kind,
        "location": settings.location,
        "generation": generation,
        "code_generation": GENERATION,
        "status": status,
        "users": users,
    }


def cmd_migrate(args: argparse.Namespace) -> dict[str, Any]:
    """Show the generation status; ``--apply`` or ``--dry-run`` run the pending steps."""
    from db import db
    from migrations.runner import evolve, open_for_migration, status

    def progress(message: str, done: int, total: int | None) -> None:
        if not args.json:
            suffix = f" ({done}/{total})" if total else ""
            _err(f"  {message}{suffix}")

    with open_for_migration(db.settings) as zodb:
        before = status(zodb, args.to)
        report: dict[str, Any] = {
            "current": before.current,
            "target": before.target,
            "minimum": before.minimum,
            "pending": [{"generation": s.generation, "description": s.description} for s in before.pending],
            "applied": [],
            "dry_run": bool(args.dry_run),
        }
        if args.apply or args.dry_run:
            ran = evolve(
                zodb,
                args.to,
                dry_run=args.dry_run,
                progress=progress,
                batch_size=db.settings.db_migrate_batch_size,
            )
            report["applied"] = [s.generation for s in ran]
            report["current"] = status(zodb).current if not args.dry_run else before.current
    return report


def cmd_check(args: argparse.Namespace) -> None:
    """Check the database (``--repair``: rebuild the indexes); exit 1 if problems remain.

    The report is printed here rather than returned: on failure it must still be the only
    document on stdout (``--json``), and the exit code must be 1 without an error line.
    """
    from db import db
    from db.check import check, repair

    settings = db.settings
    result = repair(db) if args.repair else check(db)
    if args.json:
        _out(json.dumps({"location": settings.location, **result.to_dict()}, indent=2, ensure_ascii=False))
    else:
        _out("\n".join(_check_lines(settings.location, result)))
    if not result.ok:
        raise SystemExit(1)  # main()'s finally still closes the database


def cmd_user_add(args: argparse.Namespace) -> CodxUser:
    """Create a user."""
    password = None if args.no_password else _read_password(args.password_stdin, confirm=True)
    return _users(args).create(
        username=args.username,
        email=args.email,
        full_name=args.full_name,
        password=password,
        is_superuser=True if args.superuser else None,
        is_active=not args.inactive,
        **_profile_changes(args),
    )


def cmd_user_get(args: argparse.Namespace) -> CodxUser:
    """Show one user."""
    users = _users(args)
    if "@" in args.username:
        return users.get_by_email(args.username)
    return users.get(args.username)


def cmd_user_list(args: argparse.Namespace) -> list[CodxUser]:
    """A page of users."""
    return _users(args).list(
        offset=args.offset, limit=args.limit, active=args.active, prefix=args.prefix, after=args.after
    )


def cmd_user_update(args: argparse.Namespace) -> CodxUser:
    """Change the fields given."""
    changes: dict[str, Any] = {}
    if args.rename is not None:
        changes["username"] = args.rename
    if args.no_email:
        changes["email"] = None
    elif args.email is not None:
        changes["email"] = args.email
    for name in ("full_name", "is_superuser", "is_active"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    changes.update(_profile_changes(args))
    if args.no_projects:
        if args.projects:
            raise UsageError("--no-projects and --project contradict each other")
        changes["projects"] = []
    if not changes:
        raise UsageError("nothing to change: give --rename, --email, --full-name, --role, ...")
    return _users(args).update(args.username, **changes)


def cmd_user_passwd(args: argparse.Namespace) -> dict[str, Any]:
    """Set a password."""
    users = _users(args)
    users.get(args.username)  # fail before prompting for a user that does not exist
    users.set_password(args.username, _read_password(args.password_stdin, confirm=True))
    return {"username": args.username, "password": "changed"}


def cmd_user_delete(args: argparse.Namespace) -> dict[str, Any]:
    """Delete a user, after confirmation."""
    users = _users(args)
    user = users.get(args.username)
    if not args.yes:
        if not sys.stdin.isatty():
            raise CommandError("refusing to delete without confirmation: pass --yes")
        answer = input(f"Delete user {user.username!r}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            raise CommandError("not deleted")
    users.delete(user.username)
    return {"deleted": user.username}


def cmd_user_history(args: argparse.Namespace) -> list[Any]:
    """Past versions of a user, newest first."""
    return _users(args).history(args.username, limit=args.limit)


def cmd_user_revert(args: argparse.Namespace) -> CodxUser:
    """Restore the fields a user had at a revision or time."""
    return _users(args).revert(args.username, args.to)


# -- moving and keeping the data (logic in db/transfer.py and db/importer.py) -------------------


def _add_data_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """copy, import-codx-junior, pack, backup, restore."""
    from pathlib import Path

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
    copy.set_defaults(handler=cmd_copy)

    imp = commands.add_parser("import-codx-junior", parents=[common], help="import users from codx-junior")
    imp.add_argument("path", type=Path, help="codx-junior's global_settings.json")
    imp.add_argument("--dry-run", action="store_true", help="report what would be imported; write nothing")
    imp.add_argument(
        "--skip-invalid",
        action="store_true",
        help="import every valid user; name each refused entry with its reason and fix (default: all or nothing)",
    )
    imp.set_defaults(handler=cmd_import_codx_junior, creates=True)

    pack = commands.add_parser("pack", parents=[common], help="drop old history and unreachable objects")
    pack.add_argument("--days", type=_days, default=0, metavar="N", help="keep history of the last N days (0)")
    pack.set_defaults(handler=cmd_pack)

    backup = commands.add_parser("backup", parents=[common], help="snapshot the database into a new file")
    backup.add_argument("path", type=Path, help="the backup file to create (a FileStorage file)")
    backup.set_defaults(handler=cmd_backup)

    restore = commands.add_parser("restore", parents=[common], help="load a backup into the configured database")
    restore.add_argument("path", type=Path, help="a file written by `codx-db backup`")
    restore.add_argument("--force", action="store_true", help="replace a database holding data (once verified)")
    restore.set_defaults(handler=cmd_restore, creates=True)


def cmd_copy(args: argparse.Namespace) -> None:
    """Copy the configured database to --to-dsn, --to-file or --to-config, then verify."""
    from db import db
    from db.progress import Progress
    from db.transfer import copy_database, target_settings

    target = args.to_file if args.to_file is not None else target_settings(dsn=args.to_dsn, config_file=args.to_config)
    _print_report(args, copy_database(db.settings, target, force=args.force, progress=Progress("copy")))


def cmd_import_codx_junior(args: argparse.Namespace) -> None:
    """Import codx-junior's users (all or nothing); exit 1 on conflicts."""
    from db import db
    from db.importer import import_codx_junior

    actor = getattr(args, "actor", None) or f"{_login()} (codx-db import-codx-junior)"
    _print_report(
        args, import_codx_junior(db, args.path, dry_run=args.dry_run, skip_invalid=args.skip_invalid, actor=actor)
    )


def cmd_pack(args: argparse.Namespace) -> None:
    """Pack the configured database; report sizes."""
    from db import db
    from db.transfer import pack

    _print_report(args, pack(db.settings, days=args.days))


def cmd_backup(args: argparse.Namespace) -> None:
    """Write a verified snapshot of the configured database to a new file."""
    from db import db
    from db.progress import Progress
    from db.transfer import backup

    _print_report(args, backup(db.settings, args.path, progress=Progress("backup")))


def cmd_restore(args: argparse.Namespace) -> None:
    """Load a backup file into the configured database, then verify."""
    from db import db
    from db.progress import Progress
    from db.transfer import restore

    _print_report(args, restore(args.path, db.settings, force=args.force, progress=Progress("restore")))


def _print_report(args: argparse.Namespace, report: Any) -> None:
    # Printed here, like `check`: a failed verification or a conflict still prints its full
    # report (the only document on stdout with --json), then exits 1.
    if args.json:
        _out(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        _out("\n".join(report.lines()))
    if not getattr(report, "ok", True):
        raise SystemExit(1)


# -- helpers ----------------------------------------------------------------------------------


def _users(args: argparse.Namespace) -> Any:
    from db import db
    from db.user_db import UserDB

    # Changes made from the command line are recorded as made by the login that ran it.
    return UserDB(db, actor=getattr(args, "actor", None) or f"{_login()} (codx-db cli)")


def _login() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def _close_database() -> None:
    from db import db

    db.close()


def _read_password(from_stdin: bool, confirm: bool) -> str:
    if from_stdin or not sys.stdin.isatty():
        line = sys.stdin.readline()
        if not line:
            raise InvalidUserData(["password: nothing was read from stdin"])
        return line.rstrip("\r\n")
    password = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Repeat password: ") != password:
        raise InvalidUserData(["password: the two entries differ"])
    return password


def _fail(args: argparse.Namespace, message: str) -> None:
    message = " ".join(message.split())  # one line, whatever the library wrote
    if getattr(args, "json", False):
        _out(json.dumps({"error": message}))
    _err(f"codx-db: error: {message}")


def _out(text: str) -> None:
    """Print ``text`` on stdout; a reader that has gone (``| head``, ``| true``) is not an error.

    The work is done by then: the exit code stays the command's, with no traceback.
    """
    write(sys.stdout, text + "\n")


def _err(text: str) -> None:
    write(sys.stderr, text + "\n")


def _render(args: argparse.Namespace, result: Any) -> str:
    if args.json:
        return json.dumps(_jsonable(result), indent=2, ensure_ascii=False)
    if isinstance(result, CodxUser):
        lines = _user_lines(result)
    elif isinstance(result, list) and result and not isinstance(result[0], CodxUser):
        lines = _revision_lines(result)
    elif isinstance(result, list):
        lines = _table_lines(result)
    elif isinstance(result, dict) and "pending" in result:
        lines = _migration_lines(result)
    else:
        lines = [f"{key}: {value}" for key, value in result.items()]
    return "\n".join(lines)


def _jsonable(result: Any) -> Any:
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    if isinstance(result, list):
        return [_jsonable(item) for item in result]
    return result


def _user_lines(user: CodxUser) -> list[str]:
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


def _table_lines(users: list[CodxUser]) -> list[str]:
    columns = ("username", "email", "full_name", "role", "is_active")
    headers = ("USERNAME", "EMAIL", "FULL NAME", "ROLE", "ACTIVE")
    rows = [[_cell(getattr(u, c)) for c in columns] for u in users]
    widths = [max([_width(h)] + [_width(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = [
        "  ".join(c + " " * (w - _width(c)) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [list(headers), *rows]
    ]
    lines.append(f"({len(users)} user{'s' if len(users) != 1 else ''})")
    return lines


def _width(text: str) -> int:
    """Terminal columns: East Asian wide characters take two (名前 is as wide as 'abcd')."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _revision_lines(revisions: list[Any]) -> list[str]:
    lines = []
    for revision in revisions:
        by = f" by {revision.by}" if revision.by else ""
        lines.append(f"{revision.tid}  {revision.at.isoformat(timespec='seconds')}{by}  {revision.description}")
        for name, (old, new) in revision.changes.items():
            lines.append(f"    {name}: {_literal(old)} -> {_literal(new)}")
    return lines


def _literal(value: Any) -> str:
    # A changed project list can hold a thousand entries: `user get --json` shows them whole.
    return "-" if value is None else shorten(json.dumps(value, ensure_ascii=False))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _check_lines(location: str, result: Any) -> list[str]:
    from db.check import RepairReport

    report = result.after if isinstance(result, RepairReport) else result
    lines: list[str] = []
    if isinstance(result, RepairReport):
        lines += _problem_lines("before repair", result.before)
        if result.repaired:
            lines.append(f"repaired ({len(result.fixed)} fixes):")
            lines += [f"  {line}" for line in capped(result.fixed)]
        elif result.before.problems:
            lines.append("not repaired: some problems need a person (see above); nothing was changed")
    lines += [
        f"database:   {location}",
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


def _problem_lines(title: str, report: Any) -> list[str]:
    if not report.problems:
        return []
    shown = capped([f"{problem.code}: {problem.message}" for problem in report.problems])
    return [f"{title}: {len(report.problems)}", *(f"  {line}" for line in shown)]


def _migration_lines(report: dict[str, Any]) -> list[str]:
    current = "new database" if report["current"] is None else report["current"]
    lines = [
        f"current generation: {current}",
        f"target generation:  {report['target']} (minimum {report['minimum']})",
    ]
    if not report["pending"]:
        lines.append("up to date: nothing to do")
    for step in report["pending"]:
        done = "applied" if step["generation"] in report["applied"] else "pending"
        if report["dry_run"] and done == "applied":
            done = "ran (dry run, aborted)"
        lines.append(f"  {step['generation']:>3}  {done:<8}  {step['description']}")
    if report["pending"] and not report["applied"]:
        lines.append("run `codx-db migrate --apply` to apply")
    return lines
