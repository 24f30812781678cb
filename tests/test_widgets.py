"""What the execution widget shows and does, on a real LocalRuntime in the kernel's runtime host.

The widgets are real ipywidgets objects (without a frontend their comm goes nowhere); the test thread plays
the widget pump (`view.refresh()`) and the person (`button.click()` runs the click handlers). The kernel
tests (test_kernel_ext.py) and the browser tests prove the same widgets live in Jupyter.
"""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

import eventual_nb as ev
from eventual_nb.runtime.base import ExecutionHandle
from kernel_ext.host import RuntimeHost
from kernel_ext.widgets import ExecutionsTable, ExecutionView, example_payload
from tests.svg_support import Item, items

# Another service, declared first, with an untyped signal of the same name: the form must use the signal of
# the execution's own service (it once took the first service's, so a str signal lost its plain-text box).
OTHER = ev.Service("widget-content-other")
ev.signal("note")

SERVICE = ev.Service("widget-content")

note = ev.signal("note", str)


@ev.signal_model
class Go(BaseModel):
    ok: bool = True


class Address(BaseModel):
    city: str
    zip: str = "00000"


@ev.signal_model
class Approval(BaseModel):
    approver: str
    amount: int = Field(ge=1)
    at: datetime
    address: Address
    tags: list[str] = []


class Opened(ev.Event):
    account: str


class Closed(ev.Event):
    account: str


@ev.workflow
async def takes_note() -> str:
    return await note.expect()


@ev.workflow
async def approves() -> str:
    approval = await Approval.expect()
    return approval.approver


@ev.workflow
async def go_then_publish() -> bool:
    go = await Go.expect(timeout="1h")
    await ev.publish(Opened(account="a"), Closed(account="a"))
    return go.ok


@pytest.fixture
def host(tmp_path: Path) -> Iterator[RuntimeHost]:
    ev.Service(SERVICE.name)
    host = RuntimeHost()
    host.use_local(tmp_path / "widgets.db")
    try:
        yield host
    finally:
        host.close()


def view_of(host: RuntimeHost, workflow: Any) -> tuple[ExecutionView, ExecutionHandle]:
    handle: ExecutionHandle = host.call(workflow.start())
    view = ExecutionView(host, handle.id, host.runtime, SERVICE.signals)
    view.refresh()
    return view, handle


def shown(view: ExecutionView, until: str, widget: str = "message") -> str:
    """Refresh as the pump does until `widget`'s text contains `until` (the runtime answers on its thread)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        view.refresh()
        text = html.unescape(re.sub(r"<[^>]+>", "", getattr(view, widget).value))
        if until in text:
            return text
        time.sleep(0.02)
    raise AssertionError(f"the widget's {widget} never showed {until!r}; it shows {getattr(view, widget).value!r}")


def row_of(view: ExecutionView, event_type: str) -> str:
    """The history table's row of the first `event_type` event, as text."""
    rows = [html.unescape(row) for row in re.findall(r"<tr>(.*?)</tr>", view.history.value)]
    found = [re.sub(r"<[^>]+>", " ", row) for row in rows if f">{event_type}<" in row]
    assert found, f"no {event_type} row in the history: {view.history.value}"
    return " ".join(found[0].split())


def item_of(view: ExecutionView, kind: str, label: str) -> Item:
    """The timeline's bar or mark of `kind` labelled `label`."""
    found = [item for item in items(view.timeline.value) if item.kind == kind and item.label == label]
    assert found, f"no {kind} {label!r} in the timeline: {[(i.kind, i.label) for i in items(view.timeline.value)]}"
    return found[0]


def choose(view: ExecutionView, signal: str) -> None:
    view.signal_name.value = signal
    view.refresh()  # the pump writes what the choice changes (the placeholder)


def test_a_str_signal_takes_plain_text(host: RuntimeHost) -> None:
    view, handle = view_of(host, takes_note)
    choose(view, "note")
    assert "plain text" in view.payload.placeholder
    view.payload.value = "approved by Ada, see ticket #4"  # not JSON: sent as the string it is
    view.send.click()
    shown(view, "sent signal 'note'")
    assert host.call(handle.result(timeout=30)) == "approved by Ada, see ticket #4"


