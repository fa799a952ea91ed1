"""codx-db: the user database of codx-api, persistent Python objects in ZODB.

``from db import db`` is the process-wide database. Importing opens nothing: the settings are
read and the storage opened on first use (``db.transaction()``, ``db.run()``, ``db.open()``).
"""

# The composition root, and its only wiring import: codx-db's generations register their
# on-open hook (db.database.register_open_hook), so every Database installs or evolves what it opens.
import migrations  # noqa: F401
from db.database import Database, UnitOfWork

db: Database = Database()

__all__ = ["Database", "UnitOfWork", "db"]
