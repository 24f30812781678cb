"""The actions of a turn: the outbox entries a runtime carries out once the turn is committed.

Each is a frozen dataclass naming everything its carrying-out needs, so a runtime can store it (AWS keeps
the last turn's actions on the history head, through `eventual_nb.runtime.core.wire`) and carry it out again
after a crash. Carrying out an action twice must be harmless: runtimes make each one idempotent by its key
(an attempt by `(execution, seq, attempt)`, a timer by `(execution, key)`, a child by its id, a signal by
its id).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from eventual_nb.engine.history import HistoryEvent
from eventual_nb.runtime.base import ExecutionStatus
from eventual_nb.runtime.core.attempts import ActivityOptions

#: the key of an execution's workflow-timeout timer (a durable timer's key is its seq)
TIMEOUT_TIMER_KEY = "timeout"


def timer_key(seq: int) -> str:
    return str(seq)


@dataclass(frozen=True, slots=True)
class StartAttempt:
    """Run attempt `attempt` of the activity call at `seq` (`heartbeat_details`: what the previous attempt
    last reported, handed to this one through `activity_info()`)."""

    execution_id: str
    seq: int
    attempt: int
    name: str
    input: dict[str, Any]
    options: ActivityOptions
    heartbeat_details: Any = None


@dataclass(frozen=True, slots=True)
class ArmTimer:
    """At `due`, deliver `fires` to the execution: TimerCompleted for a durable timer, the WorkflowFailed
    of its workflow timeout for the `TIMEOUT_TIMER_KEY` timer (`timer_fired` stamps it)."""

    execution_id: str
    key: str
    due: datetime
    fires: HistoryEvent


@dataclass(frozen=True, slots=True)
class DisarmTimer:
    """Forget the timer `key` of the execution (the workflow cancelled it)."""

    execution_id: str
    key: str


@dataclass(frozen=True, slots=True)
class Deliver:
    """Give `event` (SignalReceived, CancelRequested, ChildWorkflowSucceeded/Failed) to execution `target`.

    A runtime drops it when the target is not in progress, and drops a SignalReceived whose `id` the target
    has already received."""

    target: str
    event: HistoryEvent


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish events (envelopes `{"name", "event"}`) as service `source`."""

    envelopes: list[dict[str, Any]]
    source: str | None


@dataclass(frozen=True, slots=True)
class StartChild:
    """Start child execution `child_id` of workflow `workflow` for the call at `seq` of `parent` (nothing
    happens if it exists; `child_not_started` says what a refused start answers)."""

    parent: str
    seq: int
    workflow: str
    child_id: str
    input: Any
    timeout: timedelta | None
    start_time: datetime


@dataclass(frozen=True, slots=True)
class Finish:
    """The execution ended: record its status (committed with its terminal event), and drop its timers and
    its activities' pending attempts."""

    execution_id: str
    status: ExecutionStatus
    result: Any
    error: str | None
    message: str | None
    end_time: datetime


Action = StartAttempt | ArmTimer | DisarmTimer | Deliver | Publish | StartChild | Finish
