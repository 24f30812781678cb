"""The rules of schedules, free of any storage: when a schedule fires, and what a runtime starts when it does.

Every runtime keeps a `ScheduleState` per schedule wherever it keeps things (memory, SQLite, DynamoDB) and
asks the functions here what to do; none of them reads a clock, touches storage or starts anything, so the
three runtimes cannot disagree and the rules are tested once, as plain functions:

* `Schedule.next_fire(after)` / `Schedule.fires(after, until)`: the fire instants of a cron line or an
  interval (aware UTC datetimes);
* `decide_due(schedule, state, now, ...)`: which fires are due now, which of them start, which are skipped
  (`overlap`) and which missed ones are caught up (`catchup`), with the new state and when to ask again;
* `decide_delivery(...)`: the same for one fire delivered from outside (EventBridge Scheduler on AWS);
* `decide_trigger`, `pause`, `resume`: the manual operations;
* `wake_at(schedule, state)`: when to ask again; `previous_running(state, status_of)`: the overlap fact a
  runtime reads from its storage;
* `schedule_info(schedule, state)`: the `ScheduleInfo` the protocol's `list_schedules` answers.

The cron library is cronsim (BSD-3-Clause), the one Healthchecks (a cron monitoring service) is built on.
We compared it with croniter (MIT):

* both parse the 5-field grammar with names of days and months (any case), ranges, lists, steps, `L` as
  the last day of the month and `MON#2` (second Monday); the last Friday is `5L` in cronsim, `L5` in
  croniter; cronsim also has `LW` (last weekday of the month);
* cronsim names the field that is wrong ("Bad day-of-week"), croniter repeats the whole expression;
  cronsim refuses a reversed range (`5-1`), croniter accepts it;
* around daylight-saving changes cronsim copies Debian's cron (a time skipped by a spring-forward fires
  right after the change); croniter, evaluated in a zone, fires a repeated local time twice on the
  fall-back day (01:30 in New York at 05:30Z and again at 06:30Z) and has a long record of DST bugs.
  Neither is our rule, so we walk cron lines on the local wall clock (cronsim with naive datetimes, where
  it has no DST logic at all) and apply the rule below with `zoneinfo` ourselves;
* cronsim is one small typed module without dependencies, released regularly by the Healthchecks author;
  croniter was declared abandoned by its author in 2024 and revived under pallets-eco in 2025, and
  depends on python-dateutil.

The rule for daylight saving (the same as EventBridge Scheduler's, so the AWS runtime agrees with the
others): a cron line is matched against the local wall clock of its timezone; a local time that does not
exist that day (02:30 on a spring-forward night in Paris) does not fire; one that exists twice (01:30 on
a fall-back night in New York) fires once, at its first occurrence. `every` has no timezone (a schedule
with `every` must keep timezone="UTC"): it fires at whole multiples of the interval since
1970-01-01T00:00Z, whatever the clocks on the wall say.
"""

from __future__ import annotations

import difflib
import functools
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args

from pydantic import ConfigDict

from eventual_nb.durations import LATEST_DEADLINE, DurationLike, format_duration, parse_duration
from eventual_nb.errors import EventualError, InputValidationError
from eventual_nb.runtime.base import ExecutionStatus
from eventual_nb.shapes import Shape
from eventual_nb.workflows import check_execution_name

