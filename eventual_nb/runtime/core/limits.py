"""The limits a service meets once deployed on AWS, decided once for the three runtimes.

The AWS runtime refuses what would not fit (a clear error on the call that hit the limit); the
LocalRuntime and the TestEnvironment accept it and write a warning into the execution's logs, so a
notebook that passes locally does not fail only after deploy. Both read the rules here: a payload's
size is the bytes of its JSON (`payload_bytes`), measured against the `PayloadLimit` of the path it
takes on AWS (SQS and EventBridge: 256 KB, less room for the envelope; the execution's DynamoDB
record: 400 KB, less room for the rest of the record). The README's "Service limits" lists them all.

Inline activities (`@ev.activity(inline=True)`) run inside the orchestrator function's invocation, so
their timeout must fit its time limit: `ORCHESTRATOR_TIMEOUT` (the template's `Timeout` of the
orchestrator function) less `INLINE_SAFETY` (kept to commit what the attempt returned).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import msgspec

from eventual_nb import errors
from eventual_nb.engine.history import (
    ActivityFailed,
    ChildWorkflowFailed,
    HistoryEvent,
    SignalReceived,
    WorkflowStarted,
    WorkflowSucceeded,
)
from eventual_nb.runtime.base import ExecutionStatus
from eventual_nb.runtime.core.actions import Action, Deliver, Finish, Publish, StartAttempt, StartChild
from eventual_nb.runtime.core.attempts import AttemptOutcome, Outcome, failed
from eventual_nb.serde import compact_json

#: the orchestrator function's time limit (exporter/template.py deploys it with this `Timeout`)
ORCHESTRATOR_TIMEOUT = timedelta(seconds=60)
#: what an invocation keeps after an inline attempt: committing its result and sending the next turn's actions
INLINE_SAFETY = timedelta(seconds=10)
#: the longest timeout an inline activity may have; also the time an inline activity without one may take
MAX_INLINE_TIMEOUT = ORCHESTRATOR_TIMEOUT - INLINE_SAFETY


def inline_problem(name: str, timeout: timedelta | None, heartbeat_timeout: timedelta | None) -> str | None:
    """Why the options of activity `name` cannot be inline, or None when they can."""
    if heartbeat_timeout is not None:
        return (
            f"inline activity '{name}' cannot have a heartbeat_timeout: it runs inside the orchestrator's "
            "invocation, which nothing outside can watch (drop heartbeat_timeout, or make it a queued activity)"
        )
    if timeout is not None and timeout > MAX_INLINE_TIMEOUT:
        return (
            f"inline activity '{name}' has a timeout of {timeout.total_seconds():g} s, but an inline activity runs "
            f"inside the orchestrator function, whose time limit is {ORCHESTRATOR_TIMEOUT.total_seconds():g} s: "
            f"at most {MAX_INLINE_TIMEOUT.total_seconds():g} s fit (make it a queued activity, without inline=True, "
            "to run for up to 15 minutes)"
        )
    return None


# ------------------------------------------------------------------------------------------- payloads

#: SQS's and EventBridge's largest message / entry (256 KiB)
SQS_MESSAGE_BYTES = 256 * 1024
#: room kept in an SQS message for its envelope (type, execution id, seq, timestamps, options)
ENVELOPE_BYTES = 6 * 1024
#: DynamoDB's largest item (400 KB)
DYNAMODB_ITEM_BYTES = 400 * 1024
#: what the execution's record keeps beside its input or result (ids, times, listing keys)
RECORD_ROOM_BYTES = 50 * 1024


@dataclass(frozen=True)
class PayloadLimit:
    """The largest payload one path accepts on AWS, with what carries it and the way out."""

    #: what the payload is, e.g. "the result of activity 'fetch'" is made from "result", "activity"
    what: str
    #: bytes of its JSON (UTF-8, as sent)
    limit: int
    #: the AWS service and resource that carries it
    carrier: str
    #: what to do instead
    way_out: str


_KEEP_ELSEWHERE = "keep the data in an entity (ev.entity) or an S3 object and pass its key"
WORKFLOW_INPUT = PayloadLimit(
    "input",
    DYNAMODB_ITEM_BYTES - RECORD_ROOM_BYTES,
    "the execution's DynamoDB record (400 KB an item)",
    _KEEP_ELSEWHERE,
)
WORKFLOW_RESULT = PayloadLimit(
    "result",
    DYNAMODB_ITEM_BYTES - RECORD_ROOM_BYTES,
    "the execution's DynamoDB record (400 KB an item)",
    "return a key to the data kept in an entity (ev.entity) or an S3 object",
)
SIGNAL_PAYLOAD = PayloadLimit(
    "payload", SQS_MESSAGE_BYTES - ENVELOPE_BYTES, "an SQS message on the workflow queue (256 KB)", _KEEP_ELSEWHERE
)
ACTIVITY_INPUT = PayloadLimit(
    "input", SQS_MESSAGE_BYTES - ENVELOPE_BYTES, "an SQS message on the activity queue (256 KB)", _KEEP_ELSEWHERE
)
ACTIVITY_RESULT = PayloadLimit(
    "result",
    SQS_MESSAGE_BYTES - ENVELOPE_BYTES,
    "an SQS message on the workflow queue (256 KB)",
    "return a key to the data kept in an entity (ev.entity) or an S3 object, or make the activity inline "
    "(inline=True: its result is committed straight into the history, split over items when large)",
)
EVENT = PayloadLimit(
    "event", SQS_MESSAGE_BYTES - ENVELOPE_BYTES, "an EventBridge entry (256 KB)", _KEEP_ELSEWHERE + " in the event"
)


_SIZER = msgspec.json.Encoder()


def payload_bytes(value: Any) -> int:
    """Bytes of `value`'s JSON as the AWS runtime sends it (UTF-8, no spaces)."""
    return len(compact_json(value).encode("utf-8"))


