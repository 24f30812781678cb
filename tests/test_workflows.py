"""Workflows on a TestEnvironment: idempotent starts, children, timeouts, cancellation, patches, deterministic
helpers, input validation, `Stuck` diagnostics and failures from tasks nobody awaited."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

import eventual_nb as ev

SERVICE = ev.Service("tests-workflows")

T0 = datetime(2024, 1, 1, 9, 0, tzinfo=UTC)


def make_env(**options: Any) -> ev.testing.TestEnvironment:
    return ev.testing.TestEnvironment(service=SERVICE, start=T0, **options)


def types_of(history: list[Any]) -> list[str]:
    return [event.type for event in history]


# ------------------------------------------------------------------------------------------ definitions


class Approval(BaseModel):
    ok: bool


approval = ev.signal("approval", Approval)
never = ev.signal("never")
nudge = ev.signal("nudge")


@ev.activity
async def reserve_seat(seat: str) -> str:
    return f"reserved {seat}"


@ev.activity
async def release_seat(seat: str) -> str:
    return f"released {seat}"


@ev.activity
async def cleanup() -> None:
    return None


@ev.workflow
async def double(x: int) -> int:
    return x * 2


@ev.workflow
async def add_one(x: int) -> int:
    return x + 1


@ev.workflow
async def reject(x: int) -> int:
    raise ValueError(f"cannot take {x}")


@ev.workflow
async def calls_children(x: int) -> dict[str, Any]:
    first = await add_one(x)
    try:
        await reject(first)
    except ev.ExecutionFailed as exc:
        return {"first": first, "error": exc.error, "message": exc.message, "child": exc.execution_id}
    return {"first": first}


@ev.workflow
async def lets_child_fail(x: int) -> int:
    return await reject(x)


@ev.workflow
async def starts_child(x: int) -> dict[str, Any]:
    handle = await add_one.start(x)
    return {"id": handle.id, "result": await handle.result()}


@ev.workflow
async def sleepy_child() -> str:
    await ev.sleep("1 day")
    return "woke"


@ev.workflow
async def catches_cancelled_child() -> str:
    handle = await sleepy_child.start()
    try:
        await handle.result()
    except ev.ExecutionCancelled as exc:
        return f"child cancelled: {exc.execution_id}"
    return "child finished"


@ev.workflow
async def ignores_cancelled_child() -> str:
    return await sleepy_child()


@ev.workflow(timeout="1h")
async def times_out() -> str:
    try:
        await ev.sleep("2h")
    finally:
        await cleanup()
    return "slept"


@ev.workflow
async def no_definition_timeout() -> str:
    try:
        await ev.sleep("2h")
    finally:
        await cleanup()
    return "slept"


@ev.workflow
async def booking(seat: str) -> str:
    await reserve_seat(seat)
    try:
        await ev.sleep("1 day")
    except asyncio.CancelledError:
        await release_seat(seat)
        raise
    return "booked"


@ev.workflow
async def swallows_cancel() -> str:
    try:
        await ev.sleep("1 day")
    except asyncio.CancelledError:
        return "ignored the cancel"
    return "slept"


@ev.workflow
async def reports_info() -> dict[str, Any]:
    info = ev.workflow_info()
    return {
        "execution_id": info.execution_id,
        "name": info.name,
        "workflow": info.workflow,
        "start_time": info.start_time.isoformat(),
        "parent_id": info.parent_id,
    }


@ev.workflow
async def info_parent() -> dict[str, Any]:
    return await reports_info()


@ev.workflow
async def clock() -> list[str]:
    seen = [ev.now().isoformat()]
    await ev.sleep("90m")
    seen.append(ev.now().isoformat())
    await nudge.expect()
    seen.append(ev.now().isoformat())
    return seen


#: every value `dice` draws, each time its code runs (first run and replays)
DRAWS: list[tuple[str, str, float]] = []


@ev.workflow
async def dice() -> list[Any]:
    values: list[Any] = []
    for step in ("before", "after"):
        drawn = (step, str(ev.uuid4()), ev.random())
        DRAWS.append(drawn)
        values.append([drawn[1], drawn[2]])
        if step == "before":
            await ev.sleep("1h")
    return values


class Order(BaseModel):
    id: str
    qty: int


@ev.workflow
async def take_order(order: Order) -> int:
    return order.qty


@ev.workflow
async def returns_unjsonable() -> Any:
    return object()


@ev.workflow
async def waits_for_approval() -> bool:
    return (await approval.expect()).ok


@ev.activity
async def hands_out_token() -> str:
    return ev.async_result(lambda token: None)


@ev.workflow
async def waits_for_async_activity() -> str:
    await ev.sleep("1m")
    return await hands_out_token()


@ev.workflow
async def waits_forever() -> None:
    await never.expect()


@ev.workflow
async def parent_of_forever() -> None:
    await waits_forever()


@ev.workflow
async def waits_on_condition() -> bool:
    return await ev.condition(lambda: False)


@ev.workflow
async def sleeps_two_days() -> str:
    await ev.sleep("2 days")
    return "rested"


@ev.workflow
async def orphan_task_fails() -> str:
    async def boom() -> None:
        await ev.sleep("1s")
        raise RuntimeError("lost in a task")

    tasks = [asyncio.create_task(boom())]
    await ev.sleep("1m")
    assert len(tasks) == 1
    return "finished"


# ------------------------------------------------------------------------------------------ idempotent start


async def test_same_name_same_input_returns_the_running_execution() -> None:
    async with make_env() as env:
        first = await double.start(21, name="order-1")
        again = await double.start(21, name="order-1")
        assert first.id == again.id == "double/order-1"
        assert not first.already_running
        assert again.already_running
        assert env.executions() == ["double/order-1"]
        assert await first.result() == 42


async def test_same_name_same_input_after_finish_is_already_running() -> None:
    async with make_env() as env:
        first = await double.start(5, name="done-1")
        assert await first.result() == 10
        again = await double.start(5, name="done-1")
        assert again.already_running
        assert again.id == first.id
        assert await again.result() == 10
        assert env.executions() == ["double/done-1"]


async def test_same_name_different_input_raises_already_exists() -> None:
    async with make_env() as env:
        await double.start(1, name="clash")
        with pytest.raises(ev.ExecutionAlreadyExists) as info:
            await double.start(2, name="clash")
        assert "double/clash" in str(info.value)
        assert env.executions() == ["double/clash"]
        assert (await env.get_execution("double/clash")).input == 1


@pytest.mark.parametrize("bad", ["~x", "", "a" * 81, "a/b", "-leading-dash", "has space", ".dot"])
async def test_invalid_execution_names_are_rejected(bad: str) -> None:
    async with make_env() as env:
        with pytest.raises(ev.EventualError) as info:
            await double.start(1, name=bad)
        assert isinstance(info.value, ev.InputValidationError)
        assert repr(bad) in str(info.value)
        assert env.executions() == []


async def test_longest_and_punctuated_names_are_accepted() -> None:
    async with make_env() as env:
        longest = "a" * 80
        handle = await double.start(1, name=longest)
        assert handle.id == f"double/{longest}"
        other = await double.start(1, name="9x._:-Z")
        assert other.id == "double/9x._:-Z"
        assert len(env.executions()) == 2


async def test_default_names_are_unique_and_time_sortable() -> None:
    async with make_env() as env:
        ids = []
        for index in range(12):
            ids.append((await double.start(index)).id)
            if index % 3 == 2:
                await env.advance("5m")  # some starts share an instant, some do not
        names = [execution_id.split("/", 1)[1] for execution_id in ids]
        assert all(execution_id.startswith("double/") for execution_id in ids)
        assert len(set(names)) == len(names)
        assert sorted(names) == names
        # a default name is also a valid user-chosen name, so it can be passed back as name= to re-attach
        again = await double.start(0, name=names[0])
        assert again.already_running
        assert again.id == ids[0]


# ------------------------------------------------------------------------------------------ children


async def test_child_success_and_caught_child_failure() -> None:
    async with make_env() as env:
        handle = await calls_children.start(4, name="p1")
        result = await handle.result()
        assert result == {
            "first": 5,
            "error": "ValueError",
            "message": "cannot take 5",
            "child": "reject/~calls_children-p1-1",
        }
        assert env.executions() == ["calls_children/p1", "add_one/~calls_children-p1-0", "reject/~calls_children-p1-1"]
        ok_child = await env.get_execution("add_one/~calls_children-p1-0")
        failed_child = await env.get_execution("reject/~calls_children-p1-1")
        assert ok_child.status == ev.ExecutionStatus.SUCCEEDED
        assert ok_child.result == 5
        assert ok_child.parent == "calls_children/p1"
        assert failed_child.status == ev.ExecutionStatus.FAILED
        assert (failed_child.error, failed_child.message) == ("ValueError", "cannot take 5")
        history = await handle.history()
        scheduled = [e for e in history if e.type == "ChildWorkflowScheduled"]
        assert [(e.seq, e.workflow, e.child_id) for e in scheduled] == [
            (0, "add_one", "add_one/~calls_children-p1-0"),
            (1, "reject", "reject/~calls_children-p1-1"),
        ]
        assert "ChildWorkflowSucceeded" in types_of(history)
        assert "ChildWorkflowFailed" in types_of(history)


async def test_uncaught_child_failure_fails_the_parent_with_the_child_error() -> None:
    async with make_env():
        handle = await lets_child_fail.start(7, name="p2")
        with pytest.raises(ev.ExecutionFailed) as info:
            await handle.result()
        assert info.value.error == "ValueError"
        assert info.value.message == "cannot take 7"
        status = await handle.status()
        assert status.status == ev.ExecutionStatus.FAILED
        assert (status.error, status.message) == ("ValueError", "cannot take 7")


async def test_child_ids_are_deterministic_across_environments() -> None:
    """The same parent id gives the same child ids, in any environment, at any time."""
    seen = []
    for start in (T0, T0 + timedelta(days=30)):
        async with ev.testing.TestEnvironment(service=SERVICE, start=start) as env:
            await (await calls_children.start(1, name="same")).result()
            seen.append(env.executions())
    assert seen[0] == seen[1]


async def test_child_start_returns_a_handle_whose_result_works() -> None:
    async with make_env() as env:
        result = await (await starts_child.start(10, name="s1")).result()
        assert result == {"id": "add_one/~starts_child-s1-0", "result": 11}
        assert (await env.get_execution("add_one/~starts_child-s1-0")).parent == "starts_child/s1"


async def test_cancelled_child_raises_execution_cancelled_in_parent() -> None:
    async with make_env() as env:
        parent = await catches_cancelled_child.start(name="pc")
        await env.tick()
        child_id = "sleepy_child/~catches_cancelled_child-pc-0"
        assert (await env.get_execution(child_id)).status == ev.ExecutionStatus.IN_PROGRESS
        await env.cancel_execution(child_id)
        assert await parent.result() == f"child cancelled: {child_id}"
        assert (await env.get_execution(child_id)).status == ev.ExecutionStatus.CANCELLED
        assert (await parent.status()).status == ev.ExecutionStatus.SUCCEEDED


async def test_uncaught_cancelled_child_fails_the_parent() -> None:
    async with make_env() as env:
        parent = await ignores_cancelled_child.start(name="pu")
        await env.tick()
        await env.cancel_execution("sleepy_child/~ignores_cancelled_child-pu-0")
        with pytest.raises(ev.ExecutionFailed) as info:
            await parent.result()
        assert info.value.error == "ExecutionCancelled"


# ------------------------------------------------------------------------------------------ timeouts


async def test_definition_timeout_fails_at_exactly_start_plus_timeout_without_cleanup() -> None:
    async with make_env() as env:
        await env.advance("7m")
        started = env.now
        handle = await times_out.start()
        with pytest.raises(ev.WorkflowTimeout) as info:
            await handle.result()
        assert isinstance(info.value, ev.ExecutionFailed)
        assert info.value.error == "WorkflowTimeout"
        status = await handle.status()
        assert status.status == ev.ExecutionStatus.FAILED
        assert status.error == "WorkflowTimeout"
        assert status.end_time == started + timedelta(hours=1)
        history = await handle.history()
        assert history[-1].type == "WorkflowFailed"
        assert history[-1].timestamp == started + timedelta(hours=1)
        assert history[0].timeout_at == started + timedelta(hours=1)
        # the `finally:` did not get to schedule its activity, not even after more time passes
        await env.advance("1 day")
        history = await handle.history()
        assert not [e for e in history if e.type == "ActivityScheduled"]
        assert "TimerCompleted" not in types_of(history)


async def test_per_start_timeout() -> None:
    async with make_env():
        handle = await no_definition_timeout.start(timeout="30m")
        with pytest.raises(ev.WorkflowTimeout):
            await handle.result()
        status = await handle.status()
        assert status.error == "WorkflowTimeout"
        assert status.end_time == T0 + timedelta(minutes=30)
        assert not [e for e in await handle.history() if e.type == "ActivityScheduled"]


async def test_per_start_timeout_overrides_the_definition() -> None:
    async with make_env():
        handle = await times_out.start(timeout="10m")
        with pytest.raises(ev.WorkflowTimeout):
            await handle.result()
        assert (await handle.status()).end_time == T0 + timedelta(minutes=10)


async def test_without_timeout_the_workflow_runs_its_cleanup() -> None:
    """Control for the timeout tests: the same code, not timed out, does run its `finally:` activity."""
    async with make_env():
        handle = await no_definition_timeout.start()
        assert await handle.result() == "slept"
        scheduled = [e.name for e in await handle.history() if e.type == "ActivityScheduled"]
        assert scheduled == ["cleanup"]


# ------------------------------------------------------------------------------------------ cancellation


async def test_cancel_runs_durable_compensation_then_ends_cancelled() -> None:
    async with make_env() as env:
        handle = await booking.start("12A")
        await env.tick()
        await env.advance("1h")
        await handle.cancel()
        with pytest.raises(ev.ExecutionCancelled):
            await handle.result()
        status = await handle.status()
        assert status.status == ev.ExecutionStatus.CANCELLED
        history = await handle.history()
        kinds = types_of(history)
        cancel_at = kinds.index("CancelRequested")
        assert history[cancel_at].timestamp == T0 + timedelta(hours=1)
        assert history[cancel_at].seq is None
        released = [i for i, e in enumerate(history) if e.type == "ActivityScheduled" and e.name == "release_seat"]
        assert len(released) == 1
        assert released[0] > cancel_at
        release_seq = history[released[0]].seq
        assert [e.type for e in history if e.seq == release_seq] == ["ActivityScheduled", "ActivitySucceeded"]
        assert kinds[-1] == "WorkflowCancelled"
        # the cancelled timer never fires
        await env.advance("2 days")
        assert "TimerCompleted" not in types_of(await handle.history())


async def test_catching_cancel_and_returning_still_ends_cancelled() -> None:
    async with make_env() as env:
        handle = await swallows_cancel.start()
        await env.tick()
        await handle.cancel()
        with pytest.raises(ev.ExecutionCancelled):
            await handle.result()
        status = await handle.status()
        assert status.status == ev.ExecutionStatus.CANCELLED
        assert status.result is None
        assert types_of(await handle.history())[-1] == "WorkflowCancelled"


async def test_cancelling_a_finished_execution_raises() -> None:
    async with make_env():
        handle = await double.start(3)
        assert await handle.result() == 6
        with pytest.raises(ev.EventualError) as info:
            await handle.cancel()
        assert handle.id in str(info.value)
        assert (await handle.status()).status == ev.ExecutionStatus.SUCCEEDED


# ------------------------------------------------------------------------------------------ patched


@ev.activity
async def old_call() -> str:
    return "old"


@ev.activity
async def new_call() -> str:
    return "new"


async def test_patched_takes_old_branch_on_old_history_and_new_branch_for_new_executions() -> None:
    """The conftest replay check at the end is part of this test: the old execution replays against v2."""
    branches: list[str] = []

    @ev.workflow(name="patchy")
    async def patchy_v1() -> str:
        return await old_call()

    async with make_env() as env:
        old = await patchy_v1.start(name="before-patch")
        assert await old.result() == "old"
        old_history = await old.history()
        assert "PatchMarker" not in types_of(old_history)

        @ev.workflow(name="patchy")
        async def patchy_v2() -> str:
            if ev.patched("v2"):
                branches.append("new")
                return await new_call()
            branches.append("old")
            return await old_call()

        assert ev.testing.replay(patchy_v2, old_history, execution_id=old.id) == []
        assert branches == ["old"]

        branches.clear()
        new = await patchy_v2.start(name="after-patch")
        assert await new.result() == "new"
        assert branches == ["new"]
        history = await new.history()
        markers = [e for e in history if e.type == "PatchMarker"]
        assert len(markers) == 1
        assert (markers[0].patch_id, markers[0].seq) == ("v2", None)
        assert [e.name for e in history if e.type == "ActivityScheduled"] == ["new_call"]

        # and the new history replays into the new branch again
        branches.clear()
        assert ev.testing.replay(patchy_v2, history, execution_id=new.id) == []
        assert branches == ["new"]
        assert env.executions() == ["patchy/before-patch", "patchy/after-patch"]


# ------------------------------------------------------------------------------------------ deterministic helpers


async def test_workflow_info_fields() -> None:
    async with make_env() as env:
        await env.advance("3m")
        started = env.now
        info = await (await reports_info.start(name="who-am-i")).result()
        assert info == {
            "execution_id": "reports_info/who-am-i",
            "name": "who-am-i",
            "workflow": "reports_info",
            "start_time": started.isoformat(),
            "parent_id": None,
        }
        child_info = await (await info_parent.start(name="dad")).result()
        assert child_info["execution_id"] == "reports_info/~info_parent-dad-0"
        assert child_info["name"] == "~info_parent-dad-0"
        assert child_info["workflow"] == "reports_info"
        assert child_info["parent_id"] == "info_parent/dad"


async def test_now_follows_the_virtual_clock_at_each_step() -> None:
    async with make_env() as env:
        await env.advance("10m")
        started = env.now
        handle = await clock.start()
        await env.tick()
        await env.advance("3h")
        signalled_at = env.now
        await nudge.send(handle)
        seen = [datetime.fromisoformat(value) for value in await handle.result()]
        assert seen == [started, started + timedelta(minutes=90), signalled_at]
        assert all(value.utcoffset() == timedelta(0) for value in seen)


@pytest.mark.parametrize("always_replay", [False, True])
async def test_uuid_and_random_replay_identically(always_replay: bool) -> None:
    DRAWS.clear()
    async with make_env(always_replay=always_replay) as env:
        result = await (await dice.start(name="roll")).result()
        if always_replay:
            assert env.replays > 0
    # every run of the code drew the same values at the same point
    by_step: dict[str, set[tuple[str, float]]] = {}
    for step, uuid_text, number in DRAWS:
        by_step.setdefault(step, set()).add((uuid_text, number))
    assert all(len(values) == 1 for values in by_step.values()), DRAWS
    if always_replay:
        assert len([d for d in DRAWS if d[0] == "before"]) > 1  # the first part really ran again
    (before,) = by_step["before"]
    (after,) = by_step["after"]
    assert result == [list(before), list(after)]
    assert before != after
    assert 0 <= before[1] < 1


async def test_uuid_and_random_same_with_and_without_cached_instances() -> None:
    results = []
    for always_replay in (False, True):
        async with make_env(always_replay=always_replay):
            results.append(await (await dice.start(name="roll")).result())
    assert results[0] == results[1]
    async with make_env():
        other = await (await dice.start(name="another-roll")).result()
    assert other != results[0]  # seeded per execution, not constant


# ------------------------------------------------------------------------------------------ bad input and misuse


async def test_invalid_workflow_input_is_rejected_with_pydantic_details_and_nothing_recorded() -> None:
    async with make_env() as env:
        await take_order.start(Order(id="fine", qty=1))
        before = env.executions()
        with pytest.raises(ev.InputValidationError) as info:
            await take_order.start({"id": "a", "qty": "lots"})
        assert info.value.errors
        assert any("qty" in [str(part) for part in error.get("loc", ())] for error in info.value.errors)
        assert "qty" in str(info.value)
        assert "take_order" in str(info.value)
        assert env.executions() == before
        with pytest.raises(ev.InputValidationError):
            await take_order.start(name="named-bad-input")
        assert env.executions() == before


def test_workflow_with_two_parameters_is_rejected_at_decoration() -> None:
    async def two(a: int, b: int) -> int:
        return a + b

    with pytest.raises(TypeError, match="at most one"):
        ev.workflow(two)
    assert "two" not in SERVICE.workflows


def test_non_async_workflow_is_rejected() -> None:
    def plain(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="async def"):
        ev.workflow(plain)
    with pytest.raises(TypeError, match="async def"):
        ev.workflow(name="plain2")(plain)
    assert "plain" not in SERVICE.workflows
    assert "plain2" not in SERVICE.workflows


async def _call_and_await(call: Any) -> None:
    """Call `call()` and await what it returns if that is a coroutine (helpers raise on call or when awaited)."""
    value = call()
    if asyncio.iscoroutine(value):
        await value


@pytest.mark.parametrize(
    "call",
    [
        lambda: ev.sleep("1s"),
        lambda: ev.condition(lambda: True),
        lambda: approval.expect(),
        lambda: ev.patched("x"),
        lambda: ev.workflow_info(),
    ],
    ids=["sleep", "condition", "expect", "patched", "workflow_info"],
)
async def test_workflow_only_helpers_outside_a_workflow_say_so(call: Any) -> None:
    async with make_env():
        with pytest.raises(ev.EventualError, match="inside a workflow"):
            await _call_and_await(call)


async def test_non_json_result_fails_naming_the_workflow() -> None:
    async with make_env():
        handle = await returns_unjsonable.start()
        with pytest.raises(ev.ExecutionFailed) as info:
            await handle.result()
        assert "returns_unjsonable" in info.value.message
        status = await handle.status()
        assert status.status == ev.ExecutionStatus.FAILED
        assert "returns_unjsonable" in (status.message or "")


# ------------------------------------------------------------------------------------------ Stuck and result timeout


async def test_stuck_on_signal() -> None:
    async with make_env():
        handle = await waits_for_approval.start(name="needs-ok")
        with pytest.raises(ev.testing.Stuck) as info:
            await handle.result()
        text = str(info.value)
        assert "waits_for_approval/needs-ok" in text
        assert "signal 'approval'" in text
        # not stuck for good: a signal wakes it
        await approval.send(handle, Approval(ok=True))
        assert await handle.result() is True


async def test_stuck_on_async_activity() -> None:
    async with make_env():
        handle = await waits_for_async_activity.start(name="tokened")
        with pytest.raises(ev.testing.Stuck) as info:
            await handle.result()
        text = str(info.value)
        assert "waits_for_async_activity/tokened" in text
        assert "activity 'hands_out_token' (seq 1, async completion)" in text


async def test_stuck_on_child() -> None:
    async with make_env():
        handle = await parent_of_forever.start(name="pf")
        with pytest.raises(ev.testing.Stuck) as info:
            await handle.result()
        text = str(info.value)
        assert "parent_of_forever/pf" in text
        assert "child 'waits_forever/~parent_of_forever-pf-0'" in text


async def test_stuck_on_condition() -> None:
    async with make_env():
        handle = await waits_on_condition.start(name="cond")
        with pytest.raises(ev.testing.Stuck) as info:
            await handle.result()
        assert "waits_on_condition/cond" in str(info.value)
        assert "condition" in str(info.value)


async def test_result_timeout_is_virtual_and_raises_timeout() -> None:
    async with make_env() as env:
        handle = await sleeps_two_days.start()
        with pytest.raises(ev.Timeout):
            await handle.result(timeout="1h")
        assert env.now < T0 + timedelta(days=2)
        assert (await handle.status()).status == ev.ExecutionStatus.IN_PROGRESS
        assert await handle.result() == "rested"
        assert env.now == T0 + timedelta(days=2)


# ------------------------------------------------------------------------------------------ unretrieved task errors


async def test_exception_in_a_task_nobody_awaited_fails_the_execution() -> None:
    async with make_env():
        handle = await orphan_task_fails.start()
        with pytest.raises(ev.ExecutionFailed) as info:
            await handle.result()
        assert info.value.error == "RuntimeError"
        assert info.value.message == "lost in a task"
        status = await handle.status()
        assert (status.error, status.message) == ("RuntimeError", "lost in a task")


# ------------------------------------------------------------------------------------------ tasks at the end

#: what the bodies of tasks that must never start would have recorded
TASK_BODIES_RUN: list[str] = []


async def _records_and_reserves(seat: str) -> str:
    TASK_BODIES_RUN.append(seat)
    return await reserve_seat(seat)


@ev.workflow
async def spawns_then_raises() -> None:
    spawned = [asyncio.create_task(_records_and_reserves("1A")), asyncio.ensure_future(reserve_seat("1B"))]
    raise RuntimeError(f"gave up on {len(spawned)} tasks")


@ev.workflow
async def spawns_then_returns() -> str:
    spawned = [asyncio.create_task(_records_and_reserves("2A")), asyncio.ensure_future(reserve_seat("2B"))]
    return f"spawned {len(spawned)}"


@ev.workflow
async def wakes_a_task_then_returns() -> str:
    """A task that started, and is woken in the step where the function returns, does not run on either."""

    async def waits_then_reserves() -> str:
        await nudge.expect()
        TASK_BODIES_RUN.append("woken")
        return await reserve_seat("3A")

    waiting = asyncio.create_task(waits_then_reserves())
    await nudge.expect()
    return "done" if not waiting.done() else "the task ran"


@pytest.mark.parametrize(
    ("workflow", "status", "terminal"),
    [
        (spawns_then_raises, "FAILED", "WorkflowFailed"),
        (spawns_then_returns, "SUCCEEDED", "WorkflowSucceeded"),
    ],
)
async def test_tasks_created_but_not_started_when_the_function_ends_never_start(
    workflow: Any, status: str, terminal: str
) -> None:
    """Neither their code runs nor does their first durable call reach the history."""
    TASK_BODIES_RUN.clear()
    async with make_env() as env:
        handle = await workflow.start()
        await env.tick()
        assert (await handle.status()).status == status
        assert types_of(await handle.history()) == ["WorkflowStarted", terminal]
        await env.advance("1h")
        assert types_of(await handle.history()) == ["WorkflowStarted", terminal]
    assert TASK_BODIES_RUN == []


async def test_a_task_woken_with_the_function_in_one_step_is_cancelled_not_run() -> None:
    TASK_BODIES_RUN.clear()
    async with make_env() as env:
        handle = await wakes_a_task_then_returns.start()
        await env.tick()
        await handle.signal(nudge)
        await env.tick()
        assert await handle.result() == "done"
        assert types_of(await handle.history()) == ["WorkflowStarted", "SignalReceived", "WorkflowSucceeded"]
    assert TASK_BODIES_RUN == []


# ------------------------------------------------------------------------------------------ durations & deadlines

#: a virtual clock 49 years before the latest deadline eventual-nb stores (the start of year 9999)
NEAR_THE_END = datetime(9950, 1, 1, tzinfo=UTC)
SIXTY_YEARS = f"{60 * 365}d"


@ev.workflow
async def waits_past_the_latest_deadline(kind: str) -> None:
    if kind == "sleep":
        await ev.sleep(SIXTY_YEARS)
    elif kind == "sleep_until":
        await ev.sleep_until(datetime(9999, 6, 1, tzinfo=UTC))
    elif kind == "asyncio.sleep":
        await asyncio.sleep(60 * 365 * 86400)
    elif kind == "expect":
        await never.expect(timeout=SIXTY_YEARS)
    elif kind == "condition":
        await ev.condition(lambda: False, timeout=SIXTY_YEARS)
    elif kind == "activity timeout":
        await reserve_seat.options(timeout=SIXTY_YEARS)("4A")
    elif kind == "heartbeat_timeout":
        await reserve_seat.options(heartbeat_timeout=SIXTY_YEARS)("4B")
    elif kind == "child timeout":
        await sleepy_child.start(timeout=SIXTY_YEARS)
    elif kind == "child result timeout":
        child = await sleepy_child.start()
        await child.result(timeout=SIXTY_YEARS)


@pytest.mark.parametrize(
    ("kind", "named"),
    [
        ("sleep", f"sleep duration '{SIXTY_YEARS}'"),
        ("sleep_until", "ev.sleep_until(9999-06-01T00:00:00+00:00) wait"),
        ("asyncio.sleep", "asyncio delay"),
        ("expect", f"expect timeout '{SIXTY_YEARS}'"),
        ("condition", f"condition timeout '{SIXTY_YEARS}'"),
        ("activity timeout", "timeout of activity 'reserve_seat'"),
        ("heartbeat_timeout", "heartbeat_timeout of activity 'reserve_seat'"),
        ("child timeout", "timeout of child workflow 'sleepy_child'"),
        ("child result timeout", f"timeout '{SIXTY_YEARS}'"),
    ],
)
async def test_a_deadline_past_the_latest_storable_one_fails_the_execution_where_the_call_is_made(
    kind: str, named: str
) -> None:
    """On a virtual clock near year 9999 a legal duration can still lead past the last storable deadline:
    the call raises `InvalidDuration` naming it (no ValueError/OverflowError from datetime), the execution fails
    with that message, and nothing was scheduled."""
    async with ev.testing.TestEnvironment(service=SERVICE, start=NEAR_THE_END) as env:
        handle = await waits_past_the_latest_deadline.start(kind)
        await env.tick()
        status = await handle.status()
        assert (status.status, status.error) == ("FAILED", "InvalidDuration"), status
        assert named in (status.message or ""), status.message
        assert "falls after 9999-01-01T00:00:00+00:00, the latest deadline" in (status.message or "")
        scheduled = [t for t in types_of(await handle.history()) if t.endswith("Scheduled")]
        assert scheduled == (["ChildWorkflowScheduled"] if kind == "child result timeout" else [])


async def test_a_start_whose_timeout_ends_past_the_latest_deadline_is_refused_and_records_nothing() -> None:
    async with ev.testing.TestEnvironment(service=SERVICE, start=NEAR_THE_END) as env:
        with pytest.raises(ev.EventualError, match=r"invalid timeout 21900d: its deadline \(9950-01-01"):
            await sleepy_child.start(timeout=SIXTY_YEARS)
        with pytest.raises(ev.EventualError, match="100 years"):
            await sleepy_child.start(timeout="36526d")
        assert env.executions() == []


async def test_result_without_a_timeout_works_on_a_clock_near_the_latest_deadline() -> None:
    """`handle.result()`'s default wait (ten virtual years) stops at the latest deadline instead of refusing."""
    async with ev.testing.TestEnvironment(service=SERVICE, start=datetime(9995, 1, 1, tzinfo=UTC)):
        assert await double(21) == 42
        with pytest.raises(ev.testing.Stuck):
            await (await waits_forever.start()).result()


