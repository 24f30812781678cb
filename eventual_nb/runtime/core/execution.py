"""Executions: starting one, a turn (what a step records and what it asks for), ending, and what comes in
from outside (signals, cancellation, fired timers)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import msgspec

from eventual_nb import errors
from eventual_nb.durations import DurationLike, deadline_after, format_duration, optional_duration
from eventual_nb.engine.executor import StepOutput, WorkflowExecutor
from eventual_nb.engine.history import (
    CALL_EVENTS,
    CancelChildWorkflow,
    CancelRequested,
    CancelTimer,
    ChildWorkflowFailed,
    ChildWorkflowSucceeded,
    Command,
    HistoryEvent,
    LogEntry,
    PublishEvents,
    ScheduleActivity,
    SendSignal,
    SignalReceived,
    StartChildWorkflow,
    StartTimer,
    TimerCompleted,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowStarted,
    WorkflowSucceeded,
)
from eventual_nb.runtime.base import ExecutionStatus
from eventual_nb.runtime.core import limits
from eventual_nb.runtime.core.actions import (
    TIMEOUT_TIMER_KEY,
    Action,
    ArmTimer,
    Deliver,
    DisarmTimer,
    Finish,
    Publish,
    StartAttempt,
    StartChild,
    timer_key,
)
from eventual_nb.runtime.core.attempts import ActivityOptions
from eventual_nb.runtime.ids import ulid
from eventual_nb.workflows import Workflow, check_execution_name

#: a fact only storage has: the status of an execution, None when there is no such execution
StatusLookup = Callable[[str], ExecutionStatus | None]


# ------------------------------------------------------------------------------------------------ start


def execution_id_for(workflow: str, name: str | None, now: datetime) -> str:
    """The id of a start from outside: `<workflow>/<name>`, the name checked, or a ULID of `now` if None."""
    return f"{workflow}/{ulid(now) if name is None else check_execution_name(name)}"


def timeout_limit(timeout: DurationLike | None, default: timedelta | None) -> timedelta | None:
    """The workflow timeout of a start: its own `timeout=`, else the workflow's."""
    limit = optional_duration(timeout, what="timeout")
    return default if limit is None else limit


def admit(execution_id: str, digest: str, existing: str | None) -> bool:
    """Starting an id that exists (its input hash `existing`): with the same input it is already running
    (True: the start is a no-op), with another it is refused; False when it does not exist."""
    if existing is None:
        return False
    if existing == digest:
        return True
    raise errors.ExecutionAlreadyExists(
        f"execution '{execution_id}' already exists with a different input", execution_id=execution_id
    )


@dataclass(frozen=True, slots=True)
class Begun:
    """A start: its first history event, and the timer of its workflow timeout (if it has one)."""

    started: WorkflowStarted
    timeout: ArmTimer | None


def begin(
    execution_id: str,
    workflow: str,
    raw_input: Any,
    *,
    start: datetime,
    limit: timedelta | None,
    parent: str | None = None,
) -> Begun:
    """`WorkflowStarted` at `start` and, with a `limit`, the timer that fails the execution with
    `WorkflowTimeout` when the limit passes (`InvalidDuration` if that deadline cannot be stored)."""
    timeout_at = None if limit is None else deadline_after(start, limit, what="timeout")
    started = WorkflowStarted(timestamp=start, workflow=workflow, input=raw_input, parent=parent, timeout_at=timeout_at)
    if timeout_at is None or limit is None:
        return Begun(started, None)
    return Begun(
        started, ArmTimer(execution_id, TIMEOUT_TIMER_KEY, timeout_at, timed_out(execution_id, limit, timeout_at))
    )


def timed_out(execution_id: str, limit: timedelta, at: datetime) -> WorkflowFailed:
    """What the workflow timeout of `limit` delivers at `at`: the execution fails with `WorkflowTimeout`."""
    return WorkflowFailed(
        timestamp=at,
        error="WorkflowTimeout",
        message=f"execution '{execution_id}' exceeded its timeout of {format_duration(limit)}",
    )


def child_not_started(action: StartChild, error: errors.EventualError) -> Deliver:
    """A child that could not be started (no such workflow, its id taken with another input) fails the call."""
    failed = ChildWorkflowFailed(
        seq=action.seq, timestamp=action.start_time, error=type(error).__name__, message=str(error)
    )
    return Deliver(action.parent, failed)


# ------------------------------------------------------------------------------------------------- turn


