"""Comparing two codx-db databases, and reading one: generation, user count, every user field by field.

A copy, backup or restore is verified with ``verify``: same generation, same user count, every
user equal field by field (password hashes included), and ``check`` finds nothing wrong in the
target that is not already wrong in the source.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import transaction
import ZODB
from ZODB.interfaces import IStorage
from ZODB.utils import u64

from db.display import capped
from db.ops.check import check_root
from db.ops.reports import Verification, describe_user
from db.users.models import USERS_KEY, UserContainer
from migrations.runner import read_generation

MAX_LISTED_DIFFERENCES = 50


def verify(source: ZODB.DB, target: ZODB.DB, as_of: bytes | None = None) -> Verification:
    """Compare two codx-db databases: generation, user count, every user field by field.

    Each side is read in one snapshot. ``as_of`` is for a source that kept running after the
    target was taken at that transaction id: source objects written later are counted as
    changed rather than compared; everything older must be equal.
    """
    with reading(source) as s_root, reading(target) as t_root:
        report = Verification(
            source_generation=generation_of(s_root),
            target_generation=generation_of(t_root),
            source_users=user_count(s_root),
            target_users=user_count(t_root),
            as_of=None if as_of is None else f"{u64(as_of):016x}",
        )
        differences = report.differences
        if report.source_generation is None or report.target_generation is None:
            # Two databases without a generation are not "equal": they are not codx-db databases.
            differences.append(
                f"generation: source {report.source_generation}, target {report.target_generation} "
                "(a codx-db database always has one)"
            )
        elif not _newer(s_root, as_of) and report.source_generation != report.target_generation:
            differences.append(f"generation: source {report.source_generation}, target {report.target_generation}")
        s_users, t_users = s_root.get(USERS_KEY), t_root.get(USERS_KEY)
        if not isinstance(s_users, UserContainer) or not isinstance(t_users, UserContainer):
            if isinstance(s_users, UserContainer) or isinstance(t_users, UserContainer):
                differences.append("user container: present on one side only")
            else:
                differences.append("user container: missing on both sides (not codx-db databases)")
            return report
        if not _newer(s_users.length, as_of) and report.source_users != report.target_users:
            differences.append(f"user count: source {report.source_users}, target {report.target_users}")
        _compare_users(s_users, t_users, as_of, report)
        source_problems = {p.message for p in check_root(s_root).problems}
        for problem in check_root(t_root).problems:
            if problem.message not in source_problems:
                differences.append(f"target check: {problem.code}: {problem.message}")
        differences[:] = capped(differences, MAX_LISTED_DIFFERENCES)
        return report


def describe_storage(open_storage: Callable[[], IStorage]) -> dict[str, Any]:
    """Generation and user count of a non-empty storage (for messages and reports)."""
    try:
        zodb = ZODB.DB(open_storage(), database_name="codx-db describe", pool_size=1)
    except Exception:  # noqa: BLE001 - a description must not hide the real problem
        return {"generation": "unknown", "users": "unknown"}
    try:
        with reading(zodb) as root:
            return {"generation": generation_of(root), "users": user_count(root)}
    except Exception:  # noqa: BLE001 - unreadable content: say so, do not fail
        return {"generation": "unknown", "users": "unknown"}
    finally:
        zodb.close()


def describe_file(path: Path) -> dict[str, Any]:
    """``describe_storage`` of a FileStorage file, opened read-only (no lock taken)."""
    from ZODB.FileStorage import FileStorage

    return describe_storage(lambda: FileStorage(str(path), read_only=True))


@contextlib.contextmanager
def reading(zodb: ZODB.DB) -> Iterator[Any]:
    """The root of one read-only snapshot (aborted at the end)."""
    manager = transaction.TransactionManager(explicit=True)
    connection = zodb.open(transaction_manager=manager)
    try:
        manager.begin()
        yield connection.root()
    finally:
        with contextlib.suppress(transaction.interfaces.NoTransaction):
            manager.abort()
        connection.close()


def generation_of(root: Any) -> int | None:
    """The generation stored in ``root``; None when there is none or it is not a number."""
    try:
        return read_generation(root)
    except (TypeError, ValueError):
        return None


def user_count(root: Any) -> int | None:
    """How many users the root's container holds; None when there is no container."""
    container = root.get(USERS_KEY)
    return len(container) if isinstance(container, UserContainer) else None


def _newer(obj: Any, as_of: bytes | None) -> bool:
    """True when a live source wrote ``obj`` after the snapshot ``as_of``."""
    if as_of is None:
        return False
    obj._p_activate()
    return bool(obj._p_serial > as_of)


def _compare_users(source: UserContainer, target: UserContainer, as_of: bytes | None, report: Verification) -> None:
    """Walk both id-ordered user trees together, comparing stored states field by field."""
    s_items, t_items = iter(source.users.items()), iter(target.users.items())
    s_next, t_next = next(s_items, None), next(t_items, None)
    seen = 0
    while s_next is not None or t_next is not None:
        if t_next is None or (s_next is not None and s_next[0] < t_next[0]):
            assert s_next is not None
            if _newer(s_next[1], as_of):
                report.changed_since += 1  # created after the snapshot
            else:
                report.differences.append(f"user {describe_user(s_next[1])}: in the source only")
            s_next = next(s_items, None)
        elif s_next is None or t_next[0] < s_next[0]:
            if as_of is not None:
                report.changed_since += 1  # deleted from the source after the snapshot
            else:
                report.differences.append(f"user {describe_user(t_next[1])}: in the target only")
            t_next = next(t_items, None)
        else:
            s_user, t_user = s_next[1], t_next[1]
            if _newer(s_user, as_of):
                report.changed_since += 1
            else:
                differing = _differing_fields(s_user, t_user)
                if differing:
                    # Field names only: values may be hashes or personal data.
                    report.differences.append(f"user {describe_user(s_user)}: differs in {', '.join(differing)}")
                else:
                    report.compared += 1
            s_next, t_next = next(s_items, None), next(t_items, None)
        seen += 1
        if seen % 1000 == 0:
            # Keep memory bounded on large databases.
            source._p_jar.cacheGC()
            target._p_jar.cacheGC()


def _differing_fields(source: Any, target: Any) -> list[str]:
    source._p_activate()
    target._p_activate()
    s_state, t_state = source.__getstate__(), target.__getstate__()
    names = sorted(set(s_state) | set(t_state))
    return [name for name in names if s_state.get(name, _MISSING) != t_state.get(name, _MISSING)]


_MISSING = object()