Overlap = Literal["skip", "allow"]
Catchup = Literal["latest", "all", "none"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: the most executions one catch-up starts (`catchup="all"` after a long stop): the newest ones
MAX_CATCHUP = 1000
#: how late a running runtime may act on a fire and still call it on time; a fire due longer ago (the
#: process was suspended, the machine slept) was missed and follows `catchup` like one missed while stopped
LATE_FIRE_GRACE = timedelta(minutes=1)
#: the widest a daylight-saving change (or any change of a zone's offset) moves the wall clock
_LARGEST_SHIFT = timedelta(hours=3)

_CRON_FIELDS = (
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31, L (last day) or LW (last weekday)"),
    ("month", "1-12 or JAN-DEC"),
    ("day-of-week", "0-7 (0 and 7 are Sunday) or SUN-SAT, with 5L (last Friday) or MON#2 (second Monday)"),
)
_CRON_GRAMMAR = "each field takes a value, a range a-b, a list a,b,c, * and steps */n or a-b/n"
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


class InvalidSchedule(EventualError, ValueError):
    """A schedule that cannot be defined; the message names the schedule, the expression and what is wrong."""

    status_code = 422


# -------------------------------------------------------------------------------------- the definition


class ScheduleFields(Shape):
    """What defines a schedule: shared by the definition (`Schedule`) and what the protocol shows (`ScheduleInfo`)."""

    name: str
    workflow: str
    #: a 5-field cron line, or None for an interval
    cron: str | None
    #: the interval, or None for a cron line
    every: timedelta | None
    #: the IANA zone the cron line is read in ("UTC" for intervals)
    timezone: str
    overlap: Overlap
    catchup: Catchup

    def describe(self) -> str:
        """Short human form: `cron '0 9 * * MON-FRI' (Europe/Paris)` or `every 15m`."""
        if self.every is not None:
            return f"every {format_duration(self.every)}"
        return f"cron {self.cron!r} ({self.timezone})"


class Schedule(ScheduleFields):
    """One schedule of a service: a cron line or an interval that starts `workflow` at each fire.

    Build it with `define_schedule`, which checks every option; `ev.schedule` does so at decoration.
    """

    model_config = ConfigDict(frozen=True)

    def next_fire(self, after: datetime) -> datetime | None:
        """The first fire strictly after `after` (aware UTC), or None when there is none before year 9999."""
        _check_aware(after, "after")
        if self.every is not None:
            fire = EPOCH + ((after - EPOCH) // self.every + 1) * self.every
            return fire if fire < LATEST_DEADLINE else None
        assert self.cron is not None
        from cronsim import CronSim  # (imported when a cron line is used: see _check_cron)

        zone = _zone(self.timezone)
        try:
            for wall in CronSim(self.cron, _wall(after, zone)):
                instant = _instant(wall, zone)
                if instant is not None and instant > after:
                    return instant if instant < LATEST_DEADLINE else None
        except OverflowError:  # the wall clock walked past year 9999
            pass
        return None

    def fires(self, after: datetime, until: datetime, *, limit: int | None = None) -> list[datetime]:
        """The fires in `(after, until]`, oldest first; with `limit`, only the newest `limit` of them.

        Walks back from `until`, so the newest fires of a long span cost no more than a short span's.
        """
        _check_aware(after, "after")
        _check_aware(until, "until")
        if until <= after or limit == 0:
            return []
        if self.every is not None:
            first = (after - EPOCH) // self.every + 1
            last = (until - EPOCH) // self.every
            if limit is not None:
                first = max(first, last - limit + 1)
            return [EPOCH + k * self.every for k in range(first, last + 1)]
        assert self.cron is not None
        from cronsim import CronSim

        zone = _zone(self.timezone)
        newest_first: list[datetime] = []
        # start past `until` by the widest clock shift: a repeated local hour can hold fires whose wall time
        # is later than `until`'s but whose instant is earlier
        start = _wall(min(until + _LARGEST_SHIFT, LATEST_DEADLINE), zone)
        for wall in CronSim(self.cron, start, reverse=True):
            instant = _instant(wall, zone)
            if instant is None or instant > until:
                continue
            if instant <= after:
                break
            newest_first.append(instant)
            if limit is not None and len(newest_first) >= limit:
                break
        newest_first.reverse()
        return newest_first

    def spec(self) -> dict[str, object]:
        """JSON-able description for the service manifest (`eventual.json`, `Service.spec()`)."""
        return {
            "name": self.name,
            "workflow": self.workflow,
            "cron": self.cron,
            "every_seconds": None if self.every is None else self.every.total_seconds(),
            "timezone": self.timezone,
            "overlap": self.overlap,
            "catchup": self.catchup,
        }


def define_schedule(
    *,
    name: str,
    workflow: str,
    cron: str | None = None,
    every: DurationLike | None = None,
    timezone: str = "UTC",
    overlap: str = "skip",
    catchup: str = "latest",
) -> Schedule:
    """Check every option of a schedule and return it; raise `InvalidSchedule` saying what is wrong.

    `cron` is a 5-field cron line (minute hour day-of-month month day-of-week) evaluated in `timezone`
    (an IANA name); `every` is a duration (whole seconds, at least one) instead of a cron line. `overlap`
    is "skip" or "allow", `catchup` "latest", "all" or "none" (see `decide_due`).
    """
    what = f"schedule '{name}'"
    check_schedule_name(name)
    if (cron is None) == (every is None):
        given = "both cron= and every=" if cron is not None else "neither cron= nor every="
        raise InvalidSchedule(
            f"{what} has {given}: give exactly one, a cron line such as '0 9 * * MON-FRI' or an interval "
            "such as every='15m'"
        )
    zone_name = _check_timezone(timezone, what)
    if overlap not in get_args(Overlap):
        raise InvalidSchedule(f"{what}: overlap={overlap!r} is not one of 'skip', 'allow'")
    if catchup not in get_args(Catchup):
        raise InvalidSchedule(f"{what}: catchup={catchup!r} is not one of 'latest', 'all', 'none'")
    interval = None
    line = None
    if every is not None:
        interval = _check_every(every, what)
        if zone_name != "UTC":
            raise InvalidSchedule(
                f"{what}: timezone={zone_name!r} has no effect on every={format_duration(interval)}, which fires "
                "at whole multiples of the interval since 1970-01-01T00:00Z; for local times use a cron line "
                "such as '0 9 * * *' with the timezone"
            )
    else:
        line = _check_cron(cron, what)
    return Schedule(
        name=name,
        workflow=workflow,
        cron=line,
        every=interval,
        timezone=zone_name,
        overlap=overlap,  # type: ignore[arg-type]  # checked above (and by pydantic)
        catchup=catchup,  # type: ignore[arg-type]
    )


def schedule_from_spec(spec: Mapping[str, Any]) -> Schedule:
    """The schedule a manifest entry (`Schedule.spec()`, in `eventual.json`) describes, checked again."""
    every = spec.get("every_seconds")
    return define_schedule(
        name=spec["name"],
        workflow=spec["workflow"],
        cron=spec.get("cron"),
        every=None if every is None else timedelta(seconds=every),
        timezone=spec.get("timezone", "UTC"),
        overlap=spec.get("overlap", "skip"),
        catchup=spec.get("catchup", "latest"),
    )


def check_schedule_name(name: object) -> str:
    """A schedule name must make `<name>-<YYYYMMDDTHHMMSSZ>` a valid execution name."""
    if not isinstance(name, str):
        raise InvalidSchedule(f"a schedule name must be a string, got {type(name).__name__} {name!r}")
    try:
        check_execution_name(execution_name(name, EPOCH))
    except InputValidationError as exc:
        raise InvalidSchedule(
            f"invalid schedule name {name!r}: a schedule names the executions it starts "
            f"<name>-<YYYYMMDDTHHMMSSZ>, so its name must make those valid ({exc}); pass ev.schedule(..., name=...)"
        ) from None
    return name


def execution_name(schedule: str, fire_time: datetime) -> str:
    """`<schedule>-<YYYYMMDDTHHMMSSZ>`: one name per fire, so a fire started twice starts one execution."""
    _check_aware(fire_time, "fire_time")
    return f"{schedule}-{fire_time.astimezone(UTC):%Y%m%dT%H%M%SZ}"


# -------------------------------------------------------------------------------------- the state


class ScheduleState(Shape):
    """What a runtime stores per schedule (JSON through `model_dump(mode="json")`).

    `handled_until`: every fire at or before this instant has been dealt with — started, skipped,
    dropped by `catchup` or fallen in a paused span — and is never considered again. It starts at the
    moment the runtime first saw the schedule (`first_seen`), so a new schedule or a fresh database has
    no missed fires.
    """

    model_config = ConfigDict(frozen=True)

    first_seen: datetime
    handled_until: datetime
    paused: bool = False
    #: the (scheduled) time of the latest fire that started an execution, triggers included
    last_fire: datetime | None = None
    last_execution_id: str | None = None
    #: fires that started nothing because the previous execution was still running (`overlap="skip"`)
    skipped: int = 0

    @classmethod
    def new(cls, now: datetime) -> ScheduleState:
        """The state of a schedule the runtime sees for the first time at `now`."""
        _check_aware(now, "now")
        return cls(first_seen=now, handled_until=now)

    def started(self, execution_id: str) -> ScheduleState:
        """The state once the runtime has started a decision's execution (its id as the runtime made it)."""
        return self.model_copy(update={"last_execution_id": execution_id})


@dataclass(frozen=True)
class Start:
    """One execution to start: `workflow` with `input` (the fire time) under `execution_name`."""

    schedule: str
    workflow: str
    fire_time: datetime
    execution_name: str
    input: datetime


@dataclass(frozen=True)
class Decision:
    """What a runtime does now: start `starts` in order, store `state`, and ask again at `wake_at`."""

    starts: tuple[Start, ...]
    #: fires that started nothing because the previous execution was still running
    skipped: tuple[datetime, ...]
    state: ScheduleState
    #: the next fire (None while paused or when the schedule never fires again): when to call `decide_due`
    wake_at: datetime | None


# -------------------------------------------------------------------------------------- the decisions


def decide_due(
    schedule: Schedule,
    state: ScheduleState,
    now: datetime,
    *,
    previous_in_progress: bool,
    catching_up: bool = False,
) -> Decision:
    """What to start for the fires due at `now` (those after `state.handled_until`, up to `now`).

    `previous_in_progress`: whether the schedule's previous execution (`state.last_execution_id`) is still
    IN_PROGRESS. `catching_up`: the runtime is starting, so every due fire passed while it was not running.

    A due fire is on time when it is the newest and at most `LATE_FIRE_GRACE` old on a running runtime;
    every other due fire was missed and follows `catchup`: "latest" starts the newest missed fire (none
    when a fire is on time, which is newer), "all" every missed fire oldest first (the newest
    `MAX_CATCHUP`), "none" nothing. With `overlap="skip"` and the previous execution in progress, the
    fires that would start start nothing and are counted in `skipped`; fires started together by one
    catch-up do not skip each other.
    """
    _check_aware(now, "now")
    if state.paused:
        return Decision(starts=(), skipped=(), state=state, wake_at=None)
    newest = schedule.fires(state.handled_until, now, limit=1)
    chosen: list[datetime] = []
    if newest:
        on_time = not catching_up and now - newest[0] <= LATE_FIRE_GRACE
        if schedule.catchup == "all":
            chosen = schedule.fires(state.handled_until, now, limit=MAX_CATCHUP)
        elif on_time or schedule.catchup == "latest":
            chosen = newest
    handled = state.model_copy(update={"handled_until": max(state.handled_until, now)})
    return _start_or_skip(schedule, handled, chosen, previous_in_progress)


def delivered_fire(schedule: Schedule, scheduled_time: datetime) -> datetime:
    """The fire a delivery from outside stands for: its scheduled time for a cron line; for an interval, the
    latest whole multiple at or before it (EventBridge Scheduler's `rate()` ticks from when the schedule was
    created, one interval apart, so each tick stands for a distinct fire)."""
    _check_aware(scheduled_time, "scheduled_time")
    moment = scheduled_time.astimezone(UTC)
    if schedule.every is not None:
        return EPOCH + ((moment - EPOCH) // schedule.every) * schedule.every
    return moment


def decide_delivery(
    schedule: Schedule, state: ScheduleState | None, scheduled_time: datetime, *, previous_in_progress: bool
) -> Decision:
    """What to start for one fire delivered from outside at its scheduled time (EventBridge Scheduler's
    `<aws.scheduler.scheduled-time>`, read through `delivered_fire`): nothing when paused, when the time is
    not a fire of the schedule, or when it was already handled (a repeated delivery, a fire from before the
    schedule was first seen or from a paused span); else start or skip it as `overlap` says.

    `state` None: the runtime keeps no state for the schedule yet. The delivery itself shows the schedule
    existed before this fire (a scheduler delivers only fires after it created the schedule), so the fire
    is new, not missed: the state starts just before it."""
    fire_time = delivered_fire(schedule, scheduled_time)
    if state is None:
        state = ScheduleState.new(fire_time - timedelta(microseconds=1))
    due = schedule.fires(fire_time - timedelta(microseconds=1), fire_time)
    if state.paused or not due or fire_time <= state.handled_until:
        return Decision(starts=(), skipped=(), state=state, wake_at=wake_at(schedule, state))
    handled = state.model_copy(update={"handled_until": fire_time})
    return _start_or_skip(schedule, handled, due, previous_in_progress)


def decide_trigger(schedule: Schedule, state: ScheduleState, now: datetime) -> Decision:
    """`trigger_schedule`: start one execution now, paused or not and whatever runs, with input and name
    from `now` to the second (so two triggers in one second start one execution)."""
    _check_aware(now, "now")
    fire_time = now.astimezone(UTC).replace(microsecond=0)
    new_state = state.model_copy(update={"last_fire": fire_time})
    return Decision(
        starts=(_start(schedule, fire_time),), skipped=(), state=new_state, wake_at=wake_at(schedule, new_state)
    )


def store_only(state: ScheduleState) -> Decision:
    """A decision that starts nothing and stores `state` (what `pause` and `resume` give)."""
    return Decision(starts=(), skipped=(), state=state, wake_at=None)


def pause(state: ScheduleState) -> ScheduleState:
    """Stop firing until `resume`."""
    return state.model_copy(update={"paused": True})


def resume(state: ScheduleState, now: datetime) -> ScheduleState:
    """Fire again from `now` on: the fires of the paused span are never caught up."""
    _check_aware(now, "now")
    if not state.paused:
        return state
    return state.model_copy(update={"paused": False, "handled_until": max(state.handled_until, now)})


# -------------------------------------------------------------------------------------- what the protocol shows


class ScheduleInfo(ScheduleFields):
    """One schedule as `list_schedules()` shows it: its definition and its state."""

    paused: bool
    #: the next fire (aware UTC), None while paused or when it never fires again
    next_fire: datetime | None
    #: the scheduled time of the latest fire that started an execution (triggers included)
    last_fire: datetime | None
    last_execution_id: str | None
    #: fires that started nothing because the previous execution was still running (`overlap="skip"`)
    skipped: int


def schedule_info(schedule: Schedule, state: ScheduleState) -> ScheduleInfo:
    return ScheduleInfo(
        **schedule.model_dump(),
        paused=state.paused,
        next_fire=wake_at(schedule, state),
        last_fire=state.last_fire,
        last_execution_id=state.last_execution_id,
        skipped=state.skipped,
    )


# -------------------------------------------------------------------------------------- helpers


def _start_or_skip(
    schedule: Schedule, state: ScheduleState, fires: list[datetime], previous_in_progress: bool
) -> Decision:
    if fires and schedule.overlap == "skip" and previous_in_progress:
        state = state.model_copy(update={"skipped": state.skipped + len(fires)})
        return Decision(starts=(), skipped=tuple(fires), state=state, wake_at=wake_at(schedule, state))
    if fires:
        state = state.model_copy(update={"last_fire": fires[-1]})
    starts = tuple(_start(schedule, fire) for fire in fires)
    return Decision(starts=starts, skipped=(), state=state, wake_at=wake_at(schedule, state))


def _start(schedule: Schedule, fire_time: datetime) -> Start:
    return Start(
        schedule=schedule.name,
        workflow=schedule.workflow,
        fire_time=fire_time,
        execution_name=execution_name(schedule.name, fire_time),
        input=fire_time,
    )


def wake_at(schedule: Schedule, state: ScheduleState) -> datetime | None:
    """When a runtime holding `state` must next call `decide_due`: the first fire not yet handled (None while
    paused, or when the schedule never fires again)."""
    return None if state.paused else schedule.next_fire(state.handled_until)


def previous_running(state: ScheduleState, status_of: Callable[[str], ExecutionStatus | None]) -> bool:
    """Whether the schedule's previous execution is still IN_PROGRESS (`decide_due`'s `previous_in_progress`),
    asking the runtime's storage with `status_of(execution_id)` (None for an execution it does not have)."""
    if state.last_execution_id is None:
        return False
    return status_of(state.last_execution_id) == ExecutionStatus.IN_PROGRESS


def _check_aware(value: datetime, what: str) -> None:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError(f"schedule rules need an aware datetime for {what}, got {value!r}")


@functools.lru_cache(maxsize=256)
def _zone(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


def _wall(instant: datetime, zone: zoneinfo.ZoneInfo) -> datetime:
    """The local wall-clock time of `instant` (naive)."""
    return instant.astimezone(zone).replace(tzinfo=None)


def _instant(wall: datetime, zone: zoneinfo.ZoneInfo) -> datetime | None:
    """The UTC instant of a local wall time: its first occurrence, None when the wall time does not exist."""
    local = wall.replace(tzinfo=zone, fold=0)
    instant = local.astimezone(UTC)
    if _wall(instant, zone) != wall:
        return None  # skipped by a spring-forward: the round trip lands elsewhere
    return instant


def _check_timezone(timezone: object, what: str) -> str:
    if not isinstance(timezone, str) or not timezone:
        raise InvalidSchedule(f"{what}: timezone must be an IANA name such as 'Europe/Paris', got {timezone!r}")
    try:
        _zone(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        known = zoneinfo.available_timezones()
        if not known:
            raise InvalidSchedule(
                f"{what}: cannot read timezone {timezone!r}: this Python finds no IANA time zone database (neither "
                "the system's nor the tzdata package, which eventual-nb depends on): pip install tzdata"
            ) from None
        close = difflib.get_close_matches(timezone, sorted(known), n=3)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        raise InvalidSchedule(
            f"{what}: unknown timezone {timezone!r}{hint}; use an IANA name such as 'Europe/Paris', "
            "'America/New_York' or 'UTC'"
        ) from None
    return timezone


def _check_every(every: DurationLike, what: str) -> timedelta:
    interval = parse_duration(every, what=f"every= of {what}")
    if interval <= timedelta(0):
        raise InvalidSchedule(f"{what}: every={every!r} must be a positive duration, such as '15m' or '1h'")
    if interval % timedelta(seconds=1):
        raise InvalidSchedule(
            f"{what}: every={format_duration(interval)} must be a whole number of seconds (execution names "
            "carry the fire time to the second)"
        )
    return interval


def _check_cron(cron: object, what: str) -> str:
    # cronsim is imported where a cron line is used, not with eventual_nb: `import eventual_nb` stays possible
    # where only the functions' dependencies are installed (the Lambda zip of a service without schedules)
    from cronsim import CronSim, CronSimError

    if not isinstance(cron, str):
        raise InvalidSchedule(
            f"{what}: the cron line must be a string such as '0 9 * * MON-FRI', got {type(cron).__name__} {cron!r}"
        )
    line = " ".join(cron.split())
    shown = f"invalid cron line {cron!r} for {what}"
    if line.lower() in _MACROS:
        raise InvalidSchedule(f"{shown}: write the 5 fields instead of {line}: {_MACROS[line.lower()]!r}")
    fields = line.split(" ") if line else []
    if len(fields) != 5:
        raise InvalidSchedule(
            f"{shown}: it has {len(fields)} fields, a cron line has 5: minute hour day-of-month month "
            "day-of-week (no seconds, no year)"
        )
    for index, (field, accepted) in enumerate(_CRON_FIELDS):
        probe = ["*"] * 5
        probe[index] = fields[index]
        try:
            CronSim(" ".join(probe), EPOCH.replace(tzinfo=None))
        except CronSimError:
            raise InvalidSchedule(
                f"{shown}: the {field} field {fields[index]!r} (field {index + 1}) is not valid; "
                f"{field} takes {accepted}; {_CRON_GRAMMAR}"
            ) from None
    try:
        first = next(CronSim(line, datetime(2000, 1, 1)), None)
    except CronSimError:
        first = None  # a day-of-month no month in the line has (31 in FEB,APR)
    if first is None:
        raise InvalidSchedule(
            f"{shown}: the day-of-month field {fields[2]!r} and the month field {fields[3]!r}"
            f"{'' if fields[4] == '*' else ' and the day-of-week field ' + repr(fields[4])} never meet, so it "
            "would never fire"
        )
    return line
