"""Security: password hashing parameters, login timing, secrets kept out of every output, file modes."""

from __future__ import annotations

import logging
import os
import re
import stat
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bcrypt
import psycopg2
import pytest
from psycopg2.extensions import make_dsn

from db import passwords
from db.check import check
from db.database import Database
from db.errors import CodxDBError, DatabaseUnavailable, InvalidUserData, UserAlreadyExists, UserNotFound
from db.models import USERS_KEY
from db.settings import CodxJuniorGlobalSettings
from db.storage import storage_spec
from db.user_db import UserDB
from tests.conftest import ROOT, settings_env

# OWASP Password Storage Cheat Sheet, argon2id: at least m=19 MiB (19456 KiB), t=2, p=1.
OWASP_MIN_MEMORY_KIB = 19_456
OWASP_MIN_TIME_COST = 2

USER_SECRET = "Us3r-S3cret-Passw0rd"
DSN_SECRET = "Dsn-S3cret-Passw0rd"
SECRETS = (USER_SECRET, DSN_SECRET)
HASH_PARAMS = re.compile(r"^\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$")


def _stored_hash(database: Database, username: str) -> str:
    return database.run(lambda uow: uow.root[USERS_KEY].find_by_username(username).password_hash)


@pytest.fixture
def memory_db() -> Iterator[Database]:
    database = Database(CodxJuniorGlobalSettings.load(db_backend="memory"))
    yield database
    database.close()


# -- password hashing ---------------------------------------------------------------------------


def test_argon2id_parameters_meet_owasp(memory_db: Database) -> None:
    users = UserDB(memory_db)
    users.create(username="alice", password=USER_SECRET)
    stored = _stored_hash(memory_db, "alice")
    match = HASH_PARAMS.match(stored)
    assert match, f"not an argon2id hash: {stored[:20]}..."
    memory, time_cost, parallelism = (int(g) for g in match.groups())
    assert memory >= OWASP_MIN_MEMORY_KIB and time_cost >= OWASP_MIN_TIME_COST and parallelism >= 1
    # The constants say the same as the hashes actually written.
    assert (memory, time_cost) == (passwords.ARGON2_MEMORY_KIB, passwords.ARGON2_TIME_COST)
    # A salt per hash: the same password never gives the same hash.
    users.create(username="bob", password=USER_SECRET)
    assert _stored_hash(memory_db, "bob") != stored


@pytest.mark.parametrize(
    "old_hash",
    [
        pytest.param(lambda pw: bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode(), id="bcrypt"),
        pytest.param(
            lambda pw: __import__("argon2").PasswordHasher(time_cost=1, memory_cost=8192).hash(pw), id="weak-argon2"
        ),
    ],
)
def test_a_weaker_old_hash_is_replaced_at_the_next_login(memory_db: Database, old_hash: Any) -> None:
    users = UserDB(memory_db)
    users.create(username="legacy")
    planted = old_hash(USER_SECRET)

    def plant(uow: Any) -> None:
        uow.root[USERS_KEY].find_by_username("legacy").password_hash = planted

    memory_db.run(plant)
    assert users.authenticate("legacy", "wrong-password") is None
    assert _stored_hash(memory_db, "legacy") == planted, "a failed login must not rehash"
    assert users.authenticate("legacy", USER_SECRET) is not None
    match = HASH_PARAMS.match(_stored_hash(memory_db, "legacy"))
    assert match and int(match.group(1)) >= OWASP_MIN_MEMORY_KIB and int(match.group(2)) >= OWASP_MIN_TIME_COST
    assert users.authenticate("legacy", USER_SECRET) is not None


def test_an_unknown_user_costs_about_what_a_wrong_password_costs(memory_db: Database) -> None:
    """A sanity check that a dummy hash is verified, not a benchmark: medians, loose bounds."""
    users = UserDB(memory_db)
    users.create(username="known", password=USER_SECRET)
    users.create(username="sleeper", password=USER_SECRET, is_active=False)
    users.create(username="nopass")
    cases = {
        "wrong password": ("known", "wrong-password"),
        "unknown user": ("nobody-here", "wrong-password"),
        "unknown email": ("nobody@example.com", "wrong-password"),
        "inactive user": ("sleeper", USER_SECRET),
        "no password": ("nopass", "wrong-password"),
    }
    timings: dict[str, list[float]] = {name: [] for name in cases}
    users.authenticate("known", "warm-up")  # the first call builds the dummy hash
    for _ in range(7):  # interleaved, so a slow moment of the machine hits every case
        for name, (login, password) in cases.items():
            began = time.perf_counter()
            assert users.authenticate(login, password) is None
            timings[name].append(time.perf_counter() - began)
    medians = {name: statistics.median(samples) for name, samples in timings.items()}
    reference = medians["wrong password"]
    assert reference > 0.002, f"no real hash verification seems to happen: {medians}"
    for name, median in medians.items():
        assert 0.5 < median / reference < 2.0, f"{name} takes {median * 1000:.1f} ms vs {reference * 1000:.1f} ms"


