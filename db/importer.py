"""Import users from codx-junior's ``global_settings.json`` (``codx-db import-codx-junior``).

Read: the ``users`` list (``username``, ``email``, ``avatar``, ``theme``, ``projects`` as
``{project_id, permissions, children}``, ``role``, ``disabled``, ``github``) and the
``user_logins`` list (``username`` and a bcrypt ``password`` hash). Everything else in the file
is ignored; fields codx-db does not store (``token``, ``apps``, ``api_key``...) are named in the
report's warnings, never their values.

Rules (decided here, tested in ``tests/test_import.py``):

* The whole file is checked before anything is written; a malformed entry is an error that
  names it (``users[3] ('bob'): ...``), and nothing is imported.
* All or nothing: the users are written in one unit of work. If any of them conflicts with an
  existing user (same username or email, different data), nothing is written and every
  conflict is reported. Existing users are never overwritten.
* A user already in codx-db with the same data is *skipped*, so a re-run is idempotent. Its
  password hash is not compared: codx-db replaces bcrypt with argon2id at the first login, and
  a password changed in codx-db stays. An identical user that has no password yet gets the
  file's hash: *updated*.
* Hashes are kept as they are (``$2a$``/``$2b$``/``$2y$`` bcrypt only; anything else is an
  error): the users log in with their codx-junior passwords and are rehashed to argon2id then.
* A login entry without a user is not imported (codx-junior cannot log it in either): a
  warning. Of two login entries for one user, the first counts, as in codx-junior. A user
  without a login entry is imported without a password (it cannot log in until one is set).
* codx-junior permissions written as a list (``[]`` is codx-junior's default) are joined with
  commas, the form codx-junior writes them in otherwise.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from db.database import Database, UnitOfWork
from db.display import capped, joined, shorten
from db.errors import CodxJuniorFileError, InvalidUserData
from db.users.models import USERS_KEY, User, UserContainer, email_key, username_key
from db.users.passwords import hash_cost_problem
from db.users.schemas import ProjectPermission, UserCreate, projects_to_tuple, upgrade_project_tuple

# bcrypt as codx-junior's bcrypt package writes it: prefix, 2-digit cost, 22 salt + 31 hash characters.
BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
USER_FIELDS = frozenset({"username", "email", "avatar", "theme", "projects", "role", "disabled", "github", "full_name"})
PROJECT_FIELDS = frozenset({"project_id", "permissions", "children"})
MAX_LISTED_PROBLEMS = 20
MAX_LISTED_NAMES = 20  # usernames on one line of the report
MAX_NAME_CHARS = 64  # of a username or field name quoted from the file in a message


@dataclass(frozen=True)
class ImportEntry:
    """One user of the file, validated: what ``UserDB.create`` gets, plus the login's hash."""

    index: int  # position in ``users``
    username: str  # normalised
    fields: dict[str, Any]  # keyword arguments of UserDB.create (no password)
    password_hash: str | None


@dataclass(frozen=True)
class Conflict:
    """An imported user that does not match the codx-db user it collides with."""

    username: str
    reason: str


@dataclass
class ImportReport:
    """What an import did (or, in a dry run or on conflicts, would do)."""

    source: str
    dry_run: bool
    written: bool = False
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)  # an identical user that had no password got the hash
    skipped: list[str] = field(default_factory=list)  # already there, identical
    conflicts: list[Conflict] = field(default_factory=list)
    without_password: list[str] = field(default_factory=list)  # imported users that cannot log in yet
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when there is no conflict."""
        return not self.conflicts

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (``--json``)."""
        return {
            "source": self.source,
            "ok": self.ok,
            "dry_run": self.dry_run,
            "written": self.written,
            "created": self.created,
            "updated": self.updated,
            "skipped": self.skipped,
            "conflicts": [{"username": c.username, "reason": c.reason} for c in self.conflicts],
            "without_password": self.without_password,
            "warnings": self.warnings,
        }

    def lines(self) -> list[str]:
        """The report for people."""
        if self.written:
            outcome = "imported"
        elif self.conflicts:
            outcome = "nothing written: resolve the conflicts below, then run again"
        elif self.dry_run:
            outcome = "dry run: nothing written"
        else:
            outcome = "nothing to write"
        # Every list grows with the file: people see the first names, --json has them all.
        lines = [f"import:       {self.source} ({outcome})"]
        for label, names in (("created", self.created), ("updated", self.updated), ("skipped", self.skipped)):
            lines.append(f"{label + ':':<13} {len(names)}" + (f"  {joined(names, MAX_LISTED_NAMES)}" if names else ""))
        lines.append(f"conflicts:    {len(self.conflicts)}")
        lines.extend(f"  {line}" for line in capped([f"{c.username}: {c.reason}" for c in self.conflicts]))
        if self.without_password:
            lines.append(
                f"no password:  {len(self.without_password)}  {joined(self.without_password, MAX_LISTED_NAMES)} "
                "(cannot log in until `codx-db user passwd NAME` sets one)"
            )
        lines.extend(f"warning:      {warning}" for warning in capped(self.warnings, what="warnings"))
        return lines


