"""codx-junior's user shape for codx-junior's own code: ``from db.codx_junior import to_codx_junior, from_codx_junior``.

The functions live in db/users/codx_junior_shape.py; this module is the public name (DESIGN).
"""

from db.users.codx_junior_shape import api_key_of, from_codx_junior, project_access, summary, to_codx_junior

__all__ = ["api_key_of", "from_codx_junior", "project_access", "summary", "to_codx_junior"]
