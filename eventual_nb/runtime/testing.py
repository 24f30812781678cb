"""`TestEnvironment`: the whole runtime in memory on a virtual clock, running the real engine and the
execution core (`eventual_nb.runtime.core`), which decides what every step, attempt and delivery means.

Time never passes on its own: only `tick`, `advance`, `tick_until` and `result()` move it. Work that is
due (workflow steps, activity attempts, timers, retries, signal deliveries, subscription deliveries,
schedule fires) sits in one queue ordered by due time and arrival, so a test run is deterministic.

Schedules (`@ev.schedule`) fire in virtual time: `await env.advance("7d")` stops at every fire on the way
and starts its execution then, with the fire time as input. The environment first sees a schedule when it
starts (or, for one defined later, at the next `tick`), so no fire before that is started. A schedule
fire alone does not count as progress for `result()`: an execution that only a future fire could wake is
reported `Stuck` rather than waited for through years of fires; move the clock with `advance` instead.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import inspect
import itertools
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from eventual_nb import errors
from eventual_nb.activities import Activity, ActivityInfo
from eventual_nb.durations import LATEST_DEADLINE, DurationLike, deadline_after, format_duration
from eventual_nb.engine import capture
from eventual_nb.engine.executor import WorkflowExecutor
from eventual_nb.engine.history import Command, HistoryEvent, LogEntry, SignalReceived
from eventual_nb.events import Event, Subscription, envelope, event_name, find_event, source_of
from eventual_nb.runtime import core
from eventual_nb.runtime.activity_runner import attempt_info, run_attempt, run_delivery, token_result
from eventual_nb.runtime.base import (
    DeadLetter,
    Execution,
    ExecutionHandle,
    ExecutionPage,
    ExecutionStatus,
    HeartbeatResponse,
    PublishedEvent,
    RuntimeBase,
    check_max_results,
    execution_id_of,
    listing_offset,
    signal_name_of,
)
from eventual_nb.runtime.core import (
    ActivityOptions,
    ArmTimer,
    AttemptOutcome,
    Deadlines,
    Deliver,
    DisarmTimer,
    Finish,
    Lineage,
    Outcome,
    Publish,
    StartAttempt,
    StartChild,
    schedules,
)
from eventual_nb.runtime.core.schedules import Schedule, ScheduleInfo, ScheduleState
from eventual_nb.runtime.entity_memory import MemoryEntityStore
from eventual_nb.runtime.tokens import TokenSigner
from eventual_nb.serde import input_hash, to_json
from eventual_nb.service import Service
from eventual_nb.signals import encode_payload
from eventual_nb.workflows import Workflow

DEFAULT_RESULT_TIMEOUT = timedelta(days=3650)


class Stuck(errors.EventualError):
    """`result()` found nothing due or pending that could ever wake the execution."""

    status_code = 409


# ------------------------------------------------------------------------------------------------- mocks


@dataclass
class _Behaviour:
    kind: str  # succeed | fail | invoke | invoke_real | timeout | heartbeat_timeout | async_result
    value: Any = None
    message: str = ""


class MockActivity:
    """Replaces an activity's behaviour in a TestEnvironment; `*_once` behaviours are used first, in order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._once: deque[_Behaviour] = deque()
        self._standing: _Behaviour | None = None
        self.calls = 0

    def __repr__(self) -> str:
        return f"<mock of activity {self.name!r}>"

    def _set(self, behaviour: _Behaviour, once: bool) -> MockActivity:
        if once:
            self._once.append(behaviour)
        else:
            self._standing = behaviour
        return self

    def succeed(self, result: Any = None) -> MockActivity:
        return self._set(_Behaviour("succeed", result), False)

    def succeed_once(self, result: Any = None) -> MockActivity:
        return self._set(_Behaviour("succeed", result), True)

    def fail(self, error: BaseException | type[BaseException] | str, message: str = "") -> MockActivity:
        return self._set(_Behaviour("fail", error, message), False)

    def fail_once(self, error: BaseException | type[BaseException] | str, message: str = "") -> MockActivity:
        return self._set(_Behaviour("fail", error, message), True)

    def invoke(self, function: Callable[..., Any]) -> MockActivity:
        return self._set(_Behaviour("invoke", function), False)

    def invoke_once(self, function: Callable[..., Any]) -> MockActivity:
        return self._set(_Behaviour("invoke", function), True)

    def invoke_real(self) -> MockActivity:
        return self._set(_Behaviour("invoke_real"), False)

    def invoke_real_once(self) -> MockActivity:
        return self._set(_Behaviour("invoke_real"), True)

    def timeout(self) -> MockActivity:
        return self._set(_Behaviour("timeout"), False)

    def timeout_once(self) -> MockActivity:
        return self._set(_Behaviour("timeout"), True)

    def heartbeat_timeout(self) -> MockActivity:
        return self._set(_Behaviour("heartbeat_timeout"), False)

    def heartbeat_timeout_once(self) -> MockActivity:
        return self._set(_Behaviour("heartbeat_timeout"), True)

    def async_result(self, callback: Callable[[str], Any] | None = None) -> MockActivity:
        return self._set(_Behaviour("async_result", callback), False)

    def async_result_once(self, callback: Callable[[str], Any] | None = None) -> MockActivity:
        return self._set(_Behaviour("async_result", callback), True)

    def next_behaviour(self) -> _Behaviour | None:
        self.calls += 1
        if self._once:
            return self._once.popleft()
        return self._standing


