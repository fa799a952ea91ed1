"""What the operations on a whole database report: data only (pydantic models).

Rendering them for people (text) is the CLI's job (``db/cli/render.py``). ``to_dict()`` is the
JSON document ``--json`` prints; its keys and their order are part of the CLI's contract, so each
report either declares its fields in that order or names the order in ``JSON_KEYS``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    computed_field,
    field_serializer,
    model_serializer,
)

# Problems (or fixes) listed in ``--json``: a damaged index yields one per user, too many for a
# document; the counts are always complete.
MAX_JSON_LISTED = 1000

# Problems that ``repair`` fixes: rebuilding the indexes and the count from the users, and
# revoking the credentials of users who no longer exist.
REPAIRABLE = frozenset(
    {
        "credential-orphan",
        "index-wrong-partition",
        "github-dangling",
        "github-wrong-key",
        "github-unindexed",
        "project-dangling",
        "project-unindexed",
        "admin-dangling",
        "admin-unindexed",
        "username-dangling",
        "username-wrong-key",
        "username-unindexed",
        "username-indexed-twice",
        "email-dangling",
        "email-wrong-key",
        "email-unindexed",
        "email-indexed-twice",
        "email-claim-missing",
        "inactive-dangling",
        "inactive-unindexed",
        "inactive-incomplete",
        "skeleton-dangling",
        "skeleton-wrong-key",
        "skeleton-unindexed",
        "count-mismatch",
    }
)


class Report(BaseModel):
    """A report: plain data, mutable while the operation fills it in."""

    # Keys of ``to_dict()`` in order, when that order is not the fields' (``ok`` first...).
    JSON_KEYS: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _ordered(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {key: data[key] for key in self.JSON_KEYS} if self.JSON_KEYS else data

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form (``--json``)."""
        return self.model_dump(mode="json", by_alias=True)


# -- copy, backup, restore, pack -------------------------------------------------------------------


class Verification(Report):
    """A comparison of two databases: generation, user count, every user field by field."""

    JSON_KEYS = (
        "ok",
        "source_generation",
        "target_generation",
        "source_users",
        "target_users",
        "users_compared_equal",
        "users_changed_since_snapshot",
        "snapshot_tid",
        "differences",
    )

    source_generation: int | None
    target_generation: int | None
    source_users: int | None
    target_users: int | None
    compared: int = Field(default=0, serialization_alias="users_compared_equal")  # users equal field by field
    # Users the (live) source wrote after the snapshot: not comparable.
    changed_since: int = Field(default=0, serialization_alias="users_changed_since_snapshot")
    as_of: str | None = Field(default=None, serialization_alias="snapshot_tid")  # the snapshot's tid (live source)
    differences: list[str] = Field(default_factory=list)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        """True when nothing differs."""
        return not self.differences


class TransferReport(Report):
    """What a copy, backup or restore did, and its verification."""

    JSON_KEYS = ("operation", "ok", "source", "target", "copied", "unit", "seconds", "replaced", "verification")

    operation: str  # copy | backup | restore
    source: str  # where from (safe to print: DSN passwords masked)
    target: str
    unit: str  # "transactions" or "objects": what the storage's copy machinery copied
    copied: int
    seconds: float
    verification: Verification
    replaced: dict[str, Any] | None = None  # what the target held before (force)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        """True when the copy verified."""
        return self.verification.ok

    @field_serializer("seconds")
    def _rounded(self, seconds: float) -> float:
        return round(seconds, 3)


class PackReport(Report):
    """What a pack removed: sizes before and after."""

    location: str
    backend: str
    days: float | int  # int stays int in the JSON (the API's default, 0)
    seconds: float
    bytes_before: int | None  # FileStorage: the file; PostgreSQL: the object-state tables
    bytes_after: int | None
    records_before: int | None  # object records (FileStorage: current objects; PostgreSQL: object_state rows)
    records_after: int | None
    notes: list[str] = Field(default_factory=list)

    @field_serializer("seconds")
    def _rounded(self, seconds: float) -> float:
        return round(seconds, 3)


# -- check and repair -------------------------------------------------------------------------------


class Problem(BaseModel):
    """One inconsistency: a stable ``code`` for scripts and a one-line ``message`` for people."""

    model_config = ConfigDict(frozen=True)

    code: str
    message: str

    @property
    def repairable(self) -> bool:
        """True when ``repair`` fixes it (db/ops/check.py)."""
        return self.code in REPAIRABLE


