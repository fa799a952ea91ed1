"""SQLAlchemy 2 ORM on PostgreSQL (psycopg2 driver): a mapped class, a session per operation."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import create_engine, func, insert, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from bench.pg import connect
from bench.systems.base import System
from bench.systems.sql_schema import TABLE_DDL
from bench.workload import UserRecord


class Base(DeclarativeBase):
    pass


# The table and its unique lower() indexes come from TABLE_DDL, shared with raw psycopg2.


class OrmUser(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(primary_key=True)
    username: Mapped[str]
    email: Mapped[str | None]
    full_name: Mapped[str] = mapped_column(default="")
    is_active: Mapped[bool] = mapped_column(default=True)
    is_superuser: Mapped[bool] = mapped_column(default=False)
    password_hash: Mapped[str | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    avatar: Mapped[str] = mapped_column(default="")
    theme: Mapped[str] = mapped_column(default="dim")
    role: Mapped[str] = mapped_column(default="user")
    github: Mapped[str] = mapped_column(default="")
    projects: Mapped[list[Any]] = mapped_column(JSONB, default=list)


def _new_row(user: UserRecord) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "id": uuid.uuid4().hex,
        "username": user.username,
        "email": user.email,
        "full_name": user.full_name,
        "created_at": now,
        "updated_at": now,
    }


def _by_username(username: str) -> Any:
    return select(OrmUser).where(func.lower(OrmUser.username) == username.lower())


class SqlAlchemyOrm(System):
    name = "sqlalchemy"
    storage = "postgres"
    description = "SQLAlchemy 2 ORM (psycopg2) on PostgreSQL, a session per operation"

    def open(self) -> None:
        dsn = self.location
        # pool_size: the matrix gives one connection per thread (SQLAlchemy's default is 5 + 10 overflow).
        pool = int(self.options.get("pool_size", 5))
        self.engine = create_engine("postgresql+psycopg2://", creator=lambda: connect(dsn), pool_size=pool)
        with self.engine.begin() as conn:
            conn.execute(text(TABLE_DDL))
        # expire_on_commit=False: returned objects stay readable after the session ends.
        self.session = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    def create(self, user: UserRecord) -> None:
        with self.session.begin() as session:
            session.add(OrmUser(**_new_row(user)))

    def get(self, username: str) -> Any:
        with self.session() as session:
            return session.scalars(_by_username(username)).one()

    def get_by_email(self, email: str) -> Any:
        with self.session() as session:
            return session.scalars(select(OrmUser).where(func.lower(OrmUser.email) == email.lower())).one()

    def get_many(self, usernames: Sequence[str]) -> list[Any]:
        with self.session() as session:
            return [session.scalars(_by_username(name)).one() for name in usernames]

    def update(self, username: str, full_name: str) -> Any:
        with self.session.begin() as session:
            user = session.scalars(_by_username(username)).one()
            user.full_name = full_name
            user.updated_at = datetime.now(UTC)
            return user

    def page(self, offset: int, limit: int) -> list[Any]:
        with self.session() as session:
            query = select(OrmUser).order_by(func.lower(OrmUser.username)).offset(offset).limit(limit)
            return list(session.scalars(query))

    def page_after(self, username: str, limit: int) -> list[Any]:
        with self.session() as session:
            key = func.lower(OrmUser.username)
            query = select(OrmUser).where(key > username.lower()).order_by(key).limit(limit)
            return list(session.scalars(query))

    def delete(self, username: str) -> None:
        with self.session.begin() as session:
            session.delete(session.scalars(_by_username(username)).one())

    def bulk(self, users: Sequence[UserRecord]) -> None:
        # The ORM's bulk INSERT: a list of dicts executed as batched (insertmanyvalues) inserts.
        with self.session.begin() as session:
            session.execute(insert(OrmUser), [_new_row(user) for user in users])

    def count(self) -> int:
        with self.session() as session:
            return int(session.scalar(select(func.count()).select_from(OrmUser)) or 0)

    def existing(self, usernames: Sequence[str]) -> set[str]:
        wanted = {name.lower() for name in usernames}
        with self.session() as session:
            stored = session.scalars(select(func.lower(OrmUser.username)))
            return wanted.intersection(stored)
