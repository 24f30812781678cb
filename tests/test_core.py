"""The execution core's decisions and the JSON form of its actions (eventual_nb.runtime.core).

The behavioural suite (tests/test_local_runtime.py) runs these rules on all three runtimes; here they are
pinned down where a runtime's timing cannot blur them: which deadline an attempt missed, when a retry is
due, and that every action AWS stores survives its JSON form unchanged.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import eventual_nb as ev
from eventual_nb.attempts import async_note, read_note, retry_note
from eventual_nb.engine.history import (
    CancelRequested,
    SignalReceived,
    TimerCompleted,
    WorkflowFailed,
)
from eventual_nb.runtime import core
from eventual_nb.runtime.core import wire

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
POLICY = ev.RetryPolicy(max_attempts=3, initial_interval="2s", backoff=3, non_retryable=["ValueError"])
OPTIONS = core.ActivityOptions(timedelta(seconds=30), timedelta(seconds=5), POLICY)

ACTIONS: list[core.Action] = [
    core.StartAttempt("pay/o-1", 3, 2, "charge", {"cents": 250}, OPTIONS, {"progress": 0.5}),
    core.StartAttempt("pay/o-1", 4, 1, "refund", {}, core.ActivityOptions()),
    core.ArmTimer("pay/o-1", "5", T0, TimerCompleted(seq=5, timestamp=T0)),
    core.begin("pay/o-1", "pay", None, start=T0, limit=timedelta(hours=1)).timeout,  # type: ignore[list-item]
    core.DisarmTimer("pay/o-1", "5"),
    core.Deliver("pay/o-2", SignalReceived(timestamp=T0, signal="approve", payload={"ok": True}, id="s-1")),
    core.Deliver("pay/o-2", CancelRequested(timestamp=T0)),
    core.Publish([{"name": "Paid", "event": {"order": "o-1"}}], "shop"),
    core.StartChild("pay/o-1", 6, "ship", "ship/~pay-o-1-6", {"to": "x"}, timedelta(minutes=5), T0),
    core.StartChild("pay/o-1", 7, "ship", "ship/~pay-o-1-7", None, None, T0),
    core.Finish("pay/o-1", ev.ExecutionStatus.SUCCEEDED, {"paid": True}, None, None, T0),
    core.Finish("pay/o-1", ev.ExecutionStatus.FAILED, None, "ValueError", "bad card", T0),
]


@pytest.mark.parametrize("action", ACTIONS, ids=lambda action: type(action).__name__)
def test_every_action_survives_its_json_form(action: core.Action) -> None:
    stored = json.loads(json.dumps(wire.action_to_json(action)))  # plain JSON, as the history head keeps it
    assert stored["action"] == type(action).__name__
    assert wire.action_from_json(stored) == action


@pytest.mark.parametrize(
    ("stored", "named"),
    [
        ({"action": "Launch"}, "unknown 'action' 'Launch'"),
        ({"kind": "activity"}, "unknown 'action' None"),
        ({"action": "DisarmTimer", "execution_id": "x"}, "stored DisarmTimer action is malformed"),
        ({"action": "Deliver", "target": "x", "event": {"type": "Nope"}}, "stored Deliver action is malformed"),
    ],
)
def test_a_malformed_stored_action_is_refused_naming_it(stored: dict[str, Any], named: str) -> None:
    with pytest.raises(ev.EventualError, match=named):
        wire.action_from_json(stored)


def test_the_workflow_timeout_timer_fails_the_execution_with_its_limit() -> None:
    begun = core.begin("pay/o-1", "pay", {"cents": 1}, start=T0, limit=timedelta(minutes=90))
    assert begun.started.timeout_at == T0 + timedelta(minutes=90)
    assert begun.timeout == core.ArmTimer(
        "pay/o-1",
        core.TIMEOUT_TIMER_KEY,
        T0 + timedelta(minutes=90),
        WorkflowFailed(
            timestamp=T0 + timedelta(minutes=90),
            error="WorkflowTimeout",
            message="execution 'pay/o-1' exceeded its timeout of 1h30m",
        ),
    )
    assert core.begin("pay/o-2", "pay", None, start=T0, limit=None).timeout is None


def failure(kind: core.Outcome = core.Outcome.FAILED, error: str = "ConnectionError") -> core.AttemptOutcome:
    return core.AttemptOutcome(kind, error=error, message="down", type_names=(error, "OSError", "Exception"))


def test_a_failure_is_retried_with_backoff_until_the_attempts_run_out() -> None:
    first = core.retry_or_settle(failure(), name="charge", seq=3, attempt=1, now=T0, policy=POLICY)
    second = core.retry_or_settle(failure(), name="charge", seq=3, attempt=2, now=T0, policy=POLICY)
    assert (first, second) == (
        core.RetryAt(T0 + timedelta(seconds=2), 2),
        core.RetryAt(T0 + timedelta(seconds=6), 3),
    )
    last = core.retry_or_settle(failure(), name="charge", seq=3, attempt=3, now=T0, policy=POLICY)
    assert isinstance(last, core.Settle)
    assert (last.event.type, last.event.error, last.event.message, last.event.attempts) == (  # type: ignore[union-attr]
        "ActivityFailed",
        "ConnectionError",
        "down",
        3,
    )


@pytest.mark.parametrize(
    ("kind", "settled"),
    [(core.Outcome.TIMED_OUT, "ActivityTimedOut"), (core.Outcome.HEARTBEAT_MISSED, "ActivityHeartbeatTimedOut")],
)
def test_a_missed_deadline_is_retried_like_a_failure_then_settles_as_such(kind: core.Outcome, settled: str) -> None:
    outcome = core.expired(kind, 1, OPTIONS)
    assert isinstance(
        core.retry_or_settle(outcome, name="charge", seq=3, attempt=1, now=T0, policy=POLICY), core.RetryAt
    )
    decision = core.retry_or_settle(outcome, name="charge", seq=3, attempt=3, now=T0, policy=POLICY)
    assert isinstance(decision, core.Settle)
    assert decision.event.type == settled
    assert decision.event.attempts == 3


def test_non_retryable_errors_and_unretryable_outcomes_settle_at_once() -> None:
    picky = core.retry_or_settle(failure(error="ValueError"), name="charge", seq=1, attempt=1, now=T0, policy=POLICY)
    assert isinstance(picky, core.Settle)
    assert picky.event.attempts == 1
    named = core.retry_or_settle(
        core.failed_named("ValueError", "by token"), name="charge", seq=1, attempt=1, now=T0, policy=POLICY
    )
    assert isinstance(named, core.Settle)
    missing = core.retry_or_settle(
        core.not_served("charge", "worker"), name="charge", seq=1, attempt=1, now=T0, policy=POLICY
    )
    assert isinstance(missing, core.Settle)
    assert missing.event.error == "ActivityNotFound"


def test_success_and_waiting_need_no_policy_but_a_failure_does() -> None:
    done = core.retry_or_settle(core.succeeded(41), name="charge", seq=2, attempt=2, now=T0, policy=None)
    assert isinstance(done, core.Settle)
    assert (done.event.result, done.event.attempts) == (41, 2)
    assert isinstance(
        core.retry_or_settle(core.waiting(print), name="charge", seq=2, attempt=1, now=T0, policy=None), core.AwaitToken
    )
    with pytest.raises(ValueError, match="retry policy"):
        core.retry_or_settle(failure(), name="charge", seq=2, attempt=1, now=T0, policy=None)


def test_the_core_writes_the_note_of_a_retried_and_of_a_waiting_attempt() -> None:
    """The note a runtime logs for an attempt that does not end its call is the core's (one rule for all
    three runtimes); the timeline reads it back."""
    retry = core.retry_or_settle(failure(), name="charge", seq=3, attempt=1, now=T0, policy=POLICY)
    assert isinstance(retry, core.RetryAt)
    assert retry.note == retry_note(
        "charge", 3, 1, "ConnectionError", "down", T0 + timedelta(seconds=2), timedelta(seconds=2)
    )
    read = read_note(T0, "charge", retry.note)
    assert read is not None
    assert (read.kind, read.seq, read.attempt, read.error, read.message, read.due) == (
        "retry",
        3,
        1,
        "ConnectionError",
        "down",
        T0 + timedelta(seconds=2),
    )
    waiting = core.retry_or_settle(core.waiting(print), name="charge", seq=4, attempt=2, now=T0, policy=None)
    assert isinstance(waiting, core.AwaitToken)
    assert waiting.note == async_note("charge", 4, 2)
    read = read_note(T0, "charge", waiting.note)
    assert read is not None
    assert (read.kind, read.seq, read.attempt) == ("async", 4, 2)
    # a timeout that is retried says so
    expired = core.retry_or_settle(
        core.expired(core.Outcome.TIMED_OUT, 1, OPTIONS), name="charge", seq=3, attempt=1, now=T0, policy=POLICY
    )
    assert isinstance(expired, core.RetryAt)
    assert "failed: Timeout: attempt 1 exceeded its timeout" in expired.note


def test_which_deadline_an_attempt_missed() -> None:
    deadlines = core.attempt_deadlines(OPTIONS, T0)
    assert deadlines == core.Deadlines(T0 + timedelta(seconds=30), T0 + timedelta(seconds=5))
    assert core.missed_deadline(deadlines.deadline, deadlines.heartbeat, T0 + timedelta(seconds=4)) is None
    assert core.missed_deadline(deadlines.deadline, deadlines.heartbeat, T0 + timedelta(seconds=5)) is (
        core.Outcome.HEARTBEAT_MISSED
    )
    beaten = core.heartbeat_at(deadlines, OPTIONS, T0 + timedelta(seconds=28))
    assert beaten.heartbeat == T0 + timedelta(seconds=33)
    assert beaten.next == beaten.deadline
    # both passed: the one that passed first counts
    assert core.missed_deadline(beaten.deadline, beaten.heartbeat, T0 + timedelta(seconds=40)) is core.Outcome.TIMED_OUT
    assert core.missed_deadline(30.0, 29.0, 40.0) is core.Outcome.HEARTBEAT_MISSED  # seconds work the same
    assert core.attempt_deadlines(core.ActivityOptions(), T0) is core.NO_DEADLINES


def test_sends_too_large_for_aws_fail_their_call_or_are_dropped_with_the_reason() -> None:
    """`limits.refuse_sends`: what the AWS orchestrator does with a turn's oversized sends (the behavioural
    test in test_local_runtime drives an activity input, an event and a result through a deployed stack)."""
    from eventual_nb.engine.history import ChildWorkflowFailed, SignalReceived
    from eventual_nb.runtime.core import limits
    from eventual_nb.runtime.core.actions import Deliver, Publish, StartChild

    big = "x" * (limits.SQS_MESSAGE_BYTES + 1)
    child = StartChild("p/1", 3, "child", "child/1", "x" * limits.DYNAMODB_ITEM_BYTES, None, T0)
    signal = Deliver("other/1", SignalReceived(timestamp=T0, signal="go", payload=big, id="s"))
    small_signal = Deliver("other/1", SignalReceived(timestamp=T0, signal="go", payload="ok", id="t"))
    publish = Publish([{"name": "Big", "event": {"pad": big}}, {"name": "Small", "event": {}}], "svc")
    kept, lines = limits.refuse_sends("p/1", [child, signal, small_signal, publish], T0)
    assert kept[0] == Deliver("p/1", kept[0].event)  # the child's call fails in the parent
    assert isinstance(kept[0].event, ChildWorkflowFailed)
    assert (kept[0].event.seq, kept[0].event.error) == (3, "PayloadTooLarge")
    assert kept[1:] == [small_signal, Publish([{"name": "Small", "event": {}}], "svc")]
    assert [line.split(":")[0] for line in lines] == ["refused on AWS", "not sent on AWS", "not published on AWS"]
    assert "child execution 'child/1'" in lines[0]
    assert "signal 'go' to 'other/1'" in lines[1]
    assert "event 'Big'" in lines[2]
