"""Inline activities on the AWS runtime (eventual_nb/runtime/aws/inline.py), end to end on moto's server.

The stack is the exported template deployed into moto; `StackFunctions` are the real functions, driven
by the `Harness` (Lambda's pollers and the Scheduler). What an inline activity must do there: run inside
the orchestrator's invocation after the commit of the turn that scheduled it (no activity message, no
claim row, no activity function), continue sequential inline steps in that invocation (one committed turn
each), retry through a timer, hand an attempt the invocation has no time for to a fresh invocation, and
record the same history as the TestEnvironment.

Never real AWS: moto's server on 127.0.0.1, explicit endpoint, dummy credentials (tests/aws_support.py).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

import eventual_nb as ev
from eventual_nb.aws import AwsRuntime
from eventual_nb.runtime.aws.functions import StackFunctions
from eventual_nb.runtime.aws.harness import Harness, RunReport
from eventual_nb.runtime.base import ExecutionStatus
from tests import aws_support
from tests.aws_support import REGION, Stack, client_kwargs, deploy_stack, require_local, reset_moto

moto_endpoint = aws_support.moto_endpoint
dummy_credentials = aws_support.dummy_credentials

SERVICE = ev.Service("tests-aws-inline")

#: how often each activity's code ran, and the idempotency keys it saw (cleared per test)
CALLS: Counter[str] = Counter()
KEYS: list[str] = []


@ev.activity(inline=True, timeout="5s")
async def add_one(value: int) -> int:
    CALLS["add_one"] += 1
    KEYS.append(ev.activity_info().idempotency_key)
    print(f"adding one to {value}")
    return value + 1


@ev.activity
async def queued_double(value: int) -> int:
    CALLS["queued_double"] += 1
    return value * 2


@ev.activity(inline=True, timeout="5s", retry=ev.RetryPolicy(max_attempts=3, initial_interval="1s", backoff=1))
def flaky_inline(key: str) -> str:  # a plain def: runs in a thread, as on the activity function
    CALLS[key] += 1
    if CALLS[key] < 3:
        raise ConnectionError(f"attempt {CALLS[key]} of {key} fails")
    return f"{key} after {CALLS[key]}"


@ev.activity(inline=True, timeout="5s")
async def huge(size: int) -> str:
    return "é" * size


@ev.workflow
async def chain(start: int) -> int:
    value = start
    for _ in range(3):
        value = await add_one(value)
    value = await queued_double(value)
    return await add_one(value)


@ev.workflow
async def retried(key: str) -> str:
    return await flaky_inline(key)


@ev.workflow
async def big(size: int) -> int:
    return len(await huge(size))


# ------------------------------------------------------------------------------------------ plumbing


@pytest.fixture
def stack(moto_endpoint: str, dummy_credentials: None) -> Stack:
    reset_moto(moto_endpoint)
    CALLS.clear()
    KEYS.clear()
    return deploy_stack(moto_endpoint, stack="inline-test", service=SERVICE.name)


def functions_for(endpoint: str, stack: Stack) -> StackFunctions:
    return StackFunctions(
        [SERVICE], environ=stack.environment, client_kwargs=client_kwargs(endpoint), timer_hop_seconds=1
    )


def runtime_for(endpoint: str, stack: Stack) -> AwsRuntime:
    return AwsRuntime(
        region=REGION, endpoint_url=require_local(endpoint), service=SERVICE, environment=stack.environment
    )


def run(harness: Harness, wait_seconds: float = 0.0) -> RunReport:
    report = harness.run_until_idle(max_rounds=200, wait_seconds=wait_seconds)
    assert not report.errors, report.errors
    return report


async def reference(workflow: Any, value: Any) -> tuple[list[str], Any]:
    async with ev.testing.TestEnvironment(service=SERVICE) as env:
        handle = await workflow.start(value)
        await env.advance("1h")
        result = await handle.result()
        return [event.type for event in await env.get_execution_history(handle.id)], result


# ---------------------------------------------------------------------------------------------- tests


async def test_sequential_inline_steps_run_in_one_orchestrator_invocation(moto_endpoint: str, stack: Stack) -> None:
    functions = functions_for(moto_endpoint, stack)
    harness = Harness(functions.clients, functions.handlers(), functions.clients.clock)
    expected_types, expected_result = await reference(chain, 1)
    CALLS.clear()
    KEYS.clear()
    async with runtime_for(moto_endpoint, stack) as runtime:
        handle = await runtime.start_execution(chain, 1, name="c-1")
        report = run(harness)
        execution = await runtime.get_execution(handle.id)
        assert (execution.status, execution.result) == (ExecutionStatus.SUCCEEDED, expected_result)
        history = await runtime.get_execution_history(handle.id)
        assert [event.type for event in history] == expected_types
        logs = await runtime.get_execution_logs(handle.id)
    # the three inline steps ran in the start's invocation; the queued one went through the activity function,
    # and its result's invocation ran the last inline step: two orchestrator invocations in all
    assert [call.function for call in report.invocations] == ["orchestrator", "activity", "orchestrator"]
    assert CALLS == {"add_one": 4, "queued_double": 1}
    seqs = [event.seq for event in history if event.type == "ActivityScheduled" and event.name == "add_one"]
    assert KEYS == [f"{handle.id}/{seq}" for seq in seqs]  # the same idempotency key as a queued activity
    stats = functions.orchestrator.stats
    assert (stats.inline_attempts, stats.inline_handoffs) == (4, 0)
    assert stats.commits == 6  # one turn per step, each committed before its inline activity ran
    assert [entry.message for entry in logs] == [
        "adding one to 1",
        "adding one to 2",
        "adding one to 3",
        "adding one to 8",
    ]
    # no claim row was written for an inline attempt: only the queued activity's
    dynamodb = functions.clients.client("dynamodb")
    items = dynamodb.query(
        TableName=stack.environment["EVENTUAL_EXECUTIONS_TABLE"],
        KeyConditionExpression="pk = :pk AND begins_with(sk, :claim)",
        ExpressionAttributeValues={":pk": {"S": f"exec#{handle.id}"}, ":claim": {"S": "claim#"}},
    )["Items"]
    (claim,) = items
    assert claim["sk"]["S"].startswith(f"claim#{seqs[-1] - 1:010d}#")


async def test_an_inline_retry_waits_as_a_timer(moto_endpoint: str, stack: Stack) -> None:
    functions = functions_for(moto_endpoint, stack)
    harness = Harness(functions.clients, functions.handlers(), functions.clients.clock)
    expected_types, _ = await reference(retried, "ref")
    async with runtime_for(moto_endpoint, stack) as runtime:
        handle = await runtime.start_execution(retried, "k", name="r-1")
        report = run(harness)
        for _ in range(5):  # each backoff is a second on the timer queue (real time; moto delays in seconds)
            if (await runtime.get_execution(handle.id)).status != ExecutionStatus.IN_PROGRESS:
                break
            report.invocations.extend(run(harness, wait_seconds=10).invocations)
        execution = await runtime.get_execution(handle.id)
        assert (execution.status, execution.result) == (ExecutionStatus.SUCCEEDED, "k after 3")
        history = await runtime.get_execution_history(handle.id)
        assert [event.type for event in history] == expected_types
        notes = [entry.message for entry in await runtime.get_execution_logs(handle.id)]
    assert CALLS["k"] == 3
    assert {call.function for call in report.invocations} == {"orchestrator", "timer"}  # no activity function
    # the core's retry notes, as the activity function writes them
    assert [note.split(":")[0] for note in notes] == [
        f"attempt {number} of activity 'flaky_inline' (seq 0) failed" for number in (1, 2)
    ]
    assert history[-2].type == "ActivitySucceeded"
    assert history[-2].attempts == 3


async def test_an_inline_attempt_without_time_left_is_handed_to_a_fresh_invocation(
    moto_endpoint: str, stack: Stack
) -> None:
    """With 12 s left (a function limit of 12 s), an inline activity of 5 s does not fit after the 10 s of
    safety: it goes to the workflow queue as an attempt message, and the next invocation runs it (a handed-off
    attempt runs whatever time is left, so this cannot loop)."""
    functions = functions_for(moto_endpoint, stack)
    harness = Harness(functions.clients, functions.handlers(), functions.clients.clock, function_timeout=12)
    async with runtime_for(moto_endpoint, stack) as runtime:
        handle = await runtime.start_execution(chain, 1, name="h-1")
        report = run(harness)
        execution = await runtime.get_execution(handle.id)
        assert (execution.status, execution.result) == (ExecutionStatus.SUCCEEDED, 9)
    stats = functions.orchestrator.stats
    assert (stats.inline_attempts, stats.inline_handoffs) == (4, 4)
    assert [call.function for call in report.invocations].count("orchestrator") == 6
    assert CALLS == {"add_one": 4, "queued_double": 1}


async def test_a_huge_inline_result_is_committed_over_several_items(moto_endpoint: str, stack: Stack) -> None:
    """1.2 MB of result (2.4 MB as UTF-8): beyond DynamoDB's 400 KB item, the turn that records it is split."""
    functions = functions_for(moto_endpoint, stack)
    harness = Harness(functions.clients, functions.handlers(), functions.clients.clock)
    async with runtime_for(moto_endpoint, stack) as runtime:
        handle = await runtime.start_execution(big, 1_200_000, name="b-1")
        run(harness)
        execution = await runtime.get_execution(handle.id)
        assert (execution.status, execution.result) == (ExecutionStatus.SUCCEEDED, 1_200_000)
        history = await runtime.get_execution_history(handle.id)
    (result,) = [event for event in history if event.type == "ActivitySucceeded"]
    assert result.result == "é" * 1_200_000
    dynamodb = functions.clients.client("dynamodb")
    pages = dynamodb.get_paginator("query").paginate(
        TableName=stack.environment["EVENTUAL_HISTORY_TABLE"],
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": f"exec#{handle.id}"}},
        ProjectionExpression="sk",
    )
    keys = [item["sk"]["S"] for page in pages for item in page["Items"]]
    assert keys[:2] == ["turn#0000000001", "turn#0000000002"]
    assert len([key for key in keys if key.startswith("turn#0000000002#")]) >= 5
