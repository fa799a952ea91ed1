"""``codx-db check`` for the look-alike (skeleton) index of usernames (generation 3; user ids from 8).

Kept apart from db/ops/check.py, like check_lookups.py and check_credentials.py; check.py decides
whether the index should exist and checks its BTree structure, then calls these.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from db.ops.reports import Problem, describe_user
from db.users.models import User, entry_id, entry_members, stored_user, username_skeleton


def _wanted(users: Iterable[User]) -> dict[str, tuple[User, ...]]:
    wanted: dict[str, tuple[User, ...]] = {}
    for user in users:
        key = username_skeleton(user.username)
        wanted[key] = (*wanted.get(key, ()), user)
    return wanted


def check_skeleton(index: Any, users: list[User], problems: list[Problem], warnings: list[Problem]) -> None:
    """Each user is in the entry of its username's skeleton, once; look-alike pairs are warnings."""
    stored = {user.id: user for user in users}
    wanted = _wanted(users)
    for key, entry in index.items():
        for member in entry_members(entry):
            user = stored_user(member, stored)
            if user is None:
                problems.append(
                    Problem(code="skeleton-dangling", message=f"look-alike index entry {key!r} holds no stored user")
                )
            elif user not in wanted.get(key, ()):
                problems.append(
                    Problem(
                        code="skeleton-wrong-key",
                        message=f"look-alike index entry {key!r} holds user {describe_user(user)}, "
                        f"whose skeleton is {username_skeleton(user.username)!r}",
                    )
                )
    for key, group in wanted.items():
        entry = index.get(key, ())
        for user in group:
            found = sum(1 for other in entry if entry_id(other) == user.id)
            if found == 0:
                problems.append(
                    Problem(
                        code="skeleton-unindexed",
                        message=f"user {describe_user(user)} is not in the look-alike index under {key!r}",
                    )
                )
            elif found > 1:
                problems.append(
                    Problem(
                        code="skeleton-unindexed",
                        message=f"user {describe_user(user)} is in look-alike entry {key!r} {found} times",
                    )
                )
        if len(group) > 1:
            # ascii() shows what the eye cannot: '\u0430dmin' beside 'admin'.
            names = ", ".join(
                describe_user(user) + ("" if user.username.isascii() else f" = {user.username!a}") for user in group
            )
            warnings.append(
                Problem(
                    code="username-lookalike",
                    message=f"{len(group)} users have look-alike names, stored before generation 3: {names}; "
                    "each still logs in by its exact name; to tell them apart, rename all but one "
                    "(`codx-db user update NAME --rename NEW`)",
                )
            )


def sync_skeleton(index: Any, users: list[User]) -> list[str]:
    """Make the look-alike index say what the users' names say (``check --repair``)."""
    wanted = _wanted(users)
    fixed: list[str] = []
    for key in [k for k in index if k not in wanted]:
        del index[key]
        fixed.append(f"skeleton: removed entry {key!r}")
    converted = 0
    for key, group in wanted.items():
        entry = index.get(key, ())
        ids = tuple(user.id for user in group)
        if len(entry) != len(ids) or set(map(entry_id, entry)) != set(ids):
            index[key] = ids
            fixed.append(f"skeleton: entry {key!r} -> {', '.join(describe_user(user) for user in group)}")
        elif set(entry) != set(ids):  # the users themselves (written by older code): right, but not ids
            index[key] = ids
            converted += 1
    if converted:
        fixed.append(f"skeleton: {converted} entries naming user objects now hold their ids")
    return fixed
