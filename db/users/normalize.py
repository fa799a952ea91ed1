"""The field rules: normalise and check one value, raising ``ValueError`` with what is wrong.

The pydantic schemas (db/users/schemas.py) call these from their validators; the rules
themselves are listed in that module's docstring.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Any

from email_validator import EmailNotValidError, validate_email

from db.users.unicode_policy import describe, find_invisible, invisible_message, mixed_scripts

# Long enough for an email address used as a name (codx-junior has such users).
USERNAME_MAX = 254
EMAIL_MAX = 254
FULL_NAME_MAX = 200
# UTS #39 5.4: more than 4 nonspacing marks on one letter is "zalgo" text, not a name.
MAX_COMBINING_MARKS = 4
AVATAR_MAX = 2048
PROJECT_ID_MAX = 128
PERMISSIONS_MAX = 256
MAX_PROJECTS = 1000
ROLES = ("user", "admin")
_THEME_RE = re.compile(r"[A-Za-z0-9_-]{0,64}")
_GITHUB_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}")


def check_visible(value: str, display: bool = True) -> None:
    """ValueError naming the first bidi control or invisible formatting character (see unicode_policy)."""
    invisible = find_invisible(value, display=display)
    if invisible is not None:
        raise ValueError(invisible_message(invisible))


def check_shown_text(value: str) -> None:
    """ValueError for text shown to people that holds control, lone surrogate or invisible characters."""
    if has_control_chars(value):
        raise ValueError("must not contain control characters or lone surrogates")
    check_visible(value)


def has_control_chars(value: str) -> bool:
    # Cc: control characters; Cs: lone surrogates, which cannot be encoded as UTF-8 and would
    # break every JSON response and terminal that later shows the value.
    if value.isprintable():  # the common case, in C: no Cc or Cs character is printable
        return False
    return any(unicodedata.category(c) in ("Cc", "Cs") for c in value)


# An ASCII username that passes every rule below (the rules stay the reference).
_PLAIN_USERNAME = re.compile(r"[!-~](?:[!-~]| (?! ))*")

# Unicode categories refused in a username: control, format (invisible), surrogate, private
# use, unassigned. Everything else printable is a name someone may have in codx-junior.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})


def _bounded(value: str, limit: int) -> str:
    """``value`` trimmed, refused when too long to fit ``limit`` once normalised.

    Checked before NFC/NFKC, whose cost grows with the square of a run of combining marks;
    normalisation shrinks text at most ~3x (db/users/keys.py ``KEY_INPUT_MAX``).
    """
    value = value.strip()
    if len(value) > 4 * limit:
        raise ValueError(f"must be at most {limit} characters")
    return value


def normalize_username(value: str) -> str:
    """Trim and check a username; raise ValueError naming the rule broken.

    The name is stored with its exact spelling (codx-junior's chats refer to it as written):
    only surrounding whitespace goes. The rules are checked on its NFKC form, the form the
    unique key (``username_key``) is made of, so a fullwidth or compatibility spelling cannot
    slip an invisible or mixed-script name past them.
    """
    name = value.strip()
    if not name:
        raise ValueError("must not be empty")
    if len(name) > USERNAME_MAX:
        raise ValueError(f"must be at most {USERNAME_MAX} characters")
    if _PLAIN_USERNAME.fullmatch(name):  # the common case, in C
        return name
    folded = unicodedata.normalize("NFKC", name).strip()
    if not folded:
        raise ValueError("must not be empty")
    check_visible(folded, display=False)
    bad = sorted({c for c in name + folded if unicodedata.category(c) in _REFUSED_CATEGORIES})
    if bad:
        raise ValueError(f"must not contain control, invisible or unassigned characters ({describe(bad[0])})")
    if "  " in folded:
        raise ValueError("must not hold two spaces in a row")
    _check_marks(folded)
    scripts = mixed_scripts(folded)
    if scripts:
        raise ValueError(
            f"mixes the scripts {', '.join(s.title() for s in scripts)}: write it in one script "
            "(mixed scripts make look-alikes of other names)"
        )
    return name


def _is_mark(char: str) -> bool:
    # Nonspacing and spacing combining marks: Devanagari vowel signs, Arabic harakat...
    # Enclosing marks (Me) draw a frame around the letter: not part of a name.
    return unicodedata.category(char) in ("Mn", "Mc")


def _check_marks(name: str) -> None:
    run = 0
    previous = ""
    for char in name:
        if not _is_mark(char):
            run, previous = 0, char
            continue
        run += 1
        if not previous.isalnum():
            raise ValueError(f"{describe(char)} must follow a letter or digit")
        if run > MAX_COMBINING_MARKS:
            raise ValueError(f"at most {MAX_COMBINING_MARKS} combining marks on one letter")


def normalize_email(value: str) -> str:
    """Validate an email address syntactically; return its normalised form."""
    address = unicodedata.normalize("NFKC", _bounded(value, EMAIL_MAX)).strip()
    if len(address) > EMAIL_MAX:
        raise ValueError(f"must be at most {EMAIL_MAX} characters")
    local, at, domain = address.rpartition("@")
    if at and is_special_use_domain(domain):
        # email-validator refuses these even without deliverability checks; codx-junior's
        # users have them (admin@localhost). Its local-part rules still apply, checked against
        # a placeholder domain: its module-level list of special names is never changed.
        checked = _validate(f"{local}@example.com")
        return f"{checked.local_part}@{domain.lower()}"
    if at and _PLAIN_LOCAL_PART.fullmatch(local):
        # The common case, fast: a plain ASCII local part needs no normalisation, and the
        # domain (validated by email-validator, ~100 us) is shared by many users.
        return f"{local}@{_normalized_domain(domain)}"
    return str(_validate(address).normalized)


# Special-use names (RFC 6761, RFC 6762, RFC 8375, ICANN's .internal) accepted as email domains:
# the name itself, or any name under it.
SPECIAL_USE_DOMAINS = ("localhost", "local", "internal", "test", "home.arpa")
_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def is_special_use_domain(domain: str) -> bool:
    """True for ``localhost`` and a well-formed host name under a special-use domain."""
    name = domain.lower()
    if len(name) > 253 or not all(_LDH_LABEL.fullmatch(label) for label in name.split(".")):
        return False
    return name == "localhost" or any(name.endswith("." + suffix) for suffix in SPECIAL_USE_DOMAINS)


def _validate(address: str) -> Any:
    try:
        return validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid email address ({exc})") from None


@functools.lru_cache(maxsize=4096)
def _normalized_domain(domain: str) -> str:
    """A domain as email-validator normalises it (lower case, IDNA decoded), cached."""
    return str(_validate(f"a@{domain}").domain)


# RFC 5322 dot-atom of ASCII characters, at most 64 long: what email-validator accepts as a
# local part and returns unchanged.
_PLAIN_LOCAL_PART = re.compile(r"(?=.{1,64}\Z)[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


def normalize_optional_email(value: str) -> str | None:
    """An email address, or None for ``""`` (codx-junior's "no email")."""
    return normalize_email(value) if value.strip() else None


def email_for_lookup(value: str) -> str:
    """The stored form of an address typed at login or lookup (punycode domains included).

    Anything that does not validate cannot be stored, so it is looked up as typed (and
    simply not found).
    """
    try:
        return normalize_email(value)
    except ValueError:
        return value


def normalize_avatar(value: str) -> str:
    """An avatar URL or path: trimmed, bounded, printable."""
    value = value.strip()
    if len(value) > AVATAR_MAX:
        raise ValueError(f"must be at most {AVATAR_MAX} characters")
    if has_control_chars(value):
        raise ValueError("must not contain control characters or lone surrogates")
    check_visible(value, display=False)  # a URL or path: nothing invisible has a place in it
    return value


def normalize_theme(value: str) -> str:
    """A UI theme name such as ``dim`` or ``dark``; ``""`` (codx-junior stores it) is kept."""
    value = value.strip()
    if not _THEME_RE.fullmatch(value):
        raise ValueError("must be 0-64 letters, digits, '_' or '-'")
    return value


def normalize_role(value: str) -> str:
    """``user`` or ``admin`` (case-insensitive)."""
    role = value.strip().lower()
    if role not in ROLES:
        raise ValueError(f"must be one of {', '.join(ROLES)}")
    return role


def normalize_github(value: str) -> str:
    """Empty, or a GitHub login."""
    value = value.strip().removeprefix("@")
    if value and not _GITHUB_RE.fullmatch(value):
        raise ValueError("must be a GitHub login: 1-39 letters, digits or single hyphens")
    return value


MAX_APPS = 64
APP_MAX = 64
MAX_PERMISSIONS = 64
PERMISSION_MAX = 64


def normalize_apps(value: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """codx-junior's ``apps`` (e.g. ``["coder", "viewer"]``): order and duplicates kept, as written."""
    return _names(value, MAX_APPS, APP_MAX)


def normalize_permission_list(value: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Permissions written as a list (codx-junior's default ``[]``): kept as a tuple, as written."""
    return _names(value, MAX_PERMISSIONS, PERMISSION_MAX)


def _names(value: list[str] | tuple[str, ...], max_entries: int, max_length: int) -> tuple[str, ...]:
    if len(value) > max_entries:
        raise ValueError(f"at most {max_entries} entries")
    for index, name in enumerate(value):
        if not 1 <= len(name) <= max_length:
            raise ValueError(f"[{index}] must be 1-{max_length} characters")
        if has_control_chars(name):
            raise ValueError(f"[{index}] must not contain control characters or lone surrogates")
        check_visible(name, display=False)
    return tuple(value)


def normalize_full_name(value: str) -> str:
    """Trim a display name and check its length and characters."""
    name = unicodedata.normalize("NFC", _bounded(value, FULL_NAME_MAX)).strip()
    if len(name) > FULL_NAME_MAX:
        raise ValueError(f"must be at most {FULL_NAME_MAX} characters")
    check_shown_text(name)
    return name
