"""Small shared pieces: the duration grammar, retry delays, error JSON round trips, history JSON round trips."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

import eventual_nb as ev
from eventual_nb import durations
from eventual_nb import errors as errors_module
from eventual_nb.engine import history as h
from eventual_nb.errors import error_from_json

SERVICE = ev.Service("test-durations-serde")

T0 = datetime(2024, 1, 1, tzinfo=UTC)


# ------------------------------------------------------------------------------------------ durations


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("2 days", timedelta(days=2)),
        ("1 day", timedelta(days=1)),
        ("500ms", timedelta(milliseconds=500)),
        ("1.5h", timedelta(minutes=90)),
        ("1d 2h", timedelta(days=1, hours=2)),
        ("10 minutes", timedelta(minutes=10)),
        ("  45 s ", timedelta(seconds=45)),
        ("12", timedelta(seconds=12)),
        ("0s", timedelta(0)),
    ],
)
def test_duration_strings(text: str, expected: timedelta) -> None:
    assert ev.parse_duration(text) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, timedelta(0)),
        (90, timedelta(seconds=90)),
        (2.5, timedelta(seconds=2.5)),
        (timedelta(hours=3), timedelta(hours=3)),
    ],
)
def test_duration_numbers_and_timedeltas(value: object, expected: timedelta) -> None:
    assert ev.parse_duration(value) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    ["", "abc", "5 parsecs", "5m garbage", "-5s", -1, -0.5, timedelta(seconds=-1), True, False, None, [5], "1h-"],
)
def test_bad_durations_raise_eventual_error_naming_the_value(bad: object) -> None:
    with pytest.raises(ev.EventualError) as info:
        ev.parse_duration(bad)  # type: ignore[arg-type]
    assert repr(bad) in str(info.value)


def test_duration_error_names_the_option() -> None:
    with pytest.raises(ev.EventualError, match="sleep duration"):
        ev.parse_duration("soon", what="sleep duration")


def test_options_taking_durations_reject_bad_values() -> None:
    """Bad durations are caught where the option is given, not later at run time."""
    with pytest.raises(ev.EventualError, match="'forever'"):
        ev.RetryPolicy(max_attempts=2, initial_interval="forever")

    async def wf() -> None:
        return None

    with pytest.raises(ev.EventualError, match="'-3s'"):
        ev.workflow(timeout="-3s")(wf)


@pytest.mark.parametrize(
    "long",
    ["999999999 days", "36526d", 36526 * 86400, 1e300, 10**400, timedelta(days=36526), timedelta.max],
    ids=["999999999 days", "36526d", "seconds", "1e300", "10**400", "timedelta", "timedelta.max"],
)
def test_durations_longer_than_100_years_are_refused_naming_value_and_limit(long: object) -> None:
    with pytest.raises(ev.EventualError) as info:
        ev.parse_duration(long, what="sleep duration")  # type: ignore[arg-type]
    message = str(info.value)
    assert "sleep duration" in message, message
    assert "100 years (36525 days)" in message, message
    shown = repr(long) if not isinstance(long, timedelta) else durations.format_duration(long)
    assert shown[:50] in message, message


def test_the_longest_duration_is_accepted() -> None:
    assert ev.parse_duration("36525d") == durations.MAX_DURATION == timedelta(days=36525)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "nan", "inf", "1e400"])
def test_nan_and_infinite_durations_are_not_finite_rather_than_negative(value: object) -> None:
    with pytest.raises(ev.EventualError) as info:
        ev.parse_duration(value, what="timeout")  # type: ignore[arg-type]
    assert "finite" in str(info.value), str(info.value)
    assert "negative" not in str(info.value), str(info.value)


def test_a_deadline_past_the_latest_storable_one_is_refused_naming_it() -> None:
    late = datetime(9990, 1, 1, tzinfo=UTC)
    assert durations.deadline_after(late, "3000d") == late + timedelta(days=3000)
    with pytest.raises(ev.EventualError) as info:
        durations.deadline_after(late, "3650d", what="expect timeout")
    message = str(info.value)
    assert "expect timeout '3650d'" in message
    assert "9990-01-01T00:00:00+00:00 + 3650d" in message, message
    assert "9999-01-01T00:00:00+00:00" in message, message
    naive = datetime(9990, 1, 1)
    with pytest.raises(ev.EventualError, match="falls after 9999-01-01T00:00:00"):
        durations.deadline_after(naive, "3650d")


def test_duration_fields_of_http_bodies_follow_the_same_rule() -> None:
    """`true` is not one second, and the rule's errors are pydantic errors of the field (a 422 over HTTP)."""
    from pydantic import BaseModel, ValidationError

    class Body(BaseModel):
        timeout: durations.DurationField | None = None

    assert Body.model_validate_json('{"timeout": "5m"}').timeout == "5m"
    assert Body.model_validate_json('{"timeout": 90}').timeout == 90.0
    assert Body.model_validate_json('{"timeout": null}').timeout is None
    for text, expected in [
        ('{"timeout": true}', "invalid duration True"),
        ('{"timeout": false}', "invalid duration False"),
        ('{"timeout": NaN}', "finite"),
        ('{"timeout": 1e300}', "100 years"),
        ('{"timeout": "2000000d"}', "100 years"),
        ('{"timeout": -1}', "negative"),
    ]:
        with pytest.raises(ValidationError) as info:
            Body.model_validate_json(text)
        (error,) = info.value.errors()
        assert error["loc"] == ("timeout",), (text, error)
        assert expected in error["msg"], (text, error)


