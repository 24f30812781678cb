"""Eventual's cheatsheet patterns as workflows run in a TestEnvironment.

Every test asserts the workflow's result, the exact virtual end time and the exact sequence of history
event types, all derived from the model's semantics (activities that really run finish at
the virtual instant they start; timers fire at their `until`; one step applies one event at a time and
runs the woken code until idle, so the durable calls it makes follow the event that woke it).
Each test runs with cached workflow instances and with `always_replay=True`; the latter run also
replays its scenario with cached instances and requires identical histories (payloads, seqs and
timestamps included), so replaying from scratch cannot change what a pattern records.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest
from pydantic import BaseModel

import eventual_nb as ev
from eventual_nb.testing import TestEnvironment
from tests.scenario import MODES, START, end_time, run_scenario, seconds, types

SERVICE = ev.Service("test-patterns")

# ------------------------------------------------------------------------------- shared activities


@ev.activity
async def task_a(x: int) -> int:
    return x + 1


@ev.activity
async def task_b(x: int) -> int:
    return x * 10


class Leg(BaseModel):
    """A sub-procedure: sleep `delay_s`, then run `leg_step` (which fails when `fail`)."""

    delay_s: int
    value: str
    fail: bool = False


@ev.activity
async def leg_step(value: str, fail: bool) -> str:
    if fail:
        raise ValueError(f"{value} failed")
    return value.upper()


async def run_leg(leg: Leg) -> str:
    await ev.sleep(leg.delay_s)
    return await leg_step(leg.value, leg.fail)


def describe(value: Any) -> Any:
    """Workflow results must be JSON: exceptions become 'Type:error:message'."""
    if isinstance(value, ev.ActivityFailed):
        return f"ActivityFailed:{value.error}:{value.message}"
    if isinstance(value, BaseException):
        return f"{type(value).__name__}:{value}"
    return value


# ------------------------------------------------------------------------------ 1. sub-procedures


async def a_then_b(x: int) -> int:
    a = await task_a(x)
    return await task_b(a)


@ev.workflow
async def sub_procedures(x: int) -> list[int]:
    first = await a_then_b(x)
    await ev.sleep("1h")
    second = await a_then_b(first)
    return [first, second]


@MODES
async def test_sub_procedures(always_replay: bool) -> None:
    """Helpers that await activities are just code: their calls land in the parent's history in order."""

    async def scenario(env: TestEnvironment) -> None:
        h = await sub_procedures.start(1, name="sub")
        assert await h.result() == [20, 210]  # a(1)=2, b(2)=20; a(20)=21, b(21)=210
        assert await end_time(h) == START + timedelta(hours=1)
        assert env.now == START + timedelta(hours=1)
        history = await h.history()
        assert [e.type for e in history] == [
            "WorkflowStarted",
            "ActivityScheduled",
            "ActivitySucceeded",
            "ActivityScheduled",
            "ActivitySucceeded",
            "TimerScheduled",
            "TimerCompleted",
            "ActivityScheduled",
            "ActivitySucceeded",
            "ActivityScheduled",
            "ActivitySucceeded",
            "WorkflowSucceeded",
        ]
        scheduled = [(e.name, e.input) for e in history if e.type == "ActivityScheduled"]
        assert scheduled == [("task_a", {"x": 1}), ("task_b", {"x": 2}), ("task_a", {"x": 20}), ("task_b", {"x": 21})]

    await run_scenario(scenario, always_replay, SERVICE)


# ------------------------------------------------------------------ 2. recursive function (manual retry)


@ev.activity
async def flaky() -> str:
    return "real"  # always mocked below


async def retry_flaky(attempts_left: int) -> str:
    try:
        return await flaky()
    except ev.ActivityFailed:
        if attempts_left <= 1:
            raise
        await ev.sleep("10s")
        return await retry_flaky(attempts_left - 1)


@ev.workflow
async def manual_retry(attempts: int) -> str:
    return await retry_flaky(attempts)


