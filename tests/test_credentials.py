"""The credential store (db/users/credentials.py) inside units of work, on every backend."""

from __future__ import annotations

import hashlib
import inspect
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest

from db.database import Database, UnitOfWork
from db.errors import GenerationError, InvalidUserData
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB
from db.users import credentials
from db.users.credentials import (
    CREDENTIALS_KEY,
    CredentialStore,
    create_api_key,
    credential_store,
    find_api_key,
    find_token,
    import_api_key,
    install_credentials,
    issue_token,
    list_api_keys,
    purge_expired,
    revoke_api_key,
    revoke_api_key_id,
    revoke_token,
    revoke_user_api_keys,
    revoke_user_tokens,
)

T = TypeVar("T")
NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
HOUR = timedelta(hours=1)
IMPORTED_KEY = "codx-junior-api-key-0123456789"


def in_store(database: Database, fn: Callable[[CredentialStore], T]) -> T:
    """Run ``fn`` on the credential store in one unit of work (installed on first use)."""

    def work(uow: UnitOfWork) -> T:
        return fn(install_credentials(uow.root))

    return database.run(work)


@pytest.fixture
def ids(database: Database) -> dict[str, str]:
    """Two users made through the public API: name -> user id."""
    users = UserDB(database)
    return {name: users.create(username=name).id for name in ("alice", "bob")}


def test_a_token_is_found_until_it_expires(database: Database, ids: dict[str, str]) -> None:
    secret = in_store(database, lambda s: issue_token(s, ids["alice"], HOUR, NOW))
    assert secret.startswith("cxt_") and len(secret) >= 4 + 43  # 32 bytes of urlsafe base64

    def find(at: datetime) -> str | None:
        token = in_store(database, lambda s: find_token(s, secret, at))
        return None if token is None else token.user_id

    assert find(NOW) == ids["alice"]
    assert find(NOW + HOUR - timedelta(microseconds=1)) == ids["alice"]
    assert find(NOW + HOUR) is None
    # A clock in another zone is the same instant.
    assert find((NOW + timedelta(minutes=30)).astimezone(datetime.now().astimezone().tzinfo)) == ids["alice"]


def test_only_the_digest_is_stored(database: Database, settings: CodxJuniorGlobalSettings, ids: dict[str, str]) -> None:
    secret = in_store(database, lambda s: issue_token(s, ids["alice"], HOUR, NOW))
    key = in_store(database, lambda s: create_api_key(s, ids["alice"], "ci", NOW))
    digests = in_store(database, lambda s: (list(s.tokens), list(s.api_keys)))
    assert digests == ([hashlib.sha256(secret.encode()).hexdigest()], [hashlib.sha256(key.encode()).hexdigest()])
    if settings.db_backend == "file":
        database.close()  # everything written to the file
        data = settings.db_file_path.read_bytes()
        assert digests[0][0].encode() in data
        assert secret.encode() not in data and key.encode() not in data


@pytest.mark.parametrize("wrong", ["", "cxt_unknown", "x" * 513, None, 42, b"cxt_bytes", "\udcff"])
def test_unknown_or_unusable_secrets_find_nothing(database: Database, ids: dict[str, str], wrong: Any) -> None:
    in_store(database, lambda s: issue_token(s, ids["alice"], HOUR, NOW))
    in_store(database, lambda s: import_api_key(s, ids["alice"], IMPORTED_KEY, "codx-junior", NOW))
    assert in_store(database, lambda s: find_token(s, wrong, NOW)) is None
    assert in_store(database, lambda s: find_api_key(s, wrong)) is None
    assert in_store(database, lambda s: revoke_token(s, wrong)) is False
    assert in_store(database, lambda s: revoke_api_key(s, wrong)) is False


def test_a_token_is_not_a_key_and_a_key_is_not_a_token(database: Database, ids: dict[str, str]) -> None:
    token = in_store(database, lambda s: issue_token(s, ids["alice"], HOUR, NOW))
    key = in_store(database, lambda s: create_api_key(s, ids["alice"], "", NOW))
    assert key.startswith("cxk_")
    assert in_store(database, lambda s: (find_api_key(s, token), find_token(s, key, NOW))) == (None, None)


