"""What the settings are read from, checked: the environment and ``.env`` (db/settings.py ``load``).

A misspelt ``CODX_JUNIOR_DB_`` name is warned about, naming the setting meant; a ``.env`` that is
not UTF-8 is named with its line, never its bytes (it holds secrets).
"""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path

log = logging.getLogger("db.settings")  # the name operators filter on


def warn_unknown(prefix: str, known: set[str], env_file: Path) -> None:
    """Warn about each variable named ``prefix...`` in the environment or ``env_file`` not in ``known``."""
    for name in os.environ:
        if name.startswith(prefix) and name not in known:
            log.warning("unknown setting %s is ignored%s", name, _suggest(name, prefix, known))
    if not env_file.is_file():
        return
    from dotenv import dotenv_values

    for name in dotenv_values(env_file):  # names in any case, as pydantic-settings matches them
        upper = name.upper()
        if upper.startswith(prefix) and upper not in known:
            log.warning("unknown setting %s (in %s) is ignored%s", upper, env_file, _suggest(upper, prefix, known))


def not_utf8(exc: UnicodeDecodeError, env_file: Path) -> str:
    """Which settings file is not UTF-8, and where; never its bytes."""
    data = exc.object if isinstance(exc.object, bytes) else b""
    try:
        named = env_file.is_file() and env_file.read_bytes() == data
    except OSError:
        named = False
    where = f"{env_file.absolute()}" if named else "a settings file (.env or a secrets file)"
    line = data[: exc.start].count(b"\n") + 1
    column = exc.start - data.rfind(b"\n", 0, exc.start)
    return f"{where} is not UTF-8 text (line {line}, byte {column}): save it as UTF-8"


def _suggest(name: str, prefix: str, known: set[str]) -> str:
    """``: did you mean X?`` for a near miss, else the list of names."""
    # Compared without the shared prefix: with it every name looks like every other.
    tails = {known_name.removeprefix(prefix): known_name for known_name in known}
    close = difflib.get_close_matches(name.removeprefix(prefix), tails, n=1, cutoff=0.6)
    if close:
        return f": did you mean {tails[close[0]]}?"
    return f" (known: {', '.join(sorted(known))}; see the README)"
