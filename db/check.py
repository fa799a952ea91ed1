"""Consistency check of the user store, and its repair (``codx-db check [--repair]``).

The ``users`` BTree (id -> ``User``) is the source of truth. The username and email indexes,
the set of inactive users' username keys (generation 2), the look-alike (skeleton) index
(generation 3) and the ``Length`` count are derived from it, so they can be verified against it and rebuilt
from it. A check reads one consistent snapshot (a single unit of work) and never writes.

What cannot be derived is never "repaired": two users sharing a username or an email, a
user stored under the wrong id, something that is not a user, an unknown generation or a
damaged BTree need a person to decide. ``repair`` then changes nothing and says why.

Look-alike usernames stored before generation 3 are a *warning*, not a problem: both users
keep working, and only a person can choose whom to rename.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from BTrees.OOBTree import OOTreeSet

import migrations
from db.database import Database, UnitOfWork
from db.models import USERS_KEY, User, UserContainer, email_key, username_key, username_skeleton
from db.users.models import github_key, project_ids
from migrations.runner import read_generation

# The generation that added ``UserContainer.inactive``; below it the set may be absent.
INACTIVE_INDEX_GENERATION = 2
# The generation that added ``UserContainer.by_skeleton``; below it the index may be absent
# or half built by an interrupted migration (``migrate --apply`` finishes it).
SKELETON_INDEX_GENERATION = 3
# The generation that added the GitHub, project and admin indexes (codx-junior lookups).
LOOKUP_INDEX_GENERATION = 5
MAX_WARNINGS = 100

# Problems (or fixes) listed in ``--json``: a damaged index yields one per user, too many for a
# document; the counts are always complete.
MAX_JSON_LISTED = 1000

# Problems that ``repair`` fixes by rebuilding the indexes and the count from the users.
REPAIRABLE = frozenset(
    {
        "username-dangling",
        "username-wrong-key",
        "username-unindexed",
        "username-indexed-twice",
        "email-dangling",
        "email-wrong-key",
        "email-unindexed",
        "email-indexed-twice",
        "inactive-dangling",
        "inactive-unindexed",
        "inactive-incomplete",
        "skeleton-dangling",
        "skeleton-wrong-key",
        "skeleton-unindexed",
        "github-dangling",
        "github-wrong-key",
        "github-unindexed",
        "project-dangling",
        "project-unindexed",
        "admin-dangling",
        "admin-unindexed",
        "count-mismatch",
    }
)


@dataclass(frozen=True)
class Problem:
    """One inconsistency: a stable ``code`` for scripts and a one-line ``message`` for people."""

    code: str
    message: str

    @property
    def repairable(self) -> bool:
        """True when rebuilding the indexes from the users fixes it."""
        return self.code in REPAIRABLE


@dataclass
class CheckReport:
    """What ``check`` found in one snapshot of the database."""

    generation: int | None
    code_generation: int
    users: int  # entries of the users BTree
    count: int | None  # the stored Length
    username_entries: int
    email_entries: int
    inactive_entries: int | None = None  # None: no inactive index (before generation 2)
    problems: list[Problem] = field(default_factory=list)
    skeleton_entries: int | None = None  # None: no look-alike index (before generation 3)
    warnings: list[Problem] = field(default_factory=list)  # worth a look; ``ok`` stays true

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems

    @property
    def repairable(self) -> bool:
        """True when there are problems and ``repair`` can fix every one of them."""
        return bool(self.problems) and all(p.repairable for p in self.problems)

    @property
    def behind(self) -> bool:
        """True when the database's generation is older than the code's (a migration is pending)."""
        return self.generation is not None and 0 <= self.generation < self.code_generation

    @property
    def remedy(self) -> str | None:
        """The command to run next, if one fixes what was found."""
        if self.behind:
            # A migration that was interrupted (or never run) leaves its indexes half-built:
            # finishing it is the fix, and it must run before anything else judges them.
            return "codx-db migrate --apply"
        return "codx-db check --repair" if self.repairable else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (``--json``): every count, and the first problems."""
        data = asdict(self)
        data["problems"] = [{**asdict(p), "repairable": p.repairable} for p in self.problems[:MAX_JSON_LISTED]]
        data["problem_count"] = len(self.problems)
        data["warnings"] = [asdict(w) for w in self.warnings]
        data["ok"] = self.ok
        data["remedy"] = self.remedy
        return data


