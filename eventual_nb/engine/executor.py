"""Runs one workflow execution against its history: the pure step of the engine.

`WorkflowExecutor(code, execution_id, history).step(new_events)` replays the recorded history (first
call only), applies the new events one at a time, and returns the new history events, the commands
the runtime must carry out, and the captured log lines. A runtime keeps the executor cached and feeds
it only new events, so an execution of n steps costs O(n); building a fresh executor from history is
the from-scratch replay that happens after a restart, an eviction or a redefinition.

Replay checks every durable call against the recorded one (kind, name and a hash of the input) and
raises `DeterminismError` at the first divergence.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import math
import random
import uuid
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from eventual_nb import errors
from eventual_nb.durations import format_duration, parse_duration
from eventual_nb.engine import capture
from eventual_nb.engine.history import (
    ACTIVITY_RESULTS,
    CALL_EVENTS,
    CHILD_RESULTS,
    TERMINAL_EVENTS,
    ActivityFailed,
    ActivityHeartbeatTimedOut,
    ActivityScheduled,
    ActivitySucceeded,
    ActivityTimedOut,
    CancelChildWorkflow,
    CancelRequested,
    CancelTimer,
    CancelWorkflow,
    ChildWorkflowFailed,
    ChildWorkflowScheduled,
    ChildWorkflowSucceeded,
    Command,
    CompleteWorkflow,
    EventsPublished,
    FailWorkflow,
    HistoryEvent,
    LogEntry,
    PatchMarker,
    PublishEvents,
    ScheduleActivity,
    SendSignal,
    SignalReceived,
    SignalSent,
    StartChildWorkflow,
    StartTimer,
    TimerCompleted,
    TimerScheduled,
    Wait,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowStarted,
    WorkflowSucceeded,
)
from eventual_nb.engine.loop import WorkflowEventLoop
from eventual_nb.serde import canonical_json, input_hash


@dataclass
class WorkflowCode:
    """What the engine needs to know about a workflow definition (the SDK builds it)."""

    name: str
    function: Callable[..., Awaitable[Any]]
    takes_input: bool
    parse_input: Callable[[Any], Any]
    dump_result: Callable[[Any], Any]


@dataclass
class StepOutput:
    events: list[HistoryEvent] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    logs: list[LogEntry] = field(default_factory=list)

    def extend(self, other: StepOutput) -> None:
        self.events.extend(other.events)
        self.commands.extend(other.commands)
        self.logs.extend(other.logs)


@dataclass
class _Pending:
    kind: str  # "activity" | "child"
    future: asyncio.Future[Any]
    name: str
    child_id: str | None = None


@dataclass
class SignalHandlerEntry:
    handler: Callable[[Any], Any]
    disposed: bool = False


#: the events that answer a durable call (built once: `_accepts` runs for every event)
_ANSWERS = (*ACTIVITY_RESULTS, *CHILD_RESULTS, TimerCompleted)


def _when_to_datetime(when: float) -> datetime:
    return datetime.fromtimestamp(round(when, 6), UTC)


def _abbreviate(value: Any, limit: int = 80) -> str:
    text = canonical_json(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_call(event: HistoryEvent) -> str:
    """How a call reads in a determinism message: kind, name and input."""
    if isinstance(event, ActivityScheduled):
        return f"activity '{event.name}' with input {_abbreviate(event.input)}"
    if isinstance(event, TimerScheduled):
        return "a timer"
    if isinstance(event, ChildWorkflowScheduled):
        return f"child workflow '{event.workflow}' with input {_abbreviate(event.input)}"
    if isinstance(event, SignalSent):
        return f"signal '{event.signal}' sent to '{event.target}' with payload {_abbreviate(event.payload)}"
    if isinstance(event, EventsPublished):
        names = [item.get("name") for item in event.events]
        return f"publish of {names} with {_abbreviate(event.events)}"
    return event.type


def _call_identity(event: HistoryEvent) -> tuple[Any, ...]:
    if isinstance(event, ActivityScheduled):
        return ("activity", event.name, input_hash(event.input))
    if isinstance(event, TimerScheduled):
        return ("timer",)
    if isinstance(event, ChildWorkflowScheduled):
        return ("child", event.workflow, input_hash(event.input))
    if isinstance(event, SignalSent):
        return ("signal", event.signal, event.target, input_hash(event.payload))
    if isinstance(event, EventsPublished):
        return ("publish", input_hash(event.events))
    return (event.type,)


class WorkflowExecutor:
    """One execution's live workflow instance on its own deterministic loop."""

    def __init__(
        self,
        code: WorkflowCode,
        execution_id: str,
        history: Iterable[HistoryEvent] = (),
        *,
        first_step_done: bool = True,
    ) -> None:
        self.code = code
        self.workflow_name = code.name
        self.execution_id = execution_id
        self.loop = WorkflowEventLoop(self)  # type: ignore[abstract]
        self._history = list(history)
        self._first_step_done = first_step_done
        self._replayed = False
        #: the last step was the execution's first (it applied WorkflowStarted, which it does not return)
        self.began = False

        self.next_seq = 0
        self.recorded_calls: dict[int, HistoryEvent] = {}
        self.recorded_patches: set[str] = set()
        self.recorded_terminal: HistoryEvent | None = None
        self._max_recorded_seq = -1
        self.matched: set[int] = set()
        self.replaying = False

        self.pending: dict[int, _Pending] = {}
        self.timers: dict[int, asyncio.TimerHandle] = {}
        self._timer_seqs: dict[int, int] = {}

        self.signal_waiters: dict[str, list[asyncio.Future[Any]]] = defaultdict(list)
        self.signal_handlers: dict[str, list[SignalHandlerEntry]] = defaultdict(list)
        self.signal_buffer: dict[str, deque[Any]] = defaultdict(deque)
        self.seen_signal_ids: set[str] = set()
        self.conditions: list[tuple[Callable[[], Any], asyncio.Future[bool]]] = []
        #: when each signal waiter and condition began (history time), for `open_waits`
        self._waiting_since: dict[asyncio.Future[Any], datetime] = {}
        self.patches: dict[str, bool] = {}

        self.started: WorkflowStarted | None = None
        self.main_task: asyncio.Task[Any] | None = None
        self.cancel_requested = False
        self.ended = False
        self.ending = False
        self.terminal: HistoryEvent | None = None
        #: once ended: the ids of the child executions it started whose result had not arrived
        self.open_children: tuple[str, ...] = ()
        self.now = datetime(1970, 1, 1, tzinfo=UTC)
        self._fatal: BaseException | None = None
        #: a divergence found inside workflow code; raised out of step() even if the code caught it
        self._divergence: errors.DeterminismError | None = None
        self._random: random.Random | None = None
        self._out = StepOutput()

        #: statistics for benchmarks and tests
        self.events_applied = 0
        self.replayed_events = 0

    # ------------------------------------------------------------------------------------------- stepping

    def step(self, new_events: Iterable[HistoryEvent] = ()) -> StepOutput:
        """Replay recorded history (first call only), apply `new_events`, return what is new."""
        capture.install()
        self._out = out = StepOutput()
        self.began = False
        outer = self.loop.enter()
        try:
            if not self._replayed:
                self._replayed = True
                self.began = not self._first_step_done
                self._replay()
            for event in new_events:
                self._apply(event, live=True)
        finally:
            asyncio.events._set_running_loop(outer)
        return out

    @property
    def status(self) -> str:
        if self.terminal is None:
            return "IN_PROGRESS"
        return {
            "WorkflowSucceeded": "SUCCEEDED",
            "WorkflowFailed": "FAILED",
            "WorkflowCancelled": "CANCELLED",
        }[self.terminal.type]

    def _replay(self) -> None:
        history = self._history
        if not self._first_step_done:
            if not history or not isinstance(history[0], WorkflowStarted) or len(history) != 1:
                raise errors.DeterminismError(
                    f"execution '{self.execution_id}': a first step needs exactly the WorkflowStarted event",
                    execution_id=self.execution_id,
                )
            self._apply(history[0], live=True, record=False)
            return
        inputs: list[HistoryEvent] = []
        for event in history:
            if isinstance(event, CALL_EVENTS):
                if event.seq is None:
                    raise errors.DeterminismError(
                        f"execution '{self.execution_id}': history event {event.type} has no seq",
                        execution_id=self.execution_id,
                    )
                self.recorded_calls[event.seq] = event
                self._max_recorded_seq = max(self._max_recorded_seq, event.seq)
            elif isinstance(event, PatchMarker):
                self.recorded_patches.add(event.patch_id)
            else:
                if isinstance(event, TERMINAL_EVENTS) and self.recorded_terminal is None:
                    self.recorded_terminal = event
                inputs.append(event)
        if not history:
            return
        self.replaying = True
        try:
            for event in inputs:
                if self.ended:
                    self._check_recorded_end(event)
                    continue
                self._apply(event, live=False)
                self.replayed_events += 1
            unmatched = sorted(set(self.recorded_calls) - self.matched)
            if unmatched:
                seq = unmatched[0]
                doing = "has completed" if self.ended else f"is waiting on {self._describe_waits()}"
                raise errors.DeterminismError(
                    f"execution '{self.execution_id}' diverged from its history at seq {seq}: history recorded "
                    f"{describe_call(self.recorded_calls[seq])}, but the code never made that call (it now "
                    f"{doing}). {self._hint()}",
                    execution_id=self.execution_id,
                    seq=seq,
                )
        finally:
            self.replaying = False

    def _check_recorded_end(self, event: HistoryEvent) -> None:
        assert self.terminal is not None
        if isinstance(event, TERMINAL_EVENTS):
            if event.type != self.terminal.type:
                raise errors.DeterminismError(
                    f"execution '{self.execution_id}' diverged from its history: history recorded {event.type}, "
                    f"but the code now ends with {self.terminal.type}. {self._hint()}",
                    execution_id=self.execution_id,
                )
            return
        recorded = self.recorded_calls.get(event.seq) if event.seq is not None else None
        call = f" answering {describe_call(recorded)}" if recorded is not None else ""
        raise errors.DeterminismError(
            f"execution '{self.execution_id}' diverged from its history: the code now completes "
            f"({self.terminal.type}) before history event {event.type}"
            f"{'' if event.seq is None else f' (seq {event.seq})'}{call}, which it used to wait for. {self._hint()}",
            execution_id=self.execution_id,
            seq=event.seq,
        )

    def _hint(self) -> str:
        return (
            "Keep the order of durable calls for executions in flight, or guard the change with "
            "ev.patched('<change-id>')."
        )

    def _apply(self, event: HistoryEvent, *, live: bool, record: bool = True) -> None:
        if self.ended or not self._accepts(event):
            return
        if live and record:
            self._out.events.append(event)
        self.events_applied += 1
        self.now = event.timestamp
        self.loop.set_time(event.timestamp.timestamp())
        self._dispatch(event)
        self._settle()

    def _accepts(self, event: HistoryEvent) -> bool:
        if isinstance(event, WorkflowStarted):
            return self.started is None
        if isinstance(event, _ANSWERS):
            seq = event.seq
            if seq is None:
                return False
            if seq >= self.next_seq:
                if self.replaying:
                    raise errors.DeterminismError(
                        f"execution '{self.execution_id}' diverged from its history at seq {seq}: history has "
                        f"{event.type} for seq {seq}, but the code made only {self.next_seq} durable call(s) "
                        f"by then. {self._hint()}",
                        execution_id=self.execution_id,
                        seq=seq,
                    )
                return False
            if isinstance(event, TimerCompleted):
                return seq in self.timers
            pending = self.pending.get(seq)
            if pending is None:
                return False
            wanted = "activity" if isinstance(event, ACTIVITY_RESULTS) else "child"
            if pending.kind != wanted:
                if self.replaying:
                    raise errors.DeterminismError(
                        f"execution '{self.execution_id}' diverged from its history at seq {seq}: history has "
                        f"{event.type} for seq {seq}, but the code's call at seq {seq} is a {pending.kind}. "
                        f"{self._hint()}",
                        execution_id=self.execution_id,
                        seq=seq,
                    )
                return False
            return True
        if isinstance(event, SignalReceived):
            return event.id is None or event.id not in self.seen_signal_ids
        if isinstance(event, CancelRequested):
            return not self.cancel_requested and self.started is not None
        return isinstance(event, TERMINAL_EVENTS)

    def _dispatch(self, event: HistoryEvent) -> None:
        if isinstance(event, WorkflowStarted):
            self._start(event)
        elif isinstance(event, ACTIVITY_RESULTS):
            self._resolve_activity(event)
        elif isinstance(event, CHILD_RESULTS):
            self._resolve_child(event)
        elif isinstance(event, TimerCompleted):
            assert event.seq is not None
            handle = self.timers.pop(event.seq)
            self._timer_seqs.pop(id(handle), None)
            self.loop.fire_timer(handle)
        elif isinstance(event, SignalReceived):
            self._deliver_signal(event)
        elif isinstance(event, CancelRequested):
            self.cancel_requested = True
            if self.main_task is not None and not self.main_task.done():
                self.main_task.cancel()
        elif isinstance(event, TERMINAL_EVENTS):
            self._terminate(event)

    def _start(self, event: WorkflowStarted) -> None:
        self.started = event
        seed = int.from_bytes(hashlib.sha256(self.execution_id.encode()).digest()[:8], "big")
        self._random = random.Random(seed)
        self.main_task = self.loop.create_task(self._main(event.input), name=f"workflow {self.execution_id}")

    async def _main(self, raw_input: Any) -> Any:
        try:
            if self.code.takes_input:
                return await self.code.function(self.code.parse_input(raw_input))
            return await self.code.function()
        finally:
            self.loop.function_ended = True

    def _settle(self) -> None:
        """Run woken code until idle, re-check conditions, repeat; then notice completion."""
        while True:
            self.loop.run_until_idle()
            if self._divergence is not None:
                raise self._divergence
            if self.ended:
                return
            if self._fatal is not None:
                self._finish_with(self._failure(self._fatal))
                return
            if self.main_task is not None and self.main_task.done():
                self._finish()
                return
            if not self._check_conditions():
                if len(self.loop.tasks) > 256:
                    self._forget_finished_tasks()
                return

    def _forget_finished_tasks(self) -> None:
        """Keep long executions O(1) in memory: drop finished tasks unless they hold an unretrieved error."""
        self.loop.tasks = [
            task
            for task in self.loop.tasks
            if not task.done() or (not task.cancelled() and getattr(task, "_log_traceback", False))
        ]

    def _check_conditions(self) -> bool:
        fired = False
        for predicate, future in list(self.conditions):
            if future.done():
                continue
            try:
                satisfied = predicate()
            except Exception as exc:  # noqa: BLE001 - delivered to whoever awaits the condition
                future.set_exception(exc)
                fired = True
                continue
            if satisfied:
                future.set_result(True)
                fired = True
        self.conditions = [(p, f) for p, f in self.conditions if not f.done()]
        return fired

    # ------------------------------------------------------------------------------------------ completion

    def _failure(self, error: BaseException) -> tuple[HistoryEvent, Command]:
        name, message = errors.error_type_name(error), errors.error_message(error)
        return (
            WorkflowFailed(timestamp=self.now, error=name, message=message),
            FailWorkflow(error=name, message=message),
        )

    def _finish(self) -> None:
        task = self.main_task
        assert task is not None
        outcome: tuple[HistoryEvent, Command]
        if task.cancelled():
            outcome = (WorkflowCancelled(timestamp=self.now), CancelWorkflow())
        else:
            error = task.exception()
            if error is not None:
                outcome = self._failure(error)
            elif self.cancel_requested:
                outcome = (WorkflowCancelled(timestamp=self.now), CancelWorkflow())
            else:
                try:
                    result = self.code.dump_result(task.result())
                except errors.EventualError as exc:
                    outcome = self._failure(exc)
                else:
                    outcome = (
                        WorkflowSucceeded(timestamp=self.now, result=result),
                        CompleteWorkflow(result=result),
                    )
        if not isinstance(outcome[0], WorkflowFailed):
            unretrieved = self._unretrieved_task_error()
            if unretrieved is not None:
                outcome = self._failure(unretrieved)
        self._finish_with(outcome)

    def _unretrieved_task_error(self) -> BaseException | None:
        for task in self.loop.tasks:
            if task is self.main_task or not task.done() or task.cancelled():
                continue
            if getattr(task, "_log_traceback", False):
                return task.exception()
        return None

    def _finish_with(self, outcome: tuple[HistoryEvent, Command]) -> None:
        event, command = outcome
        self._end(event)
        if self.replaying and self.recorded_terminal is not None:
            return  # already in history
        self._out.events.append(event)
        self._out.commands.append(command)

    def _terminate(self, event: HistoryEvent) -> None:
        """A terminal event imposed by the runtime (workflow timeout): no workflow code runs."""
        self._end(event)
        if not self.replaying:
            if isinstance(event, WorkflowFailed):
                self._out.commands.append(FailWorkflow(error=event.error, message=event.message))
            elif isinstance(event, WorkflowCancelled):
                self._out.commands.append(CancelWorkflow())
            elif isinstance(event, WorkflowSucceeded):
                self._out.commands.append(CompleteWorkflow(result=event.result))

    def _end(self, event: HistoryEvent) -> None:
        self.ended = True
        self.ending = True
        self.terminal = event
        self.loop.function_ended = False  # what the loop held back now runs, to be cancelled
        self.signal_handlers.clear()
        for task in list(self.loop.tasks):
            if not task.done():
                task.cancel()
        self.loop.run_until_idle()
        for task in self.loop.tasks:
            if task.done() and not task.cancelled():
                task._log_traceback = False
        self.open_children = tuple(
            pending.child_id
            for _, pending in sorted(self.pending.items())
            if pending.kind == "child" and pending.child_id is not None
        )
        self.pending.clear()
        self.timers.clear()
        self.conditions.clear()

    def close(self) -> None:
        """Discard this instance: finish its suspended coroutines now, on its own loop, recording nothing.

        A runtime calls it when it drops an executor whose execution has not ended (always_replay, a
        cache eviction, a determinism failure, a one-off replay). Otherwise the garbage collector closes
        those coroutines later, at an arbitrary moment, and their `finally` blocks run while some other
        execution's loop is current, so a durable call made there would land in that other history.
        """
        if self.ended and not self.loop.tasks:
            return
        self._out = StepOutput()  # whatever happens now is thrown away
        self.ended = True
        self.ending = True  # durable calls raise CancelledError, timers are not started
        self.loop.function_ended = False
        self.signal_handlers.clear()
        with self.loop.running():
            for task in list(self.loop.tasks):
                if not task.done():
                    task.cancel()
            self.loop.run_until_idle()
            for task in self.loop.tasks:
                if not task.done():  # it swallowed the cancellation and waits again
                    with contextlib.suppress(BaseException):  # a discarded instance has nobody to report to
                        task.get_coro().close()
                task._log_traceback = False
        self.loop.tasks = []
        self.pending.clear()
        self.timers.clear()
        self.conditions.clear()

    def loop_exception(self, context: dict[str, Any]) -> None:
        """Exceptions asyncio reports through the loop: a raising callback fails the execution."""
        if self.ended:
            return
        message = str(context.get("message", ""))
        if message.startswith("Exception in callback"):
            error = context.get("exception")
            if isinstance(error, BaseException):
                self._fatal = error
        # "never retrieved" / "destroyed but pending" reports come from garbage collection, at
        # moments that differ between runs; completion handles unretrieved errors deterministically.

    # ------------------------------------------------------------------------------------- durable calls

    def _next_seq_for(self, new_event: Callable[[int], HistoryEvent], command: Callable[[int], Command]) -> int:
        if self.ending:
            raise asyncio.CancelledError()
        seq = self.next_seq
        self.next_seq += 1
        event = new_event(seq)
        recorded = self.recorded_calls.get(seq)
        if recorded is not None:
            if _call_identity(recorded) != _call_identity(event):
                self._divergence = self._divergence or errors.DeterminismError(
                    f"execution '{self.execution_id}' diverged from its history at seq {seq}: history recorded "
                    f"{describe_call(recorded)}, but the code now makes {describe_call(event)}. {self._hint()}",
                    execution_id=self.execution_id,
                    seq=seq,
                )
                raise self._divergence
            self.matched.add(seq)
            return seq
        if self.replaying and seq < self._max_recorded_seq:
            self._divergence = self._divergence or errors.DeterminismError(
                f"execution '{self.execution_id}' diverged from its history at seq {seq}: history recorded no "
                f"call at seq {seq}, but the code now makes {describe_call(event)}. {self._hint()}",
                execution_id=self.execution_id,
                seq=seq,
            )
            raise self._divergence
        self._out.events.append(event)
        self._out.commands.append(command(seq))
        return seq

    def _is_new(self, seq: int) -> bool:
        """Whether commands about `seq` must be issued now (not already issued in a recorded step)."""
        return not self.replaying or seq not in self.recorded_calls

    def schedule_activity(self, command: ScheduleActivity) -> tuple[int, asyncio.Future[Any]]:
        for limit, what in ((command.timeout, "timeout"), (command.heartbeat_timeout, "heartbeat_timeout")):
            if limit is not None:
                parse_duration(limit, what=f"{what} of activity '{command.name}'", after=self.now)
        seq = self._next_seq_for(
            lambda s: ActivityScheduled(seq=s, timestamp=self.now, name=command.name, input=command.input),
            functools.partial(_with_seq, command),
        )
        future = self.loop.create_future()
        self.pending[seq] = _Pending("activity", future, command.name)
        return seq, future

    def start_child(self, workflow: str, child_input: Any, timeout: Any = None) -> tuple[int, str, asyncio.Future[Any]]:
        if timeout is not None:
            parse_duration(timeout, what=f"timeout of child workflow '{workflow}'", after=self.now)
        seq = self.next_seq
        child_id = f"{workflow}/~{self.execution_id.replace('/', '-')}-{seq}"
        self._next_seq_for(
            lambda s: ChildWorkflowScheduled(
                seq=s, timestamp=self.now, workflow=workflow, child_id=child_id, input=child_input
            ),
            lambda s: StartChildWorkflow(
                seq=s, workflow=workflow, child_id=child_id, input=child_input, timeout=timeout
            ),
        )
        future = self.loop.create_future()
        self.pending[seq] = _Pending("child", future, workflow, child_id)
        future.add_done_callback(lambda f: self._child_future_done(seq, child_id, f))
        return seq, child_id, future

    def _child_future_done(self, seq: int, child_id: str, future: asyncio.Future[Any]) -> None:
        if future.cancelled() and seq in self.pending and not self.ending:
            del self.pending[seq]
            if self._is_new(seq):
                self._out.commands.append(CancelChildWorkflow(seq=seq, child_id=child_id))

    def send_signal(self, target: str, signal: str, payload: Any, signal_id: str | None) -> int:
        seq = self.next_seq
        return self._next_seq_for(
            lambda s: SignalSent(seq=s, timestamp=self.now, target=target, signal=signal, payload=payload),
            lambda s: SendSignal(
                seq=s,
                target=target,
                signal=signal,
                payload=payload,
                id=signal_id or f"{self.execution_id}/{seq}",
            ),
        )

    def publish(self, events: list[dict[str, Any]]) -> int:
        return self._next_seq_for(
            lambda s: EventsPublished(seq=s, timestamp=self.now, events=events),
            lambda s: PublishEvents(seq=s, events=events),
        )

    def start_timer(self, handle: asyncio.TimerHandle) -> None:
        if self.ending:
            return
        delay = handle.when() - self.loop.time()
        if delay > 0 or not math.isfinite(delay):  # `ev.sleep` & co. checked theirs; this is asyncio's own
            parse_duration(delay, what="asyncio delay (asyncio.sleep, wait_for, timeout)", after=self.now)
        until = _when_to_datetime(handle.when())
        seq = self._next_seq_for(
            lambda s: TimerScheduled(seq=s, timestamp=self.now, until=until),
            lambda s: StartTimer(seq=s, until=until),
        )
        self.timers[seq] = handle
        self._timer_seqs[id(handle)] = seq

    def mark_signal_timeout(self, handle: asyncio.TimerHandle, signal: str) -> None:
        """Name on a timer scheduled in this step the signal whose `expect(timeout=)` it is (recorded history
        stays as it was recorded: the mark is for readers, replay compares timers by kind only)."""
        seq = self._timer_seqs.get(id(handle))
        for event in self._out.events:
            if isinstance(event, TimerScheduled) and event.seq == seq:
                event.signal_timeout = signal

    def cancel_timer(self, handle: asyncio.TimerHandle) -> None:
        seq = self._timer_seqs.pop(id(handle), None)
        if seq is None or seq not in self.timers:
            return
        del self.timers[seq]
        if not self.ending and self._is_new(seq):
            self._out.commands.append(CancelTimer(seq=seq))

    def _resolve_activity(self, event: HistoryEvent) -> None:
        assert event.seq is not None
        pending = self.pending.pop(event.seq)
        future = pending.future
        if future.done():
            return
        if isinstance(event, ActivitySucceeded):
            future.set_result(event.result)
        elif isinstance(event, ActivityFailed):
            future.set_exception(
                errors.ActivityFailed(
                    event.error, event.message, activity=pending.name, seq=event.seq, attempts=event.attempts
                )
            )
        elif isinstance(event, ActivityHeartbeatTimedOut):
            future.set_exception(
                errors.HeartbeatTimeout(
                    f"activity '{pending.name}' (seq {event.seq}) missed its heartbeat deadline "
                    f"after {event.attempts} attempt(s){': ' + event.message if event.message else ''}"
                )
            )
        elif isinstance(event, ActivityTimedOut):
            future.set_exception(
                errors.Timeout(
                    f"activity '{pending.name}' (seq {event.seq}) timed out after {event.attempts} attempt(s)"
                    f"{': ' + event.message if event.message else ''}"
                )
            )

    def _resolve_child(self, event: HistoryEvent) -> None:
        assert event.seq is not None
        pending = self.pending.pop(event.seq)
        future = pending.future
        if future.done():
            return
        if isinstance(event, ChildWorkflowSucceeded):
            future.set_result(event.result)
        elif isinstance(event, ChildWorkflowFailed):
            if event.error == "ExecutionCancelled":
                future.set_exception(
                    errors.ExecutionCancelled(
                        event.message or f"child execution '{pending.child_id}' was cancelled",
                        execution_id=pending.child_id,
                    )
                )
            elif event.error == "WorkflowTimeout":
                future.set_exception(errors.WorkflowTimeout(event.message, execution_id=pending.child_id))
            else:
                future.set_exception(errors.ExecutionFailed(event.error, event.message, execution_id=pending.child_id))

    # ------------------------------------------------------------------------------------------- signals

    def _deliver_signal(self, event: SignalReceived) -> None:
        if event.id is not None:
            self.seen_signal_ids.add(event.id)
        name = event.signal
        waiters = [future for future in self.signal_waiters.pop(name, []) if not future.done()]
        handlers = [entry for entry in self.signal_handlers.get(name, []) if not entry.disposed]
        if not waiters and not handlers:
            self.signal_buffer[name].append(event.payload)
            return
        for future in waiters:
            future.set_result(event.payload)
        for entry in handlers:
            self._call_handler(entry, event.payload)

    def _call_handler(self, entry: SignalHandlerEntry, payload: Any) -> None:
        try:
            outcome = entry.handler(payload)
        except Exception as exc:  # noqa: BLE001 - a failing signal handler fails the execution at once
            self._fatal = exc
            return
        if asyncio.iscoroutine(outcome):
            task = self.loop.create_task(outcome)
            task.add_done_callback(self._handler_task_done)

    def _handler_task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or self.ended:
            return
        error = task.exception()
        if error is not None:
            self._fatal = error

    def take_buffered_signal(self, name: str) -> tuple[bool, Any]:
        buffer = self.signal_buffer.get(name)
        if buffer:
            return True, buffer.popleft()
        return False, None

    def add_signal_waiter(self, name: str) -> asyncio.Future[Any]:
        future = self.loop.create_future()
        self.signal_waiters[name].append(future)
        self._note_since(future)
        return future

    def add_signal_handler(self, name: str, handler: Callable[[Any], Any]) -> SignalHandlerEntry:
        entry = SignalHandlerEntry(handler)
        self.signal_handlers[name].append(entry)
        return entry

    def remove_signal_handler(self, name: str, entry: SignalHandlerEntry) -> None:
        entry.disposed = True
        handlers = self.signal_handlers.get(name)
        if handlers and entry in handlers:
            handlers.remove(entry)

    # ------------------------------------------------------------------------------- conditions & helpers

    def add_condition(self, predicate: Callable[[], Any]) -> asyncio.Future[bool]:
        future: asyncio.Future[bool] = self.loop.create_future()
        self.conditions.append((predicate, future))
        self._note_since(future)
        return future

    def _note_since(self, future: asyncio.Future[Any]) -> None:
        self._waiting_since[future] = self.now
        future.add_done_callback(self._waiting_since.pop)

    def patched(self, patch_id: str) -> bool:
        if patch_id in self.patches:
            return self.patches[patch_id]
        if self.replaying:
            value = patch_id in self.recorded_patches
        else:
            value = True
            if not self.ending:
                self._out.events.append(PatchMarker(timestamp=self.now, patch_id=patch_id))
        self.patches[patch_id] = value
        return value

    def random(self) -> random.Random:
        assert self._random is not None
        return self._random

    def uuid4(self) -> uuid.UUID:
        return uuid.UUID(int=self.random().getrandbits(128), version=4)

    def capture_line(self, line: str) -> None:
        if self.replaying or self.ended:
            return
        self._out.logs.append(LogEntry(time=self.now, message=line, source="workflow"))

    def log_note(self, message: str) -> None:
        """A line in this execution's logs written by the engine or runtime (not replayed)."""
        self.capture_line(message)

    # -------------------------------------------------------------------------------------- introspection

    def open_waits(self) -> list[Wait]:
        """What the execution is blocked on now: pending activities and children, timers, and the signal
        `expect`s and conditions, which history does not record, with when the code began waiting."""
        found: list[Wait] = []
        for seq, pending in sorted(self.pending.items()):
            if not pending.future.done():
                name = pending.name if pending.kind == "activity" else pending.child_id
                found.append(Wait(kind="activity" if pending.kind == "activity" else "child", seq=seq, name=name))
        for name, futures in self.signal_waiters.items():
            for future in futures:
                if not future.done():
                    found.append(Wait(kind="signal", name=name, since=self._waiting_since.get(future)))
        for _, future in self.conditions:
            if not future.done():
                found.append(Wait(kind="condition", since=self._waiting_since.get(future)))
        for seq, handle in sorted(self.timers.items()):
            found.append(Wait(kind="timer", seq=seq, until=_when_to_datetime(handle.when())))
        return found

    def waits(self) -> list[tuple[str, Any]]:
        """What the execution is blocked on, for `Stuck` messages: (kind, detail) pairs, one per signal."""
        found: list[tuple[str, Any]] = []
        for wait in self.open_waits():
            if wait.kind == "activity":
                found.append(("activity", (wait.name, wait.seq)))
            elif wait.kind == "child":
                found.append(("child", wait.name))
            elif wait.kind == "signal":
                if ("signal", wait.name) not in found:
                    found.append(("signal", wait.name))
            elif wait.kind == "condition":
                if ("condition", None) not in found:
                    found.append(("condition", None))
            else:
                found.append(("timer", (wait.seq, wait.until)))
        return found

    def _describe_waits(self) -> str:
        parts = []
        for kind, detail in self.waits():
            if kind == "activity":
                parts.append(f"activity '{detail[0]}' (seq {detail[1]})")
            elif kind == "child":
                parts.append(f"child '{detail}'")
            elif kind == "signal":
                parts.append(f"signal '{detail}'")
            elif kind == "timer":
                parts.append(f"timer (seq {detail[0]}) until {detail[1].isoformat()}")
            else:
                parts.append(kind)
        return ", ".join(parts) or "nothing"

    def timeout_message(self, what: str, timeout_seconds: float) -> str:
        from datetime import timedelta

        return f"{what} timed out after {format_duration(timedelta(seconds=timeout_seconds))}"


def _with_seq(command: ScheduleActivity, seq: int) -> ScheduleActivity:
    """Give the command its seq in place: it was made for this one call (`Activity._invoke`)."""
    command.seq = seq
    return command


def current_executor() -> WorkflowExecutor | None:
    """The executor whose workflow code is running on this thread right now, if any."""
    loop = asyncio._get_running_loop()
    if isinstance(loop, WorkflowEventLoop):
        return loop.executor
    return None
