"""The offline harness (eventual_nb/runtime/aws/harness.py) that stands in for Lambda's pollers and Scheduler.

The handlers are tiny real functions written here; the queues, bus, rules and schedule group are the
exported template's, deployed into moto's server (`tests/aws_support.py`). Never real AWS.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from eventual_nb.engine.history import TimerCompleted
from eventual_nb.runtime.aws.clients import AwsClients, TimerClient, event_to_dict
from eventual_nb.runtime.aws.harness import (
    ENVELOPE_KEYS,
    Harness,
    HarnessNotIdle,
    ManualClock,
)
from tests import aws_support
from tests.aws_support import Stack, client_kwargs, deploy_stack, reset_moto

# the shared fixtures (module-scoped moto server, dummy credentials), bound under their fixture names
moto_endpoint = aws_support.moto_endpoint
dummy_credentials = aws_support.dummy_credentials

Handler = Callable[[dict[str, Any], Any], "dict[str, Any] | None"]


@pytest.fixture
def stack(moto_endpoint: str, dummy_credentials: None) -> Stack:
    reset_moto(moto_endpoint)
    return deploy_stack(moto_endpoint, subscriptions=[{"name": "audit", "events": ["Paid"]}])


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime.now(UTC))


@pytest.fixture
def clients(moto_endpoint: str, stack: Stack, clock: ManualClock) -> AwsClients:
    # a one-second hop: pending timers re-check the manual clock about once a real second
    return AwsClients.from_environment(
        client_kwargs(moto_endpoint), environ=stack.environment, clock=clock, timer_hop_seconds=1
    )


def bodies(event: dict[str, Any]) -> list[Any]:
    return [json.loads(record["body"]) for record in event["Records"]]


def send(clients: AwsClients, url: str, body: Any, **extra: Any) -> None:
    clients.client("sqs").send_message(QueueUrl=url, MessageBody=json.dumps(body), **extra)


def depth(clients: AwsClients, url: str) -> int:
    names = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    attributes = clients.client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return sum(int(attributes[name]) for name in names)


# ------------------------------------------------------------------------------------- batch failures


def test_batch_item_failures_are_redelivered_and_successes_deleted(clients: AwsClients, clock: ManualClock) -> None:
    seen: list[tuple[str, str]] = []

    def timer(event: dict[str, Any], context: Any) -> dict[str, Any]:
        failures = []
        for record in event["Records"]:
            name = json.loads(record["body"])["n"]
            seen.append((name, record["attributes"]["ApproximateReceiveCount"]))
            if name == "b" and record["attributes"]["ApproximateReceiveCount"] == "1":
                failures.append({"itemIdentifier": record["messageId"]})
        assert context.get_remaining_time_in_millis() > 0
        return {"batchItemFailures": failures}

    url = clients.settings.timer_queue_url
    for name in "abc":
        send(clients, url, {"n": name})
    report = Harness(clients, {"timer": timer}, clock).run_until_idle()
    assert sorted(seen) == [("a", "1"), ("b", "1"), ("b", "2"), ("c", "1")]
    assert [len(call.failed) for call in report.calls("timer")] == [1, 0]
    assert report.errors == []
    assert depth(clients, url) == 0


def test_a_raising_handler_or_a_bad_identifier_fails_the_whole_batch(clients: AwsClients, clock: ManualClock) -> None:
    calls: list[list[str]] = []

    def timer(event: dict[str, Any], context: Any) -> dict[str, Any] | None:
        calls.append([body["n"] for body in bodies(event)])
        if len(calls) == 1:
            raise RuntimeError("boom")
        if len(calls) == 2:
            return {"batchItemFailures": [{"itemIdentifier": "not-in-this-batch"}]}
        return None

    url = clients.settings.timer_queue_url
    send(clients, url, {"n": "a"})
    send(clients, url, {"n": "b"})
    report = Harness(clients, {"timer": timer}, clock).run_until_idle()
    assert [sorted(call) for call in calls] == [["a", "b"]] * 3
    assert [type(error).__name__ for _, error in report.errors] == ["RuntimeError", "EventualError"]
    assert depth(clients, url) == 0


def test_fifo_a_failed_message_fails_the_rest_of_its_group(clients: AwsClients, clock: ManualClock) -> None:
    deliveries: list[list[tuple[str, str]]] = []

    def orchestrator(event: dict[str, Any], context: Any) -> dict[str, Any]:
        batch = [
            (record["attributes"]["MessageGroupId"], json.loads(record["body"])["n"]) for record in event["Records"]
        ]
        deliveries.append(batch)
        # a2 fails once; the handler lists only a2, yet a3 must come back too (and after a2)
        failed = [
            {"itemIdentifier": record["messageId"]}
            for record in event["Records"]
            if json.loads(record["body"])["n"] == "a2" and len(deliveries) == 1
        ]
        return {"batchItemFailures": failed}

    url = clients.settings.workflow_queue_url
    for group, name in (("A", "a1"), ("B", "b1"), ("A", "a2"), ("B", "b2"), ("A", "a3")):
        send(clients, url, {"n": name}, MessageGroupId=group, MessageDeduplicationId=name)
    report = Harness(clients, {"orchestrator": orchestrator}, clock).run_until_idle()
    assert deliveries[0] == [("A", "a1"), ("B", "b1"), ("A", "a2"), ("B", "b2"), ("A", "a3")]
    assert deliveries[1:] == [[("A", "a2"), ("A", "a3")]]
    first = report.calls("orchestrator")[0]
    assert len(first.failed) == 2  # a2 as reported, a3 by the FIFO group rule
    assert depth(clients, url) == 0


def test_sqs_records_have_lambdas_shape(clients: AwsClients, clock: ManualClock) -> None:
    records: list[dict[str, Any]] = []

    def orchestrator(event: dict[str, Any], context: Any) -> None:
        records.extend(event["Records"])

    clients.start_child("order/o-1")
    Harness(clients, {"orchestrator": orchestrator}, clock).run_until_idle()
    (record,) = records
    assert json.loads(record["body"]) == {"type": "start", "execution_id": "order/o-1"}
    assert record["attributes"]["MessageGroupId"] == "order/o-1"
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"].startswith("arn:aws:sqs:us-east-1:")
    assert record["eventSourceARN"].endswith("-workflow.fifo")
    assert record["messageId"]
    assert record["receiptHandle"]
    assert len(record["md5OfBody"]) == 32


def test_a_message_that_always_fails_ends_in_the_dead_letter_queue(clients: AwsClients, clock: ManualClock) -> None:
    calls: list[int] = []

    def timer(event: dict[str, Any], context: Any) -> dict[str, Any]:
        calls.append(1)
        return {"batchItemFailures": [{"itemIdentifier": record["messageId"]} for record in event["Records"]]}

    send(clients, clients.settings.timer_queue_url, {"n": "poison"})
    harness = Harness(clients, {"timer": timer}, clock)
    with pytest.raises(HarnessNotIdle):
        harness.run_until_idle(max_rounds=3)
    harness.run_until_idle(max_rounds=20)
    assert len(calls) == 5  # the template's maxReceiveCount for plumbing queues
    dead = clients.client("sqs").get_queue_url(QueueName=clients.settings.timer_queue_url.rsplit("/", 1)[1] + "-dlq")
    assert depth(clients, dead["QueueUrl"]) == 1


# ------------------------------------------------------------------------------------------- timers


def timer_plumbing(clients: AwsClients, clock: ManualClock, arrived: list[dict[str, Any]]) -> dict[str, Handler]:
    """The three timer functions as the runtime's handlers would be: forwarder, timer, orchestrator."""

    def schedule(event: dict[str, Any], context: Any) -> None:
        clients.timers.requeue(event, clock())

    def timer(event: dict[str, Any], context: Any) -> None:
        for body in bodies(event):
            clients.timers.relay(body, clients.workflow_queue, clock())

    def orchestrator(event: dict[str, Any], context: Any) -> None:
        arrived.extend(bodies(event))

    return {"schedule": schedule, "timer": timer, "orchestrator": orchestrator}


