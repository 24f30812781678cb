"""Engine benchmarks: durable timers, replay from scratch, cached instances against replay-every-step.

Workflows run in an in-memory `TestEnvironment` (virtual clock, real engine) or, to measure the engine
alone, through `WorkflowExecutor` fed one `ActivitySucceeded` per step exactly as a runtime feeds it.
The activity is `async def` so a step costs engine time, not a worker-thread hop.

Every benchmark checks the outcome it measured (the workflow's result, no commands after replaying a
completed execution, the same history with and without replay) and raises if it is wrong: a fast wrong
answer is not a benchmark result. Facts with a target (replay counts, virtual end time) are reported
as met or missed, and the smoke test asserts them.
"""

from __future__ import annotations

import asyncio
import gc
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import eventual_nb as ev
from benchmarks.results import Result
from eventual_nb.engine.executor import WorkflowExecutor
from eventual_nb.engine.history import (
    ActivitySucceeded,
    HistoryEvent,
    ScheduleActivity,
    WorkflowStarted,
    WorkflowSucceeded,
    dump_history,
)

SERVICE = ev.Service("eventual-nb-benchmarks")

#: every benchmark starts its virtual clock here, so virtual end times are easy to check
START = datetime(2025, 1, 1, tzinfo=UTC)

T = TypeVar("T")


@ev.activity
async def bench_record(i: int) -> int:
    """The activity every benchmark workflow calls: returns its input, so results can be checked."""
    return i


@ev.workflow
async def bench_daily_timers(days: int) -> int:
    """Sleep a day, then call an activity; `days` times."""
    total = 0
    for day in range(days):
        await ev.sleep("1 day")
        total += await bench_record(day)
    return total


@ev.workflow
async def bench_sequential(steps: int) -> int:
    """`steps` sequential activity calls: one workflow step (and two history events) per call."""
    total = 0
    for i in range(steps):
        total += await bench_record(i)
    return total


def expected_sum(n: int) -> int:
    return n * (n - 1) // 2


@dataclass(frozen=True)
class Sizes:
    timer_days: int
    timer_repeats: int
    replay_calls: int
    replay_repeats: int
    cached_small: int
    cached_large: int
    cached_repeats: int
    always_steps: int
    always_repeats: int
    #: the cached runs of the always_replay comparison are short, so they are repeated more often
    always_cached_repeats: int


FULL = Sizes(
    timer_days=365,
    timer_repeats=3,
    replay_calls=5_000,
    replay_repeats=5,
    cached_small=1_000,
    cached_large=10_000,
    cached_repeats=3,
    always_steps=200,
    always_repeats=3,
    always_cached_repeats=7,
)
QUICK = Sizes(
    timer_days=30,
    timer_repeats=1,
    replay_calls=250,
    replay_repeats=3,
    cached_small=50,
    cached_large=500,
    cached_repeats=1,
    always_steps=40,
    always_repeats=1,
    always_cached_repeats=3,
)


