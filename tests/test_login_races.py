"""Two writes racing for one login: a username that is another user's email, in either order.

``check_unique`` refuses a username equal to another user's email (a login by that string would
find the wrong user) and an email equal to another user's username. The two live in different
indexes (``by_username``, ``by_email``), so two units of work that each check the other index,
find nothing and write their own inserted no common key: nothing conflicted (or BTrees merged
the two inserts when they shared a bucket), and both committed. Since generation 9 a username
holding an "@" also claims its key in ``by_email``, so both insert that key. Each unit
here runs on its own connection of one database, begun before the other commits, and the
second writes as another process would (its own partition of ``users``, its own count shard:
otherwise the two would meet there, by accident, as two threads of one process do).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import transaction
from _pytest.monkeypatch import MonkeyPatch
from transaction.interfaces import TransientError

from db.database import Database
from db.errors import UserAlreadyExists
from db.user_db import UserDB
from db.users import indexes, repository
from db.users.models import USERS_KEY
from db.users.schemas import UserCreate
from tests.conftest import CONTRACT_BACKENDS

LOGIN = "shared@example.com"


class _Unit:
    """A unit of work on its own connection, begun now, committed when the test says."""

    def __init__(self, database: Database, other_process: MonkeyPatch | None = None) -> None:
        self.other_process = other_process
        self.manager = transaction.TransactionManager(explicit=True)
        self.connection = database.open().open(transaction_manager=self.manager)
        self.manager.begin()
        self.users: Any = self.connection.root()[USERS_KEY]

    def create(self, **fields: Any) -> None:
        if self.other_process is None:
            repository.add(self.users, UserCreate.parse(fields), None, prefetch=True)
            return
        with self.other_process.context() as patch:
            shard = (indexes.process_shard() + 1) % indexes.COUNT_SHARDS
            patch.setattr(indexes, "process_shard", lambda: shard)
            patch.setattr(repository, "process_shard", lambda: shard)
            patch.setattr(repository, "process_id_prefix", lambda: "zz")
            repository.add(self.users, UserCreate.parse(fields), None, prefetch=True)

    def close(self) -> None:
        try:
            if self._open():
                self.manager.abort()
        finally:
            self.connection.close()

    def _open(self) -> bool:
        try:
            self.manager.get()
        except transaction.interfaces.NoTransaction:
            return False
        return True


@pytest.fixture
def racing(database: Database, monkeypatch: MonkeyPatch) -> Iterator[tuple[Database, _Unit, _Unit]]:
    UserDB(database).create(username="seed")  # the container and its indexes exist
    first, second = _Unit(database), _Unit(database, other_process=monkeypatch)
    try:
        yield database, first, second
    finally:
        first.close()
        second.close()


# In-memory storage resolves no conflicts: there the two units always collide on the buckets both
# write, claim or not. On file and PostgreSQL only the claim (migrations/evolve9.py) makes them.


@pytest.mark.parametrize("first_commits", ["username", "email"])
@pytest.mark.parametrize("settings", [p for p in CONTRACT_BACKENDS if p.values[0] != "memory"], indirect=True)
def test_a_username_and_an_email_racing_for_one_login_cannot_both_commit(
    racing: tuple[Database, _Unit, _Unit], first_commits: str
) -> None:
    database, by_name, by_mail = racing
    by_name.create(username=LOGIN)
    by_mail.create(username="bob", email=LOGIN)
    winner, loser = (by_name, by_mail) if first_commits == "username" else (by_mail, by_name)
    winner.manager.commit()
    with pytest.raises(TransientError):
        loser.manager.commit()
    # Retried as ``Database.run`` would, the loser now sees the winner and is refused by name.
    users = UserDB(database)
    with pytest.raises(UserAlreadyExists):
        if loser is by_name:
            users.create(username=LOGIN)
        else:
            users.create(username="bob", email=LOGIN)
    assert users.count() == 2
    # The winner is the one stored: by username, or as the owner of that email.
    if first_commits == "username":
        assert users.get(LOGIN).username == LOGIN
    else:
        assert users.get_by_email(LOGIN).username == "bob"
