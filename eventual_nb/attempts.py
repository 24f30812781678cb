"""The line a runtime writes into an execution's logs when an activity attempt does not end the call.

History records one terminal event per activity call (with its attempt count); the attempts before it
and their backoff waits live only in the runtime's activity table while the call is pending.
So that people see why an activity took long, and the timeline can draw each attempt, every
runtime notes in the execution's logs (source: the activity's name) each failed attempt it will retry
and each attempt that returned `ev.async_result()`. This module is the one place that writes those
lines and reads them back; the execution core decides which attempt gets which note
(`eventual_nb.runtime.core.retry_or_settle` returns it on its `RetryAt` or `AwaitToken`), and the
runtimes only write it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from eventual_nb.durations import format_duration

_RETRY = re.compile(
    r"attempt (?P<attempt>\d+) of activity '(?P<name>.*)' \(seq (?P<seq>\d+)\) failed: (?P<error>.*); "
    r"retrying at (?P<due>\S+) \(in [^()]*\)",
    re.DOTALL,
)
_ASYNC = re.compile(
    r"attempt (?P<attempt>\d+) of activity '(?P<name>.*)' \(seq (?P<seq>\d+)\) returned ev\.async_result\(\): "
    r"waiting for its completion",
    re.DOTALL,
)


def retry_note(name: str, seq: int, attempt: int, error: str, message: str, due: datetime, delay: timedelta) -> str:
    """What a runtime logs when failed `attempt` will be retried at `due` (after `delay`)."""
    failure = f"{error}: {message}" if message else error
    return (
        f"attempt {attempt} of activity '{name}' (seq {seq}) failed: {failure}; "
        f"retrying at {due.isoformat()} (in {format_duration(delay)})"
    )


def async_note(name: str, seq: int, attempt: int) -> str:
    """What a runtime logs when `attempt` returned `ev.async_result()`: the call now waits for a token."""
    return f"attempt {attempt} of activity '{name}' (seq {seq}) returned ev.async_result(): waiting for its completion"


@dataclass(frozen=True)
class AttemptNote:
    """One note read back: `kind` is "retry" (with the error and when the next attempt is due) or "async"."""

    kind: str
    seq: int
    attempt: int
    name: str
    time: datetime
    error: str = ""
    message: str = ""
    due: datetime | None = None


def read_note(time: datetime, source: str, message: str) -> AttemptNote | None:
    """The note a log line holds (`source` must be the activity's name, as runtimes write it), else None."""
    if not message.startswith("attempt "):
        return None
    found = _RETRY.fullmatch(message)
    if found is not None:
        if found["name"] != source:
            return None
        try:
            due = datetime.fromisoformat(found["due"])
        except ValueError:
            return None
        error, _, detail = found["error"].partition(": ")
        return AttemptNote("retry", int(found["seq"]), int(found["attempt"]), source, time, error, detail, due)
    found = _ASYNC.fullmatch(message)
    if found is not None and found["name"] == source:
        return AttemptNote("async", int(found["seq"]), int(found["attempt"]), source, time)
    return None
