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
   execution record that `ExecutionStore.create` wrote (`core.begin`);
4. ask the execution core what the step means (`core.turn`, stamping each action with the time of the
   call that issued it, so a duplicate turn builds equal actions); a signal's target is read here;
5. COMMIT the new events, the head's compare-and-swap, the record's terminal status (the core's `Finish`,
   when the turn ended the execution) and the turn's other actions in ONE `TransactWriteItems`, before
   anything is sent;
6. carry out the actions (activity messages, timers, child starts, signals, published events, child
   cancellations, the parent's notification) through a `Dispatch`, each idempotent under its own key.

A `HistoryConflict` at the commit (another invocation committed first: a duplicate delivery running in
parallel, or a stale invocation whose visibility timeout expired) fails the group's records, so SQS
redelivers them and they replay on fresh state; nothing of the losing turn was written.

Re-dispatch after a crash between commit and dispatch
-----------------------------------------------------
The head item carries `pending`: the last committed turn's actions in their JSON form
(`eventual_nb.runtime.core.wire`; the form may change between releases, stacks are redeployed), written in the same
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
from datetime import datetime, timedelta
from typing import Any, Protocol

from eventual_nb import errors
from eventual_nb.engine.executor import StepOutput, WorkflowExecutor
from eventual_nb.engine.history import (
    ACTIVITY_RESULTS,
    CHILD_RESULTS,
    EVENT_ADAPTER,
    TERMINAL_EVENTS,
    HistoryEvent,
    LogEntry,
    TimerCompleted,
    TimerScheduled,
    WorkflowStarted,
)
from eventual_nb.runtime import core
from eventual_nb.runtime.aws.stores import (
    TIMEOUT_ATTRIBUTE,
    ExecutionStore,
    HistoryConflict,
    HistoryHead,
    HistoryStore,
)
from eventual_nb.runtime.base import ExecutionStatus
from eventual_nb.runtime.core import (
    TIMEOUT_TIMER_KEY,
    ArmTimer,
    Deliver,
    DisarmTimer,
    Finish,
    Publish,
    StartAttempt,
    StartChild,
    timer_key,
    wire,
)
from eventual_nb.serde import canonical_json
from eventual_nb.service import Service
from eventual_nb.workflows import Workflow

LOGGER = logging.getLogger("eventual_nb.aws.orchestrator")

#: SQS delays (and so the timer queue's hops) are at most this long; longer timers go to the Scheduler
MAX_QUEUE_DELAY_SECONDS = 900
#: warm executors kept per container (least recently used are closed first)
DEFAULT_MAX_CACHED = 1000


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
    """What the history says about calls still waiting: drives re-dispatch filtering and the timers recalled
    at the end."""

    keys: set[str] = field(default_factory=set)
    #: seqs whose result (activity, timer, child) is in history
    resolved: set[int] = field(default_factory=set)
    #: timer seq -> (scheduled at, due), for timers not completed yet
    timers: dict[int, tuple[datetime, datetime]] = field(default_factory=dict)
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
            elif isinstance(event, (*ACTIVITY_RESULTS, *CHILD_RESULTS, TimerCompleted)) and event.seq is not None:
                self.resolved.add(event.seq)
                self.timers.pop(event.seq, None)
            elif isinstance(event, TERMINAL_EVENTS) and self.terminal is None:
                self.terminal = event


@dataclass
class _Cached:
    """A warm executor and what its turns need, valid while the history has exactly `progress.length` events."""

    executor: WorkflowExecutor
    progress: _Progress
    lineage: core.Lineage


@dataclass
class _Opening:
    """The first turn of an execution: its record, and the start built from it."""

    record: dict[str, Any]
    begun: core.Begun


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
            self._redispatch(loaded.pending, progress, messages)
        if progress.terminal is not None:
            return  # events for an ended execution are dropped (its last actions were re-sent above)
        opening: _Opening | None = None
        if progress.started is None:
            opening = self._opening(execution_id, len(messages))
            if opening is None:
                return
        started = opening.begun.started if opening is not None else progress.started
        assert started is not None
        fresh = _fresh_events(messages, progress)
        if opening is None and not fresh:
            self._keep(execution_id, loaded.cached)
            return
        definition = self._workflow(started.workflow)
        executor, output = self._step(execution_id, definition, started, loaded, fresh, first=opening is not None)
        events = ([started] if opening is not None else []) + output.events
        lineage = self._lineage(execution_id, definition, started, loaded.cached, opening, ended=executor.ended)
        expected = progress.length
        progress.observe(events)
        turn = core.turn(executor, output, lineage, now=None, status_of=self._status_of)
        actions: list[core.Action] = list(turn.actions)
        if opening is not None and opening.begun.timeout is not None:
            actions.append(opening.begun.timeout)
        finish = next((action for action in actions if isinstance(action, Finish)), None)
        extra: list[dict[str, Any]] = []
        if finish is not None:  # committed with the turn, not dispatched
            actions.remove(finish)
            actions.extend(_recall_long_timers(finish, started, progress))
            extra.append(self._finish_item(started.workflow, finish))
        if events or actions or extra:
            try:
                self.history.append(
                    execution_id, expected, events, extra, pending=[wire.action_to_json(a) for a in actions]
                )
            except Exception:
                executor.close()
                raise
            self.stats.commits += 1
        for action in actions:
            self._carry_out(action)
        self.stats.dispatched_actions += len(actions)
        if turn.logs:
            self.dispatch.write_logs(execution_id, list(turn.logs))
        if executor.ended:
            executor.close()
        else:
            self._keep(execution_id, _Cached(executor, progress, lineage))

    def _opening(self, execution_id: str, count: int) -> _Opening | None:
        """The first turn's start, from the execution's record; None for an unknown or ended execution."""
        record = self._record(execution_id)
        if record is None:
            LOGGER.warning("dropping %d message(s) for unknown execution %s", count, execution_id)
            return None
        if record["status"] != ExecutionStatus.IN_PROGRESS.value:
            return None
        return _Opening(record, self._begun_from(execution_id, record))

    def _step(
        self,
        execution_id: str,
        definition: Workflow[Any],
        started: WorkflowStarted,
        loaded: _Loaded,
        fresh: list[HistoryEvent],
        *,
        first: bool,
    ) -> tuple[WorkflowExecutor, StepOutput]:
        executor = loaded.cached.executor if loaded.cached is not None else None
        try:
            if executor is None:
                if first:
                    executor = WorkflowExecutor(definition.code(), execution_id, [started], first_step_done=False)
                else:
                    executor = WorkflowExecutor(definition.code(), execution_id, loaded.history)
                    self.stats.replays += 1
            return executor, executor.step(fresh)
        except Exception as exc:
            if executor is not None:
                executor.close()
            self._note_blocked(execution_id, exc, started)
            raise

    def _lineage(
        self,
        execution_id: str,
        definition: Workflow[Any],
        started: WorkflowStarted,
        cached: _Cached | None,
        opening: _Opening | None,
        *,
        ended: bool,
    ) -> core.Lineage:
        """Service and parent of the execution: cached, or from the record (read only when needed)."""
        known = cached.lineage if cached is not None else None
        if known is not None and (known.parent_seq is not None or started.parent is None or not ended):
            return known
        parent_seq: int | None = None
        record = opening.record if opening is not None else None
        if record is None and started.parent is not None and ended:
            record = self._record(execution_id)  # the parent must hear how it ended
        if record is not None and "parent_seq" in record:
            parent_seq = int(record["parent_seq"])
        return core.Lineage.of(definition, started.parent, parent_seq)

    def _status_of(self, execution_id: str) -> ExecutionStatus | None:
        """The status of a signal's target (one strongly consistent read), None if there is no such execution."""
        try:
            return self.executions.get(execution_id).status
        except errors.ExecutionNotFound:
            return None

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

    def _begun_from(self, execution_id: str, record: dict[str, Any]) -> core.Begun:
        """The start, built from the record only (so every turn that builds it builds the same one)."""
        workflow = record["workflow"]
        limit: timedelta | None
        if TIMEOUT_ATTRIBUTE in record:
            limit = timedelta(seconds=float(record[TIMEOUT_ATTRIBUTE]))
        else:
            limit = self._workflow(workflow).timeout
        return core.begin(
            execution_id,
            workflow,
            record.get("input"),
            start=datetime.fromisoformat(record["start_time"]),
            limit=limit,
            parent=record.get("parent"),
        )

    def _finish_item(self, workflow: str, finish: Finish) -> dict[str, Any]:
        """The record's terminal status, as an item of the turn's transaction."""
        return self.executions.finish_item(
            finish.execution_id,
            workflow,
            finish.status,
            finish.end_time,
            result=finish.result,
            error=finish.error,
            message=finish.message,
        )

    # ---------------------------------------------------------------------------------------- actions

    def _redispatch(
        self, pending: list[dict[str, Any]], progress: _Progress, messages: Sequence[dict[str, Any]]
    ) -> None:
        """Re-send the last committed turn's actions, except those whose result has evidently arrived."""
        arrived = set(progress.resolved)
        for message in messages:
            event = message.get("parsed")
            if isinstance(event, (*ACTIVITY_RESULTS, *CHILD_RESULTS, TimerCompleted)) and event.seq is not None:
                arrived.add(event.seq)
        for stored in pending:
            action = wire.action_from_json(stored)
            awaited = _awaited_seq(action)
            if awaited is not None and awaited in arrived:
                continue
            self._carry_out(action)
            self.stats.redispatched_actions += 1

    def _carry_out(self, action: core.Action) -> None:
        """Send one committed action through the dispatch (each send is idempotent by its key)."""
        match action:
            case StartAttempt():
                self.dispatch.send_activity(wire.attempt_message(action))
            case ArmTimer():
                self.dispatch.schedule_timer(action.execution_id, action.key, action.due, wire.event_json(action.fires))
            case DisarmTimer():
                self.dispatch.cancel_timer(action.execution_id, action.key)
            case Deliver():
                self.dispatch.send_workflow_event(action.target, wire.event_json(action.event))
            case Publish():
                self.dispatch.publish(action.envelopes, action.source)
            case StartChild():
                self._start_child(action)
            case Finish():
                pass  # committed with its turn (`_finish_item`)

    def _start_child(self, action: StartChild) -> None:
        """Create the child's record (idempotent by its deterministic id) and send its start message."""
        try:
            definition = self._workflow(action.workflow)
            self.executions.create(
                action.child_id,
                action.workflow,
                action.input,
                action.start_time,
                parent=action.parent,
                parent_seq=action.seq,
                service=core.service_of(definition),
            )
        except errors.EventualError as exc:  # no such workflow, or the id is taken with another input
            self._carry_out(core.child_not_started(action, exc))
            return
        if action.timeout is not None:
            self.executions.set_timeout(action.child_id, action.timeout.total_seconds())
        self.dispatch.start_child(action.child_id)

    def _note_blocked(self, execution_id: str, error: BaseException, started: WorkflowStarted) -> None:
        """A turn that cannot step (changed code, missing definition) leaves a line in the execution's log."""
        line = LogEntry(time=started.timestamp, message=core.blocked_note(error), source="runtime")
        try:
            self.dispatch.write_logs(execution_id, [line])
        except Exception:  # the turn already fails; its messages are redelivered
            LOGGER.exception("could not log the failure of execution %s", execution_id)


def _fresh_events(messages: Sequence[dict[str, Any]], progress: _Progress) -> list[HistoryEvent]:
    """The messages' events that are not in history yet (by key), each once, in order."""
    fresh: list[HistoryEvent] = []
    seen = set(progress.keys)
    for message in messages:
        event = message.get("parsed")
        if event is None:
            continue
        key = event_key(event)
        if key not in seen:
            seen.add(key)
            fresh.append(event)
    return fresh


def _awaited_seq(action: core.Action) -> int | None:
    """The seq whose result makes re-sending `action` pointless (an attempt, a timer, a child's start)."""
    match action:
        case StartAttempt(seq=seq) | StartChild(seq=seq):
            return seq
        case ArmTimer(fires=fires):
            return fires.seq
    return None


def _recall_long_timers(finish: Finish, started: WorkflowStarted, progress: _Progress) -> list[DisarmTimer]:
    """At the end: the timers still pending that a Scheduler schedule holds (the only ones that can be
    recalled; one on the timer queue arrives and is dropped, as events for an ended execution are)."""
    timers = [(timer_key(seq), at, due) for seq, (at, due) in sorted(progress.timers.items())]
    if started.timeout_at is not None and finish.end_time < started.timeout_at:  # it has not fired
        timers.append((TIMEOUT_TIMER_KEY, started.timestamp, started.timeout_at))
    return [
        DisarmTimer(finish.execution_id, key)
        for key, at, due in timers
        if (due - at).total_seconds() > MAX_QUEUE_DELAY_SECONDS
    ]


def _body_execution_id(record: dict[str, Any]) -> str:
    try:
        message = json.loads(record.get("body") or "")
    except ValueError:
        return ""
    return str(message.get("execution_id", "")) if isinstance(message, dict) else ""
