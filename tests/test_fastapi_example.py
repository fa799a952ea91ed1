"""The README's FastAPI example (examples/fastapi_app.py): async endpoints under concurrent requests and uvicorn."""

from __future__ import annotations

import asyncio
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from db import db
from db.database import Database
from db.fastapi import AsyncUserDB
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB
from examples.fastapi_app import app
from migrations import GENERATION
from migrations.runner import GENERATION_KEY
from tests.conftest import BACKENDS, ROOT, make_settings, settings_env

T = TypeVar("T")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=BACKENDS)
async def anonymous(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The example app inside its lifespan (which opens and closes the global ``db``), on each backend."""
    db.configure(make_settings(request.param, request, tmp_path))
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as test_client,
        ):
            yield test_client
    finally:
        db.close()


@pytest.fixture
async def client(anonymous: httpx.AsyncClient) -> httpx.AsyncClient:
    """The example app, called by an admin (an API key in X-API-Key)."""
    UserDB(db).create(username="root", role="admin")
    anonymous.headers["X-API-Key"] = UserDB(db).create_api_key("root")
    return anonymous


@pytest.mark.anyio
async def test_reading_users_and_inviting_need_a_credential_and_the_right_role(anonymous: httpx.AsyncClient) -> None:
    users = UserDB(db)
    users.create(username="root", role="admin")
    users.create(username="ann")
    ann = {"X-API-Key": users.create_api_key("ann")}
    admin = {"X-API-Key": users.create_api_key("root")}
    invitation = {"usernames": ["mallory"]}
    assert (await anonymous.get("/users/root")).status_code == 401
    assert (await anonymous.post("/projects/secret/invite", json=invitation)).status_code == 401
    assert (await anonymous.get("/users/root", headers=ann)).status_code == 403
    assert (await anonymous.post("/projects/secret/invite", json=invitation, headers=ann)).status_code == 403
    assert (await anonymous.get("/users/ann", headers=ann)).json()["username"] == "ann"  # themself
    assert (await anonymous.get("/users/ANN", headers=ann)).status_code == 200  # names are case-insensitive
    assert (await anonymous.get("/users/" + "a" * 5000, headers=ann)).status_code == 403  # not a 500
    assert (await anonymous.get("/users/ann", headers=admin)).status_code == 200
    # A user cannot tell who exists: another user and no user answer the same 403 (was 403 / 404).
    assert (await anonymous.get("/users/nobody", headers=ann)).status_code == 403
    assert (await anonymous.get("/users/nobody", headers=admin)).status_code == 404
    too_many = {"usernames": [f"u{i}" for i in range(101)]}
    assert (await anonymous.post("/projects/p/invite", json=too_many, headers=admin)).status_code == 422
    assert users.find("mallory") is None and users.count() == 2


@pytest.mark.anyio
async def test_400_concurrent_reads(client: httpx.AsyncClient) -> None:
    UserDB(db).import_users([{"username": f"user{i}", "full_name": f"User {i}"} for i in range(20)])

    async def fetch(i: int) -> tuple[int, int, str | None]:
        response = await client.get(f"/users/user{i % 25}")  # 20 exist, 5 do not
        ok = response.status_code == 200
        return i, response.status_code, response.json()["full_name"] if ok else response.json()["detail"]

    for i, status, text in await asyncio.gather(*(fetch(i) for i in range(400))):
        if i % 25 < 20:
            assert (status, text) == (200, f"User {i % 25}")
        else:
            assert (status, text) == (404, f"no user with username 'user{i % 25}'")


@pytest.mark.anyio
async def test_invite_is_all_or_nothing(client: httpx.AsyncClient) -> None:
    UserDB(db).create(username="taken")
    response = await client.post("/projects/codx/invite", json={"usernames": ["new1", "new2", "TAKEN"]})
    assert response.status_code == 409 and "'TAKEN' already exists" in response.json()["detail"]
    assert UserDB(db).find("new1") is None and UserDB(db).count() == 2

    response = await client.post("/projects/codx/invite", json={"usernames": ["new3", "bad\x00name"]})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"][:2] == ["body", "username"]
    assert UserDB(db).count() == 2

    response = await client.post("/projects/codx/invite", json={"usernames": ["new1", "new2"]})
    assert response.status_code == 201
    assert [u["projects"][0]["project_id"] for u in response.json()] == ["codx", "codx"]
    if db.settings.db_keep_history or db.settings.kind != "postgres":
        assert (await AsyncUserDB(db).history("new1"))[0].by == "codx-api"


@pytest.mark.anyio
async def test_40_concurrent_invites_all_land(client: httpx.AsyncClient) -> None:
    responses = await asyncio.gather(
        *(client.post("/projects/p/invite", json={"usernames": [f"a{i}", f"b{i}"]}) for i in range(40))
    )
    assert [r.status_code for r in responses] == [201] * 40
    assert UserDB(db).count() == 81  # and root


async def ticks_during(work: Awaitable[T]) -> tuple[T, int]:
    """``work``'s result, and how many times a task doing ``await asyncio.sleep(0)`` ran meanwhile."""
    ticks = 0
    stop = False

    async def ticker() -> None:
        nonlocal ticks
        while not stop:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.ensure_future(ticker())
    try:
        result = await work
    finally:
        stop = True
        await task
    return result, ticks


@pytest.mark.anyio
async def test_the_event_loop_keeps_ticking_while_8_logins_hash(client: httpx.AsyncClient) -> None:
    users = UserDB(db)
    passwords = {f"login{i}": f"Pw-{secrets.token_urlsafe(12)}" for i in range(8)}
    users.import_users([{"username": name, "password": password} for name, password in passwords.items()])

    responses, ticks = await ticks_during(
        asyncio.gather(
            *(client.post("/login", json={"username": name, "password": pw}) for name, pw in passwords.items())
        )
    )
    assert [(r.status_code, r.json()["username"]) for r in responses] == [(200, name) for name in passwords]
    assert len({r.json()["token"] for r in responses}) == 8
    assert ticks > 100, ticks

    # Control (the assertion above can fail): the same 8 logins called directly on the loop
    # block it for each whole argon2 verify; the ticker runs only between them.
    async def blocking_login(name: str, password: str) -> bool:
        return users.authenticate(name, password) is not None

    results, blocked_ticks = await ticks_during(
        asyncio.gather(*(blocking_login(name, pw) for name, pw in passwords.items()))
    )
    assert results == [True] * 8
    assert blocked_ticks <= 9, blocked_ticks

    response = await client.post("/login", json={"username": "login0", "password": "wrong"})
    assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.anyio
async def test_login_gives_a_token_that_me_accepts_until_logout(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.get("/me")
    assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
    UserDB(db).create(username="meg", password="violet-harbour-tide")
    UserDB(db).create(username="invitee")  # no password yet (as /invite makes them): not claimable here
    first = {"username": "invitee", "password": "amber-canyon-drift"}
    assert (await anonymous.post("/login", json=first)).status_code == 401
    assert (await anonymous.post("/login", json={**first, "username": "nobody"})).status_code == 401
    assert UserDB(db).has_password("invitee") is False
    response = await anonymous.post("/login", json={"username": "MEG", "password": "violet-harbour-tide"})
    assert response.status_code == 200
    token = response.json()["token"]
    assert token.startswith("cxt_") and response.json()["username"] == "meg"
    for header in ("Authorization", "Authentication"):  # the standard header and codx-junior's
        response = await anonymous.get("/me", headers={header: f"Bearer {token}"})
        assert (response.status_code, response.json()["username"]) == (200, "meg")
        assert "token" not in response.json()  # /me never echoes a credential
    assert (await anonymous.post("/logout", headers={"Authorization": f"Bearer {token}"})).status_code == 204
    assert (await anonymous.get("/me", headers={"Authorization": f"Bearer {token}"})).status_code == 401
    # A password change ends every other session too.
    login = {"username": "meg", "password": "violet-harbour-tide"}
    token = (await anonymous.post("/login", json=login)).json()["token"]
    UserDB(db).set_password("meg", "amber-canyon-drift")
    assert (await anonymous.get("/me", headers={"Authentication": f"Bearer {token}"})).status_code == 401


# -- under uvicorn, in a real process --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_uvicorn(settings: CodxJuniorGlobalSettings, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "examples.fastapi_app:app", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=settings_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return process, f"http://127.0.0.1:{port}"


def _wait_until_answering(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 60  # a bound on waiting, not an assertion on speed
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"uvicorn exited with {process.returncode}:\n{log.read_text()}")
        try:
            httpx.get(f"{url}/openapi.json", timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail(f"uvicorn did not answer within 60 s:\n{log.read_text()}")


@pytest.mark.slow
def test_uvicorn_serves_the_example_and_closes_the_database(tmp_path: Path) -> None:
    settings = CodxJuniorGlobalSettings.load(db_backend="file", db_file_path=tmp_path / "users.fs")
    database = Database(settings)
    try:
        UserDB(database).create(username="root", role="admin")
        admin = {"X-API-Key": UserDB(database).create_api_key("root")}
    finally:
        database.close()
    log = tmp_path / "uvicorn.log"
    process, url = _start_uvicorn(settings, log)
    try:
        _wait_until_answering(process, url, log)
        invitation = {"usernames": ["ann", "bob"]}
        response = httpx.post(f"{url}/projects/codx/invite", json=invitation, headers=admin, timeout=30)
        assert response.status_code == 201, response.text
        response = httpx.get(f"{url}/users/ANN", headers=admin, timeout=30)
        assert (response.status_code, response.json()["username"]) == (200, "ann")
    finally:
        process.send_signal(signal.SIGTERM)  # uvicorn's graceful shutdown runs the lifespan's end
        returncode = process.wait(60)
    output = log.read_text()
    # uvicorn >= 0.29 ends by re-raising the signal it handled: -SIGTERM after a clean shutdown.
    assert returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    # The lifespan closed the FileStorage: this process can open it (no lock left) and read it.
    database = Database(settings)
    try:
        assert UserDB(database).count() == 3
    finally:
        database.close()


@pytest.mark.slow
def test_uvicorn_refuses_to_start_on_a_database_newer_than_the_code(tmp_path: Path) -> None:
    settings = CodxJuniorGlobalSettings.load(db_backend="file", db_file_path=tmp_path / "users.fs")
    database = Database(settings)
    with database.transaction() as uow:
        uow.root[GENERATION_KEY] = GENERATION + 1
    database.close()
    log = tmp_path / "uvicorn.log"
    process, _ = _start_uvicorn(settings, log)
    returncode = process.wait(60)
    output = log.read_text()
    assert returncode != 0, output
    assert "GenerationTooHigh" in output and "newer" in output and "Application startup failed" in output


@pytest.mark.anyio
async def test_the_first_credential_header_present_decides_even_malformed(anonymous: httpx.AsyncClient) -> None:
    """A present Authorization (Basic, an empty Bearer) or Authentication header decides: a valid
    X-API-Key behind it must not be used (a proxy's service key would lend its identity)."""
    UserDB(db).create(username="svc", role="admin")
    key = UserDB(db).create_api_key("svc")
    assert (await anonymous.get("/me", headers={"X-API-Key": key})).json()["username"] == "svc"
    for header, value in (
        ("Authorization", "Basic dXNlcjpwYXNz"),
        ("Authorization", "Bearer"),
        ("Authorization", ""),
        ("Authentication", ""),
    ):
        response = await anonymous.get("/me", headers={header: value, "X-API-Key": key})
        assert response.status_code == 401, (header, value, response.text)
