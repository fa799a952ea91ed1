"""codx-db in FastAPI: a lifespan, dependencies (the user DB, the current user) and one error handler.

``pip install codx-db[fastapi]``. The endpoints are ``async def`` and call ``AsyncUserDB``
(db/async_user_db.py, re-exported here), whose calls run on worker threads.
"""

from __future__ import annotations

import builtins
import functools
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import anyio
from fastapi import Depends, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.applications import Starlette
from starlette.requests import HTTPConnection

from db.async_user_db import AsyncUserDB, run_in_thread
from db.database import Database
from db.errors import (
    CodxDBError,
    CommitOutcomeUnknown,
    DatabaseTimeout,
    DatabaseUnavailable,
    GenerationError,
    HistoryUnavailable,
    InvalidUserData,
    NotAuthenticated,
    PermissionDenied,
    ReadOnlyDatabase,
    StorageFull,
    StorageInUse,
    TransactionTooLarge,
    UserAlreadyExists,
    UserNotFound,
    WriteContention,
    shown,
)
from db.ops.import_codx_junior import import_at_first_start
from db.users.schemas import CodxUser

__all__ = [
    "API_KEY_HEADER",
    "CODX_JUNIOR_TOKEN_HEADER",
    "STATE_KEY",
    "AsyncUserDB",
    "Credential",
    "CurrentSuperuser",
    "CurrentUser",
    "OptionalUser",
    "Users",
    "add_exception_handler",
    "codx_db_exception_handler",
    "credential",
    "current_superuser",
    "current_user",
    "lifespan",
    "optional_user",
    "user_db",
    "validation_detail",
]

log = logging.getLogger(__name__)

STATE_KEY = "codx_db"  # the AsyncUserDB's name in the lifespan state and on app.state
API_KEY_HEADER = "X-API-Key"
# codx-junior's client sends its token as "Authentication: Bearer <token>" (sic).
CODX_JUNIOR_TOKEN_HEADER = "Authentication"


# -- lifespan ------------------------------------------------------------------------------------


def lifespan(
    database: Database | None = None,
    *,
    actor: str | None = "codx-api",
    limiter: anyio.CapacityLimiter | None = None,
    import_from: Path | None = None,
) -> Callable[[Any], AbstractAsyncContextManager[dict[str, Any]]]:
    """A lifespan that opens ``database`` (the global ``db`` by default) at start-up and closes it at shutdown.

    ``FastAPI(lifespan=lifespan())``. Opening at start-up makes a database the code refuses (a
    generation to migrate, one newer than the code, a locked file) fail the boot, not the first
    request. The AsyncUserDB is in the lifespan state and on ``app.state`` as ``codx_db``. An app
    with a lifespan of its own enters this one inside it::

        @asynccontextmanager
        async def app_lifespan(app):
            async with codx_db_lifespan(app) as state:
                yield {**state, "other": ...}

    ``import_from``: codx-junior's ``global_settings.json``. When the file exists and the database
    has no users yet, its users are imported once at start-up (``--skip-invalid``: refused
    entries are logged by position and reason), so switching a running
    codx-junior to codx-db needs no separate step. The import is recorded in the database: later
    starts import nothing, even once every user was deleted (a revoked key stays revoked).
    """

    @asynccontextmanager
    async def codx_db_lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
        users = AsyncUserDB(database, actor=actor, limiter=limiter)
        app_state = getattr(app, "state", None)
        try:
            # Opening reads files or connects to PostgreSQL and may run generations: off the loop.
            await run_in_thread(users.database.open)
            if import_from is not None:
                await run_in_thread(functools.partial(_first_start_import, users.database, import_from, actor))
            if app_state is not None:
                setattr(app_state, STATE_KEY, users)
            yield {STATE_KEY: users}
        finally:
            if app_state is not None and getattr(app_state, STATE_KEY, None) is users:
                delattr(app_state, STATE_KEY)
            # FileStorage writes its index, RelStorage its cache; a no-op if opening failed.
            await run_in_thread(users.database.close)

    return codx_db_lifespan


def _first_start_import(database: Database, path: Path, actor: str | None) -> None:
    """Import codx-junior's users into a database that never had them (the one-time switch), or do nothing."""
    if not path.is_file() or database.settings.db_read_only or database.open().storage.isReadOnly():
        return  # read-only (the setting, or a config's read-only storage): nothing can be imported
    report = import_at_first_start(database, path, actor)
    if report is None:
        return  # switched before: a record of it, or users
    log.info("imported %d codx-junior users from %s", len(report.created), path)
    for refusal in report.refused:
        log.warning("codx-junior import: %s not imported: %s", refusal.where, "; ".join(refusal.reasons))


