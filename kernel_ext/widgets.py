"""Live widgets: an execution view (status, timeline, logs, result, signal form, cancel) and a table.

How widgets behave in a kernel, and the rules that follow for this module:

* One owner thread (`WidgetPump`) writes every widget trait, at most ~10 times a second, batching a
  view's changes with `hold_sync()` into one comm message. Runtime threads never print or display.
* Widget callbacks (Send, Cancel, filters) may run on any thread (a subshell on some ipykernel
  versions, the main thread on others): they only hand work to the runtime loop and mark the view.
* The pump reads state through the runtime's protocol methods (which hop to the runtime loop), and only
  when the runtime reports a change (`change_counter`), so idle views cost nothing.
"""

from __future__ import annotations

import dataclasses
import html
import json
import threading
import time
import types
import typing
import weakref
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from eventual_nb.engine.history import HistoryEvent, LogEntry
from eventual_nb.errors import EventualError
from eventual_nb.runtime.base import Execution, ExecutionHandle, ExecutionStatus, ExecutionWaits, serving_runtime
from eventual_nb.timeline import build_timeline
from eventual_nb.timeline.svg import CSS, WIDGET_HISTORY_ROWS, history_table, render_sparkline, timeline_html

if TYPE_CHECKING:
    from kernel_ext.host import RuntimeHost

#: seconds between two writes of the same widget (the ~10 Hz coalescing)
REFRESH_INTERVAL = 0.1
#: seconds between passes when no commit woke the pump (a runtime without commit listeners, such as an
#: AwsRuntime, whose stack's functions commit in other processes: its views are polled at this pace)
IDLE_POLL = 1.0
#: how long the pump waits for one runtime query
QUERY_TIMEOUT = 10.0
#: seconds between redraws of a running execution's timeline when nothing was committed (its "now" line and
#: "9 min left" move); at least `NOW_COST_FACTOR` times what the last drawing took
NOW_INTERVAL = 1.0
NOW_COST_FACTOR = 10.0
#: seconds between re-reads of the executions table while a shown execution runs ("9 min left" moves)
TABLE_NOW_INTERVAL = 5.0

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


def _json(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)


# ------------------------------------------------------------------------------------------ signal form

#: how deep an example payload follows nested models (a model that contains itself stops here)
EXAMPLE_DEPTH = 6
_STRING_EXAMPLES = {
    "date-time": "2025-01-01T00:00:00Z",
    "date": "2025-01-01",
    "time": "12:00:00",
    "duration": "PT1H",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "email": "ada@example.com",
    "uri": "https://example.com",
}


def takes_text(payload_type: Any) -> bool:
    """Whether a signal's payload is a string (optionally None): its box takes plain text, not JSON."""
    if payload_type is str:
        return True
    options = [option for option in typing.get_args(payload_type) if option is not type(None)]
    is_union = typing.get_origin(payload_type) in (typing.Union, types.UnionType)
    return is_union and options == [str]


def example_payload(payload_type: Any) -> Any:
    """A payload of `payload_type` built from its JSON schema: defaults and examples where the model gives
    them, else a placeholder value of each field's type (what the signal box shows as its placeholder)."""
    from eventual_nb.serde import adapter

    schema = adapter(payload_type).json_schema()
    return _example(schema, schema.get("$defs", {}), 0)


def _example(schema: dict[str, Any], defs: dict[str, Any], depth: int) -> Any:
    if depth > EXAMPLE_DEPTH:
        return None
    for key in ("default", "const"):
        if key in schema:
            return schema[key]
    for key in ("examples", "enum"):
        if schema.get(key):
            return schema[key][0]
    reference = schema.get("$ref")
    if isinstance(reference, str):
        return _example(defs.get(reference.rsplit("/", 1)[-1], {}), defs, depth + 1)
    for key in ("anyOf", "oneOf", "allOf"):
        options = [option for option in schema.get(key, []) if option.get("type") != "null"]
        if options:
            return _example(options[0], defs, depth + 1)
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties", {})
        if not properties and isinstance(schema.get("additionalProperties"), dict):
            return {"key": _example(schema["additionalProperties"], defs, depth + 1)}
        return {name: _example(field, defs, depth + 1) for name, field in properties.items()}
    if kind == "array":
        items = schema.get("prefixItems") or [schema.get("items", {})]
        return [_example(item, defs, depth + 1) for item in items]
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        value = low + 1 if "exclusiveMinimum" in schema else low
        return int(value) if kind == "integer" else float(value)
    if kind == "string":
        return _STRING_EXAMPLES.get(schema.get("format", ""), "text")
    if kind == "boolean":
        return True
    return None


