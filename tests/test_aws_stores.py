"""The DynamoDB stores of the AWS runtime (eventual_nb/runtime/aws/stores.py) against moto's server.

The tables are created from the exported CloudFormation template's own `Properties` (only the `Fn::Sub`
names are resolved), so these tests also prove that the stores match what `eventual-nb deploy` creates.

Never real AWS: moto's `ThreadedMotoServer` is started here on 127.0.0.1, every client names that
endpoint explicitly, credentials are dummies, and the module fails (does not skip) if the endpoint is
anything but a 127.0.0.1 URL.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import eventual_nb as ev
from eventual_nb.engine.history import (
    ActivityScheduled,
    ActivitySucceeded,
    HistoryEvent,
    SignalReceived,
    TimerScheduled,
    WorkflowFailed,
    WorkflowStarted,
    WorkflowSucceeded,
)
from eventual_nb.runtime.aws.stores import (
    LISTING_INDEXES,
    MAX_TRANSACTION_ITEMS,
    SHARDS,
    TIMEOUT_ATTRIBUTE,
    ExecutionStore,
    HistoryConflict,
    HistoryHead,
    HistoryStore,
    from_attributes,
    shard_of,
    table_names_from_environment,
    to_attributes,
)
from eventual_nb.runtime.base import Execution, ExecutionStatus
from eventual_nb.serde import NotJsonable
from tests import aws_support
from tests.aws_support import STACK, aws_client, require_local, reset_moto, template_tables

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

# the shared moto server and credentials (bound, not imported as names, so ruff sees them as fixtures)
moto_endpoint = aws_support.moto_endpoint
dummy_credentials = aws_support.dummy_credentials


def test_the_guard_refuses_anything_but_loopback() -> None:
    for endpoint in (None, "", "https://dynamodb.us-east-1.amazonaws.com", "http://localhost:5000", "http://0.0.0.0:1"):
        with pytest.raises(pytest.fail.Exception):
            require_local(endpoint)
    assert require_local("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


@pytest.fixture
def dynamodb(moto_endpoint: str, dummy_credentials: None) -> Any:
    """A fresh moto (reset) with the template's two tables; the client is bound to moto explicitly."""
    reset_moto(moto_endpoint)
    client = aws_client(moto_endpoint, "dynamodb")
    for properties in template_tables().values():
        client.create_table(**properties)
    return client


@pytest.fixture
def tables() -> dict[str, str]:
    names = {name: properties["TableName"] for name, properties in template_tables().items()}
    assert names == {"ExecutionsTable": f"{STACK}-executions", "HistoryTable": f"{STACK}-history"}
    return names


@pytest.fixture
def history(dynamodb: Any, tables: dict[str, str]) -> HistoryStore:
    return HistoryStore(dynamodb, tables["HistoryTable"])


@pytest.fixture
def executions(dynamodb: Any, tables: dict[str, str]) -> ExecutionStore:
    return ExecutionStore(dynamodb, tables["ExecutionsTable"])


class CallCounter:
    """Counts requests per DynamoDB operation through botocore's event hooks."""

    def __init__(self, client: Any) -> None:
        self.calls: list[str] = []
        client.meta.events.register("before-call.dynamodb.*", self._record)

    def _record(self, model: Any, **_: Any) -> None:
        self.calls.append(model.name)


def story(start: datetime = T0) -> list[HistoryEvent]:
    """A realistic history: start, an activity, a timer, a signal, the end."""
    return [
        WorkflowStarted(timestamp=start, workflow="order", input={"order_id": "o-1", "items": [1, 2]}),
        ActivityScheduled(seq=0, timestamp=start, name="charge", input={"amount": 12.5, "note": "café ☕"}),
        ActivitySucceeded(seq=0, timestamp=start + timedelta(seconds=1), result={"receipt": "r-9"}, attempts=2),
        TimerScheduled(seq=1, timestamp=start + timedelta(seconds=1), until=start + timedelta(hours=2)),
        SignalReceived(timestamp=start + timedelta(seconds=2), signal="approve", payload=True, id="sig-1"),
        WorkflowSucceeded(timestamp=start + timedelta(hours=2), result="done"),
    ]


# ------------------------------------------------------------------------------------------- tables


