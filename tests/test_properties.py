"""Property tests (hypothesis): bad input never corrupts, never leaks an undocumented error.

UserDB: every call either succeeds and reads back exactly what it returned, or raises one of
the documented errors (InvalidUserData, UserAlreadyExists, UserNotFound) having written
nothing. The command line: whatever the arguments, an exit code and at most one error line,
never a traceback. Settings: a value is accepted or refused with ConfigurationError.

Inputs that once hit a bug (lone surrogates, impossible paths) also have their own tests at
the end of this file.

Profiles: ``CI=true`` uses a derandomised profile (the same examples on every run), the
default a random one; both keep the example counts modest so the file runs in seconds.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from db.check import check
from db.database import Database
from db.errors import ConfigurationError, InvalidUserData, UserAlreadyExists, UserNotFound
from db.models import email_key, username_key
from db.schemas import CodxUser
from db.settings import CodxJuniorGlobalSettings
from db.user_db import UserDB
from tests.conftest import IN_CI, ROOT

settings.register_profile(
    "codx-ci", derandomize=True, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("codx-dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROFILE = settings.get_profile("codx-ci" if IN_CI else "codx-dev")

DOCUMENTED = (InvalidUserData, UserAlreadyExists, UserNotFound)
SECRET = "S3cret-pw-1234"

# -- strategies ---------------------------------------------------------------------------------

any_text = st.text(max_size=40)  # any code point, lone surrogates included
# Huge strings cost nothing to build this way (and shrink to short ones).
huge_text = st.builds(lambda c, n: c * n, st.characters(), st.integers(300, 100_000))
wrong_type = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)
plausible_name = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,12}", fullmatch=True)
unicode_name = st.text(st.characters(categories=("Lu", "Ll", "Lo", "Nd")), min_size=1, max_size=12)
usernames = st.one_of(plausible_name, unicode_name, st.sampled_from(["taken", "TAKEN", "\uff54aken"]), any_text)
emails = st.one_of(st.none(), st.emails(), st.sampled_from(["taken@example.com", "Taken@EXAMPLE.com"]), any_text)
full_names = st.one_of(any_text, st.just(""))
passwords = st.one_of(st.none(), st.text(st.characters(exclude_categories=("Cs",)), min_size=8, max_size=24))
flags = st.booleans()


def loose(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the plausible values, sometimes huge strings or the wrong type altogether."""
    return st.one_of(good, good, good, huge_text, wrong_type)


@contextlib.contextmanager
def fresh_users() -> Iterator[UserDB]:
    """A new in-memory database per example, with one user "taken" to collide with."""
    database = Database(CodxJuniorGlobalSettings.load(db_backend="memory"))
    try:
        users = UserDB(database)
        users.create(username="taken", email="taken@example.com")
        yield users
    finally:
        database.close()


def state(users: UserDB) -> list[CodxUser]:
    return users.list(limit=1000)


def assert_consistent(users: UserDB) -> None:
    report = check(users.database)
    assert report.ok, [f"{p.code}: {p.message}" for p in report.problems]


# -- UserDB -------------------------------------------------------------------------------------


@settings(PROFILE, max_examples=80)
@given(
    username=loose(usernames),
    email=loose(emails),
    full_name=loose(full_names),
    password=loose(passwords),
    is_superuser=loose(flags),
    is_active=loose(flags),
)
def test_create_stores_exactly_or_refuses_cleanly(
    username: Any, email: Any, full_name: Any, password: Any, is_superuser: Any, is_active: Any
) -> None:
    with fresh_users() as users:
        before = state(users)
        try:
            created = users.create(
                username=username,
                email=email,
                full_name=full_name,
                password=password,
                is_superuser=is_superuser,
                is_active=is_active,
            )
        except DOCUMENTED:
            assert state(users) == before, "a refused create wrote something"
            assert_consistent(users)
            return
        # Read back, by every key, exactly the snapshot create returned.
        assert users.get(created.username) == created
        assert users.get(username) == created  # the name as given, not only as normalised
        assert username_key(created.username) == username_key(username)
        assert created.full_name == unicodedata.normalize("NFC", full_name).strip()
        # is_superuser=None is the documented "not given" (the role decides: a user): False.
        assert (created.is_superuser, created.is_active) == (bool(is_superuser), is_active)
        if email is None:
            assert created.email is None
        else:
            assert created.email is not None and users.get_by_email(created.email) == created
        assert users.count() == len(before) + 1
        assert state(users) == sorted([*before, created], key=lambda u: username_key(u.username))
        if password is not None:
            expected = created if is_active else None
            assert users.authenticate(created.username, password) == expected
            assert users.authenticate(created.username, password + "x") is None
        assert_consistent(users)


