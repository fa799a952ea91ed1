"""The files of a FileStorage target: installing a verified copy, removing what a killed copy left."""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

# FileStorage files begin with a 4-byte magic number; anything longer holds transactions.
FILESTORAGE_HEADER = 4


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
