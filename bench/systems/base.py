"""What every benchmarked system implements: the same user operations, each in its own unit."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from bench.workload import UserRecord


class System(ABC):
    """One database under test, opened on a location (a file path or a PostgreSQL DSN).

    Every method is one unit of work (transaction) of its own, except ``get_many`` (many gets
    in one) and ``bulk`` (one batch in one). Reads return a detached copy of the user, the
    way each system is normally used.
    """

    name: ClassVar[str]
    storage: ClassVar[str]  # "file" or "postgres"
    description: ClassVar[str]

    def __init__(self, location: str, options: Mapping[str, Any] | None = None) -> None:
        self.location = location
        self.options: dict[str, Any] = dict(options or {})

    @abstractmethod
    def open(self) -> None:
        """Open the store, creating its schema when it is empty."""

    @abstractmethod
    def close(self) -> None:
        """Close the store (writing whatever it writes on close)."""

    @abstractmethod
    def create(self, user: UserRecord) -> None:
        """Create one user (no password)."""

    @abstractmethod
    def get(self, username: str) -> Any:
        """The user with this username (case-insensitive)."""

    @abstractmethod
    def get_by_email(self, email: str) -> Any:
        """The user with this email (case-insensitive)."""

    @abstractmethod
    def get_many(self, usernames: Sequence[str]) -> list[Any]:
        """Several users by username, inside one transaction."""

    @abstractmethod
    def update(self, username: str, full_name: str) -> Any:
        """Change one field of a user."""

    @abstractmethod
    def page(self, offset: int, limit: int) -> list[Any]:
        """``limit`` users sorted by username, from ``offset``."""

    @abstractmethod
    def page_after(self, username: str, limit: int) -> list[Any]:
        """``limit`` users sorted by username, after ``username`` (keyset paging)."""

    @abstractmethod
    def delete(self, username: str) -> None:
        """Delete a user."""

    @abstractmethod
    def bulk(self, users: Sequence[UserRecord]) -> None:
        """Import a batch of users in one transaction (the system's fast path)."""

    @abstractmethod
    def count(self) -> int:
        """How many users there are."""

    def existing(self, usernames: Sequence[str]) -> set[str]:
        """Which of ``usernames`` are stored, lowercased (the matrix's check of acknowledged creates).

        One get each here; systems override it with one unit of work or one query.
        """
        found = set()
        for name in usernames:
            try:
                self.get(name)
            except Exception:  # noqa: BLE001 - each system has its own "not found"
                continue
            found.add(name.lower())
        return found

    def consistency(self) -> tuple[bool, str] | None:
        """The system's own consistency check, if it has one: (ok, summary)."""
        return None

    def commit_batches(self) -> tuple[int, int] | None:
        """(commits, writes they carried) so far in this process, if the system groups writes."""
        return None

    @staticmethod
    def username_of(found: Any) -> str:
        """The username of what ``get`` returned (for the sanity checks)."""
        if isinstance(found, dict):
            return str(found["username"])
        return str(found.username)
