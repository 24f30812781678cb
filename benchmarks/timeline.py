"""Timeline benchmark: how long the execution timeline takes to build and to draw, by history length.

For histories of 100, 1,000 and 10,000 events it times, in this process:

* build — `build_timeline` from the history and its logs (the model every picture draws);
* widget — `timeline_html`, the HTML the notebook widget sends (the SVG with the "waiting" line); the
  widget also sends the last 500 history rows, timed as `history`;
* page — `render_page`, the whole self-contained page `eventual-nb timeline --html` writes;

and, outside `--quick` and when Debian's Chromium is installed (EVENTUAL_CHROMIUM to point elsewhere),
how long Chromium takes to load the widget's HTML and the page (`loadEventEnd`, a fresh tab each time).

The histories are those of a real-looking workflow, not of a virtual clock (where every call takes no
time and the picture has nothing to draw): eight activities called in turn, 20 to 60 ms each, every
25th retried once after a 1 s backoff (noted in the logs, as runtimes do), a one-minute timer every 50
calls and a signal every 100. The checks: the timeline has a bar (or a counted run of bars) for every
call and the page has a history row for every event.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.results import Result
from eventual_nb.attempts import retry_note
from eventual_nb.engine.history import (
    ActivityScheduled,
    ActivitySucceeded,
    HistoryEvent,
    LogEntry,
    SignalReceived,
    TimerCompleted,
    TimerScheduled,
    WorkflowStarted,
)
from eventual_nb.timeline import build_timeline
from eventual_nb.timeline.svg import WIDGET_HISTORY_ROWS, history_table, render_page, timeline_html

BENCHMARKS = ["timeline"]
SIZES = (100, 1000, 10000)
#: runs per size (the median is reported)
REPEATS = 5
QUICK_REPEATS = 2
#: the widget's budget for a 1,000-event history (the issue's "interactive" bound)
WIDGET_BUDGET_MS = 200.0
START = datetime(2025, 1, 1, tzinfo=UTC)
NAMES = ("reserve", "charge", "notify", "pack", "label", "ship", "invoice", "audit")


def history_of(events: int) -> tuple[list[HistoryEvent], list[LogEntry]]:
    """A history of `events` events (and its logs) of the workflow described in the module docstring."""
    history: list[HistoryEvent] = [WorkflowStarted(timestamp=START, workflow="fulfil", input={"order": 1})]
    logs: list[LogEntry] = []
    moment, seq, call = START, 0, 0
    while len(history) < events:
        if call % 50 == 49 and len(history) + 2 <= events:
            history.append(TimerScheduled(seq=seq, timestamp=moment, until=moment + timedelta(minutes=1)))
            moment += timedelta(minutes=1)
            history.append(TimerCompleted(seq=seq, timestamp=moment))
        elif call % 100 == 99:
            moment += timedelta(seconds=3)
            history.append(SignalReceived(timestamp=moment, signal="approve", payload={"by": "ada", "call": call}))
            seq -= 1  # a signal takes no seq
        else:
            name = NAMES[call % len(NAMES)]
            history.append(ActivityScheduled(seq=seq, timestamp=moment, name=name, input={"order": 1, "call": call}))
            attempts = 1
            if call % 25 == 24:
                failed = moment + timedelta(milliseconds=15)
                due = failed + timedelta(seconds=1)
                note = retry_note(name, seq, 1, "ConnectionError", "busy", due, timedelta(seconds=1))
                logs.append(LogEntry(time=failed, message=note, source=name))
                moment, attempts = failed + timedelta(seconds=1), 2
            moment += timedelta(milliseconds=20 + (call * 7) % 41)
            if len(history) < events:
                history.append(ActivitySucceeded(seq=seq, timestamp=moment, result={"ok": True}, attempts=attempts))
            moment += timedelta(milliseconds=2)
        seq += 1
        call += 1
    return history[:events], logs


def _median_ms(work: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, value = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        value = work()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), value


def _chromium() -> str | None:
    path = os.environ.get("EVENTUAL_CHROMIUM", "/usr/bin/chromium")
    if shutil.which(path) is None:
        return None
    try:
        import playwright.sync_api  # noqa: F401 - the `dev` extra's; `bench` alone may lack it
    except ImportError:
        return None
    return path


def _browser_load_ms(chromium: str, pages: dict[str, str], repeats: int) -> dict[str, float]:
    """Median `loadEventEnd` of each HTML text in a fresh Chromium tab."""
    from playwright.sync_api import sync_playwright

    found: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as directory, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            for key, text in pages.items():
                path = Path(directory) / f"{key}.html"
                path.write_text(text, encoding="utf-8")
                loads = []
                for _ in range(repeats):
                    page = browser.new_page(viewport={"width": 1280, "height": 1000})
                    page.goto(path.as_uri(), wait_until="load")
                    loads.append(float(page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")))
                    page.close()
                found[key] = statistics.median(loads)
        finally:
            browser.close()
    return found


def run(quick: bool, names: list[str], progress: Callable[[str], None] | None = None) -> list[Result]:
    if "timeline" not in names:
        return []
    (progress or (lambda _key: None))("timeline")
    repeats = QUICK_REPEATS if quick else REPEATS
    result = Result("timeline", "execution timeline: build and draw, by history length")
    result.params = {"sizes": list(SIZES), "repeats": repeats}
    pages: dict[str, str] = {}
    for size in SIZES:
        history, logs = history_of(size)
        build_ms, timeline = _median_ms(lambda: build_timeline(history, logs=logs), repeats)  # noqa: B023
        widget_ms, widget = _median_ms(lambda: timeline_html(timeline), repeats)  # noqa: B023
        rows_ms, _ = _median_ms(lambda: history_table(history, limit=WIDGET_HISTORY_ROWS), repeats)  # noqa: B023
        page_ms, page = _median_ms(lambda: render_page(timeline, history, logs), repeats)  # noqa: B023
        calls = sum(1 for event in history if isinstance(event, (ActivityScheduled, TimerScheduled)))
        drawn = sum(int(count) for count in _counts(widget))
        # every event is on the page: as a table row, or (in a long history) as a line of the text block
        listed = max(page.count("<tr>"), page.split("<pre>", 1)[-1].count("\n") + 1 if "ev-history-text" in page else 0)
        if drawn < calls or listed < size:
            raise AssertionError(f"{size} events: {drawn} bars for {calls} calls, {listed} history rows or lines")
        budget = size == 1000
        total = build_ms + widget_ms + rows_ms
        result.add(f"build_ms_{size}", f"build, {size:,} events", build_ms, "ms")
        result.add(f"widget_ms_{size}", f"widget picture, {size:,} events", widget_ms, "ms")
        result.add(
            f"history_ms_{size}", f"widget history (last {WIDGET_HISTORY_ROWS} rows), {size:,} events", rows_ms, "ms"
        )
        result.add(
            f"widget_total_ms_{size}", f"widget update in all (build + picture + history), {size:,} events", total,
            "ms", target=f"< {WIDGET_BUDGET_MS:.0f} ms" if budget else None,
            met=(total < WIDGET_BUDGET_MS) if budget else None,
        )  # fmt: skip
        result.add(f"page_ms_{size}", f"HTML page, {size:,} events", page_ms, "ms")
        result.add(f"page_kb_{size}", f"HTML page size, {size:,} events", round(len(page) / 1024), "KiB")
        pages[f"widget_{size}"] = f"<!DOCTYPE html><meta charset='utf-8'><body>{widget}</body>"
        pages[f"page_{size}"] = page
    chromium = None if quick else _chromium()
    if chromium is None:
        result.info["browser"] = "not measured (--quick, or no Chromium/Playwright)"
    else:
        for key, load in _browser_load_ms(chromium, pages, repeats).items():
            kind, size = key.split("_")
            budget = kind == "widget" and size == "1000"
            result.add(
                f"chromium_{key}_ms", f"Chromium load, {'widget picture' if kind == 'widget' else 'HTML page'}, "
                f"{int(size):,} events", load, "ms",
                target=f"< {WIDGET_BUDGET_MS:.0f} ms" if budget else None,
                met=(load < WIDGET_BUDGET_MS) if budget else None,
            )  # fmt: skip
    result.notes.append(
        "widget = what the notebook widget sends on a change (picture + last 500 history rows); page = "
        "`eventual-nb timeline --html` (all rows, the history closed when over 1,000 events)"
    )
    return [result]


def _counts(markup: str) -> list[str]:
    """How many calls each drawn bar stands for: 1, or a counted run's `data-count`."""
    import re

    found = []
    for item in re.finditer(r'<g class="ev-item ev-k-(\w+)[^"]*"[^>]*?(?: data-count="(\d+)")?>', markup):
        kind, count = item.group(1), item.group(2)
        if kind in ("activity", "attempt", "timer", "cluster"):
            found.append(count or "1")
    return found
