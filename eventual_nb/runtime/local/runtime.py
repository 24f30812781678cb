"""`LocalRuntime`: the embedded, crash-safe runtime on one SQLite file.

One scheduler task owns the database. Each round it takes everything that is ready — API requests
(starts, signals, cancels, publishes, token completions), finished activity attempts and subscription
deliveries, due timers — steps every execution that has new events, and commits all of it in ONE
transaction (group commit). Because every command a step issues is itself a row written in that same
transaction (activity rows, timer rows, inbox rows, delivery rows, child executions), history is never
committed without its commands, nor commands without their history (a transactional outbox). Side
effects (activity and subscription code) run only after the commit and report back through the next
round, so a crash at any moment loses nothing and invents nothing; activities are at-least-once.

Timers wake the scheduler at the next due time (no polling); it also wakes whenever work arrives.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import json
import logging
import math
import os
import secrets
import time
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from eventual_nb import errors
from eventual_nb.activities import ActivityInfo
from eventual_nb.attempts import async_note, retry_note
from eventual_nb.durations import deadline_after, format_duration, optional_duration
from eventual_nb.engine import capture
from eventual_nb.engine.executor import WorkflowCode, WorkflowExecutor
from eventual_nb.engine.history import (
    EVENT_ADAPTER,
    ActivityFailed,
    ActivityHeartbeatTimedOut,
    ActivitySucceeded,
    ActivityTimedOut,
    CancelChildWorkflow,
    CancelRequested,
    CancelTimer,
    ChildWorkflowFailed,
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
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowStarted,
    WorkflowSucceeded,
)
from eventual_nb.events import Subscription, envelope, source_of
from eventual_nb.retry import RetryPolicy, exception_type_names
from eventual_nb.runtime.activity_runner import AttemptOutcome, activity_options, failure, run_attempt
from eventual_nb.runtime.base import (
    DeadLetter,
    Execution,
    ExecutionHandle,
    ExecutionPage,
    ExecutionStatus,
    HeartbeatResponse,
    RuntimeBase,
    execution_id_of,
    listing_offset,
    signal_name_of,
)
from eventual_nb.runtime.ids import ulid
from eventual_nb.runtime.local.store import Database, dumps
from eventual_nb.runtime.tokens import TokenSigner, environment_signing_key
from eventual_nb.serde import from_json, input_hash, to_json
from eventual_nb.service import Service, current_service
from eventual_nb.signals import encode_payload
from eventual_nb.workflows import _NO_INPUT, Workflow, check_execution_name

LOGGER = logging.getLogger("eventual_nb.runtime")

#: rounds of workflow steps folded into one transaction before committing
MAX_ROUNDS_PER_COMMIT = 20


class _Resumed:
    """Awaitable that carries on a coroutine whose first step already ran (`_start_eagerly`).

    It forwards what the coroutine yields to the task awaiting it and what the task sends or throws
    back, as `await coroutine` would have from the start."""

    def __init__(self, coroutine: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self._coroutine = coroutine
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        coroutine, yielded = self._coroutine, self._yielded
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - cancellation and the like go to the coroutine
                try:
                    yielded = coroutine.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    yielded = coroutine.send(sent)
                except StopIteration as stop:
                    return stop.value


async def _resume(coroutine: Coroutine[Any, Any, Any], yielded: Any) -> Any:
    return await _Resumed(coroutine, yielded)


def _deadlines(options: dict[str, Any], now: float) -> tuple[float | None, float | None, float | None]:
    """(attempt deadline, heartbeat deadline, when to check them) for an attempt starting `now`."""
    timeout, heartbeat = options.get("timeout"), options.get("heartbeat_timeout")
    deadline = None if timeout is None else now + timeout
    heartbeat_deadline = None if heartbeat is None else now + heartbeat
    candidates = [moment for moment in (deadline, heartbeat_deadline) if moment is not None]
    return deadline, heartbeat_deadline, min(candidates) if candidates else None


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat()


def _dt(moment: float) -> datetime:
    return datetime.fromtimestamp(moment, UTC)


@dataclass
class _Request:
    apply: Callable[[float], Any]
    future: asyncio.Future[Any]


@dataclass
class _Attempt:
    execution_id: str
    seq: int
    attempt: int
    outcome: AttemptOutcome


@dataclass
class _Delivery:
    id: int
    subscription: str
    event: dict[str, Any]
    attempt: int
    error: BaseException | None


@dataclass
class _Start:
    """An activity attempt to run once the transaction that recorded it has committed."""

    execution_id: str
    seq: int
    attempt: int
    name: str
    input: str
    heartbeat_details: str | None = None


@dataclass
class _Cached:
    """A live workflow instance and what a step needs to know about its execution (no SELECT per step)."""

    executor: WorkflowExecutor
    workflow: str
    service: str | None
    parent: str | None
    parent_seq: int | None
    history_length: int
    first_step_done: bool = True


@dataclass
class _Round:
    """What one transaction did, for the work that must wait until it is committed."""

    start_attempts: list[_Start] = field(default_factory=list)
    start_deliveries: list[int] = field(default_factory=list)
    async_callbacks: list[tuple[Callable[[str], Any], str]] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)
    stepped: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    ready: set[str] = field(default_factory=set)
    did_work: bool = False


class LocalRuntime(RuntimeBase):
    """Durable runtime on SQLite (WAL, `synchronous=FULL` by default, one writer, exclusive lock)."""

    def __init__(
        self,
        path: str | os.PathLike[str] = ".eventual/state.db",
        durability: str = "full",
        *,
        service: Service | str | None = None,
        services: list[Service | str] | None = None,
        max_cached_executions: int = 10_000,
    ) -> None:
        self.path = os.fspath(path)
        self.durability = durability
        self._serve(service, services)
        self._max_cached = max_cached_executions
        self._db: Database | None = None
        self._signer: TokenSigner | None = None
        self._executors: collections.OrderedDict[str, _Cached] = collections.OrderedDict()
        self._ready: set[str] = set()
        #: events for executions that arrived in the current transaction; those still unstepped when
        #: it ends are written to the inbox table (so events consumed in the same transaction never are)
        self._fresh: dict[str, list[HistoryEvent]] = {}
        #: executions with rows in the inbox table
        self._inbox_rows: set[str] = set()
        #: executions that keep running on an earlier definition of their workflow (`rebind_executions`)
        self._pinned: dict[str, WorkflowCode] = {}
        self._options_cache: dict[tuple[Any, ...], tuple[RetryPolicy, dict[str, Any], str]] = {}
        #: a lower bound of every `due` in the timers, activities and deliveries tables, so rounds skip
        #: the due queries until something may be due (exact again after each round that ran them)
        self._earliest_due = -math.inf
        self._requests: list[_Request] = []
        self._attempts: list[_Attempt] = []
        self._deliveries_done: list[_Delivery] = []
        self._pending_logs: list[tuple[str, str, str, str]] = []
        self._waiters: dict[str, list[asyncio.Future[Execution]]] = collections.defaultdict(list)
        self._blocked: dict[str, errors.EventualError] = {}
        self._wake: asyncio.Event | None = None
        self._scheduler: asyncio.Task[None] | None = None
        self._running_tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._work = _Round()
        #: statistics for benchmarks: transactions committed, workflow steps, from-scratch replays
        self.commits = 0
        self.steps = 0
        self.replays = 0

    # ------------------------------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> LocalRuntime:
        await self.start()
        self.enter_current()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.exit_current()
        await self.stop()

    async def start(self) -> None:
        """Open the database (taking its lock), recover from a crash, and start the scheduler."""
        if self._scheduler is not None:
            return
        if self._served_names is None:
            self._served_names = [current_service().name]
        capture.install()
        self._db = Database(self.path, self.durability)
        try:
            secret = environment_signing_key()
            if secret is None:
                stored = self._db.meta("signing_key")
                if stored is None:
                    stored = secrets.token_hex(32)
                    self._db.set_meta("signing_key", stored)
                secret = bytes.fromhex(stored)
            self._signer = TokenSigner(secret)
            self._recover()
        except BaseException:  # a failed start must not keep the database (and its lock) open
            self._db.close()
            self._db = None
            raise
        self._loop = self._home_loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._scheduler = asyncio.create_task(self._run(), name=f"LocalRuntime {self.path}")

    async def stop(self) -> None:
        if self._scheduler is None:
            return
        self._scheduler.cancel()
        try:
            await self._scheduler
        except asyncio.CancelledError:
            pass
        self._scheduler = None
        for task in list(self._running_tasks):
            task.cancel()
        if self._running_tasks:
            await asyncio.gather(*self._running_tasks, return_exceptions=True)
        for cached in self._executors.values():
            cached.executor.close()
        self._executors.clear()
        self._fresh.clear()
        for futures in self._waiters.values():
            for future in futures:
                if not future.done():
                    future.set_exception(errors.EventualError("the LocalRuntime was stopped"))
        self._waiters.clear()
        for request in self._requests:
            if not request.future.done():
                request.future.set_exception(errors.EventualError("the LocalRuntime was stopped"))
        self._requests.clear()
        if self._db is not None:
            self._db.close()
            self._db = None
        self._home_loop = None

    def is_running(self) -> bool:
        return self._scheduler is not None

    def store(self) -> object:
        """The database file: every LocalRuntime opened on it serves the same executions."""
        return ("sqlite", os.path.realpath(self.path))

    def _recover(self) -> None:
        """Work left 'running' by a crashed process runs again; executions with news get a step."""
        cx = self._cx
        now = time.time()
        cx.execute("UPDATE activities SET status = 'scheduled', due = ? WHERE status = 'running'", (now,))
        cx.execute("UPDATE deliveries SET status = 'scheduled', due = ? WHERE status = 'running'", (now,))
        self._earliest_due = -math.inf
        self._inbox_rows = {row[0] for row in cx.execute("SELECT DISTINCT execution_id FROM inbox")}
        self._ready = set(self._inbox_rows)
        self._ready |= {
            row[0]
            for row in cx.execute("SELECT id FROM executions WHERE status = 'IN_PROGRESS' AND first_step_done = 0")
        }

    @property
    def _cx(self) -> Any:
        if self._db is None:
            raise errors.EventualError("the LocalRuntime is not running: use `async with ev.LocalRuntime(...):`")
        return self._db.connection

    # --------------------------------------------------------------------------------------- definitions

    # ------------------------------------------------------------------------------------------ scheduler

    def _wake_up(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _submit(self, apply: Callable[[float], Any]) -> Any:
        """Run `apply` inside the next transaction; return its result once that transaction committed."""
        if self._scheduler is None or self._loop is None:
            raise errors.EventualError("the LocalRuntime is not running: use `async with ev.LocalRuntime(...):`")
        if asyncio.get_running_loop() is not self._loop:
            # called from another thread's loop (a notebook cell while the runtime runs on its own thread)
            return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._submit(apply), self._loop))
        future: asyncio.Future[Any] = self._loop.create_future()
        self._requests.append(_Request(apply, future))
        self._wake_up()
        return await future

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            self._wake.clear()
            if self._has_work(time.time()):
                try:
                    self._round()
                except Exception as exc:  # noqa: BLE001 - keep serving; the round was rolled back
                    self._log_runtime_error(exc)
                    await asyncio.sleep(0.05)
                    continue
                await asyncio.sleep(0)  # let the activities, requests and waiters it released run
                continue
            delay = None if self._earliest_due == math.inf else max(0.0, self._earliest_due - time.time())
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _has_work(self, now: float) -> bool:
        return bool(
            self._requests
            or self._attempts
            or self._deliveries_done
            or self._pending_logs
            or (self._ready and not self._ready <= self._blocked.keys())
            or now >= self._earliest_due
        )

    def _note_due(self, due: float | None) -> None:
        """A row now waits until `due`: keep `_earliest_due` a lower bound."""
        if due is not None and due < self._earliest_due:
            self._earliest_due = due

    def _log_runtime_error(self, exc: BaseException) -> None:
        """Through logging (never print: in a kernel this runs on the runtime thread; the extension
        keeps these records for `%eventual status`)."""
        LOGGER.error("LocalRuntime %s: %s: %s", self.path, type(exc).__name__, exc, exc_info=exc)

    def _next_due(self) -> float:
        """The earliest `due` of any row (infinity if none): when the scheduler must wake by itself."""
        cx = self._cx
        dues = [
            cx.execute("SELECT MIN(due) FROM timers").fetchone()[0],
            cx.execute("SELECT MIN(due) FROM activities WHERE due IS NOT NULL").fetchone()[0],
            cx.execute("SELECT MIN(due) FROM deliveries WHERE due IS NOT NULL").fetchone()[0],
        ]
        return min((due for due in dues if due is not None), default=math.inf)

    def _round(self) -> bool:
        cx = self._cx
        now = time.time()
        work = _Round()
        requests, self._requests = self._requests, []
        attempts, self._attempts = self._attempts, []
        deliveries, self._deliveries_done = self._deliveries_done, []
        logs, self._pending_logs = self._pending_logs, []
        results: list[tuple[_Request, Any, BaseException | None]] = []
        self._work = work
        cx.execute("BEGIN IMMEDIATE")
        try:
            if logs:
                cx.executemany("INSERT INTO logs(execution_id, time, message, source) VALUES (?, ?, ?, ?)", logs)
            for request in requests:
                cx.execute("SAVEPOINT request")
                try:
                    value = request.apply(now)
                except Exception as exc:  # noqa: BLE001 - a bad request fails alone, the round goes on
                    cx.execute("ROLLBACK TO request")
                    if not isinstance(exc, errors.EventualError):
                        exc = errors.InputValidationError(f"request rejected: {type(exc).__name__}: {exc}")
                    results.append((request, None, exc))
                else:
                    results.append((request, value, None))
                cx.execute("RELEASE request")
            for attempt in attempts:
                self._settle_attempt(attempt, now)
            for delivery in deliveries:
                self._settle_delivery(delivery, now)
            due_checked = now >= self._earliest_due
            if due_checked:
                self._earliest_due = math.inf  # exact again below; rows written meanwhile lower it
                self._due_timers(now)
                self._due_activities(now)
                self._due_deliveries(now)
            for _ in range(MAX_ROUNDS_PER_COMMIT):
                ready = self._ready - set(self._blocked)
                if not ready:
                    break
                self._ready -= ready
                for execution_id in sorted(ready):
                    self._step(execution_id, now)
            self._store_fresh()
            if self._earliest_due <= now:
                # deliveries the steps above just scheduled start in this same transaction, not one round
                # (and one fsynced commit) later; activities start as they are scheduled (`_carry_out`)
                self._due_deliveries(now)
            if due_checked or self._earliest_due <= now:
                self._earliest_due = self._next_due()
            cx.execute("COMMIT")
        except BaseException:
            cx.execute("ROLLBACK")
            self._fresh.clear()
            self._earliest_due = -math.inf
            for execution_id in work.stepped + work.created:
                cached = self._executors.pop(execution_id, None)
                if cached is not None:
                    cached.executor.close()
            self._requests = requests + self._requests
            self._attempts = attempts + self._attempts
            self._deliveries_done = deliveries + self._deliveries_done
            self._recover_ready()
            raise
        self.commits += 1
        if self._commit_listeners:
            self._notify_commit()
        for request, value, error in results:
            if request.future.done():
                continue
            if error is not None:
                request.future.set_exception(error)
            else:
                request.future.set_result(value)
        self._after_commit(work)
        return bool(requests or attempts or deliveries or work.did_work)

    def _store_fresh(self) -> None:
        """Events not consumed by a step in this transaction become inbox rows before it commits."""
        if not self._fresh:
            return
        rows = [
            (execution_id, event.model_dump_json()) for execution_id, events in self._fresh.items() for event in events
        ]
        self._cx.executemany("INSERT INTO inbox(execution_id, event) VALUES (?, ?)", rows)
        self._inbox_rows.update(self._fresh)
        self._fresh.clear()

    def _recover_ready(self) -> None:
        cx = self._cx
        self._inbox_rows = {row[0] for row in cx.execute("SELECT DISTINCT execution_id FROM inbox")}
        self._ready |= self._inbox_rows
        self._ready |= {
            row[0]
            for row in cx.execute("SELECT id FROM executions WHERE status = 'IN_PROGRESS' AND first_step_done = 0")
        }

    def _after_commit(self, work: _Round) -> None:
        ended = set(work.ended)
        for start in work.start_attempts:
            if start.execution_id not in ended:  # its row went with the execution's end
                self._start_eagerly(self._run_activity(start))
        for delivery_id in work.start_deliveries:
            self._spawn(self._run_delivery(delivery_id))
        for callback, token in work.async_callbacks:
            self._spawn(self._call_async_callback(callback, token))
        for execution_id in work.ended:
            waiters = self._waiters.pop(execution_id, [])
            if waiters:
                execution = self._execution(execution_id)
                for future in waiters:
                    if not future.done():
                        future.set_result(execution)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._running_tasks.add(task)
        task.add_done_callback(self._running_tasks.discard)

    def _start_eagerly(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run an activity attempt's first step now, and give it a task only if it has to wait.

        Most activities that are `async def` finish without waiting (or their first await is the
        work itself), so this saves a task and a trip round the event loop per attempt; what Python
        3.12's eager task factory does. The step runs in its own context, which the task inherits,
        so context variables the attempt sets are reset in the context that set them.
        """
        context = contextvars.copy_context()
        try:
            yielded = context.run(coroutine.send, None)
        except StopIteration:
            return
        task = asyncio.get_running_loop().create_task(_resume(coroutine, yielded), context=context)
        self._running_tasks.add(task)
        task.add_done_callback(self._running_tasks.discard)

    # ---------------------------------------------------------------------------------------- inbox/steps

    def _enqueue(self, execution_id: str, event: HistoryEvent) -> None:
        """Deliver `event` to an execution inside the current transaction (see `_fresh`)."""
        self._fresh.setdefault(execution_id, []).append(event)
        self._ready.add(execution_id)
        self._work.did_work = True

    def _log(self, execution_id: str, now: float, message: str, source: str = "workflow") -> None:
        self._cx.execute(
            "INSERT INTO logs(execution_id, time, message, source) VALUES (?, ?, ?, ?)",
            (execution_id, _iso(now), message, source),
        )

    def _history(self, execution_id: str) -> list[HistoryEvent]:
        rows = self._cx.execute(
            "SELECT event FROM history WHERE execution_id = ? ORDER BY idx", (execution_id,)
        ).fetchall()
        return [EVENT_ADAPTER.validate_json(row[0]) for row in rows]

    def _step(self, execution_id: str, now: float) -> None:
        cx = self._cx
        cached = self._executors.pop(execution_id, None)
        if cached is None:
            row = cx.execute(
                "SELECT workflow, status, first_step_done, parent, parent_seq, service FROM executions WHERE id = ?",
                (execution_id,),
            ).fetchone()
            if row is None:
                self._fresh.pop(execution_id, None)
                return
            workflow_name, status, first_step_done, parent, parent_seq, service = row
            if status != ExecutionStatus.IN_PROGRESS:
                self._fresh.pop(execution_id, None)
                if execution_id in self._inbox_rows:
                    cx.execute("DELETE FROM inbox WHERE execution_id = ?", (execution_id,))
                    self._inbox_rows.discard(execution_id)
                return
        else:  # a cached instance belongs to an execution in progress (ending one drops it from the cache)
            workflow_name, first_step_done = cached.workflow, cached.first_step_done
        stored: list[Any] = []
        if execution_id in self._inbox_rows:
            stored = cx.execute(
                "SELECT id, event FROM inbox WHERE execution_id = ? ORDER BY id", (execution_id,)
            ).fetchall()
        events = [EVENT_ADAPTER.validate_json(item[1]) for item in stored]
        events.extend(self._fresh.get(execution_id, ()))
        try:
            if cached is None:
                pinned = self._pinned.get(execution_id)
                code = pinned if pinned is not None else self.workflow_definition(workflow_name).code()
                history = self._history(execution_id)
                executor = WorkflowExecutor(code, execution_id, history, first_step_done=bool(first_step_done))
                cached = _Cached(executor, workflow_name, service, parent, parent_seq, len(history))
                if first_step_done:
                    self.replays += 1
            output = cached.executor.step(events)
        except Exception as exc:  # noqa: BLE001 - one broken execution must not stop the others
            if cached is not None:
                cached.executor.close()
            if not isinstance(exc, errors.EventualError):
                exc = errors.EventualError(f"internal error while stepping: {type(exc).__name__}: {exc}")
            self._block(execution_id, exc, now)
            return
        executor = cached.executor
        self._fresh.pop(execution_id, None)
        self._work.stepped.append(execution_id)
        self._work.did_work = True
        self.steps += 1
        if stored:
            cx.execute("DELETE FROM inbox WHERE execution_id = ? AND id <= ?", (execution_id, stored[-1][0]))
            self._inbox_rows.discard(execution_id)
        if output.events:
            length = cached.history_length
            cx.executemany(
                "INSERT INTO history(execution_id, idx, event) VALUES (?, ?, ?)",
                [(execution_id, length + i, event.model_dump_json()) for i, event in enumerate(output.events)],
            )
            cached.history_length = length + len(output.events)
        if output.logs:
            cx.executemany(
                "INSERT INTO logs(execution_id, time, message, source) VALUES (?, ?, ?, ?)",
                [(execution_id, entry.time.isoformat(), entry.message, entry.source) for entry in output.logs],
            )
        if not first_step_done:
            cx.execute("UPDATE executions SET first_step_done = 1 WHERE id = ?", (execution_id,))
            cached.first_step_done = True
        for command in output.commands:
            self._carry_out(execution_id, cached.service, command, now)
        if executor.ended:
            executor.close()
            self._pinned.pop(execution_id, None)
            self._finish(execution_id, executor, cached.parent, cached.parent_seq, now)
        else:
            self._executors[execution_id] = cached
            while len(self._executors) > self._max_cached:
                _, evicted = self._executors.popitem(last=False)
                evicted.executor.close()

    def _block(self, execution_id: str, error: errors.EventualError, now: float) -> None:
        """The execution cannot step (changed code, missing definition): it waits, IN_PROGRESS, with a note."""
        if execution_id not in self._blocked:
            self._log(execution_id, now, f"execution cannot continue: {type(error).__name__}: {error}", "runtime")
        self._blocked[execution_id] = error

    def retry_blocked(self) -> None:
        """Try blocked executions again (after a compatible definition was registered); any thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is not loop:
                loop.call_soon_threadsafe(self.retry_blocked)
                return
        self._ready |= set(self._blocked)
        self._blocked.clear()
        self._wake_up()

    def _finish(
        self, execution_id: str, executor: WorkflowExecutor, parent: str | None, parent_seq: int | None, now: float
    ) -> None:
        cx = self._cx
        terminal = executor.terminal
        status, result, error, message = ExecutionStatus.FAILED, None, None, None
        if isinstance(terminal, WorkflowSucceeded):
            status, result = ExecutionStatus.SUCCEEDED, dumps(terminal.result)
        elif isinstance(terminal, WorkflowFailed):
            error, message = terminal.error, terminal.message
        elif isinstance(terminal, WorkflowCancelled):
            status = ExecutionStatus.CANCELLED
        cx.execute(
            "UPDATE executions SET status = ?, result = ?, error = ?, message = ?, end_time = ? WHERE id = ?",
            (status.value, result, error, message, _iso(now), execution_id),
        )
        cx.execute("DELETE FROM timers WHERE execution_id = ?", (execution_id,))
        cx.execute("DELETE FROM activities WHERE execution_id = ?", (execution_id,))
        if execution_id in self._inbox_rows:
            cx.execute("DELETE FROM inbox WHERE execution_id = ?", (execution_id,))
            self._inbox_rows.discard(execution_id)
        self._fresh.pop(execution_id, None)
        self._ready.discard(execution_id)
        for (child_id,) in cx.execute(
            "SELECT id FROM executions WHERE parent = ? AND status = 'IN_PROGRESS'", (execution_id,)
        ).fetchall():
            self._enqueue(child_id, CancelRequested(timestamp=_dt(now)))
        if parent is not None and parent_seq is not None:
            parent_status = cx.execute("SELECT status FROM executions WHERE id = ?", (parent,)).fetchone()
            if parent_status is not None and parent_status[0] == ExecutionStatus.IN_PROGRESS:
                event: HistoryEvent
                if status == ExecutionStatus.SUCCEEDED:
                    assert isinstance(terminal, WorkflowSucceeded)
                    event = ChildWorkflowSucceeded(seq=parent_seq, timestamp=_dt(now), result=terminal.result)
                elif status == ExecutionStatus.CANCELLED:
                    event = ChildWorkflowFailed(
                        seq=parent_seq,
                        timestamp=_dt(now),
                        error="ExecutionCancelled",
                        message=f"child execution '{execution_id}' was cancelled",
                    )
                else:
                    event = ChildWorkflowFailed(
                        seq=parent_seq, timestamp=_dt(now), error=error or "Error", message=message or ""
                    )
                self._enqueue(parent, event)
        self._work.ended.append(execution_id)

    def _carry_out(self, execution_id: str, service: str | None, command: Command, now: float) -> None:
        cx = self._cx
        if isinstance(command, ScheduleActivity):
            self._schedule_activity(execution_id, command, now)
        elif isinstance(command, StartTimer):
            cx.execute(
                "INSERT OR REPLACE INTO timers(execution_id, key, due) VALUES (?, ?, ?)",
                (execution_id, f"t:{command.seq}", command.until.timestamp()),
            )
            self._note_due(command.until.timestamp())
        elif isinstance(command, CancelTimer):
            cx.execute("DELETE FROM timers WHERE execution_id = ? AND key = ?", (execution_id, f"t:{command.seq}"))
        elif isinstance(command, SendSignal):
            target = cx.execute("SELECT status FROM executions WHERE id = ?", (command.target,)).fetchone()
            if target is None:
                self._log(
                    execution_id, now, f"signal '{command.signal}' to '{command.target}' ignored: no such execution"
                )
            elif target[0] != ExecutionStatus.IN_PROGRESS:
                self._log(
                    execution_id, now, f"signal '{command.signal}' to '{command.target}' ignored: it is {target[0]}"
                )
            else:
                self._receive_signal(command.target, command.signal, command.payload, command.id, now)
        elif isinstance(command, PublishEvents):
            self._publish(command.events, service, now)
        elif isinstance(command, StartChildWorkflow):
            if cx.execute("SELECT 1 FROM executions WHERE id = ?", (command.child_id,)).fetchone() is not None:
                return
            try:
                definition = self.workflow_definition(command.workflow)
            except errors.EventualError as exc:
                self._enqueue(
                    execution_id,
                    ChildWorkflowFailed(
                        seq=command.seq, timestamp=_dt(now), error=type(exc).__name__, message=str(exc)
                    ),
                )
                return
            name = command.child_id.split("/", 1)[1]
            self._create(definition, command.input, name, command.timeout, execution_id, command.seq, now)
        elif isinstance(command, CancelChildWorkflow):
            child = cx.execute("SELECT status FROM executions WHERE id = ?", (command.child_id,)).fetchone()
            if child is not None and child[0] == ExecutionStatus.IN_PROGRESS:
                self._enqueue(command.child_id, CancelRequested(timestamp=_dt(now)))

    # ------------------------------------------------------------------------------------------- starting

    def _create(
        self,
        definition: Workflow[Any],
        raw_input: Any,
        name: str,
        timeout: Any,
        parent: str | None,
        parent_seq: int | None,
        now: float,
    ) -> tuple[str, bool]:
        cx = self._cx
        execution_id = f"{definition.name}/{name}"
        digest = input_hash(raw_input)
        existing = cx.execute("SELECT input_hash FROM executions WHERE id = ?", (execution_id,)).fetchone()
        if existing is not None:
            if existing[0] == digest:
                return execution_id, True
            raise errors.ExecutionAlreadyExists(
                f"execution '{execution_id}' already exists with a different input", execution_id=execution_id
            )
        limit = optional_duration(timeout, what="timeout")
        if limit is None:
            limit = definition.timeout
        start = _dt(now)
        timeout_at = None if limit is None else deadline_after(start, limit, what="timeout")
        started = WorkflowStarted(
            timestamp=start, workflow=definition.name, input=raw_input, parent=parent, timeout_at=timeout_at
        )
        cx.execute(
            "INSERT INTO executions(id, workflow, status, input, input_hash, start_time, parent, parent_seq, service) "
            "VALUES (?, ?, 'IN_PROGRESS', ?, ?, ?, ?, ?, ?)",
            (
                execution_id,
                definition.name,
                dumps(raw_input),
                digest,
                start.isoformat(),
                parent,
                parent_seq,
                definition.service.name if definition.service else None,
            ),
        )
        cx.execute(
            "INSERT INTO history(execution_id, idx, event) VALUES (?, 0, ?)", (execution_id, started.model_dump_json())
        )
        if timeout_at is not None:
            assert limit is not None
            cx.execute(
                "INSERT INTO timers(execution_id, key, due, payload) VALUES (?, 'timeout', ?, ?)",
                (execution_id, timeout_at.timestamp(), str(limit.total_seconds())),
            )
            self._note_due(timeout_at.timestamp())
        try:  # its first step needs no SELECT: everything it needs is here
            executor = WorkflowExecutor(definition.code(), execution_id, [started], first_step_done=False)
        except Exception:  # noqa: BLE001 - the step will meet the same problem and report it
            pass
        else:
            service = definition.service.name if definition.service else None
            self._executors[execution_id] = _Cached(executor, definition.name, service, parent, parent_seq, 1, False)
            self._work.created.append(execution_id)
        self._ready.add(execution_id)
        self._work.did_work = True
        return execution_id, False

    # ----------------------------------------------------------------------------------- timers & signals

    def _due_timers(self, now: float) -> None:
        cx = self._cx
        rows = cx.execute("SELECT execution_id, key, payload FROM timers WHERE due <= ?", (now,)).fetchall()
        for execution_id, key, payload in rows:
            cx.execute("DELETE FROM timers WHERE execution_id = ? AND key = ?", (execution_id, key))
            if key == "timeout":
                limit = timedelta(seconds=float(payload or 0))
                self._enqueue(
                    execution_id,
                    WorkflowFailed(
                        timestamp=_dt(now),
                        error="WorkflowTimeout",
                        message=f"execution '{execution_id}' exceeded its timeout of {format_duration(limit)}",
                    ),
                )
            else:
                self._enqueue(execution_id, TimerCompleted(seq=int(key[2:]), timestamp=_dt(now)))

    def _receive_signal(self, execution_id: str, signal: str, payload: Any, signal_id: str | None, now: float) -> None:
        if signal_id is not None:
            inserted = self._cx.execute(
                "INSERT OR IGNORE INTO signal_ids(execution_id, id) VALUES (?, ?)", (execution_id, signal_id)
            )
            if inserted.rowcount == 0:
                return
        self._enqueue(execution_id, SignalReceived(timestamp=_dt(now), signal=signal, payload=payload, id=signal_id))

    # ------------------------------------------------------------------------------------------ activities

    def _activity_options(self, command: ScheduleActivity) -> tuple[dict[str, Any], str]:
        """Timeouts and retry policy as stored with the activity, memoised (few distinct ones per service).

        Keyed by the identity of the (immutable) retry policy object, which the entry keeps alive so the
        identity cannot be reused by another object."""
        key = (command.timeout, command.heartbeat_timeout, id(command.retry))
        found = self._options_cache.get(key)
        if found is None or found[0] is not command.retry:
            options = activity_options(command)
            if len(self._options_cache) > 1024:
                self._options_cache.clear()
            found = self._options_cache[key] = (command.retry, options, dumps(options))
        return found[1], found[2]

    def _schedule_activity(self, execution_id: str, command: ScheduleActivity, now: float) -> None:
        """Record the activity as running its first attempt; it starts right after this transaction commits."""
        options, options_text = self._activity_options(command)
        deadline, heartbeat_deadline, due = _deadlines(options, now)
        input_text = dumps(command.input)
        inserted = self._cx.execute(
            "INSERT OR IGNORE INTO activities(execution_id, seq, name, input, options, attempt, status, due, deadline, "
            "heartbeat_deadline, runs) VALUES (?, ?, ?, ?, ?, 1, 'running', ?, ?, ?, 1)",
            (execution_id, command.seq, command.name, input_text, options_text, due, deadline, heartbeat_deadline),
        )
        self._note_due(due)
        if inserted.rowcount:
            self._work.start_attempts.append(_Start(execution_id, command.seq, 1, command.name, input_text))
            self._work.did_work = True

    def _due_activities(self, now: float) -> None:
        cx = self._cx
        rows = cx.execute(
            "SELECT execution_id, seq, name, input, options, attempt, status, deadline, heartbeat_deadline, "
            "heartbeat_details FROM activities WHERE due IS NOT NULL AND due <= ?",
            (now,),
        ).fetchall()
        for row in rows:
            execution_id, seq, name, input_text, options_text, attempt, status, deadline, heartbeat_deadline, _ = row
            options = json.loads(options_text)
            if status == "scheduled":
                attempt += 1
                new_deadline, new_heartbeat, due = _deadlines(options, now)
                cx.execute(
                    "UPDATE activities SET attempt = ?, status = 'running', deadline = ?, heartbeat_deadline = ?, "
                    "due = ?, runs = runs + 1 WHERE execution_id = ? AND seq = ?",
                    (attempt, new_deadline, new_heartbeat, due, execution_id, seq),
                )
                self._note_due(due)
                self._work.start_attempts.append(_Start(execution_id, seq, attempt, name, input_text, row[9]))
                self._work.did_work = True
            elif status in ("running", "async"):
                heartbeat_missed = heartbeat_deadline is not None and heartbeat_deadline <= now
                if heartbeat_missed and (deadline is None or heartbeat_deadline <= deadline):
                    limit = options.get("heartbeat_timeout") or 0
                    error: errors.Timeout = errors.HeartbeatTimeout(
                        f"no heartbeat within {format_duration(timedelta(seconds=limit))}"
                    )
                    kind = "heartbeat"
                else:
                    limit = options.get("timeout") or 0
                    error = errors.Timeout(
                        f"attempt {attempt} exceeded its timeout of {format_duration(timedelta(seconds=limit))}"
                    )
                    kind = "timeout"
                self._attempt_failed(
                    execution_id, seq, attempt, options, kind, type(error).__name__, str(error),
                    exception_type_names(error), True, now,
                )  # fmt: skip

    def _settle_attempt(self, attempt: _Attempt, now: float) -> None:
        outcome = attempt.outcome
        if outcome.kind == "succeeded":  # the common case, in one statement
            deleted = self._cx.execute(
                "DELETE FROM activities WHERE execution_id = ? AND seq = ? AND attempt = ? "
                "AND status IN ('running', 'async')",
                (attempt.execution_id, attempt.seq, attempt.attempt),
            )
            if deleted.rowcount:
                self._enqueue(
                    attempt.execution_id,
                    ActivitySucceeded(
                        seq=attempt.seq, timestamp=_dt(now), result=outcome.result, attempts=attempt.attempt
                    ),
                )
            return  # otherwise a late result of an attempt that timed out, was retried, or whose execution ended
        row = self._cx.execute(
            "SELECT attempt, status, options FROM activities WHERE execution_id = ? AND seq = ?",
            (attempt.execution_id, attempt.seq),
        ).fetchone()
        if row is None or row[0] != attempt.attempt or row[1] not in ("running", "async"):
            return  # a late result of an attempt that timed out, was retried, or whose execution ended
        options = json.loads(row[2])
        if outcome.kind == "async":
            self._cx.execute(
                "UPDATE activities SET status = 'async' WHERE execution_id = ? AND seq = ?",
                (attempt.execution_id, attempt.seq),
            )
            self._note_attempt(
                attempt.execution_id, attempt.seq, now, lambda name: async_note(name, attempt.seq, attempt.attempt)
            )
            assert outcome.callback is not None
            assert self._signer is not None
            token = self._signer.sign(attempt.execution_id, attempt.seq, attempt.attempt)
            self._work.async_callbacks.append((outcome.callback, token))
        else:
            self._attempt_failed(
                attempt.execution_id, attempt.seq, attempt.attempt, options, "failed", outcome.error,
                outcome.message, outcome.type_names, outcome.retryable, now,
            )  # fmt: skip

    def _note_attempt(self, execution_id: str, seq: int, now: float, note: Callable[[str], str]) -> None:
        """Log `note(activity name)` for an attempt that did not end its call (`eventual_nb.attempts`)."""
        row = self._cx.execute(
            "SELECT name FROM activities WHERE execution_id = ? AND seq = ?", (execution_id, seq)
        ).fetchone()
        if row is not None:
            self._log(execution_id, now, note(str(row[0])), source=str(row[0]))

    def _attempt_failed(
        self,
        execution_id: str,
        seq: int,
        attempt: int,
        options: dict[str, Any],
        kind: str,
        error: str,
        message: str,
        type_names: tuple[str, ...],
        retryable: bool,
        now: float,
    ) -> None:
        policy = RetryPolicy.model_validate(options.get("retry") or {})
        if retryable and policy.retries(attempt, type_names):
            delay = policy.delay_after(attempt)
            due = now + delay.total_seconds()
            self._note_attempt(
                execution_id, seq, now, lambda name: retry_note(name, seq, attempt, error, message, _dt(due), delay)
            )
            self._cx.execute(
                "UPDATE activities SET status = 'scheduled', due = ?, deadline = NULL, heartbeat_deadline = NULL "
                "WHERE execution_id = ? AND seq = ?",
                (due, execution_id, seq),
            )
            self._note_due(due)
            self._work.did_work = True
            return
        self._cx.execute("DELETE FROM activities WHERE execution_id = ? AND seq = ?", (execution_id, seq))
        event: HistoryEvent
        if kind == "timeout":
            event = ActivityTimedOut(seq=seq, timestamp=_dt(now), message=message, attempts=attempt)
        elif kind == "heartbeat":
            event = ActivityHeartbeatTimedOut(seq=seq, timestamp=_dt(now), message=message, attempts=attempt)
        else:
            event = ActivityFailed(seq=seq, timestamp=_dt(now), error=error, message=message, attempts=attempt)
        self._enqueue(execution_id, event)

    async def _run_activity(self, start: _Start) -> None:
        execution_id, seq, attempt, name = start.execution_id, start.seq, start.attempt, start.name
        details = start.heartbeat_details
        input_text = start.input
        definition = self.activity_definition(name)
        assert self._signer is not None
        info = ActivityInfo(
            execution_id=execution_id,
            activity=name,
            seq=seq,
            attempt=attempt,
            token=functools.partial(self._signer.sign, execution_id, seq, attempt),
            idempotency_key=f"{execution_id}/{seq}",
            heartbeat_details=None if details is None else json.loads(details),
        )
        if definition is None:
            outcome = AttemptOutcome(
                kind="failed",
                error="ActivityNotFound",
                message=f"no activity named '{name}' is served by this runtime",
                retryable=False,
            )
        else:

            def log_line(line: str) -> None:
                self._pending_logs.append((execution_id, datetime.now(UTC).isoformat(), line, name))

            try:
                outcome = await run_attempt(
                    definition,
                    json.loads(input_text),
                    info,
                    lambda details: self._heartbeat(execution_id, seq, attempt, details),
                    log_line,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the runner reports user failures; this is a last resort
                outcome = failure(exc)
        self._attempts.append(_Attempt(execution_id, seq, attempt, outcome))
        self._wake_up()

    async def _call_async_callback(self, callback: Callable[[str], Any], token: str) -> None:
        try:
            value = callback(token)
            if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
                await value
        except Exception as exc:  # noqa: BLE001 - the activity stays pending; report it
            self._log_runtime_error(exc)

    async def _heartbeat(self, execution_id: str, seq: int, attempt: int, details: Any) -> HeartbeatResponse:
        encoded = None if details is None else dumps(to_json(details, what="heartbeat details"))

        def apply(now: float) -> HeartbeatResponse:
            cx = self._cx
            row = cx.execute(
                "SELECT a.attempt, a.status, a.options, a.deadline, e.status FROM activities a "
                "JOIN executions e ON e.id = a.execution_id WHERE a.execution_id = ? AND a.seq = ?",
                (execution_id, seq),
            ).fetchone()
            if row is None or row[0] != attempt or row[1] not in ("running", "async") or row[4] != "IN_PROGRESS":
                return HeartbeatResponse(cancelled=True)
            options = json.loads(row[2])
            heartbeat = options.get("heartbeat_timeout")
            heartbeat_deadline = None if heartbeat is None else now + heartbeat
            candidates = [d for d in (row[3], heartbeat_deadline) if d is not None]
            due = min(candidates) if candidates else None
            cx.execute(
                "UPDATE activities SET heartbeat_deadline = ?, due = ?, heartbeat_details = COALESCE(?, heartbeat_details) "
                "WHERE execution_id = ? AND seq = ?",
                (heartbeat_deadline, due, encoded, execution_id, seq),
            )
            self._note_due(due)
            return HeartbeatResponse(cancelled=False)

        return await self._submit(apply)  # type: ignore[no-any-return]

    def _pending(self, token: str) -> tuple[str, int, int]:
        assert self._signer is not None
        execution_id, seq, attempt = self._signer.verify(token)
        row = self._cx.execute(
            "SELECT attempt, status FROM activities WHERE execution_id = ? AND seq = ?", (execution_id, seq)
        ).fetchone()
        if row is None or row[0] != attempt or row[1] not in ("running", "async"):
            raise errors.EventualError(
                f"activity token for '{execution_id}' seq {seq} attempt {attempt} is no longer pending "
                "(it completed, timed out, was retried, or its execution ended)"
            )
        return execution_id, seq, attempt

    # ------------------------------------------------------------------------------------------- events

    def _publish(self, envelopes: list[dict[str, Any]], source: str | None, now: float) -> None:
        for item in envelopes:
            for service in self.served_services():
                for subscription in service.subscriptions.values():
                    if subscription.matches(item["name"], source):
                        self._cx.execute(
                            "INSERT INTO deliveries(subscription, event, source, status, due) "
                            "VALUES (?, ?, ?, 'scheduled', ?)",
                            (subscription.name, dumps(item), source, now),
                        )
                        self._note_due(now)
                        self._work.did_work = True

    def _subscription(self, name: str) -> Subscription | None:
        for service in self.served_services():
            found = service.subscriptions.get(name)
            if found is not None:
                return found
        return None

    def _due_deliveries(self, now: float) -> None:
        rows = self._cx.execute(
            "SELECT id FROM deliveries WHERE status = 'scheduled' AND due IS NOT NULL AND due <= ?", (now,)
        ).fetchall()
        for (delivery_id,) in rows:
            self._cx.execute(
                "UPDATE deliveries SET status = 'running', attempt = attempt + 1, due = NULL WHERE id = ?",
                (delivery_id,),
            )
            self._work.start_deliveries.append(delivery_id)
            self._work.did_work = True

    async def _run_delivery(self, delivery_id: int) -> None:
        row = self._cx.execute(
            "SELECT subscription, event, attempt FROM deliveries WHERE id = ?", (delivery_id,)
        ).fetchone()
        if row is None:
            return
        name, event_text, attempt = row
        item = json.loads(event_text)
        subscription = self._subscription(name)
        error: BaseException | None = None
        if subscription is None:
            error = errors.EventualError(f"no subscription named '{name}' is served by this runtime")
        else:

            def log_line(line: str) -> None:
                self._pending_logs.append((f"subscription:{name}", datetime.now(UTC).isoformat(), line, name))

            token = capture.log_sink.set(log_line)
            try:
                value = subscription.handler(subscription.decode(item))
                if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
                    await value
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - handler failures are retried, then dead-lettered
                error = exc
            finally:
                capture.flush_sink(log_line)
                capture.log_sink.reset(token)
        self._deliveries_done.append(_Delivery(delivery_id, name, item, attempt, error))
        self._wake_up()

    def _settle_delivery(self, delivery: _Delivery, now: float) -> None:
        cx = self._cx
        if delivery.error is None:
            cx.execute("DELETE FROM deliveries WHERE id = ?", (delivery.id,))
            return
        subscription = self._subscription(delivery.subscription)
        policy = subscription.retry if subscription is not None else RetryPolicy()
        if policy.retries(delivery.attempt, exception_type_names(delivery.error)):
            due = now + policy.delay_after(delivery.attempt).total_seconds()
            cx.execute("UPDATE deliveries SET status = 'scheduled', due = ? WHERE id = ?", (due, delivery.id))
            self._note_due(due)
            return
        cx.execute("DELETE FROM deliveries WHERE id = ?", (delivery.id,))
        cx.execute(
            "INSERT INTO dead_letters(event, subscription, error, message, attempts, time) VALUES (?, ?, ?, ?, ?, ?)",
            (
                dumps(delivery.event),
                delivery.subscription,
                errors.error_type_name(delivery.error),
                errors.error_message(delivery.error),
                delivery.attempt,
                _iso(now),
            ),
        )

    # ------------------------------------------------------------------------------ the client protocol

    def _execution(self, execution_id: str) -> Execution:
        row = self._cx.execute(
            "SELECT id, workflow, status, input, result, error, message, start_time, end_time, parent "
            "FROM executions WHERE id = ?",
            (execution_id,),
        ).fetchone()
        if row is None:
            raise errors.ExecutionNotFound(f"no execution with id '{execution_id}'", execution_id=execution_id)
        return _to_execution(row)

    async def start_execution(
        self, workflow: Any, input: Any = None, name: str | None = None, timeout: Any = None
    ) -> ExecutionHandle:
        workflow_name = workflow if isinstance(workflow, str) else getattr(workflow, "name", None)
        if not isinstance(workflow_name, str):
            raise errors.EventualError(f"expected a workflow or its name, got {workflow!r}")
        definition = self.workflow_definition(workflow_name)
        raw_input = definition.validate_input(_NO_INPUT if input is None else input)
        if name is None:
            name = ulid(datetime.now(UTC))
        else:
            check_execution_name(name)
        optional_duration(timeout, what="timeout")
        execution_id, already = await self._submit(
            lambda now: self._create(definition, raw_input, name, timeout, None, None, now)
        )
        return ExecutionHandle(execution_id, definition.name, runtime=self, already_running=already)

    async def get_execution(self, id: str) -> Execution:
        return self._execution(id)

    async def list_executions(
        self,
        workflow: str | None = None,
        statuses: list[ExecutionStatus] | None = None,
        next_token: str | None = None,
        max_results: int = 100,
        sort: str = "asc",
    ) -> ExecutionPage:
        offset = listing_offset(sort, max_results, next_token)
        clauses, params = [], []
        if workflow is not None:
            clauses.append("workflow = ?")
            params.append(workflow)
        if statuses:
            wanted = [ExecutionStatus(status).value for status in statuses]
            clauses.append(f"status IN ({', '.join('?' for _ in wanted)})")
            params.extend(wanted)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        order = "DESC" if sort == "desc" else "ASC"
        rows = self._cx.execute(
            "SELECT id, workflow, status, input, result, error, message, start_time, end_time, parent "
            f"FROM executions {where} ORDER BY rowid {order} LIMIT ? OFFSET ?",
            (*params, max_results + 1, offset),
        ).fetchall()
        more = len(rows) > max_results
        return ExecutionPage(
            executions=[_to_execution(row) for row in rows[:max_results]],
            next_token=str(offset + max_results) if more else None,
        )

    async def get_execution_history(self, id: str) -> list[HistoryEvent]:
        self._execution(id)
        return self._history(id)

    async def get_execution_logs(self, id: str) -> list[LogEntry]:
        self._execution(id)
        rows = self._cx.execute(
            "SELECT time, message, source FROM logs WHERE execution_id = ? ORDER BY id", (id,)
        ).fetchall()
        return [LogEntry(time=datetime.fromisoformat(row[0]), message=row[1], source=row[2]) for row in rows]

    async def send_signal(self, execution: Any, signal: Any, payload: Any = None, id: str | None = None) -> None:
        execution_id = execution_id_of(execution)
        name = signal_name_of(signal)
        encoded = encode_payload(signal, payload, self.served_services())

        def apply(now: float) -> None:
            row = self._cx.execute("SELECT status FROM executions WHERE id = ?", (execution_id,)).fetchone()
            if row is None:
                raise errors.ExecutionNotFound(f"no execution with id '{execution_id}'", execution_id=execution_id)
            if row[0] != ExecutionStatus.IN_PROGRESS:
                raise errors.EventualError(f"cannot send signal '{name}' to execution '{execution_id}': it is {row[0]}")
            self._receive_signal(execution_id, name, encoded, id, now)

        await self._submit(apply)

    async def publish_events(self, *events: Any) -> None:
        items = [(envelope(event), source_of(event)) for event in events]

        def apply(now: float) -> None:
            for item, source in items:
                self._publish([item], source, now)

        await self._submit(apply)

    async def cancel_execution(self, id: str) -> None:
        def apply(now: float) -> None:
            row = self._cx.execute("SELECT status FROM executions WHERE id = ?", (id,)).fetchone()
            if row is None:
                raise errors.ExecutionNotFound(f"no execution with id '{id}'", execution_id=id)
            if row[0] != ExecutionStatus.IN_PROGRESS:
                raise errors.EventualError(f"cannot cancel execution '{id}': it already ended {row[0]}")
            self._enqueue(id, CancelRequested(timestamp=_dt(now)))

        await self._submit(apply)

    async def send_activity_success(self, token: str, result: Any = None) -> None:
        execution_id, seq, attempt = self._pending(token)
        name_row = self._cx.execute(
            "SELECT name FROM activities WHERE execution_id = ? AND seq = ?", (execution_id, seq)
        ).fetchone()
        definition = self.activity_definition(name_row[0]) if name_row else None
        annotation = definition.shape.return_annotation if definition is not None else Any
        what = f"result of activity '{name_row[0] if name_row else '?'}'"
        encoded = to_json(from_json(to_json(result, what=what), annotation, what=what), annotation, what=what)

        def apply(now: float) -> None:
            self._pending(token)
            self._settle_attempt(
                _Attempt(execution_id, seq, attempt, AttemptOutcome(kind="succeeded", result=encoded)), now
            )

        await self._submit(apply)

    async def send_activity_failure(self, token: str, error: str, message: str | None = None) -> None:
        execution_id, seq, attempt = self._pending(token)
        outcome = AttemptOutcome(kind="failed", error=str(error), message=message or "", type_names=(str(error),))

        def apply(now: float) -> None:
            self._pending(token)
            self._settle_attempt(_Attempt(execution_id, seq, attempt, outcome), now)

        await self._submit(apply)

    async def send_activity_heartbeat(self, token: str) -> HeartbeatResponse:
        assert self._signer is not None
        execution_id, seq, attempt = self._signer.verify(token)
        return await self._heartbeat(execution_id, seq, attempt, None)

    async def list_dead_letters(self) -> list[DeadLetter]:
        rows = self._cx.execute(
            "SELECT event, subscription, error, message, attempts, time FROM dead_letters ORDER BY id"
        ).fetchall()
        return [
            DeadLetter(
                event=json.loads(row[0]),
                subscription=row[1],
                error=row[2],
                message=row[3],
                attempts=row[4],
                time=datetime.fromisoformat(row[5]),
            )
            for row in rows
        ]

    async def wait_for_execution(self, id: str, timeout: float | None) -> Execution:
        execution = self._execution(id)
        if execution.status != ExecutionStatus.IN_PROGRESS:
            return execution
        assert self._loop is not None
        future: asyncio.Future[Execution] = self._loop.create_future()
        self._waiters[id].append(future)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise errors.Timeout(f"execution '{id}' did not finish within {timeout} s") from None
        finally:
            waiters = self._waiters.get(id)
            if waiters and future in waiters:
                waiters.remove(future)

    async def rebind_executions(self, workflow: str, pinned: dict[str, Any]) -> None:
        self._pinned.update(pinned)
        for execution_id, cached in list(self._executors.items()):
            if cached.workflow == workflow and execution_id not in self._pinned:
                # the next step replays its history on the new definition (checked compatible)
                del self._executors[execution_id]
                cached.executor.close()
        self.retry_blocked()

    def blocked(self) -> dict[str, errors.EventualError]:
        """Executions that cannot continue (changed code, missing definition), with the reason."""
        return dict(self._blocked)


def _to_execution(row: Any) -> Execution:
    return Execution(
        id=row[0],
        workflow=row[1],
        status=ExecutionStatus(row[2]),
        input=None if row[3] is None else json.loads(row[3]),
        result=None if row[4] is None else json.loads(row[4]),
        error=row[5],
        message=row[6],
        start_time=datetime.fromisoformat(row[7]),
        end_time=None if row[8] is None else datetime.fromisoformat(row[8]),
        parent=row[9],
    )
