"""Schedules, first phase: `@ev.schedule` (definition, checks, registration) and the storage-free rules every
runtime will share (eventual_nb/runtime/core/schedules.py): fire times on cron lines and intervals across
daylight-saving changes and year boundaries, catch-up, overlap, pause/resume, trigger and deliveries.

Expected instants are written out by hand from the zones' rules (Paris: CET +1 / CEST +2, changes on
2025-03-30 02:00 → 03:00 and 2025-10-26 03:00 → 02:00; New York: EST -5 / EDT -4, changes on 2025-03-09
02:00 → 03:00 and 2025-11-02 02:00 → 01:00), never computed by the code under test.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from cronsim import CronSim
from hypothesis import example, given
from hypothesis import strategies as st

import eventual_nb as ev
from eventual_nb.runtime.core.schedules import (
    EPOCH,
    LATE_FIRE_GRACE,
    MAX_CATCHUP,
    Decision,
    Schedule,
    ScheduleState,
    decide_delivery,
    decide_due,
    decide_trigger,
    define_schedule,
    execution_name,
    pause,
    resume,
    schedule_info,
)

SERVICE = ev.Service("test-schedules")


def Z(*parts: int) -> datetime:
    """An aware UTC datetime."""
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def cron(line: str, timezone: str = "UTC", **options: Any) -> Schedule:
    return define_schedule(name="job", workflow="job", cron=line, timezone=timezone, **options)


def every(interval: Any, **options: Any) -> Schedule:
    return define_schedule(name="job", workflow="job", every=interval, **options)


def chain(schedule: Schedule, after: datetime, until: datetime) -> list[datetime]:
    """The fires in (after, until] found one `next_fire` at a time (the other way `fires` is computed)."""
    found: list[datetime] = []
    current = after
    while (fire := schedule.next_fire(current)) is not None and fire <= until:
        found.append(fire)
        current = fire
    return found


def fires(schedule: Schedule, after: datetime, until: datetime) -> list[datetime]:
    both = schedule.fires(after, until)
    assert chain(schedule, after, until) == both
    return both


# ------------------------------------------------------------------------------ the decorator

#: the manifest entry (`Service.spec()["schedules"]`) of a weekday 09:00 Paris report with default options
MORNING_REPORT = {
    "name": "morning_report",
    "workflow": "morning_report",
    "cron": "0 9 * * MON-FRI",
    "every_seconds": None,
    "timezone": "Europe/Paris",
    "overlap": "skip",
    "catchup": "latest",
}


def test_schedule_registers_in_the_workflows_service_under_the_workflows_name() -> None:
    @ev.schedule("0 9 * * MON-FRI", timezone="Europe/Paris")
    @ev.workflow
    async def morning_report(fired_at: datetime) -> str:
        return fired_at.isoformat()

    assert isinstance(morning_report, ev.Workflow)  # the decorator gives the workflow back
    found = SERVICE.schedules["morning_report"]
    assert (found.every, found.overlap, found.catchup) == (None, "skip", "latest")
    assert found.spec() == MORNING_REPORT
    assert MORNING_REPORT in json.loads(json.dumps(SERVICE.spec()))["schedules"]


def test_every_name_overlap_and_catchup_and_stacked_schedules() -> None:
    @ev.schedule(every="15m", name="sync-quarterly", overlap="allow", catchup="all")
    @ev.schedule("0 12 * * SAT", name="sync-saturday", catchup="none")
    @ev.workflow
    async def sync(fired_at: datetime) -> None:
        return None

    quarterly, saturday = SERVICE.schedules["sync-quarterly"], SERVICE.schedules["sync-saturday"]
    assert (quarterly.workflow, quarterly.every, quarterly.cron, quarterly.overlap, quarterly.catchup) == (
        "sync",
        timedelta(minutes=15),
        None,
        "allow",
        "all",
    )
    assert (saturday.workflow, saturday.cron, saturday.catchup) == ("sync", "0 12 * * SAT", "none")
    assert quarterly.spec()["every_seconds"] == 900.0


def test_two_stacked_schedules_need_two_names() -> None:
    with pytest.raises(ev.EventualError, match=r"two schedules named 'twice'.*own name="):

        @ev.schedule("0 12 * * SAT")
        @ev.schedule("0 9 * * MON-FRI")
        @ev.workflow
        async def twice(fired_at: datetime) -> None:
            return None


def test_defining_the_workflow_again_replaces_or_drops_its_schedules() -> None:
    """A re-run notebook cell: the same name replaces the schedule; without the decorator it is gone."""

    @ev.schedule("0 9 * * *")
    @ev.workflow
    async def rerun(fired_at: datetime) -> None:
        return None

    @ev.schedule("0 10 * * *")
    @ev.workflow
    async def rerun(fired_at: datetime) -> None:  # noqa: F811 - the cell, run again with a new time
        return None

    assert SERVICE.schedules["rerun"].cron == "0 10 * * *"

    @ev.workflow
    async def rerun(fired_at: datetime) -> None:  # noqa: F811 - the cell, run again without the schedule
        return None

    assert "rerun" not in SERVICE.schedules


def test_schedule_below_workflow_or_without_arguments_is_refused() -> None:
    with pytest.raises(ev.EventualError, match=r"goes above @ev.workflow.*'upside_down'"):

        @ev.workflow  # type: ignore[arg-type]
        @ev.schedule("0 9 * * *")
        async def upside_down(fired_at: datetime) -> None:
            return None

    with pytest.raises(ev.EventualError, match=r"needs a cron line or every="):

        @ev.schedule  # type: ignore[arg-type]
        @ev.workflow
        async def bare(fired_at: datetime) -> None:
            return None


def test_the_workflow_must_take_the_fire_time() -> None:
    with pytest.raises(ev.EventualError, match=r"workflow 'no_input' takes no input.*fired_at: datetime"):

        @ev.schedule("0 9 * * *")
        @ev.workflow
        async def no_input() -> None:
            return None

    with pytest.raises(ev.EventualError, match=r"workflow 'wants_int' cannot take a datetime.*annotated int"):

        @ev.schedule("0 9 * * *")
        @ev.workflow
        async def wants_int(count: int) -> None:
            return None

    @ev.schedule("0 9 * * *")  # no annotation: accepted (it receives the ISO text)
    @ev.workflow
    async def untyped(fired_at) -> None:  # type: ignore[no-untyped-def]
        return None

    assert "untyped" in SERVICE.schedules


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"cron": "61 * * * *"}, r"cron line '61 \* \* \* \*' for schedule 'bad': the minute field '61' \(field 1\)"),
        ({"cron": "0 24 * * *"}, r"the hour field '24' \(field 2\) is not valid; hour takes 0-23"),
        ({"cron": "0 9 0 * *"}, r"the day-of-month field '0' \(field 3\)"),
        ({"cron": "0 9 * 13 *"}, r"the month field '13' \(field 4\) is not valid; month takes 1-12 or JAN-DEC"),
        ({"cron": "0 9 * * MON-FRY"}, r"the day-of-week field 'MON-FRY' \(field 5\)"),
        ({"cron": "0 9 * * 8"}, r"the day-of-week field '8' \(field 5\)"),
        ({"cron": "*/0 9 * * *"}, r"the minute field '\*/0' \(field 1\)"),
        ({"cron": "0 17-9 * * *"}, r"the hour field '17-9' \(field 2\)"),
        ({"cron": "0 9 * *"}, r"it has 4 fields, a cron line has 5"),
        ({"cron": "0 0 9 * * *"}, r"it has 6 fields, a cron line has 5.*no seconds"),
        ({"cron": "@daily"}, r"write the 5 fields instead of @daily: '0 0 \* \* \*'"),
        ({"cron": "0 0 30 2 *"}, r"day-of-month field '30' and the month field '2' never meet"),
        ({"cron": 9}, r"the cron line must be a string"),
        (
            {"cron": "0 9 * * *", "timezone": "Europe/Pariss"},
            r"unknown timezone 'Europe/Pariss' \(did you mean 'Europe/Paris'",
        ),
        ({"cron": "0 9 * * *", "timezone": "Mars/Olympus_Mons"}, r"unknown timezone 'Mars/Olympus_Mons'"),
        ({"cron": "0 9 * * *", "timezone": "../../etc/passwd"}, r"unknown timezone"),
        ({"cron": "0 9 * * *", "every": "1h"}, r"both cron= and every=: give exactly one"),
        ({}, r"neither cron= nor every=: give exactly one"),
        ({"cron": "0 9 * * *", "overlap": "queue"}, r"overlap='queue' is not one of 'skip', 'allow'"),
        ({"cron": "0 9 * * *", "catchup": "some"}, r"catchup='some' is not one of 'latest', 'all', 'none'"),
        ({"every": "0s"}, r"every='0s' must be a positive duration"),
        ({"every": 0}, r"every=0 must be a positive duration"),
        ({"every": "-5m"}, r"invalid every= of schedule 'bad' '-5m'"),
        ({"every": "15 parsecs"}, r"unknown unit 'parsecs'"),
        ({"every": True}, r"invalid every= of schedule 'bad' True"),
        ({"every": "1.5s"}, r"every=1.500s must be a whole number of seconds"),
        ({"every": "36526d"}, r"too long"),
        ({"every": "1h", "timezone": "Europe/Paris"}, r"timezone='Europe/Paris' has no effect on every=1h"),
        ({"cron": "0 9 * * *", "name": "_private"}, r"invalid schedule name '_private'"),
        ({"cron": "0 9 * * *", "name": "x" * 64}, r"invalid schedule name 'x{64}'"),
    ],
)
def test_bad_definitions_are_refused_at_decoration_naming_what_is_wrong(options: dict[str, Any], expected: str) -> None:
    options = {"name": "bad", **options}
    cron_line = options.pop("cron", None)
    with pytest.raises(ev.EventualError, match=expected):

        @ev.schedule(cron_line, **options)
        @ev.workflow
        async def bad(fired_at: datetime) -> None:
            return None

    assert "bad" not in SERVICE.schedules


TZ_PROBE = """
import importlib.abc, sys
from datetime import UTC, datetime