# -- dependencies --------------------------------------------------------------------------------


def user_db(connection: HTTPConnection) -> AsyncUserDB:
    """The app's AsyncUserDB (put there by ``lifespan``)."""
    users = getattr(connection.state, STATE_KEY, None) or getattr(connection.app.state, STATE_KEY, None)
    if not isinstance(users, AsyncUserDB):
        raise RuntimeError(
            "codx-db: no AsyncUserDB on this app: pass lifespan=db.fastapi.lifespan() to FastAPI, "
            "or enter it in the app's own lifespan"
        )
    return users


class Credential(NamedTuple):
    """What a request presented: an access token or an API key (the secret is never logged)."""

    kind: Literal["token", "api_key"]
    secret: str

    def __repr__(self) -> str:
        return f"Credential({self.kind}, ***)"


# Declared as security schemes so OpenAPI (and /docs) shows how to authenticate; none of
# them fails on its own (auto_error=False): the dependencies below decide.
_authorization = HTTPBearer(auto_error=False, description="Authorization: Bearer <token>")
_authentication = APIKeyHeader(
    name=CODX_JUNIOR_TOKEN_HEADER,
    auto_error=False,
    scheme_name="codx-junior token",
    description="codx-junior's client header: Authentication: Bearer <token>",
)
_api_key = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, scheme_name="API key")


def credential(
    connection: HTTPConnection,  # not Request: a WebSocket endpoint has the same headers
    authorization: Annotated[HTTPAuthorizationCredentials | None, Security(_authorization)],
    authentication: Annotated[str | None, Security(_authentication)],
    api_key: Annotated[str | None, Security(_api_key)],
) -> Credential | None:
    """The request's credential: ``Authorization: Bearer``, else ``Authentication: Bearer``, else ``X-API-Key``.

    The first one present decides: a bad token never falls through to a key, nor does a header
    that is there but empty or of another scheme (``Basic``): FastAPI's readers answer None for
    those, as for an absent header, so presence is read from the request itself.
    """
    if authorization is not None:
        return Credential("token", authorization.credentials)
    headers = connection.headers
    if "authorization" in headers or (not authentication and CODX_JUNIOR_TOKEN_HEADER in headers):
        return Credential("token", "")  # present but not a bearer token: matches nobody
    if authentication:
        # codx-junior takes the last word of the header: "Bearer <token>" (or a bare token).
        words = authentication.split()
        if len(words) == 1 or (len(words) == 2 and words[0].lower() == "bearer"):
            return Credential("token", words[-1])
        return Credential("token", "")  # present but malformed: matches nobody
    if api_key:
        return Credential("api_key", api_key)
    return None


async def _lookup(users: AsyncUserDB, found: Credential) -> CodxUser | None:
    if not found.secret:
        return None
    user = await (users.get_by_token if found.kind == "token" else users.get_by_api_key)(found.secret)
    # The lookups drop inactive users already; checked again because a 401 is the safe answer.
    return user if user is not None and user.is_active else None


async def optional_user(
    users: Annotated[AsyncUserDB, Depends(user_db)],
    found: Annotated[Credential | None, Depends(credential)],
) -> CodxUser | None:
    """The active user the request's token or API key belongs to, or None (anonymous or not valid)."""
    return None if found is None else await _lookup(users, found)


async def current_user(
    users: Annotated[AsyncUserDB, Depends(user_db)],
    found: Annotated[Credential | None, Depends(credential)],
) -> CodxUser:
    """The active user the request's token or API key belongs to; NotAuthenticated (401) otherwise."""
    if found is None:
        raise NotAuthenticated(
            f"not authenticated: send Authorization: Bearer <token> (or {CODX_JUNIOR_TOKEN_HEADER}: Bearer <token>) "
            f"or {API_KEY_HEADER}: <key>"
        )
    user = await _lookup(users, found)
    if user is None:
        if found.kind == "token":
            raise NotAuthenticated("the token is unknown, expired or revoked, or its user is disabled: log in again")
        # API keys do not expire, and logging in gives a token, not a key.
        raise NotAuthenticated("the API key is unknown or revoked, or its user is disabled: ask for a new key")
    return user


async def current_superuser(user: Annotated[CodxUser, Depends(current_user)]) -> CodxUser:
    """The current user if an admin; PermissionDenied (403) otherwise."""
    if not user.is_superuser:
        raise PermissionDenied(f"user {shown(user.username)} is not an admin")
    return user


Users = Annotated[AsyncUserDB, Depends(user_db)]
CurrentUser = Annotated[CodxUser, Depends(current_user)]
OptionalUser = Annotated[CodxUser | None, Depends(optional_user)]
CurrentSuperuser = Annotated[CodxUser, Depends(current_superuser)]


