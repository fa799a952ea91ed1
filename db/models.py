"""Compatibility path; new code imports ``db.users.models``.

An alias, not a re-export: tests monkeypatch this module's globals, which must reach the real module.
"""

import sys

from db.users import models

sys.modules[__name__] = models
