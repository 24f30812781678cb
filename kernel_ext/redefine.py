"""Safe redefinition: re-running a changed `%%workflow` cell checks in-flight executions first.

Each in-flight execution of the workflow is replayed against the new code (`ev.testing.replay`, pure).
Those that replay cleanly continue on the new definition; those that diverge are reported (id, seq,
recorded call, new call) and stay pinned to the previous definition, so they finish as they started.
After a kernel restart the old code is gone: such executions stop at the diverging seq, IN_PROGRESS
with a `DeterminismError` note, and resume when a compatible definition is registered (the runtime
retries blocked executions after every registration).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from eventual_nb import errors
from eventual_nb.runtime.base import ExecutionStatus
from eventual_nb.testing import replay

if TYPE_CHECKING:
    from eventual_nb.workflows import Workflow
    from kernel_ext.host import RuntimeHost


@dataclass
class Incompatible:
    execution_id: str
    seq: int | None
    reason: str


@dataclass
class RedefinitionReport:
    workflow: str
    moved: list[str] = field(default_factory=list)
    kept: list[Incompatible] = field(default_factory=list)

    def text(self) -> str:
        if not self.moved and not self.kept:
            return ""
        lines = [
            f"workflow '{self.workflow}' redefined: {len(self.moved)} in-flight execution(s) continue on the new code"
        ]
        if self.kept:
            lines.append(
                f"{len(self.kept)} would break and keep running on the previous definition "
                "(guard the change with ev.patched('<change-id>') to move them):"
            )
            for item in self.kept:
                lines.append(f"  {item.execution_id} (seq {item.seq}): {item.reason}")
        return "\n".join(lines)


async def _in_flight(runtime: Any, workflow: str) -> dict[str, list[Any]]:
    histories: dict[str, list[Any]] = {}
    token = None
    while True:
        page = await runtime.list_executions(
            workflow=workflow, statuses=[ExecutionStatus.IN_PROGRESS], next_token=token, max_results=500
        )
        for execution in page.executions:
            histories[execution.id] = await runtime.get_execution_history(execution.id)
        token = page.next_token
        if token is None:
            return histories


def check_redefinition(host: RuntimeHost, previous: Workflow[Any], current: Workflow[Any]) -> RedefinitionReport:
    """Replay in-flight executions of `current.name` on the new code; pin those it would break."""
    report = RedefinitionReport(current.name)
    runtime = host.runtime
    if runtime is None:
        return report
    for execution_id, history in host.call(_in_flight(runtime, current.name)).items():
        try:
            replay(current, history, execution_id=execution_id)
        except errors.DeterminismError as exc:
            report.kept.append(Incompatible(execution_id, exc.seq, _reason(exc, execution_id)))
        except errors.EventualError as exc:  # e.g. its input no longer validates
            report.kept.append(Incompatible(execution_id, None, f"{type(exc).__name__}: {exc}"))
        else:
            report.moved.append(execution_id)
    pinned = {item.execution_id: previous.code() for item in report.kept}
    host.call(runtime.rebind_executions(current.name, pinned))
    return report


def _reason(error: errors.DeterminismError, execution_id: str) -> str:
    """The determinism message without the parts the report already says."""
    text = str(error)
    prefix = f"execution '{execution_id}' diverged from its history at seq {error.seq}: "
    if text.startswith(prefix):
        text = text[len(prefix) :]
    return text.split(" Keep the order of durable calls")[0]
