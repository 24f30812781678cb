"""Inline activities on AWS: attempts the orchestrator runs inside its own invocation.

An activity defined with `inline=True` never goes to the activity queue. The orchestrator carries out
its `StartAttempt` (an action of a committed turn, like any other) by running the attempt itself, right
after the commit and the turn's other actions, and feeds what the attempt means (`core.retry_or_settle`)
back into the execution:

* a settled call (`ActivitySucceeded`/`ActivityFailed`/`ActivityTimedOut`) is the next turn's input, in
  the same invocation: sequential inline steps of one execution continue without a queue round trip,
  one committed turn per step;
* a retry waits out its backoff as a timer (the timer queue, or the Scheduler beyond 15 minutes) whose
  body is the next attempt's message; the timer function relays it to the workflow queue as an
  `attempt` message, and the orchestrator runs it then;
* an attempt the invocation has no time left for (its timeout, or `MAX_INLINE_TIMEOUT` without one, does
  not fit in what remains before the orchestrator's limit, less `INLINE_SAFETY`) is handed to a fresh
  invocation: the same `attempt` message, sent at once, marked `handed_off` (a handed-off attempt is run
  whatever time is left, bounded by it, so a function deployed with a shorter limit cannot loop).

Each attempt runs under the same watchdog as on the activity function (`workers.watched`), its deadline
the sooner of its timeout and the invocation's end. Its idempotency key (`activity_info()`) is the same
as a queued activity's, and the rule is the same: at least once. No claim row is written: an attempt is
run again only if the orchestrator dies before the turn recording its result commits (its message comes
back, and the cold turn re-runs the last turn's pending actions). An inline activity can neither
heartbeat nor complete by token (both refused at decoration; refused here too, in case the check was
bypassed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, Protocol

from eventual_nb import errors
from eventual_nb.activities import find_activity
from eventual_nb.engine.history import HistoryEvent, LogEntry
from eventual_nb.runtime import core
from eventual_nb.runtime.activity_runner import attempt_info, run_attempt
from eventual_nb.runtime.aws.clients import utc
from eventual_nb.runtime.aws.workers import SyncLoop, lambda_seconds_left, watch_attempt, watched
from eventual_nb.runtime.base import HeartbeatResponse, running_on
from eventual_nb.runtime.core import AttemptOutcome, Outcome, StartAttempt, wire
from eventual_nb.runtime.core.limits import INLINE_SAFETY, MAX_INLINE_TIMEOUT
from eventual_nb.service import Service

LOGGER = logging.getLogger("eventual_nb.aws.inline")


class InlineDispatch(Protocol):
    """What running inline attempts sends (the orchestrator's `Dispatch` has it)."""

    def send_attempt(self, execution_id: str, attempt: dict[str, Any]) -> None: ...

    def schedule_attempt(self, execution_id: str, key: str, due: datetime, attempt: dict[str, Any]) -> None: ...

    def write_logs(self, execution_id: str, entries: list[LogEntry]) -> None: ...


#: the field of an attempt message handed to a fresh invocation
HANDED_OFF = "handed_off"


def retry_key(seq: int, attempt: int) -> str:
    """The timer key of an inline attempt's retry (the Scheduler's name for a long backoff: idempotent)."""
    return f"attempt-{seq}-{attempt}"


def _no_token() -> str:
    raise errors.EventualError(
        "an inline activity cannot be completed by token: it runs inside the orchestrator's invocation "
        "(make it a queued activity, without inline=True)"
    )


async def _no_heartbeat(details: Any) -> HeartbeatResponse:
    raise errors.EventualError(
        "an inline activity cannot heartbeat: it runs inside the orchestrator's invocation "
        "(make it a queued activity, without inline=True)"
    )


class InlineRunner:
    """Runs the inline attempts of one orchestrator (one per container, like its executor cache)."""

    def __init__(
        self,
        services: Sequence[Service],
        dispatch: InlineDispatch,
        clock: Callable[[], datetime],
        *,
        runtime: Any = None,
    ) -> None:
        """`runtime`: the runtime current while an attempt runs (entities, starts and events from the activity)."""
        self.services = list(services)
        self.runtime = runtime
        self.dispatch = dispatch
        self.clock = clock
        self._loop = SyncLoop()
        #: attempts run, and attempts handed to a fresh invocation (counters for tests and benchmarks)
        self.ran = 0
        self.handed_off = 0

    def is_inline(self, start: StartAttempt) -> bool:
        definition = find_activity(start.name, self.services)
        return definition is not None and definition.inline

    def run(
        self, starts: Sequence[StartAttempt], context: Any, handed_off: Collection[StartAttempt] = ()
    ) -> list[HistoryEvent]:
        """Run `starts` (concurrently, when one turn started several) within the invocation's time; returns
        the events that settle their calls, in order, for the execution's next turn. `handed_off`: those a
        previous invocation handed to this one (run now, whatever time is left)."""
        left = lambda_seconds_left(context, INLINE_SAFETY.total_seconds())
        runnable: list[StartAttempt] = []
        for start in starts:
            needed = (start.options.timeout or MAX_INLINE_TIMEOUT).total_seconds()
            if left is not None and left < needed and start not in handed_off:
                self.dispatch.send_attempt(start.execution_id, {**wire.attempt_message(start), HANDED_OFF: True})
                self.handed_off += 1
            else:
                runnable.append(start)
        if not runnable:
            return []
        outcomes = self._loop.run(running_on(self.runtime, self._attempts(runnable, left)))
        self.ran += len(runnable)
        settled: list[HistoryEvent] = []
        for start, (outcome, logs) in zip(runnable, outcomes, strict=True):
            if logs:
                self.dispatch.write_logs(start.execution_id, logs)
            event = self._decide(start, outcome)
            if event is not None:
                settled.append(event)
        return settled

    async def _attempts(
        self, starts: Sequence[StartAttempt], left: float | None
    ) -> list[tuple[AttemptOutcome, list[LogEntry]]]:
        return list(await asyncio.gather(*(self._attempt(start, left) for start in starts)))

    async def _attempt(self, start: StartAttempt, left: float | None) -> tuple[AttemptOutcome, list[LogEntry]]:
        """One attempt under its watchdog: its timeout (`MAX_INLINE_TIMEOUT` without one) or, sooner, the
        invocation's end less `INLINE_SAFETY`."""
        logs: list[LogEntry] = []

        def log_line(line: str) -> None:
            logs.append(LogEntry(time=utc(self.clock()), message=line, source=start.name))

        definition = find_activity(start.name, self.services)
        if definition is None:
            return core.not_served(start.name, "orchestrator"), logs
        bounded = start if start.options.timeout else replace(start, options=_with_timeout(start.options))
        loop = asyncio.get_running_loop()
        watch = watch_attempt(bounded.options, loop.time(), left, INLINE_SAFETY.total_seconds())
        info = attempt_info(
            start.execution_id, start.name, start.seq, start.attempt, _no_token, start.heartbeat_details
        )
        task = asyncio.ensure_future(run_attempt(definition, start.input, info, _no_heartbeat, log_line))
        outcome = await watched(task, watch, bounded, "orchestrator")
        if outcome.kind is Outcome.WAITING:
            outcome = core.failed(
                errors.EventualError(
                    f"inline activity '{start.name}' returned ev.async_result(): an inline activity cannot be "
                    "completed by token (make it a queued activity, without inline=True)"
                ),
                retryable=False,
            )
        return outcome, logs

    def _decide(self, start: StartAttempt, outcome: AttemptOutcome) -> HistoryEvent | None:
        """The core's decision: the event that settles the call, or None after arming the retry's timer."""
        now = utc(self.clock())
        decision = core.retry_or_settle(
            outcome, name=start.name, seq=start.seq, attempt=start.attempt, now=now, policy=start.options.retry
        )
        match decision:
            case core.Settle(event=event):
                return event
            case core.RetryAt(due=due, attempt=following, note=note):
                message = wire.attempt_message(replace(start, attempt=following))
                self.dispatch.schedule_attempt(start.execution_id, retry_key(start.seq, following), due, message)
                self.dispatch.write_logs(start.execution_id, [LogEntry(time=now, message=note, source=start.name)])
                return None
        raise errors.EventualError(f"inline activity {start.seq} of '{start.execution_id}' cannot wait for a token")


def _with_timeout(options: core.ActivityOptions) -> core.ActivityOptions:
    return replace(options, timeout=MAX_INLINE_TIMEOUT)


__all__ = ["HANDED_OFF", "InlineDispatch", "InlineRunner", "retry_key"]
