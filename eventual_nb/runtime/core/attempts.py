"""Activity attempts: what an attempt's outcome means, whether it is retried, which deadline it missed.

An attempt ends in one `AttemptOutcome` (its `kind` an `Outcome`), however it ended: the activity returned
or raised, a token completed it, a deadline passed. `retry_or_settle` turns the outcome into the one
decision every runtime carries out: `RetryAt` (the next attempt, when), `Settle` (the history event that
ends the activity's call) or `AwaitToken` (the attempt waits for completion by token). An attempt that does
not end its call (`RetryAt`, `AwaitToken`) carries the `note` the runtime writes into the execution's logs
(`eventual_nb.attempts`: people see why a call took long, the timeline draws every attempt); runtimes only
write it. Deadlines are `Deadlines`; `missed_deadline` says which one an attempt missed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from eventual_nb import errors
from eventual_nb.attempts import async_note, retry_note
from eventual_nb.durations import deadline_after, format_duration
from eventual_nb.engine.history import (
    ActivityFailed,
    ActivityHeartbeatTimedOut,
    ActivitySucceeded,
    ActivityTimedOut,
    ScheduleActivity,
)
from eventual_nb.retry import RetryPolicy, exception_type_names


class Outcome(StrEnum):
    """How one attempt ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    #: its `timeout` passed while it ran or waited
    TIMED_OUT = "timed_out"
    #: its `heartbeat_timeout` passed since the last heartbeat (or since it started or began to wait)
    HEARTBEAT_MISSED = "heartbeat_missed"
    #: it returned `ev.async_result(...)`: it waits for completion by token
    WAITING = "waiting"


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    """How one attempt ended: its result, or its error (type name, message, the type names of the error and
    its bases for `non_retryable`, and whether it may be retried at all), or the callback of a waiting one."""

    kind: Outcome
    result: Any = None
    error: str = ""
    message: str = ""
    type_names: tuple[str, ...] = ()
    retryable: bool = True
    #: WAITING: called with the attempt's token once its waiting is committed
    callback: Callable[[str], Any] | None = None


def succeeded(result: Any) -> AttemptOutcome:
    return AttemptOutcome(Outcome.SUCCEEDED, result=result)


def failed(error: BaseException, *, retryable: bool = True, kind: Outcome = Outcome.FAILED) -> AttemptOutcome:
    """An attempt that raised `error` (or ran out of time: `kind` TIMED_OUT / HEARTBEAT_MISSED)."""
    return AttemptOutcome(
        kind,
        error=errors.error_type_name(error),
        message=errors.error_message(error),
        type_names=exception_type_names(error),
        retryable=retryable,
    )


def failed_named(error: str, message: str | None = None) -> AttemptOutcome:
    """A failure known only by its error's name (`send_activity_failure(token, error, message)`, a mock's
    `fail("Name")`): retried per the policy like any failure, the name matched against `non_retryable`."""
    return AttemptOutcome(Outcome.FAILED, error=str(error), message=message or "", type_names=(str(error),))


def not_served(name: str, what: str) -> AttemptOutcome:
    """The attempt of an activity the runtime does not serve (`what` names the runtime): never retried."""
    return AttemptOutcome(
        Outcome.FAILED,
        error="ActivityNotFound",
        message=f"no activity named '{name}' is served by this {what}",
        retryable=False,
    )


def waiting(callback: Callable[[str], Any]) -> AttemptOutcome:
    return AttemptOutcome(Outcome.WAITING, callback=callback)


# -------------------------------------------------------------------------------------------- options


@functools.cache
def default_retry() -> RetryPolicy:
    """One attempt, as in Eventual: retries are opt-in. Built on first use, not at import (`import
    eventual_nb` builds no pydantic model: `python -m benchmarks --only kernel_load`)."""
    return RetryPolicy()


@dataclass(frozen=True, slots=True)
class ActivityOptions:
    """An activity call's limits and retry policy, as its `ScheduleActivity` command gave them."""

    timeout: timedelta | None = None
    heartbeat_timeout: timedelta | None = None
    retry: RetryPolicy = field(default_factory=default_retry)

    @classmethod
    def of(cls, command: ScheduleActivity) -> ActivityOptions:
        return cls(command.timeout, command.heartbeat_timeout, command.retry)


# ------------------------------------------------------------------------------------------- deadlines


@dataclass(frozen=True, slots=True)
class Deadlines:
    """When an attempt times out (`deadline`, from its `timeout`) and when it misses its heartbeat."""

    deadline: datetime | None = None
    heartbeat: datetime | None = None

    @property
    def next(self) -> datetime | None:
        """The nearer deadline: when to check the attempt (None: never)."""
        if self.deadline is None:
            return self.heartbeat
        if self.heartbeat is None:
            return self.deadline
        return min(self.deadline, self.heartbeat)


NO_DEADLINES = Deadlines()


def attempt_deadlines(options: ActivityOptions, started: datetime) -> Deadlines:
    """The deadlines of an attempt that starts at `started` (its start counts as a heartbeat)."""
    if options.timeout is None and options.heartbeat_timeout is None:
        return NO_DEADLINES
    deadline = None if options.timeout is None else deadline_after(started, options.timeout, what="activity timeout")
    return Deadlines(deadline, _heartbeat_deadline(options, started))


