"""Fault injection on the whole AWS runtime: the stack deployed into moto, the real
functions (`StackFunctions`) driven by the harness over real SQS queues, and three faults AWS really has:

* duplicate SQS deliveries — every message on every queue (workflow FIFO, activity, timer) is delivered
  twice: the harness puts a copy back on its queue before handing the original to the function, so the
  copy arrives later, out of order, as an at-least-once redelivery does;
* a stale orchestrator invocation — a turn whose message's visibility timeout expired while it ran: the
  message is redelivered to another container, which completes the same turn first (either before the
  stale one read history, or between its read and its conditional commit);
* a crash between the history commit and the dispatch — a real "container" process running the
  functions is killed with SIGKILL right after its turn's conditional `PutItem` returned, before it sent
  what the turn decided; its message reappears after the visibility timeout and another container carries on.

Each run must end with every step in history exactly once, each activity's code run exactly once (the
activities append to a ledger file, across processes), and the execution completed with the right result.
Never real AWS: moto on 127.0.0.1, explicit endpoint, dummy credentials (tests/aws_support.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import eventual_nb as ev
from eventual_nb.aws import AwsRuntime
from eventual_nb.engine.history import HistoryEvent
from eventual_nb.runtime.aws.functions import StackFunctions
from eventual_nb.runtime.aws.harness import Harness, RunReport
from eventual_nb.runtime.base import ExecutionStatus
from tests import aws_support
from tests.aws_support import REGION, Stack, client_kwargs, deploy_stack, require_local, reset_moto
from tests.fixtures import fault_service

# the shared fixtures (module-scoped moto server on 127.0.0.1, dummy credentials)
moto_endpoint = aws_support.moto_endpoint
dummy_credentials = aws_support.dummy_credentials

ROOT = Path(__file__).resolve().parents[1]
#: real seconds a run may wait for delayed or in-flight messages (timer hops, expired visibility timeouts)
PATIENCE = 60.0
#: the message attribute marking a harness-made duplicate (duplicates are not duplicated again)
DUPLICATE_OF = "duplicate_of"


class DuplicatingHarness(Harness):
    """Delivers every message twice: a copy goes back on the queue before the original is handled."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.copies = 0

    def _invoke(self, queue: Any, messages: list[dict[str, Any]], report: RunReport) -> None:
        for message in messages:
            if DUPLICATE_OF in message.get("MessageAttributes", {}):
                continue
            copy: dict[str, Any] = {
                "QueueUrl": queue.url,
                "MessageBody": message["Body"],
                "MessageAttributes": {DUPLICATE_OF: {"DataType": "String", "StringValue": message["MessageId"]}},
            }
            if queue.fifo:
                copy["MessageGroupId"] = message["Attributes"]["MessageGroupId"]
                copy["MessageDeduplicationId"] = f"dup-{message['MessageId']}"
            self.sqs.send_message(**copy)
            self.copies += 1
        super()._invoke(queue, messages, report)


class Container:
    """One process's functions over their own boto3 clients (another Lambda container), and a harness."""

    def __init__(self, endpoint: str, stack: Stack, harness_class: type[Harness] = Harness, **harness: Any) -> None:
        self.functions = StackFunctions(
            [fault_service.SERVICE],
            environ=stack.environment,
            client_kwargs=client_kwargs(endpoint),
            timer_hop_seconds=1,
        )
        self.harness = harness_class(
            self.functions.clients, self.functions.handlers(), self.functions.clients.clock, **harness
        )

    def run(self) -> RunReport:
        report = self.harness.run_until_idle(max_rounds=200, wait_seconds=PATIENCE)
        return report


@pytest.fixture
def stack(moto_endpoint: str, dummy_credentials: None) -> Stack:
    reset_moto(moto_endpoint)
    return deploy_stack(moto_endpoint, stack="faults-test", service=fault_service.SERVICE.name)


def runtime_for(endpoint: str, stack: Stack) -> AwsRuntime:
    return AwsRuntime(
        region=REGION,
        endpoint_url=require_local(endpoint),
        service=fault_service.SERVICE,
        environment=stack.environment,
    )


def assert_each_step_once(history: list[HistoryEvent]) -> None:
    steps = Counter((event.type, event.seq) for event in history if event.seq is not None)
    assert steps, steps
    assert all(count == 1 for count in steps.values()), steps
    once = Counter(event.type for event in history if event.seq is None and event.type != "SignalReceived")
    assert once["WorkflowStarted"] == 1, once
    assert once["WorkflowSucceeded"] == 1, once
    assert [event.type for event in history].count("SignalReceived") == 1


