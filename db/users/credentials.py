"""Credentials beyond passwords: access tokens and API keys, stored only as hashes.

**The classes below are pickled into databases under this module path
(``db.users.credentials.AccessToken`` ...): never move or rename them.** A move needs a
module shim at the old path and a generation that rewrites every record.

Secrets are 256 random bits (``secrets.token_urlsafe(32)``) behind a prefix that tells a
token (``cxt_``) from a key (``cxk_``) and lets secret scanners spot a leaked one. Only the
SHA-256 of a secret is stored, and that digest is the index key: a lookup is one BTree get,
then a constant-time compare. An unsalted fast hash is right here: the secret already has
256 bits of entropy, so a slow or salted hash would add nothing, and a salt would make the
digest useless as a key. API keys imported from codx-junior (any non-empty string) are
hashed the same way.

Every function works inside the caller's unit of work and never commits; time comes in as
``now`` (timezone-aware), so the caller's clock decides expiry. Users are referenced by
user id. Nothing here logs a secret, and no repr shows one (a ``key_id``, the first 12 hex
characters of the digest, names a record instead).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from BTrees.OOBTree import OOBTree, OOTreeSet
from persistent import Persistent
from pydantic import BaseModel, ConfigDict

from db.errors import GenerationError, InvalidUserData
from db.users.indexes import IndexSet, IndexTree, read_current_entry

CREDENTIALS_KEY = "codx_db.credentials"

TOKEN_PREFIX = "cxt_"
API_KEY_PREFIX = "cxk_"
SECRET_BYTES = 32  # 256 bits
# Longer input is refused before hashing: no real credential is that long, and a lookup
# must not hash a megabyte for an anonymous caller.
MAX_SECRET_LENGTH = 512
MAX_KEY_NAME_LENGTH = 100
# An imported key shorter than this is accepted (it must keep working) but worth a warning in
# the import report: "short api_key: rotate it" (codx-junior never checked what it stored).
SHORT_IMPORTED_KEY = 20
KEY_ID_LENGTH = 12
MIN_TTL = timedelta(seconds=1)
MAX_TTL = timedelta(days=400)
# issue_token removes at most this many expired tokens: the writer pays, but a bounded price.
PURGE_ON_ISSUE = 100


class AccessToken(Persistent):
    """An access token: the digest of its secret, its user, and when it expires (UTC)."""

    def __init__(self, *, digest: str, user_id: str, created_at: datetime, expires_at: datetime) -> None:
        self.digest = digest
        self.user_id = user_id
        self.created_at = created_at
        self.expires_at = expires_at

    @property
    def key_id(self) -> str:
        """Names the token in messages without its secret."""
        return self.digest[:KEY_ID_LENGTH]

    def __repr__(self) -> str:
        return f"<AccessToken {self.key_id} user={self.user_id} expires={self.expires_at.isoformat()}>"


class ApiKey(Persistent):
    """An API key: the digest of its secret, its user, a name, and whether it was imported."""

    def __init__(self, *, digest: str, user_id: str, name: str, created_at: datetime, imported: bool) -> None:
        self.digest = digest
        self.user_id = user_id
        self.name = name
        self.created_at = created_at
        self.imported = imported  # came from codx-junior (import or the admin UI's save)

    @property
    def key_id(self) -> str:
        """Names the key in listings and in ``revoke_api_key_id`` without its secret."""
        return self.digest[:KEY_ID_LENGTH]

    def __repr__(self) -> str:
        return f"<ApiKey {self.key_id} user={self.user_id} name={self.name!r}>"


class CredentialStore(Persistent):
    """Tokens and API keys by digest, with per-user sets and a time-ordered expiry index.

    From generation 6 every index is an ``IndexTree``/``IndexSet`` (db/users/indexes.py), as
    the user indexes: random digests land in every bucket, so with BTrees' 30-entry buckets
    concurrent logins kept splitting buckets under each other (readCurrent conflicts). A store
    made earlier holds ``OOBTree``/``OOTreeSet`` until migrations/evolve6.py copies them.
    """

    def __init__(self) -> None:
        self.tokens: OOBTree = IndexTree()  # digest -> AccessToken
        self.tokens_by_user: OOBTree = IndexTree()  # user id -> IndexSet of digests
        # "<expires_at, UTC, ISO, microseconds>|<digest>": sorted by time, so purging walks the front.
        self.token_expiry: OOTreeSet = IndexSet()
        self.api_keys: OOBTree = IndexTree()  # digest -> ApiKey
        self.api_keys_by_user: OOBTree = IndexTree()  # user id -> IndexSet of digests

    def __repr__(self) -> str:
        return "<CredentialStore>"


class ApiKeyInfo(BaseModel):
    """An API key as listed to its owner or an admin: never the secret."""

    model_config = ConfigDict(frozen=True)

    key_id: str
    name: str
    created_at: datetime
    imported: bool


def install_credentials(root: Any) -> CredentialStore:
    """Create the credential store in the root mapping if missing; return it."""
    store = root.get(CREDENTIALS_KEY)
    if store is None:
        store = root[CREDENTIALS_KEY] = CredentialStore()
    return store  # type: ignore[no-any-return]


def credential_store(root: Any) -> CredentialStore:
    """The credential store; GenerationError if this database predates it."""
    store = root.get(CREDENTIALS_KEY)
    if store is None:
        raise GenerationError(
            "this database has no credential store (it predates tokens and API keys): run `codx-db migrate --apply`"
        )
    return store  # type: ignore[no-any-return]


# -- access tokens ---------------------------------------------------------------------------


def issue_token(store: CredentialStore, user_id: str, ttl: timedelta, now: datetime) -> str:
    """A new token for the user, valid for ``ttl`` from ``now``; shown once, stored as a hash.

    Also removes up to PURGE_ON_ISSUE expired tokens, oldest first, in the same transaction.
    """
    _check_user_id(user_id)
    if not isinstance(ttl, timedelta) or not MIN_TTL <= ttl <= MAX_TTL:
        raise InvalidUserData(["ttl: must be between 1 second and 400 days"])
    now = _utc(now)
    purge_expired(store, now, PURGE_ON_ISSUE)
    secret = TOKEN_PREFIX + secrets.token_urlsafe(SECRET_BYTES)
    digest = _digest(secret)
    token = AccessToken(digest=digest, user_id=user_id, created_at=now, expires_at=now + ttl)
    store.tokens[digest] = token
    _user_set(store.tokens_by_user, user_id).add(digest)
    store.token_expiry.add(_expiry_key(token.expires_at, digest))
    return secret


def find_token(store: CredentialStore, secret: object, now: datetime) -> AccessToken | None:
    """The unexpired token with this secret, or None (unknown, expired, revoked, or not a token). Never writes."""
    token = _lookup(store.tokens, secret)
    if token is None or _utc(now) >= token.expires_at:
        return None
    return token  # type: ignore[no-any-return]


def token_owner(store: CredentialStore, secret: object) -> str | None:
    """The user id of the token with this secret, expired or not; None if there is none. Never writes."""
    token = _lookup(store.tokens, secret)
    return None if token is None else str(token.user_id)


def revoke_token(store: CredentialStore, secret: object) -> bool:
    """Remove the token with this secret; False if there is none."""
    token = _lookup(store.tokens, secret)
    if token is None:
        return False
    _remove_token(store, token)
    return True


def revoke_user_tokens(store: CredentialStore, user_id: str) -> int:
    """Remove every token of the user (password change, deactivation, deletion); return how many."""
    return _remove_all_of_user(store.tokens, store.tokens_by_user, user_id, lambda token: _remove_token(store, token))


def purge_expired(store: CredentialStore, now: datetime, limit: int) -> int:
    """Remove up to ``limit`` tokens expired at ``now``, oldest first; return how many."""
    if limit < 1:
        return 0
    # "~" sorts after every hex digit: the bound takes in the tokens expiring exactly now.
    bound = _expiry_key(_utc(now), "~")
    expired = []
    for key in store.token_expiry.keys(max=bound):
        expired.append(key)
        if len(expired) == limit:
            break
    for key in expired:
        digest = key.partition("|")[2]
        token = store.tokens.get(digest)
        if token is None:  # an index entry without its token: drop the entry alone
            store.token_expiry.discard(key)
        else:
            _remove_token(store, token)
    return len(expired)


def _remove_token(store: CredentialStore, token: AccessToken) -> None:
    store.tokens.pop(token.digest, None)
    store.token_expiry.discard(_expiry_key(token.expires_at, token.digest))
    _discard_from_user_set(store.tokens_by_user, token.user_id, token.digest)


def _expiry_key(expires_at: datetime, digest: str) -> str:
    # A naive UTC ISO string with fixed-width fields sorts like the time itself (years 1-9999).
    return f"{expires_at.astimezone(UTC).replace(tzinfo=None).isoformat(timespec='microseconds')}|{digest}"


# -- API keys --------------------------------------------------------------------------------


def create_api_key(store: CredentialStore, user_id: str, name: str, now: datetime) -> str:
    """A new API key for the user; shown once, stored as a hash. It has no expiry."""
    _check_user_id(user_id)
    name = _check_key_name(name)
    secret = API_KEY_PREFIX + secrets.token_urlsafe(SECRET_BYTES)
    _add_api_key(store, _digest(secret), user_id, name, _utc(now), imported=False)
    return secret


def import_api_key(store: CredentialStore, user_id: str, secret: object, name: str, now: datetime) -> bool:
    """Store a key codx-junior gave the user (any non-empty string), so it keeps working.

    False if the user already has this key (nothing written); InvalidUserData if another
    user has it (keys are unique: one key, one user).
    """
    _check_user_id(user_id)
    name = _check_key_name(name)
    if not isinstance(secret, str) or not secret.strip():
        raise InvalidUserData(["api_key: must be a non-empty string"])
    if len(secret) > MAX_SECRET_LENGTH:
        raise InvalidUserData([f"api_key: must be at most {MAX_SECRET_LENGTH} characters"])
    digest = _digest(secret)
    existing = store.api_keys.get(digest)
    if existing is not None:
        if existing.user_id == user_id:
            return False
        raise InvalidUserData(["api_key: already belongs to another user: give this user another key"])
    _add_api_key(store, digest, user_id, name, _utc(now), imported=True)
    return True


def find_api_key(store: CredentialStore, secret: object) -> ApiKey | None:
    """The API key with this secret, or None. Never writes."""
    return _lookup(store.api_keys, secret)  # type: ignore[no-any-return]


def revoke_api_key(store: CredentialStore, secret: object) -> bool:
    """Remove the API key with this secret; False if there is none."""
    key = _lookup(store.api_keys, secret)
    if key is None:
        return False
    _remove_api_key(store, key)
    return True


def revoke_api_key_id(store: CredentialStore, user_id: str, key_id: str) -> bool:
    """Remove the user's key named by ``key_id`` (from ``list_api_keys``): an admin revokes without the secret.

    False if the user has no such key; a key of another user is never touched.
    """
    _check_user_id(user_id)
    if not isinstance(key_id, str) or len(key_id) != KEY_ID_LENGTH:
        return False
    digests = store.api_keys_by_user.get(user_id)
    if digests is None:
        return False
    # The digests sort as hex strings: the ones starting with key_id are one range.
    matches = list(digests.keys(min=key_id, max=key_id + "~"))
    if len(matches) != 1:  # none, or (at 2**-48 odds) two keys sharing the prefix: ask for the secret
        return False
    key = store.api_keys.get(matches[0])
    if key is None:
        _discard_from_user_set(store.api_keys_by_user, user_id, matches[0])
        return False
    _remove_api_key(store, key)
    return True


def list_api_keys(store: CredentialStore, user_id: str) -> list[ApiKeyInfo]:
    """The user's API keys, oldest first (then by name): key id, name, creation time, imported."""
    _check_user_id(user_id)
    keys = [store.api_keys.get(digest) for digest in store.api_keys_by_user.get(user_id, ())]
    infos = [
        ApiKeyInfo(key_id=key.key_id, name=key.name, created_at=key.created_at, imported=key.imported)
        for key in keys
        if key is not None
    ]
    return sorted(infos, key=lambda info: (info.created_at, info.name, info.key_id))


