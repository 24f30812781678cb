"""Entities: durable, versioned records for activities, API routes, subscriptions and notebook cells.

    class Account(BaseModel):
        id: str
        balance: int = 0

    accounts = ev.entity("accounts", Account, key="id")

    entry = await accounts.get_entry("a1")                   # ev.Entry(value=Account(...), version=3) or None
    await accounts.put(entry.value.model_copy(update={"balance": 5}), expected_version=entry.version)
    await ev.transact(accounts.put_op(a, expected_version=2), operations.put_op(op, expected_version=0))

Every runtime keeps them (`runtime.entity_store()`, see `eventual_nb.runtime.entity_store` for the rules
the three stores share): the TestEnvironment in memory, the LocalRuntime in its SQLite database, the AWS
runtime in the stack's entities table. A call uses the current runtime (`ev.current_runtime()`).

What this module decides, once for every runtime: a value is validated by its model on `put` (and read
back through it, so what is stored is what the model accepts) and on every read (a value stored under an
earlier model that the current one refuses raises `InvalidEntityValue` naming the entry); a value over
350 KB of JSON is refused; keys are a field (`key="id"`) or two (`key=("account", "line")`: a partition and a
sort key, which `query` lists in order); and workflow code may not use entities at all, since a workflow
must replay deterministically while an entity can change between two replays.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError

from eventual_nb import errors
from eventual_nb.engine.executor import current_executor
from eventual_nb.runtime.base import current_runtime
from eventual_nb.runtime.entity_store import (
    MAX_KEY_BYTES,
    MAX_QUERY_LIMIT,
    MAX_VALUE_BYTES,
    EntityKey,
    EntityStore,
    StoredEntry,
    Write,
    check_transaction,
    page_token,
    read_page_token,
)
from eventual_nb.serde import plain_errors
from eventual_nb.service import Service, current_service

M = TypeVar("M", bound=BaseModel)

#: an entity's name: it is part of storage keys, URLs and CLI arguments
ENTITY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ENTITY_NAME_RULE = "1 to 64 ASCII letters, digits, '.', '_' and '-', starting with a letter or digit"


@dataclass(frozen=True, slots=True)
class Entry(Generic[M]):
    """An entity's value with its version (a positive int, one more after each `put`)."""

    value: M
    version: int


@dataclass(frozen=True, slots=True)
class EntryPage(Generic[M]):
    """One page of `query`: entries in ascending sort-key order, and the token of the next page (None: last)."""

    entries: list[Entry[M]]
    next_token: str | None = None


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation of `ev.transact`, made by an entity's `put_op`, `delete_op` or `check_op`."""

    entity: Entity[Any]
    write: Write