def test_revoking_tokens(database: Database, ids: dict[str, str]) -> None:
    alice = [in_store(database, lambda s: issue_token(s, ids["alice"], HOUR, NOW)) for _ in range(3)]
    bob = in_store(database, lambda s: issue_token(s, ids["bob"], HOUR, NOW))

    assert in_store(database, lambda s: revoke_token(s, alice[0])) is True
    assert in_store(database, lambda s: revoke_token(s, alice[0])) is False
    assert in_store(database, lambda s: find_token(s, alice[0], NOW)) is None
    assert in_store(database, lambda s: find_token(s, alice[1], NOW)) is not None

    assert in_store(database, lambda s: revoke_user_tokens(s, ids["alice"])) == 2
    assert in_store(database, lambda s: revoke_user_tokens(s, ids["alice"])) == 0
    assert in_store(database, lambda s: [find_token(s, t, NOW) for t in alice]) == [None, None, None]
    found = in_store(database, lambda s: find_token(s, bob, NOW))
    assert found is not None and found.user_id == ids["bob"]
    # Every index entry of alice's tokens went with them.
    state = in_store(database, lambda s: (list(s.tokens_by_user), len(s.tokens), len(s.token_expiry)))
    assert state == ([ids["bob"]], 1, 1)


def test_issuing_purges_a_bounded_number_of_expired_tokens_oldest_first(
    database: Database, ids: dict[str, str]
) -> None:
    def issue_many(store: CredentialStore) -> list[str]:
        # Expiring one millisecond apart: the order the purge must follow.
        return [
            issue_token(store, ids["alice"], timedelta(seconds=1), NOW + i * timedelta(milliseconds=1))
            for i in range(150)
        ]

    old = in_store(database, issue_many)
    later = NOW + HOUR
    fresh = in_store(database, lambda s: issue_token(s, ids["bob"], HOUR, later))
    assert in_store(database, lambda s: len(s.tokens)) == 150 - credentials.PURGE_ON_ISSUE + 1
    remaining = in_store(database, lambda s: {t.digest for t in s.tokens.values()})
    assert remaining == {hashlib.sha256(t.encode()).hexdigest() for t in [*old[100:], fresh]}

    assert in_store(database, lambda s: purge_expired(s, later, limit=10)) == 10
    assert in_store(database, lambda s: purge_expired(s, later, limit=10_000)) == 40
    assert in_store(database, lambda s: purge_expired(s, later, limit=10_000)) == 0
    state = in_store(database, lambda s: (len(s.tokens), len(s.token_expiry), list(s.tokens_by_user)))
    assert state == (1, 1, [ids["bob"]])
    # A token expiring exactly at `now` is expired, and purged.
    assert in_store(database, lambda s: purge_expired(s, later + HOUR, limit=10)) == 1


def drop_store(database: Database) -> None:
    """Make the database look installed before the credential store (install.py now creates it)."""
    database.run(lambda uow: uow.root.pop(CREDENTIALS_KEY))


def test_the_store_never_commits_for_the_caller(database: Database, ids: dict[str, str]) -> None:
    drop_store(database)
    issued: list[str] = []

    def issue_then_fail(uow: UnitOfWork) -> None:
        issued.append(issue_token(install_credentials(uow.root), ids["alice"], HOUR, NOW))
        raise RuntimeError("the caller's unit of work fails later")

    with pytest.raises(RuntimeError):
        database.run(issue_then_fail)
    assert database.run(lambda uow: uow.root.get(CREDENTIALS_KEY)) is None
    in_store(database, lambda s: None)
    assert in_store(database, lambda s: find_token(s, issued[0], NOW)) is None


def test_a_database_without_the_store_says_to_migrate(database: Database) -> None:
    database.run(lambda uow: None)  # installed (with its store) by the first unit of work
    drop_store(database)
    with pytest.raises(GenerationError, match="codx-db migrate --apply"):
        database.run(lambda uow: credential_store(uow.root))
    in_store(database, lambda s: None)
    assert isinstance(database.run(lambda uow: credential_store(uow.root)), CredentialStore)


