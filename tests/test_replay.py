"""Determinism checks: `ev.testing.replay` against changed code, the history forms it accepts, compatible
changes, and cached instances versus replay from scratch."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import eventual_nb as ev
from eventual_nb.engine.history import HISTORY_ADAPTER, ScheduleActivity, StartTimer

SERVICE = ev.Service("tests-replay")

T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)


def make_env(**options: Any) -> ev.testing.TestEnvironment:
    return ev.testing.TestEnvironment(service=SERVICE, start=T0, **options)


#: how often each activity's real code ran (replay must never run any)
RUNS: dict[str, int] = {}


@ev.activity
async def step_a(x: int) -> int:
    RUNS["step_a"] = RUNS.get("step_a", 0) + 1
    return x + 1


@ev.activity
async def step_b(x: int) -> int:
    RUNS["step_b"] = RUNS.get("step_b", 0) + 1
    return x * 2


@ev.activity
async def step_c(x: int) -> int:
    RUNS["step_c"] = RUNS.get("step_c", 0) + 1
    return x - 3


@ev.workflow
async def pipeline(x: int) -> int:
    """Version 1: seq 0 step_a, seq 1 step_b, seq 2 a timer, seq 3 step_c."""
    a = await step_a(x)
    b = await step_b(a)
    await ev.sleep("1h")
    return await step_c(b)


async def recorded_pipeline(name: str = "v1") -> tuple[str, list[Any]]:
    """Run version 1 to completion and return its id and history."""
    async with make_env():
        handle = await pipeline.start(5, name=name)
        assert await handle.result() == 9
        return handle.id, await handle.history()


# ------------------------------------------------------------------------------------------ divergences


async def v2_other_activity_at_seq_1(x: int) -> int:
    a = await step_a(x)
    b = await step_c(a)
    await ev.sleep("1h")
    return await step_c(b)


async def v2_other_input_at_seq_1(x: int) -> int:
    a = await step_a(x)
    b = await step_b(a + 100)
    await ev.sleep("1h")
    return await step_c(b)


async def v2_call_removed(x: int) -> int:
    a = await step_a(x)
    b = await step_b(a)
    await ev.sleep("1h")
    return b


async def v2_timer_replaced(x: int) -> int:
    a = await step_a(x)
    b = await step_b(a)
    await step_a(0)
    return await step_c(b)


async def test_different_activity_at_a_seq_is_a_determinism_error() -> None:
    execution_id, history = await recorded_pipeline()
    with pytest.raises(ev.DeterminismError) as info:
        ev.testing.replay(v2_other_activity_at_seq_1, history, execution_id=execution_id)
    text = str(info.value)
    assert execution_id in text
    assert "seq 1" in text
    assert "activity 'step_b'" in text  # what history recorded
    assert "activity 'step_c'" in text  # what the code now does
    assert text.index("step_b") < text.index("step_c")
    assert info.value.seq == 1
    assert info.value.execution_id == execution_id


async def test_same_activity_with_different_input_is_a_determinism_error() -> None:
    execution_id, history = await recorded_pipeline()
    with pytest.raises(ev.DeterminismError) as info:
        ev.testing.replay(v2_other_input_at_seq_1, history, execution_id=execution_id)
    text = str(info.value)
    assert execution_id in text
    assert "seq 1" in text
    assert text.count("activity 'step_b'") == 2
    assert '{"x":6}' in text  # recorded input
    assert '{"x":106}' in text  # the code's input now
    assert info.value.seq == 1


async def test_removed_call_is_a_determinism_error() -> None:
    """The code now finishes while history still holds a call it no longer makes."""
    execution_id, history = await recorded_pipeline()
    with pytest.raises(ev.DeterminismError) as info:
        ev.testing.replay(v2_call_removed, history, execution_id=execution_id)
    text = str(info.value)
    assert execution_id in text
    assert "seq 3" in text
    assert "step_c" in text
    assert "complete" in text
    assert info.value.seq == 3


async def test_removed_call_in_a_history_cut_midway_is_a_determinism_error() -> None:
    """Same change, but the history ends while the removed call is still pending."""
    execution_id, history = await recorded_pipeline()
    cut = [event for event in history if not (event.seq == 3 and event.type != "ActivityScheduled")]
    cut = [event for event in cut if event.type != "WorkflowSucceeded"]
    assert cut[-1].type == "ActivityScheduled"
    assert cut[-1].name == "step_c"
    with pytest.raises(ev.DeterminismError) as info:
        ev.testing.replay(v2_call_removed, cut, execution_id=execution_id)
    text = str(info.value)
    assert execution_id in text
    assert "seq 3" in text
    assert "activity 'step_c'" in text


async def test_timer_replaced_by_activity_is_a_determinism_error() -> None:
    execution_id, history = await recorded_pipeline()
    with pytest.raises(ev.DeterminismError) as info:
        ev.testing.replay(v2_timer_replaced, history, execution_id=execution_id)
    text = str(info.value)
    assert execution_id in text
    assert "seq 2" in text
    assert "timer" in text
    assert "activity 'step_a'" in text
    assert info.value.seq == 2


async def test_swapping_the_order_of_gathered_calls_is_a_determinism_error() -> None:
    async def swapped(x: int) -> list[int]:
        return list(await asyncio.gather(step_b(x), step_a(x)))

    execution_id, history = await recorded_sequential()
    with pytest.raises(ev.DeterminismError) as info:
        ev.testing.replay(swapped, history, execution_id=execution_id)
    assert "seq 0" in str(info.value)


@pytest.mark.no_replay_check
async def test_redefined_workflow_diverges_on_a_cold_replay_in_the_environment() -> None:
    """An execution in flight under version 1 hits a DeterminismError when its next step replays version 2."""

    @ev.workflow(name="evolving")
    async def evolving_v1(x: int) -> int:
        a = await step_a(x)
        await ev.sleep("1 day")
        return await step_b(a)

    async with make_env(always_replay=True) as env:
        handle = await evolving_v1.start(1, name="in-flight")
        await env.tick()
        assert [e.type for e in await handle.history()][-1] == "TimerScheduled"

        @ev.workflow(name="evolving")
        async def evolving_v2(x: int) -> int:
            a = await step_c(x)
            await ev.sleep("1 day")
            return await step_b(a)

        with pytest.raises(ev.DeterminismError) as info:
            await handle.result()
        text = str(info.value)
        assert "evolving/in-flight" in text
        assert "seq 0" in text
        assert "step_a" in text
        assert "step_c" in text
        assert (await handle.status()).status == ev.ExecutionStatus.IN_PROGRESS
        assert evolving_v2.name == "evolving"


@pytest.mark.no_replay_check
async def test_redefined_workflow_keeps_a_cached_instance_running_old_code() -> None:
    """Outside a notebook, in-flight executions stay on their live instances."""

    @ev.workflow(name="evolving_cached")
    async def cached_v1(x: int) -> int:
        a = await step_a(x)
        await ev.sleep("1 day")
        return await step_b(a)

    async with make_env() as env:
        handle = await cached_v1.start(1, name="in-flight")
        await env.tick()

        @ev.workflow(name="evolving_cached")
        async def cached_v2(x: int) -> int:
            a = await step_c(x)
            await ev.sleep("1 day")
            return await step_c(a)

        assert await handle.result() == 4  # step_b(step_a(1)) from version 1
        assert env.replays == 0
        assert cached_v2.name == "evolving_cached"


# ------------------------------------------------------------------------------------------ accepted forms


@ev.workflow
async def sequential(x: int) -> list[int]:
    a = await step_a(x)
    b = await step_b(x)
    return [a, b]


async def recorded_sequential() -> tuple[str, list[Any]]:
    async with make_env():
        handle = await sequential.start(3, name="seq")
        assert await handle.result() == [4, 6]
        return handle.id, await handle.history()


async def test_replay_accepts_events_dicts_and_json_text() -> None:
    execution_id, history = await recorded_pipeline()
    as_dicts = [event.model_dump(mode="json") for event in history]
    as_text = json.dumps(as_dicts)
    as_bytes_text = HISTORY_ADAPTER.dump_json(history).decode()
    RUNS.clear()
    for form in (history, as_dicts, as_text, as_bytes_text):
        assert ev.testing.replay(pipeline, form, execution_id=execution_id) == []
    assert RUNS == {}  # replay is pure: no activity ran


async def test_replay_accepts_a_plain_async_function() -> None:
    execution_id, history = await recorded_pipeline()

    async def same_as_v1(x: int) -> int:
        a = await step_a(x)
        b = await step_b(a)
        await ev.sleep("1h")
        return await step_c(b)

    assert ev.testing.replay(same_as_v1, history, execution_id=execution_id) == []
    assert ev.testing.replay(same_as_v1, history) == []  # the execution id only seeds uuid4/random


async def test_replay_of_history_cut_after_start_returns_the_next_commands() -> None:
    _, history = await recorded_pipeline()
    commands = ev.testing.replay(pipeline, history[:1])
    assert len(commands) == 1
    (command,) = commands
    assert isinstance(command, ScheduleActivity)
    assert (command.seq, command.name, command.input) == (0, "step_a", {"x": 5})


async def test_replay_of_history_cut_midway_returns_the_next_commands() -> None:
    _, history = await recorded_pipeline()
    # up to step_b's result: the code's next durable call is the one-hour timer
    cut = history[: next(i for i, e in enumerate(history) if e.type == "ActivitySucceeded" and e.seq == 1) + 1]
    assert [e.type for e in cut][-1] == "ActivitySucceeded"
    assert cut[-1].seq == 1
    commands = ev.testing.replay(pipeline, cut)
    assert len(commands) == 1
    assert isinstance(commands[0], StartTimer)
    assert commands[0].seq == 2
    assert commands[0].until == cut[-1].timestamp + timedelta(hours=1)
    # a history whose last call is still pending asks for nothing new
    assert ev.testing.replay(pipeline, cut[:-1]) == []


async def test_replay_rejects_a_history_without_workflow_started() -> None:
    _, history = await recorded_pipeline()
    with pytest.raises(ev.DeterminismError, match="WorkflowStarted"):
        ev.testing.replay(pipeline, history[1:])
    with pytest.raises(ev.DeterminismError):
        ev.testing.replay(pipeline, [])


# ------------------------------------------------------------------------------------------ compatible change


async def test_sequential_calls_turned_into_gather_still_replay() -> None:
    """Issue order is unchanged (seq 0 step_a, seq 1 step_b), so in-flight histories stay valid."""
    execution_id, history = await recorded_sequential()

    async def gathered(x: int) -> list[int]:
        return list(await asyncio.gather(step_a(x), step_b(x)))

    assert ev.testing.replay(gathered, history, execution_id=execution_id) == []


async def test_gather_turned_into_sequential_calls_still_replays() -> None:
    @ev.workflow(name="gathering")
    async def gathering(x: int) -> list[int]:
        return list(await asyncio.gather(step_a(x), step_b(x)))

    async with make_env():
        handle = await gathering.start(3, name="g")
        assert await handle.result() == [4, 6]
        history = await handle.history()
    # both calls were issued before either answered
    assert [e.type for e in history][1:3] == ["ActivityScheduled", "ActivityScheduled"]

    async def one_by_one(x: int) -> list[int]:
        return [await step_a(x), await step_b(x)]

    assert ev.testing.replay(one_by_one, history, execution_id=handle.id) == []


# ------------------------------------------------------------------------------------------ cached vs from scratch


@ev.workflow
async def long_running(x: int) -> int:
    total = x
    for _ in range(4):
        total = await step_a(total)
        await ev.sleep("10m")
    left, right = await asyncio.gather(step_b(total), step_c(total))
    return left + right + int(ev.random() * 1000)


async def test_always_replay_replays_from_scratch_and_records_identical_histories() -> None:
    histories = {}
    results = {}
    stats = {}
    for always_replay in (False, True):
        async with make_env(always_replay=always_replay) as env:
            handle = await long_running.start(1, name="same")
            results[always_replay] = await handle.result()
            histories[always_replay] = [e.model_dump(mode="json") for e in await handle.history()]
            stats[always_replay] = (env.steps, env.replays)
    assert histories[False] == histories[True]
    assert results[False] == results[True]
    steps_cached, replays_cached = stats[False]
    steps_replayed, replays_replayed = stats[True]
    assert replays_cached == 0
    assert replays_replayed > 0
    assert steps_cached == steps_replayed
    # every step after the first is a from-scratch replay
    assert replays_replayed == steps_replayed - 1


async def test_workflow_code_cannot_swallow_a_determinism_error() -> None:
    """A divergence raised at a durable call is reported even if the workflow catches every exception there."""
    execution_id, history = await recorded_pipeline()

    async def catches_everything(x: int) -> int:
        a = await step_a(x)
        try:
            b = await step_c(a)
        except Exception:  # noqa: BLE001 - the point is that even a blanket except cannot swallow it
            return -1
        await ev.sleep("1h")
        return await step_c(b)

    with pytest.raises(ev.DeterminismError) as info:
        ev.testing.replay(catches_everything, history, execution_id=execution_id)
    assert info.value.seq == 1
    assert "activity 'step_b'" in str(info.value)
    assert "activity 'step_c'" in str(info.value)
