"""Pydantic schemas: what goes into UserDB (validated input) and what comes out (``CodxUser``).

Rules (documented in the README):

* username: 1-64 characters after Unicode NFKC normalisation and trimming; letters and digits
  of any script, ``.``, ``_`` and ``-``; starts with a letter or digit. Unique ignoring case.
* email: optional; a syntactically valid address (email-validator, no DNS lookup), at most
  254 characters; unique ignoring case.
* full_name: at most 200 characters, no control characters.
* password: see ``db.passwords`` (8-1024 characters).
"""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import TYPE_CHECKING, Any

from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict, StrictBool, StrictStr, ValidationError, field_validator

from db.errors import InvalidUserData

if TYPE_CHECKING:
    from db.models import User

USERNAME_MAX = 64
EMAIL_MAX = 254
FULL_NAME_MAX = 200
USERNAME_PUNCTUATION = "._-"


class CodxUser(BaseModel):
    """A user as callers see it: a detached snapshot, never a persistent object or a hash."""

    model_config = ConfigDict(frozen=True)

    id: str
    username: str
    email: str | None
    full_name: str
    is_active: bool
    is_superuser: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_model(cls, user: User) -> CodxUser:
        """Copy the public fields out of a stored user."""
        return cls(
            id=user.id,
            username=user.username,
            email=user.email,
            full_name=user.full_name,
            is_active=user.is_active,
            is_superuser=user.is_superuser,
            created_at=user.created_at,
            updated_at=user.updated_at,
        )


def normalize_username(value: str) -> str:
    """NFKC-normalise, trim and check a username; raise ValueError naming the rule broken."""
    name = unicodedata.normalize("NFKC", value).strip()
    if not name:
        raise ValueError("must not be empty")
    if len(name) > USERNAME_MAX:
        raise ValueError(f"must be at most {USERNAME_MAX} characters")
    if not name[0].isalnum():
        raise ValueError("must start with a letter or digit")
    bad = sorted({c for c in name if not (c.isalnum() or c in USERNAME_PUNCTUATION)})
    if bad:
        shown = "".join(c if c.isprintable() and not c.isspace() else repr(c) for c in bad[:5])
        raise ValueError(f"may hold only letters, digits and {USERNAME_PUNCTUATION!r}, not {shown!r}")
    return name


def normalize_email(value: str) -> str:
    """Validate an email address syntactically; return its normalised form."""
    address = unicodedata.normalize("NFKC", value).strip()
    if len(address) > EMAIL_MAX:
        raise ValueError(f"must be at most {EMAIL_MAX} characters")
    try:
        return validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid email address ({exc})") from None


def normalize_full_name(value: str) -> str:
    """Trim a display name and check its length and characters."""
    name = unicodedata.normalize("NFC", value).strip()
    if len(name) > FULL_NAME_MAX:
        raise ValueError(f"must be at most {FULL_NAME_MAX} characters")
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise ValueError("must not contain control characters")
    return name


class _Input(BaseModel):
    # Strict: 5 is not a username and "yes" is not a bool. Unknown fields are errors.
    model_config = ConfigDict(extra="forbid", strict=True, hide_input_in_errors=True)

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Any:
        """Validate, turning every problem into one InvalidUserData listing them all."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise InvalidUserData(_messages(exc)) from None


class UserCreate(_Input):
    """Input of ``UserDB.create`` (the password is checked and hashed separately)."""

    username: StrictStr
    email: StrictStr | None = None
    full_name: StrictStr = ""
    is_superuser: StrictBool = False
    is_active: StrictBool = True

    @field_validator("username")
    @classmethod
    def _username(cls, value: str) -> str:
        return normalize_username(value)

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        return None if value is None else normalize_email(value)

    @field_validator("full_name")
    @classmethod
    def _full_name(cls, value: str) -> str:
        return normalize_full_name(value)


class UserUpdate(_Input):
    """Input of ``UserDB.update``: only the fields given are changed (``email=None`` clears it)."""

    username: StrictStr | None = None
    email: StrictStr | None = None
    full_name: StrictStr | None = None
    is_superuser: StrictBool | None = None
    is_active: StrictBool | None = None

    @field_validator("username")
    @classmethod
    def _username(cls, value: str | None) -> str | None:
        return None if value is None else normalize_username(value)

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        return None if value is None else normalize_email(value)

    @field_validator("full_name")
    @classmethod
    def _full_name(cls, value: str | None) -> str | None:
        return None if value is None else normalize_full_name(value)

    def changes(self) -> dict[str, Any]:
        """The fields the caller set, with their validated values."""
        return {name: getattr(self, name) for name in self.model_fields_set}


def _messages(exc: ValidationError) -> list[str]:
    messages = []
    for err in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "input"
        if err["type"] == "extra_forbidden":
            messages.append(f"{where}: unknown field")
            continue
        messages.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return messages
