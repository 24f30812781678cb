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
    WorkflowStarted,
    WorkflowSucceeded,
)
from eventual_nb.runtime.aws import stores
from eventual_nb.runtime.aws.stores import (
    LISTING_INDEXES,
    SHARDS,
    TIMEOUT_ATTRIBUTE,
    ExecutionStore,
    HistoryConflict,
    HistoryRead,
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


def test_commit_and_read_round_trip_real_events(history: HistoryStore, dynamodb: Any) -> None:
    events = story()
    execution_id = "order/o-1"
    assert history.read(execution_id) == []
    assert history.read_turns(execution_id) == HistoryRead(queries=1)
    history.commit(execution_id, 1, 0, events[:2], [{"action": "StartAttempt", "seq": 0}])
    history.commit(execution_id, 2, 2, events[2:], [{"action": "Finish"}])
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
    found = history.read_turns(execution_id)
    assert (found.turn, found.length, found.pending, found.queries) == (2, 6, [{"action": "Finish"}], 1)
    # a warm reader asks only for what follows the turn it has: turn 2, with its actions
    newer = history.read_turns(execution_id, after_turn=1, length=2)
    assert (newer.events, newer.turn, newer.length, newer.pending) == (events[2:], 2, 6, [{"action": "Finish"}])
    nothing = history.read_turns(execution_id, after_turn=2, length=6)
    assert (nothing.events, nothing.turn, nothing.length, nothing.pending) == ([], 2, 6, [])
    # the stored layout: one item per turn (zero-padded number), its events and actions in one JSON body
    items = dynamodb.query(
        TableName=history.table,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": "exec#order/o-1"}},
    )["Items"]
    assert [item["sk"]["S"] for item in items] == ["turn#0000000001", "turn#0000000002"]
    second = items[1]
    assert (second["first"], second["count"]) == ({"N": "2"}, {"N": "4"})
    body = json.loads(second["body"]["S"])
    assert body["events"][0]["type"] == "ActivitySucceeded"
    assert body["pending"] == [{"action": "Finish"}]
    # another execution's history is separate
    assert history.read("order/o-2") == []


def test_read_turns_follows_query_pages_and_counts_them(history: HistoryStore, dynamodb: Any) -> None:
    """More than one 1 MB query page: the read pages, keeps the order and says how many requests it took
    (the orchestrator's `history_queries`)."""
    big = [
        ActivitySucceeded(seq=index, timestamp=T0, result="x" * 150_000 + str(index), attempts=1) for index in range(9)
    ]
    for turn, (first, last) in enumerate([(0, 2), (2, 4), (4, 6), (6, 8), (8, 9)], start=1):
        history.commit("big/two", turn, first, big[first:last], [{"turn": turn}])
    counter = CallCounter(dynamodb)
    found = history.read_turns("big/two")
    assert found.events == big
    assert (found.turn, found.length, found.pending) == (5, 9, [{"turn": 5}])
    assert found.queries == counter.calls.count("Query") >= 2
    assert counter.calls == ["Query"] * found.queries
    tail = history.read_turns("big/two", after_turn=4, length=8)
    assert (tail.events, tail.length, tail.queries) == (big[8:], 9, 1)
    assert history.read("big/two", after=7) == big[7:]


def test_a_second_writer_of_a_turn_gets_history_conflict_and_writes_nothing(history: HistoryStore) -> None:
    execution_id = "order/race"
    started, *rest = story()
    history.commit(execution_id, 1, 0, [started])
    winner = [rest[0]]
    loser = [TimerScheduled(seq=0, timestamp=T0, until=T0 + timedelta(minutes=5))]
    history.commit(execution_id, 2, 1, winner)
    with pytest.raises(HistoryConflict) as caught:
        history.commit(execution_id, 2, 1, loser, [{"action": "ArmTimer"}])
    assert (caught.value.execution_id, caught.value.turn) == (execution_id, 2)
    assert isinstance(caught.value, ev.EventualError)
    # a writer that believes the history is empty conflicts too (turn 1 exists)
    with pytest.raises(HistoryConflict):
        history.commit(execution_id, 1, 0, [started])
    found = history.read_turns(execution_id)
    assert (found.events, found.turn, found.pending) == ([started, *winner], 2, [])


def test_two_writers_that_read_the_same_turn_exactly_one_wins(
    history: HistoryStore, moto_endpoint: str, tables: dict[str, str]
) -> None:
    """Two orchestrator invocations (own clients) read the same history, then both commit the next turn."""
    execution_id = "order/two-writers"
    history.commit(execution_id, 1, 0, story()[:1])
    other = HistoryStore(aws_client(moto_endpoint, "dynamodb"), tables["HistoryTable"])
    writers = {"first": history, "second": other}
    seen = {name: store.read_turns(execution_id) for name, store in writers.items()}
    assert {name: (read.turn, read.length) for name, read in seen.items()} == {"first": (1, 1), "second": (1, 1)}
    outcomes = {}
    for name, store in writers.items():
        turn = [
            ActivityScheduled(seq=0, timestamp=T0, name=f"by-{name}", input={}),
            TimerScheduled(seq=1, timestamp=T0, until=T0),
        ]
        try:
            store.commit(execution_id, seen[name].turn + 1, seen[name].length, turn)
        except HistoryConflict as conflict:
            outcomes[name] = f"conflict at turn {conflict.turn}"
        else:
            outcomes[name] = "won"
    assert outcomes == {"first": "won", "second": "conflict at turn 2"}
    stored = history.read(execution_id)
    assert [getattr(event, "name", None) for event in stored] == [None, "by-first", None]
    assert other.read(execution_id) == stored


def history_items(dynamodb: Any, table: str, execution_id: str) -> list[dict[str, Any]]:
    pages = dynamodb.get_paginator("query").paginate(
        TableName=table,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": f"exec#{execution_id}"}},
        ProjectionExpression="sk",
    )
    return [item for page in pages for item in page["Items"]]


def test_a_turn_over_400_kb_is_split_over_items_and_still_commits_once(
    history: HistoryStore, dynamodb: Any, moto_endpoint: str, tables: dict[str, str]
) -> None:
    """A huge activity result (1.5 MB, beyond DynamoDB's 400 KB item) is stored over several items: the
    parts first, under a key of their own, then the turn's conditional put, the one commit point. A second
    writer of the same turn loses as with one item, and its parts are gone."""
    execution_id = "order/huge"
    history.commit(execution_id, 1, 0, story()[:2])
    huge = ActivitySucceeded(seq=0, timestamp=T0, result="é" + "y" * 1_500_000 + "☕", attempts=1)
    counter = CallCounter(dynamodb)
    history.commit(execution_id, 2, 2, [huge], [{"action": "Finish"}])
    assert counter.calls == ["PutItem"] * 4  # 3 parts, then the turn itself
    keys = [item["sk"]["S"] for item in history_items(dynamodb, history.table, execution_id)]
    assert keys[:2] == ["turn#0000000001", "turn#0000000002"]
    assert len(keys) == 5
    assert all(key.startswith("turn#0000000002#") for key in keys[2:])
    found = history.read_turns(execution_id)
    assert found.events == [*story()[:2], huge]
    assert (found.turn, found.length, found.pending) == (2, 3, [{"action": "Finish"}])

    other = HistoryStore(aws_client(moto_endpoint, "dynamodb"), tables["HistoryTable"])
    late = ActivitySucceeded(seq=0, timestamp=T0, result="z" * 900_000, attempts=2)
    with pytest.raises(HistoryConflict):
        other.commit(execution_id, 2, 2, [late])
    assert [item["sk"]["S"] for item in history_items(dynamodb, history.table, execution_id)] == keys
    # a part a crashed loser left behind (never named by a committed turn) is skipped by readers
    dynamodb.put_item(
        TableName=history.table,
        Item={"pk": {"S": f"exec#{execution_id}"}, "sk": {"S": "turn#0000000002#deadbeef#001"}, "body": {"S": "xx"}},
    )
    assert history.read_turns(execution_id).events == found.events


def test_a_turn_too_large_even_for_its_parts_is_refused_before_calling_aws(
    history: HistoryStore, dynamodb: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stores, "MAX_TURN_PARTS", 2)
    counter = CallCounter(dynamodb)
    huge = ActivitySucceeded(seq=1, timestamp=T0, result="y" * 900_000)
    with pytest.raises(ev.EventualError, match=r"turn 4 of execution 'order/large' is \d+ bytes") as caught:
        history.commit("order/large", 4, 3, [huge])
    assert not isinstance(caught.value, HistoryConflict)
    assert counter.calls == []


def test_a_history_whose_turns_do_not_follow_each_other_is_reported(history: HistoryStore, dynamodb: Any) -> None:
    history.commit("order/gap", 1, 0, story()[:1])
    history.commit("order/gap", 3, 1, story()[1:2])
    with pytest.raises(ev.EventualError, match=r"turn 3 .* does not follow turn 1"):
        history.read("order/gap")
    dynamodb.put_item(
        TableName=history.table, Item={"pk": {"S": "exec#order/odd"}, "sk": {"S": "turn#x"}, "body": {"S": "{}"}}
    )
    with pytest.raises(ev.EventualError, match="not a turn"):
        history.read("order/odd")


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
        "gsi1pk": "S",  # a running execution is in ByStatus only
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

    history.commit(execution_id, 1, 0, story()[:1], [{"kind": "timer", "due": "2025-03-01T12:00:00+00:00"}])
    turn = dynamodb.get_item(
        TableName=history.table, Key={"pk": {"S": f"exec#{execution_id}"}, "sk": {"S": "turn#0000000001"}}
    )["Item"]
    assert {name: next(iter(value)) for name, value in turn.items()} == {
        "pk": "S",
        "sk": "S",
        "first": "N",
        "count": "N",
        "body": "S",
    }
    assert (turn["first"], turn["count"]) == ({"N": "0"}, {"N": "1"})
    body = json.loads(turn["body"]["S"])
    assert body["pending"] == [{"kind": "timer", "due": "2025-03-01T12:00:00+00:00"}]


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
        executions.finish("order/nan", "order", ExecutionStatus.SUCCEEDED, T0, result=float("nan"))
    with pytest.raises(NotJsonable):
        HistoryStore(dynamodb, "whatever").commit("order/nan", 1, 0, [], [{"amount": float("nan")}])
    assert counter.calls == []


def test_finish_moves_status_and_listing_once(history: HistoryStore, executions: ExecutionStore) -> None:
    """The record's status is written when it changes: `finish` (the core's Finish, carried out after the
    commit of the turn that ended the execution) moves it, once; carrying it out again changes nothing."""
    for name in ("ok", "bad"):
        executions.create(f"order/{name}", "order", {"name": name}, T0 + timedelta(seconds=len(name)))
    end = T0 + timedelta(minutes=3)
    assert executions.finish("order/ok", "order", ExecutionStatus.SUCCEEDED, end, result={"total": 3})
    assert executions.finish("order/bad", "order", ExecutionStatus.FAILED, end, error="ValueError", message="no stock")

    ok = executions.get("order/ok")
    assert (ok.status, ok.result, ok.end_time, ok.error) == (ExecutionStatus.SUCCEEDED, {"total": 3}, end, None)
    bad = executions.get("order/bad")
    assert (bad.status, bad.error, bad.message, bad.result) == (ExecutionStatus.FAILED, "ValueError", "no stock", None)

    def ids(**kwargs: Any) -> list[str]:
        return [execution.id for execution in executions.list(**kwargs).executions]

    assert ids(statuses=[ExecutionStatus.SUCCEEDED]) == ["order/ok"]
    assert ids(statuses=["FAILED"]) == ["order/bad"]
    assert ids(statuses=[ExecutionStatus.IN_PROGRESS]) == []
    assert ids(workflow="order", statuses=[ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED]) == [
        "order/ok",
        "order/bad",
    ]
    assert ids(workflow="order") == ids() == ["order/ok", "order/bad"]

    # a stale orchestrator ending it again (or a cold turn re-sending the Finish) changes nothing
    assert not executions.finish("order/ok", "order", ExecutionStatus.FAILED, end, error="Late")
    assert executions.get("order/ok") == ok
    with pytest.raises(ev.EventualError, match="terminal status"):
        executions.finish("order/ok", "order", ExecutionStatus.IN_PROGRESS, end)


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
            executions.finish(execution_id, workflow, ExecutionStatus.SUCCEEDED, T0, result=index)
        elif index % 4 == 1:
            executions.finish(execution_id, workflow, ExecutionStatus.FAILED, T0, error="E")
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


@pytest.mark.parametrize("sort", ["asc", "desc"])
def test_executions_that_end_between_pages_are_listed_once(executions: ExecutionStore, sort: str) -> None:
    """Ending moves an execution's index items to its new status's partitions; the next page asks every
    partition for what follows the page's last start time, so nothing is skipped or listed twice."""
    ids = [f"order/e-{number:02d}" for number in range(12)]
    for number, execution_id in enumerate(ids):
        executions.create(execution_id, "order", None, T0 + timedelta(seconds=number))
    expected = ids if sort == "asc" else ids[::-1]
    for workflow in (None, "order"):
        for execution_id in ids:  # back to running: a fresh start for each listing
            executions.client.update_item(
                TableName=executions.table,
                Key=to_attributes({"pk": f"exec#{execution_id}", "sk": "exec"}),
                UpdateExpression="SET #status = :running, gsi1pk = :key REMOVE gsi2pk",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=to_attributes(
                    {":running": "IN_PROGRESS", ":key": f"st#IN_PROGRESS#{shard_of(execution_id)}"}
                ),
            )
        seen: list[str] = []
        token: str | None = None
        for page_number in range(10):
            page = executions.list(workflow, None, token, max_results=3, sort=sort)
            seen.extend(execution.id for execution in page.executions)
            # between pages: one listed and one not yet listed execution end
            for execution_id in (expected[page_number * 3], expected[min(11, page_number * 3 + 4)]):
                executions.finish(execution_id, "order", ExecutionStatus.SUCCEEDED, T0)
            if page.next_token is None:
                break
            token = page.next_token
        assert seen == expected, (workflow, sort)


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
