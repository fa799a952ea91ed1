"""Pages of users in username order (``UserDB.list``): by offset, after a name, by prefix, by activity.

The username index holds user ids (generation 8; the ``User`` itself before): a page walks the
index's entries without loading anyone, then resolves only the page's own entries, loading the
``users`` buckets they need with one query per level of that tree (``indexes.buckets_for``),
not a round trip per user.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterator
from typing import Any

from db.users.indexes import buckets_for, prefetch
from db.users.models import User, UserContainer, username_key
from db.users.partitioned import tree_for

# A deep offset lets the cache shrink after every this many index entries walked.
_GC_EVERY = 20_000


def entries(container: UserContainer, prefix: str | None = None, after: str | None = None) -> Iterator[tuple[str, Any]]:
    """(key, entry) of the username index in order: usernames starting with ``prefix``, after ``after``.

    Starting point found in O(log n); an entry is a user id, or a ``User`` (a ghost: nothing is
    loaded until an attribute is read) stored before generation 8.
    """
    start = username_key(prefix) if prefix else ""
    after_key = username_key(after) if after else None
    if after_key is not None and after_key >= start:
        items = container.by_username.items(min=after_key, excludemin=True)
    elif start:
        items = container.by_username.items(min=start)
    else:
        items = container.by_username.items()
    for key, entry in items:
        if start and not key.startswith(start):
            return
        yield key, entry


def page(
    container: UserContainer,
    offset: int,
    limit: int,
    active: bool | None = None,
    prefix: str | None = None,
    after: str | None = None,
) -> list[User]:
    """A page of users in username order, optionally only active (or inactive) ones.

    An offset at or past the count answers at once (the count is O(1)): no page is there,
    and walking to it would hold a connection for as long as the offset is large.
    """
    if offset >= len(container):
        return []
    items: Iterator[tuple[str, Any]] = entries(container, prefix, after)
    if active is not None:
        inactive = container.inactive
        if inactive is not None and container.inactive_complete:
            # Filter on keys: only the users of the page are loaded.
            items = ((key, entry) for key, entry in items if (key not in inactive) == active)
        else:
            items = ((key, entry) for key, entry in items if _is_active(container, entry) == active)
    jar = container._p_jar
    while offset > _GC_EVERY and jar is not None:
        # A deep offset walks every bucket before it: shrink the cache to its target size now
        # and then, so the walk itself (not the cache settings) does not set the memory used.
        # Skipped in C (deque).
        walked = _skip(items, _GC_EVERY)
        offset -= walked
        if walked < _GC_EVERY:
            # The index ended before the offset: with filters, or a count that drifted
            # from the index (`codx-db check` reports it), the offset may lie past the
            # last user although it is below the count. Stop at the end.
            return []
        jar.cacheGC()  # the buckets walked are unchanged (a read): they may leave memory
    rest = itertools.islice(items, offset, None)
    found: list[User] = []
    while len(found) < limit:
        # An entry naming no stored user (`codx-db check`: dangling) is left out, and the page
        # still fills up from the entries after it: a short page means the end (iter_users).
        chunk = [entry for _, entry in itertools.islice(rest, limit - len(found))]
        if not chunk:
            break
        found += users_for(container, chunk)
    return found


def users_for(container: UserContainer, found: list[Any]) -> list[User]:
    """The users these name index entries name, in order (an entry naming no stored user is left out).

    The ``users`` buckets of the ids not in memory load a tree level at a time, not one by one.
    """
    ids = [entry for entry in found if not isinstance(entry, User)]
    if len(ids) > 1:
        prefetch(buckets_for([(tree_for(container.users, i), i) for i in ids]))
    users = [container.user_for(entry) for entry in found]
    return [user for user in users if user is not None]


def _is_active(container: UserContainer, entry: Any) -> bool | None:
    user = container.user_for(entry)
    return None if user is None else user.is_active


def _skip(items: Iterator[Any], count: int) -> int:
    """Consume up to ``count`` items (in C); return how many there were."""
    counter = itertools.count()
    collections.deque(zip(itertools.islice(items, count), counter, strict=False), maxlen=0)
    return next(counter)