# ------------------------------------------------------------------------------------------ retries


@pytest.mark.parametrize(
    ("initial", "backoff", "maximum"),
    [("1s", 2.0, "5m"), ("10s", 3.0, "1m"), (timedelta(milliseconds=250), 1.0, "1h"), (2, 1.5, 30)],
)
def test_retry_delay_schedule(initial: object, backoff: float, maximum: object) -> None:
    policy = ev.RetryPolicy(max_attempts=10, initial_interval=initial, backoff=backoff, max_interval=maximum)
    first = ev.parse_duration(initial)  # type: ignore[arg-type]
    cap = ev.parse_duration(maximum)  # type: ignore[arg-type]
    for k in range(1, 10):
        expected = min(timedelta(seconds=first.total_seconds() * backoff ** (k - 1)), cap)
        assert policy.delay_after(k) == expected


def test_retry_delays_concrete_values() -> None:
    policy = ev.RetryPolicy(max_attempts=6, initial_interval="1s", backoff=2.0, max_interval="5s")
    assert [policy.delay_after(k).total_seconds() for k in range(1, 6)] == [1, 2, 4, 5, 5]


def test_late_retry_delays_are_capped_instead_of_overflowing() -> None:
    """The uncapped delay of attempt 400 with backoff 10 is 10**399 seconds: no timedelta holds it."""
    policy = ev.RetryPolicy(max_attempts=1000, initial_interval="1s", backoff=10.0, max_interval="1h")
    assert policy.delay_after(400) == timedelta(hours=1)
    assert policy.delay_after(999) == timedelta(hours=1)
    assert policy.delay_after(3) == timedelta(seconds=100)


def test_retry_policy_defaults_to_one_attempt() -> None:
    policy = ev.RetryPolicy()
    assert policy.max_attempts == 1
    assert not policy.retries(1, ("RuntimeError",))


def test_retry_policy_non_retryable_by_class_or_name() -> None:
    policy = ev.RetryPolicy(max_attempts=3, non_retryable=(ValueError, "KeyError"))
    assert policy.non_retryable == ("ValueError", "KeyError")
    assert policy.retries(1, ("RuntimeError", "Exception"))
    assert not policy.retries(1, ("ValueError", "Exception"))
    assert not policy.retries(1, ("KeyError", "LookupError"))
    assert not policy.retries(3, ("RuntimeError",))


