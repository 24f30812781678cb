"""The AWS runtime's entity store: one DynamoDB table per service, declared by the exported template.

Layout (`exporter/template.py` declares `pk`/`sk` strings, PAY_PER_REQUEST)::

    pk="<entity>#<partition>"  sk="<sort key>" (two-part keys) or "#" (one-part keys)
    v=<version, a number>      value=<the value's JSON text>

Entity names hold no '#', so `pk` tells entities apart; a query is one partition's `Query`, with
`begins_with(sk, prefix)` for a prefix, in ascending `sk` order (DynamoDB compares strings by their UTF-8
bytes, the order the other stores use), continuing after a page's last sort key (`ExclusiveStartKey`).

Conditions are DynamoDB's own, so concurrent writers in any number of Lambda containers stay correct:

* `put` with a version: `PutItem` conditional on `v = :expected` (0: `attribute_not_exists(pk)`); without
  one, `UpdateItem` setting the value and `v = if_not_exists(v, 0) + 1`, which returns the new version in
  the same request;
* `delete`: `DeleteItem`, conditional in the same way when a version is given;
* `transact`: `TransactWriteItems` (at most 100 items, all or nothing). Each failed condition comes back as a
  cancellation reason with the item as it was (`ReturnValuesOnConditionCheckFailure=ALL_OLD`), which gives
  "version 3, expected 4". A put without a version must still report its new version, so the store reads
  those entries first and makes their versions conditions; if another writer changed one in between, it
  reads and tries again (what the caller asked for was an unconditional write). A transaction that collides
  with another one in flight (`TransactionConflict`) is tried again too;
* reads are strongly consistent (`ConsistentRead=True`): a `get` after a `put` sees it.

Items go through boto3's `TypeSerializer` (`stores.to_attributes`/`from_attributes`). boto3 is synchronous,
so each call runs in a worker thread. Counting entries would need a `Scan`, so `count` answers None.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from typing import Any

from eventual_nb import errors
from eventual_nb.runtime.aws.stores import from_attributes, to_attributes
from eventual_nb.runtime.entity_store import (
    EntityKey,
    QueryPage,
    StoredEntry,
    Write,
    conflict_reason,
    transaction_conflict,
    version_conflict,
)

#: the sort key of entries of one-part keys
ONE_PART_SORT = "#"
#: tries of a transaction that met another writer (an entry read for an unconditional put changed, or
#: DynamoDB reported a transaction in flight on one of its items) before giving up
MAX_TRANSACTION_TRIES = 10


def item_key(key: EntityKey) -> dict[str, str]:
    return {"pk": f"{key.entity}#{key.partition}", "sk": key.sort or ONE_PART_SORT}


class DynamoEntityStore:
    """Entries in the stack's entities table (`EntityStore`); `client` is a boto3 DynamoDB client."""

    def __init__(self, client: Any, table: str) -> None:
        if not table:
            raise errors.EventualError(
                "this stack has no entities table: its service declared no entities (ev.entity) when it was exported "
                "and deployed; export and deploy it again"
            )
        self.client = client
        self.table = table

    # -- reading -----------------------------------------------------------------------------------

    async def get(self, key: EntityKey) -> StoredEntry | None:
        return await asyncio.to_thread(self._get, key)

    def _get(self, key: EntityKey) -> StoredEntry | None:
        answer = self._call(
            self.client.get_item, TableName=self.table, Key=to_attributes(item_key(key)), ConsistentRead=True
        )
        item = answer.get("Item")
        return None if item is None else _entry(item)

    async def query(self, entity: str, partition: str, prefix: str | None, limit: int, after: str | None) -> QueryPage:
        return await asyncio.to_thread(self._query, entity, partition, prefix, limit, after)

    def _query(self, entity: str, partition: str, prefix: str | None, limit: int, after: str | None) -> QueryPage:
        pk = f"{entity}#{partition}"
        condition = "pk = :pk" + (" AND begins_with(sk, :prefix)" if prefix else "")
        values: dict[str, Any] = {":pk": pk, **({":prefix": prefix} if prefix else {})}
        found: list[tuple[str, StoredEntry]] = []
        start: dict[str, Any] | None = None if after is None else to_attributes({"pk": pk, "sk": after})
        # one more than asked, to know whether a next page exists; DynamoDB may stop a page early (1 MB)
        while len(found) <= limit:
            request: dict[str, Any] = {
                "TableName": self.table,
                "KeyConditionExpression": condition,
                "ExpressionAttributeValues": to_attributes(values),
                "ConsistentRead": True,
                "Limit": limit + 1 - len(found),
            }
            if start is not None:
                request["ExclusiveStartKey"] = start
            answer = self._call(self.client.query, **request)
            for item in answer.get("Items", []):
                found.append((str(from_attributes(item)["sk"]), _entry(item)))
            start = answer.get("LastEvaluatedKey")
            if start is None:
                break
        return QueryPage(found[:limit], more=len(found) > limit)

    async def count(self, entity: str) -> int | None:
        return None

    # -- writing -----------------------------------------------------------------------------------

    async def put(self, key: EntityKey, value: str, expected_version: int | None) -> int:
        return await asyncio.to_thread(self._put, key, value, expected_version)

    def _put(self, key: EntityKey, value: str, expected: int | None) -> int:
        if expected is None:
            answer = self._call(
                self.client.update_item,
                TableName=self.table,
                Key=to_attributes(item_key(key)),
                UpdateExpression="SET #value = :value, #v = if_not_exists(#v, :zero) + :one",
                ExpressionAttributeNames={"#value": "value", "#v": "v"},
                ExpressionAttributeValues=to_attributes({":value": value, ":zero": 0, ":one": 1}),
                ReturnValues="UPDATED_NEW",
            )
            return int(from_attributes(answer["Attributes"])["v"])
        try:
            self._call(
                self.client.put_item,
                TableName=self.table,
                Item=to_attributes({**item_key(key), "v": expected + 1, "value": value}),
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
                **_condition(expected),
            )
        except self.client.exceptions.ConditionalCheckFailedException as exc:
            raise version_conflict(key, expected, _version_of(exc.response.get("Item"))) from None
        return expected + 1

    async def delete(self, key: EntityKey, expected_version: int | None) -> None:
        await asyncio.to_thread(self._delete, key, expected_version)

    def _delete(self, key: EntityKey, expected: int | None) -> None:
        request: dict[str, Any] = {"TableName": self.table, "Key": to_attributes(item_key(key))}
        if expected is not None:
            request.update(ReturnValuesOnConditionCheckFailure="ALL_OLD", **_condition(expected))
        try:
            self._call(self.client.delete_item, **request)
        except self.client.exceptions.ConditionalCheckFailedException as exc:
            raise version_conflict(key, expected, _version_of(exc.response.get("Item"))) from None

    async def transact(self, writes: Sequence[Write]) -> list[int | None]:
        return await asyncio.to_thread(self._transact, writes)

    def _transact(self, writes: Sequence[Write]) -> list[int | None]:
        for attempt in range(MAX_TRANSACTION_TRIES):
            # the versions the caller did not name, read now so that each put can report its new version
            assumed = {
                index: self._version(write.key)
                for index, write in enumerate(writes)
                if write.kind == "put" and write.expected_version is None
            }
            expected = [assumed.get(index, write.expected_version) for index, write in enumerate(writes)]
            items = [self._transaction_item(write, version) for write, version in zip(writes, expected, strict=True)]
            try:
                self._call(self.client.transact_write_items, TransactItems=items)
            except self.client.exceptions.TransactionCanceledException as exc:
                reasons = exc.response.get("CancellationReasons") or []
                codes = [str(reason.get("Code") or "None") for reason in reasons]
                failed = {index for index, code in enumerate(codes) if code == "ConditionalCheckFailed"}
                collided = "TransactionConflict" in codes or failed & set(assumed)
                if collided and not failed - set(assumed):
                    time.sleep(random.uniform(0, 0.01 * 2**attempt))  # another writer: read again and retry
                    continue
                if not failed:
                    raise errors.EventualError(
                        f"DynamoDB cancelled the transaction on table {self.table}: {', '.join(codes)}"
                    ) from None
                held = [
                    conflict_reason(writes[index].expected_version, _version_of(reasons[index].get("Item")))
                    if index in failed and index not in assumed
                    else None
                    for index in range(len(writes))
                ]
                raise transaction_conflict(writes, held) from None
            return [
                (version or 0) + 1 if write.kind == "put" else None
                for write, version in zip(writes, expected, strict=True)
            ]
        raise errors.EventualError(
            f"the transaction on table {self.table} met other writers {MAX_TRANSACTION_TRIES} times in a row; try again"
        )

    def _transaction_item(self, write: Write, expected: int | None) -> dict[str, Any]:
        key = to_attributes(item_key(write.key))
        condition: dict[str, Any] = {"ReturnValuesOnConditionCheckFailure": "ALL_OLD"}
        if expected is not None:
            condition.update(_condition(expected))
        if write.kind == "put":
            item = to_attributes({**item_key(write.key), "v": (expected or 0) + 1, "value": write.value})
            return {"Put": {"TableName": self.table, "Item": item, **condition}}
        if write.kind == "delete":
            return {"Delete": {"TableName": self.table, "Key": key, **condition}}
        return {"ConditionCheck": {"TableName": self.table, "Key": key, **condition}}

    def _version(self, key: EntityKey) -> int:
        entry = self._get(key)
        return 0 if entry is None else entry.version

    # -- errors ------------------------------------------------------------------------------------

    def _call(self, method: Any, **request: Any) -> Any:
        """One DynamoDB request; a missing table or a refused permission becomes an error that says which."""
        try:
            return method(**request)
        except self.client.exceptions.ResourceNotFoundException:
            raise errors.EventualError(
                f"the entities table {self.table} does not exist: deploy the service's stack again "
                "(eventual-nb export NOTEBOOK -o DIR --zip, then eventual-nb deploy DIR --stack NAME)"
            ) from None


def _condition(expected: int) -> dict[str, Any]:
    """The condition that the stored version is `expected` (0: nothing is stored)."""
    if expected == 0:
        return {"ConditionExpression": "attribute_not_exists(pk)"}
    return {
        "ConditionExpression": "#v = :expected",
        "ExpressionAttributeNames": {"#v": "v"},
        "ExpressionAttributeValues": to_attributes({":expected": expected}),
    }


def _entry(item: dict[str, Any]) -> StoredEntry:
    plain = from_attributes(item)
    return StoredEntry(str(plain["value"]), int(plain["v"]))


def _version_of(item: dict[str, Any] | None) -> int:
    """The version of an item DynamoDB returned with a failed condition (0: there was none)."""
    return 0 if not item else int(from_attributes(item).get("v", 0))
