"""Runs one attempt of an activity with its context set: the part every runtime shares.

It rebuilds the arguments from JSON, sets `ev.activity_info()`/`ev.heartbeat()` and output capture,
runs the function (plain `def` in a worker thread), and turns the outcome into JSON or a failure
description. Deciding about retries, timeouts and history is the runtime's job.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from eventual_nb import errors
from eventual_nb.activities import Activity, ActivityContext, ActivityInfo, AsyncResult, _activity_context
from eventual_nb.engine import capture
from eventual_nb.engine.history import ScheduleActivity
from eventual_nb.retry import exception_type_names
from eventual_nb.runtime.base import HeartbeatResponse
from eventual_nb.serde import to_json


@dataclass
class AttemptOutcome:
    kind: str  # "succeeded" | "failed" | "async"
    result: Any = None
    error: str = ""
    message: str = ""
    type_names: tuple[str, ...] = field(default_factory=tuple)
    retryable: bool = True
    callback: Callable[[str], Any] | None = None


def activity_options(command: ScheduleActivity) -> dict[str, Any]:
    """Timeouts (seconds) and retry policy of an activity as every runtime stores and ships them: the
    LocalRuntime's `activities.options` column and the AWS activity message's `options` field."""
    return {
        "timeout": None if command.timeout is None else command.timeout.total_seconds(),
        "heartbeat_timeout": None if command.heartbeat_timeout is None else command.heartbeat_timeout.total_seconds(),
        "retry": command.retry.model_dump(mode="json"),
    }


def failure(error: BaseException, *, retryable: bool = True) -> AttemptOutcome:
    return AttemptOutcome(
        kind="failed",
        error=errors.error_type_name(error),
        message=errors.error_message(error),
        type_names=exception_type_names(error),
        retryable=retryable,
    )


async def run_attempt(
    activity: Activity[Any, Any],
    call_input: dict[str, Any],
    info: ActivityInfo,
    heartbeat: Callable[[Any], Awaitable[HeartbeatResponse]],
    log_line: Callable[[str], None],
    invoke: Callable[..., Any] | None = None,
) -> AttemptOutcome:
    """One attempt; `invoke` replaces the function (test mocks) but gets the same arguments."""
    try:
        args, kwargs = activity.shape.unbind(call_input)
    except errors.EventualError as exc:
        return failure(exc, retryable=False)
    context = ActivityContext(info=info, heartbeat=heartbeat, loop=asyncio.get_running_loop())
    capture.install()
    activity_token = _activity_context.set(context)
    sink_token = capture.log_sink.set(log_line)
    try:
        if invoke is None:
            value = await activity.run_directly(args, kwargs)
        elif inspect.iscoroutinefunction(invoke):
            value = await invoke(*args, **kwargs)
        else:
            value = await asyncio.to_thread(invoke, *args, **kwargs)
            if inspect.isawaitable(value):
                value = await value
    except Exception as exc:  # noqa: BLE001 - any failure of user code is a failed attempt
        return failure(exc)
    finally:
        capture.flush_sink(log_line)
        capture.log_sink.reset(sink_token)
        _activity_context.reset(activity_token)
    if isinstance(value, AsyncResult):
        return AttemptOutcome(kind="async", callback=value.callback)
    try:
        result = to_json(value, activity.shape.return_annotation, what=f"the result of activity '{activity.name}'")
    except errors.EventualError as exc:
        return failure(exc, retryable=False)
    return AttemptOutcome(kind="succeeded", result=result)
