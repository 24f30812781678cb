"""Live widgets: an execution view (status, timeline, logs, result, signal form, cancel) and a table.

Rules from `reference/jupyter-mechanics.md` §2.3–2.5 that shape this module:

* One owner thread (`WidgetPump`) writes every widget trait, at most ~10 times a second, batching a
  view's changes with `hold_sync()` into one comm message. Runtime threads never print or display.
* Widget callbacks (Send, Cancel, filters) may run on any thread (a subshell on some ipykernel
  versions, the main thread on others): they only hand work to the runtime loop and mark the view.
* The pump reads state through the runtime's protocol methods (which hop to the runtime loop), and only
  when the runtime reports a change (`change_counter`), so idle views cost nothing.
"""

from __future__ import annotations

import html
import json
import threading
import time
import weakref
from datetime import datetime
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from eventual_nb.engine.history import HistoryEvent
from eventual_nb.runtime.base import Execution, ExecutionStatus

if TYPE_CHECKING:
    from kernel_ext.host import RuntimeHost

#: seconds between two writes of the same widget (the ~10 Hz coalescing)
REFRESH_INTERVAL = 0.1
#: seconds between passes when no commit woke the pump (a runtime without commit listeners, such as an
#: AwsRuntime, whose stack's functions commit in other processes: its views are polled at this pace)
IDLE_POLL = 1.0
#: how long the pump waits for one runtime query
QUERY_TIMEOUT = 10.0

STATUS_COLOURS = {
    ExecutionStatus.IN_PROGRESS: "#1a73e8",
    ExecutionStatus.SUCCEEDED: "#188038",
    ExecutionStatus.FAILED: "#d93025",
    ExecutionStatus.CANCELLED: "#5f6368",
}


def change_counter(runtime: Any) -> int | None:
    """A number that grows whenever the runtime commits anything (None: unknown, always refresh)."""
    for name in ("commits", "steps"):
        value = getattr(runtime, name, None)
        if isinstance(value, int):
            return value
    return None


def status_badge(status: str) -> str:
    known = status in ExecutionStatus.__members__
    colour = STATUS_COLOURS[ExecutionStatus(status)] if known else "#5f6368"
    return (
        f'<span style="background:{colour};color:white;border-radius:3px;padding:1px 6px;'
        f'font-family:monospace">{html.escape(status)}</span>'
    )


def describe_event(event: HistoryEvent) -> str:
    """The name column of the timeline: what the event is about."""
    for attribute in ("name", "signal", "child_id", "patch_id"):
        value = getattr(event, attribute, None)
        if isinstance(value, str):
            return value
    if event.type == "WorkflowStarted":
        return str(getattr(event, "workflow", ""))
    until = getattr(event, "until", None)
    if isinstance(until, datetime):
        return f"until {until.isoformat(timespec='seconds')}"
    return ""


def _failure(event: HistoryEvent) -> str:
    error = getattr(event, "error", None)
    if not isinstance(error, str):
        return ""
    message = getattr(event, "message", "") or ""
    return f"{error}: {message}" if message else error


def timeline_rows(history: list[HistoryEvent]) -> list[dict[str, str]]:
    """One row per event: type, seq, name, time since start, duration since its call, attempts."""
    if not history:
        return []
    start = history[0].timestamp
    called_at: dict[int, tuple[datetime, str]] = {}
    rows = []
    for event in history:
        name = describe_event(event)
        duration = ""
        if event.seq is not None:
            if event.seq in called_at:  # a completion: named after its call, timed from it
                began, name = called_at[event.seq]
                duration = f"{(event.timestamp - began).total_seconds():.3f} s"
            else:
                called_at[event.seq] = (event.timestamp, name)
        failure = _failure(event)
        if failure:
            name = f"{name} — {failure}" if name else failure
        attempts = getattr(event, "attempts", None)
        rows.append(
            {
                "type": event.type,
                "seq": "" if event.seq is None else str(event.seq),
                "name": name,
                "time": f"+{(event.timestamp - start).total_seconds():.3f} s",
                "duration": duration,
                "attempt": "" if attempts is None else str(attempts),
            }
        )
    return rows


def timeline_html(history: list[HistoryEvent]) -> str:
    rows = timeline_rows(history)
    if not rows:
        return "<i>no history yet</i>"
    header = "".join(f"<th style='text-align:left;padding:0 8px'>{c}</th>" for c in _COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td style='padding:0 8px'>{html.escape(row[c])}</td>" for c in _COLUMNS) + "</tr>"
        for row in rows
    )
    return f"<table style='font-family:monospace;font-size:12px'><tr>{header}</tr>{body}</table>"


_COLUMNS = ("type", "seq", "name", "time", "duration", "attempt")


def _json(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)


