"""Import records: the one model of a user to import, and the checks a batch of them passes first.

``UserDB.import_users`` and the codx-junior import (db/ops/import_codx_junior.py) both validate
through ``UserRecord`` and ``find_duplicates``, so they accept the same users and refuse the
same in-batch duplicates; each names an entry its own way (``records[3]``, ``users[3] ('bob')``).
Nothing here touches the database: the stored users are checked by the repository.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Self

from pydantic import Field, field_validator

from db.display import joined
from db.errors import InvalidUserData, shown_field
from db.users.models import email_key, github_key, login_claim, username_key, username_skeleton
from db.users.passwords import check_password, check_password_hash, hash_password
from db.users.policy import PasswordContext, PasswordPolicy
from db.users.schemas import UserCreate

MAX_LISTED_FIELDS = 5  # unknown field names listed for one record


class UserRecord(UserCreate):
    """One user to import: ``UserDB.create``'s fields plus a clear ``password`` or a stored ``password_hash``.

    A hash is argon2, or bcrypt from codx-junior, within the cost bounds (``db.users.passwords``).
    Neither is ever shown in a repr or an error.
    """

    password: Any = Field(default=None, repr=False)
    password_hash: Any = Field(default=None, repr=False)

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Self:
        """Validate a record; InvalidUserData lists every problem."""
        if data.get("password") is not None and data.get("password_hash") is not None:
            raise InvalidUserData(["password: give password or password_hash, not both"])
        return super().parse(data)

    @field_validator("password")
    @classmethod
    def _password(cls, value: object) -> str | None:
        return None if value is None else _rule(check_password, value, "password")

    @field_validator("password_hash")
    @classmethod
    def _password_hash(cls, value: object) -> str | None:
        return None if value is None else _rule(check_password_hash, value, "password_hash")

    def context(self) -> PasswordContext:
        """What the password policy compares a new password with."""
        return PasswordContext(self.username, self.email, self.full_name)


RECORD_FIELDS = frozenset(UserRecord.model_fields)


def _rule(check: Callable[[object], str], value: object, name: str) -> str:
    """A password rule (which raises InvalidUserData) as a pydantic validator (which raises ValueError)."""
    try:
        return check(value)
    except InvalidUserData as exc:
        raise ValueError("; ".join(error.removeprefix(f"{name}: ") for error in exc.errors)) from None


class PreparedUser(NamedTuple):
    """A validated record ready to write: its fields and its password hash (made before the transaction)."""

    data: UserCreate
    password_hash: str | None


@dataclass(frozen=True)
class Duplicate:
    """Two records of one batch that would be one codx-db user (or two users that look the same)."""

    index: int  # the later record's position
    field: str  # "username", "email" or "github"
    first: int  # the position of the earlier record it repeats
    looks_alike: bool = False  # the same confusable skeleton, not the same name
    first_field: str = ""  # the earlier record's field holding it, when not ``field`` (a name that is an email)


def find_duplicates(records: Iterable[tuple[int, UserCreate]]) -> list[Duplicate]:
    """Records whose username, email or GitHub login an earlier record holds (``repository.check_unique``'s keys).

    Usernames ignore case and look-alikes (the confusable skeleton); a username holding an @ must
    not be another record's email, nor an email another record's username (a login by that address
    would find two users).
    """
    seen: dict[tuple[str, str], int] = {}  # (kind of key, key) -> the first record holding it
    found: list[Duplicate] = []
    for index, data in records:
        name = data.username
        same = seen.setdefault(("username", username_key(name)), index)
        alike = seen.setdefault(("skeleton", username_skeleton(name)), index)
        claim = login_claim(name)  # a username that is also a login by email
        as_email = seen.get(("email", claim)) if claim is not None else None
        if same != index:
            found.append(Duplicate(index, "username", same))
        elif alike != index:
            found.append(Duplicate(index, "username", alike, looks_alike=True))
        elif as_email is not None:
            found.append(Duplicate(index, "username", as_email, first_field="email"))
        if data.email:
            same = seen.setdefault(("email", email_key(data.email)), index)
            as_name = seen.get(("username", username_key(data.email)), index)
            if same != index:
                found.append(Duplicate(index, "email", same))
            elif as_name != index:
                found.append(Duplicate(index, "email", as_name, first_field="username"))
        if data.github:  # GitHub logins are unique too (generation 5), ignoring case
            same = seen.setdefault(("github", github_key(data.github)), index)
            if same != index:
                found.append(Duplicate(index, "github", same))
    return found


def prepare_records(records: Iterable[Mapping[str, Any]], policy: PasswordPolicy) -> list[PreparedUser]:
    """Validate ``UserDB.import_users``' records as a batch, then hash their clear passwords.

    Every record is checked (its fields, a clear password against ``policy``, the records
    before it) and every problem is named (``records[3].email: ...``) in one InvalidUserData;
    only then are passwords hashed, so a bad record does not cost 20 ms per good one first.
    """
    if isinstance(records, (str, bytes, Mapping)) or not isinstance(records, Iterable):
        raise InvalidUserData(["records: must be an iterable of mappings (one per user)"])
    checked: list[tuple[int, UserRecord]] = []
    problems: list[str] = []
    for index, record in enumerate(records):
        where = f"records[{index}]"
        if not isinstance(record, Mapping):
            problems.append(f"{where}: must be a mapping of user fields")
            continue
        unknown = sorted(shown_field(key) for key in record if key not in RECORD_FIELDS)
        if unknown:
            problems.append(f"{where}: unknown field(s) {joined(unknown, MAX_LISTED_FIELDS)}")
            continue
        try:
            data = UserRecord.parse(dict(record))
            if data.password is not None:  # a clear password passes the policy; an imported hash never has to
                policy.check(data.password, data.context())
        except InvalidUserData as exc:
            problems.extend(f"{where}.{message}" for message in exc.errors)
            continue
        checked.append((index, data))
    for duplicate in find_duplicates(checked):
        how = "looks like" if duplicate.looks_alike else "the same as"
        other = f".{duplicate.first_field}" if duplicate.first_field else ""
        problems.append(f"records[{duplicate.index}].{duplicate.field}: {how} records[{duplicate.first}]{other}")
    if problems:
        raise InvalidUserData(problems)  # which lists the first MAX_LISTED_ERRORS
    return [_prepared(data) for _, data in checked]


def _prepared(record: UserRecord) -> PreparedUser:
    password_hash = record.password_hash if record.password is None else hash_password(record.password)
    # The clear password goes no further than its hash.
    return PreparedUser(record.model_copy(update={"password": None, "password_hash": None}), password_hash)
