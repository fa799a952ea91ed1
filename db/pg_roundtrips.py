"""Compatibility path; new code imports ``db.pg.roundtrips``.

An alias, not a re-export: tests monkeypatch this module's globals (``_LIBPQ``), which must
reach the real module.
"""

import sys

from db.pg import roundtrips

sys.modules[__name__] = roundtrips
