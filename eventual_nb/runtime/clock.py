"""`ManualClock`: a clock that moves only when told, for tests of the runtimes that read a clock.

`TestEnvironment` keeps its own virtual time. `LocalRuntime(clock=...)` and `AwsRuntime(clock=...)` (with
the AWS test harness) read whatever clock they are given, `datetime.now(UTC)` by default; a test gives them
a `ManualClock` to run a week of schedule fires, or a restart after three missed ones, without waiting.
A runtime that watches the clock (`watch`) is woken each time it moves, so it acts on what became due at
once and sleeps in between.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from eventual_nb import errors
from eventual_nb.durations import DurationLike, parse_duration


class ManualClock:
    """`clock()` reads it; `advance(...)` and `set(...)` move it forward and wake its watchers."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = _utc(start or datetime.now(UTC))
        self._watchers: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        return self.now

    def __repr__(self) -> str:
        return f"ManualClock({self.now.isoformat()})"

    def advance(self, delta: DurationLike) -> datetime:
        """Move forward by `delta` (a timedelta, seconds, or "1h30m"); never backwards."""
        step = delta if isinstance(delta, timedelta) else parse_duration(delta, what="clock advance")
        if step < timedelta(0):
            raise errors.EventualError(f"a clock only moves forward, not by {step}")
        self.now += step
        with self._lock:
            watchers = list(self._watchers)
        for watcher in watchers:
            watcher()
        return self.now

    def set(self, moment: datetime) -> datetime:
        """Move forward to `moment` (naive means UTC)."""
        return self.advance(_utc(moment) - self.now)

    def watch(self, callback: Callable[[], None]) -> None:
        """Call `callback()` after every move (from the thread that moves the clock: keep it thread-safe)."""
        with self._lock:
            self._watchers.append(callback)

    def unwatch(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if callback in self._watchers:
                self._watchers.remove(callback)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
