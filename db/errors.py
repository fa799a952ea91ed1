"""One shallow tree of errors: callers catch ``CodxDBError`` or one of its children."""

from __future__ import annotations

from collections.abc import Sequence


class CodxDBError(Exception):
    """Base of every error codx-db raises on purpose."""


def shown(value: str, limit: int = 80) -> str:
    """A value quoted for an error message, cut short: a 100 kB username is not a message."""
    text = repr(value[: limit + 1] if isinstance(value, str) else value)
    # Closed with the quote repr opened with (a value holding ' is quoted with ").
    return text if len(text) <= limit else text[: limit - 4] + "..." + text[0]


def shown_field(name: object, limit: int = 40) -> str:
    """A field name taken from the input (an unknown key), for a message: as is when short, else cut."""
    text = str(name)
    return text if len(text) <= limit and text.isprintable() else shown(text, limit)


# InvalidUserData lists at most this many problems, then how many more there are: each
# problem is short (values cut by ``shown``), and so is the message, whatever the input.
MAX_LISTED_ERRORS = 50


class ConfigurationError(CodxDBError):
    """The settings are wrong; the message names the setting (never its secret value)."""


class FileNotWritable(ConfigurationError):
    """The database file cannot be opened for writing (its mode, an immutable file); ``summary`` as StorageInUse."""

    def __init__(self, message: str, summary: str = "") -> None:
        super().__init__(message)
        self.summary = summary or message


class NotADatabaseFile(ConfigurationError):
    """A path given as a FileStorage database (or backup) holds something else; nothing was changed."""

    def __init__(self, path: object, what: str) -> None:
        self.path = path
        super().__init__(f"{path} {what}: nothing was changed")


class StorageFull(CodxDBError):
    """The disk holding a FileStorage file is full (or over quota); nothing was committed."""

    def __init__(self, path: object, free_bytes: int | None) -> None:
        self.path = path
        self.free_bytes = free_bytes
        free = "unknown" if free_bytes is None else f"{free_bytes} bytes"
        super().__init__(
            f"no space left on the disk holding {path} (free: {free}): the change was not saved; "
            "free some space, then try again (the database itself is intact)"
        )


class StorageInUse(CodxDBError):
    """The FileStorage file is locked by another process.

    ``summary``: which file and process, in a few words (a note can quote it; the message says more).
    """

    def __init__(self, message: str, summary: str = "") -> None:
        super().__init__(message)
        self.summary = summary or message


class ReadOnlyDatabase(CodxDBError):
    """A write to a database opened read-only (``db_read_only``); nothing was written."""


class DatabaseUnavailable(CodxDBError):
    """The storage cannot be reached (PostgreSQL down, network lost), or refuses a new session.

    PostgreSQL refuses one when its connections are used up ("too many clients", SQLSTATE
    53300): the message then names the connection budget (``max_connections``,
    CODX_JUNIOR_DB_POOL_SIZE, the workers). Not retried by ``Database.run``.
    """


class CommitOutcomeUnknown(DatabaseUnavailable):
    """The connection was lost while the change was being committed: it may or may not be saved.

    PostgreSQL may have committed before the answer was lost. Read the change back before trying
    again; codx-db never runs such a write again by itself (a group-commit batch is not split).
    """


class DatabaseTimeout(CodxDBError):
    """A wait ran out: a server-side limit, the commit lock, or a connection from the pool.

    ``statement_timeout`` (one statement ran too long) or ``idle_in_transaction_session_timeout``
    (a unit of work sat idle too long): the server is reachable, the limit was reached. Or
    codx-db's own waits: the commit lock (``db_commit_lock_timeout``), a pooled connection
    (``db_pool_timeout``). The message names the limit to look at.
    """


class WriteContention(CodxDBError):
    """A unit of work kept conflicting with other writers until its retries and its deadline ran out.

    Nothing was written. ``attempts`` and ``seconds`` say how hard codx-db tried; ``conflict``
    names what conflicted last (the object's oid and class when the storage said, else its
    short message). The storage's own error is the ``__cause__``. Trying again later may succeed.
    """

    def __init__(
        self, attempts: int, seconds: float, conflict: str, oid: str | None = None, class_name: str | None = None
    ) -> None:
        self.attempts = attempts
        self.seconds = seconds
        self.conflict = conflict
        self.oid = oid
        self.class_name = class_name
        what = ", ".join(part for part in (f"oid {oid}" if oid else "", class_name or "") if part)
        super().__init__(
            f"the change conflicted with other writers {attempts} times in {seconds:.1f} s and was not saved "
            f"({conflict}{f'; {what}' if what else ''}): try again; if it persists, fewer concurrent writers "
            "or larger CODX_JUNIOR_DB_CONFLICT_RETRIES / CODX_JUNIOR_DB_CONFLICT_DEADLINE"
        )


