"""The AWS runtime's workers: activity attempts, subscription deliveries, timers and the schedule forwarder.

Each is what one Lambda function of the stack calls (the generated `handlers.py` builds them once per
container), and each speaks only the wire format of `clients.py`:

* `ActivityWorker.handle_batch` — the activity queue (standard). One message is one attempt
  `{"execution_id", "seq", "attempt", "name", "input", "options"}`, plus two optional fields only this
  worker writes: `not_before` (ISO 8601: a retry whose backoff is longer than SQS's 900 s hops through
  the queue until then) and `heartbeat_details` (the last attempt's details, given to the next one).
* `SubscriptionWorker.handle_batch` — the subscription queues, one per subscription, fed by the bus's
  rules with EventBridge envelopes.
* `timer_handler(clients)` — the timer queue: forwards a due timer's event to the workflow queue, or
  sends it back for the rest of its wait.
* `schedule_forwarder(clients, keeper)` — the target of the Scheduler's `at()` schedules (timers further
  away than 900 s): puts the timer body back on the timer queue, which relays it when due; and of the
  recurring schedules of `@ev.schedule`: starts the fire's execution (`schedules.ScheduleKeeper`).

Whether the execution still runs is read before an attempt starts (eventually consistent: a best-effort
check, since the execution may end right after it), except for the first delivery of a first attempt sent
less than `FRESH_SECONDS` ago: the turn that sent it committed a moment before, and the check would cost
a read and its latency on every step to narrow a window of milliseconds. Retries, redeliveries and
attempts that waited in the queue are checked.

Activity attempts: one runner at a time, never lost
-----------------------------------------------------
SQS delivers at least once, so the worker first takes the attempt's claim row
(`ExecutionStore.claim`); a duplicate delivery finds it taken and is acknowledged without running. The
claim carries a lease — the invocation's remaining time (Lambda stops it then) — so a container that dies
between the claim and sending the outcome does not lose the attempt: its message comes back after the
activity queue's visibility timeout (never shorter than the function's timeout), finds the lease run out
and the attempt unsettled, and runs it again. Activities are therefore at least once, as on the local
runtime; the workflow records one outcome per step (a second outcome for a settled step is ignored).

Timeouts: the attempt runs inside the Lambda invocation. Its `timeout` (and the function's own time
limit, less a safety margin, whichever is sooner) is enforced here with a watchdog, and so is the
`heartbeat_timeout` (each heartbeat moves its deadline). An attempt that runs out of time is a failed
attempt of kind timeout: retried per the activity's `RetryPolicy`, then reported as `ActivityTimedOut`
(or `ActivityHeartbeatTimedOut`). A plain `def` activity's thread cannot be stopped; it is abandoned
(and frozen with the container between invocations).

Activity tokens are HMAC-signed with `EVENTUAL_SIGNING_KEY` (the same variable the local runtime reads):
the deploy must set it — the same secret on every function that signs or verifies tokens (the activity
worker and the API). It is only needed by activities that ask for their token; without it, asking raises.

Completion by token (`return ev.async_result(callback)`)
--------------------------------------------------------
The claim row keeps the attempt's activity message (its retry policy; what a retry re-sends) from the
moment it is claimed, and records when it waits (`waiting`); then the callback gets the token.
`AwsRuntime.send_activity_success/failure` verify the token, settle the row with ONE conditional update
(`settled`, so exactly one completion wins, even against the worker of a still-running attempt whose token
was handed out), and send the outcome like the worker would (`report_outcome`, the execution core's
`retry_or_settle`: ActivitySucceeded, the next attempt after a failure the retry policy retries — also
for a failure reported while the attempt still runs — or ActivityFailed). A heartbeat by token stamps the row and answers `cancelled` once the attempt was settled
or its execution ended. An attempt whose token was handed out settles its own outcome the same way, so a
token used while it ran wins over the value it returns afterwards (as on the LocalRuntime).

The `timeout` and `heartbeat_timeout` of a waiting attempt are watched through the activity queue: the
worker sends a *check* message `{"check": true, "execution_id", "seq", "attempt", "name"}` delayed until the
nearer deadline (the attempt's start + `timeout`; the last heartbeat + `heartbeat_timeout`, where the
moment the attempt began to wait counts as a heartbeat). A check that finds the attempt still waiting
past a deadline settles it as timed out (conditionally, like a completion) and reports it like any
timed-out attempt (retried per the policy, else ActivityTimedOut / ActivityHeartbeatTimedOut); before the
deadline (a heartbeat moved it), it sends itself again for the rest. SQS delays are whole seconds, so
such a timeout is noticed up to a second late (and a check hops every 900 s for longer waits).

Every handler is synchronous (Lambda calls it directly); coroutines — async activities and async
subscription handlers — run on one event loop kept per worker (a warm container reuses it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import json
import logging
import math
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from eventual_nb import errors
from eventual_nb.activities import find_activity
from eventual_nb.engine.history import HistoryEvent, LogEntry
from eventual_nb.runtime import core
from eventual_nb.runtime.activity_runner import attempt_info, run_attempt, run_delivery
from eventual_nb.runtime.aws.clients import MAX_SQS_DELAY_SECONDS, AwsClients, event_to_dict, utc
from eventual_nb.runtime.aws.schedules import ScheduleKeeper, read_fire
from eventual_nb.runtime.aws.stores import DEFAULT_CLAIM_LEASE, ExecutionStore, HistoryStore
from eventual_nb.runtime.base import DeadLetter, ExecutionStatus, HeartbeatResponse, running_on
from eventual_nb.runtime.core import ActivityOptions, AttemptOutcome, Outcome, StartAttempt, limits, wire
from eventual_nb.runtime.tokens import SIGNING_KEY_VARIABLE, TokenSigner, environment_signing_key
from eventual_nb.serde import to_json
from eventual_nb.service import Service

LOGGER = logging.getLogger("eventual_nb.aws.workers")

#: stop an attempt this long before the Lambda's own limit, so its outcome can still be sent
LAMBDA_SAFETY_SECONDS = 10.0
#: a heartbeat asks DynamoDB whether the execution ended at most this often
HEARTBEAT_CHECK_SECONDS = 30.0
#: a first attempt delivered for the first time within this long of being sent runs without reading its
#: execution's status first (the turn that sent it committed a moment ago)
FRESH_SECONDS = 2.0
#: SQS's largest visibility timeout (12 h): the longest backoff a failed subscription delivery can get
MAX_VISIBILITY_SECONDS = 43_200
#: message attributes of a delivery the subscription worker dead-lettered (AwsRuntime.list_dead_letters reads them)
DEAD_LETTER_ERROR = "eventual_error"
DEAD_LETTER_MESSAGE = "eventual_message"
DEAD_LETTER_ATTEMPTS = "eventual_attempts"

Handler = Callable[[dict[str, Any], Any], "dict[str, Any] | None"]
T = TypeVar("T")


def _batch_failures(ids: Sequence[str]) -> dict[str, list[dict[str, str]]]:
    return {"batchItemFailures": [{"itemIdentifier": identifier} for identifier in ids]}


class SyncLoop:
    """One event loop per worker, reused across invocations (a warm container keeps it).

    If the caller's thread already runs a loop (an async test driving the handlers directly), the
    coroutine runs on this loop in a helper thread instead, since a loop cannot be nested."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._helper: concurrent.futures.ThreadPoolExecutor | None = None

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        loop = self._loop
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return loop.run_until_complete(coroutine)
        if self._helper is None:
            self._helper = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="eventual-worker-loop")
        return self._helper.submit(loop.run_until_complete, coroutine).result()


