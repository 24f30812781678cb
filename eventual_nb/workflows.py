"""Workflows and the deterministic helpers available inside them.

A workflow is an `async def` with at most one input. Outside a workflow, `await wf.start(x)` starts an
execution on the current runtime and `await wf(x)` starts it and waits for its result; inside a
workflow the same calls run a child workflow durably.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import random as _random_module
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, ParamSpec, TypeVar, overload

from eventual_nb import errors
from eventual_nb.determinism import warn_nondeterministic_calls
from eventual_nb.durations import DurationLike, format_duration, optional_duration, parse_duration
from eventual_nb.engine.executor import WorkflowCode, WorkflowExecutor, current_executor
from eventual_nb.runtime.base import Execution, ExecutionHandle, current_runtime, signal_name_of
from eventual_nb.serde import from_json, to_json, type_hints, validate
from eventual_nb.service import Service, all_services, current_service, schedules_changed

P = ParamSpec("P")
R = TypeVar("R")

_NO_INPUT: Any = object()
EXECUTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,79}")


def require_executor(what: str) -> WorkflowExecutor:
    executor = current_executor()
    if executor is None:
        raise errors.NotInWorkflow(
            f"{what} can only be used inside a workflow (code running in an @ev.workflow function); "
            "outside a workflow use plain asyncio/datetime instead"
        )
    return executor


class Workflow(Generic[R]):
    """A registered workflow definition."""

    def __init__(
        self,
        function: Callable[..., Awaitable[R]],
        *,
        name: str | None = None,
        timeout: DurationLike | None = None,
        service: Service | None = None,
    ) -> None:
        if not inspect.iscoroutinefunction(function):
            raise TypeError(
                f"@ev.workflow needs an `async def` function, but {getattr(function, '__name__', function)!r} "
                "is not one"
            )
        self.function = function
        self.name = name or function.__name__
        self.timeout: timedelta | None = optional_duration(timeout, what=f"timeout of workflow '{self.name}'")
        self.service = service
        #: the schedules declared on this definition by `@ev.schedule` (stacked decorators need distinct names)
        self.schedule_names: list[str] = []
        signature = inspect.signature(function)
        parameters = list(signature.parameters.values())
        if len(parameters) > 1:
            raise TypeError(
                f"workflow '{self.name}' takes {len(parameters)} arguments, but a workflow takes at most one "
                "input; put several values in a pydantic model or dataclass"
            )
        if parameters and parameters[0].kind in (
            inspect.Parameter.VAR_POSITIONAL,
            inspect.Parameter.VAR_KEYWORD,
        ):
            raise TypeError(f"workflow '{self.name}' must take a single named input, not *args/**kwargs")
        hints = type_hints(function)
        self.takes_input = bool(parameters)
        self.input_parameter = parameters[0] if parameters else None
        self.input_annotation: Any = hints.get(parameters[0].name, Any) if parameters else Any
        self.return_annotation: Any = hints.get("return", Any)
        functools.update_wrapper(self, function)
        warn_nondeterministic_calls(function, self.name)

    def __repr__(self) -> str:
        return f"<workflow {self.name!r}>"

    # -- payloads ----------------------------------------------------------------------------------------

    def validate_input(self, value: Any = _NO_INPUT) -> Any:
        """Check an input against the workflow's annotation and return its JSON form."""
        if not self.takes_input:
            if value is not _NO_INPUT and value is not None:
                raise errors.InputValidationError(f"workflow '{self.name}' takes no input, got {value!r}")
            return None
        assert self.input_parameter is not None
        if value is _NO_INPUT or value is None:
            if self.input_parameter.default is not inspect.Parameter.empty:
                value = self.input_parameter.default
            elif value is _NO_INPUT:
                raise errors.InputValidationError(
                    f"workflow '{self.name}' needs an input ('{self.input_parameter.name}')"
                )
        return validate(value, self.input_annotation, what=f"input of workflow '{self.name}'")

    def parse_input(self, raw: Any) -> Any:
        return from_json(raw, self.input_annotation, what=f"input of workflow '{self.name}'")

    def dump_result(self, value: Any) -> Any:
        return to_json(value, self.return_annotation, what=f"result of workflow '{self.name}'")

    def parse_result(self, raw: Any) -> Any:
        return from_json(raw, self.return_annotation, what=f"result of workflow '{self.name}'")

    def code(self) -> WorkflowCode:
        return WorkflowCode(
            name=self.name,
            function=self.function,
            takes_input=self.takes_input,
            parse_input=self.parse_input,
            dump_result=self.dump_result,
        )

    def spec(self) -> dict[str, Any]:
        def schema(annotation: Any) -> Any:
            if annotation is Any:
                return None
            try:
                from eventual_nb.serde import adapter

                return adapter(annotation).json_schema()
            except Exception:  # noqa: BLE001 - a schema is a courtesy, not a requirement
                return None

        return {
            "name": self.name,
            "timeout_seconds": None if self.timeout is None else self.timeout.total_seconds(),
            "input_schema": schema(self.input_annotation) if self.takes_input else None,
            "result_schema": schema(self.return_annotation),
        }

    # -- starting ----------------------------------------------------------------------------------------

    async def start(
        self, input: Any = _NO_INPUT, *, name: str | None = None, timeout: DurationLike | None = None
    ) -> ExecutionHandle:
        """Start an execution (inside a workflow: a child execution, returning a durable child handle)."""
        executor = current_executor()
        if executor is not None:
            if name is not None:
                raise errors.EventualError(
                    "child executions are named deterministically from the parent; `name=` is not allowed "
                    "inside a workflow"
                )
            child_input = self.validate_input(input)
            child_timeout = optional_duration(timeout, what="timeout")
            _seq, child_id, future = executor.start_child(self.name, child_input, child_timeout)
            return ChildExecutionHandle(child_id, self, future, executor)
        runtime = current_runtime()
        return await runtime.start_execution(self, None if input is _NO_INPUT else input, name=name, timeout=timeout)

    def __call__(self, input: Any = _NO_INPUT) -> Awaitable[R]:
        return self._run(input)

    async def _run(self, input: Any) -> R:
        handle = await self.start(input)
        return await handle.result()  # type: ignore[no-any-return]


