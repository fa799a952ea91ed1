"""Compatibility path: new code imports ``db.cli.progress`` (the CLI's display) or ``db.ops.progress``."""

from db.cli.progress import Progress, write
from db.ops.progress import ProgressSink, QuietProgress

__all__ = ["Progress", "ProgressSink", "QuietProgress", "write"]