@dataclass
class RepairReport:
    """What ``repair`` did: the state before, whether it changed anything, the state after."""

    before: CheckReport
    after: CheckReport
    repaired: bool
    fixed: list[str] = field(default_factory=list)  # one line per index entry or count fixed

    @property
    def ok(self) -> bool:
        """True when the database is consistent after the repair."""
        return self.after.ok

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (``--json``)."""
        return {
            "ok": self.ok,
            "repaired": self.repaired,
            "fixed": self.fixed[:MAX_JSON_LISTED],
            "fixed_count": len(self.fixed),
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
        }


def check(database: Database) -> CheckReport:
    """Check the database in one read-only unit of work."""
    return database.run(lambda uow: check_root(uow.root))


def repair(database: Database) -> RepairReport:
    """Rebuild the indexes and the count from the users when every problem is repairable.

    Runs as one unit of work (retried after a conflict), then checks again in a new one.
    """

    def run(uow: UnitOfWork) -> tuple[CheckReport, list[str]]:
        before = check_root(uow.root)
        if not before.repairable:
            return before, []
        fixed = rebuild_indexes(uow.root[USERS_KEY])
        uow.note(f"codx-db: check --repair: {len(fixed)} fixes")
        return before, fixed

    before, fixed = database.run(run, note="codx-db: check --repair")
    return RepairReport(before=before, after=check(database), repaired=bool(fixed), fixed=fixed)


def check_root(root: Any) -> CheckReport:
    """Check the user container and generation found in a database root (reads only)."""
    problems: list[Problem] = []
    generation = _check_generation(root, problems)
    container = root.get(USERS_KEY)
    if not isinstance(container, UserContainer):
        problems.append(Problem("container-missing", f"the root holds no user container at {USERS_KEY!r}"))
        return CheckReport(generation, migrations.GENERATION, 0, None, 0, 0, problems=problems)

    for name in ("users", "by_username", "by_email"):
        _check_structure(name, getattr(container, name), problems)

    users = _valid_users(container, problems)
    _check_index("username", container.by_username, users, _username_key, problems)
    _check_index("email", container.by_email, users, _email_key, problems)
    _check_inactive(container, users, generation, problems)
    warnings: list[Problem] = []
    _check_skeleton(container, users, generation, problems, warnings)
    _check_lookup_indexes(container, users, generation, problems, warnings)
    count = container.length()
    if count != len(container.users):
        problems.append(
            Problem("count-mismatch", f"the stored count is {count} but there are {len(container.users)} users")
        )
    return CheckReport(
        generation=generation,
        code_generation=migrations.GENERATION,
        users=len(container.users),
        count=count,
        username_entries=len(container.by_username),
        email_entries=len(container.by_email),
        inactive_entries=None if container.inactive is None else len(container.inactive),
        problems=problems,
        skeleton_entries=None if container.by_skeleton is None else len(container.by_skeleton),
        warnings=warnings,
    )


def rebuild_indexes(container: UserContainer) -> list[str]:
    """Make the indexes and the count agree with the users; return one line per fix.

    Changes are made key by key in the existing BTrees rather than by swapping in new
    ones: a concurrent create or rename touching other keys then merges with the repair
    through BTrees' conflict resolution, and one touching the same key conflicts and the
    repair is retried. A swapped-in tree would silently drop the concurrent writer's entry.
    """
    users = list(container.users.values())
    fixed = _sync_index("username", container.by_username, {username_key(u.username): u for u in users})
    fixed += _sync_index("email", container.by_email, {email_key(u.email): u for u in users if u.email})
    if container.inactive is not None:
        wanted = {username_key(u.username) for u in users if not u.is_active}
        for key in [k for k in container.inactive if k not in wanted]:
            container.inactive.remove(key)
            fixed.append(f"inactive: removed {key!r}")
        for key in sorted(wanted):
            if container.inactive.add(key):
                fixed.append(f"inactive: added {key!r}")
        if not container.inactive_complete:
            container.inactive_complete = True
            fixed.append("inactive: index marked complete")
    if container.by_skeleton is not None:
        fixed += _sync_skeleton(container.by_skeleton, users)
    fixed += _sync_lookup_indexes(container, users)
    if container.length() != len(users):
        fixed.append(f"count: {container.length()} -> {len(users)}")
        # set() in place: Length's conflict resolution adds concurrent creates on top.
        container.length.set(len(users))
    return fixed


# -- helpers ------------------------------------------------------------------------------------


def _check_generation(root: Any, problems: list[Problem]) -> int | None:
    try:
        generation = read_generation(root)
    except (TypeError, ValueError):
        problems.append(Problem("generation-unknown", "the stored generation is not a number"))
        return None
    if generation is None:
        problems.append(Problem("generation-unknown", "the database has no generation (never installed)"))
    elif not 0 <= generation <= migrations.GENERATION:
        problems.append(
            Problem(
                "generation-unknown",
                f"the database is at generation {generation}, unknown to this code (0..{migrations.GENERATION})",
            )
        )
    return generation


def _check_structure(name: str, tree: Any, problems: list[Problem]) -> None:
    from BTrees.check import check as check_btree

    try:
        check_btree(tree)
    except AssertionError as exc:
        first = (str(exc).strip().splitlines() or ["damaged"])[0]
        problems.append(Problem("btree-damaged", f"the {name} BTree is damaged: {first}"))


def _valid_users(container: UserContainer, problems: list[Problem]) -> list[User]:
    """Users stored under their own id; report (and leave out) everything else."""
    valid: list[User] = []
    seen_username: dict[str, User] = {}
    seen_email: dict[str, User] = {}
    for key, user in container.users.items():
        if not isinstance(user, User):
            problems.append(Problem("not-a-user", f"users[{key!r}] holds a {type(user).__name__}, not a User"))
            continue
        if getattr(user, "id", None) != key:
            problems.append(Problem("user-wrong-id", f"user {_name(user)} is stored under id {key!r}, not its own id"))
            continue
        if not isinstance(getattr(user, "username", None), str) or not username_key(user.username):
            problems.append(Problem("user-invalid", f"user id {key!r} has no valid username"))
            continue
        if user.email is not None and not isinstance(user.email, str):
            problems.append(Problem("user-invalid", f"user {_name(user)} has an email that is not a string"))
            continue
        ukey = username_key(user.username)
        if ukey in seen_username:
            problems.append(
                Problem(
                    "username-duplicate",
                    f"users {_name(seen_username[ukey])} and {_name(user)} share the username key {ukey!r}",
                )
            )
        seen_username.setdefault(ukey, user)
        if user.email:
            ekey = email_key(user.email)
            if ekey in seen_email:
                problems.append(
                    Problem(
                        "email-duplicate",
                        f"users {_name(seen_email[ekey])} and {_name(user)} share the email key {ekey!r}",
                    )
                )
            seen_email.setdefault(ekey, user)
        valid.append(user)
    return valid


def _username_key(user: User) -> str | None:
    return username_key(user.username)


def _email_key(user: User) -> str | None:
    return email_key(user.email) if user.email else None


def _check_index(
    kind: str,
    index: Any,
    users: Iterable[User],
    key_of: Callable[[User], str | None],
    problems: list[Problem],
) -> None:
    """Every entry points to a stored user under that user's key; every user is there once.

    ``key_of`` gives None for a user that must not be in this index (no email).
    """
    stored = {user.id: user for user in users}
    entries_per_user: dict[str, int] = {}
    for key, user in index.items():
        user_id = getattr(user, "id", None)
        if not isinstance(user, User) or stored.get(user_id) is not user:
            problems.append(Problem(f"{kind}-dangling", f"{kind} index entry {key!r} points to no stored user"))
            continue
        entries_per_user[user_id] = entries_per_user.get(user_id, 0) + 1
        if key != key_of(user):
            problems.append(
                Problem(
                    f"{kind}-wrong-key",
                    f"{kind} index entry {key!r} points to user {_name(user)}, whose {kind} key is {key_of(user)!r}",
                )
            )
    for user in stored.values():
        key = key_of(user)
        if key is None:
            continue
        if index.get(key) is not user:
            problems.append(
                Problem(f"{kind}-unindexed", f"user {_name(user)} is not in the {kind} index under {key!r}")
            )
        if entries_per_user.get(user.id, 0) > 1:
            problems.append(
                Problem(
                    f"{kind}-indexed-twice",
                    f"user {_name(user)} is in the {kind} index {entries_per_user[user.id]} times",
                )
            )


def _check_inactive(
    container: UserContainer, users: list[User], generation: int | None, problems: list[Problem]
) -> None:
    """The inactive set holds exactly the username keys of the inactive stored users."""
    inactive = container.inactive
    if inactive is None:
        if generation is not None and generation >= INACTIVE_INDEX_GENERATION:
            problems.append(Problem("inactive-missing", f"generation {generation} but no index of inactive users"))
        return
    _check_structure("inactive", inactive, problems)
    if not container.inactive_complete and generation is not None and generation >= INACTIVE_INDEX_GENERATION:
        problems.append(
            Problem("inactive-incomplete", f"generation {generation} but the inactive index is not complete")
        )
    wanted = {username_key(u.username): u for u in users if not u.is_active}
    active = {username_key(u.username) for u in users if u.is_active}
    for key in inactive:
        if key in wanted:
            continue
        what = "an active user" if key in active else "no stored user"
        problems.append(Problem("inactive-dangling", f"inactive index entry {key!r} is {what}"))
    for key, user in wanted.items():
        if key not in inactive:
            problems.append(Problem("inactive-unindexed", f"inactive user {_name(user)} is not in the inactive index"))


def _wanted_skeletons(users: Iterable[User]) -> dict[str, tuple[User, ...]]:
    wanted: dict[str, tuple[User, ...]] = {}
    for user in users:
        key = username_skeleton(user.username)
        wanted[key] = (*wanted.get(key, ()), user)
    return wanted


def _check_skeleton(
    container: UserContainer,
    users: list[User],
    generation: int | None,
    problems: list[Problem],
    warnings: list[Problem],
) -> None:
    """Each user is in the entry of its username's skeleton, once; look-alike pairs are warnings."""
    index = container.by_skeleton
    if index is None:
        if generation is not None and generation >= SKELETON_INDEX_GENERATION:
            problems.append(Problem("skeleton-missing", f"generation {generation} but no look-alike index"))
        return
    if generation is not None and generation < SKELETON_INDEX_GENERATION:
        return  # being built by `codx-db migrate --apply`: not complete yet, nothing to check
    _check_structure("skeleton", index, problems)
    stored = {user.id: user for user in users}
    wanted = _wanted_skeletons(users)
    for key, entry in index.items():
        members = entry if isinstance(entry, tuple) else (entry,)
        for user in members:
            if not isinstance(user, User) or stored.get(getattr(user, "id", None)) is not user:
                problems.append(Problem("skeleton-dangling", f"look-alike index entry {key!r} holds no stored user"))
            elif user not in wanted.get(key, ()):
                problems.append(
                    Problem(
                        "skeleton-wrong-key",
                        f"look-alike index entry {key!r} holds user {_name(user)}, "
                        f"whose skeleton is {username_skeleton(user.username)!r}",
                    )
                )
    for key, group in wanted.items():
        entry = index.get(key, ())
        for user in group:
            found = sum(1 for other in entry if other is user)
            if found == 0:
                problems.append(
                    Problem("skeleton-unindexed", f"user {_name(user)} is not in the look-alike index under {key!r}")
                )
            elif found > 1:
                problems.append(
                    Problem("skeleton-unindexed", f"user {_name(user)} is in look-alike entry {key!r} {found} times")
                )
        if len(group) > 1:
            # ascii() shows what the eye cannot: '\u0430dmin' beside 'admin'.
            names = ", ".join(
                _name(user) + ("" if user.username.isascii() else f" = {user.username!a}") for user in group
            )
            warnings.append(
                Problem(
                    "username-lookalike",
                    f"{len(group)} users have look-alike names, stored before generation 3: {names}; "
                    "each still logs in by its exact name; to tell them apart, rename all but one "
                    "(`codx-db user update NAME --rename NEW`)",
                )
            )
    if len(warnings) > MAX_WARNINGS:
        more = len(warnings) - MAX_WARNINGS
        del warnings[MAX_WARNINGS:]
        warnings.append(Problem("more-warnings", f"... and {more} more warnings"))


