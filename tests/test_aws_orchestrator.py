"""The AWS orchestrator (eventual_nb/runtime/aws/orchestrator.py) against moto's DynamoDB server.

The tables are the exported template's (tests/aws_support.py). What the orchestrator dispatches goes to
`RecordingDispatch`, a stand-in for SQS/Scheduler/EventBridge that keeps what it was asked to send; the
`Driver` below plays those messages back as SQS FIFO batches, runs the activities' results back as
events and fires timers by a manual clock — the part of the harness these tests need. Every test ends by
comparing history with the same workflow on a TestEnvironment: the engine is shared, so the event types
must match.

Never real AWS: moto's server on 127.0.0.1, explicit endpoint, dummy credentials (tests/aws_support.py).
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

import eventual_nb as ev
from eventual_nb.engine.history import ActivitySucceeded, HistoryEvent
from eventual_nb.runtime.aws.orchestrator import Orchestrator, event_key
from eventual_nb.runtime.aws.stores import ExecutionStore, HistoryStore
from eventual_nb.runtime.base import ExecutionStatus
from tests import aws_support
from tests.aws_support import aws_client, require_local, reset_moto, template_tables

# the shared fixtures (module-scoped moto server on 127.0.0.1, dummy credentials)
moto_endpoint = aws_support.moto_endpoint
dummy_credentials = aws_support.dummy_credentials

SERVICE = ev.Service("tests-aws-orchestrator")
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


@ev.activity
async def greet(name: str) -> str:
    return f"hello {name}"


@ev.activity
async def shout(text: str) -> str:
    return text.upper()


@ev.workflow
async def two_steps(name: str) -> str:
    text = await greet(name)
    return await shout(text)


@ev.workflow
async def nap(x: int) -> int:
    await ev.sleep("5s")
    return x + 1


@ev.workflow
async def family(name: str) -> str:
    text = await greet(name)
    await ev.sleep("3s")
    woke = await nap(41)
    return f"{text} {woke}"


#: the activities' code, run by the driver on the message's input (what the activity worker would do)
IMPLEMENTATIONS: dict[str, Callable[..., Any]] = {
    "greet": lambda name: f"hello {name}",
    "shout": lambda text: text.upper(),
}


# --------------------------------------------------------------------------------------- plumbing


class RecordingDispatch:
    """Keeps what the orchestrator asks AWS to do; the driver delivers it (a stand-in for SQS and friends)."""

    def __init__(self) -> None:
        self.inbox: list[dict[str, Any]] = []
        self.activities: list[dict[str, Any]] = []
        self.timers: dict[tuple[str, str], tuple[datetime, dict[str, Any]]] = {}
        self.published: list[tuple[list[dict[str, Any]], str | None]] = []
        self.logs: list[tuple[str, Any]] = []
        self.sent_activities: list[tuple[str, int, int]] = []

    def send_workflow_event(self, execution_id: str, event: dict[str, Any]) -> None:
        self.inbox.append({"type": "event", "execution_id": execution_id, "event": event})

    def start_child(self, execution_id: str) -> None:
        self.inbox.append({"type": "start", "execution_id": execution_id})

    def send_activities(self, messages: list[dict[str, Any]]) -> None:
        self.activities.extend(messages)
        self.sent_activities.extend(
            (message["execution_id"], message["seq"], message["attempt"]) for message in messages
        )

    def schedule_timer(self, execution_id: str, key: str, due: datetime, event: dict[str, Any]) -> None:
        self.timers[(execution_id, key)] = (due, event)

    def cancel_timer(self, execution_id: str, key: str) -> None:
        self.timers.pop((execution_id, key), None)

    def publish(self, envelopes: list[dict[str, Any]], source: str | None) -> None:
        self.published.append((envelopes, source))

    def write_logs(self, execution_id: str, entries: list[Any]) -> None:
        self.logs.extend((execution_id, entry) for entry in entries)


class CrashingDispatch(RecordingDispatch):
    """Dies (raises) the first time it is asked to send the activity of `seq`: a crash after the commit."""

    def __init__(self, seq: int) -> None:
        super().__init__()
        self.crash_seq: int | None = seq

    def send_activities(self, messages: list[dict[str, Any]]) -> None:
        if any(message["seq"] == self.crash_seq for message in messages):
            self.crash_seq = None
            raise ConnectionError("the container died between the commit and the dispatch")
        super().send_activities(messages)


_message_ids = itertools.count(1)


def sqs_records(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """SQS FIFO records as Lambda gets them (the fields the orchestrator reads)."""
    return [
        {
            "messageId": f"m-{next(_message_ids)}",
            "receiptHandle": "rh",
            "body": json.dumps(message),
            "attributes": {"MessageGroupId": message["execution_id"]},
            "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:workflow.fifo",
        }
        for message in messages
    ]


class Driver:
    """Delivers the recorded messages as batches of <= 10, runs activities, fires timers by a manual clock."""

    def __init__(self, orchestrator: Orchestrator, dispatch: RecordingDispatch, *, duplicate: bool = False) -> None:
        self.orchestrator = orchestrator
        self.dispatch = dispatch
        self.now = T0
        self.duplicate = duplicate
        self.failed_batches = 0
        self.redelivered: set[str] = set()

    def deliver(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One batch; returns the messages reported as failed (in order)."""
        records = sqs_records(messages)
        response = self.orchestrator.handle_batch({"Records": records}, None)
        failed = {item["itemIdentifier"] for item in response["batchItemFailures"]}
        return [message for message, record in zip(messages, records, strict=True) if record["messageId"] in failed]

    def run(self, max_rounds: int = 200) -> None:
        dispatch = self.dispatch
        for _ in range(max_rounds):
            if dispatch.inbox:
                batch, dispatch.inbox = dispatch.inbox[:10], dispatch.inbox[10:]
                if self.duplicate:
                    batch = [copy for message in batch[:5] for copy in (message, message)] + batch[5:]
                    dispatch.inbox = batch[10:] + dispatch.inbox
                    batch = batch[:10]
                failed = self.deliver(batch)
                if failed:
                    self.failed_batches += 1
                    dispatch.inbox = failed + dispatch.inbox
                elif self.duplicate:  # and each message once more, later, in another batch
                    again = [message for message in batch if json.dumps(message) not in self.redelivered]
                    self.redelivered.update(json.dumps(message) for message in again)
                    dispatch.inbox.extend(again)
                continue
            if dispatch.activities:
                message = dispatch.activities.pop(0)
                result = IMPLEMENTATIONS[message["name"]](**message["input"])
                done = ActivitySucceeded(seq=message["seq"], timestamp=self.now, result=result, attempts=1)
                dispatch.send_workflow_event(message["execution_id"], done.model_dump(mode="json"))
                continue
            if dispatch.timers:
                (execution_id, key), (due, event) = min(dispatch.timers.items(), key=lambda item: item[1][0])
                self.now = max(self.now, due)
                del dispatch.timers[(execution_id, key)]
                dispatch.send_workflow_event(execution_id, event)
                continue
            return
        raise AssertionError("the driver did not become idle")


