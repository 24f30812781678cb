"""What every runtime and client shares: the service-client protocol, its shapes, and handles.

The service-client protocol is declared once, `ServiceClientProtocol`, and every implementation names it
as a base class: `RuntimeBase` (so TestEnvironment, LocalRuntime and AwsRuntime) and `ServiceClient`.
Subclassing the Protocol explicitly, rather than relying on structural matching, is what makes mypy verify
each implementation where it is defined: every method it defines is checked against the protocol's
signature like any override, and a class that leaves a protocol method out is abstract, so mypy refuses
to instantiate it. Methods a runtime offers beyond the protocol (`rebind_executions`, commit listeners,
a TestEnvironment's `tick`/`advance`) are not part of it: callers that need them narrow with `isinstance`
(`RuntimeBase`, `TestEnvironment`).

Which runtime serves a call: `async with runtime:` makes it current for code in the block (a
ContextVar) and, if none is set, the process-wide default; code outside any block (FastAPI handlers,
later notebook cells, other threads) uses that default. `current_runtime()` returns it as a
`ServiceClientProtocol`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from enum import StrEnum
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Concatenate,
    Literal,
    ParamSpec,
    Protocol,
    TypeVar,
    overload,
    runtime_checkable,
)

from pydantic import Field

from eventual_nb import errors
from eventual_nb import service as registry
from eventual_nb.engine.history import HistoryEvent, LogEntry, Wait
from eventual_nb.shapes import Shape

T = TypeVar("T")

if TYPE_CHECKING:
    from eventual_nb.activities import Activity
    from eventual_nb.entities import Entity
    from eventual_nb.runtime.core.schedules import Schedule, ScheduleInfo, Start
    from eventual_nb.runtime.entity_store import EntityStore
    from eventual_nb.service import Service
    from eventual_nb.signals import Signal
    from eventual_nb.workflows import Workflow


class ExecutionStatus(StrEnum):
    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class Execution(Shape):
    """The state of one execution as every runtime and the HTTP API report it."""

    id: str
    workflow: str
    status: ExecutionStatus
    input: Any = None
    result: Any = None
    error: str | None = None
    message: str | None = None
    start_time: datetime
    end_time: datetime | None = None
    parent: str | None = None


class WorkflowInfo(Shape):
    """A workflow a runtime serves (`list_workflows()`)."""

    name: str
    service: str | None = None
    timeout_seconds: float | None = None


class ExecutionPage(Shape):
    executions: list[Execution]
    next_token: str | None = None


class HeartbeatResponse(Shape):
    """Answer to a heartbeat: `cancelled` tells a long activity to stop (its execution ended or it timed out)."""

    cancelled: bool = False


class DeadLetter(Shape):
    """A subscription delivery that used up its retries; kept, never silently dropped."""

    event: dict[str, Any]
    subscription: str
    error: str
    message: str = ""
    attempts: int
    time: datetime


class PublishedEvent(Shape):
    """An event as published (`list_events()`): its name, the service it came from, when, and its fields."""

    name: str
    source: str | None = None
    time: datetime
    event: Any = None


class EntityInfo(Shape):
    """An entity a runtime serves (`list_entities()`): its key fields and, where counting is cheap, its size."""

    name: str
    service: str | None = None
    model: str
    key: list[str]
    #: entries stored; None where counting would cost a scan (the AWS runtime)
    count: int | None = None


class EntityRecord(Shape):
    """One entry as stored (`get_entity(name, key)`): its value's JSON as written, whatever the model says now."""

    entity: str
    key: str | list[str]
    value: Any
    version: int


class ExecutionWaits(Shape):
    """What an execution is blocked on now, read by the runtime at `now` on its own clock (a
    TestEnvironment's virtual time), so readers can say "9 min left" on the runtime's terms."""

    execution_id: str
    now: datetime
    waits: list[Wait] = Field(default_factory=list)


class StartResponse(Shape):
    execution_id: str
    already_running: bool = False


