"""codx-db: the user database of codx-api, persistent Python objects in ZODB.

``from db import db`` is the process-wide database. Importing opens nothing: the settings are
read and the storage opened on first use (``db.transaction()``, ``db.run()``, ``db.open()``).
"""

# The composition root, and its only wiring: the on-open hooks (db.database.register_open_hook).
# Each Database first records whether it pickles fast (db/pickling.py), then codx-db's generations
# install or evolve what it opens (registered by importing migrations).
from db import pickling
from db.database import Database, UnitOfWork, register_open_hook

register_open_hook("codx-db fast pickling", pickling.open_hook)

import migrations  # noqa: E402, F401

db: Database = Database()

__all__ = ["Database", "UnitOfWork", "db"]
