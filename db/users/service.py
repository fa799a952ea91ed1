"""The user rules above the repository: what ``UserDB``'s user methods do.

Input is validated and passwords hashed *before* the unit of work starts, so a retry after a
conflict never hashes again and a bad call writes nothing. Each method is one unit of work of
its own (``database.run``), or joins the caller's. Authentication spends the same time on an
unknown or inactive user as on a wrong password. Index invariants are the repository's
(db/users/repository.py); tokens and API keys are the credential service's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from db.database import Database, UnitOfWork
from db.errors import HistoryUnavailable, InvalidUserData, UserNotFound, shown
from db.users import credential_service as creds
from db.users import listing, login, repository
from db.users.history import (
    TRACKED_FIELDS,
    UserRevision,
    name_transaction,
    note_actor,
    note_user,
    record_note,
    revisions,
    snapshot,
    state_at,
    tid_from_str,
)
from db.users.keys import KEY_INPUT_MAX, fits, require_str
from db.users.models import UserContainer
from db.users.policy import PasswordContext, PasswordPolicy
from db.users.records import PreparedUser, prepare_records
from db.users.schemas import CodxUser, UserCreate, UserUpdate, email_for_lookup

T = TypeVar("T")

log = logging.getLogger("db.user_db")  # the name operators filter on since the first version

MAX_PAGE = 1000


class UserService:
    """Users of a ``Database``: lookups, validated writes, authentication, history and imports."""

    def __init__(self, database: Database, credentials: creds.CredentialService, actor: str | None = None) -> None:
        self.database = database
        self.credentials = credentials  # hashes new passwords under the settings' policy
        self.actor = actor  # recorded as the transaction's user unless the caller's unit of work has one

    def __repr__(self) -> str:
        return f"<UserService actor={self.actor!r}>"

    # -- reads ---------------------------------------------------------------------------------

    def get(self, username: str) -> CodxUser:
        """The user with this username (case-insensitive); UserNotFound."""
        require_str("username", username)
        return self._read(lambda users: CodxUser.from_model(repository.get(users, username)))

    def find(self, username: str) -> CodxUser | None:
        """The user with this username, or None."""
        require_str("username", username)

        def find(users: UserContainer) -> CodxUser | None:
            user = users.find_by_username(username)
            return None if user is None else CodxUser.from_model(user)

        return self._read(find)

    def get_by_id(self, user_id: str) -> CodxUser:
        """The user with this id; UserNotFound (field "id")."""
        require_str("user_id", user_id)
        return self._read(lambda users: CodxUser.from_model(repository.get_by_id(users, user_id)))

    def get_by_email(self, email: str) -> CodxUser:
        """The user with this email address (case-insensitive); UserNotFound (field "email")."""
        require_str("email", email)
        address = email_for_lookup(email)

        def get_by_email(users: UserContainer) -> CodxUser:
            user = users.find_by_email(address)
            if user is None:
                raise UserNotFound(email, field="email")
            return CodxUser.from_model(user)

        return self._read(get_by_email)

    def page(
        self, offset: int, limit: int, active: bool | None, prefix: str | None, after: str | None
    ) -> list[CodxUser]:
        """A page of users sorted by username (``UserDB.list``)."""
        problems = []
        if not is_int(offset) or offset < 0:
            problems.append("offset: must be an integer >= 0")
        if not is_int(limit) or not 0 <= limit <= MAX_PAGE:
            problems.append(f"limit: must be an integer from 0 to {MAX_PAGE}")
        if active is not None and not isinstance(active, bool):
            problems.append("active: must be true, false or None")
        for name, value in (("prefix", prefix), ("after", after)):
            if value is not None and not isinstance(value, str):
                problems.append(f"{name}: must be a string")
            elif value is not None and not fits(value):
                problems.append(f"{name}: must be at most {KEY_INPUT_MAX} characters")
        if problems:
            raise InvalidUserData(problems)

        def page(uow: UnitOfWork) -> list[CodxUser]:
            found = listing.page(repository.container(uow), offset, limit, active, prefix, after)
            # RelStorage loads the users not yet cached in one query instead of one each
            # (FileStorage and MappingStorage have nothing to prefetch: a no-op there).
            uow.connection.prefetch(found)
            return [CodxUser.from_model(user) for user in found]

        return self.database.run(page)

    def count(self) -> int:
        """How many users there are (O(1))."""
        return self._read(len)

    def iter_users(self, batch: int) -> Iterator[CodxUser]:
        """``UserDB.iter_users``: pages of ``batch`` users, each its own unit of work, resuming by username."""
        if not is_int(batch) or not 1 <= batch <= MAX_PAGE:
            raise InvalidUserData([f"batch: must be an integer from 1 to {MAX_PAGE}"])
        return self._iter_pages(batch)

    def _iter_pages(self, batch: int) -> Iterator[CodxUser]:
        after: str | None = None
        while True:
            page = self.page(0, batch, None, None, after)
            yield from page
            if len(page) < batch:
                return
            after = page[-1].username

    # -- writes --------------------------------------------------------------------------------

    def create(self, fields: dict[str, Any], password: str | None) -> CodxUser:
        """Create a user from ``UserDB.create``'s fields; UserAlreadyExists or InvalidUserData."""
        data = UserCreate.parse(fields)
        context = PasswordContext(data.username, data.email, data.full_name)
        password_hash = None if password is None else self.credentials.new_password_hash(password, context)
        return self.write(
            lambda uow: CodxUser.from_model(
                repository.add(repository.container(uow), data, password_hash, prefetch=True)
            ),
            f"create user {data.username}",
        )

    def update(self, username: str, changes: dict[str, Any]) -> CodxUser:
        """Change fields of a user (``UserDB.update``)."""
        require_str("username", username)
        if "password" in changes:
            raise InvalidUserData(["password: use set_password() to change a password"])
        fields = UserUpdate.parse(changes).changes()

        def update(uow: UnitOfWork) -> CodxUser:
            users = repository.container(uow)
            user = repository.get(users, username)
            old_username = user.username
            changed = repository.apply(users, user, fields)
            creds.forget_tokens_if_deactivated(uow.root, user, changed)
            if changed:
                note_user(uow, user.id, f"codx-db: update user {old_username}: {', '.join(sorted(changed))}")
            return CodxUser.from_model(user)

        return self.write(update, None)

    def set_password(self, username: str, password: str) -> None:
        """Replace a user's password (hashed with argon2id); every token of the user ends."""
        require_str("username", username)
        password_hash = self.credentials.new_password_hash_for(username, password)

        def set_password(uow: UnitOfWork) -> None:
            user = repository.get(repository.container(uow), username)
            repository.set_password_hash(user, password_hash)
            creds.forget_tokens(uow.root, user)  # a new password ends every session
            self.record_actor(uow, user.id)
            # The stored name: the one given may carry 100 kB of trimmed spaces.
            note_user(uow, user.id, f"codx-db: set password of {user.username}")

        self.write(set_password, None)

    def delete(self, username: str) -> None:
        """Delete a user with its tokens and API keys; UserNotFound."""
        require_str("username", username)

        def delete(uow: UnitOfWork) -> None:
            users = repository.container(uow)
            user = repository.get(users, username)
            users.remove(user)
            creds.forget_credentials(uow.root, user)  # tokens and API keys die with the user
            note_user(uow, user.id, f"codx-db: delete user {user.username}")

        self.write(delete, None)

    # -- authentication ------------------------------------------------------------------------

    def authenticate(self, username_or_email: str, password: str) -> CodxUser | None:
        """The user if the password matches and the user is active, else None (``UserDB.authenticate``)."""
        verified = login.verify(self, username_or_email, password)
        return None if verified is None else verified.user

    # -- history -------------------------------------------------------------------------------

    def history(self, username: str, limit: int) -> list[UserRevision]:
        """Past versions of a user, newest first; HistoryUnavailable on a history-free storage."""
        require_str("username", username)
        if not is_int(limit) or not 1 <= limit <= MAX_PAGE:
            raise InvalidUserData([f"limit: must be an integer from 1 to {MAX_PAGE}"])

        def history(uow: UnitOfWork) -> list[UserRevision]:
            return revisions(uow.connection, repository.get(repository.container(uow), username), limit)

        return self.database.run(history)

    def revert(self, username: str, to: datetime | str) -> CodxUser:
        """Restore a user's fields (never its password) as they were at ``to``: a new change."""
        require_str("username", username)
        tid, when = revision_target(to)

        def revert(uow: UnitOfWork) -> CodxUser:
            users = repository.container(uow)
            user = repository.get(users, username)
            state = state_at(uow.connection, user, tid, when)
            if not state:
                raise HistoryUnavailable(f"user {shown(user.username)} has no version at or before {shown(str(to))}")
            # Only the fields that change are checked (as update checks only those it is given): a
            # value stored before today's rules (a look-alike name) must not block the others.
            now = CodxUser.from_model(user).model_dump(include=set(TRACKED_FIELDS))
            then = snapshot(state).model_dump(include=set(TRACKED_FIELDS))
            fields = {name: value for name, value in then.items() if now.get(name) != value}
            if "projects" in fields:
                fields["projects"] = list(fields["projects"])  # UserUpdate takes a list
            old_username = user.username
            changed = repository.apply(users, user, UserUpdate.parse(fields).changes())
            creds.forget_tokens_if_deactivated(uow.root, user, changed)
            note_user(
                uow, user.id, f"codx-db: revert user {old_username} to {to if isinstance(to, str) else to.isoformat()}"
            )
            return CodxUser.from_model(user)

        return self.write(revert, None)

    # -- imports -------------------------------------------------------------------------------

    def prepare_import(
        self, records: Iterable[Mapping[str, Any]], batch_size: int | None, savepoint_every: int
    ) -> list[PreparedUser]:
        """Check ``UserDB.import_users``' arguments and records, hash the passwords; nothing is written.

        With batches, the records are also checked against the stored users here, before the
        first batch commits: bad input writes nothing in batches too.
        """
        if not is_int(savepoint_every) or savepoint_every < 1:
            raise InvalidUserData(["savepoint_every: must be a positive integer"])
        if batch_size is not None and (not is_int(batch_size) or batch_size < 1):
            raise InvalidUserData(["batch_size: must be a positive integer or None"])
        if batch_size is not None and self.database.current() is not None:
            raise InvalidUserData(["batch_size: batches commit on their own; not inside a unit of work"])
        prepared = prepare_records(records, PasswordPolicy.from_settings(self.database.settings))
        if batch_size is not None:
            self._read(lambda users: repository.check_unique_all(users, _keys(prepared)))
        return prepared

    @staticmethod
    def import_in_batches(
        prepared: list[PreparedUser], batch_size: int, write: Callable[[list[PreparedUser], int], int]
    ) -> int:
        """``write(batch, first)`` each batch; a failure says how many users the batches before it imported."""
        done = 0
        for start in range(0, len(prepared), batch_size):
            try:
                done += write(prepared[start : start + batch_size], start)
            except Exception as exc:
                exc.add_note(f"codx-db: {done} of {len(prepared)} users were imported before this batch failed")
                raise
        return done

    def import_batch(self, prepared: list[PreparedUser], savepoint_every: int, first: int = 0) -> int:
        """Write prepared users in one unit of work, a savepoint every ``savepoint_every``; how many.

        ``first``: the position of ``prepared[0]`` in the caller's records (for error messages).
        """

        def write(uow: UnitOfWork) -> int:
            users = repository.container(uow)
            repository.check_unique_all(users, _keys(prepared), first)
            for done, (data, password_hash) in enumerate(prepared, 1):
                repository.add(users, data, password_hash)
                if done % savepoint_every == 0 and done < len(prepared):
                    uow.transaction_manager.savepoint(optimistic=True)
                    uow.connection.cacheGC()  # the saved objects can now leave memory
            return len(prepared)

        return self.write(write, f"import {len(prepared)} users", bulk=True)

    # -- units of work -------------------------------------------------------------------------

    def _read(self, fn: Callable[[UserContainer], T]) -> T:
        return self.database.run(lambda uow: fn(repository.container(uow)))

    def write(self, fn: Callable[[UnitOfWork], T], note: str | None, *, bulk: bool = False) -> T:
        """Run ``fn`` as a write: one unit of work (or the caller's), recorded as by ``actor``.

        A single-user write (``bulk=False``) outside a unit of work goes through the group-commit
        queue (``Database.submit``): it may share its transaction with other threads' writes, so
        ``fn`` returns plain data, and the user it changed is recorded under its own actor
        (``record_actor``). Bulk writes (imports, sync) own their unit of work (``run``).
        """
        wrapped_note = f"codx-db: {note}" if note else None
        if bulk or self.database.current() is not None:

            def write(uow: UnitOfWork) -> T:
                name_transaction(uow, self.actor)
                if bulk:
                    return _all_or_nothing(uow, fn)
                result = fn(uow)
                if isinstance(result, CodxUser):
                    self.record_actor(uow, result.id)  # a second actor in a caller's unit of work
                return result

            return self.database.run(write, note=wrapped_note)

        def submitted(uow: UnitOfWork) -> T:
            result = fn(uow)
            if isinstance(result, CodxUser):
                self.record_actor(uow, result.id)
                if wrapped_note:  # the batch's description holds every write's note
                    record_note(uow.transaction, result.id, wrapped_note)
            return result

        return self.database.submit(submitted, note=wrapped_note, user=self.actor)

    def record_actor(self, uow: UnitOfWork, user_id: str) -> None:
        """Name this service's actor as the one who changed ``user_id`` in this unit of work.

        Recorded only where the transaction's user does not say it (history.note_actor: a group
        commit of several actors, a second actor in a caller's unit of work).
        """
        note_actor(uow, user_id, self.actor)


