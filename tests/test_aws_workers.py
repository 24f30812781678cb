"""The AWS workers (eventual_nb/runtime/aws/workers.py) end to end, on moto's server, through the Harness.

The stack is the exported template deployed into moto (tests/aws_support.py); the harness stands in for
Lambda's pollers and the Scheduler; the orchestrator, the activity worker, the timer relay, the schedule
forwarder and the subscription worker are the real ones. Histories are compared with the same workflow
run in a TestEnvironment (the engine is shared, so the event types must match).

Never real AWS: moto's server on 127.0.0.1, explicit endpoint, dummy credentials.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import eventual_nb as ev
from eventual_nb.engine.history import ActivitySucceeded, HistoryEvent, SignalReceived
from eventual_nb.runtime.aws.clients import AwsClients, event_to_dict
from eventual_nb.runtime.aws.harness import Harness, ManualClock
from eventual_nb.runtime.aws.orchestrator import Orchestrator
from eventual_nb.runtime.aws.stores import ExecutionStore, HistoryStore
from eventual_nb.runtime.aws.workers import ActivityWorker, SubscriptionWorker, schedule_forwarder, timer_handler
from eventual_nb.runtime.base import ExecutionStatus
from eventual_nb.timeline import build_timeline
from tests import aws_support
from tests.aws_support import Stack, client_kwargs, deploy_stack, reset_moto

moto_endpoint = aws_support.moto_endpoint
dummy_credentials = aws_support.dummy_credentials

SERVICE = ev.Service("tests-aws-workers")

#: side effects of the activities and the subscription, by key (cleared per test)
CALLS: Counter[str] = Counter()
RECEIVED: list[Any] = []


class Paid(ev.Event):
    order: str


go = ev.signal("go")


@ev.activity
async def greet(name: str) -> str:
    CALLS["greet"] += 1
    return f"hello {name}"


@ev.activity
def shout(text: str) -> str:  # a plain def: runs in the worker loop's thread pool
    CALLS["shout"] += 1
    return text.upper()


@ev.activity(retry=ev.RetryPolicy(max_attempts=3, initial_interval="1s", backoff=1))
async def flaky(key: str) -> str:
    CALLS[key] += 1
    if CALLS[key] < 3:
        raise ConnectionError(f"attempt {CALLS[key]} of {key} fails")
    return f"{key} after {CALLS[key]}"


@ev.activity(timeout="1s", retry=ev.RetryPolicy(max_attempts=1))
async def slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "woke"


@ev.subscription(Paid, name="audit")
def audit(event: Paid) -> None:
    RECEIVED.append(event)


@ev.workflow
async def journey(name: str) -> str:
    text = await greet(name)
    await ev.sleep("2s")
    word = await go.expect()
    loud = await shout(f"{text} {word}")
    await ev.publish(Paid(order=name))
    return loud


@ev.workflow
async def persistent(key: str) -> str:
    return await flaky(key)


@ev.workflow
async def once(name: str) -> str:
    return await greet(name)


@ev.workflow
async def impatient(seconds: float) -> str:
    try:
        return await slow(seconds)
    except ev.Timeout as exc:
        return f"timed out: {type(exc).__name__}"


#: tokens handed to `deferred`'s callback
TOKENS: list[str] = []


@ev.activity
async def deferred(order: str) -> str:
    return ev.async_result(TOKENS.append)


@ev.workflow
async def waits_outside(order: str) -> str:
    try:
        return await deferred(order)
    except ev.ActivityFailed as exc:
        return f"{exc.error}: {exc.message}"


@ev.workflow
async def long_nap(x: int) -> int:
    await ev.sleep("20m")
    return x + 1


# ------------------------------------------------------------------------------------------ plumbing


@dataclass
class Rig:
    stack: Stack
    clock: ManualClock
    clients: AwsClients
    stores: tuple[ExecutionStore, HistoryStore]
    orchestrator: Orchestrator
    activities: ActivityWorker
    subscriptions: SubscriptionWorker
    harness: Harness

    def start(self, workflow: str, value: Any, name: str = "run-1") -> str:
        """What the API does: the record, then the start message."""
        execution_id = f"{workflow}/{name}"
        assert self.stores[0].create(execution_id, workflow, value, self.clock(), service=SERVICE.name)
        self.clients.start_child(execution_id)
        return execution_id

    def history(self, execution_id: str) -> list[HistoryEvent]:
        return self.stores[1].read(execution_id)


@pytest.fixture
def rig(moto_endpoint: str, dummy_credentials: None) -> Rig:
    reset_moto(moto_endpoint)
    CALLS.clear()
    RECEIVED.clear()
    stack = deploy_stack(
        moto_endpoint,
        service=SERVICE.name,
        subscriptions=[{"name": "audit", "events": ["Paid"]}],
    )
    clock = ManualClock(datetime.now(UTC))
    clients = AwsClients.from_environment(
        client_kwargs(moto_endpoint), environ=stack.environment, clock=clock, timer_hop_seconds=1
    )
    settings = clients.settings
    dynamodb = clients.client("dynamodb")
    stores = (ExecutionStore(dynamodb, settings.executions_table), HistoryStore(dynamodb, settings.history_table))
    orchestrator = Orchestrator(stores, clients, [SERVICE])
    activities = ActivityWorker(stores, clients, [SERVICE], signing_key=b"test-signing-key-0123456789")
    activities.keep_reports = True
    subscriptions = SubscriptionWorker(clients, [SERVICE])
    harness = Harness(
        clients,
        {
            "orchestrator": orchestrator.handle_batch,
            "activity": activities.handle_batch,
            "timer": timer_handler(clients),
            "schedule": schedule_forwarder(clients),
            "subscription": subscriptions.handle_batch,
        },
        clock,
    )
    return Rig(stack, clock, clients, stores, orchestrator, activities, subscriptions, harness)


def types_of(history: list[HistoryEvent]) -> list[str]:
    return [event.type for event in history]


def run(rig: Rig, wait_seconds: float = 0.0) -> None:
    report = rig.harness.run_until_idle(wait_seconds=wait_seconds)
    assert not report.errors, report.errors


def run_until(rig: Rig, done: Callable[[], bool], wait_seconds: float = 20.0) -> None:
    """Run until `done()`, again if needed: the harness's idle check can miss a delayed message that became
    visible between its last receive and its `pending()` count (reported as a harness bug)."""
    for _ in range(5):
        run(rig, wait_seconds=wait_seconds)
        if done():
            return
    raise AssertionError("the stack did not get there")


async def reference(workflow: Any, value: Any, signal: Any = None) -> tuple[list[str], Any]:
    """The same workflow in a TestEnvironment (timers first, then the signal): event types and result."""
    async with ev.testing.TestEnvironment(service=SERVICE) as env:
        handle = await workflow.start(value)
        await env.advance("1h")
        if signal is not None:
            await go.send(handle, signal)
            await env.advance("1s")
        result = await handle.result()
        return [event.type for event in await env.get_execution_history(handle.id)], result


# ---------------------------------------------------------------------------------------------- tests


def test_activities_timer_signal_and_subscription_end_to_end(rig: Rig) -> None:
    execution_id = rig.start("journey", "ada")
    run(rig)
    assert types_of(rig.history(execution_id))[-1] == "TimerScheduled"

    rig.clock.advance(5)  # the 2 s timer is due: it hops through the timer queue and is relayed
    run_until(rig, lambda: types_of(rig.history(execution_id))[-1] == "TimerCompleted", wait_seconds=5)

    signal = SignalReceived(timestamp=rig.clock(), signal="go", payload="now", id="signal-1")
    rig.clients.send_workflow_event(execution_id, event_to_dict(signal))
    run(rig)

    history = rig.history(execution_id)
    record = rig.stores[0].get(execution_id)
    assert record.status == ExecutionStatus.SUCCEEDED, types_of(history)
    expected, result = asyncio.run(reference(journey, "ada", "now"))
    assert types_of(history) == expected
    assert record.result == result == "HELLO ADA NOW"
    # the subscription got the published event through bus -> rule -> queue -> worker
    assert RECEIVED[-1] == Paid(order="ada")
    assert CALLS["greet"] == 2
    assert CALLS["shout"] == 2
    actions = Counter(report.action for report in rig.activities.reports)
    assert actions == {"ran": 2}


def test_a_failing_activity_is_retried_and_succeeds_on_the_third_attempt(rig: Rig) -> None:
    execution_id = rig.start("persistent", "k1")
    # two 1 s backoffs are real SQS delays
    run_until(rig, lambda: rig.stores[0].get(execution_id).status != ExecutionStatus.IN_PROGRESS)

    history = rig.history(execution_id)
    assert rig.stores[0].get(execution_id).status == ExecutionStatus.SUCCEEDED, types_of(history)
    (succeeded,) = [event for event in history if isinstance(event, ActivitySucceeded)]
    assert succeeded.attempts == 3
    assert succeeded.result == "k1 after 3"
    assert CALLS["k1"] == 3
    assert [report.retry_delay for report in rig.activities.reports] == [1, 1, None]
    assert types_of(history) == asyncio.run(reference(persistent, "k2"))[0]
    # each retried failure is noted in the execution's logs, so its timeline draws every attempt
    logs = rig.clients.logs.read(execution_id)
    notes = [entry.message for entry in logs if entry.source == "flaky"]
    assert notes[0].startswith("attempt 1 of activity 'flaky' (seq 0) failed: ConnectionError: attempt 1 of k1 fails; ")
    call = next(span for span in build_timeline(history, logs=logs).spans if span.kind == "activity")
    assert [(part.label, part.outcome) for part in call.parts] == [
        ("attempt 1", "failed"),
        ("backoff before attempt 2", "backoff"),
        ("attempt 2", "failed"),
        ("backoff before attempt 3", "backoff"),
        ("attempt 3", "succeeded"),
    ]


def test_a_duplicate_activity_message_runs_the_activity_once(rig: Rig) -> None:
    execution_id = rig.start("once", "bo")
    # only the orchestrator first: the activity message waits on its queue
    Harness(rig.clients, {"orchestrator": rig.orchestrator.handle_batch}, rig.clock).run_until_idle()
    sqs = rig.clients.client("sqs")
    url = rig.clients.settings.activity_queue_url
    (message,) = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    body = json.loads(message["Body"])
    rig.clients.send_activity(body)  # a second copy: SQS delivers at least once
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0)
    run(rig)

    assert CALLS["greet"] == 1
    assert sorted(report.action for report in rig.activities.reports) == ["duplicate", "ran"]
    history = rig.history(execution_id)
    assert types_of(history) == ["WorkflowStarted", "ActivityScheduled", "ActivitySucceeded", "WorkflowSucceeded"]
    assert rig.stores[0].get(execution_id).result == "hello bo"


def test_a_long_timer_goes_through_the_scheduler_and_the_forwarder(rig: Rig) -> None:
    execution_id = rig.start("long_nap", 41)
    run(rig)
    scheduler = rig.clients.client("scheduler")
    group = rig.clients.settings.schedule_group
    assert len(scheduler.list_schedules(GroupName=group)["Schedules"]) == 1

    report = rig.harness.advance(20 * 60 + 5)
    assert len(report.fired_schedules) == 1
    run_until(rig, lambda: rig.stores[0].get(execution_id).status != ExecutionStatus.IN_PROGRESS, 5)
    record = rig.stores[0].get(execution_id)
    assert (record.status, record.result) == (ExecutionStatus.SUCCEEDED, 42)
    assert types_of(rig.history(execution_id)) == asyncio.run(reference(long_nap, 41))[0]


def test_a_failed_subscription_delivery_is_dead_lettered_with_its_reason_or_reported(rig: Rig) -> None:
    """`audit` has the default RetryPolicy (one attempt): its failed delivery goes to the dead-letter queue
    with the error, and is acknowledged; a record no subscription maps to is reported for redelivery."""
    queue_arn, name = next(iter(rig.clients.settings.subscription_queues.items()))
    assert name == "audit"
    good = {
        "version": "0",
        "id": "e-1",
        "detail-type": "Paid",
        "source": SERVICE.name,
        "account": "123456789012",
        "time": "2025-01-01T00:00:00Z",
        "region": "us-east-1",
        "resources": [],
        "detail": {"order": "o-1"},
    }
    bad = {**good, "detail": {"wrong": True}}  # does not validate as Paid: the handler call fails
    records = [
        {"messageId": "m-1", "receiptHandle": "r-1", "body": json.dumps(good), "eventSourceARN": queue_arn},
        {"messageId": "m-2", "receiptHandle": "r-2", "body": json.dumps(bad), "eventSourceARN": queue_arn},
        {"messageId": "m-3", "receiptHandle": "r-3", "body": json.dumps(good), "eventSourceARN": "arn:unknown"},
    ]
    response = rig.subscriptions.handle_batch({"Records": records}, None)
    assert response == {"batchItemFailures": [{"itemIdentifier": "m-3"}]}
    assert RECEIVED == [Paid(order="o-1")]
    sqs = rig.clients.client("sqs")
    url = sqs.get_queue_url(QueueName=queue_arn.rsplit(":", 1)[-1])["QueueUrl"]
    redrive = json.loads(
        sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])["Attributes"]["RedrivePolicy"]
    )
    dead_url = sqs.get_queue_url(QueueName=redrive["deadLetterTargetArn"].rsplit(":", 1)[-1])["QueueUrl"]
    (letter,) = sqs.receive_message(QueueUrl=dead_url, MessageAttributeNames=["All"], MaxNumberOfMessages=10)[
        "Messages"
    ]
    assert json.loads(letter["Body"]) == bad
    reason = {name: value["StringValue"] for name, value in letter["MessageAttributes"].items()}
    assert reason["eventual_error"] == "ValidationError"
    assert reason["eventual_attempts"] == "1"


def test_an_attempt_past_its_timeout_is_reported_as_timed_out(rig: Rig) -> None:
    execution_id = rig.start("impatient", 30.0)
    run(rig)
    history = rig.history(execution_id)
    assert "ActivityTimedOut" in types_of(history), types_of(history)
    assert rig.stores[0].get(execution_id).result == "timed out: Timeout"


def test_messages_of_ended_executions_and_future_retries_do_not_run(rig: Rig) -> None:
    execution_id = rig.start("once", "cy")
    run(rig)
    assert rig.stores[0].get(execution_id).status == ExecutionStatus.SUCCEEDED
    message = {"execution_id": execution_id, "seq": 0, "attempt": 2, "name": "greet", "input": {"name": "cy"}}
    assert rig.activities.handle_message(dict(message)).action == "ended"
    assert rig.activities.handle_message({**message, "execution_id": "once/nobody"}).action == "unknown"
    report = rig.activities.handle_message({**message, "not_before": rig.clock.now.isoformat()})
    assert report.action == "ended"  # due already: it went on to the execution check
    future = (rig.clock.now + timedelta(days=1)).isoformat()
    report = rig.activities.handle_message({**message, "not_before": future})
    assert (report.action, report.retry_delay) == ("deferred", 900)
    assert CALLS["greet"] == 1


def test_an_async_attempt_without_a_signing_key_fails_and_its_callback_never_runs(rig: Rig) -> None:
    TOKENS.clear()
    keyless = ActivityWorker(rig.stores, rig.clients, [SERVICE], environ={})
    execution_id = rig.start("waits_outside", "o-1")
    run(rig)  # the orchestrator schedules it; the rig's own worker (with a key) would take the message
    message = {"execution_id": execution_id, "seq": 0, "attempt": 2, "name": "deferred", "input": {"order": "o-1"}}
    report = keyless.handle_message({**message, "options": {"retry": {"max_attempts": 3}}})
    assert report.action == "ran"
    assert report.event is not None
    assert report.event.type == "ActivityFailed"
    assert "EVENTUAL_SIGNING_KEY" in report.event.message
    assert len(TOKENS) == 1  # only the rig's worker handed out a token (attempt 1)
    assert rig.stores[0].pending_claim(execution_id, 0, 2) is None  # settled, not waiting
    assert rig.stores[0].pending_claim(execution_id, 0, 1) is not None  # attempt 1 still waits


def test_only_a_fresh_first_delivery_of_a_first_attempt_skips_the_status_read(rig: Rig) -> None:
    """The execution's status is read before an attempt runs, except for the first delivery of a first attempt
    sent a moment ago (the turn that sent it just committed): that read would cost every step a request."""
    execution_id = rig.start("once", "cy")
    run(rig)
    assert rig.stores[0].get(execution_id).status == ExecutionStatus.SUCCEEDED
    reads: list[str] = []
    rig.clients.client("dynamodb").meta.events.register(
        "before-call.dynamodb.GetItem", lambda model, **_: reads.append(model.name)
    )
    now_ms = int(time.time() * 1000)

    def record(seq: int, attempt: int, sent_ms: int, received: int) -> dict[str, Any]:
        message = {
            "execution_id": execution_id,
            "seq": seq,
            "attempt": attempt,
            "name": "greet",
            "input": {"name": "cy"},
        }
        attributes = {"SentTimestamp": str(sent_ms), "ApproximateReceiveCount": str(received)}
        return {"messageId": f"m-{seq}-{attempt}", "body": json.dumps(message), "attributes": attributes}

    rig.activities.reports.clear()
    for stale in (record(7, 1, now_ms, 2), record(8, 1, now_ms - 10_000, 1), record(9, 2, now_ms, 1)):
        assert rig.activities.handle_batch({"Records": [stale]}) == {"batchItemFailures": []}
    assert [report.action for report in rig.activities.reports] == ["ended"] * 3
    assert reads == ["GetItem"] * 3
    reads.clear()
    assert rig.activities.handle_batch({"Records": [record(10, 1, now_ms, 1)]}) == {"batchItemFailures": []}
    assert rig.activities.reports[-1].action == "ran"
    assert reads == []
