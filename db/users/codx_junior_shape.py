"""codx-junior's user shape: a ``CodxUser`` as codx-junior's ``model/model.py`` writes it, and back.

codx-junior (gbrian/codx-junior) keeps each user as ``CodxUser{username, email, avatar, theme,
projects, role, token, disabled, github, apps, api_key}`` (every field optional). These functions
are the only place that knows that shape, so codx-junior's code can keep speaking it:

* ``to_codx_junior(user, token=...)``: exactly codx-junior's 11 keys in its order; ``email`` is
  ``""`` when there is none; project ``permissions`` come back as written (a string, or a list).
  Secrets never leave: ``token`` is the one passed in (a login response), ``api_key`` is always
  ``""`` (keys are stored hashed and shown once, by ``create_api_key``), hashes appear nowhere.
* ``from_codx_junior(data)``: ``UserDB.create``'s keyword arguments, validated. ``disabled``
  becomes ``is_active``, ``email ""`` becomes None, a None field its codx-junior default.
  ``token`` is dropped (codx-db issues its own tokens; a codx-junior JWT means nothing here) and
  so is ``api_key``: it is a secret, and ``create`` stores no secret. Its caller gets it with
  ``api_key_of(data)`` and hands it to the credential store (``import_api_key``, as ``sync`` and
  the importer do), which keeps only its hash. An unknown field is refused by name.
* ``project_access(user, project_id)``: codx-junior's ``get_user_project_access``.
* ``summary(user)``: the ``{"username", "avatar"}`` entries of codx-junior's user lists.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from db.errors import InvalidUserData, shown_field
from db.users.schemas import CodxUser, ProjectPermission, UserCreate

# codx-junior's CodxUser fields, in the order its model declares them.
CODX_JUNIOR_FIELDS = (
    "username",
    "email",
    "avatar",
    "theme",
    "projects",
    "role",
    "token",
    "disabled",
    "github",
    "apps",
    "api_key",
)
# codx-db field names accepted beside them (one record serves both vocabularies).
CODX_DB_FIELDS = ("full_name", "is_active", "is_superuser")
SECRET_FIELDS = ("token", "api_key")

# A None field (codx-junior declares all of them Optional) means codx-junior's default.
_NONE_MEANS: dict[str, Any] = {"avatar": "", "theme": "dim", "projects": [], "role": None, "github": "", "apps": []}
_PROJECT_FIELDS = ("project_id", "permissions", "children", "apps")


def to_codx_junior(user: CodxUser, *, token: str = "") -> dict[str, Any]:
    """The user as codx-junior's ``CodxUser`` dict (its 11 keys, its order); ``token`` for a login response."""
    if not isinstance(user, CodxUser):
        raise InvalidUserData(["user: must be a CodxUser (from UserDB)"])
    if not isinstance(token, str):
        raise InvalidUserData(["token: must be a string"])
    return {
        "username": user.username,
        "email": user.email or "",
        "avatar": user.avatar,
        "theme": user.theme,
        "projects": [_project_to_codx_junior(project) for project in user.projects],
        "role": user.role,
        "token": token,
        "disabled": not user.is_active,
        "github": user.github,
        "apps": list(user.apps),
        "api_key": "",
    }


def _project_to_codx_junior(project: ProjectPermission) -> dict[str, Any]:
    permissions = project.permissions
    return {
        "project_id": project.project_id,
        "permissions": permissions if isinstance(permissions, str) else list(permissions),
        "children": project.children,
        "apps": list(project.apps),
    }


def from_codx_junior(data: Mapping[str, Any]) -> dict[str, Any]:
    """``UserDB.create`` keyword arguments from a codx-junior ``CodxUser`` dict; InvalidUserData names each problem.

    Secrets are not among them: ``token`` is dropped, ``api_key`` is read with ``api_key_of``.
    """
    checked, _ = check_codx_junior(data)
    kwargs = checked.model_dump(exclude={"projects", "apps"})
    kwargs["projects"] = [_project_to_codx_junior(project) for project in checked.projects]
    kwargs["apps"] = list(checked.apps)
    return kwargs


def api_key_of(data: Mapping[str, Any]) -> str | None:
    """The record's codx-junior API key to import (hashed) into the credential store, or None if empty."""
    key = data.get("api_key") if isinstance(data, Mapping) else None
    if key is None or key == "":
        return None
    if not isinstance(key, str):
        raise InvalidUserData(["api_key: must be a string"])
    return key


