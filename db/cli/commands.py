"""The ``codx-db`` commands: each takes the session and the parsed arguments and returns a result.

A command never prints and never exits: it returns data (a ``CodxUser``, a report...) or an
``Outcome`` whose ``ok`` is False when the command must exit 1 after its report is printed.
Errors are raised (codx-db errors, ``CommandError``, ``UsageError``) and mapped to exit codes
by ``db.cli.app``.
"""

from __future__ import annotations

import argparse
import getpass
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import migrations
from db.actors import check_actor
from db.cli.progress import Progress, write
from db.cli.results import CheckResult, CommandError, Message, Outcome, RevisionList, UsageError, UserList
from db.database import Database
from db.errors import GenerationError, InvalidUserData
from db.importer import import_codx_junior
from db.ops.check import check, check_root, repair
from db.ops.copy import backup, copy_database, restore, target_settings
from db.ops.pack import pack
from db.ops.reports import CheckReport, InfoReport, MigrationReport, PackageMigration, PendingStep, RepairReport
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB
from db.users.models import USERS_KEY, login_claim
from db.users.passwords import MAX_PASSWORD_LENGTH
from db.users.schemas import CodxUser
from migrations.registry import CODX_DB
from migrations.runner import (
    GENERATION_KEY,
    MigrationStatus,
    check_target,
    evolve,
    holds_database,
    open_for_migration,
    read_generation,
    status,
    statuses,
)

EMPTY = "empty: no codx-db database here yet"

Handler = Callable[["Session", argparse.Namespace], Any]


@dataclass
class Session:
    """What a command works with: the database and the streams (a terminal, pipes, or StringIO)."""

    database: Database
    stdin: TextIO
    stdout: TextIO
    stderr: TextIO

    def progress(self, label: str) -> Progress:
        """The progress display of a long operation, on this session's stderr."""
        return Progress(label, stream=self.stderr)


# -- database -------------------------------------------------------------------------------------


def cmd_info(session: Session, args: argparse.Namespace) -> InfoReport:
    """Backend, location (secrets masked), generation, status and user count."""
    settings = session.database.settings
    if not holds_database(settings):
        # Opening would create it: report the emptiness and leave the location as it is.
        return InfoReport(
            backend=settings.kind,
            location=settings.location,
            generation=None,
            code_generation=migrations.GENERATION,
            status=f"{EMPTY} (the first write creates it, e.g. `codx-db user add`)",
            users=0,
            temp_tablespace=settings.db_pg_temp_tablespace if settings.kind == "postgres" else None,
            **_connection_budget(settings),
        )
    try:
        with session.database.transaction() as uow:
            generation, users, state = uow.root.get(GENERATION_KEY), len(uow.root[USERS_KEY]), "ok"
    except GenerationError as exc:
        # An old (or newer) database: still say where it stands, without evolving it.
        with open_for_migration(settings) as zodb, zodb.transaction() as conn:
            root = conn.root()
            generation = read_generation(root)
            users = len(root[USERS_KEY]) if USERS_KEY in root else 0
        state = str(exc)
    if state == "ok" and generation is not None and generation < migrations.GENERATION:
        state = "usable; `codx-db migrate --apply` would evolve it to the latest generation"
    return InfoReport(
        backend=settings.kind,
        location=settings.location,
        generation=generation,
        code_generation=migrations.GENERATION,
        status=state,
        users=users,
        temp_tablespace=settings.db_pg_temp_tablespace if settings.kind == "postgres" else None,
        **_connection_budget(settings),
    )


def _connection_budget(settings: CodxJuniorGlobalSettings) -> dict[str, Any]:
    """PostgreSQL: the pool size, the sessions one process may open, what the server allows and
    the sessions' deadlock_timeout (both read at open)."""
    if settings.kind != "postgres" or settings.db_dsn is None:
        return {}
    from db.pg.connect import SESSIONS_PER_UNIT, known_budget, known_deadlock_timeout  # lazy backend
    from db.pg.dsn import keyword_dsn

    dsn = keyword_dsn(settings.db_dsn.get_secret_value())
    budget = known_budget(dsn)
    return {
        "pool_size": settings.db_pool_size,
        "pg_connections_per_process": SESSIONS_PER_UNIT * settings.db_pool_size,
        "pg_connections_allowed": budget.allowed if budget is not None else None,
        "pg_deadlock_timeout": known_deadlock_timeout(dsn),
    }


