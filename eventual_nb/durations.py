"""The duration grammar shared by every option that takes a length of time, and the one rule for deadlines.

Users write durations the way they say them ("5m", "1h30m", "2 days"), so every public option accepts a
`timedelta`, a number of seconds, or such a string, and everything inside the package works with
`timedelta` only.

Every duration is finite, non-negative and at most `MAX_DURATION` (100 years), and every deadline made by
adding one to a clock falls no later than `LATEST_DEADLINE` (the start of year 9999). Both limits exist so
that every deadline can be stored: Python's `datetime` ends with year 9999, and SQLite, JSON and DynamoDB
hold deadlines as such datetimes or their timestamps. The year of room below `datetime.max` lets a runtime
whose clock runs a little ahead of the workflow's still compute the same deadline. Whatever breaks the rule
is refused with `InvalidDuration` where the duration is given (inside a workflow: where the call is made,
so the execution fails with that message).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator

from eventual_nb.errors import EventualError

DurationLike = timedelta | int | float | str

#: the longest duration accepted anywhere (sleeps, timeouts, retry intervals, workflow timeouts)
MAX_DURATION = timedelta(days=36525)
_MAX_DURATION_TEXT = "100 years (36525 days)"
#: the latest deadline any duration may lead to
LATEST_DEADLINE = datetime(9999, 1, 1, tzinfo=UTC)

_UNIT_SECONDS: dict[str, float] = {}
for _names, _seconds in (
    (("ms", "msec", "msecs", "millisecond", "milliseconds"), 0.001),
    (("s", "sec", "secs", "second", "seconds"), 1.0),
    (("m", "min", "mins", "minute", "minutes"), 60.0),
    (("h", "hr", "hrs", "hour", "hours"), 3600.0),
    (("d", "day", "days"), 86400.0),
    (("w", "week", "weeks"), 7 * 86400.0),
):
    for _name in _names:
        _UNIT_SECONDS[_name] = _seconds

_PART = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-zA-Z]+)\s*,?")


class InvalidDuration(EventualError, ValueError):
    """A duration that cannot be understood; the message shows the accepted forms."""

    status_code = 422


def parse_duration(value: DurationLike, *, what: str = "duration", after: datetime | None = None) -> timedelta:
    """Turn any accepted duration form into a `timedelta` between 0 and `MAX_DURATION`.

    `what` names the option being parsed so that the error says where the bad value came from. `after`
    is the clock the duration is about to be added to: its deadline must not fall after `LATEST_DEADLINE`
    (`deadline_after` returns that deadline).
    """
    shown = _shown(value)
    if isinstance(value, bool):
        raise InvalidDuration(f"invalid {what} {shown}: expected seconds, a timedelta or a string like '5m'")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int):
        seconds = float(min(value, 10**300))  # larger ints cannot become floats; they are too long anyway
    elif isinstance(value, float):
        seconds = value
    elif isinstance(value, str):
        seconds = _parse_text(value, what)
    else:
        raise InvalidDuration(
            f"invalid {what} {shown} ({type(value).__name__}): expected seconds, a timedelta "
            "or a string like '30s', '5m', '1h30m', '2 days'"
        )
    if not math.isfinite(seconds):
        raise InvalidDuration(f"invalid {what} {shown}: a duration must be a finite number of seconds")
    if seconds < 0:
        raise InvalidDuration(f"invalid {what} {shown}: durations cannot be negative")
    if seconds > MAX_DURATION.total_seconds():
        raise InvalidDuration(f"invalid {what} {shown}: too long, a duration is at most {_MAX_DURATION_TEXT}")
    duration = timedelta(seconds=seconds)
    if after is not None:
        latest = LATEST_DEADLINE if after.tzinfo is not None else LATEST_DEADLINE.replace(tzinfo=None)
        if after > latest - duration:
            raise InvalidDuration(
                f"invalid {what} {shown}: its deadline ({after.isoformat()} + {format_duration(duration)}) "
                f"falls after {latest.isoformat()}, the latest deadline eventual-nb can store"
            )
    return duration


def deadline_after(start: datetime, value: DurationLike, *, what: str = "duration") -> datetime:
    """`start + value`, refusing (with `InvalidDuration`) what breaks the rule in the module docstring."""
    return start + parse_duration(value, what=what, after=start)


def _shown(value: object) -> str:
    """The value as a message quotes it (a 400-digit int is cut short)."""
    if isinstance(value, timedelta) and value >= timedelta(0):
        return format_duration(value)
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _parse_text(text: str, what: str) -> float:
    stripped = text.strip().lower()
    if not stripped:
        raise InvalidDuration(f"invalid {what} {text!r}: the string is empty")
    try:
        return float(stripped)
    except ValueError:
        pass
    position = 0
    total = 0.0
    while position < len(stripped):
        match = _PART.match(stripped, position)
        if match is None or match.end() == position:
            raise InvalidDuration(
                f"invalid {what} {text!r}: cannot read {stripped[position:]!r}; "
                "write e.g. '30s', '5m', '1h30m', '2 days', '500ms'"
            )
        number, unit = match.groups()
        if unit not in _UNIT_SECONDS:
            raise InvalidDuration(
                f"invalid {what} {text!r}: unknown unit {unit!r}; use ms, s, m, h, d or w (or their long names)"
            )
        total += float(number) * _UNIT_SECONDS[unit]
        position = match.end()
    return total


def _checked_field(value: Any) -> Any:
    parse_duration(value)  # an InvalidDuration is a ValueError: pydantic reports it against the field
    return value


#: a duration in a pydantic model (an HTTP body): seconds or a string like "5m", checked by the rule above,
#: so that `true` is not taken as one second and `1e300` is refused with the field's name (422)
DurationField = Annotated[float | str, BeforeValidator(_checked_field)]


def optional_duration(value: DurationLike | None, *, what: str = "duration") -> timedelta | None:
    """`parse_duration` for options where `None` means "no limit"."""
    return None if value is None else parse_duration(value, what=what)


def format_duration(delta: timedelta) -> str:
    """Short human form used in messages ("1h30m", "250ms")."""
    total_ms = round(delta.total_seconds() * 1000)
    if total_ms < 1000:
        return f"{total_ms}ms"
    seconds, ms = divmod(total_ms, 1000)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        amount, seconds = divmod(seconds, size)
        if amount:
            parts.append(f"{amount}{unit}")
    if seconds or ms:
        parts.append(f"{seconds}.{ms:03d}s".replace(".000s", "s"))
    return "".join(parts)
