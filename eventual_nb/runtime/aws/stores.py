"""DynamoDB stores of the AWS runtime: execution records (with claim and signal-id rows) and histories.

Both tables are the ones `exporter/template.py` declares (`pk`/`sk` strings, PAY_PER_REQUEST); the
executions table also carries the listing indexes below. The stores take a boto3 DynamoDB *client*
(not a resource) so that items built here can go straight into a `TransactWriteItems` call, which is
how the orchestrator commits a turn: new history events, the history head's
compare-and-swap and any execution-record update in ONE transaction, before any command is dispatched.

Layout
------
History table, one partition per execution::

    pk="exec#<id>"  sk="ev#<index:010d>"  event=<the event's JSON text>
    pk="exec#<id>"  sk="head"             length=<number of events>

Executions table, one partition per execution::

    pk="exec#<id>"  sk="exec"                          the record (+ listing keys)
    pk="exec#<id>"  sk="claim#<seq:010d>#<attempt:04d>" an activity attempt was claimed
    pk="exec#<id>"  sk="signal#<signal id>"            a signal id was delivered

and one item per schedule (its state: `ScheduleState` as JSON, with a version for
compare-and-swap; `ScheduleStore`)::

    pk="schedule#<name>"  sk="schedule"  state=<JSON>  version=<n>

Listing never puts every execution in one partition: each record carries sharded index keys
(shard = a stable hash of the id modulo `SHARDS`) for four sparse global secondary indexes, all sorted
by `gsisk = "<start time, UTC ISO, fixed width>#<id>"`:

    gsi1pk = "wf#<workflow>#<shard>"                 index `ByWorkflow`
    gsi2pk = "st#<status>#<shard>"                   index `ByStatus`
    gsi3pk = "all#<shard>"                           index `ByStart`
    gsi4pk = "wfst#<workflow>#<status>#<shard>"      index `ByWorkflowStatus`

A listing queries every shard (of every requested status) and merges them lazily in `gsisk` order; its
page token is base64 JSON of the last `gsisk` consumed per partition, so a page costs about
`max_results` items of reads plus one small query per partition, never a scan.

Items go through boto3's `TypeSerializer`/`TypeDeserializer` (`to_attributes`, `from_attributes`),
never hand-written `{"S": ...}` maps, and every query that may span pages runs through the client's
`query` paginator. What the stores hand back are plain Python values (records, claim rows, the history
head), so the orchestrator and the workers never see DynamoDB's attribute types. JSON attributes
(`input`, `result`, a claim's `message`, the head's `pending`) are `serde.compact_json` text.

The stores are synchronous (boto3): the Lambda handlers call them directly, an async runtime from a
worker thread.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import functools
import hashlib
import heapq
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from eventual_nb import errors
from eventual_nb.engine.history import EVENT_ADAPTER, HistoryEvent
from eventual_nb.runtime import core
from eventual_nb.runtime.aws.clients import EXECUTIONS_TABLE_VARIABLE, HISTORY_TABLE_VARIABLE
from eventual_nb.runtime.base import Execution, ExecutionPage, ExecutionStatus, invalid_page_token, listing_offset
from eventual_nb.runtime.core.schedules import ScheduleState
from eventual_nb.serde import compact_json, input_hash

if TYPE_CHECKING:
    from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

#: DynamoDB's limit of items in one TransactWriteItems call (moto enforces it as well)
MAX_TRANSACTION_ITEMS = 100
#: DynamoDB's 400 KB item limit, counted conservatively (AWS's real cut-off is a little above 409,600
#: bytes); checked here so a too-large event fails with its execution and index instead of a bare
#: ValidationException
MAX_ITEM_BYTES = 400_000
#: DynamoDB's limit on the total size of one transaction
MAX_TRANSACTION_BYTES = 4_000_000
#: shards per listing key: spreads the listing indexes' writes over partitions; a listing reads them all
SHARDS = 8

#: the listing indexes: name -> partition-key attribute (all share the sort key `gsisk`)
INDEX_BY_WORKFLOW = "ByWorkflow"
INDEX_BY_STATUS = "ByStatus"
INDEX_BY_START = "ByStart"
INDEX_BY_WORKFLOW_STATUS = "ByWorkflowStatus"
LISTING_INDEXES: dict[str, str] = {
    INDEX_BY_WORKFLOW: "gsi1pk",
    INDEX_BY_STATUS: "gsi2pk",
    INDEX_BY_START: "gsi3pk",
    INDEX_BY_WORKFLOW_STATUS: "gsi4pk",
}
LISTING_SORT_KEY = "gsisk"

_RECORD_SK = "exec"
_HEAD_SK = "head"
#: record attribute holding an explicit workflow timeout in seconds (`set_timeout`)
TIMEOUT_ATTRIBUTE = "timeout_seconds"
_EVENT_PREFIX = "ev#"
_INDEX_WIDTH = 10
_LAST_EVENT_SK = _EVENT_PREFIX + "9" * _INDEX_WIDTH
LOGGER = logging.getLogger("eventual_nb.aws.stores")
#: an activity claim's lease when the worker cannot tell how long it may run: Lambda's longest timeout
DEFAULT_CLAIM_LEASE = timedelta(minutes=15)
#: signal ids longer than this are stored by their hash (a sort key holds at most 1024 bytes)
_MAX_SIGNAL_KEY_BYTES = 512
#: transaction cancellation codes that mean "another writer got there first": retry on fresh state
CONFLICT_CODES = frozenset({"ConditionalCheckFailed", "TransactionConflict"})


class HistoryConflict(errors.EventualError):
    """Another writer changed the history (or an item the same commit guarded) since it was read.

    The orchestrator fails the message, so SQS redelivers it and the turn replays on fresh state;
    nothing of the losing commit was written (the transaction is all-or-nothing)."""

    status_code = 409
    fields = ("execution_id", "expected_length", "reasons")

    def __init__(
        self, message: str, *, execution_id: str, expected_length: int, reasons: builtins.list[str] | None = None
    ) -> None:
        super().__init__(message)
        self.execution_id = execution_id
        self.expected_length = expected_length
        #: DynamoDB's cancellation code per transaction item, in the order they were sent
        self.reasons = reasons or []


def table_names_from_environment(environ: dict[str, str] | None = None) -> tuple[str, str]:
    """`(executions table, history table)` from the `EVENTUAL_*` variables every function of the stack gets."""
    source = os.environ if environ is None else environ
    missing = [name for name in (EXECUTIONS_TABLE_VARIABLE, HISTORY_TABLE_VARIABLE) if not source.get(name)]
    if missing:
        raise errors.EventualError(
            f"{' and '.join(missing)} not set: the AWS runtime needs the table names its stack passes to every function"
        )
    return source[EXECUTIONS_TABLE_VARIABLE], source[HISTORY_TABLE_VARIABLE]


def execution_pk(execution_id: str) -> str:
    return f"exec#{execution_id}"


def event_sk(index: int) -> str:
    return f"{_EVENT_PREFIX}{index:0{_INDEX_WIDTH}d}"


def shard_of(execution_id: str) -> int:
    """Stable across processes and Python versions (unlike `hash()`), so a record's index keys never move."""
    return int.from_bytes(hashlib.sha256(execution_id.encode("utf-8")).digest()[:4], "big") % SHARDS