class Entity(Generic[M]):
    """A named collection of `Model` values, each stored under its key with a version (`ev.entity`)."""

    def __init__(self, name: str, model: type[M], key: str | tuple[str, str], service: Service) -> None:
        if not isinstance(name, str) or not ENTITY_NAME.fullmatch(name):
            raise errors.EventualError(f"invalid entity name {name!r}: an entity name is {ENTITY_NAME_RULE}")
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise errors.EventualError(f"entity '{name}': its model must be a pydantic BaseModel class, got {model!r}")
        fields = (key,) if isinstance(key, str) else tuple(key) if isinstance(key, tuple | list) else ()
        if not 1 <= len(fields) <= 2 or not all(isinstance(field, str) for field in fields):
            raise errors.EventualError(
                f"entity '{name}': key must be a field name (key=\"id\") or a pair of them "
                f'(key=("account", "line"): partition and sort key), got {key!r}'
            )
        missing = [field for field in fields if field not in model.model_fields]
        if missing:
            raise errors.EventualError(
                f"entity '{name}': its key field {missing[0]!r} is not a field of {model.__name__} "
                f"(fields: {', '.join(model.model_fields) or 'none'})"
            )
        if len(set(fields)) != len(fields):
            raise errors.EventualError(f"entity '{name}': its partition and sort key must be two different fields")
        self.name = name
        self.model = model
        self.key_fields: tuple[str, ...] = fields
        self.service = service

    def __repr__(self) -> str:
        key = self.key_fields[0] if len(self.key_fields) == 1 else self.key_fields
        return f"<entity {self.name!r} of {self.model.__name__}, key={key!r}>"

    @property
    def two_part(self) -> bool:
        return len(self.key_fields) == 2

    def spec(self) -> dict[str, Any]:
        """What `eventual.json` says about the entity (the AWS template declares a table when there are any)."""
        try:
            schema: Any = self.model.model_json_schema()
        except Exception:  # noqa: BLE001 - a schema is a courtesy, not a requirement
            schema = None
        return {"name": self.name, "model": self.model.__name__, "key": list(self.key_fields), "schema": schema}

    # -- reading -----------------------------------------------------------------------------------

    async def get(self, key: Any) -> M | None:
        """The value stored under `key` (a value, or `(partition, sort)` for a two-part key), or None."""
        entry = await self.get_entry(key)
        return None if entry is None else entry.value

    async def get_entry(self, key: Any) -> Entry[M] | None:
        """The value and version stored under `key`, or None."""
        store = _store(f"{self.name}.get")
        where = self.key(key)
        stored = await store.get(where)
        return None if stored is None else self._entry(where, stored)

    async def query(
        self, partition: Any, prefix: str | None = None, limit: int = 100, next_token: str | None = None
    ) -> EntryPage[M]:
        """A partition's entries in ascending sort-key order (two-part keys only).

        Options: `prefix` keeps only sort keys that start with it; `limit` (1 to 1,000) bounds the page;
        `next_token` is the token of the page before. A page holds at most `limit` entries; its `next_token`
        is None when the partition holds no more."""
        if not self.two_part:
            raise errors.EventualError(
                f"entity '{self.name}' has a one-part key ({self.key_fields[0]!r}): query lists the entries of one "
                "partition, so it needs a two-part key, key=(partition field, sort field)"
            )
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_QUERY_LIMIT:
            raise errors.InputValidationError(
                f"limit must be a whole number from 1 to {MAX_QUERY_LIMIT}, got {limit!r}"
            )
        if prefix is not None and not isinstance(prefix, str):
            raise errors.InputValidationError(f"prefix must be a string, got {prefix!r}")
        part = self._part(self.key_fields[0], partition)
        after = None if next_token is None else read_page_token(next_token, prefix or None)
        store = _store(f"{self.name}.query")
        page = await store.query(self.name, part, prefix or None, limit, after)
        entries = [self._entry(EntityKey(self.name, part, sort), stored) for sort, stored in page.entries]
        token = page_token(page.entries[-1][0]) if page.more and page.entries else None
        return EntryPage(entries, token)

    # -- writing -----------------------------------------------------------------------------------

    async def put(self, value: M | dict[str, Any], expected_version: int | None = None) -> int:
        """Store `value` under its key; returns the new version.

        `expected_version`: None writes whatever is stored; 0 writes only if nothing is stored yet
        (create-only); a positive version writes only over that version. Otherwise `ev.VersionConflict`
        is raised and nothing is written."""
        operation = self.put_op(value, expected_version)
        store = _store(f"{self.name}.put")
        assert operation.write.value is not None
        return await store.put(operation.write.key, operation.write.value, operation.write.expected_version)

    async def delete(self, key: Any, expected_version: int | None = None) -> None:
        """Remove the entry under `key` (nothing happens if there is none and no version was expected).

        `expected_version` as for `put`; a mismatch raises `ev.VersionConflict`."""
        operation = self.delete_op(key, expected_version)
        store = _store(f"{self.name}.delete")
        await store.delete(operation.write.key, operation.write.expected_version)

    def put_op(self, value: M | dict[str, Any], expected_version: int | None = None) -> Operation:
        """A `put` for `ev.transact` (validated now: a bad value fails here, before any transaction)."""
        checked, text = self._encode(value)
        return Operation(
            self, Write("put", self._key_of(checked), text, _version(expected_version, "expected_version"))
        )

    def delete_op(self, key: Any, expected_version: int | None = None) -> Operation:
        """A `delete` for `ev.transact`."""
        return Operation(self, Write("delete", self.key(key), None, _version(expected_version, "expected_version")))

    def check_op(self, key: Any, version: int) -> Operation:
        """A condition for `ev.transact`: the entry under `key` is at `version` (0: does not exist); writes nothing."""
        if version is None:
            raise errors.InputValidationError("check_op needs the version the entry must have (0: must not exist)")
        return Operation(self, Write("check", self.key(key), None, _version(version, "version")))

    # -- keys and values ---------------------------------------------------------------------------

    def key(self, key: Any) -> EntityKey:
        """Where `key` (as callers write it) lives; `InvalidEntityValue` for a key of the wrong shape."""
        if self.two_part:
            if not isinstance(key, tuple | list) or len(key) != 2:
                raise errors.InvalidEntityValue(
                    f"entity '{self.name}' has a two-part key ({self.key_fields[0]}, {self.key_fields[1]}): "
                    f"pass a pair (partition, sort), got {key!r}"
                )
            return EntityKey(self.name, self._part(self.key_fields[0], key[0]), self._part(self.key_fields[1], key[1]))
        if isinstance(key, tuple | list):
            raise errors.InvalidEntityValue(
                f"entity '{self.name}' has a one-part key ({self.key_fields[0]}): pass the key itself, got {key!r}"
            )
        return EntityKey(self.name, self._part(self.key_fields[0], key))

    def _key_of(self, value: M) -> EntityKey:
        return self.key(
            tuple(getattr(value, field) for field in self.key_fields)
            if self.two_part
            else getattr(value, self.key_fields[0])
        )

    def _part(self, field: str, part: Any) -> str:
        if isinstance(part, bool) or not isinstance(part, str | int):
            raise errors.InvalidEntityValue(
                f"entity '{self.name}': key field {field!r} must be a string or an integer, got {part!r}"
            )
        text = str(part)
        if not text:
            raise errors.InvalidEntityValue(f"entity '{self.name}': key field {field!r} must not be empty")
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            raise errors.InvalidEntityValue(
                f"entity '{self.name}': key field {field!r} is not valid Unicode text (it holds a lone surrogate)"
            ) from None
        if size > MAX_KEY_BYTES:
            raise errors.InvalidEntityValue(
                f"entity '{self.name}': key field {field!r} is {size:,} bytes long (UTF-8); a key part holds at most "
                f"{MAX_KEY_BYTES:,}"
            )
        return text

    def _encode(self, value: Any) -> tuple[M, str]:
        """The value checked by the model (and read back through it, as every read will) and its JSON text."""
        if isinstance(value, BaseModel) and not isinstance(value, self.model):
            raise errors.InvalidEntityValue(
                f"entity '{self.name}' stores {self.model.__name__} values, got a {type(value).__name__}"
            )
        try:
            checked = self.model.model_validate(
                value.model_dump(mode="json") if isinstance(value, BaseModel) else value
            )
            text = checked.model_dump_json()
            self.model.model_validate_json(text)
        except ValidationError as exc:
            raise errors.InvalidEntityValue(
                f"entity '{self.name}': invalid {self.model.__name__} value: {_summary(exc)}", errors=plain_errors(exc)
            ) from None
        except PydanticSerializationError as exc:  # text that is not Unicode (a lone surrogate), an unknown type
            raise errors.InvalidEntityValue(
                f"entity '{self.name}': the {self.model.__name__} value has no JSON form: {exc}"
            ) from None
        size = len(text.encode("utf-8"))
        if size > MAX_VALUE_BYTES:
            key = self._key_of(checked).shown
            raise errors.InvalidEntityValue(
                f"entity '{self.name}' key {key!r}: the value is {size:,} bytes of JSON, more than the "
                f"{MAX_VALUE_BYTES:,} (350 KB) an entity value may hold; keep large data elsewhere (a file, S3) and "
                "store its address"
            )
        return checked, text

    def _entry(self, key: EntityKey, stored: StoredEntry) -> Entry[M]:
        try:
            value = self.model.model_validate_json(stored.value)
        except ValidationError as exc:
            raise errors.InvalidEntityValue(
                f"entity '{self.name}' key {key.shown!r} (version {stored.version}) holds a value that the current "
                f"{self.model.__name__} model refuses: {_summary(exc)}; give new fields defaults, or rewrite the "
                "stored values",
                errors=plain_errors(exc),
            ) from None
        return Entry(value, stored.version)


