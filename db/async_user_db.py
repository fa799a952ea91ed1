"""AsyncUserDB: every public UserDB method as a coroutine, for async apps (FastAPI, Starlette, any anyio app).

UserDB blocks: a ZODB connection belongs to one thread, argon2 spends ~20 ms of CPU per hash and
PostgreSQL answers over the network. AsyncUserDB runs each call on a worker thread so the event
loop keeps serving other requests meanwhile. Needs anyio (``pip install codx-db[fastapi]``);
db/fastapi.py adds the lifespan, dependencies and error handler.

Why anyio's ``to_thread.run_sync`` and a ``CapacityLimiter`` rather than a ThreadPoolExecutor:
anyio is what Starlette already runs sync code on (asyncio and trio alike) and there is no
executor to shut down. The limiter is sized to ``db_pool_size`` because ZODB's connection pool is
a soft limit: more units of work at once open extra connections (extra PostgreSQL sessions) with
warnings. Being our own limiter, it does not draw from Starlette's 40 shared tokens. A cancelled
caller (a client gone, a ``wait_for`` timeout) keeps its token until its thread ends
(``run_in_thread``): its unit of work commits or aborts as a whole, never half, and the bound
holds. argon2-cffi releases the GIL while hashing, so hashes on threads really run beside the loop.
"""

from __future__ import annotations

import builtins
import functools
import itertools
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar, cast

import anyio
import anyio.to_thread

from db.database import Database, UnitOfWork
from db.user_db import UserDB
from db.users.credentials import ApiKeyInfo
from db.users.history import UserRevision
from db.users.models import utcnow
from db.users.schemas import CodxUser, ProjectPermission
from db.users.service import MAX_PAGE
from db.users.sync import SyncReport

T = TypeVar("T")
P = ParamSpec("P")


