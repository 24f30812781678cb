"""Schedules survive kill -9: a real server process (tests/fixtures/schedule_server.py, a LocalRuntime on a
frozen clock behind uvicorn) is SIGKILLed and restarted on the same database at chosen instants.

After three missed fires, `catchup="latest"` starts one, `"all"` three, `"none"` none; a restart starts
nothing it started before; and a server killed while a fire is due (just as it came up to act on it)
starts that fire exactly once across the kill and the next start (or never, with `"none"`).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

import eventual_nb as ev
from tests.server_support import wait_until_serving
from tests.test_crash import _free_port

FIXTURE = Path(__file__).parent / "fixtures" / "schedule_server.py"
#: first seen at 10:00:30; the schedule fires every minute on the minute
FIRST_SEEN = datetime(2025, 3, 27, 10, 0, 30, tzinfo=UTC)


def start_server(db: Path, port: int, clock: datetime, catchup: str, log: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, str(FIXTURE), str(db), str(port), clock.isoformat(), catchup],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    wait_until_serving(process, f"http://127.0.0.1:{port}", log)
    return process


def kill(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait()


async def fires(client: ev.ServiceClient) -> list[str]:
    page = await client.list_executions(workflow="tick", max_results=1000)
    return [execution.id.removeprefix("tick/tick-") for execution in page.executions]


async def handled_until(client: ev.ServiceClient, fire: datetime) -> None:
    """Wait until the server has dealt with every fire up to `fire` (its next fire is later)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        (info,) = await client.list_schedules()
        if info.next_fire is not None and info.next_fire > fire:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the server did not handle the fire of {fire.isoformat()}")


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("catchup", "after_three_missed"),
    [
        ("latest", ["20250327T100300Z"]),
        ("all", ["20250327T100100Z", "20250327T100200Z", "20250327T100300Z"]),
        ("none", []),
    ],
)
async def test_restart_after_three_missed_fires_catches_up_as_catchup_says_and_never_twice(
    catchup: str, after_three_missed: list[str], tmp_path: Path
) -> None:
    db, log, port = tmp_path / "state.db", tmp_path / "server.log", _free_port()
    url = f"http://127.0.0.1:{port}"
    at = FIRST_SEEN.replace

    server = start_server(db, port, FIRST_SEEN, catchup, log)  # the schedule is first seen at 10:00:30
    async with ev.ServiceClient(url) as client:
        (info,) = await client.list_schedules()
        assert info.next_fire == at(minute=1, second=0)
    kill(server)

    # down through 10:01, 10:02 and 10:03; back at 10:03:40
    server = start_server(db, port, at(minute=3, second=40), catchup, log)
    async with ev.ServiceClient(url) as client:
        await handled_until(client, at(minute=3, second=0))
        assert await fires(client) == after_three_missed
    kill(server)  # with the caught-up executions in progress

    server = start_server(db, port, at(minute=3, second=40), catchup, log)  # the same instant again
    async with ev.ServiceClient(url) as client:
        await handled_until(client, at(minute=3, second=0))
        assert await fires(client) == after_three_missed  # nothing started twice
        statuses = {e.status for e in (await client.list_executions(workflow="tick")).executions}
        assert statuses <= {ev.ExecutionStatus.IN_PROGRESS}
    # killed while the fire of 10:04 is due: the server comes up at 10:04:00 and is killed at once, before
    # or after it acted on the fire
    kill(server)
    server = start_server(db, port, at(minute=4, second=0), catchup, log)
    kill(server)
    server = start_server(db, port, at(minute=4, second=30), catchup, log)
    try:
        async with ev.ServiceClient(url) as client:
            await handled_until(client, at(minute=4, second=0))
            expected = after_three_missed + ([] if catchup == "none" else ["20250327T100400Z"])
            assert await fires(client) == expected
            (info,) = await client.list_schedules()
            assert info.last_execution_id == (f"tick/tick-{expected[-1]}" if expected else None)
    finally:
        kill(server)