@pytest.fixture
def dynamodb(moto_endpoint: str, dummy_credentials: None) -> Any:
    reset_moto(moto_endpoint)
    client = aws_client(require_local(moto_endpoint), "dynamodb")
    for properties in template_tables().values():
        client.create_table(**properties)
    return client


def stores_for(client: Any) -> tuple[ExecutionStore, HistoryStore]:
    names = {name: properties["TableName"] for name, properties in template_tables().items()}
    return ExecutionStore(client, names["ExecutionsTable"]), HistoryStore(client, names["HistoryTable"])


def start(stores: tuple[ExecutionStore, HistoryStore], dispatch: RecordingDispatch, workflow: str, value: Any) -> str:
    """What the API does: create the record, then send the start message."""
    execution_id = f"{workflow}/run-1"
    assert stores[0].create(execution_id, workflow, value, T0, service=SERVICE.name)
    dispatch.start_child(execution_id)
    return execution_id


async def reference_types(workflow: Any, value: Any) -> tuple[list[str], Any]:
    """The same workflow on a TestEnvironment: its history's event types and its result."""
    async with ev.testing.TestEnvironment(service=SERVICE, start=T0) as env:
        handle = await workflow.start(value)
        await env.advance("1h")
        result = await handle.result()
        return [event.type for event in await env.get_execution_history(handle.id)], result


