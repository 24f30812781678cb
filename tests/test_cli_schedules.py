"""`eventual-nb schedules`, `eventual-nb schedule pause|resume|trigger NAME` and the `/_eventual/schedules`
routes behind them, against a real `eventual-nb serve` of tests/fixtures/schedule_service.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

import eventual_nb as ev
from tests.test_cli_verbs import Server, start_server

FIXTURE = Path(__file__).parent / "fixtures" / "schedule_service.py"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(FIXTURE, tmp_path_factory.mktemp("schedules") / "state.db")
    try:
        yield running
    finally:
        running.process.kill()
        running.process.wait()


def schedules_of(server: Server) -> dict[str, dict]:
    return {item["name"]: item for item in server.json("schedules")}


def test_schedules_lists_spec_next_fire_and_state(server: Server) -> None:
    listed = schedules_of(server)
    assert set(listed) == {"leap-report", "monthly_close"}
    monthly = listed["monthly_close"]
    assert (monthly["workflow"], monthly["cron"], monthly["timezone"], monthly["catchup"]) == (
        "monthly_close",
        "0 6 1 * *",
        "Europe/Paris",
        "none",
    )
    next_fire = datetime.fromisoformat(monthly["next_fire"])
    assert next_fire > datetime.now(UTC)
    assert next_fire.utcoffset() is not None
    assert (monthly["paused"], monthly["last_fire"], monthly["last_execution_id"], monthly["skipped"]) == (
        False,
        None,
        None,
        0,
    )
    table = server.ok("schedules").stdout
    assert "leap-report" in table
    assert "cron '0 6 1 * *' (Europe/Paris)" in table
    assert " (in " in table  # the next fire in local time and how far away it is


def test_pause_resume_and_trigger_from_the_command_line(server: Server) -> None:
    assert server.json("schedule", "pause", "leap-report") == {"schedule": "leap-report", "paused": True}
    paused = schedules_of(server)["leap-report"]
    assert paused["paused"] is True
    assert paused["next_fire"] is None
    assert "paused" in server.ok("schedules").stdout
    resumed = server.ok("schedule", "resume", "leap-report")
    assert "resumed leap-report" in resumed.stdout
    assert schedules_of(server)["leap-report"]["paused"] is False

    triggered = server.json("schedule", "trigger", "monthly_close")
    execution_id = triggered["execution_id"]
    assert execution_id.startswith("monthly_close/monthly_close-")
    assert triggered["already_running"] is False
    done = server.wait_status(execution_id, "SUCCEEDED")
    fire = datetime.fromisoformat(done["input"])
    assert done["result"] == f"closed at {fire.isoformat()}"
    assert execution_id == f"monthly_close/monthly_close-{fire:%Y%m%dT%H%M%SZ}"
    info = schedules_of(server)["monthly_close"]
    assert (info["last_execution_id"], datetime.fromisoformat(info["last_fire"])) == (execution_id, fire)
    assert (
        "triggered leap-report: started leap_report/leap-report-"
        in server.ok("schedule", "trigger", "leap-report").stdout
    )


def test_unknown_schedules_and_bad_command_lines(server: Server) -> None:
    missing = server.cli("schedule", "pause", "nope", "--json")
    assert missing.returncode == 1
    assert "Traceback" not in missing.stderr
    assert missing.stderr.startswith("error: ScheduleNotFound: no schedule named 'nope'")
    assert "'leap-report'" in missing.stderr  # the ones there are
    assert json.loads(missing.stdout)["error"] == "ScheduleNotFound"
    assert json.loads(missing.stdout)["schedule"] == "nope"
    for args in (("schedule", "stop", "leap-report"), ("schedule", "pause"), ("schedule",)):
        usage = server.cli(*args)
        assert usage.returncode == 2, args
        assert "Traceback" not in usage.stderr


def test_the_routes_answer_404_for_unknown_schedules_and_are_in_the_internal_openapi(server: Server) -> None:
    for action in ("pause", "resume", "trigger"):
        answer = httpx.post(f"{server.url}/_eventual/schedules/nope/{action}", timeout=10)
        assert answer.status_code == 404
        assert answer.json()["error"] == "ScheduleNotFound"
        assert answer.json()["schedule"] == "nope"
    schema = httpx.get(f"{server.url}/_eventual/openapi.json", timeout=10).json()
    paths = schema["paths"]
    assert "get" in paths["/_eventual/schedules"]
    for action in ("pause", "resume", "trigger"):
        operation = paths[f"/_eventual/schedules/{{name}}/{action}"]["post"]
        assert "404" in operation["responses"], action


async def test_service_client_speaks_the_same_protocol(server: Server) -> None:
    async with ev.ServiceClient(server.url) as client:
        listed = {info.name: info for info in await client.list_schedules()}
        assert isinstance(listed["leap-report"], ev.ScheduleInfo)
        assert listed["leap-report"].next_fire is not None
        assert listed["leap-report"].next_fire.month == 2
        await client.pause_schedule("monthly_close")
        assert [info.paused for info in await client.list_schedules() if info.name == "monthly_close"] == [True]
        await client.resume_schedule("monthly_close")
        handle = await client.trigger_schedule("monthly_close")
        assert handle.workflow == "monthly_close"
        assert (await handle.result(timeout=30)).startswith("closed at ")
        with pytest.raises(ev.ScheduleNotFound) as caught:
            await client.trigger_schedule("nope")
        assert caught.value.schedule == "nope"