@MODES
async def test_recursive_function_retries_until_success(always_replay: bool) -> None:
    """Two failures then a success: three single-attempt activities with a 10s durable wait between tries."""

    async def scenario(env: TestEnvironment) -> None:
        env.mock_activity(flaky).fail_once(RuntimeError("down")).fail_once(RuntimeError("down")).succeed("done")
        h = await manual_retry.start(3, name="retry-ok")
        assert await h.result() == "done"
        assert await end_time(h) == seconds(20)
        assert env.now == seconds(20)
        history = await h.history()
        assert [e.type for e in history] == [
            "WorkflowStarted",
            "ActivityScheduled",
            "ActivityFailed",
            "TimerScheduled",
            "TimerCompleted",
            "ActivityScheduled",
            "ActivityFailed",
            "TimerScheduled",
            "TimerCompleted",
            "ActivityScheduled",
            "ActivitySucceeded",
            "WorkflowSucceeded",
        ]
        # the recursion is the retry mechanism: every call is one attempt of its own
        assert [e.attempts for e in history if e.type in ("ActivityFailed", "ActivitySucceeded")] == [1, 1, 1]

    await run_scenario(scenario, always_replay, SERVICE)


@MODES
async def test_recursive_function_gives_up(always_replay: bool) -> None:
    """With attempts exhausted the last ActivityFailed escapes; the execution reports the original error."""

    async def scenario(env: TestEnvironment) -> None:
        env.mock_activity(flaky).fail(RuntimeError("down"))
        h = await manual_retry.start(2, name="retry-fail")
        with pytest.raises(ev.ExecutionFailed) as caught:
            await h.result()
        assert (caught.value.error, caught.value.message) == ("RuntimeError", "down")
        status = await h.status()
        assert status.status == ev.ExecutionStatus.FAILED
        assert status.end_time == seconds(10)
        assert env.now == seconds(10)
        assert await types(h) == [
            "WorkflowStarted",
            "ActivityScheduled",
            "ActivityFailed",
            "TimerScheduled",
            "TimerCompleted",
            "ActivityScheduled",
            "ActivityFailed",
            "WorkflowFailed",
        ]

    await run_scenario(scenario, always_replay, SERVICE)


# ---------------------------------------------------------------------------- 3. recursive workflow


class Daily(BaseModel):
    at: datetime
    count: int
    limit: int


@ev.activity
async def daily_step(count: int) -> int:
    return count


@ev.workflow
async def daily(req: Daily) -> list[int]:
    await ev.sleep_until(req.at)
    done = [await daily_step(req.count)]
    if req.count >= req.limit:
        return done
    return done + await daily(Daily(at=req.at + timedelta(days=1), count=req.count + 1, limit=req.limit))


@MODES
async def test_recursive_workflow(always_replay: bool) -> None:
    """Each execution sleeps until its date, does its step, then runs the next day as its child (depth 3).

    Every execution keeps a short history of its own; the chain unwinds at the last date (Jan 4).
    """
    per_execution = [
        "WorkflowStarted",
        "TimerScheduled",
        "TimerCompleted",
        "ActivityScheduled",
        "ActivitySucceeded",
        "ChildWorkflowScheduled",
        "ChildWorkflowSucceeded",
        "WorkflowSucceeded",
    ]
    last = [
        "WorkflowStarted",
        "TimerScheduled",
        "TimerCompleted",
        "ActivityScheduled",
        "ActivitySucceeded",
        "WorkflowSucceeded",
    ]

    async def scenario(env: TestEnvironment) -> None:
        jan = [START + timedelta(days=d) for d in range(4)]  # Jan 1 .. Jan 4
        h = await daily.start(Daily(at=jan[1], count=1, limit=3), name="root")
        assert await h.result() == [1, 2, 3]
        assert env.now == jan[3]
        # seq 0 is the timer, seq 1 the step, seq 2 the child
        child, grandchild = "daily/~daily-root-2", "daily/~daily-~daily-root-2-2"
        assert env.executions() == ["daily/root", child, grandchild]
        expected = {
            "daily/root": (per_execution, jan[0], None, jan[1]),
            child: (per_execution, jan[1], "daily/root", jan[2]),
        }
        expected[grandchild] = (last, jan[2], child, jan[3])
        for eid, (kinds, started, parent, until) in expected.items():
            status = await env.get_execution(eid)
            assert status.status == ev.ExecutionStatus.SUCCEEDED
            assert (status.start_time, status.end_time, status.parent) == (started, jan[3], parent)
            history = await env.get_execution_history(eid)
            assert [e.type for e in history] == kinds
            assert [e.until for e in history if e.type == "TimerScheduled"] == [until]
        assert [e.child_id for e in await h.history() if e.type == "ChildWorkflowScheduled"] == [child]
        assert await end_time(h) == jan[3]

    await run_scenario(scenario, always_replay, SERVICE)


# ------------------------------------------------------------------------ 4. event loop over signals


class GameEvent(BaseModel):
    type: Literal["MoveLeft", "MoveRight", "Done"]
    steps: int = 1


