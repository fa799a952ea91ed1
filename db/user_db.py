"""UserDB: the user CRUD API codx-api calls, the same whatever the storage below.

Each call is one unit of work: outside ``db.transaction()`` it runs (and commits) on its
own, retried after a conflict; inside one it joins the caller's transaction. Input is
validated and passwords hashed *before* the transaction starts, so a retry never re-hashes
and a bad call writes nothing. Callers get ``CodxUser`` snapshots, never stored objects.
"""

from __future__ import annotations

import builtins
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from db.database import Database, UnitOfWork
from db.errors import HistoryUnavailable, InvalidUserData, UserAlreadyExists, UserNotFound, shown, shown_field
from db.users import access, repository
from db.users import credential_service as creds
from db.users import sync as user_sync
from db.users.credentials import ApiKeyInfo
from db.users.history import TRACKED_FIELDS, UserRevision, revisions, snapshot, state_at, tid_from_str
from db.users.models import User, UserContainer, email_key, github_key, username_key, username_skeleton, utcnow
from db.users.passwords import (
    MAX_PASSWORD_LENGTH,
    check_password,
    check_password_hash,
    dummy_verify,
    hash_cost_problem,
    hash_password,
    verify_password,
)
from db.users.policy import PasswordContext, PasswordPolicy
from db.users.schemas import (
    CodxUser,
    ProjectPermission,
    UserCreate,
    UserUpdate,
    email_for_lookup,
    parse_project,
    projects_to_tuple,
)
from db.users.sync import SyncReport

T = TypeVar("T")

log = logging.getLogger(__name__)

MAX_PAGE = 1000
# No GitHub login is longer (39 characters); a lookup of megabytes answers None at once.
MAX_GITHUB_LOOKUP = 256


