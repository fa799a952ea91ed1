"""Raw psycopg2 on PostgreSQL: one connection, one statement per operation (the near-limit)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from psycopg2.extras import execute_values

from bench.pg import CountingConnection, connect
from bench.systems.base import System
from bench.systems.sql_schema import COLUMNS, TABLE_DDL
from bench.workload import UserRecord

SELECT = f"SELECT {', '.join(COLUMNS)} FROM users"
_INSERT = "INSERT INTO users (id, username, email, full_name, created_at, updated_at) VALUES "


def _row(values: Sequence[Any]) -> dict[str, Any]:
    return dict(zip(COLUMNS, values, strict=True))


class Psycopg2Raw(System):
    name = "psycopg2"
    storage = "postgres"
    description = "raw psycopg2 on PostgreSQL, autocommit: one statement per operation"

    def open(self) -> None:
        self.conn: CountingConnection = connect(self.location, autocommit=True)
        with self.conn.cursor() as cur:
            cur.execute(TABLE_DDL)

    def close(self) -> None:
        self.conn.close()

    def _one(self, sql: str, params: Sequence[Any]) -> dict[str, Any]:
        with self.conn.cursor() as cur:
            cur.execute(sql, params)
            found = cur.fetchone()
        if found is None:
            raise KeyError(params[0])
        return _row(found)

    def create(self, user: UserRecord) -> None:
        now = datetime.now(UTC)
        with self.conn.cursor() as cur:
            cur.execute(
                _INSERT + "(%s, %s, %s, %s, %s, %s)",
                (uuid.uuid4().hex, user.username, user.email, user.full_name, now, now),
            )

    def get(self, username: str) -> Any:
        return self._one(SELECT + " WHERE lower(username) = %s", (username.lower(),))

    def get_by_email(self, email: str) -> Any:
        return self._one(SELECT + " WHERE lower(email) = %s", (email.lower(),))

    def get_many(self, usernames: Sequence[str]) -> list[Any]:
        # One consistent snapshot, one statement per get (like the other systems' loops).
        self.conn.autocommit = False
        try:
            self.conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
            result = [self.get(name) for name in usernames]
            self.conn.rollback()
            return result
        finally:
            self.conn.set_session(isolation_level="DEFAULT", readonly="default")
            self.conn.autocommit = True

    def update(self, username: str, full_name: str) -> Any:
        return self._one(
            f"UPDATE users SET full_name = %s, updated_at = %s WHERE lower(username) = %s "
            f"RETURNING {', '.join(COLUMNS)}",
            (full_name, datetime.now(UTC), username.lower()),
        )

    def page(self, offset: int, limit: int) -> list[Any]:
        with self.conn.cursor() as cur:
            cur.execute(SELECT + " ORDER BY lower(username) OFFSET %s LIMIT %s", (offset, limit))
            return [_row(found) for found in cur.fetchall()]

    def page_after(self, username: str, limit: int) -> list[Any]:
        with self.conn.cursor() as cur:
            cur.execute(
                SELECT + " WHERE lower(username) > %s ORDER BY lower(username) LIMIT %s", (username.lower(), limit)
            )
            return [_row(found) for found in cur.fetchall()]

    def delete(self, username: str) -> None:
        with self.conn.cursor() as cur:
            cur.execute("DELETE FROM users WHERE lower(username) = %s", (username.lower(),))
            if cur.rowcount != 1:
                raise KeyError(username)

    def bulk(self, users: Sequence[UserRecord]) -> None:
        now = datetime.now(UTC)
        rows = [(uuid.uuid4().hex, u.username, u.email, u.full_name, now, now) for u in users]
        self.conn.autocommit = False
        try:
            with self.conn.cursor() as cur:
                execute_values(cur, _INSERT + "%s", rows, page_size=len(rows))
            self.conn.commit()
        finally:
            self.conn.autocommit = True

    def count(self) -> int:
        with self.conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM users")
            found = cur.fetchone()
        return int(found[0]) if found else 0