def _sync_skeleton(index: Any, users: list[User]) -> list[str]:
    wanted = _wanted_skeletons(users)
    fixed: list[str] = []
    for key in [k for k in index if k not in wanted]:
        del index[key]
        fixed.append(f"skeleton: removed entry {key!r}")
    for key, group in wanted.items():
        entry = index.get(key, ())
        if len(entry) != len(group) or any(user not in entry for user in group):
            index[key] = group
            fixed.append(f"skeleton: entry {key!r} -> {', '.join(_name(user) for user in group)}")
    return fixed


def _sync_index(kind: str, index: Any, wanted: dict[str, User]) -> list[str]:
    fixed: list[str] = []
    for key in [k for k in index if k not in wanted]:
        del index[key]
        fixed.append(f"{kind}: removed entry {key!r}")
    for key, user in wanted.items():
        if index.get(key) is not user:
            index[key] = user
            fixed.append(f"{kind}: entry {key!r} -> user {_name(user)}")
    return fixed


def _check_lookup_indexes(
    container: UserContainer,
    users: list[User],
    generation: int | None,
    problems: list[Problem],
    warnings: list[Problem],
) -> None:
    """The GitHub, project and admin indexes (generation 5) agree with the users."""
    indexes = {"github": container.by_github, "project": container.by_project, "admin": container.admins}
    if generation is not None and generation < LOOKUP_INDEX_GENERATION:
        return  # being built by `codx-db migrate --apply`: not complete yet, nothing to check
    for kind, index in indexes.items():
        if index is None:
            problems.append(Problem(f"{kind}-missing", f"generation {generation} but no {kind} index"))
        else:
            _check_structure(kind, index, problems)
    stored = {user.id: user for user in users}
    if container.by_github is not None:
        groups = _github_groups(users)
        for key, user in container.by_github.items():
            if not isinstance(user, User) or stored.get(getattr(user, "id", None)) is not user:
                problems.append(Problem("github-dangling", f"github index entry {key!r} points to no stored user"))
            elif user not in groups.get(key, ()):
                problems.append(
                    Problem(
                        "github-wrong-key",
                        f"github index entry {key!r} points to user {_name(user)}, whose github is {user.github!r}",
                    )
                )
        for key, group in groups.items():
            if container.by_github.get(key) not in group:
                problems.append(
                    Problem("github-unindexed", f"user {_name(group[0])} is not in the github index under {key!r}")
                )
            if len(group) > 1:
                warnings.append(
                    Problem(
                        "github-duplicate",
                        f"{len(group)} users share the GitHub login {key!r}, stored before generation 5: "
                        f"{', '.join(_name(user) for user in group)}; a GitHub login finds only the first; "
                        "fix: `codx-db user update NAME --github ''` for the others",
                    )
                )
    if container.by_project is not None:
        wanted = _project_members(users)
        for project_id, members in container.by_project.items():
            for user_id in members:
                if user_id not in wanted.get(project_id, ()):
                    problems.append(
                        Problem("project-dangling", f"project index {project_id!r} holds {user_id!r}, without a grant")
                    )
        for project_id, ids in wanted.items():
            members = container.by_project.get(project_id, ())
            for user_id in sorted(ids):
                if user_id not in members:
                    problems.append(
                        Problem(
                            "project-unindexed",
                            f"user {_name(stored[user_id])} has a grant for {project_id!r} not in the project index",
                        )
                    )
    if container.admins is not None:
        admins = {user.id for user in users if user.role == "admin"}
        for user_id in container.admins:
            if user_id not in admins:
                problems.append(Problem("admin-dangling", f"admin index holds {user_id!r}, not a stored admin"))
        for user_id in sorted(admins - set(container.admins)):
            problems.append(Problem("admin-unindexed", f"admin {_name(stored[user_id])} is not in the admin index"))


