"""The user repository: lookups and writes that keep the user container's indexes consistent.

Every writer (UserDB, the importers) goes through these, so the cross-object invariants
(unique username, email and look-alike keys; a login by email never finds another user)
live in one place. Nothing here commits: the caller's unit of work does.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import Iterable, Mapping
from typing import Any

from db.database import UnitOfWork
from db.errors import UserAlreadyExists, UserNotFound
from db.users.indexes import buckets_for, process_shard
from db.users.indexes import prefetch as prefetch_ghosts  # add()'s own `prefetch` is a flag
from db.users.models import (
    USERS_KEY,
    Indexed,
    User,
    UserContainer,
    email_key,
    github_key,
    login_claim,
    username_key,
    username_skeleton,
)
from db.users.normalize import email_for_lookup
from db.users.partitioned import tree_for
from db.users.schemas import UserCreate, projects_to_tuple


def container(uow: UnitOfWork) -> UserContainer:
    """The user container of this unit of work's database."""
    users: UserContainer = uow.root[USERS_KEY]
    return users


def get(users: UserContainer, username: str) -> User:
    """The stored user with this username (case-insensitive); raises UserNotFound."""
    user = users.find_by_username(username)
    if user is None:
        raise UserNotFound(username)
    return user


def get_by_id(users: UserContainer, user_id: str) -> User:
    """The stored user with this id; raises UserNotFound (field "id")."""
    user: User | None = users.users.get(user_id)
    if user is None:
        raise UserNotFound(user_id, field="id")
    return user


def add(users: UserContainer, data: UserCreate, password_hash: str | None, *, prefetch: bool = False) -> User:
    """Store a new user from validated fields (a subclass's extra fields, such as a password, are left out).

    ``prefetch``: first load the buckets it touches in one query (``prefetch_buckets``): for a
    create in its own unit of work; an import's batch loads them once for many users anyway.
    """
    user_id = new_user_id()
    if prefetch:
        prefetch_buckets(users, data.username, data.email, user_id, github=data.github)
    check_unique(users, data.username, data.email, github=data.github)
    fields = data.model_dump(include=set(UserCreate.model_fields) - {"projects"})
    user = User(id=user_id, password_hash=password_hash, projects=projects_to_tuple(data.projects), **fields)
    users.add(user)
    return user


def set_password_hash(user: User, password_hash: str, *, touch: bool = True) -> None:
    """Store a password hash made (or checked) before the unit of work; ``touch=False`` for a rehash."""
    user.password_hash = password_hash
    if touch:
        user.touch()


def release(users: UserContainer, user: User, fields: Mapping[str, Any]) -> Indexed:
    """Drop the index entries of ``user`` that ``fields`` will change; ``apply(..., released=)`` the result.

    For a batch whose users pass keys among themselves (a sync's swaps and cycles): once every
    old key has left, ``apply`` checks each new key against the final state, whatever the order.
    """
    before = users.indexed(user)
    users.unindex_changes(user, before, users.indexed(user, fields))
    return before


def apply(
    users: UserContainer, user: User, fields: Mapping[str, Any], released: Indexed | None = None
) -> dict[str, Any]:
    """Set validated fields on a stored user, keeping the indexes right; return what changed.

    ``released``: what ``release`` returned for the same ``fields`` (the old entries are gone).
    """
    before = users.indexed(user) if released is None else released
    check_unique(
        users,
        fields.get("username", user.username),
        fields.get("email", user.email),
        exclude=user,
        github=fields.get("github", user.github),
    )
    changed = {name: value for name, value in fields.items() if getattr(user, name) != value}
    if changed:
        for name, value in changed.items():
            setattr(user, name, value)
        user.touch()
    if released is not None:
        users.index_changes(user, before)  # puts back what ``release`` took, changed or not
    elif changed:
        users.reindex(user, before)
    return changed


def find_login(users: UserContainer, login: str) -> User | None:
    """The user a login names: a username, else (if it holds an @) an email address.

    The "@" is looked for in the folded login (``login_claim``): NFKC makes a fullwidth at sign
    one, and ``email_for_lookup`` reads such an address as the plain one.
    """
    user = users.find_by_username(login)
    if user is None and login_claim(login) is not None:
        user = users.find_by_email(email_for_lookup(login))
    return user