@dataclass(frozen=True, slots=True)
class Lineage:
    """Where an execution belongs: the service that publishes its events, and its parent (a child's)."""

    service: str | None = None
    parent: str | None = None
    parent_seq: int | None = None

    @classmethod
    def of(cls, definition: Workflow[Any], parent: str | None = None, parent_seq: int | None = None) -> Lineage:
        """An execution of `definition` (a child of `parent`'s call at `parent_seq`)."""
        return cls(service_of(definition), parent, parent_seq)


def service_of(definition: Workflow[Any]) -> str | None:
    """The name of the service a workflow belongs to (its executions publish as that service)."""
    return definition.service.name if definition.service is not None else None


@dataclass(slots=True)
class Turn:
    """What a step means: log lines to write, and actions to carry out in order after the commit (`Finish`,
    when the step ended the execution, is part of that commit). The history events to record are the
    step's own (`StepOutput.events`)."""

    logs: list[LogEntry]
    actions: list[Action]


def turn(
    executor: WorkflowExecutor,
    output: StepOutput,
    lineage: Lineage,
    *,
    now: datetime | None,
    status_of: StatusLookup,
    refuse_oversized: bool = False,
) -> Turn:
    """The turn of `output`, the step `executor` just made.

    `now` stamps the events the actions carry (signals, cancellations, a child's result) and the end time;
    None stamps each with the time of the call that issued it (the turn's end: the terminal event's), so
    that building the turn again gives equal actions (AWS de-duplicates deliveries by content).
    `status_of` is asked about the target of each signal the workflow sends: a signal to an execution that
    does not exist or has ended is not delivered, and the sender's log says so (a child this turn starts
    counts as running: its start is carried out before the signal). The turn's logs end with a warning for
    each payload it records or sends that would not fit on AWS (`limits.turn_warnings`); with
    `refuse_oversized` (the AWS runtime) what the turn sends that would not fit is refused instead
    (`limits.refuse_sends`: the call that hit the limit fails)."""
    logs = output.logs
    actions: list[Action] = []
    execution_id = executor.execution_id
    children: set[str] = set()

    def status(target: str) -> ExecutionStatus | None:
        return ExecutionStatus.IN_PROGRESS if target in children else status_of(target)

    for command in output.commands:
        action = _action(executor, command, output.events, lineage, now, status)
        if isinstance(action, LogEntry):
            if logs is output.logs:
                logs = list(logs)
            logs.append(action)
        elif action is not None:
            actions.append(action)
            if isinstance(action, StartChild):
                children.add(action.child_id)
    terminal = executor.terminal if executor.ended else None
    if terminal is not None:
        actions.extend(_ending(execution_id, terminal, executor.open_children, lineage, now))
    started = [executor.started] if executor.began and executor.started is not None else []
    when = now if now is not None else executor.now
    refused: list[str] = []
    if refuse_oversized:
        actions, refused = limits.refuse_sends(execution_id, actions, when)
    warnings = [*refused, *limits.turn_warnings(execution_id, [*started, *output.events], actions)]
    if warnings:
        logs = [*logs, *(LogEntry(time=when, message=line, source="runtime") for line in warnings)]
    return Turn(logs, actions)


def _action(
    executor: WorkflowExecutor,
    command: Command,
    events: Sequence[HistoryEvent],
    lineage: Lineage,
    now: datetime | None,
    status_of: StatusLookup,
) -> Action | LogEntry | None:
    """The one place a workflow's command becomes what a runtime does."""
    execution_id = executor.execution_id
    if isinstance(command, ScheduleActivity):
        options = ActivityOptions.of(command)
        return StartAttempt(execution_id, command.seq, 1, command.name, command.input, options)
    if isinstance(command, StartTimer):
        fired = TimerCompleted(seq=command.seq, timestamp=command.until)
        return ArmTimer(execution_id, timer_key(command.seq), command.until, fired)
    if isinstance(command, CancelTimer):
        return DisarmTimer(execution_id, timer_key(command.seq))
    when = now if now is not None else _call_time(executor, events, getattr(command, "seq", None))
    if isinstance(command, SendSignal):
        return _signal_from_workflow(command, when, status_of)
    if isinstance(command, PublishEvents):
        return Publish(command.events, lineage.service)
    if isinstance(command, StartChildWorkflow):
        return StartChild(
            execution_id, command.seq, command.workflow, command.child_id, command.input, command.timeout, when
        )
    if isinstance(command, CancelChildWorkflow):
        return Deliver(command.child_id, CancelRequested(timestamp=when))
    return None  # CompleteWorkflow / FailWorkflow / CancelWorkflow: the end of the turn says what they mean


def _call_time(executor: WorkflowExecutor, events: Sequence[HistoryEvent], seq: int | None) -> datetime:
    """The time of the call event with `seq` among the turn's events, else the workflow's time now."""
    if seq is not None:
        for event in events:
            if event.seq == seq and isinstance(event, CALL_EVENTS):
                return event.timestamp
    return executor.now


