"""Reading codx-junior's ``global_settings.json`` for the import: one pass over every entry.

Each user entry gets its problems (shape, codx-db's rules, collisions with other entries, its
login); db/ops/import_codx_junior.py then plans and writes. The rules are in that module's
docstring.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
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
from db.display import capped, joined, shorten
from db.errors import CodxJuniorFileError, InvalidUserData
from db.users import credentials
from db.users.keys import fits
from db.users.models import email_key, github_key, login_claim, username_key, username_skeleton
from db.users.schemas import UserCreate

MAX_LISTED_PROBLEMS = 20
MAX_LISTED_NAMES = 20  # usernames on one line of the report


MAX_LISTED_LOGINS = 10  # usernames of grouped leftover logins


@dataclass(frozen=True)
class ImportEntry:
    """One user of the file, validated: its codx-db fields, plus the login's hash."""

    index: int  # position in ``users``
    username: str  # normalised
    data: UserCreate
    password_hash: str | None
    api_key: str | None = None  # codx-junior's key: stored as a digest, usable with UserDB.get_by_api_key


@dataclass(frozen=True)
class Refusal:
    """A file entry that is not imported: where it is, its reasons, and what to do about it."""

    where: str  # ``users[3]`` or ``user_logins[2]``
    username: str | None  # as the file spells it
    reasons: list[str]
    fix: str

    @property
    def named(self) -> str:
        """``users[3] ('carol')``: how messages name the entry."""
        return f"{self.where} ({quoted(self.username)})" if self.username and self.username.strip() else self.where

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {"where": self.where, "username": self.username, "reasons": self.reasons, "fix": self.fix}


@dataclass
class SettingsFile:
    """What the file brings: the users to import, the entries refused, what is stored differently."""

    entries: list[ImportEntry]
    refused: list[Refusal]
    normalized: list[str]  # ``users[4] ('bob'): email: ...``: field names and rules, never values
    warnings: list[str]

    def problems(self) -> list[str]:
        """Every reason of every refusal, one message each (the all-or-nothing error)."""
        return [f"{refusal.named}: {reason}" for refusal in self.refused for reason in refusal.reasons]


# How codx-db stores a field differently from the file (db/users/normalize.py): said, never silent.


NORMALIZATION_RULES = {
    "username": "NFKC-normalised and trimmed",
    "email": "NFKC-normalised, trimmed, domain lower-cased",
    "full_name": "NFC-normalised and trimmed",
    "avatar": "trimmed",
    "theme": "trimmed",
    "role": "trimmed, lower-cased",
    "github": "trimmed, leading @ dropped",
}


def read_codx_junior_settings(path: Path) -> tuple[list[ImportEntry], list[str]]:
    """Parse and validate a ``global_settings.json``: its users, and warnings about what is left out.

    Raises CodxJuniorFileError listing every malformed entry.
    """
    parsed = read_settings_file(path)
    if parsed.refused:
        raise CodxJuniorFileError(f"{path}: " + "; ".join(capped(parsed.problems(), MAX_LISTED_PROBLEMS)))
    return parsed.entries, parsed.warnings