def prefetch_buckets(
    users: UserContainer, username: str, email: str | None, user_id: str | None = None, *, github: str = ""
) -> None:
    """Load the index buckets ``check_unique`` and a write of these keys touch, in one query.

    With other processes writing the same database, the buckets a create needs have often
    changed there since this process cached them; ZODB makes them ghosts and would load each
    one when first touched, a round trip apiece (2.9 per create with two processes creating at
    once). The ghosts among them, found by descending the internal nodes (``indexes.buckets_for``:
    those the other processes changed load a level at a time, not one by one), go to the storage
    in one ``indexes.prefetch``, with this process's count shard and, for a new user's ``user_id``,
    its bucket of ``users`` (and of ``by_github`` for a GitHub login).
    """
    wanted = [(users.by_username, username_key(username)), (users.by_skeleton, username_skeleton(username))]
    if email:
        wanted += [(users.by_email, email_key(email)), (users.by_username, username_key(email))]
    claim = login_claim(username)
    if claim is not None:
        wanted.append((users.by_email, claim))
    if user_id is not None:
        wanted.append((users.users, user_id))
    if github:
        wanted.append((users.by_github, github_key(github)))
    # A partitioned index (generation 7): descend the key's partition (None until its first key).
    wanted = [(tree_for(tree, key), key) for tree, key in wanted]
    objects = buckets_for(wanted)
    if user_id is not None and users.counts is not None:
        objects.append(users.counts[process_shard()])
    prefetch_ghosts(objects)


def check_unique(
    users: UserContainer, username: str, email: str | None, exclude: User | None = None, *, github: str = ""
) -> None:
    """Raise UserAlreadyExists if another user (not ``exclude``) holds or looks like these keys."""
    other = users.find_by_username(username)
    if other is not None and other is not exclude:
        raise UserAlreadyExists("username", username)
    # Look-alikes and login ambiguity: checked for new names only, so look-alikes stored
    # before generation 3 can still update their other fields.
    if exclude is None or username != exclude.username:
        other = users.find_lookalike(username, exclude)
        if other is not None:
            raise UserAlreadyExists("username", username, like=other.username)
        other = users.find_by_email(username) if login_claim(username) is not None else None
        if other is not None and other is not exclude:  # a login by that email would find this user
            raise UserAlreadyExists("email", username)
    if email:
        other = users.find_by_email(email)
        if other is not None and other is not exclude:
            raise UserAlreadyExists("email", email)
        if exclude is None or email != exclude.email:
            other = users.find_by_username(email)
            if other is not None and other is not exclude:
                raise UserAlreadyExists("username", email)
    # GitHub logins: checked when new to this user, so users sharing one from before
    # generation 5 (``codx-db check`` warns) can still change their other fields.
    if github and (exclude is None or github_key(github) != github_key(exclude.github)):
        other = users.find_by_github(github)
        if other is not None and other is not exclude:
            raise UserAlreadyExists("github", github)


def check_unique_all(users: UserContainer, keys: Iterable[tuple[str, str | None, str]], first: int = 0) -> None:
    """``check_unique`` for each (username, email, github) of an import: UserAlreadyExists names ``records[N]``.

    ``first``: the position in the caller's records of the first pair (a batch of them).
    """
    for index, (username, email, github) in enumerate(keys, first):
        try:
            check_unique(users, username, email, github=github)
        except UserAlreadyExists as exc:
            raise UserAlreadyExists(exc.field, exc.value, where=f"records[{index}]", like=exc.like) from None


_ID_SALT = secrets.token_bytes(8)
_id_prefix: tuple[int, str] = (-1, "")  # (pid, prefix) of the process that computed it


def process_id_prefix() -> str:
    """4 hex digits naming this process in its new ids: a hash of a per-import salt and the pid.

    Hashed, not ``salt ^ pid``: processes forked from one parent share the salt and have nearby
    pids, which differ in the low bits only; the ``users`` index partitions ids by their first two
    digits (``partitioned.PREFIX_LENGTH``), so those processes would all write one partition.
    """
    global _id_prefix
    pid = os.getpid()
    if _id_prefix[0] != pid:
        digest = hashlib.blake2b(pid.to_bytes(8, "little"), digest_size=2, key=_ID_SALT).hexdigest()
        _id_prefix = (pid, digest)
    return _id_prefix[1]


def new_user_id() -> str:
    """32 hex digits: a per-process prefix, the creation time in microseconds, 56 random bits.

    Within a process ids grow with time, so a batch of creates lands in a few buckets of the
    ``users`` index instead of one per user (a random uuid4 scatters them). The per-process
    prefix puts each process in its own partition of that index (generation 7), where its
    inserts and bucket splits do not conflict with another process's.
    """
    return f"{process_id_prefix()}{time.time_ns() // 1000:014x}{secrets.randbits(56):014x}"
