"""Per-user history: past revisions of a stored ``User``, read from the storage's own history.

ZODB keeps every committed revision of an object on storages that keep history (FileStorage,
MappingStorage, RelStorage with ``keep-history``) until a pack removes old ones. A revision
of a user is one transaction that wrote that user; its metadata says when, who (the
transaction's user, or the actor recorded for this user in the transaction's extension when one
transaction holds several actors' writes) and what (the note UserDB writes). Comparing consecutive states gives the
fields that changed. Password hashes are never shown: a changed hash reads "changed".
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from persistent.timestamp import TimeStamp
from pydantic import BaseModel, ConfigDict
from ZODB.utils import p64, u64

from db.errors import HistoryUnavailable
from db.users.models import User
from db.users.schemas import CodxUser, projects_from_tuple

# Fields shown in a revision's changes, in this order.
TRACKED_FIELDS = (
    "username",
    "email",
    "full_name",
    "is_active",
    "is_superuser",
    "role",
    "avatar",
    "theme",
    "github",
    "projects",
    "apps",
)
PASSWORD_FIELD = "password_hash"
# How far back revert looks (FileStorage's history() needs a bound).
MAX_REVISIONS = 100_000
# Transaction extension: {user id: actor} when the transaction's user does not name who changed
# that user (a group commit of several actors' writes, db/group_commit.py). Older transactions
# lack it: their user names the actor.
ACTORS_KEY = "codx_actors"
# user id -> that user's notes, in a transaction shared by several writes (a group commit batch):
# its description holds every write's note, a user's revision shows its own.
NOTES_KEY = "codx_notes"


class UserRevision(BaseModel):
    """One past version of a user."""

    model_config = ConfigDict(frozen=True)

    tid: str  # transaction id, hex: pass it to revert(..., to=tid)
    at: datetime
    by: str | None  # the transaction's user, when the caller said who
    description: str
    changes: dict[str, list[Any]]  # field -> [old, new]; the first revision has old = None
    user: CodxUser  # the user as it was after this revision


def tid_to_str(tid: bytes) -> str:
    """A transaction id as 16 hex digits."""
    return f"{u64(tid):016x}"


def tid_from_str(text: str) -> bytes:
    """Parse 16 hex digits back into a transaction id."""
    tid: bytes = p64(int(text, 16))
    return tid


def ensure_history(storage: Any) -> None:
    """Raise HistoryUnavailable if the storage keeps only current states."""
    if getattr(storage, "keep_history", True) is False:
        raise HistoryUnavailable(
            "this database keeps no history (RelStorage with keep-history off): past versions "
            "of users cannot be shown or restored. A new PostgreSQL database created with "
            "CODX_JUNIOR_DB_KEEP_HISTORY=true keeps it (copy the data into it with codx-db copy)."
        )


def revisions(connection: Any, user: User, limit: int) -> list[UserRevision]:
    """The last ``limit`` revisions of ``user``, newest first."""
    ensure_history(connection.db().storage)
    # One more entry than asked, so the oldest shown revision can still be diffed.
    entries = _history(connection, user, limit + 1)
    states = [_state(connection, user, entry["tid"]) for entry in entries]
    result = []
    for index, entry in enumerate(entries[:limit]):
        state = states[index]
        previous = states[index + 1] if index + 1 < len(states) else None
        result.append(
            UserRevision(
                tid=tid_to_str(entry["tid"]),
                at=revision_time(entry["tid"]),
                by=actor_of(entry, user.id),
                description=description_of(entry, user.id),
                changes=_changes(previous, state),
                user=snapshot(state),
            )
        )
    return result


def name_transaction(uow: Any, actor: str | None) -> None:
    """Make ``actor`` the transaction's user when nobody is named yet (not the caller, no earlier write)."""
    if actor and not uow.transaction.user:
        uow.transaction.user = actor
        uow.named_by = actor


def note_actor(uow: Any, user_id: str, actor: str | None) -> None:
    """Record that ``actor`` changed ``user_id`` where the transaction's user does not say it.

    A user the caller gave wins. A group commit of several actors names nobody: every change is
    recorded. In a caller's unit of work the first UserDB write names the transaction
    (``name_transaction``); a second actor's change is recorded per user, after the first
    actor's when that one changed the same user (kept in memory until then, not stored).
    """
    if not actor:
        return
    txn, named_by = uow.transaction, getattr(uow, "named_by", None)
    if not txn.user:
        record_actor(txn, user_id, actor)
    elif named_by is None or txn.user != named_by:
        return  # the caller's user (or a batch's single actor) says it
    elif actor == named_by and user_id not in txn.extension.get(ACTORS_KEY, {}):
        uow.named_changes.add(user_id)
    else:
        if user_id in uow.named_changes:
            uow.named_changes.discard(user_id)
            record_actor(txn, user_id, named_by)
        record_actor(txn, user_id, actor)


def record_actor(txn: Any, user_id: str, actor: str) -> None:
    """Record in ``txn``'s extension that ``actor`` changed the user ``user_id``.

    Two actors changing the same user in one transaction are both named, in order.
    """
    actors: dict[str, str] = txn.extension.setdefault(ACTORS_KEY, {})
    known = actors.get(user_id)
    if known is None:
        actors[user_id] = actor
    elif actor not in known.split(", "):
        actors[user_id] = f"{known}, {actor}"


# FileStorage refuses a transaction whose extension passes 64 KiB, counted in UTF-8 bytes (a CJK
# character takes 3): per-user notes stop at MAX_NOTED_USERS users (a group commit batch holds at
# most db_group_commit_max, 100; past them, in a caller's big unit of work, history shows the
# whole description), each at MAX_NOTE_BYTES: at most ~28 KiB. Actors take one entry per write of
# a batch of several actors, each at most 400 bytes (db/actors.py): ~26 KiB for the default 64. A
# batch whose extension is refused anyway is split, and each write commits alone.
MAX_NOTED_USERS = 100
MAX_NOTE_BYTES = 240


