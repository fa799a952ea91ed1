"""codx-junior's ``global_settings.json`` as pydantic models: the parts codx-db reads, and their messages.

codx-db reads the ``users`` list (``CodxJuniorUser``, with ``CodxJuniorProject`` grants) and the
``user_logins`` list (``CodxJuniorLogin``: a username and a bcrypt hash). Other top-level keys
are not read; other user fields are kept in ``model_extra`` so the import can name (never show)
what it leaves out. A user that fits its shape becomes a ``db.users.records.UserRecord``, the
record ``UserDB.import_users`` validates too, through ``to_user_record``.

Messages name the entry and the field and say what was expected and what kind of JSON value
was found, never the value (a hand-written file may hold a plain password):
``users[2] ('x'): theme: expected a string, found a number``, ``users[1]: username is missing``,
``projects[0] ('p'): permissions: expected a string, found a number``.

It is also the public name (DESIGN) of the codx-junior user shape for codx-junior's own code,
``from db.codx_junior import to_codx_junior, from_codx_junior``: those functions live in
db/users/codx_junior_shape.py and are re-exported here.
"""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    StrictBool,
    StrictStr,
    ValidationError,
    field_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from db.display import shorten
from db.errors import CodxJuniorFileError
from db.users.codx_junior_shape import api_key_of, from_codx_junior, project_access, summary, to_codx_junior
from db.users.passwords import BCRYPT_HASH, hash_cost_problem
from db.users.records import UserRecord

__all__ = [  # the re-exports; the file models are public by their own names
    "api_key_of",
    "from_codx_junior",
    "project_access",
    "summary",
    "to_codx_junior",
]

MAX_NAME_CHARS = 64  # of a username, project id or field name quoted from the file in a message
# codx-junior's global_settings.json is kilobytes (a megabyte at ten thousand users): a bigger
# file is something else, and json.loads would hold it several times over in memory.
MAX_IMPORT_FILE_BYTES = 64 * 2**20

NOT_BCRYPT = (
    "is not a bcrypt hash ($2a$, $2b$ or $2y$, 60 characters): codx-db imports codx-junior's hashes, "
    "never plain passwords"
)


