"""Progress of long operations (copy, backup, restore, import) on stderr.

A terminal gets one redrawn bar; anything else (a pipe, a log file, CI) gets plain lines, a few
seconds apart, so logs stay readable. stdout is left alone: it carries the final report
(``--json``).

Hand-written rather than Rich: the bar's text (``"\rcopy ["``, ``"100% 4/4 transactions"``) and the
plain lines are output that scripts and tests read; Rich would change them, add a dependency and
an import cost to every command, and save about 40 lines.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

BAR_WIDTH = 30
TTY_REDRAW_SECONDS = 0.1
LINE_EVERY_SECONDS = 2.0


class Progress:
    """Counts units of one operation and shows how far it is (a ``db.ops.progress.ProgressSink``)."""

    def __init__(
        self,
        label: str,
        stream: TextIO | None = None,
        *,
        tty: bool | None = None,
        line_every: float = LINE_EVERY_SECONDS,
    ) -> None:
        self.label = label
        self.stream = sys.stderr if stream is None else stream
        self.tty = _isatty(self.stream) if tty is None else tty
        self.line_every = line_every
        self.unit = "items"
        self.total: int | None = None
        self.done = 0
        self._started = time.monotonic()
        self._shown_at = 0.0
        self._drawn = False

    def start(self, unit: str, total: int | None = None, approximate: bool = False) -> None:
        """Begin counting ``unit`` (``total`` if known; ``approximate`` when it is an estimate)."""
        self.unit = unit
        self.total = total if total and total > 0 else None
        self.done = 0
        self._started = time.monotonic()
        about = "about " if approximate else ""
        if not self.tty:
            of = f" ({about}{self.total})" if self.total else ""
            self._line(f"{self.label}: copying {unit}{of}")
        self._shown_at = time.monotonic()

    def advance(self, count: int = 1) -> None:
        """Count ``count`` more units done."""
        self.done += count
        if self.total is not None and self.done > self.total:
            self.total = self.done  # an estimate was low: never show more than 100 %
        now = time.monotonic()
        if now - self._shown_at >= (TTY_REDRAW_SECONDS if self.tty else self.line_every):
            self._shown_at = now
            self._show()

    def note(self, message: str) -> None:
        """A one-line message between steps (``verifying...``)."""
        self._end_bar()
        self._line(f"{self.label}: {message}")

    def finish(self) -> None:
        """Show the final count and the time taken."""
        if self.tty and self.total is not None:
            self._show()
        self._end_bar()
        seconds = time.monotonic() - self._started
        self._line(f"{self.label}: {self.done} {self.unit} in {seconds:.1f} s")

    def _show(self) -> None:
        if not self.tty:
            of = f"/{self.total}" if self.total else ""
            self._line(f"{self.label}: {self.done}{of} {self.unit}")
            return
        if self.total:
            filled = int(BAR_WIDTH * self.done / self.total)
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            text = f"{self.label} [{bar}] {100 * self.done // self.total:3d}% {self.done}/{self.total} {self.unit}"
        else:
            text = f"{self.label}: {self.done} {self.unit}"
        self._drawn = write(self.stream, "\r" + text)

    def _end_bar(self) -> None:
        if self._drawn:
            write(self.stream, "\n")
            self._drawn = False

    def _line(self, text: str) -> None:
        write(self.stream, text + "\n")


def write(stream: TextIO, text: str) -> bool:
    """Write and flush ``text``; False when the reader has gone (``2>&1 | head``), which is not an error.

    The stream then points at devnull: the work goes on, later output goes nowhere, and the
    interpreter's final flush does not raise again (which would turn exit 0 into 120).
    """
    try:
        stream.write(text)
        stream.flush()
    except BrokenPipeError:
        _to_devnull(stream)
        return False
    return True


def _to_devnull(stream: TextIO) -> None:
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a file (a StringIO): nothing will flush it at exit
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
