"""The JSON form of the core's typed values, for runtimes that store or send them (a data converter).

* `action_to_json` / `action_from_json`: an action as a JSON object tagged with `"action"` (its class name).
  AWS keeps the last turn's actions on the history head this way, to carry them out again after a crash.
* `attempt_message` / `attempt_from_message`: a `StartAttempt` as the message of the AWS activity queue
  (`{"execution_id", "seq", "attempt", "name", "input", "options"[, "heartbeat_details"]}`).
* `options_to_json` / `options_from_json`: `ActivityOptions` as the LocalRuntime's `activities.options`
  column and the activity message's `options` hold them (timeouts in seconds, the retry policy's JSON).

Every form is plain JSON (no pickle): datetimes in ISO 8601, durations in seconds, history events in their
own JSON form.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from eventual_nb import errors
from eventual_nb.engine.history import EVENT_ADAPTER, HistoryEvent
from eventual_nb.retry import RetryPolicy
from eventual_nb.runtime.base import ExecutionStatus
from eventual_nb.runtime.core.actions import (
    Action,
    ArmTimer,
    Deliver,
    DisarmTimer,
    Finish,
    Publish,
    StartAttempt,
    StartChild,
)
from eventual_nb.runtime.core.attempts import ActivityOptions

# ------------------------------------------------------------------------------------------------ pieces


def _seconds(value: timedelta | None) -> float | None:
    return None if value is None else value.total_seconds()


def _duration(value: Any) -> timedelta | None:
    return None if value is None else timedelta(seconds=float(value))


def event_json(event: HistoryEvent) -> dict[str, Any]:
    dumped: dict[str, Any] = EVENT_ADAPTER.dump_python(event, mode="json")
    return dumped


def options_to_json(options: ActivityOptions) -> dict[str, Any]:
    return {
        "timeout": _seconds(options.timeout),
        "heartbeat_timeout": _seconds(options.heartbeat_timeout),
        "retry": options.retry.model_dump(mode="json"),
    }


def options_from_json(data: Mapping[str, Any] | None) -> ActivityOptions:
    data = data or {}
    return ActivityOptions(
        _duration(data.get("timeout")),
        _duration(data.get("heartbeat_timeout")),
        RetryPolicy.model_validate(data.get("retry") or {}),
    )


# ------------------------------------------------------------------------------------------- attempts


def attempt_message(action: StartAttempt) -> dict[str, Any]:
    message: dict[str, Any] = {
        "execution_id": action.execution_id,
        "seq": action.seq,
        "attempt": action.attempt,
        "name": action.name,
        "input": action.input,
        "options": options_to_json(action.options),
    }
    if action.heartbeat_details is not None:
        message["heartbeat_details"] = action.heartbeat_details
    return message


def attempt_from_message(message: Mapping[str, Any]) -> StartAttempt:
    return StartAttempt(
        str(message["execution_id"]),
        int(message["seq"]),
        int(message["attempt"]),
        str(message["name"]),
        dict(message.get("input") or {}),
        options_from_json(message.get("options")),
        message.get("heartbeat_details"),
    )


# -------------------------------------------------------------------------------------------- actions


def action_to_json(action: Action) -> dict[str, Any]:
    """`action` as a JSON object; `action_from_json` reads it back equal."""
    match action:
        case StartAttempt():
            body = attempt_message(action)
        case ArmTimer():
            body = {
                "execution_id": action.execution_id,
                "key": action.key,
                "due": action.due.isoformat(),
                "fires": event_json(action.fires),
            }
        case DisarmTimer():
            body = {"execution_id": action.execution_id, "key": action.key}
        case Deliver():
            body = {"target": action.target, "event": event_json(action.event)}
        case Publish():
            body = {"envelopes": action.envelopes, "source": action.source}
        case StartChild():
            body = {
                "parent": action.parent,
                "seq": action.seq,
                "workflow": action.workflow,
                "child_id": action.child_id,
                "input": action.input,
                "timeout": _seconds(action.timeout),
                "start_time": action.start_time.isoformat(),
            }
        case Finish():
            body = {
                "execution_id": action.execution_id,
                "status": action.status.value,
                "result": action.result,
                "error": action.error,
                "message": action.message,
                "end_time": action.end_time.isoformat(),
            }
    return {"action": type(action).__name__, **body}


def _arm_timer(data: Mapping[str, Any]) -> ArmTimer:
    return ArmTimer(
        data["execution_id"],
        data["key"],
        datetime.fromisoformat(data["due"]),
        EVENT_ADAPTER.validate_python(data["fires"]),
    )


def _start_child(data: Mapping[str, Any]) -> StartChild:
    return StartChild(
        data["parent"],
        int(data["seq"]),
        data["workflow"],
        data["child_id"],
        data.get("input"),
        _duration(data.get("timeout")),
        datetime.fromisoformat(data["start_time"]),
    )


def _finish(data: Mapping[str, Any]) -> Finish:
    return Finish(
        data["execution_id"],
        ExecutionStatus(data["status"]),
        data.get("result"),
        data.get("error"),
        data.get("message"),
        datetime.fromisoformat(data["end_time"]),
    )


_READERS: dict[str, Callable[[Mapping[str, Any]], Action]] = {
    "StartAttempt": attempt_from_message,
    "ArmTimer": _arm_timer,
    "DisarmTimer": lambda data: DisarmTimer(data["execution_id"], data["key"]),
    "Deliver": lambda data: Deliver(data["target"], EVENT_ADAPTER.validate_python(data["event"])),
    "Publish": lambda data: Publish(list(data["envelopes"]), data.get("source")),
    "StartChild": _start_child,
    "Finish": _finish,
}


def action_from_json(data: Mapping[str, Any]) -> Action:
    """An action from `action_to_json`'s form; `EventualError` naming what is wrong otherwise."""
    kind = data.get("action") if isinstance(data, Mapping) else None
    reader = _READERS.get(kind) if isinstance(kind, str) else None
    if reader is None:
        raise errors.EventualError(f"not a stored action (unknown 'action' {kind!r})")
    try:
        return reader(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise errors.EventualError(f"stored {kind} action is malformed: {type(exc).__name__}: {exc}") from exc
