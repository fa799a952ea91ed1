"""Import from codx-junior's global_settings.json: the sample file, logins, dry run, re-runs, conflicts, bad files."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from db.database import Database
from db.errors import CodxJuniorFileError
from db.importer import import_codx_junior, read_codx_junior_settings
from db.models import USERS_KEY
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB
from db.users import credentials
from tests.conftest import ROOT, settings_env

SAMPLE = Path(__file__).parent / "fixtures" / "codx_junior_global_settings.json"
# The passwords behind the sample's bcrypt hashes (generated with the bcrypt package; cost 12
# for admin, 10 for the others; bob's is a $2y$ hash, erin's a $2a$ one).
PASSWORDS = {
    "admin": "codx-admin-2024!",
    "alice": "wonderland-42",
    "bob": "builder-bob-7",
    "carol": "carol-sings-99",
    "erin": "erin-secure-5",
    "Frank.Lee": "frank-lee-passw0rd",
}
SAMPLE_USERS = ["admin", "alice", "bob", "carol", "dave", "erin", "Frank.Lee"]


def stored_hash(database: Database, username: str) -> str | None:
    with database.transaction() as uow:
        return uow.root[USERS_KEY].find_by_username(username).password_hash


@pytest.fixture
def memory_db() -> Iterator[Database]:
    database = Database(CodxJuniorGlobalSettings.load(db_backend="memory"))
    try:
        yield database
    finally:
        database.close()


def write_json(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "global_settings.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


# -- the sample file -------------------------------------------------------------------------------


def test_the_sample_imports_and_its_users_log_in_with_their_codx_junior_passwords(
    persistent_settings: CodxJuniorGlobalSettings,
) -> None:
    database = Database(persistent_settings)
    try:
        report = import_codx_junior(database, SAMPLE, actor="tester")
        assert report.ok and report.written
        assert report.created == SAMPLE_USERS and report.without_password == ["dave"]
        assert any("old-intern" in warning for warning in report.warnings)

        users = UserDB(database)
        assert users.count() == 7
        alice = users.get("alice")
        assert (alice.email, alice.theme, alice.github, alice.role) == (
            "alice@codx.example",
            "dim",
            "alice-dev",
            "user",
        )
        assert alice.avatar == "https://avatars.githubusercontent.com/u/5812337?v=4"
        assert [(p.project_id, p.permissions, p.children) for p in alice.projects] == [
            ("5d0c6a0e-8a4b-4f57-9a54-3f1d2b7c9e10", "tasks,coder", True),
            ("docs-site", "tasks", False),
        ]
        # codx-junior's default [] is kept as written (a list), not joined into a string.
        assert [(p.permissions, p.children) for p in users.get("bob").projects] == [((), True)]
        erin = users.get("erin")
        assert erin.email is None and erin.role == "admin" and erin.is_superuser
        assert users.get("carol").disabled and not users.get("carol").is_active
        assert users.get_by_email("frank.lee@codx.example").username == "Frank.Lee"

        for username, password in PASSWORDS.items():
            assert stored_hash(database, username).startswith(("$2a$", "$2b$", "$2y$"))
            assert users.authenticate(username, password + "x") is None
            logged_in = users.authenticate(username, password)
            if username == "carol":
                assert logged_in is None  # disabled in codx-junior: still cannot log in
                continue
            assert logged_in is not None and logged_in.username == username
            # The first successful login replaced the bcrypt hash with argon2id...
            assert stored_hash(database, username).startswith("$argon2id$")
            # ...which still takes the same password.
            assert users.authenticate(username, password) is not None
        assert users.authenticate("dave", "anything-at-all") is None  # no login entry: no password
        assert users.find("old-intern") is None
    finally:
        database.close()


def test_dry_run_reports_and_writes_nothing(memory_db: Database) -> None:
    report = import_codx_junior(memory_db, SAMPLE, dry_run=True)
    assert report.dry_run and not report.written
    assert report.created == SAMPLE_USERS
    assert UserDB(memory_db).count() == 0
    assert "dry run: nothing written" in report.lines()[0]


def test_a_rerun_is_idempotent_even_after_logins(memory_db: Database) -> None:
    first = import_codx_junior(memory_db, SAMPLE)
    users = UserDB(memory_db)
    before = {u.username: u for u in users.list()}
    assert users.authenticate("alice", PASSWORDS["alice"]) is not None  # rehashed to argon2id

    again = import_codx_junior(memory_db, SAMPLE)
    assert again.ok and not again.written
    assert (again.created, again.updated, again.skipped) == ([], [], first.created)
    assert {u.username: u for u in users.list()} == before
    assert stored_hash(memory_db, "alice").startswith("$argon2id$")  # the upgraded hash is kept


def test_conflicts_are_reported_and_nothing_is_written(memory_db: Database) -> None:
    users = UserDB(memory_db)
    users.create(username="alice", email="alice@elsewhere.example")
    users.create(username="robert", email="BOB@codx.example")
    users.create(username="erin", theme="dim", role="admin")  # same data as the file but projects

    report = import_codx_junior(memory_db, SAMPLE)
    assert not report.ok and not report.written
    conflicts = {c.username: c.reason for c in report.conflicts}
    assert conflicts == {
        "alice": "exists in codx-db with a different email, avatar, github, apps, projects",
        "bob": "its email belongs to the codx-db user 'robert'",
        "erin": "exists in codx-db with a different github, projects",
    }
    assert "admin" in report.created  # what would have been created...
    assert users.count() == 3  # ...but all or nothing: nothing was
    assert users.get("alice").email == "alice@elsewhere.example"
    assert "nothing written: resolve the conflicts" in report.lines()[0]


def test_an_identical_user_without_a_password_gets_the_hash(memory_db: Database) -> None:
    UserDB(memory_db).create(
        username="frank.lee", email="frank.lee@codx.example"
    )  # e.g. made by hand before the import
    report = import_codx_junior(memory_db, SAMPLE)
    assert report.written and report.updated == ["Frank.Lee"] and "Frank.Lee" not in report.created
    assert UserDB(memory_db).authenticate("Frank.Lee", PASSWORDS["Frank.Lee"]) is not None


# -- malformed files -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"users": [', "not valid JSON: Expecting value at line 1, column 12"),
        ([], "expected a JSON object (codx-junior's global settings), found a list"),
        ({"users": {"alice": {}}}, "users: expected a list, found an object"),
        ({"users": [{"email": "x@example.com"}]}, "users[0]: username is missing"),
        ({"users": [{"username": 42}]}, "users[0]: username: expected a string, found a number"),
        ({"users": ["alice"]}, "users[0]: expected an object, found a string"),
        ({"users": [{"username": "ann", "disabled": "no"}]}, "users[0] ('ann'): disabled: expected true or false"),
        ({"users": [{"username": "ann", "email": "not-an-email"}]}, "users[0] ('ann'): email: not a valid email"),
        ({"users": [{"username": "ann", "role": "root"}]}, "users[0] ('ann'): role: must be one of user, admin"),
        (
            {"users": [{"username": "ann", "projects": [{"permissions": "tasks"}]}]},
            "users[0] ('ann'): projects[0]: project_id is missing",
        ),
        (
            {"users": [{"username": "ann", "projects": [{"project_id": "p", "permissions": 7}]}]},
            "projects[0] ('p'): permissions: expected a string or a list of strings, found a number",
        ),
        (
            {"users": [{"username": "ann"}, {"username": "ANN"}]},
            "users[1] ('ANN'): same username as users[0] ('ann') (codx-db usernames ignore case)",
        ),
        (
            {"users": [{"username": "ann", "email": "a@x.example"}, {"username": "bo", "email": "A@X.example"}]},
            "users[1] ('bo'): same email as users[0] ('ann')",
        ),
        ({"user_logins": [{"password": "$2b$"}]}, "user_logins[0]: username is missing"),
        (
            {"users": [{"username": "ann"}], "user_logins": [{"username": "ann", "password": "hunter2-plain"}]},
            "user_logins[0] ('ann'): password is not a bcrypt hash ($2a$, $2b$ or $2y$, 60 characters)",
        ),
    ],
)
def test_a_malformed_file_is_refused_naming_the_entry(
    content: Any, expected: str, tmp_path: Path, memory_db: Database
) -> None:
    path = write_json(tmp_path, content)
    with pytest.raises(CodxJuniorFileError) as excinfo:
        import_codx_junior(memory_db, path)
    message = str(excinfo.value)
    assert message.startswith(f"{path}: ") and expected in message, message
    assert "hunter2-plain" not in message  # a plain password in the file is never echoed
    assert UserDB(memory_db).count() == 0


def test_every_problem_is_listed_and_a_missing_file_is_named(tmp_path: Path) -> None:
    path = write_json(tmp_path, {"users": [{"username": "ok"}, {"username": ""}, {"username": "x", "theme": 3}]})
    with pytest.raises(CodxJuniorFileError) as excinfo:
        read_codx_junior_settings(path)
    assert "users[1]: username is missing" in str(excinfo.value)
    assert "users[2] ('x'): theme: expected a string, found a number" in str(excinfo.value)
    with pytest.raises(CodxJuniorFileError, match="no such file"):
        read_codx_junior_settings(tmp_path / "missing.json")


def test_orphan_and_duplicate_logins_are_warnings_and_extra_fields_are_named_not_shown(tmp_path: Path) -> None:
    hash_a, hash_b = (json.loads(SAMPLE.read_text())["user_logins"][i]["password"] for i in (1, 2))
    path = write_json(
        tmp_path,
        {
            "users": [{"username": "ann", "token": "tok-SECRET-123", "api_key": "key-SECRET-456"}],
            "user_logins": [
                {"username": "ann", "password": hash_a, "token": "tok-SECRET-789"},
                {"username": "ann", "password": hash_b},
                {"username": "Ann", "password": hash_b},
                {"username": "ghost", "password": hash_b},
                {"username": "ann2", "password": ""},
            ],
        },
    )
    entries, warnings = read_codx_junior_settings(path)
    assert [(e.username, e.password_hash) for e in entries] == [("ann", hash_a)]  # the first login counts
    text = "\n".join(warnings)
    # Grouped, one line each: a file with 3,000 leftover logins does not print 3,000 lines.
    assert "1 second login for one user left out (the first counts, as in codx-junior): 'ann'" in text
    # 'Ann' is not ann's: codx-junior matches exactly.
    assert "3 logins without a user of exactly that name left out" in text and "'Ann', 'ghost', 'ann2'" in text
    assert "left out: api_key" not in text  # imported (hashed), no longer left out...
    assert "short api_key (1 user, under 20 characters)" in text  # ...but worth rotating
    assert "token (1 user): codx-db issues its own tokens; they log in again" in text
    assert "SECRET" not in text


# -- the command line -----------------------------------------------------------------------------------


def test_cli_dry_run_import_rerun_and_conflict(tmp_path: Path) -> None:
    settings = CodxJuniorGlobalSettings.load(db_backend="file", db_file_path=tmp_path / "data" / "users.fs")
    env = settings_env(settings)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "db", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
        )

    dry = cli("import-codx-junior", str(SAMPLE), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "dry run: nothing written" in dry.stdout and "created:      7" in dry.stdout

    done = cli("import-codx-junior", str(SAMPLE), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["written"] and report["created"] == SAMPLE_USERS
    assert "$2b$" not in done.stdout + done.stderr

    again = json.loads(cli("import-codx-junior", str(SAMPLE), "--json").stdout)
    assert again["skipped"] == SAMPLE_USERS and not again["written"]

    cli("user", "update", "alice", "--theme", "dark")
    conflict = cli("import-codx-junior", str(SAMPLE), "--json")
    assert conflict.returncode == 1
    assert json.loads(conflict.stdout)["conflicts"] == [
        {"username": "alice", "reason": "exists in codx-db with a different theme"}
    ]

    database = Database(settings)
    try:
        assert UserDB(database).count() == 7
        # The import is one transaction, recorded as such in each user's history.
        created = UserDB(database).history("admin")[-1]
        assert "import-codx-junior" in created.description
        assert created.by is not None and created.by.endswith("(codx-db import-codx-junior)")
    finally:
        database.close()


def test_a_huge_username_or_field_name_is_not_echoed_whole(tmp_path: Path) -> None:
    """A 100 KB username in a malformed entry, or 100 KB field names: the message stays short."""
    huge = "a" * 100_000
    path = write_json(tmp_path, {"users": [{"username": huge, "theme": 3}], "user_logins": [{"username": huge + "b"}]})
    with pytest.raises(CodxJuniorFileError) as excinfo:
        read_codx_junior_settings(path)
    message = str(excinfo.value)
    assert "users[0] ('aaaa" in message and "theme: expected a string" in message
    assert len(message) < 1_000, len(message)

    path = write_json(tmp_path, {"users": [{"username": "ann", huge: 1, huge + "b": 2}]})
    _, warnings = read_codx_junior_settings(path)
    assert len("\n".join(warnings)) < 1_000


def test_lookalike_usernames_in_one_file_are_refused_naming_both_entries(tmp_path: Path, memory_db: Database) -> None:
    """Two entries that would be two users looking the same: a file error like any other duplicate.

    UserDB.import_users refuses them in its batch check; the codx-junior import shares that check.
    """
    acute_admin = "admi\u0144"  # n with an acute accent: the confusable skeleton of "admin"
    path = write_json(tmp_path, {"users": [{"username": "admin"}, {"username": acute_admin}]})
    with pytest.raises(CodxJuniorFileError) as excinfo:
        import_codx_junior(memory_db, path)
    assert f"users[1] ({acute_admin!r}): username looks like users[0] ('admin')" in str(excinfo.value)
    assert UserDB(memory_db).count() == 0


def test_a_user_looking_like_a_stored_one_is_a_conflict_and_nothing_is_written(
    tmp_path: Path, memory_db: Database
) -> None:
    """A file user whose name looks like a codx-db user's is reported, like any other conflict."""
    users = UserDB(memory_db)
    users.create(username="admin")
    path = write_json(tmp_path, {"users": [{"username": "carol"}, {"username": "admi\u0144"}]})
    report = import_codx_junior(memory_db, path)
    assert not report.written and report.created == ["carol"]
    assert [(c.username, c.reason) for c in report.conflicts] == [
        ("admi\u0144", "its username looks like the codx-db user 'admin'")
    ]
    assert users.count() == 1


