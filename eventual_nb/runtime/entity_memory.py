"""The TestEnvironment's entity store: a dict per environment, gone when the environment is.

A lock makes every operation atomic whichever thread calls it (plain `def` activities run in threads; a
notebook's TestEnvironment is reached from the kernel's threads too). Conditions and versions follow the
shared rules of `eventual_nb.runtime.entity_store`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from eventual_nb.runtime.entity_store import (
    EntityKey,
    QueryPage,
    StoredEntry,
    Write,
    check_write,
    in_page,
    plan,
)


class MemoryEntityStore:
    """Entries in memory (`EntityStore`)."""

    def __init__(self) -> None:
        self._entries: dict[EntityKey, StoredEntry] = {}
        self._lock = threading.Lock()

    def _version(self, key: EntityKey) -> int:
        entry = self._entries.get(key)
        return 0 if entry is None else entry.version

    async def get(self, key: EntityKey) -> StoredEntry | None:
        with self._lock:
            return self._entries.get(key)

    async def put(self, key: EntityKey, value: str, expected_version: int | None) -> int:
        with self._lock:
            actual = self._version(key)
            check_write(key, expected_version, actual)
            self._entries[key] = StoredEntry(value, actual + 1)
            return actual + 1

    async def delete(self, key: EntityKey, expected_version: int | None) -> None:
        with self._lock:
            actual = self._version(key)
            check_write(key, expected_version, actual)
            self._entries.pop(key, None)

    async def query(self, entity: str, partition: str, prefix: str | None, limit: int, after: str | None) -> QueryPage:
        with self._lock:
            found = sorted(
                (key.sort, entry)
                for key, entry in self._entries.items()
                if key.entity == entity and key.partition == partition and in_page(key.sort, prefix, after)
            )
        return QueryPage(found[:limit], more=len(found) > limit)

    async def transact(self, writes: Sequence[Write]) -> list[int | None]:
        with self._lock:
            results = plan(writes, [self._version(write.key) for write in writes])
            for write, version in zip(writes, results, strict=True):
                if write.kind == "put":
                    assert write.value is not None
                    assert version is not None
                    self._entries[write.key] = StoredEntry(write.value, version)
                elif write.kind == "delete":
                    self._entries.pop(write.key, None)
            return results

    async def count(self, entity: str) -> int | None:
        with self._lock:
            return sum(1 for key in self._entries if key.entity == entity)
