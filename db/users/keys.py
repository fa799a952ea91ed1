"""Index keys: how a username, an email or a GitHub login becomes the key an index stores.

Keys are normalised ``str`` (a total, stable order for BTrees). Changing one of these changes
what the stored indexes mean: that takes a generation that rebuilds them.
"""

from __future__ import annotations

import unicodedata

from db.errors import InvalidUserData
from db.users.unicode_policy import skeleton

# Longest text a key is made of. Stored names and addresses are at most 254 characters, and NFKC
# shrinks text at most ~3x (a Hangul syllable typed as three jamo), so no longer text can match a
# stored key. The bound matters: NFKC's cost grows with the square of a run of combining marks
# (40,000 of them: 3 s holding the GIL), so lookups refuse longer text by name first
# (``require_str``), and the key functions refuse what slips past.
KEY_INPUT_MAX = 1024


def fits(text: str) -> bool:
    """True when ``text``, trimmed, is short enough to make a key of (``KEY_INPUT_MAX``)."""
    return len(text) <= KEY_INPUT_MAX or len(text.strip()) <= KEY_INPUT_MAX


def _bounded(text: str) -> str:
    if not fits(text):
        raise ValueError(f"must be at most {KEY_INPUT_MAX} characters")
    return text.strip()


def require_str(name: str, value: object) -> None:
    """InvalidUserData unless ``value`` is a string short enough to look up (a caller's mistake, named)."""
    if not isinstance(value, str):
        raise InvalidUserData([f"{name}: must be a string"])
    if not fits(value):
        raise InvalidUserData([f"{name}: must be at most {KEY_INPUT_MAX} characters"])


def _fold(text: str) -> str:
    """NFKC, trimmed, case-folded: the unique index keys' form."""
    return unicodedata.normalize("NFKC", _bounded(text)).strip().casefold()


def username_key(username: str) -> str:
    """Index key of a username: NFKC, trimmed, case-folded (a fullwidth "ALICE " and "alice" collide)."""
    return _fold(username)


def same_username(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` name the same user (the index's comparison; False for text too long to)."""
    return fits(a) and fits(b) and username_key(a) == username_key(b)


def username_skeleton(username: str) -> str:
    """Look-alike key of a username (UTS #39 skeleton): admin with a Cyrillic U+0430 for its "a" shares "admin"'s."""
    return skeleton(unicodedata.normalize("NFKC", _bounded(username)).strip())


def email_key(email: str) -> str:
    """Index key of an email address: NFKC, trimmed, case-folded."""
    return _fold(email)


def login_claim(username: str) -> str | None:
    """The ``by_email`` key a username holding an "@" claims, or None (generation 9, evolve9.py).

    A create with that email then inserts the same key, so the two writes collide even when
    concurrent; ``find_by_email`` ignores claims (the user's own email may differ). Tested on the
    folded key: NFKC makes a fullwidth at sign (U+FF20) an "@".
    """
    key = email_key(username)
    return key if "@" in key else None


def github_key(login: str) -> str:
    """Index key of a GitHub login: trimmed, without a leading "@", case-folded (GitHub ignores case)."""
    return login.strip().removeprefix("@").casefold()