# ------------------------------------------------------------------------------------------ activities


@dataclass
class _Watch:
    """An attempt's deadlines (monotonic seconds) and what its heartbeats reported."""

    deadline: float | None
    deadline_is_lambda: bool
    heartbeat_timeout: float | None
    heartbeat_deadline: float | None
    details: Any = None
    has_details: bool = False
    last_check: float = 0.0
    ended: bool = False
    stopped: bool = False
    #: the attempt asked for its token: its outcome must be settled on the claim row (the token may win)
    token_issued: bool = False
    #: seconds kept before the Lambda's own limit (said in the timeout's message)
    safety: float = LAMBDA_SAFETY_SECONDS


@dataclass
class AttemptReport:
    """What the worker did with one activity message (for tests and logs)."""

    action: str  # "ran" | "duplicate" | "ended" | "unknown" | "deferred" | "waiting" | "settled"
    event: HistoryEvent | None = None
    retry_delay: int | None = None
    logs: list[LogEntry] = field(default_factory=list)


class ActivityWorker:
    """Runs activity attempts from the activity queue (the `activity` function; batch size 1 in the template).

    Missing (documented, not silently wrong): cancelling a running attempt beyond
    `HeartbeatResponse.cancelled` once the execution ended."""

    def __init__(
        self,
        stores: ExecutionStore | tuple[ExecutionStore, HistoryStore],
        clients: AwsClients,
        services: Sequence[Service],
        *,
        signing_key: bytes | None = None,
        environ: Mapping[str, str] | None = None,
        runtime: Any = None,
    ) -> None:
        """`runtime`: the runtime current while an activity runs (`StackFunctions` gives an `AwsRuntime` over
        the same clients), so its entities, starts and events reach this stack."""
        self.executions = stores[0] if isinstance(stores, tuple) else stores
        self.clients = clients
        self.services = list(services)
        self.runtime = runtime
        if signing_key is None:
            signing_key = environment_signing_key(environ)
        self._signer = TokenSigner(signing_key) if signing_key else None
        self._loop = SyncLoop()
        self.reports: list[AttemptReport] = []
        self.keep_reports = False

    def handle_batch(self, event: dict[str, Any], context: Any = None) -> dict[str, list[dict[str, str]]]:
        """An SQS batch of activity messages -> `{"batchItemFailures": [...]}`.

        A message fails (and is redelivered) only if the worker could not do its part *before* claiming
        the attempt — reading the record, deferring, the claim itself; after the claim, sending the
        outcome is retried by boto3 and an exception still fails the message (its redelivery then finds
        the claim and is dropped: see the class docstring)."""
        failed: list[str] = []
        for record in event.get("Records") or []:
            try:
                message = json.loads(record["body"])
                if not isinstance(message, dict):
                    raise ValueError("an activity message must be a JSON object")
                report = self.handle_message(message, context, fresh=_fresh(record, message))
                if self.keep_reports:
                    self.reports.append(report)
            except Exception:  # one bad message must not fail the others
                LOGGER.exception("activity message %s failed", record.get("messageId"))
                failed.append(str(record["messageId"]))
        return _batch_failures(failed)

    def handle_message(self, message: dict[str, Any], context: Any = None, *, fresh: bool = False) -> AttemptReport:
        """Run (or check, defer, drop) one attempt. `fresh`: the first delivery of a first attempt sent a moment
        ago (`FRESH_SECONDS`), whose execution is not read first (see the module docstring)."""
        execution_id, seq, attempt = str(message["execution_id"]), int(message["seq"]), int(message["attempt"])
        if message.get("check"):
            return self._check_waiting(execution_id, seq, attempt)
        now = utc(self.clients.clock())
        not_before = message.get("not_before")
        if not_before and utc(datetime.fromisoformat(str(not_before))) > now:
            delay = _delay(utc(datetime.fromisoformat(str(not_before))), now)
            self.clients.activity_queue.send(message, delay_seconds=delay)
            return AttemptReport("deferred", retry_delay=delay)
        if not fresh:
            # a best-effort check (the execution may end right after it): eventually consistent, at half the cost
            status = self.executions.status(execution_id, consistent=False) or self.executions.status(execution_id)
            if status is None:
                LOGGER.warning("dropping activity %s of unknown execution %s", seq, execution_id)
                return AttemptReport("unknown")
            if status != ExecutionStatus.IN_PROGRESS:
                return AttemptReport("ended")
        start = wire.attempt_from_message(message)
        # the claim keeps the attempt (its retry policy): a completion by token while it runs decides with it
        if not self.executions.claim(execution_id, seq, attempt, _claim_lease(context), message=message):
            return AttemptReport("duplicate")
        outcome, watch, logs = self._loop.run(running_on(self.runtime, self._attempt(start, context)))
        _write_logs(self.clients, execution_id, logs)
        if outcome.kind is Outcome.WAITING:
            report = self._wait_for_token(start, outcome, now)
        elif (
            watch.token_issued and self.executions.settle_claim(execution_id, seq, attempt, outcome.kind.value) is None
        ):
            report = AttemptReport("settled")  # its token was used while it ran: that completion won
        else:
            report = report_outcome(self.clients, start, outcome, watch.details if watch.has_details else _NO_DETAILS)
        report.logs = logs
        return report

    def _wait_for_token(self, start: StartAttempt, outcome: AttemptOutcome, started: datetime) -> AttemptReport:
        """Record on the claim row that the attempt waits for its token (and watch its deadlines), then hand
        the token to the callback."""
        execution_id, seq, attempt = start.execution_id, start.seq, start.attempt
        try:
            token = self._token(execution_id, seq, attempt)
        except errors.EventualError as exc:
            if self.executions.settle_claim(execution_id, seq, attempt, Outcome.FAILED.value) is None:
                return AttemptReport("settled")
            return report_outcome(self.clients, start, core.failed(exc, retryable=False))
        now = utc(self.clients.clock())
        deadlines = core.heartbeat_at(core.attempt_deadlines(start.options, started), start.options, now)
        message = wire.attempt_message(start)
        if not self.executions.wait_for_token(execution_id, seq, attempt, message, now, deadlines.deadline):
            return AttemptReport("settled")  # its token was used while it ran
        decision = core.retry_or_settle(
            outcome, name=start.name, seq=seq, attempt=attempt, now=now, policy=start.options.retry
        )
        assert isinstance(decision, core.AwaitToken)
        _note(self.clients, start, decision.note, now)
        if deadlines.next is not None:
            self._send_check(start, deadlines.next, now)
        assert outcome.callback is not None
        try:
            value = outcome.callback(token)
            if inspect.isawaitable(value):
                self._loop.run(_awaited(value))
        except Exception:  # the attempt stays waiting, as on the LocalRuntime; the function's log has why
            LOGGER.exception("the async_result callback of activity %s of %s failed", seq, execution_id)
        return AttemptReport("waiting")

    def _send_check(self, start: StartAttempt, due: datetime, now: datetime) -> None:
        check = {
            "check": True,
            "execution_id": start.execution_id,
            "seq": start.seq,
            "attempt": start.attempt,
            "name": start.name,
        }
        self.clients.activity_queue.send(check, delay_seconds=max(1, _delay(due, now)))

    def _check_waiting(self, execution_id: str, seq: int, attempt: int) -> AttemptReport:
        """A waiting attempt's deadline may have passed: settle it as timed out, or look again later."""
        row = self.executions.pending_claim(execution_id, seq, attempt)
        if row is None or "waiting" not in row:
            return AttemptReport("settled")
        try:
            if self.executions.get(execution_id).status != ExecutionStatus.IN_PROGRESS:
                return AttemptReport("ended")
        except errors.ExecutionNotFound:
            return AttemptReport("unknown")
        start = wire.attempt_from_message(row["message"])
        deadlines = core.Deadlines(utc(datetime.fromisoformat(row["deadline"])) if "deadline" in row else None)
        if "last_heartbeat" in row:
            last = utc(datetime.fromisoformat(row["last_heartbeat"]))
            deadlines = core.heartbeat_at(deadlines, start.options, last)
        now = utc(self.clients.clock())
        missed = core.missed_deadline(deadlines.deadline, deadlines.heartbeat, now)
        if missed is None:
            if deadlines.next is not None:
                self._send_check(start, deadlines.next, now)
            return AttemptReport("waiting")
        if self.executions.settle_claim(execution_id, seq, attempt, missed.value) is None:
            return AttemptReport("settled")
        return report_outcome(self.clients, start, core.expired(missed, attempt, start.options))

    # ------------------------------------------------------------------------------------ running

    def _token(self, execution_id: str, seq: int, attempt: int) -> str:
        if self._signer is None:
            raise errors.EventualError(
                f"this activity asked for its token, but {SIGNING_KEY_VARIABLE} is not set on the activity "
                "function: the deploy must give it (and the API) the same secret of at least 16 bytes"
            )
        return self._signer.sign(execution_id, seq, attempt)

    async def _attempt(self, start: StartAttempt, context: Any) -> tuple[AttemptOutcome, _Watch, list[LogEntry]]:
        """Run the attempt under its watchdog; returns (outcome, watch, log lines)."""
        execution_id, seq, attempt, name = start.execution_id, start.seq, start.attempt, start.name
        loop = asyncio.get_running_loop()
        watch = watch_attempt(start.options, loop.time(), lambda_seconds_left(context))
        logs: list[LogEntry] = []

        def token() -> str:
            watch.token_issued = True
            return self._token(execution_id, seq, attempt)

        def log_line(line: str) -> None:
            logs.append(LogEntry(time=utc(self.clients.clock()), message=line, source=name))

        async def heartbeat(details: Any) -> HeartbeatResponse:
            if details is not None:
                watch.details = to_json(details, what="heartbeat details")
                watch.has_details = True
            if watch.heartbeat_timeout is not None:
                watch.heartbeat_deadline = loop.time() + watch.heartbeat_timeout
            if not watch.ended and time.monotonic() - watch.last_check >= HEARTBEAT_CHECK_SECONDS:
                watch.last_check = time.monotonic()
                watch.ended = await asyncio.to_thread(self._ended, execution_id)
            return HeartbeatResponse(cancelled=watch.ended or watch.stopped)

        definition = find_activity(name, self.services)
        if definition is None:
            return core.not_served(name, "worker"), watch, logs
        info = attempt_info(execution_id, name, seq, attempt, token, start.heartbeat_details)
        task = asyncio.ensure_future(run_attempt(definition, start.input, info, heartbeat, log_line))
        return await watched(task, watch, start, "activity"), watch, logs

    def _ended(self, execution_id: str) -> bool:
        try:
            return self.executions.get(execution_id).status != ExecutionStatus.IN_PROGRESS
        except errors.ExecutionNotFound:
            return True


