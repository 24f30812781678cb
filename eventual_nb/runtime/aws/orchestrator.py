"""The orchestrator of the AWS runtime: one turn per execution per SQS FIFO batch.

`Orchestrator.handle_batch(event, context)` is what the orchestrator Lambda calls with a batch of the
workflow FIFO queue (MessageGroupId = execution id). Records are grouped by execution, in order, and
each group becomes ONE turn:

1. read the execution's history, its turns (one strongly consistent query); a warm cached executor
   reads nothing: the number of the turn it will commit, one after its own last, is the proof that
   nothing newer exists (the commit's condition fails if another writer committed that turn);
2. drop incoming events that are already in history (same key as the message's de-duplication id:
   the sha256 of the event's canonical JSON) — SQS delivers at least once and moto forgets FIFO
   de-duplication as soon as the first copy is deleted;
3. step the workflow; the first turn of an execution first records `WorkflowStarted`, built from the
   execution record that `ExecutionStore.create` wrote (`core.begin`);
4. ask the execution core what the step means (`core.turn`, stamping each action with the time of the
   call that issued it, so a duplicate turn builds equal actions); a signal's target is read here;
5. COMMIT the new events and the turn's actions as turn n+1 with ONE conditional `PutItem`
   (`HistoryStore.commit`), before anything is sent;
6. carry out the actions — first the record's terminal status (the core's `Finish`, when the turn ended
   the execution), then activity messages, timers, child starts, signals, published events, child
   cancellations, the parent's notification — through a `Dispatch`, each idempotent under its own key.

A `HistoryConflict` at the commit (another invocation committed the same turn first: a duplicate
delivery running in parallel, a stale invocation whose visibility timeout expired, or a warm container
whose cache another container overtook) fails the group's records, so SQS redelivers them and they
replay on fresh state; nothing of the losing turn was written.

Re-dispatch after a crash between commit and dispatch
-----------------------------------------------------
Each turn item carries `pending`: the turn's actions in their JSON form (`eventual_nb.runtime.core.wire`;
the form may change between releases, stacks are redeployed), written by the same put as its events.
Only the last turn's actions can still be undone: a turn commits only after the turn before it was
dispatched (by itself, or re-dispatched as below), so committing turn n+1 marks turn n's actions as
dispatched without writing anything. A turn that did not itself witness the previous turn's dispatch
complete (no warm executor in this container) re-dispatches the last turn's `pending` before stepping,
skipping actions whose results are already known (an activity, timer or child whose result is in
history or in the incoming batch). Every action is idempotent by key — the record's end by its
IN_PROGRESS condition, activity messages by the claim row `(execution, seq, attempt)`, timers by the
`TimerCompleted` event's key and the schedule name, child starts by the deterministic child id, events
by their de-duplication key (and signals by their id) — so re-sending is safe, and the warm path (the
common case) never re-sends. Why in the turn rather than an item of its own: the turn is written
anyway, so carrying its actions costs no extra write request in the common case.

Log lines of a turn are written after its dispatch and are not re-sent (a crash loses that turn's log
lines instead of duplicating them on every cold turn).

Everything here is synchronous boto3 work on one thread: the Lambda handler calls it directly.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
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
from eventual_nb.runtime.aws.inline import HANDED_OFF, InlineRunner
from eventual_nb.runtime.aws.stores import TIMEOUT_ATTRIBUTE, ExecutionStore, HistoryConflict, HistoryStore
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

    def send_activities(self, messages: list[dict[str, Any]]) -> None: ...

    def schedule_timer(self, execution_id: str, key: str, due: datetime, event: dict[str, Any]) -> None: ...

    def cancel_timer(self, execution_id: str, key: str) -> None: ...

    def publish(self, envelopes: list[dict[str, Any]], source: str | None) -> None: ...

    def write_logs(self, execution_id: str, entries: list[LogEntry]) -> None: ...

    def start_child(self, execution_id: str) -> None: ...

    def send_attempt(self, execution_id: str, attempt: dict[str, Any]) -> None: ...

    def schedule_attempt(self, execution_id: str, key: str, due: datetime, attempt: dict[str, Any]) -> None: ...


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
    #: the last committed turn's number (0 before the first)
    turn: int = 0

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
    """A warm executor and what its turns need, valid while the history ends with turn `progress.turn`."""

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
class _Step:
    """What one turn's step made, for the commit and what follows it."""

    executor: WorkflowExecutor
    output: StepOutput
    events: list[HistoryEvent]
    started: WorkflowStarted
    lineage: core.Lineage
    begun: core.Begun | None


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
    #: attempts of inline activities run inside the orchestrator, and those handed to a fresh invocation
    inline_attempts: int = 0
    inline_handoffs: int = 0