def cmd_migrate(session: Session, args: argparse.Namespace) -> MigrationReport:
    """Show the generation status; ``--apply`` or ``--dry-run`` run the pending steps."""

    def progress(message: str, done: int, total: int | None) -> None:
        if not args.json:
            suffix = f" ({done}/{total})" if total else ""
            write(session.stderr, f"  {message}{suffix}\n")

    settings = session.database.settings
    check_target(args.to)  # before opening: opening an empty location would create a database
    if args.to is not None and args.to < migrations.GENERATION and not holds_database(settings):
        raise CommandError(
            f"--to {args.to}: {settings.location} holds no database yet, and a new one is installed at this "
            f"code's generation {migrations.GENERATION} (--to only moves an existing database); nothing was created"
        )
    with open_for_migration(settings) as zodb:
        before = status(zodb, args.to)
        if args.to is not None and before.current is not None and args.to < before.current:
            raise CommandError(
                f"--to {args.to}: the database is at generation {before.current}, and generations only go up "
                "(to go back, restore a backup made before the migration)"
            )
        # --to names codx-db's target: then codx-db's steps alone run (runner.evolve).
        others = [plan for plan in statuses(zodb) if plan.package != CODX_DB] if args.to is None else []
        report = MigrationReport(
            current=before.current,
            target=before.target,
            minimum=before.minimum,
            pending=_pending(before),
            dry_run=bool(args.dry_run),
            packages=[
                PackageMigration(package=p.package, current=p.current, target=p.target, pending=_pending(p))
                for p in others
            ],
        )
        if args.apply or args.dry_run:
            ran = evolve(
                zodb, args.to, dry_run=args.dry_run, progress=progress, batch_size=settings.db_migrate_batch_size
            )
            report.applied = [s.generation for s in ran if s.package == CODX_DB]
            report.current = status(zodb).current if not args.dry_run else before.current
            for other in report.packages:
                other.applied = [s.generation for s in ran if s.package == other.package]
                if not args.dry_run:
                    other.current = status(zodb, package=other.package).current
    return report


def _pending(plan: MigrationStatus) -> list[PendingStep]:
    return [PendingStep(generation=s.generation, description=s.description) for s in plan.pending]


def cmd_check(session: Session, args: argparse.Namespace) -> Outcome:
    """Check the database (``--repair``: rebuild the indexes); exit 1 if problems remain."""
    database = session.database
    report: CheckReport | RepairReport
    try:
        report = repair(database) if args.repair else check(database)
    except GenerationError:
        # Below the minimum generation (a migration pending or interrupted) the database does
        # not open for use; read it as it is, so the report can say what to run.
        with open_for_migration(database.settings) as zodb, zodb.transaction() as conn:
            report = check_root(conn.root())
    return Outcome(CheckResult(database.settings.location, report), ok=report.ok)


# -- users ----------------------------------------------------------------------------------------


def cmd_user_add(session: Session, args: argparse.Namespace) -> CodxUser:
    """Create a user."""
    _check_role_flags(args.role, True if args.superuser else None)
    password = None if args.no_password else _read_password(session, args.password_stdin, confirm=True)
    return _users(session, args).create(
        username=args.username,
        email=args.email,
        full_name=args.full_name,
        password=password,
        is_superuser=True if args.superuser else None,
        is_active=not args.inactive,
        **_profile_changes(args),
    )


def cmd_user_get(session: Session, args: argparse.Namespace) -> CodxUser:
    """Show one user: by username, else (a login holding an "@") by email, as a login resolves."""
    users = _users(session, args)
    found = users.find(args.username)
    if found is not None:
        return found
    if login_claim(args.username) is not None:  # a username may hold an "@" (generation 9)
        return users.get_by_email(args.username)
    return users.get(args.username)


def cmd_user_list(session: Session, args: argparse.Namespace) -> UserList:
    """A page of users, and whether more follow it (a full page could be the last)."""
    users = _users(session, args)
    page = users.list(offset=args.offset, limit=args.limit, active=args.active, prefix=args.prefix, after=args.after)
    more = len(page) == args.limit and bool(
        users.list(limit=1, active=args.active, prefix=args.prefix, after=page[-1].username)
    )
    return UserList(page, more)


