"""Sync: make the stored users match a whole list (codx-junior's admin settings save).

codx-junior's admin UI saves users by POSTing the whole user list; there are no ids, so a
rename looks like a delete and a create. ``UserDB.sync(records)`` gives that save one meaning:

1. Every record is checked before anything is read or written (``parse_records``): each
   record's problems are named ``records[i].field``, then duplicates across records (id,
   username and look-alike, email, GitHub login, api_key). Any problem: InvalidUserData, nothing
   written.
2. One unit of work (``sync_users``; retried whole after a conflict): a record matches the
   stored user with its ``id`` when it has one, else the user whose username is exactly the
   same (a case-only difference is not a match: codx-junior treats ``Bob`` and ``bob`` as two
   users). Stored users matched by no record are deleted (with their tokens and API keys),
   matched users get the fields that differ, the other records become new users. The records
   are the final state: matched users may swap usernames, emails and GitHub logins, in any order.
3. Omitted codx-junior fields mean codx-junior's defaults (the record is the whole user);
   ``full_name`` (unknown to codx-junior) is kept when omitted. An empty or missing ``token`` /
   ``api_key`` leaves stored credentials alone; a non-empty ``api_key`` is imported (hashed) for
   that user; a non-empty ``token`` is ignored (codx-db issues its own) and listed in the report.
   Passwords are not synced (``set_password``; first logins set theirs).
4. With ``require_admin`` a list that would leave no active admin is refused (nothing written).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, computed_field

from db.database import UnitOfWork
from db.errors import InvalidUserData, UserAlreadyExists
from db.users import access, credentials, repository
from db.users import credential_service as creds
from db.users.codx_junior_shape import api_key_of, check_codx_junior
from db.users.models import Indexed, User, UserContainer, email_key, github_key, username_key, username_skeleton
from db.users.schemas import projects_to_tuple

if TYPE_CHECKING:
    from db.users.service import UserService

# codx-db's own output fields, accepted so ``CodxUser.model_dump()`` records sync too.
_ID_FIELDS = ("id",)
_READ_ONLY_FIELDS = ("created_at", "updated_at")  # kept by codx-db; ignored in a record
_PASSWORD_FIELDS = ("password", "password_hash")
API_KEY_NAME = "codx-junior"


class SyncReport(BaseModel):
    """What a sync did, by username (deleted ones by their stored name); no secret ever."""

    model_config = ConfigDict(frozen=True)

    created: list[str] = []
    updated: list[str] = []
    deleted: list[str] = []
    unchanged: list[str] = []
    api_keys_added: list[str] = []  # users whose record brought an API key new to them
    tokens_ignored: list[str] = []  # users whose record held a token (codx-db issues its own)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def changed(self) -> bool:
        """Whether anything was written."""
        return bool(self.created or self.updated or self.deleted or self.api_keys_added)

    def note(self) -> str:
        """The transaction note: counts only."""
        return (
            f"codx-db: sync: {len(self.created)} created, {len(self.updated)} updated, "
            f"{len(self.deleted)} deleted, {len(self.unchanged)} unchanged"
        )


@dataclass(frozen=True)
class SyncRecord:
    """One checked record: where it was, the stored fields it sets, its credentials."""

    index: int
    user_id: str | None
    username: str
    fields: dict[str, Any]  # stored field -> validated value (projects in their stored form)
    api_key: str | None
    token_given: bool


def parse_records(records: Iterable[Mapping[str, Any]]) -> list[SyncRecord]:
    """Check every record and the records against each other; one InvalidUserData naming all problems."""
    if isinstance(records, (str, bytes, Mapping)) or not isinstance(records, Iterable):
        raise InvalidUserData(["records: must be a list of user records (codx-junior CodxUser dicts)"])
    parsed: list[SyncRecord] = []
    problems: list[str] = []
    for index, record in enumerate(records):
        where = f"records[{index}]"
        try:
            parsed.append(_parse_record(index, record))
        except InvalidUserData as exc:
            problems.extend(f"{where}.{message}" for message in exc.errors)
    problems.extend(_duplicates(parsed))
    if problems:
        raise InvalidUserData(problems)
    return parsed


def _parse_record(index: int, record: Any) -> SyncRecord:
    if not isinstance(record, Mapping):
        raise InvalidUserData(["record: must be a mapping of user fields"])
    problems = [
        f"{name}: sync does not set passwords: use set_password (or the user's first login)"
        for name in _PASSWORD_FIELDS
        if name in record
    ]
    user_id = record.get("id")
    if user_id is not None and (not isinstance(user_id, str) or not user_id.strip()):
        problems.append("id: must be a non-empty string (a codx-db user id) or absent")
    try:
        checked, given = check_codx_junior(record, extra=_ID_FIELDS + _READ_ONLY_FIELDS + _PASSWORD_FIELDS)
        api_key = api_key_of(record)
    except InvalidUserData as exc:
        raise InvalidUserData(problems + exc.errors) from None
    if problems:
        raise InvalidUserData(problems)
    fields = checked.model_dump(exclude={"projects", "apps"})
    fields["projects"] = projects_to_tuple(checked.projects)
    fields["apps"] = tuple(checked.apps)
    if "full_name" not in given:
        del fields["full_name"]  # codx-junior has no full_name: its records keep the stored one
    token = record.get("token")
    return SyncRecord(
        index=index,
        user_id=user_id.strip() if isinstance(user_id, str) else None,
        username=checked.username,
        fields=fields,
        api_key=api_key,
        token_given=bool(token),
    )


def _duplicates(parsed: list[SyncRecord]) -> list[str]:
    """``records[j].field: the same as records[i]`` for each key two records share.

    Every stored user the records leave out is deleted, so the records are the final state:
    keys unique among them are unique in the database. A username that is another record's
    email is left to ``sync_users`` (UserAlreadyExists naming the record): a pair stored so
    before generation 9 must keep syncing, as it keeps updating (``repository.check_unique``).
    """
    problems: list[str] = []
    seen: dict[tuple[str, str], int] = {}  # (kind of key, key) -> the first record that holds it

    def check(record: SyncRecord, field: str, key: str, kind: str = "", what: str = "the same as") -> None:
        """Name ``record`` when an earlier record holds ``key`` (of ``kind``, by default ``field``)."""
        first = seen.setdefault((kind or field, key), record.index)
        if first != record.index:
            problems.append(f"records[{record.index}].{field}: {what} records[{first}]")

    for record in parsed:
        email = record.fields.get("email")
        if record.user_id is not None:
            check(record, "id", record.user_id)
        check(record, "username", username_key(record.username))
        check(record, "username", username_skeleton(record.username), "skeleton", "looks like")
        if email:
            check(record, "email", email_key(email))
        if record.fields.get("github"):
            check(record, "github", github_key(record.fields["github"]))
        if record.api_key is not None:
            check(record, "api_key", record.api_key)
    return problems


def sync(
    service: UserService, records: Iterable[Mapping[str, Any]], *, require_admin: bool, clock: Callable[[], datetime]
) -> SyncReport:
    """``UserDB.sync``: check every record first, then sync in one unit of work (``service``'s, retried whole)."""
    if not isinstance(require_admin, bool):
        raise InvalidUserData(["require_admin: must be true or false"])
    parsed = parse_records(records)
    # bulk: the whole list in a unit of work of its own, never in a group commit with other writes
    return service.write(lambda uow: sync_users(uow, parsed, now=clock(), require_admin=require_admin), None, bulk=True)


def sync_users(uow: UnitOfWork, records: list[SyncRecord], *, now: datetime, require_admin: bool) -> SyncReport:
    """Make the stored users match ``records`` (checked by ``parse_records``) in this unit of work."""
    users = repository.container(uow)
    access.require_indexes(users)  # the admin check reads the admins index
    matches = _match(users, records)
    matched_ids = {user.id for user in matches.values()}
    report: dict[str, list[str]] = {name: [] for name in SyncReport.model_fields}
    # Deletes first: a rename (delete + create) or a case change frees the old name for the new user.
    for user_id in [user_id for user_id in users.users if user_id not in matched_ids]:
        user = users.users[user_id]
        users.remove(user)
        creds.forget_credentials(uow.root, user)
        report["deleted"].append(user.username)
    kept = [(record, matches[record.index]) for record in records if record.index in matches]
    # The records are the final state: a key may pass between kept users (a swap, a cycle) in
    # any record order, so every old key leaves the indexes before any new one is checked.
    released = [repository.release(users, user, record.fields) for record, user in kept]
    for (record, user), before in zip(kept, released, strict=True):
        changed = _update(users, user, record, before)
        creds.forget_tokens_if_deactivated(uow.root, user, changed)
        report["updated" if changed else "unchanged"].append(user.username)
    owners = dict(matches)
    for record in records:
        if record.index not in matches:
            owners[record.index] = _create(users, record)
            report["created"].append(record.username)
    for record in records:
        owner = owners[record.index]
        if record.api_key is not None:
            store = credentials.install_credentials(uow.root)
            try:
                added = credentials.import_api_key(store, owner.id, record.api_key, API_KEY_NAME, now)
            except InvalidUserData as exc:
                raise InvalidUserData([f"records[{record.index}].{message}" for message in exc.errors]) from None
            if added:
                drop_replaced_keys(store, owner.id, record.api_key)
                report["api_keys_added"].append(owner.username)
        if record.token_given:
            report["tokens_ignored"].append(owner.username)
    if require_admin:
        _require_active_admin(uow, users)
    result = SyncReport(**{name: sorted(names, key=username_key) for name, names in report.items()})
    uow.note(result.note())
    return result


def drop_replaced_keys(store: Any, user_id: str, kept: str) -> None:
    """codx-junior keeps one api_key per user: a new one saved (a leaked key rotated) ends the one saved before.

    Only keys a sync or import brought from codx-junior (``API_KEY_NAME``, imported); keys made
    with ``create_api_key`` stay.
    """
    new = credentials.find_api_key(store, kept)
    for info in credentials.list_api_keys(store, user_id):
        if info.imported and info.name == API_KEY_NAME and (new is None or info.key_id != new.key_id):
            credentials.revoke_api_key_id(store, user_id, info.key_id)


def _match(users: UserContainer, records: list[SyncRecord]) -> dict[int, User]:
    """record index -> the stored user it describes (by id, else by exact username).

    Ids first: a user a record names by id is that record's, so an id-less record with the user's
    old name is a new user (a rename by id that frees the name for someone else).
    """
    matches: dict[int, User] = {}
    claimed: dict[str, int] = {}
    problems: list[str] = []
    for record in sorted(records, key=lambda record: record.user_id is None):  # stable: ids first
        if record.user_id is not None:
            user = users.users.get(record.user_id)
            if user is None:
                problems.append(f"records[{record.index}].id: no user with this id")
                continue
        else:
            user = users.find_by_username(record.username)
            if user is None or user.username != record.username or user.id in claimed:
                continue  # a new user (a case-only difference is another user, as in codx-junior)
        first = claimed.setdefault(user.id, record.index)
        if first != record.index:
            problems.append(f"records[{record.index}]: describes the same stored user as records[{first}]")
            continue
        matches[record.index] = user
    if problems:
        raise InvalidUserData(sorted(problems, key=_record_order))
    return matches


def _record_order(problem: str) -> int:
    """records[i] messages in record order (the id pass runs first)."""
    return int(problem.split("]", 1)[0].removeprefix("records["))


def _update(users: UserContainer, user: User, record: SyncRecord, released: Indexed) -> dict[str, Any]:
    try:
        return repository.apply(users, user, record.fields, released)
    except UserAlreadyExists as exc:
        raise UserAlreadyExists(exc.field, exc.value, where=f"records[{record.index}]", like=exc.like) from None


def _create(users: UserContainer, record: SyncRecord) -> User:
    try:
        repository.check_unique(users, record.username, record.fields["email"], github=record.fields["github"])
    except UserAlreadyExists as exc:
        raise UserAlreadyExists(exc.field, exc.value, where=f"records[{record.index}]", like=exc.like) from None
    user = User(id=repository.new_user_id(), **record.fields)
    users.add(user)
    return user


def _require_active_admin(uow: UnitOfWork, users: UserContainer) -> None:
    for user_id in users.admins or ():
        admin = users.users.get(user_id)
        if admin is not None and admin.is_active:
            # A concurrent change to this admin (deactivation, demotion) must conflict with
            # this sync rather than both commit and leave no admin.
            if admin._p_jar is not None and admin._p_changed is False:  # not new, not changed here
                uow.connection.readCurrent(admin)
            return
    raise InvalidUserData(
        ["records: no active admin would remain: keep at least one user with role admin that is not disabled"]
    )


__all__ = ["SyncRecord", "SyncReport", "parse_records", "sync_users"]
