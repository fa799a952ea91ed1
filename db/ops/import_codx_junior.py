"""Import users from codx-junior's ``global_settings.json`` (``codx-db import-codx-junior``).

Read (db/codx_junior.py has the file's shapes): the ``users`` list (``username``, ``email``,
``avatar``, ``theme``, ``projects`` as ``{project_id, permissions, children}``, ``role``,
``disabled``, ``github``) and the ``user_logins`` list (``username`` and a bcrypt ``password``
hash). Everything else in the file is ignored; fields codx-db does not store (``token``,
``apps``, ``api_key``...) are named in the report's warnings, never their values.

Rules (decided here, tested in ``tests/test_import.py``):

* The whole file is checked before anything is written; a malformed entry is an error that
  names it (``users[3] ('bob'): ...``), and nothing is imported. Each user passes the rules of
  ``UserDB.import_users`` (the same record model and in-batch duplicate check).
* All or nothing: the users are written in one unit of work, through the user repository like
  every other writer. If any of them conflicts with an existing user (same username or email,
  or a look-alike username, different data), nothing is written and every conflict is
  reported. Existing users are never overwritten.
* A user already in codx-db with the same data is *skipped*, so a re-run is idempotent. Its
  password hash is not compared: codx-db replaces bcrypt with argon2id at the first login, and
  a password changed in codx-db stays. An identical user that has no password yet gets the
  file's hash: *updated*.
* Hashes are kept as they are (``$2a$``/``$2b$``/``$2y$`` bcrypt only; anything else is an
  error): the users log in with their codx-junior passwords and are rehashed to argon2id then.
* A login belongs to the user of exactly its username (codx-junior's ``find_user_login`` is
  ``==``); any other login entry (``carol`` for user ``Carol``, a deleted user's) is not
  imported, never attached to another user (codx-junior cannot log it in either): a warning.
  Of two login entries for one user, the first counts, as in codx-junior. A user without
  a login entry is imported without a password (it sets one at its first login).
* codx-junior permissions written as a list (``[]`` is codx-junior's default) are joined with
  commas, the form codx-junior writes them in otherwise.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from db.codx_junior import (
    MAX_NAME_CHARS,
    CodxJuniorLogin,
    CodxJuniorSettingsFile,
    CodxJuniorUser,
    parse_entry,
    quoted,
)
from db.database import Database, UnitOfWork
from db.display import capped, joined, shorten
from db.errors import CodxJuniorFileError, InvalidUserData, UserAlreadyExists
from db.users import repository
from db.users.models import User, UserContainer, email_key
from db.users.records import find_duplicates
from db.users.schemas import UserCreate, projects_to_tuple

MAX_LISTED_PROBLEMS = 20
MAX_LISTED_NAMES = 20  # usernames on one line of the report


@dataclass(frozen=True)
class ImportEntry:
    """One user of the file, validated: its codx-db fields, plus the login's hash."""

    index: int  # position in ``users``
    username: str  # normalised
    data: UserCreate
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
    settings = CodxJuniorSettingsFile.read(path)
    problems: list[str] = []
    warnings: list[str] = []
    users: list[tuple[int, UserCreate]] = []
    ignored: Counter[str] = Counter()
    exact_names: dict[int, str] = {}  # index -> the username as the file spells it (logins match it exactly)
    for index, raw in enumerate(settings.users or []):
        user, where, mistakes = parse_entry(CodxJuniorUser, raw, f"users[{index}]")
        problems.extend(mistakes)
        if user is None:
            continue
        ignored.update(user.ignored_fields())
        exact_names[index] = user.username
        try:
            users.append((index, user.to_user_record()))  # the rules UserDB.import_users applies
        except InvalidUserData as exc:
            problems.extend(f"{where}: {error}" for error in exc.errors)
    problems.extend(_duplicates(users))
    hashes = _hashes(settings.user_logins or [], {exact_names[index] for index, _ in users}, problems, warnings)
    if problems:
        raise CodxJuniorFileError(f"{path}: " + "; ".join(capped(problems, MAX_LISTED_PROBLEMS)))
    if ignored:
        names = [
            f"{shorten(name, MAX_NAME_CHARS)} ({count} user{'' if count == 1 else 's'})"
            for name, count in sorted(ignored.items())
        ]
        warnings.append(f"fields codx-db does not store were left out: {joined(names, MAX_LISTED_NAMES)}")
    entries = [ImportEntry(index, data.username, data, hashes.get(exact_names[index])) for index, data in users]
    return entries, warnings


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
        users = repository.container(uow)
        report = _plan(users, entries, str(path), dry_run)
        report.warnings = list(warnings)
        if report.conflicts or dry_run or not (report.created or report.updated):
            return report  # a read-only unit of work: nothing is committed
        by_name = {entry.username: entry for entry in entries}
        for name in report.created:
            repository.add(users, by_name[name].data, by_name[name].password_hash)
        for name in report.updated:
            password_hash = by_name[name].password_hash
            assert password_hash is not None  # updated means: the file brings a hash for a user without one
            repository.set_password_hash(repository.get(users, name), password_hash)
        uow.note(
            f"codx-db: import-codx-junior {path.name}: {len(report.created)} created, {len(report.updated)} updated"
        )
        report.written = True
        return report

    return database.run(run, user=actor)


