"""How operations report their progress: a protocol the CLI's bar implements, and a silent default."""

from __future__ import annotations

from typing import Protocol


class ProgressSink(Protocol):
    """Told how far a long operation (copy, backup, restore) is; shows it, or not."""

    def start(self, unit: str, total: int | None = None, approximate: bool = False) -> None:
        """Begin counting ``unit`` (``total`` if known; ``approximate`` when it is an estimate)."""

    def advance(self, count: int = 1) -> None:
        """Count ``count`` more units done."""

    def note(self, message: str) -> None:
        """A one-line message between steps (``verifying...``)."""

    def finish(self) -> None:
        """The counting is over."""


class QuietProgress:
    """A progress that shows nothing (library callers, tests)."""

    def start(self, unit: str, total: int | None = None, approximate: bool = False) -> None:
        """Nothing to show."""

    def advance(self, count: int = 1) -> None:
        """Nothing to show."""

    def note(self, message: str) -> None:
        """Nothing to show."""

    def finish(self) -> None:
        """Nothing to show."""