def sort_time(moment: datetime) -> str:
    """UTC ISO text of fixed width, so string order is time order (naive datetimes are taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


# --------------------------------------------------------------------------------------------- items


@functools.cache
def _codec() -> tuple[TypeSerializer, TypeDeserializer]:
    """boto3's codec, imported on first use: importing the stores (the exporter does, for the index
    names) must not load boto3."""
    from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

    return TypeSerializer(), TypeDeserializer()


def _to_dynamodb(value: Any) -> Any:
    """Floats as the Decimal of their shortest repr (boto3 refuses floats, and `Decimal(x)` would store
    the binary expansion), so `30.0` is stored as the number `30.0`, as before the codec was used."""
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, Mapping):
        return {key: _to_dynamodb(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_to_dynamodb(item) for item in value]
    return value


def _from_dynamodb(value: Any) -> Any:
    """Numbers back as `int` when they are integers as written (`7500`), else `float` (`30.0`, `1.5`)."""
    if isinstance(value, Decimal):
        exponent = value.as_tuple().exponent
        return int(value) if isinstance(exponent, int) and exponent >= 0 else float(value)
    if isinstance(value, dict):
        return {key: _from_dynamodb(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_from_dynamodb(item) for item in value]
    return value


def to_attributes(values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Python values as the low-level client's attribute values (an item, a key, expression values).

    NaN and Infinity are refused by boto3 (`TypeError`); the stores never write them (their JSON text
    goes through `serde.compact_json`, which refuses them first)."""
    serializer, _ = _codec()
    return {name: serializer.serialize(_to_dynamodb(value)) for name, value in values.items()}


def from_attributes(item: Mapping[str, Any]) -> dict[str, Any]:
    """An item of the low-level client as Python values (numbers as `int`/`float`, see `_from_dynamodb`)."""
    _, deserializer = _codec()
    return {name: _from_dynamodb(deserializer.deserialize(value)) for name, value in item.items()}


def _with_json(row: dict[str, Any], *names: str) -> dict[str, Any]:
    """`row` with its JSON-text attributes `names` decoded (absent ones stay absent)."""
    for name in names:
        if name in row:
            row[name] = json.loads(row[name])
    return row


def _record_row(item: Mapping[str, Any]) -> dict[str, Any]:
    """An execution record item as Python values, its `input` and `result` decoded."""
    return _with_json(from_attributes(item), "input", "result")


def _claim_row(item: Mapping[str, Any]) -> dict[str, Any]:
    """A claim row as Python values, its activity `message` decoded."""
    return _with_json(from_attributes(item), "message")


# --------------------------------------------------------------------------------------------- sizes


def attribute_size(value: dict[str, Any]) -> int:
    """Bytes DynamoDB counts for one attribute value in the low-level format (`{"S": ...}`, ...).

    Numbers are counted as their text (DynamoDB counts at most 21 bytes; this overestimates, which is
    the safe direction for a limit check)."""
    (kind, inner), *_ = value.items()
    if kind == "S":
        return len(inner.encode("utf-8"))
    if kind == "N":
        return len(str(inner))
    if kind == "B":
        return len(inner)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(item.encode("utf-8")) for item in inner)
    if kind == "NS":
        return sum(len(str(item)) for item in inner)
    if kind == "BS":
        return sum(len(item) for item in inner)
    if kind == "L":
        return 3 + sum(1 + attribute_size(item) for item in inner)
    if kind == "M":
        return 3 + sum(1 + len(key.encode("utf-8")) + attribute_size(item) for key, item in inner.items())
    raise errors.EventualError(f"unknown DynamoDB attribute type {kind!r}")


def item_size(item: dict[str, dict[str, Any]]) -> int:
    """Bytes DynamoDB counts for an item: attribute names plus values."""
    return sum(len(name.encode("utf-8")) + attribute_size(value) for name, value in item.items())