def revoke_user_api_keys(store: CredentialStore, user_id: str) -> int:
    """Remove every API key of the user (deletion); return how many."""
    return _remove_all_of_user(store.api_keys, store.api_keys_by_user, user_id, lambda key: _remove_api_key(store, key))


def _remove_all_of_user(records: OOBTree, by_user: OOBTree, user_id: str, remove: Callable[[Any], None]) -> int:
    """Remove every record (token or key) the user's digest set names; return how many there were."""
    _check_user_id(user_id)
    # What issuing a credential to this user writes: a revocation must conflict with one
    # committed meanwhile (db/users/indexes.py ``read_current_entry``).
    read_current_entry(by_user, user_id)
    digests = by_user.get(user_id)
    if digests is None:
        return 0
    count = 0
    for digest in list(digests):
        record = records.get(digest)
        if record is not None:
            remove(record)
            count += 1
    # Removing the last record deletes the set; a set left with dangling digests goes too.
    by_user.pop(user_id, None)
    return count


def _add_api_key(
    store: CredentialStore, digest: str, user_id: str, name: str, now: datetime, *, imported: bool
) -> None:
    store.api_keys[digest] = ApiKey(digest=digest, user_id=user_id, name=name, created_at=now, imported=imported)
    _user_set(store.api_keys_by_user, user_id).add(digest)


