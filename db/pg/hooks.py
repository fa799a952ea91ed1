"""What codx-db's patches of RelStorage's and psycopg2's internals share (roundtrips, store_temps).

Each patch checks the hooks it needs before installing itself; when one is missing (another
RelStorage or psycopg2 than pyproject.toml allows), it leaves RelStorage as it is and says so
once per process and per set of missing hooks, naming the installed versions and its setting.
"""

from __future__ import annotations

import logging
from importlib import metadata


def warn_missing_once(
    log: logging.Logger, warned: set[tuple[str, ...]], module: str, missing: list[str], fallback: str, setting: str
) -> None:
    """Log one warning that ``module`` lacks ``missing`` and runs ``fallback`` (``warned``: already said)."""
    key = tuple(missing)
    if key in warned:
        return
    warned.add(key)
    versions = []
    for dist in ("RelStorage", "psycopg2-binary", "psycopg2"):
        try:
            versions.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    log.warning(
        "%s lack(s) what %s needs (%s): %s. Install the versions pyproject.toml allows, or set %s=false to say "
        "so on purpose.",
        ", ".join(versions) or "RelStorage / psycopg2",
        module,
        ", ".join(missing),
        fallback,
        setting,
    )