#: why an attempt stopped by the Lambda's own time limit timed out
_LAMBDA_LIMIT = (
    "attempt {attempt} ran out of the {function} function's time limit (stopped {safety:g}s before it, to "
    "report the timeout)"
)


async def watched(
    task: asyncio.Future[AttemptOutcome], watch: _Watch, start: StartAttempt, function: str
) -> AttemptOutcome:
    """Wait for a running attempt under its watchdog (`watch`'s deadlines: its timeout or the invocation's end,
    and its heartbeat timeout); an attempt past a deadline is stopped and expires (`core.expired`). `function`
    names the Lambda function whose time limit the attempt may run out of ("activity", "orchestrator")."""
    loop = asyncio.get_running_loop()
    while True:
        waits = [d - loop.time() for d in (watch.deadline, watch.heartbeat_deadline) if d is not None]
        done, _ = await asyncio.wait({task}, timeout=max(0.0, min(waits)) if waits else None)
        if done:
            try:
                return task.result()
            except Exception as exc:  # noqa: BLE001 - the runner reports user failures; this is a last resort
                return core.failed(exc)
        missed = core.missed_deadline(watch.deadline, watch.heartbeat_deadline, loop.time())
        if missed is not None:
            watch.stopped = True
            task.cancel()  # a plain `def` keeps running in its thread: it cannot be stopped, only abandoned
            await asyncio.wait({task}, timeout=1.0)
            reason = None
            if missed is Outcome.TIMED_OUT and watch.deadline_is_lambda:
                reason = _LAMBDA_LIMIT.format(attempt=start.attempt, function=function, safety=watch.safety)
            return core.expired(missed, start.attempt, start.options, message=reason)