# ------------------------------------------------------------------------------------------ errors


ERROR_SAMPLES = [
    ev.EventualError("plain"),
    ev.InputValidationError("bad input", errors=[{"loc": ["x"], "msg": "not an int", "type": "int_parsing"}]),
    ev.ActivityFailed("ValueError", "boom", activity="debit", seq=3, attempts=2),
    ev.Timeout("too slow"),
    ev.HeartbeatTimeout("no heartbeat"),
    ev.WorkflowTimeout("exceeded 1h", execution_id="wf/x"),
    ev.DeterminismError("diverged", execution_id="wf/x", seq=4),
    ev.ExecutionAlreadyExists("exists", execution_id="wf/x"),
    ev.ExecutionNotFound("missing", execution_id="wf/y"),
    ev.ExecutionFailed("KeyError", "no key", execution_id="wf/z"),
    ev.ExecutionCancelled("cancelled", execution_id="wf/c"),
    ev.HttpError(404, "no such account"),
    ev.testing.Stuck("stuck on signal 'x'"),
]


@pytest.mark.parametrize("error", ERROR_SAMPLES, ids=lambda e: type(e).__name__)
def test_errors_round_trip_through_json(error: ev.EventualError) -> None:
    import json

    body = json.loads(json.dumps(error.to_json()))
    assert body["error"] == type(error).__name__
    rebuilt = error_from_json(body)
    assert type(rebuilt) is type(error)
    assert rebuilt.message == error.message
    assert str(rebuilt) == str(error)
    for name in type(error).fields:
        assert getattr(rebuilt, name) == getattr(error, name), name


def test_unknown_error_name_becomes_plain_eventual_error() -> None:
    rebuilt = error_from_json({"error": "SomethingNew", "message": "hello"})
    assert type(rebuilt) is ev.EventualError
    assert "SomethingNew" in str(rebuilt)
    assert "hello" in str(rebuilt)


def test_a_user_error_class_does_not_replace_the_one_the_client_rebuilds() -> None:
    """A notebook's own `Timeout` (or any name eventual-nb uses) must not change what `Timeout` means on the wire."""

    class Timeout(ev.EventualError):
        pass

    class InvalidDuration(ev.EventualError):
        pass

    rebuilt = error_from_json({"error": "Timeout", "message": "too slow"})
    assert type(rebuilt) is ev.Timeout
    assert rebuilt.message == "too slow"
    assert type(error_from_json({"error": "InvalidDuration", "message": "x"})) is durations.InvalidDuration

    # and the user's own classes are not rebuilt at all: they come back as a plain EventualError naming them
    class Overdrawn(ev.EventualError):
        pass

    mine = error_from_json(Overdrawn("no money").to_json())
    assert type(mine) is ev.EventualError
    assert str(mine) == "Overdrawn: no money"


def test_timeout_hierarchy() -> None:
    assert issubclass(ev.Timeout, TimeoutError)
    assert issubclass(ev.HeartbeatTimeout, ev.Timeout)
    assert issubclass(ev.WorkflowTimeout, ev.ExecutionFailed)
    assert issubclass(ev.WorkflowTimeout, ev.Timeout)
    with pytest.raises(TimeoutError):
        raise ev.HeartbeatTimeout("late")


@pytest.mark.parametrize(
    "cls",
    [
        ev.ActivityFailed,
        ev.Timeout,
        ev.HeartbeatTimeout,
        ev.WorkflowTimeout,
        ev.DeterminismError,
        ev.ExecutionAlreadyExists,
        ev.ExecutionNotFound,
        ev.ExecutionFailed,
        ev.ExecutionCancelled,
        ev.HttpError,
        ev.InputValidationError,
        ev.testing.Stuck,
    ],
)
def test_every_public_error_derives_from_eventual_error(cls: type) -> None:
    assert issubclass(cls, ev.EventualError)


