"""The limits a service meets once deployed on AWS, decided once for the three runtimes.

The AWS runtime refuses what would not fit (a clear error on the call that hit the limit); the
LocalRuntime and the TestEnvironment accept it and write a warning into the execution's logs, so a
notebook that passes locally does not fail only after deploy. Both read the rules here.

Inline activities (`@ev.activity(inline=True)`) run inside the orchestrator function's invocation, so
their timeout must fit its time limit: `ORCHESTRATOR_TIMEOUT` (the template's `Timeout` of the
orchestrator function) less `INLINE_SAFETY` (kept to commit what the attempt returned).
"""

from __future__ import annotations

from datetime import timedelta

#: the orchestrator function's time limit (exporter/template.py deploys it with this `Timeout`)
ORCHESTRATOR_TIMEOUT = timedelta(seconds=60)
#: what an invocation keeps after an inline attempt: committing its result and sending the next turn's actions
INLINE_SAFETY = timedelta(seconds=10)
#: the longest timeout an inline activity may have; also the time an inline activity without one may take
MAX_INLINE_TIMEOUT = ORCHESTRATOR_TIMEOUT - INLINE_SAFETY


def inline_problem(name: str, timeout: timedelta | None, heartbeat_timeout: timedelta | None) -> str | None:
    """Why the options of activity `name` cannot be inline, or None when they can."""
    if heartbeat_timeout is not None:
        return (
            f"inline activity '{name}' cannot have a heartbeat_timeout: it runs inside the orchestrator's "
            "invocation, which nothing outside can watch (drop heartbeat_timeout, or make it a queued activity)"
        )
    if timeout is not None and timeout > MAX_INLINE_TIMEOUT:
        return (
            f"inline activity '{name}' has a timeout of {timeout.total_seconds():g} s, but an inline activity runs "
            f"inside the orchestrator function, whose time limit is {ORCHESTRATOR_TIMEOUT.total_seconds():g} s: "
            f"at most {MAX_INLINE_TIMEOUT.total_seconds():g} s fit (make it a queued activity, without inline=True, "
            "to run for up to 15 minutes)"
        )
    return None