if sys.argv[1] == "block":
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] == "tzdata":
                raise ImportError("blocked in this test")

    sys.meta_path.insert(0, Block())

import eventual_nb as ev

async def report(fired_at: datetime) -> None:
    return None

try:
    ev.schedule("0 9 * * *", timezone="Europe/Paris")(ev.workflow(report))
except ev.EventualError as exc:
    print(exc)
else:
    print("next", ev.current_service().schedules["report"].next_fire(datetime(2025, 7, 1, tzinfo=UTC)))
"""


def test_the_zone_database_comes_from_tzdata_where_the_system_has_none(tmp_path: Path) -> None:
    """With no system zone database (PYTHONTZPATH pointing nowhere), the tzdata dependency supplies the zones;
    without tzdata either, the error says what to install instead of calling Europe/Paris unknown."""
    environment = {"PYTHONTZPATH": str(tmp_path / "no-zoneinfo"), "PATH": "/usr/bin:/bin"}
    found = {
        mode: subprocess.run(
            [sys.executable, "-c", TZ_PROBE, mode], capture_output=True, text=True, timeout=60, env=environment
        )
        for mode in ("tzdata", "block")
    }
    assert found["tzdata"].returncode == 0, found["tzdata"].stderr
    assert found["tzdata"].stdout.strip() == "next 2025-07-01 07:00:00+00:00"
    assert found["block"].returncode == 0, found["block"].stderr
    assert "no IANA time zone database" in found["block"].stdout
    assert "pip install tzdata" in found["block"].stdout


def test_longest_name_and_the_cron_grammar_users_write() -> None:
    """Names of days and months in any case, ranges, lists, steps, L, 5L, MON#2, 7 for Sunday, extra spaces."""
    assert define_schedule(name="x" * 63, workflow="w", every="1m").name == "x" * 63
    for line in (
        "0 9 * * mon-fri",
        "*/15 8-18 * JAN,jul * ",
        "0 0 L * *",
        "0 0 LW * *",
        "0 0 * * 5L",
        "0 0 * * MON#2",
        "0 0 * * 7",
        "5,35 */6 1-15/2 */3 SUN",
    ):
        assert define_schedule(name="ok", workflow="w", cron=line).cron == " ".join(line.split())


