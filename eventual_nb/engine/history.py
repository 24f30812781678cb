"""The typed history of an execution and the commands a workflow step asks a runtime to carry out.

History is append-only and JSON-serialisable; the event `type` strings are part of the public
contract (stored in databases, shown by the CLI and widgets), so they never change.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from eventual_nb.retry import RetryPolicy


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seq: int | None = None
    timestamp: datetime


class WorkflowStarted(_Event):
    type: Literal["WorkflowStarted"] = "WorkflowStarted"
    workflow: str
    input: Any = None
    parent: str | None = None
    timeout_at: datetime | None = None


class ActivityScheduled(_Event):
    type: Literal["ActivityScheduled"] = "ActivityScheduled"
    name: str
    input: dict[str, Any] = Field(default_factory=dict)


class ActivitySucceeded(_Event):
    type: Literal["ActivitySucceeded"] = "ActivitySucceeded"
    result: Any = None
    attempts: int = 1


class ActivityFailed(_Event):
    type: Literal["ActivityFailed"] = "ActivityFailed"
    error: str
    message: str = ""
    attempts: int = 1


class ActivityTimedOut(_Event):
    type: Literal["ActivityTimedOut"] = "ActivityTimedOut"
    error: str = "Timeout"
    message: str = ""
    attempts: int = 1


class ActivityHeartbeatTimedOut(_Event):
    type: Literal["ActivityHeartbeatTimedOut"] = "ActivityHeartbeatTimedOut"
    error: str = "HeartbeatTimeout"
    message: str = ""
    attempts: int = 1


class TimerScheduled(_Event):
    type: Literal["TimerScheduled"] = "TimerScheduled"
    until: datetime
    #: the signal whose `expect(timeout=)` this timer is: history records no cancelled timer, so this is how a
    #: reader (the notebook's timeline) knows the timer ended when that signal arrived; not part of replay
    signal_timeout: str | None = None


class TimerCompleted(_Event):
    type: Literal["TimerCompleted"] = "TimerCompleted"


class SignalReceived(_Event):
    type: Literal["SignalReceived"] = "SignalReceived"
    signal: str
    payload: Any = None
    id: str | None = None


class SignalSent(_Event):
    type: Literal["SignalSent"] = "SignalSent"
    target: str
    signal: str
    payload: Any = None


class EventsPublished(_Event):
    type: Literal["EventsPublished"] = "EventsPublished"
    events: list[dict[str, Any]]


class ChildWorkflowScheduled(_Event):
    type: Literal["ChildWorkflowScheduled"] = "ChildWorkflowScheduled"
    workflow: str
    child_id: str
    input: Any = None


class ChildWorkflowSucceeded(_Event):
    type: Literal["ChildWorkflowSucceeded"] = "ChildWorkflowSucceeded"
    result: Any = None


class ChildWorkflowFailed(_Event):
    type: Literal["ChildWorkflowFailed"] = "ChildWorkflowFailed"
    error: str
    message: str = ""


class PatchMarker(_Event):
    type: Literal["PatchMarker"] = "PatchMarker"
    patch_id: str


class CancelRequested(_Event):
    type: Literal["CancelRequested"] = "CancelRequested"


class WorkflowSucceeded(_Event):
    type: Literal["WorkflowSucceeded"] = "WorkflowSucceeded"
    result: Any = None


class WorkflowFailed(_Event):
    type: Literal["WorkflowFailed"] = "WorkflowFailed"
    error: str
    message: str = ""


class WorkflowCancelled(_Event):
    type: Literal["WorkflowCancelled"] = "WorkflowCancelled"


HistoryEvent = Annotated[
    WorkflowStarted
    | ActivityScheduled
    | ActivitySucceeded
    | ActivityFailed
    | ActivityTimedOut
    | ActivityHeartbeatTimedOut
    | TimerScheduled
    | TimerCompleted
    | SignalReceived
    | SignalSent
    | EventsPublished
    | ChildWorkflowScheduled
    | ChildWorkflowSucceeded
    | ChildWorkflowFailed
    | PatchMarker
    | CancelRequested
    | WorkflowSucceeded
    | WorkflowFailed
    | WorkflowCancelled,
    Field(discriminator="type"),
]

HISTORY_ADAPTER: TypeAdapter[list[HistoryEvent]] = TypeAdapter(list[HistoryEvent])
EVENT_ADAPTER: TypeAdapter[HistoryEvent] = TypeAdapter(HistoryEvent)

#: call events: what the workflow did, each answering to one seq
CALL_EVENTS = (ActivityScheduled, TimerScheduled, SignalSent, EventsPublished, ChildWorkflowScheduled)
#: events that end a durable call
ACTIVITY_RESULTS = (ActivitySucceeded, ActivityFailed, ActivityTimedOut, ActivityHeartbeatTimedOut)
CHILD_RESULTS = (ChildWorkflowSucceeded, ChildWorkflowFailed)
TERMINAL_EVENTS = (WorkflowSucceeded, WorkflowFailed, WorkflowCancelled)
EVENT_TYPES: tuple[str, ...] = (
    "WorkflowStarted",
    "ActivityScheduled",
    "ActivitySucceeded",
    "ActivityFailed",
    "ActivityTimedOut",
    "ActivityHeartbeatTimedOut",
    "TimerScheduled",
    "TimerCompleted",
    "SignalReceived",
    "SignalSent",
    "EventsPublished",
    "ChildWorkflowScheduled",
    "ChildWorkflowSucceeded",
    "ChildWorkflowFailed",
    "PatchMarker",
    "CancelRequested",
    "WorkflowSucceeded",
    "WorkflowFailed",
    "WorkflowCancelled",
)


def parse_history(history: Any) -> list[HistoryEvent]:
    """Accept events, their JSON dicts, or the JSON text of the list."""
    if isinstance(history, (str, bytes)):
        return HISTORY_ADAPTER.validate_json(history)
    items = list(history)
    if all(isinstance(item, _Event) for item in items):
        return items
    return HISTORY_ADAPTER.validate_python([item.model_dump() if isinstance(item, _Event) else item for item in items])


def event_fields(event: HistoryEvent) -> list[tuple[str, Any]]:
    """What an event says beyond its type, seq and time, as (field, JSON value) pairs in declaration order.

    Every history table (the CLI's, the widget's, the HTML page's) shows these, so they agree on what an
    event holds; empty values and the `attempts=1` of a call decided on its first attempt are left out."""
    data = event.model_dump(mode="json", exclude={"type", "seq", "timestamp"})
    return [
        (name, value)
        for name, value in data.items()
        if value is not None and value != {} and value != [] and not (name == "attempts" and value == 1)
    ]


def describe_event(event: HistoryEvent) -> str:
    """`event_fields` as one line of ``name=value`` pairs (strings as they are, anything else as compact JSON)."""
    return " ".join(
        f"{name}={value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(',', ':'))}"
        for name, value in event_fields(event)
    )


def dump_history(history: list[HistoryEvent]) -> list[dict[str, Any]]:
    return [event.model_dump(mode="json") for event in history]


# ---------------------------------------------------------------------------------------------- commands


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


class ScheduleActivity(_Command):
    kind: Literal["ScheduleActivity"] = "ScheduleActivity"
    seq: int
    name: str
    input: dict[str, Any]
    timeout: timedelta | None = None
    heartbeat_timeout: timedelta | None = None
    retry: RetryPolicy = Field(default_factory=RetryPolicy)


class StartTimer(_Command):
    kind: Literal["StartTimer"] = "StartTimer"
    seq: int
    until: datetime


class CancelTimer(_Command):
    kind: Literal["CancelTimer"] = "CancelTimer"
    seq: int


class SendSignal(_Command):
    kind: Literal["SendSignal"] = "SendSignal"
    seq: int
    target: str
    signal: str
    payload: Any = None
    id: str


class PublishEvents(_Command):
    kind: Literal["PublishEvents"] = "PublishEvents"
    seq: int
    events: list[dict[str, Any]]


class StartChildWorkflow(_Command):
    kind: Literal["StartChildWorkflow"] = "StartChildWorkflow"
    seq: int
    workflow: str
    child_id: str
    input: Any = None
    timeout: timedelta | None = None


class CancelChildWorkflow(_Command):
    kind: Literal["CancelChildWorkflow"] = "CancelChildWorkflow"
    seq: int
    child_id: str


class CompleteWorkflow(_Command):
    kind: Literal["CompleteWorkflow"] = "CompleteWorkflow"
    result: Any = None


class FailWorkflow(_Command):
    kind: Literal["FailWorkflow"] = "FailWorkflow"
    error: str
    message: str = ""


class CancelWorkflow(_Command):
    kind: Literal["CancelWorkflow"] = "CancelWorkflow"


Command = Annotated[
    ScheduleActivity
    | StartTimer
    | CancelTimer
    | SendSignal
    | PublishEvents
    | StartChildWorkflow
    | CancelChildWorkflow
    | CompleteWorkflow
    | FailWorkflow
    | CancelWorkflow,
    Field(discriminator="kind"),
]
COMMAND_ADAPTER: TypeAdapter[list[Command]] = TypeAdapter(list[Command])


class Wait(BaseModel):
    """One thing an execution is blocked on now (`WorkflowExecutor.open_waits`).

    History records the calls an execution made, not a `Signal.expect()` without a timeout nor an
    `ev.condition()`: those waits exist only in the running workflow, so readers (the timeline, the
    executions table) ask for them. `name` is the activity's name, the child's execution id or the
    signal's name; `since` is when the wait began (history time); `until` when a timer fires."""

    kind: Literal["activity", "child", "signal", "condition", "timer"]
    seq: int | None = None
    name: str | None = None
    since: datetime | None = None
    until: datetime | None = None


class LogEntry(BaseModel):
    """One captured line of output: `source` is `workflow`, an activity name or a subscription name."""

    time: datetime
    message: str
    source: str
