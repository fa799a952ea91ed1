"""Pydantic schemas: what goes into UserDB (validated input) and what comes out (``CodxUser``).

Rules (documented in the README):

* username: 1-64 characters after Unicode NFKC normalisation and trimming; letters, digits and
  combining marks of one script (UTS #39 "highly restrictive", see ``db.unicode_policy``),
  ``.``, ``_``, ``-``, ``@`` and single spaces; starts with a letter or digit; no invisible
  (format, bidi, default-ignorable) characters. Unique ignoring case, and a new name must not
  look like a stored one (same confusable skeleton).
* email: optional; a syntactically valid address (email-validator, no DNS lookup), at most
  254 characters; unique ignoring case.
* full_name: at most 200 characters, no control characters, no bidi controls or other
  invisible formatting characters (zero-width joiners and variation selectors are allowed).
* password: see ``db.passwords`` (8-1024 characters).
* role: ``user`` or ``admin`` (kept equal to ``is_superuser``: admin <=> superuser).
* avatar: a URL or path, at most 2048 characters; theme: 1-64 letters, digits, ``_`` or ``-``.
* github: empty or a GitHub login (1-39 letters, digits or single hyphens).
* projects: per-project permissions, ``{project_id, permissions, children}``; project ids
  unique, 1-128 characters; permissions a string of at most 256 characters (codx-junior
  writes e.g. ``"tasks,coder"``); ``children`` says whether it applies to child projects.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from datetime import datetime
from typing import TYPE_CHECKING, Any, Self

from email_validator import EmailNotValidError, validate_email
from pydantic import (
    BaseModel,
    ConfigDict,
    StrictBool,
    StrictStr,
    ValidationError,
    computed_field,
    field_validator,
    model_validator,
)

from db.errors import InvalidUserData
from db.unicode_policy import describe, find_invisible, invisible_message, mixed_scripts

if TYPE_CHECKING:
    from db.models import User

USERNAME_MAX = 64
EMAIL_MAX = 254
FULL_NAME_MAX = 200
USERNAME_PUNCTUATION = "._-@ "
# UTS #39 5.4: more than 4 nonspacing marks on one letter is "zalgo" text, not a name.
MAX_COMBINING_MARKS = 4
AVATAR_MAX = 2048
PROJECT_ID_MAX = 128
PERMISSIONS_MAX = 256
MAX_PROJECTS = 1000
ROLES = ("user", "admin")
_THEME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_GITHUB_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}")


def _check_visible(value: str, display: bool = True) -> None:
    """ValueError naming the first bidi control or invisible formatting character (see unicode_policy)."""
    invisible = find_invisible(value, display=display)
    if invisible is not None:
        raise ValueError(invisible_message(invisible))


def _has_control_chars(value: str) -> bool:
    # Cc: control characters; Cs: lone surrogates, which cannot be encoded as UTF-8 and would
    # break every JSON response and terminal that later shows the value.
    if value.isprintable():  # the common case, in C: no Cc or Cs character is printable
        return False
    return any(unicodedata.category(c) in ("Cc", "Cs") for c in value)


class ProjectPermission(BaseModel):
    """What a user may do in one codx-junior project (and, if ``children``, its children)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    project_id: StrictStr
    permissions: StrictStr = ""
    children: StrictBool = True

    @field_validator("project_id")
    @classmethod
    def _project_id(cls, value: str) -> str:
        value = value.strip()
        if not 1 <= len(value) <= PROJECT_ID_MAX:
            raise ValueError(f"must be 1-{PROJECT_ID_MAX} characters")
        if _has_control_chars(value):
            raise ValueError("must not contain control characters or lone surrogates")
        _check_visible(value)
        return value

    @field_validator("permissions")
    @classmethod
    def _permissions(cls, value: str) -> str:
        value = value.strip()
        if len(value) > PERMISSIONS_MAX:
            raise ValueError(f"must be at most {PERMISSIONS_MAX} characters")
        if _has_control_chars(value):
            raise ValueError("must not contain control characters or lone surrogates")
        _check_visible(value)
        return value


ProjectTuple = tuple[str, str, bool]


def projects_to_tuple(projects: list[ProjectPermission]) -> tuple[ProjectTuple, ...]:
    """The stored form: immutable, sorted by project id."""
    return tuple(sorted((p.project_id, p.permissions, p.children) for p in projects))


