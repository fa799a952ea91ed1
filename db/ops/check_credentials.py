"""``codx-db check`` for the credential store: its BTrees' structure, layout and per-user sets.

The store (db/users/credentials.py) is optional: a database that never wrote a credential has
none. Its indexes are ``IndexTree``/``IndexSet`` from generation 6 (migrations/evolve6.py); an
older class is a warning, as for the user indexes (db/ops/check_lookups.py ``check_layout``).
A damaged or inconsistent store is reported for a person (revoking the user's tokens rebuilds
its set). One thing ``--repair`` fixes: credentials of a user who no longer exists
(``credential-orphan``; a deletion racing a login could leave them before 1e7c964). They cannot
log in (no user to find), but API keys never expire: their digests would stay forever.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Container
from typing import Any

from db.ops.reports import Problem
from db.users import credentials
from db.users.credentials import CREDENTIALS_KEY
from db.users.indexes import CREDENTIAL_INDEX_CLASSES, PER_USER_SET_INDEXES, IndexSet

# The generation that made the credential indexes IndexTree/IndexSet.
LAYOUT_GENERATION = 6
# Inconsistencies listed one by one before the rest are only counted.
MAX_LISTED = 20

CheckStructure = Callable[[str, Any, list[Problem]], None]


def check_credentials(
    root: Any,
    user_ids: Container[str],
    generation: int | None,
    problems: list[Problem],
    warnings: list[Problem],
    check_structure: CheckStructure,
) -> None:
    """Structure of every index and per-user set; each record in its user's set and of a stored
    user (``user_ids``); the layout (warnings)."""
    store = root.get(CREDENTIALS_KEY)
    if store is None:
        return
    for name in CREDENTIAL_INDEX_CLASSES:
        check_structure(f"credential {name}", getattr(store, name), problems)
    old_sets = 0
    for name in PER_USER_SET_INDEXES:
        for user_id, digests in getattr(store, name).items():
            check_structure(f"credential {name}[{user_id!r}]", digests, problems)
            old_sets += type(digests) is not IndexSet
    found: list[str] = []
    orphans: list[str] = []
    for records, by_user in (("tokens", "tokens_by_user"), ("api_keys", "api_keys_by_user")):
        index, sets = getattr(store, records), getattr(store, by_user)
        ownerless: Counter[str] = Counter()
        for digest, record in index.items():
            if digest not in sets.get(record.user_id, ()):
                found.append(f"{records} record {digest[:12]} is not in {by_user} of user {record.user_id!r}")
            if record.user_id not in user_ids:
                ownerless[record.user_id] += 1
        orphans += [
            f"{count} {records} of user {user_id!r}, who no longer exists (they cannot log in; "
            "`check --repair` revokes them)"
            for user_id, count in sorted(ownerless.items())
        ]
        listed = sum(len(digests) for digests in sets.values())
        if listed != len(index):
            found.append(f"{by_user} lists {listed} digests for {len(index)} {records}")
    if len(store.token_expiry) != len(store.tokens):
        found.append(f"token_expiry holds {len(store.token_expiry)} entries for {len(store.tokens)} tokens")
    for message in found[:MAX_LISTED]:
        problems.append(Problem(code="credential-inconsistent", message=message))
    if len(found) > MAX_LISTED:
        problems.append(
            Problem(code="credential-inconsistent", message=f"and {len(found) - MAX_LISTED} more credential problems")
        )
    problems += [Problem(code="credential-orphan", message=message) for message in orphans[:MAX_LISTED]]
    if len(orphans) > MAX_LISTED:
        problems.append(Problem(code="credential-orphan", message=f"and {len(orphans) - MAX_LISTED} more such users"))
    _check_layout(store, generation, old_sets, warnings)


def drop_orphan_credentials(root: Any, user_ids: Container[str]) -> list[str]:
    """Revoke the tokens and API keys of users who no longer exist (``repair``); one line per user."""
    store = root.get(CREDENTIALS_KEY)
    if store is None:
        return []
    owners = {record.user_id for index in (store.tokens, store.api_keys) for record in index.values()}
    fixed = []
    for user_id in sorted(owner for owner in owners if owner not in user_ids):
        tokens = credentials.revoke_user_tokens(store, user_id)
        keys = credentials.revoke_user_api_keys(store, user_id)
        fixed.append(f"credentials: revoked {tokens} tokens and {keys} API keys of the missing user {user_id!r}")
    return fixed


def _check_layout(store: Any, generation: int | None, old_sets: int, warnings: list[Problem]) -> None:
    if generation is None or generation < LAYOUT_GENERATION:
        return
    for name, cls in CREDENTIAL_INDEX_CLASSES.items():
        index = getattr(store, name)
        if type(index) is not cls:
            warnings.append(
                Problem(
                    code="index-old-layout",
                    message=f"generation {generation} but the credential {name} index is a {type(index).__name__}, "
                    f"not a {cls.__name__}: it works, with more conflicts between concurrent logins",
                )
            )
    if old_sets:
        warnings.append(
            Problem(
                code="index-old-layout",
                message=f"generation {generation} but {old_sets} per-user credential sets are not IndexSet: "
                "they work, with more conflicts between concurrent logins of one user",
            )
        )