def check_codx_junior(data: Mapping[str, Any], extra: tuple[str, ...] = ()) -> tuple[UserCreate, set[str]]:
    """(validated fields, names of the fields given); ``extra``: more keys the caller handles itself.

    Every problem of the record is in one InvalidUserData (``field: message``), never a value.
    """
    if not isinstance(data, Mapping):
        raise InvalidUserData(["record: must be a mapping of codx-junior CodxUser fields"])
    known = (*CODX_JUNIOR_FIELDS, *CODX_DB_FIELDS, *extra)
    problems = [
        f"{shown_field(key)}: unknown field (codx-db stores codx-junior's CodxUser fields)"
        for key in data
        if key not in known
    ]
    for name in SECRET_FIELDS:
        if data.get(name) is not None and not isinstance(data[name], str):
            problems.append(f"{name}: must be a string")
    username = data.get("username")
    missing = username is None or (isinstance(username, str) and not username.strip())
    if missing:
        problems.append("username: is missing")
    active = _is_active(data, problems)
    # The other fields are checked too (a placeholder for a missing username): every problem in one answer.
    fields: dict[str, Any] = {"username": "placeholder" if missing else username, "is_active": active}
    email = data.get("email")
    fields["email"] = None if email == "" else email
    for name, default in _NONE_MEANS.items():
        value = data.get(name)
        fields[name] = default if value is None else value
    for name in ("full_name", "is_superuser"):
        if name in data:
            fields[name] = data[name]
    if isinstance(fields["projects"], tuple):  # CodxUser.model_dump() gives tuples
        fields["projects"] = list(fields["projects"])
    if isinstance(fields["projects"], list):
        fields["projects"] = [_project_from_codx_junior(entry) for entry in fields["projects"]]
    if isinstance(fields["apps"], tuple):
        fields["apps"] = list(fields["apps"])
    try:
        checked = UserCreate.parse(fields)  # every field rule; InvalidUserData lists each problem
    except InvalidUserData as exc:
        raise InvalidUserData(problems + exc.errors) from None
    if problems:
        raise InvalidUserData(problems)
    return checked, {key for key in data if key not in SECRET_FIELDS}


def _is_active(data: Mapping[str, Any], problems: list[str]) -> bool:
    """``is_active`` from codx-junior's ``disabled`` and/or codx-db's ``is_active`` (they must agree)."""
    disabled, active = data.get("disabled"), data.get("is_active")
    if disabled is not None and not isinstance(disabled, bool):
        problems.append("disabled: must be true or false")
        return True
    if active is not None and not isinstance(active, bool):
        problems.append("is_active: must be true or false")
        return True
    if disabled is not None and active is not None and disabled == active:
        problems.append("disabled: contradicts is_active")
    if active is not None:
        return active
    return not disabled


def _project_from_codx_junior(entry: Any) -> Any:
    """One grant with codx-junior's defaults filled: permissions ``[]``, children true, apps ``[]``."""
    if not isinstance(entry, Mapping):
        return entry  # the schema names the bad entry
    project = dict(entry)
    if project.get("permissions") is None:
        project["permissions"] = []  # what codx-junior writes when none were given (null alike)
    if project.get("apps") is None:
        project["apps"] = []
    project.setdefault("children", True)
    for key in ("permissions", "apps"):
        if isinstance(project[key], tuple):
            project[key] = list(project[key])
    return project


def project_access(user: CodxUser, project_id: str) -> str | list[str]:
    """codx-junior's ``get_user_project_access``: "admin" for admins, else the project's permissions, else "".

    Permissions come back as written (a string, or a list when codx-junior stored one).
    """
    if not isinstance(user, CodxUser):
        raise InvalidUserData(["user: must be a CodxUser (from UserDB)"])
    if not isinstance(project_id, str):
        raise InvalidUserData(["project_id: must be a string"])
    if user.role == "admin":
        return "admin"
    for project in user.projects:
        if project.project_id == project_id:
            permissions = project.permissions
            return permissions if isinstance(permissions, str) else list(permissions)
    return ""


def summary(user: CodxUser) -> dict[str, str]:
    """The entry of codx-junior's user lists (``GET /api/users``, project members)."""
    if not isinstance(user, CodxUser):
        raise InvalidUserData(["user: must be a CodxUser (from UserDB)"])
    return {"username": user.username, "avatar": user.avatar}


__all__ = [
    "CODX_JUNIOR_FIELDS",
    "api_key_of",
    "check_codx_junior",
    "from_codx_junior",
    "project_access",
    "summary",
    "to_codx_junior",
]