# -- errors -> HTTP ------------------------------------------------------------------------------

_UNAVAILABLE = (DatabaseUnavailable, DatabaseTimeout, GenerationError, ReadOnlyDatabase, StorageInUse, WriteContention)
# WriteContention is 503, not 409: the request itself is fine and conflicts with no state the
# client could change (409's meaning, as for UserAlreadyExists); the server was too busy with
# other writers to apply it in time, and the same request may succeed later.
RETRY_AFTER_SECONDS = "1"


def add_exception_handler(app: Starlette) -> None:
    """Answer every codx-db error with its HTTP status (``codx_db_exception_handler``)."""
    app.add_exception_handler(CodxDBError, codx_db_exception_handler)


async def codx_db_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    """404 not found (a user, a version), 409 already exists, 422 invalid (FastAPI's shape), 401, 403,
    413 too large for one transaction, 503 unavailable, 507 storage full, else 500.

    503 also for ``WriteContention`` (too many concurrent writers), with ``Retry-After``.

    The message goes to the client: codx-db messages name values and fields, never a secret.
    """
    if isinstance(exc, InvalidUserData):
        return JSONResponse({"detail": validation_detail(exc)}, HTTPStatus.UNPROCESSABLE_ENTITY)
    headers = None
    if isinstance(exc, UserNotFound):
        status = HTTPStatus.NOT_FOUND
    elif isinstance(exc, UserAlreadyExists):
        status = HTTPStatus.CONFLICT
    elif isinstance(exc, NotAuthenticated):
        status, headers = HTTPStatus.UNAUTHORIZED, {"WWW-Authenticate": "Bearer"}
    elif isinstance(exc, PermissionDenied):
        status = HTTPStatus.FORBIDDEN
    elif isinstance(exc, HistoryUnavailable):
        status = HTTPStatus.NOT_FOUND  # no such version (or no history kept): not a server failure
    elif isinstance(exc, TransactionTooLarge):
        status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE  # split the request (batch_size)
    elif isinstance(exc, StorageFull):
        log.error("%s %s: %s", request.method, request.url.path, exc)  # an operator must act; no traceback
        return JSONResponse({"detail": _STORAGE_FULL}, HTTPStatus.INSUFFICIENT_STORAGE)
    elif isinstance(exc, _UNAVAILABLE):
        if isinstance(exc, WriteContention):
            headers = {"Retry-After": RETRY_AFTER_SECONDS}
        log.warning("%s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return JSONResponse({"detail": _unavailable(exc)}, HTTPStatus.SERVICE_UNAVAILABLE, headers=headers)
    else:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal error"}, HTTPStatus.INTERNAL_SERVER_ERROR)
    return JSONResponse({"detail": str(exc)}, status, headers=headers)


# A server-side failure tells the client what happened to its request, never the infrastructure
# behind it (libpq names the server's address, port and database; files have paths): the whole
# message is in the server's log.
_STORAGE_FULL = "the database's storage is full: the change was not saved"


def _unavailable(exc: Exception) -> str:
    if isinstance(exc, CommitOutcomeUnknown):
        return "the database connection was lost during the commit: the change may or may not have been saved"
    if isinstance(exc, WriteContention):
        return str(exc)  # attempts, seconds and the conflict's class: nothing of the infrastructure
    if isinstance(exc, DatabaseTimeout):
        return "the database did not answer in time: try again later"
    if isinstance(exc, ReadOnlyDatabase):
        return "the database is read-only: the change was not saved"
    return "the database is unavailable: try again later"


# "records[3].email: message", "projects.0.project_id: message", "email: message"
_PROBLEM = re.compile(r"(?P<path>[A-Za-z_]\w*(?:\[\d+\])*(?:\.\w+(?:\[\d+\])*)*): (?P<msg>.*)", re.DOTALL)
_PATH_PART = re.compile(r"\[(\d+)\]|\.?(\w+)")


def validation_detail(exc: InvalidUserData) -> builtins.list[dict[str, Any]]:
    """FastAPI's 422 ``detail``: one ``{"loc", "msg", "type"}`` per problem, ``loc`` from the field path."""
    detail = []
    for problem in exc.errors:
        match = _PROBLEM.fullmatch(problem)
        loc: builtins.list[str | int] = ["body"]
        msg = problem
        if match and match["path"] != "input":
            for index, name in _PATH_PART.findall(match["path"]):
                loc.append(int(index) if index else int(name) if name.isdigit() else name)
            msg = match["msg"]
        detail.append({"loc": loc, "msg": msg, "type": "value_error"})
    return detail
