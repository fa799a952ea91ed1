"""check's look at the users themselves: loadable, stored under their own id, valid, unique keys.

What passes is what the index checks (db/ops/check.py) compare the indexes with.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

from persistent import Persistent
from ZODB.POSException import POSKeyError
from ZODB.utils import oid_repr

from db.ops.reports import Problem, describe_user
from db.users.models import User, UserContainer, email_key, username_key


class _DropFailedLoad(logging.Filter):
    """ZODB.Connection logs a failed load, with its traceback, before raising it: check reports it
    as a problem instead. This thread's records only: another thread's failed loads still show."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.thread == self.thread and str(record.msg).startswith("Couldn't load state"))


@contextlib.contextmanager
def _quiet_failed_load() -> Iterator[None]:
    logger, drop = logging.getLogger("ZODB.Connection"), _DropFailedLoad()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def valid_users(container: UserContainer, problems: list[Problem]) -> list[User]:
    """Users stored under their own id; report (and leave out) everything else."""
    valid: list[User] = []
    seen: dict[str, dict[str, User]] = {"username": {}, "email": {}}  # kind -> key -> first user
    for key, user in container.users.items():
        try:
            if isinstance(user, Persistent):
                with _quiet_failed_load():
                    user._p_activate()  # its record: gone after a pack that raced writers (POSKeyError)
        except POSKeyError:
            problems.append(
                Problem(
                    code="object-missing",
                    message=f"users[{key!r}]: its stored object {oid_repr(user._p_oid)} is missing from the "
                    "storage, so the user cannot be read (a damaged database: restore a backup)",
                )
            )
            continue
        if not isinstance(user, User):
            problems.append(
                Problem(code="not-a-user", message=f"users[{key!r}] holds a {type(user).__name__}, not a User")
            )
            continue
        if getattr(user, "id", None) != key:
            problems.append(
                Problem(
                    code="user-wrong-id",
                    message=f"user {describe_user(user)} is stored under id {key!r}, not its own id",
                )
            )
            continue
        if not isinstance(getattr(user, "username", None), str) or not username_key(user.username):
            problems.append(Problem(code="user-invalid", message=f"user id {key!r} has no valid username"))
            continue
        if user.email is not None and not isinstance(user.email, str):
            problems.append(
                Problem(code="user-invalid", message=f"user {describe_user(user)} has an email that is not a string")
            )
            continue
        keys = {"username": username_key(user.username), "email": email_key(user.email) if user.email else None}
        for kind, unique_key in keys.items():
            if unique_key is None:
                continue
            first = seen[kind].setdefault(unique_key, user)
            if first is not user:
                problems.append(
                    Problem(
                        code=f"{kind}-duplicate",
                        message=f"users {describe_user(first)} and {describe_user(user)} "
                        f"share the {kind} key {unique_key!r}",
                    )
                )
        valid.append(user)
    return valid
