"""db.fastapi: AsyncUserDB (parity with UserDB, bounded threads, cancellation), lifespan, dependencies, errors."""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import typing
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from db.async_user_db import run_in_thread
from db.database import Database, UnitOfWork
from db.errors import (
    DatabaseUnavailable,
    GenerationError,
    HistoryUnavailable,
    InvalidUserData,
    NotAuthenticated,
    PermissionDenied,
    ReadOnlyDatabase,
    StorageFull,
    TransactionTooLarge,
    TransferError,
)
from db.fastapi import (
    API_KEY_HEADER,
    STATE_KEY,
    AsyncUserDB,
    CurrentSuperuser,
    CurrentUser,
    OptionalUser,
    Users,
    add_exception_handler,
    lifespan,
)
from db.schemas import CodxUser
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB
from migrations import GENERATION
from migrations.runner import GENERATION_KEY
from tests.conftest import BACKENDS, make_settings


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def memory_db() -> Iterator[Database]:
    database = Database(CodxJuniorGlobalSettings.load(db_backend="memory", db_pool_size=3))
    yield database
    database.close()


# -- parity: every public UserDB method has an async twin with its signature --------------------------


def _public_methods(cls: type) -> dict[str, Any]:
    return {name: member for name, member in inspect.getmembers(cls, inspect.isfunction) if not name.startswith("_")}


def _awaited(annotation: Any) -> Any:
    """What a sync method's result becomes in the twin: an Iterator[X] becomes an AsyncIterator[X]."""
    if typing.get_origin(annotation) in (Iterator, typing.Iterator):
        return AsyncIterator[typing.get_args(annotation)]  # type: ignore[misc]
    return annotation


def parity_problems(sync_cls: type, async_cls: type) -> list[str]:
    """How ``async_cls`` fails to be the async twin of ``sync_cls`` (empty: it is)."""
    sync_methods, async_methods = _public_methods(sync_cls), _public_methods(async_cls)
    problems = [f"{name}: no async twin" for name in sorted(set(sync_methods) - set(async_methods))]
    problems += [f"{name}: twin of nothing" for name in sorted(set(async_methods) - set(sync_methods) - {"run"})]
    for name in sorted(set(sync_methods) & set(async_methods)):
        method, twin = sync_methods[name], async_methods[name]
        if inspect.isgeneratorfunction(method):
            if not inspect.isasyncgenfunction(twin):
                problems.append(f"{name}: must be an async generator")
        elif not inspect.iscoroutinefunction(twin):
            problems.append(f"{name}: must be an async def")
        sync_sig = inspect.signature(method, eval_str=True)
        async_sig = inspect.signature(twin, eval_str=True)
        if async_sig.parameters != sync_sig.parameters:
            problems.append(f"{name}: parameters {async_sig} != {sync_sig}")
        if async_sig.return_annotation != _awaited(sync_sig.return_annotation):
            problems.append(f"{name}: returns {async_sig.return_annotation} != {sync_sig.return_annotation}")
    return problems


def test_every_public_user_db_method_has_an_async_twin_with_the_same_signature() -> None:
    assert len(_public_methods(UserDB)) >= 13  # get ... revert today; issue 13 adds more
    assert parity_problems(UserDB, AsyncUserDB) == [], "add the twins to AsyncUserDB in db/async_user_db.py"


def test_the_constructors_match_too() -> None:
    """``UserDB(db, "alice")`` and ``AsyncUserDB(db, "alice")``; a clock for both (token expiry tests)."""
    sync_params = list(inspect.signature(UserDB).parameters.values())
    async_params = list(inspect.signature(AsyncUserDB).parameters.values())
    assert async_params[: len(sync_params)] == sync_params
    assert [p.name for p in async_params[len(sync_params) :]] == ["limiter"]


@pytest.mark.anyio
async def test_an_async_user_db_with_an_actor_and_a_clock(memory_db: Database) -> None:
    now = [datetime(2030, 1, 1, tzinfo=UTC)]
    users = AsyncUserDB(memory_db, "admin-ui", clock=lambda: now[0])
    await users.create(username="ann")
    token = await users.issue_token("ann", ttl=timedelta(hours=1))
    assert (await users.get_by_token(token)) is not None
    now[0] += timedelta(hours=2)
    assert (await users.get_by_token(token)) is None
    assert (await users.history("ann"))[0].by == "admin-ui"


