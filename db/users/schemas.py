"""Pydantic schemas: what goes into UserDB (validated input) and what comes out (``CodxUser``).

Rules (documented in the README):

* username: 1-254 characters after trimming, stored with its exact spelling; any printable
  character (spaces and ``@`` included) but no control, format, private-use or unassigned
  characters, no two spaces in a row, one script (UTS #39 "highly restrictive", see
  ``db.unicode_policy``). Unique ignoring case and compatibility forms (NFKC + casefold key),
  and a new name must not look like a stored one (same confusable skeleton).
* email: optional (``""`` means none, as codx-junior writes it); a syntactically valid address
  (email-validator, no DNS lookup; special-use domains such as ``localhost`` and ``*.local``
  accepted), at most 254 characters; unique ignoring case.
* full_name: at most 200 characters, no control characters, no bidi controls or other
  invisible formatting characters (zero-width joiners and variation selectors are allowed).
* password: see ``db.passwords`` (8-1024 characters).
* role: ``user`` or ``admin`` (kept equal to ``is_superuser``: admin <=> superuser).
* avatar: a URL or path, at most 2048 characters; theme: 0-64 letters, digits, ``_`` or ``-``.
* apps: codx-junior's app names (``coder``, ``viewer``...): at most 64, each 1-64 characters,
  order and duplicates kept.
* github: empty or a GitHub login (1-39 letters, digits or single hyphens).
* projects: per-project grants, ``{project_id, permissions, children, apps}``; project ids
  unique, 1-128 characters; permissions kept as codx-junior writes them: a string of at most
  256 characters (``"tasks,coder"``) or a list (its default ``[]``) of at most 64 names;
  ``children`` (true, false or None) says whether it applies to child projects; ``apps`` as above.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    StrictBool,
    StrictStr,
    ValidationError,
    ValidationInfo,
    computed_field,
    field_validator,
    model_validator,
)

from db.errors import InvalidUserData, shown_field
from db.users.normalize import (
    MAX_PROJECTS,
    PERMISSIONS_MAX,
    PROJECT_ID_MAX,
    check_shown_text,
    email_for_lookup,
    normalize_apps,
    normalize_avatar,
    normalize_email,
    normalize_full_name,
    normalize_github,
    normalize_optional_email,
    normalize_permission_list,
    normalize_role,
    normalize_theme,
    normalize_username,
)

if TYPE_CHECKING:
    from db.users.models import User


class ProjectPermission(BaseModel):
    """What a user may do in one codx-junior project (and, if ``children``, its children)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    project_id: StrictStr
    # As codx-junior wrote it: a string, or a list (stored and returned as a tuple).
    permissions: StrictStr | tuple[StrictStr, ...] = ""
    children: StrictBool | None = True
    apps: tuple[StrictStr, ...] = ()

    @field_validator("permissions", "apps", mode="before")
    @classmethod
    def _list_to_tuple(cls, value: Any) -> Any:
        # JSON and codx-junior give lists; the model is immutable, so it holds tuples.
        return tuple(value) if isinstance(value, list) else value

    @field_validator("project_id")
    @classmethod
    def _project_id(cls, value: str) -> str:
        value = value.strip()
        if not 1 <= len(value) <= PROJECT_ID_MAX:
            raise ValueError(f"must be 1-{PROJECT_ID_MAX} characters")
        check_shown_text(value)
        return value

    @field_validator("permissions")
    @classmethod
    def _permissions(cls, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
        if isinstance(value, tuple):
            return normalize_permission_list(value)
        value = value.strip()
        if len(value) > PERMISSIONS_MAX:
            raise ValueError(f"must be at most {PERMISSIONS_MAX} characters")
        check_shown_text(value)
        return value

    @field_validator("apps")
    @classmethod
    def _apps(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return normalize_apps(value)


# The stored form of one grant: (project_id, permissions, children, apps). Generation 5 added
# apps; older databases hold (project_id, permissions, children) until evolve5 rewrites them.
ProjectTuple = tuple[str, str | tuple[str, ...], bool | None, tuple[str, ...]]
OldProjectTuple = tuple[str, str, bool]


def project_to_tuple(project: ProjectPermission) -> ProjectTuple:
    """The stored form of one grant."""
    return (project.project_id, project.permissions, project.children, project.apps)


def projects_to_tuple(projects: list[ProjectPermission] | tuple[ProjectPermission, ...]) -> tuple[ProjectTuple, ...]:
    """The stored form: immutable, sorted by project id (ids are unique: nothing else is compared)."""
    return tuple(sorted((project_to_tuple(p) for p in projects), key=lambda entry: entry[0]))


def upgrade_project_tuple(entry: ProjectTuple | OldProjectTuple) -> ProjectTuple:
    """A stored grant in generation 5's form (an old 3-field one gets no apps)."""
    if len(entry) == 3:
        project_id, permissions, children = entry
        return (project_id, permissions, children, ())
    return entry


def projects_from_tuple(stored: tuple[ProjectTuple | OldProjectTuple, ...]) -> tuple[ProjectPermission, ...]:
    """Back to schema objects; reads the 3-field grants of databases before generation 5 too."""
    return tuple(
        ProjectPermission(project_id=p, permissions=perms, children=c, apps=apps)
        for p, perms, c, apps in map(upgrade_project_tuple, stored)
    )


def parse_project(data: dict[str, Any]) -> ProjectPermission:
    """One project grant from keyword values; InvalidUserData names each bad field."""
    try:
        return ProjectPermission.model_validate(data)
    except ValidationError as exc:
        raise InvalidUserData(_messages(exc)) from None


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
    apps: tuple[str, ...] = ()
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
            apps=user.apps,
            created_at=user.created_at,
            updated_at=user.updated_at,
        )


_NO_SERIAL = b"\0" * 8  # ZODB's z64: the serial of an object never committed


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


# Field -> its rule (db/users/normalize.py); None means "not given" in an update.
_NORMALIZERS: dict[str, Callable[[Any], Any]] = {
    "username": normalize_username,
    "email": normalize_optional_email,
    "full_name": normalize_full_name,
    "avatar": normalize_avatar,
    "theme": normalize_theme,
    "role": normalize_role,
    "github": normalize_github,
    "projects": check_projects,
    "apps": normalize_apps,
}


class _UserFields(_Input):
    """The validator shared by create and update (None means "not given" in an update)."""

    @field_validator(*_NORMALIZERS, check_fields=False)
    @classmethod
    def _normalize(cls, value: Any, info: ValidationInfo) -> Any:
        return None if value is None else _NORMALIZERS[info.field_name or ""](value)


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
    apps: list[StrictStr] | tuple[StrictStr, ...] = ()

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
    apps: list[StrictStr] | tuple[StrictStr, ...] | None = None

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
        # A loc may hold a key of the input (an unknown field): cut a 100 kB one short.
        where = ".".join(shown_field(p) for p in err["loc"]) or "input"
        if err["type"] == "extra_forbidden":
            messages.append(f"{where}: unknown field")
            continue
        messages.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return messages


__all__ = [
    "CodxUser",
    "ProjectPermission",
    "ProjectTuple",
    "UserCreate",
    "UserUpdate",
    "check_projects",
    "email_for_lookup",
    "normalize_email",
    "normalize_username",
    "parse_project",
    "project_to_tuple",
    "projects_from_tuple",
    "projects_to_tuple",
    "upgrade_project_tuple",
]
