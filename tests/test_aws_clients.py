"""The AWS runtime's senders (eventual_nb/runtime/aws/clients.py) against moto's server and the real template.

Each test deploys the exported template into a freshly reset moto (`tests/aws_support.py`), so the
queues, bus, rules and log group are the ones `eventual-nb deploy` creates. Never real AWS: see the guard.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

import eventual_nb as ev
from eventual_nb.engine.history import LogEntry, TimerCompleted
from eventual_nb.runtime.aws.clients import (
    AwsClients,
    AwsSettings,
    TimerClient,
    WorkflowQueue,
    delay_until,
    event_dedup_id,
    event_to_dict,
    group_id,
    log_stream_name,
    schedule_name,
    start_dedup_id,
)
from eventual_nb.serde import NotJsonable, canonical_json, compact_json, input_hash, to_json
from exporter.template import default_source_bus
from tests import aws_support
from tests.aws_support import Stack, client_kwargs, deploy_stack, require_local, reset_moto

# the shared fixtures (module-scoped moto server, dummy credentials), bound under their fixture names
moto_endpoint = aws_support.moto_endpoint
dummy_credentials = aws_support.dummy_credentials

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
SUBSCRIPTIONS = [
    {"name": "audit", "events": ["Paid", "Refunded"]},
    {"name": "partner-feed", "events": ["Paid"], "source": "partner"},
]


def test_the_guard_refuses_anything_but_loopback() -> None:
    for endpoint in (None, "", "https://sqs.us-east-1.amazonaws.com", "http://localhost:5000", "http://0.0.0.0:1"):
        with pytest.raises(pytest.fail.Exception):
            require_local(endpoint)
    assert require_local("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


@pytest.fixture
def stack(moto_endpoint: str, dummy_credentials: None) -> Stack:
    reset_moto(moto_endpoint)
    return deploy_stack(moto_endpoint, subscriptions=SUBSCRIPTIONS)


@pytest.fixture
def clients(moto_endpoint: str, stack: Stack) -> AwsClients:
    return AwsClients.from_environment(client_kwargs(moto_endpoint), environ=stack.environment, clock=lambda: NOW)


def receive_all(sqs: Any, url: str) -> list[dict[str, Any]]:
    """Everything visible on a queue now, deleted as it is read."""
    found: list[dict[str, Any]] = []
    while True:
        messages = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0, MessageSystemAttributeNames=["All"]
        ).get("Messages", [])
        if not messages:
            return found
        for message in messages:
            found.append(message)
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def attribute(sqs: Any, url: str, name: str) -> int:
    return int(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[name])["Attributes"][name])


def subscription_url(clients: AwsClients, name: str) -> str:
    (arn,) = [arn for arn, item in clients.settings.subscription_queues.items() if item == name]
    return str(clients.client("sqs").get_queue_url(QueueName=arn.rsplit(":", 1)[1])["QueueUrl"])


# ------------------------------------------------------------------------------------- settings, keys


def test_settings_come_from_the_stack_environment(stack: Stack, clients: AwsClients) -> None:
    settings = clients.settings
    assert settings.service == "harness-svc"
    assert settings.workflow_queue_url.endswith("-workflow.fifo")
    assert settings.schedule_target_arn.startswith("arn:aws:lambda:")  # the ScheduleForwarder function
    assert sorted(settings.subscription_queues.values()) == ["audit", "partner-feed"]
    # a function that was not given a variable says which one it misses, when it needs it
    bare = AwsClients.from_environment({"region_name": "us-east-1"}, environ={})
    with pytest.raises(ev.EventualError, match="EVENTUAL_BUS_NAME"):
        bare.publish([{"name": "Paid", "event": {}}])
    with pytest.raises(ev.EventualError, match="EVENTUAL_SUBSCRIPTION_QUEUES"):
        AwsSettings.from_environment({"EVENTUAL_SUBSCRIPTION_QUEUES": "[1]"})


def test_a_session_is_used_as_given(moto_endpoint: str, stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    # the session finds moto through AWS_ENDPOINT_URL, so even this path never leaves the machine
    monkeypatch.setenv("AWS_ENDPOINT_URL", require_local(moto_endpoint))
    session = boto3.Session(region_name="us-east-1")
    clients = AwsClients.from_environment(session, environ=stack.environment)
    assert clients.client("sqs").meta.endpoint_url == moto_endpoint
    assert clients.client("sqs") is clients.client("sqs")  # built once per process
    clients.start_child("wf/session")
    assert attribute(clients.client("sqs"), clients.settings.workflow_queue_url, "ApproximateNumberOfMessages") == 1


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_one_canonical_json_refuses_nan_and_infinity_everywhere(bad: float) -> None:
    """NaN is not JSON: the canonical text behind de-duplication ids and input hashes, the stored JSON and
    `to_json` (nested too: pydantic alone writes a nested NaN as null) all refuse it with `NotJsonable`.
    The AWS clients once kept a second canonical_json that wrote the token `NaN`."""
    event = {"type": "SignalReceived", "payload": {"x": bad}, "timestamp": "2025-03-01T12:00:00Z"}
    with pytest.raises(NotJsonable, match="not JSON"):
        canonical_json({"x": [bad]})
    with pytest.raises(NotJsonable, match="not JSON"):
        compact_json({"x": [bad]})
    with pytest.raises(NotJsonable, match="not JSON"):
        event_dedup_id("wf/a", event)
    with pytest.raises(NotJsonable):
        input_hash({"x": bad})
    with pytest.raises(NotJsonable):
        to_json({"x": bad})
    with pytest.raises(NotJsonable):
        to_json({"x": [bad]}, dict[str, list[float]], what="result of activity 'a'")
    # the rule refuses only what JSON cannot hold
    assert canonical_json({"y": [None, True], "x": 1.5}) == '{"x":1.5,"y":[null,true]}'
    assert compact_json({"y": [None, True], "x": 1.5}) == '{"y":[null,true],"x":1.5}'


def test_keys_are_stable_and_fit_aws_limits() -> None:
    event = event_to_dict(TimerCompleted(seq=3, timestamp=NOW))
    assert event == {"seq": 3, "timestamp": "2025-03-01T12:00:00Z", "type": "TimerCompleted"}
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'
    assert event_dedup_id("wf/a", event) == event_dedup_id("wf/a", dict(reversed(list(event.items()))))
    assert event_dedup_id("wf/a", event) != event_dedup_id("wf/b", event)
    assert len(event_dedup_id("wf/a", event)) == len(start_dedup_id("wf/a")) == 64
    assert group_id("order/o-1") == "order/o-1"
    for odd in ("order/" + "x" * 200, "order/naïve", "order/with space"):
        assert group_id(odd).startswith("h-")
        assert len(group_id(odd)) <= 128
    name = schedule_name("order/" + "é" * 300, "seq:7")
    assert name.startswith("t-")
    assert len(name) == 42
    assert name.replace("-", "").isalnum()
    assert log_stream_name("order/o-1") == "order/o-1"
    assert log_stream_name("order/a:b").startswith("sha256/")
    assert delay_until(NOW + timedelta(seconds=1.2), NOW) == 2  # rounded up: never early
    assert delay_until(NOW - timedelta(seconds=5), NOW) == 0
    assert delay_until(NOW + timedelta(hours=1), NOW) == 900
    assert delay_until(NOW + timedelta(hours=1), NOW, cap=1) == 1


# ---------------------------------------------------------------------------------------- workflow queue


def test_workflow_queue_messages_groups_and_dedup(clients: AwsClients) -> None:
    sqs = clients.client("sqs")
    url = clients.settings.workflow_queue_url
    event = event_to_dict(TimerCompleted(seq=0, timestamp=NOW))
    clients.start_child("order/o-1")
    clients.start_child("order/o-1")  # a re-dispatched start: SQS drops it within the dedup window
    clients.send_workflow_event("order/o-1", event)
    clients.send_workflow_event("order/o-1", event)
    clients.send_workflow_event("order/o-2", event)  # an equal event of another execution is kept
    messages = receive_all(sqs, url)
    bodies = [json.loads(message["Body"]) for message in messages]
    assert bodies == [
        {"type": "start", "execution_id": "order/o-1"},
        {"type": "event", "execution_id": "order/o-1", "event": event},
        {"type": "event", "execution_id": "order/o-2", "event": event},
    ]
    attributes = [message["Attributes"] for message in messages]
    assert [item["MessageGroupId"] for item in attributes] == ["order/o-1", "order/o-1", "order/o-2"]
    assert attributes[0]["MessageDeduplicationId"] == start_dedup_id("order/o-1")
    assert attributes[1]["MessageDeduplicationId"] == event_dedup_id("order/o-1", event)
    # an id SQS refuses as a group id travels under its hash; the body keeps the real id
    odd = "order/" + "ü" * 150
    WorkflowQueue(sqs, url).send_start(odd)
    (message,) = receive_all(sqs, url)
    assert json.loads(message["Body"])["execution_id"] == odd
    assert message["Attributes"]["MessageGroupId"] == group_id(odd)


def test_fifo_queues_reject_per_message_delay(clients: AwsClients) -> None:
    """Why timers use the standard timer queue: a FIFO queue refuses DelaySeconds on a message."""
    with pytest.raises(ClientError) as caught:
        clients.client("sqs").send_message(
            QueueUrl=clients.settings.workflow_queue_url,
            MessageBody="{}",
            MessageGroupId="g",
            MessageDeduplicationId="d",
            DelaySeconds=5,
        )
    assert caught.value.response["Error"]["Code"] in ("InvalidParameterValue", "InvalidParameterValueException")


# ---------------------------------------------------------------------------------------- activity queue


def test_activity_messages(clients: AwsClients) -> None:
    message = {
        "execution_id": "order/o-1",
        "seq": 2,
        "attempt": 1,
        "name": "charge",
        "input": {"amount": 12.5, "note": "café"},
        "options": {"timeout": 30.0, "heartbeat_timeout": None, "retry": {"max_attempts": 3}},
    }
    clients.send_activity(message)
    clients.activity_queue.send(dict(message, attempt=2), delay_seconds=3)
    sqs = clients.client("sqs")
    url = clients.settings.activity_queue_url
    (received,) = receive_all(sqs, url)  # the retry is still delayed
    assert json.loads(received["Body"]) == message
    assert attribute(sqs, url, "ApproximateNumberOfMessagesDelayed") == 1
    with pytest.raises(ev.EventualError, match="lacks"):
        clients.send_activity({"execution_id": "order/o-1"})
    with pytest.raises(ev.EventualError, match=r"0\.\.900"):
        clients.activity_queue.send(message, delay_seconds=901)


def test_first_attempts_go_out_in_batches_of_ten(clients: AwsClients) -> None:
    sqs = clients.client("sqs")
    calls: list[str] = []
    sqs.meta.events.register("before-call.sqs.*", lambda model, **_: calls.append(model.name))
    messages = [
        {"execution_id": f"order/o-{index}", "seq": index, "attempt": 1, "name": "charge", "input": {"n": index}}
        for index in range(23)
    ]
    clients.send_activities(messages)
    assert calls == ["SendMessageBatch", "SendMessageBatch", "SendMessageBatch"]
    received = receive_all(sqs, clients.settings.activity_queue_url)
    assert sorted((json.loads(item["Body"]) for item in received), key=lambda m: m["seq"]) == messages
    calls.clear()
    clients.send_activities(messages[:1])  # one alone is a plain send
    assert calls == ["SendMessage"]
    with pytest.raises(ev.EventualError, match="lacks"):
        clients.send_activities([{"execution_id": "order/o-1"}])


# ------------------------------------------------------------------------------------------------ timers


def test_a_short_timer_is_a_delayed_message_on_the_standard_timer_queue(clients: AwsClients) -> None:
    sqs = clients.client("sqs")
    url = clients.settings.timer_queue_url
    event = event_to_dict(TimerCompleted(seq=1, timestamp=NOW + timedelta(minutes=10)))
    assert clients.timers.schedule("order/o-1", "1", NOW + timedelta(minutes=10), event, NOW) == "sqs"
    assert receive_all(sqs, url) == []  # 600 s away
    assert attribute(sqs, url, "ApproximateNumberOfMessagesDelayed") == 1
    # a timer already due goes out without delay; its body is the contract's
    clients.schedule_timer("order/o-2", "0", NOW - timedelta(seconds=1), event)
    (message,) = receive_all(sqs, url)
    body = json.loads(message["Body"])
    assert body == {"execution_id": "order/o-2", "due": "2025-03-01T11:59:59+00:00", "event": event}
    assert clients.client("scheduler").list_schedules(GroupName=clients.settings.schedule_group)["Schedules"] == []


def test_relay_forwards_a_due_timer_and_requeues_an_early_one(clients: AwsClients) -> None:
    sqs = clients.client("sqs")
    event = event_to_dict(TimerCompleted(seq=1, timestamp=NOW))
    body = TimerClient.body("order/o-1", NOW + timedelta(hours=2), event)
    assert clients.timers.relay(body, clients.workflow_queue, NOW) is False
    assert attribute(sqs, clients.settings.timer_queue_url, "ApproximateNumberOfMessagesDelayed") == 1
    assert receive_all(sqs, clients.settings.workflow_queue_url) == []
    assert clients.timers.relay(body, clients.workflow_queue, NOW + timedelta(hours=2)) is True
    (message,) = receive_all(sqs, clients.settings.workflow_queue_url)
    assert json.loads(message["Body"]) == {"type": "event", "execution_id": "order/o-1", "event": event}


def test_a_long_timer_is_a_scheduler_at_schedule_and_idempotent(clients: AwsClients) -> None:
    scheduler = clients.client("scheduler")
    group = clients.settings.schedule_group
    due = NOW + timedelta(hours=3, microseconds=250)
    event = event_to_dict(TimerCompleted(seq=4, timestamp=due))
    assert clients.timers.schedule("order/o-1", "4", due, event, NOW) == "scheduler"
    assert clients.timers.schedule("order/o-1", "4", due, event, NOW) == "scheduler"  # Conflict = already there
    (summary,) = scheduler.list_schedules(GroupName=group)["Schedules"]
    assert summary["Name"] == schedule_name("order/o-1", "4")
    schedule = scheduler.get_schedule(Name=summary["Name"], GroupName=group)
    assert schedule["ScheduleExpression"] == "at(2025-03-01T15:00:01)"  # rounded up to the second
    assert schedule["ScheduleExpressionTimezone"] == "UTC"
    assert schedule["ActionAfterCompletion"] == "DELETE"
    assert schedule["FlexibleTimeWindow"] == {"Mode": "OFF"}
    assert schedule["Target"]["Arn"] == clients.settings.schedule_target_arn
    assert schedule["Target"]["RoleArn"] == clients.settings.scheduler_role_arn
    assert json.loads(schedule["Target"]["Input"]) == TimerClient.body("order/o-1", due, event)
    assert attribute(clients.client("sqs"), clients.settings.timer_queue_url, "ApproximateNumberOfMessagesDelayed") == 0
    # exactly 900 s still fits one SQS delay
    assert clients.timers.schedule("order/o-1", "5", NOW + timedelta(seconds=900), event, NOW) == "sqs"
    clients.cancel_timer("order/o-1", "4")
    assert scheduler.list_schedules(GroupName=group)["Schedules"] == []
    clients.cancel_timer("order/o-1", "4")  # nothing left to cancel: fine
    clients.cancel_timer("order/o-1", "5")  # an SQS timer cannot be recalled: a no-op


def test_a_long_timer_without_scheduler_settings_says_what_is_missing(moto_endpoint: str, stack: Stack) -> None:
    environment = {k: v for k, v in stack.environment.items() if k != "EVENTUAL_SCHEDULER_ROLE_ARN"}
    clients = AwsClients.from_environment(client_kwargs(moto_endpoint), environ=environment)
    with pytest.raises(ev.EventualError, match="EVENTUAL_SCHEDULER_ROLE_ARN"):
        clients.timers.schedule("order/o-1", "1", NOW + timedelta(hours=1), {}, NOW)


# --------------------------------------------------------------------------------------------------- bus


def test_bus_delivers_through_the_templates_rules_with_the_convention(clients: AwsClients) -> None:
    sqs = clients.client("sqs")
    calls: list[int] = []
    clients.client("events").meta.events.register(
        "before-parameter-build.events.PutEvents", lambda params, **_: calls.append(len(params["Entries"]))
    )
    envelopes = [{"name": "Paid", "event": {"n": n, "note": "€"}} for n in range(11)]
    envelopes.append({"name": "Ignored", "event": {"n": 99}})
    clients.publish(envelopes)
    assert calls == [10, 2]  # at most ten entries per call
    received = [json.loads(message["Body"]) for message in receive_all(sqs, subscription_url(clients, "audit"))]
    assert sorted(item["detail"]["n"] for item in received) == list(range(11))
    assert {(item["source"], item["detail-type"]) for item in received} == {("harness-svc", "Paid")}
    assert received[0]["detail"]["note"] == "€"
    # the partner subscription's rule is on the partner's bus: its events there reach it, nothing on ours does
    assert receive_all(sqs, subscription_url(clients, "partner-feed")) == []
    clients.publish([{"name": "Paid", "event": {"n": 100}}], "partner")
    assert receive_all(sqs, subscription_url(clients, "partner-feed")) == []
    clients.client("events").put_events(
        Entries=[
            {
                "EventBusName": default_source_bus("partner"),
                "Source": "partner",
                "DetailType": "Paid",
                "Detail": json.dumps({"n": 101}),
            }
        ]
    )
    (partner,) = receive_all(sqs, subscription_url(clients, "partner-feed"))
    assert (json.loads(partner["Body"])["source"], json.loads(partner["Body"])["detail"]) == ("partner", {"n": 101})
    assert receive_all(sqs, subscription_url(clients, "audit")) == []


# -------------------------------------------------------------------------------------------------- logs


def test_execution_logs_one_stream_per_execution(clients: AwsClients, moto_endpoint: str, stack: Stack) -> None:
    first = [
        LogEntry(time=NOW, message="charging ☕", source="charge"),
        LogEntry(time=NOW - timedelta(days=30), message="replayed line", source="workflow"),
    ]
    logs = clients.client("logs")
    calls: list[str] = []
    logs.meta.events.register("before-call.logs.*", lambda model, **_: calls.append(model.name))
    clients.write_logs("order/o-1", first)
    # the stream is created once per execution: on the first write, which found it missing
    assert calls == ["PutLogEvents", "CreateLogStream", "PutLogEvents"]
    calls.clear()
    clients.write_logs("order/o-1", [{"time": NOW, "message": "done", "source": "workflow"}])  # stream exists
    assert calls == ["PutLogEvents"]
    other = AwsClients.from_environment(client_kwargs(moto_endpoint), environ=stack.environment)
    other_calls: list[str] = []
    other.client("logs").meta.events.register("before-call.logs.*", lambda model, **_: other_calls.append(model.name))
    other.write_logs("order/o-1", [LogEntry(time=NOW, message="from another container", source="workflow")])
    assert other_calls == ["PutLogEvents"]  # another container does not create it again
    clients.write_logs("order/a:b", [LogEntry(time=NOW, message="odd id", source="workflow")])
    clients.write_logs("order/o-3", [])
    assert clients.logs.read("order/o-1") == [
        *first,
        LogEntry(time=NOW, message="done", source="workflow"),
        LogEntry(time=NOW, message="from another container", source="workflow"),
    ]
    assert [entry.message for entry in clients.logs.read("order/a:b")] == ["odd id"]
    assert clients.logs.read("order/o-3") == []
    streams = clients.client("logs").describe_log_streams(logGroupName=clients.settings.execution_log_group)
    assert sorted(item["logStreamName"] for item in streams["logStreams"]) == sorted(
        ["order/o-1", log_stream_name("order/a:b")]
    )