def read_codx_junior_settings(path: Path) -> tuple[list[ImportEntry], list[str]]:
    """Parse and validate a ``global_settings.json``: its users, and warnings about what is left out.

    Raises CodxJuniorFileError listing every malformed entry.
    """
    data = _load_json(path)
    problems: list[str] = []
    warnings: list[str] = []
    users = _list_of(data, "users", problems)
    logins = _list_of(data, "user_logins", problems)

    entries: list[tuple[int, dict[str, Any]]] = []
    ignored: dict[str, int] = {}
    for index, raw in enumerate(users):
        parsed = _parse_user(index, raw, problems, ignored)
        if parsed is not None:
            entries.append((index, parsed))
    _check_duplicates(entries, problems)
    hashes = _parse_logins(logins, {username_key(fields["username"]) for _, fields in entries}, problems, warnings)
    if problems:
        raise CodxJuniorFileError(f"{path}: " + "; ".join(capped(problems, MAX_LISTED_PROBLEMS)))
    if ignored:
        names = joined(
            [
                f"{shorten(name, MAX_NAME_CHARS)} ({count} user{'s' if count != 1 else ''})"
                for name, count in sorted(ignored.items())
            ],
            MAX_LISTED_NAMES,
        )
        warnings.append(f"fields codx-db does not store were left out: {names}")
    result = [
        ImportEntry(index, fields["username"], fields, hashes.get(username_key(fields["username"])))
        for index, fields in entries
    ]
    return result, warnings


def import_codx_junior(
    database: Database,
    path: Path,
    *,
    dry_run: bool = False,
    actor: str | None = None,
) -> ImportReport:
    """Import the users of a codx-junior ``global_settings.json`` into ``database``, all or nothing."""
    entries, warnings = read_codx_junior_settings(path)

    def run(uow: UnitOfWork) -> ImportReport:
        from db.user_db import UserDB

        container: UserContainer = uow.root[USERS_KEY]
        report = _plan(container, entries, str(path), dry_run)
        report.warnings = list(warnings)
        if report.conflicts or dry_run or not (report.created or report.updated):
            return report  # a read-only unit of work: nothing is committed
        users = UserDB(database, actor=actor)
        by_name = {entry.username: entry for entry in entries}
        for name in report.created:
            entry = by_name[name]
            users.create(**entry.fields)  # joins this unit of work
            if entry.password_hash is not None:
                # No public API sets a hash: this is the same unit of work, so the user and its
                # hash are committed together or not at all.
                _stored(container, name).password_hash = entry.password_hash
        for name in report.updated:
            user = _stored(container, name)
            user.password_hash = by_name[name].password_hash
            user.touch()
        uow.note(
            f"codx-db: import-codx-junior {path.name}: {len(report.created)} created, {len(report.updated)} updated"
        )
        report.written = True
        return report

    return database.run(run, user=actor)


# -- planning -------------------------------------------------------------------------------------


def _plan(container: UserContainer, entries: list[ImportEntry], source: str, dry_run: bool) -> ImportReport:
    """Sort each entry into created, updated, skipped or conflict against the stored users."""
    report = ImportReport(source=source, dry_run=dry_run)
    for entry in entries:
        email = entry.fields["email"]
        existing = container.find_by_username(entry.username)
        owner = container.find_by_email(email) if email else None
        if existing is None:
            if owner is not None:
                report.conflicts.append(
                    Conflict(entry.username, f"its email belongs to the codx-db user {owner.username!r}")
                )
                continue
            report.created.append(entry.username)
        else:
            if owner is not None and owner is not existing:
                report.conflicts.append(
                    Conflict(entry.username, f"its email belongs to another codx-db user, {owner.username!r}")
                )
                continue
            differing = _differing(existing, entry)
            if differing:
                # Field names only: the values are personal data, visible with `codx-db user get`.
                report.conflicts.append(
                    Conflict(entry.username, f"exists in codx-db with a different {', '.join(differing)}")
                )
                continue
            if existing.password_hash is None and entry.password_hash is not None:
                report.updated.append(entry.username)
            else:
                report.skipped.append(entry.username)
                continue
        if entry.password_hash is None:
            report.without_password.append(entry.username)
    return report


