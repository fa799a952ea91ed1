"""TinyDB on a JSON file, the way codx-junior stores users today (default JSONStorage)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from tinydb import Query, TinyDB

from bench.systems.base import System
from bench.workload import UserRecord


def _document(user: UserRecord) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()
    return {
        "id": uuid.uuid4().hex,
        "username": user.username,
        "username_key": user.username.lower(),
        "email": user.email,
        "email_key": user.email.lower(),
        "full_name": user.full_name,
        "is_active": True,
        "is_superuser": False,
        "password_hash": None,
        "created_at": now,
        "updated_at": now,
        "avatar": "",
        "theme": "dim",
        "role": "user",
        "github": "",
        "projects": [],
    }


class TinyDbJson(System):
    name = "tinydb"
    storage = "file"
    description = "TinyDB 4 on a JSON file (default storage, no caching middleware)"

    def open(self) -> None:
        self.db = TinyDB(self.location)
        self.table = self.db.table("users")
        self.q = Query()

    def close(self) -> None:
        self.db.close()

    def _find(self, field: str, value: str) -> dict[str, Any]:
        found = self.table.get(self.q[field] == value.lower())
        if found is None:
            raise KeyError(value)
        return dict(found)

    def create(self, user: UserRecord) -> None:
        # TinyDB has no unique index: check, then insert (each call reads, the insert writes).
        taken = (self.q.username_key == user.username.lower()) | (self.q.email_key == user.email.lower())
        if self.table.contains(taken):
            raise ValueError(f"user {user.username} already exists")
        self.table.insert(_document(user))

    def get(self, username: str) -> Any:
        return self._find("username_key", username)

    def get_by_email(self, email: str) -> Any:
        return self._find("email_key", email)

    def get_many(self, usernames: Sequence[str]) -> list[Any]:
        # No transactions: the best TinyDB can do is one read of the file for the whole batch.
        wanted = {name.lower() for name in usernames}
        by_key = {d["username_key"]: dict(d) for d in self.table.search(self.q.username_key.one_of(wanted))}
        return [by_key[name.lower()] for name in usernames]

    def update(self, username: str, full_name: str) -> Any:
        changed = self.table.update(
            {"full_name": full_name, "updated_at": datetime.now(UTC).isoformat()},
            self.q.username_key == username.lower(),
        )
        if not changed:
            raise KeyError(username)
        return changed

    def page(self, offset: int, limit: int) -> list[Any]:
        ordered = sorted(self.table.all(), key=lambda d: d["username_key"])
        return [dict(d) for d in ordered[offset : offset + limit]]

    def page_after(self, username: str, limit: int) -> list[Any]:
        key = username.lower()
        ordered = sorted((d for d in self.table.all() if d["username_key"] > key), key=lambda d: d["username_key"])
        return [dict(d) for d in ordered[:limit]]

    def delete(self, username: str) -> None:
        if not self.table.remove(self.q.username_key == username.lower()):
            raise KeyError(username)

    def bulk(self, users: Sequence[UserRecord]) -> None:
        # Uniqueness against one read of the table per batch, then one write.
        taken = {d["username_key"] for d in self.table.all()} | {d["email_key"] for d in self.table.all()}
        for user in users:
            keys = (user.username.lower(), user.email.lower())
            if keys[0] in taken or keys[1] in taken:
                raise ValueError(f"user {user.username} already exists")
            taken.update(keys)
        self.table.insert_multiple(_document(user) for user in users)

    def count(self) -> int:
        return len(self.table)
