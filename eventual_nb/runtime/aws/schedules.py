"""Schedules on AWS: one EventBridge Scheduler recurring schedule per `@ev.schedule`, declared in the template.

The functions below are pure: the exporter's template, the emulator's stand-in (which creates in moto what
its CloudFormation skips) and the schedule forwarder all read them, so the three agree on names and shapes.
`ScheduleKeeper` is what the forwarder and `AwsRuntime` do with a schedule's state (see its docstring).

* `aws_expression(schedule)`: the `cron()`/`rate()` expression for EventBridge Scheduler, evaluated in
  `ScheduleExpressionTimezone` = the schedule's timezone. A 5-field cron line becomes AWS's 6-field
  form: `?` in whichever of day-of-month and day-of-week is `*`, days of the week as names (AWS numbers
  them 1-7 from Sunday, cron 0-7), `5L` (last Friday) as `6L`, `MON#2` as `2#2`, and a year `*`. What
  AWS cannot say is refused with `InvalidSchedule` naming the schedule: both day fields restricted (AWS
  needs `?` in one of them), `LW`, and `L`/`#` inside a list.
  An interval (`every`) becomes a cron line when it divides the day into whole minutes (every 15m is
  `cron(0/15 * * * ? *)` in UTC, which fires at the same instants as the whole multiples since 1970); any
  other whole number of minutes is `rate(N minutes)`, which ticks from when the schedule was created, so
  the forwarder maps each tick to the latest fire at or before it (`core.schedules.delivered_fire`): the
  execution is named and fed by the fire it stands for and starts up to one interval after it. An
  interval that is not whole minutes cannot be expressed (rate() counts minutes) and is refused.
* `scheduler_name(name)`: Scheduler names allow `[0-9A-Za-z._-]{1,64}`; schedule names may hold `:`.
* `fire_input(name)` / `read_fire(event)`: what the schedule delivers to the forwarder, with the fire's
  scheduled time (`<aws.scheduler.scheduled-time>`, not the delivery time), and how the forwarder reads it.
* `recurring_schedule(...)`: the schedule's properties (`AWS::Scheduler::Schedule` and `CreateSchedule`
  share their names).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from eventual_nb import errors
from eventual_nb.runtime import core
from eventual_nb.runtime.aws.clients import AwsClients
from eventual_nb.runtime.aws.stores import ExecutionStore, ScheduleStore
from eventual_nb.runtime.base import ExecutionStatus, ServedDefinitions
from eventual_nb.runtime.core import schedules
from eventual_nb.runtime.core.schedules import Decision, InvalidSchedule, Schedule, ScheduleState

#: the key of a schedule fire in the forwarder's input (a timer's body has `execution_id`, `due`, `event`)
FIRE_KEY = "eventual_schedule"
SCHEDULED_TIME_KEY = "scheduled_time"
#: EventBridge Scheduler's context attribute: the time the fire was scheduled for, replaced in the input
SCHEDULED_TIME = "<aws.scheduler.scheduled-time>"
#: recurring schedules are named `s-...`, a timer's one-time schedule `t-...` (`clients.schedule_name`)
NAME_PREFIX = "s-"

#: compare-and-swap rounds of one change of a schedule's state before giving up (another writer each time)
MAX_SCHEDULE_ATTEMPTS = 10
LOGGER = logging.getLogger("eventual_nb.aws.schedules")

_DAY_NAMES = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
_DAY = timedelta(days=1)


def scheduler_name(name: str) -> str:
    """`s-<name, its other characters as '-'>-<hash>`: readable, within 64 characters, one per schedule."""
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:10]
    readable = re.sub(r"[^0-9A-Za-z._-]+", "-", name)[: 64 - len(NAME_PREFIX) - 1 - len(digest)]
    return f"{NAME_PREFIX}{readable}-{digest}"


def fire_input(name: str) -> str:
    """The target input of schedule `name`: its name and the scheduled time of the fire."""
    return json.dumps({FIRE_KEY: name, SCHEDULED_TIME_KEY: SCHEDULED_TIME}, sort_keys=True)


def read_fire(event: Any) -> tuple[str, datetime] | None:
    """(schedule name, scheduled time) of a fire delivered to the forwarder; None for anything else (a timer)."""
    if not isinstance(event, Mapping) or FIRE_KEY not in event:
        return None
    name, scheduled = event.get(FIRE_KEY), event.get(SCHEDULED_TIME_KEY)
    if not isinstance(name, str) or not isinstance(scheduled, str):
        raise InvalidSchedule(f"a schedule fire needs '{FIRE_KEY}' and '{SCHEDULED_TIME_KEY}' strings, got {event!r}")
    try:
        moment = datetime.fromisoformat(scheduled.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidSchedule(
            f"schedule '{name}' delivered a scheduled time that is not ISO 8601: {scheduled!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return name, moment.astimezone(UTC)


def recurring_schedule(schedule: Schedule, *, group: Any, target_arn: Any, role_arn: Any) -> dict[str, Any]:
    """The properties of schedule `schedule`'s recurring EventBridge schedule (values may be CloudFormation
    intrinsics). `FlexibleTimeWindow` OFF: a fire is delivered at its time, as the other runtimes fire."""
    return {
        "Name": scheduler_name(schedule.name),
        "GroupName": group,
        "Description": f"eventual-nb schedule {schedule.name!r}: {schedule.describe()} starts {schedule.workflow}"[
            :512
        ],
        "ScheduleExpression": aws_expression(schedule),
        "ScheduleExpressionTimezone": schedule.timezone,
        "FlexibleTimeWindow": {"Mode": "OFF"},
        "State": "ENABLED",
        "Target": {"Arn": target_arn, "RoleArn": role_arn, "Input": fire_input(schedule.name)},
    }


def group_schedule_names(scheduler: Any, group: str) -> list[str]:
    """The names of every schedule in Scheduler group `group` (all pages), sorted; `scheduler` is a boto3
    Scheduler client."""
    names: list[str] = []
    arguments: dict[str, Any] = {"GroupName": group}
    while True:
        page = scheduler.list_schedules(**arguments)
        names.extend(item["Name"] for item in page.get("Schedules", []) if item.get("GroupName") == group)
        if not page.get("NextToken"):
            return sorted(names)
        arguments["NextToken"] = page["NextToken"]


# --------------------------------------------------------------------------------------- the keeper


def start_recorded(
    executions: ExecutionStore,
    clients: AwsClients,
    execution_id: str,
    workflow: str,
    raw_input: Any,
    now: datetime,
    *,
    service: str | None,
    limit: timedelta | None = None,
) -> bool:
    """Start an execution on AWS: its record, then its start message; True if this call created it.

    The message goes out for an existing execution too: that repairs a start that died between the record
    and the message (the message's de-duplication id makes a repeat harmless; a started execution ignores
    it). An explicit timeout rides on the record, where the orchestrator's first turn reads it."""
    created = executions.create(execution_id, workflow, raw_input, now, service=service)
    if created and limit is not None:
        executions.set_timeout(execution_id, limit.total_seconds())
    clients.workflow_queue.send_start(execution_id)
    return created