def transact_item_size(transact_item: dict[str, Any]) -> int:
    """The most a TransactItem can make its item weigh, as far as the request shows: a Put's whole item;
    for an Update, its key and the values it writes (the rest of the stored item is unknown here)."""
    (operation, body), *_ = transact_item.items()
    if operation == "Put":
        return item_size(body["Item"])
    size = item_size(body.get("Key", {}))
    size += sum(attribute_size(value) for value in body.get("ExpressionAttributeValues", {}).values())
    return size


# ------------------------------------------------------------------------------------------- history


@dataclass
class HistoryHead:
    """The history head as Python values: the committed length and the last turn's dispatch actions."""

    #: number of committed events (0 before the first append)
    length: int = 0
    #: the last committed turn's actions (`append(pending=...)`), [] when none are stored
    pending: builtins.list[dict[str, Any]] = field(default_factory=builtins.list)


@dataclass
class HistoryRead:
    """What `HistoryStore.read_with_head` found, and how many query requests (pages) it took."""

    events: builtins.list[HistoryEvent] = field(default_factory=builtins.list)
    head: HistoryHead = field(default_factory=HistoryHead)
    queries: int = 0


class HistoryStore:
    """An execution's history: one item per event, appended only through a conditional transaction."""

    def __init__(self, client: Any, table: str) -> None:
        self.client = client
        self.table = table

    def read(self, execution_id: str, after: int = 0) -> builtins.list[HistoryEvent]:
        """Events `after`, `after + 1`, ... to the end (a warm orchestrator reads only what it has not
        replayed yet). Strongly consistent, so a turn never replays a history older than its last commit."""
        return self._read(
            execution_id,
            after,
            "sk BETWEEN :first AND :last",
            {":last": _LAST_EVENT_SK},
            ProjectionExpression="sk, #event",
            ExpressionAttributeNames={"#event": "event"},
        ).events

    def read_with_head(self, execution_id: str, after: int = 0) -> HistoryRead:
        """Events `after`, ... and the head in ONE strongly consistent query (`sk` sorts `ev#...` before
        `head`): what an orchestrator turn needs, in one request while the history fits one page."""
        return self._read(execution_id, after, "sk >= :first", {})

    def _read(
        self, execution_id: str, after: int, condition: str, values: dict[str, Any], **request: Any
    ) -> HistoryRead:
        if after < 0:
            raise errors.EventualError(f"history index must be >= 0, got {after}")
        found = HistoryRead()
        pages = self.client.get_paginator("query").paginate(
            TableName=self.table,
            ConsistentRead=True,
            KeyConditionExpression=f"pk = :pk AND {condition}",
            ExpressionAttributeValues=to_attributes(
                {":pk": execution_pk(execution_id), ":first": event_sk(after), **values}
            ),
            **request,
        )
        for page in pages:
            found.queries += 1
            for item in page.get("Items", []):
                row = from_attributes(item)
                sort_key = row["sk"]
                if sort_key == _HEAD_SK:
                    found.head = _head(row)
                    continue
                if not sort_key.startswith(_EVENT_PREFIX):
                    continue
                index = after + len(found.events)
                if sort_key != event_sk(index):
                    # the transaction writes events and head together, so a gap means the table was edited
                    raise errors.EventualError(
                        f"history of execution '{execution_id}' has no event {index} (found {sort_key!r})"
                    )
                found.events.append(EVENT_ADAPTER.validate_json(row["event"]))
        return found

    def length(self, execution_id: str) -> int:
        """Number of committed events (the head's `length`; 0 before the first append)."""
        response = self.client.get_item(
            TableName=self.table,
            Key=self._head_key(execution_id),
            ConsistentRead=True,
            ProjectionExpression="#length",
            ExpressionAttributeNames={"#length": "length"},
        )
        return _head(from_attributes(response.get("Item") or {})).length

    @staticmethod
    def _head_key(execution_id: str) -> dict[str, dict[str, Any]]:
        return to_attributes({"pk": execution_pk(execution_id), "sk": _HEAD_SK})

    def append_items(
        self,
        execution_id: str,
        expected_length: int,
        events: Sequence[HistoryEvent],
        pending: Sequence[dict[str, Any]] | None = None,
    ) -> builtins.list[dict[str, Any]]:
        """The TransactItems that append `events` after `expected_length` events: a Put per event that
        refuses to overwrite, and the head's compare-and-swap (a ConditionCheck when nothing on the head
        changes, so extra items can still be guarded by the history being unchanged).

        `pending` (the orchestrator's dispatch actions of this turn) is stored on the head, or removed
        from it when empty; None leaves it as it is."""
        if expected_length < 0:
            raise errors.EventualError(f"expected history length must be >= 0, got {expected_length}")
        pk = execution_pk(execution_id)
        items: builtins.list[dict[str, Any]] = []
        for offset, event in enumerate(events):
            items.append(
                {
                    "Put": {
                        "TableName": self.table,
                        "Item": to_attributes(
                            {"pk": pk, "sk": event_sk(expected_length + offset), "event": event.model_dump_json()}
                        ),
                        "ConditionExpression": "attribute_not_exists(sk)",
                    }
                }
            )
        # a head that does not exist yet stands for length 0
        head: dict[str, Any] = {
            "TableName": self.table,
            "Key": self._head_key(execution_id),
            "ConditionExpression": "attribute_not_exists(sk)" if expected_length == 0 else "#length = :expected",
        }
        names: dict[str, str] = {}
        values: dict[str, Any] = {}
        if expected_length:
            names["#length"] = "length"
            values[":expected"] = expected_length
        if not events and pending is None:
            items.append({"ConditionCheck": {**head, **_expression_parts(names, values)}})
            return items
        names["#length"] = "length"
        values[":length"] = expected_length + len(events)
        expression = "SET #length = :length"
        if pending is not None:
            names["#pending"] = "pending"
            if pending:
                expression += ", #pending = :pending"
                values[":pending"] = compact_json(builtins.list(pending))
            else:
                expression += " REMOVE #pending"
        head["UpdateExpression"] = expression
        items.append({"Update": {**head, **_expression_parts(names, values)}})
        return items

    def append(
        self,
        execution_id: str,
        expected_length: int,
        events: Sequence[HistoryEvent],
        extra_items: Iterable[dict[str, Any]] = (),
        *,
        pending: Sequence[dict[str, Any]] | None = None,
    ) -> int:
        """Commit `events` at indexes `expected_length`, ... together with `extra_items` (TransactItems the
        orchestrator built, e.g. `ExecutionStore.finish_item`) and the head's `pending` actions (see
        `append_items`) in ONE `TransactWriteItems`; returns the new length.

        Never split: a turn's events and the record changes that go with them commit together or not at
        all, so a commit that does not fit in one transaction is refused (before calling AWS) rather than
        chunked. Raises `HistoryConflict` when another writer moved the head first (or an extra item's
        condition failed): nothing was written, and the caller retries on fresh state.

        No `ClientRequestToken` is sent: if botocore retries a transaction that did commit, the retry
        fails its conditions and surfaces as `HistoryConflict`, which is safe because the caller then
        re-reads the history and finds its own events there.
        """
        extras = builtins.list(extra_items)
        if not events and not extras and pending is None:
            return expected_length
        items = self.append_items(execution_id, expected_length, events, pending) + extras
        self._check_limits(execution_id, expected_length, items, len(events))
        try:
            self.client.transact_write_items(TransactItems=items)
        except self.client.exceptions.TransactionCanceledException as exc:
            reasons = [str(reason.get("Code", "None")) for reason in exc.response.get("CancellationReasons", [])]
            if any(code in CONFLICT_CODES for code in reasons):
                raise HistoryConflict(
                    f"history of execution '{execution_id}' changed since it had {expected_length} events "
                    f"(another writer committed first; cancellation reasons: {', '.join(reasons)})",
                    execution_id=execution_id,
                    expected_length=expected_length,
                    reasons=reasons,
                ) from exc
            raise errors.EventualError(
                f"appending to the history of execution '{execution_id}' was cancelled by DynamoDB "
                f"(reasons: {', '.join(reasons) or 'none given'}): {exc}"
            ) from exc
        return expected_length + len(events)

    @staticmethod
    def _check_limits(
        execution_id: str, expected_length: int, items: builtins.list[dict[str, Any]], event_count: int
    ) -> None:
        if len(items) > MAX_TRANSACTION_ITEMS:
            raise errors.EventualError(
                f"commit for execution '{execution_id}' needs {len(items)} transaction items ({event_count} events, "
                f"the history head and {len(items) - event_count - 1} other items); DynamoDB allows "
                f"{MAX_TRANSACTION_ITEMS} and the commit must stay atomic, so it is not split"
            )
        total = 0
        for position, transact_item in enumerate(items):
            size = transact_item_size(transact_item)
            total += size
            if size <= MAX_ITEM_BYTES:
                continue
            if position < event_count:
                raise errors.EventualError(
                    f"history event {expected_length + position} of execution '{execution_id}' is {size} bytes; "
                    f"a DynamoDB item holds at most {MAX_ITEM_BYTES} (keep large payloads out of workflow history)"
                )
            raise errors.EventualError(
                f"an item committed with the history of execution '{execution_id}' (transaction item {position}) "
                f"is {size} bytes; a DynamoDB item holds at most {MAX_ITEM_BYTES}"
            )
        if total > MAX_TRANSACTION_BYTES:
            raise errors.EventualError(
                f"commit for execution '{execution_id}' is {total} bytes; a DynamoDB transaction holds at most "
                f"{MAX_TRANSACTION_BYTES}"
            )


