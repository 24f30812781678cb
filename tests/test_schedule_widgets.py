"""Schedules in the notebook: `%%workflow --schedule` in a real kernel, and the `%eventual schedules` table
(its rows, next fire, last execution and buttons) on the kernel's runtime host.

The table tests play the widget pump themselves (`table.refresh()`) and the person (`button.click()`), on a
TestEnvironment host, whose virtual clock makes the next fire and "in 8 h" exact; the kernel test shows the
same table live in a real kernel, with a click on Trigger sent as a frontend would."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import eventual_nb as ev
from eventual_nb.schedules import next_fire_text, until_text
from kernel_ext.host import RuntimeHost
from kernel_ext.widgets import SchedulesTable, change_counter
from tests.kernel_support import KernelSession

SERVICE = ev.Service("schedule-widgets")
START = datetime(2025, 3, 27, tzinfo=UTC)


@ev.schedule("0 9 * * MON-FRI", timezone="Europe/Paris")
@ev.workflow
async def standup(fired_at: datetime) -> str:
    return fired_at.isoformat()


def test_until_text_reads_like_a_person_says_it() -> None:
    assert until_text(timedelta(hours=3, minutes=12)) == "in 3 h 12 min"
    assert until_text(timedelta(hours=3, minutes=12, seconds=40)) == "in 3 h 12 min"
    assert until_text(timedelta(hours=8)) == "in 8 h"
    assert until_text(timedelta(seconds=44.2)) == "in 45 s"
    assert until_text(timedelta(days=2, hours=5, minutes=1)) == "in 2 d 5 h"
    assert until_text(timedelta(minutes=5)) == "in 5 min"
    assert until_text(timedelta(0)) == until_text(timedelta(seconds=-3)) == "due now"


@pytest.fixture
def host() -> Iterator[RuntimeHost]:
    ev.Service(SERVICE.name)
    host = RuntimeHost()
    host.use_test(START, service=SERVICE.name)  # not the schedules other test modules define
    try:
        yield host
    finally:
        host.close()


def text(widget: object) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", getattr(widget, "value", "")))


def refreshed(table: SchedulesTable, until: str, widget: str = "rows") -> str:
    """Refresh as the pump does until the table (its rows, or another widget) shows `until`."""
    deadline = time.monotonic() + 30
    while True:
        table.seen = ()  # as a commit would: read again
        table.refresh()
        shown = (
            " | ".join(text(row.children[0]) for row in table.rows.children)
            if widget == "rows"
            else text(getattr(table, widget))
        )
        if until in shown:
            return shown
        assert time.monotonic() < deadline, f"the table never showed {until!r}; it shows {shown!r}"
        time.sleep(0.02)


def test_the_table_shows_each_schedule_its_next_fire_and_its_last_run(host: RuntimeHost) -> None:
    table = SchedulesTable(host, host.runtime)
    table.refresh()
    (row,) = table.rows.children
    shown = text(row.children[0])
    assert "standup" in shown
    assert "cron '0 9 * * MON-FRI' (Europe/Paris)" in shown
    info = host.call(host.runtime.list_schedules())[0]
    assert next_fire_text(info, START) in shown
    assert "(in 8 h)" in shown
    assert "running" in shown
    assert "last: none yet" in shown
    host.call(host.runtime.advance("1d"))
    shown = refreshed(table, "SUCCEEDED")
    assert "standup/standup-20250327T080000Z" in shown
    assert "(in 8 h)" in shown  # Friday 08:00Z, from Friday 00:00Z


def test_the_buttons_pause_resume_and_trigger(host: RuntimeHost) -> None:
    table = SchedulesTable(host, host.runtime)
    table.refresh()
    row = table._rows["standup"]
    assert row.toggle.description == "Pause"
    row.toggle.click()
    refreshed(table, "paused standup", "message")
    assert "next: paused" in refreshed(table, "paused")
    assert row.toggle.description == "Resume"
    row.trigger.click()  # paused or not
    said = refreshed(table, "triggered standup", "message")
    assert "started standup/standup-20250327T000000Z" in said
    row.toggle.click()
    refreshed(table, "resumed standup", "message")
    assert "running" in refreshed(table, "(in 8 h)")
    assert row.toggle.description == "Pause"
    assert [i.paused for i in host.call(host.runtime.list_schedules())] == [False]


def test_workflow_schedule_flags_and_the_live_table_in_a_kernel(tmp_path: Path) -> None:
    kernel = KernelSession(tmp_path)
    try:
        kernel.execute("%load_ext eventual_nb\nfrom datetime import datetime")
        kernel.execute("%eventual service kernel-schedules")
        kernel.execute("%eventual runtime test --start 2025-03-27T00:00:00+00:00")
        said = kernel.run(
            '%%workflow --schedule "30 7 * * *" --timezone Europe/Paris\n'
            "async def digest(fired_at: datetime) -> str:\n    return fired_at.isoformat()"
        )
        assert "workflow 'digest' in service 'kernel-schedules'" in said
        assert "schedule 'digest': cron '30 7 * * *' (Europe/Paris)" in said
        before = len(kernel.comm_opens())
        kernel.execute("%eventual schedules")
        opens = dict(list(kernel.comm_opens().items())[before:])
        (info,) = [comm for comm, state in opens.items() if "eventual-schedule-info" in state.get("_dom_classes", [])]
        (trigger,) = [comm for comm, s in opens.items() if "eventual-schedule-trigger" in s.get("_dom_classes", [])]
        kernel.execute("%eventual advance 1d")
        kernel.wait_for(
            lambda m: (
                m["msg_type"] == "comm_msg"
                and m["content"]["comm_id"] == info
                and "digest/digest-20250327T063000Z" in m["content"]["data"].get("state", {}).get("value", "")
            ),
            60,
            "the row to show the fire of 07:30 Paris",
        )
        kernel.send_comm(trigger, {"method": "custom", "content": {"event": "click"}})
        kernel.wait_for(
            lambda m: (
                m["msg_type"] == "comm_msg"
                and "triggered digest: started digest/digest-20250328T000000Z"
                in m["content"]["data"].get("state", {}).get("value", "")
            ),
            60,
            "the table to say what the trigger started",
        )
        # a bad line is the magic's usage error, naming the field, and leaves the definitions as they were;
        # defining the workflow again without the flag removes its schedule
        bad = kernel.client.execute(
            '%%workflow --schedule "0 25 * * *"\nasync def digest(fired_at: datetime) -> str: ...'
        )
        kernel.wait_idle(bad)
        said = kernel.stdout_of(bad)  # IPython prints a UsageError as one line, no traceback
        assert "UsageError: %%workflow: invalid cron line '0 25 * * *'" in said
        assert "the hour field '25' (field 2) is not valid" in said
        assert "digest" in kernel.run("print([i.name for i in await ev.current_runtime().list_schedules()])")
        kernel.execute("%%workflow\nasync def digest(fired_at: datetime) -> str:\n    return 'plain'")
        assert kernel.run("print(await ev.current_runtime().list_schedules())").strip() == "[]"
    finally:
        kernel.close()


def test_reading_the_schedules_of_a_local_runtime_is_not_a_change_the_table_refreshes_for(tmp_path: Path) -> None:
    """The table refreshes when the runtime commits something; listing schedules must not count as a commit,
    or each refresh would cause the next one (a busy widget thread and a comm message every 100 ms)."""
    host = RuntimeHost()
    ev.Service(SERVICE.name)
    host.use_local(tmp_path / "widgets.db")
    try:
        pokes: list[int] = []
        host.runtime.add_commit_listener(lambda: pokes.append(1))
        table = SchedulesTable(host, host.runtime)
        table.refresh()  # reads the schedules (the runtime stores their states on its first look)
        counter, poked = change_counter(host.runtime), len(pokes)
        for _ in range(3):
            host.call(host.runtime.list_schedules())
        assert (change_counter(host.runtime), len(pokes)) == (counter, poked)
        assert "standup" in text(table.rows.children[0].children[0])
    finally:
        host.close()