class UserDB:
    """Users stored in a codx-db ``Database`` (the global ``db`` by default)."""

    def __init__(
        self, database: Database | None = None, actor: str | None = None, *, clock: Callable[[], datetime] = utcnow
    ) -> None:
        """``actor`` names who makes the changes (recorded as the transaction's user).

        Inside ``db.transaction(user=...)`` the caller's user wins. ``clock`` gives the time
        tokens are issued and checked at (tests move it past an expiry).
        """
        if database is None:
            from db import db as global_database

            database = global_database
        self.database: Database = database
        self.actor = actor
        self.clock = clock
        self._credential_service: creds.CredentialService | None = None

    # -- reads -------------------------------------------------------------------------------

    def get(self, username: str) -> CodxUser:
        """The user with this username (case-insensitive); raises UserNotFound."""
        _require_str("username", username)
        return self._read(lambda users: CodxUser.from_model(repository.get(users, username)))

    def find(self, username: str) -> CodxUser | None:
        """The user with this username, or None."""
        _require_str("username", username)

        def find(users: UserContainer) -> CodxUser | None:
            user = users.find_by_username(username)
            return None if user is None else CodxUser.from_model(user)

        return self._read(find)

    def get_by_id(self, user_id: str) -> CodxUser:
        """The user with this id (ids never change, unlike usernames); raises UserNotFound (field "id")."""
        _require_str("user_id", user_id)
        return self._read(lambda users: CodxUser.from_model(repository.get_by_id(users, user_id)))

    def get_by_email(self, email: str) -> CodxUser:
        """The user with this email address (case-insensitive); raises UserNotFound."""
        _require_str("email", email)

        address = email_for_lookup(email)

        def get_by_email(users: UserContainer) -> CodxUser:
            user = users.find_by_email(address)
            if user is None:
                raise UserNotFound(email, field="email")
            return CodxUser.from_model(user)

        return self._read(get_by_email)

    def list(
        self,
        offset: int = 0,
        limit: int = 50,
        active: bool | None = None,
        prefix: str | None = None,
        after: str | None = None,
    ) -> builtins.list[CodxUser]:
        """A page of users sorted by username; ``active`` filters, ``prefix`` narrows by name.

        ``after`` (the last username of the previous page) pages in O(log n) however deep;
        ``offset`` walks the index from the start. An offset at or past ``count()`` answers
        ``[]`` at once, so it needs no upper bound of its own.
        """
        problems = []
        if not _is_int(offset) or offset < 0:
            problems.append("offset: must be an integer >= 0")
        if not _is_int(limit) or not 0 <= limit <= MAX_PAGE:
            problems.append(f"limit: must be an integer from 0 to {MAX_PAGE}")
        if active is not None and not isinstance(active, bool):
            problems.append("active: must be true, false or None")
        if prefix is not None and not isinstance(prefix, str):
            problems.append("prefix: must be a string")
        if after is not None and not isinstance(after, str):
            problems.append("after: must be a string")
        if problems:
            raise InvalidUserData(problems)

        def page(uow: UnitOfWork) -> builtins.list[CodxUser]:
            found = list(repository.container(uow).page(offset, limit, active, prefix, after))
            # RelStorage loads the users not yet cached in one query instead of one each
            # (FileStorage and MappingStorage have nothing to prefetch: a no-op there).
            uow.connection.prefetch(found)
            return [CodxUser.from_model(user) for user in found]

        return self.database.run(page)

    def count(self) -> int:
        """How many users there are (O(1))."""
        return self._read(len)

    # -- writes ------------------------------------------------------------------------------

    def create(
        self,
        *,
        username: str,
        email: str | None = None,
        full_name: str = "",
        password: str | None = None,
        is_superuser: bool | None = None,
        is_active: bool = True,
        avatar: str = "",
        theme: str = "dim",
        role: str | None = None,
        github: str = "",
        projects: builtins.list[ProjectPermission] | builtins.list[dict[str, Any]] | None = None,
        apps: Sequence[str] = (),
    ) -> CodxUser:
        """Create a user; raises UserAlreadyExists (naming the field) or InvalidUserData.

        A user without a password exists but cannot log in until one is set. ``role``
        ("user" or "admin") and ``is_superuser`` follow each other; give either.
        """
        data = UserCreate.parse(
            {
                "username": username,
                "email": email,
                "full_name": full_name,
                "is_superuser": is_superuser,
                "is_active": is_active,
                "avatar": avatar,
                "theme": theme,
                "role": role,
                "github": github,
                "projects": [] if projects is None else projects,
                "apps": apps,
            }
        )
        context = PasswordContext(data.username, data.email, data.full_name)
        password_hash = None if password is None else self._credentials.new_password_hash(password, context)
        fields = data.model_dump(exclude={"projects"})
        fields["projects"] = projects_to_tuple(data.projects)
        user_id = new_user_id()

        def create(uow: UnitOfWork) -> CodxUser:
            users = repository.container(uow)
            repository.check_unique(users, data.username, data.email, github=data.github)
            user = User(id=user_id, password_hash=password_hash, **fields)
            users.add(user)
            return CodxUser.from_model(user)

        return self._write(create, f"create user {data.username}")

    def import_users(
        self,
        records: Iterable[Mapping[str, Any]],
        *,
        batch_size: int | None = None,
        savepoint_every: int = 10_000,
    ) -> int:
        """Create many users; returns how many. By default in one unit of work: all or none.

        Each record holds ``create``'s keyword arguments; a password known only as a hash
        (argon2, or bcrypt from codx-junior) goes in ``password_hash`` instead of ``password``.
        A ``password`` is hashed here, at argon2id's ~20 ms per user (by design).

        Every record is checked, against the others and against the stored users, before
        anything is written: problems in the input raise one InvalidUserData naming each
        record (``records[3].email: ...``), a name or email already stored raises
        UserAlreadyExists, and nothing is written. Then the users are written in one
        transaction (a conflict retries it whole); every ``savepoint_every`` users a savepoint
        moves the written objects out of memory. Inside a caller's unit of work they join it.

        ``batch_size`` commits every that many users in a transaction of its own instead: for
        imports into a large PostgreSQL database, where one transaction touching more stored
        index buckets than the server can lock raises TransactionTooLarge (about 2,000 users
        per transaction stay clear of PostgreSQL's default lock table). Batches are not all or
        none: if one fails, the error says how many users the batches before it imported.
        """
        if not _is_int(savepoint_every) or savepoint_every < 1:
            raise InvalidUserData(["savepoint_every: must be a positive integer"])
        if batch_size is not None and (not _is_int(batch_size) or batch_size < 1):
            raise InvalidUserData(["batch_size: must be a positive integer or None"])
        if batch_size is not None and self.database.current() is not None:
            raise InvalidUserData(["batch_size: batches commit on their own; not inside a unit of work"])
        prepared = _prepare_import(records, PasswordPolicy.from_settings(self.database.settings))
        if batch_size is None:
            return self._import_batch(prepared, savepoint_every)
        # Every record against the stored users before the first batch commits: bad input
        # writes nothing in batches too.
        self._read(lambda users: _check_import_unique(users, prepared))
        done = 0
        for start in range(0, len(prepared), batch_size):
            try:
                done += self._import_batch(prepared[start : start + batch_size], savepoint_every, start)
            except Exception as exc:
                exc.add_note(f"codx-db: {done} of {len(prepared)} users were imported before this batch failed")
                raise
        return done

    def _import_batch(
        self, prepared: builtins.list[tuple[UserCreate, str | None]], savepoint_every: int, first: int = 0
    ) -> int:
        def write(uow: UnitOfWork) -> int:
            users = repository.container(uow)
            _check_import_unique(users, prepared, first)
            for done, (data, password_hash) in enumerate(prepared, 1):
                fields = data.model_dump(exclude={"projects"})
                fields["projects"] = projects_to_tuple(data.projects)
                users.add(User(id=new_user_id(), password_hash=password_hash, **fields))
                if done % savepoint_every == 0 and done < len(prepared):
                    uow.transaction_manager.savepoint(optimistic=True)
                    uow.connection.cacheGC()  # the saved objects can now leave memory
            return len(prepared)

        return self._write(write, f"import {len(prepared)} users")

    def update(self, username: str, /, **changes: Any) -> CodxUser:
        """Change fields of a user: ``username=`` renames, ``email=None`` clears the email.

        Any field of ``CodxUser`` but the id and timestamps, plus codx-junior's ``disabled``.
        """
        _require_str("username", username)
        if "password" in changes:
            raise InvalidUserData(["password: use set_password() to change a password"])
        fields = UserUpdate.parse(changes).changes()

        def update(uow: UnitOfWork) -> CodxUser:
            users = repository.container(uow)
            user = repository.get(users, username)
            old_username = user.username
            changed = repository.apply(users, user, fields)
            creds.forget_tokens_if_deactivated(uow.root, user, changed)
            if changed:
                uow.note(f"codx-db: update user {old_username}: {', '.join(sorted(changed))}")
            return CodxUser.from_model(user)

        return self._write(update, None)

    def set_password(self, username: str, password: str) -> None:
        """Replace a user's password (hashed with argon2id)."""
        _require_str("username", username)
        password_hash = self._credentials.new_password_hash_for(username, password)

        def set_password(uow: UnitOfWork) -> None:
            user = repository.get(repository.container(uow), username)
            user.password_hash = password_hash
            user.touch()
            creds.forget_tokens(uow.root, user)  # a new password ends every session
            # The stored name: the one given may carry 100 kB of trimmed spaces.
            uow.note(f"codx-db: set password of {user.username}")

        self._write(set_password, None)

    def authenticate(self, username_or_email: str, password: str) -> CodxUser | None:
        """The user if the password matches and the user is active, else None.

        Unknown and inactive users cost the same time as a wrong password of an argon2 user.
        An old hash (other argon2 parameters, or bcrypt from codx-junior) is replaced on
        success. A stored hash beyond the cost bounds (``db.passwords``; written before they
        existed) is never verified: the login fails, with a warning naming the user.
        """
        if not isinstance(username_or_email, str) or not isinstance(password, str):
            return None
        if len(password) > MAX_PASSWORD_LENGTH:
            # No such password can have been set: refuse before hashing megabytes. Depends on
            # the input alone, so answering faster tells nothing about the account.
            return None
        login = username_or_email

        def lookup(users: UserContainer) -> tuple[CodxUser | None, str | None]:
            user = repository.find_login(users, login)
            if user is None:
                return None, None
            return CodxUser.from_model(user), user.password_hash

        found, stored_hash = self._read(lookup)
        if found is None:
            dummy_verify(password)
            return None
        problem = None if stored_hash is None else hash_cost_problem(stored_hash)
        if problem is not None:
            log.warning(
                "user %s cannot log in: its stored password hash is refused (%s); "
                "set a new one with `codx-db user passwd`",
                shown(found.username),
                problem,
            )
            dummy_verify(password)
            return None
        ok, needs_rehash = verify_password(stored_hash, password)
        if not ok or not found.is_active:
            return None
        if not needs_rehash:
            return found
        user_id = found.id
        new_hash = hash_password(password)

        def rehash(uow: UnitOfWork) -> CodxUser | None:
            user = repository.container(uow).users.get(user_id)
            if user is None or not user.is_active:
                return None
            # Only replace the hash we verified: a concurrent set_password wins.
            if user.password_hash == stored_hash:
                user.password_hash = new_hash
            return CodxUser.from_model(user)

        return self._write(rehash, f"rehash password of {found.username}")

    def delete(self, username: str) -> None:
        """Delete a user; raises UserNotFound."""
        _require_str("username", username)

        def delete(uow: UnitOfWork) -> None:
            users = repository.container(uow)
            user = repository.get(users, username)
            users.remove(user)
            creds.forget_credentials(uow.root, user)  # tokens and API keys die with the user
            uow.note(f"codx-db: delete user {user.username}")

        self._write(delete, None)

    # -- codx-junior lookups ------------------------------------------------------------------

    def get_by_github(self, login: str) -> CodxUser | None:
        """The user with this GitHub login (case-insensitive, indexed), or None.

        ``""`` and anything not a string give None: codx-junior's scan would match every user
        without a login to ``""``.
        """
        if not isinstance(login, str) or not github_key(login) or len(login) > MAX_GITHUB_LOOKUP:
            return None

        def find(users: UserContainer) -> CodxUser | None:
            user = access.find_by_github(users, login)
            return None if user is None else CodxUser.from_model(user)

        return self._read(find)

    def with_project_access(
        self, project_id: str, *, admins: bool = True, active: bool | None = None
    ) -> builtins.list[CodxUser]:
        """Users with a grant for this project, plus every admin (``admins``), sorted by username.

        Indexed: only these users are loaded. Like codx-junior, disabled users are included;
        ``active=True`` (or False) keeps only active (or inactive) ones.
        """
        problems: builtins.list[str] = []
        if not isinstance(project_id, str):
            problems.append("project_id: must be a string")
        if not isinstance(admins, bool):
            problems.append("admins: must be true or false")
        if active is not None and not isinstance(active, bool):
            problems.append("active: must be true, false or None")
        if problems:
            raise InvalidUserData(problems)

        def members(users: UserContainer) -> builtins.list[CodxUser]:
            found = access.project_members(users, project_id, admins=admins, active=active)
            return [CodxUser.from_model(user) for user in found]

        return self._read(members)

    def grant_project(
        self,
        username: str,
        project_id: str,
        permissions: str | Sequence[str] = "",
        children: bool | None = True,
        apps: Sequence[str] = (),
    ) -> CodxUser:
        """Give a user a project grant (codx-junior's ``add_user_to_project``), replacing any for that project.

        ``permissions`` is kept as given: a string (``"tasks,coder"``) or a list of names.
        One unit of work: concurrent grants to one user conflict and are retried, none is lost.
        """
        _require_str("username", username)
        project = parse_project(
            {
                "project_id": project_id,
                "permissions": list(permissions) if isinstance(permissions, tuple) else permissions,
                "children": children,
                "apps": list(apps) if isinstance(apps, tuple) else apps,
            }
        )

        def grant(uow: UnitOfWork) -> CodxUser:
            user = access.grant(repository.container(uow), username, project)
            uow.note(f"codx-db: grant project {project.project_id} to {user.username}")
            return CodxUser.from_model(user)

        return self._write(grant, None)

    def revoke_project(self, username: str, project_id: str) -> bool:
        """Take a user's grant for this project away; False if there was none. Raises UserNotFound."""
        _require_str("username", username)
        _require_str("project_id", project_id)

        def revoke(uow: UnitOfWork) -> bool:
            users = repository.container(uow)
            done = access.revoke(users, username, project_id)
            if done:
                uow.note(
                    f"codx-db: revoke project {project_id.strip()} from {repository.get(users, username).username}"
                )
            return done

        return self._write(revoke, None)

    def iter_users(self, batch: int = 500) -> Iterator[CodxUser]:
        """Every user, in username order, ``batch`` at a time (1..MAX_PAGE), in bounded memory.

        Each batch is read in its own unit of work, resuming after the last username (O(log n)),
        so no connection stays open between batches and nothing caps the total. Not a snapshot:
        a user created, renamed or deleted meanwhile may be seen or missed once. A bad ``batch``
        raises InvalidUserData when the iteration starts (a generator runs nothing before).
        """
        if not _is_int(batch) or not 1 <= batch <= MAX_PAGE:
            raise InvalidUserData([f"batch: must be an integer from 1 to {MAX_PAGE}"])
        after: str | None = None
        while True:
            page = self.list(limit=batch, after=after)
            yield from page
            if len(page) < batch:
                return
            after = page[-1].username

    # -- history -----------------------------------------------------------------------------

    def history(self, username: str, limit: int = 20) -> builtins.list[UserRevision]:
        """Past versions of a user, newest first: when, by whom, what changed.

        Raises HistoryUnavailable on a storage that keeps no history (history-free RelStorage).
        """
        _require_str("username", username)
        if not _is_int(limit) or not 1 <= limit <= MAX_PAGE:
            raise InvalidUserData([f"limit: must be an integer from 1 to {MAX_PAGE}"])

        def history(uow: UnitOfWork) -> builtins.list[UserRevision]:
            return revisions(uow.connection, repository.get(repository.container(uow), username), limit)

        return self.database.run(history)

    def revert(self, username: str, to: datetime | str) -> CodxUser:
        """Restore a user's fields as they were at ``to`` (a time, or a revision id from history).

        The restore is a new change (history keeps what it replaced). The password is not
        reverted: an old password coming back would surprise its owner and the admin.
        """
        _require_str("username", username)
        tid, when = _revision_target(to)

        def revert(uow: UnitOfWork) -> CodxUser:
            users = repository.container(uow)
            user = repository.get(users, username)
            state = state_at(uow.connection, user, tid, when)
            if not state:
                raise HistoryUnavailable(f"user {shown(user.username)} has no version at or before {shown(str(to))}")
            fields = snapshot(state).model_dump(include=set(TRACKED_FIELDS))
            if "projects" in fields:
                fields["projects"] = list(fields["projects"])  # UserUpdate takes a list
            old_username = user.username
            changed = repository.apply(users, user, UserUpdate.parse(fields).changes())
            creds.forget_tokens_if_deactivated(uow.root, user, changed)
            uow.note(f"codx-db: revert user {old_username} to {to if isinstance(to, str) else to.isoformat()}")
            return CodxUser.from_model(user)

        return self._write(revert, None)

    # -- units of work -----------------------------------------------------------------------

    def _read(self, fn: Callable[[UserContainer], T]) -> T:
        return self.database.run(lambda uow: fn(repository.container(uow)))

    def _write(self, fn: Callable[[UnitOfWork], T], note: str | None) -> T:
        def write(uow: UnitOfWork) -> T:
            if self.actor and not uow.transaction.user:
                uow.transaction.user = self.actor
            return fn(uow)

        return self.database.run(write, note=f"codx-db: {note}" if note else None)

    # -- first login, tokens, API keys (db/users/credential_service.py) -----------------------

    @property
    def _credentials(self) -> creds.CredentialService:
        if self._credential_service is None:  # built on first use: most callers never need it
            self._credential_service = creds.CredentialService(self.database, self.clock, actor=self.actor)
        return self._credential_service

    def has_password(self, username: str) -> bool:
        """Whether the user has a password (else its first login sets one); raises UserNotFound."""
        return self._credentials.has_password(username)

    def set_password_if_unset(self, username: str, password: str) -> bool:
        """First login: set the password of an active user who has none; atomic, exactly one racer wins."""
        return self._credentials.set_password_if_unset(username, password)

    def issue_token(self, username: str, ttl: timedelta | None = None) -> str:
        """A new access token (default lifetime ``db_token_ttl_hours``); shown once, stored hashed."""
        return self._credentials.issue_token(username, ttl)

    def get_by_token(self, token: str) -> CodxUser | None:
        """The active user of this unexpired token, else None."""
        return self._credentials.get_by_token(token)

    def revoke_token(self, token: str) -> bool:
        """End one token; False if it is unknown."""
        return self._credentials.revoke_token(token)

    def revoke_tokens(self, username: str) -> int:
        """End every token of the user; how many. Raises UserNotFound."""
        return self._credentials.revoke_tokens(username)

    def purge_expired_tokens(self, limit: int = 10_000) -> int:
        """Remove up to ``limit`` expired tokens, oldest first; how many."""
        return self._credentials.purge_expired_tokens(limit)

    def create_api_key(self, username: str, name: str = "") -> str:
        """A new API key for the user; shown once, stored hashed, works while the user is active."""
        return self._credentials.create_api_key(username, name)

    def get_by_api_key(self, key: str) -> CodxUser | None:
        """The active user of this API key, else None."""
        return self._credentials.get_by_api_key(key)

    def revoke_api_key(self, key: str) -> bool:
        """Remove an API key given its secret; False if it is unknown."""
        return self._credentials.revoke_api_key(key)

    def api_keys(self, username: str) -> builtins.list[ApiKeyInfo]:
        """The user's API keys by creation time and name, never the secret; raises UserNotFound."""
        return self._credentials.api_keys(username)

    def revoke_api_key_id(self, username: str, key_id: str) -> bool:
        """Remove the user's API key with this ``key_id`` (from ``api_keys``); False if none."""
        return self._credentials.revoke_api_key_id(username, key_id)

    # -- whole-list sync: codx-junior's admin settings save (db/users/sync.py) ----------------

    def sync(self, records: Iterable[Mapping[str, Any]], *, require_admin: bool = True) -> SyncReport:
        """Make the stored users match ``records`` (codx-junior CodxUser dicts or codx-db fields) in one unit of work.

        Every record is checked first (InvalidUserData naming each ``records[i].field``, nothing
        written); then users are matched by ``id``, else exact username: the unmatched stored
        ones are deleted (tokens and API keys too), changed ones updated, new ones created.
        Empty ``token``/``api_key`` leave credentials alone. With ``require_admin`` a list that
        leaves no active admin is refused. See db/users/sync.py.
        """
        if not isinstance(require_admin, bool):
            raise InvalidUserData(["require_admin: must be true or false"])
        parsed = user_sync.parse_records(records)
        return self._write(
            lambda uow: user_sync.sync_users(uow, parsed, now=self.clock(), require_admin=require_admin), None
        )


