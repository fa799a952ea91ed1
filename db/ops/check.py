"""Consistency check of the user store, and its repair (``codx-db check [--repair]``).

The ``users`` BTree (id -> ``User``) is the source of truth. The username and email indexes,
the set of inactive users' username keys (generation 2), the look-alike (skeleton) index
(generation 3) and the ``Length`` count are derived from it, so they can be verified against it and rebuilt
from it. Tokens and API keys of a user who no longer exists are revoked by ``repair`` (dead secrets:
API keys never expire). A check reads one consistent snapshot (a single
unit of work) and never writes.

What cannot be derived is never "repaired": two users sharing a username or an email, a
user stored under the wrong id, something that is not a user, an unknown generation or a
damaged BTree need a person to decide. ``repair`` then changes nothing and says why.

Look-alike usernames stored before generation 3 are a *warning*, not a problem: both users
keep working, and only a person can choose whom to rename.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import migrations
from db.database import Database, UnitOfWork
from db.ops.check_claims import check_claims, claim_of, wanted_claims
from db.ops.check_credentials import check_credentials, drop_orphan_credentials
from db.ops.check_lookups import check_layout, check_lookup_indexes, sync_lookup_indexes
from db.ops.check_skeleton import check_skeleton, sync_skeleton
from db.ops.check_users import valid_users
from db.ops.reports import CheckReport, Problem, RepairReport, describe_user
from db.users.indexes import IndexSet, IndexTree, check_index
from db.users.layout import PARTITIONED
from db.users.models import USERS_KEY, User, UserContainer, email_key, entry_id, stored_user, username_key
from db.users.partitioned import PartitionedTree
from migrations.runner import read_generation

# The generation that added ``UserContainer.inactive``; below it the set may be absent.
INACTIVE_INDEX_GENERATION = 2
# The generation that added ``UserContainer.by_skeleton``; below it the index may be absent
# or half built by an interrupted migration (``migrate --apply`` finishes it).
SKELETON_INDEX_GENERATION = 3
MAX_WARNINGS = 100
# Warnings about entries that work but that ``repair`` rewrites (in a database with no problem too).
REWRITTEN_BY_REPAIR = frozenset({"index-user-entries"})


def check(database: Database) -> CheckReport:
    """Check the database in one read-only unit of work."""
    return database.run(lambda uow: check_root(uow.root))


def repair(database: Database) -> RepairReport:
    """Rebuild the indexes and the count from the users when every problem is repairable.

    Also run, with no problem, for ``REWRITTEN_BY_REPAIR`` warnings: name index entries that
    hold a ``User`` at generation 8 (written by a process of older code) become ids.

    Runs as one unit of work (retried after a conflict), then checks again in a new one.
    """

    def run(uow: UnitOfWork) -> tuple[CheckReport, list[str]]:
        before = check_root(uow.root)
        rewrite = not before.problems and any(w.code in REWRITTEN_BY_REPAIR for w in before.warnings)
        if not (before.repairable or rewrite):
            return before, []
        container = uow.root[USERS_KEY]
        fixed = rebuild_indexes(container) + drop_orphan_credentials(uow.root, container.users)
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
        problems.append(Problem(code="container-missing", message=f"the root holds no user container at {USERS_KEY!r}"))
        return CheckReport(
            generation=generation,
            code_generation=migrations.GENERATION,
            users=0,
            count=None,
            username_entries=0,
            email_entries=0,
            problems=problems,
        )

    for name in ("users", "by_username", "by_email"):
        _check_structure(name, getattr(container, name), problems)

    users = valid_users(container, problems)
    _check_index("username", container.by_username, users, _username_key, problems)
    _check_index("email", container.by_email, users, _email_key, problems, also=claim_of)
    _check_inactive(container, users, generation, problems)
    warnings: list[Problem] = []
    if generation is not None and 0 <= generation < migrations.MINIMUM_GENERATION:
        # Checked as it is (a clean old database is clean), but this code will not use it yet.
        warnings.append(
            Problem(
                code="generation-old",
                message=f"the database is at generation {generation}; this code reads and writes it from "
                f"generation {migrations.MINIMUM_GENERATION} (at least {migrations.MINIMUM_GENERATION}): "
                "run `codx-db migrate --apply` first",
            )
        )
    # Layout warnings first: a hundred look-alike warnings must not truncate away the one that
    # decides whether repair rewrites user entries (REWRITTEN_BY_REPAIR).
    check_layout(container, generation, warnings)
    if container.by_skeleton is None:
        _missing(generation, SKELETON_INDEX_GENERATION, "skeleton-missing", "look-alike index", problems)
    elif generation is None or generation >= SKELETON_INDEX_GENERATION:  # below: being built by migrate
        _check_structure("skeleton", container.by_skeleton, problems)
        check_skeleton(container.by_skeleton, users, problems, warnings)
    check_claims(container.by_email, users, generation, problems, warnings)
    check_lookup_indexes(container, users, generation, problems, warnings, _check_structure)
    check_credentials(root, container.users, generation, problems, warnings, _check_structure)
    if len(warnings) > MAX_WARNINGS:
        more = len(warnings) - MAX_WARNINGS
        del warnings[MAX_WARNINGS:]
        warnings.append(Problem(code="more-warnings", message=f"... and {more} more warnings"))
    count = container.length()
    if count != len(container.users):
        problems.append(
            Problem(
                code="count-mismatch", message=f"the stored count is {count} but there are {len(container.users)} users"
            )
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
    # Misplaced keys first: the syncs below look keys up, and a lookup never finds one of them.
    fixed = [
        line
        for name in PARTITIONED
        if isinstance(index := getattr(container, name), PartitionedTree)
        for line in index.rehome(name, derived=name != "users")  # the others are rebuilt from users below
    ]
    users = list(container.users.values())
    fixed += _sync_index("username", container.by_username, {username_key(u.username): u for u in users})
    emails = {email_key(u.email): u for u in users if u.email}
    fixed += _sync_index("email", container.by_email, wanted_claims(users, emails))  # emails win a shared key
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
        fixed += sync_skeleton(container.by_skeleton, users)
    fixed += sync_lookup_indexes(container, users)
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
        problems.append(Problem(code="generation-unknown", message="the stored generation is not a number"))
        return None
    if generation is None:
        problems.append(Problem(code="generation-unknown", message="the database has no generation (never installed)"))
    elif not 0 <= generation <= migrations.GENERATION:
        problems.append(
            Problem(
                code="generation-unknown",
                message=f"the database is at generation {generation}, "
                f"unknown to this code (0..{migrations.GENERATION})",
            )
        )
    return generation


def _check_structure(name: str, tree: Any, problems: list[Problem]) -> None:
    from BTrees.check import check as check_btree

    try:
        if isinstance(tree, PartitionedTree):
            tree._check()
            for partition, key in tree.misplaced():
                if name == "users" and tree.doubled(partition, key):  # two users, one id: for a person
                    code, why = "users-id-twice", "and another user under the same id in its own"
                else:
                    code, why = "index-wrong-partition", "where a lookup does not find it"
                problems.append(
                    Problem(code=code, message=f"the {name} index holds {key!r} in partition {partition!r}, {why}")
                )
        elif isinstance(tree, IndexTree | IndexSet):
            check_index(tree)  # BTrees' checker knows only its own exact types, not these subclasses
        else:
            check_btree(tree)
    except AssertionError as exc:
        first = (str(exc).strip().splitlines() or ["damaged"])[0]
        problems.append(Problem(code="btree-damaged", message=f"the {name} BTree is damaged: {first}"))


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
    also: Callable[[User], str | None] | None = None,
) -> None:
    """Every entry points to a stored user under that user's key; every user is there once.

    ``key_of`` gives None for a user that must not be in this index (no email); ``also`` a
    second key a user's entry may have here (a login claim: db/ops/check_claims.py checks those).
    """
    stored = {user.id: user for user in users}
    entries_per_user: dict[str, int] = {}
    for key, entry in index.items():
        user = stored_user(entry, stored)
        if user is None:
            problems.append(
                Problem(code=f"{kind}-dangling", message=f"{kind} index entry {key!r} points to no stored user")
            )
            continue
        if also is not None and key == also(user):
            continue
        entries_per_user[user.id] = entries_per_user.get(user.id, 0) + 1
        if key != key_of(user):
            problems.append(
                Problem(
                    code=f"{kind}-wrong-key",
                    message=f"{kind} index entry {key!r} points to user {describe_user(user)}, "
                    f"whose {kind} key is {key_of(user)!r}",
                )
            )
    for user in stored.values():
        key = key_of(user)
        if key is None:
            continue
        if stored_user(index.get(key), stored) is not user:
            problems.append(
                Problem(
                    code=f"{kind}-unindexed",
                    message=f"user {describe_user(user)} is not in the {kind} index under {key!r}",
                )
            )
        if entries_per_user.get(user.id, 0) > 1:
            problems.append(
                Problem(
                    code=f"{kind}-indexed-twice",
                    message=f"user {describe_user(user)} is in the {kind} index {entries_per_user[user.id]} times",
                )
            )


def _check_inactive(
    container: UserContainer, users: list[User], generation: int | None, problems: list[Problem]
) -> None:
    """The inactive set holds exactly the username keys of the inactive stored users."""
    inactive = container.inactive
    if inactive is None:
        _missing(generation, INACTIVE_INDEX_GENERATION, "inactive-missing", "index of inactive users", problems)
        return
    _check_structure("inactive", inactive, problems)
    if not container.inactive_complete and generation is not None and generation >= INACTIVE_INDEX_GENERATION:
        problems.append(
            Problem(
                code="inactive-incomplete", message=f"generation {generation} but the inactive index is not complete"
            )
        )
    wanted = {username_key(u.username): u for u in users if not u.is_active}
    active = {username_key(u.username) for u in users if u.is_active}
    for key in inactive:
        if key in wanted:
            continue
        what = "an active user" if key in active else "no stored user"
        problems.append(Problem(code="inactive-dangling", message=f"inactive index entry {key!r} is {what}"))
    for key, user in wanted.items():
        if key not in inactive:
            problems.append(
                Problem(
                    code="inactive-unindexed",
                    message=f"inactive user {describe_user(user)} is not in the inactive index",
                )
            )


def _missing(generation: int | None, since: int, code: str, what: str, problems: list[Problem]) -> None:
    """An index is absent: a problem when the generation (``since`` or later) says it should exist."""
    if generation is not None and generation >= since:
        problems.append(Problem(code=code, message=f"generation {generation} but no {what}"))


def _sync_index(kind: str, index: Any, wanted: dict[str, User]) -> list[str]:
    fixed: list[str] = []
    for key in [k for k in index if k not in wanted]:
        del index[key]
        fixed.append(f"{kind}: removed entry {key!r}")
    converted = 0
    for key, user in wanted.items():
        entry = index.get(key)
        if entry_id(entry) != user.id:
            index[key] = user.id
            fixed.append(f"{kind}: entry {key!r} -> user {describe_user(user)}")
        elif entry != user.id:  # the user itself (written by older code): right, but not an id
            index[key] = user.id
            converted += 1
    if converted:
        fixed.append(f"{kind}: {converted} entries naming a user object now hold its id")
    return fixed