def test_api_keys_created_listed_and_revoked(database: Database, ids: dict[str, str]) -> None:
    ci = in_store(database, lambda s: create_api_key(s, ids["alice"], " ci ", NOW))
    laptop = in_store(database, lambda s: create_api_key(s, ids["alice"], "laptop", NOW - HOUR))
    key = in_store(database, lambda s: find_api_key(s, ci))
    assert key is not None and (key.user_id, key.name, key.imported) == (ids["alice"], "ci", False)

    listed = in_store(database, lambda s: list_api_keys(s, ids["alice"]))
    assert [(k.name, k.created_at, k.imported) for k in listed] == [("laptop", NOW - HOUR, False), ("ci", NOW, False)]
    assert listed[1].key_id == hashlib.sha256(ci.encode()).hexdigest()[:12]
    assert in_store(database, lambda s: list_api_keys(s, ids["bob"])) == []

    # Another user's key is never touched through its id.
    assert in_store(database, lambda s: revoke_api_key_id(s, ids["bob"], listed[1].key_id)) is False
    assert in_store(database, lambda s: revoke_api_key_id(s, ids["alice"], "0" * 12)) is False
    assert in_store(database, lambda s: revoke_api_key_id(s, ids["alice"], listed[1].key_id[:6])) is False
    assert in_store(database, lambda s: find_api_key(s, ci)) is not None
    assert in_store(database, lambda s: revoke_api_key_id(s, ids["alice"], listed[1].key_id)) is True
    assert in_store(database, lambda s: find_api_key(s, ci)) is None

    assert in_store(database, lambda s: revoke_api_key(s, laptop)) is True
    assert in_store(database, lambda s: revoke_api_key(s, laptop)) is False
    assert in_store(database, lambda s: (len(s.api_keys), list(s.api_keys_by_user))) == (0, [])


def test_revoking_all_keys_of_a_user(database: Database, ids: dict[str, str]) -> None:
    for name in ("a", "b"):
        in_store(database, lambda s, name=name: create_api_key(s, ids["alice"], name, NOW))
    bob = in_store(database, lambda s: create_api_key(s, ids["bob"], "b", NOW))
    assert in_store(database, lambda s: revoke_user_api_keys(s, ids["alice"])) == 2
    assert in_store(database, lambda s: revoke_user_api_keys(s, ids["alice"])) == 0
    assert in_store(database, lambda s: list_api_keys(s, ids["alice"])) == []
    assert in_store(database, lambda s: find_api_key(s, bob)) is not None