@settings(PROFILE, max_examples=60)
@given(
    changes=st.dictionaries(
        st.sampled_from(["username", "email", "full_name", "is_active", "is_superuser", "password", "bogus"]),
        loose(st.one_of(usernames, emails, full_names, flags)),
        max_size=4,
    ),
    target=st.sampled_from(["victim", "VICTIM", "nobody", "taken"]),
)
def test_update_changes_exactly_or_refuses_cleanly(changes: dict[str, Any], target: str) -> None:
    with fresh_users() as users:
        users.create(username="victim", email="victim@example.com", full_name="Victim")
        before = state(users)
        try:
            updated = users.update(target, **changes)
        except DOCUMENTED:
            assert state(users) == before, "a refused update wrote something"
            assert_consistent(users)
            return
        assert users.get(updated.username) == updated
        old = next(u for u in before if u.id == updated.id)
        assert users.count() == len(before)
        if "username" in changes and username_key(changes["username"]) != username_key(old.username):
            assert users.find(old.username) is None
        if updated.email:
            assert users.get_by_email(updated.email) == updated
        if old.email and email_key(old.email) != email_key(updated.email or ""):
            with pytest.raises(UserNotFound):
                users.get_by_email(old.email)
        # Fields not asked for did not move.
        for name in ("full_name", "is_active"):
            if name not in changes:
                assert getattr(updated, name) == getattr(old, name)
        assert_consistent(users)


@settings(PROFILE, max_examples=60)
@given(
    call=st.sampled_from(["get", "find", "get_by_email", "delete", "set_password", "authenticate", "list"]),
    first=loose(st.one_of(usernames, emails)),
    second=loose(st.one_of(passwords, st.integers(-5, 2000))),
)
def test_every_other_call_answers_or_refuses_cleanly(call: str, first: Any, second: Any) -> None:
    with fresh_users() as users:
        before = state(users)
        try:
            if call in ("get", "find", "get_by_email", "delete"):
                result = getattr(users, call)(first)
            elif call == "set_password":
                result = users.set_password(first, second)
            elif call == "authenticate":
                result = users.authenticate(first, second)
                assert result is None  # "taken" has no password: nobody can log in
            else:
                result = users.list(offset=second, limit=second, prefix=first)
        except DOCUMENTED:
            assert state(users) == before
            assert_consistent(users)
            return
        if call in ("get", "get_by_email"):
            assert isinstance(result, CodxUser) and result == before[0]
        if call == "delete":
            assert state(users) == []
        elif call != "set_password":
            assert state(users) == before
        assert_consistent(users)


class UserStoreMachine(RuleBasedStateMachine):
    """Random sequences of calls against a model: the database always equals the model."""

    def __init__(self) -> None:
        super().__init__()
        self.database = Database(CodxJuniorGlobalSettings.load(db_backend="memory"))
        self.users = UserDB(self.database)
        self.model: dict[str, CodxUser] = {}  # username key -> last snapshot returned

    @initialize()
    def start(self) -> None:
        self.model.clear()

    def teardown(self) -> None:
        self.database.close()

    def _call(self, fn: Callable[[], CodxUser | None]) -> CodxUser | None:
        try:
            return fn()
        except DOCUMENTED:
            return None

    @rule(username=usernames, email=emails, full_name=full_names, active=flags)
    def create(self, username: str, email: Any, full_name: str, active: bool) -> None:
        created = self._call(
            lambda: self.users.create(username=username, email=email, full_name=full_name, is_active=active)
        )
        if created is not None:
            assert username_key(created.username) not in self.model
            self.model[username_key(created.username)] = created

    @rule(
        pick=st.integers(0, 10),
        changes=st.fixed_dictionaries(
            {},
            optional={"username": usernames, "email": emails, "full_name": full_names, "is_active": flags},
        ),
    )
    def update(self, pick: int, changes: dict[str, Any]) -> None:
        if not self.model:
            return
        key = sorted(self.model)[pick % len(self.model)]
        updated = self._call(lambda: self.users.update(self.model[key].username, **changes))
        if updated is not None:
            del self.model[key]
            assert username_key(updated.username) not in self.model
            self.model[username_key(updated.username)] = updated

    @rule(pick=st.integers(0, 10))
    def delete(self, pick: int) -> None:
        if not self.model:
            return
        key = sorted(self.model)[pick % len(self.model)]
        self.users.delete(self.model.pop(key).username)

    @invariant()
    def database_equals_model(self) -> None:
        assert self.users.count() == len(self.model)
        stored = {username_key(u.username): u for u in self.users.list(limit=1000)}
        assert stored == self.model
        emails_in_model = {email_key(u.email): u for u in self.model.values() if u.email}
        for key, user in emails_in_model.items():
            assert self.users.get_by_email(key) == user
        inactive = [u.username for u in self.users.list(limit=1000, active=False)]
        assert inactive == [u.username for k, u in sorted(self.model.items()) if not u.is_active]
        assert_consistent(self.users)