class ChildExecutionHandle(ExecutionHandle):
    """A child execution as seen from inside its parent workflow: `result()` and `signal()` are durable."""

    def __init__(
        self, id: str, workflow: Workflow[Any], future: asyncio.Future[Any], executor: WorkflowExecutor
    ) -> None:
        super().__init__(id, workflow.name)
        self._definition = workflow
        self._future = future
        self._executor = executor

    async def result(self, timeout: Any = None) -> Any:
        if timeout is not None:
            seconds = parse_duration(timeout, what="timeout", after=self._executor.now).total_seconds()
            try:
                raw = await asyncio.wait_for(asyncio.shield(self._future), seconds)
            except TimeoutError:
                raise errors.Timeout(
                    f"child '{self.id}' did not finish within {format_duration(timedelta(seconds=seconds))}"
                ) from None
        else:
            raw = await self._future
        return self._definition.parse_result(raw)

    async def signal(self, signal: Any, payload: Any = None, id: str | None = None) -> None:
        from eventual_nb.signals import encode_payload

        name = signal_name_of(signal)
        self._executor.send_signal(self.id, name, encode_payload(signal, payload), id)

    async def _not_here(self, what: str) -> Any:
        raise errors.NotInWorkflow(f"handle.{what}() is not available inside a workflow (it is not deterministic)")

    async def status(self) -> Execution:
        return await self._not_here("status")  # type: ignore[no-any-return]

    async def cancel(self) -> None:
        if not self._future.done():
            self._future.cancel()

    async def history(self) -> Any:
        return await self._not_here("history")

    async def logs(self) -> Any:
        return await self._not_here("logs")


@overload
def workflow(function: Callable[..., Awaitable[R]], /) -> Workflow[R]: ...


@overload
def workflow(
    *, name: str | None = None, timeout: DurationLike | None = None
) -> Callable[[Callable[..., Awaitable[R]]], Workflow[R]]: ...


def workflow(
    function: Callable[..., Awaitable[Any]] | None = None,
    /,
    *,
    name: str | None = None,
    timeout: DurationLike | None = None,
) -> Any:
    """Register a workflow in the current service: `@ev.workflow` or `@ev.workflow(timeout="1h")`."""

    def register(target: Callable[..., Awaitable[Any]]) -> Workflow[Any]:
        service = current_service()
        definition: Workflow[Any] = Workflow(target, name=name, timeout=timeout, service=service)
        service.workflows[definition.name] = definition
        # a workflow defined again (a re-run cell) keeps only the schedules declared on it now: the
        # `@ev.schedule` lines above this one, which run next, register them again
        dropped = [key for key, item in service.schedules.items() if item.workflow == definition.name]
        for schedule_name in dropped:
            del service.schedules[schedule_name]
        if dropped:
            schedules_changed()
        return definition

    if function is not None:
        return register(function)
    return register


