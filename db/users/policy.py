"""Password policy for new passwords: pluggable validators in the spirit of Django's ``AUTH_PASSWORD_VALIDATORS``.

The policy runs on clear passwords a person chooses (create, set_password, first login,
imported records with a ``password``), never on login, rehash, or imported hashes: a user
imported from codx-junior keeps logging in whatever the policy. The hard rules every
password meets (a string, at most 1024 characters, no NUL) stay in ``passwords.check_password``,
which runs first.

Settings: ``db_password_min_length`` and ``db_password_validators``, a comma list of
built-in names (``length``, ``common``, ``similarity``) and ``module:Class`` import paths.
A plugged-in class is built with no arguments and needs one method,
``validate(password, context) -> str | None``: the problem, worded to follow "password: ",
or None. A message names the rule, never the password or the user's values.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import re
from collections.abc import Sequence
from typing import NamedTuple, Protocol, runtime_checkable

from db.errors import ConfigurationError, InvalidUserData
from db.settings import PASSWORD_VALIDATOR_NAMES, CodxJuniorGlobalSettings, env_name
from db.users.passwords import normalize_password


class PasswordContext(NamedTuple):
    """What a password must not resemble: the user it is for."""

    username: str
    email: str | None = None
    full_name: str = ""


@runtime_checkable
class PasswordValidator(Protocol):
    """One rule: the problem with a password (to follow "password: "), or None."""

    def validate(self, password: str, context: PasswordContext | None) -> str | None: ...


class MinimumLength:
    """At least ``min_length`` characters (``db_password_min_length``)."""

    def __init__(self, min_length: int = 8) -> None:
        if min_length < 1:
            raise ValueError("min_length must be at least 1")
        self.min_length = min_length

    def validate(self, password: str, context: PasswordContext | None) -> str | None:
        if len(password) < self.min_length:
            return f"must be at least {self.min_length} characters"
        return None


@functools.cache
def common_passwords() -> frozenset[str]:
    """zxcvbn's list of the 30,000 most common passwords (lower-case), loaded on first use."""
    # A well-kept list from a maintained package (it is what zxcvbn scores against), not a
    # hand-typed one; imported here, not at module load, because it takes ~25 ms.
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(FREQUENCY_LISTS["passwords"])


class CommonPassword:
    """Not one of the most common passwords, whatever its case or surrounding spaces."""

    def validate(self, password: str, context: PasswordContext | None) -> str | None:
        if password.strip().casefold() in common_passwords():
            return "is too common (it is on a list of the 30,000 most used passwords): choose another"
        return None


class UserAttributeSimilarity:
    """Not too similar to the username, email or full name (Django's UserAttributeSimilarityValidator rule).

    Each attribute is compared whole and in the parts ``\\W+`` splits it into. Django decides
    on ``SequenceMatcher.quick_ratio()``; here it is only the cheap pre-filter and the exact
    ``ratio()`` decides, so a password sharing the username's letters in another order passes.
    """

    ATTRIBUTES = (("username", "the username"), ("email", "the email address"), ("full_name", "the full name"))

    def __init__(self, max_similarity: float = 0.7) -> None:
        if not 0.1 <= max_similarity <= 1.0:
            raise ValueError("max_similarity must be between 0.1 and 1.0")
        self.max_similarity = max_similarity

    def validate(self, password: str, context: PasswordContext | None) -> str | None:
        if context is None:
            return None
        folded = password.casefold()
        for attribute, label in self.ATTRIBUTES:
            value = getattr(context, attribute)
            if not isinstance(value, str) or not value:
                continue
            value = value.casefold()
            for part in {*re.split(r"\W+", value), value}:
                if part and self._similar(folded, part):
                    return f"is too similar to {label}"
        return None

    def _similar(self, password: str, part: str) -> bool:
        # Django's bound: a password ten times longer than a short part is not "similar" to it
        # (and comparing them would only cost time).
        if len(password) >= 10 * len(part) and len(part) < self.max_similarity / 2 * len(password):
            return False
        matcher = difflib.SequenceMatcher(a=password, b=part)
        return matcher.quick_ratio() >= self.max_similarity and matcher.ratio() >= self.max_similarity


class PasswordPolicy:
    """The validators a new password must pass; ``check`` reports every problem at once."""

    def __init__(self, validators: Sequence[PasswordValidator] = ()) -> None:
        self.validators = tuple(validators)

    @classmethod
    def from_settings(cls, settings: CodxJuniorGlobalSettings) -> PasswordPolicy:
        """The policy ``db_password_validators`` and ``db_password_min_length`` describe.

        Raises ConfigurationError naming the setting when a ``module:Class`` cannot be
        imported or built, or is not a validator.
        """
        names = [name for name in settings.db_password_validators.split(",") if name]
        return cls([_build(name, settings) for name in names])

    def problems(self, password: str, context: PasswordContext | None = None) -> list[str]:
        """Every problem with the password, each as ``password: ...`` (empty when it passes).

        Judged in the NFKC form it is hashed in (and typed in at login): fullwidth "password1" is "password1".
        """
        normalized = normalize_password(password)  # after check_password's length bound: never quadratic
        # NFKC lengthens some passwords (a ligature, a symbol standing for a word) and shortens
        # others (an accent typed apart): a length holds for the shorter form.
        shorter = min(password, normalized, key=len)
        found = []
        for validator in self.validators:
            problem = validator.validate(shorter if isinstance(validator, MinimumLength) else normalized, context)
            if problem:
                found.append(f"password: {problem}")
        return found

    def check(self, password: str, context: PasswordContext | None = None) -> None:
        """Raise InvalidUserData listing every problem with the password; never echoes it."""
        found = self.problems(password, context)
        if found:
            raise InvalidUserData(found)

    def __repr__(self) -> str:
        return f"PasswordPolicy({', '.join(type(v).__name__ for v in self.validators)})"


def _build(name: str, settings: CodxJuniorGlobalSettings) -> PasswordValidator:
    if name == "length":
        return MinimumLength(settings.db_password_min_length)
    if name == "common":
        return CommonPassword()
    if name == "similarity":
        return UserAttributeSimilarity()
    setting = f"{env_name('db_password_validators')} (db_password_validators)"
    module_name, _, class_name = name.partition(":")
    if not module_name or not class_name:
        known = ", ".join(PASSWORD_VALIDATOR_NAMES)
        raise ConfigurationError(f"{setting}: unknown password validator {name!r}: use {known} or module:Class")
    try:
        validator_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(
            f"{setting}: cannot import {name!r} ({type(exc).__name__}: {exc}): check the module is installed "
            f"and the class name, or use a built-in validator ({', '.join(PASSWORD_VALIDATOR_NAMES)})"
        ) from None
    try:
        validator = validator_class()
    except Exception as exc:  # noqa: BLE001 - any failure of a plugged-in class is a configuration problem
        raise ConfigurationError(
            f"{setting}: {name!r} cannot be built with no arguments ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(validator, PasswordValidator):
        raise ConfigurationError(f"{setting}: {name!r} has no validate(password, context) method")
    return validator