def test_a_username_that_is_another_users_email_in_the_file_is_a_file_error(
    tmp_path: Path, memory_db: Database
) -> None:
    path = write_json(
        tmp_path, {"users": [{"username": "ann", "email": "x@example.com"}, {"username": "x@example.com"}]}
    )
    with pytest.raises(CodxJuniorFileError) as excinfo:
        import_codx_junior(memory_db, path)
    assert "users[1] ('x@example.com'): its username is the email of users[0] ('ann')" in str(excinfo.value)
    assert UserDB(memory_db).count() == 0


# -- issue 13 item 2: an import a maintainer can trust ------------------------------------------------

HASHES = [login["password"] for login in json.loads(SAMPLE.read_text())["user_logins"]]


def test_a_login_is_attached_only_to_the_user_of_exactly_that_name(tmp_path: Path, memory_db: Database) -> None:
    """codx-junior's find_user_login is ``==``: ``Carol`` never gets ``carol``'s (a deleted user's) password."""
    path = write_json(
        tmp_path,
        {
            "users": [{"username": "Carol"}, {"username": "Alice"}, {"username": "bob"}],
            "user_logins": [
                {"username": "carol", "password": HASHES[3]},  # a deleted user's leftover login
                {"username": "alice", "password": HASHES[1]},
                {"username": "bob", "password": HASHES[2]},
            ],
        },
    )
    report = import_codx_junior(memory_db, path)
    assert report.written and report.created == ["Carol", "Alice", "bob"]
    assert report.without_password == ["Carol", "Alice"]  # they set their password at first login
    users = UserDB(memory_db)
    assert users.authenticate("Carol", PASSWORDS["carol"]) is None
    assert users.authenticate("Alice", PASSWORDS["alice"]) is None
    assert stored_hash(memory_db, "Carol") is None and stored_hash(memory_db, "Alice") is None
    assert users.authenticate("bob", PASSWORDS["bob"]) is not None
    text = "\n".join(report.warnings)
    assert "'carol'" in text and "'alice'" in text  # the leftover logins are named