def test_cron_extensions_fire_when_they_say() -> None:
    last_friday = cron("0 12 * * 5L")
    assert fires(last_friday, Z(2025, 1, 1), Z(2025, 3, 31)) == [
        Z(2025, 1, 31, 12),
        Z(2025, 2, 28, 12),
        Z(2025, 3, 28, 12),
    ]
    second_monday = cron("0 12 * * MON#2")
    assert fires(second_monday, Z(2025, 1, 1), Z(2025, 2, 28)) == [Z(2025, 1, 13, 12), Z(2025, 2, 10, 12)]
    last_day = cron("30 23 L * *")
    assert fires(last_day, Z(2024, 2, 1), Z(2024, 4, 1)) == [Z(2024, 2, 29, 23, 30), Z(2024, 3, 31, 23, 30)]
    # day-of-month and day-of-week both restricted: either matches (cron's rule)
    either = cron("0 0 13 * FRI")
    assert fires(either, Z(2025, 6, 1), Z(2025, 6, 16)) == [Z(2025, 6, 6), Z(2025, 6, 13)]


# ------------------------------------------------------------------------------ fire times and DST


# (line, timezone, after, until, the fires in (after, until])
# fmt: off
CRON_CASES = [
    # spring forward: 02:30 does not exist on 2025-03-30 in Paris, 2025-03-09 in New York
    ("30 2 * * *", "Europe/Paris", Z(2025, 3, 29), Z(2025, 4, 1, 12), [Z(2025, 3, 29, 1, 30), Z(2025, 3, 31, 0, 30), Z(2025, 4, 1, 0, 30)]),
    ("30 2 * * *", "America/New_York", Z(2025, 3, 8), Z(2025, 3, 11, 12), [Z(2025, 3, 8, 7, 30), Z(2025, 3, 10, 6, 30), Z(2025, 3, 11, 6, 30)]),
    # fall back: 02:30 happens twice on 2025-10-26 in Paris, 01:30 on 2025-11-02 in New York: the first one fires
    ("30 2 * * *", "Europe/Paris", Z(2025, 10, 25), Z(2025, 10, 27, 12), [Z(2025, 10, 25, 0, 30), Z(2025, 10, 26, 0, 30), Z(2025, 10, 27, 1, 30)]),
    ("30 1 * * *", "America/New_York", Z(2025, 11, 1), Z(2025, 11, 3, 12), [Z(2025, 11, 1, 5, 30), Z(2025, 11, 2, 5, 30), Z(2025, 11, 3, 6, 30)]),
    # 01:30 is an ordinary time in Paris on its fall-back day; 01:30 in New York on its spring-forward day too
    ("30 1 * * *", "Europe/Paris", Z(2025, 10, 25, 12), Z(2025, 10, 26, 12), [Z(2025, 10, 25, 23, 30)]),
    ("30 1 * * *", "America/New_York", Z(2025, 3, 9), Z(2025, 3, 9, 12), [Z(2025, 3, 9, 6, 30)]),
    # hourly: the missing hour gives no fire, the repeated hour one
    ("0 * * * *", "America/New_York", Z(2025, 3, 9, 4, 30), Z(2025, 3, 9, 8), [Z(2025, 3, 9, 5), Z(2025, 3, 9, 6), Z(2025, 3, 9, 7), Z(2025, 3, 9, 8)]),
    ("0 * * * *", "America/New_York", Z(2025, 11, 2, 3, 30), Z(2025, 11, 2, 8), [Z(2025, 11, 2, 4), Z(2025, 11, 2, 5), Z(2025, 11, 2, 7), Z(2025, 11, 2, 8)]),
    ("*/20 2 * * *", "Europe/Paris", Z(2025, 10, 25, 23), Z(2025, 10, 26, 3), [Z(2025, 10, 26, 0), Z(2025, 10, 26, 0, 20), Z(2025, 10, 26, 0, 40)]),
    # a span ending inside the repeated hour (01:15 EST, the second 01:15) still holds the first hour's fires
    ("*/20 1 * * *", "America/New_York", Z(2025, 11, 2, 4, 30), Z(2025, 11, 2, 6, 15), [Z(2025, 11, 2, 5), Z(2025, 11, 2, 5, 20), Z(2025, 11, 2, 5, 40)]),
    # year boundary
    ("0 0 1 1 *", "UTC", Z(2025, 12, 31), Z(2027, 1, 1), [Z(2026, 1, 1), Z(2027, 1, 1)]),
    ("59 23 31 12 *", "UTC", Z(2025, 6, 1), Z(2026, 1, 1), [Z(2025, 12, 31, 23, 59)]),
    ("*/30 * * * *", "UTC", Z(2025, 12, 31, 23), Z(2026, 1, 1, 1), [Z(2025, 12, 31, 23, 30), Z(2026, 1, 1), Z(2026, 1, 1, 0, 30), Z(2026, 1, 1, 1)]),
    ("0 0 1 1 *", "Pacific/Auckland", Z(2025, 12, 1), Z(2026, 2, 1), [Z(2025, 12, 31, 11)]),
    ("0 9 1 JAN *", "Asia/Tokyo", Z(2025, 12, 1), Z(2026, 2, 1), [Z(2026, 1, 1, 0)]),
    ("0 18 31 DEC *", "America/New_York", Z(2025, 12, 1), Z(2026, 2, 1), [Z(2025, 12, 31, 23)]),
    ("0 0 * * *", "America/Los_Angeles", Z(2025, 12, 31, 7), Z(2026, 1, 2, 9), [Z(2025, 12, 31, 8), Z(2026, 1, 1, 8), Z(2026, 1, 2, 8)]),
]
# fmt: on


