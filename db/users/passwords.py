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

# The hard floor only: an empty password is no password. How long a new password must be is
# the policy's rule (db/users/policy.py, CODX_JUNIOR_DB_PASSWORD_MIN_LENGTH, default 8).
MIN_PASSWORD_LENGTH = 1
# Argon2 itself accepts any length; the cap stops a megabyte "password" from being a cheap DoS.
MAX_PASSWORD_LENGTH = 1024

# OWASP Password Storage Cheat Sheet (argon2id): m=19 MiB, t=2, p=1 is the minimum
# configuration; we use exactly that, which costs ~20 ms per hash on a 2-core machine.
ARGON2_TIME_COST = 2
ARGON2_MEMORY_KIB = 19_456
ARGON2_PARALLELISM = 1

# Bounds on the work one stored hash may ask of a login. A hash beyond them is refused at
# import and never verified at login: otherwise anyone who knows a username could hold a
# worker for minutes per attempt (bcrypt cost 31 is 2**31 rounds; argon2 m=4 GiB, t=100000).
# The worst hash accepted costs about a second (on a 2-core machine) and 256 MiB:
# * bcrypt 4..14: 4 is bcrypt's own minimum; codx-junior writes 12 (~0.25 s); 14 (~1 s) leaves
#   room for a deployment that raised it; each step doubles the time.
# * argon2 memory <= 256 MiB, time <= 10, parallelism <= 16, and memory x time <= 1 GiB: this
#   covers OWASP's configurations, argon2-cffi's and RFC 9106's low-memory default (64 MiB, t=3,
#   p=4) and Django's (100 MiB, t=2, p=8); RFC 9106's 2 GiB option is no setting for a web login.
# * at most 256 characters: a well-formed hash of any accepted scheme is shorter (~100).
BCRYPT_MIN_COST = 4
BCRYPT_MAX_COST = 14
ARGON2_MAX_MEMORY_KIB = 256 * 1024
ARGON2_MAX_TIME_COST = 10
ARGON2_MAX_PARALLELISM = 16
ARGON2_MAX_WORK_KIB = 1024 * 1024  # memory_cost x time_cost
MAX_HASH_LENGTH = 256

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
        raise InvalidUserData(["password: must not be empty"])
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


# bcrypt as codx-junior's bcrypt package writes it: prefix, 2-digit cost, 22 salt + 31 hash
# characters. The one copy of the pattern (the codx-junior import checks logins with it).
BCRYPT_HASH = re.compile(r"\$2[aby]\$([0-9]{2})\$[./A-Za-z0-9]{53}")


def check_password_hash(value: object) -> str:
    """A stored hash brought from elsewhere: an argon2 hash or a bcrypt one, well formed, within the cost bounds.

    Raises InvalidUserData without quoting the value (a hash is a secret too).
    """
    if not isinstance(value, str):
        raise InvalidUserData(["password_hash: must be a string"])
    problem = hash_cost_problem(value)
    if problem is not None:
        raise InvalidUserData([f"password_hash: {problem}"])
    return value


def hash_cost_problem(stored_hash: str) -> str | None:
    """Why this hash must not be verified (malformed, or beyond the cost bounds), or None.

    Cheap (it parses, never hashes); the message gives parameters, never the hash.
    """
    if len(stored_hash) > MAX_HASH_LENGTH:
        return f"longer than {MAX_HASH_LENGTH} characters: not a password hash"
    if is_bcrypt(stored_hash):
        match = BCRYPT_HASH.fullmatch(stored_hash)
        if match is None:
            return "not a well-formed bcrypt hash"
        cost = int(match.group(1))
        if cost < BCRYPT_MIN_COST:
            return f"bcrypt cost {cost} is below {BCRYPT_MIN_COST}{_NEVER_VERIFIES}"
        if cost > BCRYPT_MAX_COST:
            return f"bcrypt cost {cost} is outside {BCRYPT_MIN_COST}..{BCRYPT_MAX_COST}{_TOO_COSTLY}"
        return None
    if stored_hash.startswith("$argon2"):
        try:
            params = argon2.extract_parameters(stored_hash)
        except InvalidHashError:
            return "not a well-formed argon2 hash"
        if params.time_cost < 1 or params.parallelism < 1 or params.memory_cost < 8 * params.parallelism:
            return (
                f"argon2 parameters m={params.memory_cost}, t={params.time_cost}, p={params.parallelism} are "
                f"below argon2's minimums (t >= 1, p >= 1, m >= 8 x p){_NEVER_VERIFIES}"
            )
        if params.memory_cost > ARGON2_MAX_MEMORY_KIB:
            return f"argon2 memory {params.memory_cost} KiB is above {ARGON2_MAX_MEMORY_KIB} KiB{_TOO_COSTLY}"
        if params.time_cost > ARGON2_MAX_TIME_COST:
            return f"argon2 time cost {params.time_cost} is above {ARGON2_MAX_TIME_COST}{_TOO_COSTLY}"
        if params.parallelism > ARGON2_MAX_PARALLELISM:
            return f"argon2 parallelism {params.parallelism} is above {ARGON2_MAX_PARALLELISM}{_TOO_COSTLY}"
        if params.memory_cost * params.time_cost > ARGON2_MAX_WORK_KIB:
            return (
                f"argon2 memory x time cost {params.memory_cost} KiB x {params.time_cost} is above "
                f"{ARGON2_MAX_WORK_KIB} KiB{_TOO_COSTLY}"
            )
        return None
    return "must be an argon2 ($argon2id$...) or bcrypt ($2b$...) hash"


_TOO_COSTLY = " (verifying it would hold a login for too long): the user must be given a new password"
_NEVER_VERIFIES = " (no password can ever match it): the user must be given a new password"


def verify_password(stored_hash: str | None, password: str) -> tuple[bool, bool]:
    """(password matches, hash should be replaced). A missing hash never matches.

    The work done does not depend on whether there was a hash: a missing one is checked
    against a dummy hash, so timing does not tell who has an account. So is a hash that
    ``hash_cost_problem`` refuses: it never matches, and is never verified.
    """
    if stored_hash and hash_cost_problem(stored_hash) is not None:
        stored_hash = None  # never verified: it would hold the login for minutes
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
                # bcrypt reads 72 bytes: codx-junior's bcrypt (< 5) cut longer passwords
                # silently, bcrypt 5 raises on them; cut them as the hash was made.
                ok = bcrypt.checkpw(candidate.encode("utf-8")[:72], stored_hash.encode("ascii"))
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