def test_case_collisions_are_found_in_one_pass_even_next_to_other_problems(tmp_path: Path) -> None:
    """Today a collision with a malformed entry showed only once that entry was fixed: a second run."""
    path = write_json(
        tmp_path,
        {
            "users": [
                {"username": "Ann", "theme": 3},
                {"username": "ann"},
                {"username": "BOB", "role": "root"},
                {"username": "bob"},
            ]
        },
    )
    with pytest.raises(CodxJuniorFileError) as excinfo:
        read_codx_junior_settings(path)
    message = str(excinfo.value)
    assert "users[0] ('Ann'): theme: expected a string" in message
    assert "users[1] ('ann'): same username as users[0] ('Ann')" in message
    assert "users[3] ('bob'): same username as users[2] ('BOB')" in message


def test_skip_invalid_imports_the_valid_users_and_names_each_refused_one(tmp_path: Path, database: Database) -> None:
    memory_db = database  # memory, file and postgres
    path = write_json(
        tmp_path,
        {
            "users": [
                {"username": "ok"},
                {"username": "x", "theme": 3},
                {"username": "Carol"},
                {"username": "carol"},
                {"username": " dan ", "email": "Dan@EXAMPLE.com", "github": "@dangh"},
            ],
            "user_logins": [{"username": "ok", "password": HASHES[1]}],
        },
    )
    with pytest.raises(CodxJuniorFileError):  # without the flag: all or nothing, as before
        import_codx_junior(memory_db, path)
    assert UserDB(memory_db).count() == 0

    report = import_codx_junior(memory_db, path, skip_invalid=True)
    assert report.ok and report.written
    assert report.created == ["ok", "Carol", "dan"]  # of two colliding entries the first is kept
    assert [(r.where, r.username) for r in report.refused] == [("users[1]", "x"), ("users[3]", "carol")]
    assert report.refused[0].reasons == ["theme: expected a string, found a number"]
    assert "same username as users[2] ('Carol')" in report.refused[1].reasons[0]
    assert "global_settings.json" in report.refused[1].fix and "users[3]" in report.refused[1].fix
    assert report.normalized == [
        "users[4] (' dan '): username: NFKC-normalised and trimmed",
        "users[4] (' dan '): email: NFKC-normalised, trimmed, domain lower-cased",
        "users[4] (' dan '): github: trimmed, leading @ dropped",
    ]
    text = "\n".join(report.lines())
    assert "refused:      2" in text and "users[3] ('carol')" in text and "normalised:" in text
    assert "EXAMPLE" not in text and "dangh" not in text  # field names, never values
    assert UserDB(memory_db).authenticate("ok", PASSWORDS["alice"]) is not None
    assert sorted(u.username for u in UserDB(memory_db).list()) == ["Carol", "dan", "ok"]
    assert report.to_dict()["refused"][0]["where"] == "users[1]"


