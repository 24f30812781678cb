"""Runs one attempt of an activity with its context set, and one subscription delivery: the part every
runtime shares.

It rebuilds the arguments from JSON, sets `ev.activity_info()`/`ev.heartbeat()` and output capture,
runs the function (plain `def` in a worker thread), and turns the outcome into an `AttemptOutcome`. What
the outcome means (retry, settle, wait for the token) is the execution core's decision
(`eventual_nb.runtime.core.retry_or_settle`).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from eventual_nb import errors
from eventual_nb.activities import Activity, ActivityContext, ActivityInfo, AsyncResult, _activity_context
from eventual_nb.engine import capture
from eventual_nb.events import Subscription
from eventual_nb.runtime.base import HeartbeatResponse
from eventual_nb.runtime.core.attempts import AttemptOutcome, failed, succeeded, waiting
from eventual_nb.serde import from_json, to_json


def attempt_info(
    execution_id: str, name: str, seq: int, attempt: int, token: str | Callable[[], str], heartbeat_details: Any
) -> ActivityInfo:
    """What an attempt knows about itself (`ev.activity_info()`); its idempotency key names the call, so
    every attempt of it (and every re-run after a crash) has the same one."""
    return ActivityInfo(
        execution_id=execution_id,
        activity=name,
        seq=seq,
        attempt=attempt,
        token=token,
        idempotency_key=f"{execution_id}/{seq}",
        heartbeat_details=heartbeat_details,
    )


async def run_delivery(
    subscription: Subscription, item: dict[str, Any], log_line: Callable[[str], None] | None
) -> Exception | None:
    """Deliver one event (`{"name", "event"}`) to a subscription's handler (sync or async), its output
    captured by `log_line`; returns what the handler raised (retried or dead-lettered by the core's rule)."""
    token = capture.log_sink.set(log_line) if log_line is not None else None
    try:
        value = subscription.handler(subscription.decode(item))
        if inspect.isawaitable(value):
            await value
    except Exception as exc:  # noqa: BLE001 - handler failures are retried, then dead-lettered
        return exc
    finally:
        if token is not None and log_line is not None:
            capture.flush_sink(log_line)
            capture.log_sink.reset(token)
    return None


def token_result(activity: Activity[Any, Any] | None, name: str, result: Any) -> Any:
    """The JSON of a result sent by token (`send_activity_success`), checked against the activity's return
    annotation when the activity is served (an `InputValidationError` names it otherwise)."""
    annotation = activity.shape.return_annotation if activity is not None else Any
    what = f"result of activity '{name}'"
    return to_json(from_json(to_json(result, what=what), annotation, what=what), annotation, what=what)


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
        return failed(exc, retryable=False)
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
        return failed(exc)
    finally:
        capture.flush_sink(log_line)
        capture.log_sink.reset(sink_token)
        _activity_context.reset(activity_token)
    if isinstance(value, AsyncResult):
        return waiting(value.callback)
    try:
        result = to_json(value, activity.shape.return_annotation, what=f"the result of activity '{activity.name}'")
    except errors.EventualError as exc:
        return failed(exc, retryable=False)
    return succeeded(result)