_ID_SALT = secrets.randbits(16)


def new_user_id() -> str:
    """32 hex digits: a per-process prefix, the creation time in microseconds, 56 random bits.

    Within a process ids grow with time, so a batch of creates lands in a few buckets of the
    ``users`` BTree instead of one per user (a random uuid4 scatters them). The per-process
    prefix keeps two processes creating at once in different buckets, where their inserts do
    not conflict (one shared "last bucket" would).
    """
    prefix = (_ID_SALT ^ os.getpid()) & 0xFFFF
    return f"{prefix:04x}{time.time_ns() // 1000:014x}{secrets.randbits(56):014x}"


_IMPORT_KEYS = frozenset(
    {"username", "email", "full_name", "password", "password_hash", "is_superuser", "is_active"}
    | {"avatar", "theme", "role", "github", "projects", "apps"}
)
_MAX_LISTED_FIELDS = 5


def _prepare_import(
    records: Iterable[Mapping[str, Any]], policy: PasswordPolicy
) -> list[tuple[UserCreate, str | None]]:
    """Validate import records: (validated fields, password hash) each, or InvalidUserData."""
    if isinstance(records, (str, bytes, Mapping)) or not isinstance(records, Iterable):
        raise InvalidUserData(["records: must be an iterable of mappings (one per user)"])
    prepared: list[tuple[UserCreate, str | None, str | None]] = []  # (fields, clear password, hash)
    problems: list[str] = []
    seen_usernames: dict[str, int] = {}
    seen_skeletons: dict[str, int] = {}
    seen_emails: dict[str, int] = {}
    seen_github: dict[str, int] = {}
    for index, record in enumerate(records):
        where = f"records[{index}]"
        if not isinstance(record, Mapping):
            problems.append(f"{where}: must be a mapping of user fields")
            continue
        unknown = sorted(shown_field(key) for key in record if key not in _IMPORT_KEYS)
        if unknown:
            listed = ", ".join(unknown[:_MAX_LISTED_FIELDS])
            if len(unknown) > _MAX_LISTED_FIELDS:
                listed += f" and {len(unknown) - _MAX_LISTED_FIELDS} more"
            problems.append(f"{where}: unknown field(s) {listed}")
            continue
        fields = {key: value for key, value in record.items() if key not in ("password", "password_hash")}
        fields.setdefault("projects", [])
        try:
            data = UserCreate.parse(fields)
            password, password_hash = _import_password(record)
            if password is not None:  # a clear password passes the policy; an imported hash never has to
                policy.check(password, PasswordContext(data.username, data.email, data.full_name))
        except InvalidUserData as exc:
            problems.extend(f"{where}.{message}" for message in exc.errors)
            continue
        key = username_key(data.username)
        if key in seen_usernames:
            problems.append(f"{where}.username: the same as records[{seen_usernames[key]}]")
            continue
        seen_usernames[key] = index
        key = username_skeleton(data.username)
        if key in seen_skeletons:
            problems.append(f"{where}.username: looks like records[{seen_skeletons[key]}]")
            continue
        seen_skeletons[key] = index
        if data.email:
            key = email_key(data.email)
            if key in seen_emails:
                problems.append(f"{where}.email: the same as records[{seen_emails[key]}]")
                continue
            seen_emails[key] = index
        if data.github:
            key = github_key(data.github)
            if key in seen_github:
                problems.append(f"{where}.github: the same as records[{seen_github[key]}]")
                continue
            seen_github[key] = index
        prepared.append((data, password, password_hash))
    if problems:
        raise InvalidUserData(problems)  # which lists the first MAX_LISTED_ERRORS
    # Hash after everything validated: a bad record must not cost 20 ms per good one first.
    return [
        (data, password_hash if password is None else hash_password(password))
        for data, password, password_hash in prepared
    ]