class ExecutionView:
    """The live widget for one execution; only `WidgetPump` writes its traits."""

    def __init__(self, host: RuntimeHost, execution_id: str, runtime: Any, signal_names: list[str]) -> None:
        self.host = host
        self.execution_id = execution_id
        self.runtime = runtime
        self.title = widgets.HTML(f"<b>{html.escape(execution_id)}</b>")
        self.status = widgets.HTML(status_badge(ExecutionStatus.IN_PROGRESS.value), _dom_classes=["eventual-status"])
        self.timeline = widgets.HTML("<i>loading…</i>", _dom_classes=["eventual-timeline"])
        self.logs = widgets.Output(
            layout=widgets.Layout(max_height="160px", overflow="auto"), _dom_classes=["eventual-logs"]
        )
        self.result = widgets.HTML("", _dom_classes=["eventual-result"])
        self.signal_name = widgets.Dropdown(
            options=signal_names,
            value=signal_names[0] if signal_names else None,
            description="signal",
            _dom_classes=["eventual-signal-name"],
        )
        self.payload = widgets.Textarea(
            placeholder="JSON payload (empty: the defaults)", rows=1, _dom_classes=["eventual-signal-payload"]
        )
        self.send = widgets.Button(description="Send", button_style="primary", _dom_classes=["eventual-signal-send"])
        self.cancel = widgets.Button(description="Cancel", button_style="warning", _dom_classes=["eventual-cancel"])
        self.message = widgets.HTML("", _dom_classes=["eventual-message"])
        self.send.on_click(self._on_send)
        self.cancel.on_click(self._on_cancel)
        controls = widgets.HBox([self.signal_name, self.payload, self.send, self.cancel])
        self.root = widgets.VBox(
            [widgets.HBox([self.title, self.status]), self.timeline, self.logs, self.result, controls, self.message],
            _dom_classes=["eventual-execution"],
        )
        # state the pump compares against (written by the pump only)
        self.seen_counter: int | None = -1
        self.shown_status = ""
        self.shown_timeline = ""
        self.shown_logs = 0
        self.shown_result = ""
        self.finished = False
        # set by callbacks on any thread, rendered by the pump
        self._pending_message: str | None = None
        self._lock = threading.Lock()
        #: time.monotonic() when the pump last sent something (benchmarks read it)
        self.last_update = 0.0

    # -------------------------------------------------------------------------------------- callbacks

    def _say(self, text: str) -> None:
        with self._lock:
            self._pending_message = text
        self.seen_counter = -1  # refresh on the next pass
        self.finished = False

    def _on_send(self, _button: Any) -> None:
        name = self.signal_name.value
        text = (self.payload.value or "").strip()
        if not name:
            self._say("<span style='color:#d93025'>this workflow's service declares no signal</span>")
            return
        try:
            payload = json.loads(text) if text else _empty_payload(name)
        except json.JSONDecodeError as exc:
            self._say(f"<span style='color:#d93025'>payload is not JSON: {html.escape(str(exc))}</span>")
            return
        future = self.host.submit(self.runtime.send_signal(self.execution_id, name, payload))
        future.add_done_callback(lambda done: self._report(done, f"sent signal '{name}'"))

    def _on_cancel(self, _button: Any) -> None:
        future = self.host.submit(self.runtime.cancel_execution(self.execution_id))
        future.add_done_callback(lambda done: self._report(done, "cancellation requested"))

    def _report(self, done: Any, success: str) -> None:
        error = done.exception()
        if error is None:
            self._say(html.escape(success))
        else:
            self._say(
                f"<span style='color:#d93025'>{html.escape(type(error).__name__)}: {html.escape(str(error))}</span>"
            )

    # ------------------------------------------------------------------------------------------- pump

    def refresh(self) -> None:
        """Fetch state if the runtime changed and write what differs (the pump's thread only)."""
        counter = change_counter(self.runtime)
        with self._lock:
            message, self._pending_message = self._pending_message, None
        if counter is not None and counter == self.seen_counter and message is None:
            return
        execution: Execution = self.host.call(self.runtime.get_execution(self.execution_id), QUERY_TIMEOUT)
        history = self.host.call(self.runtime.get_execution_history(self.execution_id), QUERY_TIMEOUT)
        logs = self.host.call(self.runtime.get_execution_logs(self.execution_id), QUERY_TIMEOUT)
        self.seen_counter = counter
        status = status_badge(execution.status.value)
        timeline = timeline_html(history)
        result = ""
        if execution.status == ExecutionStatus.SUCCEEDED:
            result = f"<b>result</b> <code>{html.escape(_json(execution.result))}</code>"
        elif execution.status != ExecutionStatus.IN_PROGRESS:
            result = (
                f"<b>{html.escape(execution.error or execution.status.value)}</b> "
                f"{html.escape(execution.message or '')}"
            )
        new_logs = logs[self.shown_logs :]
        changed = (
            status != self.shown_status or timeline != self.shown_timeline or result != self.shown_result or new_logs
        )
        if changed or message is not None:
            with self.root.hold_sync():
                if status != self.shown_status:
                    self.status.value = status
                if timeline != self.shown_timeline:
                    self.timeline.value = timeline
                if result != self.shown_result:
                    self.result.value = result
                for entry in new_logs:
                    stamp = entry.time.strftime("%H:%M:%S")
                    self.logs.append_stdout(f"{stamp} [{entry.source}] {entry.message}\n")
                if message is not None:
                    self.message.value = message
            self.last_update = time.monotonic()
        self.shown_status, self.shown_timeline, self.shown_result = status, timeline, result
        self.shown_logs = len(logs)
        if execution.status != ExecutionStatus.IN_PROGRESS:
            self.finished = True
            self.send.disabled = True
            self.cancel.disabled = True