def _present(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("missing", "is missing")
    return value


def _permissions(value: Any) -> Any:
    # One message for the two forms codx-junior writes (a union would report each form apart).
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise PydanticCustomError(
        "permissions_type", "expected a string or a list of strings, found {kind}", {"kind": kind(value)}
    )


Name = Annotated[StrictStr, AfterValidator(_present)]


class _Shape(BaseModel):
    # JSON types as codx-junior writes them: 5 is not a string, "no" is not a boolean.
    model_config = ConfigDict(strict=True, extra="ignore", hide_input_in_errors=True)


class CodxJuniorProject(_Shape):
    """One project grant: ``children`` None means codx-junior's default (the children too)."""

    project_id: StrictStr
    # Kept as codx-junior wrote it: "tasks,coder", or a list ([] is its default, and what a
    # missing or null value means: as UserDB.sync reads it, db/users/codx_junior_shape.py).
    permissions: Annotated[Any, BeforeValidator(_permissions)] = []
    # codx-junior's default is true; an explicit null is kept as null (it round-trips).
    children: StrictBool | None = True
    apps: list[StrictStr] | None = None

    def to_permission(self) -> dict[str, Any]:
        """codx-db's ``ProjectPermission`` fields."""
        return {
            "project_id": self.project_id,
            "permissions": [] if self.permissions is None else self.permissions,
            "children": self.children,
            "apps": self.apps or [],
        }


class CodxJuniorUser(_Shape):
    """One entry of ``users``; fields codx-db does not store stay in ``model_extra``."""

    model_config = ConfigDict(extra="allow")

    username: Name
    email: StrictStr | None = None
    full_name: StrictStr | None = None
    avatar: StrictStr | None = None
    theme: StrictStr | None = None
    role: StrictStr | None = None
    github: StrictStr | None = None
    disabled: StrictBool | None = None
    projects: list[CodxJuniorProject] | None = None
    apps: list[StrictStr] | None = None
    api_key: StrictStr | None = None  # stored hashed (db.users.credentials), not in the user record

    def ignored_fields(self) -> list[str]:
        """The names of the fields codx-db does not store (``token``...) that hold a value.

        ``""``, ``null``, ``[]``, ``{}`` and ``false`` are codx-junior's defaults: nothing is lost.
        """
        return sorted(name for name, value in (self.model_extra or {}).items() if _has_value(value))

    def to_user_record(self) -> UserRecord:
        """The codx-db record of this user (no password: logins are separate); InvalidUserData."""
        return UserRecord.parse(
            {
                "username": self.username,
                "email": self.email or None,  # codx-junior writes "" for no email
                "full_name": self.full_name or "",
                "avatar": self.avatar or "",
                "theme": "dim" if self.theme is None else self.theme,  # "" is kept, as sync keeps it
                "role": self.role or "user",
                "github": self.github or "",
                "is_active": not self.disabled,
                "projects": [project.to_permission() for project in self.projects or []],
                "apps": self.apps or [],
            }
        )


def _has_value(value: Any) -> bool:
    return value is not None and value is not False and value not in ("", [], {})


class CodxJuniorLogin(_Shape):
    """One entry of ``user_logins``: a bcrypt hash (None when codx-junior has none for the user)."""

    username: Name
    password: Any = None

    @field_validator("password")
    @classmethod
    def _bcrypt(cls, value: Any) -> str | None:
        if value is None or value == "":
            return None
        if not isinstance(value, str) or not BCRYPT_HASH.fullmatch(value):
            raise PydanticCustomError("not_bcrypt", NOT_BCRYPT)
        problem = hash_cost_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


class CodxJuniorSettingsFile(_Shape):
    """The file: its two lists, each entry validated on its own so that every bad one is named."""

    users: list[Any] | None = None
    user_logins: list[Any] | None = None

    @classmethod
    def read(cls, path: Path) -> CodxJuniorSettingsFile:
        """Load and check the file's outline; CodxJuniorFileError names the file and the problem."""
        data = _load_json(path)
        if not isinstance(data, dict):
            raise CodxJuniorFileError(
                f"{path}: expected a JSON object (codx-junior's global settings), found {kind(data)}"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise CodxJuniorFileError(f"{path}: " + "; ".join(messages(exc, data))) from None


M = TypeVar("M", bound=BaseModel)


def parse_entry(model: type[M], raw: Any, where: str) -> tuple[M | None, str, list[str]]:
    """``raw`` as ``model``: (the entry or None, ``where`` with the entry's name, its problems)."""
    username = raw.get("username") if isinstance(raw, dict) else None
    named = f"{where} ({quoted(username)})" if isinstance(username, str) and username.strip() else where
    try:
        return model.model_validate(raw), named, []
    except ValidationError as exc:
        return None, named, [f"{named}: {message}" for message in messages(exc, raw)]


def messages(exc: ValidationError, raw: Any) -> list[str]:
    """One message per problem: the path in the entry, what was expected, what kind of value was found."""
    return [_message(error, raw) for error in exc.errors(include_url=False)]


_EXPECTED = {
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}


def _message(error: ErrorDetails, raw: Any) -> str:
    path = _path(error["loc"], raw)
    if error["type"] == "missing":
        return f"{path} is missing"
    if error["type"] == "not_bcrypt":
        return f"{path} {error['msg']}"
    if error["type"] in _EXPECTED:
        text = f"expected {_EXPECTED[error['type']]}, found {kind(error.get('input'))}"
    else:
        text = error["msg"].removeprefix("Value error, ")
    return f"{path}: {text}" if path else text


def _path(loc: tuple[int | str, ...], raw: Any) -> str:
    """``("projects", 0, "permissions")`` as ``projects[0] ('p'): permissions`` (a project is named by its id)."""
    parts: list[str] = []
    node = raw
    for depth, step in enumerate(loc):
        node = _child(node, step)
        if isinstance(step, int) and parts:
            parts[-1] += f"[{step}]"
            project_id = node.get("project_id") if isinstance(node, dict) else None
            if isinstance(project_id, str) and loc[depth + 1 :] not in ((), ("project_id",)):
                parts[-1] += f" ({quoted(project_id)})"
        else:
            parts.append(shorten(str(step), MAX_NAME_CHARS))
    return ": ".join(parts)


def _child(node: Any, step: int | str) -> Any:
    if isinstance(node, dict):
        return node.get(step)
    if isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node):
        return node[step]
    return None


def quoted(text: str) -> str:
    """A name from the file, quoted for a message: a 100 KB username is not echoed whole."""
    return shorten(repr(text), MAX_NAME_CHARS)


def kind(value: Any) -> str:
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


def _load_json(path: Path) -> Any:
    try:
        # Looked at before it is opened: a FIFO would wait for a writer forever, /dev/zero fill memory.
        status = path.stat()
        if not stat.S_ISREG(status.st_mode):
            raise CodxJuniorFileError(f"{path}: not a regular file (codx-junior's global_settings.json is one)")
        if status.st_size > MAX_IMPORT_FILE_BYTES:
            raise CodxJuniorFileError(
                f"{path}: larger than {MAX_IMPORT_FILE_BYTES // 2**20} MiB: not codx-junior's global_settings.json"
            )
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CodxJuniorFileError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CodxJuniorFileError(f"{path}: cannot read it ({exc})") from None
    try:
        return json.loads(text)
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
