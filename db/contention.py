"""The errors a unit of work raises when it cannot go on: no free connection, endless conflicts.

Built here, apart from db/database.py, so the messages (which settings to turn, what conflicted)
read in one place.
"""

from __future__ import annotations

from transaction.interfaces import TransientError
from ZODB.utils import oid_repr

from db.display import shorten
from db.errors import CommitOutcomeUnknown, DatabaseTimeout, DatabaseUnavailable, WriteContention
from db.settings import CodxJuniorGlobalSettings, env_name


def pool_exhausted(settings: CodxJuniorGlobalSettings) -> DatabaseTimeout:
    """All connections of the pool stayed in use for the whole wait."""
    size, wait = settings.db_pool_size, settings.db_pool_timeout
    return DatabaseTimeout(
        f"all {size} connections of the pool stayed in use for {wait:g} s: {env_name('db_pool_size')}={size} "
        f"bounds the units of work open at once in this process, {env_name('db_pool_timeout')} how long one "
        "waits for a connection. Raise the pool size to the number of threads using the database "
        "(AnyIO/Starlette: 40), or keep slow work out of `with db.transaction():`"
    )


class VoteMarker:
    """A resource of the transaction sorted first: its ``tpc_vote`` runs before the storage's.

    Until then nothing was sent that could commit (RelStorage borrows its store session in
    ``tpc_begin`` and commits in its vote), so a lost connection means the change was not saved;
    from then on it may have been.
    """

    transaction_manager = None

    def __init__(self) -> None:
        self.voting = False

    def sortKey(self) -> str:
        return "\x00 codx-db vote marker"

    def tpc_vote(self, txn: object) -> None:
        self.voting = True

    def abort(self, txn: object) -> None: ...
    def tpc_begin(self, txn: object) -> None: ...
    def commit(self, txn: object) -> None: ...
    def tpc_finish(self, txn: object) -> None: ...
    def tpc_abort(self, txn: object) -> None: ...


def commit_outcome_unknown(exc: DatabaseUnavailable) -> CommitOutcomeUnknown:
    """The connection was lost during ``commit()``: PostgreSQL may have committed before the answer was lost."""
    if isinstance(exc, CommitOutcomeUnknown):
        return exc
    return CommitOutcomeUnknown(
        f"{exc} (during the commit): the change may or may not have been saved; read it back before trying again"
    )


def write_contention(exc: TransientError, attempts: int, seconds: float) -> WriteContention:
    """What conflicted, shortly: ZODB's ConflictError carries the oid and class; RelStorage's lock errors a message."""
    oid = getattr(exc, "oid", None)
    class_name = getattr(exc, "class_name", None)
    message = str(getattr(exc, "message", None) or exc).strip()
    first = message.splitlines()[0] if message else ""
    return WriteContention(
        attempts,
        seconds,
        f"{type(exc).__name__}: {shorten(first, 160)}" if first else type(exc).__name__,
        oid=oid_repr(oid) if isinstance(oid, bytes) else None,
        class_name=class_name if isinstance(class_name, str) else None,
    )


def conflict_where(exc: TransientError) -> str:
    """ " on oid 0x..." for a conflict that names its object (ZODB's do), else "": for the retry log."""
    oid = getattr(exc, "oid", None)
    return f" on oid {oid_repr(oid)}" if isinstance(oid, bytes) else ""