def test_an_empty_box_for_a_str_signal_says_it_needs_text(host: RuntimeHost) -> None:
    view, handle = view_of(host, takes_note)
    choose(view, "note")
    view.send.click()
    assert "signal 'note' needs text: the box is empty" in shown(view, "needs text")
    assert host.call(handle.status()).status.value == "IN_PROGRESS"


def test_the_placeholder_is_an_example_payload_built_from_the_signal_model(host: RuntimeHost) -> None:
    view, _ = view_of(host, approves)
    choose(view, "Approval")
    placeholder = view.payload.placeholder
    assert placeholder.startswith("JSON, e.g. "), placeholder
    example = json.loads(placeholder.removeprefix("JSON, e.g. "))
    assert set(example) == {"approver", "amount", "at", "address", "tags"}
    Approval.model_validate(example)  # the example is a valid payload: bounds and formats respected
    choose(view, "Go")
    assert json.loads(view.payload.placeholder.removeprefix("JSON, e.g. ")) == {"ok": True}


def test_an_empty_box_for_a_required_payload_names_the_missing_fields(host: RuntimeHost) -> None:
    view, handle = view_of(host, approves)
    choose(view, "Approval")
    view.send.click()
    said = shown(view, "needs")
    assert "the box is empty, but signal 'Approval' needs fields 'approver', 'amount', 'at', 'address'" in said
    view.payload.value = '{"approver": "Ada", "amount": 5, "at": "2025-01-01T00:00:00Z", "address": {}}'
    view.send.click()
    assert "signal 'Approval' needs field 'address.city'" in shown(view, "address.city")
    view.payload.value = json.dumps(example_payload(Approval))
    view.send.click()
    shown(view, "sent signal 'Approval'")
    assert host.call(handle.result(timeout=30)) == "text"


@pytest.fixture
def go_view(host: RuntimeHost) -> ExecutionView:
    """`go_then_publish` shown while it waits for Go (its timeout pending), then sent Go from the widget."""
    view, handle = view_of(host, go_then_publish)
    shown(view, "TimerScheduled", "history")
    waiting = item_of(view, "signal", "expect Go")
    assert waiting.outcome == "waiting", waiting
    assert "due +1h" in waiting.details, waiting
    assert "waiting: signal Go, 59 min left" in shown(view, "waiting:", "timeline")
    choose(view, "Go")
    view.payload.value = '{"ok": false}'
    view.send.click()
    shown(view, "WorkflowSucceeded", "history")
    assert host.call(handle.result(timeout=30)) is False
    return view


def test_a_signal_timeout_timer_is_shown_ended_when_the_signal_arrives(go_view: ExecutionView) -> None:
    wait = item_of(go_view, "signal", "expect Go")
    assert wait.outcome == "received", wait
    assert 'payload: {"ok":false}' in wait.details, wait.details
    assert "TimerCompleted" not in go_view.history.value  # it never fired: the signal beat it
    assert "waiting:" not in go_view.timeline.value  # the execution ended: it waits on nothing


def test_events_published_names_its_events(go_view: ExecutionView) -> None:
    assert item_of(go_view, "events", "Opened, Closed").row == "events published"
    assert '"name":"Opened"' in row_of(go_view, "EventsPublished")


def test_signal_received_shows_its_payload(go_view: ExecutionView) -> None:
    assert 'signal Go payload {"ok":false}' in row_of(go_view, "SignalReceived")
    assert 'payload: {"ok":false}' in item_of(go_view, "signal", "Go received").details


def test_cancel_asks_first_and_says_it_cancels_the_execution(host: RuntimeHost) -> None:
    view, handle = view_of(host, approves)
    assert view.confirmation.layout.display == "none"
    assert "Cancel execution" in view.cancel.description
    view.cancel.click()
    view.refresh()
    assert view.confirmation.layout.display != "none", "Cancel must ask before cancelling"
    question = view.confirm_text.value
    assert handle.id in question
    assert "cancels the execution" in question
    assert "not send a signal" in question
    view.keep.click()
    view.refresh()
    assert view.confirmation.layout.display == "none"
    assert host.call(handle.status()).status.value == "IN_PROGRESS"  # "No" cancelled nothing
    view.cancel.click()
    view.refresh()
    view.confirm.click()
    shown(view, "CANCELLED", "status")
    assert view.confirmation.layout.display == "none"
    assert view.cancel.disabled
    assert view.send.disabled
    with pytest.raises(ev.ExecutionCancelled):
        host.call(handle.result(timeout=30))


