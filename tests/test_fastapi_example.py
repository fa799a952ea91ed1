"""The README's FastAPI example (examples/fastapi_app.py) under concurrent requests."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from db import db
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    db.configure(CodxJuniorGlobalSettings.load(db_file_path=tmp_path / "users.fs"))
    from examples.fastapi_app import app

    with TestClient(app) as test_client:
        yield test_client
    db.close()


def test_concurrent_reads_each_get_their_own_unit_of_work(client: TestClient) -> None:
    users = UserDB(db)
    with db.transaction():
        for i in range(20):
            users.create(username=f"user{i}", full_name=f"User {i}")

    def fetch(i: int) -> tuple[int, int, str | None]:
        name = f"user{i % 25}"  # 20 exist, 5 do not
        response = client.get(f"/users/{name}")
        body = response.json()
        return i, response.status_code, body.get("full_name") if response.status_code == 200 else None

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(fetch, range(400)))
    for i, status, full_name in results:
        if i % 25 < 20:
            assert (status, full_name) == (200, f"User {i % 25}")
        else:
            assert status == 404


def test_invite_is_all_or_nothing(client: TestClient) -> None:
    UserDB(db).create(username="taken")
    response = client.post("/projects/codx/invite", json={"usernames": ["new1", "new2", "TAKEN"]})
    assert response.status_code == 409
    assert UserDB(db).find("new1") is None and UserDB(db).count() == 1

    response = client.post("/projects/codx/invite", json={"usernames": ["new1", "new2"]})
    assert response.status_code == 201
    assert [u["projects"][0]["project_id"] for u in response.json()] == ["codx", "codx"]
    history = UserDB(db).history("new1")
    assert history[0].by == "codx-api"


def test_concurrent_invites_of_different_users_all_land(client: TestClient) -> None:
    def invite(i: int) -> int:
        return client.post("/projects/p/invite", json={"usernames": [f"a{i}", f"b{i}"]}).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(invite, range(40)))
    assert statuses == [201] * 40
    assert UserDB(db).count() == 80
