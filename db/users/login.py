"""Logging in: a password checked against the stored hash, then (``UserDB.login``) a token.

``verify`` is ``UserDB.authenticate``'s work: the hash is read in a short unit of work and
verified outside it (argon2 takes tens of milliseconds, no connection is held meanwhile).
It answers the user *and the hash the password matched*, so a login can issue its token in a
unit of work that checks the user still has that hash: a password change (or a deactivation)
committed between the check and the token wins, and no token is issued for the old password
(db/users/credential_service.py ``issue_login_token``).

Unknown and inactive users cost the same time as a wrong password of an argon2 user.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, NamedTuple

from db.database import UnitOfWork
from db.errors import shown
from db.users import repository
from db.users.history import record_note
from db.users.keys import fits
from db.users.models import UserContainer
from db.users.passwords import MAX_PASSWORD_LENGTH, dummy_verify, hash_cost_problem, hash_password, verify_password
from db.users.schemas import CodxUser

if TYPE_CHECKING:
    from db.users.service import UserService

log = logging.getLogger("db.user_db")  # the name operators filter on since the first version


class Verified(NamedTuple):
    """A user whose password matched, and the stored hash it matched (after a rehash: the new one)."""

    user: CodxUser
    password_hash: str


def verify(service: UserService, username_or_email: str, password: str, first_login: bool = False) -> Verified | None:
    """The active user this login and password name, with the hash they matched; else None.

    ``first_login``: an active user with no password yet (codx-junior's default admin, a GitHub
    user) takes this one (the policy applies: InvalidUserData); of two racing, one wins.
    """
    if not isinstance(username_or_email, str) or not isinstance(password, str):
        return None
    if len(password) > MAX_PASSWORD_LENGTH:
        # No such password can have been set: refuse before hashing megabytes. Depends on
        # the input alone, so answering faster tells nothing about the account.
        return None
    if not fits(username_or_email):
        # No such login is stored, and folding it would cost the square of its length.
        dummy_verify(password)
        return None
    login = username_or_email

    def lookup(users: UserContainer) -> tuple[CodxUser | None, str | None]:
        user = repository.find_login(users, login)
        if user is None:
            return None, None
        return CodxUser.from_model(user), user.password_hash

    found, stored_hash = service._read(lookup)
    if found is None:
        dummy_verify(password)
        return None
    if stored_hash is None and first_login and found.is_active:
        claimed = service.credentials.claim_first_password(found.username, password)
        return None if claimed is None else Verified(*claimed)
    problem = None if stored_hash is None else hash_cost_problem(stored_hash)
    if problem is not None:
        log.warning(
            "user %s cannot log in: its stored password hash is refused (%s); set a new one with `codx-db user passwd`",
            shown(found.username),
            problem,
        )
        dummy_verify(password)
        return None
    ok, needs_rehash = verify_password(stored_hash, password)
    if not ok or not found.is_active or stored_hash is None:
        return None
    if not needs_rehash or service.database.open().storage.isReadOnly():
        return Verified(found, stored_hash)  # read-only: the old hash still verifies; rehash later
    user_id = found.id
    new_hash = hash_password(password)

    def rehash(uow: UnitOfWork) -> tuple[CodxUser, str | None] | None:
        user = repository.container(uow).users.get(user_id)
        if user is None or not user.is_active:
            return None
        # Only replace the hash we verified: a concurrent set_password wins.
        if user.password_hash == stored_hash:
            repository.set_password_hash(user, new_hash, touch=False)  # the same password: no change
            # In a shared batch the transaction names no one: its history entry needs both.
            service.record_actor(uow, user_id)
            record_note(uow.transaction, user_id, f"codx-db: rehash password of {user.username}")
        return CodxUser.from_model(user), user.password_hash

    answer = service.write(rehash, f"rehash password of {found.username}")
    if answer is None:
        return None
    user, current = answer
    if current == new_hash:
        return Verified(user, new_hash)
    # Replaced meanwhile: by another login's rehash of this same password (two tabs), or by a
    # password change. The password counts only if it matches the hash stored now.
    if current is None or hash_cost_problem(current) is not None or not verify_password(current, password)[0]:
        return None
    return Verified(user, current)