def cmd_user_update(session: Session, args: argparse.Namespace) -> CodxUser:
    """Change the fields given."""
    changes: dict[str, Any] = {}
    if args.rename is not None:
        changes["username"] = args.rename
    if args.no_email:
        changes["email"] = None
    elif args.email is not None:
        changes["email"] = args.email
    _check_role_flags(args.role, args.is_superuser)
    for name in ("full_name", "is_superuser", "is_active"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    changes.update(_profile_changes(args))
    if args.no_projects:
        if args.projects:
            raise UsageError("--no-projects and --project contradict each other")
        changes["projects"] = []
    if args.no_apps:
        if args.apps:
            raise UsageError("--no-apps and --app contradict each other")
        changes["apps"] = []
    if not changes:
        raise UsageError("nothing to change: give --rename, --email, --full-name, --role, ...")
    return _users(session, args).update(args.username, **changes)


def cmd_user_passwd(session: Session, args: argparse.Namespace) -> Message:
    """Set a password."""
    users = _users(session, args)
    users.get(args.username)  # fail before prompting for a user that does not exist
    users.set_password(args.username, _read_password(session, args.password_stdin, confirm=True))
    return Message({"username": args.username, "password": "changed"})


def cmd_user_delete(session: Session, args: argparse.Namespace) -> Message:
    """Delete a user, after confirmation."""
    users = _users(session, args)
    user = users.get(args.username)
    if not args.yes:
        if not session.stdin.isatty():
            raise CommandError("refusing to delete without confirmation: pass --yes")
        write(session.stdout, f"Delete user {user.username!r}? [y/N] ")
        if session.stdin.readline().strip().lower() not in ("y", "yes"):
            raise CommandError("not deleted")
    users.delete(user.username)
    return Message({"deleted": user.username})


def cmd_user_history(session: Session, args: argparse.Namespace) -> RevisionList:
    """Past versions of a user, newest first."""
    return RevisionList(_users(session, args).history(args.username, limit=args.limit))


def cmd_user_revert(session: Session, args: argparse.Namespace) -> CodxUser:
    """Restore the fields a user had at a revision or time."""
    return _users(session, args).revert(args.username, args.to)


# -- moving and keeping the data (the work is in db/ops/) -----------------------------------------


def cmd_copy(session: Session, args: argparse.Namespace) -> Outcome:
    """Copy the configured database to --to-dsn, --to-file or --to-config, then verify."""
    target = args.to_file if args.to_file is not None else target_settings(dsn=args.to_dsn, config_file=args.to_config)
    settings = session.database.settings
    report = copy_database(settings, target, force=args.force, progress=session.progress("copy"))
    return Outcome(report, ok=report.ok)


def cmd_import_codx_junior(session: Session, args: argparse.Namespace) -> Outcome:
    """Import codx-junior's users (all or nothing, or the valid ones with --skip-invalid); exit 1 on conflicts."""
    actor = getattr(args, "actor", None) or _default_actor("codx-db import-codx-junior")
    database = session.database
    if args.dry_run and not holds_database(database.settings):
        # Nothing there yet: an empty database is all a dry run checks against, and opening the
        # configured one would create it (a file, RelStorage's tables) although nothing is written.
        database = Database(database.settings.with_overrides(db_backend="memory", db_config_file=None))
    try:
        report = import_codx_junior(
            database, args.path, dry_run=args.dry_run, skip_invalid=args.skip_invalid, actor=actor
        )
    finally:
        if database is not session.database:
            database.close()
    return Outcome(report, ok=report.ok)


def cmd_pack(session: Session, args: argparse.Namespace) -> Outcome:
    """Pack the configured database; report sizes."""
    return Outcome(pack(session.database.settings, days=args.days))


def cmd_backup(session: Session, args: argparse.Namespace) -> Outcome:
    """Write a verified snapshot of the configured database to a new file."""
    report = backup(session.database.settings, args.path, progress=session.progress("backup"))
    return Outcome(report, ok=report.ok)


def cmd_restore(session: Session, args: argparse.Namespace) -> Outcome:
    """Load a backup file into the configured database, then verify."""
    report = restore(args.path, session.database.settings, force=args.force, progress=session.progress("restore"))
    return Outcome(report, ok=report.ok)


# -- helpers --------------------------------------------------------------------------------------


def _users(session: Session, args: argparse.Namespace) -> UserDB:
    # Changes made from the command line are recorded as made by the login that ran it.
    return UserDB(session.database, actor=getattr(args, "actor", None) or _default_actor("codx-db cli"))


def _default_actor(tool: str) -> str:
    """ "LOGIN (tool)": who the changes are recorded as without --actor; the tool alone if the login
    cannot name an actor (too long, a tab in $LOGNAME), rather than refusing every command."""
    try:
        login = getpass.getuser()
    except (OSError, KeyError):
        login = "unknown"
    candidate = f"{login} ({tool})"
    try:
        return check_actor(candidate) or tool
    except ValueError:
        return tool


def _read_password(session: Session, from_stdin: bool, confirm: bool) -> str:
    if from_stdin or not session.stdin.isatty():
        # Bounded: one character past the longest password, so the check below names it.
        line = session.stdin.readline(MAX_PASSWORD_LENGTH + 2)
        if not line:
            raise InvalidUserData(["password: nothing was read from stdin"])
        return line.rstrip("\r\n")
    password = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Repeat password: ") != password:
        raise InvalidUserData(["password: the two entries differ"])
    return password


def _check_role_flags(role: str | None, is_superuser: bool | None) -> None:
    """--role and --superuser / --no-superuser that contradict: a usage error (exit 2), before a prompt."""
    if role is not None and is_superuser is not None and (role == "admin") != is_superuser:
        flag = "--superuser" if is_superuser else "--no-superuser"
        raise UsageError(f"--role {role} and {flag} contradict each other (--role admin makes a superuser)")


def _profile_changes(args: argparse.Namespace) -> dict[str, Any]:
    changes = {name: getattr(args, name) for name in ("avatar", "theme", "role", "github")}
    changes = {name: value for name, value in changes.items() if value is not None}
    if args.projects is not None:
        changes["projects"] = args.projects
    if args.apps is not None:
        changes["apps"] = args.apps
    return changes
