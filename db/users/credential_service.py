"""First login, access tokens and API keys at the user level: what ``UserDB``'s credential methods do.

``UserDB`` delegates to one ``CredentialService`` (one line per method); the store itself
(hashed secrets, indexes, expiry) is db/users/credentials.py. Each method here is one unit of
work of its own, or joins the caller's. Input is checked and passwords are hashed before the
unit of work starts, so a retry after a conflict never hashes again.

Writes for one user (first password, issue or revoke tokens, create or revoke API keys) go
through the group-commit queue (``Database.submit``, db/group_commit.py): under a burst of
logins the threads of a process share one commit instead of conflicting with each other.
Their functions return plain data (str, bool, int), and each names its actor for the user it
touched (``history.record_actor``) when a shared transaction's user cannot say it. The purge
of expired tokens is bulk work and keeps a unit of work of its own (``database.run``).

The credential store and old databases: a database installed by this version gets the store
from migrations/install.py. A database created before it has none, and no generation adds it:
the first write that needs it (``issue_token``, ``create_api_key``) creates it in its own unit
of work, and every read treats a missing store as "no credentials" (``get_by_token`` answers
None). So tokens need no migration; a later generation may create the store up front.

The module-level ``forget_*`` functions are the revocation hooks UserDB's writes call inside
their own unit of work: a password change ends the user's sessions (Django's session
invalidation), deactivation ends them too, deletion also removes the API keys.

No secret (password, token, key) is logged, put in a transaction note, or shown in an error.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from db.database import Database, UnitOfWork
from db.errors import InvalidUserData, UserNotFound, shown
from db.users import credentials
from db.users.credentials import CREDENTIALS_KEY, MAX_TTL, MIN_TTL, ApiKeyInfo, CredentialStore
from db.users.history import name_transaction, note_actor, note_user
from db.users.keys import require_str
from db.users.models import USERS_KEY, User, UserContainer, utcnow
from db.users.passwords import check_password, hash_password
from db.users.policy import PasswordContext, PasswordPolicy
from db.users.schemas import CodxUser

T = TypeVar("T")

MAX_PURGE = 1_000_000


class CredentialService:
    """First login, tokens and API keys over a ``Database``; ``clock`` decides expiry (tests inject one)."""

    def __init__(self, database: Database, clock: Callable[[], datetime] = utcnow, *, actor: str | None = None) -> None:
        self.database = database
        self.clock = clock
        self.actor = actor  # recorded as the transaction's user unless the caller's unit of work has one

    def __repr__(self) -> str:
        return f"<CredentialService actor={self.actor!r}>"

    # -- new passwords -------------------------------------------------------------------------

    def new_password_hash(self, password: str, context: PasswordContext) -> str:
        """Hash a new clear password that meets the hard rules and the settings' policy (never an imported hash)."""
        check_password(password)
        PasswordPolicy.from_settings(self.database.settings).check(password, context)
        return hash_password(password)

    def new_password_hash_for(self, username: str, password: str) -> str:
        """``new_password_hash`` with the stored user as the policy's context (one read); UserNotFound."""
        require_str("username", username)
        check_password(password)  # the hard rules before a read: a bad type is the caller's mistake
        context = self._read(lambda users: _context(_get(users, username)))
        return self.new_password_hash(password, context)

    # -- first login ---------------------------------------------------------------------------

    def has_password(self, username: str) -> bool:
        """Whether the user has a password (else its first login sets one); UserNotFound."""
        require_str("username", username)
        return self._read(lambda users: _get(users, username).password_hash is not None)

    def set_password_if_unset(self, username: str, password: str) -> bool:
        """Set the first password of an active user who has none; False if it has one or is inactive.

        Two racing first logins both see no password and both write the same user: the second
        commit conflicts, its unit of work is retried, sees the winner's password and answers
        False. Exactly one True. Tokens are left alone (a GitHub login may have issued one).
        """
        return self.claim_first_password(username, password) is not None

    def claim_first_password(self, username: str, password: str) -> tuple[CodxUser, str] | None:
        """``set_password_if_unset``, answering the user and the hash it set (None: it set none)."""
        password_hash = self.new_password_hash_for(username, password)

        def set_if_unset(uow: UnitOfWork) -> tuple[CodxUser, str] | None:
            user = _get(_users(uow), username)
            if not user.is_active or user.password_hash is not None:
                return None
            user.password_hash = password_hash
            user.touch()
            note_user(uow, user.id, f"codx-db: set first password of {user.username}")
            self._record_actor(uow, user.id)
            return CodxUser.from_model(user), password_hash

        return self._write(set_if_unset)

    # -- access tokens -------------------------------------------------------------------------

    def issue_token(self, username: str, ttl: timedelta | None = None) -> str:
        """A new access token for an active user, valid ``ttl`` (default ``db_token_ttl_hours``); shown once."""
        require_str("username", username)
        ttl = self.check_ttl(ttl)

        def issue(uow: UnitOfWork) -> str:
            user = self._credential_owner(uow, username)
            if not user.is_active:
                raise InvalidUserData(
                    [f"username: {shown(user.username)} is disabled: no token; enable the user first"]
                )
            return self._issue(uow, user, ttl)

        return self._write(issue)

    def issue_login_token(self, user_id: str, password_hash: str, ttl: timedelta | None = None) -> str | None:
        """A token for ``UserDB.login``: only if the user is active and still has the hash its password matched.

        Checked in the unit of work that issues it: a password change or a deactivation
        committed after the password was verified wins (None), and one committing meanwhile
        conflicts with this unit's ``readCurrent`` of the user (it runs again and sees it).
        """
        ttl = self.check_ttl(ttl)

        def issue(uow: UnitOfWork) -> str | None:
            user = _users(uow).users.get(user_id)
            if user is None:
                return None
            uow.connection.readCurrent(user)
            if not user.is_active or user.password_hash != password_hash:
                return None
            return self._issue(uow, user, ttl)

        return self._write(issue)

    def _issue(self, uow: UnitOfWork, user: User, ttl: timedelta) -> str:
        store = credentials.install_credentials(uow.root)  # lazily on a database older than the store
        self._record_actor(uow, _credentials_of(user.id))
        return credentials.issue_token(store, user.id, ttl, self.clock())

    def check_ttl(self, ttl: timedelta | None) -> timedelta:
        """``ttl``, or the default lifetime when None; InvalidUserData for anything else (checked before any work)."""
        if ttl is None:
            ttl = timedelta(hours=self.database.settings.db_token_ttl_hours)
        if not isinstance(ttl, timedelta) or not MIN_TTL <= ttl <= MAX_TTL:
            raise InvalidUserData(["ttl: must be a timedelta between 1 second and 400 days, or None"])
        return ttl

    def get_by_token(self, token: str) -> CodxUser | None:
        """The active user this unexpired token belongs to, else None (unknown, expired, revoked, user gone)."""

        def find(uow: UnitOfWork) -> CodxUser | None:
            store = _store(uow)
            found = None if store is None else credentials.find_token(store, token, self.clock())
            return None if found is None else _active_user(uow, found.user_id)

        return self.database.run(find)

    def revoke_token(self, token: str) -> bool:
        """End one token (a logout); False if it is unknown or already gone."""

        def revoke(uow: UnitOfWork) -> bool:
            store = _store(uow)
            owner = None if store is None else credentials.token_owner(store, token)
            if store is None or owner is None:
                return False
            self._record_actor(uow, _credentials_of(owner))
            return credentials.revoke_token(store, token)

        return self._write(revoke)

    def revoke_tokens(self, username: str) -> int:
        """End every token of the user (logout everywhere); how many. UserNotFound."""
        require_str("username", username)

        def revoke(uow: UnitOfWork) -> int:
            user = _get(_users(uow), username)
            count = forget_tokens(uow.root, user)
            if count:
                uow.note(f"codx-db: revoke {count} tokens of {user.username}")
                self._record_actor(uow, _credentials_of(user.id))
            return count

        return self._write(revoke)

    def purge_expired_tokens(self, limit: int = 10_000) -> int:
        """Remove up to ``limit`` expired tokens, oldest first (for a periodic job); how many."""
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_PURGE:
            raise InvalidUserData([f"limit: must be an integer from 1 to {MAX_PURGE}"])
        now = self.clock()
        return self._write(
            lambda uow: _with_store(uow, 0, lambda store: credentials.purge_expired(store, now, limit)), bulk=True
        )

    # -- API keys ------------------------------------------------------------------------------

    def create_api_key(self, username: str, name: str = "") -> str:
        """A new API key for the user, shown once (stored hashed, no expiry). It works while the user is active."""
        require_str("username", username)

        def create(uow: UnitOfWork) -> str:
            user = self._credential_owner(uow, username)
            store = credentials.install_credentials(uow.root)  # lazily on a database older than the store
            secret = credentials.create_api_key(store, user.id, name, self.clock())
            uow.note(f"codx-db: create API key of {user.username}")
            self._record_actor(uow, _credentials_of(user.id))
            return secret

        return self._write(create)

    def get_by_api_key(self, key: str) -> CodxUser | None:
        """The active user this API key belongs to, else None (unknown, revoked, user inactive or gone)."""

        def find(uow: UnitOfWork) -> CodxUser | None:
            store = _store(uow)
            found = None if store is None else credentials.find_api_key(store, key)
            return None if found is None else _active_user(uow, found.user_id)

        return self.database.run(find)

    def revoke_api_key(self, key: str) -> bool:
        """Remove an API key given its secret; False if it is unknown."""

        def revoke(uow: UnitOfWork) -> bool:
            store = _store(uow)
            found = None if store is None else credentials.find_api_key(store, key)
            if store is None or found is None:
                return False
            self._record_actor(uow, _credentials_of(found.user_id))
            return credentials.revoke_api_key(store, key)

        return self._write(revoke)

    def api_keys(self, username: str) -> list[ApiKeyInfo]:
        """The user's API keys, oldest first: key id, name, creation time (never the secret). UserNotFound."""
        require_str("username", username)

        def listing(uow: UnitOfWork) -> list[ApiKeyInfo]:
            user = _get(_users(uow), username)
            return _with_store(uow, [], lambda store: credentials.list_api_keys(store, user.id))

        return self.database.run(listing)

    def revoke_api_key_id(self, username: str, key_id: str) -> bool:
        """Remove the user's key with this ``key_id`` (from ``api_keys``); False if it has none. UserNotFound."""
        require_str("username", username)

        def revoke(uow: UnitOfWork) -> bool:
            user = _get(_users(uow), username)
            done = _with_store(uow, False, lambda store: credentials.revoke_api_key_id(store, user.id, key_id))
            if done:
                uow.note(f"codx-db: revoke API key {shown(key_id, 20)} of {user.username}")
                self._record_actor(uow, _credentials_of(user.id))
            return done

        return self._write(revoke)

    # -- units of work -------------------------------------------------------------------------

    def _credential_owner(self, uow: UnitOfWork, username: str) -> User:
        user = _get(_users(uow), username)
        # A credential must not outlive its user: a deletion or deactivation committing meanwhile
        # changes the user, so this write conflicts, is retried and sees the change.
        uow.connection.readCurrent(user)
        return user

    def _read(self, fn: Callable[[UserContainer], T]) -> T:
        return self.database.run(lambda uow: fn(_users(uow)))

    def _write(self, fn: Callable[[UnitOfWork], T], *, bulk: bool = False) -> T:
        """Run ``fn`` as a write by ``actor``: its own unit of work if ``bulk``, else through the queue.

        ``fn`` must return plain data and be replayable (it may share a transaction with other
        threads' writes and run again after a conflict); it calls ``_record_actor`` for the
        user it changes. Inside a caller's unit of work it joins it, as ``run`` does.
        """
        if bulk or self.database.current() is not None:

            def write(uow: UnitOfWork) -> T:
                name_transaction(uow, self.actor)
                return fn(uow)

            return self.database.run(write)
        return self.database.submit(fn, user=self.actor)

    def _record_actor(self, uow: UnitOfWork, user_id: str) -> None:
        """Name ``actor`` as the one who changed ``user_id`` (or, ``_credentials_of(id)``, its credentials).

        Recorded only where the transaction's user does not say it (history.note_actor: a group
        commit of several actors, a second actor in a caller's unit of work).
        """
        note_actor(uow, user_id, self.actor)


