"""What a runtime provides for entities (`ev.entity`): a small store of versioned JSON entries, and the rules
every store shares.

`eventual_nb.entities` (the public API) validates values against their models, checks keys and sizes,
and refuses workflow code; a store only keeps JSON text under a key, with a version, and applies writes
atomically under version conditions. Each runtime provides one through `runtime.entity_store()`: the
TestEnvironment in memory (`runtime/entity_memory.py`), the LocalRuntime in its SQLite database, the AWS
runtime in the stack's entities table (DynamoDB).

The rules here are storage-free, so the three stores cannot drift apart:

* a key is `(entity, partition, sort)`; one-part keys have `sort == ""` (two-part keys never do);
* versions are positive integers; a missing entry has version 0. A put makes version `actual + 1` (1 for a
  new entry, and again 1 for one re-created after a delete); a condition names the version it expects
  (`expected_version=0`: "must not exist yet") or none (`None`: whatever is stored);
* a failed condition is described as "version 3, expected 4" (`conflict_reason`), the same text on every
  runtime (`TransactionConflict.reasons`, `VersionConflict`'s message);
* a transaction holds 1 to `MAX_OPERATIONS` writes, each on its own key, and at most
  `MAX_TRANSACTION_BYTES` of values (DynamoDB's limits, enforced everywhere so code moves between runtimes);
* a query returns a partition's entries in ascending sort-key order (Unicode code points, the order of
  their UTF-8 bytes, which is how SQLite and DynamoDB compare text), optionally only those whose sort key
  starts with a prefix; pages continue after the last sort key of the page before (`page_token`).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from eventual_nb import errors
from eventual_nb.runtime.base import invalid_page_token

#: the most writes one `ev.transact` applies (DynamoDB's TransactWriteItems limit)
MAX_OPERATIONS = 100
#: the most value bytes one transaction writes (DynamoDB's 4 MB transaction limit, less room for keys)
MAX_TRANSACTION_BYTES = 4_000_000
#: the largest value, serialised as JSON (DynamoDB's items hold 400 KB; the rest is room for key and version)
MAX_VALUE_BYTES = 350 * 1024
#: the longest partition or sort key, in UTF-8 bytes (DynamoDB allows 2048 for the partition, 1024 for the sort)
MAX_KEY_BYTES = 1024
#: the most entries one query page holds
MAX_QUERY_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class EntityKey:
    """Where an entry lives: its entity's name, its partition and (two-part keys only) its sort key."""

    entity: str
    partition: str
    sort: str = ""

    @property
    def shown(self) -> str | tuple[str, str]:
        """The key as a user writes it: `"a1"`, or `("alice", "0001")` for a two-part key."""
        return self.partition if not self.sort else (self.partition, self.sort)


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """An entry as stored: its value's JSON text and its version (a positive int)."""

    value: str
    version: int


@dataclass(frozen=True, slots=True)
class Write:
    """One operation of a transaction: `put` (with `value`), `delete`, or `check` (a condition only)."""

    kind: Literal["put", "delete", "check"]
    key: EntityKey
    value: str | None = None
    expected_version: int | None = None


@dataclass(frozen=True, slots=True)
class QueryPage:
    """What a store's query returns: `(sort key, entry)` pairs and whether the partition may hold more."""

    entries: list[tuple[str, StoredEntry]]
    more: bool


@runtime_checkable
class EntityStore(Protocol):
    """The entity storage a runtime provides (`runtime.entity_store()`); callable from any thread or loop.

    Writes raise `ev.VersionConflict` (put, delete) or `ev.TransactionConflict` (transact) when a condition
    does not hold, having written nothing; every write is durable when it returns."""

    async def get(self, key: EntityKey) -> StoredEntry | None: ...

    async def put(self, key: EntityKey, value: str, expected_version: int | None) -> int: ...

    async def delete(self, key: EntityKey, expected_version: int | None) -> None: ...

    async def query(
        self, entity: str, partition: str, prefix: str | None, limit: int, after: str | None
    ) -> QueryPage: ...

    async def transact(self, writes: Sequence[Write]) -> list[int | None]: ...

    async def count(self, entity: str) -> int | None:
        """How many entries `entity` holds, or None where counting is not cheap (DynamoDB would scan)."""
        ...


# ------------------------------------------------------------------------------------------- conditions


def conflict_reason(expected: int | None, actual: int) -> str | None:
    """None if a write expecting `expected` may go ahead on an entry at version `actual` (0: missing)."""
    if expected is None or expected == actual:
        return None
    return f"version {actual}, expected {expected}"