def projects_from_tuple(stored: tuple[ProjectTuple, ...]) -> tuple[ProjectPermission, ...]:
    """Back to schema objects."""
    return tuple(ProjectPermission(project_id=p, permissions=perms, children=c) for p, perms, c in stored)


class CodxUser(BaseModel):
    """A user as callers see it: a detached snapshot, never a persistent object or a hash.

    Immutable all the way down (``projects`` is a tuple of frozen models), so one snapshot of
    a stored revision can be handed to every caller that reads it.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    username: str
    email: str | None
    full_name: str
    is_active: bool
    is_superuser: bool
    avatar: str
    theme: str
    role: str
    github: str
    projects: tuple[ProjectPermission, ...]
    created_at: datetime
    updated_at: datetime

    @computed_field  # type: ignore[prop-decorator]
    @property
    def disabled(self) -> bool:
        """codx-junior's name for ``not is_active``."""
        return not self.is_active

    @classmethod
    def from_model(cls, user: User) -> CodxUser:
        """The snapshot of a stored user, made once per committed revision of it.

        Validating a snapshot is most of what a cached get costs (~3 us of ~10). A committed,
        unchanged user keeps its snapshot in a volatile attribute, keyed by its revision
        (``_p_serial``): ZODB never stores ``_v_`` attributes and drops them when the object
        is invalidated or leaves the cache. A user changed in this unit of work, or not yet
        committed, gets a fresh snapshot every time.
        """
        user._p_activate()  # a ghost has neither state nor a meaningful _p_changed
        serial = user._p_serial
        if user._p_changed is False and serial != _NO_SERIAL:
            cached = user.__dict__.get("_v_codx_snapshot")
            if cached is not None and cached[0] == serial:
                return cached[1]  # type: ignore[no-any-return]
            snapshot = cls._build(user)
            user._v_codx_snapshot = (serial, snapshot)  # a _v_ attribute does not change the user
            return snapshot
        return cls._build(user)

    @classmethod
    def _build(cls, user: User) -> CodxUser:
        return cls(
            id=user.id,
            username=user.username,
            email=user.email,
            full_name=user.full_name,
            is_active=user.is_active,
            is_superuser=user.is_superuser,
            avatar=user.avatar,
            theme=user.theme,
            role=user.role,
            github=user.github,
            projects=projects_from_tuple(user.projects),
            created_at=user.created_at,
            updated_at=user.updated_at,
        )


_NO_SERIAL = b"\0" * 8  # ZODB's z64: the serial of an object never committed


# An ASCII username that passes every rule below (the rules stay the reference).
_PLAIN_USERNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._@-]| (?! ))*")


def normalize_username(value: str) -> str:
    """NFKC-normalise, trim and check a username; raise ValueError naming the rule broken."""
    name = unicodedata.normalize("NFKC", value).strip()
    if not name:
        raise ValueError("must not be empty")
    if len(name) > USERNAME_MAX:
        raise ValueError(f"must be at most {USERNAME_MAX} characters")
    if _PLAIN_USERNAME.fullmatch(name):  # the common case, in C
        return name
    _check_visible(name, display=False)
    if not name[0].isalnum():
        raise ValueError("must start with a letter or digit")
    bad = sorted({c for c in name if not (c.isalnum() or c in USERNAME_PUNCTUATION or _is_mark(c))})
    if bad:
        shown = "".join(c if c.isprintable() and not c.isspace() else repr(c) for c in bad[:5])
        raise ValueError(f"may hold only letters, digits, single spaces and '._-@', not {shown!r}")
    if "  " in name:
        raise ValueError("must not hold two spaces in a row")
    _check_marks(name)
    scripts = mixed_scripts(name)
    if scripts:
        raise ValueError(
            f"mixes the scripts {', '.join(s.title() for s in scripts)}: write it in one script "
            "(mixed scripts make look-alikes of other names)"
        )
    return name


def _is_mark(char: str) -> bool:
    # Nonspacing and spacing combining marks: Devanagari vowel signs, Arabic harakat...
    # Enclosing marks (Me) draw a frame around the letter: not part of a name.
    return unicodedata.category(char) in ("Mn", "Mc")


