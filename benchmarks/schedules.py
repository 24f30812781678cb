"""Schedule benchmark: 1,000 schedules firing every minute on one LocalRuntime over a simulated hour.

`local_schedules` defines 1,000 `@ev.schedule(every="1m")` schedules on one workflow (which returns at
once) and runs a LocalRuntime on a fresh SQLite file (`durability="full"`) under an `ev.testing.ManualClock`:
the clock is moved to each minute in turn, and each minute waits until all 1,000 executions of that fire
have succeeded (read from a second, read-only connection to the database, so waiting adds no work to the
runtime). 60 minutes are 60,000 fires. It reports:

* CPU per fire — process CPU time (all threads) from the first clock move to the last execution's end,
  divided by the fires: deciding the fire, starting its execution and running it to completion;
* wall time per simulated minute (the 1,000 fires of one minute, started and finished);
* the scheduler's wake-ups during the hour and how many of them found nothing to do (idle), per minute;
* the idle wake-ups while nothing is due: the clock stays put for a few real seconds after the hour, with
  every next fire a simulated minute away (target: none; the scheduler sleeps until its next due time).

Checks: every fire started exactly one execution (60,000 executions, each named after its minute), all
succeeded, and each schedule's state says its last fire was the hour's last minute. `--quick`: 100
schedules over 5 minutes.
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import eventual_nb as ev
from benchmarks.results import Result
from eventual_nb.testing import ManualClock

BENCHMARKS = ["local_schedules"]
SCHEDULES, MINUTES, IDLE_SECONDS = 1000, 60, 5.0
QUICK_SCHEDULES, QUICK_MINUTES, QUICK_IDLE_SECONDS = 100, 5, 1.0
#: the runtime first sees the schedules half a minute before the first fire
START = datetime(2025, 1, 6, 9, 0, 30, tzinfo=UTC)
#: real seconds one simulated minute may take before the benchmark gives up
MINUTE_TIMEOUT = 300.0

SERVICE = ev.Service("eventual-nb-benchmarks-schedules")


@ev.workflow
async def bench_tick(fired_at: datetime) -> None:
    return None


def define_schedules(count: int) -> None:
    """`count` every-minute schedules on `bench_tick` (redefining the workflow clears earlier ones)."""
    ev.Service(SERVICE.name)
    workflow = ev.workflow(name="bench_tick")(bench_tick.function)
    for index in range(count):
        ev.schedule(every="1m", name=f"tick-{index:04d}")(workflow)


def _succeeded(database: sqlite3.Connection) -> int:
    row = database.execute("SELECT COUNT(*) FROM executions WHERE status = 'SUCCEEDED'").fetchone()
    return int(row[0])


async def measure(count: int, minutes: int, idle_seconds: float, directory: Path) -> dict[str, Any]:
    define_schedules(count)
    clock = ManualClock(START)
    path = directory / "schedules.db"
    async with ev.LocalRuntime(path, service=SERVICE, clock=clock) as runtime:
        await runtime.list_schedules()  # the runtime has stored every schedule's state (first seen at START)
        reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            wakeups, idle = runtime.wakeups, runtime.idle_wakeups
            commits = runtime.commits
            cpu, wall = time.process_time(), time.perf_counter()
            first_minute = START.replace(second=0) + timedelta(minutes=1)
            for minute in range(minutes):
                clock.set(first_minute + timedelta(minutes=minute))
                deadline = time.monotonic() + MINUTE_TIMEOUT
                while _succeeded(reader) < count * (minute + 1):
                    if time.monotonic() > deadline:
                        raise AssertionError(f"minute {minute + 1}: the fires did not all run in {MINUTE_TIMEOUT} s")
                    await asyncio.sleep(0.005)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            hour_wakeups, hour_idle = runtime.wakeups - wakeups, runtime.idle_wakeups - idle
            hour_commits = runtime.commits - commits
            quiet_wakeups, quiet_idle = runtime.wakeups, runtime.idle_wakeups
            await asyncio.sleep(idle_seconds)  # every next fire is a simulated minute away and the clock stays
            quiet_wakeups, quiet_idle = runtime.wakeups - quiet_wakeups, runtime.idle_wakeups - quiet_idle
            fires = count * minutes
            stored = reader.execute("SELECT COUNT(*), COUNT(DISTINCT id) FROM executions").fetchone()
            last = first_minute + timedelta(minutes=minutes - 1)
            infos = await runtime.list_schedules()
        finally:
            reader.close()
    if tuple(stored) != (fires, fires):
        raise AssertionError(f"{fires} fires stored {stored[0]} executions ({stored[1]} distinct)")
    if len(infos) != count or any(info.last_fire != last for info in infos):
        raise AssertionError(f"not every schedule's last fire is {last.isoformat()}")
    return {
        "fires": fires,
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        "commits": hour_commits,
        "wakeups": hour_wakeups,
        "idle_wakeups": hour_idle,
        "quiet_wakeups": quiet_wakeups,
        "quiet_idle_wakeups": quiet_idle,
    }


def run(quick: bool, names: list[str], progress: Callable[[str], None] | None = None) -> list[Result]:
    if "local_schedules" not in names:
        return []
    (progress or (lambda _key: None))("local_schedules")
    count, minutes, idle_seconds = (
        (QUICK_SCHEDULES, QUICK_MINUTES, QUICK_IDLE_SECONDS) if quick else (SCHEDULES, MINUTES, IDLE_SECONDS)
    )
    with tempfile.TemporaryDirectory(prefix="eventual-bench-schedules-") as directory:
        measured = asyncio.run(measure(count, minutes, idle_seconds, Path(directory)))
    result = Result("local_schedules", "LocalRuntime: schedules firing every minute over a simulated hour")
    result.params = {"schedules": count, "minutes": minutes, "idle_seconds": idle_seconds}
    fires = measured["fires"]
    result.add("fires", "fires (executions started and run)", fires)
    result.add(
        "cpu_ms_per_fire",
        "CPU per fire (decide, start, run its execution)",
        1000 * measured["cpu_seconds"] / fires,
        "ms",
    )
    result.add("wall_seconds_per_minute", "wall time per simulated minute", measured["wall_seconds"] / minutes, "s")
    result.add("commits_per_minute", "commits per simulated minute", measured["commits"] / minutes)
    result.add("wakeups_per_minute", "scheduler wake-ups per simulated minute", measured["wakeups"] / minutes)
    idle_per_minute = measured["idle_wakeups"] / minutes
    result.add(
        "idle_wakeups_per_minute",
        "of which found nothing to do",
        idle_per_minute,
        target="0",
        met=idle_per_minute == 0,
    )
    quiet_per_minute = measured["quiet_idle_wakeups"] * 60 / idle_seconds
    result.add(
        "quiet_idle_wakeups_per_minute",
        f"idle wake-ups per real minute while nothing is due (over {idle_seconds:g} s)",
        quiet_per_minute,
        target="0",
        met=quiet_per_minute == 0,
    )
    result.add("quiet_wakeups", "wake-ups while nothing is due", measured["quiet_wakeups"])
    result.notes.append(
        "local_schedules: CPU is the process's (all threads) for the whole hour, over its fires; each fire's "
        "execution runs to completion before the next minute (a ManualClock moves minute by minute)"
    )
    return [result]
