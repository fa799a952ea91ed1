"""codx-api style endpoints over codx-db: one unit of work per request.

Run it:  pip install fastapi uvicorn && uvicorn examples.fastapi_app:app

Plain ``def`` endpoints: FastAPI runs each on a worker thread, and every UserDB call or
``db.run`` there opens, commits and closes its own unit of work on that thread. Do not open
the unit of work in a ``yield`` dependency: FastAPI runs the dependency's start, the endpoint
and the dependency's end on whatever worker threads are free, so the unit of work would not
surround the endpoint.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from db import UnitOfWork, db
from db.errors import InvalidUserData, UserAlreadyExists, UserNotFound
from db.schemas import CodxUser
from db.user_db import UserDB

users = UserDB(db, actor="codx-api")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    db.close()  # FileStorage writes its index; RelStorage its persistent cache


app = FastAPI(lifespan=lifespan)


@app.get("/users/{username}")
def read_user(username: str) -> dict[str, Any]:
    """One call, one unit of work."""
    try:
        return users.get(username).model_dump(mode="json")
    except UserNotFound:
        raise HTTPException(404, f"no user {username!r}") from None


class Invitation(BaseModel):
    usernames: list[str]


@app.post("/projects/{project_id}/invite", status_code=201)
def invite(project_id: str, invitation: Invitation) -> list[dict[str, Any]]:
    """Several calls in one unit of work: all users are created, or none; retried on conflict."""

    def create_all(uow: UnitOfWork) -> list[CodxUser]:
        grant = [{"project_id": project_id, "permissions": "tasks"}]
        return [users.create(username=name, projects=grant) for name in invitation.usernames]

    try:
        created = db.run(create_all, note=f"invite to {project_id}")
    except UserAlreadyExists as exc:
        raise HTTPException(409, str(exc)) from None
    except InvalidUserData as exc:
        raise HTTPException(422, exc.errors) from None
    return [user.model_dump(mode="json") for user in created]
