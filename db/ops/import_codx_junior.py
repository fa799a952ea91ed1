"""Import users from codx-junior's ``global_settings.json`` (``codx-db import-codx-junior``).

Read (db/codx_junior.py has the file's shapes): the ``users`` list (``username``, ``email``,
``avatar``, ``theme``, ``projects`` as ``{project_id, permissions, children, apps}``, ``role``,
``disabled``, ``github``, ``apps``) and the ``user_logins`` list (``username`` and a bcrypt ``password``
hash). A user's ``api_key`` is stored hashed (db.users.credentials.import_api_key, named
"codx-junior") and keeps working with ``UserDB.get_by_api_key``. Everything else in the file
is ignored; fields codx-db does not store (``token``...) are named in the report's
warnings when a user has a value there, never the values.

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

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from db.database import Database, UnitOfWork
from db.display import capped, joined
from db.errors import CodxJuniorFileError, UserAlreadyExists
from db.ops.codx_junior_file import (
    MAX_LISTED_NAMES,
    MAX_LISTED_PROBLEMS,
    ImportEntry,
    Refusal,
    SettingsFile,
    read_codx_junior_settings,
    read_settings_file,
)
from db.users import credentials, repository
from db.users.models import User, UserContainer, email_key
from db.users.schemas import projects_to_tuple, upgrade_project_tuple
from db.users.sync import API_KEY_NAME, drop_replaced_keys  # the name an imported key is listed under

# Where an import that wrote is recorded: {"source": file name or None, "at": ISO time, "created": n}.
IMPORTED_KEY = "codx_db.codx_junior_import"

__all__ = [
    "IMPORTED_KEY",
    "Conflict",
    "ImportEntry",
    "ImportReport",
    "Refusal",
    "SettingsFile",
    "import_at_first_start",
    "import_codx_junior",
    "read_codx_junior_settings",
    "read_settings_file",
]


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
    without_password: list[str] = field(default_factory=list)  # imported users that set a password at first login
    refused: list[Refusal] = field(default_factory=list)  # entries left out (skip_invalid)
    normalized: list[str] = field(default_factory=list)  # fields stored differently from the file (no values)
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
            "refused": [refusal.to_dict() for refusal in self.refused],
            "normalized": self.normalized,
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
        if self.refused:
            lines.append(f"refused:      {len(self.refused)}  (not imported; fix the file and re-run to add them)")
            lines.extend(
                f"  {line}"
                for line in capped(
                    [f"{r.named}: {'; '.join(r.reasons)} -> {r.fix}" for r in self.refused], what="refused entries"
                )
            )
        if self.without_password:
            lines.append(
                f"no password:  {len(self.without_password)}  {joined(self.without_password, MAX_LISTED_NAMES)} "
                "(`codx-db user passwd NAME` sets one; with login(first_login=True), whoever logs in first does)"
            )
        if self.normalized:
            lines.append(f"normalised:   {len(self.normalized)} field(s) stored differently from the file")
            lines.extend(f"  {line}" for line in capped(self.normalized, what="fields"))
        lines.extend(f"warning:      {warning}" for warning in capped(self.warnings, what="warnings"))
        return lines


def import_codx_junior(
    database: Database,
    path: Path,
    *,
    dry_run: bool = False,
    skip_invalid: bool = False,
    actor: str | None = None,
) -> ImportReport:
    """Import the users of a codx-junior ``global_settings.json`` into ``database``, all or nothing.

    With ``skip_invalid`` the valid users are imported and every refused entry is in the
    report's ``refused``, with its reasons and fix; without it a refused entry is a
    CodxJuniorFileError naming every problem, and nothing is written. An import that writes
    records it in the database (``IMPORTED_KEY``).
    """
    report = _import(database, path, dry_run, skip_invalid, actor, first_start=False)
    assert report is not None  # only a first-start import answers None
    return report


def import_at_first_start(database: Database, path: Path, actor: str | None) -> ImportReport | None:
    """An app's start-up import (``--skip-invalid``): only into a database that never had one.

    None, and nothing imported, when the database holds a record of an import (``IMPORTED_KEY``)
    or any user: users deleted and keys revoked in codx-db never come back from the old file. A
    database found with users and no record (switched before codx-db kept one) gets the record.
    """
    return _import(database, path, False, True, actor, first_start=True)


def _import(
    database: Database, path: Path, dry_run: bool, skip_invalid: bool, actor: str | None, *, first_start: bool
) -> ImportReport | None:
    parsed = read_settings_file(path)
    if parsed.refused and not skip_invalid:
        raise CodxJuniorFileError(f"{path}: " + "; ".join(capped(parsed.problems(), MAX_LISTED_PROBLEMS)))
    entries, warnings = parsed.entries, parsed.warnings

    def run(uow: UnitOfWork) -> ImportReport | None:
        users = repository.container(uow)
        if first_start and (IMPORTED_KEY in uow.root or len(users)):
            if IMPORTED_KEY not in uow.root and not uow.connection.db().storage.isReadOnly():
                uow.root[IMPORTED_KEY] = {"source": None, "at": datetime.now(UTC).isoformat(), "created": 0}
            return None
        report = _plan(users, uow.root.get(credentials.CREDENTIALS_KEY), entries, str(path), dry_run)
        report.warnings = list(warnings)
        report.refused = list(parsed.refused)
        report.normalized = list(parsed.normalized)
        if report.conflicts or dry_run or not (report.created or report.updated):
            return report  # a read-only unit of work: nothing is committed
        by_name = {entry.username: entry for entry in entries}
        now = datetime.now(UTC)
        store = credentials.install_credentials(uow.root) if any(e.api_key for e in entries) else None
        for name in report.created:
            user = repository.add(users, by_name[name].data, by_name[name].password_hash)
            _import_key(store, user, by_name[name], now)
        for name in report.updated:
            # Updated: the file brings a hash for a user without one, or a key not stored yet.
            user, password_hash = repository.get(users, name), by_name[name].password_hash
            if user.password_hash is None and password_hash is not None:
                repository.set_password_hash(user, password_hash)
            _import_key(store, user, by_name[name], now)
        uow.note(
            f"codx-db: import-codx-junior {path.name}: {len(report.created)} created, {len(report.updated)} updated"
        )
        uow.root[IMPORTED_KEY] = {"source": path.name, "at": now.isoformat(), "created": len(report.created)}
        report.written = True
        return report

    return database.run(run, user=actor)


# -- planning -------------------------------------------------------------------------------------


def _import_key(store: credentials.CredentialStore | None, user: User, entry: ImportEntry, now: datetime) -> None:
    if entry.api_key is None or store is None:
        return
    if credentials.import_api_key(store, user.id, entry.api_key, API_KEY_NAME, now):
        drop_replaced_keys(store, user.id, entry.api_key)  # codx-junior keeps one key per user


def _plan(
    users: UserContainer,
    store: credentials.CredentialStore | None,
    entries: list[ImportEntry],
    source: str,
    dry_run: bool,
) -> ImportReport:
    """Sort each entry into created, updated, skipped or conflict against the stored users."""
    report = ImportReport(source=source, dry_run=dry_run)
    for entry in entries:
        email = entry.data.email
        existing = users.find_by_username(entry.username)
        owner = users.find_by_email(email) if email else None
        key = credentials.find_api_key(store, entry.api_key) if store is not None and entry.api_key else None
        if key is not None and (existing is None or key.user_id != existing.id):
            report.conflicts.append(Conflict(entry.username, "its api_key belongs to another codx-db user"))
            continue
        new_key = entry.api_key is not None and key is None
        if existing is None:
            if owner is not None:
                report.conflicts.append(
                    Conflict(entry.username, f"its email belongs to the codx-db user {owner.username!r}")
                )
                continue
            try:  # what the write would refuse: a look-alike name, a name another user's login email holds
                repository.check_unique(users, entry.username, email, github=entry.data.github)
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
            if (existing.password_hash is None and entry.password_hash is not None) or new_key:
                report.updated.append(entry.username)
            else:
                report.skipped.append(entry.username)
                continue
        if (existing is None or existing.password_hash is None) and entry.password_hash is None:
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
    if tuple(user.apps) != tuple(wanted.apps):
        differing.append("apps")
    # Stored grants of an older generation have 3 fields: compare in today's form.
    if tuple(upgrade_project_tuple(entry) for entry in user.projects) != projects_to_tuple(wanted.projects):
        differing.append("projects")
    return differing


# -- checking the file ----------------------------------------------------------------------------