def version_conflict(key: EntityKey, expected: int | None, actual: int) -> errors.VersionConflict:
    """The one `VersionConflict` every store raises for a refused `put` or `delete`."""
    if actual == 0:
        found = "it does not exist"
    elif expected == 0:
        found = f"it already exists (version {actual})"
    else:
        found = f"it is at version {actual}"
    return errors.VersionConflict(
        f"entity '{key.entity}' key {key.shown!r}: expected version {expected}, but {found}; read it again and "
        "retry, or give up (nothing was written)",
        entity=key.entity,
        key=key.shown,
        expected_version=expected,
        actual_version=actual,
    )


def transaction_conflict(writes: Sequence[Write], reasons: Sequence[str | None]) -> errors.TransactionConflict:
    """The one `TransactionConflict` every store raises: which operations failed, and why."""
    failed = [
        f"operation {index + 1} ({write.kind} '{write.key.entity}' {write.key.shown!r}): {reason}"
        for index, (write, reason) in enumerate(zip(writes, reasons, strict=True))
        if reason is not None
    ]
    return errors.TransactionConflict(
        f"transaction of {len(writes)} operation(s) applied none of them: {'; '.join(failed)}",
        reasons=list(reasons),
    )


def plan(writes: Sequence[Write], actual: Sequence[int]) -> list[int | None]:
    """For stores that check conditions themselves (memory, SQLite), given each write's current version: the
    result of each write (the new version of a put, None for a delete or a check), or `TransactionConflict`."""
    reasons = [conflict_reason(write.expected_version, version) for write, version in zip(writes, actual, strict=True)]
    if any(reason is not None for reason in reasons):
        raise transaction_conflict(writes, reasons)
    return [version + 1 if write.kind == "put" else None for write, version in zip(writes, actual, strict=True)]


def check_write(key: EntityKey, expected: int | None, actual: int) -> None:
    """For stores that check conditions themselves: refuse a `put` or `delete` whose condition does not hold."""
    if conflict_reason(expected, actual) is not None:
        raise version_conflict(key, expected, actual)


def check_transaction(writes: Sequence[Write]) -> None:
    """Refuse what no store could apply atomically: too many writes, two on one key, too many bytes."""
    if len(writes) > MAX_OPERATIONS:
        raise errors.InputValidationError(
            f"ev.transact takes at most {MAX_OPERATIONS} operations, got {len(writes)}: split the work into "
            "several transactions"
        )
    seen: dict[EntityKey, int] = {}
    for index, write in enumerate(writes):
        earlier = seen.setdefault(write.key, index)
        if earlier != index:
            raise errors.InputValidationError(
                f"ev.transact has two operations on entity '{write.key.entity}' key {write.key.shown!r} (operations "
                f"{earlier + 1} and {index + 1}); a transaction may touch each entry once"
            )
    size = sum(len(write.value.encode("utf-8")) for write in writes if write.value is not None)
    if size > MAX_TRANSACTION_BYTES:
        raise errors.InputValidationError(
            f"ev.transact writes {size:,} bytes of values, more than the {MAX_TRANSACTION_BYTES:,} a transaction "
            "may hold: split the work into several transactions"
        )


# ------------------------------------------------------------------------------------------- page tokens


def page_token(after: str) -> str:
    """The `next_token` of a page whose last entry has sort key `after` (URL-safe, opaque to callers)."""
    return base64.urlsafe_b64encode(json.dumps({"after": after}).encode("utf-8")).decode("ascii").rstrip("=")


def read_page_token(token: str, prefix: str | None) -> str:
    """The sort key a `next_token` continues after; `InvalidPageToken` (400) for one no query issued."""
    try:
        decoded: Any = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("utf-8"))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise invalid_page_token(token, "not a page token of an entity query") from None
    after = decoded.get("after") if isinstance(decoded, dict) else None
    if not isinstance(after, str) or not after:
        raise invalid_page_token(token, "not a page token of an entity query")
    if prefix is not None and not after.startswith(prefix):
        raise invalid_page_token(token, f"it continues a query of another prefix than {prefix!r}")
    return after


def in_page(sort: str, prefix: str | None, after: str | None) -> bool:
    """Whether an entry with sort key `sort` belongs to a query page (for stores that filter themselves)."""
    return (prefix is None or sort.startswith(prefix)) and (after is None or sort > after)
