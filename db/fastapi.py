"""codx-db in async apps (FastAPI, Starlette): AsyncUserDB, a lifespan, dependencies, one error handler.

``pip install codx-db[fastapi]``. UserDB blocks: a ZODB connection belongs to one thread, argon2
spends ~20 ms of CPU per hash and PostgreSQL answers over the network. ``AsyncUserDB`` runs each
call on a worker thread so the event loop keeps serving other requests meanwhile.

Why anyio's ``to_thread.run_sync`` and a ``CapacityLimiter`` rather than a ThreadPoolExecutor:
anyio is what Starlette already runs sync code on (asyncio and trio alike) and there is no
executor to shut down. The limiter is sized to ``db_pool_size`` because ZODB's connection pool is
a soft limit: more units of work at once open extra connections (extra PostgreSQL sessions) with
warnings. Being our own limiter, it does not draw from Starlette's 40 shared tokens. A cancelled
request (a client gone, a ``wait_for`` timeout) keeps its token until its thread ends (see
``AsyncUserDB._call``): its unit of work commits or aborts as a whole, never half, and the bound
holds. argon2-cffi releases the GIL while hashing, so hashes on threads really run beside
the loop.
"""

from __future__ import annotations

import builtins
import functools
import itertools
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from http import HTTPStatus
from typing import Annotated, Any, Literal, NamedTuple, ParamSpec, Protocol, TypeVar, cast

import anyio
import anyio.to_thread
from fastapi import Depends, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.applications import Starlette
from starlette.requests import HTTPConnection

from db.database import Database, UnitOfWork
from db.errors import (
    CodxDBError,
    DatabaseTimeout,
    DatabaseUnavailable,
    GenerationError,
    InvalidUserData,
    NotAuthenticated,
    PermissionDenied,
    StorageInUse,
    UserAlreadyExists,
    UserNotFound,
    shown,
)
from db.history import UserRevision
from db.schemas import CodxUser, ProjectPermission
from db.user_db import UserDB

T = TypeVar("T")
P = ParamSpec("P")

log = logging.getLogger(__name__)

STATE_KEY = "codx_db"  # the AsyncUserDB's name in the lifespan state and on app.state
API_KEY_HEADER = "X-API-Key"
# codx-junior's client sends its token as "Authentication: Bearer <token>" (sic).
CODX_JUNIOR_TOKEN_HEADER = "Authentication"


