"""The orchestrator of the AWS runtime: one turn per execution per SQS FIFO batch.

`Orchestrator.handle_batch(event, context)` is what the orchestrator Lambda calls with a batch of the
workflow FIFO queue (MessageGroupId = execution id). Records are grouped by execution, in order, and
each group becomes ONE turn:

1. read the execution's history and its head (one strongly consistent query; a warm cached executor
   reads only what follows the length it has replayed, which on a hit is just the head);
2. drop incoming events that are already in history (same key as the message's de-duplication id:
   the sha256 of the event's canonical JSON) — SQS delivers at least once and moto forgets FIFO
   de-duplication as soon as the first copy is deleted;
3. step the workflow; the first turn of an execution first records `WorkflowStarted`, built from the
   execution record that `ExecutionStore.create` wrote;
4. COMMIT the new events, the head's compare-and-swap, the record's terminal status (when the turn ended
   the execution) and the turn's *dispatch actions* in ONE `TransactWriteItems`, before anything is sent;
5. dispatch the actions (activity messages, timers, child starts, signals, published events, child
   cancellations, the parent's notification) through a `Dispatch`, each idempotent under its own key.

A `HistoryConflict` at the commit (another invocation committed first: a duplicate delivery running in
parallel, or a stale invocation whose visibility timeout expired) fails the group's records, so SQS
redelivers them and they replay on fresh state; nothing of the losing turn was written.

Re-dispatch after a crash between commit and dispatch
-----------------------------------------------------
The head item carries `pending`: the JSON list of the last committed turn's actions, written in the same
transaction as its events (and replaced, or removed, by the next turn's transaction). A turn that did
not itself witness the previous turn's dispatch complete (no warm executor for exactly the head's
length in this container) re-dispatches `pending` before stepping, skipping actions whose results are
already known (an activity, timer or child whose result is in history or in the incoming batch). Every
action is idempotent by key — activity messages by the claim row `(execution, seq, attempt)`, timers by
the `TimerCompleted` event's key and the schedule name, child starts by the deterministic child id,
events by their de-duplication key (and signals by their id) — so re-sending is safe, and the warm path
(the common case) never re-sends. Why on the head rather than an item of its own: the head is written
by every turn anyway, so carrying the actions costs no extra write request unit in the common case.

Log lines of a turn are written after its dispatch and are not re-sent (a crash loses that turn's log
lines instead of duplicating them on every cold turn).

Everything here is synchronous boto3 work on one thread: the Lambda handler calls it directly.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from eventual_nb import errors
from eventual_nb.durations import deadline_after, format_duration
from eventual_nb.engine.executor import WorkflowExecutor
from eventual_nb.engine.history import (
    ACTIVITY_RESULTS,
    CALL_EVENTS,
    CHILD_RESULTS,
    EVENT_ADAPTER,
    TERMINAL_EVENTS,
    CancelChildWorkflow,
    CancelRequested,
    CancelTimer,
    ChildWorkflowFailed,
    ChildWorkflowScheduled,
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
    TimerScheduled,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowStarted,
    WorkflowSucceeded,
)
from eventual_nb.runtime.activity_runner import activity_options
from eventual_nb.runtime.aws.stores import (
    TIMEOUT_ATTRIBUTE,
    ExecutionStore,
    HistoryConflict,
    HistoryHead,
    HistoryStore,
)
from eventual_nb.runtime.base import ExecutionStatus
from eventual_nb.serde import canonical_json
from eventual_nb.service import Service
from eventual_nb.workflows import Workflow

LOGGER = logging.getLogger("eventual_nb.aws.orchestrator")

#: SQS delays (and so the timer queue's hops) are at most this long; longer timers go to the Scheduler
MAX_QUEUE_DELAY_SECONDS = 900
#: warm executors kept per container (least recently used are closed first)
DEFAULT_MAX_CACHED = 1000
#: the key of the workflow-timeout timer (user timers are keyed by their seq)
TIMEOUT_TIMER_KEY = "timeout"


class Dispatch(Protocol):
    """Where a turn's actions go (the slice-2 AWS clients satisfy it; tests may record instead).

    Every method must be safe to call again with the same arguments: re-dispatch relies on it."""

    def send_workflow_event(self, execution_id: str, event: dict[str, Any]) -> None: ...

    def send_activity(self, message: dict[str, Any]) -> None: ...

    def schedule_timer(self, execution_id: str, key: str, due: datetime, event: dict[str, Any]) -> None: ...

    def cancel_timer(self, execution_id: str, key: str) -> None: ...

    def publish(self, envelopes: list[dict[str, Any]], source: str | None) -> None: ...

    def write_logs(self, execution_id: str, entries: list[LogEntry]) -> None: ...

    def start_child(self, execution_id: str) -> None: ...


def event_key(event: HistoryEvent | dict[str, Any]) -> str:
    """The de-duplication key of an event: sha256 of its canonical JSON (the workflow queue's dedup id)."""
    data = event if isinstance(event, dict) else event.model_dump(mode="json")
    return hashlib.sha256(canonical_json(data).encode("utf-8")).hexdigest()[:64]


def start_message(execution_id: str) -> dict[str, Any]:
    return {"type": "start", "execution_id": execution_id}


def event_message(execution_id: str, event: HistoryEvent) -> dict[str, Any]:
    return {"type": "event", "execution_id": execution_id, "event": event.model_dump(mode="json")}


@dataclass
class _Progress:
    """What the history says about calls still waiting: drives re-dispatch filtering and the end's clean-up."""

    keys: set[str] = field(default_factory=set)
    #: seqs whose result (activity, timer, child) is in history
    resolved: set[int] = field(default_factory=set)
    #: timer seq -> (scheduled at, due), for timers not completed yet
    timers: dict[int, tuple[datetime, datetime]] = field(default_factory=dict)
    #: child seq -> child id, for children without a result yet
    children: dict[int, str] = field(default_factory=dict)
    started: WorkflowStarted | None = None
    terminal: HistoryEvent | None = None
    length: int = 0

    def observe(self, events: Iterable[HistoryEvent]) -> None:
        for event in events:
            self.length += 1
            self.keys.add(event_key(event))
            if isinstance(event, WorkflowStarted) and self.started is None:
                self.started = event
            elif isinstance(event, TimerScheduled) and event.seq is not None:
                self.timers[event.seq] = (event.timestamp, event.until)
            elif isinstance(event, ChildWorkflowScheduled) and event.seq is not None:
                self.children[event.seq] = event.child_id
            elif isinstance(event, (*ACTIVITY_RESULTS, *CHILD_RESULTS, TimerCompleted)) and event.seq is not None:
                self.resolved.add(event.seq)
                self.timers.pop(event.seq, None)
                self.children.pop(event.seq, None)
            elif isinstance(event, TERMINAL_EVENTS) and self.terminal is None:
                self.terminal = event


@dataclass
class _Cached:
    """A warm executor and what its turns need, valid while the history has exactly `progress.length` events."""

    executor: WorkflowExecutor
    progress: _Progress
    parent_seq: int | None = None


@dataclass
class _Loaded:
    progress: _Progress
    history: list[HistoryEvent]
    pending: list[dict[str, Any]]
    cached: _Cached | None


@dataclass
class OrchestratorStats:
    """Counters for benchmarks and tests."""

    turns: int = 0
    commits: int = 0
    conflicts: int = 0
    warm_hits: int = 0
    replays: int = 0
    history_queries: int = 0
    redispatched_actions: int = 0
    dispatched_actions: int = 0


class Orchestrator:
    """Runs workflow turns for batches of the workflow FIFO queue; keep one per process (warm cache)."""

    def __init__(
        self,
        stores: tuple[ExecutionStore, HistoryStore],
        dispatch: Dispatch,
        services: Sequence[Service],
        *,
        max_cached: int = DEFAULT_MAX_CACHED,
    ) -> None:
        self.executions, self.history = stores
        self.dispatch = dispatch
        self.services = list(services)
        self.max_cached = max_cached
        self._cache: collections.OrderedDict[str, _Cached] = collections.OrderedDict()
        self.stats = OrchestratorStats()

    # ------------------------------------------------------------------------------------------ batch

    def handle_batch(self, event: dict[str, Any], context: Any = None) -> dict[str, list[dict[str, str]]]:
        """An SQS FIFO batch event -> `{"batchItemFailures": [...]}` (partial batch response).

        Once a record of an execution fails, every later record of that execution in the batch is reported
        too, so SQS keeps the group's order when it redelivers them."""
        groups: dict[str, list[dict[str, Any]]] = {}
        for record in event.get("Records") or []:
            group = (record.get("attributes") or {}).get("MessageGroupId") or _body_execution_id(record)
            groups.setdefault(group, []).append(record)
        failures: list[dict[str, str]] = []
        for group, records in groups.items():
            failed_from = self._process_group(group, records)
            failures.extend({"itemIdentifier": str(record["messageId"])} for record in records[failed_from:])
        return {"batchItemFailures": failures}

    def _process_group(self, group: str, records: list[dict[str, Any]]) -> int:
        """Index of the group's first failed record (`len(records)` when all succeeded)."""
        messages: list[dict[str, Any]] = []
        bad = len(records)
        for position, record in enumerate(records):
            try:
                message = json.loads(record["body"])
                if not isinstance(message, dict) or message.get("execution_id") != group:
                    raise ValueError(f"message for {message.get('execution_id')!r} in group {group!r}")
                if message.get("type") == "event":
                    message["parsed"] = EVENT_ADAPTER.validate_python(message["event"])
                elif message.get("type") != "start":
                    raise ValueError(f"unknown message type {message.get('type')!r}")
            except (ValueError, KeyError, TypeError) as exc:
                LOGGER.error("workflow queue message %s is malformed: %s", record.get("messageId"), exc)
                bad = position
                break
            messages.append(message)
        if not messages:
            return bad
        try:
            self.turn(group, messages)
        except HistoryConflict as exc:
            self.stats.conflicts += 1
            LOGGER.info("turn of %s lost a race and is retried: %s", group, exc)
            return 0
        except Exception:  # one broken execution must not fail the others in the batch
            LOGGER.exception("turn of execution %s failed; its messages are redelivered", group)
            return 0
        return bad

    # ------------------------------------------------------------------------------------------- turn

    def turn(self, execution_id: str, messages: Sequence[dict[str, Any]]) -> None:
        """One turn for `execution_id` with the given parsed messages; raises to fail them all."""
        self.stats.turns += 1
        cached = self._cache.pop(execution_id, None)  # back in the cache only once the turn fully succeeded
        loaded = self._load(execution_id, cached)
        progress = loaded.progress
        if loaded.cached is None and loaded.pending:
            self._redispatch(execution_id, loaded.pending, progress, messages)
        if progress.terminal is not None:
            return  # events for an ended execution are dropped (its last actions were re-sent above)

        record: dict[str, Any] | None = None
        started = progress.started
        first = started is None
        if first:
            record = self._record(execution_id)
            if record is None:
                LOGGER.warning("dropping %d message(s) for unknown execution %s", len(messages), execution_id)
                return
            if record["status"] != ExecutionStatus.IN_PROGRESS.value:
                return
            started = self._started_from(execution_id, record)
        assert started is not None

        fresh: list[HistoryEvent] = []
        seen = set(progress.keys)
        for message in messages:
            event = message.get("parsed")
            if event is None:
                continue
            key = event_key(event)
            if key in seen:
                continue
            seen.add(key)
            fresh.append(event)
        if not first and not fresh:
            self._keep(execution_id, loaded.cached)
            return

        definition = self._workflow(started.workflow)
        executor = loaded.cached.executor if loaded.cached is not None else None
        try:
            if executor is None:
                if first:
                    executor = WorkflowExecutor(definition.code(), execution_id, [started], first_step_done=False)
                else:
                    executor = WorkflowExecutor(definition.code(), execution_id, loaded.history)
                    self.stats.replays += 1
            output = executor.step(fresh)
        except Exception as exc:
            if executor is not None:
                executor.close()
            self._note_blocked(execution_id, exc, started)
            raise

        events = ([started] if first else []) + output.events
        parent_seq = loaded.cached.parent_seq if loaded.cached is not None else None
        if record is not None and "parent_seq" in record:
            parent_seq = int(record["parent_seq"])
        expected = progress.length
        progress.observe(events)
        service = definition.service.name if definition.service is not None else None
        actions = [action for command in output.commands for action in self._actions(execution_id, command, events)]
        if first and started.timeout_at is not None:
            actions.append(self._timeout_action(execution_id, started))
        if executor.ended:
            if started.parent is not None and parent_seq is None:
                found = self._record(execution_id)
                if found is not None and "parent_seq" in found:
                    parent_seq = int(found["parent_seq"])
            actions.extend(self._end_actions(execution_id, executor, started, progress, parent_seq))
        for action in actions:
            if action["kind"] == "publish":
                action["source"] = service

        extra: list[dict[str, Any]] = []
        if executor.ended:
            extra.append(self._finish_item(execution_id, started.workflow, executor))
        if events or actions or extra:
            try:
                self._commit(execution_id, expected, events, actions, extra)
            except Exception:
                executor.close()
                raise
            self.stats.commits += 1

        for action in actions:
            self._carry_out(execution_id, action)
        self.stats.dispatched_actions += len(actions)
        if output.logs:
            self.dispatch.write_logs(execution_id, list(output.logs))
        if executor.ended:
            executor.close()
        else:
            self._keep(execution_id, _Cached(executor, progress, parent_seq))

    def _keep(self, execution_id: str, cached: _Cached | None) -> None:
        if cached is None:
            return
        self._cache[execution_id] = cached
        while len(self._cache) > self.max_cached:
            _, evicted = self._cache.popitem(last=False)
            evicted.executor.close()

    # ------------------------------------------------------------------------------------------ reads

    def _load(self, execution_id: str, cached: _Cached | None) -> _Loaded:
        """History and head in one strongly consistent query; a warm executor reads only past its length."""
        after = cached.progress.length if cached is not None else 0
        events, head = self._query(execution_id, after)
        length, pending = head.length, head.pending
        if cached is not None:
            if not events and length == after:
                self.stats.warm_hits += 1
                return _Loaded(cached.progress, [], pending, cached)
            cached.executor.close()  # someone else committed since: rebuild from the whole history
            events, head = self._query(execution_id, 0)
            length, pending = head.length, head.pending
        if len(events) != length:
            raise errors.EventualError(
                f"history of execution '{execution_id}' has {len(events)} events but its head says {length}"
            )
        progress = _Progress()
        progress.observe(events)
        return _Loaded(progress, events, pending, None)

    def _query(self, execution_id: str, after: int) -> tuple[list[HistoryEvent], HistoryHead]:
        """Events `after`, ... and the head (`sk` sorts `ev#...` < `head`), consistently, in one query."""
        found = self.history.read_with_head(execution_id, after)
        self.stats.history_queries += found.queries
        return found.events, found.head

    def _record(self, execution_id: str) -> dict[str, Any] | None:
        """The record's values (it holds `parent_seq`, `service` and the timeout, which `Execution` does not)."""
        return self.executions.record(execution_id)

    def _workflow(self, name: str) -> Workflow[Any]:
        found = [service.workflows[name] for service in self.services if name in service.workflows]
        if not found:
            raise errors.WorkflowNotFound(f"no workflow named '{name}' is served by this orchestrator", workflow=name)
        return found[0]

    def _started_from(self, execution_id: str, record: dict[str, Any]) -> WorkflowStarted:
        """The first event, built from the record only (so every turn that builds it builds the same one)."""
        workflow = record["workflow"]
        start = datetime.fromisoformat(record["start_time"])
        limit: timedelta | None
        if TIMEOUT_ATTRIBUTE in record:
            limit = timedelta(seconds=float(record[TIMEOUT_ATTRIBUTE]))
        else:
            limit = self._workflow(workflow).timeout
        return WorkflowStarted(
            timestamp=start,
            workflow=workflow,
            input=record.get("input"),
            parent=record.get("parent"),
            timeout_at=None if limit is None else deadline_after(start, limit, what="timeout"),
        )

    # ------------------------------------------------------------------------------------------ commit

    def _commit(
        self,
        execution_id: str,
        expected: int,
        events: Sequence[HistoryEvent],
        actions: list[dict[str, Any]],
        extra: list[dict[str, Any]],
    ) -> int:
        """Events, head (length CAS + `pending` actions) and `extra` items in one TransactWriteItems."""
        return self.history.append(execution_id, expected, events, extra, pending=actions)

    def _finish_item(self, execution_id: str, workflow: str, executor: WorkflowExecutor) -> dict[str, Any]:
        terminal = executor.terminal
        assert terminal is not None
        if isinstance(terminal, WorkflowSucceeded):
            return self.executions.finish_item(
                execution_id, workflow, ExecutionStatus.SUCCEEDED, terminal.timestamp, result=terminal.result
            )
        if isinstance(terminal, WorkflowFailed):
            return self.executions.finish_item(
                execution_id,
                workflow,
                ExecutionStatus.FAILED,
                terminal.timestamp,
                error=terminal.error,
                message=terminal.message,
            )
        return self.executions.finish_item(execution_id, workflow, ExecutionStatus.CANCELLED, terminal.timestamp)

    # ---------------------------------------------------------------------------------------- actions

    def _actions(self, execution_id: str, command: Command, events: Sequence[HistoryEvent]) -> list[dict[str, Any]]:
        """A command as the JSON actions stored in `pending` (deterministic, so re-dispatch re-sends the same)."""
        when = _call_time(events, getattr(command, "seq", None))
        if isinstance(command, ScheduleActivity):
            options = activity_options(command)
            message = {
                "execution_id": execution_id,
                "seq": command.seq,
                "attempt": 1,
                "name": command.name,
                "input": command.input,
                "options": options,
            }
            return [{"kind": "activity", "seq": command.seq, "message": message}]
        if isinstance(command, StartTimer):
            fired = TimerCompleted(seq=command.seq, timestamp=command.until)
            return [
                {
                    "kind": "timer",
                    "seq": command.seq,
                    "key": str(command.seq),
                    "due": command.until.isoformat(),
                    "event": fired.model_dump(mode="json"),
                }
            ]
        if isinstance(command, CancelTimer):
            return [{"kind": "cancel_timer", "key": str(command.seq)}]
        if isinstance(command, SendSignal):
            signal = SignalReceived(timestamp=when, signal=command.signal, payload=command.payload, id=command.id)
            return [{"kind": "event", "target": command.target, "event": signal.model_dump(mode="json")}]
        if isinstance(command, PublishEvents):
            return [{"kind": "publish", "envelopes": command.events, "source": None}]
        if isinstance(command, StartChildWorkflow):
            return [
                {
                    "kind": "child",
                    "seq": command.seq,
                    "child_id": command.child_id,
                    "workflow": command.workflow,
                    "input": command.input,
                    "start_time": when.isoformat(),
                    "timeout": None if command.timeout is None else command.timeout.total_seconds(),
                }
            ]
        if isinstance(command, CancelChildWorkflow):
            cancel = CancelRequested(timestamp=when)
            return [{"kind": "event", "target": command.child_id, "event": cancel.model_dump(mode="json")}]
        return []  # CompleteWorkflow / FailWorkflow / CancelWorkflow: the record's finish item commits them

    def _timeout_action(self, execution_id: str, started: WorkflowStarted) -> dict[str, Any]:
        assert started.timeout_at is not None
        limit = started.timeout_at - started.timestamp
        failed = WorkflowFailed(
            timestamp=started.timeout_at,
            error="WorkflowTimeout",
            message=f"execution '{execution_id}' exceeded its timeout of {format_duration(limit)}",
        )
        return {
            "kind": "timer",
            "seq": None,
            "key": TIMEOUT_TIMER_KEY,
            "due": started.timeout_at.isoformat(),
            "event": failed.model_dump(mode="json"),
        }

    def _end_actions(
        self,
        execution_id: str,
        executor: WorkflowExecutor,
        started: WorkflowStarted,
        progress: _Progress,
        parent_seq: int | None,
    ) -> list[dict[str, Any]]:
        """Cancel running children and long (Scheduler) timers; tell the parent how the child ended."""
        terminal = executor.terminal
        assert terminal is not None
        now = terminal.timestamp
        actions: list[dict[str, Any]] = []
        for _, child_id in sorted(progress.children.items()):
            cancel = CancelRequested(timestamp=now)
            actions.append({"kind": "event", "target": child_id, "event": cancel.model_dump(mode="json")})
        long_timers = [(str(seq), at, due) for seq, (at, due) in sorted(progress.timers.items())]
        if started.timeout_at is not None and now < started.timeout_at:  # it has not fired
            long_timers.append((TIMEOUT_TIMER_KEY, started.timestamp, started.timeout_at))
        for key, at, due in long_timers:
            if (due - at).total_seconds() > MAX_QUEUE_DELAY_SECONDS:  # only a Scheduler schedule can be recalled
                actions.append({"kind": "cancel_timer", "key": key})
        if started.parent is not None and parent_seq is not None:
            event: HistoryEvent
            if isinstance(terminal, WorkflowSucceeded):
                event = ChildWorkflowSucceeded(seq=parent_seq, timestamp=now, result=terminal.result)
            elif isinstance(terminal, WorkflowCancelled):
                event = ChildWorkflowFailed(
                    seq=parent_seq,
                    timestamp=now,
                    error="ExecutionCancelled",
                    message=f"child execution '{execution_id}' was cancelled",
                )
            else:
                assert isinstance(terminal, WorkflowFailed)
                event = ChildWorkflowFailed(
                    seq=parent_seq, timestamp=now, error=terminal.error or "Error", message=terminal.message or ""
                )
            actions.append({"kind": "event", "target": started.parent, "event": event.model_dump(mode="json")})
        return actions

    def _redispatch(
        self,
        execution_id: str,
        pending: list[dict[str, Any]],
        progress: _Progress,
        messages: Sequence[dict[str, Any]],
    ) -> None:
        """Re-send the last committed turn's actions, except those whose result has evidently arrived."""
        arrived = set(progress.resolved)
        for message in messages:
            event = message.get("parsed")
            if isinstance(event, (*ACTIVITY_RESULTS, *CHILD_RESULTS, TimerCompleted)) and event.seq is not None:
                arrived.add(event.seq)
        for action in pending:
            if action["kind"] in ("activity", "timer", "child") and action.get("seq") in arrived:
                continue
            self._carry_out(execution_id, action)
            self.stats.redispatched_actions += 1

    def _carry_out(self, execution_id: str, action: dict[str, Any]) -> None:
        kind = action["kind"]
        if kind == "activity":
            self.dispatch.send_activity(action["message"])
        elif kind == "timer":
            self.dispatch.schedule_timer(
                execution_id, action["key"], datetime.fromisoformat(action["due"]), action["event"]
            )
        elif kind == "cancel_timer":
            self.dispatch.cancel_timer(execution_id, action["key"])
        elif kind == "event":
            self.dispatch.send_workflow_event(action["target"], action["event"])
        elif kind == "publish":
            self.dispatch.publish(action["envelopes"], action.get("source"))
        elif kind == "child":
            self._start_child(execution_id, action)
        else:
            raise errors.EventualError(f"unknown pending action {kind!r} for execution '{execution_id}'")

    def _start_child(self, execution_id: str, action: dict[str, Any]) -> None:
        """Create the child's record (idempotent by its deterministic id) and send its start message."""
        child_id, seq = action["child_id"], action["seq"]
        failure: errors.EventualError | None = None
        try:
            definition = self._workflow(action["workflow"])
            self.executions.create(
                child_id,
                action["workflow"],
                action["input"],
                datetime.fromisoformat(action["start_time"]),
                parent=execution_id,
                parent_seq=seq,
                service=definition.service.name if definition.service is not None else None,
            )
        except errors.EventualError as exc:  # no such workflow, or the id is taken with another input
            failure = exc
        if failure is not None:
            failed = ChildWorkflowFailed(
                seq=seq,
                timestamp=datetime.fromisoformat(action["start_time"]),
                error=type(failure).__name__,
                message=str(failure),
            )
            self.dispatch.send_workflow_event(execution_id, failed.model_dump(mode="json"))
            return
        if action.get("timeout") is not None:
            self.executions.set_timeout(child_id, float(action["timeout"]))
        self.dispatch.start_child(child_id)

    def _note_blocked(self, execution_id: str, error: BaseException, started: WorkflowStarted) -> None:
        """A turn that cannot step (changed code, missing definition) leaves a line in the execution's log."""
        line = LogEntry(
            time=started.timestamp,
            message=f"execution cannot continue: {type(error).__name__}: {error}",
            source="runtime",
        )
        try:
            self.dispatch.write_logs(execution_id, [line])
        except Exception:  # the turn already fails; its messages are redelivered
            LOGGER.exception("could not log the failure of execution %s", execution_id)


def _call_time(events: Sequence[HistoryEvent], seq: int | None) -> datetime:
    """The timestamp of the call event with `seq` in this turn (else the turn's last event): deterministic."""
    if seq is not None:
        for event in events:
            if event.seq == seq and isinstance(event, CALL_EVENTS):
                return event.timestamp
    return events[-1].timestamp if events else datetime.fromtimestamp(0, UTC)


def _body_execution_id(record: dict[str, Any]) -> str:
    try:
        message = json.loads(record.get("body") or "")
    except ValueError:
        return ""
    return str(message.get("execution_id", "")) if isinstance(message, dict) else ""
