"""Project grants and the lookups codx-junior makes (by GitHub login, by project).

codx-junior scans its whole user list for each of these (``find_github_user``,
``get_users_with_project_access`` once per project during discovery). Here they read the
generation-5 indexes of the user container (``by_github``, ``by_project``, ``admins``), so a
lookup loads only the users it returns. Nothing here commits: the caller's unit of work does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from db.database import UnitOfWork
from db.errors import GenerationError, InvalidUserData
from db.users import repository
from db.users.history import note_user
from db.users.keys import require_str
from db.users.models import User, UserContainer, github_key, username_key
from db.users.normalize import MAX_PROJECTS
from db.users.schemas import CodxUser, ProjectPermission, parse_project, project_to_tuple, upgrade_project_tuple

if TYPE_CHECKING:
    from db.users.service import UserService

# The generation that created the indexes read here.
LOOKUP_GENERATION = 5


def require_indexes(users: UserContainer) -> None:
    """GenerationError unless the generation-5 indexes exist (a database not yet migrated)."""
    if users.by_github is None or users.by_project is None or users.admins is None:
        raise GenerationError(
            f"the database has no GitHub/project indexes (generation {LOOKUP_GENERATION}): "
            "run `codx-db migrate --apply` first"
        )


def find_by_github(users: UserContainer, login: str) -> User | None:
    """The user whose GitHub login is ``login`` (case-insensitive), or None."""
    require_indexes(users)
    return users.find_by_github(login)


def project_members(
    users: UserContainer, project_id: str, *, admins: bool = True, active: bool | None = None
) -> list[User]:
    """Users with a grant for ``project_id`` (and, with ``admins``, every admin), by username.

    As codx-junior: the grant's ``children`` flag is not looked at, and disabled users are
    included unless ``active`` filters them. Only the users returned are loaded.
    """
    require_indexes(users)
    by_project, admin_ids = users.by_project, users.admins
    assert by_project is not None and admin_ids is not None  # require_indexes
    ids = set(by_project.get(project_id, ()))
    if admins:
        ids.update(admin_ids)
    found = [users.users[user_id] for user_id in sorted(ids) if user_id in users.users]
    jar = users._p_jar
    if jar is not None:
        # RelStorage loads the users not yet cached in one query (a no-op on other storages).
        jar.prefetch(found)
    if active is not None:
        found = [user for user in found if user.is_active == active]
    return sorted(found, key=lambda user: username_key(user.username))


def grant(users: UserContainer, username: str, project: ProjectPermission) -> User:
    """Give ``username`` this grant, replacing its grant for the same project if it has one."""
    user = repository.get(users, username)
    entry = project_to_tuple(project)
    kept = [upgrade_project_tuple(p) for p in user.projects if p[0] != project.project_id]
    if len(kept) >= MAX_PROJECTS:
        raise InvalidUserData([f"projects: at most {MAX_PROJECTS} projects"])
    _set_projects(users, user, [*kept, entry])
    return user


def revoke(users: UserContainer, username: str, project_id: str) -> bool:
    """Take ``username``'s grant for ``project_id`` away; False if it had none."""
    user = repository.get(users, username)
    kept = [upgrade_project_tuple(p) for p in user.projects if p[0] != project_id]
    if len(kept) == len(user.projects):
        return False
    _set_projects(users, user, kept)
    return True


def _set_projects(users: UserContainer, user: User, entries: Iterable[tuple]) -> None:  # type: ignore[type-arg]
    # A new tuple, sorted by project id (ids are unique): the stored form of ``projects``.
    repository.apply(users, user, {"projects": tuple(sorted(entries, key=lambda entry: entry[0]))})


# -- the UserDB methods over these (db/user_db.py is a face) ----------------------------------

# No GitHub login is longer (39 characters); a lookup of megabytes answers None at once.
MAX_GITHUB_LOOKUP = 256


class AccessService:
    """``UserDB``'s codx-junior lookups and project grants, each one unit of work (``UserService``'s)."""

    def __init__(self, users: UserService) -> None:
        self.users = users

    def get_by_github(self, login: str) -> CodxUser | None:
        """The user with this GitHub login, or None (``""`` and non-strings too: codx-junior would match all)."""
        if not isinstance(login, str) or not github_key(login) or len(login) > MAX_GITHUB_LOOKUP:
            return None

        def find(uow: UnitOfWork) -> CodxUser | None:
            user = find_by_github(repository.container(uow), login)
            return None if user is None else CodxUser.from_model(user)

        return self.users.database.run(find)

    def with_project_access(self, project_id: str, admins: bool, active: bool | None) -> list[CodxUser]:
        """``UserDB.with_project_access``: the members of a project (and admins), by username."""
        problems: list[str] = []
        if not isinstance(project_id, str):
            problems.append("project_id: must be a string")
        if not isinstance(admins, bool):
            problems.append("admins: must be true or false")
        if active is not None and not isinstance(active, bool):
            problems.append("active: must be true, false or None")
        if problems:
            raise InvalidUserData(problems)

        wanted = project_id.strip()  # as grant_project stores it

        def members(uow: UnitOfWork) -> list[CodxUser]:
            found = project_members(repository.container(uow), wanted, admins=admins, active=active)
            return [CodxUser.from_model(user) for user in found]

        return self.users.database.run(members)

    def grant_project(
        self,
        username: str,
        project_id: str,
        permissions: str | Sequence[str],
        children: bool | None,
        apps: Sequence[str],
    ) -> CodxUser:
        """``UserDB.grant_project``: validate the grant first, then store it in one unit of work."""
        require_str("username", username)
        project = parse_project(
            {
                "project_id": project_id,
                "permissions": list(permissions) if isinstance(permissions, tuple) else permissions,
                "children": children,
                "apps": list(apps) if isinstance(apps, tuple) else apps,
            }
        )

        def write(uow: UnitOfWork) -> CodxUser:
            user = grant(repository.container(uow), username, project)
            note_user(uow, user.id, f"codx-db: grant project {project.project_id} to {user.username}")
            return CodxUser.from_model(user)

        return self.users.write(write, None)

    def revoke_project(self, username: str, project_id: str) -> bool:
        """``UserDB.revoke_project``: False if the user had no grant for the project."""
        require_str("username", username)
        require_str("project_id", project_id)
        project_id = project_id.strip()  # as grant_project stores it

        def write(uow: UnitOfWork) -> bool:
            users = repository.container(uow)
            done = revoke(users, username, project_id)
            if done:
                user = repository.get(users, username)
                note_user(uow, user.id, f"codx-db: revoke project {project_id} from {user.username}")
                # A bool answer names no user: record the actor here (history; group commit).
                self.users.record_actor(uow, user.id)
            return done

        return self.users.write(write, None)
