"""Schedules on the three runtimes, through the protocol: the same scenarios, the same assertions.

Each scenario runs on a TestEnvironment (virtual time), on a LocalRuntime on a fresh SQLite file and on an
AwsRuntime over a stack deployed into moto for the test (its functions driven by the harness, which also
plays EventBridge Scheduler). The real-time runtimes read a `ManualClock` (`ev.testing.ManualClock`): the
test moves it from one fire to the next and waits for the runtime to act on each (`Rig.advance`), so a week
of fires takes seconds and nothing depends on the machine's speed.

Each scenario has its own service, so a runtime serves only the schedules the scenario defines.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import eventual_nb as ev
from eventual_nb.durations import DurationLike, parse_duration
from eventual_nb.runtime.aws.schedules import scheduler_name
from eventual_nb.testing import ManualClock
from tests import aws_support
from tests.aws_rig import aws_stack_runtime

moto_endpoint = aws_support.moto_endpoint
dummy_credentials = aws_support.dummy_credentials

#: real seconds a real-time runtime gets to act on a fire (generous: the machine is shared)
WAIT = 30.0
#: Thursday 27 March 2025, 00:00 UTC: Paris moves its clocks forward on Sunday the 30th
THURSDAY = datetime(2025, 3, 27, tzinfo=UTC)


# ------------------------------------------------------------------------------------------ scenarios

WEEK = ev.Service("sched-week")


@ev.schedule("0 9 * * MON-FRI", timezone="Europe/Paris", name="morning")
@ev.workflow
async def morning_report(fired_at: datetime) -> str:
    return f"report for {fired_at:%a %H:%M}Z"


PAUSING = ev.Service("sched-pause")


@ev.schedule(every="1h")
@ev.workflow
async def hourly(fired_at: datetime) -> str:
    return fired_at.isoformat()


OVERLAP = ev.Service("sched-overlap")
release = ev.signal("release")


@ev.schedule(every="1h", overlap="skip")
@ev.workflow
async def long_sync(fired_at: datetime) -> str:
    await release.expect()
    return fired_at.isoformat()


# ------------------------------------------------------------------------------------------ the rig


class Rig:
    """A runtime under test, its clock, and how to let time pass on it."""

    def __init__(self, kind: str, rt: Any, service: ev.Service, clock: ManualClock | None, fired: Any = None):
        self.kind = kind
        self.rt = rt
        self.service = service
        self.clock = clock
        self._fired = fired  # the AWS harness's report of the fires it delivered

    def now(self) -> datetime:
        return self.rt.now if self.clock is None else self.clock()

    async def advance(self, duration: DurationLike) -> None:
        """Let `duration` pass. A TestEnvironment stops at each fire itself; a real-time runtime gets its clock
        moved to each fire in turn, and the test waits for the fire to be handled and its executions to end
        (those waiting for a signal aside), as if it had run through that time."""
        if self.clock is None:
            await self.rt.advance(duration)
            return
        target = self.now() + parse_duration(duration)
        while True:
            fires = [(s.next_fire(self.now()), s) for s in self.service.schedules.values()]
            due = min((fire for fire, _ in fires if fire is not None), default=None)
            if due is None or due > target:
                self.clock.set(target)
                return
            self.clock.set(due)
            for fire, schedule in fires:
                if fire == due:
                    await self._handled(schedule.name, due)
            await self.until(self._quiet, "the fire's executions to end")

    async def _handled(self, name: str, fire: datetime) -> None:
        if self.kind == "aws":
            if (await self.info(name)).paused:
                return  # a disabled EventBridge schedule delivers nothing
            delivered = f"{scheduler_name(name)}@{fire:%Y-%m-%dT%H:%M:%SZ}"
            await self.until(lambda: delivered in self._fired.fired_schedules, f"the delivery of {delivered}")
            return

        async def handled() -> bool:
            (info,) = [item for item in await self.rt.list_schedules() if item.name == name]
            return info.paused or info.next_fire is None or info.next_fire > fire

        await self.until(handled, f"{name}'s fire of {fire.isoformat()} to be handled")

    async def _quiet(self) -> bool:
        page = await self.rt.list_executions(statuses=[ev.ExecutionStatus.IN_PROGRESS])
        return all(execution.workflow == "long_sync" for execution in page.executions)

    async def until(self, predicate: Callable[[], Any], what: str) -> None:
        deadline = asyncio.get_running_loop().time() + WAIT
        while True:
            if self.clock is None:
                await self.rt.tick()
            value = predicate()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"gave up waiting for {what}")
            await asyncio.sleep(0.02)

    async def executions(self, workflow: str) -> list[ev.Execution]:
        return list((await self.rt.list_executions(workflow=workflow, max_results=1000)).executions)

    async def info(self, name: str) -> ev.ScheduleInfo:
        (found,) = [item for item in await self.rt.list_schedules() if item.name == name]
        return found


@contextlib.asynccontextmanager
async def open_rig(
    kind: str, service: ev.Service, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Rig]:
    if kind == "test":
        async with ev.testing.TestEnvironment(THURSDAY, service=service) as env:
            yield Rig("test", env, service, None)
        return
    clock = ManualClock(THURSDAY)
    if kind == "local":
        async with ev.LocalRuntime(tmp_path / "state.db", service=service, clock=clock) as rt:
            await rt.list_schedules()  # the runtime has seen its schedules: none fires for a time before now
            yield Rig("local", rt, service, clock)
        return
    request.getfixturevalue("dummy_credentials")
    async with aws_stack_runtime(request.getfixturevalue("moto_endpoint"), service, clock=clock) as stack:
        await asyncio.sleep(0.3)  # the harness has seen the recurring schedules (rate() and watermarks start now)
        yield Rig("aws", stack.runtime, service, clock, stack.driver.report)


RUNTIMES = ["test", "local", "aws"]


def names(executions: list[ev.Execution]) -> list[str]:
    return [execution.id.split("/", 1)[1] for execution in executions]


# ------------------------------------------------------------------------------------------ the scenarios


@pytest.mark.parametrize("kind", RUNTIMES)
async def test_a_weekday_paris_schedule_over_a_week_that_crosses_the_dst_change(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async with open_rig(kind, WEEK, request, tmp_path) as rig:
        await rig.advance("7d")
        executions = await rig.executions("morning_report")
        # 09:00 in Paris is 08:00Z until Sunday the 30th and 07:00Z after; no fire on the weekend
        expected = [
            datetime(2025, 3, 27, 8, tzinfo=UTC),
            datetime(2025, 3, 28, 8, tzinfo=UTC),
            datetime(2025, 3, 31, 7, tzinfo=UTC),
            datetime(2025, 4, 1, 7, tzinfo=UTC),
            datetime(2025, 4, 2, 7, tzinfo=UTC),
        ]
        assert names(executions) == [f"morning-{fire:%Y%m%dT%H%M%SZ}" for fire in expected]
        assert [datetime.fromisoformat(execution.input) for execution in executions] == expected
        assert {execution.status for execution in executions} == {ev.ExecutionStatus.SUCCEEDED}
        assert executions[2].result == "report for Mon 07:00Z"
        info = await rig.info("morning")
        assert info.next_fire == datetime(2025, 4, 3, 7, tzinfo=UTC)
        assert (info.last_fire, info.last_execution_id) == (expected[-1], executions[-1].id)
        assert (info.cron, info.timezone, info.paused, info.skipped) == ("0 9 * * MON-FRI", "Europe/Paris", False, 0)


@pytest.mark.parametrize("kind", RUNTIMES)
async def test_pause_and_resume_run_no_fire_of_the_paused_span(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async with open_rig(kind, PAUSING, request, tmp_path) as rig:
        await rig.advance("90m")  # fires at 01:00
        await rig.rt.pause_schedule("hourly")
        paused = await rig.info("hourly")
        assert paused.paused
        assert paused.next_fire is None
        await rig.advance("3h")  # 02:00, 03:00 and 04:00 pass while paused
        await rig.rt.resume_schedule("hourly")  # at 04:30: the paused span is not caught up
        resumed = await rig.info("hourly")
        assert not resumed.paused
        assert resumed.next_fire == datetime(2025, 3, 27, 5, tzinfo=UTC)
        await rig.advance("1h")  # fires at 05:00
        assert names(await rig.executions("hourly")) == ["hourly-20250327T010000Z", "hourly-20250327T050000Z"]
        with pytest.raises(ev.ScheduleNotFound) as caught:
            await rig.rt.pause_schedule("no_such_schedule")
        assert "no_such_schedule" in caught.value.message
        assert "'hourly'" in caught.value.message


@pytest.mark.parametrize("kind", RUNTIMES)
async def test_trigger_starts_one_now_and_a_duplicate_trigger_starts_nothing_new(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async with open_rig(kind, PAUSING, request, tmp_path) as rig:
        await rig.advance("10m")
        await rig.rt.pause_schedule("hourly")  # a trigger runs paused or not
        now = rig.now().replace(microsecond=0)
        handle = await rig.rt.trigger_schedule("hourly")
        assert handle.id == f"hourly/hourly-{now:%Y%m%dT%H%M%SZ}"
        assert not handle.already_running
        again = await rig.rt.trigger_schedule("hourly")  # the same second: the same fire
        assert again.id == handle.id
        assert again.already_running
        assert datetime.fromisoformat(await handle.result(timeout=WAIT)) == now
        assert [execution.id for execution in await rig.executions("hourly")] == [handle.id]
        info = await rig.info("hourly")
        assert (info.last_fire, info.last_execution_id, info.paused) == (now, handle.id, True)
        with pytest.raises(ev.ScheduleNotFound):
            await rig.rt.trigger_schedule("nope")


@pytest.mark.parametrize("kind", RUNTIMES)
async def test_overlap_skip_starts_nothing_while_the_previous_run_is_in_progress(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async with open_rig(kind, OVERLAP, request, tmp_path) as rig:
        await rig.advance("3h30m")  # 01:00 starts a run that waits; 02:00 and 03:00 are skipped
        (first,) = await rig.executions("long_sync")
        assert names([first]) == ["long_sync-20250327T010000Z"]
        assert first.status == ev.ExecutionStatus.IN_PROGRESS
        assert (await rig.info("long_sync")).skipped == 2
        await rig.rt.send_signal(first.id, "release")
        await rig.until(
            lambda: _ended(rig, first.id), "the first run to end after its signal"
        )  # the next fire starts again
        await rig.advance("1h")
        assert names(await rig.executions("long_sync")) == [
            "long_sync-20250327T010000Z",
            "long_sync-20250327T040000Z",
        ]
        info = await rig.info("long_sync")
        assert info.skipped == 2
        assert info.last_execution_id == "long_sync/long_sync-20250327T040000Z"


async def _ended(rig: Rig, execution_id: str) -> bool:
    return (await rig.rt.get_execution(execution_id)).status != ev.ExecutionStatus.IN_PROGRESS
