"""codx-junior's lookups (issue 13 item 4): by GitHub login, by project, grants, every user."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from db.async_user_db import AsyncUserDB
from db.check import check
from db.database import Database
from db.errors import InvalidUserData, UserAlreadyExists, UserNotFound
from db.models import User
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB
from db.users.schemas import ProjectPermission
from tests.test_user_db import snapshot_state


@pytest.fixture
def users(database: Database) -> Iterator[UserDB]:
    yield UserDB(database)


def names(found: list[Any]) -> list[str]:
    return [user.username for user in found]


# -- get_by_github -----------------------------------------------------------------------------------


def test_get_by_github_ignores_case_and_follows_changes(users: UserDB, database: Database) -> None:
    alice = users.create(username="alice", github="Alice-Dev")
    users.create(username="bob")
    assert users.get_by_github("alice-dev") == alice == users.get_by_github(" @ALICE-DEV ")
    for nothing in ("", "   ", "nobody", None, 5, ["alice-dev"], "x" * 100_000):
        assert users.get_by_github(nothing) is None  # type: ignore[arg-type]
    # Unique: another user cannot take it, in any case; nothing is written.
    before = snapshot_state(database)
    for attempt in (
        lambda: users.create(username="eve", github="ALICE-dev"),
        lambda: users.update("bob", github="@alice-dev"),
    ):
        with pytest.raises(UserAlreadyExists) as excinfo:
            attempt()
        assert excinfo.value.field == "github"
    assert snapshot_state(database) == before
    users.update("alice", github="alice-new")
    assert users.get_by_github("alice-dev") is None and users.get_by_github("Alice-New").username == "alice"
    assert users.update("bob", github="alice-dev").github == "alice-dev"  # the old login is free again
    users.update("alice", github="ALICE-NEW")  # a case change of one's own login is no clash
    users.delete("alice")
    assert users.get_by_github("alice-new") is None
    assert check(database).ok


def test_an_import_with_a_shared_github_login_is_refused(users: UserDB) -> None:
    with pytest.raises(InvalidUserData, match=r"records\[1\]\.github: the same as records\[0\]"):
        users.import_users([{"username": "a", "github": "gh"}, {"username": "b", "github": "GH"}])
    assert users.count() == 0


# -- with_project_access ----------------------------------------------------------------------------


def test_with_project_access_is_grants_plus_admins_sorted_disabled_included(users: UserDB, database: Database) -> None:
    users.create(username="root", role="admin")
    users.create(username="Carol", is_active=False, projects=[{"project_id": "p", "permissions": "tasks"}])
    users.create(username="alice", projects=[{"project_id": "p", "permissions": [], "children": False}])
    users.create(username="bob", projects=[{"project_id": "other"}])
    assert names(users.with_project_access("p")) == ["alice", "Carol", "root"]
    assert names(users.with_project_access("p", active=True)) == ["alice", "root"]
    assert names(users.with_project_access("p", active=False)) == ["Carol"]
    assert names(users.with_project_access("p", admins=False)) == ["alice", "Carol"]
    assert names(users.with_project_access("nobody-has-it")) == ["root"]
    assert names(users.with_project_access("P")) == ["root"]  # project ids are exact
    # The indexes follow every write.
    users.update("root", role="user")
    users.update("bob", is_superuser=True)
    users.update("alice", username="Alice2", projects=[])
    users.delete("Carol")
    assert names(users.with_project_access("p")) == ["bob"]
    for bad in ({"project_id": 5}, {"project_id": "p", "admins": "yes"}, {"project_id": "p", "active": 1}):
        with pytest.raises(InvalidUserData):
            users.with_project_access(**bad)
    assert check(database).ok


def loaded_users(connection: Any) -> int:
    """Users whose state is in memory (not ghosts) in this connection's cache."""
    return sum(1 for _, obj in connection._cache.lru_items() if isinstance(obj, User))


def test_with_project_access_loads_only_the_users_it_returns(users: UserDB, database: Database) -> None:
    users.import_users(
        [{"username": f"user{i:04}", "projects": [{"project_id": "big"}] if i % 50 else []} for i in range(600)]
        + [{"username": "granted", "projects": [{"project_id": "small"}]}, {"username": "admin", "role": "admin"}]
    )
    with database.transaction() as uow:
        uow.connection.cacheMinimize()  # every stored object back to a ghost
        assert loaded_users(uow.connection) == 0
        assert names(users.with_project_access("small")) == ["admin", "granted"]
        assert loaded_users(uow.connection) == 2
        # The control: a scan, as codx-junior does, loads every user (so the count above can fail).
        assert sum(1 for user in uow.root["codx_db.users"].users.values() if user.projects) == 589
        assert loaded_users(uow.connection) == 602