def test_an_imported_key_keeps_working_and_belongs_to_one_user(database: Database, ids: dict[str, str]) -> None:
    assert in_store(database, lambda s: import_api_key(s, ids["alice"], IMPORTED_KEY, "codx-junior", NOW)) is True
    assert in_store(database, lambda s: import_api_key(s, ids["alice"], IMPORTED_KEY, "codx-junior", NOW)) is False
    key = in_store(database, lambda s: find_api_key(s, IMPORTED_KEY))
    assert key is not None and (key.user_id, key.name, key.imported) == (ids["alice"], "codx-junior", True)

    with pytest.raises(InvalidUserData, match="api_key: already belongs to another user") as excinfo:
        in_store(database, lambda s: import_api_key(s, ids["bob"], IMPORTED_KEY, "codx-junior", NOW))
    assert IMPORTED_KEY not in str(excinfo.value)
    assert in_store(database, lambda s: list_api_keys(s, ids["bob"])) == []
    found = in_store(database, lambda s: find_api_key(s, IMPORTED_KEY))
    assert found is not None and found.user_id == ids["alice"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s, uid: issue_token(s, uid, timedelta(0), NOW), "ttl: must be between"),
        (lambda s, uid: issue_token(s, uid, timedelta(days=401), NOW), "ttl: must be between"),
        (lambda s, uid: create_api_key(s, uid, "n" * 101, NOW), "name: must be at most 100"),
        (lambda s, uid: create_api_key(s, uid, "ci\x1b[31m", NOW), "name: must not contain control"),
        (lambda s, uid: import_api_key(s, uid, "  ", "codx-junior", NOW), "api_key: must be a non-empty string"),
        (lambda s, uid: import_api_key(s, uid, "k" * 513, "codx-junior", NOW), "api_key: must be at most 512"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_written(
    database: Database, ids: dict[str, str], call: Callable[[CredentialStore, str], Any], message: str
) -> None:
    with pytest.raises(InvalidUserData, match=message):
        in_store(database, lambda s: call(s, ids["alice"]))
    assert in_store(database, lambda s: (len(s.tokens), len(s.api_keys))) == (0, 0)


def test_caller_bugs_are_type_errors(database: Database, ids: dict[str, str]) -> None:
    with pytest.raises(TypeError, match="timezone-aware"):
        in_store(database, lambda s: issue_token(s, ids["alice"], HOUR, datetime(2030, 1, 1)))
    with pytest.raises(TypeError, match="user_id"):
        in_store(database, lambda s: create_api_key(s, None, "", NOW))  # type: ignore[arg-type]


def test_lookups_compare_in_constant_time() -> None:
    # The BTree probe is by digest; the final check must not be a short-circuiting ==.
    assert "hmac.compare_digest(" in inspect.getsource(credentials._lookup)
    assert "_lookup(" in inspect.getsource(credentials.find_token)
    assert "_lookup(" in inspect.getsource(credentials.find_api_key)


def test_secrets_never_show_in_reprs_or_logs(
    database: Database, ids: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = in_store(database, lambda s: issue_token(s, ids["alice"], HOUR, NOW))
    key = in_store(database, lambda s: create_api_key(s, ids["alice"], "ci", NOW))
    in_store(database, lambda s: import_api_key(s, ids["alice"], IMPORTED_KEY, "codx-junior", NOW))
    with pytest.raises(InvalidUserData):
        in_store(database, lambda s: import_api_key(s, ids["bob"], IMPORTED_KEY, "codx-junior", NOW))

    def shown(store: CredentialStore) -> list[str]:
        records = [find_token(store, token, NOW), find_api_key(store, key), find_api_key(store, IMPORTED_KEY)]
        return [repr(store), *map(repr, records), *map(str, records), repr(list_api_keys(store, ids["alice"]))]

    texts = [*in_store(database, shown), caplog.text]
    secrets = [token, key, IMPORTED_KEY]
    digests = [hashlib.sha256(s.encode()).hexdigest() for s in secrets]
    for text in texts:
        for value in [*secrets, *digests]:
            assert value not in text
    assert hashlib.sha256(token.encode()).hexdigest()[:12] in texts[1]  # the key id names the record


@pytest.mark.slow
def test_concurrent_tokens_for_one_user_all_succeed(persistent_settings: CodxJuniorGlobalSettings) -> None:
    database = Database(persistent_settings)
    try:
        user_id = UserDB(database).create(username="alice").id
        in_store(database, lambda s: None)
        threads_count = 6  # within the connection pool: each holds a unit of work open at the barrier
        barrier = threading.Barrier(threads_count)
        issued: list[str] = []
        errors: list[BaseException] = []
        attempts: list[int] = []

        def issue() -> None:
            tries = 0

            def work(uow: UnitOfWork) -> str:
                nonlocal tries
                tries += 1
                secret = issue_token(credential_store(uow.root), user_id, HOUR, NOW)
                if tries == 1:
                    # Every first attempt has written before any commits: they all race to create
                    # the user's token set, and the losers' retries must succeed.
                    barrier.wait(timeout=60)
                return secret

            try:
                issued.append(database.run(work))
                attempts.append(tries)
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=issue) for _ in range(threads_count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert len(set(issued)) == threads_count
        assert max(attempts) > 1  # the race really happened
        found = in_store(database, lambda s: [find_token(s, t, NOW) for t in issued])
        assert all(token is not None and token.user_id == user_id for token in found)
        counts = in_store(database, lambda s: (len(s.tokens), len(s.tokens_by_user[user_id]), len(s.token_expiry)))
        assert counts == (threads_count,) * 3
    finally:
        database.close()