def entity(name: str, model: type[M], *, key: str | tuple[str, str], service: Service | None = None) -> Entity[M]:
    """Define entity `name`, holding `model` values keyed by the field `key` (or a pair of fields: partition
    and sort key, listed in order by `query`), in `service` (default: the current one).

    Defining a name again (a re-run notebook cell) replaces the definition; the stored entries stay."""
    target = service or current_service()
    defined = Entity(name, model, key, target)
    target.entities[name] = defined
    return defined


async def transact(*operations: Operation) -> list[int | None]:
    """Apply every operation (`put_op`, `delete_op`, `check_op`, up to 100, each on its own entry) or none.

    Returns each operation's result in order (a put's new version, None for the others). If any condition
    does not hold, nothing is written and `ev.TransactionConflict` is raised, whose `.reasons` has one entry
    per operation (None for those that held, else e.g. "version 3, expected 4")."""
    for index, operation in enumerate(operations):
        if not isinstance(operation, Operation):
            raise errors.InputValidationError(
                f"ev.transact takes operations made by an entity's put_op, delete_op or check_op; operation "
                f"{index + 1} is {operation!r}"
            )
    writes = [operation.write for operation in operations]
    check_transaction(writes)
    store = _store("ev.transact")
    if not writes:
        return []
    return await store.transact(writes)


def _store(what: str) -> EntityStore:
    """The current runtime's entity store; refused inside workflow code."""
    if current_executor() is not None:
        raise errors.EventualError(
            f"{what}() cannot be called inside workflow code: a workflow must replay deterministically, and an "
            "entity may change between two replays. Read and write entities in an activity (@ev.activity) and "
            "pass what the workflow needs in and out"
        )
    runtime = current_runtime()
    provide = getattr(runtime, "entity_store", None)
    if provide is None:
        raise errors.EventualError(
            f"{what}(): {type(runtime).__name__} keeps no entities; entities are read and written where a runtime "
            "runs the service's code (a TestEnvironment, a LocalRuntime, the AWS runtime)"
        )
    store: EntityStore = provide()
    return store


def _version(version: Any, name: str) -> int | None:
    if version is None:
        return None
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise errors.InputValidationError(
            f"{name} must be None, 0 (must not exist yet) or a version (a positive int), got {version!r}"
        )
    return version


def _summary(exc: ValidationError) -> str:
    shown = []
    for item in exc.errors(include_url=False)[:3]:
        where = ".".join(str(part) for part in item.get("loc", ())) or "value"
        shown.append(f"{where}: {item.get('msg')}")
    more = exc.error_count() - len(shown)
    return "; ".join(shown) + (f" (and {more} more)" if more > 0 else "")


__all__ = ["Entity", "Entry", "EntryPage", "Operation", "entity", "transact"]