def _fitted(text: str) -> str:
    """``text`` cut to at most MAX_NOTE_BYTES of UTF-8, on a character boundary."""
    data = text.encode("utf-8")
    return text if len(data) <= MAX_NOTE_BYTES else data[:MAX_NOTE_BYTES].decode("utf-8", "ignore")


def record_note(txn: Any, user_id: str, note: str) -> None:
    """Record in ``txn``'s extension that ``note`` is about the user ``user_id`` (``description_of``)."""
    notes: dict[str, str] = txn.extension.setdefault(NOTES_KEY, {})
    if user_id in notes:
        notes[user_id] = _fitted(f"{notes[user_id]}\n{note}")
    elif len(notes) < MAX_NOTED_USERS:
        notes[user_id] = _fitted(note)


def note_user(uow: Any, user_id: str, note: str) -> None:
    """``uow.note(note)``, and the note recorded as ``user_id``'s (its history shows its own notes)."""
    uow.note(note)
    record_note(uow.transaction, user_id, note)


def actor_of(entry: dict[str, Any], user_id: str) -> str | None:
    """Who made a history entry's change to ``user_id``: the recorded actor, else the transaction's user."""
    actor = _extension_value(entry, ACTORS_KEY, user_id)
    if actor:
        return actor
    user_name = entry.get("user_name")
    return user_name or None


def description_of(entry: dict[str, Any], user_id: str) -> str:
    """The notes of a history entry about ``user_id``; the whole description when none was recorded."""
    return _extension_value(entry, NOTES_KEY, user_id) or entry.get("description") or ""


def _extension_value(entry: dict[str, Any], key: str, user_id: str) -> str | None:
    # FileStorage and RelStorage merge the extension into the entry; MappingStorage nests it.
    mapping = entry.get(key)
    if mapping is None:
        extension = entry.get("extension")
        mapping = extension.get(key) if isinstance(extension, dict) else None
    value = mapping.get(user_id) if isinstance(mapping, dict) else None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value if isinstance(value, str) and value else None


def revision_time(tid: bytes) -> datetime:
    """When a revision was written, to the microsecond, rounded down: exactly what ``revisions`` shows,
    so that time given back to ``state_at`` finds that revision (a float compare rounded either way).

    A tid holds minutes since 1900 and the fraction of the minute in units of 60/2**32 seconds.
    """
    stamp = TimeStamp(tid)
    minute = datetime(stamp.year(), stamp.month(), stamp.day(), stamp.hour(), stamp.minute(), tzinfo=UTC)
    fraction = int.from_bytes(tid, "big") & 0xFFFFFFFF
    return minute + timedelta(microseconds=fraction * 60_000_000 // 2**32)


def state_at(connection: Any, user: User, tid: bytes | None, when: datetime | None) -> dict[str, Any]:
    """The stored state of ``user`` written by ``tid``, or the last one at or before ``when``."""
    ensure_history(connection.db().storage)
    entries = _history(connection, user, MAX_REVISIONS)
    for entry in entries:  # newest first
        if tid is not None and entry["tid"] == tid:
            return _state(connection, user, entry["tid"])
        if when is not None and revision_time(entry["tid"]) <= when:
            return _state(connection, user, entry["tid"])
    return {}


def snapshot(state: dict[str, Any]) -> CodxUser:
    """A CodxUser from a stored state (class defaults fill fields older revisions lack)."""
    values = {name: state.get(name, getattr(User, name, None)) for name in TRACKED_FIELDS}
    if "role" not in state:  # written before generation 1, which derived it so (migrations/evolve1.py)
        values["role"] = "admin" if state.get("is_superuser") else "user"
    values["projects"] = projects_from_tuple(values["projects"] or ())
    values["id"] = state["id"]
    values["created_at"] = state["created_at"]
    values["updated_at"] = state.get("updated_at", state["created_at"])
    return CodxUser.model_validate(values)


def _history(connection: Any, user: User, size: int) -> list[dict[str, Any]]:
    # Ask the connection's own storage instance: on RelStorage it reads the snapshot this
    # unit of work polled (the shared storage's view is stale and not thread-safe). Call by
    # keyword: ZODB.DB.history() passes size positionally, which RelStorage's
    # history(oid, version=None, size=1) takes as its version argument.
    entries: list[dict[str, Any]] = connection._storage.history(user._p_oid, size=size)
    for entry in entries:
        for key in ("user_name", "description"):
            if isinstance(entry.get(key), bytes):
                entry[key] = entry[key].decode("utf-8", "replace")
    return entries


def _state(connection: Any, user: User, tid: bytes) -> dict[str, Any]:
    return dict(connection.oldstate(user, tid))


def _changes(previous: dict[str, Any] | None, state: dict[str, Any]) -> dict[str, list[Any]]:
    changes: dict[str, list[Any]] = {}
    for name in TRACKED_FIELDS:
        default = getattr(User, name, None)
        new = state.get(name, default)
        old = None if previous is None else previous.get(name, default)
        if previous is None or old != new:
            changes[name] = [_show(name, old), _show(name, new)]
    old_hash = None if previous is None else previous.get(PASSWORD_FIELD)
    if state.get(PASSWORD_FIELD) != old_hash:
        changes["password"] = [None, "changed" if state.get(PASSWORD_FIELD) else "removed"]
    return changes


def _show(name: str, value: Any) -> Any:
    if name == "projects" and value is not None:
        return [p.model_dump() for p in projects_from_tuple(value)]
    return value