def test_cli_skip_invalid_exits_0_and_names_the_refused(tmp_path: Path) -> None:
    settings = CodxJuniorGlobalSettings.load(db_backend="file", db_file_path=tmp_path / "data" / "users.fs")
    path = write_json(tmp_path, {"users": [{"username": "ok"}, {"username": "x", "role": "root"}]})
    command = [sys.executable, "-m", "db", "import-codx-junior", str(path)]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = settings_env(settings)
        return subprocess.run([*command, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)

    refused = run()
    assert refused.returncode == 1 and "users[1] ('x'): role: must be one of user, admin" in refused.stderr
    done = run("--skip-invalid", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["created"] == ["ok"] and report["written"]
    assert [(r["where"], r["username"]) for r in report["refused"]] == [("users[1]", "x")]
    assert "fix" in report["refused"][0] and report["refused"][0]["reasons"] == ["role: must be one of user, admin"]


def test_left_out_fields_count_only_users_with_a_value(tmp_path: Path) -> None:
    """Today: "api_key (3 users)" when none of them had one."""
    empty: dict[str, Any] = {"api_key": "", "token": None, "extra": [], "more": {}, "flag": False}
    path = write_json(
        tmp_path,
        {"users": [{"username": "a", **empty}, {"username": "b", **empty}, {"username": "c", **empty, "extra": [1]}]},
    )
    _, warnings = read_codx_junior_settings(path)
    text = "\n".join(warnings)
    assert "extra (1 user)" in text
    assert "token" not in text
    path = write_json(tmp_path, {"users": [{"username": "a", "token": "t1"}, {"username": "b", "token": "t2"}]})
    assert "token (2 users): codx-db issues its own tokens" in "\n".join(read_codx_junior_settings(path)[1])
    for name in ("api_key", "token", "more", "flag"):
        assert name not in text, text


def test_api_keys_are_imported_hashed_and_keep_working(tmp_path: Path, database: Database) -> None:
    key = "codx-junior-key-0123456789abcdef"
    path = write_json(
        tmp_path,
        {"users": [{"username": "ann", "api_key": key}, {"username": "bo", "api_key": ""}, {"username": "cy"}]},
    )
    report = import_codx_junior(database, path)
    assert report.written and not any("api_key" in warning for warning in report.warnings)
    (tmp_path / "short").mkdir()
    short = write_json(tmp_path / "short", {"users": [{"username": "sho", "api_key": "abc123"}]})
    assert "short api_key (1 user" in "\n".join(read_codx_junior_settings(short)[1])
    assert "abc123" not in "\n".join(read_codx_junior_settings(short)[1])
    users = UserDB(database)
    found = users.get_by_api_key(key)
    assert found is not None and found.username == "ann"
    assert users.get_by_api_key("") is None and users.get_by_api_key("x" * 20) is None
    with database.transaction() as uow:
        store = credentials.credential_store(uow.root)
        assert key not in store.api_keys and len(store.api_keys) == 1  # stored under its digest only
        [info] = credentials.list_api_keys(store, found.id)
        assert info.imported and info.name == "codx-junior"
    again = import_codx_junior(database, path)
    assert not again.written and again.skipped == ["ann", "bo", "cy"]  # a re-run is idempotent

    # A key another user holds is a conflict; two entries with one key are refused.
    other = write_json(tmp_path, {"users": [{"username": "dee", "api_key": key}]})
    conflict = import_codx_junior(database, other)
    assert [(c.username, c.reason) for c in conflict.conflicts] == [
        ("dee", "its api_key belongs to another codx-db user")
    ]
    twice = write_json(
        tmp_path, {"users": [{"username": "e1", "api_key": "k" * 30}, {"username": "e2", "api_key": "k" * 30}]}
    )
    with pytest.raises(CodxJuniorFileError, match=r"users\[1\] \('e2'\): same api_key as users\[0\] \('e1'\)"):
        import_codx_junior(database, twice)


def test_apps_and_project_apps_are_kept_and_a_rerun_skips(tmp_path: Path, memory_db: Database) -> None:
    """codx-junior's ``apps`` (user and project grant) were dropped as "left out" fields before."""
    path = write_json(
        tmp_path,
        {
            "users": [
                {
                    "username": "ann",
                    "apps": ["chat", "wiki"],
                    "projects": [{"project_id": "p", "permissions": "tasks", "apps": ["coder"]}],
                }
            ]
        },
    )
    report = import_codx_junior(memory_db, path)
    assert report.written and report.created == ["ann"]
    assert not any("apps" in warning for warning in report.warnings)
    user = UserDB(memory_db).get("ann")
    assert tuple(user.apps) == ("chat", "wiki")
    assert tuple(user.projects[0].apps) == ("coder",)
    again = import_codx_junior(memory_db, path)
    assert not again.written and again.skipped == ["ann"]


def test_two_entries_with_one_github_login_are_a_file_error(tmp_path: Path, memory_db: Database) -> None:
    path = write_json(tmp_path, {"users": [{"username": "a", "github": "Octo"}, {"username": "b", "github": "octo"}]})
    with pytest.raises(CodxJuniorFileError, match=r"users\[1\] \('b'\): same github as users\[0\] \('a'\)"):
        import_codx_junior(memory_db, path)
    assert UserDB(memory_db).count() == 0


def test_permission_lists_and_null_children_round_trip_as_codx_junior_wrote_them(
    tmp_path: Path, memory_db: Database
) -> None:
    """Before, a permissions list was joined into "a,b" and ``children: null`` became true."""
    from db.codx_junior import to_codx_junior

    projects = [
        {"project_id": "p", "permissions": ["tasks", "coder"], "children": None, "apps": []},
        {"project_id": "q", "permissions": [], "children": False, "apps": ["viewer"]},
        {"project_id": "r", "permissions": "tasks,coder", "children": True, "apps": []},
    ]
    path = write_json(tmp_path, {"users": [{"username": "ann", "projects": projects}]})
    assert import_codx_junior(memory_db, path).created == ["ann"]
    assert to_codx_junior(UserDB(memory_db).get("ann"))["projects"] == projects
    again = import_codx_junior(memory_db, path)
    assert not again.written and again.skipped == ["ann"]


def test_the_file_import_and_sync_store_a_codx_junior_user_alike(tmp_path: Path) -> None:
    """theme "" is kept, and a grant whose permissions are missing or null gets codx-junior's []."""
    entry = {
        "username": "admin",
        "email": "",
        "avatar": "",
        "theme": "",
        "role": "admin",
        "projects": [
            {"project_id": "p1", "permissions": None, "children": None},
            {"project_id": "p2"},
            {"project_id": "p3", "permissions": "tasks,coder"},
        ],
    }
    stored = []
    for how in ("file", "sync"):
        database = Database(CodxJuniorGlobalSettings.load(db_backend="memory"))
        try:
            users = UserDB(database)
            if how == "file":
                report = import_codx_junior(database, write_json(tmp_path, {"users": [entry]}))
                assert report.normalized == [], report.normalized
            else:
                users.sync([entry])
            stored.append(users.get("admin").model_dump(exclude={"id", "created_at", "updated_at"}))
        finally:
            database.close()
    by_file, by_sync = stored
    assert by_file["theme"] == "" and by_sync["theme"] == ""
    assert [p["permissions"] for p in by_file["projects"]] == [(), (), "tasks,coder"]
    assert by_file == by_sync

    # An empty value that is stored as a default is listed, never silent.
    database = Database(CodxJuniorGlobalSettings.load(db_backend="memory"))
    try:
        report = import_codx_junior(database, write_json(tmp_path, {"users": [{**entry, "role": ""}]}))
        assert report.normalized == ["users[0] ('admin'): role: empty in the file, stored as 'user'"]
        assert UserDB(database).get("admin").role == "user"
    finally:
        database.close()


def test_a_dry_run_on_a_location_with_no_database_creates_none(
    persistent_settings: CodxJuniorGlobalSettings,
) -> None:
    """The first thing to try on a fresh install: its report says 'nothing written', and nothing is
    (no file, no RelStorage tables: a later copy would then need --force)."""
    from migrations.runner import holds_database
    from tests.conftest import run_cli_in_process

    assert not holds_database(persistent_settings)
    result = run_cli_in_process(persistent_settings, "import-codx-junior", str(SAMPLE), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "dry run: nothing written" in result.stdout and "admin" in result.stdout
    assert not holds_database(persistent_settings)
    if persistent_settings.kind == "file":
        assert not persistent_settings.db_file_path.exists()


def test_passwords_put_in_users_are_named_with_where_they_belong(memory_db: Database, tmp_path: Path) -> None:
    path = write_json(tmp_path, {"users": [{"username": "olivia", "role": "admin", "password": "$2b$12$" + "a" * 53}]})
    report = import_codx_junior(memory_db, path, dry_run=True)
    assert any("user_logins" in warning for warning in report.warnings), report.warnings
