"""What an HTTP client is told of a server-side failure: what happened to its request, never the
infrastructure behind it (hosts, ports, database names, paths), which goes to the server's log.

Found by a review: a 503 answered anonymous clients with libpq's message, naming the server's
address, port and database.
"""

from __future__ import annotations

import logging

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from db.errors import (
    CodxDBError,
    CommitOutcomeUnknown,
    DatabaseTimeout,
    DatabaseUnavailable,
    GenerationTooHigh,
    ReadOnlyDatabase,
    StorageFull,
    StorageInUse,
    UserNotFound,
    WriteContention,
)
from db.fastapi import add_exception_handler

INFRA = 'connection to server at "10.1.2.3", port 6543 failed: database "codx_prod" /srv/codx/users.fs'

CASES: list[tuple[CodxDBError, int, str]] = [
    (DatabaseUnavailable(f"the database is unreachable: {INFRA}"), 503, "the database is unavailable"),
    (CommitOutcomeUnknown(f"lost: {INFRA}"), 503, "may or may not have been saved"),
    (DatabaseTimeout(f"statement_timeout: {INFRA}"), 503, "did not answer in time"),
    (ReadOnlyDatabase(f"read-only: {INFRA}"), 503, "read-only"),
    (StorageInUse(f"{INFRA} is locked by pid 42"), 503, "the database is unavailable"),
    (GenerationTooHigh(INFRA, 12, 9), 503, "the database is unavailable"),
    (WriteContention(10, 3.0, "ConflictError: database conflict error"), 503, "conflicted with other writers"),
    (StorageFull(INFRA, 0), 507, "storage is full"),
    (CodxDBError(f"something else: {INFRA}"), 500, "internal error"),
]


@pytest.mark.parametrize(("error", "status", "told"), CASES, ids=[type(c[0]).__name__ for c in CASES])
def test_a_server_side_failure_tells_the_client_what_happened_and_logs_the_rest(
    error: CodxDBError, status: int, told: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = FastAPI()
    add_exception_handler(app)

    @app.get("/fail")
    async def fail() -> None:
        raise error

    caplog.set_level(logging.DEBUG)
    response = TestClient(app, raise_server_exceptions=False).get("/fail")
    assert response.status_code == status
    detail = response.json()["detail"]
    assert told in detail, detail
    for leak in ("10.1.2.3", "6543", "codx_prod", "/srv/codx"):
        assert leak not in detail, detail
    assert ("10.1.2.3" if "10.1.2.3" in str(error) else "conflicted") in caplog.text  # the operator sees it


def test_a_client_error_still_says_what_was_wrong_with_the_request() -> None:
    app = FastAPI()
    add_exception_handler(app)

    @app.get("/missing")
    async def missing() -> None:
        raise UserNotFound("nobody")

    response = TestClient(app).get("/missing")
    assert response.status_code == 404 and "nobody" in response.json()["detail"]