class GameResult(BaseModel):
    position: int
    moves: int


game_event = ev.signal("game_event", GameEvent)


@ev.workflow
async def game() -> GameResult:
    position = 0
    moves = 0
    while True:
        event = await game_event.expect()
        if event.type == "MoveLeft":
            position -= event.steps
        elif event.type == "MoveRight":
            position += event.steps
        else:
            break
        moves += 1
    return GameResult(position=position, moves=moves)


@MODES
async def test_event_loop_over_signals(always_replay: bool) -> None:
    """State lives in local variables across signals; two signals sent together are handled in order."""

    async def scenario(env: TestEnvironment) -> None:
        h = await game.start(name="game-1")
        await env.tick()
        assert await types(h) == ["WorkflowStarted"]
        await env.advance("1m")
        await game_event.send(h, GameEvent(type="MoveLeft"))
        await env.advance("1m")
        await game_event.send(h, GameEvent(type="MoveRight", steps=3))
        await env.advance("1m")
        await game_event.send(h, GameEvent(type="MoveRight"))
        await game_event.send(h, GameEvent(type="MoveLeft", steps=2))
        await env.advance("1m")
        assert (await h.status()).status == ev.ExecutionStatus.IN_PROGRESS
        await game_event.send(h, GameEvent(type="Done"))
        assert await h.result() == GameResult(position=-1 + 3 + 1 - 2, moves=4)
        assert await end_time(h) == START + timedelta(minutes=4)
        assert env.now == START + timedelta(minutes=4)
        history = await h.history()
        assert [e.type for e in history] == ["WorkflowStarted"] + ["SignalReceived"] * 5 + ["WorkflowSucceeded"]
        received = [(e.payload["type"], e.timestamp - START) for e in history if e.type == "SignalReceived"]
        minute = timedelta(minutes=1)
        assert received == [
            ("MoveLeft", minute),
            ("MoveRight", 2 * minute),
            ("MoveRight", 3 * minute),
            ("MoveLeft", 3 * minute),
            ("Done", 4 * minute),
        ]

    await run_scenario(scenario, always_replay, SERVICE)


# --------------------------------------------------------------------- 5. all / all_settled / any / race


class Combo(BaseModel):
    combinator: Literal["all", "all_settled", "any", "race"]
    legs: list[Leg]


COMBINATORS: dict[str, Callable[..., Awaitable[Any]]] = {
    "all": ev.all,
    "all_settled": ev.all_settled,
    "any": ev.any,
    "race": ev.race,
}


@ev.workflow
async def combine(req: Combo) -> dict[str, Any]:
    try:
        value = await COMBINATORS[req.combinator](*(run_leg(leg) for leg in req.legs))
    except ev.ActivityFailed as exc:
        return {"raised": describe(exc)}
    except ExceptionGroup as group:
        return {"raised": type(group).__name__, "members": [describe(e) for e in group.exceptions]}
    if isinstance(value, list):
        value = [describe(item) for item in value]
    return {"value": value}


def legs(*spec: tuple[int, str] | tuple[int, str, bool]) -> list[Leg]:
    return [Leg(delay_s=s[0], value=s[1], fail=len(s) > 2 and bool(s[2])) for s in spec]


def after_timers(*outcomes: str) -> list[str]:
    """Three legs start together (three TimerScheduled), then each woken leg runs its step in the same instant."""
    kinds = ["WorkflowStarted", "TimerScheduled", "TimerScheduled", "TimerScheduled"]
    for outcome in outcomes:
        kinds += ["TimerCompleted", "ActivityScheduled", outcome]
    return [*kinds, "WorkflowSucceeded"]


