"""What the notebook's magics accept: the flags of `%%workflow`, `%%activity`, `%%api`, `%%event`,
`%%subscription` and `%%signal`, the NAME of `%eventual service NAME`, and which definition of a cell a
magic decorates.

One grammar read by two readers: the kernel extension (`kernel_ext.magics`), which applies the
decorators as a cell runs, and the exporter (`exporter.notebook`), which writes the same decorators into
the exported package. So a flag the kernel refuses is refused by the exporter with the same words, and a
flag the kernel accepts means the same thing in the package. Nothing here imports IPython: exporting a
notebook needs neither a kernel nor widgets.

Durations stay as written (`--timeout 1h` gives "1h", checked by `parse_duration`): the exporter writes
`@ev.workflow(timeout="1h")`, and the decorators read the text the same way the kernel would.

A line is split as a POSIX shell splits it (`shlex`), as `%eventual` splits its own line: quotes group
words and are not part of them (`--name "nightly report"`), and an unclosed quote is a `FlagError`.
Every problem is a `FlagError` whose message starts with the magic (`%%workflow: argument --timeout:
invalid duration value: '1fortnight'`); the kernel raises it as IPython's `UsageError`, the exporter
names the cell and line.
"""

from __future__ import annotations

import argparse
import functools
import shlex
from collections.abc import Sequence
from typing import NoReturn

from eventual_nb.durations import parse_duration
from eventual_nb.errors import EventualError
from eventual_nb.http import declared_responses
from eventual_nb.service import check_service_name

__all__ = [
    "CELL_MAGICS",
    "HTTP_METHODS",
    "FlagError",
    "decorated_function",
    "flags_help",
    "max_attempts",
    "parse_flags",
    "schedule_options",
    "service_name",
]

#: the cell magics, each of which defines something in the service
CELL_MAGICS = ("workflow", "activity", "api", "event", "subscription", "signal")
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")

#: what `%%event` and `%%signal` say about flags (they take none) and about a cell without a definition
_NO_FLAGS = {
    "event": "the event name is the class name (or `__event_name__`)",
    "signal": "the signal is named after the class",
}
NO_EVENT_CLASS = "%%event: the cell must define a class that subclasses ev.Event"
NO_SIGNAL = "%%signal: the cell must define a payload class or `name = ev.signal(...)`"


class FlagError(EventualError):
    """A magic line the grammar refuses; the message names the magic and the flag."""


def duration(text: str) -> str:
    """argparse type of `--timeout 1h`: checked, kept as written. argparse names a bad value after this
    function: `invalid duration value: '1fortnight'`."""
    try:
        parse_duration(text, what="duration")
    except (EventualError, TypeError) as exc:
        raise ValueError(str(exc)) from None
    return text


def retries(text: str) -> int:
    """argparse type of `--retries N` (0 or more): `invalid retries value: 'many'`."""
    value = int(text)
    if value < 0:
        raise ValueError("retries must be 0 or more")
    return value


def max_attempts(retries: int | None) -> int | None:
    """`--retries N` means `RetryPolicy(max_attempts=N + 1)`: the first attempt plus N retries."""
    return None if retries is None else retries + 1


class _Parser(argparse.ArgumentParser):
    """argparse that raises `FlagError` (prefixed with the magic) instead of printing and exiting."""

    def error(self, message: str) -> NoReturn:
        raise FlagError(f"{self.prog}: {message}")


def _parser(magic: str) -> _Parser:
    parser = _Parser(prog=f"%%{magic}", add_help=False)
    add = parser.add_argument
    if magic == "workflow":
        add("--timeout", type=duration, help="time limit of each execution, e.g. 1h")
        add("--name", help="workflow name (default: the function's name)")
        add(
            "--schedule",
            metavar="CRON",
            help='also start it on a 5-field cron line, e.g. --schedule "0 9 * * MON-FRI" (quoted: it has spaces); '
            "the workflow receives the fire time",
        )
        add("--every", type=duration, help="also start it at every whole multiple of this interval, e.g. 15m")
        add("--timezone", help="IANA zone the --schedule line is read in (default UTC), e.g. Europe/Paris")
        add("--overlap", choices=("skip", "allow"), help="a fire while the previous run still runs (default skip)")
        add(
            "--catchup",
            choices=("latest", "all", "none"),
            help="fires missed while no runtime ran: start the latest (default), all or none",
        )
    elif magic == "activity":
        add("--timeout", type=duration, help="time limit of each attempt")
        add("--heartbeat-timeout", type=duration, help="longest gap between heartbeats")
        add("--retries", type=retries, help="retries after a failed attempt (max_attempts = N + 1)")
        add("--name", help="activity name (default: the function's name)")
        add(
            "--inline",
            action="store_true",
            help="on AWS, run it inside the orchestrator's invocation (a short activity: no queue, no second Lambda)",
        )
    elif magic == "api":
        add("method", type=str.upper, choices=HTTP_METHODS, help="HTTP method")
        add("path", help="route path, e.g. /carts/{cart_id}")
        add("--status-code", type=int, help="status code of a successful response")
        add(
            "--responses",
            type=int,
            nargs="+",
            metavar="CODE",
            help="error statuses the handler answers (ev.HttpError), listed in the OpenAPI, e.g. --responses 404 409",
        )
    elif magic == "subscription":
        add("events", nargs="+", help="event classes (names in the notebook) or event names")
        add("--name", help="subscription name (default: the handler's name)")
        add("--retries", type=retries, help="retries after a failed delivery (max_attempts = N + 1)")
        add("--source", help="receive these events from another service")
    elif magic not in _NO_FLAGS:
        raise FlagError(f"%%{magic} is not one of the magics ({', '.join('%%' + name for name in CELL_MAGICS)})")
    return parser