@pytest.mark.parametrize(("line", "timezone", "after", "until", "expected"), CRON_CASES)
def test_cron_fires(line: str, timezone: str, after: datetime, until: datetime, expected: list[datetime]) -> None:
    assert fires(cron(line, timezone), after, until) == expected


def test_weekday_nine_oclock_in_paris_over_weeks_that_cross_dst_changes() -> None:
    report = define_schedule(
        name="morning_report", workflow="morning_report", cron="0 9 * * MON-FRI", timezone="Europe/Paris"
    )
    # spring: Wednesday 2025-03-26 to Wednesday 2025-04-02; Paris moves to CEST on Sunday 2025-03-30
    assert fires(report, Z(2025, 3, 26), Z(2025, 4, 2)) == [
        Z(2025, 3, 26, 8), Z(2025, 3, 27, 8), Z(2025, 3, 28, 8), Z(2025, 3, 31, 7), Z(2025, 4, 1, 7),
    ]  # fmt: skip
    # autumn: Wednesday 2025-10-22 to Wednesday 2025-10-29; back to CET on Sunday 2025-10-26
    assert fires(report, Z(2025, 10, 22), Z(2025, 10, 29)) == [
        Z(2025, 10, 22, 7), Z(2025, 10, 23, 7), Z(2025, 10, 24, 7), Z(2025, 10, 27, 8), Z(2025, 10, 28, 8),
    ]  # fmt: skip


def test_every_fires_at_whole_multiples_since_the_epoch() -> None:
    seven = every("7m")
    # 2025-01-01T00:00Z is 20,089 days = 28,928,160 minutes after the epoch = 7 × 4,132,594 + 2: the grid is :05, :12, ...
    assert fires(seven, Z(2025, 1, 1), Z(2025, 1, 1, 0, 20)) == [
        Z(2025, 1, 1, 0, 5),
        Z(2025, 1, 1, 0, 12),
        Z(2025, 1, 1, 0, 19),
    ]
    daily = every("1d")
    assert fires(daily, Z(2025, 12, 30, 12), Z(2026, 1, 2)) == [Z(2025, 12, 31), Z(2026, 1, 1), Z(2026, 1, 2)]
    assert every(3600).next_fire(Z(2025, 3, 30, 0, 59, 59, 999999)) == Z(2025, 3, 30, 1)
    assert every(timedelta(hours=1)).next_fire(Z(2025, 3, 30, 1)) == Z(2025, 3, 30, 2)  # strictly after


