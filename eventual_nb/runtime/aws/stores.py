"""DynamoDB stores of the AWS runtime: execution records (with claim and signal-id rows) and histories.

Both tables are the ones `exporter/template.py` declares (`pk`/`sk` strings, PAY_PER_REQUEST); the
executions table also carries the listing indexes below. The stores take a boto3 DynamoDB *client*
(not a resource).

Layout (`HISTORY_LAYOUT`; a stack records the layout it was deployed with, see `check_layout`)
------
History table, one partition per execution, one item per turn (the layout of Temporal's history
batches)::

    pk="exec#<id>"  sk="turn#<n:010d>"                       turn n: first=<index of its first event>,
                                                               count=<events>, body=<JSON text>
    pk="exec#<id>"  sk="turn#<n:010d>#<part id>#<i:03d>"     part i of a turn too large for one item

A turn's `body` is `{"events": [...], "pending": [...]}`: the history events the turn added and the
actions it decided (`eventual_nb.runtime.core.wire`), the transactional outbox the orchestrator carries
out after the commit. A turn is committed by ONE `PutItem` with `attribute_not_exists(sk)`: turn numbers
are consecutive, so the condition is the compare-and-set that a second writer of the same turn (a
duplicate or stale invocation) fails. A turn above DynamoDB's 400 KB item limit keeps its first chunk on
the main item, which names its other parts (`parts`, `part_id`); the parts are written first under a key
no other commit uses, so the main item's conditional put stays the only commit point.

Executions table, one partition per execution::

    pk="exec#<id>"  sk="exec"                          the record (+ listing keys)
    pk="exec#<id>"  sk="claim#<seq:010d>#<attempt:04d>" an activity attempt was claimed
    pk="exec#<id>"  sk="signal#<signal id>"            a signal id was delivered

and one item per schedule (its state: `ScheduleState` as JSON, with a version for
compare-and-swap; `ScheduleStore`)::

    pk="schedule#<name>"  sk="schedule"  state=<JSON>  version=<n>

The record's status is written when it changes, never per turn: IN_PROGRESS by `create`, the terminal
status by `finish` (the core's `Finish` action, which the orchestrator carries out right after the
commit of the turn that ended the execution, and again from that turn's pending actions if it died
in between; `finish` is conditional on IN_PROGRESS, so a repeat changes nothing).

Listing never puts every execution in one partition: each record carries sharded index keys
(shard = a stable hash of the id modulo `SHARDS`) for two sparse global secondary indexes, both sorted
by `gsisk = "<start time, UTC ISO, fixed width>#<id>"` and projecting the whole record:

    gsi1pk = "st#<status>#<shard>"                   index `ByStatus`           (every execution)
    gsi2pk = "wfst#<workflow>#<status>#<shard>"      index `ByWorkflowStatus`   (ended executions only)

A listing reads, for each requested status (all four when none is asked for), every shard of
`ByStatus`, or, for one workflow, of `ByWorkflowStatus`; running executions of one workflow are read
from `ByStatus`'s IN_PROGRESS partitions, filtered by workflow (executions in flight are few; ended
ones are many, and have a partition per workflow). The partitions are merged lazily in `gsisk` order,
and a page token is the last `gsisk` of the page (base64 JSON): the next page asks every partition for
what follows it, so an execution that ends between two pages (its index items move to its new status's
partitions) is listed exactly once. A page costs about `max_results` items of reads plus one small
query per partition, never a scan.

Why these two and no more: an index item costs a write when it is created, and its key (which holds
the status) moves when the execution ends (a delete and a put). Per execution the record and its index
items cost 6 write units: the record put and its `ByStatus` item when it starts; when it ends, the
record update, the `ByStatus` move and the new `ByWorkflowStatus` item.

Items go through boto3's `TypeSerializer`/`TypeDeserializer` (`to_attributes`, `from_attributes`),
never hand-written `{"S": ...}` maps, and every query that may span pages runs through the client's
`query` paginator. What the stores hand back are plain Python values (records, claim rows, turns), so
the orchestrator and the workers never see DynamoDB's attribute types. JSON attributes (`input`,
`result`, a claim's `message`, a turn's `body`) are `serde.compact_json` text.

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
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from eventual_nb import errors
from eventual_nb.engine.history import HISTORY_ADAPTER, HistoryEvent
from eventual_nb.runtime import core
from eventual_nb.runtime.aws.clients import EXECUTIONS_TABLE_VARIABLE, HISTORY_TABLE_VARIABLE
from eventual_nb.runtime.base import Execution, ExecutionPage, ExecutionStatus, invalid_page_token, listing_offset
from eventual_nb.runtime.core.schedules import ScheduleState
from eventual_nb.serde import compact_json, input_hash

if TYPE_CHECKING:
    from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

#: DynamoDB's 400 KB item limit, counted conservatively (AWS's real cut-off is a little above 409,600
#: bytes); checked here so a too-large item fails with its execution instead of a bare ValidationException
MAX_ITEM_BYTES = 400_000
#: a turn above MAX_ITEM_BYTES is stored in parts of at most this much of its body (room left for the keys)
MAX_TURN_PART_BYTES = MAX_ITEM_BYTES - 2_000
#: the most items one turn is split over (about 25 MB: more than any payload a Lambda invocation carries)
MAX_TURN_PARTS = 64
#: shards per listing key: spreads the listing indexes' writes over partitions; a listing reads them all
SHARDS = 8

#: the listing indexes: name -> partition-key attribute (both share the sort key `gsisk`)
INDEX_BY_STATUS = "ByStatus"
INDEX_BY_WORKFLOW_STATUS = "ByWorkflowStatus"
LISTING_INDEXES: dict[str, str] = {
    INDEX_BY_STATUS: "gsi1pk",
    INDEX_BY_WORKFLOW_STATUS: "gsi2pk",
}
LISTING_SORT_KEY = "gsisk"

_RECORD_SK = "exec"
#: record attribute holding an explicit workflow timeout in seconds (`set_timeout`)
TIMEOUT_ATTRIBUTE = "timeout_seconds"
_TURN_PREFIX = "turn#"
_TURN_WIDTH = 10
LOGGER = logging.getLogger("eventual_nb.aws.stores")
#: an activity claim's lease when the worker cannot tell how long it may run: Lambda's longest timeout
DEFAULT_CLAIM_LEASE = timedelta(minutes=15)
#: signal ids longer than this are stored by their hash (a sort key holds at most 1024 bytes)
_MAX_SIGNAL_KEY_BYTES = 512


class HistoryConflict(errors.EventualError):
    """Another writer committed the same turn of an execution first.

    The orchestrator fails the message, so SQS redelivers it and the turn replays on fresh state;
    nothing of the losing commit is visible (its turn item was never written)."""

    status_code = 409
    fields = ("execution_id", "turn")

    def __init__(self, message: str, *, execution_id: str, turn: int) -> None:
        super().__init__(message)
        self.execution_id = execution_id
        self.turn = turn


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


# ------------------------------------------------------------------------------------------- history


@dataclass
class HistoryRead:
    """What `HistoryStore.read_turns` found: the events of the turns it read, where history stands after
    them, and how many query requests (pages) it took."""

    events: builtins.list[HistoryEvent] = field(default_factory=builtins.list)
    #: the last committed turn's number (0: no turn committed yet)
    turn: int = 0
    #: committed events up to and including that turn
    length: int = 0
    #: that turn's actions (`commit(pending=...)`), [] when none were stored or no turn was read
    pending: builtins.list[dict[str, Any]] = field(default_factory=builtins.list)
    queries: int = 0


@dataclass
class _TurnItem:
    """One turn's items as read: the main item's values and the bodies of its parts."""

    number: int
    first: int
    count: int
    parts: int
    part_id: str
    chunks: builtins.list[str]


class HistoryStore:
    """An execution's history: one item per turn, each committed by one conditional `PutItem`."""

    def __init__(self, client: Any, table: str) -> None:
        self.client = client
        self.table = table

    # ----------------------------------------------------------------------------------- reading

    def read(self, execution_id: str, after: int = 0) -> builtins.list[HistoryEvent]:
        """Events `after`, `after + 1`, ... to the end (strongly consistent)."""
        if after < 0:
            raise errors.EventualError(f"history index must be >= 0, got {after}")
        return self.read_turns(execution_id).events[after:]

    def read_turns(self, execution_id: str, after_turn: int = 0, length: int = 0) -> HistoryRead:
        """The turns after `after_turn` (whose history then held `length` events), in ONE strongly consistent
        query while they fit a page: their events in order, and the last turn's number, length and pending
        actions (those of turn `after_turn` are not known to this read: `pending` is [] when nothing is newer).

        Raises `EventualError` when the turns do not follow each other (an edited table)."""
        if after_turn < 0 or length < 0:
            raise errors.EventualError(f"turn and length must be >= 0, got {after_turn} and {length}")
        found = HistoryRead(turn=after_turn, length=length)
        pages = self.client.get_paginator("query").paginate(
            TableName=self.table,
            ConsistentRead=True,
            KeyConditionExpression="pk = :pk AND sk >= :first",
            ExpressionAttributeValues=to_attributes(
                {":pk": execution_pk(execution_id), ":first": turn_sk(after_turn + 1)}
            ),
        )
        current: _TurnItem | None = None
        for page in pages:
            found.queries += 1
            for item in page.get("Items", []):
                row = from_attributes(item)
                number, part = _parse_turn_sk(row["sk"])
                if part is None:
                    if current is not None:
                        self._take(execution_id, current, found)
                    current = _TurnItem(
                        number,
                        int(row["first"]),
                        int(row["count"]),
                        int(row.get("parts", 1)),
                        str(row.get("part_id", "")),
                        [row["body"]],
                    )
                elif current is not None and current.number == number and part[0] == current.part_id:
                    current.chunks.append(row["body"])
                # else: a part of a commit that lost its race (never referenced): skipped
        if current is not None:
            self._take(execution_id, current, found)
        return found

    @staticmethod
    def _take(execution_id: str, turn: _TurnItem, found: HistoryRead) -> None:
        """Add a complete turn to `found`, checking it follows the previous one."""
        where = f"history of execution '{execution_id}'"
        if turn.number != found.turn + 1 or turn.first != found.length:
            raise errors.EventualError(
                f"{where}: turn {turn.number} (events from {turn.first}) does not follow turn {found.turn} "
                f"({found.length} events); the table was edited"
            )
        if len(turn.chunks) != turn.parts:
            raise errors.EventualError(f"{where}: turn {turn.number} has {len(turn.chunks)} of its {turn.parts} parts")
        body = json.loads("".join(turn.chunks))
        events = HISTORY_ADAPTER.validate_python(body["events"])
        if len(events) != turn.count:
            raise errors.EventualError(f"{where}: turn {turn.number} holds {len(events)} events, not {turn.count}")
        found.events.extend(events)
        found.turn = turn.number
        found.length = turn.first + turn.count
        found.pending = builtins.list(body.get("pending") or [])

    # ----------------------------------------------------------------------------------- writing

    def commit(
        self,
        execution_id: str,
        turn: int,
        first: int,
        events: Sequence[HistoryEvent],
        pending: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """Commit turn `turn`: `events` (history indexes `first`, ...) and the turn's `pending` actions, with
        ONE conditional `PutItem` that refuses to overwrite the turn: the compare-and-set that makes a
        second writer of the same turn (a duplicate or stale invocation) fail with `HistoryConflict`.

        A turn whose item would exceed DynamoDB's 400 KB is split: its parts are written first, under a
        key only this commit uses, and the conditional put of the turn's main item (which names them) is
        still the one commit point, so readers see all of the turn or none of it. The parts of a commit
        that lost its race are deleted (best effort; a reader skips any it finds).

        No `ClientRequestToken` exists for PutItem: if botocore retries a put that did commit, the retry
        fails its condition and surfaces as `HistoryConflict`, which is safe because the caller then reads
        the history and finds its own turn there."""
        if turn < 1 or first < 0:
            raise errors.EventualError(f"turn must be >= 1 and first >= 0, got turn {turn}, first {first}")
        body = _turn_body(events, pending)
        base = {"pk": execution_pk(execution_id), "sk": turn_sk(turn), "first": first, "count": len(events)}
        item = to_attributes({**base, "body": body})
        parts: builtins.list[dict[str, dict[str, Any]]] = []
        if item_size(item) > MAX_ITEM_BYTES:
            chunks = _chunks(body, MAX_TURN_PART_BYTES)
            if len(chunks) > MAX_TURN_PARTS:
                raise errors.EventualError(
                    f"turn {turn} of execution '{execution_id}' is {len(body.encode('utf-8'))} bytes; a turn is "
                    f"stored in at most {MAX_TURN_PARTS} items of {MAX_TURN_PART_BYTES} bytes (keep large payloads "
                    "out of workflow history)"
                )
            part_id = secrets.token_hex(4)
            item = to_attributes({**base, "body": chunks[0], "parts": len(chunks), "part_id": part_id})
            parts = [
                to_attributes({"pk": base["pk"], "sk": f"{turn_sk(turn)}#{part_id}#{index:03d}", "body": chunk})
                for index, chunk in enumerate(chunks[1:], start=1)
            ]
            for part in parts:
                self.client.put_item(TableName=self.table, Item=part)
        try:
            self.client.put_item(TableName=self.table, Item=item, ConditionExpression="attribute_not_exists(sk)")
        except self.client.exceptions.ConditionalCheckFailedException as exc:
            self._forget(parts)
            raise HistoryConflict(
                f"turn {turn} of execution '{execution_id}' was committed by another writer first",
                execution_id=execution_id,
                turn=turn,
            ) from exc

    def _forget(self, parts: Sequence[dict[str, dict[str, Any]]]) -> None:
        for part in parts:
            try:
                self.client.delete_item(TableName=self.table, Key={"pk": part["pk"], "sk": part["sk"]})
            except Exception:  # noqa: BLE001 - an orphan part is skipped by readers; the conflict matters
                LOGGER.warning("could not delete part %s of a turn that lost its race", part["sk"])


def turn_sk(turn: int) -> str:
    return f"{_TURN_PREFIX}{turn:0{_TURN_WIDTH}d}"


def _parse_turn_sk(sort_key: str) -> tuple[int, tuple[str, int] | None]:
    """(turn number, None) of a turn's main item; (turn number, (part id, part index)) of one of its parts."""
    fields = sort_key.split("#")
    try:
        if fields[0] + "#" != _TURN_PREFIX or len(fields) not in (2, 4):
            raise ValueError(sort_key)
        number = int(fields[1])
        return number, None if len(fields) == 2 else (fields[2], int(fields[3]))
    except ValueError:
        raise errors.EventualError(f"history item {sort_key!r} is not a turn (a stack of another layout?)") from None


def _turn_body(events: Sequence[HistoryEvent], pending: Sequence[Mapping[str, Any]]) -> str:
    """A turn's JSON text: `{"events": [...], "pending": [...]}` (serde.compact_json refuses NaN)."""
    return compact_json({"events": HISTORY_ADAPTER.dump_python(builtins.list(events), mode="json"), "pending": pending})


def _chunks(text: str, limit: int) -> builtins.list[str]:
    """`text` cut into pieces of at most `limit` UTF-8 bytes, never inside a character."""
    encoded = text.encode("utf-8")
    pieces: builtins.list[str] = []
    start = 0
    while start < len(encoded):
        end = min(len(encoded), start + limit)
        while end < len(encoded) and (encoded[end] & 0xC0) == 0x80:  # a continuation byte: back off
            end -= 1
        pieces.append(encoded[start:end].decode("utf-8"))
        start = end
    return pieces or [""]


# ---------------------------------------------------------------------------------------- executions


def _listing_keys(execution_id: str, workflow: str, status: ExecutionStatus) -> dict[str, str]:
    """The record's index keys for `status`: `ByStatus` always, `ByWorkflowStatus` once it ended."""
    shard = shard_of(execution_id)
    keys = {LISTING_INDEXES[INDEX_BY_STATUS]: f"st#{status.value}#{shard}"}
    if status != ExecutionStatus.IN_PROGRESS:
        keys[LISTING_INDEXES[INDEX_BY_WORKFLOW_STATUS]] = f"wfst#{workflow}#{status.value}#{shard}"
    return keys


class _Partition:
    """One index partition of a listing (with a filter on the workflow, for running executions of one),
    read lazily in pages as the merge consumes it."""

    def __init__(self, index: str, key: str, workflow: str | None = None) -> None:
        self.index = index
        self.key = key
        #: only records of this workflow (a `ByStatus` partition read for one workflow)
        self.workflow = workflow
        self.buffer: builtins.list[dict[str, Any]] = []
        self.position = 0
        #: the `gsisk` the next query starts after (the page's cursor, then the last item fetched)
        self.fetched_up_to: str | None = None
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

    def status(self, execution_id: str, *, consistent: bool = True) -> ExecutionStatus | None:
        """The record's status, None if there is no record. `consistent=False` reads at half the cost and may
        be a moment old (a record just created may not be found yet: ask again consistently then)."""
        item: dict[str, Any] | None = self.client.get_item(
            TableName=self.table,
            Key=self._record_key(execution_id),
            ConsistentRead=consistent,
            ProjectionExpression="#status",
            ExpressionAttributeNames={"#status": "status"},
        ).get("Item")
        return None if item is None else ExecutionStatus(from_attributes(item)["status"])

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

    def finish(
        self,
        execution_id: str,
        workflow: str,
        status: ExecutionStatus,
        end_time: datetime,
        *,
        result: Any = None,
        error: str | None = None,
        message: str | None = None,
    ) -> bool:
        """End the record (the core's `Finish`, carried out after the commit of the turn that ended the
        execution): its status, end time, result or error, and its listing keys move to the status's
        partitions. Only a record still IN_PROGRESS changes, so carrying the action out again (a cold
        turn re-sending its last turn's actions) is harmless: True if this call ended it.

        `workflow` is needed to rebuild the workflow+status index key (an update cannot read the record)."""
        status = ExecutionStatus(status)
        if status == ExecutionStatus.IN_PROGRESS:
            raise errors.EventualError(f"finish needs a terminal status, got {status.value}")
        keys = _listing_keys(execution_id, workflow, status)
        values: dict[str, Any] = {
            ":status": status.value,
            ":running": ExecutionStatus.IN_PROGRESS.value,
            ":end": sort_time(end_time),
            **{f":{name}": value for name, value in keys.items()},
        }
        assignments = ["#status = :status", "end_time = :end", *(f"{name} = :{name}" for name in keys)]
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
        try:
            self.client.update_item(
                TableName=self.table,
                Key=self._record_key(execution_id),
                UpdateExpression=expression,
                ConditionExpression="#status = :running",
                ExpressionAttributeNames={
                    "#status": "status",
                    "#result": "result",
                    "#error": "error",
                    "#message": "message",
                },
                ExpressionAttributeValues=to_attributes(values),
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

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
        cursor = _decode_token(next_token, query)
        partitions = _partitions(workflow, wanted)
        descending = sort == "desc"
        first_limit = -(-(max_results + 1) // len(partitions)) + 1
        for partition in partitions:
            partition.fetched_up_to = cursor
            self._fetch(partition, first_limit, descending)
        # a heap of (ordering key, partition number); desc inverts the text so the smallest pops first
        heap: builtins.list[tuple[Any, int]] = []
        for number, partition in enumerate(partitions):
            head = partition.peek()
            if head is not None:
                heapq.heappush(heap, (_order(head, descending), number))
        taken: builtins.list[dict[str, Any]] = []
        while heap and len(taken) <= max_results:  # one item more than a page: is there a next page?
            _, number = heapq.heappop(heap)
            partition = partitions[number]
            taken.append(partition.buffer[partition.position])
            partition.position += 1
            if partition.peek() is None and not partition.exhausted:
                self._fetch(partition, max(1, max_results + 1 - len(taken)), descending)
            head = partition.peek()
            if head is not None:
                heapq.heappush(heap, (_order(head, descending), number))
        page = [_to_execution(item) for item in taken[:max_results]]
        if len(taken) <= max_results:
            return ExecutionPage(executions=page)
        return ExecutionPage(executions=page, next_token=_encode_token(query, taken[max_results - 1][LISTING_SORT_KEY]))

    def _fetch(self, partition: _Partition, limit: int, descending: bool) -> None:
        """Replace the partition's consumed buffer with its next `limit` items (fewer at its end).

        One query page normally; the paginator goes on only past pages that came back empty (a filtered
        partition's may), and stops (is not iterated further) once a page brought items."""
        attribute = LISTING_INDEXES[partition.index]
        condition = "#partition = :partition"
        values: dict[str, Any] = {":partition": partition.key}
        if partition.fetched_up_to is not None:  # what follows the page's cursor, or the last item fetched
            condition += f" AND {LISTING_SORT_KEY} {'<' if descending else '>'} :after"
            values[":after"] = partition.fetched_up_to
        request: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": partition.index,
            "KeyConditionExpression": condition,
            "ExpressionAttributeNames": {"#partition": attribute},
            "ScanIndexForward": not descending,
            "Limit": limit,
        }
        if partition.workflow is not None:
            request["FilterExpression"] = "#workflow = :workflow"
            request["ExpressionAttributeNames"]["#workflow"] = "workflow"
            values[":workflow"] = partition.workflow
        request["ExpressionAttributeValues"] = to_attributes(values)
        remaining = partition.buffer[partition.position :]
        for page in self._pages(request):
            items = [_record_row(item) for item in page.get("Items", [])]
            remaining.extend(items)
            if page.get("LastEvaluatedKey"):
                partition.fetched_up_to = from_attributes(page["LastEvaluatedKey"])[LISTING_SORT_KEY]
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


def _partitions(workflow: str | None, statuses: builtins.list[str]) -> builtins.list[_Partition]:
    """The index partitions a listing reads: every shard of every requested status (all when none is)."""
    found: builtins.list[_Partition] = []
    for status in statuses or [status.value for status in ExecutionStatus]:
        for shard in range(SHARDS):
            if workflow is None or status == ExecutionStatus.IN_PROGRESS.value:
                # running executions of one workflow: ByWorkflowStatus holds ended ones only
                found.append(_Partition(INDEX_BY_STATUS, f"st#{status}#{shard}", workflow))
            else:
                found.append(_Partition(INDEX_BY_WORKFLOW_STATUS, f"wfst#{workflow}#{status}#{shard}"))
    return found


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


def _encode_token(query: dict[str, Any], cursor: str) -> str:
    body = {"v": 2, "q": query, "c": cursor}
    return base64.urlsafe_b64encode(compact_json(body).encode("utf-8")).decode("ascii")


def _decode_token(token: str | None, query: dict[str, Any]) -> str | None:
    """The cursor (the last `gsisk` of the previous page) of a page token made by the same query."""
    if not token:
        return None
    try:
        body = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
        if not isinstance(body, dict) or body.get("v") != 2:
            raise ValueError("unknown token version")
        cursor = body["c"]
        made_by = body["q"]
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, UnicodeError):
        raise invalid_page_token(token) from None
    if made_by != query:
        raise invalid_page_token(
            token, "it belongs to another listing (different workflow, statuses or sort); pass the same arguments"
        )
    if not isinstance(cursor, str) or "#" not in cursor:
        raise invalid_page_token(token)
    return cursor


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