COMBINATOR_CASES = {
    # all: results in argument order, at the time of the slowest leg
    "all-succeeds": (
        "all",
        legs((30, "a"), (10, "b"), (20, "c")),
        {"value": ["A", "B", "C"]},
        30,
        after_timers("ActivitySucceeded", "ActivitySucceeded", "ActivitySucceeded"),
    ),
    # all: the first failure in time (not in argument order) rejects at once; the other legs are cancelled
    "all-first-failure": (
        "all",
        legs((30, "a"), (20, "b", True), (10, "c", True)),
        {"raised": "ActivityFailed:ValueError:c failed"},
        10,
        after_timers("ActivityFailed"),
    ),
    # all_settled waits for everything, failures become exception instances in their slot
    "all_settled": (
        "all_settled",
        legs((30, "a"), (10, "b", True), (20, "c")),
        {"value": ["A", "ActivityFailed:ValueError:b failed", "C"]},
        30,
        after_timers("ActivityFailed", "ActivitySucceeded", "ActivitySucceeded"),
    ),
    # any skips a failure and takes the first success; the slowest leg never runs its step
    "any-first-success": (
        "any",
        legs((10, "a", True), (20, "b"), (30, "c")),
        {"value": "B"},
        20,
        after_timers("ActivityFailed", "ActivitySucceeded"),
    ),
    # any with every leg failing: an ExceptionGroup in argument order, although they failed as b, c, a
    "any-all-fail": (
        "any",
        legs((30, "a", True), (10, "b", True), (20, "c", True)),
        {
            "raised": "ExceptionGroup",
            "members": [
                "ActivityFailed:ValueError:a failed",
                "ActivityFailed:ValueError:b failed",
                "ActivityFailed:ValueError:c failed",
            ],
        },
        30,
        after_timers("ActivityFailed", "ActivityFailed", "ActivityFailed"),
    ),
    # race takes the first to settle, whatever its argument position
    "race-success": (
        "race",
        legs((20, "a"), (10, "b"), (30, "c")),
        {"value": "B"},
        10,
        after_timers("ActivitySucceeded"),
    ),
    # ... and a failure settles a race just as well
    "race-failure": (
        "race",
        legs((20, "a"), (10, "b", True), (30, "c")),
        {"raised": "ActivityFailed:ValueError:b failed"},
        10,
        after_timers("ActivityFailed"),
    ),
}


@MODES
@pytest.mark.parametrize("case", list(COMBINATOR_CASES))
async def test_combinators(case: str, always_replay: bool) -> None:
    combinator, leg_list, expected, end_s, expected_types = COMBINATOR_CASES[case]

    async def scenario(env: TestEnvironment) -> None:
        h = await combine.start(Combo(combinator=combinator, legs=leg_list), name=f"combine-{case}")
        assert await h.result() == expected
        assert await end_time(h) == seconds(end_s)
        assert env.now == seconds(end_s)
        history = await h.history()
        assert [e.type for e in history] == expected_types
        # legs start in argument order, so timer seqs 0, 1, 2 belong to legs 0, 1, 2
        assert [(e.seq, e.until) for e in history if e.type == "TimerScheduled"] == [
            (i, seconds(leg.delay_s)) for i, leg in enumerate(leg_list)
        ]

    await run_scenario(scenario, always_replay, SERVICE)


@ev.workflow
async def combine_settled_inputs() -> list[Any]:
    """Inputs that have already settled: the first in argument order decides; plain values pass through."""
    failing = asyncio.ensure_future(run_leg(Leg(delay_s=5, value="x", fail=True)))
    succeeding = asyncio.ensure_future(run_leg(Leg(delay_s=10, value="y")))
    await ev.sleep(20)  # both have settled by now
    race_failure_first = describe(await _catch(ev.race(failing, succeeding)))
    race_success_first = await ev.race(succeeding, failing)
    plain_wins = await ev.race(run_leg(Leg(delay_s=30, value="slow")), "plain")
    return [race_failure_first, race_success_first, plain_wins, await ev.all(1, succeeding, "two")]


async def _catch(aw: Awaitable[Any]) -> Any:
    try:
        return await aw
    except Exception as exc:  # noqa: BLE001 - the pattern catches whatever the step raised
        return exc


@MODES
async def test_combinators_decide_by_argument_order_when_settled(always_replay: bool) -> None:
    """When several inputs are already settled, the first in argument order decides.

    The race against a plain value is decided before the 30s leg it wraps ever starts; that leg is
    cancelled before its first step, so it never records a timer, and the workflow ends at 20s.
    """

    async def scenario(env: TestEnvironment) -> None:
        h = await combine_settled_inputs.start(name="settled")
        assert await h.result() == ["ActivityFailed:ValueError:x failed", "Y", "plain", [1, "Y", "two"]]
        assert await end_time(h) == seconds(20)
        assert env.now == seconds(20)
        history = await h.history()
        assert [e.type for e in history] == [
            "WorkflowStarted",
            "TimerScheduled",  # seq 0: the 20s sleep (the main task runs before the tasks it created)
            "TimerScheduled",  # seq 1: leg x (5s)
            "TimerScheduled",  # seq 2: leg y (10s)
            "TimerCompleted",
            "ActivityScheduled",
            "ActivityFailed",
            "TimerCompleted",
            "ActivityScheduled",
            "ActivitySucceeded",
            "TimerCompleted",
            "WorkflowSucceeded",
        ]
        assert [e.until for e in history if e.type == "TimerScheduled"] == [seconds(20), seconds(5), seconds(10)]

    await run_scenario(scenario, always_replay, SERVICE)


