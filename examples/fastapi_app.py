"""codx-api style endpoints over codx-db: ``async def`` endpoints, AsyncUserDB and codx-db's dependencies.

Run it:  pip install -e '.[fastapi]' && codx-db user add admin --role admin && uvicorn examples.fastapi_app:app
(the first admin before the server starts: on the file backend the server then holds the file)
(the database comes from the CODX_JUNIOR_DB_* settings, as for the CLI).

Every ``await users.X(...)`` runs UserDB's ``X`` on a worker thread (at most ``db_pool_size`` at
once), in a unit of work of its own: hashing and PostgreSQL round trips never block the event
loop. Several calls that must succeed or fail together go in one function given to
``users.run``, which runs it in one unit of work on one thread (a unit of work is bound to its
thread, so it cannot span ``await``s). codx-db errors become HTTP answers through the one handler
(404, 409, 422, 401, 403, 503).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI
from pydantic import BaseModel, Field

from db import UnitOfWork, db
from db.errors import NotAuthenticated, PermissionDenied
from db.fastapi import (
    Credential,
    CurrentSuperuser,
    CurrentUser,
    Users,
    add_exception_handler,
    credential,
    lifespan,
)
from db.schemas import CodxUser
from db.users.keys import same_username  # names compare as the index does: case-insensitive

# Opens the database at start-up (a database the code refuses stops the boot), closes it at shutdown.
app = FastAPI(title="codx-db example", lifespan=lifespan(db, actor="codx-api"))
add_exception_handler(app)


@app.get("/users/{username}")
async def read_user(username: str, caller: CurrentUser, users: Users) -> CodxUser:
    """One call, one unit of work. A user reads themself, an admin anyone (an unknown user is a 404 for
    admins only: to others every other name is the same 403, so they cannot tell who exists)."""
    if not same_username(username, caller.username) and not caller.is_superuser:
        raise PermissionDenied("only an admin reads other users")
    return await users.get(username)


class Invitation(BaseModel):
    usernames: list[str] = Field(min_length=1, max_length=100)  # one request, one bounded transaction


@app.post("/projects/{project_id}/invite", status_code=201)
async def invite(project_id: str, invitation: Invitation, admin: CurrentSuperuser, users: Users) -> list[CodxUser]:
    """Admins only (401 without a credential, 403 for a user). Several calls in one unit of work: all users
    are created, or none (409, 422); retried on conflict."""

    def create_all(uow: UnitOfWork) -> list[CodxUser]:
        grant = [{"project_id": project_id, "permissions": "tasks"}]
        return [users.user_db.create(username=name, projects=grant) for name in invitation.usernames]

    return await users.run(create_all, note=f"invite to {project_id}")


class Login(BaseModel):
    username: str
    password: str


class LoggedIn(CodxUser):
    """The user, with an access token to send back as ``Authorization: Bearer <token>``."""

    token: str


@app.post("/login")
async def login(body: Login, users: Users) -> LoggedIn:
    """The user and a new access token if the password is right (argon2 verifies on a worker thread), else 401.

    The token is shown once (codx-db keeps only its hash) and lasts ``db_token_ttl_hours``.
    """
    # Not first_login=True here: the users /invite makes have no password, and on a public endpoint
    # whoever logs in first would set it. The token only for the password verified.
    found = await users.login(body.username, body.password)
    if found is None:
        raise NotAuthenticated("wrong username or password")
    user, token = found
    return LoggedIn(**user.model_dump(exclude={"disabled"}), token=token)


@app.post("/logout", status_code=204)
async def logout(user: CurrentUser, found: Annotated[Credential | None, Depends(credential)], users: Users) -> None:
    """End the token the request came with (an API key is revoked by its owner through ``revoke_api_key``)."""
    if found is not None and found.kind == "token":
        await users.revoke_token(found.secret)


@app.get("/me")
async def me(user: CurrentUser) -> CodxUser:
    """The caller, from ``Authorization: Bearer``, codx-junior's ``Authentication: Bearer`` or ``X-API-Key``."""
    return user