def test_the_parity_check_sees_missing_and_drifted_twins() -> None:
    """The check above can fail: a newer UserDB, a twin with another default, a blocking twin."""

    class NewerUserDB(UserDB):
        def issue_badge(self, username: str) -> str:
            return username

        def iter_badges(self, batch: int = 10) -> Iterator[str]:
            yield from ()

    class DriftedAsyncUserDB(AsyncUserDB):
        async def history(self, username: str, limit: int = 50) -> list[Any]:
            return []

        def count(self) -> int:  # type: ignore[override]
            return 0

        async def iter_badges(self, batch: int = 10) -> list[str]:
            return []

    assert parity_problems(NewerUserDB, AsyncUserDB) == ["issue_badge: no async twin", "iter_badges: no async twin"]
    problems = parity_problems(NewerUserDB, DriftedAsyncUserDB)
    assert problems[0] == "issue_badge: no async twin"
    assert [p.split(":")[0] for p in problems[1:]] == ["count", "history", "history", "iter_badges", "iter_badges"]


# -- every twin forwards its arguments, on every backend ----------------------------------------------


@pytest.fixture(params=BACKENDS)
def history_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    database = Database(make_settings(request.param, request, tmp_path, db_keep_history=True))
    yield database
    database.close()


@pytest.mark.anyio
async def test_every_twin_does_what_its_user_db_method_does(history_database: Database) -> None:
    users = AsyncUserDB(history_database, actor="async-test")
    alice = await users.create(username="Alice", email="alice@example.com", password="s3cret-pass", theme="light")
    assert alice.theme == "light"
    assert (await users.get("alice")).id == alice.id
    assert await users.find("nobody") is None
    assert (await users.get_by_email("ALICE@example.com")).id == alice.id
    assert await users.import_users([{"username": "bob"}, {"username": "carol", "is_active": False}]) == 2
    assert await users.count() == 3
    assert [u.username for u in await users.list(active=True)] == ["Alice", "bob"]
    assert [u.username for u in await users.list(limit=1, after="Alice")] == ["bob"]
    updated = await users.update("alice", full_name="Alice A.")
    assert updated.full_name == "Alice A."
    assert (await users.authenticate("alice@example.com", "s3cret-pass")) is not None
    await users.set_password("alice", "n3w-pass-word")
    assert await users.authenticate("alice", "s3cret-pass") is None
    assert (await users.authenticate("alice", "n3w-pass-word")) is not None
    revisions = await users.history("alice", limit=5)
    assert revisions[0].by == "async-test" and revisions[-1].user.full_name == ""
    reverted = await users.revert("alice", revisions[-1].tid)
    assert reverted.full_name == ""
    await users.delete("bob")
    assert await users.find("bob") is None
    with pytest.raises(InvalidUserData, match="email"):
        await users.create(username="dave", email="not-an-email")


@pytest.mark.anyio
async def test_the_credential_twins_do_what_their_user_db_methods_do(memory_db: Database) -> None:
    users = AsyncUserDB(memory_db)
    await users.create(username="dave")
    assert await users.has_password("dave") is False
    assert await users.set_password_if_unset("dave", "violet-harbour-tide") is True
    assert await users.set_password_if_unset("dave", "amber-canyon-drift") is False
    token = await users.issue_token("dave", timedelta(minutes=5))
    assert (await users.get_by_token(token)).username == "dave"  # type: ignore[union-attr]
    assert await users.revoke_token(token) is True and await users.get_by_token(token) is None
    await users.issue_token("dave")
    assert await users.revoke_tokens("dave") == 1
    assert await users.purge_expired_tokens(limit=5) == 0
    key = await users.create_api_key("dave", "ci")
    assert (await users.get_by_api_key(key)).username == "dave"  # type: ignore[union-attr]
    [info] = await users.api_keys("dave")
    assert info.name == "ci" and await users.revoke_api_key_id("dave", info.key_id) is True
    assert await users.revoke_api_key(key) is False and await users.get_by_api_key(key) is None


# -- the thread bound ----------------------------------------------------------------------------------


def test_the_limiter_is_sized_to_the_connection_pool(memory_db: Database) -> None:
    assert AsyncUserDB(memory_db).limiter.total_tokens == 3 == memory_db.settings.db_pool_size
    shared = anyio.CapacityLimiter(2)
    assert AsyncUserDB(memory_db, limiter=shared).limiter is shared