def test_every_error_class_in_errors_module_derives_from_eventual_error() -> None:
    classes = [
        value
        for value in vars(errors_module).values()
        if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == errors_module.__name__
    ]
    assert len(classes) >= 10
    assert all(issubclass(cls, ev.EventualError) for cls in classes)


def test_error_status_codes() -> None:
    assert ev.ExecutionNotFound("x").status_code == 404
    assert ev.InputValidationError("x").status_code == 422
    assert ev.HttpError(418, "teapot").status_code == 418


# ------------------------------------------------------------------------------------------ history


def _one_of_each() -> list[h.HistoryEvent]:
    return [
        h.WorkflowStarted(
            timestamp=T0, workflow="wf", input={"a": 1}, parent="p/x", timeout_at=T0 + timedelta(hours=1)
        ),
        h.ActivityScheduled(seq=0, timestamp=T0, name="debit", input={"account_id": "a", "amount": 10.5}),
        h.ActivitySucceeded(seq=0, timestamp=T0, result=[1, "two", None], attempts=2),
        h.ActivityFailed(seq=1, timestamp=T0, error="ValueError", message="bad", attempts=3),
        h.ActivityTimedOut(seq=2, timestamp=T0, message="attempt 1 exceeded 5s", attempts=1),
        h.ActivityHeartbeatTimedOut(seq=3, timestamp=T0, message="no heartbeat", attempts=1),
        h.TimerScheduled(seq=4, timestamp=T0, until=T0 + timedelta(days=1)),
        h.TimerCompleted(seq=4, timestamp=T0 + timedelta(days=1)),
        h.SignalReceived(timestamp=T0, signal="approval", payload={"ok": True}, id="sig-1"),
        h.SignalSent(seq=5, timestamp=T0, target="wf/other", signal="approval", payload=None),
        h.EventsPublished(seq=6, timestamp=T0, events=[{"name": "Opened", "event": {"account_id": "a"}}]),
        h.ChildWorkflowScheduled(seq=7, timestamp=T0, workflow="child", child_id="child/~wf-x-7", input=3),
        h.ChildWorkflowSucceeded(seq=7, timestamp=T0, result={"done": True}),
        h.ChildWorkflowFailed(seq=8, timestamp=T0, error="KeyError", message="k"),
        h.PatchMarker(timestamp=T0, patch_id="v2"),
        h.CancelRequested(timestamp=T0),
        h.WorkflowSucceeded(timestamp=T0, result="ok"),
        h.WorkflowFailed(timestamp=T0, error="WorkflowTimeout", message="too long"),
        h.WorkflowCancelled(timestamp=T0),
    ]


def test_sample_covers_every_event_type() -> None:
    assert [event.type for event in _one_of_each()] == list(h.EVENT_TYPES)


@pytest.mark.parametrize("event", _one_of_each(), ids=lambda e: e.type)
def test_history_event_json_round_trip(event: h.HistoryEvent) -> None:
    dumped = h.HISTORY_ADAPTER.dump_json([event])
    (back,) = h.HISTORY_ADAPTER.validate_json(dumped)
    assert type(back) is type(event)
    assert back == event
    as_dict = event.model_dump(mode="json")
    assert as_dict["type"] == event.type
    assert h.HISTORY_ADAPTER.validate_python([as_dict]) == [event]


def test_parse_history_accepts_all_forms() -> None:
    events = _one_of_each()
    dicts = h.dump_history(events)
    text = h.HISTORY_ADAPTER.dump_json(events).decode()
    assert h.parse_history(events) == events
    assert h.parse_history(dicts) == events
    assert h.parse_history(text) == events


def test_history_events_reject_unknown_fields_and_types() -> None:
    with pytest.raises(ValueError, match="NoSuchEvent"):
        h.HISTORY_ADAPTER.validate_python([{"type": "NoSuchEvent", "timestamp": T0.isoformat()}])
    with pytest.raises(ValueError, match="extra"):
        h.HISTORY_ADAPTER.validate_python([{"type": "TimerCompleted", "timestamp": T0.isoformat(), "extra": 1}])