def test_fires_keeps_the_newest_under_a_limit_and_the_end_of_time() -> None:
    minutely = cron("* * * * *")
    newest = minutely.fires(Z(2020, 1, 1), Z(2025, 1, 1), limit=3)
    assert newest == [Z(2024, 12, 31, 23, 58), Z(2024, 12, 31, 23, 59), Z(2025, 1, 1)]
    assert every("1m").fires(Z(2020, 1, 1), Z(2025, 1, 1), limit=3) == newest
    assert minutely.fires(Z(2025, 1, 1), Z(2025, 1, 1)) == []
    assert minutely.next_fire(Z(9998, 12, 31, 23, 59)) is None  # nothing from year 9999 on
    assert every("1d").next_fire(Z(9998, 12, 31)) is None


def test_execution_names_carry_the_fire_time_to_the_second() -> None:
    assert execution_name("morning_report", Z(2025, 3, 31, 7)) == "morning_report-20250331T070000Z"
    paris = datetime(2025, 3, 31, 9, 0, 5, 250, tzinfo=ZoneInfo("Europe/Paris"))
    assert execution_name("x", paris) == "x-20250331T070005Z"


# ------------------------------------------------------------------------------ decisions


def simulate(
    schedule: Schedule, state: ScheduleState, until: datetime, *, running: set[str] | None = None
) -> tuple[list[str], ScheduleState]:
    """Drive a schedule as a running runtime would: wake at each fire, decide, start what it says.

    `running`: execution names that stay IN_PROGRESS (all others end at once)."""
    running = running or set()
    started: list[str] = []
    wake = schedule.next_fire(state.handled_until)
    while wake is not None and wake <= until:
        last = state.last_execution_id
        decision = decide_due(
            schedule, state, wake, previous_in_progress=last is not None and last.split("/")[1] in running
        )
        state = decision.state
        for start in decision.starts:
            assert start.input == start.fire_time
            assert start.workflow == schedule.workflow
            started.append(start.execution_name)
            state = state.started(f"{start.workflow}/{start.execution_name}")
        assert decision.wake_at is None or decision.wake_at > wake
        wake = decision.wake_at
    return started, state


def test_a_week_of_weekday_reports_starts_the_expected_executions() -> None:
    report = define_schedule(
        name="morning_report", workflow="morning_report", cron="0 9 * * MON-FRI", timezone="Europe/Paris"
    )
    started, state = simulate(report, ScheduleState.new(Z(2025, 3, 26)), Z(2025, 4, 2))
    assert started == [
        "morning_report-20250326T080000Z",
        "morning_report-20250327T080000Z",
        "morning_report-20250328T080000Z",
        "morning_report-20250331T070000Z",
        "morning_report-20250401T070000Z",
    ]
    assert state.last_fire == Z(2025, 4, 1, 7)
    assert state.last_execution_id == "morning_report/morning_report-20250401T070000Z"
    info = schedule_info(report, state)
    assert info.next_fire == Z(2025, 4, 2, 7)
    assert info.paused is False
    assert info.skipped == 0
    assert isinstance(info, ev.ScheduleInfo)


def test_a_new_schedule_has_no_missed_fires() -> None:
    """A fire at or before the moment the runtime first saw the schedule never starts, catch-up or not."""
    hourly = cron("0 * * * *", catchup="all")
    state = ScheduleState.new(Z(2025, 1, 1, 10))
    decision = decide_due(hourly, state, Z(2025, 1, 1, 10), previous_in_progress=False, catching_up=True)
    assert decision.starts == ()
    assert decision.wake_at == Z(2025, 1, 1, 11)
    assert decide_due(hourly, state, Z(2025, 1, 1, 10, 59), previous_in_progress=False).starts == ()


@pytest.mark.parametrize(
    ("catchup", "expected"),
    [
        ("latest", ["job-20250101T130000Z"]),
        ("all", ["job-20250101T110000Z", "job-20250101T120000Z", "job-20250101T130000Z"]),
        ("none", []),
    ],
)
def test_catch_up_after_three_missed_fires(catchup: str, expected: list[str]) -> None:
    """The runtime stopped after handling 10:00 and starts again at 13:20: 11:00, 12:00 and 13:00 were missed."""
    hourly = cron("0 * * * *", catchup=catchup)
    state = ScheduleState.new(Z(2025, 1, 1, 9, 30))
    _, state = simulate(hourly, state, Z(2025, 1, 1, 10, 30))
    assert state.last_fire == Z(2025, 1, 1, 10)
    decision = decide_due(hourly, state, Z(2025, 1, 1, 13, 20), previous_in_progress=False, catching_up=True)
    assert [start.execution_name for start in decision.starts] == expected
    assert decision.wake_at == Z(2025, 1, 1, 14)
    # decided once, never again: the same fires are not started by a second decision
    again = decide_due(hourly, decision.state, Z(2025, 1, 1, 13, 21), previous_in_progress=False, catching_up=True)
    assert again.starts == ()


def test_a_fire_just_before_a_restart_was_missed_too() -> None:
    """Half a minute after 13:00 a running runtime starts the 13:00 fire, but one that was down at 13:00 and
    starts at 13:00:30 follows catchup="none"."""
    hourly = cron("0 * * * *", catchup="none")
    state = ScheduleState.new(Z(2025, 1, 1, 12, 30))
    restart = decide_due(hourly, state, Z(2025, 1, 1, 13, 0, 30), previous_in_progress=False, catching_up=True)
    assert restart.starts == ()
    assert restart.state.handled_until == Z(2025, 1, 1, 13, 0, 30)
    running = decide_due(hourly, state, Z(2025, 1, 1, 13, 0, 30), previous_in_progress=False)
    assert [start.execution_name for start in running.starts] == ["job-20250101T130000Z"]


