"""The files of a FileStorage target: installing a verified copy, removing what a killed copy left."""

from __future__ import annotations

import glob
import logging
import os
import re
from pathlib import Path

from db.errors import StorageInUse

log = logging.getLogger(__name__)

# FileStorage files begin with a 4-byte magic number; anything longer holds transactions.
FILESTORAGE_HEADER = 4
# The files FileStorage (and codx-db's opening of it) keeps beside a database ``<path>``, each
# deleted or overwritten by it: ``.pack`` at the next open, ``.old`` at the next pack, ``.tmp``,
# ``.lock`` and the index while open, ``.trN`` when a damaged tail is cut.
SIDE_SUFFIXES = (".pack", ".old", ".tmp", ".lock", ".index", ".index.index_tmp")
_NUMBERED_TAIL = re.compile(r"\.tr\d+")


def side_file_suffix(database: Path, candidate: Path) -> str | None:
    """The suffix when ``candidate`` names a side file of ``database`` (both resolved paths), else None."""
    if candidate.parent != database.parent or not candidate.name.startswith(database.name):
        return None
    suffix = candidate.name[len(database.name) :]
    return suffix if suffix in SIDE_SUFFIXES or _NUMBERED_TAIL.fullmatch(suffix) else None


def resolved(path: Path) -> Path:
    """``path`` with every symlink followed (a dangling link: the path it points to)."""
    return Path(os.path.realpath(path))


def file_has_data(path: Path) -> bool:
    try:
        return path.stat().st_size > FILESTORAGE_HEADER
    except FileNotFoundError:
        return False


def install_file(partial: Path, path: Path) -> None:
    """Move a verified copy into place, with its index: the old file until the rename, the new one after."""
    with open(partial, "rb") as file:
        os.fsync(file.fileno())  # the new bytes are on disk before the name points at them
    index = Path(f"{path}.index")
    # The old index must never describe the new file: FileStorage rebuilds a missing one.
    index.unlink(missing_ok=True)
    os.replace(partial, path)
    partial_index = Path(f"{partial}.index")
    if partial_index.exists():
        os.replace(partial_index, index)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # and the rename itself survives a power cut
    finally:
        os.close(directory)


def remove_leftover_partials(path: Path) -> None:
    """Remove the partial copies a killed copy or restore into ``path`` left beside it."""
    for leftover in sorted(path.parent.glob(f".{glob.escape(path.name)}.partial-*")):
        leftover.unlink(missing_ok=True)
        log.warning("removed %s, left by a copy or restore that did not finish", leftover)


def remove_storage_files(path: Path) -> None:
    for suffix in ("", ".index", ".lock", ".tmp", ".index.index_tmp"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def target_in_use(path: Path, backup: bool) -> StorageInUse:
    """The error for a target file whose lock another process holds."""
    if not backup:
        return StorageInUse(f"{path} is in use by another process: stop it before replacing its database")
    try:
        pid = Path(f"{path}.lock").read_text("ascii", "replace").strip() or "unknown"  # zc.lockfile's
    except OSError:
        pid = "unknown"
    return StorageInUse(
        f"another backup or copy into {path} is running (pid {pid}): wait for it, or write this backup "
        "to another path; nothing was written"
    )