def payload_placeholder(signal: Any) -> str:
    """What the empty signal box shows: how to write this signal's payload."""
    payload_type = getattr(signal, "payload_type", None)
    if signal is None:
        return "JSON payload"
    if payload_type is None:
        return "JSON payload (optional)"
    if takes_text(payload_type):
        return "plain text (sent as the signal's string)"
    try:
        return f"JSON, e.g. {_json(example_payload(payload_type))}"
    except Exception:  # noqa: BLE001 - a type pydantic cannot describe: no example, still a form
        return "JSON payload"


def read_payload(signal_name: str, signal: Any, text: str) -> Any:
    """The payload the signal box describes, checked against `signal`'s type (the workflow's own service's
    signal of that name: another service may declare one with the same name); raises `ValueError` with a
    message for the form (the field a payload lacks, the text that is not JSON)."""
    from eventual_nb.errors import InputValidationError

    payload_type = getattr(signal, "payload_type", None)
    empty = not text.strip()
    if takes_text(payload_type):
        if empty and payload_type is str:
            raise ValueError(f"signal '{signal_name}' needs text: the box is empty")
        payload: Any = None if empty else text
    elif empty:
        payload = {} if _is_model(payload_type) else None  # a model's defaults; else no payload
    else:
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"the payload is not JSON ({exc}); {payload_placeholder(signal)}") from None
    if signal is None:
        return payload
    try:
        signal.encode(payload)
    except InputValidationError as exc:
        raise ValueError(_payload_problem(signal, exc.errors or [], empty)) from None
    return payload


def _is_model(payload_type: Any) -> bool:
    from pydantic import BaseModel

    return isinstance(payload_type, type) and issubclass(payload_type, (BaseModel, dict))


def _payload_problem(signal: Any, problems: list[dict[str, Any]], empty: bool) -> str:
    """One sentence for the form: which fields are missing, else what pydantic said about each field."""
    where = "the box is empty, but" if empty else "the payload is incomplete:"
    missing = [".".join(str(part) for part in p.get("loc", ())) for p in problems if p.get("type") == "missing"]
    if missing:
        fields = ", ".join(f"'{name}'" for name in missing)
        need = f"field {fields}" if len(missing) == 1 else f"fields {fields}"
        return f"{where} signal '{signal.name}' needs {need}; {payload_placeholder(signal)}"
    said = "; ".join(
        (f"field '{'.'.join(str(part) for part in p['loc'])}': " if p.get("loc") else "") + str(p.get("msg"))
        for p in problems[:3]
    )
    return f"invalid payload for signal '{signal.name}': {said}; {payload_placeholder(signal)}"


# ------------------------------------------------------------------------------------- execution view


def _error(text: str) -> str:
    return f"<span style='color:#d93025'>{html.escape(text)}</span>"


class _Callbacks:
    """What a view's callbacks (any thread) hand to the pump: trait changes to write, and a wake-up."""

    host: Any

    def _init_callbacks(self) -> None:
        self._pending: dict[str, Any] = {}
        self._lock = threading.Lock()

    def has_pending(self) -> bool:
        with self._lock:
            return bool(self._pending)

    def _later(self, **changes: Any) -> None:
        """Hand trait changes to the pump (the one thread that writes them), mark the view stale, wake it."""
        with self._lock:
            self._pending.update(changes)
        self._stale()
        wake = getattr(self.host, "on_commit", None)
        if callable(wake):
            wake()

    def _take_pending(self) -> dict[str, Any]:
        with self._lock:
            pending, self._pending = self._pending, {}
        return pending

    def _stale(self) -> None:
        """Make the next refresh read the runtime again."""