def watch_attempt(
    options: ActivityOptions, start: float, lambda_limit: float | None, safety: float = LAMBDA_SAFETY_SECONDS
) -> _Watch:
    """The deadlines of an attempt starting at `start` (loop seconds): its timeout or, sooner, the Lambda's."""
    timeout, heartbeat_timeout = options.timeout, options.heartbeat_timeout
    deadline = None if timeout is None else start + timeout.total_seconds()
    deadline_is_lambda = False
    if lambda_limit is not None and (deadline is None or start + lambda_limit < deadline):
        deadline, deadline_is_lambda = start + lambda_limit, True
    heartbeat = None if heartbeat_timeout is None else heartbeat_timeout.total_seconds()
    return _Watch(
        deadline=deadline,
        deadline_is_lambda=deadline_is_lambda,
        heartbeat_timeout=heartbeat,
        heartbeat_deadline=None if heartbeat is None else start + heartbeat,
        last_check=time.monotonic(),
        safety=safety,
    )


#: `report_outcome`'s marker for "the attempt reported no heartbeat details"
_NO_DETAILS: Any = object()


def _note(clients: AwsClients, start: StartAttempt, note: str, now: datetime) -> None:
    """Log the core's note of an attempt that did not end its call (its source: the activity's name)."""
    _write_logs(clients, start.execution_id, [LogEntry(time=now, message=note, source=start.name)])


