"""Generations: how stored objects evolve in place when the code's idea of them changes.

``install.py`` builds a fresh database (stamped at ``GENERATION``); ``evolveN.py`` takes a
database from generation N-1 to N. ``runner.py`` decides what runs, records the generation in
the database and fails loudly when a step fails.

These are the steps of one package, ``codx_db``. An application registers its own
(``register(SchemaManager(package="codx_api", steps="codx_api.generations"))``, see
migrations/registry.py) and each package keeps its own generation in the database.
"""

# The generation this code writes. Bump it together with a new evolveN.py module.
GENERATION = 9

# The oldest generation this code can still read correctly. A database below it must be
# evolved before use (see the ``db_startup`` setting and ``codx-db migrate``).
MINIMUM_GENERATION = 9
# Generation 1 is needed: without it every superuser would read as role "user".
# Generation 2 is not: without the inactive index, list(active=...) loads users to filter.
# Generation 3 is not: without the look-alike index, new usernames are checked only for
# exact (case-insensitive) duplicates, as before.
# Generation 4 is not: nothing reads the package mapping to serve users.
# Generation 5 is: get_by_github, with_project_access and grant_project read and write its
# GitHub/project/admin indexes, and an index that is missing or half built (an interrupted
# step) gives wrong answers without an error (a user's GitHub login finds nobody). Hence 5:
# a database below it is refused at open (db_startup=refuse) until `codx-db migrate --apply`.
# Generation 6 is too: its step copies every index into a bigger-bucket class and swaps them at
# the end, so a process writing to the old indexes during the copy would lose those writes at
# the swap. Keeping 5 would need every writer to mirror each change into the half-built copies
# (and the copy to detect a key deleted after it read it); refusing generation 5 instead keeps
# writers off the database until `codx-db migrate --apply` (or db_startup=minimum/evolve) ran it.
# Generation 7 is too, for the same reason: its step copies the users index into partitions and
# swaps it in at the end, and a create written to the old index during the copy would be lost.
# Generation 8 is too, the other way round: this code writes ids into the name indexes, which
# older code reads as users (a login would find a str). Refusing generation 7 keeps a database
# this code has written from being opened as generation 7 by an older release (it refuses 8).
# This code still reads ``User`` entries (``UserContainer.user_for``): a process of older code
# left running through ``migrate --apply`` may write some; ``codx-db check`` warns, repair rewrites.
# Generation 9 is too: ``by_email`` holds login claims (a username holding an "@", evolve9.py),
# which older code would read as that user's email (``get_by_email`` would answer the wrong user).

# Below the numbers: registering codx_db reads them from this (partly imported) module.
import ZODB  # noqa: E402

from db.database import register_open_hook  # noqa: E402
from db.settings import CodxJuniorGlobalSettings  # noqa: E402
from migrations.context import EvolveContext  # noqa: E402
from migrations.registry import SchemaManager, register  # noqa: E402

__all__ = ["GENERATION", "MINIMUM_GENERATION", "EvolveContext", "SchemaManager", "open_hook", "register"]


def open_hook(zodb: ZODB.DB, settings: CodxJuniorGlobalSettings) -> None:
    """Install a new database or apply ``db_startup`` to an old one (run by every ``Database.open``)."""
    # Imported here, not above: the runner loads ZODB.FileStorage, which `import db` (that
    # imports this package) should not pay for until a database opens.
    from migrations import runner

    runner.on_open(zodb, settings.db_startup, settings.db_migrate_batch_size, read_only=settings.db_read_only)


register(SchemaManager(package="codx_db", steps="migrations"))
register_open_hook("codx-db generations", open_hook)
