"""Routes `print()` and `logging` from workflow and activity code into per-execution logs.

Workflow code runs on a `WorkflowEventLoop` (found through the thread's running loop, which works for
every task of the workflow); activity and subscription code runs with a log sink in a context
variable (which `asyncio.to_thread` carries into worker threads). Everything else passes through to
the stream that was there before, so the rest of the program is not affected.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

#: where output of the current activity / subscription delivery goes (a line at a time)
log_sink: contextvars.ContextVar[Callable[[str], None] | None] = contextvars.ContextVar(
    "eventual_log_sink", default=None
)

_install_lock = threading.Lock()


def _current_sink() -> Callable[[str], None] | None:
    loop = asyncio._get_running_loop()
    workflow_sink = getattr(loop, "eventual_log_sink", None)
    if workflow_sink is not None:
        return workflow_sink  # type: ignore[no-any-return]
    return log_sink.get()


class CapturingStream:
    """Stands in for sys.stdout / sys.stderr; text written by captured code becomes log lines."""

    def __init__(self, fallback: TextIO) -> None:
        self._fallback = fallback
        self._partial: dict[Any, str] = {}

    def write(self, text: str) -> int:
        sink = _current_sink()
        if sink is None:
            return self._fallback.write(text)
        key = id(sink)
        buffered = self._partial.pop(key, "") + text
        *lines, rest = buffered.split("\n")
        for line in lines:
            sink(line)
        if rest:
            self._partial[key] = rest
        return len(text)

    def flush(self) -> None:
        sink = _current_sink()
        if sink is not None:
            rest = self._partial.pop(id(sink), "")
            if rest:
                sink(rest)
            return
        self._fallback.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fallback, name)


class _CapturingHandler(logging.Handler):
    """Sends log records of captured code to its sink; leaves every other record alone."""

    def emit(self, record: logging.LogRecord) -> None:
        sink = _current_sink()
        if sink is None:
            root = logging.getLogger()
            if len(root.handlers) == 1 and logging.lastResort and record.levelno >= logging.lastResort.level:
                logging.lastResort.handle(record)
            return
        try:
            sink(f"{record.levelname}:{record.name}:{record.getMessage()}")
        except Exception:  # noqa: BLE001 - logging must never break user code
            self.handleError(record)


_handler = _CapturingHandler()


def install() -> None:
    """Make sure captured output is routed (idempotent; re-wraps streams replaced by others, e.g. pytest)."""
    if (
        isinstance(sys.stdout, CapturingStream)
        and isinstance(sys.stderr, CapturingStream)
        and _handler in logging.root.handlers
    ):
        return  # the common case, checked without the lock: this runs on every workflow step
    with _install_lock:
        if not isinstance(sys.stdout, CapturingStream):
            sys.stdout = CapturingStream(sys.stdout)
        if not isinstance(sys.stderr, CapturingStream):
            sys.stderr = CapturingStream(sys.stderr)
        root = logging.getLogger()
        if _handler not in root.handlers:
            root.addHandler(_handler)


def flush_sink(sink: Callable[[str], None]) -> None:
    """Emit a trailing partial line (print(..., end="")) for a sink that is about to close."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, CapturingStream):
            rest = stream._partial.pop(id(sink), "")
            if rest:
                sink(rest)