def _write_logs(clients: AwsClients, execution_id: str, logs: list[LogEntry]) -> None:
    """Best effort: losing an attempt's output (or a note) is better than losing its outcome (already claimed
    or sent)."""
    if not logs:
        return
    try:
        clients.write_logs(execution_id, logs)
    except Exception:
        LOGGER.exception("could not write %d log lines of execution %s", len(logs), execution_id)


def report_outcome(
    clients: AwsClients, start: StartAttempt, outcome: AttemptOutcome, details: Any = _NO_DETAILS
) -> AttemptReport:
    """Send what a settled attempt's outcome means (`core.retry_or_settle`): the event that settles the call,
    or the next attempt's message after its backoff (`details`: heartbeat details the attempt reported, for
    the next one). Shared by the worker and by completion by token (`AwsRuntime`)."""
    now = utc(clients.clock())
    outcome = limits.fitting_result(outcome, start.name, start.seq, start.execution_id)
    decision = core.retry_or_settle(
        outcome, name=start.name, seq=start.seq, attempt=start.attempt, now=now, policy=start.options.retry
    )
    match decision:
        case core.Settle(event=event):
            clients.send_workflow_event(start.execution_id, event_to_dict(event))
            return AttemptReport("ran", event=event)
        case core.RetryAt(due=due, attempt=following, note=note):
            kept = start.heartbeat_details if details is _NO_DETAILS else details
            message = wire.attempt_message(replace(start, attempt=following, heartbeat_details=kept))
            backoff = (due - now).total_seconds()
            if backoff > MAX_SQS_DELAY_SECONDS:  # hops through the queue until then
                message["not_before"] = due.isoformat()
            delay = min(MAX_SQS_DELAY_SECONDS, math.ceil(backoff))
            clients.activity_queue.send(message, delay_seconds=delay)
            _note(clients, start, note, now)  # the retry is on its way: the note comes second
            return AttemptReport("ran", retry_delay=delay)
    raise errors.EventualError(f"activity {start.seq} of '{start.execution_id}' waits for its token: nothing to report")