_cached_parser = functools.cache(_parser)


def parse_flags(magic: str, line: str) -> argparse.Namespace:
    """The flags of the magic line `%%MAGIC LINE`, checked; raises `FlagError`.

    `%%api` answers `responses` as the route's OpenAPI `responses` (`declared_responses`), or None.
    """
    if magic in _NO_FLAGS:
        if line.strip():
            raise FlagError(f"%%{magic} takes no flags: {_NO_FLAGS[magic]}")
        return argparse.Namespace()
    parser = _cached_parser(magic)
    try:
        words = shlex.split(line)
    except ValueError as exc:  # an unclosed quote
        raise FlagError(f"%%{magic}: {exc} in {line.strip()!r}") from None
    args = parser.parse_args(words)
    if magic == "workflow":
        _check_schedule_flags(args)
    if magic == "api":
        if not args.path.startswith("/"):
            raise FlagError(f"%%api: the path must start with '/', got {args.path!r}")
        try:
            args.responses = declared_responses(args.responses) if args.responses else None
        except EventualError as exc:
            raise FlagError(f"%%api: {exc}") from None
    return args


_SCHEDULE_OPTIONS = ("timezone", "overlap", "catchup")


def _check_schedule_flags(args: argparse.Namespace) -> None:
    if args.schedule is not None and args.every is not None:
        raise FlagError("%%workflow: give --schedule CRON or --every DURATION, not both")
    if args.schedule is None and args.every is None:
        given = [f"--{option}" for option in _SCHEDULE_OPTIONS if getattr(args, option) is not None]
        if given:
            raise FlagError(f"%%workflow: {', '.join(given)} needs --schedule CRON or --every DURATION")


def schedule_options(args: argparse.Namespace) -> dict[str, str] | None:
    """The keyword arguments of `ev.schedule(...)` that `%%workflow --schedule/--every ...` stands for (those
    given, as written), or None when the cell defines no schedule. The schedule is named after the workflow."""
    if args.schedule is None and args.every is None:
        return None
    options = {"cron": args.schedule, "every": args.every}
    options.update({option: getattr(args, option) for option in _SCHEDULE_OPTIONS})
    return {key: value for key, value in options.items() if value is not None}


def flags_help(magic: str) -> str:
    """The usage and options of a magic (what `%%workflow?` shows under the magic's docstring)."""
    if magic in _NO_FLAGS:
        return f"%%{magic} takes no flags: {_NO_FLAGS[magic]}."
    return _cached_parser(magic).format_help().strip()


def decorated_function(magic: str, functions: Sequence[tuple[str, bool]]) -> str:
    """The function a cell magic decorates, given the cell's top-level functions in order as
    (name, is `async def`): the last one; for `%%workflow` the last `async def` (earlier functions stay
    plain helpers). Raises `FlagError` when there is none."""
    if magic == "workflow":
        names = [name for name, is_async in functions if is_async]
        kind = "an `async def` function"
    else:
        names = [name for name, _ in functions]
        kind = "a function"
    if not names:
        raise FlagError(f"%%{magic}: the cell must define {kind} (the magic's flags are its decorator's options)")
    return names[-1]


def service_name(words: Sequence[str]) -> str:
    """The NAME of `%eventual service NAME`, given the words after `service` (split as a shell splits
    them), checked by `check_service_name`; raises `FlagError`."""
    if len(words) != 1:
        got = f"{len(words)} words: {' '.join(words)}" if words else "none"
        raise FlagError(
            f'%eventual service takes one NAME (quote a name with spaces: %eventual service "my service"), got {got}'
        )
    try:
        return check_service_name(words[0])
    except EventualError as exc:
        raise FlagError(f"%eventual service: {exc.message}") from None