def test_tables_are_the_templates_with_sharded_listing_indexes(dynamodb: Any, tables: dict[str, str]) -> None:
    described = dynamodb.describe_table(TableName=tables["ExecutionsTable"])["Table"]
    assert described["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    indexes = {index["IndexName"]: index for index in described["GlobalSecondaryIndexes"]}
    assert set(indexes) == set(LISTING_INDEXES)
    for name, attribute in LISTING_INDEXES.items():
        assert [key["AttributeName"] for key in indexes[name]["KeySchema"]] == [attribute, "gsisk"]
        assert indexes[name]["Projection"] == {"ProjectionType": "ALL"}
    history_table = dynamodb.describe_table(TableName=tables["HistoryTable"])["Table"]
    assert not history_table.get("GlobalSecondaryIndexes")
    assert [key["AttributeName"] for key in history_table["KeySchema"]] == ["pk", "sk"]


def test_table_names_come_from_the_stack_environment() -> None:
    environ = {"EVENTUAL_EXECUTIONS_TABLE": "s-executions", "EVENTUAL_HISTORY_TABLE": "s-history"}
    assert table_names_from_environment(environ) == ("s-executions", "s-history")
    with pytest.raises(ev.EventualError, match="EVENTUAL_HISTORY_TABLE not set"):
        table_names_from_environment({"EVENTUAL_EXECUTIONS_TABLE": "s-executions"})


# ------------------------------------------------------------------------------------------ history


def test_append_and_read_round_trip_real_events(history: HistoryStore, dynamodb: Any) -> None:
    events = story()
    execution_id = "order/o-1"
    assert history.length(execution_id) == 0
    assert history.read(execution_id) == []
    assert history.append(execution_id, 0, events[:2]) == 2
    assert history.append(execution_id, 2, events[2:]) == 6
    assert history.length(execution_id) == 6
    assert history.read(execution_id) == events
    assert history.read(execution_id, after=4) == events[4:]
    assert history.read(execution_id, after=6) == []
    assert [type(event).__name__ for event in history.read(execution_id)] == [
        "WorkflowStarted",
        "ActivityScheduled",
        "ActivitySucceeded",
        "TimerScheduled",
        "SignalReceived",
        "WorkflowSucceeded",
    ]
    # the stored layout the brief fixes: one item per event, zero-padded index, plus the head
    item = dynamodb.get_item(
        TableName=history.table, Key={"pk": {"S": "exec#order/o-1"}, "sk": {"S": "ev#0000000002"}}
    )["Item"]
    assert json.loads(item["event"]["S"])["type"] == "ActivitySucceeded"
    head = dynamodb.get_item(TableName=history.table, Key={"pk": {"S": "exec#order/o-1"}, "sk": {"S": "head"}})
    assert head["Item"]["length"] == {"N": "6"}
    # another execution's history is separate
    assert history.read("order/o-2") == []


def test_read_follows_query_pages(history: HistoryStore, dynamodb: Any) -> None:
    """More than one 1 MB query page: read() must paginate and keep the order."""
    big = [
        ActivitySucceeded(seq=index, timestamp=T0, result="x" * 150_000 + str(index), attempts=1) for index in range(9)
    ]
    history.append("big/one", 0, big[:5])
    history.append("big/one", 5, big[5:])
    counter = CallCounter(dynamodb)
    assert history.read("big/one") == big
    assert counter.calls.count("Query") >= 2
    assert history.read("big/one", after=7) == big[7:]


def test_read_with_head_follows_query_pages_and_counts_them(history: HistoryStore, dynamodb: Any) -> None:
    """The orchestrator's read (events and head in one query) pages like `read` and says how many requests
    it took (the orchestrator's `history_queries`)."""
    big = [
        ActivitySucceeded(seq=index, timestamp=T0, result="x" * 150_000 + str(index), attempts=1) for index in range(9)
    ]
    history.append("big/two", 0, big[:5])
    history.append("big/two", 5, big[5:], pending=[{"kind": "cancel_timer", "key": "3"}])
    counter = CallCounter(dynamodb)
    found = history.read_with_head("big/two")
    assert found.events == big
    assert found.head == HistoryHead(length=9, pending=[{"kind": "cancel_timer", "key": "3"}])
    assert found.queries == counter.calls.count("Query") >= 2
    assert counter.calls == ["Query"] * found.queries
    tail = history.read_with_head("big/two", after=8)
    assert (tail.events, tail.head.length, tail.queries) == (big[8:], 9, 1)
    empty = history.read_with_head("big/none")
    assert (empty.events, empty.head, empty.queries) == ([], HistoryHead(length=0, pending=[]), 1)


def test_a_stale_writer_gets_history_conflict_and_writes_nothing(history: HistoryStore) -> None:
    execution_id = "order/race"
    started, *rest = story()
    history.append(execution_id, 0, [started])
    winner = [rest[0]]
    loser = [TimerScheduled(seq=0, timestamp=T0, until=T0 + timedelta(minutes=5))]
    assert history.append(execution_id, 1, winner) == 2
    with pytest.raises(HistoryConflict) as caught:
        history.append(execution_id, 1, loser)
    assert caught.value.execution_id == execution_id
    assert caught.value.expected_length == 1
    assert "ConditionalCheckFailed" in caught.value.reasons
    assert isinstance(caught.value, ev.EventualError)
    # a writer that believes the history is empty conflicts too (the head exists)
    with pytest.raises(HistoryConflict):
        history.append(execution_id, 0, [started])
    assert history.read(execution_id) == [started, *winner]
    assert history.length(execution_id) == 2


def test_two_writers_that_read_the_same_length_exactly_one_wins(
    history: HistoryStore, moto_endpoint: str, tables: dict[str, str]
) -> None:
    """Two orchestrator invocations (own clients) read the same head, then both commit.

    Deliberately sequential after the reads: moto's TransactWriteItems is not atomic under concurrent
    requests (it snapshots and restores whole tables), so racing threads would test moto, not the store."""
    execution_id = "order/two-writers"
    history.append(execution_id, 0, story()[:1])
    other = HistoryStore(aws_client(moto_endpoint, "dynamodb"), tables["HistoryTable"])
    writers = {"first": history, "second": other}
    seen = {name: store.length(execution_id) for name, store in writers.items()}
    assert seen == {"first": 1, "second": 1}
    outcomes = {}
    for name, store in writers.items():
        turn = [
            ActivityScheduled(seq=0, timestamp=T0, name=f"by-{name}", input={}),
            TimerScheduled(seq=1, timestamp=T0, until=T0),
        ]
        try:
            store.append(execution_id, seen[name], turn)
        except HistoryConflict as conflict:
            outcomes[name] = f"conflict at {conflict.expected_length}"
        else:
            outcomes[name] = "won"
    assert outcomes == {"first": "won", "second": "conflict at 1"}
    stored = history.read(execution_id)
    assert [getattr(event, "name", None) for event in stored] == [None, "by-first", None]
    assert other.read(execution_id) == stored
    assert other.length(execution_id) == 3


def test_more_than_100_items_are_refused_before_calling_aws(history: HistoryStore, dynamodb: Any) -> None:
    counter = CallCounter(dynamodb)
    too_many = [TimerScheduled(seq=index, timestamp=T0, until=T0) for index in range(MAX_TRANSACTION_ITEMS)]
    with pytest.raises(ev.EventualError, match=r"101 transaction items .* not split"):
        history.append("order/many", 0, too_many)  # 100 events + the head
    extra = ExecutionStore(dynamodb, "whatever").finish_item("order/many", "order", ExecutionStatus.SUCCEEDED, T0)
    with pytest.raises(ev.EventualError, match="101 transaction items"):
        history.append("order/many", 0, too_many[:99], extra_items=[extra])
    assert counter.calls == []
    assert history.length("order/many") == 0
    # exactly at the limit is one transaction
    counter.calls.clear()
    assert history.append("order/many", 0, too_many[:99]) == 99
    assert counter.calls == ["TransactWriteItems"]
    assert history.read("order/many") == too_many[:99]


def test_an_item_over_400_kb_is_refused_naming_execution_and_index(history: HistoryStore, dynamodb: Any) -> None:
    history.append("order/large", 0, story()[:3])
    counter = CallCounter(dynamodb)
    huge = ActivitySucceeded(seq=1, timestamp=T0, result="y" * 400_000)
    with pytest.raises(ev.EventualError, match=r"history event 4 of execution 'order/large' is \d+ bytes") as caught:
        history.append("order/large", 3, [TimerScheduled(seq=2, timestamp=T0, until=T0), huge])
    assert not isinstance(caught.value, HistoryConflict)
    assert counter.calls == []
    assert history.length("order/large") == 3


def test_empty_append_is_a_no_op_and_extra_items_alone_are_guarded_by_the_head(
    history: HistoryStore, executions: ExecutionStore, dynamodb: Any
) -> None:
    counter = CallCounter(dynamodb)
    assert history.append("order/none", 0, []) == 0
    assert counter.calls == []
    executions.create("order/guarded", "order", {"a": 1}, T0)
    history.append("order/guarded", 0, story()[:1])
    finish = executions.finish_item("order/guarded", "order", ExecutionStatus.CANCELLED, T0)
    with pytest.raises(HistoryConflict):  # the history moved on: the record update must not apply
        history.append("order/guarded", 0, [], extra_items=[finish])
    assert executions.get("order/guarded").status == ExecutionStatus.IN_PROGRESS
    assert history.append("order/guarded", 1, [], extra_items=[finish]) == 1
    assert executions.get("order/guarded").status == ExecutionStatus.CANCELLED


# --------------------------------------------------------------------------------------- executions


def test_create_is_idempotent_by_input_and_get_reads_it(executions: ExecutionStore) -> None:
    execution_id = "order/o-7"
    assert executions.create(
        execution_id, "order", {"order_id": "o-7", "items": [1, 2]}, T0, parent="batch/b", parent_seq=3, service="shop"
    )
    # the same input in another key order is the same input
    assert not executions.create(execution_id, "order", {"items": [1, 2], "order_id": "o-7"}, T0)
    with pytest.raises(ev.ExecutionAlreadyExists) as caught:
        executions.create(execution_id, "order", {"order_id": "o-8"}, T0)
    assert caught.value.execution_id == execution_id
    execution = executions.get(execution_id)
    assert execution == Execution(
        id=execution_id,
        workflow="order",
        status=ExecutionStatus.IN_PROGRESS,
        input={"order_id": "o-7", "items": [1, 2]},
        start_time=T0,
        parent="batch/b",
    )
    with pytest.raises(ev.ExecutionNotFound) as missing:
        executions.get("order/nope")
    assert missing.value.execution_id == "order/nope"


def test_items_keep_their_stored_types_and_come_back_as_python_values(
    history: HistoryStore, executions: ExecutionStore, dynamodb: Any
) -> None:
    """Items go through boto3's TypeSerializer now: the attribute types stored are the ones the hand-written
    items had (so tables written before read the same), and what the stores hand back is plain Python."""
    execution_id = "order/shape"
    executions.create(
        execution_id, "order", {"n": 3, "amount": 12.5}, T0, parent="batch/b", parent_seq=3, service="shop"
    )
    executions.set_timeout(execution_id, 30.0)
    raw = dynamodb.get_item(TableName=executions.table, Key={"pk": {"S": f"exec#{execution_id}"}, "sk": {"S": "exec"}})
    item = raw["Item"]
    kinds = {name: next(iter(value)) for name, value in item.items()}
    assert kinds == {
        **dict.fromkeys(
            ["pk", "sk", "id", "workflow", "status", "input", "input_hash", "start_time", "gsisk", "parent", "service"],
            "S",
        ),
        **dict.fromkeys(["gsi1pk", "gsi2pk", "gsi3pk", "gsi4pk"], "S"),
        "parent_seq": "N",
        TIMEOUT_ATTRIBUTE: "N",
    }
    assert item["parent_seq"] == {"N": "3"}
    assert item[TIMEOUT_ATTRIBUTE] == {"N": "30.0"}
    assert item["input"]["S"] == '{"n":3,"amount":12.5}'  # compact, in the order given
    record = executions.record(execution_id)
    assert record is not None
    assert (record["parent_seq"], record[TIMEOUT_ATTRIBUTE], record["input"]) == (3, 30.0, {"n": 3, "amount": 12.5})
    assert list(record["input"]) == ["n", "amount"]
    assert type(record["parent_seq"]) is int
    assert type(record[TIMEOUT_ATTRIBUTE]) is float
    assert (record["status"], record["service"], record["parent"]) == ("IN_PROGRESS", "shop", "batch/b")
    assert executions.record("order/none") is None

    assert executions.claim(execution_id, 0, 1)
    claim = dynamodb.get_item(
        TableName=executions.table, Key={"pk": {"S": f"exec#{execution_id}"}, "sk": {"S": "claim#0000000000#0001"}}
    )["Item"]
    assert {name: next(iter(value)) for name, value in claim.items()} == {
        "pk": "S",
        "sk": "S",
        "claimed_at": "S",
        "lease_until": "N",
    }
    assert float(claim["lease_until"]["N"]) > T0.timestamp()

    history.append(execution_id, 0, story()[:1], pending=[{"kind": "timer", "due": "2025-03-01T12:00:00+00:00"}])
    head = dynamodb.get_item(TableName=history.table, Key={"pk": {"S": f"exec#{execution_id}"}, "sk": {"S": "head"}})
    assert head["Item"]["length"] == {"N": "1"}
    assert json.loads(head["Item"]["pending"]["S"]) == [{"kind": "timer", "due": "2025-03-01T12:00:00+00:00"}]


def test_the_item_codec_keeps_ints_floats_and_refuses_nan() -> None:
    values = {"i": 7500, "f": 30.0, "g": 0.1, "b": True, "none": None, "s": "é", "l": [1, 2.5], "m": {"k": -2}}
    attributes = to_attributes(values)
    assert attributes["i"] == {"N": "7500"}
    assert attributes["f"] == {"N": "30.0"}
    assert attributes["g"] == {"N": "0.1"}
    assert attributes["b"] == {"BOOL": True}
    assert attributes["none"] == {"NULL": True}
    assert attributes["s"] == {"S": "é"}
    assert attributes["l"] == {"L": [{"N": "1"}, {"N": "2.5"}]}
    assert attributes["m"] == {"M": {"k": {"N": "-2"}}}
    back = from_attributes(attributes)
    assert back == values
    assert [type(back[name]) for name in ("i", "f", "g")] == [int, float, float]
    for bad in (float("nan"), float("inf")):
        with pytest.raises(TypeError, match="not supported"):
            to_attributes({"x": bad})


def test_json_attributes_refuse_nan_before_any_request(executions: ExecutionStore, dynamodb: Any) -> None:
    """Every JSON attribute is `serde.compact_json`: NaN is refused with `NotJsonable`, nothing is sent."""
    counter = CallCounter(dynamodb)
    with pytest.raises(NotJsonable):
        executions.create("order/nan", "order", {"amount": float("nan")}, T0)
    assert executions.claim("order/nan", 0, 1)
    counter.calls.clear()
    with pytest.raises(NotJsonable):
        executions.wait_for_token("order/nan", 0, 1, {"input": [float("inf")]}, T0)
    with pytest.raises(NotJsonable):
        executions.finish_item("order/nan", "order", ExecutionStatus.SUCCEEDED, T0, result=float("nan"))
    assert counter.calls == []


def test_finish_through_extra_items_moves_status_and_listing(history: HistoryStore, executions: ExecutionStore) -> None:
    for name in ("ok", "bad"):
        executions.create(f"order/{name}", "order", {"name": name}, T0 + timedelta(seconds=len(name)))
        history.append(f"order/{name}", 0, story()[:1])
    end = T0 + timedelta(minutes=3)
    succeeded = WorkflowSucceeded(timestamp=end, result={"total": 3})
    finish = executions.finish_item("order/ok", "order", ExecutionStatus.SUCCEEDED, end, result={"total": 3})
    assert history.append("order/ok", 1, [succeeded], extra_items=[finish]) == 2
    failed = WorkflowFailed(timestamp=end, error="ValueError", message="no stock")
    finish_bad = executions.finish_item(
        "order/bad", "order", ExecutionStatus.FAILED, end, error="ValueError", message="no stock"
    )
    history.append("order/bad", 1, [failed], extra_items=[finish_bad])

    ok = executions.get("order/ok")
    assert (ok.status, ok.result, ok.end_time, ok.error) == (ExecutionStatus.SUCCEEDED, {"total": 3}, end, None)
    bad = executions.get("order/bad")
    assert (bad.status, bad.error, bad.message, bad.result) == (ExecutionStatus.FAILED, "ValueError", "no stock", None)
    assert history.read("order/ok")[-1] == succeeded

    def ids(**kwargs: Any) -> list[str]:
        return [execution.id for execution in executions.list(**kwargs).executions]

    assert ids(statuses=[ExecutionStatus.SUCCEEDED]) == ["order/ok"]
    assert ids(statuses=["FAILED"]) == ["order/bad"]
    assert ids(statuses=[ExecutionStatus.IN_PROGRESS]) == []
    assert ids(workflow="order", statuses=[ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED]) == [
        "order/ok",
        "order/bad",
    ]

    # a stale orchestrator ending it again loses: the record and the history stay as they are
    again = executions.finish_item("order/ok", "order", ExecutionStatus.FAILED, end, error="Late")
    with pytest.raises(HistoryConflict) as caught:
        history.append("order/ok", 2, [failed], extra_items=[again])
    assert caught.value.reasons[-1] == "ConditionalCheckFailed"
    assert executions.get("order/ok").status == ExecutionStatus.SUCCEEDED
    assert history.length("order/ok") == 2
    with pytest.raises(ev.EventualError, match="terminal status"):
        executions.finish_item("order/ok", "order", ExecutionStatus.IN_PROGRESS, end)


def test_listing_across_shards_with_pagination(history: HistoryStore, executions: ExecutionStore) -> None:
    rng = random.Random(7)
    created: list[Execution] = []
    specs = []
    for number in range(30):
        workflow = "order" if number % 3 else "refund"
        # a few executions share a start time: ties are ordered by id
        start = T0 + timedelta(seconds=number - (number % 5 == 1))
        specs.append((f"{workflow}/n-{number:02d}", workflow, start))
    rng.shuffle(specs)  # creation order is not start order
    for execution_id, workflow, start in specs:
        executions.create(execution_id, workflow, {"n": execution_id}, start)
    assert len({shard_of(execution_id) for execution_id, _, _ in specs}) == SHARDS
    for index, (execution_id, workflow, _) in enumerate(sorted(specs)):
        if index % 4 == 0:
            finish = executions.finish_item(execution_id, workflow, ExecutionStatus.SUCCEEDED, T0, result=index)
            history.append(execution_id, 0, story()[:1], extra_items=[finish])
        elif index % 4 == 1:
            finish = executions.finish_item(execution_id, workflow, ExecutionStatus.FAILED, T0, error="E")
            history.append(execution_id, 0, story()[:1], extra_items=[finish])
    created = [executions.get(execution_id) for execution_id, _, _ in specs]

    def expected(workflow: str | None, statuses: list[ExecutionStatus] | None, sort: str) -> list[str]:
        chosen = [
            execution
            for execution in created
            if (workflow is None or execution.workflow == workflow) and (not statuses or execution.status in statuses)
        ]
        chosen.sort(key=lambda execution: (execution.start_time, execution.id), reverse=sort == "desc")
        return [execution.id for execution in chosen]

    def paged(workflow: str | None, statuses: list[ExecutionStatus] | None, sort: str) -> list[str]:
        seen: list[str] = []
        token: str | None = None
        for _ in range(40):
            page = executions.list(workflow, statuses, token, max_results=7, sort=sort)
            assert len(page.executions) <= 7
            assert page.executions or not seen, "a non-first page is never empty"
            seen.extend(execution.id for execution in page.executions)
            if page.next_token is None:
                return seen
            assert len(page.executions) == 7
            token = page.next_token
        raise AssertionError("listing did not end")

    cases: list[tuple[str | None, list[ExecutionStatus] | None]] = [
        (None, None),
        ("order", None),
        ("refund", None),
        (None, [ExecutionStatus.IN_PROGRESS]),
        (None, [ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED]),
        ("order", [ExecutionStatus.IN_PROGRESS, ExecutionStatus.SUCCEEDED]),
        ("nothing", None),
    ]
    for workflow, statuses in cases:
        for sort in ("asc", "desc"):
            wanted = expected(workflow, statuses, sort)
            got = paged(workflow, statuses, sort)
            assert got == wanted, (workflow, statuses, sort)
            assert len(set(got)) == len(got)
    assert len(expected(None, None, "asc")) == 30
    # one page holding everything has no token; full records come back
    page = executions.list(max_results=100)
    assert page.next_token is None
    assert page.executions == sorted(created, key=lambda execution: (execution.start_time, execution.id))


def test_listing_rejects_bad_arguments_and_foreign_tokens(executions: ExecutionStore) -> None:
    for number in range(3):
        executions.create(f"order/t-{number}", "order", None, T0 + timedelta(seconds=number))
    token = executions.list(workflow="order", max_results=1).next_token
    assert token is not None
    assert [e.id for e in executions.list(workflow="order", next_token=token, max_results=1).executions] == [
        "order/t-1"
    ]
    with pytest.raises(ev.InputValidationError, match="another listing"):
        executions.list(workflow="order", next_token=token, sort="desc")
    with pytest.raises(ev.InputValidationError, match="another listing"):
        executions.list(next_token=token)
    for garbage in ("not base64 !", "eyJ2IjogMn0=", "3"):
        with pytest.raises(ev.InputValidationError, match="invalid next_token"):
            executions.list(workflow="order", next_token=garbage)
    with pytest.raises(ev.InputValidationError):
        executions.list(sort="sideways")
    with pytest.raises(ev.InputValidationError):
        executions.list(max_results=0)


def test_claims_and_signal_ids_are_once_only(executions: ExecutionStore, dynamodb: Any) -> None:
    assert executions.claim("order/c", 3, 1)
    assert not executions.claim("order/c", 3, 1)
    assert executions.claim("order/c", 3, 2)
    assert executions.claim("order/c", 4, 1)
    assert executions.claim("order/other", 3, 1)
    assert executions.remember_signal("order/c", "sig-1")
    assert not executions.remember_signal("order/c", "sig-1")
    assert executions.remember_signal("order/c", "sig-2")
    assert executions.remember_signal("order/other", "sig-1")
    long_id = "s" * 2000
    assert executions.remember_signal("order/c", long_id)
    assert not executions.remember_signal("order/c", long_id)
    keys = dynamodb.query(
        TableName=executions.table,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": "exec#order/c"}},
    )["Items"]
    sort_keys = sorted(item["sk"]["S"] for item in keys)
    assert sort_keys[:3] == ["claim#0000000003#0001", "claim#0000000003#0002", "claim#0000000004#0001"]
    assert "signal#sig-1" in sort_keys
    # claim and signal rows are not executions: they never show up in listings
    assert executions.list().executions == []


def test_an_attempt_waiting_for_its_token_is_settled_exactly_once(executions: ExecutionStore) -> None:
    message = {"execution_id": "order/w", "seq": 2, "attempt": 1, "name": "ship", "input": {}, "options": {}}
    assert not executions.wait_for_token("order/w", 2, 1, message, T0)  # never claimed: nothing to wait on
    assert executions.settle_claim("order/w", 2, 1, "succeeded") is None
    assert executions.claim("order/w", 2, 1)
    assert executions.wait_for_token("order/w", 2, 1, message, T0, deadline=T0 + timedelta(seconds=30))
    pending = executions.pending_claim("order/w", 2, 1)
    # claim rows come back as Python values, the activity message decoded
    assert pending is not None
    assert pending["message"] == message
    assert datetime.fromisoformat(pending["deadline"]) == T0 + timedelta(seconds=30)
    assert datetime.fromisoformat(pending["last_heartbeat"]) == T0
    assert executions.heartbeat_claim("order/w", 2, 1, T0 + timedelta(seconds=1))
    won = executions.settle_claim("order/w", 2, 1, "failed")
    assert won is not None
    assert won["message"] == message
    assert executions.settle_claim("order/w", 2, 1, "succeeded") is None  # the second completion loses
    assert executions.pending_claim("order/w", 2, 1) is None
    assert not executions.heartbeat_claim("order/w", 2, 1, T0 + timedelta(seconds=2))
    # an attempt whose token was used while it ran cannot start waiting afterwards
    assert executions.claim("order/w", 3, 1)
    assert executions.settle_claim("order/w", 3, 1, "succeeded") is not None
    assert not executions.wait_for_token("order/w", 3, 1, {**message, "seq": 3}, T0)


def test_a_claim_whose_lease_ran_out_is_taken_over_unless_settled_or_waiting(executions: ExecutionStore) -> None:
    """The lease is how long the claiming invocation can still run: a delivery while it runs is a duplicate,
    one after it ran out (the holder died) takes the attempt over; settled or token-waiting ones never."""
    gone = timedelta(0)
    assert executions.claim("order/l", 1, 1, lease=gone)
    assert executions.claim("order/l", 1, 1)  # the holder's lease ran out and it never settled: taken over
    assert not executions.claim("order/l", 1, 1)  # ...by a holder whose (default, 15 min) lease still runs
    assert executions.claim("order/l", 2, 1, lease=gone)
    assert executions.settle_claim("order/l", 2, 1, "succeeded") is not None
    assert not executions.claim("order/l", 2, 1)  # settled: a late duplicate never runs it again
    message = {"execution_id": "order/l", "seq": 3, "attempt": 1, "name": "ship", "input": {}, "options": {}}
    assert executions.claim("order/l", 3, 1, lease=gone)
    assert executions.wait_for_token("order/l", 3, 1, message, T0)
    assert not executions.claim("order/l", 3, 1)  # waiting for its token: its own deadlines are watched