def read_settings_file(path: Path) -> SettingsFile:
    """One pass over every entry: each gets its problems (shape, rules, collisions, its login).

    Collisions are computed over every entry with a string username, even one with other
    problems, so that one run names them all. Of two colliding entries the later is refused.
    """
    settings = CodxJuniorSettingsFile.read(path)
    reasons: dict[int, list[str]] = {}
    spelled: dict[int, str | None] = {}  # index -> the username as the file spells it
    valid: dict[int, tuple[CodxJuniorUser, UserCreate]] = {}
    ignored: Counter[str] = Counter()
    collided: set[int] = set()
    for index, raw in enumerate(settings.users or []):
        name = raw.get("username") if isinstance(raw, dict) else None
        spelled[index] = name if isinstance(name, str) else None
        user, named, mistakes = parse_entry(CodxJuniorUser, raw, f"users[{index}]")
        reasons[index] = [mistake.removeprefix(f"{named}: ") for mistake in mistakes]
        if user is None:
            continue
        ignored.update(user.ignored_fields())
        if user.api_key and len(user.api_key) > credentials.MAX_SECRET_LENGTH:
            reasons[index].append(f"api_key: must be at most {credentials.MAX_SECRET_LENGTH} characters")
        try:
            valid[index] = (user, user.to_user_record())  # the rules UserDB.import_users applies
        except InvalidUserData as exc:
            reasons[index].extend(exc.errors)
    for later, reason in _collisions(settings.users or [], spelled):
        reasons[later].append(reason)
        collided.add(later)
    hashes, login_refusals, warnings = _hashes(settings.user_logins or [], spelled, reasons)

    refused = [
        Refusal(f"users[{index}]", spelled[index], problems, _fix(index, index in collided, path))
        for index, problems in reasons.items()
        if problems
    ]
    refused.extend(login_refusals)
    entries: list[ImportEntry] = []
    normalized: list[str] = []
    for index, (user, data) in valid.items():
        if reasons[index]:
            continue
        entries.append(ImportEntry(index, data.username, data, hashes.get(user.username), user.api_key or None))
        named = f"users[{index}] ({quoted(user.username)})"
        for field_name, rule in NORMALIZATION_RULES.items():
            given, stored = getattr(user, field_name), getattr(data, field_name)
            if not isinstance(given, str) or given == stored or (given == "" and stored is None):
                continue  # unchanged, or codx-junior's "" for none (an email)
            if given:
                normalized.append(f"{named}: {field_name}: {rule}")
            else:  # an empty value given a default (role "" is a user): said, never silent
                normalized.append(f"{named}: {field_name}: empty in the file, stored as {quoted(str(stored))}")
    short = [quoted(e.username) for e in entries if e.api_key and len(e.api_key) < credentials.SHORT_IMPORTED_KEY]
    if short:
        warnings.append(
            f"short api_key ({len(short)} user{'' if len(short) == 1 else 's'}, under "
            f"{credentials.SHORT_IMPORTED_KEY} characters): imported so it keeps working; rotate it "
            f"(`create_api_key`, then `revoke_api_key`): {joined(short, MAX_LISTED_LOGINS)}"
        )
    passwords = ignored.pop("password", 0)
    if passwords:
        # A guess at the file's shape that would import users without their passwords.
        warnings.append(
            f"password in users[] ({passwords} user{'' if passwords == 1 else 's'}) left out: codx-junior keeps "
            'password hashes in user_logins[] ({"username": ..., "password": "$2b$..."}), which is read'
        )
    tokens = ignored.pop("token", 0)
    if tokens:
        warnings.append(
            f"token ({tokens} user{'' if tokens == 1 else 's'}): codx-db issues its own tokens; they log in again"
        )
    if ignored:
        names = [
            f"{shorten(name, MAX_NAME_CHARS)} ({count} user{'' if count == 1 else 's'})"
            for name, count in sorted(ignored.items())
        ]
        warnings.append(f"fields codx-db does not store were left out: {joined(names, MAX_LISTED_NAMES)}")
    return SettingsFile(entries, refused, normalized, warnings)


def _fix(index: int, collided: bool, path: Path) -> str:
    if collided:
        return f"rename or delete users[{index}] (or the entry it collides with) in {path.name}, then re-run"
    return f"correct or delete users[{index}] in {path.name}, then re-run"