def test_catch_up_all_starts_at_most_the_newest_thousand_oldest_first() -> None:
    minutely = cron("* * * * *", catchup="all")
    state = ScheduleState.new(Z(2025, 1, 1))
    decision = decide_due(minutely, state, Z(2025, 1, 10), previous_in_progress=False, catching_up=True)
    assert len(decision.starts) == MAX_CATCHUP == 1000
    assert decision.starts[0].fire_time == Z(2025, 1, 10) - timedelta(minutes=999)
    assert decision.starts[-1].fire_time == Z(2025, 1, 10)
    times = [start.fire_time for start in decision.starts]
    assert times == sorted(times)


def test_a_late_timer_on_a_running_runtime() -> None:
    """A fire acted on within LATE_FIRE_GRACE is on time whatever `catchup` says; a fire found later (the
    machine slept) was missed and follows `catchup`."""
    daily = cron("0 9 * * *", catchup="none")
    state = ScheduleState.new(Z(2025, 1, 1))
    on_time = decide_due(daily, state, Z(2025, 1, 1, 9) + LATE_FIRE_GRACE, previous_in_progress=False)
    assert [start.fire_time for start in on_time.starts] == [Z(2025, 1, 1, 9)]
    slept = decide_due(
        daily, state, Z(2025, 1, 1, 9) + LATE_FIRE_GRACE + timedelta(seconds=1), previous_in_progress=False
    )
    assert slept.starts == ()
    latest = cron("0 9 * * *")
    assert [s.fire_time for s in decide_due(latest, state, Z(2025, 1, 1, 12), previous_in_progress=False).starts] == [
        Z(2025, 1, 1, 9)
    ]


def test_overlap_skip_counts_the_fires_it_skips_and_allow_starts_them() -> None:
    """A long-running execution (started at 10:00, still running) makes the 11:00 and 12:00 fires start nothing."""
    state = ScheduleState.new(Z(2025, 1, 1, 9, 30))
    skipping = cron("0 * * * *")
    started, after = simulate(skipping, state, Z(2025, 1, 1, 12, 30), running={"job-20250101T100000Z"})
    assert started == ["job-20250101T100000Z"]
    assert after.skipped == 2
    assert after.last_fire == Z(2025, 1, 1, 10)
    assert schedule_info(skipping, after).skipped == 2
    allowing = cron("0 * * * *", overlap="allow")
    started, after = simulate(allowing, state, Z(2025, 1, 1, 12, 30), running={"job-20250101T100000Z"})
    assert started == ["job-20250101T100000Z", "job-20250101T110000Z", "job-20250101T120000Z"]
    assert after.skipped == 0


def test_catch_up_fires_do_not_skip_each_other_but_a_running_previous_skips_them_all() -> None:
    hourly = cron("0 * * * *", catchup="all")
    state = ScheduleState.new(Z(2025, 1, 1, 9, 30))
    free = decide_due(hourly, state, Z(2025, 1, 1, 12, 30), previous_in_progress=False, catching_up=True)
    assert len(free.starts) == 3
    busy = decide_due(hourly, state, Z(2025, 1, 1, 12, 30), previous_in_progress=True, catching_up=True)
    assert busy.starts == ()
    assert busy.skipped == (Z(2025, 1, 1, 10), Z(2025, 1, 1, 11), Z(2025, 1, 1, 12))
    assert busy.state.skipped == 3


def test_pause_and_resume_never_catch_up_the_paused_span() -> None:
    hourly = cron("0 * * * *", catchup="all")
    state = ScheduleState.new(Z(2025, 1, 1, 9, 30))
    started, state = simulate(hourly, state, Z(2025, 1, 1, 10, 30))
    paused = pause(state)
    assert schedule_info(hourly, paused).next_fire is None
    assert schedule_info(hourly, paused).paused
    while_paused = decide_due(hourly, paused, Z(2025, 1, 1, 13, 30), previous_in_progress=False)
    assert while_paused.starts == ()
    assert while_paused.wake_at is None
    resumed = resume(paused, Z(2025, 1, 1, 13, 30))
    assert resume(resumed, Z(2025, 1, 1, 14)) == resumed  # resuming a running schedule changes nothing
    assert schedule_info(hourly, resumed).next_fire == Z(2025, 1, 1, 14)
    after_restart = decide_due(hourly, resumed, Z(2025, 1, 1, 13, 31), previous_in_progress=False, catching_up=True)
    assert after_restart.starts == ()
    more, _ = simulate(hourly, resumed, Z(2025, 1, 1, 15, 30))
    assert started + more == ["job-20250101T100000Z", "job-20250101T140000Z", "job-20250101T150000Z"]