class ScheduleKeeper:
    """A schedule's state on AWS (`ScheduleStore`: one item, compare-and-swap) and what changing it starts.

    Every change — a fire EventBridge Scheduler delivered, a pause, a resume, a trigger — reads the state,
    asks the execution core (`core.schedules`), starts the executions it says (each named after its fire,
    so starting one again starts nothing new), then stores the new state if nobody changed it meanwhile;
    otherwise it reads and decides again. Starting before storing means a crash in between only repeats the
    start on the next delivery (Scheduler retries a failed invocation), never loses a fire.

    Pause and resume also disable and enable the schedule's EventBridge schedule (when the stack has a
    Scheduler group), so a paused schedule costs no invocations; the stored state is what counts (a
    delivery while paused starts nothing), so a redeploy that enables the schedule again changes nothing.
    """

    def __init__(
        self, executions: ExecutionStore, store: ScheduleStore, clients: AwsClients, definitions: ServedDefinitions
    ):
        self.executions = executions
        self.store = store
        self.clients = clients
        self.definitions = definitions

    def _status_of(self, execution_id: str) -> ExecutionStatus | None:
        record = self.executions.record(execution_id)
        return None if record is None else ExecutionStatus(record["status"])

    def state(self, schedule: Schedule, now: datetime) -> ScheduleState:
        """The stored state, or that of a schedule first seen `now`."""
        state, _ = self.store.get(schedule.name)
        return ScheduleState.new(now) if state is None else state

    def change(self, schedule: Schedule, decide: Callable[[ScheduleState | None], Decision]) -> list[tuple[str, bool]]:
        """Carry out `decide(stored state)` (see the class docstring); the executions it started, each as
        (id, created by this call)."""
        for _ in range(MAX_SCHEDULE_ATTEMPTS):
            stored, version = self.store.get(schedule.name)
            decision = decide(stored)
            started = [self._start(start) for start in decision.starts]
            state = decision.state
            for execution_id, _created in started:
                state = state.started(execution_id)
            if state == stored or self.store.put(schedule.name, state, version):
                return started
        raise errors.EventualError(
            f"schedule '{schedule.name}' was changed by others {MAX_SCHEDULE_ATTEMPTS} times while this change was "
            "decided; try again"
        )

    def _start(self, start: schedules.Start) -> tuple[str, bool]:
        now = self.clients.clock()
        definition, raw_input, execution_id = self.definitions.fire_start(start, now)
        created = start_recorded(
            self.executions,
            self.clients,
            execution_id,
            definition.name,
            raw_input,
            now,
            service=core.service_of(definition),
        )
        return execution_id, created

    def deliver(self, name: str, scheduled_time: datetime) -> list[tuple[str, bool]]:
        """A fire delivered by EventBridge Scheduler (the forwarder): start it unless the core says not."""
        try:
            schedule = self.definitions.schedule_definition(name)
        except errors.ScheduleNotFound:
            LOGGER.warning("a fire of schedule %r arrived, but the service defines no such schedule now", name)
            return []

        def decide(state: ScheduleState | None) -> Decision:
            running = state is not None and schedules.previous_running(state, self._status_of)
            return schedules.decide_delivery(schedule, state, scheduled_time, previous_in_progress=running)

        return self.change(schedule, decide)

    def set_enabled(self, schedule: Schedule, enabled: bool) -> None:
        """Enable or disable the schedule's EventBridge schedule (nothing when the stack has no Scheduler
        group, or no such schedule: the stored state is what counts)."""
        group = self.clients.settings.schedule_group
        if not group:
            return
        scheduler = self.clients.client("scheduler")
        try:
            current = scheduler.get_schedule(Name=scheduler_name(schedule.name), GroupName=group)
        except scheduler.exceptions.ResourceNotFoundException:
            LOGGER.warning("schedule %r has no EventBridge schedule in group %s to update", schedule.name, group)
            return
        wanted = "ENABLED" if enabled else "DISABLED"
        if current.get("State") == wanted:
            return
        kept = {key: current[key] for key in _UPDATABLE if current.get(key) is not None}
        scheduler.update_schedule(**kept, State=wanted)


