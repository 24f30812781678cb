"""`eventual_nb.testing`: the virtual-time `TestEnvironment`, `Stuck`, `replay`, and `ManualClock` (a clock
for `LocalRuntime(clock=...)` and `AwsRuntime(clock=...)` that moves only when a test says so).

`replay(workflow, history)` is the determinism check the CLI's `replay` verb, the notebook's
redefinition check and the test suite use: it re-runs the workflow against recorded history and
raises `DeterminismError` at the first divergence.
"""

from __future__ import annotations

from typing import Any

from eventual_nb.engine.executor import WorkflowCode, WorkflowExecutor
from eventual_nb.engine.history import Command, WorkflowStarted, parse_history
from eventual_nb.errors import DeterminismError
from eventual_nb.runtime.clock import ManualClock
from eventual_nb.runtime.testing import MockActivity, Stuck, TestEnvironment

__all__ = ["ManualClock", "MockActivity", "Stuck", "TestEnvironment", "replay"]


def replay(workflow: Any, history: Any, *, execution_id: str | None = None) -> list[Command]:
    """Re-run `workflow` against `history`; return the commands it would issue next.

    `workflow` is a decorated workflow or a plain async function; `history` is a list of history events,
    their JSON dicts, or that list as a JSON string. Synchronous and pure: nothing is carried out.
    Pass the `execution_id` the history belongs to when the workflow uses `ev.uuid4()`/`ev.random()`,
    which are seeded from it.
    """
    events = parse_history(history)
    if not events or not isinstance(events[0], WorkflowStarted):
        raise DeterminismError("a history to replay must start with WorkflowStarted")
    started = events[0]
    executor = WorkflowExecutor(
        _code_of(workflow, started.workflow), execution_id or f"{started.workflow}/replay", events
    )
    try:
        return executor.step([]).commands
    finally:
        executor.close()


def _code_of(workflow: Any, name: str) -> WorkflowCode:
    code = getattr(workflow, "code", None)
    if callable(code):
        result = code()
        if isinstance(result, WorkflowCode):
            return result
    from eventual_nb.workflows import Workflow

    if callable(workflow):
        return Workflow(workflow, name=name).code()
    raise TypeError(f"replay() needs a workflow or an async function, got {workflow!r}")