def _check_marks(name: str) -> None:
    run = 0
    previous = ""
    for char in name:
        if not _is_mark(char):
            run, previous = 0, char
            continue
        run += 1
        if not previous.isalnum():
            raise ValueError(f"{describe(char)} must follow a letter or digit")
        if run > MAX_COMBINING_MARKS:
            raise ValueError(f"at most {MAX_COMBINING_MARKS} combining marks on one letter")


def normalize_email(value: str) -> str:
    """Validate an email address syntactically; return its normalised form."""
    address = unicodedata.normalize("NFKC", value).strip()
    if len(address) > EMAIL_MAX:
        raise ValueError(f"must be at most {EMAIL_MAX} characters")
    local, at, domain = address.rpartition("@")
    if at and _PLAIN_LOCAL_PART.fullmatch(local):
        # The common case, fast: a plain ASCII local part needs no normalisation, and the
        # domain (validated by email-validator, ~100 us) is shared by many users.
        return f"{local}@{_normalized_domain(domain)}"
    return _validate(address).normalized


def _validate(address: str) -> Any:
    try:
        return validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid email address ({exc})") from None


@functools.lru_cache(maxsize=4096)
def _normalized_domain(domain: str) -> str:
    """A domain as email-validator normalises it (lower case, IDNA decoded), cached."""
    return str(_validate(f"a@{domain}").domain)


