"""UserDB: the user API codx-api calls, the same whatever the storage below.

A face: each method is a line or two over the user service (db/users/service.py: validation,
hashing, authentication, history, imports) or the credential service
(db/users/credential_service.py: first login, tokens, API keys). Each call is one unit of
work: outside ``db.transaction()`` it runs (and commits) on its own, retried after a
conflict; inside one it joins the caller's transaction. Input is validated and passwords
hashed *before* the transaction starts, so a retry never re-hashes and a bad call writes
nothing. Callers get ``CodxUser`` snapshots, never stored objects.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from db.actors import check_actor
from db.database import Database
from db.users import login
from db.users import sync as user_sync
from db.users.access import AccessService
from db.users.credential_service import CredentialService
from db.users.credentials import ApiKeyInfo
from db.users.history import UserRevision
from db.users.models import utcnow
from db.users.records import PreparedUser
from db.users.schemas import CodxUser, ProjectPermission
from db.users.service import UserService
from db.users.sync import SyncReport


def _global_database() -> Database:
    # The face alone reaches for the global ``db`` (nothing below it does): imported here, at
    # first use, because ``db/__init__`` imports the modules this one imports.
    from db import db

    return db


class UserDB:
    """Users stored in a codx-db ``Database`` (the global ``db`` by default).

    ``list`` is a method name here: annotations in this class say ``builtins.list``.
    """

    def __init__(
        self, database: Database | None = None, actor: str | None = None, *, clock: Callable[[], datetime] = utcnow
    ) -> None:
        """``actor`` names who makes the changes (recorded as the transaction's user).

        Inside ``db.transaction(user=...)`` the caller's user wins. ``clock`` gives the time
        tokens are issued and checked at (tests move it past an expiry).
        """
        self.database: Database = _global_database() if database is None else database
        self.actor = actor = check_actor(actor)
        self.clock = clock
        self._credentials = CredentialService(self.database, clock, actor=actor)
        self._users = UserService(self.database, self._credentials, actor)
        self._access = AccessService(self._users)

    # -- reads -------------------------------------------------------------------------------

    def get(self, username: str) -> CodxUser:
        """The user with this username (case-insensitive); raises UserNotFound."""
        return self._users.get(username)

    def find(self, username: str) -> CodxUser | None:
        """The user with this username, or None."""
        return self._users.find(username)

    def get_by_id(self, user_id: str) -> CodxUser:
        """The user with this id (ids never change, unlike usernames); raises UserNotFound (field "id")."""
        return self._users.get_by_id(user_id)

    def get_by_email(self, email: str) -> CodxUser:
        """The user with this email address (case-insensitive); raises UserNotFound."""
        return self._users.get_by_email(email)

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
        return self._users.page(offset, limit, active, prefix, after)

    def count(self) -> int:
        """How many users there are (O(1))."""
        return self._users.count()

    def iter_users(self, batch: int = 500) -> Iterator[CodxUser]:
        """Every user, in username order, ``batch`` at a time (1..1000), in bounded memory.

        Each batch is read in its own unit of work, resuming after the last username (O(log n)),
        so no connection stays open between batches. Not a snapshot: a user created, renamed or
        deleted meanwhile may be seen or missed once. A bad ``batch`` raises InvalidUserData when the
        iteration starts.
        """
        yield from self._users.iter_users(batch)  # a generator here: AsyncUserDB's twin is an async one

    # -- codx-junior lookups and project grants (db/users/access.py) -------------------------

    def get_by_github(self, login: str) -> CodxUser | None:
        """The user with this GitHub login (case-insensitive, indexed), or None (``""`` too)."""
        return self._access.get_by_github(login)

    def with_project_access(
        self, project_id: str, *, admins: bool = True, active: bool | None = None
    ) -> builtins.list[CodxUser]:
        """Users with a grant for this project, plus every admin (``admins``), sorted by username.

        Indexed: only these users are loaded. Like codx-junior, disabled users are included;
        ``active=True`` (or False) keeps only active (or inactive) ones.
        """
        return self._access.with_project_access(project_id, admins, active)

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
        """
        return self._access.grant_project(username, project_id, permissions, children, apps)

    def revoke_project(self, username: str, project_id: str) -> bool:
        """Take a user's grant for this project away; False if there was none. Raises UserNotFound."""
        return self._access.revoke_project(username, project_id)

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
        fields = {
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
        return self._users.create(fields, password)

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
        prepared = self._users.prepare_import(records, batch_size, savepoint_every)
        if batch_size is None:
            return self._import_batch(prepared, savepoint_every)
        return self._users.import_in_batches(
            prepared, batch_size, lambda batch, first: self._import_batch(batch, savepoint_every, first)
        )

    def _import_batch(self, prepared: builtins.list[PreparedUser], savepoint_every: int, first: int = 0) -> int:
        # One unit of work per batch, here on the face: tests fail a chosen batch through it.
        return self._users.import_batch(prepared, savepoint_every, first)

    def update(self, username: str, /, **changes: Any) -> CodxUser:
        """Change fields of a user: ``username=`` renames, ``email=None`` clears the email.

        Any field of ``CodxUser`` but the id and timestamps, plus codx-junior's ``disabled``.
        """
        return self._users.update(username, changes)

    def set_password(self, username: str, password: str) -> None:
        """Replace a user's password (hashed with argon2id)."""
        self._users.set_password(username, password)

    def authenticate(self, username_or_email: str, password: str) -> CodxUser | None:
        """The user if the password matches and the user is active, else None.

        Unknown and inactive users cost the same time as a wrong password of an argon2 user.
        An old hash (other argon2 parameters, or bcrypt from codx-junior) is replaced on
        success. A stored hash beyond the cost bounds (``db.passwords``; written before they
        existed) is never verified: the login fails, with a warning naming the user.
        """
        return self._users.authenticate(username_or_email, password)

    def login(
        self, username_or_email: str, password: str, ttl: timedelta | None = None, *, first_login: bool = False
    ) -> tuple[CodxUser, str] | None:
        """``authenticate``, then a new access token: ``(user, token)``, or None as ``authenticate`` answers.

        Safer than the two calls: the token is issued only if the user still has the password
        that was verified, so a password change or deactivation landing between the two wins.
        ``first_login=True``: an active user with no password yet sets this one (codx-junior's
        first login; the policy applies), in the same call, so an unknown name answers None as a
        wrong password does (``has_password`` raises UserNotFound: a 404 that names who exists).
        """
        ttl = self._credentials.check_ttl(ttl)  # bad input fails before a password is verified or rehashed
        verified = login.verify(self._users, username_or_email, password, first_login)
        if verified is None:
            return None
        token = self._credentials.issue_login_token(verified.user.id, verified.password_hash, ttl)
        return None if token is None else (verified.user, token)

    def delete(self, username: str) -> None:
        """Delete a user; raises UserNotFound."""
        self._users.delete(username)

    def sync(self, records: Iterable[Mapping[str, Any]], *, require_admin: bool = True) -> SyncReport:
        """Make the stored users match ``records`` (codx-junior CodxUser dicts or codx-db fields) in one unit of work.

        Every record is checked first (nothing written on a problem); users match by ``id``, else
        exact username; unmatched stored users are deleted, the others updated or created. With
        ``require_admin`` a list that leaves no active admin is refused. See db/users/sync.py.
        """
        return user_sync.sync(self._users, records, require_admin=require_admin, clock=self.clock)

    # -- history -----------------------------------------------------------------------------

    def history(self, username: str, limit: int = 20) -> builtins.list[UserRevision]:
        """Past versions of a user, newest first: when, by whom, what changed.

        Raises HistoryUnavailable on a storage that keeps no history (history-free RelStorage).
        """
        return self._users.history(username, limit)

    def revert(self, username: str, to: datetime | str) -> CodxUser:
        """Restore a user's fields as they were at ``to`` (a time, or a revision id from history).

        The restore is a new change (history keeps what it replaced). The password is not
        reverted: an old password coming back would surprise its owner and the admin.
        """
        return self._users.revert(username, to)

    # -- first login, tokens, API keys (db/users/credential_service.py) -----------------------

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