# -- revocation hooks: called by UserDB's writes inside their unit of work -----------------------


def forget_tokens(root: Any, user: User) -> int:
    """Revoke every token of ``user`` (password change, deactivation); how many."""
    store = root.get(CREDENTIALS_KEY)
    return 0 if store is None else credentials.revoke_user_tokens(store, user.id)


def forget_tokens_if_deactivated(root: Any, user: User, changed: dict[str, Any]) -> int:
    """After an update: revoke the user's tokens if this change made it inactive; how many."""
    return forget_tokens(root, user) if "is_active" in changed and not user.is_active else 0


def forget_credentials(root: Any, user: User) -> int:
    """Revoke every token and API key of ``user`` (deletion); how many."""
    store = root.get(CREDENTIALS_KEY)
    if store is None:
        return 0
    return credentials.revoke_user_tokens(store, user.id) + credentials.revoke_user_api_keys(store, user.id)


# -- helpers ---------------------------------------------------------------------------------------


def _credentials_of(user_id: str) -> str:
    """The actor-map key of a credential write that leaves the user itself unchanged.

    Not the user id: the user's history names whoever changed the user in a transaction
    (history.actor_of), and a token issued in the same shared batch is not such a change.
    """
    return f"{user_id}:credentials"


def _users(uow: UnitOfWork) -> UserContainer:
    return uow.root[USERS_KEY]  # type: ignore[no-any-return]


def _store(uow: UnitOfWork) -> CredentialStore | None:
    return uow.root.get(CREDENTIALS_KEY)  # type: ignore[no-any-return]


def _with_store(uow: UnitOfWork, missing: T, fn: Callable[[CredentialStore], T]) -> T:
    """``fn(store)``, or ``missing`` on a database that has no store yet (so no credentials)."""
    store = _store(uow)
    return missing if store is None else fn(store)


def _get(users: UserContainer, username: str) -> User:
    user = users.find_by_username(username)
    if user is None:
        raise UserNotFound(username)
    return user


def _active_user(uow: UnitOfWork, user_id: str) -> CodxUser | None:
    user = _users(uow).users.get(user_id)
    return None if user is None or not user.is_active else CodxUser.from_model(user)


def _context(user: User) -> PasswordContext:
    return PasswordContext(user.username, user.email, user.full_name)