#: what `UpdateSchedule` takes again from `GetSchedule` (it replaces the whole schedule)
_UPDATABLE = (
    "Name",
    "GroupName",
    "Description",
    "ScheduleExpression",
    "ScheduleExpressionTimezone",
    "FlexibleTimeWindow",
    "Target",
    "StartDate",
    "EndDate",
    "KmsKeyArn",
    "ActionAfterCompletion",
)


# ------------------------------------------------------------------------------------------ expressions


def aws_expression(schedule: Schedule) -> str:
    """The `cron(...)` or `rate(...)` expression of `schedule` (see the module docstring)."""
    if schedule.every is not None:
        return _interval_expression(schedule, schedule.every)
    assert schedule.cron is not None
    return _cron_expression(schedule, schedule.cron)


def _refuse(schedule: Schedule, why: str) -> InvalidSchedule:
    return InvalidSchedule(
        f"schedule '{schedule.name}' ({schedule.describe()}) cannot be deployed to AWS: {why}; "
        "EventBridge Scheduler runs the schedules of an exported service"
    )


def _interval_expression(schedule: Schedule, every: timedelta) -> str:
    seconds = int(every.total_seconds())
    if seconds % 60:
        raise _refuse(schedule, f"every={seconds}s is not a whole number of minutes, and rate() counts minutes")
    minutes = seconds // 60
    if _DAY % every == timedelta(0):
        # whole multiples since 1970 fall on the same minutes of every UTC day: a cron line fires exactly then
        if minutes < 60:
            return f"cron({_list(range(0, 60, minutes), 0, 59)} * * * ? *)"
        if minutes % 60 == 0:
            return f"cron(0 {_list(range(0, 24, minutes // 60), 0, 23)} * * ? *)"
    for unit, size in (("day", 1440), ("hour", 60), ("minute", 1)):
        if minutes % size == 0:
            amount = minutes // size
            return f"rate({amount} {unit}{'' if amount == 1 else 's'})"
    raise AssertionError("unreachable: every whole number of minutes has a rate")