@runtime_checkable
class ServiceClientProtocol(Protocol):
    """Eventual's service client; implemented by every runtime (through `RuntimeBase`) and by `ServiceClient`,
    each naming it as a base class so mypy checks their signatures against these (see the module docstring).

    Its coroutine methods are the ones a runtime runs on its home event loop (`HOME_LOOP_METHODS`)."""

    async def list_workflows(self) -> list[WorkflowInfo]: ...

    async def start_execution(
        self, workflow: Any, input: Any = None, name: str | None = None, timeout: Any = None
    ) -> ExecutionHandle: ...

    async def get_execution(self, id: str) -> Execution: ...

    async def list_executions(
        self,
        workflow: str | None = None,
        statuses: list[ExecutionStatus] | None = None,
        next_token: str | None = None,
        max_results: int = 100,
        sort: str = "asc",
    ) -> ExecutionPage: ...

    async def get_execution_history(self, id: str) -> list[HistoryEvent]: ...

    async def get_execution_logs(self, id: str) -> list[LogEntry]: ...

    async def get_execution_waits(self, id: str) -> ExecutionWaits: ...

    async def send_signal(self, execution: Any, signal: Any, payload: Any = None, id: str | None = None) -> None: ...

    async def publish_events(self, *events: Any) -> None: ...

    async def cancel_execution(self, id: str) -> None: ...

    async def send_activity_success(self, token: str, result: Any = None) -> None: ...

    async def send_activity_failure(self, token: str, error: str, message: str | None = None) -> None: ...

    async def send_activity_heartbeat(self, token: str) -> HeartbeatResponse: ...

    async def list_dead_letters(self) -> list[DeadLetter]: ...

    async def list_schedules(self) -> list[ScheduleInfo]: ...

    async def pause_schedule(self, name: str) -> None: ...

    async def resume_schedule(self, name: str) -> None: ...

    async def trigger_schedule(self, name: str) -> ExecutionHandle: ...
    async def list_events(
        self, max_results: int = 100, source: str | None = None, name: str | None = None
    ) -> list[PublishedEvent]:
        """The most recent events published (on a LocalRuntime: on its bus, by every runtime that shares it),
        newest first; only those of service `source` and named `name`, when given."""
        ...

    async def list_entities(self) -> list[EntityInfo]: ...

    async def get_entity(self, name: str, key: Any) -> EntityRecord: ...

    async def wait_for_execution(self, id: str, timeout: float | None) -> Execution:
        """The execution once it ended (what `ExecutionHandle.result()` waits on); `ev.Timeout` after `timeout`
        seconds (None: no limit)."""
        ...


#: coroutine methods that run on a runtime's home event loop whichever thread or loop calls them: the
#: protocol's (read from `ServiceClientProtocol`, so a method added there hops too), then the runtime
#: controls outside it (`RuntimeBase.rebind_executions`, a TestEnvironment's clock)
HOME_LOOP_METHODS: tuple[str, ...] = (
    *(name for name, member in vars(ServiceClientProtocol).items() if inspect.iscoroutinefunction(member)),
    "rebind_executions",
    "tick",
    "advance",
    "tick_until",
)


_R = TypeVar("_R", bound="RuntimeBase")
_P = ParamSpec("_P")
_T = TypeVar("_T")


