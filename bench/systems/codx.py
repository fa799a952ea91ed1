"""codx-db itself: ``UserDB`` over ``Database(CodxJuniorGlobalSettings.load(...))``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from bench.systems.base import System
from bench.workload import UserRecord


class CodxSystem(System):
    """codx-db through its public API only (bulk: ``UserDB.import_users`` per batch)."""

    storage: ClassVar[str]

    def settings_overrides(self) -> dict[str, Any]:
        """Settings for this storage; ``options`` (``--codx-setting``) win."""
        if self.storage == "file":
            base: dict[str, Any] = {"db_backend": "file", "db_file_path": Path(self.location)}
        else:
            base = {"db_backend": "postgres", "db_dsn": self.location}
        return {**base, **self.options}

    def open(self) -> None:
        from db.database import Database
        from db.settings import CodxJuniorGlobalSettings
        from db.user_db import UserDB

        # _env_file=None: a developer's .env must not change what is measured.
        settings = CodxJuniorGlobalSettings.load(_env_file=None, **self.settings_overrides())
        self.database = Database(settings)
        self.database.open()
        self.users = UserDB(self.database)

    def close(self) -> None:
        self.database.close()

    def create(self, user: UserRecord) -> None:
        self.users.create(username=user.username, email=user.email, full_name=user.full_name)

    def get(self, username: str) -> Any:
        return self.users.get(username)

    def get_by_email(self, email: str) -> Any:
        return self.users.get_by_email(email)

    def get_many(self, usernames: Sequence[str]) -> list[Any]:
        with self.database.transaction():
            return [self.users.get(name) for name in usernames]

    def update(self, username: str, full_name: str) -> Any:
        return self.users.update(username, full_name=full_name)

    def page(self, offset: int, limit: int) -> list[Any]:
        return self.users.list(offset=offset, limit=limit)

    def page_after(self, username: str, limit: int) -> list[Any]:
        return self.users.list(after=username, limit=limit)

    def delete(self, username: str) -> None:
        self.users.delete(username)

    def bulk(self, users: Sequence[UserRecord]) -> None:
        # UserDB.import_users: one transaction per batch, like every other system's bulk.
        self.users.import_users(
            {"username": user.username, "email": user.email, "full_name": user.full_name} for user in users
        )

    def count(self) -> int:
        return self.users.count()

    def existing(self, usernames: Sequence[str]) -> set[str]:
        with self.database.transaction():
            return {name.lower() for name in usernames if self.users.find(name) is not None}

    def consistency(self) -> tuple[bool, str] | None:
        from db.ops.check import check

        report = check(self.database)
        summary = f"{report.users:,} users, {report.problem_count} problems"
        if report.problems:
            summary += ": " + "; ".join(p.message for p in report.problems[:3])
        return report.ok, summary

    def commit_batches(self) -> tuple[int, int] | None:
        # Group commit (db/group_commit.py): batches committed so far and the writes they held.
        sizes = self.database.group_commit_stats().sizes
        return sum(sizes.values()), sum(size * count for size, count in sizes.items())


class CodxFile(CodxSystem):
    name = "codx-file"
    storage = "file"
    description = "codx-db UserDB on FileStorage"


class CodxPostgres(CodxSystem):
    name = "codx-pg"
    storage = "postgres"
    description = "codx-db UserDB on RelStorage/PostgreSQL"