def _collisions(raw_users: list[Any], spelled: dict[int, str | None]) -> list[tuple[int, str]]:
    """(later index, reason) for every entry whose username (ignoring case, or by look-alike skeleton) or
    email an earlier entry holds: two entries for one codx-db user are ambiguous."""
    seen: dict[tuple[str, str], int] = {}
    found: list[tuple[int, str]] = []
    for index, name in spelled.items():
        if name is None or not name.strip() or not fits(name):
            continue  # no name, or one too long to be a key: refused by the entry's own check
        keys = [("username", username_key(name)), ("skeleton", username_skeleton(name))]
        email = raw_users[index].get("email")
        if not isinstance(email, str) or not fits(email):
            email = None  # an address too long to be a key: refused by the entry's own check
        if email is not None and email.strip():
            keys.append(("email", email_key(email)))
        github = raw_users[index].get("github")
        if isinstance(github, str) and github_key(github):
            keys.append(("github", github_key(github)))  # GitHub logins are unique in codx-db
        api_key = raw_users[index].get("api_key")
        if isinstance(api_key, str) and api_key.strip():
            keys.append(("api_key", api_key))  # one key, one user
        for kind_of_key, key in keys:
            first = seen.setdefault((kind_of_key, key), index)
            if first == index:
                continue
            other = _entry(spelled, first)
            if kind_of_key == "username":
                found.append((index, f"same username as {other} (codx-db usernames ignore case)"))
            elif kind_of_key == "skeleton":
                if not any(later == index for later, _ in found):
                    found.append((index, f"username looks like {other}"))
            else:
                found.append((index, f"same {kind_of_key} as {other}"))
        # A login by an address finds a user by username or email: one entry's username must not
        # be another's email (nor the other way round), as repository.check_unique refuses.
        claim = login_claim(name)
        as_email = seen.get(("email", claim)) if claim is not None else None
        if as_email is not None and as_email != index:
            found.append((index, f"its username is the email of {_entry(spelled, as_email)}"))
        if email is not None and email.strip():
            as_name = seen.get(("username", username_key(email)))
            if as_name is not None and as_name != index:
                found.append((index, f"its email is the username of {_entry(spelled, as_name)}"))
    return found


def _entry(spelled: dict[int, str | None], index: int) -> str:
    return f"users[{index}] ({quoted(spelled[index] or '')})"


def _hashes(
    logins: list[Any], spelled: dict[int, str | None], reasons: dict[int, list[str]]
) -> tuple[dict[str, str], list[Refusal], list[str]]:
    """Username -> bcrypt hash from ``user_logins``, the login entries refused, and warnings.

    A login belongs to the user whose username is exactly its username (codx-junior's
    ``find_user_login`` is ``==``): ``carol``'s login, maybe left by a deleted user, is never
    ``Carol``'s. Such a user is imported without a password and sets it at first login. A
    malformed login refuses its user (or itself, when it has none).
    """
    users = {name: index for index, name in reversed(list(spelled.items())) if name is not None}
    hashes: dict[str, str] = {}
    first_entry: dict[str, int] = {}
    refused: list[Refusal] = []
    leftover: list[str] = []
    second: list[str] = []
    for index, raw in enumerate(logins):
        where = f"user_logins[{index}]"
        login, named, mistakes = parse_entry(CodxJuniorLogin, raw, where)
        name = raw.get("username") if isinstance(raw, dict) else None
        owner = users.get(name) if isinstance(name, str) else None
        if mistakes:
            if owner is not None:
                reasons[owner].extend(f"its login {mistake}" for mistake in mistakes)
            else:
                reason = [mistake.removeprefix(f"{named}: ") for mistake in mistakes]
                fix = f"correct or delete {where} (no user has exactly its username), then re-run"
                refused.append(Refusal(where, name if isinstance(name, str) else None, reason, fix))
            continue
        assert login is not None
        if owner is None:
            leftover.append(quoted(login.username))
            continue
        if login.username in first_entry:
            second.append(quoted(login.username))
            continue
        first_entry[login.username] = index
        if login.password is not None:
            hashes[login.username] = login.password
    warnings = []
    if leftover:
        warnings.append(
            f"{len(leftover)} login{'' if len(leftover) == 1 else 's'} without a user of exactly that name "
            f"left out (codx-junior cannot log them in either; never attached to another user): "
            f"{joined(leftover, MAX_LISTED_LOGINS)}"
        )
    if second:
        warnings.append(
            f"{len(second)} second login{'' if len(second) == 1 else 's'} for one user left out "
            f"(the first counts, as in codx-junior): {joined(second, MAX_LISTED_LOGINS)}"
        )
    return hashes, refused, warnings