# RFC 5322 dot-atom of ASCII characters, at most 64 long: what email-validator accepts as a
# local part and returns unchanged.
_PLAIN_LOCAL_PART = re.compile(r"(?=.{1,64}\Z)[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


def email_for_lookup(value: str) -> str:
    """The stored form of an address typed at login or lookup (punycode domains included).

    Anything that does not validate cannot be stored, so it is looked up as typed (and
    simply not found).
    """
    try:
        return normalize_email(value)
    except ValueError:
        return value


def normalize_avatar(value: str) -> str:
    """An avatar URL or path: trimmed, bounded, printable."""
    value = value.strip()
    if len(value) > AVATAR_MAX:
        raise ValueError(f"must be at most {AVATAR_MAX} characters")
    if _has_control_chars(value):
        raise ValueError("must not contain control characters or lone surrogates")
    _check_visible(value, display=False)  # a URL or path: nothing invisible has a place in it
    return value


def normalize_theme(value: str) -> str:
    """A UI theme name such as ``dim`` or ``dark``."""
    value = value.strip()
    if not _THEME_RE.fullmatch(value):
        raise ValueError("must be 1-64 letters, digits, '_' or '-'")
    return value


def normalize_role(value: str) -> str:
    """``user`` or ``admin`` (case-insensitive)."""
    role = value.strip().lower()
    if role not in ROLES:
        raise ValueError(f"must be one of {', '.join(ROLES)}")
    return role


def normalize_github(value: str) -> str:
    """Empty, or a GitHub login."""
    value = value.strip().removeprefix("@")
    if value and not _GITHUB_RE.fullmatch(value):
        raise ValueError("must be a GitHub login: 1-39 letters, digits or single hyphens")
    return value


def check_projects(projects: list[ProjectPermission]) -> list[ProjectPermission]:
    """At most MAX_PROJECTS entries, each project once."""
    if len(projects) > MAX_PROJECTS:
        raise ValueError(f"at most {MAX_PROJECTS} projects")
    seen: set[str] = set()
    for project in projects:
        if project.project_id in seen:
            raise ValueError(f"project {project.project_id!r} is listed twice")
        seen.add(project.project_id)
    return projects


def normalize_full_name(value: str) -> str:
    """Trim a display name and check its length and characters."""
    name = unicodedata.normalize("NFC", value).strip()
    if len(name) > FULL_NAME_MAX:
        raise ValueError(f"must be at most {FULL_NAME_MAX} characters")
    if _has_control_chars(name):
        raise ValueError("must not contain control characters or lone surrogates")
    _check_visible(name)
    return name


class _Input(BaseModel):
    # Strict: 5 is not a username and "yes" is not a bool. Unknown fields are errors.
    model_config = ConfigDict(extra="forbid", strict=True, hide_input_in_errors=True)

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Self:
        """Validate, turning every problem into one InvalidUserData listing them all."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise InvalidUserData(_messages(exc)) from None


class _UserFields(_Input):
    """Validators shared by create and update (None means "not given" in an update)."""

    @field_validator("username", check_fields=False)
    @classmethod
    def _username(cls, value: str | None) -> str | None:
        return None if value is None else normalize_username(value)

    @field_validator("email", check_fields=False)
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        return None if value is None else normalize_email(value)

    @field_validator("full_name", check_fields=False)
    @classmethod
    def _full_name(cls, value: str | None) -> str | None:
        return None if value is None else normalize_full_name(value)

    @field_validator("avatar", check_fields=False)
    @classmethod
    def _avatar(cls, value: str | None) -> str | None:
        return None if value is None else normalize_avatar(value)

    @field_validator("theme", check_fields=False)
    @classmethod
    def _theme(cls, value: str | None) -> str | None:
        return None if value is None else normalize_theme(value)

    @field_validator("role", check_fields=False)
    @classmethod
    def _role(cls, value: str | None) -> str | None:
        return None if value is None else normalize_role(value)

    @field_validator("github", check_fields=False)
    @classmethod
    def _github(cls, value: str | None) -> str | None:
        return None if value is None else normalize_github(value)

    @field_validator("projects", check_fields=False)
    @classmethod
    def _projects(cls, value: list[ProjectPermission] | None) -> list[ProjectPermission] | None:
        return None if value is None else check_projects(value)


class UserCreate(_UserFields):
    """Input of ``UserDB.create`` (the password is checked and hashed separately)."""

    username: StrictStr
    email: StrictStr | None = None
    full_name: StrictStr = ""
    is_superuser: StrictBool | None = None
    is_active: StrictBool = True
    avatar: StrictStr = ""
    theme: StrictStr = "dim"
    role: StrictStr | None = None
    github: StrictStr = ""
    projects: list[ProjectPermission] = []

    @model_validator(mode="after")
    def _role_and_superuser_agree(self) -> UserCreate:
        # codx-junior knows only ``role``; codx-api also reads ``is_superuser``: one follows
        # the other, and a contradiction is an error rather than a silent choice.
        if self.role is None:
            self.role = "admin" if self.is_superuser else "user"
        elif self.is_superuser is not None and self.is_superuser != (self.role == "admin"):
            raise ValueError(f"role {self.role!r} contradicts is_superuser={self.is_superuser}")
        self.is_superuser = self.role == "admin"
        return self


class UserUpdate(_UserFields):
    """Input of ``UserDB.update``: only the fields given change (``email=None`` clears it).

    ``disabled`` is codx-junior's spelling of ``not is_active``; ``role`` and ``is_superuser``
    follow each other.
    """

    username: StrictStr | None = None
    email: StrictStr | None = None
    full_name: StrictStr | None = None
    is_superuser: StrictBool | None = None
    is_active: StrictBool | None = None
    disabled: StrictBool | None = None
    avatar: StrictStr | None = None
    theme: StrictStr | None = None
    role: StrictStr | None = None
    github: StrictStr | None = None
    projects: list[ProjectPermission] | None = None

    def changes(self) -> dict[str, Any]:
        """The stored fields to set, with their validated values."""
        given = {name: getattr(self, name) for name in self.model_fields_set}
        not_null = [n for n in given if given[n] is None and n != "email"]
        if not_null:
            raise InvalidUserData([f"{name}: must not be None" for name in sorted(not_null)])
        problems = []
        if "disabled" in given:
            active = not given.pop("disabled")
            if given.get("is_active", active) != active:
                problems.append("disabled: contradicts is_active")
            given["is_active"] = active
        if "role" in given:
            admin = given["role"] == "admin"
            if given.get("is_superuser", admin) != admin:
                problems.append(f"role: {given['role']!r} contradicts is_superuser={given['is_superuser']}")
            given["is_superuser"] = admin
        elif "is_superuser" in given:
            given["role"] = "admin" if given["is_superuser"] else "user"
        if problems:
            raise InvalidUserData(problems)
        if "projects" in given:
            given["projects"] = projects_to_tuple(given["projects"])
        return given


def _messages(exc: ValidationError) -> list[str]:
    messages = []
    for err in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "input"
        if err["type"] == "extra_forbidden":
            messages.append(f"{where}: unknown field")
            continue
        messages.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return messages