class Orchestrator:
    """Runs workflow turns for batches of the workflow FIFO queue; keep one per process (warm cache)."""

    def __init__(
        self,
        stores: tuple[ExecutionStore, HistoryStore],
        dispatch: Dispatch,
        services: Sequence[Service],
        *,
        max_cached: int = DEFAULT_MAX_CACHED,
        clock: Callable[[], datetime] | None = None,
        runtime: Any = None,
    ) -> None:
        """`clock` stamps the outcomes of inline attempts (the harness passes its manual clock); `runtime` is
        the runtime current while an inline activity runs (as for `ActivityWorker`)."""
        self.executions, self.history = stores
        self.dispatch = dispatch
        self.services = list(services)
        self.max_cached = max_cached
        self.inline = InlineRunner(self.services, dispatch, clock or (lambda: datetime.now(UTC)), runtime=runtime)
        #: the inline attempts the turn being carried out started (run after its commit), and the invocation's
        #: Lambda context (its remaining time bounds them)
        self._inline: list[StartAttempt] = []
        self._context: Any = None
        self._cache: collections.OrderedDict[str, _Cached] = collections.OrderedDict()
        self.stats = OrchestratorStats()
        #: during a batch: the activity attempts its turns started (execution id, message), sent at its end
        self._activities: list[tuple[str, dict[str, Any]]] | None = None

    # ------------------------------------------------------------------------------------------ batch

    def handle_batch(self, event: dict[str, Any], context: Any = None) -> dict[str, list[dict[str, str]]]:
        """An SQS FIFO batch event -> `{"batchItemFailures": [...]}` (partial batch response).

        Once a record of an execution fails, every later record of that execution in the batch is reported
        too, so SQS keeps the group's order when it redelivers them. The activity attempts the batch's turns
        start are sent together at the end (`_send_activities`)."""
        groups: dict[str, list[dict[str, Any]]] = {}
        for record in event.get("Records") or []:
            group = (record.get("attributes") or {}).get("MessageGroupId") or _body_execution_id(record)
            groups.setdefault(group, []).append(record)
        failed_from: dict[str, int] = {}
        self._activities, self._context = [], context
        try:
            for group, records in groups.items():
                failed_from[group] = self._process_group(group, records)
        finally:
            self._context = None
            for group in self._send_activities():
                failed_from[group] = 0
        failures: list[dict[str, str]] = []
        for group, records in groups.items():
            failures.extend({"itemIdentifier": str(record["messageId"])} for record in records[failed_from[group] :])
        return {"batchItemFailures": failures}

    def _send_activities(self) -> set[str]:
        """Send the attempts the batch's turns started, in as few requests as SQS allows (`SendMessageBatch`:
        10 a request). Their turns are committed: if sending fails, the executions whose attempts were in
        it are returned (their messages are failed) and leave the cache, so the redelivery is a cold turn,
        which re-sends its last turn's actions (an attempt sent twice is dropped by its claim row)."""
        queued, self._activities = self._activities or [], None
        if not queued:
            return set()
        try:
            self.dispatch.send_activities([message for _, message in queued])
        except Exception:
            LOGGER.exception("could not send %d activity attempts; their executions' turns are redone", len(queued))
            failed = {execution_id for execution_id, _ in queued}
            for execution_id in failed:
                cached = self._cache.pop(execution_id, None)
                if cached is not None:
                    cached.executor.close()
            return failed
        return set()

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
                elif message.get("type") == "attempt":
                    message["parsed_attempt"] = wire.attempt_from_message(message["attempt"])
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
        """Turns for `execution_id` from the given parsed messages: one, then one more for each round of inline
        attempts it ran (their results are the next turn's input, in this invocation); raises to fail them all."""
        follow: Sequence[dict[str, Any]] = messages
        while follow:
            follow = self._turn(execution_id, follow)

    def _turn(self, execution_id: str, messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """One turn; returns the messages of the next one (the results of the inline attempts it ran)."""
        self.stats.turns += 1
        cached = self._cache.pop(execution_id, None)  # back in the cache only once the turn fully succeeded
        loaded = self._load(execution_id, cached)
        progress = loaded.progress
        self._inline = []
        if loaded.cached is None and loaded.pending:
            assert progress.started is not None  # a turn with actions follows the start
            self._redispatch(loaded.pending, progress, messages, progress.started.workflow)
        if progress.terminal is not None:
            return []  # events for an ended execution are dropped (its last actions were re-sent above)
        handed_off = [message["parsed_attempt"] for message in messages if message.get("attempt", {}).get(HANDED_OFF)]
        before = _attempts_to_run(messages, self._inline, progress)
        messages = [*messages, *self._run_inline(execution_id, before, handed_off)]
        opening: _Opening | None = None
        if progress.started is None:
            opening = self._opening(execution_id, len(messages))
            if opening is None:
                return []
        started = opening.begun.started if opening is not None else progress.started
        assert started is not None
        fresh = _fresh_events(messages, progress)
        if opening is None and not fresh:
            self._keep(execution_id, loaded.cached)
            return []
        definition = self._workflow(started.workflow)
        executor, output = self._step(execution_id, definition, started, loaded, fresh, first=opening is not None)
        events = ([started] if opening is not None else []) + output.events
        if not events and loaded.cached is not None and self._overtaken(execution_id, progress):
            # nothing to commit, so no condition proves the cache current, and it is not: start over cold
            executor.close()
            return self._turn(execution_id, messages)
        lineage = self._lineage(execution_id, definition, started, loaded.cached, opening, ended=executor.ended)
        begun = opening.begun if opening is not None else None
        self._commit_and_carry_out(execution_id, _Step(executor, output, events, started, lineage, begun), progress)
        return self._run_inline(execution_id, self._inline)

    def _commit_and_carry_out(self, execution_id: str, step: _Step, progress: _Progress) -> None:
        """Ask the core what the step means, commit it as the next turn, then carry out its actions."""
        executor, started = step.executor, step.started
        expected = progress.length
        progress.observe(step.events)
        turn = core.turn(
            executor, step.output, step.lineage, now=None, status_of=self._status_of, refuse_oversized=True
        )
        actions: list[core.Action] = list(turn.actions)
        if step.begun is not None and step.begun.timeout is not None:
            actions.append(step.begun.timeout)
        finish = next((action for action in actions if isinstance(action, Finish)), None)
        if finish is not None:  # the record's status first: whoever hears of the end can read it
            actions.remove(finish)
            actions = [finish, *actions, *_recall_long_timers(finish, started, progress)]
        if step.events or actions:
            try:
                self.history.commit(
                    execution_id, progress.turn + 1, expected, step.events, [wire.action_to_json(a) for a in actions]
                )
            except Exception:
                executor.close()
                raise
            progress.turn += 1
            self.stats.commits += 1
        self._inline = []
        for action in actions:
            self._carry_out(action, started.workflow)
        self.stats.dispatched_actions += len(actions)
        if turn.logs:
            self.dispatch.write_logs(execution_id, list(turn.logs))
        if executor.ended:
            executor.close()
        else:
            self._keep(execution_id, _Cached(executor, progress, step.lineage))

    def _run_inline(
        self, execution_id: str, starts: Sequence[StartAttempt], handed_off: Sequence[StartAttempt] = ()
    ) -> list[dict[str, Any]]:
        """Run inline attempts now (`InlineRunner`); their settled calls, as messages of the next turn."""
        if not starts:
            return []
        settled = self.inline.run(starts, self._context, handed_off)
        self.stats.inline_attempts = self.inline.ran
        self.stats.inline_handoffs = self.inline.handed_off
        return [{"type": "event", "execution_id": execution_id, "parsed": event} for event in settled]

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
        """A warm executor reads nothing (its next commit's condition proves nothing is newer); a cold turn
        reads the whole history, its turns in one strongly consistent query."""
        if cached is not None:
            self.stats.warm_hits += 1
            return _Loaded(cached.progress, [], [], cached)
        found = self.history.read_turns(execution_id)
        self.stats.history_queries += found.queries
        progress = _Progress()
        progress.observe(found.events)
        progress.turn = found.turn
        return _Loaded(progress, found.events, found.pending, None)

    def _overtaken(self, execution_id: str, progress: _Progress) -> bool:
        """Whether another container committed turns after the cached ones (one consistent query): asked only
        when a warm turn's events changed nothing, since then no commit condition would notice."""
        found = self.history.read_turns(execution_id, progress.turn, progress.length)
        self.stats.history_queries += found.queries
        return found.turn != progress.turn

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

    # ---------------------------------------------------------------------------------------- actions

    def _redispatch(
        self, pending: list[dict[str, Any]], progress: _Progress, messages: Sequence[dict[str, Any]], workflow: str
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
            self._carry_out(action, workflow)
            self.stats.redispatched_actions += 1

    def _carry_out(self, action: core.Action, workflow: str) -> None:
        """Carry out one committed action of an execution of `workflow` (each is idempotent by its key)."""
        match action:
            case StartAttempt() if self.inline.is_inline(action):
                self._inline.append(action)  # run by this turn, after the rest is carried out
            case StartAttempt():
                message = wire.attempt_message(action)
                if self._activities is None:  # a turn run on its own, outside a batch
                    self.dispatch.send_activities([message])
                else:
                    self._activities.append((action.execution_id, message))
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
                self.executions.finish(
                    action.execution_id,
                    workflow,
                    action.status,
                    action.end_time,
                    result=action.result,
                    error=action.error,
                    message=action.message,
                )

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
            self._carry_out(core.child_not_started(action, exc), action.workflow)
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


def _attempts_to_run(
    messages: Sequence[dict[str, Any]], redispatched: Sequence[StartAttempt], progress: _Progress
) -> list[StartAttempt]:
    """The inline attempts a turn runs before it steps: those its cold start re-sent from the last turn, and
    the `attempt` messages (a retry after its backoff, a hand-off) whose call history has not settled yet."""
    if progress.started is None:
        return []
    found: dict[tuple[int, int], StartAttempt] = {}
    for start in [*redispatched, *(message["parsed_attempt"] for message in messages if "parsed_attempt" in message)]:
        if start.seq not in progress.resolved:
            found.setdefault((start.seq, start.attempt), start)
    return list(found.values())


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
