"""The typed history of an execution and the commands a workflow step asks a runtime to carry out.

History is append-only and JSON-serialisable; the event `type` strings are part of the public
contract (stored in databases, shown by the CLI and widgets), so they never change.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any, ClassVar, Generic, Literal, TypeVar, cast, get_args

import msgspec
from msgspec import Struct, field
from pydantic import BaseModel

from eventual_nb.retry import RetryPolicy
from eventual_nb.shapes import Shape


def _pydantic_to_json(value: Any) -> Any:
    if isinstance(value, BaseModel):  # a command's RetryPolicy
        return value.model_dump(mode="json")
    raise TypeError(f"{type(value).__name__} is not JSON")


_ENCODER = msgspec.json.Encoder(enc_hook=_pydantic_to_json)


class _Shaped(Struct):
    """The JSON form of the engine's own types, under the names DESIGN gives it (`e.model_dump(mode="json")`)."""

    def model_dump(self, *, mode: Literal["json", "python"] = "json", exclude: Collection[str] = ()) -> dict[str, Any]:
        """The value as a dict, its tag (`type` of an event, `kind` of a command) included. `mode="python"`
        keeps datetimes and durations as objects; `exclude` leaves out the named fields."""
        if mode == "json":
            data: dict[str, Any] = msgspec.to_builtins(self, enc_hook=_pydantic_to_json)
        else:
            config = self.__struct_config__
            data = {str(config.tag_field): config.tag, **msgspec.structs.asdict(self)}
        for name in exclude:
            data.pop(name, None)
        return data

    def model_dump_json(self) -> str:
        """The JSON text, as stored in databases and sent on queues."""
        return _ENCODER.encode(self).decode()


class _Event(_Shaped, kw_only=True, tag=True, tag_field="type", forbid_unknown_fields=True, gc=False):
    """The fields every history event has. `type` (the class name) is the tag of its JSON form.

    `gc=False`: an event holds JSON values only, never a cycle, so the collector need not track the
    events a busy runtime keeps cached in its executors."""

    #: the event's kind, its class name: the tag of its JSON form
    type: ClassVar[str]

    seq: int | None = None
    timestamp: datetime


class WorkflowStarted(_Event, kw_only=True):
    type: ClassVar[Literal["WorkflowStarted"]] = "WorkflowStarted"
    workflow: str
    input: Any = None
    parent: str | None = None
    timeout_at: datetime | None = None


class ActivityScheduled(_Event, kw_only=True):
    type: ClassVar[Literal["ActivityScheduled"]] = "ActivityScheduled"
    name: str
    input: dict[str, Any] = field(default_factory=dict)


class ActivitySucceeded(_Event, kw_only=True):
    type: ClassVar[Literal["ActivitySucceeded"]] = "ActivitySucceeded"
    result: Any = None
    attempts: int = 1


class ActivityFailed(_Event, kw_only=True):
    type: ClassVar[Literal["ActivityFailed"]] = "ActivityFailed"
    error: str
    message: str = ""
    attempts: int = 1


class ActivityTimedOut(_Event, kw_only=True):
    type: ClassVar[Literal["ActivityTimedOut"]] = "ActivityTimedOut"
    error: str = "Timeout"
    message: str = ""
    attempts: int = 1


class ActivityHeartbeatTimedOut(_Event, kw_only=True):
    type: ClassVar[Literal["ActivityHeartbeatTimedOut"]] = "ActivityHeartbeatTimedOut"
    error: str = "HeartbeatTimeout"
    message: str = ""
    attempts: int = 1


class TimerScheduled(_Event, kw_only=True):
    type: ClassVar[Literal["TimerScheduled"]] = "TimerScheduled"
    until: datetime
    #: the signal whose `expect(timeout=)` this timer is: history records no cancelled timer, so this is how a
    #: reader (the notebook's timeline) knows the timer ended when that signal arrived; not part of replay
    signal_timeout: str | None = None


class TimerCompleted(_Event, kw_only=True):
    type: ClassVar[Literal["TimerCompleted"]] = "TimerCompleted"


class SignalReceived(_Event, kw_only=True):
    type: ClassVar[Literal["SignalReceived"]] = "SignalReceived"
    signal: str
    payload: Any = None
    id: str | None = None


class SignalSent(_Event, kw_only=True):
    type: ClassVar[Literal["SignalSent"]] = "SignalSent"
    target: str
    signal: str
    payload: Any = None


class EventsPublished(_Event, kw_only=True):
    type: ClassVar[Literal["EventsPublished"]] = "EventsPublished"
    events: list[dict[str, Any]]


class ChildWorkflowScheduled(_Event, kw_only=True):
    type: ClassVar[Literal["ChildWorkflowScheduled"]] = "ChildWorkflowScheduled"
    workflow: str
    child_id: str
    input: Any = None


class ChildWorkflowSucceeded(_Event, kw_only=True):
    type: ClassVar[Literal["ChildWorkflowSucceeded"]] = "ChildWorkflowSucceeded"
    result: Any = None


class ChildWorkflowFailed(_Event, kw_only=True):
    type: ClassVar[Literal["ChildWorkflowFailed"]] = "ChildWorkflowFailed"
    error: str
    message: str = ""


class PatchMarker(_Event, kw_only=True):
    type: ClassVar[Literal["PatchMarker"]] = "PatchMarker"
    patch_id: str


class CancelRequested(_Event, kw_only=True):
    type: ClassVar[Literal["CancelRequested"]] = "CancelRequested"


