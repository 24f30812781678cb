"""`LocalRuntime`: the embedded, crash-safe runtime on one SQLite file.

One scheduler task owns the database. Each round it takes everything that is ready — API requests
(starts, signals, cancels, publishes, token completions), finished activity attempts and subscription
deliveries, due timers — steps every execution that has new events, and commits all of it in ONE
transaction (group commit). What a step means is the execution core's decision (`core.turn`, and
`core.retry_or_settle` after an attempt); this runtime stores and wakes. Because every action of a turn is
itself a row written in that same
transaction (activity rows, timer rows, inbox rows, delivery rows, child executions), history is never
committed without its commands, nor commands without their history (a transactional outbox). Side
effects (activity and subscription code) run only after the commit and report back through the next
round, so a crash at any moment loses nothing and invents nothing; activities are at-least-once.

Timers wake the scheduler at the next due time (no polling); it also wakes whenever work arrives.

Schedules (`@ev.schedule`) are rows of the `schedules` table: each one's state (`core.schedules`) and the
time of its next fire, which wakes the scheduler like a timer. A due schedule is decided by the core
(`decide_due`) in the round's transaction, so the executions a fire starts and the state saying the fire
was handled commit together: a fire is started once, whatever crashes. The first round after a start
catches up the fires missed while no runtime ran, as each schedule's `catchup` says.

The clock: `datetime.now(UTC)`, or the `clock=` given (tests: `ev.testing.ManualClock`, which wakes the
runtime each time it moves, so a test runs a week of fires or a restart after missed ones without waiting).
Events also go onto the event bus that the LocalRuntimes of one machine share (`bus=`, by default
`bus.db` beside the database): through an outbox row written in the transaction that publishes them and
appended to the bus right after it commits; and the events other runtimes published there reach the
subscriptions here that name their source (`runtime/local/bus.py` has the promises and how they are kept).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
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
from typing import Any, Literal, TypeVar

from eventual_nb import errors
from eventual_nb import service as registry
from eventual_nb.durations import DurationLike, parse_duration
from eventual_nb.engine import capture
from eventual_nb.engine.executor import StepOutput, WorkflowCode, WorkflowExecutor
from eventual_nb.engine.history import HistoryEvent, LogEntry, SignalReceived
from eventual_nb.events import Subscription, envelope, source_of
from eventual_nb.retry import RetryPolicy
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
    NO_DEADLINES,
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
    wire,
)
from eventual_nb.runtime.core.schedules import Schedule, ScheduleInfo, ScheduleState
from eventual_nb.runtime.local.bus import default_bus_path
from eventual_nb.runtime.local.buslink import BusLink
from eventual_nb.runtime.local.entities import LocalEntityStore
from eventual_nb.runtime.local.store import ActivityRow, Database, StepRow, dumps
from eventual_nb.runtime.tokens import TokenSigner, environment_signing_key
from eventual_nb.serde import input_hash, to_json
from eventual_nb.service import Service, current_service
from eventual_nb.signals import encode_payload
from eventual_nb.workflows import Workflow

LOGGER = logging.getLogger("eventual_nb.runtime")
T = TypeVar("T")

#: rounds of workflow steps folded into one transaction before committing
MAX_ROUNDS_PER_COMMIT = 20
#: an instance waiting on nothing but timers due further away than this is not cached (`_waits_only_on_far_timers`)
FAR_TIMER = timedelta(minutes=1)


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


#: rounds the scheduler may run back to back while activities that finished as they started hand it their
#: results (no request waiting): one trip round the event loop fewer per step of such a chain, and the loop's
#: other tasks still run at least every `ROUNDS_WITHOUT_YIELD + 1` rounds
ROUNDS_WITHOUT_YIELD = 4


def _moments(deadlines: Deadlines) -> tuple[float | None, float | None, float | None]:
    """(attempt deadline, heartbeat deadline, when to check them) as the activities table stores them."""
    if deadlines is NO_DEADLINES:
        return None, None, None
    return _timestamp(deadlines.deadline), _timestamp(deadlines.heartbeat), _timestamp(deadlines.next)


def _timestamp(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


def _deadlines(deadline: float | None, heartbeat: float | None) -> Deadlines:
    return Deadlines(None if deadline is None else _dt(deadline), None if heartbeat is None else _dt(heartbeat))


def _dt(moment: float) -> datetime:
    return datetime.fromtimestamp(moment, UTC)


def _schedule_generations() -> tuple[int, int]:
    """What changes when a schedule or a service is defined (compared with what the runtime last synced)."""
    return registry.schedule_generation, registry.generation


@dataclass
class _Request:
    apply: Callable[[float], Any]
    future: asyncio.Future[Any]
    #: only reads: a round that did nothing else commits nothing new (no `commits`, no commit listeners)
    read_only: bool = False


@dataclass
class _Attempt:
    execution_id: str
    seq: int
    attempt: int
    outcome: AttemptOutcome
    #: the activity's name (for the warning about a result too large for AWS)
    name: str


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
    #: the call's input: its JSON value (the row holds its text; the attempt reads the value, not the text back)
    input: Any
    heartbeat_details: str | None = None


@dataclass
class _Cached:
    """A live workflow instance and what a step needs to know about its execution (no SELECT per step)."""

    executor: WorkflowExecutor
    workflow: str
    lineage: Lineage
    history_length: int
    first_step_done: bool = True


@dataclass
class _Round:
    """What one transaction did, for the work that must wait until it is committed."""

    #: the round's clock (what it records is stamped with it)
    moment: datetime = field(default_factory=lambda: datetime.now(UTC))  # (each round sets its clock's)
    start_attempts: list[_Start] = field(default_factory=list)
    start_deliveries: list[int] = field(default_factory=list)
    async_callbacks: list[tuple[Callable[[str], Any], str]] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)
    stepped: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    ready: set[str] = field(default_factory=set)
    did_work: bool = False
    #: events went into the outbox: forward them to the bus once committed
    published: bool = False


class LocalRuntime(RuntimeBase):
    """Durable runtime on SQLite (WAL, `synchronous=FULL` by default, one writer, exclusive lock).

    `bus`: the event bus file shared with the other LocalRuntimes of this machine (default `bus.db` in the
    database's directory, so runtimes started in one directory exchange events); `False` for none (events
    then reach only this runtime's subscriptions). `bus_retention`: how long the bus keeps events (default
    7 days; a duration such as "2d")."""

    def __init__(
        self,
        path: str | os.PathLike[str] = ".eventual/state.db",
        durability: str = "full",
        *,
        service: Service | str | None = None,
        services: list[Service | str] | None = None,
        max_cached_executions: int = 10_000,
        clock: Callable[[], datetime] | None = None,
        bus: str | os.PathLike[str] | Literal[False] | None = None,
        bus_retention: DurationLike = "7d",
    ) -> None:
        """`clock`: what the runtime reads as now (aware datetimes; default `datetime.now(UTC)`), for tests. A
        clock with a `watch(callback)` method (`ev.testing.ManualClock`) wakes the runtime when it moves."""
        self.path = os.fspath(path)
        self._clock = clock
        self.durability = durability
        self.bus_path = None if bus is False else os.fspath(bus if bus is not None else default_bus_path(self.path))
        self.bus_retention = parse_duration(bus_retention, what="bus_retention")
        self._link: BusLink | None = None
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
        self._options_cache: dict[tuple[Any, ...], tuple[RetryPolicy, str]] = {}
        self._parsed_options: dict[str, ActivityOptions] = {}
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
        #: statistics for benchmarks: transactions committed, workflow steps, from-scratch replays, times the
        #: scheduler woke from waiting, and of those the times it found nothing to do
        self.commits = 0
        self.steps = 0
        self.replays = 0
        self.wakeups = 0
        self.idle_wakeups = 0
        #: (schedule generation, service generation) last synced into the schedules table (`_sync_schedules`)
        self._schedules_seen: tuple[int, int] | None = None
        #: the first round after a start catches up the fires missed while no runtime ran
        self._catching_up = True

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
            if self.bus_path is not None:
                self._link = BusLink.open(self.bus_path, self._db, self.durability, self.bus_retention)
            self._recover()
        except BaseException:  # a failed start must not keep the database (and its lock) open
            self._close_storage()
            raise
        self._loop = self._home_loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._catching_up = True
        self._schedules_seen = None
        registry.watch_schedules(self.clock_moved)  # a schedule defined later is seen at once
        watch = getattr(self._clock, "watch", None)
        if callable(watch):
            watch(self.clock_moved)
        if self._link is not None:
            self._link.listen(self._loop, self._wake_up)
        self._scheduler = asyncio.create_task(self._run(), name=f"LocalRuntime {self.path}")

    async def stop(self) -> None:
        if self._scheduler is None:
            return
        self._scheduler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._scheduler
        self._scheduler = None
        registry.unwatch_schedules(self.clock_moved)
        unwatch = getattr(self._clock, "unwatch", None)
        if callable(unwatch):
            unwatch(self.clock_moved)
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
        self._close_storage()
        self._home_loop = None

    def _close_storage(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None
        if self._db is not None:
            self._db.close()
            self._db = None

    def is_running(self) -> bool:
        return self._scheduler is not None

    def store(self) -> object:
        """The database file: every LocalRuntime opened on it serves the same executions."""
        return ("sqlite", os.path.realpath(self.path))

    def _recover(self) -> None:
        """Work left 'running' by a crashed process runs again; executions with news get a step."""
        self._database.requeue_running(self._time())
        self._earliest_due = -math.inf
        self._ready = set()
        self._recover_ready()

    @property
    def _database(self) -> Database:
        if self._db is None:
            raise errors.EventualError("the LocalRuntime is not running: use `async with ev.LocalRuntime(...):`")
        return self._db

    def entity_store(self) -> LocalEntityStore:
        """The entities (`ev.entity`), in tables of this runtime's database (runtime/local/entities.py)."""
        return LocalEntityStore(self)

    async def _write(self, change: Callable[[Database], T]) -> T:
        """Run `change` in a savepoint of the next round's transaction; its result once that committed."""
        result: T = await self._submit(lambda now: change(self._database))
        return result

    async def _read(self, read: Callable[[Database], T]) -> T:
        """Run `read` on this runtime's loop between two rounds (the connection is used from its thread alone),
        so it sees committed state only."""
        if self._scheduler is None or self._loop is None:
            raise errors.EventualError("the LocalRuntime is not running: use `async with ev.LocalRuntime(...):`")
        if asyncio.get_running_loop() is not self._loop:
            return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._read(read), self._loop))
        return read(self._database)

    # --------------------------------------------------------------------------------------- definitions

    # ------------------------------------------------------------------------------------------ scheduler

    def _wake_up(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _submit(self, apply: Callable[[float], Any], *, read_only: bool = False) -> Any:
        """Run `apply` inside the next transaction; return its result once that transaction committed.
        `read_only`: `apply` only reads (in a round, so it sees what the round stored before it)."""
        if self._scheduler is None or self._loop is None:
            raise errors.EventualError("the LocalRuntime is not running: use `async with ev.LocalRuntime(...):`")
        if asyncio.get_running_loop() is not self._loop:
            # called from another thread's loop (a notebook cell while the runtime runs on its own thread)
            return await asyncio.wrap_future(
                asyncio.run_coroutine_threadsafe(self._submit(apply, read_only=read_only), self._loop)
            )
        future: asyncio.Future[Any] = self._loop.create_future()
        self._requests.append(_Request(apply, future, read_only))
        self._wake_up()
        return await future

    async def _run(self) -> None:
        assert self._wake is not None
        woke = False
        rounds_in_a_row = 0
        while True:
            self._wake.clear()
            if self._link is not None:
                self._link.poll(time.time())  # the bus keeps wall-clock time, whatever clock the runtime reads
            if self._has_work(self._time()):
                woke = False
                try:
                    self._round()
                except Exception as exc:  # noqa: BLE001 - keep serving; the round was rolled back
                    self._log_runtime_error(exc)
                    await asyncio.sleep(0.05)
                    continue
                if self._attempts and not self._requests and rounds_in_a_row < ROUNDS_WITHOUT_YIELD:
                    rounds_in_a_row += 1
                    continue
                rounds_in_a_row = 0
                await asyncio.sleep(0)  # let the activities, requests and waiters it released run
                continue
            if woke:
                self.idle_wakeups += 1  # woken (or timed out) with nothing to do
            delay = self._sleep_for()
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self.wakeups += 1
            woke = True

    def _sleep_for(self) -> float | None:
        """How long the scheduler may sleep: until the earliest due row on the runtime's clock, or the bus's
        next look on the wall clock (a forward to retry, or a look for lost rings when a subscription here
        reads the bus), whichever comes first (None: until woken)."""
        delays = []
        if self._earliest_due != math.inf:
            delays.append(self._earliest_due - self._time())
        if (
            self._link is not None
            and (bus_wake := self._link.next_wake()) != math.inf
            and (self._link.outbox_pending or core.reads_the_bus(self.served_services()))
        ):
            delays.append(bus_wake - time.time())
        return max(0.0, min(delays)) if delays else None

    def _has_work(self, now: float) -> bool:
        return bool(
            self._requests
            or self._attempts
            or self._deliveries_done
            or self._pending_logs
            or (self._ready and not self._ready <= self._blocked.keys())
            or now >= self._earliest_due
            or self._schedules_seen != _schedule_generations()
            or (self._link is not None and self._link.has_work(time.time()))
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
        due = self._database.next_due()
        return math.inf if due is None else due

    def _time(self) -> float:
        """Now, in seconds since the epoch, on the runtime's clock."""
        return time.time() if self._clock is None else self._clock().timestamp()

    def current_time(self) -> datetime:
        return datetime.now(UTC) if self._clock is None else self._clock().astimezone(UTC)

    def clock_moved(self) -> None:
        """Wake the scheduler to act on what became due (any thread): a watched clock calls it when it moves."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake_up)

    def _round(self) -> bool:
        database = self._database
        now = self._time()
        work = _Round(moment=_dt(now))
        requests, self._requests = self._requests, []
        attempts, self._attempts = self._attempts, []
        deliveries, self._deliveries_done = self._deliveries_done, []
        logs, self._pending_logs = self._pending_logs, []
        self._work = work
        undo_bus: Callable[[], None] | None = None
        database.begin()
        try:
            if self._schedules_seen != _schedule_generations():
                self._sync_schedules()  # before the requests, so pausing or listing a new schedule finds its row
            if logs:
                database.add_log_rows(logs)
            if self._link is not None and self._link.to_take():
                undo_bus = self._take_from_bus(now)
            results = self._apply_requests(requests, now)
            for attempt in attempts:
                self._settle_attempt(attempt, now)
            for delivery in deliveries:
                self._settle_delivery(delivery, now)
            self._work_through(now)
            database.commit()
            self._catching_up = False
        except BaseException:
            database.rollback()
            if undo_bus is not None:
                undo_bus()
            self._undo(work)
            self._requests = requests + self._requests
            self._attempts = attempts + self._attempts
            self._deliveries_done = deliveries + self._deliveries_done
            raise
        only_reads = bool(requests) and all(request.read_only for request in requests)
        if not (only_reads and not (attempts or deliveries or logs or work.did_work)):
            # (a round of reads only, such as `list_schedules`, changed nothing a reader would refresh for)
            self.commits += 1
            if self._commit_listeners:
                self._notify_commit()
        if self._link is not None and (work.published or self._link.outbox_pending):
            self._link.forward(time.time())  # before `publish` returns: its events are on the bus then
        for request, value, error in results:
            if request.future.done():
                continue
            if error is not None:
                request.future.set_exception(error)
            else:
                request.future.set_result(value)
        self._after_commit(work)
        return bool(requests or attempts or deliveries or work.did_work)

    def _apply_requests(self, requests: list[_Request], now: float) -> list[tuple[_Request, Any, BaseException | None]]:
        """Each request in its own savepoint: a bad one fails alone (its caller hears why), the round goes on."""
        results: list[tuple[_Request, Any, BaseException | None]] = []
        for request in requests:
            try:
                with self._database.savepoint():
                    value = request.apply(now)
            except Exception as exc:  # noqa: BLE001 - reported to the request's caller
                if not isinstance(exc, errors.EventualError):
                    exc = errors.InputValidationError(f"request rejected: {type(exc).__name__}: {exc}")
                results.append((request, None, exc))
            else:
                results.append((request, value, None))
        return results

    def _work_through(self, now: float) -> None:
        """Inside the round's transaction: what is due, then every execution that has news, in rounds."""
        due_checked = now >= self._earliest_due
        if due_checked:
            self._earliest_due = math.inf  # exact again below; rows written meanwhile lower it
            self._due_timers(now)
            self._due_activities(now)
            self._due_deliveries(now)
            self._due_schedules(now)
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

    def _undo(self, work: _Round) -> None:
        """After a rolled-back round: forget what it changed in memory; storage says what is ready."""
        self._fresh.clear()
        self._earliest_due = -math.inf
        self._schedules_seen = None
        for execution_id in work.stepped + work.created:
            cached = self._executors.pop(execution_id, None)
            if cached is not None:
                cached.executor.close()
        self._recover_ready()

    def _store_fresh(self) -> None:
        """Events not consumed by a step in this transaction become inbox rows before it commits."""
        if not self._fresh:
            return
        self._database.add_to_inbox(
            (execution_id, event) for execution_id, events in self._fresh.items() for event in events
        )
        self._inbox_rows.update(self._fresh)
        self._fresh.clear()

    def _recover_ready(self) -> None:
        self._inbox_rows = self._database.executions_with_inbox()
        self._ready |= self._inbox_rows
        self._ready |= self._database.unstarted_executions()

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

    def _step(self, execution_id: str, now: float) -> None:
        database = self._database
        cached = self._executors.pop(execution_id, None)
        row: StepRow | None = None
        if cached is None:  # a cached instance belongs to an execution in progress (ending one drops it)
            row = database.step_row(execution_id)
            if row is None or row.status != ExecutionStatus.IN_PROGRESS:
                self._drop_events(execution_id)
                return
        last_stored: int | None = None
        events: list[HistoryEvent] = []
        if execution_id in self._inbox_rows:
            events, last_stored = database.inbox(execution_id)
        events.extend(self._fresh.get(execution_id, ()))
        try:
            if cached is None:
                assert row is not None
                cached = self._replayed(execution_id, row)
            output = cached.executor.step(events)
        except Exception as exc:  # noqa: BLE001 - one broken execution must not stop the others
            if cached is not None:
                cached.executor.close()
            if not isinstance(exc, errors.EventualError):
                exc = errors.EventualError(f"internal error while stepping: {type(exc).__name__}: {exc}")
            self._block(execution_id, exc, now)
            return
        self._fresh.pop(execution_id, None)
        if last_stored is not None:
            database.clear_inbox(execution_id, last_stored)
            self._inbox_rows.discard(execution_id)
        self._record(execution_id, cached, output, now)

    def _drop_events(self, execution_id: str) -> None:
        """Events for an execution that does not exist or has ended are dropped."""
        self._fresh.pop(execution_id, None)
        if execution_id in self._inbox_rows:
            self._database.clear_inbox(execution_id)
            self._inbox_rows.discard(execution_id)

    def _replayed(self, execution_id: str, row: StepRow) -> _Cached:
        """A workflow instance rebuilt from the execution's history (after a restart or an eviction)."""
        pinned = self._pinned.get(execution_id)
        code = pinned if pinned is not None else self.workflow_definition(row.workflow).code()
        history = self._database.history(execution_id)
        executor = WorkflowExecutor(code, execution_id, history, first_step_done=row.first_step_done)
        if row.first_step_done:
            self.replays += 1
        return _Cached(executor, row.workflow, row.lineage, len(history), row.first_step_done)

    def _record(self, execution_id: str, cached: _Cached, output: StepOutput, now: float) -> None:
        """Write what the step means (the core's turn) into the round's transaction."""
        database, executor = self._database, cached.executor
        self._work.stepped.append(execution_id)
        self._work.did_work = True
        self.steps += 1
        if output.events:
            database.append_history(execution_id, cached.history_length, output.events)
            cached.history_length += len(output.events)
        turn = core.turn(executor, output, cached.lineage, now=self._work.moment, status_of=database.status_of)
        if turn.logs:
            database.add_logs(execution_id, turn.logs)
        if not cached.first_step_done:
            database.mark_first_step_done(execution_id)
            cached.first_step_done = True
        for action in turn.actions:
            self._carry_out(action, now)
        if executor.ended:
            executor.close()
            self._pinned.pop(execution_id, None)
        elif self._waits_only_on_far_timers(executor, turn.actions):
            executor.close()  # replayed from its history when its timer fires
        else:
            self._executors[execution_id] = cached
            while len(self._executors) > self._max_cached:
                _, evicted = self._executors.popitem(last=False)
                evicted.executor.close()

    def _waits_only_on_far_timers(self, executor: WorkflowExecutor, actions: list[core.Action]) -> bool:
        """Whether a step that armed a timer left the execution waiting on timers alone, each at least
        `FAR_TIMER` away: such an instance is not kept. Thousands of cached instances asleep for hours cost
        every unrelated step through the garbage collector, which walks them all (two-step executions ran
        1.5× slower per CPU-second beside 10,000 sleeping an hour; `benchmarks.scale`), while replaying one
        short history when its timer fires costs about a step."""
        for action in actions:
            if isinstance(action, ArmTimer):
                break
        else:
            return False
        horizon = self._work.moment + FAR_TIMER
        waits = executor.open_waits()
        return bool(waits) and all(wait.kind == "timer" and wait.until and wait.until > horizon for wait in waits)

    def _block(self, execution_id: str, error: errors.EventualError, now: float) -> None:
        """The execution cannot step (changed code, missing definition): it waits, IN_PROGRESS, with a note."""
        if execution_id not in self._blocked:
            line = LogEntry(time=_dt(now), message=core.blocked_note(error), source="runtime")
            self._database.add_logs(execution_id, [line])
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

    def _carry_out(self, action: core.Action, now: float) -> None:
        """Inside the step's transaction: every action is a row (or a change of one) committed with it."""
        match action:
            case StartAttempt():
                self._schedule_activity(action)
            case ArmTimer():
                self._note_due(self._database.arm_timer(action))
            case DisarmTimer():
                self._database.disarm_timer(action.execution_id, action.key)
            case Deliver():
                self._deliver(action.target, action.event)
            case Publish():
                self._publish(action.envelopes, action.source, now)
            case StartChild():
                self._start_child(action, now)
            case Finish():
                self._finish(action)

    def _finish(self, action: Finish) -> None:
        execution_id = action.execution_id
        result = dumps(action.result) if action.status == ExecutionStatus.SUCCEEDED else None
        self._database.finish(action, result)
        self._drop_events(execution_id)
        self._ready.discard(execution_id)
        self._work.ended.append(execution_id)

    def _deliver(self, target: str, event: HistoryEvent) -> None:
        """An event for another execution (or from outside); a signal id it has seen is dropped here."""
        if (
            isinstance(event, SignalReceived)
            and event.id is not None
            and not self._database.remember_signal(target, event.id)
        ):
            return
        self._enqueue(target, event)

    def _start_child(self, action: StartChild, now: float) -> None:
        try:
            definition = self.workflow_definition(action.workflow)
            limit = core.timeout_limit(action.timeout, definition.timeout)
            lineage = Lineage.of(definition, action.parent, action.seq)
            self._create(definition, action.input, action.child_id, limit, lineage, action.start_time)
        except errors.EventualError as exc:
            self._carry_out(core.child_not_started(action, exc), now)

    # ------------------------------------------------------------------------------------------- starting

    def _create(
        self,
        definition: Workflow[Any],
        raw_input: Any,
        execution_id: str,
        limit: timedelta | None,
        lineage: Lineage,
        start: datetime,
    ) -> tuple[str, bool]:
        database = self._database
        digest = input_hash(raw_input)
        if core.admit(execution_id, digest, database.input_hash_of(execution_id)):
            return execution_id, True
        begun = core.begin(execution_id, definition.name, raw_input, start=start, limit=limit, parent=lineage.parent)
        database.create_execution(begun.started, execution_id, digest, dumps(raw_input), lineage)
        if begun.timeout is not None:
            self._note_due(database.arm_timer(begun.timeout))
        try:  # its first step needs no SELECT: everything it needs is here
            executor = WorkflowExecutor(definition.code(), execution_id, [begun.started], first_step_done=False)
        except Exception:  # noqa: BLE001 - the step will meet the same problem and report it
            pass
        else:
            self._executors[execution_id] = _Cached(executor, definition.name, lineage, 1, False)
            self._work.created.append(execution_id)
        self._ready.add(execution_id)
        self._work.did_work = True
        return execution_id, False

    # ------------------------------------------------------------------------------------------- timers

    def _due_timers(self, now: float) -> None:
        for execution_id, fires in self._database.take_due_timers(now):
            self._enqueue(execution_id, core.timer_fired(fires, self._work.moment))

    # ------------------------------------------------------------------------------------------ activities

    def _options_text(self, options: ActivityOptions) -> str:
        """The `options` column of an activity, memoised (few distinct options per service).

        Keyed by the identity of the (immutable) retry policy object, which the entry keeps alive so the
        identity cannot be reused by another object."""
        key = (options.timeout, options.heartbeat_timeout, id(options.retry))
        found = self._options_cache.get(key)
        if found is None or found[0] is not options.retry:
            if len(self._options_cache) > 1024:
                self._options_cache.clear()
            found = self._options_cache[key] = (options.retry, dumps(wire.options_to_json(options)))
        return found[1]

    def _options_of(self, text: str) -> ActivityOptions:
        """An `options` column read back, memoised by its text."""
        found = self._parsed_options.get(text)
        if found is None:
            if len(self._parsed_options) > 1024:
                self._parsed_options.clear()
            found = self._parsed_options[text] = wire.options_from_json(json.loads(text))
        return found

    def _schedule_activity(self, action: StartAttempt) -> None:
        """Record the activity as running its first attempt; it starts right after this transaction commits."""
        moments = _moments(core.attempt_deadlines(action.options, self._work.moment))
        input_text = dumps(action.input)
        inserted = self._database.add_activity(action, input_text, self._options_text(action.options), moments)
        self._note_due(moments[2])
        if inserted:
            self._work.start_attempts.append(
                _Start(action.execution_id, action.seq, action.attempt, action.name, action.input)
            )
            self._work.did_work = True

    def _due_activities(self, now: float) -> None:
        for row in self._database.due_activities(now):
            if row.status == "scheduled":
                self._start_next_attempt(row)
            elif row.status in ("running", "async"):
                missed = core.missed_deadline(row.deadline, row.heartbeat_deadline, now)
                if missed is not None:
                    outcome = core.expired(missed, row.attempt, self._options_of(row.options))
                    self._decide(_Attempt(row.execution_id, row.seq, row.attempt, outcome, row.name), row)

    def _start_next_attempt(self, row: ActivityRow) -> None:
        """A retry whose backoff is over: its next attempt runs once this transaction committed."""
        attempt = row.attempt + 1
        moments = _moments(core.attempt_deadlines(self._options_of(row.options), self._work.moment))
        self._database.run_attempt(row.execution_id, row.seq, attempt, moments)
        self._note_due(moments[2])
        self._work.start_attempts.append(
            _Start(row.execution_id, row.seq, attempt, row.name, json.loads(row.input), row.heartbeat_details)
        )
        self._work.did_work = True

    def _settle_attempt(self, attempt: _Attempt, now: float) -> None:
        outcome = attempt.outcome
        if outcome.kind is Outcome.SUCCEEDED:  # the common case, in one statement
            if self._database.settle_current(attempt.execution_id, attempt.seq, attempt.attempt):
                decision = core.retry_or_settle(  # a success needs neither the name nor the policy
                    outcome, name="", seq=attempt.seq, attempt=attempt.attempt, now=self._work.moment, policy=None
                )
                assert isinstance(decision, core.Settle)
                self._warn_result(attempt)
                self._enqueue(attempt.execution_id, decision.event)
            return  # otherwise a late result of an attempt that timed out, was retried, or whose execution ended
        row = self._database.activity(attempt.execution_id, attempt.seq)
        if row is None or row.attempt != attempt.attempt or row.status not in ("running", "async"):
            return  # a late result of an attempt that timed out, was retried, or whose execution ended
        self._decide(attempt, row)

    def _decide(self, attempt: _Attempt, row: ActivityRow) -> None:
        """Carry out what the core decides about the outcome of the current attempt of `row`."""
        database, key = self._database, (attempt.execution_id, attempt.seq)
        options = self._options_of(row.options)
        decision = core.retry_or_settle(
            attempt.outcome,
            name=row.name,
            seq=attempt.seq,
            attempt=attempt.attempt,
            now=self._work.moment,
            policy=options.retry,
        )
        match decision:
            case core.Settle(event=event):
                self._warn_result(attempt)
                database.delete_activity(*key)
                self._enqueue(attempt.execution_id, event)
            case core.RetryAt(due=due, note=note):
                self._note_attempt(row, note)
                database.retry_activity(*key, due.timestamp())
                self._note_due(due.timestamp())
                self._work.did_work = True
            case core.AwaitToken(note=note):
                waiting = core.heartbeat_at(
                    _deadlines(row.deadline, row.heartbeat_deadline), options, self._work.moment
                )
                _, heartbeat_deadline, next_due = _moments(waiting)
                database.await_token(*key, heartbeat_deadline, next_due)
                self._note_attempt(row, note)
                self._note_due(next_due)
                assert attempt.outcome.callback is not None
                assert self._signer is not None
                token = self._signer.sign(attempt.execution_id, attempt.seq, attempt.attempt)
                self._work.async_callbacks.append((attempt.outcome.callback, token))

    def _warn_result(self, attempt: _Attempt) -> None:
        """Log, in the round that records it, that the attempt's result would not fit on AWS (if so)."""
        warning = self.aws_result_warning(attempt.outcome, attempt.name, attempt.seq, attempt.execution_id)
        if warning is not None:
            entry = LogEntry(time=self._work.moment, message=warning, source="runtime")
            self._database.add_logs(attempt.execution_id, [entry])

    def _note_attempt(self, row: ActivityRow, note: str) -> None:
        """Log the core's note of an attempt that did not end its call, in the transaction that records it."""
        self._database.add_logs(row.execution_id, [LogEntry(time=self._work.moment, message=note, source=row.name)])

    async def _run_activity(self, start: _Start) -> None:
        execution_id, seq, attempt, name = start.execution_id, start.seq, start.attempt, start.name
        details = start.heartbeat_details
        definition = self.activity_definition(name)
        assert self._signer is not None
        token = functools.partial(self._signer.sign, execution_id, seq, attempt)
        info = attempt_info(execution_id, name, seq, attempt, token, None if details is None else json.loads(details))
        if definition is None:
            outcome = core.not_served(name, "LocalRuntime")
        else:

            def log_line(line: str) -> None:
                self._pending_logs.append((execution_id, self.current_time().isoformat(), line, name))

            try:
                outcome = await run_attempt(
                    definition,
                    start.input,
                    info,
                    lambda details: self._heartbeat(execution_id, seq, attempt, details),
                    log_line,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the runner reports user failures; this is a last resort
                outcome = core.failed(exc)
        self._attempts.append(_Attempt(execution_id, seq, attempt, outcome, name))
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
            found = self._database.heartbeat_target(execution_id, seq)
            if found is None:
                return HeartbeatResponse(cancelled=True)
            row, status = found
            if (
                row.attempt != attempt
                or row.status not in ("running", "async")
                or status != ExecutionStatus.IN_PROGRESS
            ):
                return HeartbeatResponse(cancelled=True)
            beaten = core.heartbeat_at(_deadlines(row.deadline, None), self._options_of(row.options), self._work.moment)
            _, heartbeat_deadline, due = _moments(beaten)
            self._database.record_heartbeat(execution_id, seq, heartbeat_deadline, due, encoded)
            self._note_due(due)
            return HeartbeatResponse(cancelled=False)

        return await self._submit(apply)  # type: ignore[no-any-return]

    def _pending(self, token: str) -> ActivityRow:
        """The current attempt `token` was issued for, while it runs or waits; raises otherwise."""
        assert self._signer is not None
        execution_id, seq, attempt = self._signer.verify(token)
        row = self._database.activity(execution_id, seq)
        if row is None or row.attempt != attempt or row.status not in ("running", "async"):
            raise core.token_not_pending(execution_id, seq, attempt)
        return row

    # ------------------------------------------------------------------------------------------- events

    def _publish(self, envelopes: list[dict[str, Any]], source: str | None, now: float) -> None:
        """Deliveries to this runtime's subscriptions, and outbox rows for the bus, in the current transaction."""
        for item in envelopes:
            for subscription in core.subscriptions_for(self.served_services(), item["name"], source):
                self._add_delivery(subscription, item, source, now)
            if self._link is not None:
                self._database.add_outbox(self._bus_source(source), item["name"], dumps(item["event"]), now)
                self._work.published = True

    def _bus_source(self, source: str | None) -> str | None:
        """The source an event goes onto the bus with: its service's, else (an envelope of no particular
        service) the first served service's, as the AWS runtime puts them on the bus as its stack's service."""
        if source is not None:
            return source
        services = self.served_services()
        return services[0].name if services else None

    def _add_delivery(self, subscription: Subscription, item: dict[str, Any], source: str | None, now: float) -> None:
        self._database.add_delivery(subscription.name, dumps(item), source, now)
        self._note_due(now)
        self._work.did_work = True

    def _take_from_bus(self, now: float) -> Callable[[], None]:
        """Inside the round's transaction: the events other runtimes published become deliveries to the
        subscriptions here that name their source, and the read position moves past them (see `BusLink.take`)."""
        assert self._link is not None
        entries, undo = self._link.take()
        services = self.served_services()
        for entry in entries:
            for subscription in core.bus_subscriptions_for(services, entry.name, entry.source):
                self._add_delivery(subscription, entry.envelope(), entry.source, now)
        return undo

    def _subscription(self, name: str) -> Subscription | None:
        for service in self.served_services():
            found = service.subscriptions.get(name)
            if found is not None:
                return found
        return None

    def _due_deliveries(self, now: float) -> None:
        started = self._database.start_due_deliveries(now)
        if started:
            self._work.start_deliveries.extend(started)
            self._work.did_work = True

    async def _run_delivery(self, delivery_id: int) -> None:
        delivery = self._database.delivery(delivery_id)
        if delivery is None:
            return
        name, item, attempt = delivery.subscription, delivery.event, delivery.attempt
        subscription = self._subscription(name)
        error: BaseException | None = None
        if subscription is None:
            error = errors.EventualError(f"no subscription named '{name}' is served by this runtime")
        else:

            def log_line(line: str) -> None:
                self._pending_logs.append((f"subscription:{name}", self.current_time().isoformat(), line, name))

            error = await run_delivery(subscription, item, log_line)
        self._deliveries_done.append(_Delivery(delivery_id, name, item, attempt, error))
        self._wake_up()

    def _settle_delivery(self, delivery: _Delivery, now: float) -> None:
        if delivery.error is None:
            self._database.delete_delivery(delivery.id)
            return
        subscription = self._subscription(delivery.subscription)
        policy = subscription.retry if subscription is not None else core.default_retry()
        decision = core.after_delivery(
            delivery.subscription, policy, delivery.event, delivery.attempt, delivery.error, self._work.moment
        )
        if isinstance(decision, core.RetryDeliveryAt):
            due = decision.due.timestamp()
            self._database.retry_delivery(delivery.id, due)
            self._note_due(due)
        else:
            self._database.dead_letter(delivery.id, decision)

    # ------------------------------------------------------------------------------------------ schedules

    def _sync_schedules(self) -> None:
        """Inside the round's transaction: a served schedule without a row gets one (its state starts now: a
        new schedule has no missed fires); every row's `due` is its next fire if it is served, NULL if not (a
        removed schedule keeps its state and sleeps)."""
        database, moment = self._database, self._work.moment
        served = {schedule.name: schedule for schedule in self.served_schedules()}
        stored = database.schedule_dues()
        for name, schedule in served.items():
            known = database.schedule_state(name) if name in stored else None
            state = ScheduleState.new(moment) if known is None else known
            due = schedules.wake_at(schedule, state)
            if known is None:
                database.save_schedule(name, state, due)
            elif _timestamp(due) != stored[name]:  # defined again with another cron line or interval
                database.set_schedule_due(name, due)
            self._note_due(_timestamp(due))
        for name, stored_due in stored.items():
            if name not in served and stored_due is not None:
                database.set_schedule_due(name, None)
        self._schedules_seen = _schedule_generations()
        self._work.did_work = True

    def _due_schedules(self, now: float) -> None:
        database = self._database
        for name, state in database.due_schedules(now):
            schedule = self._served_schedule(name)
            if schedule is None:
                database.set_schedule_due(name, None)
                continue
            running = schedules.previous_running(state, database.status_of)
            decision = schedules.decide_due(
                schedule, state, _dt(now), previous_in_progress=running, catching_up=self._catching_up
            )
            self._save_fires(schedule, decision)

    def _served_schedule(self, name: str) -> Schedule | None:
        try:
            return self.schedule_definition(name)
        except errors.ScheduleNotFound:
            return None

    def _save_fires(self, schedule: Schedule, decision: schedules.Decision) -> tuple[str, bool] | None:
        """Start what a schedule decision says and store its state, in the round's transaction; the last
        start's (execution id, already started)."""
        state, started = decision.state, None
        for start in decision.starts:
            definition, raw_input, execution_id = self.fire_start(start, self._work.moment)
            limit = core.timeout_limit(None, definition.timeout)
            started = self._create(
                definition, raw_input, execution_id, limit, Lineage.of(definition), self._work.moment
            )
            state = state.started(started[0])
        due = schedules.wake_at(schedule, state)
        self._database.save_schedule(schedule.name, state, due)
        self._note_due(_timestamp(due))
        self._work.did_work = True
        return started

    def _stored_schedule(self, name: str) -> ScheduleState:
        state = self._database.schedule_state(name)
        return ScheduleState.new(self._work.moment) if state is None else state

    async def list_schedules(self) -> list[ScheduleInfo]:
        def read(now: float) -> list[ScheduleInfo]:
            states = self._database.schedule_states()
            return [
                schedules.schedule_info(schedule, states.get(schedule.name) or ScheduleState.new(self._work.moment))
                for schedule in self.served_schedules()
            ]

        # in a round, after the schedules defined since the last one are stored
        return await self._submit(read, read_only=True)  # type: ignore[no-any-return]

    async def pause_schedule(self, name: str) -> None:
        schedule = self.schedule_definition(name)

        def apply(now: float) -> None:
            state = schedules.pause(self._stored_schedule(name))
            self._save_fires(schedule, schedules.store_only(state))

        await self._submit(apply)

    async def resume_schedule(self, name: str) -> None:
        schedule = self.schedule_definition(name)

        def apply(now: float) -> None:
            state = schedules.resume(self._stored_schedule(name), self._work.moment)
            self._save_fires(schedule, schedules.store_only(state))

        await self._submit(apply)

    async def trigger_schedule(self, name: str) -> ExecutionHandle:
        schedule = self.schedule_definition(name)

        def apply(now: float) -> tuple[str, bool] | None:
            return self._save_fires(
                schedule, schedules.decide_trigger(schedule, self._stored_schedule(name), self._work.moment)
            )

        started = await self._submit(apply)
        execution_id, already = started
        return ExecutionHandle(execution_id, schedule.workflow, runtime=self, already_running=already)

    # ------------------------------------------------------------------------------ the client protocol

    def _execution(self, execution_id: str) -> Execution:
        execution = self._database.execution(execution_id)
        if execution is None:
            raise core.not_found(execution_id)
        return execution

    async def start_execution(
        self, workflow: Any, input: Any = None, name: str | None = None, timeout: Any = None
    ) -> ExecutionHandle:
        definition, raw_input = self.start_definition(workflow, input)
        wanted = core.execution_id_for(definition.name, name, self.current_time())
        limit = core.timeout_limit(timeout, definition.timeout)
        lineage = Lineage.of(definition)
        execution_id, already = await self._submit(
            lambda now: self._create(definition, raw_input, wanted, limit, lineage, self._work.moment)
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
        found = self._database.executions(workflow, statuses, offset, max_results + 1, descending=sort == "desc")
        more = len(found) > max_results
        return ExecutionPage(
            executions=found[:max_results],
            next_token=str(offset + max_results) if more else None,
        )

    async def get_execution_history(self, id: str) -> list[HistoryEvent]:
        self._execution(id)
        return self._database.history(id)

    async def get_execution_logs(self, id: str) -> list[LogEntry]:
        self._execution(id)
        return self._database.logs(id)

    async def send_signal(self, execution: Any, signal: Any, payload: Any = None, id: str | None = None) -> None:
        execution_id = execution_id_of(execution)
        name = signal_name_of(signal)
        encoded = encode_payload(signal, payload, self.served_services())

        def apply(now: float) -> None:
            status = self._database.status_of(execution_id)
            self._deliver(
                execution_id, core.signal_received(execution_id, status, name, encoded, id, self._work.moment)
            )

        await self._submit(apply)

    async def publish_events(self, *events: Any) -> None:
        items = [(envelope(event), source_of(event)) for event in events]

        def apply(now: float) -> None:
            for item, source in items:
                self._publish([item], source, now)

        await self._submit(apply)

    async def cancel_execution(self, id: str) -> None:
        def apply(now: float) -> None:
            self._enqueue(id, core.cancel_requested(id, self._database.status_of(id), self._work.moment))

        await self._submit(apply)

    async def send_activity_success(self, token: str, result: Any = None) -> None:
        row = self._pending(token)
        encoded = token_result(self.activity_definition(row.name), row.name, result)
        await self._complete_by_token(token, row, core.succeeded(encoded))

    async def send_activity_failure(self, token: str, error: str, message: str | None = None) -> None:
        await self._complete_by_token(token, self._pending(token), core.failed_named(error, message))

    async def _complete_by_token(self, token: str, row: ActivityRow, outcome: AttemptOutcome) -> None:
        def apply(now: float) -> None:
            self._pending(token)  # still pending when the round applies it
            self._settle_attempt(_Attempt(row.execution_id, row.seq, row.attempt, outcome, row.name), now)

        await self._submit(apply)

    async def send_activity_heartbeat(self, token: str) -> HeartbeatResponse:
        assert self._signer is not None
        execution_id, seq, attempt = self._signer.verify(token)
        return await self._heartbeat(execution_id, seq, attempt, None)

    async def list_dead_letters(self) -> list[DeadLetter]:
        return self._database.dead_letters()

    async def list_events(
        self, max_results: int = 100, source: str | None = None, name: str | None = None
    ) -> list[PublishedEvent]:
        """The newest events on the bus (every runtime's), newest first."""
        check_max_results(max_results)
        link = self._link
        if link is None:
            if self._scheduler is None:
                raise errors.EventualError("the LocalRuntime is not running: use `async with ev.LocalRuntime(...):`")
            raise errors.EventualError("this LocalRuntime has no event bus (it was started with bus=False)")
        entries = await self._read(lambda _database: link.bus.recent(max_results, source, name))
        return [
            PublishedEvent(name=entry.name, source=entry.source, time=_dt(entry.time), event=entry.envelope()["event"])
            for entry in entries
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
