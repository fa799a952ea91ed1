"""Password policy (db/users/policy.py): each validator, settings, plugged-in validators, no echo."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from db.errors import ConfigurationError, InvalidUserData
from db.settings import CodxJuniorGlobalSettings
from db.users.policy import (
    CommonPassword,
    MinimumLength,
    PasswordContext,
    PasswordPolicy,
    UserAttributeSimilarity,
    common_passwords,
)

ALICE = PasswordContext(username="alice.smith", email="alice.smith@example.com", full_name="Alice Smith")


def settings(**overrides: object) -> CodxJuniorGlobalSettings:
    return CodxJuniorGlobalSettings.load(db_backend="memory", **overrides)


def test_minimum_length() -> None:
    rule = MinimumLength(10)
    assert rule.validate("a" * 9, None) == "must be at least 10 characters"
    assert rule.validate("a" * 10, None) is None
    with pytest.raises(ValueError):
        MinimumLength(0)


def test_common_passwords_come_from_zxcvbns_list() -> None:
    # A package's list, not a hand-typed one: tens of thousands of entries.
    assert len(common_passwords()) >= 20_000
    rule = CommonPassword()
    for password in ("password", "PassWord", " qwerty123 ", "letmein", "trustno1", "iloveyou"):
        assert rule.validate(password, None) is not None, password
    assert rule.validate("violet-harbour-tide", None) is None


@pytest.mark.parametrize(
    ("password", "attribute"),
    [
        ("alice.smith", "the username"),
        ("Alice.Smith1", "the username"),
        ("smith2024", "the username"),  # a part of it
        ("alice.smith@example.co", "the email address"),
        ("example.com!", "the email address"),
    ],
)
def test_similarity_to_the_users_attributes(password: str, attribute: str) -> None:
    assert UserAttributeSimilarity().validate(password, ALICE) == f"is too similar to {attribute}"


def test_similarity_to_the_full_name() -> None:
    context = PasswordContext(username="bob", full_name="Alice Smith")
    assert UserAttributeSimilarity().validate("AliceSmith!", context) == "is too similar to the full name"


@pytest.mark.parametrize("password", ["violet-harbour-tide", "ecila-htims", "x" * 40 + "alice"])
def test_dissimilar_passwords_pass(password: str) -> None:
    # Letters of the username in another order, or a long password containing a short part, are not "similar".
    assert UserAttributeSimilarity().validate(password, ALICE) is None


def test_similarity_without_a_user_or_with_empty_attributes() -> None:
    rule = UserAttributeSimilarity()
    assert rule.validate("alice.smith", None) is None
    assert rule.validate("alice.smith", PasswordContext(username="bob", email=None, full_name="")) is None
    with pytest.raises(ValueError):
        UserAttributeSimilarity(max_similarity=0)


def test_the_default_policy_reports_every_problem_and_never_the_password() -> None:
    policy = PasswordPolicy.from_settings(settings())
    assert [type(v).__name__ for v in policy.validators] == [
        "MinimumLength",
        "CommonPassword",
        "UserAttributeSimilarity",
    ]
    with pytest.raises(InvalidUserData) as excinfo:
        policy.check("dragon", PasswordContext(username="dragon"))
    assert excinfo.value.errors == [
        "password: must be at least 8 characters",
        "password: is too common (it is on a list of the 30,000 most used passwords): choose another",
        "password: is too similar to the username",
    ]
    policy.check("violet-harbour-tide", ALICE)
    assert policy.problems("violet-harbour-tide", ALICE) == []


def test_no_message_echoes_the_password_or_the_users_values() -> None:
    policy = PasswordPolicy.from_settings(settings(db_password_min_length=40))
    secret = "Zq9-alice.smith-secret"
    with pytest.raises(InvalidUserData) as excinfo:
        policy.check(secret, ALICE)
    text = str(excinfo.value)
    assert excinfo.value.errors  # it did refuse
    for value in (secret, "alice.smith", "example.com", "Alice Smith"):
        assert value not in text
    assert secret not in repr(policy)


def test_settings_choose_the_validators_and_the_length() -> None:
    assert PasswordPolicy.from_settings(settings(db_password_validators="")).problems("a") == []
    policy = PasswordPolicy.from_settings(settings(db_password_validators="length", db_password_min_length=12))
    assert policy.problems("password123") == ["password: must be at least 12 characters"]
    assert policy.problems("password1234") == []  # common, but only the length is checked


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A module on sys.path holding validators, as a deployment would install one."""
    name = "codx_test_password_rules"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            class NoSeasons:
                def validate(self, password, context):
                    if any(s in password.lower() for s in ("spring", "summer", "autumn", "winter")):
                        return "must not contain a season"
                    return None

            class NeedsArguments:
                def __init__(self, level):
                    self.level = level

                def validate(self, password, context):
                    return None

            class NoValidate:
                pass
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_a_plugged_in_validator_runs_in_order(plugin_module: str) -> None:
    policy = PasswordPolicy.from_settings(settings(db_password_validators=f"length,{plugin_module}:NoSeasons"))
    assert policy.problems("Summer") == [
        "password: must be at least 8 characters",
        "password: must not contain a season",
    ]
    assert policy.problems("violet-harbour-tide") == []


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("codx_no_such_module:Rule", "cannot import 'codx_no_such_module:Rule' (ModuleNotFoundError"),
        ("{module}:Missing", "cannot import '{module}:Missing' (AttributeError"),
        ("{module}:NeedsArguments", "'{module}:NeedsArguments' cannot be built with no arguments (TypeError"),
        ("{module}:NoValidate", "'{module}:NoValidate' has no validate(password, context) method"),
    ],
)
def test_a_broken_plugged_in_validator_is_a_configuration_error_naming_the_setting(
    plugin_module: str, entry: str, message: str
) -> None:
    configured = settings(db_password_validators=entry.format(module=plugin_module))
    with pytest.raises(ConfigurationError) as excinfo:
        PasswordPolicy.from_settings(configured)
    text = str(excinfo.value)
    assert text.startswith("CODX_JUNIOR_DB_PASSWORD_VALIDATORS (db_password_validators): ")
    assert message.format(module=plugin_module) in text