# ---------------------------------------------------------------------- 6. two activities in parallel


@ev.workflow
async def parallel_pair(x: int) -> list[int]:
    a, b = await ev.all(task_a(x), task_b(x))
    return [a, b]


@MODES
async def test_two_activities_in_parallel(always_replay: bool) -> None:
    """Both activities are scheduled in the first step and are outstanding together: completing them in the
    opposite order still gives the results in argument order, when the later one completes."""

    async def scenario(env: TestEnvironment) -> None:
        tokens: dict[str, str] = {}
        env.mock_activity(task_a).async_result(lambda token: tokens.__setitem__("a", token))
        env.mock_activity(task_b).async_result(lambda token: tokens.__setitem__("b", token))
        h = await parallel_pair.start(3, name="pair")
        await env.tick()
        assert await types(h) == ["WorkflowStarted", "ActivityScheduled", "ActivityScheduled"]
        assert sorted(tokens) == ["a", "b"]
        await env.advance("1m")
        await env.send_activity_success(tokens["b"], 30)
        await env.advance("1m")
        await env.send_activity_success(tokens["a"], 4)
        assert await h.result() == [4, 30]
        assert await end_time(h) == START + timedelta(minutes=2)
        assert env.now == START + timedelta(minutes=2)
        history = await h.history()
        assert [(e.type, e.seq) for e in history] == [
            ("WorkflowStarted", None),
            ("ActivityScheduled", 0),
            ("ActivityScheduled", 1),
            ("ActivitySucceeded", 1),
            ("ActivitySucceeded", 0),
            ("WorkflowSucceeded", None),
        ]

    await run_scenario(scenario, always_replay, SERVICE)


# -------------------------------------------------------------- 7. two sequential sub-procedures in parallel


async def procedure(x: int, pause_s: int) -> int:
    first = await task_a(x)
    await ev.sleep(pause_s)
    return await task_b(first)


@ev.workflow
async def parallel_procedures() -> list[int]:
    return await ev.all(procedure(1, 20), procedure(2, 10))


@MODES
async def test_two_sequential_sub_procedures_in_parallel(always_replay: bool) -> None:
    """Each procedure's steps stay in order, the two interleave, and the whole takes max(20s, 10s)."""

    async def scenario(env: TestEnvironment) -> None:
        h = await parallel_procedures.start(name="procs")
        assert await h.result() == [20, 30]  # b(a(1))=20, b(a(2))=30
        assert await end_time(h) == seconds(20)
        assert env.now == seconds(20)
        history = await h.history()
        assert [(e.type, e.seq) for e in history] == [
            ("WorkflowStarted", None),
            ("ActivityScheduled", 0),  # procedure 1: task_a(1)
            ("ActivityScheduled", 1),  # procedure 2: task_a(2)
            ("ActivitySucceeded", 0),
            ("TimerScheduled", 2),  # procedure 1 pauses 20s
            ("ActivitySucceeded", 1),
            ("TimerScheduled", 3),  # procedure 2 pauses 10s
            ("TimerCompleted", 3),
            ("ActivityScheduled", 4),  # procedure 2: task_b(3) at 10s
            ("ActivitySucceeded", 4),
            ("TimerCompleted", 2),
            ("ActivityScheduled", 5),  # procedure 1: task_b(2) at 20s
            ("ActivitySucceeded", 5),
            ("WorkflowSucceeded", None),
        ]

    await run_scenario(scenario, always_replay, SERVICE)


# ------------------------------------------------------------------ 8./9. condition or timeout / date

cancel_request = ev.signal("cancel_request")
DEADLINE = datetime(2024, 1, 2, tzinfo=UTC)


@ev.workflow
async def condition_or_timeout(style: str) -> str:
    cancelled = False

    def on_cancel(_: Any) -> None:
        nonlocal cancelled
        cancelled = True

    cancel_request.on(on_cancel)
    if style == "race":
        await ev.race(ev.condition(lambda: cancelled), ev.sleep("10s"))
    elif style == "condition_timeout":
        assert await ev.condition(lambda: cancelled, timeout="10s") == cancelled
    else:  # "date"
        await ev.race(ev.condition(lambda: cancelled), ev.sleep_until(DEADLINE))
    return "cancelled" if cancelled else "timed out"


