"""``codx-db check`` for the login claims in ``by_email`` (generation 9, migrations/evolve9.py).

A username holding an "@" also holds its key in ``by_email``, naming its user (whose email may
differ), so a concurrent create with that email collides with it. Kept apart from
db/ops/check.py like check_skeleton.py: check.py checks the email entries and lets these pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from db.ops.reports import Problem, describe_user
from db.users.models import User, email_key, login_claim, stored_user

CLAIMS_GENERATION = 9


def claim_of(user: User) -> str | None:
    """The claim ``user`` holds apart from its email's entry (None: none, or the same key)."""
    claim = login_claim(user.username)
    if claim is None or (user.email and email_key(user.email) == claim):
        return None
    return claim


def check_claims(
    index: Any, users: Iterable[User], generation: int | None, problems: list[Problem], warnings: list[Problem]
) -> None:
    """Each claim is there, naming its user; a claim held by another user's email is a warning.

    That other user's email predates the claims (the race they close, or data from before the
    check existed): a login by that string finds the first user by username, so an operator decides.
    """
    stored = {user.id: user for user in users}
    for user in stored.values():
        claim = claim_of(user)
        if claim is None:
            continue
        entry = index.get(claim)
        holder = stored_user(entry, stored)
        if holder is user:
            continue
        if entry is None:
            if generation is None or generation >= CLAIMS_GENERATION:  # below: being added by migrate
                problems.append(
                    Problem(
                        code="email-claim-missing",
                        message=f"user {describe_user(user)}'s username is a login by email, "
                        f"but the email index has no entry {claim!r} for it",
                    )
                )
        elif holder is not None and holder.email and email_key(holder.email) == claim:
            warnings.append(
                Problem(
                    code="login-ambiguous",
                    message=f"user {describe_user(user)}'s username {claim!r} is the email of user "
                    f"{describe_user(holder)}: a login by it finds the first one",
                )
            )


def wanted_claims(users: Iterable[User], emails: dict[str, User]) -> dict[str, User]:
    """``emails`` (email key -> user) with the claims added where no email holds the key."""
    wanted = dict(emails)
    for user in users:
        claim = claim_of(user)
        if claim is not None and claim not in wanted:
            wanted[claim] = user
    return wanted
