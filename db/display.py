"""Lists and values shortened for people: reports and errors stay readable whatever the data's size.

A list that grows with the data (problems found, users imported, differences) shows its first
items, then one ``... and N more`` line; a value that grows with the input is cut with the
number of characters left out. ``--json`` output carries counts next to capped lists.
"""

from __future__ import annotations

from collections.abc import Sequence

MAX_LISTED = 50  # items of one list shown to people
MAX_VALUE_CHARS = 200  # characters of one value shown to people


def capped(items: Sequence[str], limit: int = MAX_LISTED, what: str = "") -> list[str]:
    """The first ``limit`` items, then ``... and N more [what]`` if there were more."""
    shown = list(items[:limit])
    if len(items) > limit:
        shown.append(f"... and {len(items) - limit} more{f' {what}' if what else ''}")
    return shown


def joined(items: Sequence[str], limit: int = MAX_LISTED, what: str = "") -> str:
    """``capped`` items on one line, comma-separated."""
    return ", ".join(capped(items, limit, what))


def shorten(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how many were left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def plural(number: object, noun: str) -> str:
    """``1 user``, ``2 users`` (and ``unknown users`` when the count is not known)."""
    return f"{number} {noun}{'' if number == 1 else 's'}"