@MODES
@pytest.mark.parametrize("branch", ["signal", "timeout"])
@pytest.mark.parametrize("style", ["race", "condition_timeout"])
async def test_condition_or_timeout(style: str, branch: str, always_replay: bool) -> None:
    """The handler's flag wakes the condition at 4s; without it the 10s timer ends the wait."""

    async def scenario(env: TestEnvironment) -> None:
        h = await condition_or_timeout.start(style, name=f"cot-{style}-{branch}")
        await env.tick()
        if branch == "signal":
            await env.advance("4s")
            await cancel_request.send(h)
        assert await h.result() == ("cancelled" if branch == "signal" else "timed out")
        end = seconds(4 if branch == "signal" else 10)
        assert await end_time(h) == end
        assert env.now == end
        history = await h.history()
        middle = "SignalReceived" if branch == "signal" else "TimerCompleted"
        assert [e.type for e in history] == ["WorkflowStarted", "TimerScheduled", middle, "WorkflowSucceeded"]
        assert history[1].until == seconds(10)

    await run_scenario(scenario, always_replay, SERVICE)


@MODES
@pytest.mark.parametrize("branch", ["signal", "timeout"])
async def test_condition_or_date(branch: str, always_replay: bool) -> None:
    """Same as condition-or-timeout with an absolute date: the timer's `until` is the date itself."""

    async def scenario(env: TestEnvironment) -> None:
        h = await condition_or_timeout.start("date", name=f"cod-{branch}")
        await env.tick()
        if branch == "signal":
            await env.advance("3h")
            await cancel_request.send(h, {"why": "changed my mind"})
        assert await h.result() == ("cancelled" if branch == "signal" else "timed out")
        end = START + timedelta(hours=3) if branch == "signal" else DEADLINE
        assert await end_time(h) == end
        assert env.now == end
        history = await h.history()
        middle = "SignalReceived" if branch == "signal" else "TimerCompleted"
        assert [e.type for e in history] == ["WorkflowStarted", "TimerScheduled", middle, "WorkflowSucceeded"]
        assert history[1].until == DEADLINE

    await run_scenario(scenario, always_replay, SERVICE)


# -------------------------------------------------- 10./11. first procedure to finish / first to succeed


@ev.workflow
async def first_to_finish(procedures: list[Leg]) -> str:
    try:
        return await ev.race(*(run_leg(leg) for leg in procedures))
    except ev.ActivityFailed as exc:
        return f"failed: {exc.message}"


@ev.workflow
async def first_to_succeed(procedures: list[Leg]) -> str:
    return await ev.any(*(run_leg(leg) for leg in procedures))


@MODES
@pytest.mark.parametrize("fast_fails", [False, True], ids=["fast-succeeds", "fast-fails"])
async def test_first_procedure_to_finish(fast_fails: bool, always_replay: bool) -> None:
    """race of a 30s and a 10s procedure: the 10s one decides at 10s, success or failure."""

    async def scenario(env: TestEnvironment) -> None:
        procedures = [Leg(delay_s=30, value="slow"), Leg(delay_s=10, value="fast", fail=fast_fails)]
        h = await first_to_finish.start(procedures, name=f"ftf-{fast_fails}")
        assert await h.result() == ("failed: fast failed" if fast_fails else "FAST")
        assert await end_time(h) == seconds(10)
        assert env.now == seconds(10)
        history = await h.history()
        assert [(e.type, e.seq) for e in history] == [
            ("WorkflowStarted", None),
            ("TimerScheduled", 0),
            ("TimerScheduled", 1),
            ("TimerCompleted", 1),
            ("ActivityScheduled", 2),
            ("ActivityFailed" if fast_fails else "ActivitySucceeded", 2),
            ("WorkflowSucceeded", None),
        ]

    await run_scenario(scenario, always_replay, SERVICE)


@MODES
async def test_first_procedure_to_succeed(always_replay: bool) -> None:
    """any: the fast procedure fails at 10s, so the slow one's success at 30s is the result."""

    async def scenario(env: TestEnvironment) -> None:
        procedures = [Leg(delay_s=10, value="fast", fail=True), Leg(delay_s=30, value="slow")]
        h = await first_to_succeed.start(procedures, name="fts")
        assert await h.result() == "SLOW"
        assert await end_time(h) == seconds(30)
        assert env.now == seconds(30)
        assert await types(h) == [
            "WorkflowStarted",
            "TimerScheduled",
            "TimerScheduled",
            "TimerCompleted",
            "ActivityScheduled",
            "ActivityFailed",
            "TimerCompleted",
            "ActivityScheduled",
            "ActivitySucceeded",
            "WorkflowSucceeded",
        ]

    await run_scenario(scenario, always_replay, SERVICE)