def test_a_definition_timeout_longer_than_100_years_is_refused_at_decoration() -> None:
    async def forever() -> None:
        return None

    with pytest.raises(ev.EventualError, match=r"timeout of workflow 'forever' '36526d': too long.*100 years"):
        ev.workflow(timeout="36526d")(forever)


# ------------------------------------------------------------------------------------------ live values

LIVE_VALUES = """\
import os
import random
import time as clock
import uuid
from datetime import date, datetime
from datetime import datetime as dt
from random import choice

import eventual_nb as ev

ev.Service("tests-workflows-live-values")


def now() -> int:  # the user's own now(): not the clock
    return 1


@ev.workflow
async def reads_live_values() -> list:
    values = [
        datetime.now(),  # datetime.now
        dt.utcnow(),  # dt.utcnow
        date.today(),  # date.today
        clock.time(),  # clock.time
        random.randint(1, 6),  # random.randint
        choice([1, 2]),  # choice
        uuid.uuid4(),  # uuid.uuid4
        os.urandom(4),  # os.urandom
        now(),
        ev.now(),
        ev.uuid4(),
        ev.random(),
    ]
    import random as r
    from uuid import uuid4 as make_id

    values += [r.random(), make_id()]  # r.random, make_id
    return values


@ev.workflow
async def deterministic() -> str:
    return f"{ev.now()} {ev.uuid4()} {ev.random()} {now()}"
"""


