"""The timeline of one execution: what it did and waits on, as spans and instants on a time axis.

`build_timeline` is a pure function of what a runtime reports about an execution: its history, its
logs (for the attempts a runtime noted, `eventual_nb.attempts`) and, while it runs, its current waits
(`get_execution_waits`, which alone knows a `Signal.expect()` without a timeout and an `ev.condition()`).
It is the same for every runtime, and every picture of an execution (the notebook widget, the HTML
export, the terminal, the executions table's sparklines) draws this one model.

What history cannot say is left unsaid rather than guessed: a timer cancelled before it fired (a
`wait_for` the awaited call beat) ends at an unknown moment and is drawn up to the next thing the
execution did; an activity retried by a runtime that left no notes is one bar marked with its attempt
count; a signal `expect` without a timeout that was answered leaves only the signal's arrival.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import TypeAdapter

from eventual_nb.attempts import AttemptNote, read_note
from eventual_nb.durations import format_duration
from eventual_nb.engine.history import (
    ACTIVITY_RESULTS,
    CALL_EVENTS,
    TERMINAL_EVENTS,
    ActivityScheduled,
    ActivitySucceeded,
    ActivityTimedOut,
    CancelRequested,
    ChildWorkflowFailed,
    ChildWorkflowScheduled,
    ChildWorkflowSucceeded,
    EventsPublished,
    HistoryEvent,
    LogEntry,
    PatchMarker,
    SignalReceived,
    SignalSent,
    TimerCompleted,
    TimerScheduled,
    Wait,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowStarted,
    WorkflowSucceeded,
)
from eventual_nb.runtime.base import Execution, ExecutionStatus, ExecutionWaits

#: what a span's colour says; `OUTCOME_ORDER` ranks them for a bar that stands for several spans (worst first)
OUTCOMES = ("failed", "timed_out", "cancelled", "running", "waiting", "backoff", "received", "fired", "succeeded")
OUTCOME_ORDER = {outcome: rank for rank, outcome in enumerate(OUTCOMES)}
#: lanes one row may take before overlapping spans share its last lane
MAX_LANES = 6


@dataclass(slots=True)
class Span:
    """Something that took time: the workflow, an activity call, a timer, a child, a signal wait, a condition.

    `end` is None while it lasts (drawn up to the timeline's `now`); `planned_end` is when it is due to end
    (a timer, an `expect` timeout, a retry's backoff). An activity call whose attempts are known is drawn as
    its `parts` (attempts, backoff waits, a wait for completion by token) instead of one bar."""

    id: str
    kind: str
    row: str
    label: str
    start: datetime
    end: datetime | None
    outcome: str
    seq: int | None = None
    attempt: int | None = None
    planned_end: datetime | None = None
    details: dict[str, Any] = field(default_factory=dict)
    parts: list[Span] = field(default_factory=list)
    lane: int = 0


@dataclass(slots=True)
class Instant:
    """Something that happened at one moment: a signal received or sent, events published, a patch, a cancel."""

    id: str
    kind: str
    row: str
    label: str
    time: datetime
    details: dict[str, Any] = field(default_factory=dict)
    lane: int = 0


@dataclass(slots=True)
class Row:
    """One row of the picture: its label and how many lanes its overlapping spans need."""

    key: str
    label: str
    lanes: int = 1
    overflow: int = 0


@dataclass(slots=True)
class Timeline:
    """An execution as spans and instants. `end` is the last moment drawn (`now` while it runs, else when it
    ended); `now` is set only while it runs; `waiting` says in words what it waits on at `now`."""

    execution_id: str | None
    workflow: str
    status: str
    start: datetime
    end: datetime
    now: datetime | None
    spans: list[Span]
    instants: list[Instant]
    rows: list[Row]
    waiting: list[str]
    events: int

    def moments(self) -> list[datetime]:
        """Every time the picture must place: where spans start and end, instants, `now`."""
        found = [self.start, self.end]
        for span in self.all_spans():
            found.append(span.start)
            if span.end is not None:
                found.append(span.end)
            if span.planned_end is not None:
                found.append(span.planned_end)
        found.extend(instant.time for instant in self.instants)
        if self.now is not None:
            found.append(self.now)
        return found

    def all_spans(self) -> Iterable[Span]:
        for span in self.spans:
            yield span
            yield from span.parts

    def last_moment(self) -> datetime:
        """The right edge of the picture: `end`, or later when something is due after it (a pending timer)."""
        return max(self.moments())


def _failure(event: HistoryEvent) -> dict[str, Any]:
    error = getattr(event, "error", None)
    if not isinstance(error, str):
        return {}
    message = getattr(event, "message", "") or ""
    return {"error": error, "message": message} if message else {"error": error}


def _outcome_of(event: HistoryEvent) -> str:
    if isinstance(event, (ActivitySucceeded, ChildWorkflowSucceeded, WorkflowSucceeded)):
        return "succeeded"
    if isinstance(event, ActivityTimedOut) or event.type == "ActivityHeartbeatTimedOut":
        return "timed_out"
    if isinstance(event, WorkflowFailed) and event.error == "WorkflowTimeout":
        return "timed_out"
    if isinstance(event, ChildWorkflowFailed) and event.error == "WorkflowTimeout":
        return "timed_out"
    if isinstance(event, WorkflowCancelled):
        return "cancelled"
    return "failed"


def _in_words(delta: timedelta) -> str:
    """A coarse duration for "9 min left": the largest unit or two."""
    seconds = max(0.0, delta.total_seconds())
    if seconds < 1:
        return f"{round(seconds * 1000)} ms"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min"
    if seconds < 86400:
        hours, rest = divmod(seconds, 3600)
        return f"{hours:.0f} h {rest // 60:.0f} min" if rest >= 60 else f"{hours:.0f} h"
    days, rest = divmod(seconds, 86400)
    return f"{days:.0f} d {rest // 3600:.0f} h" if rest >= 3600 else f"{days:.0f} d"


def read_attempt_notes(logs: Iterable[LogEntry]) -> dict[int, list[AttemptNote]]:
    """The attempt notes among an execution's log lines, by seq, in the order they were written."""
    notes: dict[int, list[AttemptNote]] = {}
    for entry in logs:
        note = read_note(entry.time, entry.source, entry.message)
        if note is not None:
            notes.setdefault(note.seq, []).append(note)
    return notes


class _Builder:
    def __init__(self, history: Sequence[HistoryEvent], notes: dict[int, list[AttemptNote]]) -> None:
        self.history = history
        self.notes = notes
        self.spans: list[Span] = []
        self.instants: list[Instant] = []
        self.calls: dict[int, Span] = {}
        #: signal-timeout timers still waiting, oldest first: the next signal of that name ends the first
        self.signal_timers: dict[str, list[Span]] = {}
        self.open: dict[int, Span] = {}

    def add_instant(self, kind: str, row: str, label: str, time: datetime, details: dict[str, Any]) -> None:
        self.instants.append(Instant(f"i{len(self.instants)}", kind, row, label, time, details))

    def call(self, span: Span) -> None:
        self.spans.append(span)
        if span.seq is not None:
            self.calls[span.seq] = span
            self.open[span.seq] = span

    def close(self, seq: int | None, time: datetime, outcome: str, details: dict[str, Any]) -> Span | None:
        if seq is None:
            return None
        span = self.open.pop(seq, None)
        if span is None:
            return None
        span.end = time
        span.outcome = outcome
        span.planned_end = None
        span.details.update(details)
        return span


def build_timeline(
    history: Sequence[HistoryEvent],
    *,
    logs: Iterable[LogEntry] = (),
    waits: Iterable[Wait] | None = None,
    now: datetime | None = None,
    execution_id: str | None = None,
) -> Timeline:
    """The timeline of an execution from its `history`, its `logs` and (while it runs) its `waits` at `now`.

    `waits` is what `get_execution_waits` reports; without it the signal `expect`s without a timeout and the
    conditions the execution waits on are not shown. `now` is the runtime's clock (a TestEnvironment's
    virtual time); it defaults to the last recorded event, and only matters while the execution runs."""
    if not history:
        moment = now or datetime.now().astimezone()
        return Timeline(execution_id, "", "IN_PROGRESS", moment, moment, None, [], [], [], [], 0)
    started = history[0]
    workflow_name = started.workflow if isinstance(started, WorkflowStarted) else ""
    builder = _Builder(history, read_attempt_notes(logs))
    start = history[0].timestamp
    last_event = history[-1].timestamp
    workflow = Span(
        "w",
        "workflow",
        "workflow",
        f"workflow {workflow_name}",
        start,
        None,
        "running",
        details={},
    )
    if isinstance(started, WorkflowStarted):
        workflow.details["input"] = started.input
        if started.parent is not None:
            workflow.details["parent"] = started.parent
        if started.timeout_at is not None:
            workflow.details["times out at"] = started.timeout_at.isoformat()
    builder.spans.append(workflow)
    terminal: HistoryEvent | None = None
    for event in history:
        _apply(builder, event, workflow)
        if isinstance(event, TERMINAL_EVENTS) and terminal is None:
            terminal = event
    status = "IN_PROGRESS"
    if terminal is not None:
        status = {"WorkflowSucceeded": "SUCCEEDED", "WorkflowFailed": "FAILED", "WorkflowCancelled": "CANCELLED"}[
            terminal.type
        ]
    clock = max(now or last_event, last_event) if terminal is None else None
    end = terminal.timestamp if terminal is not None else (clock or last_event)
    open_waits = None if waits is None or terminal is not None else list(waits)
    _finish_open(builder, terminal, open_waits)
    for span in builder.spans:
        if span.kind == "activity" and span.seq is not None:
            _attempts(span, builder.notes.get(span.seq, []), clock)
    _add_waits(builder, open_waits or [], end)
    rows = _layout(builder.spans, builder.instants)
    waiting = describe_waiting(builder.spans, clock) if clock is not None else []
    return Timeline(
        execution_id,
        workflow_name,
        status,
        start,
        end,
        clock,
        builder.spans,
        builder.instants,
        rows,
        waiting,
        len(history),
    )


def _apply(builder: _Builder, event: HistoryEvent, workflow: Span) -> None:
    """Add what one history event shows: a call opened or closed, an instant, or the workflow's end."""
    if isinstance(event, (ActivityScheduled, TimerScheduled, ChildWorkflowScheduled)):
        _open_call(builder, event)
    elif isinstance(event, (*ACTIVITY_RESULTS, TimerCompleted, ChildWorkflowSucceeded, ChildWorkflowFailed)):
        _close_call(builder, event)
    elif isinstance(event, SignalReceived):
        _signal_received(builder, event)
    elif isinstance(event, (SignalSent, EventsPublished, PatchMarker, CancelRequested)):
        _add_instant(builder, event)
    elif isinstance(event, TERMINAL_EVENTS) and workflow.end is None:
        workflow.end = event.timestamp
        workflow.outcome = _outcome_of(event)
        if isinstance(event, WorkflowSucceeded):
            workflow.details["result"] = event.result
        workflow.details.update(_failure(event))


def _open_call(builder: _Builder, event: ActivityScheduled | TimerScheduled | ChildWorkflowScheduled) -> None:
    """The span of a call the workflow made: an activity, a timer (a sleep or an `expect`'s timeout), a child."""
    if isinstance(event, ActivityScheduled):
        details: dict[str, Any] = {"input": event.input}
        builder.call(
            Span(
                f"s{event.seq}",
                "activity",
                f"activity {event.name}",
                event.name,
                event.timestamp,
                None,
                "running",
                seq=event.seq,
                details=details,
            )
        )
    elif isinstance(event, TimerScheduled):
        # a timer is either a sleep or the timeout of a signal's `expect`, drawn as that signal's wait
        name = event.signal_timeout
        kind, row, label = (
            ("timer", "timer", "timer") if name is None else ("signal", f"signal {name}", f"expect {name}")
        )
        due = {"until" if name is None else "timeout at": event.until.isoformat()}
        span = Span(f"s{event.seq}", kind, row, label, event.timestamp, None, "waiting", seq=event.seq,
                    planned_end=event.until, details=due)  # fmt: skip
        if name is not None:
            builder.signal_timers.setdefault(name, []).append(span)
        builder.call(span)
    else:
        builder.call(
            Span(
                f"s{event.seq}",
                "child",
                f"child {event.workflow}",
                event.child_id,
                event.timestamp,
                None,
                "running",
                seq=event.seq,
                details={"child": event.child_id, "input": event.input},
            )
        )


def _close_call(builder: _Builder, event: HistoryEvent) -> None:
    """End the span of the call `event` answers: an activity's or a child's result, a timer that fired."""
    if isinstance(event, ACTIVITY_RESULTS):
        result: dict[str, Any] = {"attempts": event.attempts}
        if isinstance(event, ActivitySucceeded):
            result["result"] = event.result
        result.update(_failure(event))
        builder.close(event.seq, event.timestamp, _outcome_of(event), result)
    elif isinstance(event, TimerCompleted):
        fired = builder.close(event.seq, event.timestamp, "fired", {})
        if fired is not None and fired.kind == "signal":
            fired.outcome = "timed_out"
            fired.details["outcome"] = "timed out: no signal before the timeout"
            expecting = builder.signal_timers.get(fired.row.removeprefix("signal "), [])
            if fired in expecting:
                expecting.remove(fired)
    elif isinstance(event, (ChildWorkflowSucceeded, ChildWorkflowFailed)):
        details = {"result": event.result} if isinstance(event, ChildWorkflowSucceeded) else _failure(event)
        builder.close(event.seq, event.timestamp, _outcome_of(event), details)


def _signal_received(builder: _Builder, event: SignalReceived) -> None:
    """A signal's instant on its row; it also answers the oldest `expect` with a timeout waiting for it."""
    row = f"signal {event.signal}"
    details = {"payload": event.payload}
    if event.id is not None:
        details["id"] = event.id
    builder.add_instant("signal", row, f"{event.signal} received", event.timestamp, details)
    timed = builder.signal_timers.get(event.signal)
    if timed:
        builder.close(timed.pop(0).seq, event.timestamp, "received", {"payload": event.payload})


def _add_instant(builder: _Builder, event: SignalSent | EventsPublished | PatchMarker | CancelRequested) -> None:
    """The instants that end nothing: a signal sent, events published, a patch marker, a cancel request."""
    if isinstance(event, SignalSent):
        builder.add_instant(
            "sent",
            "signals sent",
            f"{event.signal} → {event.target}",
            event.timestamp,
            {"seq": event.seq, "target": event.target, "payload": event.payload},
        )
    elif isinstance(event, EventsPublished):
        names = ", ".join(str(item.get("name", "?")) for item in event.events)
        builder.add_instant(
            "events", "events published", names, event.timestamp, {"seq": event.seq, "events": event.events}
        )
    elif isinstance(event, PatchMarker):
        builder.add_instant("patch", "workflow", f"patch {event.patch_id}", event.timestamp, {"patch": event.patch_id})
    else:
        builder.add_instant("cancel", "workflow", "cancel requested", event.timestamp, {})


def _finish_open(builder: _Builder, terminal: HistoryEvent | None, waits: list[Wait] | None) -> None:
    """Decide the calls history left open: pending when the execution ended, pending now, or a timer that was
    cancelled before it fired (a `wait_for` whose call came first)."""
    live_timers = None if waits is None else {wait.seq for wait in waits if wait.kind == "timer"}
    for seq, span in sorted(builder.open.items()):
        if span.kind not in ("timer", "signal"):
            if terminal is not None:
                _ended_with(span, terminal.timestamp, "still pending when the execution ended")
            continue
        if terminal is None and (live_timers is None or seq in live_timers):
            continue  # still waiting
        # A timer that neither fired nor was answered by its signal was cancelled when the code it guarded
        # went on, which history does not record: the code's next call (or its end) after the next event that
        # woke it is the closest moment history has.
        moment = _next_move(builder.history, span.seq)
        if moment is None:
            moment = terminal.timestamp if terminal is not None else builder.history[-1].timestamp
        _ended_with(span, moment, "cancelled before it fired (history records no time: drawn to the next call)")
    builder.open.clear()


def _next_move(history: Sequence[HistoryEvent], seq: int | None) -> datetime | None:
    """When the code next moved after the call `seq`: its first call or end after the first event it was woken by."""
    found = False
    woken = False
    for event in history:
        if not found:
            found = event.seq == seq and event.type == "TimerScheduled"
        elif not woken:
            woken = not isinstance(event, CALL_EVENTS) and event.type != "PatchMarker"
        elif isinstance(event, (*CALL_EVENTS, *TERMINAL_EVENTS)):
            return event.timestamp
    return None


def _ended_with(span: Span, moment: datetime, why: str) -> None:
    span.end = max(moment, span.start)
    span.outcome = "cancelled"
    span.planned_end = None
    span.details["outcome"] = why


def _attempts(call: Span, notes: list[AttemptNote], now: datetime | None) -> None:
    """Split an activity call into its attempts, backoff waits and waits for completion, from the runtime's
    notes; a call retried without notes stays one bar that says how many attempts it took."""
    attempts = int(call.details.get("attempts", 1))
    if not notes:
        if attempts > 1:
            call.label = f"{call.label} ×{attempts}"
            call.details["attempts"] = attempts
        return
    common = {"input": call.details.get("input")}
    parts: list[Span] = []
    begin, attempt, kind = call.start, 1, "attempt"

    def part(kind: str, start: datetime, end: datetime | None, state: str, number: int, **details: Any) -> Span:
        label = {"attempt": f"attempt {number}", "backoff": f"backoff before attempt {number + 1}",
                 "async": f"attempt {number}: waiting for completion"}[kind]  # fmt: skip
        span = Span(
            f"{call.id}.{len(parts)}",
            kind,
            call.row,
            label,
            start,
            end,
            state,
            seq=call.seq,
            attempt=number,
            details={**common, "attempt": number, **details},
        )
        parts.append(span)
        return span

    for note in sorted(notes, key=lambda n: (n.attempt, n.kind != "async")):
        if note.attempt != attempt:
            continue
        if note.time < begin:  # it ran before its retry was due (clocks apart): the backoff ended then
            begin = note.time
            if parts and parts[-1].kind == "backoff" and parts[-1].end is not None:
                parts[-1].end = max(begin, parts[-1].start)
            begin = max(begin, parts[-1].end or begin) if parts else begin
        if note.kind == "async":
            part(kind, begin, note.time, "succeeded", attempt, returned="ev.async_result()")
            begin, kind = note.time, "async"
            continue
        failure = {"error": note.error, **({"message": note.message} if note.message else {})}
        part(kind, begin, note.time, "failed", attempt, **failure)
        due = note.due or note.time
        waiting = call.end is None and now is not None and now < due
        backoff = part(
            "backoff", note.time, None if waiting else due, "backoff", attempt, **{"retry at": due.isoformat()}
        )
        backoff.planned_end = due if waiting else None
        begin, attempt, kind = due, attempt + 1, "attempt"
    if call.end is None and now is not None and now < begin:
        call.parts = parts  # waiting to retry: the next attempt has not started
        return
    final = {key: value for key, value in call.details.items() if key not in ("input", "attempts")}
    outcome = "waiting" if kind == "async" and call.end is None else call.outcome
    last = part(kind, begin, call.end, outcome, attempt, **final)
    if call.end is not None and last.end is not None and last.end < last.start:
        last.start = last.end
    call.parts = parts
    call.label = f"{call.label} ×{attempt}" if attempt > 1 else call.label


def _add_waits(builder: _Builder, waits: list[Wait], end: datetime) -> None:
    """Spans for the waits history does not record: signal `expect`s without a timeout and conditions."""
    with_timeout: dict[str, int] = {}
    for span in builder.spans:
        if span.kind == "signal" and span.end is None:
            name = span.row.removeprefix("signal ")
            with_timeout[name] = with_timeout.get(name, 0) + 1
    for index, wait in enumerate(waits):
        since = wait.since or end
        if wait.kind == "signal" and wait.name is not None:
            if with_timeout.get(wait.name, 0) > 0:
                with_timeout[wait.name] -= 1  # the wait history knows through its timeout's timer
                continue
            builder.spans.append(
                Span(
                    f"w{index}",
                    "signal",
                    f"signal {wait.name}",
                    f"expect {wait.name}",
                    since,
                    None,
                    "waiting",
                    details={"waiting since": since.isoformat()},
                )
            )
        elif wait.kind == "condition":
            builder.spans.append(
                Span(
                    f"w{index}",
                    "condition",
                    "condition",
                    "condition",
                    since,
                    None,
                    "waiting",
                    details={"waiting since": since.isoformat()},
                )
            )


def describe_waiting(spans: Iterable[Span], now: datetime | None) -> list[str]:
    """What an execution waits on at `now`, in words: "signal Approve, 9 min left", "timer, 29 d left"."""
    found: list[str] = []
    for span in spans:
        if span.end is not None or span.kind == "workflow":
            continue
        left = ""
        if span.planned_end is not None and now is not None:
            left = f", {_in_words(span.planned_end - now)} left"
        if span.kind == "activity":
            name = span.row.removeprefix("activity ")
            current = span.parts[-1] if span.parts else None
            if current is not None and current.kind == "backoff" and current.planned_end is not None and now:
                found.append(f"activity {name}: retry in {_in_words(current.planned_end - now)}")
            elif current is not None and current.kind == "async":
                found.append(f"activity {name}: completion by token")
            else:
                attempt = f" (attempt {current.attempt})" if current is not None and current.attempt else ""
                found.append(f"activity {name}{attempt}")
        elif span.kind == "signal":
            found.append(f"signal {span.label.removeprefix('expect ')}{left}")
        elif span.kind == "timer":
            found.append(f"timer{left}")
        elif span.kind == "child":
            found.append(f"child {span.label}")
        else:
            found.append(span.kind)
    return found


def _layout(spans: list[Span], instants: list[Instant]) -> list[Row]:
    """Rows in order of first appearance (the workflow first), each span in the first lane of its row that is
    free when it starts; spans beyond `MAX_LANES` overlap in the last lane (the row counts them)."""
    rows: dict[str, Row] = {}
    #: per row, per lane: when the lane is free again (None: taken by a span that has not ended)
    free_at: dict[str, list[datetime | None]] = {}
    order = sorted(
        [(span.start, 0, index) for index, span in enumerate(spans)]
        + [(instant.time, 1, index) for index, instant in enumerate(instants)]
    )
    for _, is_instant, index in order:
        key = instants[index].row if is_instant else spans[index].row
        if key not in rows:
            rows[key] = Row(key, key)
            free_at[key] = []
        if is_instant:
            continue
        span = spans[index]
        lanes = free_at[key]
        lane = next((i for i, free in enumerate(lanes) if free is not None and free <= span.start), None)
        if lane is None and len(lanes) < MAX_LANES:
            lane = len(lanes)
            lanes.append(span.end)
        elif lane is None:
            lane = MAX_LANES - 1
            rows[key].overflow += 1
            busy = lanes[lane]
            lanes[lane] = None if busy is None or span.end is None else max(busy, span.end)
        else:
            lanes[lane] = span.end
        span.lane = lane
        for part in span.parts:
            part.lane = lane
        rows[key].lanes = len(lanes)
    return sorted(rows.values(), key=lambda row: row.key != "workflow")


# --------------------------------------------------------------------------------------------- the axis


#: a gap between two moments longer than this many times the typical gap is drawn shortened, with a break
BREAK_RATIO = 8.0
#: seconds a gap lasts at least to be drawn as a break (below it, to scale is readable enough)
MIN_BREAK = 1.0
#: the share of the axis the shortened gaps take together, at most (each takes `BREAK_SHARE_EACH`, at most)
BREAK_SHARE = 0.3
BREAK_SHARE_EACH = 0.08


class Axis:
    """Where a moment goes across the picture (0 to 1), with long quiet stretches shortened.

    The moments of a timeline (starts, ends, instants, now) cut time into gaps. A gap much longer than the
    typical one (`BREAK_RATIO` times the median non-zero gap) is drawn as a break: together the breaks
    take at most `BREAK_SHARE` of the width, longer ones a little more (by the logarithm of their length),
    so a 30-day timer and a 40 ms activity both read. Everything else is to scale."""

    def __init__(self, start: datetime, end: datetime, moments: Iterable[datetime], ratio: float = BREAK_RATIO):
        self.start = start
        self.end = max(end, start)
        span = (self.end - start).total_seconds()
        points = sorted({min(max((m - start).total_seconds(), 0.0), span) for m in moments} | {0.0, span})
        gaps = [b - a for a, b in itertools.pairwise(points)]
        nonzero = sorted(gap for gap in gaps if gap > 0)
        limit = max(ratio * nonzero[(len(nonzero) - 1) // 2], MIN_BREAK) if nonzero else math.inf
        long = [gap > limit for gap in gaps]
        weights = [1 + math.log10(gap / limit) if is_long else 0.0 for gap, is_long in zip(gaps, long, strict=True)]
        to_scale = sum(gap for gap, is_long in zip(gaps, long, strict=True) if not is_long)
        if to_scale > 0 and any(long):
            share = min(BREAK_SHARE, BREAK_SHARE_EACH * sum(long))
            scale = share / (1 - share) * to_scale / sum(weights)
            widths = [
                weight * scale if is_long else gap for gap, weight, is_long in zip(gaps, weights, long, strict=True)
            ]
        elif any(long):  # nothing but long gaps: each drawn by its weight
            widths = weights
        else:
            widths = gaps
        total = sum(widths) or 1.0
        self._points = points
        self._cumulative = [0.0]
        for width in widths:
            self._cumulative.append(self._cumulative[-1] + width / total)
        #: (from, to) across the picture and the seconds each shortened gap stands for
        self.breaks: list[tuple[float, float, float]] = [
            (self._cumulative[i], self._cumulative[i + 1], gap) for i, gap in enumerate(gaps) if long[i]
        ]

    def x(self, moment: datetime) -> float:
        """Where `moment` goes, from 0 (the start) to 1 (the end)."""
        seconds = (moment - self.start).total_seconds()
        points = self._points
        if seconds <= points[0]:
            return 0.0
        if seconds >= points[-1]:
            return 1.0
        i = bisect.bisect_right(points, seconds) - 1
        a, b = points[i], points[i + 1]
        left, right = self._cumulative[i], self._cumulative[i + 1]
        return left + (right - left) * ((seconds - a) / (b - a) if b > a else 0.0)

    def at(self, fraction: float) -> float:
        """Seconds after the start at `fraction` across (the inverse of `x`, for tick labels)."""
        cumulative = self._cumulative
        fraction = min(max(fraction, 0.0), 1.0)
        i = min(bisect.bisect_right(cumulative, fraction) - 1, len(self._points) - 2)
        if i < 0:
            return 0.0
        left, right = cumulative[i], cumulative[i + 1]
        a, b = self._points[i], self._points[i + 1]
        return a + (b - a) * ((fraction - left) / (right - left) if right > left else 0.0)

    def ticks(self, count: int) -> list[tuple[float, str]]:
        """About `count` labelled places across the axis ("+2.2s", "+30d6s"), none inside a break, each
        rounded to what tells the ticks of its stretch (between breaks) apart."""
        edges = [0.0] + [edge for left, right, _ in self.breaks for edge in (left, right)] + [1.0]
        stretches = list(zip(edges[::2], edges[1::2], strict=False))
        found: list[tuple[float, str]] = []
        for step in range(count + 1):
            fraction = step / count
            stretch = next(((a, b) for a, b in stretches if a <= fraction <= b), None)
            if stretch is None:
                continue  # inside a break
            length = self.at(stretch[1]) - self.at(stretch[0])
            resolution = 10 ** math.floor(math.log10(length / max(count, 1))) if length > 0 else 1.0
            seconds = round(self.at(fraction) / resolution) * resolution
            digits = max(0, min(3, -math.floor(math.log10(resolution))))
            found.append((self.x(self.start + timedelta(seconds=seconds)), short_duration(seconds, digits)))
        return found


def rough_duration(seconds: float) -> str:
    """How long a break lasts, to the precision a glance needs: "250ms", "2.5s", "10m", "3h20m", "30d"."""
    if seconds < 1:
        return format_duration(timedelta(seconds=seconds))
    if seconds < 60:
        return f"{seconds:.3g}s"
    unit = 1 if seconds < 3600 else (60 if seconds < 86400 else 3600)
    return format_duration(timedelta(seconds=round(seconds / unit) * unit))


def short_duration(seconds: float, digits: int = 1) -> str:
    """A time since the start for an axis label, with `digits` decimals of seconds: "0", "+40ms", "+2.2s"."""
    if seconds <= 0:
        return "0"
    if seconds < 1 and digits >= 3:
        return f"+{seconds * 1000:.{max(0, digits - 3)}f}ms"
    if seconds < 60:
        return f"+{seconds:.{digits}f}s"
    whole = format_duration(timedelta(seconds=int(seconds)))
    fraction = f"{seconds - int(seconds):.{digits}f}"[1:] if digits else ""
    if not fraction:
        return f"+{whole}"
    return f"+{whole[:-1]}{fraction}s" if whole.endswith("s") else f"+{whole}0{fraction}s"


def elapsed(timeline: Timeline, moment: datetime) -> str:
    """`moment` as time since the execution started ("+1.5s")."""
    seconds = (moment - timeline.start).total_seconds()
    return "+" + format_duration(timedelta(seconds=max(seconds, 0.0)))


def duration_of(span: Span, now: datetime | None) -> timedelta | None:
    end = span.end or now
    return None if end is None else max(end - span.start, timedelta(0))


# ------------------------------------------------------------------------------------------- reading


@dataclass(slots=True)
class Snapshot:
    """What a runtime or client reports about one execution at one moment: enough to build its timeline."""

    execution: Execution
    history: list[HistoryEvent]
    logs: list[LogEntry]
    waits: ExecutionWaits | None

    def timeline(self, now: datetime | None = None) -> Timeline:
        """The timeline at `now` (default: when the runtime reported the waits, on its clock)."""
        return build_timeline(
            self.history,
            logs=self.logs,
            waits=None if self.waits is None else self.waits.waits,
            now=now or (None if self.waits is None else self.waits.now),
            execution_id=self.execution.id,
        )


async def read_snapshot(client: Any, execution_id: str, *, logs: bool = True) -> Snapshot:
    """Ask a runtime or `ServiceClient` for an execution's state, history, logs and (while it runs) waits."""
    execution = await client.get_execution(execution_id)
    history = await client.get_execution_history(execution_id)
    entries = await client.get_execution_logs(execution_id) if logs else []
    waits = None
    if execution.status == ExecutionStatus.IN_PROGRESS:
        waits = await client.get_execution_waits(execution_id)
    return Snapshot(execution, list(history), list(entries), waits)


def timeline_json(timeline: Timeline) -> dict[str, Any]:
    """The timeline as JSON (what `eventual-nb timeline ID --json` prints)."""
    data: dict[str, Any] = _TIMELINE_ADAPTER.dump_python(timeline, mode="json")
    return data


_TIMELINE_ADAPTER: TypeAdapter[Timeline] = TypeAdapter(Timeline)
