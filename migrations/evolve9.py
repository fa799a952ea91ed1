"""Login claims: a username holding an "@" also holds that key in ``by_email``.

``check_unique`` refuses a username equal to another user's email and the reverse, but the two
live in different indexes: two concurrent writes, one creating the username ``x@y.com`` and one
the email ``x@y.com``, each found nothing in the other's index, inserted different keys, and both
committed (BTrees merges inserts of different keys; tests/test_login_races.py). From this
generation such a username also claims its key in ``by_email`` (``models.login_claim``), so both
writes insert one key and one of them is retried, then refused. ``find_by_email`` ignores claims.

This step adds the claim of every stored username holding an "@": the ``by_username`` keys are
the same fold as ``by_email``'s, so it walks the keys alone, loading no user. A key already in
``by_email`` stays as it is: the same user's email (nothing to add), or another user's email
stored before this generation (the ambiguity the claim prevents; ``codx-db check`` warns about it).
Stop processes running older code before ``codx-db migrate --apply``: a user they create or
rename meanwhile gets no claim (``codx-db check`` then reports it, and ``--repair`` adds it).
Idempotent: an interrupted run adds what is left.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from db.users.models import USERS_KEY, entry_id

if TYPE_CHECKING:
    from migrations.context import EvolveContext


def evolve(context: EvolveContext) -> None:
    """Add the login claim of every username holding an "@"."""
    container = context.root[USERS_KEY]
    context.report("adding the login claims of usernames holding an @")
    # Keys with their entries, as a list: the loop writes the other index, not this one.
    claims = [(key, entry_id(entry)) for key, entry in container.by_username.items() if "@" in key]
    for start in range(0, len(claims), context.batch_size):
        batch = claims[start : start + context.batch_size]
        for key, user_id in batch:
            # Still that user's username (a rename may have committed since the list was made).
            if entry_id(container.by_username.get(key)) == user_id and container.by_email.get(key) is None:
                container.by_email[key] = user_id
        context.commit_batch(start + len(batch), len(claims))