def _empty_payload(signal_name: str) -> Any:
    """What an empty payload box sends: `{}` for a model payload (its defaults), else nothing."""
    from pydantic import BaseModel

    from eventual_nb.signals import find_signal

    signal = find_signal(signal_name)
    payload_type = getattr(signal, "payload_type", None)
    if isinstance(payload_type, type) and (issubclass(payload_type, BaseModel) or issubclass(payload_type, dict)):
        return {}
    return None


class ExecutionsTable:
    """`%eventual executions`: a live, filterable table of executions (newest first)."""

    def __init__(self, host: RuntimeHost, runtime: Any, workflow: str | None, status: str | None) -> None:
        self.host = host
        self.runtime = runtime
        self.workflow = widgets.Text(
            value=workflow or "",
            placeholder="workflow",
            description="workflow",
            _dom_classes=["eventual-filter-workflow"],
        )
        self.status = widgets.Dropdown(
            options=["any", *[s.value for s in ExecutionStatus]],
            value=status or "any",
            description="status",
            _dom_classes=["eventual-filter-status"],
        )
        self.table = widgets.HTML("<i>loading…</i>", _dom_classes=["eventual-executions"])
        self.root = widgets.VBox(
            [widgets.HBox([self.workflow, self.status]), self.table], _dom_classes=["eventual-executions-table"]
        )
        self.seen: tuple[Any, ...] = ()
        self.shown = ""
        self.finished = False
        self.last_update = 0.0
        # The pump holds views weakly; these observers make the table live as long as its widgets do (an
        # ExecutionView is held by its buttons' callbacks), and an edited filter is shown on the next pass.
        self.workflow.observe(self._filter_changed, names="value")
        self.status.observe(self._filter_changed, names="value")

    def _filter_changed(self, _change: Any) -> None:
        self.seen = ()

    def refresh(self) -> None:
        key = (change_counter(self.runtime), self.workflow.value, self.status.value)
        if key[0] is not None and key == self.seen:
            return
        self.seen = key
        statuses = None if self.status.value == "any" else [ExecutionStatus(self.status.value)]
        page = self.host.call(
            self.runtime.list_executions(
                workflow=self.workflow.value or None, statuses=statuses, max_results=50, sort="desc"
            ),
            QUERY_TIMEOUT,
        )
        rows = "".join(
            "<tr>"
            f"<td style='padding:0 8px'>{html.escape(e.id)}</td>"
            f"<td style='padding:0 8px'>{status_badge(e.status.value)}</td>"
            f"<td style='padding:0 8px'>{e.start_time.isoformat(timespec='seconds')}</td>"
            f"<td style='padding:0 8px'>{'' if e.end_time is None else e.end_time.isoformat(timespec='seconds')}</td>"
            "</tr>"
            for e in page.executions
        )
        header = "".join(
            f"<th style='text-align:left;padding:0 8px'>{c}</th>" for c in ("id", "status", "start", "end")
        )
        shown = (
            f"<table style='font-family:monospace;font-size:12px'><tr>{header}</tr>{rows}</table>"
            if rows
            else "<i>no executions match</i>"
        )
        if shown != self.shown:
            self.table.value = shown
            self.shown = shown
            self.last_update = time.monotonic()


class WidgetPump:
    """The one thread that writes widget state, every `REFRESH_INTERVAL` seconds at most."""

    def __init__(self) -> None:
        self._views: weakref.WeakSet[Any] = weakref.WeakSet()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        #: the last error a refresh raised (shown by `%eventual status`, never printed)
        self.last_error: str | None = None

    def add(self, view: ExecutionView | ExecutionsTable) -> None:
        with self._lock:
            self._views.add(view)
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="eventual-widgets", daemon=True)
                self._thread.start()
        self._wake.set()

    def poke(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            for view in list(self._views):
                if getattr(view, "finished", False) and not getattr(view, "_pending_message", None):
                    continue
                try:
                    view.refresh()
                except Exception as exc:  # noqa: BLE001 - a view that cannot refresh now tries again later
                    self.last_error = f"{type(exc).__name__}: {exc}"
            # Sleep until the runtime commits something (`poke`, a commit listener) or IDLE_POLL passes, but
            # never start passes closer than REFRESH_INTERVAL: the first change after a quiet spell shows at
            # once, a busy runtime is shown at ~10 Hz.
            self._wake.wait(IDLE_POLL)
            self._wake.clear()
            remaining = REFRESH_INTERVAL - (time.monotonic() - started)
            if remaining > 0:
                self._stop.wait(remaining)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
        self._thread = None
