"""`@ev.schedule`: run a workflow on a cron line or at an interval.

    @ev.schedule("0 9 * * MON-FRI", timezone="Europe/Paris")
    @ev.workflow
    async def morning_report(fired_at: datetime) -> str: ...

The decorator only defines the schedule (checked at once, registered in the workflow's service); the
rules of firing live in `eventual_nb.runtime.core.schedules`, shared by every runtime.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from eventual_nb.durations import DurationLike
from eventual_nb.errors import InputValidationError
from eventual_nb.runtime.core.schedules import EPOCH, InvalidSchedule, Schedule, ScheduleInfo, define_schedule
from eventual_nb.service import current_service, schedules_changed
from eventual_nb.workflows import Workflow

W = TypeVar("W", bound=Workflow[Any])


def schedule(
    cron: str | None = None,
    *,
    every: DurationLike | None = None,
    timezone: str = "UTC",
    name: str | None = None,
    overlap: str = "skip",
    catchup: str = "latest",
) -> Callable[[W], W]:
    """Start the workflow below on a schedule: `@ev.schedule("0 9 * * MON-FRI", timezone="Europe/Paris")`
    above `@ev.workflow`.

    Options:

    * `cron`: a 5-field cron line (minute hour day-of-month month day-of-week; names such as MON-FRI and
      JAN, ranges, lists, steps `*/15`, `L`, `5L`, `MON#2`), evaluated on the wall clock of `timezone`.
    * `every`: instead of a cron line, a duration ("15m", 900, a timedelta; whole seconds, at least one);
      it fires at whole multiples of the interval since 1970-01-01T00:00Z.
    * `timezone`: an IANA name ("Europe/Paris"); a local time skipped by a daylight-saving change does
      not fire, one that happens twice fires once.
    * `name`: the schedule's name (default: the workflow's); executions are named `<name>-<YYYYMMDDTHHMMSSZ>`
      of their fire time, so one fire starts at most one execution.
    * `overlap`: "skip" (a fire while the previous execution of the schedule still runs starts nothing
      and is counted) or "allow".
    * `catchup`: what a runtime that was not running at fire times does when it starts: "latest" (start
      the most recent missed fire), "all" (every missed fire, oldest first, at most 1,000) or "none".

    The workflow receives the scheduled fire time (an aware UTC `datetime`) as its input. Anything wrong
    raises `ev.EventualError` (`InvalidSchedule`) here, naming the expression and what is wrong. Stack
    several `@ev.schedule(..., name=...)` to run one workflow on several schedules.
    """
    if callable(cron):
        raise InvalidSchedule(
            "@ev.schedule needs a cron line or every=: write @ev.schedule('0 9 * * *') or "
            "@ev.schedule(every='15m') above @ev.workflow"
        )

    def register(workflow: W) -> W:
        if not isinstance(workflow, Workflow):
            shown = getattr(workflow, "__name__", repr(workflow))
            raise InvalidSchedule(
                f"@ev.schedule goes above @ev.workflow, but it was applied to {shown!r}, which is not a workflow: "
                "write @ev.schedule(...) on the line above @ev.workflow"
            )
        definition = define_schedule(
            name=name if name is not None else workflow.name,
            workflow=workflow.name,
            cron=cron,
            every=every,
            timezone=timezone,
            overlap=overlap,
            catchup=catchup,
        )
        _check_takes_fire_time(workflow, definition)
        service = workflow.service or current_service()
        if definition.name in workflow.schedule_names:
            raise InvalidSchedule(
                f"workflow '{workflow.name}' has two schedules named '{definition.name}'; give each "
                "@ev.schedule its own name=..."
            )
        # defining it again (a re-run notebook cell, a reloaded module) replaces it, as for workflows
        service.schedules[definition.name] = definition
        workflow.schedule_names.append(definition.name)
        schedules_changed()
        return workflow

    return register


def _check_takes_fire_time(workflow: Workflow[Any], definition: Schedule) -> None:
    what = f"schedule '{definition.name}'"
    if not workflow.takes_input:
        raise InvalidSchedule(
            f"{what}: workflow '{workflow.name}' takes no input, but a scheduled workflow receives its fire time: "
            f"write `async def {workflow.name}(fired_at: datetime)`"
        )
    try:
        workflow.validate_input(datetime(2000, 1, 1, tzinfo=EPOCH.tzinfo))
    except InputValidationError:
        raise InvalidSchedule(
            f"{what}: workflow '{workflow.name}' cannot take a datetime as its input "
            f"('{workflow.input_parameter.name if workflow.input_parameter else 'input'}' is annotated "
            f"{getattr(workflow.input_annotation, '__name__', workflow.input_annotation)!s}), but a scheduled "
            "workflow receives its fire time: annotate it `datetime`"
        ) from None


# -------------------------------------------------------------------------------------- how a schedule reads


def next_fire_text(info: ScheduleInfo, now: datetime) -> str:
    """When `info` fires next, as the CLI's table and the notebook's widget show it: the local time of this
    machine with its zone, and how far that is from `now` (the runtime's clock: a TestEnvironment's virtual
    time), e.g. `2026-03-30 09:00 CEST (in 3 h 12 min)`; "paused" or "never" when it will not fire."""
    if info.paused:
        return "paused"
    if info.next_fire is None:
        return "never"
    local = info.next_fire.astimezone()
    return f"{local:%Y-%m-%d %H:%M %Z} ({until_text(info.next_fire - now)})"


def until_text(delta: timedelta) -> str:
    """`in 3 h 12 min`, `in 45 s`, `in 2 d 5 h`: the two largest units of a wait, rounded up to the
    second (a fire is never shown as sooner than it is); "due now" once it has come."""
    seconds = math.ceil(delta.total_seconds())
    if seconds <= 0:
        return "due now"
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        amount, seconds = divmod(seconds, size)
        if amount or parts:
            parts.append(f"{amount} {unit}")
        if len(parts) == 2:
            break
    return "in " + " ".join(part for part in parts if not part.startswith("0 "))