class CheckReport(Report):
    """What ``check`` found in one snapshot of the database."""

    generation: int | None
    code_generation: int
    users: int  # entries of the users BTree
    count: int | None  # the stored Length
    username_entries: int
    email_entries: int
    inactive_entries: int | None = None  # None: no inactive index (before generation 2)
    problems: list[Problem] = Field(default_factory=list)
    skeleton_entries: int | None = None  # None: no look-alike index (before generation 3)
    warnings: list[Problem] = Field(default_factory=list)  # worth a look; ``ok`` stays true

    @field_serializer("problems")
    def _first_problems(self, problems: list[Problem]) -> list[dict[str, Any]]:
        return [{"code": p.code, "message": p.message, "repairable": p.repairable} for p in problems[:MAX_JSON_LISTED]]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def problem_count(self) -> int:
        """How many problems (``problems`` lists the first ``MAX_JSON_LISTED`` in JSON)."""
        return len(self.problems)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems

    @computed_field  # type: ignore[prop-decorator]
    @property
    def remedy(self) -> str | None:
        """The command to run next, if one fixes what was found."""
        if self.behind:
            # A migration that was interrupted (or never run) leaves its indexes half-built:
            # finishing it is the fix, and it must run before anything else judges them.
            return "codx-db migrate --apply"
        return "codx-db check --repair" if self.repairable else None

    @property
    def repairable(self) -> bool:
        """True when there are problems and ``repair`` can fix every one of them."""
        return bool(self.problems) and all(p.repairable for p in self.problems)

    @property
    def behind(self) -> bool:
        """True when the database's generation is older than the code's (a migration is pending)."""
        return self.generation is not None and 0 <= self.generation < self.code_generation


class RepairReport(Report):
    """What ``repair`` did: the state before, whether it changed anything, the state after."""

    JSON_KEYS = ("ok", "repaired", "fixed", "fixed_count", "before", "after")

    before: CheckReport
    after: CheckReport
    repaired: bool
    fixed: list[str] = Field(default_factory=list)  # one line per index entry or count fixed

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        """True when the database is consistent after the repair."""
        return self.after.ok

    @computed_field  # type: ignore[prop-decorator]
    @property
    def fixed_count(self) -> int:
        """How many fixes (``fixed`` lists the first ``MAX_JSON_LISTED`` in JSON)."""
        return len(self.fixed)

    @field_serializer("fixed")
    def _first_fixes(self, fixed: list[str]) -> list[str]:
        return fixed[:MAX_JSON_LISTED]


# -- info and migrate ---------------------------------------------------------------------------------


class InfoReport(Report):
    """Backend, location (secrets masked), generation, status and user count (``codx-db info``)."""

    backend: str
    location: str
    generation: int | None
    code_generation: int
    status: str
    users: int
    # db_pg_temp_tablespace, shown only when set (postgres backend).
    temp_tablespace: str | None = None
    # PostgreSQL only: db_pool_size and the sessions one process may open with it (the connection
    # budget, docs/deployment-tuning.md); what the server allows this role, when it was read.
    pool_size: int | None = None
    pg_connections_per_process: int | None = None
    pg_connections_allowed: int | None = None
    # PostgreSQL only, once opened: deadlock_timeout of RelStorage's sessions and who set it.
    pg_deadlock_timeout: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form; the optional fields only when set, so other outputs stay as they were."""
        data = super().to_dict()
        for key in (
            "temp_tablespace",
            "pool_size",
            "pg_connections_per_process",
            "pg_connections_allowed",
            "pg_deadlock_timeout",
        ):
            if data.get(key) is None:
                data.pop(key, None)
        return data


class PendingStep(BaseModel):
    """One generation step: its number and its description (the step's docstring)."""

    generation: int
    description: str


class PackageMigration(BaseModel):
    """Another registered package's generations (an application's): as ``MigrationReport``'s own fields."""

    package: str
    current: int | None
    target: int
    pending: list[PendingStep]
    applied: list[int] = Field(default_factory=list)


class MigrationReport(Report):
    """codx-db's generation status, and the steps a ``migrate --apply`` or ``--dry-run`` ran.

    ``packages``: every other package registered in the process that ran it (an application's).
    """

    current: int | None
    target: int
    minimum: int
    pending: list[PendingStep]
    applied: list[int] = Field(default_factory=list)
    dry_run: bool = False
    packages: list[PackageMigration] = Field(default_factory=list)


def describe_user(user: Any) -> str:
    """A user for messages: its username and id (never other data: it may be personal)."""
    username = getattr(user, "username", None)
    return f"{username!r} (id {getattr(user, 'id', '?')})"