@pytest.mark.anyio
async def test_at_most_pool_size_units_of_work_run_at_once_and_that_many_do(memory_db: Database) -> None:
    users = AsyncUserDB(memory_db)
    # All pool_size callers must be inside at once to pass the barrier (a lower bound would
    # break it: BrokenBarrierError after the timeout); the counter shows no more ever are.
    barrier = threading.Barrier(3, timeout=60)
    lock = threading.Lock()
    inside = peak = 0

    def work(uow: UnitOfWork) -> int:
        nonlocal inside, peak
        with lock:
            inside += 1
            peak = max(peak, inside)
        try:
            return barrier.wait()
        finally:
            with lock:
                inside -= 1

    results = await asyncio.gather(*(users.run(work) for _ in range(12)))
    assert sorted(results) == sorted([0, 1, 2] * 4)
    assert peak == 3


@pytest.mark.anyio
async def test_a_cancelled_call_finishes_its_unit_of_work_whole_before_the_task_ends(memory_db: Database) -> None:
    users = AsyncUserDB(memory_db)
    entered, release = threading.Event(), threading.Event()

    def create_two(uow: UnitOfWork) -> None:
        users.user_db.create(username="first")
        entered.set()
        release.wait(60)
        users.user_db.create(username="second")

    task = asyncio.ensure_future(users.run(create_two, note="two users"))
    while not entered.is_set():
        await asyncio.sleep(0.001)
    task.cancel()
    for _ in range(50):
        await asyncio.sleep(0)
    # The thread is still inside its unit of work: the task waits for it, holding its token.
    assert not task.done()
    assert users.limiter.borrowed_tokens == 1
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert users.limiter.borrowed_tokens == 0
    # Not half: both users (the caller was told "cancelled"; the unit of work had committed).
    assert sorted(u.username for u in await users.list()) == ["first", "second"]


@pytest.mark.anyio
async def test_run_is_all_or_nothing_and_records_the_actor(memory_db: Database) -> None:
    users = AsyncUserDB(memory_db, actor="inviter")

    def invite(names: list[str]) -> Any:
        return lambda uow: [users.user_db.create(username=name) for name in names]

    created = await users.run(invite(["a", "b"]), note="invite a, b")
    assert [u.username for u in created] == ["a", "b"]
    with pytest.raises(Exception, match="already exists"):
        await users.run(invite(["c", "A"]))
    assert await users.find("c") is None and await users.count() == 2
    assert (await users.history("a"))[0].by == "inviter"


@pytest.mark.anyio
async def test_iterate_pages_a_blocking_generator_off_the_loop(memory_db: Database) -> None:
    users = AsyncUserDB(memory_db)
    await users.import_users([{"username": f"user{i:04d}"} for i in range(250)])
    threads: set[int] = set()

    def pages() -> Iterator[CodxUser]:
        after = None
        while page := users.user_db.list(limit=100, after=after):
            threads.add(threading.get_ident())
            yield from page
            after = page[-1].username

    names = [user.username async for user in users._iterate(pages(), chunk=64)]
    assert names == [f"user{i:04d}" for i in range(250)]
    assert threading.get_ident() not in threads


# -- lifespan ------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_lifespan_opens_at_start_up_and_closes_at_shutdown(tmp_path: Path) -> None:
    database = Database(CodxJuniorGlobalSettings.load(db_backend="file", db_file_path=tmp_path / "users.fs"))
    app = FastAPI()
    assert not database.is_open
    async with lifespan(database, actor="svc")(app) as state:
        assert database.is_open
        assert state[STATE_KEY] is getattr(app.state, STATE_KEY)
        assert state[STATE_KEY].actor == "svc"
        await state[STATE_KEY].create(username="kept")
    assert not database.is_open and not hasattr(app.state, STATE_KEY)
    # Closed cleanly: the file opens again (no lock left) with the user in it.
    assert UserDB(database).get("kept").username == "kept"
    database.close()


