"""Password hashing: argon2id (argon2-cffi), with bcrypt hashes imported from codx-junior.

A password is only ever held in memory long enough to hash or verify it. Verification
reports whether the stored hash should be replaced (old parameters, or bcrypt), so UserDB
can rehash on the next successful login.
"""

from __future__ import annotations

import functools
import re
import unicodedata

import argon2
import bcrypt
from argon2.exceptions import InvalidHashError, VerificationError

from db.errors import InvalidUserData

MIN_PASSWORD_LENGTH = 8
# Argon2 itself accepts any length; the cap stops a megabyte "password" from being a cheap DoS.
MAX_PASSWORD_LENGTH = 1024

# OWASP Password Storage Cheat Sheet (argon2id): m=19 MiB, t=2, p=1 is the minimum
# configuration; we use exactly that, which costs ~20 ms per hash on a 2-core machine.
ARGON2_TIME_COST = 2
ARGON2_MEMORY_KIB = 19_456
ARGON2_PARALLELISM = 1

_hasher = argon2.PasswordHasher(
    time_cost=ARGON2_TIME_COST,
    memory_cost=ARGON2_MEMORY_KIB,
    parallelism=ARGON2_PARALLELISM,
    type=argon2.Type.ID,
)


def check_password(password: object) -> str:
    """Return the password if it meets the rules, else raise InvalidUserData (never echoing it)."""
    if not isinstance(password, str):
        raise InvalidUserData(["password: must be a string"])
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidUserData([f"password: must be at least {MIN_PASSWORD_LENGTH} characters"])
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidUserData([f"password: must be at most {MAX_PASSWORD_LENGTH} characters"])
    if "\x00" in password:
        raise InvalidUserData(["password: must not contain NUL characters"])
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidUserData(["password: must be valid Unicode text (no lone surrogates)"]) from None
    return password


def normalize_password(password: str) -> str:
    """NFKC, as NIST SP 800-63B 5.1.1.2 asks: "café" typed as NFC or NFD is the same password."""
    return password if password.isascii() else unicodedata.normalize("NFKC", password)


def hash_password(password: str) -> str:
    """An argon2id hash of a password that passed ``check_password`` (hashed in NFKC form)."""
    return _hasher.hash(normalize_password(password))


def is_bcrypt(stored_hash: str) -> bool:
    """True for the ``$2a$``/``$2b$``/``$2y$`` hashes codx-junior wrote."""
    return stored_hash.startswith(("$2a$", "$2b$", "$2y$"))


_BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")


def check_password_hash(value: object) -> str:
    """A stored hash brought from elsewhere: an argon2 hash or a bcrypt one, well formed.

    Raises InvalidUserData without quoting the value (a hash is a secret too).
    """
    if not isinstance(value, str):
        raise InvalidUserData(["password_hash: must be a string"])
    if is_bcrypt(value):
        if not _BCRYPT_HASH.fullmatch(value):
            raise InvalidUserData(["password_hash: not a well-formed bcrypt hash"])
        return value
    if value.startswith("$argon2"):
        try:
            argon2.extract_parameters(value)
        except InvalidHashError:
            raise InvalidUserData(["password_hash: not a well-formed argon2 hash"]) from None
        return value
    raise InvalidUserData(["password_hash: must be an argon2 ($argon2id$...) or bcrypt ($2b$...) hash"])


def verify_password(stored_hash: str | None, password: str) -> tuple[bool, bool]:
    """(password matches, hash should be replaced). A missing hash never matches.

    The work done does not depend on whether there was a hash: a missing one is checked
    against a dummy hash, so timing does not tell who has an account.
    """
    if not stored_hash:
        dummy_verify(password)
        return False, False
    # Hashes made before passwords were normalised hold the raw form: the NFKC form is tried
    # first, then the raw one, and a raw match asks for a rehash (of the NFKC form).
    normalized = normalize_password(password)
    candidates = (normalized,) if normalized == password else (normalized, password)
    for tried, candidate in enumerate(candidates):
        if is_bcrypt(stored_hash):
            try:
                ok = bcrypt.checkpw(candidate.encode("utf-8"), stored_hash.encode("ascii"))
            except (ValueError, UnicodeEncodeError):
                ok = False
            if ok:
                return True, True
        elif _verify_argon2(stored_hash, candidate):
            return True, tried > 0 or _hasher.check_needs_rehash(stored_hash)
    return False, False


def dummy_verify(password: str) -> None:
    """Spend the time of a real verification (for unknown or inactive users)."""
    # As many verifications as verify_password makes for a wrong password: one per form.
    normalized = normalize_password(password)
    _verify_argon2(_dummy_hash(), normalized)
    if normalized != password:
        _verify_argon2(_dummy_hash(), password)


def _verify_argon2(stored_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError, UnicodeEncodeError):
        # A password that cannot be encoded (lone surrogates) cannot be anyone's password.
        return False


@functools.cache
def _dummy_hash() -> str:
    # A hash of a random secret with the current parameters: verifying against it costs
    # what a real verification costs, and no password can match it.
    import secrets

    return _hasher.hash(secrets.token_urlsafe(32))