def test_a_short_timer_hops_through_the_queue_until_the_clock_reaches_it(
    clients: AwsClients, clock: ManualClock
) -> None:
    arrived: list[dict[str, Any]] = []
    harness = Harness(clients, timer_plumbing(clients, clock, arrived), clock)
    due = clock() + timedelta(minutes=5)
    event = event_to_dict(TimerCompleted(seq=0, timestamp=due))
    assert clients.timers.schedule("order/o-1", "0", due, event, clock()) == "sqs"
    early = harness.run_until_idle(wait_seconds=2.5)
    assert arrived == []
    assert early.calls("timer")
    late = harness.advance(timedelta(minutes=5), wait_seconds=30)
    assert arrived == [{"type": "event", "execution_id": "order/o-1", "event": event}]
    assert late.pending == 0


def test_schedules_fire_by_the_harness_clock_through_the_forwarder(clients: AwsClients, clock: ManualClock) -> None:
    arrived: list[dict[str, Any]] = []
    harness = Harness(clients, timer_plumbing(clients, clock, arrived), clock)
    due = clock() + timedelta(hours=1)
    event = event_to_dict(TimerCompleted(seq=2, timestamp=due))
    clients.schedule_timer("order/o-1", "2", due, event)
    assert harness.run_until_idle().fired_schedules == []
    assert harness.advance(timedelta(minutes=59)).fired_schedules == []
    report = harness.advance(timedelta(minutes=1, seconds=1), wait_seconds=30)
    assert len(report.fired_schedules) == 1
    assert arrived == [{"type": "event", "execution_id": "order/o-1", "event": event}]
    scheduler = clients.client("scheduler")
    assert scheduler.list_schedules(GroupName=clients.settings.schedule_group)["Schedules"] == []


