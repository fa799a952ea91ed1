"""The codx-db command line on the file and postgres backends.

Most tests run it in-process (``Cli`` on StringIO streams: fast); ``test_user_session`` runs
both ways, and the tests that need a process boundary (the console script, settings from the
environment) run it as a real subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from db.settings import CodxJuniorGlobalSettings
from tests.conftest import ROOT, run_cli_in_process, settings_env

PASSWORD = "s3cret-Passw0rd"


class CLI:
    def __init__(self, env: dict[str, str], settings: CodxJuniorGlobalSettings | None = None) -> None:
        self.env = env
        self.settings = settings  # given: run in-process on these settings

    def __call__(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        if self.settings is not None:
            return run_cli_in_process(self.settings, *args, input=input)
        return subprocess.run(
            [sys.executable, "-m", "db", *args],
            env=self.env,
            cwd=ROOT,
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def json(self, *args: str, input: str | None = None) -> object:
        result = self(*args, "--json", input=input)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


@pytest.fixture(params=["in-process"])
def cli(request: pytest.FixtureRequest, persistent_settings: CodxJuniorGlobalSettings) -> CLI:
    """The CLI on an existing, empty database; ``process`` (indirect param) runs it as a subprocess.

    Both ways run on every persistent backend: in CI a PostgreSQL test never skips.
    """
    from db.database import Database

    database = Database(persistent_settings)
    database.open()
    database.close()
    in_process = request.param == "in-process"
    return CLI(settings_env(persistent_settings), persistent_settings if in_process else None)


@pytest.mark.parametrize("cli", ["process", "in-process"], indirect=True)
def test_user_session(cli: CLI) -> None:
    added = cli(
        "user",
        "add",
        "alice",
        "--email",
        "alice@example.com",
        "--full-name",
        "Alice A",
        "--password-stdin",
        input=PASSWORD + "\n",
    )
    assert added.returncode == 0, added.stderr
    assert "alice@example.com" in added.stdout
    cli("user", "add", "bob", "--no-password")

    listed = cli("user", "list")
    assert listed.returncode == 0
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:2] == ["USERNAME", "EMAIL"]
    assert lines[1].startswith("alice") and lines[2].startswith("bob")
    assert "(2 users)" in listed.stdout

    got = cli.json("user", "get", "ALICE")
    assert isinstance(got, dict) and got["username"] == "alice" and got["full_name"] == "Alice A"
    assert cli.json("user", "get", "alice@EXAMPLE.com") == got

    updated = cli.json("user", "update", "alice", "--rename", "alicia", "--email", "alicia@example.com", "--superuser")
    assert isinstance(updated, dict)
    assert updated["username"] == "alicia" and updated["is_superuser"] is True

    passwd = cli("user", "passwd", "alicia", "--password-stdin", input="another-passw0rd\n")
    assert passwd.returncode == 0, passwd.stderr

    info = cli.json("info")
    assert isinstance(info, dict) and info["users"] == 2

    listed_json = cli.json("user", "list", "--prefix", "ali")
    assert [u["username"] for u in listed_json] == ["alicia"]  # type: ignore[union-attr]

    deleted = cli("user", "delete", "bob", "--yes")
    assert deleted.returncode == 0, deleted.stderr
    assert cli.json("info")["users"] == 1  # type: ignore[index]


def test_password_is_never_in_output_or_argv_options(cli: CLI) -> None:
    result = cli("user", "add", "carol", "--password-stdin", "--json", input=PASSWORD + "\n")
    assert result.returncode == 0
    assert PASSWORD not in result.stdout + result.stderr
    assert "argon2" not in result.stdout
    # There is no option to pass a password on the command line.
    bad = cli("user", "add", "dave", "--password", PASSWORD)
    assert bad.returncode == 2


@pytest.mark.parametrize(
    ("args", "stdin", "fragment"),
    [
        (("user", "get", "nobody"), None, "no user with username 'nobody'"),
        (("user", "delete", "nobody", "--yes"), None, "no user with username 'nobody'"),
        (("user", "add", "bad\tname", "--no-password"), None, "username"),
        (("user", "add", "eve", "--password-stdin"), "short\n", "password: must be at least 8"),
        (("user", "update", "nobody", "--full-name", "x"), None, "no user"),
    ],
)
def test_domain_errors_exit_1_with_one_line(cli: CLI, args: tuple[str, ...], stdin: str | None, fragment: str) -> None:
    result = cli(*args, input=stdin)
    assert result.returncode == 1
    assert fragment in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_duplicate_user_exit_1(cli: CLI) -> None:
    assert cli("user", "add", "frank", "--no-password").returncode == 0
    result = cli("user", "add", "FRANK", "--no-password", "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout) == {"error": "a user with username 'FRANK' already exists"}


@pytest.mark.parametrize("cli", ["in-process"], indirect=True)
def test_user_get_finds_a_username_holding_an_at_sign(cli: CLI) -> None:
    # Generation 9 lets a username hold an "@" (its own email may differ): `user get` takes
    # what a login takes, the username first, then the email (a fullwidth at sign too).
    assert cli("user", "add", "carol@example.com", "--email", "carol@home.example", "--no-password").returncode == 0
    got = cli.json("user", "get", "carol@example.com")
    assert isinstance(got, dict) and got["email"] == "carol@home.example"
    assert cli.json("user", "get", "CAROL@home.example") == got
    assert cli.json("user", "get", "carol\uff20home.example") == got
    missing = cli("user", "get", "nobody@example.com")
    assert missing.returncode == 1
    assert "no user with email 'nobody@example.com'" in missing.stderr


def test_delete_needs_confirmation_without_a_terminal(cli: CLI) -> None:
    cli("user", "add", "gina", "--no-password")
    result = cli("user", "delete", "gina")
    assert result.returncode == 1
    assert "--yes" in result.stderr
    assert cli.json("user", "get", "gina")


@pytest.mark.parametrize("args", [(), ("user",), ("frobnicate",), ("user", "list", "--limit", "many")])
def test_usage_errors_exit_2(cli: CLI, args: tuple[str, ...]) -> None:
    assert cli(*args).returncode == 2


def test_console_script_and_module_agree(tmp_path: Path) -> None:
    # PYTHONPATH: the script imports this checkout's code, not wherever the package was installed from.
    env = {**os.environ, "CODX_JUNIOR_DB_FILE_PATH": str(tmp_path / "users.fs"), "PYTHONPATH": str(ROOT)}
    script = Path(sys.executable).parent / "codx-db"
    # A configured file that does not exist is reported as empty, and not created by a read.
    missing = subprocess.run([str(script), "info"], env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 0 and "empty: no codx-db database here yet" in missing.stdout, missing.stderr
    assert not (tmp_path / "users.fs").exists()
    listed = subprocess.run([str(script), "user", "list"], env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 1 and "no database at" in listed.stderr
    assert not (tmp_path / "users.fs").exists()
    added = subprocess.run([sys.executable, "-m", "db", "user", "add", "x", "--no-password"], env=env, cwd=ROOT)
    assert added.returncode == 0
    result = subprocess.run([str(script), "info", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["backend"] == "file" and info["location"] == str(tmp_path / "users.fs")


@pytest.mark.postgres
def test_info_masks_the_dsn_password(pg_password_dsn: Callable[[str], str]) -> None:
    """A real password-protected role (the container checks it; a trust server ignores it)."""
    from psycopg2.extensions import make_dsn

    password = "Sup3rSecretPw"
    dsn_with_password = pg_password_dsn(password)
    env = {**os.environ, "CODX_JUNIOR_DB_BACKEND": "postgres", "CODX_JUNIOR_DB_DSN": dsn_with_password}
    result = CLI(env)("info")
    assert result.returncode == 0, result.stderr
    assert password not in result.stdout + result.stderr
    assert "password=***" in result.stdout
    assert "backend: postgres" in result.stdout
    wrong = CLI({**env, "CODX_JUNIOR_DB_DSN": make_dsn(dsn_with_password, password="Wr0ngPassw0rd")})("info")
    assert "Wr0ngPassw0rd" not in wrong.stdout + wrong.stderr


def test_a_full_page_says_more_users_follow_and_how_to_see_them(cli: CLI) -> None:
    for name in ("ann", "bob", "cy"):
        assert cli("user", "add", name, "--no-password").returncode == 0
    page = cli("user", "list", "--limit", "2")
    assert page.stdout.splitlines()[-1] == "(2 users; more follow: --after bob for the next page, or a larger --limit)"
    last = cli("user", "list", "--limit", "2", "--after", "bob")
    assert last.stdout.splitlines()[-1] == "(1 user)"
    exact = cli("user", "list", "--limit", "3")
    assert exact.stdout.splitlines()[-1] == "(3 users)"  # a full page that is the last says nothing more


@pytest.mark.parametrize(
    "args",
    [
        ("user", "add", "zed", "--role", "user", "--superuser", "--no-password"),
        ("user", "update", "zed", "--role", "user", "--superuser"),
        ("user", "update", "zed", "--role", "admin", "--no-superuser"),
    ],
)
def test_contradicting_role_flags_are_a_usage_error(cli: CLI, args: tuple[str, ...]) -> None:
    result = cli(*args)
    assert result.returncode == 2 and "contradict" in result.stderr, result.stderr