def find_workflow(name: str, services: list[Service] | None = None) -> Workflow[Any] | None:
    for service in services if services is not None else all_services():
        found = service.workflows.get(name)
        if found is not None:
            return found
    return None


def check_execution_name(name: str) -> str:
    if not isinstance(name, str) or not EXECUTION_NAME.fullmatch(name):
        raise errors.InputValidationError(
            f"invalid execution name {name!r}: names are 1-80 characters from A-Z a-z 0-9 . _ : - and start "
            "with a letter or digit"
        )
    return name


# ------------------------------------------------------------------------------ deterministic helpers


async def sleep(duration: DurationLike) -> None:
    """Durable sleep: `await ev.sleep("1 day")`."""
    executor = require_executor("ev.sleep()")
    seconds = parse_duration(duration, what="sleep duration", after=executor.now).total_seconds()
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    handle = loop.call_later(seconds, _resolve, future)
    try:
        await future
    finally:
        handle.cancel()


async def sleep_until(when: datetime) -> None:
    """Durable sleep until an absolute time (a timezone-aware `datetime`; naive means UTC)."""
    executor = require_executor("ev.sleep_until()")
    if not isinstance(when, datetime):
        raise TypeError(f"ev.sleep_until() needs a datetime, got {when!r}")
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    wait = max(when - executor.now, timedelta(0))
    parse_duration(wait, what=f"ev.sleep_until({when.isoformat()}) wait", after=executor.now)
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    handle = loop.call_at(when.timestamp(), _resolve, future)
    try:
        await future
    finally:
        handle.cancel()


def _resolve(future: asyncio.Future[Any], value: Any = None) -> None:
    if not future.done():
        future.set_result(value)


def now() -> datetime:
    """The deterministic current time (UTC) inside a workflow; the runtime's clock elsewhere."""
    executor = current_executor()
    if executor is not None:
        return executor.now
    runtime = current_runtime(required=False)
    clock = getattr(runtime, "now", None)
    if isinstance(clock, datetime):
        return clock
    return datetime.now(UTC)


def uuid4() -> uuid.UUID:
    """A UUID that replays identically inside a workflow (a random one elsewhere)."""
    executor = current_executor()
    if executor is not None:
        return executor.uuid4()
    return uuid.uuid4()


def random() -> float:
    """A float in [0, 1) that replays identically inside a workflow."""
    executor = current_executor()
    if executor is not None:
        return executor.random().random()
    return _random_module.random()


async def condition(predicate: Callable[[], Any], timeout: DurationLike | None = None) -> bool:
    """Wait until `predicate()` is true (re-checked after every event); False if `timeout` passes first."""
    executor = require_executor("ev.condition()")
    if predicate():
        return True
    future = executor.add_condition(predicate)
    handle = None
    if timeout is not None:
        seconds = parse_duration(timeout, what="condition timeout", after=executor.now).total_seconds()
        handle = asyncio.get_running_loop().call_later(seconds, _resolve, future, False)
    try:
        return await future
    finally:
        if handle is not None:
            handle.cancel()


def patched(patch_id: str) -> bool:
    """Mark a code change: True for new executions, False while replaying history from before it."""
    return require_executor("ev.patched()").patched(patch_id)


@dataclass
class RunningWorkflowInfo:
    """What a running workflow knows about itself (`ev.workflow_info()`)."""

    execution_id: str
    name: str
    workflow: str
    start_time: datetime
    parent_id: str | None


def workflow_info() -> RunningWorkflowInfo:
    executor = require_executor("ev.workflow_info()")
    started = executor.started
    assert started is not None
    return RunningWorkflowInfo(
        execution_id=executor.execution_id,
        name=executor.execution_id.split("/", 1)[1] if "/" in executor.execution_id else executor.execution_id,
        workflow=executor.workflow_name,
        start_time=started.timestamp,
        parent_id=started.parent,
    )