def test_a_schedule_may_target_a_queue_directly(clients: AwsClients, clock: ManualClock) -> None:
    arrived: list[dict[str, Any]] = []
    sqs = clients.client("sqs")
    timer_arn = sqs.get_queue_attributes(QueueUrl=clients.settings.timer_queue_url, AttributeNames=["QueueArn"])
    settings = clients.settings
    direct = TimerClient(
        sqs,
        settings.timer_queue_url,
        clients.client("scheduler"),
        settings.schedule_group,
        settings.scheduler_role_arn,
        timer_arn["Attributes"]["QueueArn"],
        hop_seconds=1,
    )
    due = clock() + timedelta(days=2)
    direct.schedule("order/o-9", "timeout", due, {"type": "WorkflowFailed"}, clock())
    handlers = timer_plumbing(clients, clock, arrived)
    del handlers["schedule"]
    report = Harness(clients, handlers, clock).advance(timedelta(days=2, seconds=1), wait_seconds=30)
    assert len(report.fired_schedules) == 1
    assert arrived == [{"type": "event", "execution_id": "order/o-9", "event": {"type": "WorkflowFailed"}}]


# --------------------------------------------------------------------------------------- subscriptions


def test_subscription_deliveries_carry_a_complete_eventbridge_envelope(clients: AwsClients, clock: ManualClock) -> None:
    records: list[dict[str, Any]] = []

    def subscription(event: dict[str, Any], context: Any) -> None:
        records.extend(event["Records"])

    harness = Harness(clients, {"subscription": subscription}, clock)
    clients.publish([{"name": "Paid", "event": {"amount": 5}}, {"name": "Other", "event": {}}])
    harness.run_until_idle()
    (record,) = records
    envelope = json.loads(record["body"])
    assert tuple(envelope) == ENVELOPE_KEYS
    assert envelope["account"] == "123456789012"  # moto leaves it out; the harness adds it
    assert (envelope["source"], envelope["detail-type"], envelope["detail"]) == ("harness-svc", "Paid", {"amount": 5})
    assert envelope["version"] == "0"
    assert envelope["region"] == "us-east-1"
    assert envelope["resources"] == []
    # the worker tells its subscriptions apart by the queue ARN, through EVENTUAL_SUBSCRIPTION_QUEUES
    assert clients.settings.subscription_queues[record["eventSourceARN"]] == "audit"
