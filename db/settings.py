"""Settings: which storage codx-db opens, and how (env prefix ``CODX_JUNIOR_``).

Sources, highest priority first: constructor arguments, environment variables, a ``.env`` file
in the working directory, then a secrets directory (one file per setting, e.g.
``/run/secrets/codx_junior_db_dsn``; ``CODX_JUNIOR_SECRETS_DIR`` names another one).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from db import settings_sources as sources
from db.errors import ConfigurationError, shown

log = logging.getLogger(__name__)

ENV_PREFIX = "CODX_JUNIOR_"
DEFAULT_SECRETS_DIR = "/run/secrets"

Backend = Literal["file", "postgres", "memory"]
StartupPolicy = Literal["evolve", "minimum", "refuse"]
# Built-in password validators (db/users/policy.py), by the name db_password_validators uses.
PASSWORD_VALIDATOR_NAMES = ("length", "common", "similarity")
_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
# An unquoted PostgreSQL identifier as the server keeps it (folded to lower case), at most 63 bytes
# (NAMEDATALEN - 1): it travels unquoted in libpq's `options=-c temp_tablespaces=...`.
_PG_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_$]{0,62}")


def default_file_path() -> Path:
    """Per-user data file: ``$XDG_DATA_HOME/codx-junior/codx-db/users.fs`` (``~/.local/share``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "codx-junior" / "codx-db" / "users.fs"


def _default_file_path(data: dict[str, Any]) -> Path:
    """Beside codx-junior's ``global_settings.json`` when its path is set (its data volume), else per user."""
    global_settings = data.get("global_settings_path")
    if global_settings is not None:
        return Path(global_settings).parent / "codx-db" / "users.fs"
    return default_file_path()


def _default_pool_timeout(data: dict[str, Any]) -> float:
    """Wait for a connection as long as for the commit lock: both are a turn behind other writers."""
    return float(data.get("db_commit_lock_timeout", 30))


def _secrets_dir() -> str | None:
    # pydantic-settings warns about a missing secrets directory; most machines have none.
    path = os.environ.get(ENV_PREFIX + "SECRETS_DIR", DEFAULT_SECRETS_DIR)
    return path if os.path.isdir(path) else None


def mask_dsn(dsn: str) -> str:
    """Return the DSN with its password replaced by ``***`` (URI or ``key=value`` form)."""
    from db.pg.dsn import mask_dsn  # lazy backend: psycopg2 only when a DSN is used

    return mask_dsn(dsn)


def keyword_dsn(dsn: str) -> str:
    """The DSN in libpq ``key=value`` form (see ``db.pg.dsn.keyword_dsn``)."""
    from db.pg.dsn import keyword_dsn  # lazy backend: psycopg2 only when a DSN is used

    return keyword_dsn(dsn)


class CodxJuniorGlobalSettings(BaseSettings):
    """Where and how the codx-db database is stored."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        # Errors must never echo what was typed: a DSN holds a password.
        hide_input_in_errors=True,
        validate_default=True,
        secrets_dir=_secrets_dir(),
    )

    db_backend: Backend = Field("file", description="file (default) | postgres | memory")
    # codx-junior's own variable (not DB_-prefixed): when set, the default database file sits beside it,
    # <dir>/codx-db/users.fs (a directory: FileStorage's .index/.lock/.tmp files stay together).
    # Declared before db_file_path, whose default reads it.
    global_settings_path: Path | None = Field(
        None, description="codx-junior's global_settings.json; the default db_file_path is beside it"
    )
    db_file_path: Path = Field(default_factory=_default_file_path, description="FileStorage file (file backend)")
    db_dsn: SecretStr | None = Field(None, description="libpq DSN or postgresql:// URI (postgres backend); a secret")
    db_read_only: bool = Field(
        False,
        description="file backend (or a config file's <filestorage>): open the file read-only, without its "
        "lock (readable while another process writes it; a snapshot as of the open); writes raise ReadOnlyDatabase",
    )
    db_config_file: Path | None = Field(
        None, description="ZConfig file (e.g. relstorage.conf); when set it wins over the backend"
    )
    db_keep_history: bool = Field(False, description="RelStorage keeps history (fixed once the schema exists)")
    # 40 = AnyIO's default thread limiter, which runs Starlette's sync endpoints: one connection per thread.
    db_pool_size: int = Field(
        40, ge=1, le=1000, description="ZODB connection pool size: units of work open at once per process"
    )
    db_cache_size: int = Field(10_000, ge=100, description="objects cached per connection")
    db_cache_local_mb: int = Field(64, ge=0, le=65_536, description="RelStorage local (shared, in-process) cache, MB")
    db_cache_dir: Path | None = Field(None, description="RelStorage persistent cache directory (survives restarts)")
    db_blob_dir: Path | None = Field(None, description="blob directory (none: no blobs)")
    db_commit_lock_timeout: int = Field(
        30,
        ge=1,
        le=3600,
        description="seconds a write waits for a lock (PostgreSQL: the row locks of the objects it changes)",
    )
    db_pool_timeout: float = Field(
        default_factory=_default_pool_timeout,
        gt=0,
        le=3600,
        description="seconds a unit of work waits for a pooled connection (default: db_commit_lock_timeout)",
    )
    db_pg_fast_reads: bool = Field(
        True,
        description="PostgreSQL: fewer round trips per unit of work (db/pg/roundtrips.py); false: plain RelStorage",
    )
    db_pg_temp_tablespace: str | None = Field(
        None,
        description="PostgreSQL: tablespace for RelStorage's temp tables (temp_tablespaces), e.g. one on tmpfs; "
        "checked at open (docs/deployment-tuning.md)",
    )
    db_pg_own_temp_tables: bool = Field(
        True,
        description="PostgreSQL: codx-db's store temp tables, not truncated at commit, 4 round trips per write "
        "(db/pg/store_temps.py; needs db_pg_fast_reads); false: RelStorage's own",
    )
    db_pg_store_index_joins: bool = Field(
        True,
        description="PostgreSQL: commits join their temp_store rows to object_state by index, not by scanning "
        "object_state (hash and merge joins off for a commit's lock and move; db/pg/store_temps.py; needs "
        "db_pg_own_temp_tables); false: PostgreSQL's own plans",
    )
    db_pg_deadlock_timeout_ms: int = Field(
        100,
        ge=0,
        le=60_000,
        description="PostgreSQL: deadlock_timeout of RelStorage's sessions, ms (a deadlock between two writes "
        "stalls both this long; the server's default is 1 s), set when the role may (db/pg/storage.py); "
        "0: the server's own",
    )
    db_conflict_retries: int = Field(10, ge=0, le=100, description="retries of a unit of work after a conflict")
    db_conflict_deadline: float = Field(
        30,
        ge=0,
        le=3600,
        description="seconds a unit of work keeps being retried after conflicts (at least db_conflict_retries times)",
    )
    db_group_commit: bool = Field(
        True,
        description="threads of this process share one commit per batch of UserDB writes (db/group_commit.py)",
    )
    db_group_commit_max: int = Field(
        64, ge=1, le=100, description="most writes one group commit takes (each keeps its own history note: 100)"
    )
    db_fast_pickling: bool = Field(
        True,
        description="pickle stored objects with a C-speed persistent_id where ZODB's answers are known "
        "(db/pickling.py; byte-identical records); false: ZODB's own path",
    )
    db_migrate_batch_size: int = Field(
        1000, ge=1, le=1_000_000, description="objects per commit in large migration steps"
    )
    db_startup: StartupPolicy = Field(
        "refuse",
        description="old database on open: evolve | minimum | refuse (run `codx-db migrate`)",
    )
    db_password_min_length: int = Field(8, ge=1, le=1024, description="shortest new password accepted")
    db_password_validators: str = Field(
        ",".join(PASSWORD_VALIDATOR_NAMES),
        description="new-password checks, in order: built-in names (length, common, similarity) and "
        "module:Class import paths, comma-separated; empty: none",
    )
    db_token_ttl_hours: int = Field(720, ge=1, le=9600, description="lifetime of an access token, hours")

    @field_validator("db_password_validators")
    @classmethod
    def _validator_names(cls, value: str) -> str:
        # Only the spelling here; importing a module:Class is left to PasswordPolicy.from_settings.
        names = []
        for entry in value.split(","):
            name = entry.strip()
            if not name:
                continue
            if name.casefold() in PASSWORD_VALIDATOR_NAMES:
                name = name.casefold()
            elif not _IMPORT_PATH.fullmatch(name):
                raise ValueError(
                    f"unknown password validator {shown(name, 60)}: use "
                    f"{', '.join(PASSWORD_VALIDATOR_NAMES)} or a module:Class import path"
                )
            if name not in names:
                names.append(name)
        return ",".join(names)

    @field_validator("db_pg_temp_tablespace", mode="before")
    @classmethod
    def _tablespace_name(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if not isinstance(value, str) or not _PG_IDENTIFIER.fullmatch(value.strip()):
            raise ValueError(
                f"{shown(str(value), 70)} is not a tablespace name codx-db can pass on: use an unquoted "
                "PostgreSQL identifier in lower case (a-z, 0-9, _ and $, not starting with a digit, "
                "at most 63 characters)"
            )
        return value.strip()

    @field_validator("db_backend", "db_startup", mode="before")
    @classmethod
    def _lower_case(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("db_dsn")
    @classmethod
    def _dsn_parses(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        from db.pg.dsn import check_dsn  # lazy backend: psycopg2 only when a DSN is set

        check_dsn(value.get_secret_value())
        return value

    @field_validator("global_settings_path", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: Any) -> Any:
        # codx-junior treats an empty variable as unset (`os.environ.get(...) or $HOME/...`).
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("db_file_path", "db_config_file", "db_cache_dir", "db_blob_dir", "global_settings_path")
    @classmethod
    def _expand_user(cls, value: Path | None) -> Path | None:
        if value is not None and "\x00" in str(value):
            raise ValueError("a path must not contain a NUL character")
        # Absolute, so messages and `codx-db info` say exactly which file is meant.
        return value.expanduser().absolute() if value is not None else None

    @field_validator("db_file_path")
    @classmethod
    def _follow_links(cls, value: Path) -> Path:
        # Often a link into a mounted volume: pack, restore and the lock must work on the file it
        # names (pack and restore rename files into place: through the link they replaced the link).
        try:
            return value.resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop
            raise ValueError(f"{value} cannot be resolved ({exc})") from None

    @model_validator(mode="after")
    def _check_combination(self) -> CodxJuniorGlobalSettings:
        for name in ("db_blob_dir", "db_cache_dir"):
            _check_directory(getattr(self, name), name)
        if self.db_read_only and self.db_config_file is None and self.db_backend != "file":
            # PostgreSQL serves many processes at once: a read-only login role is the tool there.
            # (A config file's storage is checked when it is read: db/pg/config.py.)
            raise ValueError("db_read_only: only the file backend opens read-only")
        if self.db_config_file is not None:
            try:
                readable = self.db_config_file.is_file()
            except OSError as exc:  # e.g. a name longer than the file system allows
                raise ValueError(f"db_config_file: {exc.strerror}") from None
            if not readable:
                raise ValueError(f"db_config_file: {self.db_config_file} is not a readable file")
            return self
        if self.db_backend == "postgres" and self.db_dsn is None:
            raise ValueError(
                "db_dsn: the postgres backend needs a DSN "
                f"(set {ENV_PREFIX}DB_DSN, e.g. postgresql://user@host:5432/codx)"
            )
        if self.db_backend == "file" and not self.db_read_only:  # read-only creates nothing
            # A file placed beside codx-junior's settings is that variable's doing: name it.
            beside = "db_file_path" not in self.model_fields_set and self.global_settings_path is not None
            setting = "global_settings_path" if beside else "db_file_path"
            hint = f" (the database goes beside it unless {ENV_PREFIX}DB_FILE_PATH is set)" if beside else ""
            try:
                _check_creatable(self.db_file_path, setting)
            except OSError as exc:  # e.g. a name longer than the file system allows
                raise ValueError(f"{setting}: {exc.strerror}{hint}") from None
            except ValueError as exc:
                raise ValueError(f"{exc}{hint}") from None
        return self

    @property
    def location(self) -> str:
        """Where the data lives, safe to print (DSN password masked)."""
        if self.db_config_file is not None:
            return f"config file {self.db_config_file}"
        if self.db_backend == "file":
            return str(self.db_file_path)
        if self.db_backend == "postgres" and self.db_dsn is not None:
            return mask_dsn(self.db_dsn.get_secret_value())
        return "memory"

    @property
    def kind(self) -> str:
        """The backend actually used: ``config`` when a ZConfig file wins."""
        return "config" if self.db_config_file is not None else self.db_backend

    def with_overrides(self, **overrides: Any) -> CodxJuniorGlobalSettings:
        """A validated copy with some settings changed (``model_copy`` would not validate)."""
        data = {name: getattr(self, name) for name in self.model_fields_set}
        try:
            return type(self).model_validate({**data, **overrides})
        except ValidationError as exc:
            raise ConfigurationError(_describe(exc)) from None

    @classmethod
    def load(cls, **overrides: Any) -> CodxJuniorGlobalSettings:
        """Load settings, turning validation errors into one ConfigurationError per setting."""
        env_file = Path(str(cls.model_config.get("env_file") or ".env"))
        try:
            # CODX_JUNIOR_ is shared with codx-junior's other settings, so unknown names in
            # general are fine; but CODX_JUNIOR_DB_* are ours: a typo must not pass in silence.
            sources.warn_unknown(ENV_PREFIX + "DB_", {env_name(name) for name in cls.model_fields}, env_file)
            settings = cls(_secrets_dir=_secrets_dir(), **overrides)  # type: ignore[call-arg]
        except ValidationError as exc:
            raise ConfigurationError(_describe(exc)) from None
        except UnicodeDecodeError as exc:
            raise ConfigurationError(sources.not_utf8(exc, env_file)) from None
        if settings.db_dsn is not None and settings.kind == "file":
            log.warning(
                "%sDB_DSN is set but the backend is file (%s): the DSN is not used; "
                "set %sDB_BACKEND=postgres to use PostgreSQL",
                ENV_PREFIX,
                settings.db_file_path,
                ENV_PREFIX,
            )
        return settings


def env_name(setting: str) -> str:
    """The environment variable of a setting: db_pool_size -> CODX_JUNIOR_DB_POOL_SIZE."""
    return ENV_PREFIX + setting.upper()


def _check_directory(path: Path | None, setting: str) -> None:
    """Fail now if ``path`` is, or would be made below, something that is not a directory."""
    try:
        while path is not None and not path.exists():
            path = path.parent if path.parent != path else None
        if path is not None and not path.is_dir():
            raise ValueError(f"{setting}: {path} is not a directory")
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise ValueError(f"{setting}: {exc.strerror}") from None


def _check_creatable(path: Path, setting: str) -> None:
    """Fail now if the file at ``path`` could never be created (no side effect)."""
    if path.exists() and path.is_dir():
        raise ValueError(f"{setting}: {path} is a directory, expected a file path")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{setting}: cannot create {path.parent}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK) and not path.parent.exists():
        raise ValueError(f"{setting}: cannot create {path.parent}: {parent} is not writable")
    if path.parent.exists() and not os.access(path.parent, os.W_OK | os.X_OK):
        raise ValueError(f"{setting}: directory {path.parent} is not writable")


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors(include_input=False, include_url=False):
        # db_file_path's default waits for global_settings_path; that setting's own error says why.
        if err["type"] == "default_factory_not_called":
            continue
        loc = ".".join(str(part) for part in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        # Model-level messages already start with the setting's name.
        if loc:
            msg = f"{loc}: {msg}"
        # Name the environment variable too: that is what an operator sets.
        setting = msg.split(":", 1)[0]
        if setting in CodxJuniorGlobalSettings.model_fields:
            msg = f"{env_name(setting)} ({setting}){msg[len(setting) :]}"
        lines.append(msg)
    return "invalid settings: " + "; ".join(lines)