@dataclasses.dataclass
class _Read:
    """One fetch of an execution's history, logs and waits (`fetched`: time.monotonic() of the fetch)."""

    history: list[HistoryEvent]
    logs: list[LogEntry]
    waits: ExecutionWaits | None
    fetched: float


def _runtime_now(runtime: Any, waits: ExecutionWaits | None, fetched: float) -> datetime | None:
    """The runtime's clock now: its own (a TestEnvironment's virtual time) when it has one, else the time it
    reported with the waits plus what passed since (a `ServiceClient`'s server)."""
    clock = getattr(runtime, "current_time", None)
    if callable(clock):
        moment = clock()
        if isinstance(moment, datetime):
            return moment
    if waits is None:
        return None
    return waits.now + timedelta(seconds=time.monotonic() - fetched)


class ExecutionView(_Callbacks):
    """The live widget for one execution; only `WidgetPump` writes its traits.

    It shows the execution's timeline as a picture (`eventual_nb.timeline`: redrawn on every commit, and about
    once a second while it runs so its "now" moves), its result, the signal form and Cancel, the last
    `WIDGET_HISTORY_ROWS` history events with their payloads, and its logs.

    It reaches its execution through an `ExecutionHandle`, so it follows the runtime that replaces its own on
    the same database (Run All re-runs `%eventual runtime local`) and otherwise says which runtime its
    execution belongs to. Cancel asks first: it cancels the execution, which is not a signal."""

    def __init__(self, host: RuntimeHost, execution_id: str, runtime: Any, signals: Mapping[str, Any]) -> None:
        """`signals`: the signals the execution's workflow's service declares, by name (what Send offers)."""
        self.host = host
        self.signals = dict(signals)
        signal_names = sorted(self.signals)
        self.execution_id = execution_id
        self.handle = ExecutionHandle(execution_id, runtime=runtime)
        self.title = widgets.HTML(f"<b>{html.escape(execution_id)}</b>")
        self.status = widgets.HTML(status_badge(ExecutionStatus.IN_PROGRESS.value), _dom_classes=["eventual-status"])
        self.timeline = widgets.HTML("<i>loading…</i>", _dom_classes=["eventual-timeline"])
        self.history = widgets.HTML("", _dom_classes=["eventual-history"])
        self.logs_heading = widgets.HTML("<b>Logs</b>", _dom_classes=["eventual-logs-heading"])
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
            placeholder=self._placeholder(), rows=1, _dom_classes=["eventual-signal-payload"]
        )
        self.send = widgets.Button(
            description="Send",
            button_style="primary",
            tooltip="send the chosen signal with the payload in the box",
            _dom_classes=["eventual-signal-send"],
        )
        self.cancel = widgets.Button(
            description="Cancel execution…",
            button_style="warning",
            tooltip="cancel this execution (asks first; this is not a signal)",
            layout=widgets.Layout(width="auto", flex="0 0 auto"),  # its whole label, however narrow the row
            _dom_classes=["eventual-cancel"],
        )
        self.confirm_text = widgets.HTML(
            f"Cancel execution <b>{html.escape(execution_id)}</b>? Its workflow stops where it waits (its clean-up "
            "code still runs) and it ends CANCELLED. This cancels the execution; it does not send a signal.",
            _dom_classes=["eventual-cancel-question"],
        )
        self.confirm = widgets.Button(
            description="Yes, cancel execution",
            button_style="danger",
            layout=widgets.Layout(width="auto"),
            _dom_classes=["eventual-cancel-confirm"],
        )
        self.keep = widgets.Button(
            description="No, keep it running",
            layout=widgets.Layout(width="auto"),
            _dom_classes=["eventual-cancel-keep"],
        )
        self.confirmation = widgets.VBox(
            [self.confirm_text, widgets.HBox([self.confirm, self.keep])],
            layout=widgets.Layout(display="none"),
            _dom_classes=["eventual-cancel-confirmation"],
        )
        self.message = widgets.HTML("", _dom_classes=["eventual-message"])
        self.send.on_click(self._on_send)
        self.cancel.on_click(self._on_cancel)
        self.confirm.on_click(self._on_confirm)
        self.keep.on_click(self._on_keep)
        self.signal_name.observe(self._on_signal_chosen, names="value")
        controls = widgets.HBox([self.signal_name, self.payload, self.send, self.cancel])
        self.root = widgets.VBox(
            [
                widgets.HBox([self.title, self.status]),
                self.timeline,
                self.result,
                controls,
                self.confirmation,
                self.message,
                self.history,
                self.logs_heading,
                self.logs,
            ],
            _dom_classes=["eventual-execution"],
        )
        # state the pump compares against (written by the pump only)
        self.seen_counter: int | None = -1
        self.seen_runtime: Any = runtime
        self.shown_status = ""
        self.shown_timeline = ""
        self.shown_history = ""
        self.shown_logs = 0
        #: what the last fetch read, kept to redraw the timeline as its "now" moves (`_redraw`)
        self._read: _Read | None = None
        self._next_redraw = 0.0
        self.shown_result = ""
        self.shown_detached: str | None = None
        self.finished = False
        # set by callbacks on any thread, rendered by the pump
        self._init_callbacks()
        #: time.monotonic() when the pump last sent something (benchmarks read it)
        self.last_update = 0.0

    @property
    def runtime(self) -> Any:
        """The runtime the view reads its execution from (the replacement, once it followed one)."""
        return self.handle._runtime

    # -------------------------------------------------------------------------------------- callbacks

    def _stale(self) -> None:
        self.seen_counter = -1  # refresh on the next pass
        self.finished = False

    def _say(self, text: str) -> None:
        self._later(message=text)

    def _placeholder(self) -> str:
        name = self.signal_name.value
        return payload_placeholder(self.signals.get(name)) if name else "this workflow's service declares no signal"

    def _on_signal_chosen(self, _change: Any) -> None:
        self._later(placeholder=self._placeholder())

    def _on_send(self, _button: Any) -> None:
        name = self.signal_name.value
        if not name:
            self._say(_error("this workflow's service declares no signal"))
            return
        try:
            payload = read_payload(name, self.signals.get(name), self.payload.value or "")
        except ValueError as exc:
            self._say(_error(str(exc)))
            return
        future = self.host.submit(self.handle.signal(name, payload))
        future.add_done_callback(lambda done: self._report(done, f"sent signal '{name}'"))

    def _on_cancel(self, _button: Any) -> None:
        self._later(confirming=True, message="")

    def _on_keep(self, _button: Any) -> None:
        self._later(confirming=False, message="the execution keeps running")

    def _on_confirm(self, _button: Any) -> None:
        self._later(confirming=False)
        future = self.host.submit(self.handle.cancel())
        future.add_done_callback(lambda done: self._report(done, "cancellation of the execution requested"))

    def _report(self, done: Any, success: str) -> None:
        error = done.exception()
        self._say(html.escape(success) if error is None else _error(f"{type(error).__name__}: {error}"))

    # ------------------------------------------------------------------------------------------- pump

    def refresh(self) -> None:
        """Fetch state if the runtime changed and write what differs (the pump's thread only)."""
        pending = self._take_pending()
        try:
            runtime = serving_runtime(self.handle.runtime, f"this execution ('{self.execution_id}')")
        except EventualError as exc:  # its runtime was replaced by one on another store: say so, keep checking
            self._detach(str(exc), pending)
            return
        self.handle._runtime = runtime
        counter = change_counter(runtime)
        if runtime is self.seen_runtime and counter is not None and counter == self.seen_counter and not pending:
            self._redraw(runtime)
            return
        execution: Execution = self.host.call(runtime.get_execution(self.execution_id), QUERY_TIMEOUT)
        history = self.host.call(runtime.get_execution_history(self.execution_id), QUERY_TIMEOUT)
        logs = self.host.call(runtime.get_execution_logs(self.execution_id), QUERY_TIMEOUT)
        self.seen_counter, self.seen_runtime = counter, runtime
        ended = execution.status != ExecutionStatus.IN_PROGRESS
        waits = None
        if not ended:  # only a running execution waits; what on changes only with its history
            waits = self._waits(runtime, len(history))
        self._read = _Read(history, logs, waits, time.monotonic())
        status = status_badge(execution.status.value)
        timeline = self._draw(runtime)
        history_html = self.shown_history
        if len(history) != self._history_length:
            self._history_length = len(history)
            history_html = (
                f"<div class='ev-tl'><style>{CSS}</style><b>History</b>"
                f"{history_table(history, limit=WIDGET_HISTORY_ROWS)}</div>"
            )
        result = ""
        if execution.status == ExecutionStatus.SUCCEEDED:
            result = f"<b>result</b> <code>{html.escape(_json(execution.result))}</code>"
        elif ended:
            result = (
                f"<b>{html.escape(execution.error or execution.status.value)}</b> "
                f"{html.escape(execution.message or '')}"
            )
        if self.shown_detached is not None:  # reachable again (a runtime on its database is back)
            pending.setdefault("message", "")
            self.shown_detached = None
        new_logs = logs[self.shown_logs :]
        changed = (
            status != self.shown_status
            or timeline != self.shown_timeline
            or history_html != self.shown_history
            or result != self.shown_result
            or new_logs
        )
        if changed or pending:
            with self.root.hold_sync():
                if status != self.shown_status:
                    self.status.value = status
                if timeline != self.shown_timeline:
                    self.timeline.value = timeline
                if history_html != self.shown_history:
                    self.history.value = history_html
                if result != self.shown_result:
                    self.result.value = result
                for entry in new_logs:
                    stamp = entry.time.strftime("%H:%M:%S")
                    self.logs.append_stdout(f"{stamp} [{entry.source}] {entry.message}\n")
                self._apply(pending, ended)
            self.last_update = time.monotonic()
        self.shown_status, self.shown_timeline, self.shown_result = status, timeline, result
        self.shown_history = history_html
        self.shown_logs = len(logs)
        self.finished = ended
        self._controls(enabled=not ended)

    _history_length = -1
    _waits_read: tuple[int, ExecutionWaits | None] = (-1, None)

    def _waits(self, runtime: Any, length: int) -> ExecutionWaits | None:
        """What the execution waits on, asked again only when its history grew (replaying costs O(history))."""
        if self._waits_read[0] != length:
            ask = getattr(runtime, "get_execution_waits", None)
            waits = None if ask is None else self.host.call(ask(self.execution_id), QUERY_TIMEOUT)
            self._waits_read = (length, waits)
        return self._waits_read[1]

    def _draw(self, runtime: Any) -> str:
        """The timeline's HTML from the last fetch, at the runtime's current time."""
        read = self._read
        assert read is not None
        started = time.monotonic()
        now = _runtime_now(runtime, read.waits, read.fetched)
        drawn = timeline_html(
            build_timeline(
                read.history,
                logs=read.logs,
                waits=None if read.waits is None else read.waits.waits,
                now=now,
                execution_id=self.execution_id,
            )
        )
        took = time.monotonic() - started
        self._next_redraw = time.monotonic() + max(NOW_INTERVAL, NOW_COST_FACTOR * took)
        return drawn

    def _redraw(self, runtime: Any) -> None:
        """Nothing was committed: move a running execution's "now" (at most every `NOW_INTERVAL`)."""
        if self.finished or self._read is None or self._read.waits is None or time.monotonic() < self._next_redraw:
            return
        timeline = self._draw(runtime)
        if timeline != self.shown_timeline:
            self.timeline.value = self.shown_timeline = timeline
            self.last_update = time.monotonic()

    def _apply(self, pending: dict[str, Any], ended: bool) -> None:
        """Write what callbacks asked for (the pump's thread, inside `hold_sync`)."""
        if "placeholder" in pending:
            self.payload.placeholder = pending["placeholder"]
        if "confirming" in pending:
            self.confirmation.layout.display = "flex" if pending["confirming"] and not ended else "none"
        if "message" in pending:
            self.message.value = pending["message"]

    def _controls(self, *, enabled: bool) -> None:
        for button in (self.send, self.cancel, self.confirm):
            if button.disabled == enabled:
                button.disabled = not enabled
        if not enabled and self.confirmation.layout.display != "none":
            self.confirmation.layout.display = "none"

    def _detach(self, reason: str, pending: dict[str, Any]) -> None:
        pending["message"] = _error(reason)
        pending.pop("confirming", None)
        if reason != self.shown_detached or len(pending) > 1:
            with self.root.hold_sync():
                self._apply(pending, ended=True)
                self._controls(enabled=False)
            self.shown_detached = reason
            self.last_update = time.monotonic()
        self.seen_counter = -1  # when a runtime on its database is back, read everything again


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
        self._lines: dict[str, _Line] = {}
        self._next_tick = 0.0
        # The pump holds views weakly; these observers make the table live as long as its widgets do (an
        # ExecutionView is held by its buttons' callbacks), and an edited filter is shown on the next pass.
        self.workflow.observe(self._filter_changed, names="value")
        self.status.observe(self._filter_changed, names="value")

    def _filter_changed(self, _change: Any) -> None:
        self.seen = ()

    def has_pending(self) -> bool:
        return False

    def refresh(self) -> None:
        try:
            # the runtime that replaced its own on the same database (Run All), or why there is none
            self.runtime = serving_runtime(self.runtime, "this table")
        except EventualError as exc:
            shown = _error(str(exc))
            if shown != self.shown:
                self.table.value = self.shown = shown
                self.last_update = time.monotonic()
            self.seen = ()
            return
        key = (id(self.runtime), change_counter(self.runtime), self.workflow.value, self.status.value)
        running_rows = any(line.running for line in self._lines.values())
        if key[1] is not None and key == self.seen and not (running_rows and time.monotonic() >= self._next_tick):
            return
        self.seen = key
        self._next_tick = time.monotonic() + TABLE_NOW_INTERVAL
        statuses = None if self.status.value == "any" else [ExecutionStatus(self.status.value)]
        page = self.host.call(
            self.runtime.list_executions(
                workflow=self.workflow.value or None, statuses=statuses, max_results=50, sort="desc"
            ),
            QUERY_TIMEOUT,
        )
        lines = {execution.id: self._line(execution) for execution in page.executions}
        self._lines = lines
        rows = "".join(
            "<tr>"
            f"<td style='padding:0 8px'>{html.escape(e.id)}</td>"
            f"<td style='padding:0 8px'>{status_badge(e.status.value)}</td>"
            f"<td style='padding:0 8px' class='eventual-sparkline'>{lines[e.id].sparkline}</td>"
            f"<td style='padding:0 8px' class='eventual-waiting'>{html.escape(lines[e.id].waiting)}</td>"
            f"<td style='padding:0 8px'>{e.start_time.isoformat(timespec='seconds')}</td>"
            f"<td style='padding:0 8px'>{'' if e.end_time is None else e.end_time.isoformat(timespec='seconds')}</td>"
            "</tr>"
            for e in page.executions
        )
        header = "".join(
            f"<th style='text-align:left;padding:0 8px'>{c}</th>"
            for c in ("id", "status", "timeline", "waiting on", "start", "end")
        )
        shown = (
            f"<div class='ev-tl'><style>{CSS}</style>"
            f"<table style='font-family:monospace;font-size:12px'><tr>{header}</tr>{rows}</table></div>"
            if rows
            else "<i>no executions match</i>"
        )
        if shown != self.shown:
            self.table.value = shown
            self.shown = shown
            self.last_update = time.monotonic()

    def _line(self, execution: Execution) -> _Line:
        """An execution's sparkline and what it waits on: read again while it runs, kept once it ended."""
        known = self._lines.get(execution.id)
        running = execution.status == ExecutionStatus.IN_PROGRESS
        if known is not None and not running and known.status == execution.status:
            return known
        history = self.host.call(self.runtime.get_execution_history(execution.id), QUERY_TIMEOUT)
        waits = None
        if running:
            if known is not None and known.length == len(history):
                waits = known.waits  # it waits on the same things until its history grows
            else:
                ask = getattr(self.runtime, "get_execution_waits", None)
                waits = None if ask is None else self.host.call(ask(execution.id), QUERY_TIMEOUT)
        timeline = build_timeline(
            history,
            waits=None if waits is None else waits.waits,
            now=_runtime_now(self.runtime, waits, time.monotonic()) if running else None,
            execution_id=execution.id,
        )
        return _Line(execution.status, len(history), waits, render_sparkline(timeline), "; ".join(timeline.waiting))