# ---------------------------------------------------------------------------------------- executions


def _head(row: Mapping[str, Any]) -> HistoryHead:
    """The head item's Python values as a `HistoryHead` (an absent head, `{}`, is length 0)."""
    pending = json.loads(row["pending"]) if "pending" in row else []
    return HistoryHead(length=int(row.get("length", 0)), pending=pending)


def _expression_parts(names: dict[str, str], values: Mapping[str, Any]) -> dict[str, Any]:
    """The expression attribute maps of a request (`values` as Python values), left out when empty
    (DynamoDB refuses empty maps)."""
    parts: dict[str, Any] = {}
    if names:
        parts["ExpressionAttributeNames"] = names
    if values:
        parts["ExpressionAttributeValues"] = to_attributes(values)
    return parts


def _listing_keys(execution_id: str, workflow: str, status: ExecutionStatus) -> dict[str, str]:
    shard = shard_of(execution_id)
    return {
        "gsi1pk": f"wf#{workflow}#{shard}",
        "gsi2pk": f"st#{status.value}#{shard}",
        "gsi3pk": f"all#{shard}",
        "gsi4pk": f"wfst#{workflow}#{status.value}#{shard}",
    }


class _Partition:
    """One index partition of a listing, read lazily in pages as the merge consumes it."""

    def __init__(self, index: str, key: str, cursor: str | None) -> None:
        self.index = index
        self.key = key
        #: `gsisk` of the last item handed to the page (None: from the start)
        self.cursor = cursor
        self.buffer: builtins.list[dict[str, Any]] = []
        self.position = 0
        #: the `gsisk` the next query starts after (the last item fetched, consumed or not)
        self.fetched_up_to = cursor
        self.exhausted = False

    def peek(self) -> dict[str, Any] | None:
        return self.buffer[self.position] if self.position < len(self.buffer) else None