def _cron_expression(schedule: Schedule, line: str) -> str:
    from cronsim import CronSim

    parsed = CronSim(line, datetime(2000, 1, 1))
    minutes = _list(parsed.minutes, 0, 59)
    hours = _list(parsed.hours, 0, 23)
    months = _list(parsed.months, 1, 12)
    days: set[int] = set(parsed.days)
    every_day_of_month = days == set(range(1, 32))
    weekdays = {(0 if item == 7 else item) if isinstance(item, int) else item for item in parsed.weekdays}
    every_day_of_week = weekdays == set(range(7))
    if every_day_of_month and every_day_of_week:
        day_of_month, day_of_week = "*", "?"
    elif parsed.day_and and every_day_of_month:
        day_of_month, day_of_week = "?", _weekdays(schedule, weekdays)
    elif parsed.day_and and every_day_of_week:
        day_of_month, day_of_week = _days_of_month(schedule, days), "?"
    elif not parsed.day_and and (every_day_of_month or every_day_of_week):
        day_of_month, day_of_week = "*", "?"  # cron fires on either day field: one of them is every day
    else:
        raise _refuse(
            schedule,
            f"it restricts both the day-of-month ({line.split()[2]!r}) and the day-of-week ({line.split()[4]!r}), "
            "and AWS cron needs '?' in one of them; split it into two schedules, one per day field",
        )
    return f"cron({minutes} {hours} {day_of_month} {months} {day_of_week} *)"


def _days_of_month(schedule: Schedule, days: set[int]) -> str:
    from cronsim import CronSim

    if CronSim.LAST_WEEKDAY in days:
        raise _refuse(schedule, "AWS cron has no 'LW' (last weekday of the month)")
    if CronSim.LAST in days:
        if len(days) > 1:
            raise _refuse(schedule, "AWS cron takes 'L' (last day of the month) only on its own, not in a list")
        return "L"
    return _list(days, 1, 31)


def _weekdays(schedule: Schedule, weekdays: set[Any]) -> str:
    from cronsim import CronSim

    special = [item for item in weekdays if isinstance(item, tuple)]
    if special:
        if len(weekdays) > 1:
            raise _refuse(schedule, "AWS cron takes a last weekday ('5L') or an nth weekday ('MON#2') only on its own")
        day, nth = special[0]
        day = 0 if day == 7 else day
        return f"{day + 1}L" if nth == CronSim.LAST else f"{day + 1}#{nth}"
    return ",".join(
        _DAY_NAMES[start] if start == end else f"{_DAY_NAMES[start]}-{_DAY_NAMES[end]}"
        for start, end in _runs(weekdays)
    )


def _list(values: Iterable[int], low: int, high: int) -> str:
    """`*` for every value of the field, else its runs as `a-b` and single values, comma-separated."""
    chosen = set(values)
    if chosen == set(range(low, high + 1)):
        return "*"
    return ",".join(str(start) if start == end else f"{start}-{end}" for start, end in _runs(chosen))


def _runs(values: set[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for value in sorted(values):
        if runs and runs[-1][1] == value - 1:
            runs[-1] = (runs[-1][0], value)
        else:
            runs.append((value, value))
    return runs
