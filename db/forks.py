"""After ``fork()``: a child leaves the parent's storage alone and opens its own on first use.

gunicorn ``--preload`` and multiprocessing's ``fork`` start method copy a process that may
have used its database already. The child inherits the parent's PostgreSQL sockets: using
one from two processes interleaves two conversations on it ("message type 0x43 arrived from
server while idle"), and closing it in the child (``close()`` on a storage or ``ZODB.DB`` the
child still holds) sends the server a Terminate message that ends the *parent's* session.
(psycopg2 itself does not close a connection it frees in another process than its own.)
So each inherited socket descriptor is pointed at ``/dev/null`` (``dup2``; the parent's
descriptor, which refers to the same socket, is untouched): whatever the child does with
the abandoned connections then reaches nothing, and fails instead of corrupting. Then every
``Database`` forgets the storage it had, and the child's first unit of work opens its own
(a FileStorage file: ``StorageInUse`` while the parent holds it, such a file serves one
process).
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Any, Protocol

log = logging.getLogger(__name__)

# Every PostgreSQL connection RelStorage opened for a codx-db storage in this process.
_CONNECTIONS: weakref.WeakSet[Any] = weakref.WeakSet()


class ForkAware(Protocol):
    def after_fork_in_child(self) -> None: ...


_LISTENERS: weakref.WeakSet[Any] = weakref.WeakSet()


def on_fork_in_child(listener: ForkAware) -> None:
    """Call ``listener.after_fork_in_child()`` in every forked child (held weakly)."""
    _LISTENERS.add(listener)


class _TrackedConnectionMixin:
    __slots__ = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _CONNECTIONS.add(self)


_TRACKED_CLASSES: dict[type, type] = {}


def track_connections(adapter: Any) -> None:
    """Remember the connections a RelStorage PostgreSQL adapter opens from now on.

    RelStorage opens every connection through ``driver.connect`` (per adapter): a psycopg2
    connection class, subclassed here (db/pg/roundtrips.py subclasses it too), or any other
    callable, wrapped. Without that hook connections go untracked: logged, not fatal.
    """
    driver: Any = getattr(getattr(adapter, "connmanager", None), "driver", None)
    connect = getattr(driver, "connect", None)
    if isinstance(connect, type):
        if issubclass(connect, _TrackedConnectionMixin):
            return
        cls = _TRACKED_CLASSES.get(connect)
        if cls is None:
            namespace = {"__module__": __name__, "__slots__": ()}
            cls = type("CodxTrackedConnection", (_TrackedConnectionMixin, connect), namespace)
            _TRACKED_CLASSES[connect] = cls
        driver.connect = cls
    elif callable(connect):
        if getattr(connect, "codx_tracked", False):
            return

        def tracked_connect(*args: Any, **kwargs: Any) -> Any:
            conn = connect(*args, **kwargs)
            _CONNECTIONS.add(conn)
            return conn

        tracked_connect.codx_tracked = True  # type: ignore[attr-defined]
        driver.connect = tracked_connect
    else:
        log.warning(
            "RelStorage's driver has no connect hook to track: a process forked after using this "
            "database must not use it (open the database after forking)"
        )


def _detach_inherited_connections() -> None:
    """Point each inherited PostgreSQL socket descriptor at /dev/null (see the module doc)."""
    connections = list(_CONNECTIONS)
    if not connections:
        return
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for conn in connections:
            try:
                if conn.closed:
                    continue
                fd = conn.fileno()
            except Exception:  # noqa: BLE001 - a broken connection has no socket to protect
                continue
            os.dup2(devnull, fd)
    finally:
        os.close(devnull)
    _CONNECTIONS.clear()


def _after_fork_in_child() -> None:
    _detach_inherited_connections()
    for listener in list(_LISTENERS):
        listener.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