async def reference_history(ledger: Path) -> list[str]:
    """The same order on a TestEnvironment: the event types the AWS run must record, in order."""
    async with ev.testing.TestEnvironment(service=fault_service.SERVICE) as env:
        handle = await fault_service.order.start(fault_service.Order(ledger=str(ledger) + ".reference", item="lamp"))
        await env.advance("2s")
        await env.send_signal(handle, "proceed", "yes")
        await env.advance("1s")
        assert (await handle.status()).status == ExecutionStatus.SUCCEEDED
        return [event.type for event in await env.get_execution_history(handle.id)]


async def check_completed(runtime: AwsRuntime, execution_id: str, ledger: Path, charges: int = 1) -> None:
    execution = await runtime.get_execution(execution_id)
    assert execution.status == ExecutionStatus.SUCCEEDED, execution
    assert execution.result == {"approval": "yes", "receipt": "receipt: charged for reserved lamp"}
    history = await runtime.get_execution_history(execution_id)
    assert_each_step_once(history)
    assert [event.type for event in history] == await reference_history(ledger)
    (child_id,) = [event.child_id for event in history if event.type == "ChildWorkflowScheduled"]
    child_history = await runtime.get_execution_history(child_id)
    assert [event.type for event in child_history] == ["WorkflowStarted", "WorkflowSucceeded"]
    ran = await asyncio.to_thread(ledger.read_text)
    assert ran.splitlines() == ["reserve lamp"] + ["charge reserved lamp"] * charges


async def drive_order(runtime: AwsRuntime, run: Any, ledger: Path) -> str:
    """Start the order, run until it waits for its signal, signal it, run to the end; returns its id."""
    handle = await fault_service.order.start(fault_service.Order(ledger=str(ledger), item="lamp"), name="lamp-1")
    run()
    assert (await runtime.get_execution(handle.id)).status == ExecutionStatus.IN_PROGRESS
    history = await runtime.get_execution_history(handle.id)
    assert [event.type for event in history][-1] == "TimerCompleted"  # waiting for the signal
    await runtime.send_signal(handle.id, "proceed", "yes")
    run()
    return handle.id


# ------------------------------------------------------------------------------------------ duplicates