# -- grant_project / revoke_project -------------------------------------------------------------------


def test_grant_adds_or_replaces_and_revoke_removes(users: UserDB, database: Database) -> None:
    users.create(username="bob", projects=[{"project_id": "a", "permissions": "tasks"}])
    granted = users.grant_project("bob", "b", ["x", "y"], children=None, apps=["kanban"])
    assert granted.projects == (
        ProjectPermission(project_id="a", permissions="tasks"),
        ProjectPermission(project_id="b", permissions=("x", "y"), children=None, apps=("kanban",)),
    )
    assert users.grant_project("BOB", "a", "admin").projects[0] == ProjectPermission(
        project_id="a", permissions="admin"
    )
    assert names(users.with_project_access("b", admins=False)) == ["bob"]
    assert users.revoke_project("bob", "b") is True
    assert users.revoke_project("bob", "b") is False
    # A project id is trimmed on revoke as on grant: " c " names the grant of "c".
    users.grant_project("bob", " c ", "tasks")
    assert names(users.with_project_access(" c ", admins=False)) == ["bob"]
    assert users.revoke_project("bob", " c ") is True
    assert [p.project_id for p in users.get("bob").projects] == ["a"]
    assert names(users.with_project_access("b", admins=False)) == []
    assert [p.project_id for p in users.get("bob").projects] == ["a"]
    before = snapshot_state(database), users.get("bob")
    with pytest.raises(UserNotFound):
        users.grant_project("nobody", "a")
    with pytest.raises(UserNotFound):
        users.revoke_project("nobody", "a")
    for bad in ({"project_id": ""}, {"project_id": "p" * 129}, {"project_id": "p", "permissions": 5}):
        with pytest.raises(InvalidUserData, match=r"project_id|permissions"):
            users.grant_project("bob", **bad)
    with pytest.raises(InvalidUserData, match="children"):
        users.grant_project("bob", "p", children="yes")  # type: ignore[arg-type]
    assert (snapshot_state(database), users.get("bob")) == before
    assert check(database).ok


def test_concurrent_grants_and_revokes_lose_nothing(persistent_settings: CodxJuniorGlobalSettings) -> None:
    database = Database(persistent_settings)
    try:
        users = UserDB(database)
        users.import_users([{"username": "shared"}] + [{"username": f"u{i}"} for i in range(6)])
        barrier = threading.Barrier(6)
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                barrier.wait()
                for j in range(4):
                    users.grant_project("shared", f"p{i}-{j}", f"perm{j}")  # one user: conflicts, retried
                users.grant_project(f"u{i}", "common", "tasks")  # one project: one set, merged
                users.revoke_project("shared", f"p{i}-0")
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert [p.project_id for p in users.get("shared").projects] == sorted(
            f"p{i}-{j}" for i in range(6) for j in range(1, 4)
        )
        assert names(users.with_project_access("common")) == [f"u{i}" for i in range(6)]
        assert names(users.with_project_access("p3-2")) == ["shared"]
        assert users.with_project_access("p3-0") == []
        assert check(database).ok
    finally:
        database.close()


# -- iter_users -----------------------------------------------------------------------------------------


def test_iter_users_yields_every_user_batch_by_batch(users: UserDB, database: Database) -> None:
    users.import_users([{"username": f"user{i:05}"} for i in range(1200)])
    seen = []
    for user in users.iter_users(batch=500):
        assert database.current() is None  # no unit of work stays open between items
        seen.append(user.username)
    assert seen == [f"user{i:05}" for i in range(1200)]
    assert len(list(users.iter_users())) == 1200
    assert list(users.iter_users(batch=1))[-1].username == "user01199"
    for bad in (0, 1001, "5", True, None):
        with pytest.raises(InvalidUserData, match="batch: must be an integer from 1 to 1000"):
            next(users.iter_users(batch=bad))  # type: ignore[arg-type]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_async_lookups(database: Database, anyio_backend: str) -> None:
    users = AsyncUserDB(database)
    await users.import_users([{"username": f"user{i:05}"} for i in range(1200)])
    await users.create(username="gh", github="The-Login", projects=[{"project_id": "p"}])
    assert [u.username async for u in users.iter_users(batch=500)] == sorted(
        [f"user{i:05}" for i in range(1200)] + ["gh"]
    )
    assert (await users.get_by_github("the-login")).username == "gh"  # type: ignore[union-attr]
    assert names(await users.with_project_access("p")) == ["gh"]
    assert (await users.grant_project("user00001", "p", "x")).projects[0].permissions == "x"
    assert await users.revoke_project("gh", "p") is True
    assert names(await users.with_project_access("p")) == ["user00001"]