class WorkflowSucceeded(_Event, kw_only=True):
    type: ClassVar[Literal["WorkflowSucceeded"]] = "WorkflowSucceeded"
    result: Any = None


class WorkflowFailed(_Event, kw_only=True):
    type: ClassVar[Literal["WorkflowFailed"]] = "WorkflowFailed"
    error: str
    message: str = ""


class WorkflowCancelled(_Event, kw_only=True):
    type: ClassVar[Literal["WorkflowCancelled"]] = "WorkflowCancelled"


HistoryEvent = (
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
    | WorkflowCancelled
)

T = TypeVar("T")


class Codec(Generic[T]):
    """The one decoder and encoder of one of the engine's own types (history events, lists of them).

    msgspec, not pydantic: these types are read and written on every step of every execution, and are
    built by the engine itself, so they need no validation beyond their shape; pydantic stays at the
    boundaries where user payloads are validated. The method names are those the runtimes used with
    pydantic's `TypeAdapter`, so readers and writers did not change. Decoding is lax (`strict=False`) like
    pydantic's default, so histories written before this change read back the same."""

    def __init__(self, kind: Any) -> None:
        self._kind = kind
        self._decoder: msgspec.json.Decoder[T] = msgspec.json.Decoder(kind, strict=False)

    def validate_json(self, data: str | bytes) -> T:
        """Decode JSON text; malformed or mistyped input raises `msgspec.ValidationError`/`DecodeError`."""
        return self._decoder.decode(data)

    def validate_python(self, data: Any) -> T:
        """Build from JSON-shaped Python data (dicts, lists, ISO strings; already built events pass through)."""
        return cast(T, msgspec.convert(data, self._kind, strict=False))

    def dump_python(self, value: T, mode: Literal["json"] = "json") -> Any:
        """`value` as JSON-shaped Python data (datetimes as ISO 8601 strings)."""
        return msgspec.to_builtins(value)

    def dump_json(self, value: T) -> bytes:
        return _ENCODER.encode(value)


HISTORY_ADAPTER: Codec[list[HistoryEvent]] = Codec(list[HistoryEvent])
EVENT_ADAPTER: Codec[HistoryEvent] = Codec(HistoryEvent)

#: call events: what the workflow did, each answering to one seq
CALL_EVENTS = (ActivityScheduled, TimerScheduled, SignalSent, EventsPublished, ChildWorkflowScheduled)
#: events that end a durable call
ACTIVITY_RESULTS = (ActivitySucceeded, ActivityFailed, ActivityTimedOut, ActivityHeartbeatTimedOut)
CHILD_RESULTS = (ChildWorkflowSucceeded, ChildWorkflowFailed)
TERMINAL_EVENTS = (WorkflowSucceeded, WorkflowFailed, WorkflowCancelled)
#: every event `type`, in declaration order
EVENT_TYPES: tuple[str, ...] = tuple(kind.type for kind in get_args(HistoryEvent))


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


class _Command(_Shaped, kw_only=True, tag=True, tag_field="kind", forbid_unknown_fields=True):
    """What a workflow step asks its runtime to do; `kind` is the class name."""


class ScheduleActivity(_Command, kw_only=True):
    kind: ClassVar[Literal["ScheduleActivity"]] = "ScheduleActivity"
    seq: int
    name: str
    input: dict[str, Any]
    timeout: timedelta | None = None
    heartbeat_timeout: timedelta | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)


class StartTimer(_Command, kw_only=True):
    kind: ClassVar[Literal["StartTimer"]] = "StartTimer"
    seq: int
    until: datetime


class CancelTimer(_Command, kw_only=True):
    kind: ClassVar[Literal["CancelTimer"]] = "CancelTimer"
    seq: int


class SendSignal(_Command, kw_only=True):
    kind: ClassVar[Literal["SendSignal"]] = "SendSignal"
    seq: int
    target: str
    signal: str
    payload: Any = None
    id: str


class PublishEvents(_Command, kw_only=True):
    kind: ClassVar[Literal["PublishEvents"]] = "PublishEvents"
    seq: int
    events: list[dict[str, Any]]


class StartChildWorkflow(_Command, kw_only=True):
    kind: ClassVar[Literal["StartChildWorkflow"]] = "StartChildWorkflow"
    seq: int
    workflow: str
    child_id: str
    input: Any = None
    timeout: timedelta | None = None


class CancelChildWorkflow(_Command, kw_only=True):
    kind: ClassVar[Literal["CancelChildWorkflow"]] = "CancelChildWorkflow"
    seq: int
    child_id: str


class CompleteWorkflow(_Command, kw_only=True):
    kind: ClassVar[Literal["CompleteWorkflow"]] = "CompleteWorkflow"
    result: Any = None


class FailWorkflow(_Command, kw_only=True):
    kind: ClassVar[Literal["FailWorkflow"]] = "FailWorkflow"
    error: str
    message: str = ""


class CancelWorkflow(_Command, kw_only=True):
    kind: ClassVar[Literal["CancelWorkflow"]] = "CancelWorkflow"


Command = (
    ScheduleActivity
    | StartTimer
    | CancelTimer
    | SendSignal
    | PublishEvents
    | StartChildWorkflow
    | CancelChildWorkflow
    | CompleteWorkflow
    | FailWorkflow
    | CancelWorkflow
)


class Wait(Shape):
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


class LogEntry(Shape):
    """One captured line of output: `source` is `workflow`, an activity name or a subscription name."""

    time: datetime
    message: str
    source: str