@dataclasses.dataclass
class _Line:
    """What the executions table shows of one execution beyond its row (see `ExecutionsTable._line`)."""

    status: ExecutionStatus
    length: int
    waits: ExecutionWaits | None
    sparkline: str
    waiting: str

    @property
    def running(self) -> bool:
        return self.status == ExecutionStatus.IN_PROGRESS


class SchedulesTable(_Callbacks):
    """`%eventual schedules`: a live table of the served schedules with Pause/Resume and Trigger buttons.

    Each row shows the schedule's name and spec, its next fire in this machine's local time and how soon
    ("in 3 h 12 min", on the runtime's clock: virtual time on the test runtime), whether it is paused, and
    its last execution with its status badge. The pump builds and updates the rows; the buttons only hand
    the call to the runtime loop and ask for a refresh."""

    def __init__(self, host: RuntimeHost, runtime: Any) -> None:
        self.host = host
        self.runtime = runtime
        self.header = widgets.HTML("<i>loading…</i>", _dom_classes=["eventual-schedules-header"])
        self.rows = widgets.VBox([], _dom_classes=["eventual-schedules-rows"])
        self.message = widgets.HTML("", _dom_classes=["eventual-message"])
        self.root = widgets.VBox([self.header, self.rows, self.message], _dom_classes=["eventual-schedules"])
        self.seen: tuple[Any, ...] = ()
        self.finished = False
        self.last_update = 0.0
        self._next_tick = 0.0
        self._rows: dict[str, _ScheduleRow] = {}
        self._init_callbacks()

    # -------------------------------------------------------------------------------------- callbacks

    def _stale(self) -> None:
        self.seen = ()

    def act(self, name: str, action: str) -> None:
        """A row's button: `pause`, `resume` or `trigger` schedule `name` on the runtime loop (any thread)."""
        call = {
            "pause": self.runtime.pause_schedule,
            "resume": self.runtime.resume_schedule,
            "trigger": self.runtime.trigger_schedule,
        }[action]
        future = self.host.submit(call(name))

        def report(done: Any) -> None:
            error = done.exception()
            if error is not None:
                self._later(message=_error(f"{action} {name}: {type(error).__name__}: {error}"))
            elif action == "trigger":
                handle = done.result()
                said = "already started this second" if getattr(handle, "already_running", False) else "started"
                self._later(message=html.escape(f"triggered {name}: {said} {handle.id}"))
            else:
                self._later(message=html.escape(f"{action}d {name}"))

        future.add_done_callback(report)

    # ------------------------------------------------------------------------------------------- pump

    def refresh(self) -> None:
        """Read the schedules when the runtime committed something (or every few seconds, as "in 5 min" moves)
        and write what changed (the pump's thread only)."""
        pending = self._take_pending()
        try:
            self.runtime = serving_runtime(self.runtime, "this table")
        except EventualError as exc:
            self._show_header(_error(str(exc)))
            self.seen = ()
            return
        key = (id(self.runtime), change_counter(self.runtime))
        if key[1] is not None and key == self.seen and not pending and time.monotonic() < self._next_tick:
            return
        self.seen = key
        self._next_tick = time.monotonic() + TABLE_NOW_INTERVAL
        schedules = self.host.call(self.runtime.list_schedules(), QUERY_TIMEOUT)
        clock = getattr(self.runtime, "current_time", None)
        now = clock() if callable(clock) else datetime.now().astimezone()
        statuses: dict[str, str] = {}
        for info in schedules:
            if info.last_execution_id is not None:
                try:
                    execution = self.host.call(self.runtime.get_execution(info.last_execution_id), QUERY_TIMEOUT)
                    statuses[info.name] = execution.status.value
                except EventualError:
                    statuses[info.name] = "unknown"
        with self.root.hold_sync():
            self._show_header(
                f"<b>{len(schedules)} schedule(s)</b>"
                + ("" if schedules else " <i>(define one with @ev.schedule or %%workflow --schedule)</i>")
            )
            rows = []
            for info in schedules:
                row = self._rows.get(info.name)
                if row is None:
                    row = self._rows[info.name] = _ScheduleRow(self, info.name)
                row.show(info, now, statuses.get(info.name))
                rows.append(row.root)
            if tuple(rows) != tuple(self.rows.children):
                self.rows.children = tuple(rows)
            if "message" in pending and self.message.value != pending["message"]:
                self.message.value = pending["message"]
        self.last_update = time.monotonic()

    def _show_header(self, text: str) -> None:
        if self.header.value != text:
            self.header.value = text
            self.last_update = time.monotonic()