def _remove_api_key(store: CredentialStore, key: ApiKey) -> None:
    store.api_keys.pop(key.digest, None)
    _discard_from_user_set(store.api_keys_by_user, key.user_id, key.digest)


def _check_key_name(name: object) -> str:
    if not isinstance(name, str):
        raise InvalidUserData(["name: must be a string"])
    name = name.strip()
    if len(name) > MAX_KEY_NAME_LENGTH:
        raise InvalidUserData([f"name: must be at most {MAX_KEY_NAME_LENGTH} characters"])
    if not name.isprintable():
        raise InvalidUserData(["name: must not contain control or invisible characters"])
    return name


# -- shared ----------------------------------------------------------------------------------


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _lookup(tree: OOBTree, secret: object) -> Any:
    """One index probe by digest, confirmed by a constant-time compare; None for anything unusable."""
    if not isinstance(secret, str) or not secret or len(secret) > MAX_SECRET_LENGTH:
        return None
    digest = _digest(secret)
    record = tree.get(digest)
    if record is None or not hmac.compare_digest(record.digest, digest):
        return None
    return record


def _user_set(index: OOBTree, user_id: str) -> OOTreeSet:
    digests = index.get(user_id)
    if digests is None:
        digests = index[user_id] = IndexSet()
    return digests


def _discard_from_user_set(index: OOBTree, user_id: str, digest: str) -> None:
    digests = index.get(user_id)
    if digests is None:
        return
    digests.discard(digest)
    if not digests:  # no empty sets left behind: a user without credentials has no entry
        del index[user_id]


def _check_user_id(user_id: object) -> None:
    # A BTree key must be a str (a total order); anything else is a caller's bug.
    if not isinstance(user_id, str) or not user_id:
        raise TypeError(f"user_id must be a non-empty str, not {type(user_id).__name__}")


def _utc(now: datetime) -> datetime:
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise TypeError("now must be a timezone-aware datetime")
    return now.astimezone(UTC)
