"""``codx-db check`` for the codx-junior lookup indexes (generation 5) and the index layout (generation 6).

Kept apart from db/ops/check.py (the username, email, look-alike and inactive indexes) so each
module stays readable; check.py calls these two functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from db.ops.reports import Problem, describe_user
from db.users.indexes import IndexSet
from db.users.layout import GENERATION6_CLASSES, INDEX_CLASSES, NAME_INDEXES
from db.users.models import User, UserContainer, entry_members, github_key, project_ids

# The generation that added the GitHub, project and admin indexes (codx-junior lookups).
LOOKUP_INDEX_GENERATION = 5
# The generation that made the indexes IndexTree/IndexSet and sharded the count.
LAYOUT_GENERATION = 6
# The generation that put the id and name indexes in partitions (IndexTrees are expected at 6).
PARTITION_GENERATION = 7
# The generation whose name indexes hold user ids (``User`` entries before: still read).
IDS_GENERATION = 8

CheckStructure = Callable[[str, Any, list[Problem]], None]


def check_lookup_indexes(
    container: UserContainer,
    users: list[User],
    generation: int | None,
    problems: list[Problem],
    warnings: list[Problem],
    check_structure: CheckStructure,
) -> None:
    """The GitHub, project and admin indexes (generation 5) agree with the users."""
    indexes = {"github": container.by_github, "project": container.by_project, "admin": container.admins}
    if generation is not None and generation < LOOKUP_INDEX_GENERATION:
        return  # being built by `codx-db migrate --apply`: not complete yet, nothing to check
    for kind, index in indexes.items():
        if index is None:
            problems.append(_problem(f"{kind}-missing", f"generation {generation} but no {kind} index"))
        else:
            check_structure(kind, index, problems)
    stored = {user.id: user for user in users}
    if container.by_github is not None:
        groups = _github_groups(users)
        for key, user in container.by_github.items():
            if not isinstance(user, User) or stored.get(str(getattr(user, "id", ""))) is not user:
                problems.append(_problem("github-dangling", f"github index entry {key!r} points to no stored user"))
            elif user not in groups.get(key, ()):
                problems.append(
                    _problem(
                        "github-wrong-key",
                        f"github index entry {key!r} points to user {describe_user(user)}, "
                        f"whose github is {user.github!r}",
                    )
                )
        for key, group in groups.items():
            if container.by_github.get(key) not in group:
                problems.append(
                    _problem(
                        "github-unindexed", f"user {describe_user(group[0])} is not in the github index under {key!r}"
                    )
                )
            if len(group) > 1:
                warnings.append(
                    _problem(
                        "github-duplicate",
                        f"{len(group)} users share the GitHub login {key!r}, stored before generation 5: "
                        f"{', '.join(describe_user(user) for user in group)}; a GitHub login finds only the first; "
                        "fix: `codx-db user update NAME --github ''` for the others",
                    )
                )
    if container.by_project is not None:
        wanted = _project_members(users)
        for project_id, members in container.by_project.items():
            for user_id in members:
                if user_id not in wanted.get(project_id, ()):
                    problems.append(
                        _problem("project-dangling", f"project index {project_id!r} holds {user_id!r}, without a grant")
                    )
        for project_id, ids in wanted.items():
            members = container.by_project.get(project_id, ())
            for user_id in sorted(ids):
                if user_id not in members:
                    problems.append(
                        _problem(
                            "project-unindexed",
                            f"user {describe_user(stored[user_id])} has a grant for {project_id!r} "
                            "not in the project index",
                        )
                    )
    if container.admins is not None:
        admins = {user.id for user in users if user.role == "admin"}
        for user_id in container.admins:
            if user_id not in admins:
                problems.append(_problem("admin-dangling", f"admin index holds {user_id!r}, not a stored admin"))
        for user_id in sorted(admins - set(container.admins)):
            problems.append(
                _problem("admin-unindexed", f"admin {describe_user(stored[user_id])} is not in the admin index")
            )


def check_layout(container: UserContainer, generation: int | None, warnings: list[Problem]) -> None:
    """Warn about an index of a class older than its generation's (it works; concurrent writers conflict more).

    Both classes hold the same entries and answer alike, so this is a warning, not a problem:
    only the layout differs. Below generation 6 the old classes are expected; at 6 the users
    index is one ``IndexTree``, from 7 a ``PartitionedTree``.
    """
    if generation is None or generation < LAYOUT_GENERATION:
        return
    expected = GENERATION6_CLASSES if generation < PARTITION_GENERATION else INDEX_CLASSES
    for name, cls in expected.items():
        index = getattr(container, name)
        if index is not None and type(index) is not cls:
            warnings.append(
                _problem(
                    "index-old-layout",
                    f"generation {generation} but the {name} index is a {type(index).__name__}, not a {cls.__name__}: "
                    "it works, with more conflicts between concurrent writers",
                )
            )
    if container.counts is None:
        warnings.append(_problem("count-not-sharded", f"generation {generation} but the user count is not sharded"))
    if generation < IDS_GENERATION:
        return
    for name in NAME_INDEXES:
        index = getattr(container, name)
        entries = () if index is None else index.values()
        old = sum(any(isinstance(member, User) for member in entry_members(e)) for e in entries)
        if old:
            warnings.append(
                _problem(
                    "index-user-entries",
                    f"generation {generation} but {old} entries of the {name} index name a user object, not its id: "
                    "they work, and a commit that rewrites their bucket pickles more; `codx-db check --repair` "
                    "turns them into ids",
                )
            )


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


def sync_lookup_indexes(container: UserContainer, users: list[User]) -> list[str]:
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
                fixed.append(f"github: entry {key!r} -> user {describe_user(group[0])}")
    if container.by_project is not None:
        wanted = _project_members(users)
        for project_id, members in container.by_project.items():
            for user_id in [i for i in members if i not in wanted.get(project_id, ())]:
                members.remove(user_id)
                fixed.append(f"project: removed {user_id!r} from {project_id!r}")
        for project_id, ids in wanted.items():
            members = container.by_project.get(project_id)
            if members is None:
                members = container.by_project[project_id] = IndexSet()
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


def _problem(code: str, message: str) -> Problem:
    return Problem(code=code, message=message)
