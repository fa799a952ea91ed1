"""Settings: sources, validation that names the setting, and DSN secrecy."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest

from db.errors import ConfigurationError
from db.settings import CodxJuniorGlobalSettings, default_file_path, mask_dsn
from tests.conftest import ROOT, run_python

SECRET = "Hunter2-secret"


def test_defaults() -> None:
    settings = CodxJuniorGlobalSettings.load()
    assert settings.db_backend == "file"
    assert settings.db_file_path == default_file_path()
    assert settings.db_file_path.name == "users.fs"
    assert settings.db_startup == "refuse"


def test_environment_with_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CODX_JUNIOR_DB_BACKEND", "memory")
    monkeypatch.setenv("CODX_JUNIOR_DB_POOL_SIZE", "3")
    monkeypatch.setenv("CODX_JUNIOR_DB_CONFLICT_RETRIES", "9")
    settings = CodxJuniorGlobalSettings.load()
    assert (settings.db_backend, settings.db_pool_size, settings.db_conflict_retries) == ("memory", 3, 9)


def test_dotenv_file_and_secrets_dir(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "codx_junior_db_dsn").write_text(f"host=db user=codx password={SECRET}")
    (tmp_path / ".env").write_text("CODX_JUNIOR_DB_BACKEND=postgres\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODX_JUNIOR_")}
    env["CODX_JUNIOR_SECRETS_DIR"] = str(secrets)
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [
            "python",
            "-c",
            "from db.settings import CodxJuniorGlobalSettings as S\ns = S.load(); print(s.db_backend, s.location)",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "postgres"
    assert "password=***" in result.stdout and SECRET not in result.stdout


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        ({"db_backend": "postgres"}, "db_dsn"),
        ({"db_backend": "mysql"}, "db_backend"),
        ({"db_file_path": "/etc/hostname/sub/users.fs"}, "db_file_path"),
        ({"db_file_path": "/tmp"}, "db_file_path"),
        ({"db_pool_size": 0}, "db_pool_size"),
        ({"db_pool_size": "many"}, "db_pool_size"),
        ({"db_conflict_retries": -1}, "db_conflict_retries"),
        ({"db_startup": "sometimes"}, "db_startup"),
        ({"db_config_file": "/nonexistent/relstorage.conf"}, "db_config_file"),
        ({"db_commit_lock_timeout": 0}, "db_commit_lock_timeout"),
        ({"db_backend": "postgres", "db_dsn": f"postgresql://u:{SECRET}@h:notaport/x"}, "db_dsn"),
        ({"db_backend": "postgres", "db_dsn": f"host=h password={SECRET} 'x"}, "db_dsn"),
    ],
)
def test_wrong_settings_fail_at_load_naming_the_setting(overrides: dict, setting: str) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        CodxJuniorGlobalSettings.load(**overrides)
    assert setting in str(excinfo.value)
    assert SECRET not in str(excinfo.value)


def test_environment_errors_name_the_setting_in_the_cli(tmp_path: Path) -> None:
    env = {**os.environ, "CODX_JUNIOR_DB_BACKEND": "postgres"}
    result = run_python("from db.cli import main; raise SystemExit(main(['info']))", env)
    assert result.returncode == 1
    assert "db_dsn" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://codx:{SECRET}@db.example:5432/codx",
        f"host=db.example user=codx password={SECRET} dbname=codx",
        f"host=db.example user=codx password='{SECRET}' dbname=codx sslmode=verify-full",
        # libpq's passphrase of the client key is a password too.
        f"host=db.example user=codx dbname=codx sslmode=verify-full sslkey=/k.pem sslpassword={SECRET}",
        f"postgresql://codx@db.example:5432/codx?sslmode=require&sslpassword={SECRET}",
    ],
)
def test_dsn_password_never_shows(dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=dsn)
    for text in (repr(settings), str(settings), settings.location, settings.model_dump_json(), caplog.text):
        assert SECRET not in text
    assert "***" in settings.location
    assert mask_dsn(dsn).count("***") == 1
    assert "db.example" in settings.location


def test_tls_options_pass_through_to_the_dsn() -> None:
    from db.settings import keyword_dsn

    settings = CodxJuniorGlobalSettings.load(
        db_backend="postgres",
        db_dsn="postgresql://codx@db:5432/codx?sslmode=verify-full&sslrootcert=/etc/ssl/ca.pem",
    )
    assert settings.db_dsn is not None
    dsn = keyword_dsn(settings.db_dsn.get_secret_value())
    assert "sslmode=verify-full" in dsn and "sslrootcert=/etc/ssl/ca.pem" in dsn


def test_a_message_quoting_a_dsn_secret_is_scrubbed() -> None:
    from db.pg.dsn import scrub

    dsn = f"host=db.example user=codx password=pw-{SECRET} sslpassword=key-{SECRET}"
    message = scrub(f"could not open with pw-{SECRET} or key-{SECRET}", dsn)
    assert SECRET not in message and message.count("***") == 2


@pytest.mark.parametrize("password", ["e", "review", "5"])
def test_scrubbing_a_short_password_leaves_the_words_that_contain_it(password: str) -> None:
    """Before, every occurrence was replaced: "conn***ction to s***rv***r" for the password "e", and
    'database "***_b_nonexist"' gave the password "review" away by its gap."""
    from db.pg.dsn import scrub

    dsn = f"host=127.0.0.1 dbname=review_b_nonexist user=postgres password={password}"
    message = (
        'connection to server at "127.0.0.1", port 5432 failed: FATAL:  database "review_b_nonexist" does not exist'
    )
    assert scrub(message, dsn) == message
    quoted = f'missing "=" after "{password}" in connection info string'
    assert scrub(quoted, dsn) == 'missing "=" after "***" in connection info string'


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://codx:pa@{SECRET}@127.0.0.1:5432/codx",
        f"postgresql://codx:x@{SECRET}@h1,h2/codx",
        f"postgresql://codx:s3cret@{SECRET}/9x@127.0.0.1:5432/codx",  # host "Hunter2-secret", dbname the rest
        f"postgres://codx:a:b@{SECRET}:x@127.0.0.1/codx",
    ],
)
def test_a_uri_whose_password_holds_an_unencoded_at_sign_is_refused_unechoed(dsn: str) -> None:
    """libpq splits at the first '@': the rest of the password became the host name, shown by
    `info` and every connection error. Refused at load, saying to percent-encode it."""
    with pytest.raises(ConfigurationError) as caught:
        CodxJuniorGlobalSettings.load(db_backend="postgres", db_dsn=dsn)
    assert "%40" in str(caught.value) and SECRET not in str(caught.value)


def test_unparsable_dsn_is_not_echoed() -> None:
    assert mask_dsn(f"host=x password={SECRET} 'unterminated") == "<unparsable DSN>"


def test_errors_name_the_environment_variable() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        CodxJuniorGlobalSettings.load(db_pool_size=0)
    assert "CODX_JUNIOR_DB_POOL_SIZE (db_pool_size)" in str(excinfo.value)


def test_choices_ignore_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODX_JUNIOR_DB_BACKEND", "MEMORY")
    monkeypatch.setenv("CODX_JUNIOR_DB_STARTUP", " Evolve ")
    settings = CodxJuniorGlobalSettings.load()
    assert (settings.db_backend, settings.db_startup) == ("memory", "evolve")


def test_a_typo_in_the_env_file_is_warned_about_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The settings read ``.env`` as well as the environment: a misspelt name there must not pass in silence."""
    (tmp_path / ".env").write_text("CODX_JUNIOR_DB_BAKEND=postgres\ncodx_junior_db_pool_sise=3\nOTHER_APP_X=1\n")
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.WARNING)
    settings = CodxJuniorGlobalSettings.load()
    assert settings.db_backend == "file"  # the misspelt line was not applied
    assert "CODX_JUNIOR_DB_BAKEND (in .env) is ignored: did you mean CODX_JUNIOR_DB_BACKEND?" in caplog.text
    assert "unknown setting CODX_JUNIOR_DB_POOL_SISE (in .env)" in caplog.text
    assert "OTHER_APP_X" not in caplog.text