async def test_every_message_delivered_twice_leaves_each_step_once(
    moto_endpoint: str, stack: Stack, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"
    container = Container(moto_endpoint, stack, DuplicatingHarness)
    container.functions.activity_worker.keep_reports = True
    async with runtime_for(moto_endpoint, stack) as runtime:
        # the client's own sends are duplicated too: the start message and the signal, with a new dedup id
        execution_id = await drive_order(runtime, container.run, ledger)
    harness = container.harness
    assert isinstance(harness, DuplicatingHarness)
    assert harness.copies >= 10  # workflow, activity and timer messages were all duplicated
    actions = Counter(report.action for report in container.functions.activity_worker.reports)
    assert actions["ran"] == 2, actions
    assert actions["duplicate"] >= 1, actions  # the claim row stopped the copies
    assert container.functions.orchestrator.stats.turns > container.functions.orchestrator.stats.commits
    async with runtime_for(moto_endpoint, stack) as runtime:
        await check_completed(runtime, execution_id, ledger)


# ------------------------------------------------------------------------------------------ stale turn


@pytest.mark.parametrize("expires", ["before-read", "before-commit"])
async def test_a_stale_orchestrator_invocation_after_its_visibility_timeout(
    moto_endpoint: str, stack: Stack, tmp_path: Path, expires: str
) -> None:
    """Container A receives the message with a 1 s visibility timeout and stalls in its turn — before it
    reads history, or after reading and before its conditional commit — until the timeout expired and
    container B received the same message and completed the turn. Then A goes on, stale."""
    ledger = tmp_path / "ledger.txt"
    stale = Container(moto_endpoint, stack, visibility_timeout=1)
    other = Container(moto_endpoint, stack)
    dynamodb = stale.functions.clients.client("dynamodb")
    history_table = stack.environment["EVENTUAL_HISTORY_TABLE"]
    if expires == "before-read":
        stale.functions.orchestrator.max_cached = 0  # a warm container reads nothing: this one is cold
    hook = "before-parameter-build.dynamodb." + ("Query" if expires == "before-read" else "PutItem")
    stalled: list[RunReport] = []

    def stall(params: dict[str, Any], **_: Any) -> None:
        # once, during the turn that handles the first activity's result (history already holds it scheduled)
        if stalled or not ledger.exists() or params.get("TableName") != history_table:
            return
        time.sleep(1.5)  # the message's visibility timeout (1 s) expires: SQS hands it to another container
        report = RunReport()
        deadline = time.monotonic() + PATIENCE
        while not any(call.function == "orchestrator" for call in report.invocations):
            assert time.monotonic() < deadline, "the expired message was never redelivered"
            other.harness.poll_once(report)
        stalled.append(report)

    dynamodb.meta.events.register(hook, stall)
    async with runtime_for(moto_endpoint, stack) as runtime:

        def run_both() -> None:
            stale.run()
            other.run()
            stale.run()

        execution_id = await drive_order(runtime, run_both, ledger)
        assert stalled, "the stale turn never happened"
        stats = stale.functions.orchestrator.stats
        if expires == "before-commit":
            assert stats.conflicts >= 1  # its conditional write lost to container B's
        await check_completed(runtime, execution_id, ledger)


# ------------------------------------------------------------------------------------------ crash

CONTAINER = """\
import json, os, signal, sys

sys.path.insert(0, sys.argv[1])
from eventual_nb.runtime.aws.functions import StackFunctions
from eventual_nb.runtime.aws.harness import Harness
from tests.fixtures import fault_service

environment, kwargs, crash_at = json.loads(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
function_timeout, visibility_timeout = float(sys.argv[5]), int(sys.argv[6])
functions = StackFunctions([fault_service.SERVICE], environ=environment, client_kwargs=kwargs, timer_hop_seconds=1)
commits = 0

def note_commit(params, context, **_):
    # a turn's commit: the conditional put of a turn item into the history table
    context["commit"] = params.get("TableName") == environment["EVENTUAL_HISTORY_TABLE"] and "ConditionExpression" in params

def die_after_commit(context, **_):
    global commits
    if not context.get("commit"):
        return
    commits += 1
    if commits == crash_at:  # the history is committed; nothing the turn decided has been sent yet
        print(json.dumps({"killed_after_commit": commits}), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

functions.clients.client("dynamodb").meta.events.register("before-parameter-build.dynamodb.PutItem", note_commit)
functions.clients.client("dynamodb").meta.events.register("after-call.dynamodb.PutItem", die_after_commit)
Harness(
    functions.clients,
    functions.handlers(),
    functions.clients.clock,
    visibility_timeout=visibility_timeout,
    function_timeout=function_timeout,
).run_until_idle(max_rounds=200, wait_seconds=60)
print(json.dumps({"finished_without_crash": commits}), flush=True)
"""


@pytest.mark.parametrize(
    ("phase", "crash_at"),
    [("before-signal", 1), ("before-signal", 2), ("after-signal", 1), ("after-signal", 2)],
    ids=["start-turn", "activity-result", "signal", "child-scheduled"],
)
async def test_a_container_killed_between_commit_and_dispatch(
    moto_endpoint: str, stack: Stack, tmp_path: Path, phase: str, crash_at: int
) -> None:
    """A real process runs the functions and is SIGKILLed right after its `crash_at`-th history commit of
    a phase: before the signal, commit 1 is the start turn (its activity never sent) and commit 2 records
    the first activity's result (its timer never set); after the signal, commit 1 records the signal (the
    charge never sent) and commit 2 schedules the child workflow (its start never sent). The message comes
    back after its visibility timeout and a fresh container finishes the order."""
    ledger = tmp_path / "ledger.txt"
    crashes = await run_with_a_killed_container(moto_endpoint, stack, tmp_path, ledger, phase, crash_at)
    ((returncode, stdout, stderr),) = crashes
    assert returncode == -signal.SIGKILL, (returncode, stdout, stderr[-2000:])
    assert json.loads(stdout.strip().splitlines()[-1]) == {"killed_after_commit": crash_at}


async def test_a_container_killed_inside_an_activity_does_not_lose_the_attempt(
    moto_endpoint: str, stack: Stack, tmp_path: Path
) -> None:
    """The container running `charge` dies (SIGKILL) after the charge's side effect and before it could
    report. Its claim's lease is the invocation's remaining time (12 s here); the message comes back after
    the queue's visibility timeout (13 s), finds the lease run out and the attempt unsettled, and another
    container runs it again: the order completes, with the activity run twice (at least once) and its step
    recorded once."""
    ledger = tmp_path / "ledger.txt"
    marker = tmp_path / "killed-in-charge"
    crashes = await run_with_a_killed_container(
        moto_endpoint, stack, tmp_path, ledger, "after-signal", 0, kill_in_charge=marker, charges=2
    )
    ((returncode, stdout, stderr),) = crashes
    assert returncode == -signal.SIGKILL, (returncode, stdout, stderr[-2000:])
    assert marker.read_text() == "killed\n"


async def run_with_a_killed_container(
    endpoint: str,
    stack: Stack,
    tmp_path: Path,
    ledger: Path,
    phase: str,
    crash_at: int,
    *,
    kill_in_charge: Path | None = None,
    charges: int = 1,
) -> list[tuple[int, str, str]]:
    """Drive the order; in `phase` a container process runs the functions first and is killed (after its
    `crash_at`-th commit, or inside `charge`), then a surviving container finishes. Checks the end state."""
    script = tmp_path / "container.py"
    script.write_text(CONTAINER)
    environment = {key: value for key, value in os.environ.items() if not key.startswith("EVENTUAL_")}
    environment["PYTHONDONTWRITEBYTECODE"] = "1"
    if kill_in_charge is not None:
        environment[fault_service.KILL_IN_CHARGE] = str(kill_in_charge)
    survivor = Container(endpoint, stack)
    crashes: list[tuple[int, str, str]] = []

    def run_killed_container() -> None:
        result = subprocess.run(
            [
                sys.executable,
                str(script),
                str(ROOT),
                json.dumps(stack.environment),
                json.dumps(client_kwargs(endpoint)),
                str(crash_at),
                "12",  # the function's time limit: the claim's lease
                "13" if kill_in_charge is not None else "1",  # the queues' visibility timeout
            ],
            capture_output=True,
            text=True,
            env=environment,
            timeout=120,
            check=False,
        )
        crashes.append((result.returncode, result.stdout, result.stderr))

    async with runtime_for(endpoint, stack) as runtime:
        calls = 0

        def run() -> None:
            nonlocal calls
            calls += 1
            if calls == (1 if phase == "before-signal" else 2):
                run_killed_container()
            survivor.run()

        execution_id = await drive_order(runtime, run, ledger)
        await check_completed(runtime, execution_id, ledger, charges)
    return crashes


async def test_a_container_killed_inside_an_inline_activity_runs_it_again(
    moto_endpoint: str, stack: Stack, tmp_path: Path
) -> None:
    """The orchestrator's container dies (SIGKILL) inside an inline activity, after its side effect: the turn
    that scheduled it is committed, its result is not. The message of that turn comes back after the
    visibility timeout; a fresh container's cold turn re-runs the last turn's pending actions, the inline
    attempt among them: the activity ran twice (at least once), its step is recorded once."""
    ledger = tmp_path / "ledger.txt"
    marker = tmp_path / "killed-in-pack"
    script = tmp_path / "container.py"
    script.write_text(CONTAINER)
    environment = {key: value for key, value in os.environ.items() if not key.startswith("EVENTUAL_")}
    environment.update({"PYTHONDONTWRITEBYTECODE": "1", fault_service.KILL_IN_PACK: str(marker)})
    async with runtime_for(moto_endpoint, stack) as runtime:
        order = fault_service.Order(ledger=str(ledger), item="lamp")
        handle = await fault_service.parcel.start(order, name="parcel-1")
        killed = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                str(script),
                str(ROOT),
                json.dumps(stack.environment),
                json.dumps(client_kwargs(moto_endpoint)),
                "0",  # no crash after a commit: the crash is inside the activity
                "12",
                "1",  # the visibility timeout: the message comes back a second after the crash
            ],
            capture_output=True,
            text=True,
            env=environment,
            timeout=120,
            check=False,
        )
        assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stdout, killed.stderr[-2000:])
        assert marker.read_text() == "killed\n"
        assert (await runtime.get_execution(handle.id)).status == ExecutionStatus.IN_PROGRESS
        survivor = Container(moto_endpoint, stack)
        survivor.run()
        execution = await runtime.get_execution(handle.id)
        assert (execution.status, execution.result) == (ExecutionStatus.SUCCEEDED, "packed reserved lamp")
        history = await runtime.get_execution_history(handle.id)
    assert [event.type for event in history] == [
        "WorkflowStarted",
        "ActivityScheduled",
        "ActivitySucceeded",
        "ActivityScheduled",
        "ActivitySucceeded",
        "WorkflowSucceeded",
    ]
    assert ledger.read_text().splitlines() == ["reserve lamp", "pack reserved lamp", "pack reserved lamp"]
    assert survivor.functions.orchestrator.stats.inline_attempts == 1