@pytest.mark.anyio
async def test_lifespan_imports_codx_junior_users_once_into_an_empty_database(tmp_path: Path) -> None:
    """The one-time switch: the first start imports global_settings.json (skipping bad entries)."""
    sample = Path(__file__).parent / "fixtures" / "codx_junior_global_settings.json"
    settings_file = tmp_path / "global_settings.json"
    data = json.loads(sample.read_text())
    data["users"].append({"username": "bad\tname"})  # refused, logged, the others still come in
    settings_file.write_text(json.dumps(data))
    database = Database(CodxJuniorGlobalSettings.load(db_backend="file", db_file_path=tmp_path / "users.fs"))
    async with lifespan(database, import_from=settings_file)(FastAPI()) as state:
        users = state[STATE_KEY]
        imported = await users.count()
        assert imported == len(data["users"]) - 1
        await users.delete("alice")
    # A later start finds users and imports nothing: alice, deleted in codx-db, stays deleted.
    async with lifespan(database, import_from=settings_file)(FastAPI()) as state:
        assert await state[STATE_KEY].count() == imported - 1
        assert await state[STATE_KEY].find("alice") is None
    # No file: nothing to import, the start goes on.
    async with lifespan(database, import_from=tmp_path / "absent.json")(FastAPI()) as state:
        assert await state[STATE_KEY].count() == imported - 1
    database.close()


@pytest.mark.anyio
async def test_a_start_up_import_never_runs_twice_even_once_every_user_is_gone(tmp_path: Path) -> None:
    """Before, the only guard was "no users yet": an app whose users were all deleted imported the
    old file again at its next start, bringing back a revoked API key and the old passwords."""
    settings_file = tmp_path / "global_settings.json"
    key = "OldLeakedKey-0123456789abcdef"
    settings_file.write_text(json.dumps({"users": [{"username": "admin", "role": "admin", "api_key": key}]}))
    database = Database(CodxJuniorGlobalSettings.load(db_backend="file", db_file_path=tmp_path / "users.fs"))
    async with lifespan(database, import_from=settings_file)(FastAPI()) as state:
        users = state[STATE_KEY]
        assert (await users.get_by_api_key(key)) is not None
        assert await users.revoke_api_key(key)
        await users.delete("admin")
    async with lifespan(database, import_from=settings_file)(FastAPI()) as state:
        users = state[STATE_KEY]
        assert await users.count() == 0
        assert await users.get_by_api_key(key) is None
    database.close()


@pytest.mark.anyio
async def test_a_database_switched_before_the_import_was_recorded_is_not_imported_into(tmp_path: Path) -> None:
    """A database with users and no record of an import (made before codx-db recorded it) counts
    as switched: its first start with ``import_from`` records that, and imports nothing later."""
    settings_file = tmp_path / "global_settings.json"
    settings_file.write_text(json.dumps({"users": [{"username": "ghost"}]}))
    database = Database(CodxJuniorGlobalSettings.load(db_backend="file", db_file_path=tmp_path / "users.fs"))
    UserDB(database).create(username="only")
    async with lifespan(database, import_from=settings_file)(FastAPI()) as state:
        assert await state[STATE_KEY].find("ghost") is None
        await state[STATE_KEY].delete("only")
    async with lifespan(database, import_from=settings_file)(FastAPI()) as state:
        assert await state[STATE_KEY].count() == 0
    database.close()


@pytest.mark.anyio
async def test_lifespan_fails_at_boot_on_a_database_newer_than_the_code(tmp_path: Path) -> None:
    database = Database(CodxJuniorGlobalSettings.load(db_backend="file", db_file_path=tmp_path / "users.fs"))
    with database.transaction() as uow:
        uow.root[GENERATION_KEY] = GENERATION + 1
    database.close()
    with pytest.raises(GenerationError, match="newer"):
        async with lifespan(database)(FastAPI()):
            pytest.fail("the app must not start")
    assert not database.is_open


def test_lifespan_composes_with_the_apps_own_lifespan(memory_db: Database) -> None:
    codx_db = lifespan(memory_db)
    events: list[str] = []

    @asynccontextmanager
    async def app_lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with codx_db(app) as state:
            events.append("up")
            yield {**state, "greeting": "hello"}
        events.append("closed" if not memory_db.is_open else "still open")

    app = FastAPI(lifespan=app_lifespan)
    add_exception_handler(app)

    @app.get("/count")
    async def count(request: Request, users: Users) -> dict[str, Any]:
        return {
            "count": await users.count(),
            "greeting": request.state.greeting,
            "same": request.state.codx_db is users,
        }

    with TestClient(app) as client:
        assert client.get("/count").json() == {"count": 0, "greeting": "hello", "same": True}
    assert events == ["up", "closed"]


def test_user_db_without_the_lifespan_says_what_to_install() -> None:
    app = FastAPI()

    @app.get("/count")
    async def count(users: Users) -> int:
        return await users.count()

    with TestClient(app, raise_server_exceptions=True) as client, pytest.raises(RuntimeError, match="lifespan"):
        client.get("/count")