def test_an_env_file_that_is_not_utf8_is_named_with_its_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not "unexpected UnicodeDecodeError": the file, the line, what to do; never the bytes (a secret)."""
    (tmp_path / ".env").write_bytes(b"CODX_JUNIOR_DB_BACKEND=file\nOTHER_PASSWORD=caf\xe9-secret\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError) as caught:
        CodxJuniorGlobalSettings.load()
    message = str(caught.value)
    assert ".env" in message and "line 2" in message and "UTF-8" in message
    assert "secret" not in message and "caf" not in message


@pytest.mark.parametrize("setting", ["db_blob_dir", "db_cache_dir"])
def test_a_directory_setting_naming_a_file_is_refused_at_load(tmp_path: Path, setting: str) -> None:
    """Named at load, before the database file or its directory is created."""
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for path in (a_file, a_file / "below"):
        with pytest.raises(ConfigurationError, match=f"{setting}.*not a directory"):
            CodxJuniorGlobalSettings.load(db_file_path=tmp_path / "data" / "users.fs", **{setting: path})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_typos_and_unused_dsn_are_warned_about(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CODX_JUNIOR_DB_BAKCEND", "postgres")
    monkeypatch.setenv("CODX_JUNIOR_DB_DSN", f"host=db password={SECRET}")
    caplog.set_level(logging.WARNING)
    CodxJuniorGlobalSettings.load()
    assert "unknown setting CODX_JUNIOR_DB_BAKCEND is ignored: did you mean CODX_JUNIOR_DB_BACKEND?" in caplog.text
    assert "DB_DSN is set but the backend is file" in caplog.text
    assert SECRET not in caplog.text


def test_a_name_like_no_setting_gets_the_list_of_names(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """CODX_JUNIOR_DB_PATH is what a newcomer guesses for the file: the warning must lead to the real name."""
    monkeypatch.setenv("CODX_JUNIOR_DB_PATH", "/tmp/x.fs")
    monkeypatch.setenv("CODX_JUNIOR_DB_ZZZZZZZZ", "1")
    caplog.set_level(logging.WARNING)
    CodxJuniorGlobalSettings.load()
    assert "unknown setting CODX_JUNIOR_DB_PATH is ignored: did you mean CODX_JUNIOR_DB_FILE_PATH?" in caplog.text
    assert "CODX_JUNIOR_DB_ZZZZZZZZ is ignored (known:" in caplog.text
    assert "CODX_JUNIOR_DB_DSN" in caplog.text.split("DB_ZZZZZZZZ")[1]


def test_relative_paths_are_made_absolute() -> None:
    settings = CodxJuniorGlobalSettings.load(db_file_path="relative/users.fs")
    assert settings.db_file_path.is_absolute() and settings.location == str(Path.cwd() / "relative/users.fs")


def test_pg_fast_reads_is_on_by_default_and_the_environment_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    # The name is public (DESIGN.md): an operator's way out of db/pg_roundtrips.py.
    assert CodxJuniorGlobalSettings.load().db_pg_fast_reads is True
    monkeypatch.setenv("CODX_JUNIOR_DB_PG_FAST_READS", "false")
    assert CodxJuniorGlobalSettings.load().db_pg_fast_reads is False
    monkeypatch.setenv("CODX_JUNIOR_DB_PG_FAST_READS", "maybe")
    with pytest.raises(ConfigurationError, match="CODX_JUNIOR_DB_PG_FAST_READS"):
        CodxJuniorGlobalSettings.load()


def test_password_and_token_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = CodxJuniorGlobalSettings.load()
    assert (settings.db_password_min_length, settings.db_token_ttl_hours) == (8, 720)
    assert settings.db_password_validators == "length,common,similarity"
    monkeypatch.setenv("CODX_JUNIOR_DB_PASSWORD_MIN_LENGTH", "12")
    monkeypatch.setenv("CODX_JUNIOR_DB_PASSWORD_VALIDATORS", " Length, common ,, myapp.rules:NoSeasons,length")
    monkeypatch.setenv("CODX_JUNIOR_DB_TOKEN_TTL_HOURS", "24")
    settings = CodxJuniorGlobalSettings.load()
    assert (settings.db_password_min_length, settings.db_token_ttl_hours) == (12, 24)
    # Built-in names are case-insensitive; repeats and empty entries go.
    assert settings.db_password_validators == "length,common,myapp.rules:NoSeasons"
    monkeypatch.setenv("CODX_JUNIOR_DB_PASSWORD_VALIDATORS", "")
    assert CodxJuniorGlobalSettings.load().db_password_validators == ""


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("CODX_JUNIOR_DB_PASSWORD_MIN_LENGTH", "0", "CODX_JUNIOR_DB_PASSWORD_MIN_LENGTH (db_password_min_length)"),
        ("CODX_JUNIOR_DB_PASSWORD_MIN_LENGTH", "1025", "CODX_JUNIOR_DB_PASSWORD_MIN_LENGTH (db_password_min_length)"),
        ("CODX_JUNIOR_DB_TOKEN_TTL_HOURS", "0", "CODX_JUNIOR_DB_TOKEN_TTL_HOURS (db_token_ttl_hours)"),
        ("CODX_JUNIOR_DB_TOKEN_TTL_HOURS", "9601", "CODX_JUNIOR_DB_TOKEN_TTL_HOURS (db_token_ttl_hours)"),
        (
            "CODX_JUNIOR_DB_PASSWORD_VALIDATORS",
            "length,strength",
            "CODX_JUNIOR_DB_PASSWORD_VALIDATORS (db_password_validators): unknown password validator 'strength': "
            "use length, common, similarity or a module:Class import path",
        ),
        ("CODX_JUNIOR_DB_PASSWORD_VALIDATORS", "myapp.rules.Seasons", "unknown password validator"),
    ],
)
def test_wrong_password_and_token_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as excinfo:
        CodxJuniorGlobalSettings.load()
    assert message in str(excinfo.value)


def test_the_database_file_sits_beside_codx_juniors_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # codx-junior's own variable: its data volume, not a home directory a new container loses.
    caplog.set_level(logging.WARNING)
    monkeypatch.setenv("CODX_JUNIOR_GLOBAL_SETTINGS_PATH", str(tmp_path / "data" / "global_settings.json"))
    settings = CodxJuniorGlobalSettings.load()
    assert settings.db_file_path == tmp_path / "data" / "codx-db" / "users.fs"
    assert settings.location == str(tmp_path / "data" / "codx-db" / "users.fs")
    assert caplog.text == ""  # not an unknown CODX_JUNIOR_DB_* variable
    # Copies follow it; an explicit file path stays.
    assert settings.with_overrides(global_settings_path=tmp_path / "g.json").db_file_path == (
        tmp_path / "codx-db" / "users.fs"
    )
    assert settings.with_overrides(db_pool_size=3).db_file_path == tmp_path / "data" / "codx-db" / "users.fs"


def test_an_explicit_database_file_path_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CODX_JUNIOR_GLOBAL_SETTINGS_PATH", str(tmp_path / "global_settings.json"))
    monkeypatch.setenv("CODX_JUNIOR_DB_FILE_PATH", str(tmp_path / "elsewhere" / "users.fs"))
    assert CodxJuniorGlobalSettings.load().db_file_path == tmp_path / "elsewhere" / "users.fs"
    monkeypatch.delenv("CODX_JUNIOR_DB_FILE_PATH")
    assert CodxJuniorGlobalSettings.load(db_file_path=tmp_path / "x.fs").db_file_path == tmp_path / "x.fs"


def test_without_codx_juniors_variable_the_default_stays(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODX_JUNIOR_GLOBAL_SETTINGS_PATH", "")  # codx-junior: empty means unset
    settings = CodxJuniorGlobalSettings.load()
    assert settings.global_settings_path is None
    assert settings.db_file_path == default_file_path()


def test_codx_juniors_settings_path_expands_the_home_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CODX_JUNIOR_GLOBAL_SETTINGS_PATH", "~/codx/global_settings.json")
    settings = CodxJuniorGlobalSettings.load()
    assert settings.global_settings_path == tmp_path / "codx" / "global_settings.json"
    assert settings.db_file_path == tmp_path / "codx" / "codx-db" / "users.fs"


def test_an_unusable_directory_beside_codx_juniors_settings_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    monkeypatch.setenv("CODX_JUNIOR_GLOBAL_SETTINGS_PATH", str(not_a_dir / "global_settings.json"))
    with pytest.raises(ConfigurationError) as excinfo:
        CodxJuniorGlobalSettings.load()
    message = str(excinfo.value)
    assert message.startswith("invalid settings: CODX_JUNIOR_GLOBAL_SETTINGS_PATH (global_settings_path): ")
    assert f"{not_a_dir} is not a directory" in message and "CODX_JUNIOR_DB_FILE_PATH" in message
    # Only the file backend needs the directory.
    monkeypatch.setenv("CODX_JUNIOR_DB_BACKEND", "memory")
    assert CodxJuniorGlobalSettings.load().kind == "memory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_a_read_only_directory_beside_codx_juniors_settings_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o500)
    monkeypatch.setenv("CODX_JUNIOR_GLOBAL_SETTINGS_PATH", str(data / "global_settings.json"))
    with pytest.raises(ConfigurationError, match=r"CODX_JUNIOR_GLOBAL_SETTINGS_PATH .*is not writable"):
        CodxJuniorGlobalSettings.load()


def test_a_bad_codx_junior_settings_path_gives_one_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # db_file_path's default depends on it: only the cause is reported.
    with pytest.raises(ConfigurationError) as excinfo:
        CodxJuniorGlobalSettings.load(global_settings_path="/srv/a\x00b/global_settings.json")
    assert str(excinfo.value) == (
        "invalid settings: CODX_JUNIOR_GLOBAL_SETTINGS_PATH (global_settings_path): "
        "a path must not contain a NUL character"
    )


def test_a_group_commit_batch_is_at_most_100_writes() -> None:
    """Each write of a batch keeps its own history note for 100 users (db/users/history.py); a
    larger batch showed the users past the 100th the whole batch's description (found by a review)."""
    from db.errors import ConfigurationError

    assert CodxJuniorGlobalSettings.load(db_group_commit_max=100).db_group_commit_max == 100
    with pytest.raises(ConfigurationError, match="db_group_commit_max"):
        CodxJuniorGlobalSettings.load(db_group_commit_max=101)
