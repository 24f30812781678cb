"""Plain asyncio inside workflows (concurrency is plain asyncio; the deterministic loop runs it).

`gather`, `wait`, `wait_for`, `create_task`, `TaskGroup` and `asyncio.sleep` run on the workflow's
deterministic loop, where every `call_at`/`call_later` becomes a durable timer with the next seq. The
expected histories follow from two facts: a task runs only when the code that created it yields, so a
timer that asyncio itself starts before awaiting (the `timeout=` of `wait`/`wait_for`, or the creator's
own sleep) takes its seq before the tasks it waits on; and activities that really run finish at the
virtual instant they start. Each test runs with cached instances and with `always_replay=True`; the
latter also re-runs the scenario cached and requires identical histories.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import pytest
from pydantic import BaseModel

import eventual_nb as ev
from eventual_nb.engine.executor import WorkflowExecutor
from eventual_nb.engine.history import WorkflowStarted
from eventual_nb.testing import TestEnvironment
from tests.scenario import MODES, START, end_time, run_scenario, seconds, types

SERVICE = ev.Service("test-asyncio-primitives")

# --------------------------------------------------------------------------------------- building blocks


class Leg(BaseModel):
    """`asyncio.sleep(delay_s)`, then the `step` activity (which raises ValueError when `fail`)."""

    delay_s: float
    value: str
    fail: bool = False


@ev.activity
async def step(value: str, fail: bool) -> str:
    if fail:
        raise ValueError(f"{value} failed")
    return value.upper()


async def leg(spec: Leg) -> str:
    await asyncio.sleep(spec.delay_s)
    return await step(spec.value, spec.fail)


def legs(*spec: tuple[float, str] | tuple[float, str, bool]) -> list[Leg]:
    return [Leg(delay_s=s[0], value=s[1], fail=len(s) > 2 and bool(s[2])) for s in spec]


def describe(value: Any) -> Any:
    if isinstance(value, ev.ActivityFailed):
        return f"ActivityFailed:{value.error}:{value.message}"
    if isinstance(value, BaseException):
        return f"{type(value).__name__}:{value}"
    return value


def timers_then(count: int, *outcomes: str, end: str = "WorkflowSucceeded") -> list[str]:
    """`count` timers started in the first step, then for each woken leg: timer, activity, outcome."""
    kinds = ["WorkflowStarted"] + ["TimerScheduled"] * count
    for outcome in outcomes:
        kinds += ["TimerCompleted", "ActivityScheduled", outcome]
    return [*kinds, end]


async def untils(h: ev.ExecutionHandle) -> list[datetime]:
    return [e.until for e in await h.history() if e.type == "TimerScheduled"]


# ---------------------------------------------------------------------------------------- asyncio.gather


@ev.workflow
async def gather_legs(spec: list[Leg]) -> list[str]:
    return await asyncio.gather(*(leg(item) for item in spec))


@ev.workflow
async def gather_settled(spec: list[Leg]) -> list[Any]:
    outcomes = await asyncio.gather(*(leg(item) for item in spec), return_exceptions=True)
    return [describe(outcome) for outcome in outcomes]


@MODES
async def test_gather_results_in_argument_order(always_replay: bool) -> None:
    async def scenario(env: TestEnvironment) -> None:
        h = await gather_legs.start(legs((20, "a"), (10, "b")), name="gather-ok")
        assert await h.result() == ["A", "B"]
        assert await end_time(h) == seconds(20)
        assert env.now == seconds(20)
        assert await types(h) == timers_then(2, "ActivitySucceeded", "ActivitySucceeded")
        assert await untils(h) == [seconds(20), seconds(10)]  # gather starts its inputs in argument order

    await run_scenario(scenario, always_replay, SERVICE)


@MODES
async def test_gather_first_failure_fails_the_workflow_at_once(always_replay: bool) -> None:
    """Without return_exceptions the first failure (b at 10s) propagates; the execution ends then, and the
    legs gather left running are dropped with it (no more timers complete)."""

    async def scenario(env: TestEnvironment) -> None:
        h = await gather_legs.start(legs((30, "a"), (10, "b", True), (20, "c")), name="gather-fail")
        with pytest.raises(ev.ExecutionFailed) as caught:
            await h.result()
        assert (caught.value.error, caught.value.message) == ("ValueError", "b failed")
        assert await end_time(h) == seconds(10)
        await env.advance("1m")
        assert env.now == seconds(70)
        assert await types(h) == timers_then(3, "ActivityFailed", end="WorkflowFailed")

    await run_scenario(scenario, always_replay, SERVICE)


@MODES
async def test_gather_return_exceptions(always_replay: bool) -> None:
    async def scenario(env: TestEnvironment) -> None:
        h = await gather_settled.start(legs((30, "a"), (10, "b", True), (20, "c")), name="gather-settled")
        assert await h.result() == ["A", "ActivityFailed:ValueError:b failed", "C"]
        assert await end_time(h) == seconds(30)
        assert env.now == seconds(30)
        assert await types(h) == timers_then(3, "ActivityFailed", "ActivitySucceeded", "ActivitySucceeded")

    await run_scenario(scenario, always_replay, SERVICE)


# ------------------------------------------------------------------------------------------ asyncio.wait


@ev.activity
async def lookup(request: str) -> str:
    return f"looked up {request}"  # mocked with async completion below


@ev.workflow
async def first_of_timer_and_activity(request: str) -> str:
    timer = asyncio.ensure_future(asyncio.sleep(60))
    work = asyncio.ensure_future(lookup(request))
    done, pending = await asyncio.wait({timer, work}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return f"activity: {work.result()}" if work in done else "timer"


@MODES
@pytest.mark.parametrize("winner", ["activity", "timer"])
async def test_wait_first_completed(winner: str, always_replay: bool) -> None:
    """A 60s timer (seq 0, its task starts first) against an activity completed from outside at 30s, or never."""

    async def scenario(env: TestEnvironment) -> None:
        tokens: list[str] = []
        env.mock_activity(lookup).async_result(tokens.append)
        h = await first_of_timer_and_activity.start("r1", name=f"wait-first-{winner}")
        await env.tick()
        assert await types(h) == ["WorkflowStarted", "TimerScheduled", "ActivityScheduled"]
        assert len(tokens) == 1
        if winner == "activity":
            await env.advance("30s")
            await env.send_activity_success(tokens[0], "found")
        assert await h.result() == ("activity: found" if winner == "activity" else "timer")
        end = seconds(30 if winner == "activity" else 60)
        assert await end_time(h) == end
        assert env.now == end
        history = await h.history()
        last = ("ActivitySucceeded", 1) if winner == "activity" else ("TimerCompleted", 0)
        assert [(e.type, e.seq) for e in history] == [
            ("WorkflowStarted", None),
            ("TimerScheduled", 0),
            ("ActivityScheduled", 1),
            last,
            ("WorkflowSucceeded", None),
        ]
        assert history[1].until == seconds(60)

    await run_scenario(scenario, always_replay, SERVICE)


class WaitTimeout(BaseModel):
    legs: list[Leg]
    timeout_s: float


@ev.workflow
async def wait_with_timeout(req: WaitTimeout) -> dict[str, Any]:
    tasks = [asyncio.ensure_future(leg(item)) for item in req.legs]
    done, pending = await asyncio.wait(tasks, timeout=req.timeout_s)
    return {"done": [t.result() for t in tasks if t in done], "pending": len(pending)}


@MODES
@pytest.mark.parametrize("expires", [True, False], ids=["times-out", "all-done"])
async def test_wait_with_timeout(expires: bool, always_replay: bool) -> None:
    """`wait(timeout=45)` starts its durable timer before the tasks it waits on run, so it is seq 0.

    Legs of 10s and 100s: at 45s the timer returns one done and one pending. Legs of 10s and 20s: both
    finish at 20s and the 45s timer is cancelled, never completing.
    """
    slow = 100 if expires else 20

    async def scenario(env: TestEnvironment) -> None:
        h = await wait_with_timeout.start(
            WaitTimeout(legs=legs((10, "a"), (slow, "b")), timeout_s=45), name=f"wait-timeout-{expires}"
        )
        if expires:
            assert await h.result() == {"done": ["A"], "pending": 1}
        else:
            assert await h.result() == {"done": ["A", "B"], "pending": 0}
        end = seconds(45 if expires else 20)
        assert await end_time(h) == end
        assert env.now == end
        history = await h.history()
        first_leg = [("TimerCompleted", 1), ("ActivityScheduled", 3), ("ActivitySucceeded", 3)]
        if expires:  # the wait's own timer (seq 0) ends it; leg b's timer (seq 2) never completes
            then = [("TimerCompleted", 0)]
        else:
            then = [("TimerCompleted", 2), ("ActivityScheduled", 4), ("ActivitySucceeded", 4)]
        assert [(e.type, e.seq) for e in history] == [
            ("WorkflowStarted", None),
            ("TimerScheduled", 0),
            ("TimerScheduled", 1),
            ("TimerScheduled", 2),
            *first_leg,
            *then,
            ("WorkflowSucceeded", None),
        ]
        assert await untils(h) == [seconds(45), seconds(10), seconds(slow)]

    await run_scenario(scenario, always_replay, SERVICE)


# -------------------------------------------------------------------------------------- asyncio.wait_for


class WaitFor(BaseModel):
    delay_s: float
    timeout_s: float


@ev.workflow
async def wait_for_leg(req: WaitFor) -> str:
    try:
        return await asyncio.wait_for(leg(Leg(delay_s=req.delay_s, value="w")), timeout=req.timeout_s)
    except TimeoutError:
        return f"timed out at {ev.now().isoformat()}"


@MODES
@pytest.mark.parametrize("in_time", [True, False], ids=["in-time", "times-out"])
async def test_wait_for(in_time: bool, always_replay: bool) -> None:
    """wait_for's timeout is a durable timer (seq 0, until start+30s) taken before the wrapped leg starts.

    In time: the 10s leg finishes at 10s and the 30s timer is cancelled. Too slow: the 100s leg is cancelled
    when the 30s timer completes and TimeoutError reaches the workflow at exactly 30s.
    """
    delay = 10 if in_time else 100

    async def scenario(env: TestEnvironment) -> None:
        h = await wait_for_leg.start(WaitFor(delay_s=delay, timeout_s=30), name=f"wait-for-{in_time}")
        await env.tick()
        assert await types(h) == ["WorkflowStarted", "TimerScheduled", "TimerScheduled"]
        assert await untils(h) == [seconds(30), seconds(delay)]
        assert await h.result() == ("W" if in_time else f"timed out at {seconds(30).isoformat()}")
        end = seconds(10 if in_time else 30)
        assert await end_time(h) == end
        assert env.now == end
        history = await h.history()
        if in_time:
            assert [(e.type, e.seq) for e in history] == [
                ("WorkflowStarted", None),
                ("TimerScheduled", 0),
                ("TimerScheduled", 1),
                ("TimerCompleted", 1),
                ("ActivityScheduled", 2),
                ("ActivitySucceeded", 2),
                ("WorkflowSucceeded", None),
            ]
        else:
            assert [(e.type, e.seq) for e in history] == [
                ("WorkflowStarted", None),
                ("TimerScheduled", 0),
                ("TimerScheduled", 1),
                ("TimerCompleted", 0),
                ("WorkflowSucceeded", None),
            ]

    await run_scenario(scenario, always_replay, SERVICE)


# ----------------------------------------------------------------------------------- asyncio.create_task


@ev.workflow
async def background_task() -> list[str]:
    background = asyncio.create_task(leg(Leg(delay_s=30, value="bg")))
    await asyncio.sleep(10)
    foreground = await step("fg", False)
    return [foreground, await background]


@MODES
async def test_create_task_awaited_later(always_replay: bool) -> None:
    """The task runs while the workflow does other work; awaiting it at 10s+ yields its result at 30s.

    The creator's own sleep is seq 0 (the task starts only when the creator first yields), the task's is seq 1.
    """

    async def scenario(env: TestEnvironment) -> None:
        h = await background_task.start(name="bg")
        assert await h.result() == ["FG", "BG"]
        assert await end_time(h) == seconds(30)
        assert env.now == seconds(30)
        history = await h.history()
        assert [(e.type, e.seq) for e in history] == [
            ("WorkflowStarted", None),
            ("TimerScheduled", 0),
            ("TimerScheduled", 1),
            ("TimerCompleted", 0),
            ("ActivityScheduled", 2),
            ("ActivitySucceeded", 2),
            ("TimerCompleted", 1),
            ("ActivityScheduled", 3),
            ("ActivitySucceeded", 3),
            ("WorkflowSucceeded", None),
        ]
        assert await untils(h) == [seconds(10), seconds(30)]

    await run_scenario(scenario, always_replay, SERVICE)


@ev.workflow
async def orphan_task(await_it: bool) -> str:
    failing = asyncio.create_task(leg(Leg(delay_s=10, value="bg", fail=True)))
    await asyncio.sleep(20)
    if await_it:
        try:
            await failing
        except ev.ActivityFailed as exc:
            return f"caught {exc.error}: {exc.message}"
    return "finished"


@MODES
@pytest.mark.parametrize("await_it", [True, False], ids=["retrieved", "never-retrieved"])
async def test_create_task_exception(await_it: bool, always_replay: bool) -> None:
    """A task's exception reaches whoever awaits it, even 10s later; if nobody ever retrieves it,
    the execution fails with it when the workflow function ends (instead of a 'never retrieved' warning)."""

    async def scenario(env: TestEnvironment) -> None:
        h = await orphan_task.start(await_it, name=f"orphan-{await_it}")
        if await_it:
            assert await h.result() == "caught ValueError: bg failed"
        else:
            with pytest.raises(ev.ExecutionFailed) as caught:
                await h.result()
            assert (caught.value.error, caught.value.message) == ("ValueError", "bg failed")
        status = await h.status()
        assert status.status == (ev.ExecutionStatus.SUCCEEDED if await_it else ev.ExecutionStatus.FAILED)
        assert status.end_time == seconds(20)
        assert env.now == seconds(20)
        assert await types(h) == [
            "WorkflowStarted",
            "TimerScheduled",  # seq 0: the workflow's 20s sleep
            "TimerScheduled",  # seq 1: the task's 10s sleep
            "TimerCompleted",
            "ActivityScheduled",
            "ActivityFailed",
            "TimerCompleted",
            "WorkflowSucceeded" if await_it else "WorkflowFailed",
        ]

    await run_scenario(scenario, always_replay, SERVICE)


# ----------------------------------------------------------------------------------- asyncio.TaskGroup


class Group(BaseModel):
    legs: list[Leg]
    catch: bool = True


@ev.workflow
async def task_group(req: Group) -> dict[str, Any]:
    tasks: list[asyncio.Task[str]] = []
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(leg(item)) for item in req.legs]
    except ExceptionGroup as failures:
        if not req.catch:
            raise
        return {
            "errors": [describe(error) for error in failures.exceptions],
            "cancelled": [task.cancelled() for task in tasks],
        }
    return {"results": [task.result() for task in tasks]}


@MODES
async def test_task_group_success(always_replay: bool) -> None:
    async def scenario(env: TestEnvironment) -> None:
        h = await task_group.start(Group(legs=legs((30, "a"), (10, "b"), (20, "c"))), name="group-ok")
        assert await h.result() == {"results": ["A", "B", "C"]}
        assert await end_time(h) == seconds(30)
        assert env.now == seconds(30)
        assert await types(h) == timers_then(3, "ActivitySucceeded", "ActivitySucceeded", "ActivitySucceeded")
        assert await untils(h) == [seconds(30), seconds(10), seconds(20)]

    await run_scenario(scenario, always_replay, SERVICE)


@MODES
@pytest.mark.parametrize("catch", [True, False], ids=["caught", "escapes"])
async def test_task_group_failure_cancels_siblings(catch: bool, always_replay: bool) -> None:
    """b fails at 10s: the group cancels a and c (their timers never complete) and raises an ExceptionGroup.

    Caught, the workflow sees which tasks were cancelled; escaping, the execution fails with error
    `ExceptionGroup` at 10s.
    """

    async def scenario(env: TestEnvironment) -> None:
        spec = Group(legs=legs((30, "a"), (10, "b", True), (20, "c")), catch=catch)
        h = await task_group.start(spec, name=f"group-fail-{catch}")
        if catch:
            assert await h.result() == {
                "errors": ["ActivityFailed:ValueError:b failed"],
                "cancelled": [True, False, True],
            }
        else:
            with pytest.raises(ev.ExecutionFailed) as caught:
                await h.result()
            assert caught.value.error == "ExceptionGroup"
            assert "1 sub-exception" in caught.value.message
        assert await end_time(h) == seconds(10)
        await env.advance("1m")
        assert env.now == seconds(70)
        assert await types(h) == timers_then(
            3, "ActivityFailed", end="WorkflowSucceeded" if catch else "WorkflowFailed"
        )

    await run_scenario(scenario, always_replay, SERVICE)


# ----------------------------------------------------------------------------------------- asyncio.sleep


@ev.workflow
async def nap(delay_s: float) -> str:
    await asyncio.sleep(0)  # only yields to the loop: no timer
    await asyncio.sleep(delay_s)
    return ev.now().isoformat()


@MODES
async def test_asyncio_sleep_is_a_durable_timer(always_replay: bool) -> None:
    """asyncio.sleep(90) records TimerScheduled(until=start+90s) and wakes exactly then; sleep(0) records nothing.

    Virtual time moves only when the test moves it.
    """

    async def scenario(env: TestEnvironment) -> None:
        h = await nap.start(90, name="nap")
        await env.tick()
        assert env.now == START
        assert await types(h) == ["WorkflowStarted", "TimerScheduled"]
        assert await untils(h) == [seconds(90)]
        await env.advance("89s")
        assert (await h.status()).status == ev.ExecutionStatus.IN_PROGRESS
        await env.advance("1s")
        assert env.now == seconds(90)
        assert (await h.status()).status == ev.ExecutionStatus.SUCCEEDED
        assert await h.result() == seconds(90).isoformat()
        assert await end_time(h) == seconds(90)
        history = await h.history()
        assert [(e.type, e.seq) for e in history] == [
            ("WorkflowStarted", None),
            ("TimerScheduled", 0),
            ("TimerCompleted", 0),
            ("WorkflowSucceeded", None),
        ]
        assert history[2].timestamp == seconds(90)

    await run_scenario(scenario, always_replay, SERVICE)


# ------------------------------------------------------------------------------------------ task hashes


@ev.workflow
async def waits_in_a_group(width: int) -> None:
    async with asyncio.TaskGroup() as group:
        for _ in range(width):
            group.create_task(asyncio.sleep(3600))


def _first_steps(ids: list[str], width: int) -> list[WorkflowExecutor]:
    executors = []
    for execution_id in ids:
        started = WorkflowStarted(timestamp=START, workflow=waits_in_a_group.name, input=width)
        executor = WorkflowExecutor(waits_in_a_group.code(), execution_id, [started], first_step_done=False)
        executor.step()
        executors.append(executor)
    return executors


def test_tasks_of_many_executions_do_not_share_hashes() -> None:
    """asyncio registers every task of every loop in one global WeakSet, keyed by the task's hash: tasks of
    different executions must not collide there (they did: every main task hashed alike, and each new task
    probed past all the ones in flight), and the registry must have seen the hash the task keeps."""
    executors = _first_steps([f"waits_in_a_group/{i}" for i in range(2000)], width=3)
    try:
        tasks = [task for executor in executors for task in executor.loop.tasks]
        assert len(tasks) == 2000 * 4
        assert len({hash(task) for task in tasks}) == len(tasks)
        mains = [executor.main_task for executor in executors]
        assert len({hash(task) for task in mains}) == len(mains)
        ours = {id(task): hash(task) for task in tasks}
        registered = {id(ref()): hash(ref) for ref in _task_registry().data if id(ref()) in ours}
        assert registered == ours
    finally:
        for executor in executors:
            executor.close()


def test_set_order_within_an_execution_does_not_depend_on_its_id() -> None:
    """The salt lives above the creation order, so sets of one execution's tasks (a TaskGroup's, `wait`'s)
    iterate in the same order whatever the execution id: a replay under another id (`ev.testing.replay`
    without one) and histories recorded before the salt existed cancel tasks, and so make clean-up calls,
    in the same order."""
    executors = _first_steps([f"waits_in_a_group/{i}" for i in range(200)], width=12)
    try:
        orders = set()
        for executor in executors:
            created = executor.loop.tasks
            orders.add(tuple(created.index(task) for task in set(created)))
        assert len(orders) == 1
    finally:
        for executor in executors:
            executor.close()


def _task_registry() -> Any:
    """asyncio's global registry of tasks not yet done (`_scheduled_tasks` from Python 3.12 on)."""
    return getattr(asyncio.tasks, "_scheduled_tasks", None) or asyncio.tasks._all_tasks  # type: ignore[attr-defined]
