"""The duration grammar shared by every option that takes a length of time.

Users write durations the way they say them ("5m", "1h30m", "2 days"), so every public option accepts a
`timedelta`, a number of seconds, or such a string, and everything inside the package works with
`timedelta` only.
"""

from __future__ import annotations

import re
from datetime import timedelta

from eventual_nb.errors import EventualError

DurationLike = timedelta | int | float | str

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


def parse_duration(value: DurationLike, *, what: str = "duration") -> timedelta:
    """Turn any accepted duration form into a non-negative `timedelta`.

    `what` names the option being parsed so that the error says where the bad value came from.
    """
    if isinstance(value, bool):
        raise InvalidDuration(f"invalid {what} {value!r}: expected seconds, a timedelta or a string like '5m'")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value, what)
    else:
        raise InvalidDuration(
            f"invalid {what} {value!r} ({type(value).__name__}): expected seconds, a timedelta "
            "or a string like '30s', '5m', '1h30m', '2 days'"
        )
    if seconds < 0 or seconds != seconds:  # negative or NaN
        raise InvalidDuration(f"invalid {what} {value!r}: durations cannot be negative")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise InvalidDuration(f"invalid {what} {value!r}: too long (at most 999999999 days)") from None


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