def test_an_unknown_built_in_name_fails_when_settings_load() -> None:
    with pytest.raises(ConfigurationError, match=r"db_password_validators\): unknown password validator 'strong'"):
        settings(db_password_validators="length,strong")


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("\uff50\uff41\uff53\uff53\uff57\uff4f\uff52\uff44\uff11", "password1"),  # fullwidth
        ("\U0001d429\U0001d41a\U0001d42c\U0001d42c\U0001d430\U0001d428\U0001d42b\U0001d41d1", "password1"),  # bold
    ],
)
def test_the_policy_judges_the_password_that_is_hashed(tmp_path: Path, typed: str, meant: str) -> None:
    """A password is hashed (and later typed) in its NFKC form: a fullwidth "password1" logs in as "password1",
    so the policy must refuse it as it refuses "password1"."""
    from db.database import Database
    from db.user_db import UserDB

    database = Database(CodxJuniorGlobalSettings.load(db_backend="memory"))
    try:
        users = UserDB(database)
        with pytest.raises(InvalidUserData, match="too common"):
            users.create(username="ann", password=meant)
        with pytest.raises(InvalidUserData, match="too common"):
            users.create(username="ann", password=typed)
        assert users.find("ann") is None
    finally:
        database.close()


@pytest.mark.parametrize(
    "password",
    [
        "\ufdfa",  # one character, 18 after NFKC
        "\u33ff" * 3,  # 3 characters, 9 after NFKC
        "\ufb03" * 3,  # 3 ligatures, 9 letters after NFKC
        "e\u0301" * 4,  # 8 characters typed (NFD), 4 after NFKC
    ],
)
def test_the_minimum_length_counts_the_shorter_of_typed_and_normalized(password: str) -> None:
    """NFKC can lengthen a password (a ligature, a symbol that is a word) or shorten it (an accent
    typed apart): the minimum holds for both forms, as neither is shorter than the rule asks."""
    problems = PasswordPolicy.from_settings(CodxJuniorGlobalSettings.load(db_backend="memory")).problems(password)
    assert "password: must be at least 8 characters" in problems