# ------------------------------------------------------------------------------------- runtime switches


def test_a_result_awaited_across_a_rerun_of_runtime_local_arrives_from_the_new_runtime(
    host: RuntimeHost, tmp_path: Path
) -> None:
    handle: ExecutionHandle = host.call(approves.start())
    waiting = host.submit(handle.result(timeout=60))  # in flight while the runtime is replaced
    host.use_local(tmp_path / "widgets.db")  # what Run All does: the same database again
    payload = example_payload(Approval) | {"approver": "Ada"}
    host.call(Approval.send(handle.id, Approval.model_validate(payload)))
    assert waiting.result(60) == "Ada"


def test_a_widget_says_whose_execution_it_shows_after_a_switch_and_revives_on_the_same_database(
    host: RuntimeHost, tmp_path: Path
) -> None:
    view, handle = view_of(host, approves)
    host.use_test()
    said = shown(view, "belongs to")
    assert f"this execution ('{handle.id}') belongs to the runtime replaced by `%eventual runtime test`" in said
    assert view.send.disabled
    assert view.cancel.disabled
    with pytest.raises(ev.EventualError, match="belongs to the runtime replaced by `%eventual runtime test`"):
        host.call(handle.status())
    host.use_local(tmp_path / "widgets.db")
    deadline = time.monotonic() + 30
    while view.send.disabled and time.monotonic() < deadline:
        view.refresh()
    assert not view.send.disabled
    assert not view.cancel.disabled
    assert view.message.value == ""
    view.cancel.click()
    view.refresh()
    view.confirm.click()
    shown(view, "CANCELLED", "status")  # the buttons act on the runtime that now holds the execution


def test_the_executions_table_follows_a_rerun_and_says_whose_executions_it_listed(
    host: RuntimeHost, tmp_path: Path
) -> None:
    handle: ExecutionHandle = host.call(approves.start())
    table = ExecutionsTable(host, host.runtime, None, None)
    table.refresh()
    assert handle.id in table.table.value
    host.use_test()
    table.refresh()
    assert "this table belongs to the runtime replaced by `%eventual runtime test`" in html.unescape(table.table.value)
    host.use_local(tmp_path / "widgets.db")
    table.refresh()
    assert handle.id in table.table.value


def test_each_row_of_the_executions_table_has_a_sparkline_and_says_what_it_waits_on(host: RuntimeHost) -> None:
    waiting: ExecutionHandle = host.call(go_then_publish.start())
    done: ExecutionHandle = host.call(takes_note.start())
    host.call(done.signal(note, "hi"))
    assert host.call(done.result(timeout=30)) == "hi"
    table = ExecutionsTable(host, host.runtime, None, None)
    deadline = time.monotonic() + 30
    while "waiting on" not in table.table.value or "signal Go" not in table.table.value:
        assert time.monotonic() < deadline, table.table.value
        table.seen = ()  # as a commit would: read again
        table.refresh()
        time.sleep(0.02)
    rows = {row.split("</td>", 1)[0]: row for row in re.findall(r"<tr><td[^>]*>(.*?)</tr>", table.table.value)}
    go_row, note_row = rows[waiting.id], rows[done.id]
    assert '<svg class="ev-sparkline"' in go_row
    assert "ev-o-waiting" in go_row
    assert re.search(r"signal Go, (59|60) min left", html.unescape(go_row)), go_row
    assert "ev-o-succeeded ev-k-workflow" in note_row
    assert "class='eventual-waiting'></td>" in note_row  # it ended: it waits on nothing


def test_a_running_execution_s_timeline_moves_with_the_clock_without_a_commit(host: RuntimeHost) -> None:
    from kernel_ext.widgets import NOW_INTERVAL

    view, _ = view_of(host, go_then_publish)
    shown(view, "waiting:", "timeline")
    before, counter = view.timeline.value, view.seen_counter
    time.sleep(NOW_INTERVAL + 0.3)
    view.refresh()
    assert view.seen_counter == counter  # nothing was committed: nothing was read again
    assert view.timeline.value != before
    assert 'class="ev-now"' in view.timeline.value
