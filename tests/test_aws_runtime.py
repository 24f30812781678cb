"""`ev.aws.AwsRuntime` (eventual_nb/aws.py): the service-client protocol against a stack deployed into moto.

The stack is the exported template, deployed into moto's server (tests/aws_support.py `deploy_stack`).
The runtime only writes records and sends messages; the `Harness` stands in for Lambda and runs the
stack's functions: the real `Orchestrator`, and tiny activity/timer/subscription handlers written here
(real functions doing what the workers do, not mocks of the runtime). Never real AWS: moto on
127.0.0.1, explicit endpoint, dummy credentials.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import eventual_nb as ev
from eventual_nb.aws import AwsRuntime
from eventual_nb.engine.history import ActivitySucceeded
from eventual_nb.runtime.aws.clients import AwsClients, event_to_dict
from eventual_nb.runtime.aws.functions import StackFunctions
from eventual_nb.runtime.aws.harness import Harness, ManualClock
from eventual_nb.runtime.aws.orchestrator import Orchestrator
from eventual_nb.runtime.aws.stores import ExecutionStore, HistoryStore
from eventual_nb.runtime.base import ExecutionStatus
from tests import aws_support
from tests.aws_support import REGION, Stack, client_kwargs, deploy_stack, require_local, reset_moto

# the shared fixtures (module-scoped moto server on 127.0.0.1, dummy credentials)
moto_endpoint = aws_support.moto_endpoint
dummy_credentials = aws_support.dummy_credentials

SERVICE = ev.Service("tests-aws-runtime")
STACK_NAME = "aws-runtime-test"

approved = ev.signal("approved", str)


@ev.activity
async def greet(name: str) -> str:
    return f"hello {name}"


@ev.workflow
async def greeting(name: str) -> str:
    print(f"greeting {name}")
    return await greet(name)


@ev.workflow
async def approval(order: str) -> str:
    answer = await approved.expect()
    return f"{order}:{answer}"


@ev.workflow
async def long_nap_then_greet(name: str) -> str:
    await ev.sleep("20m")
    return await greet(name)


#: the activities' code, run by the test's activity handler on the message's input
IMPLEMENTATIONS: dict[str, Callable[..., Any]] = {"greet": lambda name: f"hello {name}"}


class Deployed:
    """A stack in moto, its clients, the orchestrator and a harness driving them, and the runtime."""

    def __init__(self, endpoint: str, stack: Stack) -> None:
        self.stack = stack
        self.clock = ManualClock(datetime.now(UTC))
        self.clients = AwsClients.from_environment(
            client_kwargs(endpoint), environ=stack.environment, clock=self.clock, timer_hop_seconds=1
        )
        dynamodb = self.clients.client("dynamodb")
        stores = (
            ExecutionStore(dynamodb, stack.environment["EVENTUAL_EXECUTIONS_TABLE"]),
            HistoryStore(dynamodb, stack.environment["EVENTUAL_HISTORY_TABLE"]),
        )
        self.orchestrator = Orchestrator(stores, self.clients, [SERVICE])
        self.delivered: list[dict[str, Any]] = []
        self.fail_subscriptions = False
        self.harness = Harness(
            self.clients,
            {
                "orchestrator": self.orchestrator.handle_batch,
                "activity": self.activity,
                "timer": self.timer,
                "subscription": self.subscription,
            },
            self.clock,
        )
        self.runtime = AwsRuntime(
            region=REGION,
            endpoint_url=require_local(endpoint),
            service=SERVICE,
            environment=stack.environment,
            clock=self.clock,
        )

    def activity(self, event: dict[str, Any], context: Any) -> None:
        for record in event["Records"]:
            message = json.loads(record["body"])
            result = IMPLEMENTATIONS[message["name"]](**message["input"])
            done = ActivitySucceeded(seq=message["seq"], timestamp=self.clock(), result=result, attempts=1)
            self.clients.send_workflow_event(message["execution_id"], event_to_dict(done))

    def timer(self, event: dict[str, Any], context: Any) -> None:
        for record in event["Records"]:
            self.clients.timers.relay(json.loads(record["body"]), self.clients.workflow_queue, self.clock())

    def subscription(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        if self.fail_subscriptions:
            return {"batchItemFailures": [{"itemIdentifier": record["messageId"]} for record in event["Records"]]}
        self.delivered.extend(json.loads(record["body"]) for record in event["Records"])
        return {"batchItemFailures": []}

    def run(self) -> None:
        report = self.harness.run_until_idle(max_rounds=50)
        assert not report.errors, report.errors


@pytest.fixture
def deployed(moto_endpoint: str, dummy_credentials: None) -> Deployed:
    reset_moto(moto_endpoint)
    stack = deploy_stack(
        moto_endpoint,
        stack=STACK_NAME,
        service=SERVICE.name,
        subscriptions=[{"name": "audit", "events": ["Paid"]}],
    )
    return Deployed(moto_endpoint, stack)


# ------------------------------------------------------------------------------------------ tests


async def test_start_runs_through_the_stack_and_reads_back(deployed: Deployed) -> None:
    async with deployed.runtime as runtime:
        assert ev.current_runtime() is runtime
        handle = await greeting.start("ada")  # through the current runtime
        assert handle.id.startswith("greeting/")
        assert not handle.already_running
        assert (await runtime.get_execution(handle.id)).status == ExecutionStatus.IN_PROGRESS
        deployed.run()

        execution = await runtime.get_execution(handle.id)
        assert (execution.status, execution.result, execution.input) == (ExecutionStatus.SUCCEEDED, "hello ada", "ada")
        assert await handle.result(timeout=5) == "hello ada"
        assert (await runtime.wait_for_execution(handle.id, 5)).status == ExecutionStatus.SUCCEEDED
        history = await runtime.get_execution_history(handle.id)
        assert [event.type for event in history] == [
            "WorkflowStarted",
            "ActivityScheduled",
            "ActivitySucceeded",
            "WorkflowSucceeded",
        ]
        logs = await runtime.get_execution_logs(handle.id)
        assert [entry.message for entry in logs if "greeting" in entry.message] == ["greeting ada"]
        assert [info.name for info in await runtime.list_workflows()] == ["greeting", "approval", "long_nap_then_greet"]
    assert ev.current_runtime(required=False) is not runtime


async def test_start_validates_like_the_local_runtime(deployed: Deployed) -> None:
    runtime = deployed.runtime
    first = await runtime.start_execution("greeting", "bo", name="b-1")
    again = await runtime.start_execution(greeting, "bo", name="b-1")
    assert (first.id, again.id, again.already_running) == ("greeting/b-1", "greeting/b-1", True)
    with pytest.raises(ev.ExecutionAlreadyExists):
        await runtime.start_execution("greeting", "other", name="b-1")
    with pytest.raises(ev.InputValidationError):
        await runtime.start_execution("greeting", {"not": "a name"})
    with pytest.raises(ev.WorkflowNotFound):
        await runtime.start_execution("nonesuch", "x")
    with pytest.raises(ev.EventualError):
        await runtime.start_execution("greeting", "x", name="bad/name")
    deployed.run()
    assert (await runtime.get_execution("greeting/b-1")).result == "hello bo"
    for read in (runtime.get_execution, runtime.get_execution_history, runtime.get_execution_logs):
        with pytest.raises(ev.ExecutionNotFound):
            await read("greeting/nobody")
    with pytest.raises(ev.ExecutionNotFound):
        await runtime.send_signal("greeting/nobody", approved, "x")
    with pytest.raises(ev.ExecutionNotFound):
        await runtime.cancel_execution("greeting/nobody")


async def test_listing_filters_and_pages(deployed: Deployed) -> None:
    runtime = deployed.runtime
    done = [await runtime.start_execution("greeting", name, name=name) for name in ("a", "b", "c")]
    waiting = await runtime.start_execution("approval", "o-1", name="o-1")
    deployed.run()

    everything = await runtime.list_executions()
    assert {execution.id for execution in everything.executions} == {h.id for h in [*done, waiting]}
    assert everything.next_token is None
    mine = await runtime.list_executions(workflow="greeting", statuses=[ExecutionStatus.SUCCEEDED])
    assert sorted(execution.id for execution in mine.executions) == sorted(h.id for h in done)
    running = await runtime.list_executions(statuses=[ExecutionStatus.IN_PROGRESS])
    assert [execution.id for execution in running.executions] == [waiting.id]

    pages: list[str] = []
    token: str | None = None
    while True:
        page = await runtime.list_executions(workflow="greeting", max_results=2, next_token=token)
        assert len(page.executions) <= 2
        pages.extend(execution.id for execution in page.executions)
        token = page.next_token
        if token is None:
            break
    assert sorted(pages) == sorted(h.id for h in done)
    assert len(pages) == 3
    with pytest.raises(ev.InputValidationError):
        await runtime.list_executions(sort="sideways")


async def test_a_signal_releases_an_expect_once_and_ended_executions_refuse(deployed: Deployed) -> None:
    runtime = deployed.runtime
    handle = await runtime.start_execution("approval", "o-7", name="o-7")
    deployed.run()
    assert (await runtime.get_execution(handle.id)).status == ExecutionStatus.IN_PROGRESS
    with pytest.raises(ev.Timeout):
        await runtime.wait_for_execution(handle.id, 0.2)
    waits = await runtime.get_execution_waits(handle.id)  # replayed here, from the stack's history
    assert [(wait.kind, wait.name) for wait in waits.waits] == [("signal", "approved")]

    await handle.signal(approved, "yes", id="approval-1")
    deployed.clock.advance(1)  # a client's retry, a second later: only the id tells them apart
    await runtime.send_signal(handle.id, "approved", "no", id="approval-1")
    deployed.run()
    assert await handle.result(timeout=5) == "o-7:yes"
    history = await runtime.get_execution_history(handle.id)
    assert [event.type for event in history].count("SignalReceived") <= 2  # the engine ignores the repeat
    assert history[-1].type == "WorkflowSucceeded"

    with pytest.raises(ev.EventualError, match="it is SUCCEEDED"):
        await runtime.send_signal(handle.id, approved, "again")
    with pytest.raises(ev.EventualError, match="already ended SUCCEEDED"):
        await runtime.cancel_execution(handle.id)


async def test_cancel_ends_a_waiting_execution(deployed: Deployed) -> None:
    runtime = deployed.runtime
    handle = await runtime.start_execution("approval", "o-8")
    deployed.run()
    await handle.cancel()
    deployed.run()
    execution = await runtime.wait_for_execution(handle.id, 5)
    assert execution.status == ExecutionStatus.CANCELLED
    with pytest.raises(ev.ExecutionCancelled):
        await handle.result(timeout=5)


async def test_published_events_reach_the_subscription_queue_and_dead_letters_stay(deployed: Deployed) -> None:
    runtime = deployed.runtime
    await runtime.publish_events({"name": "Paid", "event": {"amount": 5}}, {"name": "Other", "event": {}})
    deployed.run()
    (delivered,) = deployed.delivered
    assert (delivered["source"], delivered["detail-type"], delivered["detail"]) == (SERVICE.name, "Paid", {"amount": 5})
    assert await runtime.list_dead_letters() == []

    deployed.fail_subscriptions = True
    await runtime.publish_events({"name": "Paid", "event": {"amount": 6}})
    deployed.run()
    (letter,) = await runtime.list_dead_letters()
    assert letter.subscription == "audit"
    assert letter.event == {"name": "Paid", "event": {"amount": 6}}  # the LocalRuntime's shape
    assert letter.attempts == 1
    assert letter.error == "MaxReceiveCountExceeded"
    # listing does not consume them
    assert [item.event for item in await runtime.list_dead_letters()] == [letter.event]


async def test_construction_from_the_stack_name(deployed: Deployed, moto_endpoint: str) -> None:
    runtime = AwsRuntime(STACK_NAME, region=REGION, endpoint_url=require_local(moto_endpoint), service=SERVICE)
    settings = runtime.clients.settings
    environment = deployed.stack.environment
    assert settings.executions_table == environment["EVENTUAL_EXECUTIONS_TABLE"]
    assert settings.history_table == environment["EVENTUAL_HISTORY_TABLE"]
    assert settings.workflow_queue_url == environment["EVENTUAL_WORKFLOW_QUEUE_URL"]
    assert settings.bus_name == environment["EVENTUAL_BUS_NAME"]
    assert settings.execution_log_group == environment["EVENTUAL_EXECUTION_LOG_GROUP"]
    assert settings.service == SERVICE.name
    assert list(settings.subscription_queues.values()) == ["audit"]
    handle = await runtime.start_execution("greeting", "cy")
    deployed.run()
    assert await handle.result(timeout=5) == "hello cy"

    missing = AwsRuntime("no-such-stack", region=REGION, endpoint_url=require_local(moto_endpoint))
    with pytest.raises(ev.EventualError, match="no-such-stack"):
        await missing.get_execution("greeting/x")


async def test_clear_errors_without_region_stack_or_signing_key(
    deployed: Deployed, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ev.EventualError, match="cannot find its stack"):
        await AwsRuntime(region=REGION, endpoint_url=require_local(moto_endpoint), environment={}).get_execution("x")
    with pytest.raises(ev.EventualError, match="signing key"):
        await deployed.runtime.send_activity_success("token", 1)
    assert ev.aws.AwsRuntime is AwsRuntime
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    with pytest.raises(ev.EventualError, match="no AWS region"):
        AwsRuntime(endpoint_url=require_local(moto_endpoint))


async def test_a_long_timer_waits_on_the_scheduler_and_a_cancel_recalls_it(
    deployed: Deployed, moto_endpoint: str
) -> None:
    """The stack's real functions on the manual clock: a 20-minute sleep becomes a Scheduler schedule (not
    a queue hop), fires when the clock reaches it; cancelling another sleeper deletes its schedule."""
    functions = StackFunctions(
        [SERVICE],
        environ=deployed.stack.environment,
        client_kwargs=client_kwargs(moto_endpoint),
        clock=deployed.clock,
        timer_hop_seconds=1,
    )
    harness = Harness(functions.clients, functions.handlers(), deployed.clock)
    runtime = deployed.runtime
    napping = await runtime.start_execution(long_nap_then_greet, "di", name="napping")
    cancelled = await runtime.start_execution(long_nap_then_greet, "ed", name="cancelled")
    assert not harness.run_until_idle().errors
    scheduler = functions.clients.client("scheduler")
    group = deployed.stack.environment["EVENTUAL_SCHEDULE_GROUP"]

    def schedules() -> int:
        return len(scheduler.list_schedules(GroupName=group)["Schedules"])

    assert schedules() == 2
    await runtime.cancel_execution(cancelled.id)
    assert not harness.advance(timedelta(minutes=19)).errors
    assert (await runtime.get_execution(napping.id)).status == ExecutionStatus.IN_PROGRESS
    assert (await runtime.get_execution(cancelled.id)).status == ExecutionStatus.CANCELLED
    assert schedules() == 1  # the cancelled execution's schedule was recalled
    report = harness.advance(timedelta(minutes=1, seconds=1))
    assert not report.errors
    assert len(report.fired_schedules) == 1
    for _ in range(5):  # the harness may call it idle while the fired timer's relay is still in flight
        if (await runtime.get_execution(napping.id)).status != ExecutionStatus.IN_PROGRESS:
            break
        harness.run_until_idle(wait_seconds=2)
    assert await napping.result(timeout=5) == "hello di"
    history = [event.type for event in await runtime.get_execution_history(napping.id)]
    assert history.count("TimerScheduled") == 1
    assert history.count("TimerCompleted") == 1
    assert schedules() == 0
