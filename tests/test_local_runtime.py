"""The behavioural suite on both runtimes, and what only `ev.LocalRuntime` promises.

The first part runs every behaviour three times through the `rig` fixture: on a TestEnvironment (virtual
time), on a LocalRuntime on a fresh SQLite file (real time, short durations), and on `ev.aws.AwsRuntime`
over a stack freshly deployed into moto's server on 127.0.0.1, whose real functions a background
`Harness` drives (tests/aws_rig.py; real time, one-second timer hops). The assertions are the same for
all; only the way a test waits differs (`Rig.until` ticks/advances the virtual clock, or sleeps briefly
in real time) and, for activity timeouts, how a hanging activity is produced (a mock on the
TestEnvironment, whose real activities finish at the virtual instant they start; the real slow activity
on the real runtimes).

The second part covers LocalRuntime-only promises: restart recovery, at-least-once activities after a
crash, the exclusive database lock, durability pragmas, persistent signing keys, group commit, no
executors kept for finished executions, and no polling while idle.

Every LocalRuntime (and AwsRuntime) a test opens replays each recorded history against the current
definitions before it closes (as tests/conftest.py does for TestEnvironments) and fails the test on any divergence.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import math
import os
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import eventual_nb as ev
from eventual_nb.runtime.local import DatabaseLocked
from eventual_nb.runtime.tokens import InvalidToken
from tests import aws_support
from tests.aws_rig import aws_stack_runtime

# the AWS leg's moto server (module-scoped, started only when an "aws" test asks for it) and credentials
moto_endpoint = aws_support.moto_endpoint
dummy_credentials = aws_support.dummy_credentials

SERVICE = ev.Service("tests-local-runtime")

#: how long a LocalRuntime test waits for anything before failing (real seconds)
WAIT = 10
#: the same on AWS: timers there hop through moto's queue in whole real seconds
AWS_WAIT = 30


# ------------------------------------------------------------------------------------------ replay check


async def replay_divergences(rt: Any) -> list[str]:
    """Replay every stored history against the current definition; describe each divergence.

    Executions the runtime reports as blocked are skipped (an AwsRuntime reports none: its orchestrator
    leaves a blocked execution's messages on the queue and a line in its log)."""
    found: list[str] = []
    token: str | None = None
    blocked = rt.blocked() if hasattr(rt, "blocked") else {}
    while True:
        page = await rt.list_executions(next_token=token, max_results=100)
        for execution in page.executions:
            if execution.id in blocked:
                continue  # the runtime already reports it; the test asserts on it
            try:
                definition = rt.workflow_definition(execution.workflow)
            except ev.EventualError:
                continue
            history = await rt.get_execution_history(execution.id)
            try:
                commands = ev.testing.replay(definition, history, execution_id=execution.id)
            except Exception as exc:  # noqa: BLE001 - report whatever the replay raised
                found.append(f"{execution.id}: {type(exc).__name__}: {exc}")
                continue
            if execution.status != ev.ExecutionStatus.IN_PROGRESS and commands:
                found.append(f"{execution.id}: replay of an ended execution issued commands {commands}")
        token = page.next_token
        if token is None:
            return found


@contextlib.asynccontextmanager
async def local_runtime(path: Path, *, replay_check: bool = True, **options: Any) -> AsyncIterator[ev.LocalRuntime]:
    """`async with ev.LocalRuntime(path, service=SERVICE)` that replays every history before closing."""
    async with ev.LocalRuntime(path, service=SERVICE, **options) as rt:
        yield rt
        if replay_check:
            divergences = await replay_divergences(rt)
            if divergences:
                pytest.fail("replaying recorded histories diverged:\n" + "\n".join(divergences))


# ------------------------------------------------------------------------------------------ the rig


class Rig:
    """One runtime under test plus the few operations whose mechanics differ between them."""

    def __init__(self, kind: str, rt: Any) -> None:
        self.kind = kind
        self.rt = rt

    @property
    def real_time(self) -> bool:
        """LocalRuntime and AwsRuntime run in real time; the TestEnvironment in virtual time."""
        return self.kind in ("local", "aws")

    @property
    def wait(self) -> float:
        return AWS_WAIT if self.kind == "aws" else WAIT

    def now(self) -> datetime:
        return datetime.now(UTC) if self.real_time else self.rt.now

    async def finish(self, handle: ev.ExecutionHandle) -> Any:
        return await handle.result(timeout=self.wait)

    async def until(self, predicate: Callable[[], Any], what: str = "the condition") -> None:
        """Wait until `predicate()` (sync or async) is true: ticking virtual time, or sleeping real time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait
        for _ in range(WAIT * 100) if not self.real_time else itertools.count():
            if not self.real_time:
                await self.rt.tick()
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return
            if self.real_time:
                if loop.time() > deadline:
                    break
                await asyncio.sleep(0.01)
            else:
                await self.rt.advance(0.01)
        raise AssertionError(f"gave up waiting for {what}")

    async def idle(self, seconds: float) -> None:
        """Let `seconds` pass with nothing sent in (virtual or real)."""
        if self.real_time:
            await asyncio.sleep(seconds)
        else:
            await self.rt.advance(seconds)

    async def has(self, handle: ev.ExecutionHandle, event_type: str, count: int = 1) -> bool:
        return types_of(await handle.history()).count(event_type) >= count

    def hangs(self, activity: Any, how: str) -> None:
        """Make `activity` hang past its (heartbeat) timeout; on the real runtimes the real one does."""
        if not self.real_time:
            mock = self.rt.mock_activity(activity)
            if how == "timeout":
                mock.timeout()
            else:
                mock.heartbeat_timeout()


@contextlib.asynccontextmanager
async def open_rig(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Rig]:
    replay_check = request.node.get_closest_marker("no_replay_check") is None
    if kind == "test":
        async with ev.testing.TestEnvironment(service=SERVICE) as env:
            yield Rig("test", env)
    elif kind == "local":
        async with local_runtime(tmp_path / "state.db", replay_check=replay_check) as rt:
            yield Rig("local", rt)
    else:
        request.getfixturevalue("dummy_credentials")
        async with aws_stack_runtime(request.getfixturevalue("moto_endpoint"), SERVICE) as stack:
            yield Rig("aws", stack.runtime)
            stack.driver.stop()
            if replay_check:
                divergences = await replay_divergences(stack.runtime)
                if divergences:
                    pytest.fail("replaying recorded histories diverged:\n" + "\n".join(divergences))


@pytest.fixture(params=["test", "local", "aws"])
async def rig(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Rig]:
    async with open_rig(request.param, request, tmp_path) as opened:
        yield opened


@pytest.fixture(params=["local", "aws"])
async def real_rig(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Rig]:
    """The runtimes whose activities run in real time (a TestEnvironment's finish at the instant they start)."""
    async with open_rig(request.param, request, tmp_path) as opened:
        yield opened


def types_of(history: list[Any]) -> list[str]:
    return [event.type for event in history]


def by_seq(history: list[Any], seq: int) -> list[str]:
    return [event.type for event in history if getattr(event, "seq", None) == seq]


def first(history: list[Any], event_type: str) -> Any:
    return next(event for event in history if event.type == event_type)


# ------------------------------------------------------------------------------------------ definitions


class Approval(BaseModel):
    ok: bool


class Order(BaseModel):
    id: str
    qty: int


lr_note = ev.signal("lr_note")
lr_approval = ev.signal("lr_approval", Approval)

#: attempts per execution id, counted inside activities
ATTEMPTS: Counter[str] = Counter()
#: tokens handed out by `lr_external`
TOKENS: list[str] = []


@ev.activity(retry=ev.RetryPolicy(max_attempts=3, initial_interval="0.05s", backoff=2.0))
async def lr_flaky(fail_times: int) -> str:
    info = ev.activity_info()
    ATTEMPTS[info.execution_id] += 1
    if info.attempt <= fail_times:
        raise ConnectionError(f"attempt {info.attempt} failed")
    return f"ok after {info.attempt}"


#: idempotency keys the inline activity saw, per execution
INLINE_KEYS: dict[str, list[str]] = {}


@ev.activity(inline=True, timeout="2s", retry=ev.RetryPolicy(max_attempts=3, initial_interval="0.05s", backoff=2.0))
async def lr_inline_flaky(fail_times: int) -> str:
    info = ev.activity_info()
    ATTEMPTS[info.execution_id] += 1
    INLINE_KEYS.setdefault(info.execution_id, []).append(info.idempotency_key)
    if info.attempt <= fail_times:
        raise ConnectionError(f"attempt {info.attempt} failed")
    return f"inline ok after {info.attempt}"


@ev.activity(inline=True, timeout="0.2s")
async def lr_inline_slow() -> str:
    await asyncio.sleep(1)
    return "late"


@ev.workflow
async def lr_inline(fail_times: int) -> Any:
    """Inline activities: on AWS they run inside the orchestrator; elsewhere `inline` changes nothing."""
    first = await lr_inline_flaky(fail_times)
    try:
        await lr_inline_slow()
    except ev.Timeout as exc:
        return {"first": first, "timeout": type(exc).__name__}
    return {"first": first, "timeout": None}


@ev.activity(retry=ev.RetryPolicy(max_attempts=5, initial_interval="0.05s", non_retryable=(ValueError,)))
async def lr_picky() -> str:
    ATTEMPTS[ev.activity_info().execution_id] += 1
    raise ValueError("never going to work")


@ev.workflow
async def lr_retrying(fail_times: int) -> Any:
    try:
        return await lr_flaky(fail_times)
    except ev.ActivityFailed as exc:
        return {"error": exc.error, "message": exc.message, "attempts": exc.attempts}


@ev.workflow
async def lr_non_retryable() -> Any:
    try:
        return await lr_picky()
    except ev.ActivityFailed as exc:
        return {"error": exc.error, "message": exc.message, "attempts": exc.attempts}


@ev.activity(timeout="0.2s")
async def lr_slow() -> str:
    await asyncio.sleep(1)
    return "late"


@ev.activity(heartbeat_timeout="0.2s")
async def lr_silent() -> str:
    await asyncio.sleep(1)
    return "late"


@ev.activity(heartbeat_timeout="0.2s")
async def lr_beating() -> int:
    beats = 0
    for _ in range(10):
        response = await ev.heartbeat()
        assert not response.cancelled
        beats += 1
        await asyncio.sleep(0.05)
    return beats


@ev.workflow
async def lr_times_activity(which: str) -> dict[str, Any]:
    call = {"slow": lr_slow, "silent": lr_silent, "beating": lr_beating}[which]
    try:
        return {"result": await call()}
    except ev.Timeout as exc:
        return {"timeout": type(exc).__name__, "builtin": isinstance(exc, TimeoutError)}


@ev.activity
async def lr_external(order: str) -> str:
    return ev.async_result(TOKENS.append)


@ev.workflow
async def lr_waits_external(order: str) -> dict[str, Any]:
    try:
        return {"result": await lr_external(order)}
    except ev.ActivityFailed as exc:
        return {"error": exc.error, "message": exc.message}


@ev.activity(retry=ev.RetryPolicy(max_attempts=2, initial_interval="0.05s"))
async def lr_external_twice(order: str) -> str:
    return ev.async_result(TOKENS.append)


@ev.activity(heartbeat_timeout="0.3s")
async def lr_external_beating(order: str) -> str:
    return ev.async_result(TOKENS.append)


@ev.workflow
async def lr_waits_external_twice(order: str) -> dict[str, Any]:
    try:
        return {"result": await lr_external_twice(order)}
    except ev.ActivityFailed as exc:
        return {"error": exc.error, "message": exc.message}


@ev.workflow
async def lr_waits_external_beating(order: str) -> dict[str, Any]:
    try:
        return {"result": await lr_external_beating(order)}
    except ev.Timeout as exc:
        return {"timeout": type(exc).__name__}


#: executions whose `lr_hands_out_token` may return (the test completed it by token first)
RELEASED: set[str] = set()


@ev.activity
async def lr_hands_out_token() -> str:
    """Hands its token out while it runs, then returns a value of its own once released (at most 5 s)."""
    info = ev.activity_info()
    TOKENS.append(info.token)
    for _ in range(500):
        if info.execution_id in RELEASED:
            break
        await asyncio.sleep(0.01)
    return "returned"


@ev.workflow
async def lr_completed_while_running() -> str:
    return await lr_hands_out_token()


#: the runtime under test, for `lr_fails_itself_by_token` to report through
REPORTS_TO: dict[str, Any] = {}


@ev.activity(retry=ev.RetryPolicy(max_attempts=2, initial_interval="0.05s"))
async def lr_fails_itself_by_token() -> str:
    """Its first attempt reports its own failure by token while it still runs, then returns a value anyway."""
    info = ev.activity_info()
    ATTEMPTS[info.execution_id] += 1
    if info.attempt == 1:
        await REPORTS_TO["runtime"].send_activity_failure(info.token, "Busy", "reported while running")
        return "returned after failing"
    return f"attempt {info.attempt}"


@ev.workflow
async def lr_fails_itself() -> dict[str, Any]:
    try:
        return {"result": await lr_fails_itself_by_token()}
    except ev.ActivityFailed as exc:
        return {"error": exc.error, "message": exc.message, "attempts": exc.attempts}


@ev.workflow
async def lr_timers() -> dict[str, Any]:
    moments = [ev.now()]
    await ev.sleep(0.1)
    moments.append(ev.now())
    await asyncio.sleep(0.1)
    moments.append(ev.now())
    try:
        await asyncio.wait_for(lr_note.expect(), 0.1)
        waited = "signal"
    except TimeoutError:
        waited = "timed out"
    moments.append(ev.now())
    await ev.sleep_until(ev.now() + timedelta(seconds=0.3))
    moments.append(ev.now())
    gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(moments)]
    return {"gaps": gaps, "waited": waited}


@ev.workflow
async def lr_collect_notes(count: int) -> list[Any]:
    """Sleeps first so that signals sent right after the start are buffered, then expects `count`."""
    await ev.sleep(0.05)
    return [await lr_note.expect() for _ in range(count)]


@ev.workflow
async def lr_dispose_after_one() -> dict[str, Any]:
    handled: list[Any] = []
    subscription = lr_note.on(handled.append)
    await ev.condition(lambda: len(handled) >= 1)
    subscription.dispose()
    later = await lr_note.expect()
    return {"handled": handled, "expected": later}


@ev.workflow
async def lr_dedup_notes() -> dict[str, Any]:
    received = [await lr_note.expect(), await lr_note.expect()]
    try:
        received.append(await lr_note.expect(timeout=0.2))
    except ev.Timeout:
        return {"received": received, "third": None}
    return {"received": received, "third": "arrived"}


@ev.workflow
async def lr_wait_approval() -> dict[str, Any]:
    decision = await lr_approval.expect()
    return {"type": type(decision).__name__, "ok": decision.ok}


@ev.workflow
async def lr_double(x: int) -> int:
    return x * 2


@ev.workflow
async def lr_broken() -> None:
    raise LookupError("nothing here")


@ev.workflow
async def lr_reject(x: int) -> int:
    raise ValueError(f"cannot take {x}")


@ev.workflow
async def lr_calls_children(x: int) -> dict[str, Any]:
    doubled = await lr_double(x)
    try:
        await lr_reject(doubled)
    except ev.ExecutionFailed as exc:
        return {"doubled": doubled, "error": exc.error, "message": exc.message, "child": exc.execution_id}
    return {"doubled": doubled}


@ev.workflow
async def lr_lets_child_fail(x: int) -> int:
    return await lr_reject(x)


@ev.workflow
async def lr_sleepy_child() -> str:
    await ev.sleep(30)
    return "woke"


@ev.workflow
async def lr_catches_cancelled_child() -> str:
    handle = await lr_sleepy_child.start()
    try:
        await handle.result()
    except ev.ExecutionCancelled as exc:
        return f"child cancelled: {exc.execution_id}"
    return "child finished"


@ev.activity
async def lr_cleanup() -> None:
    return None


@ev.workflow
async def lr_long_with_cleanup() -> str:
    try:
        await ev.sleep(5)
    finally:
        await lr_cleanup()
    return "slept"


@ev.workflow(timeout="0.2s")
async def lr_times_out() -> str:
    await ev.sleep(5)
    return "slept"


@ev.activity
async def lr_reserve_seat(seat: str) -> str:
    return f"reserved {seat}"


@ev.activity
async def lr_release_seat(seat: str) -> str:
    return f"released {seat}"


@ev.workflow
async def lr_booking(seat: str) -> str:
    await lr_reserve_seat(seat)
    try:
        await ev.sleep(30)
    except asyncio.CancelledError:
        await lr_release_seat(seat)
        raise
    return "booked"


@ev.activity
async def lr_shout(text: str) -> str:
    print(f"shouting {text}")
    return text.upper()


@ev.workflow
async def lr_printing(x: int) -> str:
    print(f"before sleep {x}")
    await ev.sleep(0.05)
    shouted = await lr_shout(f"x{x}")
    print(f"after sleep {x}")
    return shouted


@ev.workflow
async def lr_take_order(order: Order) -> int:
    return order.qty


class LrOpened(ev.Event):
    account_id: str


class LrFlaky(ev.Event):
    key: str
    fail_times: int


class DeliveryError(Exception):
    pass


OPENED: list[str] = []
FLAKY_ATTEMPTS: Counter[str] = Counter()


@ev.subscription(LrOpened, name="lr-count-opened")
async def lr_count_opened(event: LrOpened) -> None:
    assert isinstance(event, LrOpened)
    OPENED.append(event.account_id)


@ev.subscription(LrFlaky, name="lr-flaky", retry=ev.RetryPolicy(max_attempts=3, initial_interval="0.05s", backoff=2))
def lr_flaky_handler(event: LrFlaky) -> None:
    FLAKY_ATTEMPTS[event.key] += 1
    if FLAKY_ATTEMPTS[event.key] <= event.fail_times:
        raise DeliveryError(f"attempt {FLAKY_ATTEMPTS[event.key]} of {event.key} failed")


@ev.workflow
async def lr_publish_accounts(prefix: str) -> int:
    await ev.publish(LrOpened(account_id=f"{prefix}-1"))
    await ev.sleep(0.05)
    await ev.publish(LrOpened(account_id=f"{prefix}-2"), LrOpened(account_id=f"{prefix}-3"))
    return 3


@ev.workflow
async def lr_publish_flaky(fail_times: int) -> str:
    await ev.publish(LrFlaky(key=ev.workflow_info().execution_id, fail_times=fail_times))
    return "published"


# ============================================================================ the suite on both runtimes

# ------------------------------------------------------------------------------------------ activities


async def test_activity_success_is_one_scheduled_and_one_succeeded(rig: Rig) -> None:
    ATTEMPTS.clear()
    handle = await lr_retrying.start(0)
    assert await rig.finish(handle) == "ok after 1"
    history = await handle.history()
    seq = first(history, "ActivityScheduled").seq
    assert by_seq(history, seq) == ["ActivityScheduled", "ActivitySucceeded"]
    assert first(history, "ActivitySucceeded").attempts == 1
    assert types_of(history)[0] == "WorkflowStarted"
    assert types_of(history)[-1] == "WorkflowSucceeded"


async def test_retries_with_backoff_record_attempts_once(rig: Rig) -> None:
    """Two failures then success: three runs, yet history has one ActivityScheduled and one
    ActivitySucceeded (attempts=3), and the backoff waits (0.05 s + 0.1 s) really passed."""
    ATTEMPTS.clear()
    handle = await lr_retrying.start(2)
    assert await rig.finish(handle) == "ok after 3"
    assert ATTEMPTS[handle.id] == 3
    history = await handle.history()
    scheduled = first(history, "ActivityScheduled")
    assert by_seq(history, scheduled.seq) == ["ActivityScheduled", "ActivitySucceeded"]
    succeeded = first(history, "ActivitySucceeded")
    assert succeeded.attempts == 3
    assert succeeded.timestamp - scheduled.timestamp >= timedelta(seconds=0.149)


async def test_an_inline_activity_retries_and_times_out_like_any_other(rig: Rig) -> None:
    """The same history, result and idempotency key on every runtime: on AWS the attempts run inside the
    orchestrator (retries wait as timers), on the others `inline` has no visible effect."""
    ATTEMPTS.clear()
    rig.hangs(lr_inline_slow, "timeout")
    handle = await lr_inline.start(2)
    assert await rig.finish(handle) == {"first": "inline ok after 3", "timeout": "Timeout"}
    assert ATTEMPTS[handle.id] == 3
    history = await handle.history()
    flaky_seq, slow_seq = [event.seq for event in history if event.type == "ActivityScheduled"]
    assert by_seq(history, flaky_seq) == ["ActivityScheduled", "ActivitySucceeded"]
    assert first(history, "ActivitySucceeded").attempts == 3
    assert by_seq(history, slow_seq) == ["ActivityScheduled", "ActivityTimedOut"]
    assert INLINE_KEYS[handle.id] == [f"{handle.id}/{flaky_seq}"] * 3


#: the payloads below are over the AWS limits (`eventual_nb.runtime.core.limits`): 350 KB of input, 250 KB else
BIG_INPUT = 360_000
BIG_PAYLOAD = 300_000
lr_bulk = ev.signal("lr_bulk")


class LrBulky(ev.Event):
    pad: str


@ev.activity
async def lr_bulky(size: int) -> str:
    return "x" * size


@ev.workflow
async def lr_payloads(request: dict[str, Any]) -> dict[str, Any]:
    """A signal's payload, then an activity's result, either of which may be too large for AWS."""
    payload = await lr_bulk.expect()
    try:
        result = await lr_bulky(request["size"])
    except ev.ActivityFailed as exc:
        return {"signal": len(payload), "failed": exc.error, "message": exc.message}
    return {"signal": len(payload), "result": len(result)}


async def test_payloads_too_large_for_aws_are_refused_there_and_warned_about_elsewhere(rig: Rig) -> None:
    """On AWS a workflow input, a signal payload and an event over their service's limit are refused on the call
    (`PayloadTooLarge`, nothing recorded), and an activity result over it fails the call, never retried, naming
    the limit and the way out. The TestEnvironment and the LocalRuntime accept them all and write a warning in
    the execution's logs, so a notebook that passes locally does not fail only after deploy."""
    big = {"pad": "y" * BIG_INPUT, "size": BIG_PAYLOAD}
    if rig.kind == "aws":
        with pytest.raises(ev.PayloadTooLarge, match=r"the input of execution .* 358,400 bytes"):
            await lr_payloads.start(big, name="too-big")
        with pytest.raises(ev.ExecutionNotFound):
            await rig.rt.get_execution("lr_payloads/too-big")  # nothing was recorded
        with pytest.raises(ev.PayloadTooLarge, match=r"event 'LrBulky' is 300,\d+ bytes .*EventBridge entry"):
            await rig.rt.publish_events(LrBulky(pad="e" * BIG_PAYLOAD))
        handle = await lr_payloads.start({"pad": "", "size": BIG_PAYLOAD})
        with pytest.raises(ev.PayloadTooLarge, match=r"the payload of signal 'lr_bulk' .* SQS message"):
            await handle.signal(lr_bulk, "s" * BIG_PAYLOAD)
        await handle.signal(lr_bulk, "s")
        outcome = await rig.finish(handle)
        assert outcome["signal"] == 1
        assert outcome["failed"] == "PayloadTooLarge"
        assert "the result of activity 'lr_bulky' (seq 0)" in outcome["message"]
        assert "holds at most 256,000 bytes" in outcome["message"]
        assert "make the activity inline" in outcome["message"]
        (failed,) = [event for event in await handle.history() if event.type == "ActivityFailed"]
        assert failed.attempts == 1
        return
    handle = await lr_payloads.start(big)
    await handle.signal(lr_bulk, "s" * BIG_PAYLOAD)
    assert await rig.finish(handle) == {"signal": BIG_PAYLOAD, "result": BIG_PAYLOAD}
    warnings = [entry.message for entry in await handle.logs() if entry.source == "runtime"]
    assert [line.split(" is ")[0] for line in warnings] == [
        f"warning: would not fit on AWS: the input of execution '{handle.id}'",
        f"warning: would not fit on AWS: the payload of signal 'lr_bulk' to '{handle.id}'",
        f"warning: would not fit on AWS: the result of activity 'lr_bulky' (seq 0) of '{handle.id}'",
    ]
    assert all('see "Service limits" in the README' in line for line in warnings)


@ev.activity
async def lr_measure(data: dict[str, Any]) -> int:
    return len(data["pad"])


@ev.workflow
async def lr_sends(size: int) -> dict[str, Any]:
    """What the workflow itself sends may be too large for AWS: an event it publishes, an activity's input, its
    result."""
    await ev.publish(LrBulky(pad="e" * size))
    try:
        measured: Any = await lr_measure({"pad": "i" * size})
    except ev.ActivityFailed as exc:
        measured = exc.error
    return {"measured": measured, "pad": "r" * BIG_INPUT}


async def test_what_the_workflow_sends_too_large_for_aws_fails_the_call_there_and_is_warned_about_elsewhere(
    rig: Rig,
) -> None:
    """On AWS nothing too large is handed to SQS, EventBridge or the execution's record, where it would be
    refused after the turn was committed and retried until it ended in a dead-letter queue: the activity call
    fails with `PayloadTooLarge`, the event is not published and the log says why, and the execution ends
    FAILED with `PayloadTooLarge` for its result. Elsewhere all of it goes through with a warning each."""
    handle = await lr_sends.start(BIG_PAYLOAD)
    if rig.kind == "aws":
        with pytest.raises(ev.ExecutionFailed) as info:
            await rig.finish(handle)
        assert info.value.error == "PayloadTooLarge"
        assert f"the result of execution '{handle.id}' is" in info.value.message
        history = await handle.history()
        (failed,) = [event for event in history if event.type == "ActivityFailed"]
        assert failed.error == "PayloadTooLarge"
        assert "the input of activity 'lr_measure'" in failed.message
        lines = [entry.message for entry in await handle.logs() if entry.source == "runtime"]
        assert any(line.startswith("not published on AWS: event 'LrBulky'") for line in lines)
        assert any(line.startswith(f"refused on AWS: the result of execution '{handle.id}'") for line in lines)
        return
    assert (await rig.finish(handle))["measured"] == BIG_PAYLOAD
    warnings = [entry.message for entry in await handle.logs() if entry.source == "runtime"]
    assert sorted(line.split(" is ")[0] for line in warnings) == sorted(
        [
            f"warning: would not fit on AWS: event 'LrBulky' published by '{handle.id}'",
            "warning: would not fit on AWS: the input of activity 'lr_measure' (seq 1)",
            f"warning: would not fit on AWS: the result of execution '{handle.id}'",
        ]
    )


async def test_running_out_of_attempts_reports_the_last_error(rig: Rig) -> None:
    ATTEMPTS.clear()
    handle = await lr_retrying.start(10)
    assert await rig.finish(handle) == {"error": "ConnectionError", "message": "attempt 3 failed", "attempts": 3}
    assert ATTEMPTS[handle.id] == 3
    history = await handle.history()
    assert by_seq(history, first(history, "ActivityScheduled").seq) == ["ActivityScheduled", "ActivityFailed"]


async def test_non_retryable_error_stops_after_one_attempt(rig: Rig) -> None:
    ATTEMPTS.clear()
    handle = await lr_non_retryable.start()
    assert await rig.finish(handle) == {"error": "ValueError", "message": "never going to work", "attempts": 1}
    await rig.idle(0.2)  # no retry is pending either
    assert ATTEMPTS[handle.id] == 1


async def test_activity_timeout_raises_timeout(rig: Rig) -> None:
    rig.hangs(lr_slow, "timeout")
    handle = await lr_times_activity.start("slow")
    assert await rig.finish(handle) == {"timeout": "Timeout", "builtin": True}
    history = await handle.history()
    scheduled = first(history, "ActivityScheduled")
    assert by_seq(history, scheduled.seq) == ["ActivityScheduled", "ActivityTimedOut"]
    timed_out = first(history, "ActivityTimedOut")
    assert timed_out.attempts == 1
    assert timed_out.timestamp - scheduled.timestamp >= timedelta(seconds=0.199)


async def test_missing_heartbeats_raise_heartbeat_timeout(rig: Rig) -> None:
    rig.hangs(lr_silent, "heartbeat")
    handle = await lr_times_activity.start("silent")
    assert await rig.finish(handle) == {"timeout": "HeartbeatTimeout", "builtin": True}
    history = await handle.history()
    scheduled = first(history, "ActivityScheduled")
    assert by_seq(history, scheduled.seq) == ["ActivityScheduled", "ActivityHeartbeatTimedOut"]
    assert first(history, "ActivityHeartbeatTimedOut").timestamp - scheduled.timestamp >= timedelta(seconds=0.199)


async def test_heartbeats_keep_a_long_activity_alive(rig: Rig) -> None:
    """Runs 0.5 s with a 0.2 s heartbeat timeout (the silent control above fails that way) and succeeds."""
    handle = await lr_times_activity.start("beating")
    assert await rig.finish(handle) == {"result": 10}
    assert first(await handle.history(), "ActivitySucceeded").attempts == 1


async def test_async_completion_with_success_and_forged_token(rig: Rig) -> None:
    TOKENS.clear()
    handle = await lr_waits_external.start("order-1")
    await rig.until(lambda: TOKENS, "the async_result callback")
    token = TOKENS[0]
    assert (await handle.status()).status == ev.ExecutionStatus.IN_PROGRESS
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    before = await handle.history()
    with pytest.raises(ev.EventualError):
        await rig.rt.send_activity_success(forged, "stolen")
    assert await handle.history() == before
    with pytest.raises(ev.EventualError):
        await rig.rt.send_activity_heartbeat(forged)
    beat = await rig.rt.send_activity_heartbeat(token)
    assert beat.cancelled is False
    await rig.rt.send_activity_success(token, "shipped")
    assert await rig.finish(handle) == {"result": "shipped"}
    assert TOKENS == [token]  # the callback ran once
    with pytest.raises(ev.EventualError):
        await rig.rt.send_activity_success(token, "twice")
    history = await handle.history()
    assert types_of(history).count("ActivitySucceeded") == 1


async def test_async_completion_with_failure(rig: Rig) -> None:
    TOKENS.clear()
    handle = await lr_waits_external.start("order-2")
    await rig.until(lambda: TOKENS, "the async_result callback")
    await rig.rt.send_activity_failure(TOKENS[0], "OutOfStock", "no more widgets")
    assert await rig.finish(handle) == {"error": "OutOfStock", "message": "no more widgets"}
    failed = [e for e in await handle.history() if e.type == "ActivityFailed"]
    assert [(e.error, e.message, e.attempts) for e in failed] == [("OutOfStock", "no more widgets", 1)]
    with pytest.raises(ev.EventualError):
        await rig.rt.send_activity_failure(TOKENS[0], "Again")


async def test_a_failed_async_completion_is_retried_with_a_new_token(rig: Rig) -> None:
    TOKENS.clear()
    handle = await lr_waits_external_twice.start("order-3")
    await rig.until(lambda: TOKENS, "the async_result callback")
    await rig.rt.send_activity_failure(TOKENS[0], "Busy", "try again later")
    await rig.until(lambda: len(TOKENS) >= 2, "the second attempt's callback")
    assert TOKENS[1] != TOKENS[0]  # a new attempt, with its own token
    with pytest.raises(ev.EventualError):
        await rig.rt.send_activity_success(TOKENS[0], "from the failed attempt")
    await rig.rt.send_activity_success(TOKENS[1], "done")
    assert await rig.finish(handle) == {"result": "done"}
    history = await handle.history()
    assert by_seq(history, first(history, "ActivityScheduled").seq) == ["ActivityScheduled", "ActivitySucceeded"]
    assert first(history, "ActivitySucceeded").attempts == 2
    assert (await rig.rt.send_activity_heartbeat(TOKENS[1])).cancelled is True


async def test_an_async_attempt_whose_heartbeats_stop_times_out(rig: Rig) -> None:
    """Heartbeats by token keep a waiting attempt alive; once they stop, its heartbeat timeout fails it."""
    TOKENS.clear()
    handle = await lr_waits_external_beating.start("order-4")
    await rig.until(lambda: TOKENS, "the async_result callback")
    assert (await rig.rt.send_activity_heartbeat(TOKENS[0])).cancelled is False
    assert await rig.finish(handle) == {"timeout": "HeartbeatTimeout"}
    history = await handle.history()
    scheduled = first(history, "ActivityScheduled")
    assert by_seq(history, scheduled.seq) == ["ActivityScheduled", "ActivityHeartbeatTimedOut"]
    assert first(history, "ActivityHeartbeatTimedOut").timestamp - scheduled.timestamp >= timedelta(seconds=0.299)
    with pytest.raises(ev.EventualError):
        await rig.rt.send_activity_success(TOKENS[0], "too late")
    assert (await rig.rt.send_activity_heartbeat(TOKENS[0])).cancelled is True


async def test_a_token_used_while_the_attempt_runs_wins_over_its_return_value(real_rig: Rig) -> None:
    rig = real_rig
    TOKENS.clear()
    handle = await lr_completed_while_running.start()
    await rig.until(lambda: TOKENS, "the running activity to hand out its token")
    await rig.rt.send_activity_success(TOKENS[0], "by token")
    RELEASED.add(handle.id)
    assert await rig.finish(handle) == "by token"
    await rig.idle(0.2)  # the attempt's own value arrives after that: it is dropped
    history = await handle.history()
    assert types_of(history).count("ActivitySucceeded") == 1
    assert first(history, "ActivitySucceeded").result == "by token"


async def test_a_token_failure_while_the_attempt_runs_is_retried_per_policy(rig: Rig) -> None:
    """A failure reported by token while the attempt still runs is one failed attempt, retried per the
    activity's policy on every runtime (AWS used to settle it as ActivityFailed, the TestEnvironment let the
    attempt's own late return value win); what the attempt returns afterwards is dropped."""
    ATTEMPTS.clear()
    REPORTS_TO["runtime"] = rig.rt
    handle = await lr_fails_itself.start()
    assert await rig.finish(handle) == {"result": "attempt 2"}
    assert ATTEMPTS[handle.id] == 2
    history = await handle.history()
    assert by_seq(history, first(history, "ActivityScheduled").seq) == ["ActivityScheduled", "ActivitySucceeded"]
    assert first(history, "ActivitySucceeded").attempts == 2


@ev.activity(retry=ev.RetryPolicy(max_attempts=2, initial_interval="0.05s"))
def lr_sync_add(a: int, b: int) -> int:
    """A plain `def` activity (runs in a worker thread) that fails its first attempt."""
    ATTEMPTS[ev.activity_info().execution_id] += 1
    if ev.activity_info().attempt == 1:
        raise RuntimeError("first attempt fails")
    return a + b


@ev.workflow
async def lr_adds(x: int) -> int:
    return await lr_sync_add(x, 1)


async def test_sync_activity_runs_and_retries(rig: Rig) -> None:
    ATTEMPTS.clear()
    handle = await lr_adds.start(41)
    assert await rig.finish(handle) == 42
    assert ATTEMPTS[handle.id] == 2
    assert first(await handle.history(), "ActivitySucceeded").attempts == 2


# ------------------------------------------------------------------------------------------ timers


async def test_sleep_asyncio_sleep_wait_for_and_sleep_until(rig: Rig) -> None:
    handle = await lr_timers.start()
    result = await rig.finish(handle)
    assert result["waited"] == "timed out"
    assert len(result["gaps"]) == 4
    for gap, at_least in zip(result["gaps"], (0.1, 0.1, 0.1, 0.3), strict=True):
        assert gap >= at_least - 0.001
    history = await handle.history()
    assert types_of(history).count("TimerScheduled") == 4
    assert types_of(history).count("TimerCompleted") == 4


async def test_result_timeout_raises_timeout_and_leaves_the_execution_running(rig: Rig) -> None:
    handle = await lr_sleepy_child.start()
    with pytest.raises(ev.Timeout):
        await handle.result(timeout=0.1)
    assert (await handle.status()).status == ev.ExecutionStatus.IN_PROGRESS
    await handle.cancel()
    with pytest.raises(ev.ExecutionCancelled):
        await rig.finish(handle)


#: 10,000 years, in seconds: far past what a deadline can be
TEN_THOUSAND_YEARS = 10_000 * 365 * 86400


@ev.workflow
async def lr_waits_ten_thousand_years(kind: str) -> None:
    if kind == "ev.sleep":
        await ev.sleep(TEN_THOUSAND_YEARS)
    elif kind == "asyncio.sleep":
        await asyncio.sleep(TEN_THOUSAND_YEARS)
    elif kind == "asyncio.timeout":
        async with asyncio.timeout(TEN_THOUSAND_YEARS):
            await lr_note.expect()
    elif kind == "wait_for":
        await asyncio.wait_for(asyncio.get_running_loop().create_future(), TEN_THOUSAND_YEARS)
    elif kind == "expect":
        await lr_note.expect(timeout=f"{10_000 * 365} days")
    elif kind == "condition":
        await ev.condition(lambda: False, timeout=TEN_THOUSAND_YEARS)
    elif kind == "activity":
        await lr_slow.options(timeout=TEN_THOUSAND_YEARS)()
    elif kind == "nan":
        await asyncio.sleep(float("nan"))


#: each way of waiting, and how the message names what was too long
TOO_LONG_WAITS = {
    "ev.sleep": f"sleep duration {TEN_THOUSAND_YEARS}",
    "asyncio.sleep": "asyncio delay",
    "asyncio.timeout": "asyncio delay",
    "wait_for": "asyncio delay",
    "expect": f"expect timeout '{10_000 * 365} days'",
    "condition": f"condition timeout {TEN_THOUSAND_YEARS}",
    "activity": f"timeout of activity 'lr_slow' {TEN_THOUSAND_YEARS}",
    "nan": "asyncio delay",
}


async def test_a_wait_too_long_to_store_fails_the_execution_naming_value_and_limit(rig: Rig) -> None:
    """No ValueError/OverflowError from datetime arithmetic: the call raises `InvalidDuration` (an EventualError)
    and the execution fails with its message, which names the value and the limit (NaN: that it is no number)."""
    handles = {kind: await lr_waits_ten_thousand_years.start(kind) for kind in TOO_LONG_WAITS}
    for kind, handle in handles.items():
        with pytest.raises(ev.ExecutionFailed) as info:
            await rig.finish(handle)
        assert info.value.error == "InvalidDuration", (kind, info.value)
        message = info.value.message
        assert TOO_LONG_WAITS[kind] in message, (kind, message)
        limit = (
            "a duration must be a finite number" if kind == "nan" else "a duration is at most 100 years (36525 days)"
        )
        assert limit in message, (kind, message)
        status = await handle.status()
        assert (status.error, status.message) == ("InvalidDuration", message)
        assert types_of(await handle.history()) == ["WorkflowStarted", "WorkflowFailed"], kind


async def test_a_start_timeout_too_long_to_store_is_refused_and_records_nothing(rig: Rig) -> None:
    for timeout, named in [
        (f"{10_000 * 365}d", "a duration is at most 100 years"),
        (True, "expected seconds"),
        (math.nan, "finite"),
    ]:
        with pytest.raises(ev.EventualError) as info:
            await lr_sleepy_child.start(timeout=timeout)
        assert named in str(info.value), str(info.value)
        assert "timeout" in str(info.value), str(info.value)
    page = await rig.rt.list_executions(workflow=lr_sleepy_child.name)
    assert page.executions == []


# ------------------------------------------------------------------------------------------ signals


async def test_signals_sent_before_expect_are_buffered_oldest_first(rig: Rig) -> None:
    handle = await lr_collect_notes.start(3)
    await lr_note.send(handle, "a")
    await handle.signal(lr_note, "b")
    await rig.rt.send_signal(handle.id, "lr_note", "c")
    assert await rig.finish(handle) == ["a", "b", "c"]
    received = [event for event in await handle.history() if event.type == "SignalReceived"]
    assert [event.payload for event in received] == ["a", "b", "c"]


async def test_typed_signal_payloads_arrive_as_models(rig: Rig) -> None:
    handle = await lr_wait_approval.start()
    with pytest.raises(ev.InputValidationError):
        await rig.rt.send_signal(handle, "lr_approval", {"ok": "maybe"})
    await rig.rt.send_signal(handle, "lr_approval", {"ok": True})
    assert await rig.finish(handle) == {"type": "Approval", "ok": True}
    assert types_of(await handle.history()).count("SignalReceived") == 1


async def test_on_handler_then_dispose_then_expect(rig: Rig) -> None:
    handle = await lr_dispose_after_one.start()
    await rig.until(lambda: rig.has(handle, "WorkflowStarted"), "the start")
    await lr_note.send(handle, "to handler")
    await rig.until(lambda: rig.has(handle, "SignalReceived"), "the first signal to be handled")
    await lr_note.send(handle, "to expect")
    assert await rig.finish(handle) == {"handled": ["to handler"], "expected": "to expect"}


async def test_signals_with_the_same_id_are_delivered_once(rig: Rig) -> None:
    handle = await lr_dedup_notes.start()
    await lr_note.send(handle, "a", id="k1")
    await lr_note.send(handle, "a again", id="k1")
    await handle.signal(lr_note, "a a third time", id="k1")
    await lr_note.send(handle, "b", id="k2")
    assert await rig.finish(handle) == {"received": ["a", "b"], "third": None}
    received = [event for event in await handle.history() if event.type == "SignalReceived"]
    assert [(event.payload, event.id) for event in received] == [("a", "k1"), ("b", "k2")]


async def test_signal_to_finished_or_unknown_execution_raises(rig: Rig) -> None:
    handle = await lr_double.start(1)
    assert await rig.finish(handle) == 2
    before = await handle.history()
    with pytest.raises(ev.EventualError, match="SUCCEEDED"):
        await lr_note.send(handle, "too late")
    assert await handle.history() == before
    with pytest.raises(ev.ExecutionNotFound):
        await lr_note.send("lr_collect_notes/nobody", "hi")


@ev.workflow
async def lr_notes_to(target: str) -> str:
    await lr_note.send(target, "a late note")
    return "sent"


async def test_a_workflow_signal_to_an_ended_or_unknown_execution_is_logged_as_ignored(rig: Rig) -> None:
    """Sent from a workflow, such a signal is recorded (SignalSent), not delivered, and the sender's log says
    why, on every runtime (AWS used to send it and say nothing)."""
    done = await lr_double.start(1)
    assert await rig.finish(done) == 2
    to_ended = await lr_notes_to.start(done.id)
    to_nobody = await lr_notes_to.start("lr_double/nobody")
    assert await rig.finish(to_ended) == "sent"
    assert await rig.finish(to_nobody) == "sent"
    assert types_of(await to_ended.history()).count("SignalSent") == 1
    assert "SignalReceived" not in types_of(await done.history())
    expected = {
        to_ended: f"signal 'lr_note' to '{done.id}' ignored: it is SUCCEEDED",
        to_nobody: "signal 'lr_note' to 'lr_double/nobody' ignored: no such execution",
    }
    for sender, line in expected.items():

        async def logged(sender: ev.ExecutionHandle = sender, line: str = line) -> bool:
            return line in [entry.message for entry in await sender.logs()]

        await rig.until(logged, f"the line {line!r} in the sender's log")


# ------------------------------------------------------------------------------------------ events


async def test_events_reach_each_subscription_once_per_publish(rig: Rig) -> None:
    OPENED.clear()
    handle = await lr_publish_accounts.start("acct")
    assert await rig.finish(handle) == 3
    await rig.rt.publish_events(LrOpened(account_id="direct"), {"name": "LrOpened", "event": {"account_id": "env"}})
    await rig.until(lambda: len(OPENED) >= 5, "five deliveries")
    await rig.idle(0.2)
    assert sorted(OPENED) == ["acct-1", "acct-2", "acct-3", "direct", "env"]
    recorded = [event for event in await handle.history() if event.type == "EventsPublished"]
    assert [len(event.events) for event in recorded] == [1, 2]


async def test_a_failing_subscription_is_retried_until_it_succeeds(rig: Rig) -> None:
    FLAKY_ATTEMPTS.clear()
    handle = await lr_publish_flaky.start(2)
    await rig.finish(handle)
    await rig.until(lambda: FLAKY_ATTEMPTS[handle.id] >= 3, "the third delivery")
    await rig.idle(0.3)
    assert FLAKY_ATTEMPTS[handle.id] == 3
    assert await rig.rt.list_dead_letters() == []


async def test_a_subscription_that_keeps_failing_is_dead_lettered(rig: Rig) -> None:
    FLAKY_ATTEMPTS.clear()
    handle = await lr_publish_flaky.start(10)
    await rig.finish(handle)

    async def dead_lettered() -> bool:
        return bool(await rig.rt.list_dead_letters())

    await rig.until(dead_lettered, "a dead letter")
    [letter] = await rig.rt.list_dead_letters()
    assert letter.subscription == "lr-flaky"
    assert letter.error == "DeliveryError"
    assert letter.message == f"attempt 3 of {handle.id} failed"
    assert letter.attempts == 3
    assert letter.event == {"name": "LrFlaky", "event": {"key": handle.id, "fail_times": 10}}
    await rig.idle(0.3)
    assert FLAKY_ATTEMPTS[handle.id] == 3  # no more deliveries after dead-lettering
    assert len(await rig.rt.list_dead_letters()) == 1


# ------------------------------------------------------------------------------------------ children


async def test_child_success_and_caught_child_failure(rig: Rig) -> None:
    handle = await lr_calls_children.start(4, name="p1")
    assert await rig.finish(handle) == {
        "doubled": 8,
        "error": "ValueError",
        "message": "cannot take 8",
        "child": "lr_reject/~lr_calls_children-p1-1",
    }
    ok_child = await rig.rt.get_execution("lr_double/~lr_calls_children-p1-0")
    failed_child = await rig.rt.get_execution("lr_reject/~lr_calls_children-p1-1")
    assert (ok_child.status, ok_child.result, ok_child.parent) == (
        ev.ExecutionStatus.SUCCEEDED,
        8,
        "lr_calls_children/p1",
    )
    assert (failed_child.status, failed_child.error) == (ev.ExecutionStatus.FAILED, "ValueError")
    history = await handle.history()
    assert "ChildWorkflowSucceeded" in types_of(history)
    assert "ChildWorkflowFailed" in types_of(history)


async def test_uncaught_child_failure_fails_the_parent(rig: Rig) -> None:
    handle = await lr_lets_child_fail.start(7)
    with pytest.raises(ev.ExecutionFailed) as info:
        await rig.finish(handle)
    assert (info.value.error, info.value.message) == ("ValueError", "cannot take 7")


async def test_cancelled_child_raises_execution_cancelled_in_the_parent(rig: Rig) -> None:
    parent = await lr_catches_cancelled_child.start(name="pc")
    child_id = "lr_sleepy_child/~lr_catches_cancelled_child-pc-0"

    async def child_sleeping() -> bool:
        try:
            return "TimerScheduled" in types_of(await rig.rt.get_execution_history(child_id))
        except ev.ExecutionNotFound:
            return False

    await rig.until(child_sleeping, "the child to sleep")
    await rig.rt.cancel_execution(child_id)
    assert await rig.finish(parent) == f"child cancelled: {child_id}"
    assert (await rig.rt.get_execution(child_id)).status == ev.ExecutionStatus.CANCELLED


async def test_cancelling_a_parent_cancels_its_running_child(rig: Rig) -> None:
    parent = await lr_catches_cancelled_child.start(name="pp")
    child_id = "lr_sleepy_child/~lr_catches_cancelled_child-pp-0"
    await rig.until(lambda: rig.has(parent, "ChildWorkflowScheduled"), "the child start")
    await parent.cancel()
    with pytest.raises(ev.ExecutionCancelled):
        await rig.finish(parent)
    await rig.until(
        lambda: _status_is(rig, child_id, ev.ExecutionStatus.CANCELLED), "the child to be cancelled as well"
    )


async def _status_is(rig: Rig, execution_id: str, status: ev.ExecutionStatus) -> bool:
    return (await rig.rt.get_execution(execution_id)).status == status


# ------------------------------------------------------------------------------------------ timeouts, cancel


@pytest.mark.parametrize("per_start", [True, False], ids=["per-start", "definition"])
async def test_workflow_timeout_fails_without_cleanup(rig: Rig, per_start: bool) -> None:
    if per_start:
        handle = await lr_long_with_cleanup.start(timeout="0.2s")
    else:
        handle = await lr_times_out.start()
    with pytest.raises(ev.WorkflowTimeout) as info:
        await rig.finish(handle)
    assert info.value.error == "WorkflowTimeout"
    status = await handle.status()
    assert (status.status, status.error) == (ev.ExecutionStatus.FAILED, "WorkflowTimeout")
    assert status.end_time is not None
    assert status.end_time - status.start_time >= timedelta(seconds=0.199)
    history = await handle.history()
    assert history[0].timeout_at == status.start_time + timedelta(seconds=0.2)
    assert types_of(history)[-1] == "WorkflowFailed"
    await rig.idle(0.2)
    assert not [event for event in await handle.history() if event.type == "ActivityScheduled"]


async def test_cancel_runs_durable_compensation_then_ends_cancelled(rig: Rig) -> None:
    handle = await lr_booking.start("12A")
    await rig.until(lambda: rig.has(handle, "TimerScheduled"), "the booking to sleep")
    await handle.cancel()
    with pytest.raises(ev.ExecutionCancelled):
        await rig.finish(handle)
    assert (await handle.status()).status == ev.ExecutionStatus.CANCELLED
    history = await handle.history()
    kinds = types_of(history)
    cancel_at = kinds.index("CancelRequested")
    released = [i for i, e in enumerate(history) if e.type == "ActivityScheduled" and e.name == "lr_release_seat"]
    assert len(released) == 1
    assert released[0] > cancel_at
    assert by_seq(history, history[released[0]].seq) == ["ActivityScheduled", "ActivitySucceeded"]
    assert kinds[-1] == "WorkflowCancelled"
    assert "TimerCompleted" not in kinds
    with pytest.raises(ev.EventualError, match="CANCELLED"):
        await handle.cancel()


# ------------------------------------------------------------------------------------------ starts


async def test_idempotent_start(rig: Rig) -> None:
    waiting = await lr_wait_approval.start(name="once")
    again = await lr_wait_approval.start(name="once")
    assert again.already_running
    assert again.id == waiting.id == "lr_wait_approval/once"
    first_run = await lr_double.start(3, name="same")
    assert await rig.finish(first_run) == 6
    after = await lr_double.start(3, name="same")
    assert after.already_running
    assert after.id == first_run.id
    with pytest.raises(ev.ExecutionAlreadyExists) as info:
        await lr_double.start(4, name="same")
    assert "lr_double/same" in str(info.value)
    assert (await rig.rt.get_execution("lr_double/same")).input == 3
    ids = [e.id for e in (await rig.rt.list_executions()).executions]
    assert ids == ["lr_wait_approval/once", "lr_double/same"]
    await waiting.signal(lr_approval, Approval(ok=False))
    assert await rig.finish(waiting) == {"type": "Approval", "ok": False}


async def test_invalid_input_and_names_are_rejected_and_nothing_is_recorded(rig: Rig) -> None:
    await rig.finish(await lr_take_order.start(Order(id="fine", qty=1)))
    before = (await rig.rt.list_executions()).executions
    with pytest.raises(ev.InputValidationError) as info:
        await lr_take_order.start({"id": "a", "qty": "lots"})
    assert any("qty" in [str(part) for part in error.get("loc", ())] for error in info.value.errors)
    with pytest.raises(ev.InputValidationError):
        await rig.rt.start_execution("lr_take_order", None, name="no-input")
    with pytest.raises(ev.InputValidationError):
        await lr_take_order.start(Order(id="x", qty=1), name="has space")
    assert (await rig.rt.list_executions()).executions == before


async def test_unknown_workflow_raises_workflow_not_found(rig: Rig) -> None:
    with pytest.raises(ev.WorkflowNotFound) as info:
        await rig.rt.start_execution("lr_no_such_workflow", None)
    assert "lr_no_such_workflow" in str(info.value)
    assert info.value.status_code == 404
    assert (await rig.rt.list_executions()).executions == []


@pytest.mark.parametrize(
    "call",
    [
        lambda rt: rt.get_execution("lr_double/nope"),
        lambda rt: rt.get_execution_history("lr_double/nope"),
        lambda rt: rt.get_execution_logs("lr_double/nope"),
        lambda rt: rt.send_signal("lr_double/nope", lr_note, "x"),
        lambda rt: rt.cancel_execution("lr_double/nope"),
    ],
    ids=["get_execution", "history", "logs", "signal", "cancel"],
)
async def test_unknown_execution_ids_raise_execution_not_found(rig: Rig, call: Any) -> None:
    with pytest.raises(ev.ExecutionNotFound) as info:
        await call(rig.rt)
    assert info.value.execution_id == "lr_double/nope"
    assert "lr_double/nope" in str(info.value)


# ------------------------------------------------------------------------------------------ patched


@ev.activity
async def lr_old_call() -> str:
    return "old"


@ev.activity
async def lr_new_call() -> str:
    return "new"


async def test_patched_old_history_takes_the_old_branch(rig: Rig) -> None:
    """The old execution finishes on v1; v2 replays it through the old branch (the replay check at the
    end replays it again) and new executions take the new branch with one PatchMarker."""
    branches: list[str] = []

    @ev.workflow(name="lr_patchy")
    async def lr_patchy_v1() -> str:
        return await lr_old_call()

    old = await lr_patchy_v1.start(name="before-patch")
    assert await rig.finish(old) == "old"
    old_history = await old.history()

    @ev.workflow(name="lr_patchy")
    async def lr_patchy_v2() -> str:
        if ev.patched("v2"):
            branches.append("new")
            return await lr_new_call()
        branches.append("old")
        return await lr_old_call()

    assert ev.testing.replay(lr_patchy_v2, old_history, execution_id=old.id) == []
    assert branches == ["old"]
    branches.clear()
    new = await rig.rt.start_execution("lr_patchy", None, name="after-patch")
    assert await rig.finish(new) == "new"
    history = await new.history()
    markers = [event for event in history if event.type == "PatchMarker"]
    assert [(marker.patch_id, marker.seq) for marker in markers] == [("v2", None)]
    assert [event.name for event in history if event.type == "ActivityScheduled"] == ["lr_new_call"]


# ------------------------------------------------------------------------------------------ logs, reading


async def test_logs_are_captured_once_from_workflow_and_activity(rig: Rig) -> None:
    handle = await lr_printing.start(7)
    assert await rig.finish(handle) == "X7"
    logs = [(entry.message, entry.source) for entry in await handle.logs()]
    assert logs == [
        ("before sleep 7", "workflow"),
        ("shouting x7", "lr_shout"),
        ("after sleep 7", "workflow"),
    ]


async def test_get_execution_fields(rig: Rig) -> None:
    before = rig.now()
    handle = await rig.rt.start_execution(lr_wait_approval, None, name="fields")
    after = rig.now()
    running = await rig.rt.get_execution(handle.id)
    assert isinstance(running, ev.Execution)
    assert (running.id, running.workflow, running.status) == (
        "lr_wait_approval/fields",
        "lr_wait_approval",
        ev.ExecutionStatus.IN_PROGRESS,
    )
    assert running.result is None
    assert running.end_time is None
    assert running.parent is None
    assert before <= running.start_time <= after
    await handle.signal(lr_approval, {"ok": True})
    assert await rig.finish(handle) == {"type": "Approval", "ok": True}
    done = await rig.rt.get_execution(handle.id)
    assert done.status == ev.ExecutionStatus.SUCCEEDED
    assert done.result == {"type": "Approval", "ok": True}
    assert done.error is None
    assert done.message is None
    assert done.start_time == running.start_time
    assert done.end_time is not None
    assert done.end_time >= done.start_time
    assert await handle.status() == done

    failed = await rig.rt.start_execution(lr_broken, None)
    with pytest.raises(ev.ExecutionFailed):
        await rig.finish(failed)
    execution = await rig.rt.get_execution(failed.id)
    assert (execution.status, execution.error, execution.message) == (
        ev.ExecutionStatus.FAILED,
        "LookupError",
        "nothing here",
    )
    names = {info.name for info in await rig.rt.list_workflows()}
    assert {"lr_wait_approval", "lr_broken", "lr_double"} <= names


async def test_list_executions_filters_sorts_and_pages(rig: Rig) -> None:
    ok = await lr_double.start(1, name="a")
    bad = await lr_broken.start(name="b")
    waiting = await lr_wait_approval.start(name="c")
    await rig.until(lambda: _status_is(rig, bad.id, ev.ExecutionStatus.FAILED), "b to fail")
    await rig.until(lambda: _status_is(rig, ok.id, ev.ExecutionStatus.SUCCEEDED), "a to succeed")
    rt = rig.rt
    assert [e.id for e in (await rt.list_executions(workflow="lr_double")).executions] == [ok.id]
    assert [e.id for e in (await rt.list_executions(statuses=[ev.ExecutionStatus.FAILED])).executions] == [bad.id]
    several = await rt.list_executions(statuses=[ev.ExecutionStatus.SUCCEEDED, ev.ExecutionStatus.IN_PROGRESS])
    assert [e.id for e in several.executions] == [ok.id, waiting.id]
    assert [e.id for e in (await rt.list_executions(statuses=["IN_PROGRESS"])).executions] == [waiting.id]
    assert [e.id for e in (await rt.list_executions()).executions] == [ok.id, bad.id, waiting.id]
    assert [e.id for e in (await rt.list_executions(sort="desc")).executions] == [waiting.id, bad.id, ok.id]
    assert (await rt.list_executions(workflow="lr_no_such_workflow")).executions == []
    with pytest.raises(ev.InputValidationError):
        await rt.list_executions(sort="sideways")
    with pytest.raises(ev.InputValidationError):
        await rt.list_executions(next_token="not-a-token")

    started = [ok.id, bad.id, waiting.id]
    for index in range(4):
        started.append((await lr_double.start(index, name=f"n{index}")).id)
    for page_size in (1, 2, 3, 7, 100):
        for sort in ("asc", "desc"):
            seen: list[str] = []
            token = None
            pages = 0
            while True:
                page = await rt.list_executions(next_token=token, max_results=page_size, sort=sort)
                assert len(page.executions) <= page_size
                seen.extend(e.id for e in page.executions)
                pages += 1
                token = page.next_token
                if token is None:
                    break
                assert pages < 20
            assert seen == (started if sort == "asc" else started[::-1]), (page_size, sort)
            assert pages == max(1, -(-len(started) // page_size))
    await waiting.cancel()


# ============================================================================ LocalRuntime only


@ev.activity
async def lr_step_a(x: int) -> int:
    ATTEMPTS[f"a:{ev.activity_info().execution_id}"] += 1
    return x + 1


@ev.activity
async def lr_step_b(x: int) -> int:
    ATTEMPTS[f"b:{ev.activity_info().execution_id}"] += 1
    return x * 10


@ev.workflow
async def lr_naps_between(x: int) -> int:
    a = await lr_step_a(x)
    await ev.sleep(0.5)
    return await lr_step_b(a)


#: set by a test to let `lr_gated` finish; created per test (asyncio.Event binds to the running loop)
GATE: dict[str, asyncio.Event] = {}


@ev.activity
async def lr_gated(x: int) -> int:
    ATTEMPTS[ev.activity_info().execution_id] += 1
    await GATE["open"].wait()
    return x * 3


@ev.workflow
async def lr_waits_gate(x: int) -> int:
    return await lr_gated(x)


def assert_each_step_once(history: list[Any]) -> None:
    """Every seq has exactly one scheduling event and at most one terminal event; one start, one end."""
    kinds = types_of(history)
    assert kinds.count("WorkflowStarted") == 1
    assert sum(kinds.count(kind) for kind in ("WorkflowSucceeded", "WorkflowFailed", "WorkflowCancelled")) == 1
    seqs = Counter(event.type for event in history if getattr(event, "seq", None) is not None)
    per_seq: dict[int, list[str]] = {}
    for event in history:
        if getattr(event, "seq", None) is not None:
            per_seq.setdefault(event.seq, []).append(event.type)
    for seq, events in per_seq.items():
        assert len(events) == 2, (seq, events)
        assert events[0].endswith("Scheduled"), (seq, events)
    assert seqs  # the workflow did do steps


async def wait_for(predicate: Callable[[], Awaitable[bool] | bool], what: str) -> None:
    for _ in range(WAIT * 100):
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"gave up waiting for {what}")


async def test_restart_continues_a_sleeping_execution_from_its_history(tmp_path: Path) -> None:
    ATTEMPTS.clear()
    path = tmp_path / "state.db"
    async with local_runtime(path) as rt:
        handle = await lr_naps_between.start(4, name="restart")
        await wait_for(lambda: _has(rt, handle.id, "TimerScheduled"), "the nap")
    async with local_runtime(path) as rt:
        assert (await rt.get_execution(handle.id)).status == ev.ExecutionStatus.IN_PROGRESS
        result = await rt.wait_for_execution(handle.id, WAIT)
        assert result.status == ev.ExecutionStatus.SUCCEEDED
        assert result.result == 50
        assert rt.replays == 1  # rebuilt once from history, then kept in memory
        history = await rt.get_execution_history(handle.id)
        assert types_of(history) == [
            "WorkflowStarted",
            "ActivityScheduled",
            "ActivitySucceeded",
            "TimerScheduled",
            "TimerCompleted",
            "ActivityScheduled",
            "ActivitySucceeded",
            "WorkflowSucceeded",
        ]
        assert_each_step_once(history)
    assert ATTEMPTS[f"a:{handle.id}"] == 1
    assert ATTEMPTS[f"b:{handle.id}"] == 1


async def _has(rt: Any, execution_id: str, event_type: str) -> bool:
    return event_type in types_of(await rt.get_execution_history(execution_id))


async def test_an_activity_interrupted_by_a_stop_runs_again_after_restart(tmp_path: Path) -> None:
    """Stopping the runtime while an activity awaits leaves its row 'running' (as a crash would); the next
    runtime re-runs it: side effects at least once, history with exactly one ActivitySucceeded."""
    ATTEMPTS.clear()
    path = tmp_path / "state.db"
    GATE["open"] = asyncio.Event()
    async with local_runtime(path) as rt:
        handle = await lr_waits_gate.start(5, name="crashy")
        await wait_for(lambda: ATTEMPTS[handle.id] >= 1, "the activity to start")
    with contextlib.closing(sqlite3.connect(path)) as cx:
        rows = cx.execute("SELECT status FROM activities WHERE execution_id = ?", (handle.id,)).fetchall()
    assert rows == [("running",)]
    GATE["open"].set()
    async with local_runtime(path) as rt:
        finished = await rt.wait_for_execution(handle.id, WAIT)
        assert (finished.status, finished.result) == (ev.ExecutionStatus.SUCCEEDED, 15)
        history = await rt.get_execution_history(handle.id)
        assert types_of(history).count("ActivityScheduled") == 1
        [succeeded] = [event for event in history if event.type == "ActivitySucceeded"]
        assert succeeded.attempts >= 1
        assert_each_step_once(history)
    assert ATTEMPTS[handle.id] >= 1


async def test_a_running_row_left_by_a_crash_is_rerun(tmp_path: Path) -> None:
    """A crash right after an attempt started, simulated in the file: the row is put back to 'running'
    for an execution whose activity had not finished; after restart the activity runs and completes."""
    ATTEMPTS.clear()
    path = tmp_path / "state.db"
    TOKENS.clear()
    async with local_runtime(path) as rt:
        handle = await lr_waits_external.start("after-crash", name="sim")
        await wait_for(lambda: TOKENS, "the async activity to hand out its token")
    with contextlib.closing(sqlite3.connect(path)) as cx, cx:
        changed = cx.execute(
            "UPDATE activities SET status = 'running' WHERE execution_id = ? AND status = 'async'", (handle.id,)
        ).rowcount
    assert changed == 1
    async with local_runtime(path) as rt:
        await wait_for(lambda: len(TOKENS) >= 2, "the activity to run again")
        assert TOKENS[0] != TOKENS[1]  # a new attempt, with its own token
        with pytest.raises(ev.EventualError):
            await rt.send_activity_success(TOKENS[0], "from the crashed attempt")
        await rt.send_activity_success(TOKENS[1], "done")
        finished = await rt.wait_for_execution(handle.id, WAIT)
        assert finished.result == {"result": "done"}
        history = await rt.get_execution_history(handle.id)
        assert types_of(history).count("ActivitySucceeded") == 1
        assert_each_step_once(history)


async def test_the_database_lock_names_its_holder_and_is_released_on_exit(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with local_runtime(path):
        second = ev.LocalRuntime(path, service=SERVICE)
        with pytest.raises(DatabaseLocked) as info:
            await second.start()
        assert f"process {os.getpid()}" in str(info.value)
        assert str(path) in str(info.value)
        assert info.value.status_code == 409
    async with local_runtime(path) as rt:
        assert await rt.list_executions() is not None


async def test_a_failed_start_releases_the_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A start that fails after opening the file (here: a signing key that is too short) must not keep
    the lock, or the same process could never open that database again."""
    path = tmp_path / "state.db"
    monkeypatch.setenv("EVENTUAL_SIGNING_KEY", "short")
    with pytest.raises(ValueError, match="16 bytes"):
        async with ev.LocalRuntime(path, service=SERVICE):
            pass
    monkeypatch.delenv("EVENTUAL_SIGNING_KEY")
    async with local_runtime(path) as rt:
        assert await rt.wait_for_execution((await lr_double.start(2)).id, WAIT) is not None


@pytest.mark.parametrize(("durability", "synchronous"), [("full", 2), ("normal", 1)])
async def test_durability_settings(tmp_path: Path, durability: str, synchronous: int) -> None:
    async with local_runtime(tmp_path / "state.db", durability=durability) as rt:
        assert rt._db is not None
        connection = rt._db.connection
        assert connection.execute("PRAGMA synchronous").fetchone()[0] == synchronous
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_default_durability_is_full_and_bad_values_are_refused(tmp_path: Path) -> None:
    async with local_runtime(tmp_path / "state.db") as rt:
        assert rt._db is not None
        assert rt._db.connection.execute("PRAGMA synchronous").fetchone()[0] == 2
    with pytest.raises(ev.EventualError, match="durability"):
        async with ev.LocalRuntime(tmp_path / "other.db", durability="sometimes", service=SERVICE):
            pass


async def test_a_start_is_committed_before_it_is_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with local_runtime(path) as rt:
        handle = await lr_wait_approval.start(name="durable")
        with contextlib.closing(sqlite3.connect(path)) as reader:
            row = reader.execute("SELECT status FROM executions WHERE id = ?", (handle.id,)).fetchone()
            started = reader.execute(
                "SELECT COUNT(*) FROM history WHERE execution_id = ? AND idx = 0", (handle.id,)
            ).fetchone()
        assert row == ("IN_PROGRESS",)
        assert started == (1,)
        await rt.cancel_execution(handle.id)


async def test_signing_key_survives_a_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EVENTUAL_SIGNING_KEY", raising=False)
    TOKENS.clear()
    path = tmp_path / "state.db"
    async with local_runtime(path) as rt:
        handle = await lr_waits_external.start("keyed", name="keyed")
        await wait_for(lambda: TOKENS, "the token")
    async with local_runtime(path) as rt:
        await rt.send_activity_success(TOKENS[0], "after restart")
        finished = await rt.wait_for_execution(handle.id, WAIT)
        assert finished.result == {"result": "after restart"}


async def test_signing_key_from_the_environment_overrides_the_stored_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    TOKENS.clear()
    path = tmp_path / "state.db"
    monkeypatch.setenv("EVENTUAL_SIGNING_KEY", "first-key-0123456789abcdef")
    async with local_runtime(path) as rt:
        handle = await lr_waits_external.start("env", name="env")
        await wait_for(lambda: TOKENS, "the token")
    monkeypatch.setenv("EVENTUAL_SIGNING_KEY", "second-key-0123456789abcdef")
    async with local_runtime(path) as rt:
        with pytest.raises(InvalidToken):
            await rt.send_activity_success(TOKENS[0], "wrong key")
    monkeypatch.delenv("EVENTUAL_SIGNING_KEY")
    async with local_runtime(path) as rt:  # the key stored in the database is not the one from the env
        with pytest.raises(InvalidToken):
            await rt.send_activity_success(TOKENS[0], "stored key")
    monkeypatch.setenv("EVENTUAL_SIGNING_KEY", "first-key-0123456789abcdef")
    async with local_runtime(path) as rt:
        await rt.send_activity_success(TOKENS[0], "right key")
        assert (await rt.wait_for_execution(handle.id, WAIT)).result == {"result": "right key"}


async def test_group_commit_batches_concurrent_starts(tmp_path: Path) -> None:
    """100 concurrent starts and their runs need far fewer transactions than executions."""
    async with local_runtime(tmp_path / "state.db") as rt:
        before = rt.commits
        handles = await asyncio.gather(*(lr_double.start(i, name=f"g{i}") for i in range(100)))
        after_starts = rt.commits
        results = await asyncio.gather(*(handle.result(timeout=WAIT) for handle in handles))
        assert results == [2 * i for i in range(100)]
        assert after_starts - before < 50
        assert rt.commits - before < 50
        assert rt.steps >= 100


async def test_finished_executions_are_not_kept_in_memory(tmp_path: Path) -> None:
    async with local_runtime(tmp_path / "state.db") as rt:
        waiting = await lr_wait_approval.start(name="kept")
        await wait_for(lambda: len(rt._executors) == 1, "the suspended executor to be cached")
        handles = [await lr_naps_between.start(i, name=f"m{i}") for i in range(5)]
        for handle in handles:
            await handle.result(timeout=WAIT)
        await waiting.signal(lr_approval, {"ok": True})
        await waiting.result(timeout=WAIT)
        assert len(rt._executors) == 0


async def test_idle_runtime_with_a_pending_timer_does_not_poll(tmp_path: Path) -> None:
    async with local_runtime(tmp_path / "state.db") as rt:
        handle = await lr_sleepy_child.start(name="idle")
        await wait_for(lambda: _has(rt, handle.id, "TimerScheduled"), "the timer")
        await asyncio.sleep(0.05)  # let the round that recorded the timer settle
        commits, steps = rt.commits, rt.steps
        await asyncio.sleep(0.3)
        assert (rt.commits, rt.steps) == (commits, steps)
        await handle.cancel()
        with pytest.raises(ev.ExecutionCancelled):
            await handle.result(timeout=WAIT)


async def test_replaying_from_scratch_every_step_gives_the_same_outcome(tmp_path: Path) -> None:
    """With no executor cache every step replays the history; results and logs are still recorded once."""
    async with local_runtime(tmp_path / "state.db", max_cached_executions=0) as rt:
        handle = await lr_printing.start(3)
        assert await handle.result(timeout=WAIT) == "X3"
        assert rt.replays >= 2
        assert [(e.message, e.source) for e in await handle.logs()] == [
            ("before sleep 3", "workflow"),
            ("shouting x3", "lr_shout"),
            ("after sleep 3", "workflow"),
        ]
        assert_each_step_once(await handle.history())


@pytest.mark.no_replay_check
async def test_changed_code_blocks_the_execution_until_a_compatible_definition_returns(tmp_path: Path) -> None:
    path = tmp_path / "state.db"

    @ev.workflow(name="lr_changing")
    async def lr_changing_v1() -> str:
        first = await lr_old_call()
        await lr_note.expect()
        return first

    async with local_runtime(path) as rt:
        handle = await lr_changing_v1.start(name="blocked")
        await wait_for(lambda: _has(rt, handle.id, "ActivitySucceeded"), "the first activity")

    @ev.workflow(name="lr_changing")
    async def lr_changing_v2() -> str:
        first = await lr_new_call()  # v1's history scheduled lr_old_call at this seq: incompatible
        await lr_note.expect()
        return first

    async with local_runtime(path, replay_check=False) as rt:
        await rt.send_signal(handle.id, lr_note, "go")
        await wait_for(lambda: handle.id in rt.blocked(), "the execution to block")
        assert isinstance(rt.blocked()[handle.id], ev.DeterminismError)
        assert (await rt.get_execution(handle.id)).status == ev.ExecutionStatus.IN_PROGRESS
        logs = [entry for entry in await rt.get_execution_logs(handle.id) if entry.source == "runtime"]
        assert len(logs) == 1
        assert "cannot continue" in logs[0].message

        @ev.workflow(name="lr_changing")
        async def lr_changing_v3() -> str:
            first = await lr_old_call()
            await lr_note.expect()
            return first

        rt.retry_blocked()
        finished = await rt.wait_for_execution(handle.id, WAIT)
        assert (finished.status, finished.result) == (ev.ExecutionStatus.SUCCEEDED, "old")
        assert rt.blocked() == {}
        assert await replay_divergences(rt) == []


@ev.workflow
async def lr_sleeps_for(seconds: int) -> str:
    await ev.sleep(timedelta(seconds=seconds))
    return f"slept {seconds} s"


async def test_an_execution_asleep_on_a_far_timer_is_not_kept_in_memory(tmp_path: Path) -> None:
    """An instance waiting on nothing but a timer over a minute away is dropped after its step and replayed from
    its history when the timer fires; a nearer timer keeps its instance cached. (Thousands of cached sleepers
    slowed every unrelated step through the garbage collector: `benchmarks.scale`'s work while work waits.)"""
    clock = ev.testing.ManualClock(datetime(2025, 1, 6, 9, tzinfo=UTC))
    async with local_runtime(tmp_path / "state.db", clock=clock) as rt:
        far = await lr_sleeps_for.start(3600, name="far")
        near = await lr_sleeps_for.start(30, name="near")
        for handle in (far, near):
            await wait_for(lambda h=handle: _has(rt, h.id, "TimerScheduled"), "the timer")
        assert set(rt._executors) == {near.id}
        clock.advance("1h")
        assert await far.result(timeout=WAIT) == "slept 3600 s"
        assert await near.result(timeout=WAIT) == "slept 30 s"
        assert rt.replays == 1  # the far sleeper, rebuilt once from its history
        assert len(rt._executors) == 0


@ev.activity
async def lr_noop_step(i: int) -> int:
    return i


@ev.workflow
async def lr_many_noop_steps(steps: int) -> int:
    total = 0
    for i in range(steps):
        total += await lr_noop_step(i)
    return total


async def test_a_chain_of_instant_activities_does_not_starve_the_event_loop(tmp_path: Path) -> None:
    """No-op activities finish as they start, so each round hands the next one a result at once; the
    scheduler runs a few such rounds back to back (one trip round the event loop fewer per step) but must
    still let other tasks of the loop run every few rounds."""
    turns = 0
    done = False

    async def other_work() -> None:
        nonlocal turns
        while not done:
            turns += 1
            await asyncio.sleep(0)

    async with local_runtime(tmp_path / "state.db", durability="off") as rt:
        ticker = asyncio.create_task(other_work())
        try:
            assert await lr_many_noop_steps(60) == sum(range(60))
        finally:
            done = True
            await ticker
        stepped = rt.steps
    # a trip round the loop at least every (1 + ROUNDS_WITHOUT_YIELD) rounds of the 61 this run took
    assert turns >= stepped // 5, (turns, stepped)