class TransactionTooLarge(CodxDBError):
    """One unit of work changes more stored objects than PostgreSQL can lock at once.

    RelStorage locks every existing object a transaction changes; PostgreSQL's lock table
    holds ``max_locks_per_transaction`` x ``max_connections`` locks (6,400 by default).
    """


class GenerationError(CodxDBError):
    """The database's generation does not fit the code, or a migration step failed."""


def _whose(package: str) -> str:
    """How messages name a package's data: codx-db's own keeps the wording it always had."""
    return "the database" if package == "codx_db" else f"the database's {package} data"


class GenerationTooHigh(GenerationError):
    """A package's data in the database is at a generation newer than its code knows: refused."""

    def __init__(self, package: str, found: int, known: int) -> None:
        self.package = package
        self.found = found
        self.known = known
        upgrade = "codx-db" if package == "codx_db" else package
        super().__init__(
            f"{_whose(package)} is at generation {found}, newer than this code "
            f"(generation {known}): upgrade {upgrade} before opening it"
        )


class GenerationTooLow(GenerationError):
    """A package's data is below the oldest generation its code reads, and the policy refuses to evolve it."""

    def __init__(self, package: str, found: int, minimum: int, known: int) -> None:
        self.package = package
        self.found = found
        self.minimum = minimum
        self.known = known
        super().__init__(
            f"{_whose(package)} is at generation {found}; this code needs at least {minimum} "
            f"(latest {known}): run `codx-db migrate --apply` first"
            + ("" if package == "codx_db" else f" (in a process that registers {package})")
        )


class StepFailed(GenerationError):
    """A generation step (or an install) raised; its transaction was aborted.

    ``stays_at`` is the generation the package's data keeps (None: nothing was installed).
    The step's own exception is the ``__cause__``.
    """

    def __init__(self, package: str, generation: int, description: str, stays_at: int | None, cause: BaseException):
        self.package = package
        self.generation = generation
        self.description = description
        self.stays_at = stays_at
        what = f"generation {generation}" if package == "codx_db" else f"{package} generation {generation}"
        if stays_at is None:
            outcome = "nothing was installed"
        elif package == "codx_db":
            outcome = f"the database stays at generation {stays_at}"
        else:
            outcome = f"{package} stays at generation {stays_at}"
        super().__init__(f"{what} ({description}) failed: {type(cause).__name__}: {cause}; {outcome}")


class UserNotFound(CodxDBError):
    """No user has this username (or email)."""

    def __init__(self, key: str, field: str = "username") -> None:
        self.key = key
        self.field = field
        super().__init__(f"no user with {field} {shown(key)}")


class UserAlreadyExists(CodxDBError):
    """Another user already has this username or email, or (``like``) a username that looks the same."""

    def __init__(self, field: str, value: str, where: str | None = None, like: str | None = None) -> None:
        self.field = field
        self.value = value
        self.where = where  # e.g. "records[12]" in an import
        self.like = like  # the stored look-alike username (a confusable skeleton match)
        prefix = f"{where}: " if where else ""
        if like is None:
            super().__init__(f"{prefix}a user with {field} {shown(value)} already exists")
        else:
            super().__init__(
                f"{prefix}{field} {shown(value)} looks like the existing user {shown(like)}: choose another {field}"
            )


class InvalidUserData(CodxDBError):
    """The input does not pass validation; ``errors`` holds one message per problem."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors[:MAX_LISTED_ERRORS])
        if len(errors) > MAX_LISTED_ERRORS:
            self.errors.append(f"... and {len(errors) - MAX_LISTED_ERRORS} more problems")
        super().__init__("invalid user data: " + "; ".join(self.errors))


class HistoryUnavailable(CodxDBError):
    """The storage keeps no past versions (history-free RelStorage), or none match."""


class TransferError(CodxDBError):
    """A copy, backup, restore or pack cannot go ahead; the message says why and what to do."""


class TargetNotEmpty(TransferError):
    """The target already holds a database (pass ``force`` to replace it)."""


class CodxJuniorFileError(CodxDBError):
    """The file is not a usable codx-junior ``global_settings.json``; the message names the entries."""


class NotAuthenticated(CodxDBError):
    """A request carries no credential, or one that matches no active user (HTTP 401)."""


class PermissionDenied(CodxDBError):
    """The caller is known but may not do this (HTTP 403)."""
