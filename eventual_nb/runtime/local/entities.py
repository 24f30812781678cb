"""The LocalRuntime's entity store: tables of its own SQLite database, same file, same lock.

Writes go through the runtime's scheduler like every other change (`LocalRuntime._write`): each `put`,
`delete` or `transact` is checked and applied inside a savepoint of the next round's transaction, so it is
atomic on its own (a conflict undoes it alone) and returns only after that transaction committed, fsynced
as the runtime's `durability` says (`full`: on every commit). Rounds group the writes that arrive together
into one commit, as they group starts and signals. Reads run on the runtime's loop between rounds
(`LocalRuntime._read`), so they see committed entries only; the connection is the runtime's own, used
from its thread alone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from eventual_nb.runtime.entity_store import EntityKey, QueryPage, StoredEntry, Write, check_write, plan
from eventual_nb.runtime.local.store import Database

T = TypeVar("T")


class _Runtime(Protocol):
    def _write(self, change: Callable[[Database], T]) -> Awaitable[T]: ...

    def _read(self, read: Callable[[Database], T]) -> Awaitable[T]: ...


class LocalEntityStore:
    """Entries in the LocalRuntime's database (`EntityStore`)."""

    def __init__(self, runtime: _Runtime) -> None:
        self.runtime = runtime

    async def get(self, key: EntityKey) -> StoredEntry | None:
        return await self.runtime._read(lambda database: database.entity(key))

    async def query(self, entity: str, partition: str, prefix: str | None, limit: int, after: str | None) -> QueryPage:
        found = await self.runtime._read(
            lambda database: database.entity_page(entity, partition, prefix, after, limit + 1)
        )
        return QueryPage(found[:limit], more=len(found) > limit)

    async def count(self, entity: str) -> int | None:
        return await self.runtime._read(lambda database: database.entity_count(entity))

    async def put(self, key: EntityKey, value: str, expected_version: int | None) -> int:
        def change(database: Database) -> int:
            version = database.entity_version(key)
            check_write(key, expected_version, version)
            database.write_entities([Write("put", key, value)], [version + 1])
            return version + 1

        return await self.runtime._write(change)

    async def delete(self, key: EntityKey, expected_version: int | None) -> None:
        def change(database: Database) -> None:
            check_write(key, expected_version, database.entity_version(key))
            database.write_entities([Write("delete", key)], [None])

        await self.runtime._write(change)

    async def transact(self, writes: Sequence[Write]) -> list[int | None]:
        def change(database: Database) -> list[int | None]:
            results = plan(writes, [database.entity_version(write.key) for write in writes])
            database.write_entities(writes, results)
            return results

        return await self.runtime._write(change)