# ------------------------------------------------------------------------------------------------- state


@dataclass
class _ExecutionState:
    id: str
    workflow: str
    input: Any
    input_hash: str
    start_time: datetime
    lineage: Lineage
    history: list[HistoryEvent]
    order: int
    status: ExecutionStatus = ExecutionStatus.IN_PROGRESS
    result: Any = None
    error: str | None = None
    message: str | None = None
    end_time: datetime | None = None
    logs: list[LogEntry] = field(default_factory=list)
    inbox: list[HistoryEvent] = field(default_factory=list)
    executor: WorkflowExecutor | None = None
    first_step_done: bool = False
    step_scheduled: bool = False
    #: why the execution cannot step (a determinism failure, a workflow that is no longer defined)
    blocked: errors.EventualError | None = None
    seen_signal_ids: set[str] = field(default_factory=set)
    timers: dict[str, _Work] = field(default_factory=dict)
    #: every command the engine issued for this execution, in order (read by `commands_of`)
    commands: list[Command] = field(default_factory=list)

    def execution(self) -> Execution:
        return Execution(
            id=self.id,
            workflow=self.workflow,
            status=self.status,
            input=self.input,
            result=self.result,
            error=self.error,
            message=self.message,
            start_time=self.start_time,
            end_time=self.end_time,
            parent=self.lineage.parent,
        )


@dataclass
class _ActivityState:
    execution_id: str
    seq: int
    name: str
    input: dict[str, Any]
    options: ActivityOptions
    attempt: int = 0
    #: scheduled | running | async | hanging (a mocked timeout) | backoff | done
    status: str = "scheduled"
    deadlines: Deadlines = core.NO_DEADLINES
    heartbeat_details: Any = None

    def settles(self, attempt: int) -> bool:
        """Whether an outcome of `attempt` still decides something (it is the current one and unsettled)."""
        return self.attempt == attempt and self.status in ("running", "async", "hanging")


@dataclass(order=True)
class _Work:
    due: datetime
    order: int
    run: Callable[[], Awaitable[None]] = field(compare=False)
    what: str = field(compare=False, default="")
    cancelled: bool = field(compare=False, default=False)
    #: a schedule fire: run when time passes it, but never a reason for `result()` to move time (see above)
    background: bool = field(compare=False, default=False)


class _TestSubscriber:
    def __init__(self, env: TestEnvironment, names: tuple[str, ...], events: tuple[Any, ...], handler: Any):
        self._env = env
        self.names = names
        self.events = events
        self.handler = handler
        self.disposed = False

    def dispose(self) -> None:
        self.disposed = True
        if self in self._env._test_subscribers:
            self._env._test_subscribers.remove(self)


# ------------------------------------------------------------------------------------------- environment