def _fresh(record: Mapping[str, Any], message: Mapping[str, Any]) -> bool:
    """Whether an activity record is the first delivery of a first attempt, sent less than `FRESH_SECONDS` ago
    (SQS's `SentTimestamp` against this machine's clock; both are NTP time on AWS)."""
    attributes = record.get("attributes") or {}
    try:
        sent = int(attributes["SentTimestamp"]) / 1000
        received = int(attributes["ApproximateReceiveCount"])
    except (KeyError, TypeError, ValueError):
        return False
    return message.get("attempt") == 1 and received == 1 and 0 <= time.time() - sent < FRESH_SECONDS


def _delay(until: datetime, now: datetime) -> int:
    return max(0, min(MAX_SQS_DELAY_SECONDS, math.ceil((until - now).total_seconds())))


def _claim_lease(context: Any) -> timedelta:
    """How long this invocation can still run: the claim's lease (Lambda's longest timeout without a context)."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if remaining is None:
        return DEFAULT_CLAIM_LEASE
    return timedelta(milliseconds=max(0, remaining()))


def lambda_seconds_left(context: Any, safety: float = LAMBDA_SAFETY_SECONDS) -> float | None:
    """Seconds an attempt may use before the Lambda's limit, less `safety` (kept to report or commit what it
    returned), if running in Lambda (None outside it: no bound but the attempt's own)."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if remaining is None:
        return None
    seconds: float = remaining() / 1000  # Lambda's context answers in milliseconds (an int)
    return max(0.0, seconds - safety)


# ------------------------------------------------------------------------------------------- timers


def timer_handler(clients: AwsClients) -> Handler:
    """The timer function: forward each due timer's event to the workflow queue, re-queue the others."""

    def handle(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
        failed: list[str] = []
        for record in event.get("Records") or []:
            try:
                body = json.loads(record["body"])
                clients.timers.relay(body, clients.workflow_queue, clients.clock())
            except Exception:  # redelivered; relaying twice is harmless (the orchestrator de-duplicates)
                LOGGER.exception("timer message %s failed", record.get("messageId"))
                failed.append(str(record["messageId"]))
        return _batch_failures(failed)

    return handle


def schedule_forwarder(clients: AwsClients, keeper: ScheduleKeeper | None = None) -> Handler:
    """The Scheduler's target, for two kinds of schedules:

    * a long timer's one-time `at()` schedule: the event is the timer body; it goes back to the timer
      queue, which relays it. Why not relay directly: one path (the timer function) decides "due or not",
      so the Scheduler's whole-second `at()` rounding and its clock can never forward a timer early;
    * a `@ev.schedule`'s recurring schedule: the event names the schedule and the fire's scheduled time
      (`schedules.read_fire`); `keeper` starts its execution as the execution core decides (a repeated
      delivery starts nothing new). An exception makes Scheduler retry the delivery."""

    def handle(event: dict[str, Any], context: Any = None) -> None:
        body = json.loads(event) if isinstance(event, str) else event
        fire = read_fire(body)
        if fire is not None:
            if keeper is None:
                raise errors.EventualError(f"the schedule forwarder got a fire of {fire[0]!r} but serves no schedules")
            keeper.deliver(*fire)
            return
        if (
            not isinstance(body, dict)
            or not {"execution_id", "due"} <= set(body)
            or not {"event", "attempt"} & set(body)
        ):
            raise errors.EventualError(f"the schedule forwarder got {body!r}, not a timer body nor a schedule fire")
        clients.timers.requeue(body, clients.clock())

    return handle


# ------------------------------------------------------------------------------------ subscriptions


class SubscriptionWorker:
    """Delivers bus events to subscription handlers (the `subscription` function).

    The queue tells which subscription a record is for (`EVENTUAL_SUBSCRIPTION_QUEUES`: queue ARN →
    name). A failed handler call is reported in `batchItemFailures`; the queue's redrive policy
    (maxReceiveCount = the subscription's `max_attempts`) retries it and then dead-letters it. Before
    reporting a failure, the worker sets the message's visibility to the subscription's backoff
    (`RetryPolicy.delay_after(receive count)`), so retries wait as they do locally.

    The last failed attempt (the receive count reached `max_attempts`, or a `non_retryable` error) is
    dead-lettered by the worker itself: it sends the envelope to the queue's dead-letter queue with the
    error's type, message and the attempts as message attributes (SQS's own redrive keeps no reason),
    then acknowledges the delivery. The redrive policy stays as the safety net for a worker that dies
    mid-delivery. Not done: handler output goes to the function's own log, not to an execution log."""

    def __init__(self, clients: AwsClients, services: Sequence[Service], *, runtime: Any = None) -> None:
        """`runtime`: the runtime current while a handler runs (as for `ActivityWorker`)."""
        self.clients = clients
        self.services = list(services)
        self.runtime = runtime
        self._loop = SyncLoop()
        self._dead_letter_urls: dict[str, str | None] = {}

    def handle_batch(self, event: dict[str, Any], context: Any = None) -> dict[str, list[dict[str, str]]]:
        failed: list[str] = []
        for record in event.get("Records") or []:
            try:
                self.deliver(record)
            except Exception as exc:
                LOGGER.exception("subscription delivery %s failed", record.get("messageId"))
                decision = self._after_failure(record, exc)
                if isinstance(decision, DeadLetter) and self._dead_letter(record, decision):
                    continue
                failed.append(str(record["messageId"]))
                if isinstance(decision, core.RetryDeliveryAt):
                    self._back_off(record, decision)
        return _batch_failures(failed)

    def _after_failure(
        self, record: Mapping[str, Any], error: BaseException
    ) -> core.RetryDeliveryAt | DeadLetter | None:
        """What the core decides about a failed delivery (its attempt: the receive count); None when the
        subscription is unknown here (the queue's redrive policy decides then)."""
        try:
            subscription = self.subscription_for(str(record.get("eventSourceARN", "")))
            received = int((record.get("attributes") or {}).get("ApproximateReceiveCount", "1"))
            envelope = json.loads(record["body"])
            item = {"name": envelope.get("detail-type"), "event": envelope.get("detail")}
        except Exception:
            LOGGER.exception("cannot decide about failed delivery %s", record.get("messageId"))
            return None
        now = utc(self.clients.clock())
        return core.after_delivery(subscription.name, subscription.retry, item, received, error, now)

    def _dead_letter(self, record: Mapping[str, Any], letter: DeadLetter) -> bool:
        """Move a delivery whose last attempt failed to the dead-letter queue, with its error; True if moved.

        False when the move itself failed (the redrive policy then dead-letters it, without the reason)."""
        try:
            url = self._dead_letter_url(str(record["eventSourceARN"]))
            if url is None:
                return False
            attributes = {
                DEAD_LETTER_ERROR: letter.error,
                DEAD_LETTER_MESSAGE: letter.message,
                DEAD_LETTER_ATTEMPTS: str(letter.attempts),
            }
            self.clients.client("sqs").send_message(
                QueueUrl=url,
                MessageBody=record["body"],
                MessageAttributes={
                    name: {"DataType": "Number" if name == DEAD_LETTER_ATTEMPTS else "String", "StringValue": value}
                    for name, value in attributes.items()
                    if value  # SQS refuses empty attribute values
                },
            )
        except Exception:
            LOGGER.exception("could not dead-letter delivery %s", record.get("messageId"))
            return False
        return True

    def _dead_letter_url(self, queue_arn: str) -> str | None:
        """The dead-letter queue of a subscription queue, from its redrive policy (looked up once)."""
        if queue_arn not in self._dead_letter_urls:
            sqs = self.clients.client("sqs")
            url = sqs.get_queue_url(QueueName=queue_arn.rsplit(":", 1)[-1])["QueueUrl"]
            policy = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])["Attributes"].get(
                "RedrivePolicy"
            )
            target = json.loads(policy).get("deadLetterTargetArn") if policy else None
            self._dead_letter_urls[queue_arn] = (
                sqs.get_queue_url(QueueName=str(target).rsplit(":", 1)[-1])["QueueUrl"] if target else None
            )
        return self._dead_letter_urls[queue_arn]

    def subscription_for(self, queue_arn: str) -> Any:
        name = self.clients.settings.subscription_queues.get(queue_arn)
        if name is None:
            raise errors.EventualError(f"no subscription is mapped to queue {queue_arn} (EVENTUAL_SUBSCRIPTION_QUEUES)")
        for service in self.services:
            found = service.subscriptions.get(name)
            if found is not None:
                return found
        raise errors.EventualError(f"no subscription named '{name}' is served by this worker")

    def deliver(self, record: Mapping[str, Any]) -> None:
        subscription = self.subscription_for(str(record.get("eventSourceARN", "")))
        envelope = json.loads(record["body"])
        item = {"name": str(envelope["detail-type"]), "event": envelope["detail"]}
        error = self._loop.run(running_on(self.runtime, run_delivery(subscription, item, None)))
        if error is not None:
            raise error

    def _back_off(self, record: Mapping[str, Any], retry: core.RetryDeliveryAt) -> None:
        """Make a failed delivery wait its subscription's backoff before SQS offers it again (best effort)."""
        try:
            wait = (retry.due - utc(self.clients.clock())).total_seconds()
            seconds = max(0, min(MAX_VISIBILITY_SECONDS, math.ceil(wait)))
            url = self.clients.client("sqs").get_queue_url(QueueName=str(record["eventSourceARN"]).rsplit(":", 1)[-1])
            self.clients.client("sqs").change_message_visibility(
                QueueUrl=url["QueueUrl"], ReceiptHandle=record["receiptHandle"], VisibilityTimeout=seconds
            )
        except Exception:  # the default visibility timeout applies instead
            LOGGER.exception("could not set the backoff of delivery %s", record.get("messageId"))


async def _awaited(value: Any) -> Any:
    return await value