# ---------------------------------------------------------------------------- 12. saga / compensation


class Trip(BaseModel):
    trip_id: str
    amount: int


class CardDeclined(Exception):
    pass


@ev.activity
async def book_flight(trip_id: str) -> str:
    return f"F-{trip_id}"


@ev.activity
async def book_hotel(trip_id: str) -> str:
    return f"H-{trip_id}"


@ev.activity(retry=ev.RetryPolicy(max_attempts=3, initial_interval="1s", backoff=2.0))
async def charge_card(trip_id: str, amount: int) -> str:
    if amount > 1000:
        raise CardDeclined(f"{amount} exceeds the limit")
    return f"C-{trip_id}"


@ev.activity
async def cancel_flight(booking: str) -> str:
    return f"cancelled {booking}"


@ev.activity
async def cancel_hotel(booking: str) -> str:
    return f"cancelled {booking}"


@ev.workflow
async def book_trip(trip: Trip) -> list[str]:
    compensations: list[Callable[[], Awaitable[Any]]] = []
    try:
        flight = await book_flight(trip.trip_id)
        compensations.append(lambda: cancel_flight(flight))
        hotel = await book_hotel(trip.trip_id)
        compensations.append(lambda: cancel_hotel(hotel))
        charge = await charge_card(trip.trip_id, trip.amount)
        return [flight, hotel, charge]
    except Exception:
        await ev.all(*(undo() for undo in reversed(compensations)))
        raise


@MODES
async def test_saga_compensates_when_the_third_step_fails(always_replay: bool) -> None:
    """charge_card fails 3 times (retries after 1s and 2s, so for good at 3s); both bookings are undone,
    newest first and together, then the original error fails the execution."""

    async def scenario(env: TestEnvironment) -> None:
        h = await book_trip.start(Trip(trip_id="t1", amount=1500), name="saga-fail")
        with pytest.raises(ev.ExecutionFailed) as caught:
            await h.result()
        assert (caught.value.error, caught.value.message) == ("CardDeclined", "1500 exceeds the limit")
        assert await end_time(h) == seconds(3)
        assert env.now == seconds(3)
        history = await h.history()
        assert [e.type for e in history] == [
            "WorkflowStarted",
            "ActivityScheduled",
            "ActivitySucceeded",
            "ActivityScheduled",
            "ActivitySucceeded",
            "ActivityScheduled",
            "ActivityFailed",
            "ActivityScheduled",
            "ActivityScheduled",
            "ActivitySucceeded",
            "ActivitySucceeded",
            "WorkflowFailed",
        ]
        scheduled = [(e.seq, e.name, e.input) for e in history if e.type == "ActivityScheduled"]
        assert scheduled == [
            (0, "book_flight", {"trip_id": "t1"}),
            (1, "book_hotel", {"trip_id": "t1"}),
            (2, "charge_card", {"trip_id": "t1", "amount": 1500}),
            (3, "cancel_hotel", {"booking": "H-t1"}),
            (4, "cancel_flight", {"booking": "F-t1"}),
        ]
        failed = next(e for e in history if e.type == "ActivityFailed")
        assert (failed.seq, failed.error, failed.attempts, failed.timestamp) == (2, "CardDeclined", 3, seconds(3))
        compensated = {e.seq: e.result for e in history if e.type == "ActivitySucceeded" and e.seq >= 3}
        assert compensated == {3: "cancelled H-t1", 4: "cancelled F-t1"}

    await run_scenario(scenario, always_replay, SERVICE)


@MODES
async def test_saga_without_failure_compensates_nothing(always_replay: bool) -> None:
    async def scenario(env: TestEnvironment) -> None:
        h = await book_trip.start(Trip(trip_id="t2", amount=500), name="saga-ok")
        assert await h.result() == ["F-t2", "H-t2", "C-t2"]
        assert await end_time(h) == START
        assert env.now == START
        assert await types(h) == ["WorkflowStarted"] + ["ActivityScheduled", "ActivitySucceeded"] * 3 + [
            "WorkflowSucceeded"
        ]

    await run_scenario(scenario, always_replay, SERVICE)


# ------------------------------------------------------------------- 13. cancel window and daily loop