def test_trigger_starts_one_now_even_paused_and_twice_in_a_second_is_one_fire() -> None:
    daily = cron("0 9 * * *")
    state = pause(ScheduleState.new(Z(2025, 1, 1)))
    now = Z(2025, 1, 1, 15, 4, 5, 678000)
    first = decide_trigger(daily, state, now)
    [start] = first.starts
    assert (start.execution_name, start.input) == ("job-20250101T150405Z", Z(2025, 1, 1, 15, 4, 5))
    assert first.state.paused
    assert first.state.last_fire == Z(2025, 1, 1, 15, 4, 5)
    assert first.wake_at is None
    second = decide_trigger(daily, first.state, now + timedelta(milliseconds=300))
    assert second.starts[0].execution_name == start.execution_name  # the runtime answers already_running


def test_deliveries_from_outside_start_each_fire_once() -> None:
    """EventBridge Scheduler on AWS: a delivery carries its scheduled time; a repeat, a time that is not a
    fire, a fire from before the schedule was first seen or while paused starts nothing."""
    daily = cron("0 9 * * *", timezone="Europe/Paris")
    state = ScheduleState.new(Z(2025, 1, 1))
    first = decide_delivery(daily, state, Z(2025, 1, 1, 8), previous_in_progress=False)
    assert [s.execution_name for s in first.starts] == ["job-20250101T080000Z"]
    assert first.wake_at == Z(2025, 1, 2, 8)
    assert decide_delivery(daily, first.state, Z(2025, 1, 1, 8), previous_in_progress=False).starts == ()
    assert decide_delivery(daily, first.state, Z(2025, 1, 2, 8, 0, 30), previous_in_progress=False).starts == ()
    assert (
        decide_delivery(daily, ScheduleState.new(Z(2025, 1, 2)), Z(2025, 1, 1, 8), previous_in_progress=False).starts
        == ()
    )
    assert decide_delivery(daily, pause(first.state), Z(2025, 1, 2, 8), previous_in_progress=False).starts == ()
    busy = decide_delivery(daily, first.state, Z(2025, 1, 2, 8), previous_in_progress=True)
    assert busy.starts == ()
    assert busy.state.skipped == 1


def test_state_is_json_for_any_store() -> None:
    state = decide_due(
        cron("0 * * * *"), ScheduleState.new(Z(2025, 1, 1, 9, 30)), Z(2025, 1, 1, 10), previous_in_progress=False
    ).state
    state = state.started("job/job-20250101T100000Z")
    stored = json.dumps(state.model_dump(mode="json"))
    assert ScheduleState.model_validate(json.loads(stored)) == state
    info = schedule_info(every("15m"), state)
    assert ev.ScheduleInfo.model_validate_json(info.model_dump_json()) == info
    assert info.every == timedelta(minutes=15)
    assert info.cron is None
    assert info.timezone == "UTC"


def test_the_rules_refuse_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="aware datetime"):
        cron("0 * * * *").next_fire(datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="aware datetime"):
        ScheduleState.new(datetime(2025, 1, 1))


# ------------------------------------------------------------------------------ properties

ZONES = [
    "UTC",
    "Europe/Paris",
    "America/New_York",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "Pacific/Auckland",
    "America/Sao_Paulo",
]
cron_lines = st.builds(
    lambda *fields: " ".join(fields),
    st.sampled_from(["0", "*/15", "5,35", "10-20/5", "*", "59"]),
    st.sampled_from(["*", "9", "1-3", "*/6", "2", "0"]),
    st.sampled_from(["*", "1", "L", "15", "*/10", "31"]),
    st.sampled_from(["*", "JAN-MAR", "*/2", "3,10,11", "DEC"]),
    st.sampled_from(["*", "MON-FRI", "SUN", "5L", "MON#2", "0,6"]),
)
instants = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 12, 31)).map(
    lambda d: d.replace(tzinfo=UTC)
)


@given(line=cron_lines, zone=st.sampled_from(ZONES), after=instants, days=st.integers(1, 40))
def test_cron_fires_increase_match_the_line_and_agree_with_next_fire(
    line: str, zone: str, after: datetime, days: int
) -> None:
    schedule = cron(line, zone)
    until = after + timedelta(days=days)
    found = schedule.fires(after, until, limit=300)
    assert all(after < fire <= until for fire in found)
    assert all(earlier < later for earlier, later in itertools.pairwise(found))
    if len(found) < 300:
        assert chain(schedule, after, until) == found
    for fire in found[:20]:
        wall = fire.astimezone(ZoneInfo(zone)).replace(tzinfo=None)
        assert next(CronSim(line, wall - timedelta(seconds=1))) == wall  # the local time matches the line
        assert wall.replace(tzinfo=ZoneInfo(zone), fold=0).astimezone(UTC) == fire  # its first occurrence


@given(seconds=st.integers(1, 10 * 86400), after=instants, count=st.integers(1, 50))
def test_every_fires_are_consecutive_multiples(seconds: int, after: datetime, count: int) -> None:
    interval = timedelta(seconds=seconds)
    found = every(interval).fires(after, after + count * interval)
    assert len(found) == count
    assert all((fire - EPOCH) % interval == timedelta(0) for fire in found)
    assert all(later - earlier == interval for earlier, later in itertools.pairwise(found))


operations = st.lists(
    st.tuples(
        st.sampled_from(["advance", "restart", "pause", "resume", "trigger", "finish", "deliver"]),
        st.integers(1, 6 * 3600),
    ),
    max_size=25,
)


