"""Signals (buffering, expect timeouts, on() handlers, de-duplication, typed payloads, workflow-to-workflow)
and events (exactly-once publishing from workflows, subscription retries and dead letters, test subscribers),
plus workflow output capture across replays, in a TestEnvironment."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

import eventual_nb as ev

SERVICE = ev.Service("tests-signals-events")

START = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)


def make_env(**options: Any) -> ev.testing.TestEnvironment:
    return ev.testing.TestEnvironment(service=SERVICE, start=START, **options)


def dumped(history: list[Any]) -> list[dict[str, Any]]:
    return [event.model_dump(mode="json") for event in history]


def types_of(history: list[Any]) -> list[str]:
    return [event.type for event in history]


# ------------------------------------------------------------------------------------------ definitions


class Approval(BaseModel):
    ok: bool
    by: str


note = ev.signal("note")
approval = ev.signal("approval", Approval)


class HandlerRejected(Exception):
    """Raised by an on() handler on purpose."""


@ev.workflow
async def collect_notes(count: int) -> list:
    """Sleeps first so that signals sent at the start are buffered, then expects `count` of them."""
    await ev.sleep("1h")
    return [await note.expect() for _ in range(count)]


@ev.workflow
async def expect_one_note(x: int) -> dict:
    first = await note.expect()
    await ev.sleep("10m")
    return {"first": first, "at": ev.now().isoformat()}


@ev.workflow
async def expect_with_timeout(timeout: str) -> dict:
    try:
        payload = await note.expect(timeout=timeout)
    except ev.Timeout as exc:
        return {"timed_out": True, "is_timeout_error": isinstance(exc, TimeoutError), "at": ev.now().isoformat()}
    return {"timed_out": False, "payload": payload, "at": ev.now().isoformat()}


@ev.workflow
async def expect_with_timeout_uncaught(x: int) -> Any:
    return await note.expect(timeout="5m")


@ev.workflow
async def two_handlers(count: int) -> list:
    seen: list[Any] = []
    note.on(lambda payload: seen.append(["first", payload]))
    note.on(lambda payload: seen.append(["second", payload]))
    await ev.condition(lambda: len(seen) >= 2 * count)
    return seen


@ev.activity
async def record_note(text: str) -> str:
    return f"recorded {text}"


@ev.workflow
async def durable_handler(count: int) -> list:
    results: list[str] = []

    async def handle(payload: str) -> None:
        results.append(await record_note(payload))

    note.on(handle)
    await ev.condition(lambda: len(results) >= count)
    return results


@ev.workflow
async def dispose_after_one(x: int) -> dict:
    handled: list[Any] = []
    subscription = note.on(handled.append)
    await ev.condition(lambda: len(handled) >= 1)
    subscription.dispose()
    later = await note.expect()
    return {"handled": handled, "expected": later}


@ev.workflow
async def raising_handler(asynchronous: bool) -> str:
    def fail(payload: Any) -> None:
        raise HandlerRejected(f"rejected {payload}")

    async def fail_async(payload: Any) -> None:
        await ev.sleep("1s")
        raise HandlerRejected(f"rejected later {payload}")

    note.on(fail_async if asynchronous else fail)
    await ev.sleep("1 day")
    return "slept"


@ev.workflow
async def dedup_notes(x: int) -> dict:
    received = [await note.expect(), await note.expect()]
    try:
        received.append(await note.expect(timeout="1h"))
    except ev.Timeout:
        return {"received": received, "third": None}
    return {"received": received, "third": "arrived"}


@ev.workflow
async def quick(x: int) -> int:
    return x


@ev.workflow
async def wait_approval(x: int) -> dict:
    decision = await approval.expect()
    return {"type": type(decision).__name__, "ok": decision.ok, "by": decision.by}


@ev.workflow
async def send_note_to(target: str) -> str:
    await note.send(target, f"hello from {ev.workflow_info().execution_id}")
    await ev.sleep("1m")
    return "sent"


@ev.workflow
async def child_waits_for_note() -> str:
    return await note.expect()


@ev.workflow
async def parent_signals_child(text: str) -> str:
    child = await child_waits_for_note.start()
    await child.signal(note, text)
    return await child.result()


class Opened(ev.Event):
    account_id: str


class Closed(ev.Event):
    account_id: str
    reason: str = ""


class Flaky(ev.Event):
    key: str
    fail_times: int


class DeliveryError(Exception):
    pass


OPENED: list[str] = []
FLAKY_ATTEMPTS: Counter[str] = Counter()


@ev.subscription(Opened, name="count-opened")
async def count_opened(event: Opened) -> None:
    assert isinstance(event, Opened)
    OPENED.append(event.account_id)


@ev.subscription(Flaky, name="flaky-handler", retry=ev.RetryPolicy(max_attempts=3, initial_interval="1m", backoff=2))
def flaky_handler(event: Flaky) -> None:
    FLAKY_ATTEMPTS[event.key] += 1
    if FLAKY_ATTEMPTS[event.key] <= event.fail_times:
        raise DeliveryError(f"attempt {FLAKY_ATTEMPTS[event.key]} of {event.key} failed")


@ev.workflow
async def publish_accounts(prefix: str) -> int:
    await ev.publish(Opened(account_id=f"{prefix}-1"))
    await ev.sleep("1h")
    await ev.publish(Opened(account_id=f"{prefix}-2"), Opened(account_id=f"{prefix}-3"))
    await ev.sleep("1h")
    return 3


@ev.workflow
async def publish_flaky(fail_times: int) -> str:
    await ev.publish(Flaky(key=ev.workflow_info().execution_id, fail_times=fail_times))
    return "published"


@ev.workflow
async def printing(x: int) -> int:
    print(f"before sleep {x}")
    logging.getLogger("tests.printing").warning("warned %s", x)
    await ev.sleep("1h")
    print(f"after sleep {x}")
    await ev.sleep("1h")
    print("done")
    return x


# --------------------------------------------------------------------------------------------- buffering


@pytest.mark.parametrize("always_replay", [False, True])
async def test_signals_sent_before_expect_are_buffered_oldest_first(always_replay: bool) -> None:
    async with make_env(always_replay=always_replay) as env:
        h = await collect_notes.start(3)
        await note.send(h, "a")  # before the workflow even ran its first step
        await env.tick()
        await h.signal(note, "b")
        await env.advance("10m")
        await note.send(h.id, "c")
        assert await h.result() == ["a", "b", "c"]
        received = [event for event in await h.history() if event.type == "SignalReceived"]
        assert [event.payload for event in received] == ["a", "b", "c"]
        assert all(event.seq is None for event in received)


@pytest.mark.parametrize("always_replay", [False, True])
async def test_one_buffered_signal_per_expect(always_replay: bool) -> None:
    """Three buffered signals, three expects: each expect takes exactly one, oldest first (the third
    expect, which has a timeout, still finds one left in the buffer)."""
    async with make_env(always_replay=always_replay) as env:
        h = await dedup_notes.start(0)
        for payload in ("older", "newer", "newest"):
            await note.send(h, payload)
        await env.tick()
        assert await h.result() == {"received": ["older", "newer", "newest"], "third": "arrived"}


async def test_a_signal_reaches_a_waiting_expect_at_the_time_it_is_sent() -> None:
    async with make_env() as env:
        h = await expect_one_note.start(0)
        await env.advance("3h")
        await note.send(h, "late")
        assert await h.result() == {"first": "late", "at": (START + timedelta(hours=3, minutes=10)).isoformat()}


# ------------------------------------------------------------------------------------------ expect timeout


async def test_expect_timeout_raises_timeout_at_the_right_virtual_time() -> None:
    async with make_env() as env:
        h = await expect_with_timeout.start("2h")
        await env.advance("1h59m")
        assert (await h.status()).status == ev.ExecutionStatus.IN_PROGRESS
        result = await h.result()
        assert result == {"timed_out": True, "is_timeout_error": True, "at": (START + timedelta(hours=2)).isoformat()}


async def test_expect_with_timeout_returns_a_signal_that_arrives_in_time() -> None:
    async with make_env() as env:
        h = await expect_with_timeout.start("2h")
        await env.advance("90m")
        await note.send(h, "just in time")
        result = await h.result()
        assert result == {
            "timed_out": False,
            "payload": "just in time",
            "at": (START + timedelta(minutes=90)).isoformat(),
        }
        # the timeout's timer must not fire later or leave anything behind
        await env.advance("1 day")
        assert (await h.status()).status == ev.ExecutionStatus.SUCCEEDED


async def test_uncaught_expect_timeout_fails_the_execution() -> None:
    async with make_env():
        h = await expect_with_timeout_uncaught.start(0)
        with pytest.raises(ev.ExecutionFailed) as caught:
            await h.result()
        assert caught.value.error == "Timeout"
        status = await h.status()
        assert status.end_time == START + timedelta(minutes=5)
        assert "note" in (status.message or "")


# ---------------------------------------------------------------------------------------------- on()


@pytest.mark.parametrize("always_replay", [False, True])
async def test_on_handlers_are_called_in_registration_order(always_replay: bool) -> None:
    async with make_env(always_replay=always_replay) as env:
        h = await two_handlers.start(2)
        await env.tick()
        await note.send(h, {"n": 1})
        await env.advance("1m")
        await note.send(h, {"n": 2})
        assert await h.result() == [
            ["first", {"n": 1}],
            ["second", {"n": 1}],
            ["first", {"n": 2}],
            ["second", {"n": 2}],
        ]


@pytest.mark.parametrize("always_replay", [False, True])
async def test_async_handler_makes_durable_calls(always_replay: bool) -> None:
    async with make_env(always_replay=always_replay) as env:
        h = await durable_handler.start(2)
        await env.tick()
        await note.send(h, "x")
        await note.send(h, "y")
        assert await h.result() == ["recorded x", "recorded y"]
        history = await h.history()
        scheduled = [event for event in history if event.type == "ActivityScheduled"]
        assert [(event.name, event.input) for event in scheduled] == [
            ("record_note", {"text": "x"}),
            ("record_note", {"text": "y"}),
        ]
        assert types_of(history).count("ActivitySucceeded") == 2


async def test_dispose_stops_deliveries_and_later_signals_are_buffered() -> None:
    async with make_env() as env:
        h = await dispose_after_one.start(0)
        await env.tick()
        await note.send(h, "to handler")
        await env.tick()
        await env.advance("1m")
        await note.send(h, "to expect")
        assert await h.result() == {"handled": ["to handler"], "expected": "to expect"}


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_an_exception_in_a_handler_fails_the_execution_at_once(asynchronous: bool) -> None:
    async with make_env() as env:
        h = await raising_handler.start(asynchronous)
        await env.advance("5m")
        await note.send(h, "bad")
        await env.advance("1s")
        status = await h.status()
        assert status.status == ev.ExecutionStatus.FAILED
        assert status.error == "HandlerRejected"
        assert "bad" in (status.message or "")
        expected_end = START + timedelta(minutes=5, seconds=1 if asynchronous else 0)
        assert status.end_time == expected_end
        history = await h.history()
        assert history[-1].type == "WorkflowFailed"
        assert history[-1].error == "HandlerRejected"
        with pytest.raises(ev.ExecutionFailed):
            await h.result()


# ------------------------------------------------------------------------------- ids, status, payloads


async def test_signals_with_the_same_id_are_delivered_once() -> None:
    async with make_env() as env:
        h = await dedup_notes.start(0)
        await note.send(h, "a", id="k1")
        await note.send(h, "a again", id="k1")
        await env.tick()
        await h.signal(note, "a a third time", id="k1")
        await note.send(h, "b", id="k2")
        result = await h.result()
        assert result == {"received": ["a", "b"], "third": None}
        received = [event for event in await h.history() if event.type == "SignalReceived"]
        assert [(event.payload, event.id) for event in received] == [("a", "k1"), ("b", "k2")]


async def test_signal_to_a_finished_execution_raises_naming_its_status() -> None:
    async with make_env():
        h = await quick.start(1)
        assert await h.result() == 1
        before = dumped(await h.history())
        with pytest.raises(ev.EventualError, match="SUCCEEDED"):
            await note.send(h, "too late")
        with pytest.raises(ev.EventualError, match="SUCCEEDED"):
            await h.signal("note", "too late")
        assert dumped(await h.history()) == before


async def test_signal_to_a_failed_execution_names_failed() -> None:
    async with make_env():
        h = await expect_with_timeout_uncaught.start(0)
        with pytest.raises(ev.ExecutionFailed):
            await h.result()
        with pytest.raises(ev.EventualError, match="FAILED"):
            await note.send(h, "too late")


async def test_signal_to_an_unknown_execution_raises_not_found() -> None:
    async with make_env() as env:
        with pytest.raises(ev.ExecutionNotFound):
            await note.send("collect_notes/nobody", "hi")
        with pytest.raises(ev.ExecutionNotFound):
            await env.send_signal("collect_notes/nobody", "note", "hi")


async def test_typed_payloads_arrive_as_model_instances() -> None:
    async with make_env():
        h = await wait_approval.start(1)
        await approval.send(h, Approval(ok=True, by="alice"))
        assert await h.result() == {"type": "Approval", "ok": True, "by": "alice"}
        h2 = await wait_approval.start(2)
        await h2.signal(approval, {"ok": False, "by": "bob"})  # a dict is validated into the model
        assert await h2.result() == {"type": "Approval", "ok": False, "by": "bob"}


async def test_send_signal_by_name_validates_against_the_declared_type() -> None:
    async with make_env() as env:
        h = await wait_approval.start(3)
        with pytest.raises(ev.InputValidationError):
            await env.send_signal(h, "approval", {"ok": "perhaps"})
        await env.send_signal(h.id, "approval", {"ok": True, "by": "carol"})
        assert (await h.result())["by"] == "carol"


async def test_invalid_payloads_are_rejected_at_send_time_and_record_nothing() -> None:
    async with make_env() as env:
        h = await wait_approval.start(4)
        await env.tick()
        before = dumped(await h.history())
        with pytest.raises(ev.InputValidationError) as caught:
            await approval.send(h, {"ok": "maybe"})
        locations = [tuple(item["loc"]) for item in caught.value.errors]
        assert ("ok",) in locations
        assert ("by",) in locations
        with pytest.raises(ev.InputValidationError):
            await h.signal(approval, {"ok": True, "by": ["not", "a", "string"]})
        await env.tick()
        assert dumped(await h.history()) == before
        assert (await h.status()).status == ev.ExecutionStatus.IN_PROGRESS
        await approval.send(h, {"ok": True, "by": "dave"})
        assert (await h.result())["by"] == "dave"


# ---------------------------------------------------------------------------------- workflow to workflow


@pytest.mark.parametrize("always_replay", [False, True])
async def test_a_workflow_sends_a_signal_to_another_execution_once(always_replay: bool) -> None:
    async with make_env(always_replay=always_replay):
        receiver = await expect_one_note.start(0)
        sender = await send_note_to.start(receiver.id)
        assert await sender.result() == "sent"
        result = await receiver.result()
        assert result["first"] == f"hello from {sender.id}"
        sent = [event for event in await sender.history() if event.type == "SignalSent"]
        assert len(sent) == 1
        assert (sent[0].target, sent[0].signal, sent[0].payload) == (receiver.id, "note", f"hello from {sender.id}")
        received = [event for event in await receiver.history() if event.type == "SignalReceived"]
        assert len(received) == 1


async def test_a_workflow_signalling_a_finished_execution_is_recorded_and_ignored() -> None:
    async with make_env():
        done = await quick.start(5)
        await done.result()
        sender = await send_note_to.start(done.id)
        assert await sender.result() == "sent"
        assert types_of(await sender.history()).count("SignalSent") == 1
        assert "SignalReceived" not in types_of(await done.history())
        assert any(done.id in entry.message for entry in await sender.logs())


@pytest.mark.parametrize("always_replay", [False, True])
async def test_child_handle_signal(always_replay: bool) -> None:
    async with make_env(always_replay=always_replay) as env:
        h = await parent_signals_child.start("from parent")
        assert await h.result() == "from parent"
        [child_id] = [execution for execution in env.executions() if execution != h.id]
        child_history = await env.get_execution_history(child_id)
        assert [event.payload for event in child_history if event.type == "SignalReceived"] == ["from parent"]
        assert types_of(await h.history()).count("SignalSent") == 1


# ------------------------------------------------------------------------------------------------ events


@pytest.mark.parametrize("always_replay", [False, True])
async def test_events_published_in_a_workflow_reach_each_subscription_once(always_replay: bool) -> None:
    OPENED.clear()
    async with make_env(always_replay=always_replay) as env:
        test_seen: list[str] = []
        env.subscribe(Opened, lambda event: test_seen.append(event.account_id))
        h = await publish_accounts.start("acct")
        await env.advance("30m")
        assert OPENED == ["acct-1"]
        assert await h.result() == 3
        assert sorted(OPENED) == ["acct-1", "acct-2", "acct-3"]
        assert sorted(test_seen) == ["acct-1", "acct-2", "acct-3"]
        published = env.published(Opened)
        assert all(isinstance(event, Opened) for event in published)
        assert [event.account_id for event in published] == ["acct-1", "acct-2", "acct-3"]
        recorded = [event for event in await h.history() if event.type == "EventsPublished"]
        assert len(recorded) == 2
        assert [len(event.events) for event in recorded] == [1, 2]
        if always_replay:
            assert env.replays > 0


async def test_a_failing_subscription_is_retried_with_virtual_backoff() -> None:
    FLAKY_ATTEMPTS.clear()
    async with make_env() as env:
        h = await publish_flaky.start(2)
        await h.result()
        key = h.id
        assert FLAKY_ATTEMPTS[key] == 1
        await env.advance("59s")
        assert FLAKY_ATTEMPTS[key] == 1
        await env.advance("1s")  # first retry after 1m
        assert FLAKY_ATTEMPTS[key] == 2
        await env.advance("1m59s")
        assert FLAKY_ATTEMPTS[key] == 2
        await env.advance("1s")  # second retry 2m later: succeeds
        assert FLAKY_ATTEMPTS[key] == 3
        await env.advance("1 day")
        assert FLAKY_ATTEMPTS[key] == 3
        assert env.dead_letters() == []


async def test_a_subscription_that_keeps_failing_is_dead_lettered() -> None:
    FLAKY_ATTEMPTS.clear()
    async with make_env() as env:
        h = await publish_flaky.start(10)
        await h.result()
        await env.advance("2m59s")
        assert env.dead_letters() == []
        await env.advance("1s")
        assert FLAKY_ATTEMPTS[h.id] == 3
        [letter] = env.dead_letters()
        assert letter.subscription == "flaky-handler"
        assert letter.error == "DeliveryError"
        assert letter.message == f"attempt 3 of {h.id} failed"
        assert letter.attempts == 3
        assert letter.event == {"name": "Flaky", "event": {"key": h.id, "fail_times": 10}}
        assert await env.list_dead_letters() == [letter]
        await env.advance("1 day")
        assert FLAKY_ATTEMPTS[h.id] == 3  # no more deliveries after dead-lettering


async def test_test_subscribers_sync_async_and_dispose() -> None:
    OPENED.clear()
    async with make_env() as env:
        sync_seen: list[Any] = []
        async_seen: list[Any] = []

        async def on_async(event: Opened) -> None:
            async_seen.append(event)

        sync_subscriber = env.subscribe(Opened, sync_seen.append)
        env.subscribe(Opened, Closed, handler=on_async)
        await ev.publish(Opened(account_id="one"))
        await env.tick()
        sync_subscriber.dispose()
        await env.publish_events(Opened(account_id="two"), Closed(account_id="one", reason="done"))
        await env.tick()
        assert sync_seen == [Opened(account_id="one")]
        assert async_seen == [
            Opened(account_id="one"),
            Opened(account_id="two"),
            Closed(account_id="one", reason="done"),
        ]
        assert all(type(event) in (Opened, Closed) for event in async_seen)
        assert OPENED == ["one", "two"]


async def test_disabled_subscriptions_do_not_get_events_published_meanwhile() -> None:
    OPENED.clear()
    async with make_env() as env:
        test_seen: list[str] = []
        env.subscribe(Opened, lambda event: test_seen.append(event.account_id))
        env.disable_subscriptions()
        await ev.publish(Opened(account_id="quiet"))
        await env.tick()
        env.enable_subscriptions()
        await env.advance("1 day")
        assert OPENED == []
        assert test_seen == ["quiet"]  # test subscribers are not the service's own subscriptions
        await ev.publish(Opened(account_id="loud"))
        await env.tick()
        assert OPENED == ["loud"]
        assert [event.account_id for event in env.published(Opened)] == ["quiet", "loud"]


async def test_published_returns_instances_in_order_per_type() -> None:
    OPENED.clear()
    async with make_env() as env:
        await ev.publish(Opened(account_id="a"), Closed(account_id="a", reason="r"), Opened(account_id="b"))
        await env.publish_events(Closed(account_id="b"))
        assert env.published(Opened) == [Opened(account_id="a"), Opened(account_id="b")]
        assert env.published(Closed) == [Closed(account_id="a", reason="r"), Closed(account_id="b")]
        assert [event.account_id for event in env.published("Closed")] == ["a", "b"]


async def test_publish_from_the_test_reaches_subscriptions_once() -> None:
    OPENED.clear()
    async with make_env() as env:
        await ev.publish(Opened(account_id="from-test"))
        await env.tick()
        await env.advance("1 day")
        assert OPENED == ["from-test"]


# -------------------------------------------------------------------------------------------- logs


async def _printing_logs(always_replay: bool) -> list[tuple[datetime, str, str]]:
    async with make_env(always_replay=always_replay) as env:
        h = await printing.start(7)
        assert await h.result() == 7
        if always_replay:
            assert env.replays >= 2
        return [(entry.time, entry.message, entry.source) for entry in await h.logs()]


async def test_workflow_output_is_captured_once_even_when_replayed() -> None:
    cached = await _printing_logs(always_replay=False)
    replayed = await _printing_logs(always_replay=True)
    assert cached == replayed
    assert cached == [
        (START, "before sleep 7", "workflow"),
        (START, "WARNING:tests.printing:warned 7", "workflow"),
        (START + timedelta(hours=1), "after sleep 7", "workflow"),
        (START + timedelta(hours=2), "done", "workflow"),
    ]
