"""The UserDB contract, run on every backend (memory, file, postgres)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from db.database import Database
from db.errors import CodxDBError, InvalidUserData, UserAlreadyExists, UserNotFound
from db.models import USERS_KEY
from db.schemas import CodxUser
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB
from tests.conftest import run_python, settings_env

PASSWORD = "correct horse battery"


@pytest.fixture
def users(database: Database) -> Iterator[UserDB]:
    yield UserDB(database)


def snapshot_state(database: Database) -> tuple[int, list[str], list[str], list[str]]:
    """Everything the indexes hold, to show that a failed call changed nothing."""
    with database.transaction() as uow:
        container = uow.root[USERS_KEY]
        return (
            len(container),
            sorted(container.users.keys()),
            list(container.by_username.keys()),
            list(container.by_email.keys()),
        )


# -- create and read ---------------------------------------------------------------------------


def test_create_returns_a_detached_snapshot(users: UserDB) -> None:
    user = users.create(username="alice", email="Alice@Example.com", full_name="Alice A", password=PASSWORD)
    assert isinstance(user, CodxUser)
    assert user.username == "alice"
    assert user.email == "Alice@example.com"  # domain normalised, local part kept
    assert user.full_name == "Alice A"
    assert user.is_active and not user.is_superuser
    assert user.created_at == user.updated_at and user.created_at.tzinfo is not None
    assert len(user.id) == 32
    dumped = user.model_dump()
    assert "password" not in str(dumped) and "hash" not in str(dumped)
    with pytest.raises(Exception):  # noqa: B017 - frozen pydantic model
        user.username = "mallory"  # type: ignore[misc]


def test_get_find_and_get_by_email_ignore_case(users: UserDB) -> None:
    created = users.create(username="Alice", email="alice@example.com")
    assert users.get("alice") == created
    assert users.get("  ALICE ") == created
    assert users.get("\uff21lice") == created  # fullwidth A: NFKC makes it "Alice"
    assert users.find("aLiCe") == created
    assert users.get_by_email("ALICE@EXAMPLE.COM") == created
    assert users.find("bob") is None
    with pytest.raises(UserNotFound) as excinfo:
        users.get("bob")
    assert "bob" in str(excinfo.value)
    with pytest.raises(UserNotFound):
        users.get_by_email("bob@example.com")


def test_user_without_password_exists_but_cannot_log_in(users: UserDB) -> None:
    users.create(username="nopass")
    assert users.get("nopass").username == "nopass"
    assert users.authenticate("nopass", "") is None
    assert users.authenticate("nopass", PASSWORD) is None


def test_duplicate_username_or_email_is_refused_naming_the_field(users: UserDB, database: Database) -> None:
    users.create(username="alice", email="alice@example.com")
    before = snapshot_state(database)
    with pytest.raises(UserAlreadyExists) as excinfo:
        users.create(username="ALICE")
    assert excinfo.value.field == "username"
    with pytest.raises(UserAlreadyExists) as excinfo:
        users.create(username="alice2", email="ALICE@example.COM")
    assert excinfo.value.field == "email"
    assert "email" in str(excinfo.value)
    assert snapshot_state(database) == before


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"username": ""}, "username"),
        ({"username": "a" * 255}, "username: must be at most 254"),
        ({"username": "two  spaces"}, "username: must not hold two spaces"),
        ({"username": "tab\there"}, "username: must not contain control"),
        ({"username": "private\ue000use"}, "username: must not contain control"),
        ({"username": 42}, "username"),
        ({"username": "ok", "email": "not-an-email"}, "email"),
        ({"username": "ok", "email": "a@" + "b" * 250 + ".com"}, "email"),
        ({"username": "ok", "full_name": "x" * 201}, "full_name"),
        ({"username": "ok", "full_name": "bell\x07"}, "full_name"),
        ({"username": "ok", "is_superuser": "yes"}, "is_superuser"),
        ({"username": "ok", "password": "short"}, "password: must be at least 8"),
        ({"username": "ok", "password": "x" * 1025}, "password: must be at most"),
        ({"username": "ok", "password": 12345678}, "password"),
    ],
)
def test_invalid_input_is_refused_and_nothing_is_written(
    users: UserDB, database: Database, kwargs: dict, fragment: str
) -> None:
    before = snapshot_state(database)
    with pytest.raises(InvalidUserData) as excinfo:
        users.create(**kwargs)
    assert fragment in str(excinfo.value)
    assert excinfo.value.errors
    assert snapshot_state(database) == before


def test_validation_messages_never_echo_the_password(users: UserDB) -> None:
    with pytest.raises(InvalidUserData) as excinfo:
        users.create(username="ok", password="tiny")
    assert "tiny" not in str(excinfo.value)


def test_unicode_usernames_follow_the_documented_rule(users: UserDB) -> None:
    user = users.create(username="Zoë.Ünal_42-x")
    assert users.get("zoë.ünal_42-X") == user
    assert users.create(username="名前").username == "名前"


# -- update ------------------------------------------------------------------------------------


def test_update_fields(users: UserDB) -> None:
    created = users.create(username="alice", email="alice@example.com")
    updated = users.update("ALICE", full_name="Alice Liddell", is_superuser=True, is_active=False)
    assert updated.full_name == "Alice Liddell" and updated.is_superuser and not updated.is_active
    assert updated.id == created.id and updated.created_at == created.created_at
    assert updated.updated_at > created.updated_at
    assert users.get("alice") == updated


def test_rename_moves_the_username_index(users: UserDB, database: Database) -> None:
    users.create(username="alice", email="alice@example.com")
    renamed = users.update("alice", username="Alicia")
    assert renamed.username == "Alicia"
    assert users.find("alice") is None
    assert users.get("alicia") == renamed
    assert users.get_by_email("alice@example.com") == renamed
    # Changing only the case keeps the same index key.
    assert users.update("alicia", username="ALICIA").username == "ALICIA"
    assert snapshot_state(database)[2] == ["alicia"]


def test_email_change_and_clear_move_the_email_index(users: UserDB, database: Database) -> None:
    users.create(username="alice", email="alice@example.com")
    users.update("alice", email="new@example.com")
    with pytest.raises(UserNotFound):
        users.get_by_email("alice@example.com")
    assert users.get_by_email("NEW@example.com").username == "alice"
    users.update("alice", email=None)
    assert users.get("alice").email is None
    assert snapshot_state(database)[3] == []
    # The old address is free again.
    users.create(username="bob", email="alice@example.com")


def test_update_conflicts_and_errors_write_nothing(users: UserDB, database: Database) -> None:
    users.create(username="alice", email="alice@example.com")
    users.create(username="bob", email="bob@example.com")
    before = snapshot_state(database)
    with pytest.raises(UserAlreadyExists) as excinfo:
        users.update("alice", username="BOB")
    assert excinfo.value.field == "username"
    with pytest.raises(UserAlreadyExists) as excinfo:
        users.update("alice", full_name="changed", email="Bob@Example.com")
    assert excinfo.value.field == "email"
    with pytest.raises(InvalidUserData):
        users.update("alice", username="bad\x00name", full_name="changed")
    with pytest.raises(InvalidUserData):
        users.update("alice", nonsense=1)
    with pytest.raises(InvalidUserData):
        users.update("alice", username=None)
    with pytest.raises(InvalidUserData):
        users.update("alice", password=PASSWORD)
    with pytest.raises(UserNotFound):
        users.update("carol", full_name="x")
    assert snapshot_state(database) == before
    assert users.get("alice").full_name == ""


def test_update_with_no_real_change_keeps_updated_at(users: UserDB) -> None:
    created = users.create(username="alice", full_name="A")
    assert users.update("alice", full_name="A").updated_at == created.updated_at


# -- passwords ---------------------------------------------------------------------------------


def test_authenticate_by_username_or_email(users: UserDB) -> None:
    created = users.create(username="alice", email="alice@example.com", password=PASSWORD)
    assert users.authenticate("alice", PASSWORD) == created
    assert users.authenticate("ALICE@example.com", PASSWORD) == created
    assert users.authenticate("alice", PASSWORD + "x") is None
    assert users.authenticate("nobody", PASSWORD) is None
    assert users.authenticate("nobody@example.com", PASSWORD) is None


def test_a_login_typed_with_a_fullwidth_at_sign_finds_the_email(users: UserDB) -> None:
    # NFKC makes U+FF20 an "@": the address validates as alice@example.com (get_by_email finds
    # it), so a login typed that way must too; it used to try the username index alone.
    created = users.create(username="alice", email="alice@example.com", password=PASSWORD)
    assert users.get_by_email("alice\uff20example.com") == created
    assert users.authenticate("alice\uff20example.com", PASSWORD) == created
    assert users.authenticate("ALICE\uff20EXAMPLE.com", PASSWORD) == created


def test_inactive_users_cannot_log_in(users: UserDB) -> None:
    users.create(username="alice", password=PASSWORD, is_active=False)
    assert users.authenticate("alice", PASSWORD) is None
    users.update("alice", is_active=True)
    assert users.authenticate("alice", PASSWORD) is not None


def test_set_password(users: UserDB) -> None:
    users.create(username="alice", password=PASSWORD)
    users.set_password("alice", "a new password")
    assert users.authenticate("alice", PASSWORD) is None
    assert users.authenticate("alice", "a new password") is not None
    with pytest.raises(UserNotFound):
        users.set_password("bob", "a new password")
    with pytest.raises(InvalidUserData):
        users.set_password("alice", "short")
    assert users.authenticate("alice", "a new password") is not None


def test_hash_is_argon2id_and_rehashed_when_parameters_change(users: UserDB, database: Database) -> None:
    import argon2

    users.create(username="alice", password=PASSWORD)

    def stored_hash() -> str:
        with database.transaction() as uow:
            return uow.root[USERS_KEY].find_by_username("alice").password_hash

    assert stored_hash().startswith("$argon2id$")
    weak = argon2.PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)
    with database.transaction() as uow:
        uow.root[USERS_KEY].find_by_username("alice").password_hash = weak
    assert users.authenticate("alice", PASSWORD) is not None
    assert stored_hash() != weak and "m=19456" in stored_hash()
    assert users.authenticate("alice", PASSWORD) is not None


def test_bcrypt_hash_from_codx_junior_is_upgraded_on_login(users: UserDB, database: Database) -> None:
    import bcrypt

    users.create(username="legacy")
    legacy = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    with database.transaction() as uow:
        uow.root[USERS_KEY].find_by_username("legacy").password_hash = legacy
    assert users.authenticate("legacy", "wrong password") is None
    assert users.authenticate("legacy", PASSWORD) is not None
    with database.transaction() as uow:
        assert uow.root[USERS_KEY].find_by_username("legacy").password_hash.startswith("$argon2id$")


# -- delete, list, count -----------------------------------------------------------------------


def test_delete(users: UserDB, database: Database) -> None:
    users.create(username="alice", email="alice@example.com")
    users.create(username="bob")
    users.delete("ALICE")
    assert users.find("alice") is None
    assert users.count() == 1
    with pytest.raises(UserNotFound):
        users.get_by_email("alice@example.com")
    with pytest.raises(UserNotFound):
        users.delete("alice")
    assert snapshot_state(database)[0] == 1
    users.create(username="alice", email="alice@example.com")  # name and email are free again


def test_list_sorted_paged_filtered(users: UserDB) -> None:
    for name in ["delta", "Alpha", "charlie", "bravo", "echo", "alpine"]:
        users.create(username=name)
    users.update("charlie", is_active=False)
    assert [u.username for u in users.list()] == ["Alpha", "alpine", "bravo", "charlie", "delta", "echo"]
    assert [u.username for u in users.list(offset=2, limit=2)] == ["bravo", "charlie"]
    assert users.list(offset=10) == []
    assert users.list(limit=0) == []
    assert [u.username for u in users.list(prefix="AL")] == ["Alpha", "alpine"]
    assert [u.username for u in users.list(active=False)] == ["charlie"]
    assert [u.username for u in users.list(active=True, offset=2, limit=2)] == ["bravo", "delta"]
    assert users.count() == 6


@pytest.mark.parametrize(
    "kwargs",
    [{"offset": -1}, {"limit": -1}, {"limit": 1001}, {"offset": "1"}, {"active": "yes"}, {"prefix": 3}],
)
def test_list_rejects_bad_arguments(users: UserDB, kwargs: dict) -> None:
    with pytest.raises(InvalidUserData):
        users.list(**kwargs)


@pytest.mark.parametrize("method", ["get", "find", "get_by_email", "delete"])
def test_wrong_types_get_invalid_user_data(users: UserDB, method: str) -> None:
    with pytest.raises(InvalidUserData):
        getattr(users, method)(None)


def test_all_errors_share_one_base() -> None:
    for error in (UserNotFound, UserAlreadyExists, InvalidUserData):
        assert issubclass(error, CodxDBError)


# -- units of work -----------------------------------------------------------------------------


def test_calls_inside_a_transaction_join_it(users: UserDB, database: Database) -> None:
    with database.transaction():
        users.create(username="alice")
        users.update("alice", full_name="Alice")
        assert users.get("alice").full_name == "Alice"
    assert users.get("alice").full_name == "Alice"


def test_an_error_in_the_callers_transaction_aborts_every_call(users: UserDB) -> None:
    users.create(username="bob")
    with pytest.raises(UserAlreadyExists), database_of(users).transaction():
        users.create(username="alice")
        users.update("bob", full_name="changed")
        users.create(username="BOB")
    assert users.find("alice") is None
    assert users.get("bob").full_name == ""
    assert users.count() == 1


def database_of(users: UserDB) -> Database:
    return users.database


def test_many_threads_create_and_update(users: UserDB) -> None:
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for i in range(8):
                users.create(username=f"t{t}-u{i}", email=f"t{t}.u{i}@example.com")
                users.update(f"t{t}-u{i}", full_name=f"thread {t}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert users.count() == 32
    assert len(users.list(limit=100)) == 32
    assert all(u.full_name.startswith("thread") for u in users.list(limit=100))


def test_same_username_raced_by_threads_has_one_winner(users: UserDB) -> None:
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def worker() -> None:
        barrier.wait(10)
        try:
            users.create(username="contested")
            outcomes.append("won")
        except UserAlreadyExists:
            outcomes.append("exists")

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes) == ["exists", "exists", "exists", "won"]
    assert users.count() == 1


def test_a_second_process_reads_what_the_first_wrote(persistent_settings: CodxJuniorGlobalSettings) -> None:
    env = settings_env(persistent_settings)
    result = run_python(
        "from db import db\nfrom db.user_db import UserDB\n"
        f"UserDB().create(username='child', email='child@example.com', password={PASSWORD!r})\n"
        "db.close()\n",
        env,
    )
    assert result.returncode == 0, result.stderr
    database = Database(persistent_settings)
    try:
        users = UserDB(database)
        assert users.get("CHILD").email == "child@example.com"
        assert users.authenticate("child@example.com", PASSWORD) is not None
    finally:
        database.close()


def test_default_userdb_uses_the_global_db(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {"CODX_JUNIOR_DB_FILE_PATH": str(tmp_path / "u.fs")}
    import os

    result = run_python(
        "from db import db\nfrom db.user_db import UserDB\n"
        "assert UserDB().database is db\n"
        "UserDB().create(username='g'); print(UserDB().count()); db.close()\n",
        {**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"


def test_thousands_of_writes_in_one_unit_of_work(users: UserDB) -> None:
    """One note per write would exceed FileStorage's 64 KiB description: notes are capped."""
    database = users.database
    with database.transaction():
        for i in range(3000):
            users.create(username=f"bulk{i:05d}", email=f"bulk{i}@example.com")
    assert users.count() == 3000
    assert users.list(offset=2999, limit=5)[0].username == "bulk02999"


