"""Activities: the side-effecting work a workflow schedules durably.

Calling an activity returns a coroutine. Inside a workflow, awaiting it schedules the call durably
(it gets the next seq and its result comes back through history); anywhere else it simply runs the
function, which is handy in a notebook cell. Retries, timeouts and heartbeats are carried out by the
runtime's activity table, never as extra history events.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic, ParamSpec, TypeVar, overload

from eventual_nb import errors
from eventual_nb.durations import DurationLike, optional_duration
from eventual_nb.engine.executor import current_executor
from eventual_nb.engine.history import ScheduleActivity
from eventual_nb.retry import RetryPolicy
from eventual_nb.runtime.base import HeartbeatResponse
from eventual_nb.serde import CallShape, from_json
from eventual_nb.service import Service, current_service

P = ParamSpec("P")
R = TypeVar("R")

_UNSET: Any = object()


class ActivityInfo:
    """What a running activity knows about itself (`ev.activity_info()`).

    `token` may be given as a function: runtimes sign tokens only for the activities that ask for one
    (signing is an HMAC per attempt, a measurable share of a no-op activity).
    """

    def __init__(
        self,
        execution_id: str,
        activity: str,
        seq: int,
        attempt: int,
        token: str | Callable[[], str],
        idempotency_key: str,
        heartbeat_details: Any = None,
    ) -> None:
        self.execution_id = execution_id
        self.activity = activity
        self.seq = seq
        self.attempt = attempt
        self._token = token
        self.idempotency_key = idempotency_key
        self.heartbeat_details = heartbeat_details

    @property
    def token(self) -> str:
        if not isinstance(self._token, str):
            self._token = self._token()
        return self._token

    def __repr__(self) -> str:
        return (
            f"ActivityInfo(execution_id={self.execution_id!r}, activity={self.activity!r}, seq={self.seq}, "
            f"attempt={self.attempt}, idempotency_key={self.idempotency_key!r})"
        )


@dataclass
class ActivityContext:
    """Set by the runtime while an activity attempt runs; reached through a context variable."""

    info: ActivityInfo
    heartbeat: Callable[[Any], Awaitable[HeartbeatResponse]]
    loop: asyncio.AbstractEventLoop
    extras: dict[str, Any] = field(default_factory=dict)


_activity_context: contextvars.ContextVar[ActivityContext | None] = contextvars.ContextVar(
    "eventual_activity", default=None
)


def _require_activity(what: str) -> ActivityContext:
    context = _activity_context.get()
    if context is None:
        raise errors.NotInWorkflow(
            f"{what} can only be used inside an activity that a runtime is running "
            "(an activity awaited from a workflow)"
        )
    return context


def activity_info() -> ActivityInfo:
    """Execution id, activity name, seq, attempt, token and idempotency key of the running activity."""
    return _require_activity("ev.activity_info()").info


async def heartbeat(details: Any = None) -> HeartbeatResponse:
    """Tell the runtime this activity is alive; `.cancelled` says whether it should stop."""
    context = _require_activity("ev.heartbeat()")
    return await context.heartbeat(details)


def heartbeat_sync(details: Any = None) -> HeartbeatResponse:
    """`heartbeat` for plain `def` activities, which run in a worker thread."""
    context = _require_activity("ev.heartbeat_sync()")
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is context.loop:
        raise errors.EventualError(
            "ev.heartbeat_sync() would block the runtime's event loop; use `await ev.heartbeat()` in async code"
        )
    future: concurrent.futures.Future[HeartbeatResponse] = asyncio.run_coroutine_threadsafe(
        context.heartbeat(details),  # type: ignore[arg-type]
        context.loop,
    )
    return future.result()


@dataclass
class AsyncResult:
    """Returned by an activity to complete later: `callback(token)` is called once with its token."""

    callback: Callable[[str], Any]


def async_result(callback: Callable[[str], Any]) -> Any:
    """`return ev.async_result(save_token)`: the activity stays pending until its token is used."""
    _require_activity("ev.async_result()")
    if not callable(callback):
        raise errors.EventualError(f"ev.async_result() needs a callable that takes the token, got {callback!r}")
    return AsyncResult(callback)


class Activity(Generic[P, R]):
    """A registered activity; call it to get an awaitable."""

    def __init__(
        self,
        function: Callable[P, R] | Callable[P, Awaitable[R]],
        *,
        name: str | None = None,
        timeout: DurationLike | None = None,
        heartbeat_timeout: DurationLike | None = None,
        retry: RetryPolicy | None = None,
        service: Service | None = None,
        inline: bool = False,
    ) -> None:
        if not callable(function):
            raise TypeError(f"@ev.activity must decorate a function, got {function!r}")
        self.function = function
        self.name = name or function.__name__
        self.timeout: timedelta | None = optional_duration(timeout, what=f"timeout of activity '{self.name}'")
        self.heartbeat_timeout: timedelta | None = optional_duration(
            heartbeat_timeout, what=f"heartbeat_timeout of activity '{self.name}'"
        )
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry of activity '{self.name}' must be an ev.RetryPolicy, got {retry!r}")
        self.retry = retry or RetryPolicy()
        self.is_async = inspect.iscoroutinefunction(function)
        self.shape = CallShape(function, what=f"activity '{self.name}'")
        self.service = service
        #: run inside the AWS orchestrator's invocation (no activity queue); no effect on the other runtimes
        self.inline = bool(inline)
        if self.inline:
            _check_inline(self)
        functools.update_wrapper(self, function)

    def __repr__(self) -> str:
        return f"<activity {self.name!r}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Awaitable[R]:
        return self._invoke(args, kwargs)

    async def _invoke(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
        executor = current_executor()
        if executor is None:
            result: R = await self.run_directly(args, kwargs)  # the function's own value, as annotated
            return result
        call_input = self.shape.bind(args, kwargs)
        _, future = executor.schedule_activity(
            ScheduleActivity(
                seq=0,
                name=self.name,
                input=call_input,
                timeout=self.timeout,
                heartbeat_timeout=self.heartbeat_timeout,
                retry=self.retry,
            )
        )
        raw = await future
        return from_json(raw, self.shape.return_annotation, what=self._result_what)  # type: ignore[no-any-return]

    @functools.cached_property
    def _result_what(self) -> str:
        """How the result is named in an error (built once: every call reads its result through it)."""
        return f"result of activity '{self.name}'"

    async def run_directly(self, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> Any:
        """Run the function itself (a plain `def` in a worker thread)."""
        if self.is_async:
            return await self.function(*args, **kwargs)  # type: ignore[misc]
        return await asyncio.to_thread(self.function, *args, **kwargs)

    def options(
        self,
        *,
        timeout: DurationLike | None = _UNSET,
        heartbeat_timeout: DurationLike | None = _UNSET,
        retry: RetryPolicy | None = _UNSET,
    ) -> Activity[P, R]:
        """A variant of this activity with per-call options (same name, not registered again)."""
        variant: Activity[P, R] = Activity.__new__(Activity)
        variant.__dict__.update(self.__dict__)
        if timeout is not _UNSET:
            variant.timeout = optional_duration(timeout, what=f"timeout of activity '{self.name}'")
        if heartbeat_timeout is not _UNSET:
            variant.heartbeat_timeout = optional_duration(
                heartbeat_timeout, what=f"heartbeat_timeout of activity '{self.name}'"
            )
        if retry is not _UNSET:
            variant.retry = retry or RetryPolicy()
        if variant.inline:
            _check_inline(variant)
        return variant

    def spec(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "timeout_seconds": None if self.timeout is None else self.timeout.total_seconds(),
            "heartbeat_timeout_seconds": None
            if self.heartbeat_timeout is None
            else self.heartbeat_timeout.total_seconds(),
            "retry": self.retry.model_dump(mode="json"),
            "parameters": list(self.shape.signature.parameters),
            "inline": self.inline,
        }


@overload
def activity(function: Callable[P, Awaitable[R]], /) -> Activity[P, R]: ...


@overload
def activity(function: Callable[P, R], /) -> Activity[P, R]: ...


@overload
def activity(
    *,
    name: str | None = None,
    timeout: DurationLike | None = None,
    heartbeat_timeout: DurationLike | None = None,
    retry: RetryPolicy | None = None,
    inline: bool = False,
) -> Callable[[Callable[P, Any]], Activity[P, Any]]: ...


def activity(
    function: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    timeout: DurationLike | None = None,
    heartbeat_timeout: DurationLike | None = None,
    retry: RetryPolicy | None = None,
    inline: bool = False,
) -> Any:
    """Register an activity in the current service: `@ev.activity` or `@ev.activity(timeout="30s", ...)`.

    `inline=True` marks a short activity that the AWS runtime runs inside the orchestrator's own
    invocation, right after the turn that scheduled it is committed (no activity queue, no claim row, no
    second Lambda), with the same retries, timeout, idempotency key and at-least-once rule; its timeout
    must fit the orchestrator's time limit (`core.limits.MAX_INLINE_TIMEOUT`, 50 s), and it may neither
    heartbeat nor complete by token (`ev.async_result`). Refused here, at decoration, otherwise. On the
    other runtimes `inline` changes nothing."""

    def register(target: Callable[..., Any]) -> Activity[Any, Any]:
        service = current_service()
        definition: Activity[Any, Any] = Activity(
            target,
            name=name,
            timeout=timeout,
            heartbeat_timeout=heartbeat_timeout,
            retry=retry,
            service=service,
            inline=inline,
        )
        service.activities[definition.name] = definition
        return definition

    if function is not None:
        return register(function)
    return register


#: what an inline activity may not call (it runs inside the orchestrator: nothing outside watches it)
_NOT_INLINE = ("heartbeat", "heartbeat_sync", "async_result")


def _names(code: Any) -> set[str]:
    """Global and attribute names a function's code reads, its nested functions' included."""
    names = set(code.co_names)
    for constant in code.co_consts:
        if inspect.iscode(constant):
            names |= _names(constant)
    return names


def _check_inline(definition: Activity[Any, Any]) -> None:
    """Refuse, at decoration, an inline activity that could not run inline (see `activity`)."""
    from eventual_nb.runtime.core.limits import inline_problem  # the core imports this module

    problem = inline_problem(definition.name, definition.timeout, definition.heartbeat_timeout)
    code = getattr(inspect.unwrap(definition.function), "__code__", None)
    calls = sorted(_names(code) & set(_NOT_INLINE)) if code is not None else []
    if problem is None and calls:
        problem = (
            f"inline activity '{definition.name}' calls ev.{calls[0]}(): an inline activity runs inside the "
            "orchestrator's invocation and can neither heartbeat nor complete by token (make it a queued "
            "activity, without inline=True)"
        )
    if problem is not None:
        raise errors.EventualError(problem)


def find_activity(name: str, services: list[Service] | None = None) -> Activity[Any, Any] | None:
    from eventual_nb.service import all_services

    for service in services if services is not None else all_services():
        found = service.activities.get(name)
        if found is not None:
            return found
    return None