# -- dependencies --------------------------------------------------------------------------------------


@pytest.fixture
async def secured(memory_db: Database) -> AsyncIterator[tuple[httpx.AsyncClient, AsyncUserDB]]:
    app = FastAPI(lifespan=lifespan(memory_db))
    add_exception_handler(app)

    @app.get("/me")
    async def me(user: CurrentUser) -> str:
        return user.username

    @app.get("/maybe")
    async def maybe(user: OptionalUser) -> str | None:
        return None if user is None else user.username

    @app.get("/admin")
    async def admin(user: CurrentSuperuser) -> str:
        return user.username

    async with app.router.lifespan_context(app):
        users = getattr(app.state, STATE_KEY)
        await users.create(username="alice")
        await users.create(username="root", is_superuser=True)
        await users.create(username="off", is_active=False)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            yield client, users


@pytest.mark.anyio
async def test_current_user_from_each_header_and_401_otherwise(
    secured: tuple[httpx.AsyncClient, AsyncUserDB],
) -> None:
    client, users = secured
    token, key = await users.issue_token("alice"), await users.create_api_key("alice")
    await users.create(username="deleted-later")
    deleted_token = await users.issue_token("deleted-later")
    off_key = await users.create_api_key("off")
    await users.delete("deleted-later")
    for headers in (
        {"Authorization": f"Bearer {token}"},
        {"Authentication": f"Bearer {token}"},  # codx-junior's client (sic)
        {"authentication": token},  # codx-junior takes the header's last word
        {API_KEY_HEADER: key},
    ):
        response = await client.get("/me", headers=headers)
        assert (response.status_code, response.json()) == (200, "alice"), headers
        assert (await client.get("/maybe", headers=headers)).json() == "alice"

    for headers in (
        {},
        {"Authorization": "Bearer cxt_forged"},
        {"Authentication": "Bearer cxt_forged"},
        {"Authentication": f"Token {token} extra"},
        {API_KEY_HEADER: token},  # a token is not a key
        {"Authorization": f"Bearer {key}"},  # nor a key a token
        {"Authorization": "Bearer cxt_forged", API_KEY_HEADER: key},  # a bad token does not fall through
        {API_KEY_HEADER: off_key},  # disabled user
        {"Authorization": f"Bearer {deleted_token}"},  # no such user
    ):
        response = await client.get("/me", headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert token not in response.text and key not in response.text
        assert (await client.get("/maybe", headers=headers)).json() is None
    assert "X-API-Key" in (await client.get("/me")).json()["detail"]


@pytest.mark.anyio
async def test_current_superuser_is_403_for_others(secured: tuple[httpx.AsyncClient, AsyncUserDB]) -> None:
    client, users = secured
    response = await client.get("/admin", headers={"Authorization": f"Bearer {await users.issue_token('alice')}"})
    assert response.status_code == 403 and "'alice' is not an admin" in response.json()["detail"]
    response = await client.get("/admin", headers={"Authorization": f"Bearer {await users.issue_token('root')}"})
    assert (response.status_code, response.json()) == (200, "root")
    assert (await client.get("/admin")).status_code == 401


def test_openapi_shows_the_three_ways_to_authenticate(memory_db: Database) -> None:
    app = FastAPI(lifespan=lifespan(memory_db))

    @app.get("/me")
    async def me(user: CurrentUser) -> str:
        return user.username

    schemes = app.openapi()["components"]["securitySchemes"]
    assert {(s["type"], s.get("scheme") or s.get("name")) for s in schemes.values()} == {
        ("http", "bearer"),
        ("apiKey", "Authentication"),
        ("apiKey", "X-API-Key"),
    }


# -- the error handler ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_codx_db_errors_map_to_http_statuses(memory_db: Database) -> None:
    app = FastAPI(lifespan=lifespan(memory_db))
    add_exception_handler(app)
    raised: dict[str, Exception] = {
        "unauthenticated": NotAuthenticated("no credential"),
        "denied": PermissionDenied("not an admin"),
        "unavailable": DatabaseUnavailable("PostgreSQL at db:5432 is unreachable"),
        "generation": GenerationError("run `codx-db migrate --apply`"),
        "read-only": ReadOnlyDatabase("the database is opened read-only"),
        "history": HistoryUnavailable("user 'ann' has no version at or before 2001-01-01"),
        "full": StorageFull(Path("/data/users.fs"), 0),
        "too-large": TransactionTooLarge("one unit of work changes more objects than PostgreSQL can lock"),
        "transfer": TransferError("the backup file is not a codx-db backup"),
        "invalid": InvalidUserData(["records[3].email: not valid", "projects.0.project_id: is missing", "odd text"]),
    }

    @app.get("/raise/{name}")
    async def raise_(name: str) -> None:
        raise raised[name]

    @app.post("/users")
    async def create(body: dict[str, Any], users: Users) -> CodxUser:
        return await users.create(**body)

    @app.get("/users/{username}")
    async def read(username: str, users: Users) -> CodxUser:
        return await users.get(username)

    @app.post("/import")
    async def import_(body: list[dict[str, Any]], users: Users) -> int:
        return await users.import_users(body)

    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client,
    ):
        assert (await client.post("/users", json={"username": "ann"})).status_code == 200
        response = await client.post("/users", json={"username": "ANN"})
        assert (response.status_code, response.json()) == (409, {"detail": "a user with username 'ANN' already exists"})
        response = await client.get("/users/ghost")
        assert (response.status_code, response.json()) == (404, {"detail": "no user with username 'ghost'"})
        response = await client.post("/users", json={"username": "bo", "email": "nope"})
        assert response.status_code == 422
        [problem] = response.json()["detail"]
        assert problem["loc"] == ["body", "email"] and problem["type"] == "value_error" and problem["msg"]
        response = await client.post("/import", json=[{"username": "x1"}, {"username": "x2", "email": "bad"}])
        assert [p["loc"] for p in response.json()["detail"]] == [["body", "records", 1, "email"]]

        response = await client.get("/raise/unauthenticated")
        assert (response.status_code, response.headers["WWW-Authenticate"]) == (401, "Bearer")
        assert (await client.get("/raise/denied")).status_code == 403
        assert (await client.get("/raise/unavailable")).status_code == 503
        assert (await client.get("/raise/generation")).status_code == 503
        assert (await client.get("/raise/read-only")).status_code == 503  # cannot write now; the request is fine
        # A client's mistake (no such version) is no server failure; a full disk and a too-large
        # request say which, and none of them logs an ERROR with a traceback.
        assert (await client.get("/raise/history")).status_code == 404
        assert (await client.get("/raise/full")).status_code == 507
        assert (await client.get("/raise/too-large")).status_code == 413
        response = await client.get("/raise/transfer")
        # An unexpected server failure: the message is in the log, not in the answer (it may name paths).
        assert (response.status_code, response.json()) == (500, {"detail": "internal error"})
        response = await client.get("/raise/invalid")
        assert response.status_code == 422
        assert response.json()["detail"] == [
            {"loc": ["body", "records", 3, "email"], "msg": "not valid", "type": "value_error"},
            {"loc": ["body", "projects", 0, "project_id"], "msg": "is missing", "type": "value_error"},
            {"loc": ["body"], "msg": "odd text", "type": "value_error"},
        ]