def test_list_after_a_username_pages_without_offsets(users: UserDB) -> None:
    for name in ["delta", "Alpha", "charlie", "bravo", "echo", "alpine"]:
        users.create(username=name)
    first = users.list(limit=2)
    assert [u.username for u in first] == ["Alpha", "alpine"]
    second = users.list(limit=2, after=first[-1].username)
    assert [u.username for u in second] == ["bravo", "charlie"]
    assert [u.username for u in users.list(after="ECHO")] == []
    assert [u.username for u in users.list(after="b", prefix="al")] == []
    assert [u.username for u in users.list(after="ALPHA", prefix="al")] == ["alpine"]
    assert [u.username for u in users.list(after="a", prefix="c")] == ["charlie"]
    with pytest.raises(InvalidUserData):
        users.list(after=3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "address",
    [
        "Bob@Example.COM",
        "a.b+c@xn--bcher-kva.example",
        "a@bücher.example",
        "A!#$%&'*+/=?^_`{|}~-z@example.org",
        "ä@example.com",
        "a" * 64 + "@example.com",
        "a" * 65 + "@example.com",
        "a..b@example.com",
        "a@example.invalid",
        "a@[127.0.0.1]",
        "user@example.com.",
        '"quoted local"@example.com',
    ],
)
def test_fast_email_normalisation_matches_email_validator(address: str) -> None:
    """The cached-domain fast path gives email-validator's answer, or its refusal."""
    from email_validator import EmailNotValidError, validate_email

    from db.schemas import normalize_email

    try:
        expected: str | None = validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError:
        expected = None
    try:
        got: str | None = normalize_email(address)
    except ValueError:
        got = None
    assert got == expected