TestUserStoreMachine = UserStoreMachine.TestCase
TestUserStoreMachine.settings = settings(PROFILE, max_examples=25, stateful_step_count=12)


# -- the command line ---------------------------------------------------------------------------

# Commands that stay inside the database (copy, backup, restore, import write or read other
# files, which random paths must not do here). -v is left out: verbose shows tracebacks by design.
CLI_COMMANDS = [
    ["info"],
    ["check"],
    ["check", "--repair"],
    ["migrate"],
    ["migrate", "--dry-run"],
    ["user", "list"],
    ["user", "list", "--active"],
    ["user", "list", "--prefix", "ta"],
    ["user"],
    [],
    ["nonsense"],
]
# For each user action: the options that take a value, and the flags, it accepts.
USER_COMMANDS: dict[str, tuple[list[str], list[str]]] = {
    "add": (
        ["--email", "--full-name", "--role", "--theme", "--github", "--avatar"],
        ["--no-password", "--password-stdin", "--superuser", "--inactive", "--json"],
    ),
    "get": ([], ["--json"]),
    "update": (
        ["--email", "--full-name", "--rename", "--role", "--theme", "--github", "--avatar"],
        ["--no-email", "--superuser", "--no-superuser", "--active", "--inactive", "--no-projects", "--json"],
    ),
    "passwd": ([], ["--password-stdin"]),
    "delete": ([], ["-y", "--json"]),
    "history": (["--limit"], ["--json"]),
    "revert": (["--to"], ["--json"]),
}
ALL_WORDS = sorted({w for values, flags in USER_COMMANDS.values() for w in values + flags} | {"--help-me", "-x"})
cli_text = st.one_of(
    plausible_name,
    st.sampled_from(["taken", "TAKEN", "taken@example.com", "admin", "dark", "2026-01-01T00:00:00"]),
    st.sampled_from(["taken", "-1", "0", "99999999999999999999", "", " ", "a@b.co"]),
    st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=30),
    st.builds(lambda n: "x" * n, st.integers(1000, 50_000)),
)


@st.composite
def cli_argv(draw: st.DrawFn) -> list[str]:
    """Mostly well-formed enough to reach UserDB; sometimes anything at all."""
    shape = draw(st.sampled_from(["user", "user", "user", "other", "anything"]))
    if shape == "anything":
        return draw(st.lists(st.one_of(cli_text, st.sampled_from([*ALL_WORDS, *USER_COMMANDS, "user"])), max_size=6))
    if shape == "other":
        return [
            *draw(st.sampled_from(CLI_COMMANDS)),
            *draw(st.lists(st.sampled_from(["--json", "--bogus"]), max_size=1)),
        ]
    action = draw(st.sampled_from(sorted(USER_COMMANDS)))
    values, flags = USER_COMMANDS[action]
    argv = ["user", action, draw(cli_text)]
    for _ in range(draw(st.integers(0, 3))):
        if values and draw(st.booleans()):
            argv += [draw(st.sampled_from(values)), draw(cli_text)]
        else:
            argv.append(draw(st.sampled_from(flags)))
    return argv


@pytest.fixture(scope="module")
def cli_settings() -> Iterator[CodxJuniorGlobalSettings]:
    """The global ``db`` the CLI uses, pointed at a private file for this module."""
    from db import db

    directory = Path(tempfile.mkdtemp(prefix="codx-cli-props-"))
    settings_ = CodxJuniorGlobalSettings.load(db_file_path=directory / "users.fs")
    previous = db._settings  # restored below: other tests may use the global database
    db.configure(settings_)
    try:
        UserDB(db).create(username="taken", email="taken@example.com")
        db.close()
        yield settings_
    finally:
        db.close()
        db._settings = previous
        shutil.rmtree(directory, ignore_errors=True)


@settings(PROFILE, max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=cli_argv(), stdin=st.text(st.characters(exclude_categories=("Cs",)), max_size=40))
def test_cli_never_shows_a_traceback(cli_settings: CodxJuniorGlobalSettings, argv: list[str], stdin: str) -> None:
    from db.cli import main

    out, err = io.StringIO(), io.StringIO()
    with (
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        _replaced_stdin(io.StringIO(stdin)),
    ):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse usage errors (2), check finding problems (1)
            code = int(exc.code or 0)
    assert code in (0, 1, 2), code
    assert "Traceback" not in err.getvalue()
    if code == 1 and not out.getvalue().lstrip().startswith(("database:", "before repair", "{")):
        lines = err.getvalue().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("codx-db: error:"), err.getvalue()
    database = Database(cli_settings)
    try:
        assert check(database).ok
    finally:
        database.close()