@example(  # the paused span holds fires that must never start
    line="0 * * * *",
    zone="UTC",
    overlap="allow",
    catchup="all",
    start=Z(2025, 12, 31, 20),
    steps=[("advance", 3600), ("pause", 1), ("advance", 3 * 3600), ("resume", 1), ("advance", 3600)],
)
@given(
    line=st.sampled_from(["*/20 * * * *", "0 * * * *", "30 1,2 * * *"]),
    zone=st.sampled_from(["UTC", "America/New_York", "Europe/Paris"]),
    overlap=st.sampled_from(["skip", "allow"]),
    catchup=st.sampled_from(["latest", "all", "none"]),
    start=st.sampled_from([Z(2025, 3, 8, 20), Z(2025, 10, 25, 20), Z(2025, 12, 31, 20)]),
    steps=operations,
)
def test_decisions_never_start_a_fire_twice_early_or_while_paused(
    line: str, zone: str, overlap: str, catchup: str, start: datetime, steps: list[tuple[str, int]]
) -> None:
    schedule = cron(line, zone, overlap=overlap, catchup=catchup)
    now = start
    state = ScheduleState.new(now)
    running = False
    started: list[datetime] = []
    skipped = 0
    paused_spans: list[tuple[datetime, datetime]] = []
    paused_at: datetime | None = None

    def apply(decision: Decision) -> ScheduleState:
        nonlocal running, skipped
        skipped += len(decision.skipped)
        new = decision.state
        for begun in decision.starts:
            started.append(begun.fire_time)
            new = new.started(f"job/{begun.execution_name}")
            running = True
        return new

    for operation, seconds in steps:
        if operation in ("advance", "restart"):
            # a running runtime wakes at each fire; a stopped one only when it starts again
            target = now + timedelta(seconds=seconds)
            wake = schedule.next_fire(state.handled_until) if operation == "advance" and not state.paused else None
            while wake is not None and wake <= target:
                now = wake
                decision = decide_due(schedule, state, now, previous_in_progress=running)
                state = apply(decision)
                assert decision.wake_at is None or decision.wake_at > now  # time moves on
                wake = decision.wake_at
            now = target
            state = apply(
                decide_due(schedule, state, now, previous_in_progress=running, catching_up=operation == "restart")
            )
        elif operation == "deliver":
            fire = schedule.next_fire(state.handled_until)
            if fire is not None and not state.paused:
                now = max(now, fire)
                state = apply(decide_delivery(schedule, state, fire, previous_in_progress=running))
        elif operation == "pause" and not state.paused:
            state, paused_at = pause(state), now
        elif operation == "resume" and state.paused:
            assert paused_at is not None
            paused_spans.append((paused_at, now))
            state = resume(state, now)
        elif operation == "finish":
            running = False
        elif operation == "trigger":
            trigger = decide_trigger(schedule, state, now)
            assert trigger.starts[0].fire_time == now.replace(microsecond=0)
            state = trigger.state.started(f"job/{trigger.starts[0].execution_name}")
            running = True

    assert all(fire > start for fire in started)  # never before the runtime first saw it
    assert len(set(started)) == len(started)
    assert started == sorted(started)
    assert not [fire for fire in started for begin, end in paused_spans if begin < fire <= end]
    assert state.skipped == skipped
    if overlap == "allow":
        assert skipped == 0


# ------------------------------------------------------------------------------ exported and imported as code


REPORT = """
@ev.schedule("0 9 * * MON-FRI", timezone="Europe/Paris", catchup="all")
@ev.workflow
async def morning_report(fired_at: datetime) -> str:
    return await headline(fired_at.date().isoformat())
"""
HEADLINE = "def headline(day: str) -> str:\n    return f'report for {day}'\n"


def test_a_plain_python_module_with_a_schedule_imports_and_exports_as_ordinary_code(tmp_path: Path) -> None:
    """The decorator is ordinary code: a .py module keeps its schedule, and so does a notebook's `#| export`
    cell through the exporter (the generated package, imported by a clean interpreter, and eventual.json)."""
    from exporter import export_notebook
    from tests.test_exporter import C, write_notebook

    header = 'from datetime import datetime\n\nimport eventual_nb as ev\n\nev.Service("reports")\n\n'
    (tmp_path / "reports.py").write_text(header + "@ev.activity\n" + HEADLINE + REPORT)
    probe = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import eventual_nb as ev, reports; "
        "print(json.dumps(ev.Service('reports').spec()['schedules']))"
    )
    expected = [{**MORNING_REPORT, "catchup": "all"}]
    plain = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout) == expected

    notebook = write_notebook(
        tmp_path / "notebook" / "reports.ipynb",
        [
            C("#| export\nfrom datetime import datetime\n\n%eventual service reports", "service"),
            C("%%activity\n" + HEADLINE, "headline"),
            C("#| export\n" + REPORT, "report"),
        ],
    )
    out = export_notebook(notebook, tmp_path / "out")
    assert json.loads((out / "eventual.json").read_text())["service"]["schedules"] == expected
    assert '@ev.schedule("0 9 * * MON-FRI"' in (out / "reports" / "__init__.py").read_text()
    exported = subprocess.run([sys.executable, "-I", "-c", probe, str(out)], capture_output=True, text=True, timeout=60)
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout) == expected
