"""Persistent models: ``User`` and the ``UserContainer`` with its BTree indexes.

These objects live in the database; they never leave a unit of work (callers get
``db.schemas.CodxUser`` snapshots). Rules that keep them safe in ZODB:

* index keys are normalised ``str`` only (a total, stable order for BTrees);
* no plain mutable ``dict``/``list`` attributes (ZODB would not notice in-place changes):
  reassign, or use persistent containers;
* the count is ``Length`` shards (db/users/indexes.py): O(1), concurrent changes merge, and
  processes seldom queue on one object; the indexes are ``IndexTree``/``IndexSet`` (generation 6).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

from BTrees.Length import Length
from BTrees.OOBTree import OOBTree, OOTreeSet
from persistent import Persistent

from db.users.indexes import IndexSet, IndexTree, ShardedLength, new_counts

# The key functions live in db/users/keys.py; most callers import them from here.
from db.users.keys import email_key as email_key
from db.users.keys import github_key as github_key
from db.users.keys import login_claim as login_claim
from db.users.keys import username_key as username_key
from db.users.keys import username_skeleton as username_skeleton
from db.users.partitioned import PartitionedTree

USERS_KEY = "codx_db.users"


def utcnow() -> datetime:
    """Timezone-aware now, the only kind of timestamp stored."""
    return datetime.now(UTC)


def entry_id(value: Any) -> Any:
    """The user id a name index entry holds: the entry itself (generation 8) or, before, its ``User``'s id."""
    return value.id if isinstance(value, User) else value


def entry_members(entry: Any) -> tuple[Any, ...]:
    """What a name index entry names: the look-alike index's tuple, or a 1-tuple of any other entry."""
    return entry if isinstance(entry, tuple) else (entry,)


def stored_user(entry: Any, stored: Mapping[str, User]) -> User | None:
    """The user of ``stored`` (by id) a name index entry names, or None: it names no stored user."""
    if isinstance(entry, User):
        user_id = getattr(entry, "id", None)
        return entry if isinstance(user_id, str) and stored.get(user_id) is entry else None
    return stored.get(entry) if isinstance(entry, str) else None


def project_ids(user: User) -> frozenset[str]:
    """The ids of the projects a user has a grant for (3- or 4-field stored grants alike)."""
    return frozenset(entry[0] for entry in user.projects)


class User(Persistent):
    """A stored user. Attributes are plain immutable values; the hash never leaves UserDB."""

    # Class-level defaults give old pickles a value for attributes added later
    # (a generation then writes them into each object).
    email: str | None = None
    full_name: str = ""
    is_active: bool = True
    is_superuser: bool = False
    password_hash: str | None = None
    # Generation 1: codx-junior's own user fields. ``projects`` is an immutable tuple of
    # ``(project_id, permissions, children)`` sorted by project id: replaced whole, never
    # changed in place, so ZODB always sees the change.
    avatar: str = ""
    theme: str = "dim"
    role: str = "user"
    github: str = ""
    # Stored grants ``(project_id, permissions, children, apps)`` sorted by project id (see
    # db/users/schemas.py ``ProjectTuple``); databases before generation 5 hold 3-field ones.
    projects: tuple[tuple[Any, ...], ...] = ()
    # Generation 5: codx-junior's app names (order and duplicates kept).
    apps: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        id: str,
        username: str,
        email: str | None = None,
        full_name: str = "",
        is_active: bool = True,
        is_superuser: bool = False,
        password_hash: str | None = None,
        created_at: datetime | None = None,
        avatar: str = "",
        theme: str = "dim",
        role: str = "user",
        github: str = "",
        projects: tuple[tuple[Any, ...], ...] = (),
        apps: tuple[str, ...] = (),
    ) -> None:
        self.id = id
        self.username = username
        self.email = email
        self.full_name = full_name
        self.is_active = is_active
        self.is_superuser = is_superuser
        self.password_hash = password_hash
        self.created_at = created_at or utcnow()
        self.updated_at = self.created_at
        self.avatar = avatar
        self.theme = theme
        self.role = role
        self.github = github
        self.projects = projects
        self.apps = apps

    def touch(self) -> None:
        """Record a change now."""
        self.updated_at = utcnow()

    def __repr__(self) -> str:  # never shows the hash
        return f"<User {self.username!r} id={self.id}>"