# ------------------------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds (what the targets are about) and this process's CPU seconds.

    CPU time is reported next to wall time for ratios: on a shared machine other processes stretch
    wall time at random, while the work this process did stays the same.
    """

    wall: float
    cpu: float

    @staticmethod
    def best(timings: list[Timing]) -> Timing:
        return Timing(min(t.wall for t in timings), min(t.cpu for t in timings))


class Stopwatch:
    """`with Stopwatch() as watch: ...` then `watch.timing`; collects garbage first so runs start equal."""

    def __enter__(self) -> Stopwatch:
        gc.collect()
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.timing = Timing(time.perf_counter() - self._wall, time.process_time() - self._cpu)


def best_of(repeats: int, function: Callable[[], T]) -> tuple[Timing, list[Timing], T]:
    """Run `function` `repeats` times; (best timing, all timings, last value)."""
    timings: list[Timing] = []
    value: Any = None
    for _ in range(max(1, repeats)):
        with Stopwatch() as watch:
            value = function()
        timings.append(watch.timing)
    return Timing.best(timings), timings, value


async def best_of_async(repeats: int, function: Callable[[], Awaitable[tuple[Timing, T]]]) -> tuple[Timing, T]:
    """`function` times itself (its setup is not part of the measurement); best timing, last value."""
    timings: list[Timing] = []
    value: Any = None
    for _ in range(max(1, repeats)):
        timing, value = await function()
        timings.append(timing)
    return Timing.best(timings), value


@dataclass
class EnvRun:
    """One workflow run to completion in a TestEnvironment."""

    timing: Timing
    result: Any
    history: list[HistoryEvent]
    execution_id: str
    end_time: datetime | None
    now: datetime
    steps: int
    replays: int


async def run_in_env(workflow: Any, value: Any, *, always_replay: bool = False) -> tuple[Timing, EnvRun]:
    """Start `workflow(value)` and `await h.result()`; only start + result are timed."""
    async with ev.testing.TestEnvironment(service=SERVICE, start=START, always_replay=always_replay) as env:
        with Stopwatch() as watch:
            handle = await workflow.start(value)
            result = await handle.result()
        status = await handle.status()
        run = EnvRun(
            timing=watch.timing,
            result=result,
            history=await handle.history(),
            execution_id=handle.id,
            end_time=status.end_time,
            now=env.now,
            steps=env.steps,
            replays=env.replays,
        )
    return watch.timing, run


@dataclass
class EngineRun:
    steps: int
    history_events: int
    replays: int
    replayed_events: int
    #: the run's history and execution id (what a replay of it needs)
    history: list[HistoryEvent]
    execution_id: str


def drive_engine(steps: int, *, always_replay: bool = False) -> EngineRun:
    """Run `bench_sequential(steps)` on the bare engine, the way a runtime drives it.

    The runtime's part is reduced to its minimum: keep the history, answer each `ScheduleActivity`
    command with an `ActivitySucceeded` event in the next step. With `always_replay` every step builds a
    fresh executor from the whole history (what a runtime without an instance cache would do).
    """
    code = bench_sequential.code()
    execution_id = f"{code.name}/engine-{steps}"
    history: list[HistoryEvent] = [WorkflowStarted(timestamp=START, workflow=code.name, input=steps)]
    executor = WorkflowExecutor(code, execution_id, history, first_step_done=False)
    output = executor.step()
    history.extend(output.events)
    step_count, replays, replayed_events = 1, 0, 0
    while not executor.ended:
        answers: list[HistoryEvent] = [
            ActivitySucceeded(seq=command.seq, timestamp=START, result=command.input["i"])
            for command in output.commands
            if isinstance(command, ScheduleActivity)
        ]
        if not answers:
            raise RuntimeError(f"engine run of {steps} steps is stuck after {step_count} step(s)")
        if always_replay:
            executor = WorkflowExecutor(code, execution_id, history)
            replays += 1
        before = executor.replayed_events
        output = executor.step(answers)
        replayed_events += executor.replayed_events - before
        history.extend(output.events)
        step_count += 1
    terminal = executor.terminal
    if not isinstance(terminal, WorkflowSucceeded) or terminal.result != expected_sum(steps):
        raise RuntimeError(f"engine run of {steps} steps ended with {terminal!r}")
    return EngineRun(step_count, len(history), replays, replayed_events, history, execution_id)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise RuntimeError(f"benchmark sanity check failed: {message}")


# ---------------------------------------------------------------------------------------- benchmarks


async def daily_timers(sizes: Sizes) -> Result:
    days = sizes.timer_days
    best, run = await best_of_async(sizes.timer_repeats, lambda: run_in_env(bench_daily_timers, days))
    _check(run.result == expected_sum(days), f"daily timers returned {run.result}")
    expected_end = START + timedelta(days=days)
    end = run.end_time or run.now
    result = Result(
        key="daily_timers",
        title=f"{days} daily timers",
        params={"days": days, "repeats": sizes.timer_repeats},
        info={"start": START.isoformat(), "virtual_end": end.isoformat(), "expected_end": expected_end.isoformat()},
    )
    result.add(
        "wall_seconds", f"wall clock (best of {sizes.timer_repeats})", best.wall, "s", target="< 1 s", met=best.wall < 1
    )
    result.add(
        "virtual_days",
        f"virtual time: {START:%Y-%m-%d} → {end:%Y-%m-%d %H:%M}",
        (end - START) / timedelta(days=1),
        "days",
        target=f"= {days} days",
        met=end == expected_end,
    )
    result.add("history_events", "history events", len(run.history))
    result.add("steps", "env.steps", run.steps)
    result.add("replays", "env.replays", run.replays, target="0", met=run.replays == 0)
    return result


async def replay_history(sizes: Sizes) -> Result:
    calls = sizes.replay_calls
    _, run = await run_in_env(bench_sequential, calls)
    history, execution_id = run.history, run.execution_id
    _check(len(history) == 2 * calls + 2, f"expected {2 * calls + 2} history events, got {len(history)}")

    def replay() -> list[Any]:
        return ev.testing.replay(bench_sequential, history, execution_id=execution_id)

    best, timings, commands = best_of(sizes.replay_repeats, replay)
    _check(commands == [], f"replay of a completed execution issued {commands}")
    text = json.dumps(dump_history(history))
    best_json, _, commands = best_of(
        sizes.replay_repeats, lambda: ev.testing.replay(bench_sequential, text, execution_id=execution_id)
    )
    _check(commands == [], f"replay from JSON issued {commands}")
    big_enough = len(history) >= 10_000
    result = Result(
        key="replay_history",
        title=f"replay {len(history):,}-event history from scratch",
        params={"activity_calls": calls, "repeats": sizes.replay_repeats},
    )
    result.add("history_events", "history events", len(history))
    result.add(
        "best_seconds",
        f"replay (best of {len(timings)})",
        best.wall,
        "s",
        target="≤ 0.1 s" if big_enough else None,
        met=best.wall <= 0.1 if big_enough else None,
    )
    result.add("median_seconds", "replay (median)", statistics.median(t.wall for t in timings), "s")
    result.add("best_cpu_seconds", "replay, process CPU time (best)", best.cpu, "s")
    result.add("events_per_second", "events replayed per second", len(history) / best.wall, "events/s")
    result.add("from_json_seconds", "replay incl. parsing the JSON (best)", best_json.wall, "s")
    return result


async def cached_instances(sizes: Sizes) -> Result:
    small, large = sizes.cached_small, sizes.cached_large
    repeats = sizes.cached_repeats
    # small and large runs alternate, so a burst of load on the machine hits both alike
    env_small: list[Timing] = []
    env_large: list[Timing] = []
    engine_small: list[Timing] = []
    engine_large: list[Timing] = []
    replays = engine_replayed = 0
    run_large: EnvRun | None = None
    for _ in range(max(1, repeats)):
        for steps, timings in ((small, env_small), (large, env_large)):
            timing, run = await run_in_env(bench_sequential, steps)
            _check(run.result == expected_sum(steps), f"{steps} steps returned {run.result}")
            timings.append(timing)
            replays += run.replays
            run_large = run
        for steps, timings in ((small, engine_small), (large, engine_large)):
            with Stopwatch() as watch:
                engine_run = drive_engine(steps)
            timings.append(watch.timing)
            engine_replayed += engine_run.replayed_events
    assert run_large is not None
    best_small, best_large = Timing.best(env_small), Timing.best(env_large)
    best_engine_small, best_engine_large = Timing.best(engine_small), Timing.best(engine_large)
    factor = large / small
    limit = 1.2 * factor
    ratio = best_large.wall / best_small.wall
    engine_ratio = best_engine_large.wall / best_engine_small.wall
    result = Result(
        key="cached_instances",
        title=f"cached instances: {large:,} steps vs {small:,} steps",
        params={"small_steps": small, "large_steps": large, "repeats": repeats},
    )
    result.notes.append(
        f"linear is {factor:.0f}×, the target allows 20% more ({limit:.0f}×); best of {repeats} alternating runs"
    )
    result.add("small_seconds", f"TestEnvironment, {small:,} steps", best_small.wall, "s")
    result.add("large_seconds", f"TestEnvironment, {large:,} steps", best_large.wall, "s")
    result.add("ratio", "TestEnvironment ratio (wall)", ratio, "×", target=f"≤ {limit:.0f}×", met=ratio <= limit)
    result.add("cpu_ratio", "TestEnvironment ratio (CPU time)", best_large.cpu / best_small.cpu, "×")
    result.add("large_steps_per_second", f"steps per second ({large:,})", (large + 1) / best_large.wall, "steps/s")
    result.add("env_steps_large", f"env.steps ({large:,})", run_large.steps)
    result.add("replays", "env.replays (all runs)", replays, target="0", met=replays == 0)
    result.add("engine_small_seconds", f"engine alone, {small:,} steps", best_engine_small.wall, "s")
    result.add("engine_large_seconds", f"engine alone, {large:,} steps", best_engine_large.wall, "s")
    result.add(
        "engine_ratio",
        "engine alone ratio (wall)",
        engine_ratio,
        "×",
        target=f"≤ {limit:.0f}×",
        met=engine_ratio <= limit,
    )
    result.add("engine_cpu_ratio", "engine alone ratio (CPU time)", best_engine_large.cpu / best_engine_small.cpu, "×")
    result.add(
        "engine_replayed_events", "engine: events re-applied", engine_replayed, target="0", met=engine_replayed == 0
    )
    return result


async def always_replay(sizes: Sizes) -> Result:
    steps, half = sizes.always_steps, sizes.always_steps // 2
    repeats, cached_repeats = sizes.always_repeats, sizes.always_cached_repeats
    cached, run_cached = await best_of_async(cached_repeats, lambda: run_in_env(bench_sequential, steps))
    cached_half, _ = await best_of_async(cached_repeats, lambda: run_in_env(bench_sequential, half))
    always, run_always = await best_of_async(repeats, lambda: run_in_env(bench_sequential, steps, always_replay=True))
    always_half, _ = await best_of_async(repeats, lambda: run_in_env(bench_sequential, half, always_replay=True))
    for run in (run_cached, run_always):
        _check(run.result == expected_sum(steps), f"{steps} steps returned {run.result}")
    _check(run_cached.history == run_always.history, "always_replay produced a different history than cached")
    engine_cached = drive_engine(steps)
    engine_always = drive_engine(steps, always_replay=True)
    result = Result(
        key="always_replay",
        title=f"always_replay vs cached, {steps} steps",
        params={"steps": steps, "half_steps": half, "repeats": repeats, "cached_repeats": cached_repeats},
    )
    result.notes.append(f"growth {half} → {steps} steps is in CPU time: about 2× means O(n), about 4× O(n²)")
    result.add("cached_seconds", "cached (always_replay=False)", cached.wall, "s")
    result.add("always_seconds", "always_replay=True", always.wall, "s")
    result.add("slowdown", "always_replay / cached", always.wall / cached.wall, "×")
    result.add("cached_replays", "env.replays, cached", run_cached.replays, target="0", met=run_cached.replays == 0)
    result.add("always_replays", "env.replays, always_replay", run_always.replays)
    result.add("engine_cached_replayed_events", "engine: events re-applied, cached", engine_cached.replayed_events)
    result.add(
        "engine_always_replayed_events", "engine: events re-applied, always_replay", engine_always.replayed_events
    )
    result.add("cached_growth", f"cached growth {half} → {steps} steps", cached.cpu / cached_half.cpu, "×")
    result.add("always_growth", f"always_replay growth {half} → {steps} steps", always.cpu / always_half.cpu, "×")
    return result


BENCHMARKS: dict[str, Callable[[Sizes], Awaitable[Result]]] = {
    "daily_timers": daily_timers,
    "replay_history": replay_history,
    "cached_instances": cached_instances,
    "always_replay": always_replay,
}


async def run_all(
    sizes: Sizes, only: list[str] | None = None, progress: Callable[[str], None] | None = None
) -> list[Result]:
    results = []
    for key, benchmark in BENCHMARKS.items():
        if only and key not in only:
            continue
        if progress is not None:
            progress(key)
        results.append(await benchmark(sizes))
    return results


def run(quick: bool, only: list[str] | None = None, progress: Callable[[str], None] | None = None) -> list[Result]:
    return asyncio.run(run_all(QUICK if quick else FULL, only, progress))
