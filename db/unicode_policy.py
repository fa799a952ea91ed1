"""Compatibility path; new code imports ``db.users.unicode_policy``.

An alias, not a re-export: tests monkeypatch this module's globals, which must reach the real module.
"""

import sys

from db.users import unicode_policy

sys.modules[__name__] = unicode_policy
