"""Who makes a change: the name recorded as a transaction's user, shown as history's "by".

Checked where it is given (``UserDB(actor=)``, ``Database.run(user=)``, ``--actor``), not at
commit: FileStorage refuses a user name over 64 KiB only when the transaction is written, after
the work is done, and PostgreSQL would store any length. A group-commit batch of several actors
records each user's actor in the transaction's extension (db/users/history.py), which FileStorage
also bounds (64 KiB): 64 actors of ``MAX_ACTOR_CHARS`` 4-byte characters take 26 KiB of it.
"""

from __future__ import annotations

import unicodedata

# Long enough for an email address or "alice (codx-db cli)"; short enough for a batch's extension.
MAX_ACTOR_CHARS = 100


def check_actor(value: object, name: str = "actor") -> str | None:
    """``value`` if it can name who makes a change (None or "": nobody named); else an error naming ``name``.

    TypeError unless a str or None; ValueError if blank, longer than ``MAX_ACTOR_CHARS``, or holding
    an unprintable character (a newline would split history's one-line output).
    """
    if value is None or value == "":
        return None  # "" has always meant nobody named (a falsy user)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string or None, not {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name} is blank: give a name, or None for no {name}")
    if len(value) > MAX_ACTOR_CHARS:
        raise ValueError(f"{name} must be at most {MAX_ACTOR_CHARS} characters (got {len(value)})")
    bad = next((char for char in value if not char.isprintable() and unicodedata.category(char) != "Zs"), None)
    if bad is not None:  # spaces (a no-break space in a name) are fine; controls and format characters not
        raise ValueError(f"{name} holds the unprintable character U+{ord(bad):04X}")
    return value