def _signal_from_workflow(command: SendSignal, when: datetime, status_of: StatusLookup) -> Deliver | LogEntry:
    status = status_of(command.target)
    if status == ExecutionStatus.IN_PROGRESS:
        received = SignalReceived(timestamp=when, signal=command.signal, payload=command.payload, id=command.id)
        return Deliver(command.target, received)
    why = "no such execution" if status is None else f"it is {status.value}"
    return LogEntry(
        time=when, message=f"signal '{command.signal}' to '{command.target}' ignored: {why}", source="workflow"
    )


def _ending(
    execution_id: str, terminal: HistoryEvent, children: Sequence[str], lineage: Lineage, now: datetime | None
) -> list[Action]:
    """What ending means: the status is recorded, children still running are cancelled, the parent hears how
    its child ended."""
    end = now if now is not None else terminal.timestamp
    actions: list[Action] = [finish(execution_id, terminal, end)]
    actions.extend(Deliver(child, CancelRequested(timestamp=end)) for child in children)
    if lineage.parent is not None and lineage.parent_seq is not None:
        actions.append(Deliver(lineage.parent, child_result(execution_id, terminal, lineage.parent_seq, end)))
    return actions


def finish(execution_id: str, terminal: HistoryEvent, end: datetime) -> Finish:
    """The status an execution ends with, from its terminal event."""
    if isinstance(terminal, WorkflowSucceeded):
        return Finish(execution_id, ExecutionStatus.SUCCEEDED, terminal.result, None, None, end)
    if isinstance(terminal, WorkflowFailed):
        return Finish(execution_id, ExecutionStatus.FAILED, None, terminal.error, terminal.message, end)
    if isinstance(terminal, WorkflowCancelled):
        return Finish(execution_id, ExecutionStatus.CANCELLED, None, None, None, end)
    raise errors.EventualError(f"execution '{execution_id}' cannot end with {terminal.type}")


def child_result(execution_id: str, terminal: HistoryEvent, seq: int, at: datetime) -> HistoryEvent:
    """What the parent's call at `seq` receives when child `execution_id` ends with `terminal`."""
    if isinstance(terminal, WorkflowSucceeded):
        return ChildWorkflowSucceeded(seq=seq, timestamp=at, result=terminal.result)
    if isinstance(terminal, WorkflowCancelled):
        return ChildWorkflowFailed(
            seq=seq, timestamp=at, error="ExecutionCancelled", message=f"child execution '{execution_id}' was cancelled"
        )
    assert isinstance(terminal, WorkflowFailed)
    return ChildWorkflowFailed(seq=seq, timestamp=at, error=terminal.error or "Error", message=terminal.message or "")


# ---------------------------------------------------------------------------------------- from outside


def not_found(execution_id: str) -> errors.ExecutionNotFound:
    return errors.ExecutionNotFound(f"no execution with id '{execution_id}'", execution_id=execution_id)


def signal_received(
    execution_id: str, status: ExecutionStatus | None, signal: str, payload: Any, signal_id: str | None, now: datetime
) -> SignalReceived:
    """A signal sent from outside to an execution whose status is `status` (None: no such execution): it
    is refused unless the execution is in progress."""
    if status is None:
        raise not_found(execution_id)
    if status != ExecutionStatus.IN_PROGRESS:
        raise errors.EventualError(f"cannot send signal '{signal}' to execution '{execution_id}': it is {status.value}")
    return SignalReceived(timestamp=now, signal=signal, payload=payload, id=signal_id)


def cancel_requested(execution_id: str, status: ExecutionStatus | None, now: datetime) -> CancelRequested:
    """`cancel_execution` of an execution whose status is `status`: refused once it ended."""
    if status is None:
        raise not_found(execution_id)
    if status != ExecutionStatus.IN_PROGRESS:
        raise errors.EventualError(f"cannot cancel execution '{execution_id}': it already ended {status.value}")
    return CancelRequested(timestamp=now)


def timer_fired(fires: HistoryEvent, now: datetime | None) -> HistoryEvent:
    """The event a due timer delivers, stamped `now` (when it fired; None keeps its due time, which AWS's
    relay needs to de-duplicate by content)."""
    if now is None or now == fires.timestamp:
        return fires
    return msgspec.structs.replace(fires, timestamp=now)


def blocked_note(error: BaseException) -> str:
    """The log line of an execution that cannot step (changed code, missing definition)."""
    return f"execution cannot continue: {type(error).__name__}: {error}"
