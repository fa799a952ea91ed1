"""Compatibility path; new code imports ``db.users.schemas``.

An alias, not a re-export: tests monkeypatch this module's globals, which must reach the real module.
"""

import sys

from db.users import schemas

sys.modules[__name__] = schemas