def _check_import_unique(users: UserContainer, prepared: list[tuple[UserCreate, str | None]], first: int = 0) -> None:
    """UserAlreadyExists naming the first import record whose username or email is stored.

    ``first``: the index in the caller's records of ``prepared[0]`` (a batch of them).
    """
    for index, (data, _) in enumerate(prepared, first):
        try:
            repository.check_unique(users, data.username, data.email, github=data.github)
        except UserAlreadyExists as exc:
            raise UserAlreadyExists(exc.field, exc.value, where=f"records[{index}]", like=exc.like) from None


def _import_password(record: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(checked clear password to hash later, or None; checked hash, or None)."""
    password, password_hash = record.get("password"), record.get("password_hash")
    if password is not None and password_hash is not None:
        raise InvalidUserData(["password: give password or password_hash, not both"])
    if password is not None:
        return check_password(password), None
    if password_hash is not None:
        return None, check_password_hash(password_hash)
    return None, None


def _revision_target(to: datetime | str) -> tuple[bytes | None, datetime | None]:
    if isinstance(to, datetime):
        return None, to if to.tzinfo else to.replace(tzinfo=UTC)
    if isinstance(to, str):
        text = to.strip()
        if len(text) == 16 and all(c in "0123456789abcdefABCDEF" for c in text):
            return tid_from_str(text), None
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            return None, when if when.tzinfo else when.replace(tzinfo=UTC)
    raise InvalidUserData(["to: must be a revision id (16 hex digits) or an ISO 8601 time"])


def _require_str(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise InvalidUserData([f"{name}: must be a string"])


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