def _on_home_loop(
    method: Callable[Concatenate[_R, _P], Coroutine[Any, Any, _T]],
) -> Callable[Concatenate[_R, _P], Coroutine[Any, Any, _T]]:
    """Run `method` on the runtime's own loop when called from another one (a notebook cell while the
    runtime runs on the kernel's background thread, a widget callback, a server thread); a call made on
    the home loop itself goes straight through."""

    @functools.wraps(method)
    async def on_home_loop(self: _R, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        home = self._home_loop
        if home is not None and asyncio.get_running_loop() is not home:
            if home.is_closed():
                raise errors.EventualError(f"the {type(self).__name__} was stopped")
            future: concurrent.futures.Future[_T] = asyncio.run_coroutine_threadsafe(
                method(self, *args, **kwargs), home
            )
            return await asyncio.wrap_future(future)
        return await method(self, *args, **kwargs)

    on_home_loop._on_home_loop = True  # type: ignore[attr-defined]
    return on_home_loop


#: What the page tokens of offset-paged runtimes (LocalRuntime, TestEnvironment) look like: `str(offset)` of
#: the next page, at most 18 digits (below SQLite's signed 64-bit OFFSET), or empty for the first page.
#: Their `page_token_pattern`, which the server's OpenAPI shows for `next_token`.
OFFSET_TOKEN_PATTERN = r"^(0|[1-9][0-9]{0,17})?$"


class ServedDefinitions:
    """Which services a runtime serves, and their definitions looked up by name when needed, so definitions
    added or replaced later (later cells, functions defined inside a test) are the ones used."""

    #: names of the services served; None serves every service registered in the process
    _served_names: list[str] | None = None

    def _serve(self, service: Any, services: list[Any] | None) -> None:
        restrict = ([service] if service is not None else []) + list(services or [])
        self._served_names = [s if isinstance(s, str) else s.name for s in restrict] or None

    _served_cache: tuple[int, list[str] | None, list[Service]] | None = None

    def served_services(self) -> list[Service]:
        """The served `Service` objects; definitions added or replaced later (later cells) are seen through
        them, and the list itself is rebuilt whenever a new service is created."""
        return list(self._served())

    def _served(self) -> list[Service]:
        """`served_services()` without the copy, for lookups that only read it (one per activity attempt)."""
        cached = self._served_cache
        if cached is not None and cached[0] == registry.generation and cached[1] is self._served_names:
            return cached[2]
        services = registry.all_services()
        if self._served_names is not None:
            services = [service for service in services if service.name in self._served_names]
        self._served_cache = (registry.generation, self._served_names, services)
        return services

    def workflow_definition(self, name: str) -> Workflow[Any]:
        """The current definition of workflow `name` among the served services."""
        found = [(s, s.workflows[name]) for s in self.served_services() if name in s.workflows]
        if not found:
            raise errors.WorkflowNotFound(
                f"no workflow named '{name}' is served by this {type(self).__name__}", workflow=name
            )
        if len(found) > 1:
            names = " and ".join(f"'{service.name}'" for service, _ in found)
            raise errors.EventualError(
                f"workflow '{name}' is defined in services {names}; restrict the runtime with service= or services="
            )
        return found[0][1]

    def start_definition(self, workflow: Any, input: Any) -> tuple[Workflow[Any], Any]:
        """What `start_execution(workflow, input)` starts: the served definition of `workflow` (a workflow or
        its name) and the input's JSON, checked against the workflow's annotation."""
        from eventual_nb.workflows import _NO_INPUT

        name = workflow if isinstance(workflow, str) else getattr(workflow, "name", None)
        if not isinstance(name, str):
            raise errors.EventualError(f"expected a workflow or its name, got {workflow!r}")
        definition = self.workflow_definition(name)
        return definition, definition.validate_input(_NO_INPUT if input is None else input)

    def fire_start(self, start: Start, now: datetime) -> tuple[Workflow[Any], Any, str]:
        """What a schedule's `Start` (a fire or a trigger) starts: the served workflow, its input (the fire
        time, as JSON) and the execution id `<workflow>/<schedule>-<YYYYMMDDTHHMMSSZ>`, the same for every
        start of that fire, so a fire started twice starts one execution."""
        from eventual_nb.runtime import core

        definition, raw_input = self.start_definition(start.workflow, start.input)
        return definition, raw_input, core.execution_id_for(definition.name, start.execution_name, now)

    def served_schedules(self) -> list[Schedule]:
        """The schedules of the served services, by name (a later cell's `@ev.schedule` is seen at once)."""
        found: dict[str, Schedule] = {}
        for service in self.served_services():
            for name, schedule in service.schedules.items():
                found.setdefault(name, schedule)
        return [found[name] for name in sorted(found)]

    def schedule_definition(self, name: str) -> Schedule:
        """The served schedule `name`; `ScheduleNotFound` (404) naming the ones there are otherwise."""
        if not isinstance(name, str):
            raise errors.ScheduleNotFound(f"expected a schedule name, got {name!r}")
        for schedule in self.served_schedules():
            if schedule.name == name:
                return schedule
        known = ", ".join(f"'{schedule.name}'" for schedule in self.served_schedules()) or "none"
        raise errors.ScheduleNotFound(
            f"no schedule named '{name}' is served by this {type(self).__name__} (schedules: {known})", schedule=name
        )

    def activity_definition(self, name: str) -> Activity[Any, Any] | None:
        from eventual_nb.activities import find_activity  # (a module: no package import on this hot path)

        return find_activity(name, self._served())

    def aws_result_warning(self, outcome: Any, name: str, seq: int, execution_id: str) -> str | None:
        """The warning the LocalRuntime and the TestEnvironment log when an attempt's result would not fit on
        AWS (`core.limits.result_warning`; an inline activity's result has no such limit)."""
        from eventual_nb.runtime.core.limits import result_warning

        warning = result_warning(outcome, name, seq, execution_id, inline=False)
        if warning is None:
            return None  # the usual case, decided without looking the activity up (this runs on every attempt)
        definition = self.activity_definition(name)
        return None if definition is not None and definition.inline else warning

    @classmethod
    def of(cls, services: list[Any]) -> ServedDefinitions:
        """The lookups over `services` alone (services or their names), for code that serves them without
        being a runtime (the AWS schedule forwarder)."""
        lookup = ServedDefinitions()
        lookup._serve(None, services)
        return lookup


class RuntimeBase(ServedDefinitions, ServiceClientProtocol):
    """Shared behaviour of runtimes: being current, which definitions they serve, listing arguments.

    A runtime is bound to the event loop it was started on (its home loop); the protocol methods in
    `HOME_LOOP_METHODS` hop there from any other loop or thread, so one runtime can serve a notebook's
    cells, its widgets and an HTTP server at once."""

    _home_loop: asyncio.AbstractEventLoop | None = None
    #: what this runtime's `list_executions` page tokens look like (a regular expression), for the server's
    #: OpenAPI; None for opaque tokens
    page_token_pattern: ClassVar[str | None] = OFFSET_TOKEN_PATTERN

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in HOME_LOOP_METHODS:
            method = cls.__dict__.get(name)
            if method is not None and inspect.iscoroutinefunction(method) and not hasattr(method, "_on_home_loop"):
                setattr(cls, name, _on_home_loop(method))

    _token: contextvars.Token[Any] | None = None
    _made_default: bool = False

    async def list_workflows(self) -> list[WorkflowInfo]:
        found: list[WorkflowInfo] = []
        for service in self.served_services():
            for workflow in service.workflows.values():
                timeout = None if workflow.timeout is None else workflow.timeout.total_seconds()
                found.append(WorkflowInfo(name=workflow.name, service=service.name, timeout_seconds=timeout))
        return found

    async def wait_for_execution(self, id: str, timeout: float | None) -> Execution:
        raise errors.EventualError(f"{type(self).__name__} cannot wait for results")

    def current_time(self) -> datetime:
        """This runtime's clock: its own `now` when it keeps one (a TestEnvironment's virtual time), else UTC."""
        own = getattr(self, "now", None)
        return own if isinstance(own, datetime) else datetime.now(UTC)

    @_on_home_loop
    async def get_execution_waits(self, id: str) -> ExecutionWaits:
        """What execution `id` is blocked on now (none once it ended), found by replaying its history with the
        workflow's current definition: the signal `expect`s and conditions it waits on are recorded nowhere
        else. An execution whose code this runtime does not have, or which no longer replays, reports none."""
        execution = await self.get_execution(id)
        now = self.current_time()
        if execution.status != ExecutionStatus.IN_PROGRESS:
            return ExecutionWaits(execution_id=id, now=now)
        history = await self.get_execution_history(id)
        try:
            code = self.workflow_definition(execution.workflow).code()
        except errors.EventualError:
            return ExecutionWaits(execution_id=id, now=now)
        return ExecutionWaits(execution_id=id, now=now, waits=replay_waits(code, id, history))

    def entity_definition(self, name: str) -> Entity[Any]:
        """The served definition of entity `name` (`EntityNotFound`, 404, if no served service defines one)."""
        for service in self.served_services():
            found = service.entities.get(name)
            if found is not None:
                return found
        raise errors.EntityNotFound(f"no entity named '{name}' is served by this {type(self).__name__}", entity=name)

    async def list_entities(self) -> list[EntityInfo]:
        """The served entities, with their number of entries where the store counts them cheaply."""
        found: list[EntityInfo] = []
        for service in self.served_services():
            for entity in service.entities.values():
                count = await self.entity_store().count(entity.name)
                found.append(
                    EntityInfo(
                        name=entity.name,
                        service=service.name,
                        model=entity.model.__name__,
                        key=list(entity.key_fields),
                        count=count,
                    )
                )
        return found

    async def get_entity(self, name: str, key: Any) -> EntityRecord:
        """Entry `key` of entity `name` as stored (for inspection: the value is not read through the model, so an
        entry the current model refuses can still be looked at). `EntityNotFound` (404) if there is none, also
        for a key no entry could have (a one-part key for a two-part entity, an empty or too long one)."""
        entity = self.entity_definition(name)
        try:
            where = entity.key(key)
        except errors.InvalidEntityValue as exc:  # no entry can have such a key: a lookup finds nothing
            raise errors.EntityNotFound(f"{exc.message}, so it has no such entry", entity=name, key=key) from None
        stored = await self.entity_store().get(where)
        if stored is None:
            raise errors.EntityNotFound(
                f"entity '{name}' has no entry with key {where.shown!r}", entity=name, key=where.shown
            )
        shown = where.shown
        return EntityRecord(
            entity=name,
            key=shown if isinstance(shown, str) else list(shown),
            value=json.loads(stored.value),
            version=stored.version,
        )

    def entity_store(self) -> EntityStore:
        """Where this runtime keeps entities (`ev.entity`)."""
        raise errors.EventualError(f"{type(self).__name__} keeps no entities")

    async def rebind_executions(self, workflow: str, pinned: dict[str, Any]) -> None:
        """After workflow `workflow` was redefined: executions in `pinned` (id -> `WorkflowCode`) keep
        running on that code; every other in-flight execution of it continues on the new definition."""
        raise errors.EventualError(f"{type(self).__name__} cannot switch executions to a new definition")

    def retry_blocked(self) -> None:
        """Try executions that stopped on a missing or incompatible definition again."""

    #: why handles and widgets bound to this runtime cannot reach their executions through it once it stopped
    #: ("the runtime replaced by `%eventual runtime test`"); set by whoever stops it to start another
    replaced_because: str | None = None
    #: set while whoever stopped this runtime starts its replacement; handles wait for it before deciding
    _handover: threading.Event | None = None

    def is_running(self) -> bool:
        """Whether this runtime still serves calls (a stopped LocalRuntime or a closed TestEnvironment does not;
        a client of a deployed stack always does)."""
        return True

    def store(self) -> object:
        """What holds this runtime's executions: runtimes with equal stores serve the same executions, so a
        handle bound to a stopped one follows the current runtime when that opens the same store. By default
        a runtime's executions live in it alone (a TestEnvironment's memory)."""
        return self

    _commit_listeners: list[Callable[[], None]] | None = None

    def add_commit_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener()` (on the runtime's loop, so keep it tiny and thread-safe) after every commit of new
        state: the kernel's widget thread is woken this way instead of polling."""
        if self._commit_listeners is None:
            self._commit_listeners = []
        self._commit_listeners.append(listener)

    def remove_commit_listener(self, listener: Callable[[], None]) -> None:
        if self._commit_listeners and listener in self._commit_listeners:
            self._commit_listeners.remove(listener)

    def _notify_commit(self) -> None:
        for listener in list(self._commit_listeners or ()):
            try:
                listener()
            except Exception:  # a listener must never break the runtime (logged with its traceback)
                logging.getLogger("eventual_nb.runtime").exception("commit listener %r failed", listener)

    def enter_current(self) -> None:
        global _default_runtime
        self._token = _current_runtime.set(self)
        with _default_lock:
            if _default_runtime is None:
                _default_runtime = self
                self._made_default = True

    def exit_current(self) -> None:
        global _default_runtime
        if self._token is not None:
            try:
                _current_runtime.reset(self._token)
            except ValueError:  # exited in another context (e.g. a different task): just clear it
                _current_runtime.set(None)
            self._token = None
        with _default_lock:
            if self._made_default and _default_runtime is self:
                _default_runtime = None
            self._made_default = False


_current_runtime: contextvars.ContextVar[ServiceClientProtocol | None] = contextvars.ContextVar(
    "eventual_runtime", default=None
)
_default_runtime: ServiceClientProtocol | None = None
_default_lock = threading.Lock()


def set_default_runtime(runtime: ServiceClientProtocol | None) -> None:
    """Make `runtime` the process-wide default (what `eventual-nb serve` and `%eventual runtime` do)."""
    global _default_runtime
    with _default_lock:
        _default_runtime = runtime


async def running_on(runtime: ServiceClientProtocol, work: Coroutine[Any, Any, T]) -> T:
    """Await `work` with `runtime` as the current runtime (for this task and those it starts; the process-wide
    default is left alone): how the AWS functions give a runtime to the activities and handlers they run."""
    _current_runtime.set(runtime)
    return await work


@overload
def current_runtime(required: Literal[True] = True) -> ServiceClientProtocol: ...


@overload
def current_runtime(required: bool) -> ServiceClientProtocol | None: ...


def current_runtime(required: bool = True) -> ServiceClientProtocol | None:
    """The runtime for this code: the innermost `async with runtime:`, else the process-wide default; None
    when there is none and `required` is false (with `required`, `NoRuntime` saying how to set one)."""
    runtime = _current_runtime.get()
    if runtime is None:
        runtime = _default_runtime
    if runtime is None and required:
        raise errors.NoRuntime(
            "no runtime is set: run this inside `async with ev.testing.TestEnvironment():` (tests), "
            "`async with ev.LocalRuntime():` (scripts), under `eventual-nb serve`, or after "
            "`%eventual runtime local` in a notebook"
        )
    return runtime


def replay_waits(code: Any, execution_id: str, history: list[HistoryEvent]) -> list[Wait]:
    """Replay `history` with `code` in a fresh executor and return what it then waits on (none if the code no
    longer replays the history: a diverged execution waits on a compatible definition, not on a call)."""
    from eventual_nb.engine.executor import WorkflowExecutor

    if not history:
        return []
    executor = WorkflowExecutor(code, execution_id, history)
    try:
        executor.step([])
        return executor.open_waits()
    except errors.EventualError:
        return []
    finally:
        executor.close()


def listing_offset(sort: str, max_results: int, next_token: str | None) -> int:
    """Check `list_executions` arguments; the page token is the offset of the next page.

    A token that does not match `OFFSET_TOKEN_PATTERN` was not issued by a listing and is refused
    (`InvalidPageToken`, 400) rather than read loosely (`int()` would take '-50', ' 7', '1_0' or
    Arabic-Indic digits, and SQLite overflows past 2**63 - 1).
    """
    if sort not in ("asc", "desc"):
        raise errors.InputValidationError(f"sort must be 'asc' or 'desc', got {sort!r}")
    if max_results < 1:
        raise errors.InputValidationError(f"max_results must be at least 1, got {max_results}")
    if next_token is None:
        return 0
    if re.fullmatch(OFFSET_TOKEN_PATTERN, next_token) is None:
        raise invalid_page_token(next_token)
    return int(next_token or 0)


#: the most results one listing call returns
MAX_RESULTS_LIMIT = 1000


def check_max_results(max_results: int) -> None:
    """A listing's page size: 1 to `MAX_RESULTS_LIMIT` (`InputValidationError`, 422, otherwise)."""
    if not 1 <= max_results <= MAX_RESULTS_LIMIT:
        raise errors.InputValidationError(
            f"max_results must be between 1 and {MAX_RESULTS_LIMIT}, got {max_results}",
            errors=[{"loc": ["query", "max_results"], "msg": "out of range", "type": "value_error"}],
        )


def invalid_page_token(
    token: str, reason: str = "not a page token (pass the next_token of the page before)"
) -> errors.InvalidPageToken:
    """The one error every runtime raises for a `next_token` it did not issue (HTTP 400, naming the field)."""
    shown = token if len(token) <= 80 else token[:77] + "..."
    return errors.InvalidPageToken(
        f"invalid next_token {shown!r}: {reason}; omit it for the first page",
        errors=[{"loc": ["query", "next_token"], "msg": reason, "type": "invalid_page_token"}],
    )


def execution_id_of(execution: Any) -> str:
    """Accept an execution id or anything with an `.id` (a handle)."""
    if isinstance(execution, str):
        return execution
    identifier = getattr(execution, "id", None)
    if isinstance(identifier, str):
        return identifier
    raise errors.EventualError(f"expected an execution id or handle, got {execution!r}")


def signal_name_of(signal: Any) -> str:
    if isinstance(signal, str):
        return signal
    name = getattr(signal, "name", None)
    if isinstance(name, str):
        return name
    raise errors.EventualError(f"expected a signal or its name, got {signal!r}")


#: how long a handle waits for a runtime switch in progress (the kernel's `%eventual runtime`) to finish
HANDOVER_TIMEOUT = 60.0


def _is_running(runtime: ServiceClientProtocol) -> bool:
    """A runtime says whether it still serves calls; a client (ServiceClient) has no lifecycle here: it does."""
    return not isinstance(runtime, RuntimeBase) or runtime.is_running()


def serving_runtime(bound: ServiceClientProtocol, what: str) -> ServiceClientProtocol:
    """The runtime that serves `what` (a handle's execution, a widget) now, for one bound to `bound`.

    `bound` itself while it runs. Once it stopped, the current runtime if that opens the same store (a
    notebook re-running `%eventual runtime local`: handles and widgets follow the new runtime); otherwise
    an `EventualError` saying plainly why the execution cannot be reached. Blocks while a switch started by
    whoever stopped `bound` is still in progress (call it from a thread that is not the runtime's)."""
    if not isinstance(bound, RuntimeBase) or bound.is_running():
        return bound
    if bound._handover is not None:
        bound._handover.wait(HANDOVER_TIMEOUT)
    current = current_runtime(required=False)
    if (
        isinstance(current, RuntimeBase)
        and current is not bound
        and current.is_running()
        and current.store() == bound.store()
    ):
        return current
    reason = bound.replaced_because or f"a {type(bound).__name__} that was stopped"
    raise errors.EventualError(f"{what} belongs to {reason}")


class ExecutionHandle:
    """A reference to one execution, bound to the runtime or client that started or found it.

    A handle whose runtime stopped follows the runtime that replaced it on the same store (a re-run of
    `%eventual runtime local` in a notebook), and otherwise says which runtime it belongs to."""

    def __init__(
        self,
        id: str,
        workflow: str | None = None,
        *,
        runtime: ServiceClientProtocol | None = None,
        already_running: bool = False,
    ):
        self.id = id
        self.workflow = workflow or id.split("/", 1)[0]
        self._runtime = runtime
        self.already_running = already_running

    def __repr__(self) -> str:
        extra = ", already_running=True" if self.already_running else ""
        return f"ExecutionHandle({self.id!r}{extra})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExecutionHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def runtime(self) -> ServiceClientProtocol:
        return self._runtime if self._runtime is not None else current_runtime()

    async def _serving(self) -> ServiceClientProtocol:
        """The runtime to call now (`serving_runtime`), remembered so later calls go straight to it."""
        bound = self._runtime
        if bound is None:
            return current_runtime()
        if not _is_running(bound):
            # waits for a switch in progress on a worker thread: the switching thread may need this loop
            bound = self._runtime = await asyncio.to_thread(serving_runtime, bound, f"this execution ('{self.id}')")
        return bound

    async def status(self) -> Execution:
        return await (await self._serving()).get_execution(self.id)

    async def result(self, timeout: Any = None) -> Any:
        """Wait for the execution to end; return its result or raise why it did not succeed."""
        from eventual_nb.durations import optional_duration

        limit = optional_duration(timeout, what="timeout")
        deadline = None if limit is None else time.monotonic() + limit.total_seconds()
        while True:
            runtime = await self._serving()
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                execution = await runtime.wait_for_execution(self.id, left)
            except errors.EventualError:
                if _is_running(runtime):
                    raise
                continue  # its runtime stopped while waiting: wait on the one that replaced it
            return outcome_of(execution)

    async def signal(self, signal: Signal[Any] | str, payload: Any = None, id: str | None = None) -> None:
        await (await self._serving()).send_signal(self.id, signal, payload, id=id)

    async def cancel(self) -> None:
        await (await self._serving()).cancel_execution(self.id)

    async def history(self) -> list[HistoryEvent]:
        return await (await self._serving()).get_execution_history(self.id)

    async def logs(self) -> list[LogEntry]:
        return await (await self._serving()).get_execution_logs(self.id)


def outcome_of(execution: Execution) -> Any:
    """The result of an ended execution, typed by its workflow's return annotation when it is known."""
    if execution.status == ExecutionStatus.SUCCEEDED:
        from eventual_nb.workflows import find_workflow

        definition = find_workflow(execution.workflow)
        if definition is None:
            return execution.result
        return definition.parse_result(execution.result)
    if execution.status == ExecutionStatus.CANCELLED:
        raise errors.ExecutionCancelled(f"execution '{execution.id}' was cancelled", execution_id=execution.id)
    if execution.status == ExecutionStatus.FAILED:
        if execution.error == "WorkflowTimeout":
            raise errors.WorkflowTimeout(execution.message or "", execution_id=execution.id)
        raise errors.ExecutionFailed(execution.error or "Error", execution.message or "", execution_id=execution.id)
    raise errors.EventualError(f"execution '{execution.id}' is still {execution.status}")


class Timestamped(Shape):
    time: datetime = Field(default_factory=lambda: datetime.now().astimezone())