def test_deep_offsets_walk_in_chunks_with_the_same_result(users: UserDB, monkeypatch: pytest.MonkeyPatch) -> None:
    # Deep offsets skip in chunks and let the cache shrink in between (db/users/listing.py);
    # a tiny chunk makes every page below cross many chunk boundaries.
    users.import_users({"username": f"u{i:03d}", "is_active": i % 3 != 0} for i in range(200))
    expected = [f"u{i:03d}" for i in range(200)]
    active = [name for i, name in enumerate(expected) if i % 3 != 0]
    monkeypatch.setattr("db.users.listing._GC_EVERY", 7)
    for offset in (0, 6, 7, 8, 49, 150, 195, 199, 200):
        assert [u.username for u in users.list(offset=offset, limit=10)] == expected[offset : offset + 10]
        assert [u.username for u in users.list(offset=offset, limit=10, active=True)] == active[offset : offset + 10]
    assert [u.username for u in users.list(offset=15, limit=3, prefix="u1")] == ["u115", "u116", "u117"]


def test_snapshots_follow_every_change(users: UserDB, database: Database) -> None:
    # A committed user's snapshot is cached per revision (db/schemas.py): each change, here
    # or in another unit of work, must show at once; the snapshot itself cannot be changed.
    users.create(username="alice", projects=[{"project_id": "p1", "permissions": "read"}])
    first = users.get("alice")
    assert users.get("alice") is first or users.get("alice") == first
    assert isinstance(first.projects, tuple)
    users.update("alice", full_name="Alice 2")
    assert users.get("alice").full_name == "Alice 2"
    with database.transaction():
        users.update("alice", full_name="Alice 3")
        assert users.get("alice").full_name == "Alice 3"  # changed, not committed yet
    assert users.get("alice").full_name == "Alice 3"
    with pytest.raises(RuntimeError), database.transaction():
        users.update("alice", full_name="aborted")
        raise RuntimeError
    assert users.get("alice").full_name == "Alice 3"
    assert users.get("alice").projects[0].project_id == "p1"
    with pytest.raises(Exception):  # noqa: B017 - frozen all the way down
        first.projects[0].permissions = "admin"  # type: ignore[misc]


def test_get_by_id(users: UserDB) -> None:
    # Tokens and API keys carry a user's id, which survives renames.
    created = users.create(username="Ada", email="ada@example.com")
    users.update("ada", username="ada.lovelace")
    assert users.get_by_id(created.id) == users.get("ada.lovelace")
    with pytest.raises(UserNotFound) as caught:
        users.get_by_id("no-such-id")
    assert caught.value.field == "id" and "no-such-id" in str(caught.value)
    with pytest.raises(InvalidUserData, match="user_id: must be a string"):
        users.get_by_id(7)  # type: ignore[arg-type]