class AsyncUserDB:
    """Every public ``UserDB`` method as a coroutine, run on a worker thread, at most ``db_pool_size`` at once.

    Each twin has its UserDB method's signature and docstring contract (tests/test_async_user_db.py
    compares the signatures: a UserDB method without a twin here fails the suite). A twin is one
    line, ``return await self._call(self.user_db.NAME, ...)``; a generator method's twin is an
    async generator over ``self._iterate``.
    """

    def __init__(
        self,
        database: Database | None = None,
        *,
        actor: str | None = None,
        limiter: anyio.CapacityLimiter | None = None,
    ) -> None:
        """``actor`` names who makes the changes; ``limiter`` may be shared by several instances.

        Instances over one database should share one limiter (the lifespan makes one instance):
        each default limiter allows ``db_pool_size`` threads of its own.
        """
        self.user_db = UserDB(database, actor)
        self.database: Database = self.user_db.database
        self.actor = actor
        # anyio >= 4.2 lets a limiter be made outside a running event loop (bound on first use).
        self.limiter = limiter if limiter is not None else anyio.CapacityLimiter(self.database.settings.db_pool_size)

    async def _call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` on a worker thread; the caller waits for the thread even when cancelled.

        ``run_sync`` alone holds its task only against anyio cancellation: a native asyncio
        ``task.cancel()`` (``asyncio.wait_for``, ``asyncio.timeout``: codx-junior's timeout
        middleware) ends the task and frees its limiter token while the thread still works, so
        more units of work than ``db_pool_size`` would run. The call runs in a shielded child
        task instead, and a task group does not exit before its children end.
        """
        work = functools.partial(fn, *args, **kwargs)
        outcome: builtins.list[tuple[bool, Any]] = []

        async def call() -> None:
            with anyio.CancelScope(shield=True):
                try:
                    result = await anyio.to_thread.run_sync(work, limiter=self.limiter)
                except Exception as exc:  # noqa: BLE001 - re-raised below as is (a task group would wrap it)
                    outcome.append((False, exc))
                else:
                    outcome.append((True, result))

        async with anyio.create_task_group() as group:
            group.start_soon(call)
        ok, value = outcome[0]
        if not ok:
            raise value
        return cast(T, value)

    async def _iterate(self, items: Iterator[T], chunk: int) -> AsyncIterator[T]:
        """Items of a blocking iterator, ``chunk`` at a time from a worker thread.

        The iterator resumes on whichever thread is free: it must hold no unit of work open
        across its ``yield`` (UserDB's generators read each batch in its own unit of work).
        """
        try:
            while batch := await self._call(lambda: builtins.list(itertools.islice(items, chunk))):
                for item in batch:
                    yield item
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    async def run(self, fn: Callable[[UnitOfWork], T], note: str | None = None) -> T:
        """``fn(uow)`` in one unit of work on one thread: several calls, all or nothing, retried on conflict.

        Inside ``fn`` call the blocking ``self.user_db``: its calls join the unit of work. A unit
        of work is bound to its thread, so it cannot span ``await``s: put the whole of it in ``fn``.
        """
        return await self._call(self.database.run, fn, note=note, user=self.actor)

    # -- twins of UserDB's public methods (same order as db/user_db.py) ------------------------

    async def get(self, username: str) -> CodxUser:
        """The user with this username (case-insensitive); raises UserNotFound."""
        return await self._call(self.user_db.get, username)

    async def find(self, username: str) -> CodxUser | None:
        """The user with this username, or None."""
        return await self._call(self.user_db.find, username)

    async def get_by_email(self, email: str) -> CodxUser:
        """The user with this email address (case-insensitive); raises UserNotFound."""
        return await self._call(self.user_db.get_by_email, email)

    async def list(
        self,
        offset: int = 0,
        limit: int = 50,
        active: bool | None = None,
        prefix: str | None = None,
        after: str | None = None,
    ) -> builtins.list[CodxUser]:
        """A page of users sorted by username (see ``UserDB.list``)."""
        return await self._call(self.user_db.list, offset, limit, active, prefix, after)

    async def count(self) -> int:
        """How many users there are."""
        return await self._call(self.user_db.count)

    async def create(
        self,
        *,
        username: str,
        email: str | None = None,
        full_name: str = "",
        password: str | None = None,
        is_superuser: bool | None = None,
        is_active: bool = True,
        avatar: str = "",
        theme: str = "dim",
        role: str | None = None,
        github: str = "",
        projects: builtins.list[ProjectPermission] | builtins.list[dict[str, Any]] | None = None,
    ) -> CodxUser:
        """Create a user; raises UserAlreadyExists or InvalidUserData."""
        return await self._call(
            self.user_db.create,
            username=username,
            email=email,
            full_name=full_name,
            password=password,
            is_superuser=is_superuser,
            is_active=is_active,
            avatar=avatar,
            theme=theme,
            role=role,
            github=github,
            projects=projects,
        )

    async def import_users(
        self,
        records: Iterable[Mapping[str, Any]],
        *,
        batch_size: int | None = None,
        savepoint_every: int = 10_000,
    ) -> int:
        """Create many users (see ``UserDB.import_users``); returns how many."""
        return await self._call(
            self.user_db.import_users, records, batch_size=batch_size, savepoint_every=savepoint_every
        )

    async def update(self, username: str, /, **changes: Any) -> CodxUser:
        """Change fields of a user (see ``UserDB.update``)."""
        return await self._call(self.user_db.update, username, **changes)

    async def set_password(self, username: str, password: str) -> None:
        """Replace a user's password (hashed on the worker thread)."""
        await self._call(self.user_db.set_password, username, password)

    async def authenticate(self, username_or_email: str, password: str) -> CodxUser | None:
        """The user if the password matches and the user is active, else None (verified on the worker thread)."""
        return await self._call(self.user_db.authenticate, username_or_email, password)

    async def delete(self, username: str) -> None:
        """Delete a user; raises UserNotFound."""
        await self._call(self.user_db.delete, username)

    async def history(self, username: str, limit: int = 20) -> builtins.list[UserRevision]:
        """Past versions of a user, newest first."""
        return await self._call(self.user_db.history, username, limit)

    async def revert(self, username: str, to: datetime | str) -> CodxUser:
        """Restore a user's fields as they were at ``to``."""
        return await self._call(self.user_db.revert, username, to)


# -- lifespan ------------------------------------------------------------------------------------


def lifespan(
    database: Database | None = None,
    *,
    actor: str | None = "codx-api",
    limiter: anyio.CapacityLimiter | None = None,
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
    """

    @asynccontextmanager
    async def codx_db_lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
        users = AsyncUserDB(database, actor=actor, limiter=limiter)
        # Opening reads files or connects to PostgreSQL and may run generations: off the loop.
        await anyio.to_thread.run_sync(users.database.open)
        app_state = getattr(app, "state", None)
        try:
            if app_state is not None:
                setattr(app_state, STATE_KEY, users)
            yield {STATE_KEY: users}
        finally:
            if app_state is not None and getattr(app_state, STATE_KEY, None) is users:
                delattr(app_state, STATE_KEY)
            # FileStorage writes its index, RelStorage its cache: shielded so a cancelled
            # shutdown still closes.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(users.database.close)

    return codx_db_lifespan


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


class _CredentialLookups(Protocol):
    async def get_by_token(self, token: str) -> CodxUser | None: ...

    async def get_by_api_key(self, key: str) -> CodxUser | None: ...


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
    authorization: Annotated[HTTPAuthorizationCredentials | None, Security(_authorization)],
    authentication: Annotated[str | None, Security(_authentication)],
    api_key: Annotated[str | None, Security(_api_key)],
) -> Credential | None:
    """The request's credential: ``Authorization: Bearer``, else ``Authentication: Bearer``, else ``X-API-Key``.

    The first one present decides: a bad token never falls through to a key.
    """
    if authorization is not None:
        return Credential("token", authorization.credentials)
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
    # The token and API-key twins arrive with UserDB's credential store (issue 13); until then
    # the lookups are typed through a protocol.
    lookups = cast(_CredentialLookups, users)
    if not found.secret:
        return None
    user = await (lookups.get_by_token if found.kind == "token" else lookups.get_by_api_key)(found.secret)
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
        what = "token" if found.kind == "token" else "API key"
        raise NotAuthenticated(f"the {what} is unknown, expired or revoked, or its user is disabled: log in again")
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

_UNAVAILABLE = (DatabaseUnavailable, DatabaseTimeout, GenerationError, StorageInUse)


def add_exception_handler(app: Starlette) -> None:
    """Answer every codx-db error with its HTTP status (``codx_db_exception_handler``)."""
    app.add_exception_handler(CodxDBError, codx_db_exception_handler)


async def codx_db_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    """404 not found, 409 already exists, 422 invalid (FastAPI's shape), 401, 403, 503 unavailable, else 500.

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
    elif isinstance(exc, _UNAVAILABLE):
        status = HTTPStatus.SERVICE_UNAVAILABLE
        log.warning("%s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
    else:
        status = HTTPStatus.INTERNAL_SERVER_ERROR
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": str(exc)}, status, headers=headers)


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