def test_a_rejected_password_is_not_echoed(memory_db: Database) -> None:
    users = UserDB(memory_db)
    for bad in ("Sh0rt!", USER_SECRET * 60):
        with pytest.raises(InvalidUserData) as excinfo:
            users.create(username="echo", password=bad)
        assert bad[:8] not in str(excinfo.value) and bad[:8] not in repr(excinfo.value)


# -- secrets never shown --------------------------------------------------------------------------


@pytest.fixture
def secret_dsn(pg_password_dsn: Callable[[str], str]) -> str:
    """The test database's DSN for a role whose password is DSN_SECRET."""
    return pg_password_dsn(DSN_SECRET)


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every log record of every library, at DEBUG."""
    caplog.set_level(logging.DEBUG)
    for name in ("relstorage", "ZODB", "txn", "db", "migrations", "psycopg2"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def _assert_no_secret(where: str, text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret} leaked in {where}: ...{text[max(0, text.find(secret) - 80) :][:160]}"


@pytest.mark.postgres
def test_no_secret_in_logs_errors_or_reprs(secret_dsn: str, all_logs: pytest.LogCaptureFixture) -> None:
    shown: list[str] = []
    settings = CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=secret_dsn)
    shown += [repr(settings), str(settings), str(settings.model_dump()), settings.model_dump_json(), settings.location]
    database = Database(settings)
    try:
        users = UserDB(database)
        alice = users.create(username="alice", email="alice@example.com", password=USER_SECRET)
        users.set_password("alice", USER_SECRET + "2")
        shown += [repr(alice), str(alice.model_dump()), alice.model_dump_json()]
        assert users.authenticate("alice", USER_SECRET + "2") is not None
        assert users.authenticate("alice", USER_SECRET) is None
        assert users.authenticate("nobody", USER_SECRET) is None
        for call in (
            lambda: users.create(username="alice", password=USER_SECRET),
            lambda: users.create(username="bad\tname", password=USER_SECRET),
            lambda: users.set_password("alice", USER_SECRET * 100),
            lambda: users.set_password("nobody", USER_SECRET),
            lambda: users.update("alice", password=USER_SECRET),
        ):
            with pytest.raises((InvalidUserData, UserAlreadyExists, UserNotFound)) as excinfo:
                call()
            shown += [str(excinfo.value), repr(excinfo.value)]

        def stored_user(uow: Any) -> str:
            user = uow.root[USERS_KEY].find_by_username("alice")
            return repr(user) + str(getattr(user, "__dict__", {}).get("username"))

        shown.append(database.run(stored_user))
        shown.append(str([p.message for p in check(database).problems]))
    finally:
        database.close()

    # A server that cannot be reached: the error names the place, never the password.
    unreachable = make_dsn(secret_dsn, port="1", connect_timeout="3")
    with pytest.raises(DatabaseUnavailable) as excinfo:
        Database(CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=unreachable)).open()
    shown += [str(excinfo.value), repr(excinfo.value)]
    # A DSN that does not parse is refused without being echoed.
    with pytest.raises(CodxDBError) as excinfo:
        CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=f"password={DSN_SECRET} host='unclosed")
    shown.append(str(excinfo.value))

    assert all_logs.records, "logging was not captured"
    _assert_no_secret("log records", all_logs.text + "".join(str(r.args) for r in all_logs.records))
    for text in shown:
        _assert_no_secret("an error, repr or dump", text)
    assert "$argon2" not in "".join(shown), "a password hash was shown"


def _cli(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "db", *args], env=env, cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=60
    )


@pytest.mark.postgres
@pytest.mark.slow
def test_no_secret_in_cli_output_even_verbose(secret_dsn: str) -> None:
    env = settings_env(CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=secret_dsn))
    runs = [
        _cli(env, "-v", "user", "add", "alice", "--email", "a@x.com", "--password-stdin", stdin=USER_SECRET + "\n"),
        _cli(env, "-v", "user", "passwd", "alice", "--password-stdin", stdin=USER_SECRET + "-new\n"),
        _cli(env, "-v", "--json", "user", "get", "alice"),
        _cli(env, "-v", "info"),
        _cli(env, "--json", "check"),
        _cli(env, "user", "add", "alice", "--password-stdin", stdin=USER_SECRET + "\n"),  # exists
        _cli(env, "user", "add", "bob", "--password-stdin", stdin="short\n"),  # invalid
    ]
    unreachable = {**env, "CODX_JUNIOR_DB_DSN": make_dsn(secret_dsn, port="1", connect_timeout="3")}
    runs.append(_cli(unreachable, "-v", "info"))
    runs.append(_cli(unreachable, "info"))
    codes = [r.returncode for r in runs]
    assert codes == [0, 0, 0, 0, 0, 1, 1, 1, 1], [(r.args[3:], r.stderr[-300:]) for r in runs]
    for run in runs:
        _assert_no_secret(f"`{' '.join(run.args[3:])}`", run.stdout + run.stderr)
        assert "$argon2" not in run.stdout + run.stderr


@pytest.mark.postgres
def test_no_password_in_clear_in_postgres(pg_dsn: str) -> None:
    database = Database(CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=pg_dsn))
    try:
        users = UserDB(database)
        users.create(username="alice", password=USER_SECRET)
        users.set_password("alice", USER_SECRET + "2")
        users.authenticate("alice", USER_SECRET + "2")
    finally:
        database.close()
    conn = psycopg2.connect(pg_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT table_name, column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'public' AND data_type IN ('bytea', 'text', 'character varying')"
            )
            columns = cur.fetchall()
            assert any(t == "object_state" for t, _, _ in columns), columns
            for table, column, kind in columns:
                for secret in (USER_SECRET, USER_SECRET + "2"):
                    needle = secret.encode() if kind == "bytea" else secret
                    cast = "" if kind == "bytea" else "::text"
                    cur.execute(
                        f'SELECT count(*) FROM "{table}" WHERE position(%s in "{column}"{cast}) > 0',
                        (psycopg2.Binary(needle) if kind == "bytea" else needle,),
                    )
                    assert cur.fetchone()[0] == 0, f"{secret} in clear in {table}.{column}"
    finally:
        conn.close()


def test_no_password_in_clear_in_the_file_or_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "data" / "users.fs"
    database = Database(CodxJuniorGlobalSettings.load(db_file_path=path))
    try:
        users = UserDB(database)
        users.create(username="alice", password=USER_SECRET)
        users.set_password("alice", USER_SECRET + "2")
        users.authenticate("alice", USER_SECRET + "2")
        users.update("alice", full_name="Alice")
        # History (FileStorage keeps it) says a password changed, never what it or its hash is.
        history = str([revision for revision in users.history("alice")])
        assert "password" in history and "$argon2" not in history and USER_SECRET not in history
        files = sorted(path.parent.iterdir())
        assert path in files
        for file in files:
            data = file.read_bytes()
            for secret in (USER_SECRET, USER_SECRET + "2"):
                for encoding in ("utf-8", "utf-16-le", "utf-32-le"):
                    assert secret.encode(encoding) not in data, f"{secret} in clear in {file.name}"
    finally:
        database.close()


# -- files and connections ------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_database_file_0600_and_directory_0700_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "users.fs"
    previous = os.umask(0o002)  # a permissive umask, as on many desktops
    try:
        database = Database(CodxJuniorGlobalSettings.load(db_file_path=path))
        UserDB(database).create(username="alice", password=USER_SECRET)
        database.close()
    finally:
        os.umask(previous)
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700 and _mode(path.parent.parent) == 0o700
    # Whatever FileStorage writes beside the file is behind the 0700 directory.
    assert all(p.parent == path.parent for p in path.parent.iterdir())


def test_side_files_are_private_in_a_shared_directory(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    path = shared / "users.fs"
    database = Database(CodxJuniorGlobalSettings.load(db_file_path=path))
    try:
        UserDB(database).create(username="alice", password=USER_SECRET)
    finally:
        database.close()
    assert _mode(path) == 0o600
    readable = {p.name: oct(_mode(p)) for p in shared.iterdir() if _mode(p) & 0o077}
    assert not readable, f"readable by others: {readable}"


def test_tls_settings_pass_through_to_libpq(pg_dsn: str) -> None:
    """sslmode and certificate paths reach the connection unchanged (keyword and URI DSNs)."""
    tls = {"sslmode": "verify-full", "sslrootcert": "/etc/ssl/ca.pem", "sslcert": "/c.pem", "sslkey": "/k.pem"}
    for dsn in (
        make_dsn("host=db.example dbname=codx user=codx", **tls),
        "postgresql://codx@db.example/codx?" + "&".join(f"{k}={v}" for k, v in tls.items()),
    ):
        spec = storage_spec(CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=dsn))
        assert spec.dsn is not None
        parsed = psycopg2.extensions.parse_dsn(spec.dsn)
        assert {k: parsed[k] for k in tls} == tls


@pytest.mark.postgres
def test_sslmode_require_is_honoured(pg_dsn: str, pg_server: Any) -> None:
    """Against a server without TLS, sslmode=require must fail, not silently connect in clear."""
    conn = psycopg2.connect(pg_server.admin_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW ssl")
            server_has_tls = cur.fetchone()[0] == "on"
    finally:
        conn.close()
    settings = CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=make_dsn(pg_dsn, sslmode="require"))
    database = Database(settings)
    try:
        if server_has_tls:
            database.open()  # connects, over TLS
        else:
            with pytest.raises(DatabaseUnavailable, match="SSL"):
                database.open()
    finally:
        database.close()