def _surely_fits(value: Any, limit: int) -> bool:
    """Whether `value` fits with room to spare, measured by msgspec: the check runs on every payload of every
    step, and encoding with the json module was a tenth of a step's CPU (`python -m benchmarks.profile_step`).
    msgspec's text differs from the runtime's only in how some floats are written (`1e16` for `1e+16`), a
    quarter of a number's length at most, so anything over half the limit is measured exactly."""
    kind = type(value)
    if kind is int or kind is bool or value is None:  # (an int of any size: msgspec measures it or refuses)
        return kind is not int or -(2**63) <= value < 2**64
    if kind is str and len(value) * 6 + 2 <= limit // 2:  # 6 bytes of JSON per character at most ("\u0000")
        return True
    try:
        return len(_SIZER.encode(value)) <= limit // 2
    except (TypeError, ValueError, OverflowError):  # not plain JSON: the exact measure says what it is
        return False


def too_large(limit: PayloadLimit, value: Any, of: str) -> str | None:
    """Why `value` (the `limit.what` of `of`, e.g. "signal 'approve' to 'order/1'") cannot travel on AWS, or
    None when it fits. The message names the limit, where it comes from and the way out."""
    if _surely_fits(value, limit.limit):
        return None
    size = payload_bytes(value)
    if size <= limit.limit:
        return None
    what = of if limit is EVENT else f"the {limit.what} of {of}"
    return (
        f"{what} is {size:,} bytes of JSON; on AWS it travels in {limit.carrier}, which holds at most "
        f'{limit.limit:,} bytes of it (see "Service limits" in the README): {limit.way_out}'
    )


def refuse_too_large(limit: PayloadLimit, value: Any, of: str) -> None:
    """What the AWS runtime does with a payload that does not fit: `PayloadTooLarge` on the call."""
    problem = too_large(limit, value, of)
    if problem is not None:
        raise errors.PayloadTooLarge(problem)


def aws_warning(limit: PayloadLimit, value: Any, of: str) -> str | None:
    """What the LocalRuntime and the TestEnvironment write in the execution's logs instead of refusing."""
    problem = too_large(limit, value, of)
    return None if problem is None else f"warning: would not fit on AWS: {problem}"


def fitting_result(outcome: AttemptOutcome, name: str, seq: int, execution_id: str) -> AttemptOutcome:
    """What the AWS activity function makes of an attempt's outcome: a result too large for the workflow queue
    fails the call, never retried (the same result would come back), with the reason and the way out."""
    if outcome.kind is not Outcome.SUCCEEDED:
        return outcome
    problem = too_large(ACTIVITY_RESULT, outcome.result, f"activity '{name}' (seq {seq}) of '{execution_id}'")
    return outcome if problem is None else failed(errors.PayloadTooLarge(problem), retryable=False)


def result_warning(outcome: AttemptOutcome, name: str, seq: int, execution_id: str, *, inline: bool) -> str | None:
    """The LocalRuntime's and the TestEnvironment's warning about a result `fitting_result` would refuse (an
    inline activity's result is committed into the history, not sent: it has no such limit)."""
    if inline or outcome.kind is not Outcome.SUCCEEDED or _surely_fits(outcome.result, ACTIVITY_RESULT.limit):
        return None  # (decided before the message is built: this runs on every attempt)
    return aws_warning(ACTIVITY_RESULT, outcome.result, f"activity '{name}' (seq {seq}) of '{execution_id}'")


