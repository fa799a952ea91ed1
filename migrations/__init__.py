"""Generations: how stored objects evolve in place when the code's idea of them changes.

``install.py`` builds a fresh database (stamped at ``GENERATION``); ``evolveN.py`` takes a
database from generation N-1 to N. ``runner.py`` decides what runs, records the generation in
the database and fails loudly when a step fails.
"""

# The generation this code writes. Bump it together with a new evolveN.py module.
GENERATION = 3

# The oldest generation this code can still read correctly. A database below it must be
# evolved before use (see the ``db_startup`` setting and ``codx-db migrate``).
MINIMUM_GENERATION = 1
# Generation 1 is needed: without it every superuser would read as role "user".
# Generation 2 is not: without the inactive index, list(active=...) loads users to filter.
# Generation 3 is not: without the look-alike index, new usernames are checked only for
# exact (case-insensitive) duplicates, as before.
