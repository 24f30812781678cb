"""The execution timeline model (`eventual_nb.timeline`) built from real histories, and its pictures.

Workflows run in a TestEnvironment (virtual clock: every time below is exact), the model is built from
what the runtime reports (history, logs, waits), and the same workflow on a LocalRuntime must give the
same picture. The SVG and the HTML page are read back as a person reads them (bars, labels, details).
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import eventual_nb as ev
from eventual_nb.attempts import AttemptNote, async_note, read_note, retry_note
from eventual_nb.engine.history import ActivityScheduled, TimerScheduled, WorkflowStarted
from eventual_nb.timeline import Axis, Span, Timeline, build_timeline, read_snapshot
from eventual_nb.timeline.svg import render_page, render_sparkline, render_svg
from tests.svg_support import bars, items

SERVICE = ev.Service("tests-timeline")
START = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return START + timedelta(seconds=seconds)


def make_env(**options: Any) -> ev.testing.TestEnvironment:
    return ev.testing.TestEnvironment(service=SERVICE, start=START, **options)


async def timeline_of(handle: ev.ExecutionHandle, runtime: Any) -> Timeline:
    return (await read_snapshot(runtime, handle.id)).timeline()


def spans(timeline: Timeline, kind: str) -> list[Span]:
    return [span for span in timeline.all_spans() if span.kind == kind]


def one(timeline: Timeline, kind: str) -> Span:
    found = spans(timeline, kind)
    assert len(found) == 1, [(span.kind, span.label) for span in timeline.all_spans()]
    return found[0]


# ------------------------------------------------------------------------------------------ definitions

approve = ev.signal("TlApprove")
ping = ev.signal("tl_ping")


class Shipped(ev.Event):
    order: str


@ev.activity(retry=ev.RetryPolicy(max_attempts=3, initial_interval="2s"))
async def tl_flaky(x: int) -> int:
    if ev.activity_info().attempt < 3:
        raise ValueError(f"attempt {ev.activity_info().attempt} not yet")
    return x * 2


@ev.activity
async def tl_quick(x: int) -> int:
    return x


@ev.activity(retry=ev.RetryPolicy(max_attempts=2, initial_interval="1s"))
async def tl_always_fails(x: int) -> int:
    raise RuntimeError("no luck")


@ev.activity
async def tl_by_token(x: int) -> int:
    return ev.async_result(lambda token: None)


@ev.workflow
async def tl_child_sleeps(n: int) -> int:
    await ev.sleep("1h")
    return n + 1


@ev.workflow
async def tl_child_fails(n: int) -> int:
    raise ValueError("child broke")


@ev.workflow
async def tl_tour(n: int) -> int:
    """A retried activity, a timer, an `expect` with a timeout (answered), a child, then an `expect` without one."""
    doubled = await tl_flaky(n)
    await ev.sleep("30 days")
    await approve.expect(timeout="10m")
    grown = await tl_child_sleeps(doubled)
    await ping.expect()
    return grown


@ev.workflow
async def tl_times_out_waiting() -> str:
    try:
        await approve.expect(timeout="5m")
    except ev.Timeout:
        return "no answer"
    return "answered"


@ev.workflow
async def tl_waits_on_condition() -> int:
    seen: list[Any] = []
    ping.on(seen.append)
    await ev.sleep("1m")
    await ev.condition(lambda: len(seen) >= 2)
    return len(seen)


@ev.workflow
async def tl_publishes_and_sends(target: str) -> str:
    if ev.patched("v2"):
        await ev.publish(Shipped(order="o1"))
    await ping.send(target, {"hello": 1})
    return "done"


@ev.workflow
async def tl_guarded_call() -> int:
    value = await asyncio.wait_for(tl_quick(7), timeout=60)
    await ev.sleep("5s")
    return value


@ev.workflow
async def tl_waits_for_token() -> int:
    return await tl_by_token(1)


@ev.workflow
async def tl_fails_after_retries() -> int:
    return await tl_always_fails(1)


@ev.workflow
async def tl_parent_of_failing_child() -> str:
    try:
        await tl_child_fails(1)
    except ev.ExecutionFailed:
        return "recovered"
    return "?"


@ev.workflow
async def tl_long_wait() -> None:
    await tl_quick(1)
    await approve.expect()


# --------------------------------------------------------------------------------------------- the model


async def test_a_tour_in_progress_shows_attempts_timer_signal_wait_child_and_what_it_waits_on() -> None:
    async with make_env() as env:
        handle = await tl_tour.start(3)
        await env.tick()
        await env.advance("30 days 1m")  # the timer fired; `expect(timeout=10m)` waits since 30d6s
        timeline = await timeline_of(handle, env)
        assert timeline.status == "IN_PROGRESS"
        assert timeline.now == env.now
        assert timeline.waiting == ["signal TlApprove, 9 min left"]
        wait = one(timeline, "signal")
        assert (wait.label, wait.outcome, wait.start, wait.end) == (
            "expect TlApprove",
            "waiting",
            at(30 * 86400 + 6),
            None,
        )
        assert wait.planned_end == at(30 * 86400 + 6 + 600)

        await approve.send(handle, {"by": "ada"})
        await env.advance("1h")  # the child ran; now `ping.expect()` (no timeout) waits
        timeline = await timeline_of(handle, env)

    flaky_call = next(span for span in timeline.spans if span.kind == "activity")
    assert flaky_call.label == "tl_flaky ×3"
    assert flaky_call.outcome == "succeeded"
    parts = [(part.kind, part.label, part.start, part.end, part.outcome) for part in flaky_call.parts]
    assert parts == [
        ("attempt", "attempt 1", at(0), at(0), "failed"),
        ("backoff", "backoff before attempt 2", at(0), at(2), "backoff"),
        ("attempt", "attempt 2", at(2), at(2), "failed"),
        ("backoff", "backoff before attempt 3", at(2), at(6), "backoff"),
        ("attempt", "attempt 3", at(6), at(6), "succeeded"),
    ]
    assert flaky_call.parts[0].details["error"] == "ValueError"
    assert "attempt 1 not yet" in str(flaky_call.parts[0].details)
    assert flaky_call.parts[-1].details["result"] == 6
    assert flaky_call.parts[-1].details["input"] == {"x": 3}

    timer = one(timeline, "timer")
    assert (timer.start, timer.end, timer.outcome) == (at(6), at(30 * 86400 + 6), "fired")
    answered, pending = sorted(spans(timeline, "signal"), key=lambda span: span.start)
    assert (answered.outcome, answered.details["payload"]) == ("received", {"by": "ada"})
    assert answered.end == at(30 * 86400 + 60)
    assert (pending.label, pending.outcome, pending.start) == ("expect tl_ping", "waiting", at(30 * 86400 + 3660))
    child = one(timeline, "child")
    assert (child.outcome, child.details["result"], child.end - child.start) == ("succeeded", 7, timedelta(hours=1))
    assert timeline.waiting == ["signal tl_ping"]
    received = [(i.kind, i.label, i.row) for i in timeline.instants]
    assert received == [("signal", "TlApprove received", "signal TlApprove")]
    assert [row.key for row in timeline.rows] == [
        "workflow",
        "activity tl_flaky",
        "timer",
        "signal TlApprove",
        "child tl_child_sleeps",
        "signal tl_ping",
    ]


async def test_without_waits_a_running_execution_shows_only_what_history_records() -> None:
    async with make_env() as env:
        handle = await tl_long_wait.start()
        await env.tick()
        history = await handle.history()
        assert spans(build_timeline(history), "signal") == []  # `expect()` without a timeout is in no history
        waits = await env.get_execution_waits(handle.id)
        timeline = build_timeline(history, waits=waits.waits, now=waits.now)
        assert [(s.label, s.start) for s in spans(timeline, "signal")] == [("expect TlApprove", START)]


async def test_an_expect_that_times_out_ends_at_its_timeout() -> None:
    async with make_env() as env:
        handle = await tl_times_out_waiting.start()
        assert await handle.result() == "no answer"
        wait = one(await timeline_of(handle, env), "signal")
    assert (wait.outcome, wait.start, wait.end, wait.planned_end) == ("timed_out", START, at(300), None)


async def test_a_condition_is_shown_while_it_waits() -> None:
    async with make_env() as env:
        handle = await tl_waits_on_condition.start()
        await env.advance("2m")
        await ping.send(handle, 1)
        timeline = await timeline_of(handle, env)
        condition = one(timeline, "condition")
        assert (condition.start, condition.end, condition.outcome) == (at(60), None, "waiting")
        assert timeline.waiting == ["condition"]
        await ping.send(handle, 2)
        assert await handle.result() == 2
        assert spans(await timeline_of(handle, env), "condition") == []  # gone with the wait: history has none


async def test_instants_for_published_events_sent_signals_patches_and_a_cancel() -> None:
    async with make_env() as env:
        target = await tl_long_wait.start()
        handle = await tl_publishes_and_sends.start(target.id)
        assert await handle.result() == "done"
        kinds = [(i.kind, i.label, i.row) for i in (await timeline_of(handle, env)).instants]
        assert kinds == [
            ("patch", "patch v2", "workflow"),
            ("events", "Shipped", "events published"),
            ("sent", f"tl_ping → {target.id}", "signals sent"),
        ]
        await target.cancel()
        await env.tick()
        timeline = await timeline_of(target, env)
    assert timeline.status == "CANCELLED"
    assert one(timeline, "workflow").outcome == "cancelled"
    assert [(i.kind, i.label) for i in timeline.instants] == [
        ("signal", "tl_ping received"),
        ("cancel", "cancel requested"),
    ]
    assert one(timeline, "activity").outcome == "succeeded"


async def test_a_timer_a_call_beat_is_cancelled_at_the_next_call() -> None:
    async with make_env() as env:
        handle = await tl_guarded_call.start()
        assert await handle.result() == 7
        timeline = await timeline_of(handle, env)
    guard, sleep = sorted(spans(timeline, "timer"), key=lambda span: span.seq or 0)
    assert (guard.outcome, guard.end) == ("cancelled", START)  # cancelled when tl_quick(7) answered, at once
    assert "history records no time" in guard.details["outcome"]
    assert (sleep.outcome, sleep.end) == ("fired", at(5))


async def test_completion_by_token_is_a_wait_after_the_attempt() -> None:
    async with make_env() as env:
        handle = await tl_waits_for_token.start()
        await env.advance("10s")
        timeline = await timeline_of(handle, env)
        call = one(timeline, "activity")
        assert [(p.kind, p.outcome, p.start, p.end) for p in call.parts] == [
            ("attempt", "succeeded", START, START),
            ("async", "waiting", START, None),
        ]
        assert timeline.waiting == ["activity tl_by_token: completion by token"]


async def test_a_call_that_used_up_its_retries_fails_on_its_last_attempt() -> None:
    async with make_env() as env:
        handle = await tl_fails_after_retries.start()
        with pytest.raises(ev.ExecutionFailed):
            await handle.result()
        timeline = await timeline_of(handle, env)
    call = one(timeline, "activity")
    assert [(p.kind, p.outcome) for p in call.parts] == [
        ("attempt", "failed"),
        ("backoff", "backoff"),
        ("attempt", "failed"),
    ]
    assert call.parts[-1].details["error"] == "RuntimeError"
    assert one(timeline, "workflow").outcome == "failed"


async def test_a_failed_child_is_a_failed_span_in_a_parent_that_recovered() -> None:
    async with make_env() as env:
        handle = await tl_parent_of_failing_child.start()
        assert await handle.result() == "recovered"
        timeline = await timeline_of(handle, env)
    child = one(timeline, "child")
    assert (child.outcome, child.details["error"], child.details["message"]) == ("failed", "ValueError", "child broke")
    assert one(timeline, "workflow").outcome == "succeeded"


async def test_calls_pending_when_the_execution_ended_end_with_it() -> None:
    async with make_env() as env:
        handle = await tl_waits_for_token.start()
        await env.advance("1m")
        await handle.cancel()
        await env.tick()
        call = one(await timeline_of(handle, env), "activity")
    assert (call.outcome, call.end) == ("cancelled", at(60))
    assert call.parts[-1].outcome == "cancelled"


async def test_parallel_calls_take_lanes_of_one_row() -> None:
    @ev.workflow
    async def tl_fan_out() -> list[int]:
        return list(await asyncio.gather(*(tl_child_sleeps(i) for i in range(3))))

    async with make_env() as env:
        handle = await tl_fan_out.start()
        assert await handle.result() == [1, 2, 3]
        timeline = await timeline_of(handle, env)
    row = next(row for row in timeline.rows if row.key == "child tl_child_sleeps")
    assert row.lanes == 3
    assert sorted(span.lane for span in spans(timeline, "child")) == [0, 1, 2]


# ------------------------------------------------------------------------ the same model on every runtime


def shape(timeline: Timeline) -> list[tuple[Any, ...]]:
    """What the picture says, without the times (which differ between a virtual and a real clock)."""
    found = [(span.kind, span.row, span.label, span.outcome, span.seq) for span in timeline.all_spans()]
    found += [(i.kind, i.row, i.label) for i in timeline.instants]
    return found


@ev.activity(retry=ev.RetryPolicy(max_attempts=2, initial_interval="50ms"))
async def tl_flaky_fast(x: int) -> int:
    if ev.activity_info().attempt < 2:
        raise ValueError("first time fails")
    return x


@ev.workflow
async def tl_short_tour() -> int:
    value = await tl_flaky_fast(4)
    await ev.sleep("100ms")
    await approve.expect(timeout="1h")
    return value


async def test_a_local_runtime_gives_the_same_timeline_as_a_test_environment(tmp_path: Path) -> None:
    shapes = []
    for runtime in (make_env(), ev.LocalRuntime(tmp_path / "timeline.db", service=SERVICE)):
        async with runtime:
            handle = await tl_short_tour.start(name="same")
            for _ in range(200):
                if (await runtime.get_execution_waits(handle.id)).waits[:1] and any(
                    e.type == "TimerCompleted" for e in await handle.history()
                ):
                    break
                await (
                    runtime.advance("1s") if isinstance(runtime, ev.testing.TestEnvironment) else asyncio.sleep(0.02)
                )
            running = await timeline_of(handle, runtime)
            assert running.waiting[0].startswith("signal TlApprove, ")
            assert running.waiting[0].endswith(" left")
            await approve.send(handle, "yes")
            assert await handle.result(timeout=30) == 4
            shapes.append(shape(await timeline_of(handle, runtime)))
    assert shapes[0] == shapes[1]
    assert ("attempt", "activity tl_flaky_fast", "attempt 1", "failed", 0) in shapes[0]


async def test_a_local_runtime_notes_an_attempt_that_waits_for_its_token(tmp_path: Path) -> None:
    async with ev.LocalRuntime(tmp_path / "token.db", service=SERVICE) as runtime:
        handle = await tl_waits_for_token.start(name="token")
        for _ in range(500):
            timeline = await timeline_of(handle, runtime)
            if len(one(timeline, "activity").parts) == 2:
                break
            await asyncio.sleep(0.01)
        parts = [(part.kind, part.outcome, part.end) for part in one(timeline, "activity").parts]
        assert parts[0][:2] == ("attempt", "succeeded"), parts
        assert parts[1] == ("async", "waiting", None), parts
        assert timeline.waiting == ["activity tl_by_token: completion by token"]
        await handle.cancel()


# ---------------------------------------------------------------------------------------- attempt notes


@given(
    name=st.text(min_size=1, max_size=20),
    error=st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True),
    message=st.text(max_size=60),
    attempt=st.integers(1, 1000),
    seq=st.integers(0, 10**6),
    seconds=st.floats(0, 10**7, allow_nan=False),
)
def test_attempt_notes_read_back_what_was_written(
    name: str, error: str, message: str, attempt: int, seq: int, seconds: float
) -> None:
    due = START + timedelta(seconds=seconds)
    note = retry_note(name, seq, attempt, error, message, due, timedelta(seconds=seconds))
    assert read_note(START, name, note) == AttemptNote("retry", seq, attempt, name, START, error, message, due)
    assert read_note(START, name, async_note(name, seq, attempt)) == AttemptNote("async", seq, attempt, name, START)
    assert read_note(START, name + "x", note) is None  # a note is read only from its activity's lines


def test_a_printed_line_is_not_a_note() -> None:
    assert read_note(START, "flaky", "attempt 1 went fine") is None
    assert read_note(START, "flaky", "hello") is None


# ---------------------------------------------------------------------------------------------- the axis


def test_a_30_day_timer_and_a_40ms_activity_both_read() -> None:
    moments = [at(0), at(0.04), at(0.04 + 30 * 86400), at(0.08 + 30 * 86400)]
    axis = Axis(at(0), moments[-1], moments)
    assert len(axis.breaks) == 1
    assert axis.breaks[0][2] == pytest.approx(30 * 86400)
    first, last = axis.x(moments[1]) - axis.x(moments[0]), axis.x(moments[3]) - axis.x(moments[2])
    assert first > 0.2, (first, last)
    assert last > 0.2, (first, last)  # each 40 ms takes a fifth of the width or more
    assert axis.x(moments[2]) - axis.x(moments[1]) <= 0.31  # the month is a break, not the whole picture


@given(st.lists(st.floats(0, 10**8, allow_nan=False), min_size=1, max_size=40), st.floats(0, 10**8))
def test_the_axis_keeps_order_and_spans_zero_to_one(offsets: list[float], probe: float) -> None:
    moments = [at(offset) for offset in offsets]
    end = max(moments)
    axis = Axis(START, end, moments)
    places = [axis.x(moment) for moment in sorted(moments)]
    assert places == sorted(places)
    assert axis.x(START) == 0.0
    assert axis.x(end) == (1.0 if end > START else 0.0)
    assert 0.0 <= axis.x(at(probe)) <= 1.0
    for fraction, label in axis.ticks(6):
        assert 0.0 <= fraction <= 1.0
        assert label == "0" or label.startswith("+")


# ----------------------------------------------------------------------------------------- the pictures


async def tour_page(env: ev.testing.TestEnvironment) -> tuple[Timeline, str]:
    handle = await tl_tour.start(3)
    await env.tick()
    await env.advance("30 days 1m")
    await approve.send(handle, {"by": "ada"})
    await env.advance("1h")
    snapshot = await read_snapshot(env, handle.id)
    return snapshot.timeline(), render_page(snapshot.timeline(), snapshot.history, snapshot.logs)


async def test_the_svg_has_one_bar_per_span_with_its_label_and_details() -> None:
    async with make_env() as env:
        timeline, page = await tour_page(env)
    drawn = [(item.kind, item.label, item.outcome) for item in bars(page)]
    expected = [(span.kind, span.label, span.outcome) for span in timeline.all_spans() if not span.parts]
    assert sorted(drawn) == sorted(expected)
    assert ("attempt", "attempt 3", "succeeded") in drawn
    assert (
        "backoff",
        "backoff before attempt 2",
        "backoff",
    ) in drawn
    assert ("timer", "timer", "fired") in drawn
    assert ("child", one(timeline, "child").label, "succeeded") in drawn
    final = next(item for item in items(page) if item.label == "attempt 3")
    assert "result: 6" in final.details
    assert 'input: {"x":3}' in final.details
    first = next(item for item in items(page) if item.label == "attempt 1")
    assert "error: ValueError: attempt 1 not yet" in first.details
    assert "waiting:</b> signal tl_ping" in page
    assert 'class="ev-now"' in page
    assert 'class="ev-axis-break"' in page
    assert "≈ 30d" in page


async def test_the_page_is_self_contained() -> None:
    async with make_env() as env:
        _, page = await tour_page(env)
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page
    assert re.search(r"(https?:)?//[a-z0-9]", page) is None, "the page names an external URL"
    assert re.search(r"\b(src|href)=", page) is None
    for event_type in ("WorkflowStarted", "ActivitySucceeded", "TimerCompleted", "SignalReceived"):
        assert event_type in page  # the history table
    assert "attempt 1 of activity &#x27;tl_flaky&#x27; (seq 0) failed" in page  # the logs


def dense_history(events: int) -> list[Any]:
    """A workflow that called one tl_quick activity after another: `events` history events."""
    from eventual_nb.engine.history import ActivitySucceeded

    history: list[Any] = [WorkflowStarted(timestamp=START, workflow="loop", input=None)]
    seq = 0
    while len(history) < events:
        moment = at(seq * 0.01)
        history.append(ActivityScheduled(seq=seq, timestamp=moment, name="step", input={"i": seq}))
        history.append(ActivitySucceeded(seq=seq, timestamp=moment + timedelta(milliseconds=4), result=seq))
        seq += 1
    return history


def test_calls_too_close_together_are_drawn_as_one_bar_that_counts_them() -> None:
    svg = render_svg(build_timeline(dense_history(2001)))
    drawn = bars(svg)
    clusters = [item for item in drawn if item.kind == "cluster"]
    assert clusters
    assert len(drawn) < 200
    counted = sum(int(item.attrs["data-count"]) for item in clusters)
    assert counted + sum(1 for item in drawn if item.kind == "activity") == 1000
    assert "1000" not in clusters[0].label or clusters[0].label.endswith("activity step")


def test_the_sparkline_draws_each_bar_in_its_colour() -> None:
    line = render_sparkline(build_timeline(dense_history(11)))
    assert line.startswith('<svg class="ev-sparkline"')
    assert line.count("ev-o-succeeded") == 5
    assert line.count("ev-o-running ev-k-workflow") == 1


def test_an_empty_history_is_an_empty_timeline() -> None:
    timeline = build_timeline([])
    assert timeline.spans == []
    assert "<svg" in render_svg(timeline)


def test_a_timer_history_alone_shows_it_waiting_until_it_fires() -> None:
    history = [
        WorkflowStarted(timestamp=START, workflow="w"),
        TimerScheduled(seq=0, timestamp=START, until=at(3600)),
    ]
    timeline = build_timeline(history, now=at(60))
    timer = one(timeline, "timer")
    assert (timer.outcome, timer.planned_end) == ("waiting", at(3600))
    assert timeline.waiting == ["timer, 59 min left"]
