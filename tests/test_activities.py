"""Activities in a TestEnvironment: retries and backoff in virtual time, timeouts, heartbeats, async
completion with signed tokens, mocks, activity info, plain `def` activities and captured output."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import eventual_nb as ev

SERVICE = ev.Service("tests-activities")

START = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)


def make_env(**options: Any) -> ev.testing.TestEnvironment:
    return ev.testing.TestEnvironment(service=SERVICE, start=START, **options)


def of_seq(history: list[Any], seq: int) -> list[str]:
    """Types of the history events answering call `seq`, in order."""
    return [event.type for event in history if event.seq == seq]


def activity_seq(history: list[Any], name: str) -> int:
    [scheduled] = [event for event in history if event.type == "ActivityScheduled" and event.name == name]
    return scheduled.seq


def describe(exc: BaseException) -> dict[str, Any]:
    """What a workflow reports about an exception it caught (JSON-able)."""
    found: dict[str, Any] = {"type": type(exc).__name__, "text": str(exc), "is_timeout_error": False}
    if isinstance(exc, ev.ActivityFailed):
        found.update(error=exc.error, message=exc.message, attempts=exc.attempts, activity=exc.activity)
    if isinstance(exc, TimeoutError):
        found["is_timeout_error"] = True
    return found


# ------------------------------------------------------------------------------------------ definitions

RETRY_3 = ev.RetryPolicy(max_attempts=3, initial_interval="2s", backoff=3)


@ev.activity(retry=RETRY_3)
async def flaky(x: int) -> int:
    return x * 10


@ev.activity
async def once_only(x: int) -> int:
    return x + 1


@ev.workflow
async def call_flaky(x: int) -> dict:
    try:
        value = await flaky(x)
    except ev.EventualError as exc:
        return {"error": describe(exc), "at": ev.now().isoformat()}
    return {"value": value, "at": ev.now().isoformat()}


@ev.workflow
async def call_capped(x: int) -> dict:
    capped = flaky.options(retry=ev.RetryPolicy(max_attempts=4, initial_interval="10s", backoff=10, max_interval="30s"))
    value = await capped(x)
    return {"value": value, "at": ev.now().isoformat()}


@ev.workflow
async def call_once_only(x: int) -> dict:
    try:
        return {"value": await once_only(x)}
    except ev.ActivityFailed as exc:
        return {"error": describe(exc)}


class InsufficientFunds(ValueError):
    """A domain error whose base class (ValueError) is non-retryable below."""


@ev.activity(retry=ev.RetryPolicy(max_attempts=5, initial_interval="1s", non_retryable=(ValueError,)))
async def charge(amount: int) -> int:
    if amount > 100:
        raise InsufficientFunds(f"cannot charge {amount}")
    return amount


@ev.workflow
async def call_charge(amount: int) -> dict:
    try:
        return {"value": await charge(amount)}
    except ev.ActivityFailed as exc:
        return {"error": describe(exc), "at": ev.now().isoformat()}


@ev.activity
async def plain_target(x: int) -> int:
    return x


@ev.workflow
async def call_with_policy(spec: dict) -> dict:
    """Calls `plain_target` with the retry policy described by `spec` (non_retryable given as names)."""
    policy = ev.RetryPolicy(
        max_attempts=spec["max_attempts"], initial_interval="1s", non_retryable=spec["non_retryable"]
    )
    try:
        return {"value": await plain_target.options(retry=policy)(1)}
    except ev.ActivityFailed as exc:
        return {"error": describe(exc), "at": ev.now().isoformat()}


@ev.activity(timeout="30s")
async def slow(x: int) -> int:
    return x


@ev.workflow
async def call_slow(spec: dict) -> dict:
    target = slow
    if spec.get("retry"):
        target = slow.options(
            retry=ev.RetryPolicy(
                max_attempts=spec["retry"],
                initial_interval="1s",
                backoff=2,
                non_retryable=tuple(spec.get("non_retryable", ())),
            )
        )
    try:
        return {"value": await target(spec.get("x", 1)), "at": ev.now().isoformat()}
    except ev.Timeout as exc:
        return {"error": describe(exc), "at": ev.now().isoformat()}


TOKENS: list[str] = []


@ev.activity(heartbeat_timeout="10s")
async def beats(x: int) -> int:
    return x


@ev.workflow
async def call_beats(x: int) -> dict:
    try:
        return {"value": await beats(x), "at": ev.now().isoformat()}
    except ev.Timeout as exc:
        return {"error": describe(exc), "at": ev.now().isoformat()}


@ev.activity(heartbeat_timeout="10s")
async def long_async(x: int) -> str:
    TOKENS.append(ev.activity_info().token)
    return ev.async_result(lambda token: None)


@ev.workflow
async def call_long_async(x: int) -> dict:
    try:
        return {"value": await long_async(x), "at": ev.now().isoformat()}
    except ev.Timeout as exc:
        return {"error": describe(exc), "at": ev.now().isoformat()}


REAL_CALLS: list[str] = []


@ev.activity
async def approve_later(request: str) -> str:
    REAL_CALLS.append(request)
    return ev.async_result(TOKENS.append)


@ev.workflow
async def call_approve_later(request: str) -> dict:
    try:
        return {"value": await approve_later(request), "at": ev.now().isoformat()}
    except ev.ActivityFailed as exc:
        return {"error": describe(exc), "at": ev.now().isoformat()}


ATTEMPT_INFO: list[dict[str, Any]] = []


@ev.activity(retry=ev.RetryPolicy(max_attempts=3, initial_interval="1s"))
async def introspect(x: int) -> dict:
    beat = await ev.heartbeat({"progress": x})
    info = ev.activity_info()
    ATTEMPT_INFO.append(
        {
            "cancelled": beat.cancelled,
            "execution_id": info.execution_id,
            "activity": info.activity,
            "seq": info.seq,
            "attempt": info.attempt,
            "token": info.token,
            "idempotency_key": info.idempotency_key,
        }
    )
    if info.attempt < 3:
        raise RuntimeError(f"attempt {info.attempt} fails")
    return {"attempt": info.attempt}


@ev.workflow
async def call_introspect(x: int) -> dict:
    await once_only(0)  # so that introspect's seq is not the first one
    return await introspect(x)


@ev.activity(timeout="5s", heartbeat_timeout="3s")
async def add(x: int, y: int = 1) -> int:
    return x + y


@ev.workflow
async def call_add_n(n: int) -> list:
    """Calls `add(i, y=100)` n times one after the other and reports each outcome."""
    out: list[Any] = []
    for i in range(n):
        try:
            out.append(await add(i, y=100))
        except ev.ActivityFailed as exc:
            out.append(f"failed {exc.error}: {exc.message}")
        except ev.Timeout as exc:
            out.append(type(exc).__name__)
    return out


@ev.activity(retry=ev.RetryPolicy(max_attempts=3, initial_interval="4s", backoff=1))
async def add_retrying(x: int, y: int = 1) -> int:
    return x + y


@ev.workflow
async def call_add_retrying(x: int) -> dict:
    try:
        return {"value": await add_retrying(x, y=1), "at": ev.now().isoformat()}
    except ev.ActivityFailed as exc:
        return {"error": describe(exc), "at": ev.now().isoformat()}


THREADS: list[int] = []


@ev.activity(retry=ev.RetryPolicy(max_attempts=2, initial_interval="1s"))
def multiply(a: int, b: int) -> int:
    THREADS.append(threading.get_ident())
    beat = ev.heartbeat_sync()
    if beat.cancelled:
        raise RuntimeError("cancelled while running")
    if ev.activity_info().attempt == 1 and a < 0:
        raise ArithmeticError("negative on the first attempt")
    return a * b


@ev.workflow
async def call_multiply(pair: list) -> dict:
    return {"value": await multiply(pair[0], pair[1]), "at": ev.now().isoformat()}


@ev.activity
def blocking_sum(values: list[int]) -> int:
    return sum(values)


@ev.activity
async def returns_object(x: int):  # no annotation: anything goes until it must become JSON
    return object()


@ev.workflow
async def call_returns_object(x: int) -> dict:
    try:
        await returns_object(x)
    except ev.ActivityFailed as exc:
        return {"error": describe(exc)}
    return {"error": None}


@ev.activity(retry=ev.RetryPolicy(max_attempts=3, initial_interval="1s"))
async def noisy(x: int) -> int:
    attempt = ev.activity_info().attempt
    print(f"noisy attempt {attempt}")
    if attempt < 3:
        raise RuntimeError("not yet")
    return x


@ev.workflow
async def call_noisy(x: int) -> int:
    print("workflow before")
    value = await noisy(x)
    await ev.sleep("1m")
    print("workflow after")
    return value


# ------------------------------------------------------------------------------------ retries and backoff


async def test_retries_with_backoff_finish_at_start_plus_waits() -> None:
    """Two mocked failures then the real function: waits 2s then 2s*3=6s, so it ends at start+8s."""
    async with make_env() as env:
        env.mock_activity(flaky).fail_once(RuntimeError("one")).fail_once(RuntimeError("two"))
        h = await call_flaky.start(4)
        await env.advance("7s")
        assert (await h.status()).status == ev.ExecutionStatus.IN_PROGRESS
        await env.advance("1s")
        status = await h.status()
        assert status.status == ev.ExecutionStatus.SUCCEEDED
        assert status.end_time == START + timedelta(seconds=8)
        assert await h.result() == {"value": 40, "at": (START + timedelta(seconds=8)).isoformat()}
        history = await h.history()
        seq = activity_seq(history, "flaky")
        assert of_seq(history, seq) == ["ActivityScheduled", "ActivitySucceeded"]
        [done] = [event for event in history if event.type == "ActivitySucceeded"]
        assert done.attempts == 3
        assert done.result == 40
        assert done.timestamp == START + timedelta(seconds=8)


async def test_max_interval_caps_the_wait() -> None:
    """backoff 10 from 10s would wait 10s, 100s, 1000s; max_interval=30s makes it 10s, 30s, 30s."""
    async with make_env() as env:
        env.mock_activity(flaky).fail_once(RuntimeError("a")).fail_once(RuntimeError("b")).fail_once(
            RuntimeError("c")
        ).succeed(5)
        result = await call_capped(1)
        assert result == {"value": 5, "at": (START + timedelta(seconds=70)).isoformat()}
        assert env.now == START + timedelta(seconds=70)


async def test_running_out_of_attempts_gives_the_last_error() -> None:
    async with make_env() as env:
        env.mock_activity(flaky).fail_once(KeyError("first")).fail_once(RuntimeError("second")).fail(
            ValueError("third and last")
        )
        h = await call_flaky.start(1)
        result = await h.result()
        assert result["error"]["type"] == "ActivityFailed"
        assert result["error"]["error"] == "ValueError"
        assert result["error"]["message"] == "third and last"
        assert result["error"]["attempts"] == 3
        assert result["error"]["activity"] == "flaky"
        assert result["at"] == (START + timedelta(seconds=8)).isoformat()
        history = await h.history()
        seq = activity_seq(history, "flaky")
        assert of_seq(history, seq) == ["ActivityScheduled", "ActivityFailed"]
        [failed] = [event for event in history if event.type == "ActivityFailed"]
        assert (failed.error, failed.message, failed.attempts) == ("ValueError", "third and last", 3)


async def test_default_policy_is_a_single_attempt() -> None:
    async with make_env() as env:
        mock = env.mock_activity(once_only).fail_once(RuntimeError("down")).succeed(99)
        result = await call_once_only(1)
        assert result["error"]["error"] == "RuntimeError"
        assert result["error"]["attempts"] == 1
        assert mock.calls == 1
        assert env.now == START


async def test_unhandled_activity_failure_fails_the_execution_with_original_type() -> None:
    async with make_env() as env:
        env.mock_activity(flaky).fail(LookupError("gone"))
        h = await call_capped.start(1)
        with pytest.raises(ev.ExecutionFailed) as caught:
            await h.result()
        assert caught.value.error == "LookupError"
        status = await h.status()
        assert (status.status, status.error, status.message) == (ev.ExecutionStatus.FAILED, "LookupError", "gone")


# ------------------------------------------------------------------------------------------ non_retryable


async def test_non_retryable_by_class_matches_subclasses_of_a_real_exception() -> None:
    """`charge` lists ValueError; the real function raises InsufficientFunds(ValueError): one attempt."""
    async with make_env() as env:
        result = await call_charge(500)
        assert result["error"]["error"] == "InsufficientFunds"
        assert result["error"]["message"] == "cannot charge 500"
        assert result["error"]["attempts"] == 1
        assert result["at"] == START.isoformat()
        assert env.now == START


async def test_non_retryable_class_does_not_stop_other_errors() -> None:
    async with make_env() as env:
        env.mock_activity(charge).fail(RuntimeError("flaky network"))
        result = await call_charge(5)
        assert result["error"]["attempts"] == 5
        # waits 1s, 2s, 4s, 8s
        assert result["at"] == (START + timedelta(seconds=15)).isoformat()


@pytest.mark.parametrize(
    ("non_retryable", "error", "attempts"),
    [
        (["KeyError"], KeyError("k"), 1),  # by type-name string
        (["LookupError"], KeyError("k"), 1),  # a base class's name matches the subclass
        (["Exception"], InsufficientFunds("x"), 1),  # anything in the class hierarchy
        (["KeyError"], "KeyError", 1),  # mocked failure given as a type name
        (["KeyError"], ValueError("v"), 3),  # not listed: retried until attempts run out
        (["LookupError"], "KeyError", 3),  # a bare name has no known hierarchy
    ],
)
async def test_non_retryable_by_name_and_hierarchy(non_retryable: list[str], error: Any, attempts: int) -> None:
    async with make_env() as env:
        mock = env.mock_activity(plain_target).fail(error, "mocked")
        result = await call_with_policy({"max_attempts": 3, "non_retryable": non_retryable})
        assert result["error"]["attempts"] == attempts
        assert mock.calls == attempts


async def test_retry_policy_accepts_classes_and_names() -> None:
    policy = ev.RetryPolicy(max_attempts=2, non_retryable=(ValueError, "KeyError"))
    assert policy.non_retryable == ("ValueError", "KeyError")
    with pytest.raises(ValueError, match="non_retryable entries must be exception classes or names, got 42"):
        ev.RetryPolicy(non_retryable=(42,))


# ---------------------------------------------------------------------------------------------- timeouts


async def test_mocked_timeout_raises_timeout_at_the_activity_timeout() -> None:
    async with make_env() as env:
        env.mock_activity(slow).timeout()
        h = await call_slow.start({})
        await env.advance("29s")
        assert (await h.status()).status == ev.ExecutionStatus.IN_PROGRESS
        result = await h.result()
        assert result["error"]["type"] == "Timeout"
        assert result["error"]["is_timeout_error"] is True
        assert result["at"] == (START + timedelta(seconds=30)).isoformat()
        history = await h.history()
        seq = activity_seq(history, "slow")
        assert of_seq(history, seq) == ["ActivityScheduled", "ActivityTimedOut"]
        [timed_out] = [event for event in history if event.type == "ActivityTimedOut"]
        assert timed_out.timestamp == START + timedelta(seconds=30)
        assert timed_out.attempts == 1


async def test_timed_out_attempts_count_and_are_retried() -> None:
    """30s timeout, wait 1s, 30s timeout, wait 2s, then success: start+63s, 3 attempts."""
    async with make_env() as env:
        env.mock_activity(slow).timeout_once().timeout_once().succeed(7)
        h = await call_slow.start({"retry": 3})
        result = await h.result()
        assert result == {"value": 7, "at": (START + timedelta(seconds=63)).isoformat()}
        [done] = [event for event in await h.history() if event.type == "ActivitySucceeded"]
        assert done.attempts == 3


async def test_timeouts_use_up_attempts() -> None:
    async with make_env() as env:
        env.mock_activity(slow).timeout()
        h = await call_slow.start({"retry": 2})
        result = await h.result()
        assert result["error"]["type"] == "Timeout"
        assert result["at"] == (START + timedelta(seconds=61)).isoformat()
        [timed_out] = [event for event in await h.history() if event.type == "ActivityTimedOut"]
        assert timed_out.attempts == 2


async def test_timeout_non_retryable_stops_at_first_timeout() -> None:
    async with make_env() as env:
        env.mock_activity(slow).timeout()
        h = await call_slow.start({"retry": 5, "non_retryable": ["Timeout"]})
        result = await h.result()
        assert result["at"] == (START + timedelta(seconds=30)).isoformat()
        [timed_out] = [event for event in await h.history() if event.type == "ActivityTimedOut"]
        assert timed_out.attempts == 1


async def test_timeout_non_retryable_given_as_class() -> None:
    """`non_retryable=(ev.Timeout,)` as a class on the definition, not as a name."""
    async with make_env() as env:
        variant = slow.options(retry=ev.RetryPolicy(max_attempts=4, non_retryable=(ev.Timeout,)))
        assert variant.retry.non_retryable == ("Timeout",)
        env.mock_activity(slow).timeout()
        h = await call_slow.start({"retry": 4, "non_retryable": list(variant.retry.non_retryable)})
        result = await h.result()
        assert result["at"] == (START + timedelta(seconds=30)).isoformat()


async def test_mocked_heartbeat_timeout() -> None:
    async with make_env() as env:
        env.mock_activity(beats).heartbeat_timeout()
        h = await call_beats.start(1)
        await env.advance("9s")
        assert (await h.status()).status == ev.ExecutionStatus.IN_PROGRESS
        result = await h.result()
        assert result["error"]["type"] == "HeartbeatTimeout"
        assert result["error"]["is_timeout_error"] is True
        assert result["at"] == (START + timedelta(seconds=10)).isoformat()
        history = await h.history()
        seq = activity_seq(history, "beats")
        assert of_seq(history, seq) == ["ActivityScheduled", "ActivityHeartbeatTimedOut"]
        [event] = [event for event in history if event.type == "ActivityHeartbeatTimedOut"]
        assert event.timestamp == START + timedelta(seconds=10)
    assert issubclass(ev.HeartbeatTimeout, ev.Timeout)


async def test_heartbeats_keep_an_async_activity_alive_until_they_stop() -> None:
    TOKENS.clear()
    async with make_env() as env:
        h = await call_long_async.start(1)
        await env.tick()
        [token] = TOKENS
        for _ in range(6):  # 36s of virtual time, well past the 10s heartbeat timeout
            await env.advance("6s")
            beat = await env.send_activity_heartbeat(token)
            assert beat.cancelled is False
            assert (await h.status()).status == ev.ExecutionStatus.IN_PROGRESS
        last_beat = env.now
        await env.advance("9s")
        assert (await h.status()).status == ev.ExecutionStatus.IN_PROGRESS
        result = await h.result()
        assert result["error"]["type"] == "HeartbeatTimeout"
        assert result["at"] == (last_beat + timedelta(seconds=10)).isoformat()
        # the attempt is over: heartbeats say so and the token cannot complete it any more
        assert (await env.send_activity_heartbeat(token)).cancelled is True
        with pytest.raises(ev.EventualError):
            await env.send_activity_success(token, "late")


# -------------------------------------------------------------------------------------- async completion


async def test_async_completion_with_success() -> None:
    TOKENS.clear()
    REAL_CALLS.clear()
    async with make_env() as env:
        h = await call_approve_later.start("loan-1")
        await env.tick()
        assert REAL_CALLS == ["loan-1"]
        [token] = TOKENS
        await env.advance("3h")
        assert (await h.status()).status == ev.ExecutionStatus.IN_PROGRESS
        await env.send_activity_success(token, "approved")
        result = await h.result()
        assert result == {"value": "approved", "at": (START + timedelta(hours=3)).isoformat()}
        [done] = [event for event in await h.history() if event.type == "ActivitySucceeded"]
        assert done.result == "approved"


async def test_async_completion_with_failure() -> None:
    TOKENS.clear()
    async with make_env() as env:
        h = await call_approve_later.start("loan-2")
        await env.tick()
        await env.send_activity_failure(TOKENS[0], "CardDeclined", "insufficient limit")
        result = await h.result()
        assert result["error"]["error"] == "CardDeclined"
        assert result["error"]["message"] == "insufficient limit"
        assert result["error"]["attempts"] == 1


def _tamper_signature(token: str) -> str:
    body, mac = token.split(".")
    flipped = "0" if mac[-1] != "0" else "1"
    return f"{body}.{mac[:-1]}{flipped}"


def _retarget(token: str, seq_delta: int) -> str:
    """Same signature, different claimed (execution, seq, attempt)."""
    body, mac = token.split(".")
    execution_id, seq, attempt = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    new_body = json.dumps([execution_id, seq + seq_delta, attempt], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(new_body).decode().rstrip("=") + "." + mac


async def test_forged_tokens_are_rejected_and_record_nothing() -> None:
    TOKENS.clear()
    async with make_env() as env:
        h = await call_approve_later.start("loan-3")
        await env.tick()
        [token] = TOKENS
        before = [event.model_dump(mode="json") for event in await h.history()]
        async with make_env() as other_env:  # a token signed with another environment's key
            other = await call_approve_later.start("loan-3")
            await other_env.tick()
            foreign = TOKENS[-1]
            await other_env.send_activity_success(foreign, "other")
            assert (await other.result())["value"] == "other"
        forged = [
            _tamper_signature(token),
            _retarget(token, 1),
            "eyJhIjoxfQ." + "0" * 64,  # sign-looking garbage
            "not-a-token",
            "",
            foreign,
        ]
        for bad in forged:
            with pytest.raises(ev.EventualError):
                await env.send_activity_success(bad, "forged")
            with pytest.raises(ev.EventualError):
                await env.send_activity_failure(bad, "Forged", "nope")
            await env.tick()
            assert [event.model_dump(mode="json") for event in await h.history()] == before
        assert (await h.status()).status == ev.ExecutionStatus.IN_PROGRESS
        # the genuine token still works
        await env.send_activity_success(token, "genuine")
        assert (await h.result())["value"] == "genuine"


async def test_a_token_cannot_be_used_twice() -> None:
    TOKENS.clear()
    async with make_env() as env:
        h = await call_approve_later.start("loan-4")
        await env.tick()
        [token] = TOKENS
        await env.send_activity_success(token, "first")
        with pytest.raises(ev.EventualError):
            await env.send_activity_success(token, "second")
        with pytest.raises(ev.EventualError):
            await env.send_activity_failure(token, "Late", "too late")
        assert (await h.result())["value"] == "first"
        history = await h.history()
        assert [event.type for event in history].count("ActivitySucceeded") == 1
        with pytest.raises(ev.EventualError):
            await env.send_activity_success(token, "third")


async def test_async_result_mock_form() -> None:
    TOKENS.clear()
    REAL_CALLS.clear()
    async with make_env() as env:
        mocked_tokens: list[str] = []

        async def save(token: str) -> None:  # async callbacks are awaited
            mocked_tokens.append(token)

        env.mock_activity(approve_later).async_result(save)
        h = await call_approve_later.start("loan-5")
        await env.tick()
        assert REAL_CALLS == []  # the real function did not run
        [token] = mocked_tokens
        await env.advance("1 day")
        await env.send_activity_success(token, "by mock")
        assert await h.result() == {"value": "by mock", "at": (START + timedelta(days=1)).isoformat()}


async def test_async_result_once_then_standing_behaviour() -> None:
    async with make_env() as env:
        tokens: list[str] = []
        env.mock_activity(add).async_result_once(tokens.append).succeed(-1)
        h = await call_add_n.start(2)
        await env.tick()
        [token] = tokens
        await env.send_activity_success(token, 41)
        assert await h.result() == [41, -1]


# ---------------------------------------------------------------------------------- heartbeats and info


async def test_heartbeat_and_activity_info_across_retries() -> None:
    ATTEMPT_INFO.clear()
    async with make_env() as env:
        h = await call_introspect.start(3)
        assert await h.result() == {"attempt": 3}
        history = await h.history()
        seq = activity_seq(history, "introspect")
        assert seq != activity_seq(history, "once_only")
        assert [item["attempt"] for item in ATTEMPT_INFO] == [1, 2, 3]
        assert all(item["cancelled"] is False for item in ATTEMPT_INFO)
        assert {item["execution_id"] for item in ATTEMPT_INFO} == {h.id}
        assert {item["activity"] for item in ATTEMPT_INFO} == {"introspect"}
        assert {item["seq"] for item in ATTEMPT_INFO} == {seq}
        keys = {item["idempotency_key"] for item in ATTEMPT_INFO}
        assert len(keys) == 1
        assert keys.pop()
        assert len({item["token"] for item in ATTEMPT_INFO}) == 3  # one token per attempt
        assert env.now == START + timedelta(seconds=3)


async def test_idempotency_keys_differ_between_calls() -> None:
    ATTEMPT_INFO.clear()
    async with make_env():
        first = await call_introspect.start(1)
        second = await call_introspect.start(2)
        await first.result()
        await second.result()
        keys = {(item["execution_id"], item["idempotency_key"]) for item in ATTEMPT_INFO}
        assert len(keys) == 2
        assert len({key for _, key in keys}) == 2


async def test_activity_helpers_refuse_to_run_outside_an_activity() -> None:
    with pytest.raises(ev.EventualError):
        ev.activity_info()
    with pytest.raises(ev.EventualError):
        await ev.heartbeat()
    with pytest.raises(ev.EventualError):
        ev.async_result(lambda token: None)


# ------------------------------------------------------------------------------------------------ mocks


async def test_succeed_once_then_standing_succeed() -> None:
    async with make_env() as env:
        env.mock_activity(add).succeed_once(1).succeed_once(2).succeed(3)
        assert await call_add_n(4) == [1, 2, 3, 3]


async def test_fail_once_then_standing_fail_with_class_instance_and_name() -> None:
    async with make_env() as env:
        env.mock_activity(add).fail_once(ValueError("first")).fail_once(RuntimeError).fail("KeyError", "missing")
        assert await call_add_n(4) == [
            "failed ValueError: first",
            "failed RuntimeError: ",
            "failed KeyError: missing",
            "failed KeyError: missing",
        ]


async def test_invoke_gets_the_activity_arguments() -> None:
    async with make_env() as env:
        seen: list[tuple[int, int]] = []

        def sync_fake(x: int, y: int = 0) -> int:
            seen.append((x, y))
            return -x

        async def async_fake(x: int, y: int = 0) -> int:
            seen.append((x, y))
            return x * 1000 + y

        env.mock_activity(add).invoke_once(sync_fake).invoke(async_fake)
        assert await call_add_n(3) == [0, 1100, 2100]
        assert seen == [(0, 100), (1, 100), (2, 100)]


async def test_invoke_real_once_and_standing() -> None:
    async with make_env() as env:
        env.mock_activity(add).invoke_real_once().succeed_once(-5).invoke_real()
        assert await call_add_n(3) == [100, -5, 102]
        env.mock_activity(add).succeed(0)
        assert await call_add_n(2) == [0, 0]


async def test_timeout_and_heartbeat_timeout_once() -> None:
    async with make_env() as env:
        env.mock_activity(add).timeout_once().heartbeat_timeout_once().invoke_real()
        h = await call_add_n.start(3)
        assert await h.result() == ["Timeout", "HeartbeatTimeout", 102]
        # add has timeout=5s and heartbeat_timeout=3s
        assert (await h.status()).end_time == START + timedelta(seconds=8)


async def test_standing_timeout_and_heartbeat_timeout() -> None:
    async with make_env() as env:
        env.mock_activity(add).timeout()
        assert await call_add_n(2) == ["Timeout", "Timeout"]
        env.mock_activity(add).heartbeat_timeout()
        assert await call_add_n(2) == ["HeartbeatTimeout", "HeartbeatTimeout"]


async def test_reset_mocks_restores_the_real_activity() -> None:
    async with make_env() as env:
        mock = env.mock_activity(add).succeed(0)
        assert await call_add_n(2) == [0, 0]
        assert mock.calls == 2
        env.reset_mocks()
        assert await call_add_n(2) == [100, 101]
        assert mock.calls == 2


async def test_a_new_mock_replaces_the_previous_one() -> None:
    async with make_env() as env:
        env.mock_activity(add).succeed(1)
        env.mock_activity(add).succeed(2)
        assert await call_add_n(1) == [2]


async def test_mocked_failures_count_as_attempts() -> None:
    """Both `fail` and an exception from an `invoke` function use up attempts and wait the backoff."""
    async with make_env() as env:

        def boom(x: int, y: int = 0) -> int:
            raise OSError(f"boom {x}")

        mock = env.mock_activity(add_retrying).fail_once("Transient", "blip").invoke_once(boom).succeed(9)
        h = await call_add_retrying.start(1)
        assert await h.result() == {"value": 9, "at": (START + timedelta(seconds=8)).isoformat()}
        assert mock.calls == 3
        [done] = [event for event in await h.history() if event.type == "ActivitySucceeded"]
        assert done.attempts == 3


async def test_exception_from_invoke_uses_up_attempts() -> None:
    async with make_env() as env:

        async def boom(x: int, y: int = 0) -> int:
            raise OSError(f"boom {x}")

        env.mock_activity(add_retrying).invoke(boom)
        result = await call_add_retrying(7)
        assert result["error"]["error"] == "OSError"
        assert result["error"]["message"] == "boom 7"
        assert result["error"]["attempts"] == 3
        assert result["at"] == (START + timedelta(seconds=8)).isoformat()


# ---------------------------------------------------------------------------------------- plain def


async def test_sync_activity_runs_in_a_thread_and_retries() -> None:
    THREADS.clear()
    async with make_env():
        assert await call_multiply([6, 7]) == {"value": 42, "at": START.isoformat()}
        assert THREADS
        assert threading.get_ident() not in THREADS
        THREADS.clear()
        assert await call_multiply([-2, 5]) == {"value": -10, "at": (START + timedelta(seconds=1)).isoformat()}
        assert len(THREADS) == 2


async def test_sync_activity_invoked_by_a_workflow_without_retry() -> None:
    @ev.workflow
    async def sum_in_thread(values: list[int]) -> int:
        return await blocking_sum(values)

    async with make_env():
        assert await sum_in_thread([1, 2, 3, 4]) == 10


# ------------------------------------------------------------------------------------ outside a workflow


async def test_outside_a_workflow_an_activity_simply_runs() -> None:
    THREADS.clear()
    assert await add(2, y=3) == 5
    assert await once_only(41) == 42
    assert await blocking_sum([5, 6]) == 11
    with pytest.raises(InsufficientFunds):
        await charge(1000)  # no retries, no ActivityFailed: just the function


async def test_outside_a_workflow_inside_an_environment_the_function_runs_unmocked() -> None:
    """Mocks replace activities the runtime schedules; a direct call from test code is just a call."""
    async with make_env() as env:
        env.mock_activity(add).succeed(0)
        assert await add(20, y=1) == 21


# ------------------------------------------------------------------------------------ results and logs


async def test_a_result_that_is_not_json_fails_the_call_naming_the_activity() -> None:
    async with make_env():
        result = await call_returns_object(1)
        assert result["error"] is not None
        assert result["error"]["type"] == "ActivityFailed"
        assert "returns_object" in result["error"]["message"]


async def test_a_mocked_result_that_does_not_match_the_annotation_fails() -> None:
    async with make_env() as env:
        env.mock_activity(once_only).succeed(object())
        result = await call_once_only(1)
        assert result["error"]["type"] == "ActivityFailed"
        assert "once_only" in result["error"]["message"]


@pytest.mark.parametrize("always_replay", [False, True])
async def test_activity_output_is_captured_once_per_attempt(always_replay: bool) -> None:
    async with make_env(always_replay=always_replay) as env:
        h = await call_noisy.start(5)
        assert await h.result() == 5
        logs = await h.logs()
        activity_lines = [(entry.message, entry.time) for entry in logs if entry.source == "noisy"]
        # each retried failure is noted after the attempt's own output (what the timeline draws attempts from)
        assert activity_lines == [
            ("noisy attempt 1", START),
            (
                "attempt 1 of activity 'noisy' (seq 0) failed: RuntimeError: not yet; "
                "retrying at 2024-01-01T12:00:01+00:00 (in 1s)",
                START,
            ),
            ("noisy attempt 2", START + timedelta(seconds=1)),
            (
                "attempt 2 of activity 'noisy' (seq 0) failed: RuntimeError: not yet; "
                "retrying at 2024-01-01T12:00:03+00:00 (in 2s)",
                START + timedelta(seconds=1),
            ),
            ("noisy attempt 3", START + timedelta(seconds=3)),
        ]
        workflow_lines = [entry.message for entry in logs if entry.source == "workflow"]
        assert workflow_lines == ["workflow before", "workflow after"]
        if always_replay:
            assert env.replays > 0


async def test_concurrent_activities_in_gather_each_get_their_own_seq() -> None:
    @ev.workflow
    async def fan_out(n: int) -> list:
        return list(await asyncio.gather(*(add(i, y=0) for i in range(n))))

    async with make_env() as env:
        seen: list[int] = []

        def record(x: int, y: int = 0) -> int:
            seen.append(x)
            return x * 2

        env.mock_activity(add).invoke(record)
        h = await fan_out.start(4)
        assert await h.result() == [0, 2, 4, 6]
        history = await h.history()
        seqs = [event.seq for event in history if event.type == "ActivityScheduled"]
        assert len(set(seqs)) == 4
        assert sorted(seen) == [0, 1, 2, 3]


# ------------------------------------------------------------------------------------------ inline


def test_inline_activities_that_could_not_run_inline_are_refused_at_decoration() -> None:
    """An inline activity runs inside the AWS orchestrator's invocation (60 s): its timeout must fit in it
    (50 s, 10 s kept to commit), and nothing outside can watch it, so it may neither heartbeat nor complete by
    token. Each is refused where it is declared, with the way out."""
    service = ev.Service("tests-activities-inline")  # decorators below register into it
    cases: list[tuple[dict[str, Any], str]] = [
        ({"timeout": "2m"}, r"timeout of 120 s.*time limit is 60 s: at most 50 s fit \(make it a queued"),
        ({"heartbeat_timeout": "5s"}, "cannot have a heartbeat_timeout"),
    ]
    for options, says in cases:
        with pytest.raises(ev.EventualError, match=says):

            @ev.activity(inline=True, **options)
            async def too_long() -> None: ...

    with pytest.raises(ev.EventualError, match=r"calls ev.heartbeat\(\).*can neither heartbeat"):

        @ev.activity(inline=True)
        async def beats() -> None:
            await ev.heartbeat()

    with pytest.raises(ev.EventualError, match=r"calls ev.async_result\(\)"):

        @ev.activity(inline=True, timeout="5s")
        def defers() -> Any:
            def later() -> Any:  # found in nested functions too
                return ev.async_result(print)

            return later()

    @ev.activity(inline=True, timeout="50s", retry=RETRY_3)
    async def fits(x: int) -> int:
        return x

    assert fits.inline
    assert fits.spec()["inline"] is True
    with pytest.raises(ev.EventualError, match="timeout of 51 s"):
        fits.options(timeout="51s")
    assert fits.options(timeout="1s").inline
    assert set(service.activities) == {"fits"}  # nothing refused was registered

    @ev.activity(heartbeat_timeout="5s")  # not inline: all of it allowed
    async def beating() -> None:
        await ev.heartbeat()

    assert not beating.inline
    assert beating.spec()["inline"] is False