class TestEnvironment(RuntimeBase):
    """In-memory runtime with a virtual clock; implements the whole service-client protocol."""

    __test__ = False
    #: called with each environment when its `async with` block ends (the test suite replays histories)
    observers: ClassVar[list[Callable[[TestEnvironment], None]]] = []

    def __init__(
        self,
        start: datetime | None = None,
        *,
        service: Service | str | None = None,
        services: list[Service | str] | None = None,
        always_replay: bool = False,
    ) -> None:
        if start is None:
            start = datetime.now(UTC).replace(microsecond=0)
        elif start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        self._now = start.astimezone(UTC)
        self._serve(service, services)
        self.always_replay = always_replay
        self._signer = TokenSigner(secrets.token_bytes(32))
        self._executions: dict[str, _ExecutionState] = {}
        self._queue: list[_Work] = []
        self._order = itertools.count()
        self._activities: dict[tuple[str, int], _ActivityState] = {}
        self._mocks: dict[str, MockActivity] = {}
        self._published: list[tuple[dict[str, Any], str | None, datetime]] = []
        self._test_subscribers: list[_TestSubscriber] = []
        self._subscriptions_enabled = True
        self._dead_letters: list[DeadLetter] = []
        self.subscription_logs: list[LogEntry] = []
        self._version = 0
        #: statistics: workflow steps run and from-scratch replays done
        self.steps = 0
        self.replays = 0
        #: executions that keep running on an earlier definition of their workflow (`rebind_executions`)
        self._pinned: dict[str, Any] = {}
        #: each schedule's state (`core.schedules`), kept while the environment lives
        self._schedule_states: dict[str, ScheduleState] = {}
        #: the served schedules as last seen, with the queued work of their next fire
        self._schedule_work: dict[str, tuple[Schedule, _Work | None]] = {}
        self._schedules_seen: tuple[int, int] | None = None
        self._entities = MemoryEntityStore()

    # -- context -------------------------------------------------------------------------------------

    async def __aenter__(self) -> TestEnvironment:
        capture.install()
        self._home_loop = asyncio.get_running_loop()
        self.enter_current()
        self._sync_schedules()
        return self

    def is_running(self) -> bool:
        return self._home_loop is not None

    def entity_store(self) -> MemoryEntityStore:
        """This environment's entities (`ev.entity`), in memory: each environment starts with none."""
        return self._entities

    async def __aexit__(self, *exc_info: Any) -> None:
        self.exit_current()
        self._home_loop = None
        for state in self._executions.values():
            if state.executor is not None:
                # close suspended workflow coroutines now, on their own loop, so the garbage collector
                # never runs their `finally` blocks while another execution's loop is current
                state.executor.close()
                state.executor = None
        for observer in list(self.observers):
            observer(self)

    @property
    def now(self) -> datetime:
        return self._now

    # -- services ------------------------------------------------------------------------------------

    # -- the queue -----------------------------------------------------------------------------------

    def _schedule(
        self, due: datetime, run: Callable[[], Awaitable[None]], what: str, *, background: bool = False
    ) -> _Work:
        work = _Work(due=max(due, self._now), order=next(self._order), run=run, what=what, background=background)
        heapq.heappush(self._queue, work)
        self._version += 1
        return work

    def _next_due(self) -> datetime | None:
        while self._queue and self._queue[0].cancelled:
            heapq.heappop(self._queue)
        return self._queue[0].due if self._queue else None

    def _next_foreground_due(self) -> datetime | None:
        """The next due work that is not a schedule fire (what `result()` may move time for)."""
        return min((work.due for work in self._queue if not work.cancelled and not work.background), default=None)

    async def tick(self) -> None:
        """Run everything due now, and everything that becomes due now in turn; the clock stays."""
        self._sync_schedules()
        while True:
            due = self._next_due()
            if due is None or due > self._now:
                return
            work = heapq.heappop(self._queue)
            await work.run()
            await asyncio.sleep(0)

    async def advance(self, duration: DurationLike) -> None:
        """Move the clock forward by `duration`, stopping at each due time on the way to tick."""
        target = deadline_after(self._now, duration, what="advance duration")
        await self._advance_to(target)

    async def tick_until(self, when: datetime) -> None:
        """`advance(when - env.now)`; a time in the past does nothing."""
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        if when > self._now:
            await self._advance_to(when)
        else:
            await self.tick()

    async def _advance_to(self, target: datetime) -> None:
        await self.tick()
        while True:
            due = self._next_due()
            if due is None or due > target:
                break
            self._now = due
            await self.tick()
        self._now = target
        await self.tick()

    async def _test_loop_progress(self) -> bool:
        """Let the test's own tasks run; True if they handed the environment new work."""
        before = self._version
        loop = asyncio.get_running_loop()
        for _ in range(100):
            await asyncio.sleep(0)
            if self._version != before:
                return True
            if not getattr(loop, "_ready", None):
                break
        return self._version != before

    async def wait_for_execution(self, id: str, timeout: float | None) -> Execution:
        state = self._state(id)
        if timeout is None:  # the default wait stops at the latest deadline rather than refusing to start
            deadline = self._now + max(timedelta(0), min(DEFAULT_RESULT_TIMEOUT, LATEST_DEADLINE - self._now))
        else:
            deadline = deadline_after(self._now, timeout, what="result timeout")
        while True:
            await self.tick()
            if state.status != ExecutionStatus.IN_PROGRESS:
                return state.execution()
            if state.blocked is not None and not state.step_scheduled:
                raise state.blocked
            due = self._next_due()
            foreground = self._next_foreground_due()
            if foreground is None or foreground > deadline:
                if await self._test_loop_progress():
                    continue
                if foreground is None:
                    raise Stuck(self._stuck_message(state))
                await self._advance_to(deadline)  # schedule fires on the way run at their own times
                if state.status != ExecutionStatus.IN_PROGRESS:
                    return state.execution()
                raise errors.Timeout(
                    f"execution '{id}' did not finish within {format_duration(deadline - state.start_time)} "
                    "of virtual time"
                )
            assert due is not None  # at most the foreground work's due
            self._now = due

    def _stuck_message(self, state: _ExecutionState) -> str:
        return (
            f"execution '{state.id}' is stuck: nothing due or pending in this TestEnvironment can wake it; "
            f"it is waiting on {self._describe_waits(state)}"
        )

    def _describe_waits(self, state: _ExecutionState) -> str:
        executor = state.executor
        if executor is None:
            definition = self.workflow_definition(state.workflow)
            executor = WorkflowExecutor(
                definition.code(), state.id, state.history, first_step_done=state.first_step_done
            )
            executor.step([])
        waits = executor.waits()
        if executor is not state.executor:
            executor.close()
        parts = []
        for kind, detail in waits:
            if kind == "activity":
                name, seq = detail
                activity = self._activities.get((state.id, seq))
                how = ", async completion" if activity is not None and activity.status == "async" else ""
                parts.append(f"activity '{name}' (seq {seq}{how})")
            elif kind == "child":
                parts.append(f"child '{detail}'")
            elif kind == "signal":
                parts.append(f"signal '{detail}'")
            elif kind == "condition":
                parts.append("condition")
            elif kind == "timer":
                parts.append(f"timer (seq {detail[0]}) until {detail[1].isoformat()}")
        return ", ".join(parts) or "nothing (it never started running)"

    # -- executions ----------------------------------------------------------------------------------

    def _state(self, id: str) -> _ExecutionState:
        state = self._executions.get(id)
        if state is None:
            raise core.not_found(id)
        return state

    async def start_execution(
        self, workflow: Any, input: Any = None, name: str | None = None, timeout: Any = None
    ) -> ExecutionHandle:
        definition, raw_input = self.start_definition(workflow, input)
        execution_id = core.execution_id_for(definition.name, name, self._now)
        return self._start(definition, raw_input, execution_id, timeout, Lineage.of(definition))

    def _start(
        self, definition: Workflow[Any], raw_input: Any, execution_id: str, timeout: Any, lineage: Lineage
    ) -> ExecutionHandle:
        digest = input_hash(raw_input)
        existing = self._executions.get(execution_id)
        if core.admit(execution_id, digest, existing.input_hash if existing is not None else None):
            return ExecutionHandle(execution_id, definition.name, runtime=self, already_running=True)
        limit = core.timeout_limit(timeout, definition.timeout)
        begun = core.begin(
            execution_id, definition.name, raw_input, start=self._now, limit=limit, parent=lineage.parent
        )
        state = _ExecutionState(
            id=execution_id,
            workflow=definition.name,
            input=raw_input,
            input_hash=digest,
            start_time=self._now,
            lineage=lineage,
            history=[begun.started],
            order=len(self._executions),
        )
        self._executions[execution_id] = state
        self._schedule_step(state)
        if begun.timeout is not None:
            self._arm(begun.timeout)
        return ExecutionHandle(execution_id, definition.name, runtime=self)

    def _status_of(self, execution_id: str) -> ExecutionStatus | None:
        state = self._executions.get(execution_id)
        return None if state is None else state.status

    def _deliver(self, state: _ExecutionState, event: HistoryEvent) -> None:
        if state.status != ExecutionStatus.IN_PROGRESS:
            return
        if isinstance(event, SignalReceived) and event.id is not None:
            if event.id in state.seen_signal_ids:
                return
            state.seen_signal_ids.add(event.id)
        state.inbox.append(event)
        self._schedule_step(state)

    def _schedule_step(self, state: _ExecutionState) -> None:
        if not state.step_scheduled:
            state.step_scheduled = True
            self._schedule(self._now, lambda: self._step(state), f"step {state.id}")

    async def _step(self, state: _ExecutionState) -> None:
        state.step_scheduled = False
        if state.status != ExecutionStatus.IN_PROGRESS:
            state.inbox.clear()
            return
        events, state.inbox = state.inbox, []
        executor = None
        try:
            executor = state.executor
            if executor is None:
                code = self._pinned.get(state.id) or self.workflow_definition(state.workflow).code()
                executor = WorkflowExecutor(code, state.id, state.history, first_step_done=state.first_step_done)
                if state.first_step_done:
                    self.replays += 1
            output = executor.step(events)
        except errors.EventualError as exc:
            if executor is not None:
                executor.close()
            state.blocked = exc
            state.executor = None
            state.inbox = events + state.inbox
            return
        state.blocked = None
        state.first_step_done = True
        self.steps += 1
        state.history.extend(output.events)
        state.commands.extend(output.commands)
        turn = core.turn(executor, output, state.lineage, now=self._now, status_of=self._status_of)
        state.logs.extend(turn.logs)
        for action in turn.actions:
            self._carry_out(action)
        if executor.ended:
            state.executor = None
        elif self.always_replay:
            executor.close()
            state.executor = None
        else:
            state.executor = executor
        if state.inbox:
            self._schedule_step(state)
        if self._commit_listeners:
            self._notify_commit()

    def _carry_out(self, action: core.Action) -> None:
        match action:
            case StartAttempt():
                activity = _ActivityState(action.execution_id, action.seq, action.name, action.input, action.options)
                self._activities[(action.execution_id, action.seq)] = activity
                self._schedule(self._now, lambda: self._attempt(activity), f"activity {action.name}")
            case ArmTimer():
                self._arm(action)
            case DisarmTimer():
                work = self._executions[action.execution_id].timers.pop(action.key, None)
                if work is not None:
                    work.cancelled = True
            case Deliver():
                target = self._executions.get(action.target)
                if target is not None:
                    self._deliver(target, action.event)
            case Publish():
                self._publish(action.envelopes, action.source)
            case StartChild():
                self._start_child(action)
            case Finish():
                self._finish(action)

    def _finish(self, action: Finish) -> None:
        state = self._executions[action.execution_id]
        state.status, state.end_time = action.status, action.end_time
        state.result, state.error, state.message = action.result, action.error, action.message
        for work in state.timers.values():
            work.cancelled = True
        state.timers.clear()

    def _arm(self, action: ArmTimer) -> None:
        state = self._executions[action.execution_id]
        key, fires = action.key, action.fires

        async def fire() -> None:
            if state.timers.pop(key, None) is not None:
                self._deliver(state, core.timer_fired(fires, self._now))

        state.timers[key] = self._schedule(action.due, fire, f"timer {state.id} {key}")

    def _start_child(self, action: StartChild) -> None:
        if action.child_id in self._executions:
            return
        try:
            definition = self.workflow_definition(action.workflow)
            lineage = Lineage.of(definition, action.parent, action.seq)
            self._start(definition, action.input, action.child_id, action.timeout, lineage)
        except errors.EventualError as exc:
            self._carry_out(core.child_not_started(action, exc))

    async def get_execution(self, id: str) -> Execution:
        return self._state(id).execution()

    async def list_executions(
        self,
        workflow: str | None = None,
        statuses: list[ExecutionStatus] | None = None,
        next_token: str | None = None,
        max_results: int = 100,
        sort: str = "asc",
    ) -> ExecutionPage:
        offset = listing_offset(sort, max_results, next_token)
        wanted = {ExecutionStatus(status) for status in statuses} if statuses else None
        items = [
            state
            for state in self._executions.values()
            if (workflow is None or state.workflow == workflow) and (wanted is None or state.status in wanted)
        ]
        items.sort(key=lambda state: (state.start_time, state.order), reverse=sort == "desc")
        page = items[offset : offset + max_results]
        more = offset + max_results < len(items)
        return ExecutionPage(
            executions=[state.execution() for state in page],
            next_token=str(offset + max_results) if more else None,
        )

    async def get_execution_history(self, id: str) -> list[HistoryEvent]:
        return list(self._state(id).history)

    async def get_execution_logs(self, id: str) -> list[LogEntry]:
        return list(self._state(id).logs)

    async def send_signal(self, execution: Any, signal: Any, payload: Any = None, id: str | None = None) -> None:
        execution_id = execution_id_of(execution)
        name = signal_name_of(signal)
        encoded = encode_payload(signal, payload, self.served_services())
        state = self._state(execution_id)
        self._deliver(state, core.signal_received(execution_id, state.status, name, encoded, id, self._now))

    async def publish_events(self, *events: Any) -> None:
        for event in events:
            self._publish([envelope(event)], source_of(event))

    async def cancel_execution(self, id: str) -> None:
        state = self._state(id)
        self._deliver(state, core.cancel_requested(id, state.status, self._now))

    # -- activities ----------------------------------------------------------------------------------

    async def rebind_executions(self, workflow: str, pinned: dict[str, Any]) -> None:
        self._pinned.update(pinned)
        for state in self._executions.values():
            if state.workflow == workflow and state.id not in self._pinned and state.executor is not None:
                state.executor.close()  # the next step replays on the new definition (checked compatible)
                state.executor = None
        self.retry_blocked()

    def retry_blocked(self) -> None:
        for state in self._executions.values():
            if state.blocked is not None and state.status == ExecutionStatus.IN_PROGRESS:
                state.blocked = None
                self._schedule_step(state)

    def mock_activity(self, activity: Activity[Any, Any] | str) -> MockActivity:
        """Replace `activity`'s behaviour (a fresh mock each call); unmocked activities run for real."""
        name = activity if isinstance(activity, str) else activity.name
        mock = MockActivity(name)
        self._mocks[name] = mock
        return mock

    def reset_mocks(self) -> None:
        self._mocks.clear()

    def _log_for(self, execution_id: str, source: str) -> Callable[[str], None]:
        def log_line(line: str) -> None:
            state = self._executions.get(execution_id)
            if state is not None:
                state.logs.append(LogEntry(time=self._now, message=line, source=source))

        return log_line

    async def _attempt(self, activity: _ActivityState) -> None:
        state = self._executions.get(activity.execution_id)
        if state is None or state.status != ExecutionStatus.IN_PROGRESS or activity.status == "done":
            return
        activity.attempt += 1
        attempt = activity.attempt
        activity.status = "running"
        activity.deadlines = core.attempt_deadlines(activity.options, self._now)
        self._watch(activity, attempt)
        token = self._signer.sign(activity.execution_id, activity.seq, attempt)
        mock = self._mocks.get(activity.name)
        behaviour = mock.next_behaviour() if mock is not None else None
        definition = self.activity_definition(activity.name)
        info = attempt_info(
            activity.execution_id, activity.name, activity.seq, attempt, token, activity.heartbeat_details
        )
        outcome = await self._run_behaviour(activity, attempt, behaviour, definition, info)
        if outcome is not None:
            await self._settle_attempt(activity, attempt, outcome)

    def _watch(self, activity: _ActivityState, attempt: int) -> None:
        """Check the attempt's deadlines when the nearer one comes."""
        due = activity.deadlines.next
        if due is not None:
            self._schedule(due, lambda: self._check_deadlines(activity, attempt), f"deadline of {activity.name}")

    async def _check_deadlines(self, activity: _ActivityState, attempt: int) -> None:
        if not activity.settles(attempt):
            return
        deadlines = activity.deadlines
        missed = core.missed_deadline(deadlines.deadline, deadlines.heartbeat, self._now)
        if missed is None:
            self._watch(activity, attempt)  # a heartbeat moved it
        else:
            await self._settle_attempt(activity, attempt, core.expired(missed, attempt, activity.options))

    async def _run_behaviour(
        self,
        activity: _ActivityState,
        attempt: int,
        behaviour: _Behaviour | None,
        definition: Activity[Any, Any] | None,
        info: ActivityInfo,
    ) -> AttemptOutcome | None:
        """The outcome of the attempt as the mock (or the real activity) has it; None while it goes on."""
        kind = behaviour.kind if behaviour is not None else "invoke_real"
        if kind == "succeed":
            assert behaviour is not None
            return self._mocked_result(activity, behaviour.value, definition)
        if kind == "fail":
            assert behaviour is not None
            return _mocked_failure(behaviour.value, behaviour.message)
        if kind in ("timeout", "heartbeat_timeout"):
            return self._mocked_hang(activity, attempt, heartbeat=kind == "heartbeat_timeout")
        if kind == "async_result":
            assert behaviour is not None
            return core.waiting(behaviour.value or _no_callback)
        if definition is None:
            return core.not_served(activity.name, "TestEnvironment")
        invoke = behaviour.value if kind == "invoke" and behaviour is not None else None
        return await run_attempt(
            definition,
            activity.input,
            info,
            lambda details: self._heartbeat(activity, attempt, details),
            self._log_for(activity.execution_id, activity.name),
            invoke=invoke,
        )

    @staticmethod
    def _mocked_result(activity: _ActivityState, value: Any, definition: Activity[Any, Any] | None) -> AttemptOutcome:
        annotation = definition.shape.return_annotation if definition is not None else Any
        try:
            return core.succeeded(to_json(value, annotation, what=f"the mocked result of activity '{activity.name}'"))
        except errors.EventualError as exc:
            return core.failed(exc, retryable=False)

    @staticmethod
    def _mocked_hang(activity: _ActivityState, attempt: int, *, heartbeat: bool) -> AttemptOutcome | None:
        """A mocked `timeout()` hangs until its attempt's timeout (heartbeating meanwhile); a mocked
        `heartbeat_timeout()` never heartbeats. Without the limit in question it times out at once."""
        options = activity.options
        kind = Outcome.HEARTBEAT_MISSED if heartbeat else Outcome.TIMED_OUT
        if (options.heartbeat_timeout if heartbeat else options.timeout) is None:
            return core.expired(kind, attempt, options)
        if not heartbeat:
            activity.status = "hanging"
            activity.deadlines = Deadlines(activity.deadlines.deadline, None)
        return None

    async def _settle_attempt(self, activity: _ActivityState, attempt: int, outcome: AttemptOutcome) -> None:
        if not activity.settles(attempt):
            return  # a late outcome of an attempt that timed out, was retried, or was completed by token
        decision = core.retry_or_settle(
            outcome,
            name=activity.name,
            seq=activity.seq,
            attempt=attempt,
            now=self._now,
            policy=activity.options.retry,
        )
        match decision:
            case core.Settle(event=event):
                activity.status = "done"
                warning = self.aws_result_warning(outcome, activity.name, activity.seq, activity.execution_id)
                if warning is not None:
                    self._log_for(activity.execution_id, "runtime")(warning)
                self._activities.pop((activity.execution_id, activity.seq), None)  # its token is no longer pending
                state = self._executions.get(activity.execution_id)
                if state is not None:
                    self._deliver(state, event)
            case core.RetryAt(due=due, note=note):
                activity.status = "backoff"
                self._log_for(activity.execution_id, activity.name)(note)
                self._schedule(due, lambda: self._attempt(activity), f"retry {activity.name}")
            case core.AwaitToken(note=note):
                activity.status = "async"
                activity.deadlines = core.heartbeat_at(activity.deadlines, activity.options, self._now)
                self._log_for(activity.execution_id, activity.name)(note)
                assert outcome.callback is not None
                await _call(outcome.callback, self._signer.sign(activity.execution_id, activity.seq, attempt))

    async def _heartbeat(self, activity: _ActivityState, attempt: int, details: Any) -> HeartbeatResponse:
        state = self._executions.get(activity.execution_id)
        alive = (
            state is not None
            and state.status == ExecutionStatus.IN_PROGRESS
            and activity.attempt == attempt
            and activity.status in ("running", "async")
        )
        if alive:
            activity.deadlines = core.heartbeat_at(activity.deadlines, activity.options, self._now)
            if details is not None:
                activity.heartbeat_details = to_json(details, what="heartbeat details")
        return HeartbeatResponse(cancelled=not alive)

    def _pending_activity(self, token: str) -> tuple[_ActivityState, int]:
        execution_id, seq, attempt = self._signer.verify(token)
        activity = self._activities.get((execution_id, seq))
        state = self._executions.get(execution_id)
        if (
            activity is None
            or activity.attempt != attempt
            or activity.status not in ("running", "async")
            or state is None
            or state.status != ExecutionStatus.IN_PROGRESS
        ):
            raise core.token_not_pending(execution_id, seq, attempt)
        return activity, attempt

    async def send_activity_success(self, token: str, result: Any = None) -> None:
        activity, attempt = self._pending_activity(token)
        encoded = token_result(self.activity_definition(activity.name), activity.name, result)
        await self._settle_attempt(activity, attempt, core.succeeded(encoded))

    async def send_activity_failure(self, token: str, error: str, message: str | None = None) -> None:
        activity, attempt = self._pending_activity(token)
        await self._settle_attempt(activity, attempt, core.failed_named(error, message))

    async def send_activity_heartbeat(self, token: str) -> HeartbeatResponse:
        execution_id, seq, attempt = self._signer.verify(token)
        activity = self._activities.get((execution_id, seq))
        if activity is None:
            return HeartbeatResponse(cancelled=True)
        return await self._heartbeat(activity, attempt, None)

    # -- events --------------------------------------------------------------------------------------

    def _publish(self, envelopes: list[dict[str, Any]], source: str | None) -> None:
        for item in envelopes:
            self._published.append((item, source, self._now))
            if self._subscriptions_enabled:
                for subscription in core.subscriptions_for(self.served_services(), item["name"], source):
                    self._schedule_delivery(subscription, item, 1)
            for subscriber in list(self._test_subscribers):
                if item["name"] in subscriber.names:
                    self._schedule(
                        self._now, functools.partial(self._deliver_to_test, subscriber, item), "test subscriber"
                    )

    def _schedule_delivery(self, subscription: Subscription, item: dict[str, Any], attempt: int) -> None:
        self._schedule(
            self._now,
            lambda: self._deliver_event(subscription, item, attempt),
            f"subscription {subscription.name}",
        )

    async def _deliver_event(self, subscription: Subscription, item: dict[str, Any], attempt: int) -> None:
        def log_line(line: str) -> None:
            self.subscription_logs.append(LogEntry(time=self._now, message=line, source=subscription.name))

        error = await run_delivery(subscription, item, log_line)
        if error is None:
            return
        decision = core.after_delivery(subscription.name, subscription.retry, item, attempt, error, self._now)
        if isinstance(decision, DeadLetter):
            self._dead_letters.append(decision)
        else:
            self._schedule(
                decision.due,
                lambda: self._deliver_event(subscription, item, decision.attempt),
                f"subscription retry {subscription.name}",
            )

    async def _deliver_to_test(self, subscriber: _TestSubscriber, item: dict[str, Any]) -> None:
        if subscriber.disposed:
            return
        value: Any = item["event"]
        for event in subscriber.events:
            if isinstance(event, type) and issubclass(event, Event) and event_name(event) == item["name"]:
                value = event.model_validate(item["event"])
        await _call(subscriber.handler, value)

    def published(self, event: type[Event] | str) -> list[Any]:
        """Events of this type published so far, in order (instances when the class is known)."""
        name = event_name(event)
        cls = event if isinstance(event, type) else find_event(name)
        found = []
        for item, _source, _time in self._published:
            if item["name"] == name:
                found.append(cls.model_validate(item["event"]) if cls is not None else item["event"])
        return found

    def subscribe(self, *events: type[Event] | str, handler: Callable[[Any], Any] | None = None) -> Any:
        """Test-only subscriber: `env.subscribe(EventType, handler)` (sync or async); returns `.dispose()`-able.

        The handler may also be passed as the last positional argument.
        """
        items = list(events)
        if handler is None and items and callable(items[-1]) and not isinstance(items[-1], type):
            handler = items.pop()
        if handler is None or not items:
            raise errors.EventualError("env.subscribe needs event classes (or names) and a handler")
        subscriber = _TestSubscriber(self, tuple(event_name(e) for e in items), tuple(items), handler)
        self._test_subscribers.append(subscriber)
        return subscriber

    def disable_subscriptions(self) -> None:
        self._subscriptions_enabled = False

    def enable_subscriptions(self) -> None:
        self._subscriptions_enabled = True

    def dead_letters(self) -> list[DeadLetter]:
        return list(self._dead_letters)

    async def list_dead_letters(self) -> list[DeadLetter]:
        return list(self._dead_letters)

    async def list_events(
        self, max_results: int = 100, source: str | None = None, name: str | None = None
    ) -> list[PublishedEvent]:
        """The events published in this environment (virtual time), newest first."""
        check_max_results(max_results)
        found: list[PublishedEvent] = []
        for item, published_by, moment in reversed(self._published):
            if (source is None or published_by == source) and (name is None or item["name"] == name):
                found.append(PublishedEvent(name=item["name"], source=published_by, time=moment, event=item["event"]))
                if len(found) == max_results:
                    break
        return found

    # -- introspection for tests ---------------------------------------------------------------------

    # -- schedules -----------------------------------------------------------------------------------

    def _sync_schedules(self) -> None:
        """See schedules defined, replaced or removed since the last look (cheap when none changed): a new
        one starts its state now, so it has no missed fires; each has its next fire queued."""
        from eventual_nb import service as registry

        seen = (registry.schedule_generation, registry.generation)
        if seen == self._schedules_seen:
            return
        self._schedules_seen = seen
        served = {schedule.name: schedule for schedule in self.served_schedules()}
        for name, (known, work) in list(self._schedule_work.items()):
            if served.get(name) != known:  # removed, or defined again with other options
                if work is not None:
                    work.cancelled = True
                del self._schedule_work[name]
        for name, schedule in served.items():
            if name not in self._schedule_work:
                self._schedule_states.setdefault(name, ScheduleState.new(self._now))
                self._arm_schedule(schedule)

    def _arm_schedule(self, schedule: Schedule) -> None:
        """Queue the schedule's next fire (replacing the one queued), or nothing while paused."""
        known = self._schedule_work.get(schedule.name)
        if known is not None and known[1] is not None:
            known[1].cancelled = True
        due = schedules.wake_at(schedule, self._schedule_states[schedule.name])
        work = None
        if due is not None:
            work = self._schedule(
                due, functools.partial(self._fire_schedule, schedule.name), f"schedule {schedule.name}", background=True
            )
        self._schedule_work[schedule.name] = (schedule, work)

    async def _fire_schedule(self, name: str) -> None:
        known = self._schedule_work.get(name)
        if known is None:
            return
        schedule = known[0]
        state = self._schedule_states[name]
        running = schedules.previous_running(state, self._status_of)
        decision = schedules.decide_due(schedule, state, self._now, previous_in_progress=running)
        self._schedule_states[name] = self._start_fires(decision)
        self._arm_schedule(schedule)

    def _start_fires(self, decision: schedules.Decision) -> ScheduleState:
        """Start what a schedule decision says; the state to keep, with the last execution started."""
        state = decision.state
        for start in decision.starts:
            state = state.started(self._start_fire(start).id)
        return state

    def _start_fire(self, start: schedules.Start) -> ExecutionHandle:
        definition, raw_input, execution_id = self.fire_start(start, self._now)
        return self._start(definition, raw_input, execution_id, None, Lineage.of(definition))

    def _schedule_state(self, name: str) -> tuple[Schedule, ScheduleState]:
        schedule = self.schedule_definition(name)
        self._sync_schedules()
        return schedule, self._schedule_states[name]

    async def list_schedules(self) -> list[ScheduleInfo]:
        self._sync_schedules()
        return [
            schedules.schedule_info(schedule, self._schedule_states[schedule.name])
            for schedule in self.served_schedules()
        ]

    async def pause_schedule(self, name: str) -> None:
        schedule, state = self._schedule_state(name)
        self._schedule_states[name] = schedules.pause(state)
        self._arm_schedule(schedule)

    async def resume_schedule(self, name: str) -> None:
        schedule, state = self._schedule_state(name)
        self._schedule_states[name] = schedules.resume(state, self._now)
        self._arm_schedule(schedule)

    async def trigger_schedule(self, name: str) -> ExecutionHandle:
        schedule, state = self._schedule_state(name)
        decision = schedules.decide_trigger(schedule, state, self._now)
        (start,) = decision.starts
        handle = self._start_fire(start)
        self._schedule_states[name] = decision.state.started(handle.id)
        return handle

    def executions(self) -> list[str]:
        """Ids of every execution this environment has started, oldest first."""
        return list(self._executions)

    def history_of(self, id: str) -> list[HistoryEvent]:
        return list(self._state(id).history)

    def commands_of(self, id: str) -> list[Command]:
        """Every command the engine's steps issued for execution `id`, in order (read-only, for tests)."""
        return list(self._state(id).commands)


def _mocked_failure(error: Any, message: str) -> AttemptOutcome:
    """A mock's `fail(...)`: an exception (class or instance) or just an error name."""
    if isinstance(error, type) and issubclass(error, BaseException):
        error = error(message) if message else error()
    if isinstance(error, BaseException):
        return core.failed(error)
    return core.failed_named(str(error), message)


def _no_callback(token: str) -> None:
    """`async_result()` without a callback: the test completes the activity with a token it gets elsewhere."""


async def _call(function: Callable[..., Any], *args: Any) -> Any:
    value = function(*args)
    if inspect.isawaitable(value):
        value = await value
    return value