def _import_file(path: Any, name: str) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_workflow_code_reading_the_clock_or_randomness_warns_at_decoration(tmp_path: Any) -> None:
    path = tmp_path / "live_values.py"
    path.write_text(LIVE_VALUES, encoding="utf-8")
    lines = LIVE_VALUES.splitlines()
    with pytest.warns(UserWarning, match="workflow 'reads_live_values'") as caught:
        _import_file(path, "live_values")
    found = [(w.filename, w.lineno, str(w.message)) for w in caught if "workflow 'reads_live_values'" in str(w.message)]
    expected = [
        ("datetime.now()", "ev.now()"),
        ("dt.utcnow() (datetime.datetime.utcnow)", "ev.now()"),
        ("date.today()", "ev.now().date()"),
        ("clock.time() (time.time)", "ev.now().timestamp()"),
        ("random.randint()", "ev.random()"),
        ("choice() (random.choice)", "ev.random()"),
        ("uuid.uuid4()", "ev.uuid4()"),
        ("os.urandom()", "ev.random() or ev.uuid4()"),
        ("r.random() (random.random)", "ev.random()"),
        ("make_id() (uuid.uuid4)", "ev.uuid4()"),
    ]
    assert len(found) == len(expected), [message for _, _, message in found]
    for (filename, line, message), (call, replacement) in zip(found, expected, strict=True):
        written = call.split("(")[0]
        assert filename == str(path)
        assert f"# {written}" in lines[line - 1] or f", {written}" in lines[line - 1], (line, lines[line - 1], call)
        assert f"calls {call} at {path}:{line}:" in message, message
        assert message.endswith(f"use {replacement} instead"), message
    assert not [w for w in caught if "workflow 'deterministic'" in str(w.message)]


def test_without_source_a_workflow_is_defined_without_warnings() -> None:
    namespace: dict[str, Any] = {"ev": ev, "datetime": datetime}
    code = compile("async def no_source() -> str:\n    return str(datetime.now())\n", "<generated>", "exec")
    exec(code, namespace)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        definition = ev.workflow(namespace["no_source"])
    assert definition.name == "no_source"