# -- planning -------------------------------------------------------------------------------------


def _plan(users: UserContainer, entries: list[ImportEntry], source: str, dry_run: bool) -> ImportReport:
    """Sort each entry into created, updated, skipped or conflict against the stored users."""
    report = ImportReport(source=source, dry_run=dry_run)
    for entry in entries:
        email = entry.data.email
        existing = users.find_by_username(entry.username)
        owner = users.find_by_email(email) if email else None
        if existing is None:
            if owner is not None:
                report.conflicts.append(
                    Conflict(entry.username, f"its email belongs to the codx-db user {owner.username!r}")
                )
                continue
            try:  # what the write would refuse: a look-alike name, a name another user's login email holds
                repository.check_unique(users, entry.username, email)
            except UserAlreadyExists as exc:
                report.conflicts.append(Conflict(entry.username, _taken(exc)))
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


def _taken(exc: UserAlreadyExists) -> str:
    if exc.like is not None:
        return f"its {exc.field} looks like the codx-db user {exc.like!r}"
    return f"its {exc.field} is taken in codx-db (a username or login email of another user)"


def _differing(user: User, entry: ImportEntry) -> list[str]:
    """The imported fields whose value differs from the stored user's."""
    wanted = entry.data
    stored_email = email_key(user.email) if user.email else None
    wanted_email = email_key(wanted.email) if wanted.email else None
    differing = ["email"] if stored_email != wanted_email else []
    for name in ("full_name", "avatar", "theme", "role", "github", "is_active"):
        if getattr(user, name) != getattr(wanted, name):
            differing.append(name)
    if tuple(user.projects) != projects_to_tuple(wanted.projects):
        differing.append("projects")
    return differing


# -- checking the file ----------------------------------------------------------------------------


def _duplicates(users: list[tuple[int, UserCreate]]) -> list[str]:
    """Two entries for one codx-db user (or two users looking the same) are ambiguous."""
    names = {index: f"users[{index}] ({quoted(data.username)})" for index, data in users}
    problems = []
    for dup in find_duplicates(users):
        later, first = names[dup.index], names[dup.first]
        if dup.looks_alike:
            problems.append(f"{later}: username looks like {first}")
        elif dup.field == "username":
            problems.append(f"{later}: same username as {first} (codx-db usernames ignore case)")
        else:
            problems.append(f"{later}: same email as {first}")
    return problems


def _hashes(logins: list[Any], usernames: set[str], problems: list[str], warnings: list[str]) -> dict[str, str]:
    """Username -> bcrypt hash, from ``user_logins``.

    A login belongs to the user whose username is exactly its username (codx-junior's
    ``find_user_login`` is ``==``): ``carol``'s login, maybe left by a deleted user, is never
    ``Carol``'s. Such a user is imported without a password and sets it at first login.
    """
    hashes: dict[str, str] = {}
    first_entry: dict[str, int] = {}
    for index, raw in enumerate(logins):
        login, where, mistakes = parse_entry(CodxJuniorLogin, raw, f"user_logins[{index}]")
        problems.extend(mistakes)
        if login is None:
            continue
        key = login.username
        if key not in usernames:
            warnings.append(
                f"{where}: no user of exactly that name in users: left out (codx-junior cannot log it in either)"
            )
            continue
        if key in first_entry:
            warnings.append(
                f"{where}: a second login for this user: left out (user_logins[{first_entry[key]}] counts, "
                "as in codx-junior)"
            )
            continue
        first_entry[key] = index
        if login.password is not None:
            hashes[key] = login.password
    return hashes