def types_of(history: list[HistoryEvent]) -> list[str]:
    return [event.type for event in history]


def assert_each_step_once(history: list[HistoryEvent]) -> None:
    keys = Counter((event.type, event.seq) for event in history if event.seq is not None)
    assert all(count == 1 for count in keys.values()), keys
    assert len({event_key(event) for event in history}) == len(history)


# ------------------------------------------------------------------------------------------ tests


async def test_two_activities_run_to_success_like_the_test_environment(dynamodb: Any) -> None:
    stores = stores_for(dynamodb)
    dispatch = RecordingDispatch()
    orchestrator = Orchestrator(stores, dispatch, [SERVICE])
    execution_id = start(stores, dispatch, "two_steps", "ada")
    Driver(orchestrator, dispatch).run()

    history = stores[1].read(execution_id)
    expected, result = await reference_types(two_steps, "ada")
    assert types_of(history) == expected
    assert_each_step_once(history)
    record = stores[0].get(execution_id)
    assert record.status == ExecutionStatus.SUCCEEDED
    assert record.result == result == "HELLO ADA"
    assert dispatch.sent_activities == [(execution_id, 0, 1), (execution_id, 1, 1)]
    # warm: after the first turn, every turn replayed nothing and read only the head
    assert orchestrator.stats.replays == 0
    assert orchestrator.stats.warm_hits == orchestrator.stats.turns - 1


async def test_duplicate_deliveries_leave_each_step_once(dynamodb: Any) -> None:
    stores = stores_for(dynamodb)
    dispatch = RecordingDispatch()
    orchestrator = Orchestrator(stores, dispatch, [SERVICE])
    execution_id = start(stores, dispatch, "two_steps", "bo")
    Driver(orchestrator, dispatch, duplicate=True).run()

    history = stores[1].read(execution_id)
    assert types_of(history) == (await reference_types(two_steps, "bo"))[0]
    assert_each_step_once(history)
    assert stores[0].get(execution_id).status == ExecutionStatus.SUCCEEDED
    # a cold orchestrator (another container) given an old duplicate changes nothing
    cold = Orchestrator(stores, RecordingDispatch(), [SERVICE])
    started_again = {"type": "start", "execution_id": execution_id}
    assert Driver(cold, RecordingDispatch()).deliver([started_again]) == []
    assert stores[1].read(execution_id) == history


async def test_a_stale_turn_loses_the_race_and_fails_with_the_rest_of_its_group(
    dynamodb: Any, moto_endpoint: str
) -> None:
    stores = stores_for(dynamodb)
    dispatch = RecordingDispatch()
    stale = Orchestrator(stores, dispatch, [SERVICE])
    execution_id = start(stores, dispatch, "two_steps", "cy")
    driver = Driver(stale, dispatch)
    assert driver.deliver(dispatch.inbox) == []
    dispatch.inbox.clear()
    (activity,) = dispatch.activities
    dispatch.activities.clear()
    result = ActivitySucceeded(seq=0, timestamp=T0, result="hello cy", attempts=1).model_dump(mode="json")
    first = {"type": "event", "execution_id": execution_id, "event": result}
    second = {"type": "start", "execution_id": execution_id}  # any later message of the same group

    # another invocation (its own container and client) gets the same message and commits first
    other_dispatch = RecordingDispatch()
    other = Orchestrator(stores_for(aws_client(moto_endpoint, "dynamodb")), other_dispatch, [SERVICE])
    raced: list[list[dict[str, Any]]] = []

    def race(params: dict[str, Any], **_: Any) -> None:
        if not raced and params["TableName"] == stores[1].table:  # right before the stale turn's commit
            raced.append(Driver(other, other_dispatch).deliver([first]))

    dynamodb.meta.events.register("before-parameter-build.dynamodb.PutItem", race)
    try:
        failed = driver.deliver([first, second])
    finally:
        dynamodb.meta.events.unregister("before-parameter-build.dynamodb.PutItem", race)
    assert raced == [[]]
    assert failed == [first, second]
    assert stale.stats.conflicts == 1
    assert [message["seq"] for message in other_dispatch.activities] == [1]

    # redelivered, the messages replay on fresh state: the winner's events are there, nothing twice
    assert driver.deliver([first, second]) == []
    dispatch.activities.extend(other_dispatch.activities)
    driver.run()
    history = stores[1].read(execution_id)
    assert types_of(history) == (await reference_types(two_steps, "cy"))[0]
    assert_each_step_once(history)
    assert stores[0].get(execution_id).status == ExecutionStatus.SUCCEEDED
    assert activity["seq"] == 0


