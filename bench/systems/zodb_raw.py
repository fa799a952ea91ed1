"""Raw ZODB + BTrees, used the plain way: ``ZODB.DB.transaction()`` per operation.

The floor under codx-db's layer: the same storages with the same settings codx-db uses by
default (object cache 10,000 per connection, pool 7; RelStorage history-free with a 64 MB
local cache), the same fields on each user, the same three OOBTree indexes and a ``Length``,
and no validation or snapshots beyond copying the fields out into a dict.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

import ZODB
from BTrees.Length import Length
from BTrees.OOBTree import OOBTree
from persistent import Persistent

from bench.systems.base import System
from bench.workload import UserRecord

CACHE_SIZE = 10_000
POOL_SIZE = 7
CACHE_LOCAL_MB = 64


class PlainUser(Persistent):
    """A user as a plain ZODB programmer would store it."""

    def __init__(self, user_id: str, username: str, email: str, full_name: str) -> None:
        self.id = user_id
        self.username = username
        self.email = email
        self.full_name = full_name
        self.is_active = True
        self.is_superuser = False
        self.password_hash: str | None = None
        self.created_at = self.updated_at = datetime.now(UTC)
        # codx-junior's own fields, stored with their defaults like codx-db does.
        self.avatar = ""
        self.theme = "dim"
        self.role = "user"
        self.github = ""
        self.projects: tuple[tuple[str, str, bool], ...] = ()


def _snapshot(user: PlainUser) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "email": user.email,
        "full_name": user.full_name,
        "is_active": user.is_active,
        "is_superuser": user.is_superuser,
        "created_at": user.created_at,
        "updated_at": user.updated_at,
        "avatar": user.avatar,
        "theme": user.theme,
        "role": user.role,
        "github": user.github,
        "projects": list(user.projects),
    }


class ZodbSystem(System):
    """Shared by both storages; subclasses open the storage."""

    storage: ClassVar[str]

    def open_storage(self) -> Any:
        raise NotImplementedError

    def open(self) -> None:
        self.db = ZODB.DB(self.open_storage(), pool_size=POOL_SIZE, cache_size=CACHE_SIZE)
        with self.db.transaction() as conn:
            root = conn.root()
            if "by_username" not in root:
                root["users"] = OOBTree()
                root["by_username"] = OOBTree()
                root["by_email"] = OOBTree()
                root["count"] = Length(0)

    def close(self) -> None:
        self.db.close()

    @staticmethod
    def _add(root: Any, user: UserRecord) -> None:
        ukey, ekey = user.username.lower(), user.email.lower()
        if ukey in root["by_username"] or ekey in root["by_email"]:
            raise ValueError(f"user {user.username} already exists")
        stored = PlainUser(uuid.uuid4().hex, user.username, user.email, user.full_name)
        root["users"][stored.id] = stored
        root["by_username"][ukey] = stored
        root["by_email"][ekey] = stored
        root["count"].change(1)

    @staticmethod
    def _find(root: Any, username: str) -> PlainUser:
        user = root["by_username"].get(username.lower())
        if user is None:
            raise KeyError(username)
        return user  # type: ignore[no-any-return]

    def create(self, user: UserRecord) -> None:
        with self.db.transaction() as conn:
            self._add(conn.root(), user)

    def get(self, username: str) -> Any:
        with self.db.transaction() as conn:
            return _snapshot(self._find(conn.root(), username))

    def get_by_email(self, email: str) -> Any:
        with self.db.transaction() as conn:
            user = conn.root()["by_email"].get(email.lower())
            if user is None:
                raise KeyError(email)
            return _snapshot(user)

    def get_many(self, usernames: Sequence[str]) -> list[Any]:
        with self.db.transaction() as conn:
            root = conn.root()
            return [_snapshot(self._find(root, name)) for name in usernames]

    def update(self, username: str, full_name: str) -> Any:
        with self.db.transaction() as conn:
            user = self._find(conn.root(), username)
            user.full_name = full_name
            user.updated_at = datetime.now(UTC)
            return _snapshot(user)

    def page(self, offset: int, limit: int) -> list[Any]:
        with self.db.transaction() as conn:
            # BTree item sequences slice in C, a bucket at a time.
            return [_snapshot(u) for u in conn.root()["by_username"].values()[offset : offset + limit]]

    def page_after(self, username: str, limit: int) -> list[Any]:
        with self.db.transaction() as conn:
            found = conn.root()["by_username"].values(min=username.lower(), excludemin=True)
            return [_snapshot(u) for u in itertools.islice(found, limit)]

    def delete(self, username: str) -> None:
        with self.db.transaction() as conn:
            root = conn.root()
            user = self._find(root, username)
            del root["users"][user.id]
            del root["by_username"][user.username.lower()]
            del root["by_email"][user.email.lower()]
            root["count"].change(-1)

    def bulk(self, users: Sequence[UserRecord]) -> None:
        with self.db.transaction() as conn:
            root = conn.root()
            for user in users:
                self._add(root, user)

    def count(self) -> int:
        with self.db.transaction() as conn:
            return int(conn.root()["count"]())

    def existing(self, usernames: Sequence[str]) -> set[str]:
        with self.db.transaction() as conn:
            index = conn.root()["by_username"]
            return {name.lower() for name in usernames if name.lower() in index}

    def consistency(self) -> tuple[bool, str] | None:
        # The count the Length keeps against the entries of each index (what raw ZODB has).
        with self.db.transaction() as conn:
            root = conn.root()
            sizes = {name: len(root[name]) for name in ("users", "by_username", "by_email")}
            counted = int(root["count"]())
        ok = all(size == counted for size in sizes.values())
        return ok, f"Length {counted:,}, entries {sizes}"


class ZodbFile(ZodbSystem):
    name = "zodb-file"
    storage = "file"
    description = "raw ZODB + BTrees on FileStorage"

    def open_storage(self) -> Any:
        from ZODB.FileStorage import FileStorage

        return FileStorage(self.location)


class ZodbPostgres(ZodbSystem):
    name = "zodb-pg"
    storage = "postgres"
    description = "raw ZODB + BTrees on RelStorage/PostgreSQL"

    def open_storage(self) -> Any:
        from relstorage.adapters.postgresql import PostgreSQLAdapter
        from relstorage.options import Options
        from relstorage.storage import RelStorage

        options = Options(keep_history=False, cache_local_mb=CACHE_LOCAL_MB, driver="psycopg2", create_schema=True)
        return RelStorage(PostgreSQLAdapter(dsn=self.location, options=options), options=options)