class _ScheduleRow:
    """One schedule of a `SchedulesTable`: its facts and its buttons (written by the pump only)."""

    def __init__(self, table: SchedulesTable, name: str) -> None:
        self.name = name
        self.info = widgets.HTML("", _dom_classes=["eventual-schedule-info"])
        self.toggle = widgets.Button(
            description="Pause", tooltip="stop firing until resumed", _dom_classes=["eventual-schedule-toggle"]
        )
        self.trigger = widgets.Button(
            description="Trigger",
            button_style="primary",
            tooltip="start one execution now, with now as its input (paused or not)",
            _dom_classes=["eventual-schedule-trigger"],
        )
        self.paused = False
        self.toggle.on_click(lambda _button: table.act(name, "resume" if self.paused else "pause"))
        self.trigger.on_click(lambda _button: table.act(name, "trigger"))
        self.root = widgets.HBox([self.info, self.toggle, self.trigger], _dom_classes=["eventual-schedule"])

    def show(self, info: Any, now: datetime, status: str | None) -> None:
        from eventual_nb.schedules import next_fire_text

        last = "none yet"
        if info.last_execution_id is not None:
            last = f"{html.escape(info.last_execution_id)} {status_badge(status or 'unknown')}"
        cells = [
            f"<b>{html.escape(info.name)}</b>",
            html.escape(info.describe()),
            f"next: {html.escape(next_fire_text(info, now))}",
            "<b>paused</b>" if info.paused else "running",
            f"last: {last}",
        ]
        if info.skipped:
            cells.append(f"skipped {info.skipped}")
        text = "<span style='font-family:monospace;font-size:12px'>" + " · ".join(cells) + "</span>"
        if self.info.value != text:
            self.info.value = text
        self.paused = info.paused
        label = "Resume" if info.paused else "Pause"
        if self.toggle.description != label:
            self.toggle.description = label
            self.toggle.tooltip = (
                "fire again from now on (missed fires are not run)" if info.paused else ("stop firing until resumed")
            )


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

    def add(self, view: ExecutionView | ExecutionsTable | SchedulesTable) -> None:
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
                if getattr(view, "finished", False) and not view.has_pending():
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