class Transfer(BaseModel):
    source: str
    target: str
    amount: int


cancel_transfer = ev.signal("cancel_transfer")


@ev.activity
async def do_transfer(source: str, target: str, amount: int) -> str:
    return f"moved {amount} from {source} to {target}"


async def window_elapses() -> bool:
    await ev.sleep("5m")
    return False


async def cancel_arrives() -> bool:
    await cancel_transfer.expect()
    return True


@ev.workflow
async def delayed_transfer(t: Transfer) -> str:
    is_cancelled = await ev.race(window_elapses(), cancel_arrives())
    if is_cancelled:
        return "cancelled"
    return await do_transfer(t.source, t.target, t.amount)


TRANSFER = Transfer(source="acc-1", target="acc-2", amount=25)


@MODES
async def test_cancel_window_signal_in_time(always_replay: bool) -> None:
    """The cancel signal at 2m beats the 5-minute timer: no transfer is ever scheduled."""

    async def scenario(env: TestEnvironment) -> None:
        h = await delayed_transfer.start(TRANSFER, name="window-cancel")
        await env.advance("2m")
        await cancel_transfer.send(h)
        assert await h.result() == "cancelled"
        assert await end_time(h) == START + timedelta(minutes=2)
        await env.advance("10m")  # the cancelled timer must not wake anything later
        assert env.now == START + timedelta(minutes=12)
        history = await h.history()
        assert [e.type for e in history] == ["WorkflowStarted", "TimerScheduled", "SignalReceived", "WorkflowSucceeded"]
        assert history[1].until == START + timedelta(minutes=5)

    await run_scenario(scenario, always_replay, SERVICE)


@MODES
async def test_cancel_window_timer_wins(always_replay: bool) -> None:
    """No signal within 5 minutes: the transfer runs; a cancel sent afterwards is refused."""

    async def scenario(env: TestEnvironment) -> None:
        h = await delayed_transfer.start(TRANSFER, name="window-transfer")
        assert await h.result() == "moved 25 from acc-1 to acc-2"
        assert await end_time(h) == START + timedelta(minutes=5)
        assert env.now == START + timedelta(minutes=5)
        with pytest.raises(ev.EventualError, match="SUCCEEDED"):
            await cancel_transfer.send(h)
        history = await h.history()
        assert [e.type for e in history] == [
            "WorkflowStarted",
            "TimerScheduled",
            "TimerCompleted",
            "ActivityScheduled",
            "ActivitySucceeded",
            "WorkflowSucceeded",
        ]
        assert history[3].input == {"source": "acc-1", "target": "acc-2", "amount": 25}

    await run_scenario(scenario, always_replay, SERVICE)


@ev.activity
async def send_reminder(email: str) -> str:
    return f"reminded {email}"


@ev.workflow
async def reminders(email: str) -> None:
    while True:
        await ev.sleep("1 day")
        await send_reminder(email)


@MODES
async def test_daily_reminder_loop(always_replay: bool) -> None:
    """The endless loop sends one reminder per virtual day; cancelling it ends it at the cancel time."""

    async def scenario(env: TestEnvironment) -> None:
        h = await reminders.start("a@example.com", name="remind")
        await env.advance("3 days")
        assert env.now == START + timedelta(days=3)
        status = await h.status()
        assert (status.status, status.end_time) == (ev.ExecutionStatus.IN_PROGRESS, None)
        day = ["TimerScheduled", "TimerCompleted", "ActivityScheduled", "ActivitySucceeded"]
        assert await types(h) == ["WorkflowStarted", *day * 3, "TimerScheduled"]
        await env.advance("6h")
        await h.cancel()
        with pytest.raises(ev.ExecutionCancelled):
            await h.result()
        status = await h.status()
        assert (status.status, status.end_time) == (ev.ExecutionStatus.CANCELLED, START + timedelta(days=3, hours=6))
        assert env.now == START + timedelta(days=3, hours=6)
        history = await h.history()
        assert [e.type for e in history] == [
            "WorkflowStarted",
            *day * 3,
            "TimerScheduled",
            "CancelRequested",
            "WorkflowCancelled",
        ]
        assert [e.until for e in history if e.type == "TimerScheduled"] == [
            START + timedelta(days=d) for d in (1, 2, 3, 4)
        ]
        assert [e.timestamp for e in history if e.type == "ActivitySucceeded"] == [
            START + timedelta(days=d) for d in (1, 2, 3)
        ]

    await run_scenario(scenario, always_replay, SERVICE)