@pytest.mark.parametrize("new_container", [False, True])
async def test_a_crash_between_commit_and_dispatch_is_repaired_by_the_next_turn(
    dynamodb: Any, new_container: bool
) -> None:
    stores = stores_for(dynamodb)
    dispatch = CrashingDispatch(seq=1)
    orchestrator = Orchestrator(stores, dispatch, [SERVICE])
    execution_id = start(stores, dispatch, "two_steps", "di")
    driver = Driver(orchestrator, dispatch)
    assert driver.deliver(dispatch.inbox) == []
    dispatch.inbox.clear()
    (message,) = dispatch.activities
    dispatch.activities.clear()
    done = ActivitySucceeded(seq=0, timestamp=T0, result="hello di", attempts=1)
    delivered = {"type": "event", "execution_id": execution_id, "event": done.model_dump(mode="json")}
    assert driver.deliver([delivered]) == [delivered]  # committed, then died before sending activity 1
    assert types_of(stores[1].read(execution_id))[-2:] == ["ActivitySucceeded", "ActivityScheduled"]
    assert dispatch.sent_activities == [(execution_id, 0, 1)]

    if new_container:
        driver.orchestrator = Orchestrator(stores, dispatch, [SERVICE])
    assert driver.deliver([delivered]) == []  # the redelivery finds the event committed and re-dispatches
    assert dispatch.sent_activities == [(execution_id, 0, 1), (execution_id, 1, 1)]
    assert driver.orchestrator.stats.redispatched_actions == 1
    driver.run()
    history = stores[1].read(execution_id)
    assert types_of(history) == (await reference_types(two_steps, "di"))[0]
    assert_each_step_once(history)
    assert stores[0].get(execution_id).result == "HELLO DI"
    assert message["seq"] == 0


async def test_timers_and_a_child_workflow_like_the_test_environment(dynamodb: Any) -> None:
    stores = stores_for(dynamodb)
    dispatch = RecordingDispatch()
    orchestrator = Orchestrator(stores, dispatch, [SERVICE])
    execution_id = start(stores, dispatch, "family", "eve")
    driver = Driver(orchestrator, dispatch)
    driver.run()

    history = stores[1].read(execution_id)
    expected, result = await reference_types(family, "eve")
    assert types_of(history) == expected
    assert_each_step_once(history)
    parent = stores[0].get(execution_id)
    assert parent.status == ExecutionStatus.SUCCEEDED
    assert parent.result == result == "hello eve 42"
    (child_id,) = [event.child_id for event in history if event.type == "ChildWorkflowScheduled"]
    child = stores[0].get(child_id)
    assert (child.status, child.result, child.parent) == (ExecutionStatus.SUCCEEDED, 42, execution_id)
    child_history = stores[1].read(child_id)
    assert types_of(child_history) == [
        "WorkflowStarted",
        "TimerScheduled",
        "TimerCompleted",
        "WorkflowSucceeded",
    ]
    assert driver.now == T0.replace(second=8)  # 3 s, then the child's 5 s, on the manual clock
    assert not dispatch.timers


async def test_unknown_and_ended_executions_drop_their_messages(dynamodb: Any) -> None:
    stores = stores_for(dynamodb)
    dispatch = RecordingDispatch()
    orchestrator = Orchestrator(stores, dispatch, [SERVICE])
    driver = Driver(orchestrator, dispatch)
    assert driver.deliver([{"type": "start", "execution_id": "two_steps/nobody"}]) == []
    assert stores[1].read("two_steps/nobody") == []
    bad = sqs_records([{"type": "start", "execution_id": "x"}])[0]
    bad["body"] = "{not json"
    response = orchestrator.handle_batch({"Records": [bad]}, None)
    assert response == {"batchItemFailures": [{"itemIdentifier": bad["messageId"]}]}