class ExecutionStore:
    """Execution records, activity claim rows and signal-id rows in the executions table."""

    def __init__(self, client: Any, table: str) -> None:
        self.client = client
        self.table = table

    # ----------------------------------------------------------------------------------- records

    def create(
        self,
        execution_id: str,
        workflow: str,
        input: Any,
        start_time: datetime,
        *,
        parent: str | None = None,
        parent_seq: int | None = None,
        service: str | None = None,
    ) -> bool:
        """Write a new IN_PROGRESS record; True if this call created it.

        Same contract as the local runtime: starting an existing execution with the same input is a
        no-op (False, so the caller re-sends the start message, which also repairs a crash between the
        record and the message), and with a different input raises `ExecutionAlreadyExists`."""
        digest = input_hash(input)
        status = ExecutionStatus.IN_PROGRESS
        values: dict[str, Any] = {
            "pk": execution_pk(execution_id),
            "sk": _RECORD_SK,
            "id": execution_id,
            "workflow": workflow,
            "status": status.value,
            "input": compact_json(input),
            "input_hash": digest,
            "start_time": sort_time(start_time),
            LISTING_SORT_KEY: f"{sort_time(start_time)}#{execution_id}",
            **_listing_keys(execution_id, workflow, status),
        }
        optional = {"parent": parent, "parent_seq": parent_seq, "service": service}
        item = to_attributes({**values, **{name: value for name, value in optional.items() if value is not None}})
        size = item_size(item)
        if size > MAX_ITEM_BYTES:
            raise errors.EventualError(
                f"the record of execution '{execution_id}' would be {size} bytes (mostly its input); a DynamoDB "
                f"item holds at most {MAX_ITEM_BYTES}"
            )
        try:
            self.client.put_item(TableName=self.table, Item=item, ConditionExpression="attribute_not_exists(pk)")
        except self.client.exceptions.ConditionalCheckFailedException:
            existing = self._record(execution_id, "input_hash")
            if existing is None:  # records are never deleted, so this is an edited table
                raise errors.EventualError(
                    f"execution '{execution_id}' both exists and does not: its record vanished during the start"
                ) from None
            core.admit(execution_id, digest, existing["input_hash"])  # raises for another input
            return False
        return True

    @staticmethod
    def _record_key(execution_id: str) -> dict[str, dict[str, Any]]:
        return to_attributes({"pk": execution_pk(execution_id), "sk": _RECORD_SK})

    def _record(self, execution_id: str, projection: str | None = None) -> dict[str, Any] | None:
        request: dict[str, Any] = {
            "TableName": self.table,
            "Key": self._record_key(execution_id),
            "ConsistentRead": True,
        }
        if projection:
            request["ProjectionExpression"] = projection
        item: dict[str, Any] | None = self.client.get_item(**request).get("Item")
        return None if item is None else _record_row(item)

    def record(self, execution_id: str) -> dict[str, Any] | None:
        """The whole record as Python values (strongly consistent), None if there is none: besides what
        `get` returns it holds `parent_seq`, `service` and `TIMEOUT_ATTRIBUTE`. `input` and `result` are
        decoded; times are the stored ISO text."""
        return self._record(execution_id)

    def get(self, execution_id: str) -> Execution:
        row = self._record(execution_id)
        if row is None:
            raise errors.ExecutionNotFound(f"no execution '{execution_id}'", execution_id=execution_id)
        return _to_execution(row)

    def set_timeout(self, execution_id: str, seconds: float) -> None:
        """Store an explicit workflow timeout on the record (`TIMEOUT_ATTRIBUTE`), where the execution's
        first orchestrator turn reads it (a child started with `timeout=`, or `start_execution(timeout=)`)."""
        self.client.update_item(
            TableName=self.table,
            Key=self._record_key(execution_id),
            UpdateExpression="SET #timeout = :timeout",
            ExpressionAttributeNames={"#timeout": TIMEOUT_ATTRIBUTE},
            ExpressionAttributeValues=to_attributes({":timeout": float(seconds)}),
        )

    def finish_item(
        self,
        execution_id: str,
        workflow: str,
        status: ExecutionStatus,
        end_time: datetime,
        *,
        result: Any = None,
        error: str | None = None,
        message: str | None = None,
    ) -> dict[str, Any]:
        """The TransactItem (for `HistoryStore.append(extra_items=...)`) that ends an execution, so the
        terminal event and the record's status commit together. It moves the record to the status's
        listing partitions and only applies to a record still IN_PROGRESS: ending an execution twice (a
        stale orchestrator) cancels that transaction as a `HistoryConflict`.

        `workflow` is needed to rebuild the workflow+status index key (an update cannot read the record)."""
        status = ExecutionStatus(status)
        if status == ExecutionStatus.IN_PROGRESS:
            raise errors.EventualError(f"finish_item needs a terminal status, got {status.value}")
        keys = _listing_keys(execution_id, workflow, status)
        values: dict[str, Any] = {
            ":status": status.value,
            ":running": ExecutionStatus.IN_PROGRESS.value,
            ":end": sort_time(end_time),
            ":gsi2pk": keys["gsi2pk"],
            ":gsi4pk": keys["gsi4pk"],
        }
        assignments = ["#status = :status", "end_time = :end", "gsi2pk = :gsi2pk", "gsi4pk = :gsi4pk"]
        removals = []
        for name, value in (
            ("result", None if status != ExecutionStatus.SUCCEEDED else compact_json(result)),
            ("error", error),
            ("message", message),
        ):
            if value is None:
                removals.append(f"#{name}")
            else:
                assignments.append(f"#{name} = :{name}")
                values[f":{name}"] = value
        expression = "SET " + ", ".join(assignments)
        if removals:
            expression += " REMOVE " + ", ".join(removals)
        return {
            "Update": {
                "TableName": self.table,
                "Key": self._record_key(execution_id),
                "UpdateExpression": expression,
                "ConditionExpression": "#status = :running",
                "ExpressionAttributeNames": {
                    "#status": "status",
                    "#result": "result",
                    "#error": "error",
                    "#message": "message",
                },
                "ExpressionAttributeValues": to_attributes(values),
            }
        }

    # ------------------------------------------------------------------------------ once-only rows

    def _put_once(self, execution_id: str, sort_key: str, extra: Mapping[str, Any]) -> bool:
        try:
            self.client.put_item(
                TableName=self.table,
                Item=to_attributes({"pk": execution_pk(execution_id), "sk": sort_key, **extra}),
                ConditionExpression="attribute_not_exists(pk)",
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def claim(
        self,
        execution_id: str,
        seq: int,
        attempt: int,
        lease: timedelta = DEFAULT_CLAIM_LEASE,
        *,
        message: Mapping[str, Any] | None = None,
    ) -> bool:
        """True for the activity worker that may run (execution, seq, attempt) now; `message` (the attempt's
        activity message) is kept on the claim, so a completion by token decides with its retry policy.

        SQS delivers at least once, so a duplicate delivery of an attempt finds the claim taken. The claim
        holds a *lease*: how long its holder can still be running (the Lambda invocation's remaining time).
        A redelivery after the lease ran out, of an attempt that is neither settled nor waiting for its
        token, means its holder died (Lambda stops an invocation at its timeout, and the activity queue's
        visibility timeout is never shorter than the function's): that delivery takes the claim over and
        runs the attempt again — at least once, never lost. A delivery while the lease runs is dropped."""
        if seq < 0 or attempt < 0:
            raise errors.EventualError(f"claim needs seq and attempt >= 0, got seq={seq}, attempt={attempt}")
        now = datetime.now(UTC)
        try:
            previous = self.client.put_item(
                TableName=self.table,
                Item=to_attributes(
                    {
                        **self._claim_values(execution_id, seq, attempt),
                        "claimed_at": sort_time(now),
                        "lease_until": round((now + lease).timestamp(), 3),
                        **({} if message is None else {"message": compact_json(message)}),
                    }
                ),
                ConditionExpression=(
                    "attribute_not_exists(pk) OR (lease_until < :now AND attribute_not_exists(#settled) "
                    "AND attribute_not_exists(#waiting))"
                ),
                ExpressionAttributeNames={"#settled": "settled", "#waiting": "waiting"},
                ExpressionAttributeValues=to_attributes({":now": round(now.timestamp(), 3)}),
                ReturnValues="ALL_OLD",
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        if previous.get("Attributes"):
            LOGGER.warning(
                "activity %s attempt %s of %s: the worker that claimed it at %s stopped before settling it "
                "(its lease ran out); running it again",
                seq,
                attempt,
                execution_id,
                from_attributes(previous["Attributes"]).get("claimed_at"),
            )
        return True

    # --------------------------------------------------------------- attempts completed by token

    @staticmethod
    def _claim_values(execution_id: str, seq: int, attempt: int) -> dict[str, str]:
        return {"pk": execution_pk(execution_id), "sk": f"claim#{seq:010d}#{attempt:04d}"}

    def _claim_key(self, execution_id: str, seq: int, attempt: int) -> dict[str, dict[str, Any]]:
        return to_attributes(self._claim_values(execution_id, seq, attempt))

    def wait_for_token(
        self,
        execution_id: str,
        seq: int,
        attempt: int,
        message: dict[str, Any],
        now: datetime,
        deadline: datetime | None = None,
    ) -> bool:
        """Mark a claimed attempt as waiting for completion by token, keeping its activity message (what a
        retry re-sends), its `deadline` (attempt timeout) and `now` as its last heartbeat (the heartbeat
        timeout counts from there). False if the attempt was already settled (its token was used while
        it ran)."""
        values: dict[str, Any] = {":yes": True, ":message": compact_json(message), ":now": sort_time(now)}
        expression = "SET #waiting = :yes, #message = :message, last_heartbeat = :now"
        if deadline is not None:
            expression += ", #deadline = :deadline"
            values[":deadline"] = sort_time(deadline)
        try:
            self.client.update_item(
                TableName=self.table,
                Key=self._claim_key(execution_id, seq, attempt),
                UpdateExpression=expression,
                ConditionExpression="attribute_exists(pk) AND attribute_not_exists(#settled)",
                ExpressionAttributeNames={
                    "#waiting": "waiting",
                    "#message": "message",
                    "#settled": "settled",
                    **({"#deadline": "deadline"} if deadline is not None else {}),
                },
                ExpressionAttributeValues=to_attributes(values),
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def settle_claim(self, execution_id: str, seq: int, attempt: int, outcome: str) -> dict[str, Any] | None:
        """Settle a claimed attempt exactly once (`outcome` is recorded: "succeeded", "failed", ...).

        Returns the row as it was, as Python values (its decoded `message` if it waited for a token), to
        the one caller that settled it, None to every other (already settled, or never claimed)."""
        try:
            response = self.client.update_item(
                TableName=self.table,
                Key=self._claim_key(execution_id, seq, attempt),
                UpdateExpression="SET #settled = :outcome, settled_at = :now",
                ConditionExpression="attribute_exists(pk) AND attribute_not_exists(#settled)",
                ExpressionAttributeNames={"#settled": "settled"},
                ExpressionAttributeValues=to_attributes({":outcome": outcome, ":now": sort_time(datetime.now(UTC))}),
                ReturnValues="ALL_OLD",
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return None
        return _claim_row(response.get("Attributes") or {})

    def pending_claim(self, execution_id: str, seq: int, attempt: int) -> dict[str, Any] | None:
        """The claim row (Python values, `message` decoded; times as ISO text) of an attempt that is
        claimed and not settled yet (strongly consistent), else None."""
        item: dict[str, Any] | None = self.client.get_item(
            TableName=self.table, Key=self._claim_key(execution_id, seq, attempt), ConsistentRead=True
        ).get("Item")
        if item is None or "settled" in item:
            return None
        return _claim_row(item)

    def heartbeat_claim(self, execution_id: str, seq: int, attempt: int, moment: datetime) -> bool:
        """Record a heartbeat on an unsettled claimed attempt; False when it is no longer pending."""
        try:
            self.client.update_item(
                TableName=self.table,
                Key=self._claim_key(execution_id, seq, attempt),
                UpdateExpression="SET last_heartbeat = :now",
                ConditionExpression="attribute_exists(pk) AND attribute_not_exists(#settled)",
                ExpressionAttributeNames={"#settled": "settled"},
                ExpressionAttributeValues=to_attributes({":now": sort_time(moment)}),
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def remember_signal(self, execution_id: str, signal_id: str) -> bool:
        """True the first time `signal_id` is sent to the execution, False for every repeat (signal ids
        de-duplicate sends; the FIFO queue's own de-duplication lasts only 5 minutes)."""
        key = signal_id
        if len(key.encode("utf-8")) > _MAX_SIGNAL_KEY_BYTES:
            key = "sha256:" + hashlib.sha256(signal_id.encode("utf-8")).hexdigest()
        return self._put_once(execution_id, f"signal#{key}", {})

    # ------------------------------------------------------------------------------------ listing
    # (last in the class: the method named `list` would otherwise shadow the builtin in annotations)

    def list(
        self,
        workflow: str | None = None,
        statuses: Sequence[ExecutionStatus | str] | None = None,
        next_token: str | None = None,
        max_results: int = 100,
        sort: str = "asc",
    ) -> ExecutionPage:
        """A page of executions in start-time order (ties by id), read from the sharded listing indexes
        (eventually consistent, as every GSI read is)."""
        listing_offset(sort, max_results, None)  # checks sort and max_results
        wanted = sorted({ExecutionStatus(status).value for status in statuses}) if statuses else []
        query = {"workflow": workflow, "statuses": wanted, "sort": sort}
        cursors, done = _decode_token(next_token, query)
        partitions = [
            _Partition(index, key, cursors.get(key))
            for index, key in _partition_keys(workflow, wanted)
            if key not in done
        ]
        descending = sort == "desc"
        first_limit = -(-(max_results + 1) // max(1, len(partitions))) + 1
        for partition in partitions:
            self._fetch(partition, first_limit, descending)
        # a heap of (ordering key, partition number); desc inverts the text so the smallest pops first
        heap: builtins.list[tuple[Any, int]] = []
        for number, partition in enumerate(partitions):
            head = partition.peek()
            if head is not None:
                heapq.heappush(heap, (_order(head, descending), number))
        taken: builtins.list[tuple[_Partition, dict[str, Any]]] = []
        while heap:  # up to one item more than a page, to know whether there is a next page
            _, number = heapq.heappop(heap)
            partition = partitions[number]
            item = partition.buffer[partition.position]
            partition.position += 1
            taken.append((partition, item))
            if len(taken) > max_results:
                partition.position -= 1  # only a look-ahead: it stays for the next page
                break
            if partition.peek() is None and not partition.exhausted:
                self._fetch(partition, max(1, max_results + 1 - len(taken)), descending)
            head = partition.peek()
            if head is not None:
                heapq.heappush(heap, (_order(head, descending), number))
        page = taken[:max_results]
        if len(taken) <= max_results:
            return ExecutionPage(executions=[_to_execution(item) for _, item in page])
        for partition, item in page:
            partition.cursor = item[LISTING_SORT_KEY]
        new_cursors = dict(cursors)
        new_done = set(done)
        for partition in partitions:
            if partition.cursor is not None:
                new_cursors[partition.key] = partition.cursor
            if partition.exhausted and partition.peek() is None:
                new_done.add(partition.key)
                new_cursors.pop(partition.key, None)
        token = _encode_token(query, new_cursors, new_done)
        return ExecutionPage(executions=[_to_execution(item) for _, item in page], next_token=token)

    def _fetch(self, partition: _Partition, limit: int, descending: bool) -> None:
        """Replace the partition's consumed buffer with its next `limit` items (fewer at its end).

        One query page normally; the paginator goes on only past pages that came back empty, and stops
        (is not iterated further) once a page brought items."""
        attribute = LISTING_INDEXES[partition.index]
        request: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": partition.index,
            "KeyConditionExpression": "#partition = :partition",
            "ExpressionAttributeNames": {"#partition": attribute},
            "ExpressionAttributeValues": to_attributes({":partition": partition.key}),
            "ScanIndexForward": not descending,
            "Limit": limit,
        }
        if partition.fetched_up_to is not None:
            # where the last page ended: the index's key of the last item fetched (its gsisk holds the id)
            execution_id = partition.fetched_up_to.split("#", 1)[1]
            request["ExclusiveStartKey"] = to_attributes(
                {
                    attribute: partition.key,
                    LISTING_SORT_KEY: partition.fetched_up_to,
                    "pk": execution_pk(execution_id),
                    "sk": _RECORD_SK,
                }
            )
        remaining = partition.buffer[partition.position :]
        for page in self._pages(request):
            items = [_record_row(item) for item in page.get("Items", [])]
            remaining.extend(items)
            if items:
                partition.fetched_up_to = items[-1][LISTING_SORT_KEY]
            if not page.get("LastEvaluatedKey"):
                partition.exhausted = True
                break
            if items:
                break
        partition.buffer = remaining
        partition.position = 0

    def _pages(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The query's pages, requested one at a time as they are consumed."""
        pages: Iterator[dict[str, Any]] = iter(self.client.get_paginator("query").paginate(**request))
        return pages


def _partition_keys(workflow: str | None, statuses: builtins.list[str]) -> builtins.list[tuple[str, str]]:
    """(index, partition key) pairs a listing reads: every shard of every requested status."""
    shards = range(SHARDS)
    if workflow is not None and statuses:
        return [
            (INDEX_BY_WORKFLOW_STATUS, f"wfst#{workflow}#{status}#{shard}") for status in statuses for shard in shards
        ]
    if workflow is not None:
        return [(INDEX_BY_WORKFLOW, f"wf#{workflow}#{shard}") for shard in shards]
    if statuses:
        return [(INDEX_BY_STATUS, f"st#{status}#{shard}") for status in statuses for shard in shards]
    return [(INDEX_BY_START, f"all#{shard}") for shard in shards]


class _Descending(str):
    """Text that orders in reverse, so one min-heap serves both directions."""

    __slots__ = ()

    def __lt__(self, other: str) -> bool:
        return str.__gt__(self, other)

    def __gt__(self, other: str) -> bool:
        return str.__lt__(self, other)

    def __le__(self, other: str) -> bool:
        return str.__ge__(self, other)

    def __ge__(self, other: str) -> bool:
        return str.__le__(self, other)


def _order(row: dict[str, Any], descending: bool) -> str:
    key: str = row[LISTING_SORT_KEY]
    return _Descending(key) if descending else key


def _encode_token(query: dict[str, Any], cursors: dict[str, str], done: set[str]) -> str:
    body = {"v": 1, "q": query, "c": cursors, "d": sorted(done)}
    return base64.urlsafe_b64encode(compact_json(body).encode("utf-8")).decode("ascii")


def _decode_token(token: str | None, query: dict[str, Any]) -> tuple[dict[str, str], set[str]]:
    """Per-partition cursors and finished partitions from a page token made by the same query."""
    if not token:
        return {}, set()
    try:
        body = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
        if not isinstance(body, dict) or body.get("v") != 1:
            raise ValueError("unknown token version")
        cursors = {str(key): str(value) for key, value in body["c"].items()}
        done = {str(key) for key in body["d"]}
        made_by = body["q"]
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, UnicodeError):
        raise invalid_page_token(token) from None
    if made_by != query:
        raise invalid_page_token(
            token, "it belongs to another listing (different workflow, statuses or sort); pass the same arguments"
        )
    if any("#" not in cursor for cursor in cursors.values()):
        raise invalid_page_token(token)
    return cursors, done


def _to_execution(row: dict[str, Any]) -> Execution:
    """A record's Python values (`_record_row`) as the runtime-neutral `Execution`."""
    end_time = row.get("end_time")
    return Execution(
        id=row["id"],
        workflow=row["workflow"],
        status=ExecutionStatus(row["status"]),
        input=row.get("input"),
        result=row.get("result"),
        error=row.get("error"),
        message=row.get("message"),
        start_time=datetime.fromisoformat(row["start_time"]),
        end_time=None if end_time is None else datetime.fromisoformat(end_time),
        parent=row.get("parent"),
    )


# ------------------------------------------------------------------------------------------- schedules

_SCHEDULE_SK = "schedule"


class ScheduleStore:
    """Each schedule's state as one item of the executions table, changed only by compare-and-swap on its
    `version`, so the forwarder's deliveries, pauses and triggers from anywhere never overwrite each other."""

    def __init__(self, client: Any, table: str) -> None:
        self.client = client
        self.table = table

    @staticmethod
    def _key(name: str) -> dict[str, dict[str, Any]]:
        return to_attributes({"pk": f"schedule#{name}", "sk": _SCHEDULE_SK})

    def get(self, name: str) -> tuple[ScheduleState | None, int]:
        """(state, version) of schedule `name`; (None, 0) when none was stored yet. Strongly consistent."""
        item = self.client.get_item(TableName=self.table, Key=self._key(name), ConsistentRead=True).get("Item")
        if item is None:
            return None, 0
        row = from_attributes(item)
        return ScheduleState.model_validate_json(row["state"]), int(row["version"])

    def put(self, name: str, state: ScheduleState, version: int) -> bool:
        """Store `state` as version `version + 1` if the stored one is still `version` (0: none yet); False when
        another writer got there first (read again and decide again)."""
        item = {"pk": f"schedule#{name}", "sk": _SCHEDULE_SK, "state": state.model_dump_json(), "version": version + 1}
        condition: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(pk)"}
        if version:
            condition = {
                "ConditionExpression": "version = :version",
                "ExpressionAttributeValues": to_attributes({":version": version}),
            }
        try:
            self.client.put_item(TableName=self.table, Item=to_attributes(item), **condition)
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True