def turn_warnings(execution_id: str, events: Sequence[HistoryEvent], actions: Sequence[Action]) -> list[str]:
    """Warnings about the payloads a turn records or sends that would not fit on AWS: the workflow's input and
    result, the signals it receives and sends, the inputs of the activities and children it starts, the events
    it publishes. Written on every runtime (on AWS the calls that bring a payload in refuse it first, so what
    remains is what the workflow itself sends)."""
    # each check names its payload with a format and its arguments, formatted only for a warning: the checks
    # run on every step and almost every payload fits
    checks: list[tuple[PayloadLimit, Any, str, tuple[Any, ...]]] = []
    for event in events:
        if isinstance(event, WorkflowStarted):
            checks.append((WORKFLOW_INPUT, event.input, "execution '{}'", (execution_id,)))
        elif isinstance(event, WorkflowSucceeded):
            checks.append((WORKFLOW_RESULT, event.result, "execution '{}'", (execution_id,)))
        elif isinstance(event, SignalReceived):
            checks.append((SIGNAL_PAYLOAD, event.payload, "signal '{}' to '{}'", (event.signal, execution_id)))
    for action in actions:
        if isinstance(action, StartAttempt):
            checks.append((ACTIVITY_INPUT, action.input, "activity '{}' (seq {})", (action.name, action.seq)))
        elif isinstance(action, StartChild):
            checks.append((WORKFLOW_INPUT, action.input, "child execution '{}'", (action.child_id,)))
        elif isinstance(action, Deliver) and isinstance(action.event, SignalReceived):
            signal = action.event
            checks.append((SIGNAL_PAYLOAD, signal.payload, "signal '{}' to '{}'", (signal.signal, action.target)))
        elif isinstance(action, Publish):
            for item in action.envelopes:
                checks.append((EVENT, item, "event '{}' published by '{}'", (item.get("name"), execution_id)))
    return [
        warning
        for limit, value, of, names in checks
        if not _surely_fits(value, limit.limit) and (warning := aws_warning(limit, value, of.format(*names)))
    ]


def refuse_sends(execution_id: str, actions: Sequence[Action], when: datetime) -> tuple[list[Action], list[str]]:
    """What the AWS runtime does with what a turn sends that would not fit: the call that hit the limit fails,
    nothing is sent to be refused and retried later. Returns the actions to carry out and a log line for each
    refusal.

    * an activity's input: the call fails (`ActivityFailed` with `PayloadTooLarge`, delivered to the execution:
      never retried, the same input would come again);
    * a child's input: the call fails the same way (`ChildWorkflowFailed`);
    * a signal the workflow sends, an event it publishes: not sent, and its log says why (sending them does not
      wait for an answer, so there is no call to fail);
    * the workflow's result: the execution ends FAILED with `PayloadTooLarge` (its record could not hold it)."""
    kept: list[Action] = []
    lines: list[str] = []
    error = errors.PayloadTooLarge.__name__
    for action in actions:
        if isinstance(action, StartAttempt):
            problem = too_large(ACTIVITY_INPUT, action.input, f"activity '{action.name}' (seq {action.seq})")
            if problem is not None:
                failure = ActivityFailed(seq=action.seq, timestamp=when, error=error, message=problem)
                kept.append(Deliver(execution_id, failure))
                lines.append(f"refused on AWS: {problem}")
                continue
        elif isinstance(action, StartChild):
            problem = too_large(WORKFLOW_INPUT, action.input, f"child execution '{action.child_id}'")
            if problem is not None:
                kept.append(
                    Deliver(
                        execution_id, ChildWorkflowFailed(seq=action.seq, timestamp=when, error=error, message=problem)
                    )
                )
                lines.append(f"refused on AWS: {problem}")
                continue
        elif isinstance(action, Deliver) and isinstance(action.event, SignalReceived):
            signal = action.event
            problem = too_large(SIGNAL_PAYLOAD, signal.payload, f"signal '{signal.signal}' to '{action.target}'")
            if problem is not None:
                lines.append(f"not sent on AWS: {problem}")
                continue
        elif isinstance(action, Publish):
            envelopes = []
            for item in action.envelopes:
                problem = too_large(EVENT, item, f"event '{item.get('name')}' published by '{execution_id}'")
                if problem is None:
                    envelopes.append(item)
                else:
                    lines.append(f"not published on AWS: {problem}")
            if not envelopes:
                continue
            action = replace(action, envelopes=envelopes)
        elif isinstance(action, Finish) and action.status == ExecutionStatus.SUCCEEDED:
            problem = too_large(WORKFLOW_RESULT, action.result, f"execution '{execution_id}'")
            if problem is not None:
                action = replace(action, status=ExecutionStatus.FAILED, result=None, error=error, message=problem)
                lines.append(f"refused on AWS: {problem}")
        kept.append(action)
    return kept, lines