async def run_in_thread(fn: Callable[[], T], limiter: anyio.CapacityLimiter | None = None) -> T:
    """``fn()`` on a worker thread; the caller waits for the thread to end even when it is cancelled.

    ``anyio.to_thread.run_sync`` alone holds its task only against anyio cancellation: a native
    asyncio ``task.cancel()`` (``asyncio.wait_for``, ``asyncio.timeout``: codx-junior's timeout
    middleware) ends the task and frees its limiter token while the thread still works, so more
    units of work than ``db_pool_size`` would run, and the caller would go on before its unit of
    work ended. The call runs in a shielded child task instead: a task group does not exit
    before its children end, whatever cancels it.
    """
    outcome: builtins.list[tuple[bool, Any]] = []

    async def call() -> None:
        with anyio.CancelScope(shield=True):
            try:
                result = await anyio.to_thread.run_sync(fn, limiter=limiter)
            except anyio.get_cancelled_exc_class():
                raise  # not the thread's: the task group's own (the scope is shielded)
            except BaseException as exc:  # noqa: BLE001 - re-raised below as is (a task group would wrap it)
                outcome.append((False, exc))
            else:
                outcome.append((True, result))

    async with anyio.create_task_group() as group:
        group.start_soon(call)
    ok, value = outcome[0]
    if not ok:
        raise value
    return cast(T, value)


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
        actor: str | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
        limiter: anyio.CapacityLimiter | None = None,
    ) -> None:
        """``actor`` and ``clock`` as for ``UserDB``; ``limiter`` may be shared by several instances.

        Instances over one database should share one limiter (the lifespan makes one instance):
        each default limiter allows ``db_pool_size`` threads of its own.
        """
        self.user_db = UserDB(database, actor, clock=clock)
        self.database: Database = self.user_db.database
        self.actor = actor
        # anyio >= 4.2 lets a limiter be made outside a running event loop (bound on first use).
        self.limiter = limiter if limiter is not None else anyio.CapacityLimiter(self.database.settings.db_pool_size)

    async def _call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await run_in_thread(functools.partial(fn, *args, **kwargs), self.limiter)

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

    async def get_by_id(self, user_id: str) -> CodxUser:
        """The user with this id (ids never change, unlike usernames); raises UserNotFound (field "id")."""
        return await self._call(self.user_db.get_by_id, user_id)

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
        apps: Sequence[str] = (),
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
            apps=apps,
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

    async def login(
        self, username_or_email: str, password: str, ttl: timedelta | None = None, *, first_login: bool = False
    ) -> tuple[CodxUser, str] | None:
        """``authenticate`` and a new token in one call, the token only for the password verified."""
        return await self._call(self.user_db.login, username_or_email, password, ttl, first_login=first_login)

    async def delete(self, username: str) -> None:
        """Delete a user; raises UserNotFound."""
        await self._call(self.user_db.delete, username)

    # -- codx-junior lookups ------------------------------------------------------------------

    async def get_by_github(self, login: str) -> CodxUser | None:
        """The user with this GitHub login (case-insensitive), or None."""
        return await self._call(self.user_db.get_by_github, login)

    async def with_project_access(
        self, project_id: str, *, admins: bool = True, active: bool | None = None
    ) -> builtins.list[CodxUser]:
        """Users with a grant for this project, plus every admin, sorted by username (indexed)."""
        return await self._call(self.user_db.with_project_access, project_id, admins=admins, active=active)

    async def grant_project(
        self,
        username: str,
        project_id: str,
        permissions: str | Sequence[str] = "",
        children: bool | None = True,
        apps: Sequence[str] = (),
    ) -> CodxUser:
        """Give a user a project grant, replacing any for that project."""
        return await self._call(self.user_db.grant_project, username, project_id, permissions, children, apps)

    async def revoke_project(self, username: str, project_id: str) -> bool:
        """Take a user's grant for this project away; False if there was none."""
        return await self._call(self.user_db.revoke_project, username, project_id)

    async def iter_users(self, batch: int = 500) -> AsyncIterator[CodxUser]:
        """Every user in username order, each batch read on a worker thread (see ``UserDB.iter_users``)."""
        # A bad ``batch`` is the sync generator's to refuse, at its first item as UserDB does;
        # islice needs a count it accepts (0 would not even start the generator).
        chunk = batch if isinstance(batch, int) and not isinstance(batch, bool) and 1 <= batch <= MAX_PAGE else 1
        async for user in self._iterate(self.user_db.iter_users(batch), chunk):
            yield user

    async def history(self, username: str, limit: int = 20) -> builtins.list[UserRevision]:
        """Past versions of a user, newest first."""
        return await self._call(self.user_db.history, username, limit)

    async def revert(self, username: str, to: datetime | str) -> CodxUser:
        """Restore a user's fields as they were at ``to``."""
        return await self._call(self.user_db.revert, username, to)

    async def has_password(self, username: str) -> bool:
        """Whether the user has a password (else its first login sets one); raises UserNotFound."""
        return await self._call(self.user_db.has_password, username)

    async def set_password_if_unset(self, username: str, password: str) -> bool:
        """First login: set the password of an active user who has none (hashed on the worker thread)."""
        return await self._call(self.user_db.set_password_if_unset, username, password)

    async def issue_token(self, username: str, ttl: timedelta | None = None) -> str:
        """A new access token; shown once, stored hashed."""
        return await self._call(self.user_db.issue_token, username, ttl)

    async def get_by_token(self, token: str) -> CodxUser | None:
        """The active user of this unexpired token, else None."""
        return await self._call(self.user_db.get_by_token, token)

    async def revoke_token(self, token: str) -> bool:
        """End one token; False if it is unknown."""
        return await self._call(self.user_db.revoke_token, token)

    async def revoke_tokens(self, username: str) -> int:
        """End every token of the user; how many."""
        return await self._call(self.user_db.revoke_tokens, username)

    async def purge_expired_tokens(self, limit: int = 10_000) -> int:
        """Remove up to ``limit`` expired tokens; how many."""
        return await self._call(self.user_db.purge_expired_tokens, limit)

    async def create_api_key(self, username: str, name: str = "") -> str:
        """A new API key for the user; shown once, stored hashed."""
        return await self._call(self.user_db.create_api_key, username, name)

    async def get_by_api_key(self, key: str) -> CodxUser | None:
        """The active user of this API key, else None."""
        return await self._call(self.user_db.get_by_api_key, key)

    async def revoke_api_key(self, key: str) -> bool:
        """Remove an API key given its secret; False if it is unknown."""
        return await self._call(self.user_db.revoke_api_key, key)

    async def api_keys(self, username: str) -> builtins.list[ApiKeyInfo]:
        """The user's API keys by creation time and name, never the secret."""
        return await self._call(self.user_db.api_keys, username)

    async def revoke_api_key_id(self, username: str, key_id: str) -> bool:
        """Remove the user's API key with this ``key_id``; False if none."""
        return await self._call(self.user_db.revoke_api_key_id, username, key_id)

    async def sync(self, records: Iterable[Mapping[str, Any]], *, require_admin: bool = True) -> SyncReport:
        """Make the stored users match ``records`` in one unit of work (see ``UserDB.sync``)."""
        return await self._call(self.user_db.sync, records, require_admin=require_admin)