def heartbeat_at(deadlines: Deadlines, options: ActivityOptions, now: datetime) -> Deadlines:
    """After a heartbeat at `now` (also: the moment an attempt begins to wait for its token)."""
    if options.heartbeat_timeout is None:
        return deadlines
    return replace(deadlines, heartbeat=_heartbeat_deadline(options, now))


def _heartbeat_deadline(options: ActivityOptions, moment: datetime) -> datetime | None:
    limit = options.heartbeat_timeout
    return None if limit is None else deadline_after(moment, limit, what="heartbeat_timeout")


Moment = TypeVar("Moment", datetime, float)


def missed_deadline(deadline: Moment | None, heartbeat: Moment | None, now: Moment) -> Outcome | None:
    """Which deadline an attempt has missed at `now`: HEARTBEAT_MISSED when the heartbeat deadline passed no
    later than the attempt's own deadline, else TIMED_OUT once that passed, else None. Moments are datetimes
    or seconds on one clock."""
    if heartbeat is not None and heartbeat <= now and (deadline is None or heartbeat <= deadline):
        return Outcome.HEARTBEAT_MISSED
    if deadline is not None and deadline <= now:
        return Outcome.TIMED_OUT
    return None


def expired(kind: Outcome, attempt: int, options: ActivityOptions, *, message: str | None = None) -> AttemptOutcome:
    """The outcome of an attempt that missed a deadline (`kind` from `missed_deadline`); `message` replaces
    the standard one (an AWS attempt stopped by its Lambda's own time limit says so)."""
    error: errors.Timeout
    if kind is Outcome.HEARTBEAT_MISSED:
        limit = options.heartbeat_timeout
        error = errors.HeartbeatTimeout(
            message or f"no heartbeat within {format_duration(limit) if limit else 'its heartbeat timeout'}"
        )
    else:
        limit = options.timeout
        error = errors.Timeout(
            message or f"attempt {attempt} exceeded its timeout of {format_duration(limit) if limit else '0s'}"
        )
    return failed(error, kind=kind)


# ------------------------------------------------------------------------------------------- decisions


@dataclass(frozen=True, slots=True)
class RetryAt:
    """Run attempt `attempt` at `due` (the backoff of the retry policy); log `note` (the failed attempt's
    line, `eventual_nb.attempts.retry_note`) in the execution's logs with the activity's name as source.
    The note is what the decision says, not part of it: two decisions to retry alike are equal."""

    due: datetime
    attempt: int
    note: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class Settle:
    """The activity's call is decided: record `event` (it answers the call's seq)."""

    event: ActivitySucceeded | ActivityFailed | ActivityTimedOut | ActivityHeartbeatTimedOut


@dataclass(frozen=True, slots=True)
class AwaitToken:
    """The attempt waits for completion by token (its deadlines keep running; waiting counts as a heartbeat);
    log `note` (`eventual_nb.attempts.async_note`) once the waiting is committed, as for `RetryAt`."""

    note: str = field(default="", compare=False)


AttemptDecision = RetryAt | Settle | AwaitToken


def retry_or_settle(
    outcome: AttemptOutcome, *, name: str, seq: int, attempt: int, now: datetime, policy: RetryPolicy | None
) -> AttemptDecision:
    """What attempt `attempt` of the call at `seq` of activity `name` ending with `outcome` at `now` means.

    A success settles the call; a failure, a timeout or a missed heartbeat is retried while `policy` allows
    it (and the outcome is retryable), and otherwise settles the call with ActivityFailed, ActivityTimedOut
    or ActivityHeartbeatTimedOut carrying the last error and the number of attempts. `policy` may be None
    only for a success or a waiting attempt (a runtime need not read it for those). A retry and a waiting
    attempt carry the note to log (`name` is what it names and its source)."""
    kind = outcome.kind
    if kind is Outcome.SUCCEEDED:
        return Settle(ActivitySucceeded(seq=seq, timestamp=now, result=outcome.result, attempts=attempt))
    if kind is Outcome.WAITING:
        return AwaitToken(async_note(name, seq, attempt))
    if policy is None:
        raise ValueError(f"a {kind} attempt needs its retry policy to be decided")
    if outcome.retryable and policy.retries(attempt, outcome.type_names or (outcome.error,)):
        delay = policy.delay_after(attempt)
        due = deadline_after(now, delay, what="retry interval")
        note = retry_note(name, seq, attempt, outcome.error, outcome.message, due, delay)
        return RetryAt(due, attempt + 1, note)
    if kind is Outcome.TIMED_OUT:
        return Settle(ActivityTimedOut(seq=seq, timestamp=now, message=outcome.message, attempts=attempt))
    if kind is Outcome.HEARTBEAT_MISSED:
        return Settle(ActivityHeartbeatTimedOut(seq=seq, timestamp=now, message=outcome.message, attempts=attempt))
    return Settle(
        ActivityFailed(seq=seq, timestamp=now, error=outcome.error, message=outcome.message, attempts=attempt)
    )


def token_not_pending(execution_id: str, seq: int, attempt: int) -> errors.EventualError:
    """What completing (or failing) an attempt by a token that is no longer pending raises."""
    return errors.EventualError(
        f"activity token for '{execution_id}' seq {seq} attempt {attempt} is no longer pending "
        "(it completed, timed out, was retried, or its execution ended)"
    )