@contextlib.contextmanager
def _replaced_stdin(replacement: io.StringIO) -> Iterator[None]:
    saved = sys.stdin
    sys.stdin = replacement
    try:
        yield
    finally:
        sys.stdin = saved


# -- codx-junior's settings file (import-codx-junior) ----------------------------------------------

IMPORT_PASSWORD = "imported-password"
IMPORT_HASH = bcrypt.hashpw(IMPORT_PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(any_text, children, max_size=3),
    max_leaves=12,
)
json_wrong = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)


def jloose(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``loose`` for a JSON file (the wrong types JSON can hold), rarer: one bad field spoils a file."""
    return st.one_of(*[good] * 8, huge_text, json_wrong)


junior_users = st.fixed_dictionaries(
    {"username": jloose(usernames)},
    optional={
        "email": jloose(st.one_of(emails, st.just(""))),
        "avatar": jloose(any_text),
        "theme": jloose(st.sampled_from(["dim", "dark", "light"])),
        "role": jloose(st.sampled_from(["user", "admin", "Admin", "root"])),
        "disabled": jloose(flags),
        "github": jloose(any_text),
        "projects": jloose(
            st.lists(
                st.fixed_dictionaries(
                    {"project_id": any_text},
                    optional={"permissions": st.one_of(any_text, st.lists(any_text, max_size=2)), "children": flags},
                ),
                max_size=3,
            )
        ),
        "token": any_text,  # a field codx-db does not store: a warning naming it, never its value
    },
)
# Entries codx-junior itself would write, so that whole files get imported too.
junior_good_users = st.fixed_dictionaries(
    {"username": st.one_of(plausible_name, unicode_name, st.just("taken"))},
    optional={
        "email": st.one_of(st.emails(), st.just("")),
        "theme": st.sampled_from(["dim", "dark"]),
        "role": st.sampled_from(["user", "admin"]),
        "disabled": flags,
        "projects": st.lists(
            st.fixed_dictionaries({"project_id": plausible_name, "permissions": st.just([])}), max_size=2
        ),
    },
)
junior_logins = st.fixed_dictionaries(
    {"username": usernames, "password": st.one_of(st.just(IMPORT_HASH), any_text, json_wrong)}
)
junior_files = st.one_of(
    st.fixed_dictionaries(
        {"users": st.lists(st.one_of(junior_good_users, junior_users), max_size=4)},
        optional={"user_logins": st.lists(junior_logins, max_size=4)},
    ),
    json_values.map(json.dumps),  # any JSON at all
    any_text,  # not JSON
)


@settings(PROFILE, max_examples=60)
@given(content=junior_files)
def test_an_import_file_imports_whole_or_not_at_all(content: Any) -> None:
    from db.errors import CodxJuniorFileError
    from db.importer import import_codx_junior

    with tempfile.TemporaryDirectory() as scratch, fresh_users() as users:
        path = Path(scratch) / "global_settings.json"
        path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
        before = state(users)
        try:
            report = import_codx_junior(users.database, path)
        except (CodxJuniorFileError, *DOCUMENTED):
            assert state(users) == before, "a refused import wrote something"
            assert_consistent(users)
            return
        if not report.written:
            assert state(users) == before, "an import with conflicts wrote something"
        else:
            assert users.count() == len(before) + len(report.created)
            for name in report.created:
                imported = users.get(name)
                if name not in report.without_password:
                    assert users.authenticate(imported.username, IMPORT_PASSWORD) is not None or not imported.is_active
        assert_consistent(users)


# -- settings values ----------------------------------------------------------------------------

SETTING_NAMES = [
    "db_backend",
    "db_file_path",
    "db_dsn",
    "db_config_file",
    "db_keep_history",
    "db_pool_size",
    "db_cache_size",
    "db_cache_local_mb",
    "db_cache_dir",
    "db_blob_dir",
    "db_commit_lock_timeout",
    "db_conflict_retries",
    "db_conflict_deadline",
    "db_pool_timeout",
    "db_group_commit",
    "db_group_commit_max",
    "db_pg_fast_reads",
    "db_pg_own_temp_tables",
    "db_pg_store_index_joins",
    "db_pg_temp_tablespace",
    "db_startup",
]
setting_values = st.one_of(
    any_text,
    wrong_type,
    st.sampled_from(["file", "postgres", "memory", "evolve", "refuse", "0", "-1", "1e9", "true", "no"]),
    st.integers(-(2**70), 2**70),
)


def _fits_the_filesystem(value: Any) -> bool:
    # The environment cannot carry a NUL byte, and over-long names have their own tests below.
    if not isinstance(value, str):
        return True
    return "\x00" not in value and all(len(part.encode("utf-8", "surrogateescape")) <= 255 for part in value.split("/"))


@settings(PROFILE, max_examples=150)
@given(name=st.sampled_from(SETTING_NAMES), value=setting_values, via_env=st.booleans())
def test_a_setting_is_accepted_or_refused_with_configuration_error(name: str, value: Any, via_env: bool) -> None:
    assume(_fits_the_filesystem(value))
    if via_env:
        assume(isinstance(value, str) and "\x00" not in value)
    # Relative paths must not point into the repository: work from a scratch directory.
    with tempfile.TemporaryDirectory() as scratch, _chdir(scratch):
        try:
            if via_env:
                with _env(f"CODX_JUNIOR_{name.upper()}", value):
                    loaded = CodxJuniorGlobalSettings.load()
            else:
                loaded = CodxJuniorGlobalSettings.load(**{name: value})
        except ConfigurationError:
            return  # (that a refused DSN is not echoed is the next test's job)
        assert loaded.kind in ("file", "postgres", "memory", "config")
        assert "password" not in loaded.location or "***" in loaded.location


@settings(PROFILE, max_examples=40)
@given(tail=st.text(st.characters(exclude_categories=("Cs",)), max_size=30), junk=any_text)
def test_a_dsn_password_never_shows_in_settings_errors_or_reprs(tail: str, junk: str) -> None:
    password = "Zq9x" + tail  # a prefix no message contains by itself
    dsn = f"host=db.example password={password} {junk}"
    try:
        loaded = CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=dsn)
    except ConfigurationError as exc:
        assert "Zq9x" not in str(exc)
        return
    for shown in (repr(loaded), str(loaded), loaded.location, str(loaded.model_dump())):
        assert "Zq9x" not in shown


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            del os.environ[name]
        else:
            os.environ[name] = saved


@contextlib.contextmanager
def _chdir(path: str) -> Iterator[None]:
    saved = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(saved)


# -- known bugs, pinned -------------------------------------------------------------------------


def test_a_password_with_a_lone_surrogate_is_invalid_user_data() -> None:
    with fresh_users() as users, pytest.raises(InvalidUserData):
        users.create(username="surrogate", password="\udcff" * 8)


def test_authenticate_with_a_lone_surrogate_is_just_a_failed_login() -> None:
    with fresh_users() as users:
        users.create(username="someone", password="good-password")
        assert users.authenticate("someone", "\udcff" * 8) is None
        assert users.authenticate("nobody", "\udcff" * 8) is None


def test_a_full_name_with_a_lone_surrogate_is_refused() -> None:
    with fresh_users() as users, pytest.raises(InvalidUserData):
        users.create(username="surrogate", full_name="Ren\udce9")


def test_cli_output_of_an_unencodable_name_is_not_a_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODX_JUNIOR_")}
    env.update(CODX_JUNIOR_DB_FILE_PATH=str(tmp_path / "users.fs"), PYTHONIOENCODING="utf-8")
    # A non-UTF-8 byte on the command line arrives as a lone surrogate (surrogateescape).
    args = [sys.executable.encode(), b"-m", b"db", b"user", b"add", b"bytes", b"--full-name", b"Ren\xe9"]
    result = subprocess.run([*args, b"--no-password"], env=env, cwd=ROOT, capture_output=True, timeout=60)
    assert b"Traceback" not in result.stderr, result.stderr.decode(errors="replace")[-500:]


def test_the_email_given_at_creation_finds_the_user() -> None:
    with fresh_users() as users:
        created = users.create(username="idna", email="user@xn--bcher-kva.example", password="good-password")
        assert users.get_by_email("user@xn--bcher-kva.example") == created
        assert users.authenticate("user@xn--bcher-kva.example", "good-password") == created


@pytest.mark.parametrize("name", ["db_file_path", "db_config_file"])
def test_an_impossible_path_is_a_configuration_error(name: str) -> None:
    with pytest.raises(ConfigurationError):
        CodxJuniorGlobalSettings.load(**{name: "a" * 300})


def test_a_path_with_a_nul_byte_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        CodxJuniorGlobalSettings.load(db_file_path=str(tmp_path / "a\x00b.fs"))