@pytest.mark.parametrize("batch", [0, -1, 1001, "10", 1.5, None])
def test_iter_users_refuses_a_bad_batch_as_the_sync_twin_does(memory_db: Database, batch: Any) -> None:
    UserDB(memory_db).create(username="alice")
    with pytest.raises(InvalidUserData) as sync_error:
        list(UserDB(memory_db).iter_users(batch))

    async def collect() -> list[CodxUser]:
        return [user async for user in AsyncUserDB(memory_db).iter_users(batch)]

    with pytest.raises(InvalidUserData) as async_error:
        asyncio.run(collect())
    assert str(async_error.value) == str(sync_error.value)


@pytest.mark.anyio
async def test_a_base_exception_from_the_thread_comes_through_as_itself(tmp_path: Path) -> None:
    """Before, a BaseException other than Exception came out wrapped in a BaseExceptionGroup, so an
    ``except SystemExit`` (or the caller's own BaseException class) did not match it."""

    class Boom(BaseException):
        pass

    def boom(uow: UnitOfWork) -> None:
        raise Boom("from the unit of work")

    database = Database(CodxJuniorGlobalSettings.load(db_backend="memory"))
    with pytest.raises(Boom, match="from the unit of work"):
        await AsyncUserDB(database).run(boom)

    def leave() -> None:
        raise SystemExit(3)

    with pytest.raises(SystemExit):
        await run_in_thread(leave)
    database.close()