def _all_or_nothing(uow: UnitOfWork, fn: Callable[[UnitOfWork], T]) -> T:
    """Run a bulk write so that its error undoes its changes and notes, also in a caller's unit of work.

    A bulk write (sync) may refuse after it began writing (deletes come first). In its own unit
    of work the abort undoes it; joined to a caller's, a caller that catches the error and
    commits would save half of it, so a savepoint marks where this call began.
    """
    txn = uow.transaction
    savepoint = txn.savepoint(optimistic=True)
    description, omitted = txn.description, uow._omitted_notes
    try:
        return fn(uow)
    except Exception:
        savepoint.rollback()
        txn.description, uow._omitted_notes = description, omitted  # a savepoint keeps no metadata
        raise


def _keys(prepared: list[PreparedUser]) -> list[tuple[str, str | None, str]]:
    return [(data.username, data.email, data.github) for data, _ in prepared]


def revision_target(to: datetime | str) -> tuple[bytes | None, datetime | None]:
    """A revision id (16 hex digits) as a tid, or an ISO 8601 time (UTC if naive); InvalidUserData."""
    if isinstance(to, datetime):
        return None, to if to.tzinfo else to.replace(tzinfo=UTC)
    if isinstance(to, str):
        text = to.strip()
        if len(text) == 16 and all(c in "0123456789abcdefABCDEF" for c in text):
            return tid_from_str(text), None
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            return None, when if when.tzinfo else when.replace(tzinfo=UTC)
    raise InvalidUserData(["to: must be a revision id (16 hex digits) or an ISO 8601 time"])


def is_int(value: object) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)
