"""Schedules on AWS: one EventBridge Scheduler recurring schedule per `@ev.schedule`, declared in the template.

Pure functions, no boto3: the exporter's template, the emulator's stand-in (which creates in moto what its
CloudFormation skips) and the schedule forwarder all read them, so the three agree on names and shapes.

* `aws_expression(schedule)`: the `cron()`/`rate()` expression for EventBridge Scheduler, evaluated in
  `ScheduleExpressionTimezone` = the schedule's timezone. A 5-field cron line becomes AWS's 6-field
  form: `?` in whichever of day-of-month and day-of-week is `*`, days of the week as names (AWS numbers
  them 1-7 from Sunday, cron 0-7), `5L` (last Friday) as `6L`, `MON#2` as `2#2`, and a year `*`. What
  AWS cannot say is refused with `InvalidSchedule` naming the schedule: both day fields restricted (AWS
  needs `?` in one of them), `LW`, and `L`/`#` inside a list.
  An interval (`every`) becomes a cron line when it divides the day into whole minutes (every 15m is
  `cron(0/15 * * * ? *)` in UTC, which fires at the same instants as the whole multiples since 1970); any
  other whole number of minutes is `rate(N minutes)`, which ticks from when the schedule was created, so
  the forwarder maps each tick to the latest fire at or before it (`schedule_rules.delivered_fire`): the
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
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from eventual_nb.runtime.schedule_rules import InvalidSchedule, Schedule

#: the key of a schedule fire in the forwarder's input (a timer's body has `execution_id`, `due`, `event`)
FIRE_KEY = "eventual_schedule"
SCHEDULED_TIME_KEY = "scheduled_time"
#: EventBridge Scheduler's context attribute: the time the fire was scheduled for, replaced in the input
SCHEDULED_TIME = "<aws.scheduler.scheduled-time>"
#: recurring schedules are named `s-...`, a timer's one-time schedule `t-...` (`clients.schedule_name`)
NAME_PREFIX = "s-"

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