def _email_keys(username: str, email: str | None) -> set[str]:
    """What a user with these fields holds in ``by_email``: its email's key and its login claim."""
    keys = {email_key(email)} if email else set()
    claim = login_claim(username)
    if claim is not None:
        keys.add(claim)
    return keys


class Indexed(NamedTuple):
    """What a user is indexed under, taken before a change so ``reindex`` moves only what changed."""

    username: str
    email: str | None
    is_active: bool
    github: str
    project_ids: frozenset[str]
    admin: bool


class UserContainer(Persistent):
    """All users: ``users`` by id, unique indexes by username key and email key, a count."""

    # Generation 2: username keys of inactive users, so ``list(active=...)`` filters on keys
    # without loading every user. None in a database not yet evolved to generation 2.
    inactive: OOTreeSet | None = None
    # True once the set holds every inactive user: generation 2 fills it in batches, and a
    # half-built set must not be used to filter (writers keep it up to date all along).
    inactive_complete: bool = False
    # Generation 3: username skeleton -> tuple of the ids of the users whose names look alike
    # under it (one, except for look-alikes stored before generation 3: they keep their names).
    # New names must not join an existing entry. None until generation 3 creates it; writers
    # keep it up to date from the moment it exists.
    by_skeleton: PartitionedTree | None = None
    # Generation 5 (codx-junior lookups); None until evolve5 creates them, kept up to date by
    # writers from the moment they exist:
    # ``github_key(login)`` -> User (unique; look-alike logins of GitHub are the same login);
    by_github: OOBTree | None = None
    # project id (exact) -> OOTreeSet of the ids of users with a grant for it (may be empty);
    by_project: OOBTree | None = None
    # ids of the users with role admin (codx-junior gives admins every project).
    admins: OOTreeSet | None = None
    # Generation 6: the count in shards (None before: a single ``Length`` stored as ``length``).
    counts: tuple[Length, ...] | None = None

    def __init__(self) -> None:
        # Generation 7: the id and name indexes in partitions by key prefix (db/users/partitioned.py).
        # Generation 8: the name indexes hold user ids, not ``User`` references. Every commit
        # re-pickles the buckets it changed, and ZODB's ``persistent_id`` runs in Python for each
        # reference in them (a str is pickled in C): ~36% of a group commit's client time went to
        # pickling, two thirds of it there (bench/README.md "Name indexes hold ids"). ``user_for``
        # reads both forms: entries stored before generation 8 name the ``User`` itself.
        self.users: PartitionedTree = PartitionedTree()  # id -> User
        self.by_username: PartitionedTree = PartitionedTree()  # username_key -> id (sorted listing)
        self.by_email: PartitionedTree = PartitionedTree()  # email_key -> id
        self.counts = new_counts()
        self.inactive = IndexSet()
        self.inactive_complete = True
        self.by_skeleton = PartitionedTree()
        self.by_github = IndexTree()
        self.by_project = IndexTree()
        self.admins = IndexSet()

    @property
    def length(self) -> Any:
        """The count, as a ``Length`` (``()``, ``change``, ``set``): the shards' view, or the one of old databases."""
        counts = self.counts  # reading an attribute loads a ghost's state into __dict__
        return self.__dict__["length"] if counts is None else ShardedLength(counts)

    def __len__(self) -> int:
        return int(self.length())

    def add(self, user: User) -> None:
        """Insert a user the caller has checked is unique."""
        self.users[user.id] = user
        self.by_username[username_key(user.username)] = user.id
        for key in _email_keys(user.username, user.email):
            self.by_email[key] = user.id
        if not user.is_active and self.inactive is not None:
            self.inactive.add(username_key(user.username))
        self.add_skeleton(user, username_skeleton(user.username))
        self._index_codx(user, github=user.github, projects=project_ids(user), admin=user.role == "admin")
        self.length.change(1)

    def remove(self, user: User) -> None:
        """Remove a user and its index entries."""
        # Write the user itself too: otherwise an update of the same user committing at the
        # same moment touches only other BTree buckets, both commits merge, and the update's
        # new index entries point at a deleted user (who could then still log in by email).
        # Marking it changed makes the two transactions conflict; the loser is retried.
        user._p_changed = True
        del self.users[user.id]
        del self.by_username[username_key(user.username)]
        for key in _email_keys(user.username, user.email):
            self._unclaim(key, user)
        if self.inactive is not None:
            self.inactive.discard(username_key(user.username))
        self.discard_skeleton(user, username_skeleton(user.username))
        self._unindex_codx(user, github=user.github, projects=project_ids(user), admin=user.role == "admin")
        self.length.change(-1)

    @staticmethod
    def indexed(user: User, changes: Mapping[str, Any] | None = None) -> Indexed:
        """The keys ``user`` is indexed under: now (take it before a change, then ``reindex``) or with ``changes``."""

        def get(name: str) -> Any:
            return changes[name] if changes is not None and name in changes else getattr(user, name)

        projects = frozenset(entry[0] for entry in get("projects"))
        return Indexed(get("username"), get("email"), get("is_active"), get("github"), projects, get("role") == "admin")

    def reindex(self, user: User, before: Indexed) -> None:
        """Move index entries after the fields of ``user`` indexed in ``before`` changed."""
        self.unindex_changes(user, before, self.indexed(user))
        self.index_changes(user, before)

    def unindex_changes(self, user: User, before: Indexed, after: Indexed) -> None:
        """Drop ``user``'s entries for the keys of ``before`` that ``after`` changes (``reindex``'s first half).

        Alone, before the fields change, when users pass keys among themselves (a sync's swaps).
        """
        # Touch an index only where its key changed: re-setting an unchanged entry still
        # rewrites its bucket (more to commit, and a conflict with every concurrent writer).
        self._unindex_codx(
            user,
            github=before.github if github_key(before.github) != github_key(after.github) else "",
            projects=before.project_ids - after.project_ids,
            admin=before.admin and not after.admin,
        )
        old_ukey, new_ukey = username_key(before.username), username_key(after.username)
        if old_ukey != new_ukey:
            del self.by_username[old_ukey]
        if self.inactive is not None and (old_ukey != new_ukey or (old_ukey in self.inactive) == after.is_active):
            self.inactive.discard(old_ukey)
        if before.username != after.username:
            old_skeleton = username_skeleton(before.username)
            if old_skeleton != username_skeleton(after.username):
                self.discard_skeleton(user, old_skeleton)
        for key in _email_keys(before.username, before.email) - _email_keys(after.username, after.email):
            self._unclaim(key, user)

    def index_changes(self, user: User, before: Indexed) -> None:
        """Add ``user``'s entries for the keys it holds now that ``before`` did not (``reindex``'s second half)."""
        now = self.indexed(user)
        self._index_codx(
            user,
            github=now.github if github_key(before.github) != github_key(now.github) else "",
            projects=now.project_ids - before.project_ids,
            admin=now.admin and not before.admin,
        )
        old_ukey, new_ukey = username_key(before.username), username_key(now.username)
        if old_ukey != new_ukey:
            self.by_username[new_ukey] = user.id
        if self.inactive is not None and not now.is_active and new_ukey not in self.inactive:
            self.inactive.add(new_ukey)
        if before.username != now.username:
            new_skeleton = username_skeleton(now.username)
            if new_skeleton != username_skeleton(before.username):
                self.add_skeleton(user, new_skeleton)
        for key in _email_keys(now.username, now.email) - _email_keys(before.username, before.email):
            self.by_email[key] = user.id

    def _unclaim(self, key: str, user: User) -> None:
        """Drop ``user``'s entry ``key`` from ``by_email`` (an entry naming another user stays).

        The key passes to the user whose username claims it, if another one does: an email that
        predates the claims (``login-ambiguous``) held it until now.
        """
        if entry_id(self.by_email.get(key)) != user.id:
            return
        claimant = entry_id(self.by_username.get(key)) if "@" in key else None
        if claimant is not None and claimant != user.id:
            self.by_email[key] = claimant
        else:
            del self.by_email[key]

    def _index_codx(self, user: User, *, github: str, projects: frozenset[str], admin: bool) -> None:
        """Add ``user`` under these generation-5 keys (each index a no-op before it exists)."""
        if github and self.by_github is not None:
            # Uniqueness is the repository's check; a key already taken is never stolen
            # (evolve5 keeps the first of the duplicates stored before generation 5).
            self.by_github.setdefault(github_key(github), user)
        if projects and self.by_project is not None:
            for project_id in sorted(projects):
                members = self.by_project.get(project_id)
                if members is None:
                    members = self.by_project[project_id] = IndexSet()
                members.add(user.id)
        if admin and self.admins is not None:
            self.admins.add(user.id)

    def _unindex_codx(self, user: User, *, github: str, projects: frozenset[str], admin: bool) -> None:
        """Remove ``user`` from these generation-5 keys.

        A project's set that empties stays (empty): deleting it from ``by_project`` would race
        with a concurrent grant adding to that same set object. The set's own conflict
        resolution merges the two changes, nothing writes the ``by_project`` bucket, so both
        commit, and the grant would land in a set no longer in the index.
        """
        if github and self.by_github is not None:
            key = github_key(github)
            if self.by_github.get(key) is user:
                del self.by_github[key]
        if projects and self.by_project is not None:
            for project_id in sorted(projects):
                members = self.by_project.get(project_id)
                if members is not None:
                    members.discard(user.id)
        if admin and self.admins is not None:
            self.admins.discard(user.id)

    def find_by_github(self, login: str) -> User | None:
        """O(log n) lookup by GitHub login (case-insensitive); None before generation 5."""
        if self.by_github is None:
            return None
        return self.by_github.get(github_key(login))  # type: ignore[no-any-return]

    def add_skeleton(self, user: User, key: str) -> None:
        """Add ``user`` to the look-alike entry ``key`` (kept once; a no-op before generation 3)."""
        if self.by_skeleton is None:
            return
        entry = self.by_skeleton.get(key, ())
        if user.id not in map(entry_id, entry):
            self.by_skeleton[key] = (*entry, user.id)  # a new tuple: entries are never changed in place

    def discard_skeleton(self, user: User, key: str) -> None:
        """Remove ``user`` from the look-alike entry ``key``; drop the entry when it empties."""
        if self.by_skeleton is None:
            return
        entry = self.by_skeleton.get(key, ())
        if user.id in map(entry_id, entry):
            rest = tuple(other for other in entry if entry_id(other) != user.id)
            if rest:
                self.by_skeleton[key] = rest
            else:
                del self.by_skeleton[key]

    def find_lookalike(self, username: str, exclude: User | None = None) -> User | None:
        """A stored user (other than ``exclude``) whose username looks like ``username``, or None."""
        if self.by_skeleton is None:
            return None
        for value in self.by_skeleton.get(username_skeleton(username), ()):
            other = self.user_for(value)
            if other is not None and other is not exclude:
                return other
        return None

    def find_by_username(self, username: str) -> User | None:
        """O(log n) lookup by username (case-insensitive)."""
        return self.user_for(self.by_username.get(username_key(username)))

    def find_by_email(self, email: str) -> User | None:
        """O(log n) lookup by email (case-insensitive); a username's login claim is not an email."""
        key = email_key(email)
        user = self.user_for(self.by_email.get(key))
        if user is None or not user.email or email_key(user.email) != key:
            return None
        return user

    def user_for(self, value: Any) -> User | None:
        """The user a name index entry names (None for None): an id, or the ``User`` itself before generation 8."""
        if value is None or isinstance(value, User):
            return value
        user: User | None = self.users.get(value)
        return user


def install_root(root: Any) -> UserContainer:
    """Create the root containers if missing; return the user container."""
    container: UserContainer | None = root.get(USERS_KEY)
    if container is None:
        container = root[USERS_KEY] = UserContainer()
    return container
