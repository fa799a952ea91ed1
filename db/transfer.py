"""Compatibility path: new code imports ``db.ops.copy``, ``db.ops.pack``, ``db.ops.verify`` and ``db.ops.reports``."""

from db.errors import TargetNotEmpty, TransferError
from db.ops.copy import backup, copy_database, restore, target_settings
from db.ops.pack import pack
from db.ops.reports import PackReport, TransferReport, Verification
from db.ops.verify import verify

__all__ = [
    "PackReport",
    "TargetNotEmpty",
    "TransferError",
    "TransferReport",
    "Verification",
    "backup",
    "copy_database",
    "pack",
    "restore",
    "target_settings",
    "verify",
]