def _differing(user: User, entry: ImportEntry) -> list[str]:
    """The imported fields whose value differs from the stored user's."""
    wanted = entry.fields
    stored_email = email_key(user.email) if user.email else None
    wanted_email = email_key(wanted["email"]) if wanted["email"] else None
    differing = ["email"] if stored_email != wanted_email else []
    for name in ("full_name", "avatar", "theme", "role", "github", "is_active"):
        if getattr(user, name) != wanted[name]:
            differing.append(name)
    # Stored grants of an older generation have 3 fields: compare in today's form.
    stored = tuple(upgrade_project_tuple(entry) for entry in user.projects)
    if stored != projects_to_tuple([ProjectPermission.model_validate(p) for p in wanted["projects"]]):
        differing.append("projects")
    return differing


def _stored(container: UserContainer, username: str) -> User:
    user = container.find_by_username(username)
    assert user is not None, username  # created or found in this same unit of work
    return user


# -- parsing ----------------------------------------------------------------------------------------


def _load_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CodxJuniorFileError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CodxJuniorFileError(f"{path}: cannot read it ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CodxJuniorFileError(
            f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    except RecursionError:
        # Python's parser recurses once per level; codx-junior's settings are a few levels deep.
        raise CodxJuniorFileError(
            f"{path}: the JSON nests too deeply (lists or objects inside each other about "
            f"{sys.getrecursionlimit()} levels down): this is not codx-junior's global_settings.json"
        ) from None
    if not isinstance(data, dict):
        raise CodxJuniorFileError(
            f"{path}: expected a JSON object (codx-junior's global settings), found {_kind(data)}"
        )
    return data


def _list_of(data: dict[str, Any], key: str, problems: list[str]) -> list[Any]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(f"{key}: expected a list, found {_kind(value)}")
        return []
    return value


def _parse_user(index: int, raw: Any, problems: list[str], ignored: dict[str, int]) -> dict[str, Any] | None:
    """``users[index]`` as UserDB.create arguments, or None after recording its problems."""
    where = f"users[{index}]"
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected an object, found {_kind(raw)}")
        return None
    username = _username(raw, where, problems)
    if username is None:
        return None
    where = f"{where} ({_quoted(username)})"
    for name in raw.keys() - USER_FIELDS:
        ignored[name] = ignored.get(name, 0) + 1
    mistakes: list[str] = []
    text = {
        name: _optional_str(raw, name, mistakes) for name in ("email", "avatar", "theme", "role", "github", "full_name")
    }
    disabled = raw.get("disabled")
    if disabled is not None and not isinstance(disabled, bool):
        mistakes.append(f"disabled: expected true or false, found {_kind(disabled)}")
    projects = _parse_projects(raw.get("projects"), mistakes)
    if mistakes:
        problems.extend(f"{where}: {mistake}" for mistake in mistakes)
        return None
    candidate = {
        "username": username,
        "email": text["email"] or None,  # codx-junior writes "" for no email
        "full_name": text["full_name"] or "",
        "avatar": text["avatar"] or "",
        "theme": text["theme"] or "dim",
        "role": text["role"] or "user",
        "github": text["github"] or "",
        "is_active": not disabled,
        "projects": projects,
    }
    try:
        # The rules UserDB.create applies, checked now so that the error names the entry.
        data = UserCreate.parse(candidate)
    except InvalidUserData as exc:
        problems.extend(f"{where}: {error}" for error in exc.errors)
        return None
    fields = data.model_dump(exclude={"is_superuser"})
    fields["projects"] = [p.model_dump() for p in data.projects]
    return fields


def _username(raw: dict[str, Any], where: str, problems: list[str]) -> str | None:
    username = raw.get("username")
    if username is not None and not isinstance(username, str):
        problems.append(f"{where}: username: expected a string, found {_kind(username)}")
        return None
    if not username or not username.strip():
        problems.append(f"{where}: username is missing")
        return None
    return username


def _optional_str(raw: dict[str, Any], name: str, mistakes: list[str]) -> str | None:
    value = raw.get(name)
    if value is None or isinstance(value, str):
        return value
    mistakes.append(f"{name}: expected a string, found {_kind(value)}")
    return None


def _parse_projects(value: Any, mistakes: list[str]) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        mistakes.append(f"projects: expected a list, found {_kind(value)}")
        return []
    projects = []
    for i, item in enumerate(value):
        where = f"projects[{i}]"
        if not isinstance(item, dict):
            mistakes.append(f"{where}: expected an object, found {_kind(item)}")
            continue
        project_id, permissions, children = item.get("project_id"), item.get("permissions", ""), item.get("children")
        if not isinstance(project_id, str):
            mistakes.append(
                f"{where}: project_id is missing" if project_id is None else f"{where}: project_id is not a string"
            )
            continue
        named = f"{where} ({_quoted(project_id)})"
        if isinstance(permissions, list) and all(isinstance(p, str) for p in permissions):
            permissions = ",".join(permissions)
        elif permissions is None:
            permissions = ""
        elif not isinstance(permissions, str):
            mistakes.append(f"{named}: permissions: expected a string, found {_kind(permissions)}")
            continue
        if children is not None and not isinstance(children, bool):
            mistakes.append(f"{named}: children: expected true or false, found {_kind(children)}")
            continue
        projects.append(
            {"project_id": project_id, "permissions": permissions, "children": True if children is None else children}
        )
    return projects


def _check_duplicates(entries: list[tuple[int, dict[str, Any]]], problems: list[str]) -> None:
    """Two entries for one codx-db user (usernames and emails ignore case) are ambiguous."""
    seen_names: dict[str, tuple[int, str]] = {}
    seen_emails: dict[str, tuple[int, str]] = {}
    for index, fields in entries:
        name = fields["username"]
        first = seen_names.setdefault(username_key(name), (index, name))
        if first[0] != index:
            problems.append(
                f"users[{index}] ({name!r}): same username as users[{first[0]}] ({first[1]!r}) "
                "(codx-db usernames ignore case)"
            )
        if fields["email"]:
            first = seen_emails.setdefault(email_key(fields["email"]), (index, name))
            if first[0] != index:
                problems.append(f"users[{index}] ({name!r}): same email as users[{first[0]}] ({first[1]!r})")


def _parse_logins(logins: list[Any], usernames: set[str], problems: list[str], warnings: list[str]) -> dict[str, str]:
    """Username key -> bcrypt hash, from ``user_logins``."""
    hashes: dict[str, str] = {}
    first_entry: dict[str, int] = {}
    for index, raw in enumerate(logins):
        where = f"user_logins[{index}]"
        if not isinstance(raw, dict):
            problems.append(f"{where}: expected an object, found {_kind(raw)}")
            continue
        username = _username(raw, where, problems)
        if username is None:
            continue
        where = f"{where} ({_quoted(username)})"
        password = raw.get("password")
        if password in (None, ""):
            password = None
        elif not isinstance(password, str) or not BCRYPT_HASH.fullmatch(password):
            # Never echo the value: a file written by hand may hold a plain password here.
            problems.append(
                f"{where}: password is not a bcrypt hash ($2a$, $2b$ or $2y$, 60 characters): "
                "codx-db imports codx-junior's hashes, never plain passwords"
            )
            continue
        problem = None if password is None else hash_cost_problem(password)
        if problem is not None:
            problems.append(f"{where}: password: {problem}")
            continue
        key = username_key(username)
        if key not in usernames:
            warnings.append(f"{where}: no user of that name in users: left out (codx-junior cannot log it in either)")
            continue
        if key in first_entry:
            warnings.append(
                f"{where}: a second login for this user: left out (user_logins[{first_entry[key]}] counts, "
                "as in codx-junior)"
            )
            continue
        first_entry[key] = index
        if password is not None:
            hashes[key] = password
    return hashes


def _quoted(text: str) -> str:
    """A name from the file, quoted for a message: a 100 KB username is not echoed whole."""
    return shorten(repr(text), MAX_NAME_CHARS)


def _kind(value: Any) -> str:
    """A JSON type name for messages (never the value itself)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