def _github_groups(users: Iterable[User]) -> dict[str, list[User]]:
    """GitHub login key -> the users with it, in id order (the first is the one indexed)."""
    groups: dict[str, list[User]] = {}
    for user in users:
        if user.github:
            groups.setdefault(github_key(user.github), []).append(user)
    return groups


def _project_members(users: Iterable[User]) -> dict[str, set[str]]:
    members: dict[str, set[str]] = {}
    for user in users:
        for project_id in project_ids(user):
            members.setdefault(project_id, set()).add(user.id)
    return members


def _sync_lookup_indexes(container: UserContainer, users: list[User]) -> list[str]:
    """Make the GitHub, project and admin indexes agree with the users (each only if it exists)."""
    fixed: list[str] = []
    if container.by_github is not None:
        groups = _github_groups(users)
        for key in [k for k in container.by_github if k not in groups]:
            del container.by_github[key]
            fixed.append(f"github: removed entry {key!r}")
        for key, group in groups.items():
            if container.by_github.get(key) not in group:  # one of duplicates stays; else the first
                container.by_github[key] = group[0]
                fixed.append(f"github: entry {key!r} -> user {_name(group[0])}")
    if container.by_project is not None:
        wanted = _project_members(users)
        for project_id, members in container.by_project.items():
            for user_id in [i for i in members if i not in wanted.get(project_id, ())]:
                members.remove(user_id)
                fixed.append(f"project: removed {user_id!r} from {project_id!r}")
        for project_id, ids in wanted.items():
            members = container.by_project.get(project_id)
            if members is None:
                members = container.by_project[project_id] = OOTreeSet()
            for user_id in sorted(ids):
                if members.add(user_id):
                    fixed.append(f"project: added {user_id!r} to {project_id!r}")
    if container.admins is not None:
        admins = {user.id for user in users if user.role == "admin"}
        for user_id in [i for i in container.admins if i not in admins]:
            container.admins.remove(user_id)
            fixed.append(f"admin: removed {user_id!r}")
        for user_id in sorted(admins):
            if container.admins.add(user_id):
                fixed.append(f"admin: added {user_id!r}")
    return fixed


def _name(user: Any) -> str:
    username = getattr(user, "username", None)
    return f"{username!r} (id {getattr(user, 'id', '?')})"
