"""eventual-nb: Eventual's model of event-driven services (APIs, events, durable workflows) for Python.

    import eventual_nb as ev

    @ev.activity(retry=ev.RetryPolicy(max_attempts=3))
    async def charge(order_id: str) -> str: ...

    @ev.workflow
    async def checkout(order_id: str) -> str:
        receipt = await charge(order_id)
        await ev.sleep("1 day")
        return receipt

The SDK imports without Jupyter, FastAPI or boto3; `ev.aws` loads boto3 only when it is used. What only
running needs (`ev.testing`, `ev.LocalRuntime`, `ev.ServiceClient`, the history types) is imported on first
use (`_LAZY`), so `import eventual_nb` loads the decorators and pydantic and little else; `python -m
benchmarks --only import_time` measures it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from eventual_nb._version import __version__ as __version__
from eventual_nb.activities import (
    Activity,
    ActivityInfo,
    activity,
    activity_info,
    async_result,
    heartbeat,
    heartbeat_sync,
)
from eventual_nb.combinators import all, all_settled, any, race
from eventual_nb.durations import parse_duration
from eventual_nb.entities import Entity, Entry, EntryPage, entity, transact
from eventual_nb.errors import (
    ActivityFailed,
    DeterminismError,
    EventualError,
    ExecutionAlreadyExists,
    ExecutionCancelled,
    ExecutionFailed,
    ExecutionNotFound,
    HeartbeatTimeout,
    HttpError,
    InputValidationError,
    PayloadTooLarge,
    ScheduleNotFound,
    Timeout,
    TransactionConflict,
    VersionConflict,
    WorkflowNotFound,
    WorkflowTimeout,
)
from eventual_nb.events import Event, Subscription, publish, subscription
from eventual_nb.http import api
from eventual_nb.retry import RetryPolicy
from eventual_nb.runtime.base import (
    DeadLetter,
    Execution,
    ExecutionHandle,
    ExecutionPage,
    ExecutionStatus,
    HeartbeatResponse,
    WorkflowInfo,
    current_runtime,
    set_default_runtime,
)
from eventual_nb.schedules import schedule
from eventual_nb.service import Service, current_service
from eventual_nb.signals import Signal, signal, signal_model
from eventual_nb.workflows import (
    RunningWorkflowInfo,
    Workflow,
    condition,
    now,
    patched,
    random,
    sleep,
    sleep_until,
    uuid4,
    workflow,
    workflow_info,
)

if TYPE_CHECKING:
    from eventual_nb import testing as testing
    from eventual_nb.client import ServiceClient as ServiceClient
    from eventual_nb.engine.history import HistoryEvent as HistoryEvent
    from eventual_nb.engine.history import LogEntry as LogEntry
    from eventual_nb.runtime.core.schedules import ScheduleInfo as ScheduleInfo
    from eventual_nb.runtime.local import LocalRuntime as LocalRuntime

#: public names imported on first use: name -> module that defines it (a module for `testing`)
_LAZY = {
    "testing": "eventual_nb.testing",
    "ServiceClient": "eventual_nb.client",
    "HistoryEvent": "eventual_nb.engine.history",
    "LogEntry": "eventual_nb.engine.history",
    "ScheduleInfo": "eventual_nb.runtime.core.schedules",
    "LocalRuntime": "eventual_nb.runtime.local",
}

__all__ = [
    "Activity",
    "ActivityFailed",
    "ActivityInfo",
    "DeadLetter",
    "DeterminismError",
    "Entity",
    "Entry",
    "EntryPage",
    "Event",
    "EventualError",
    "Execution",
    "ExecutionAlreadyExists",
    "ExecutionCancelled",
    "ExecutionFailed",
    "ExecutionHandle",
    "ExecutionNotFound",
    "ExecutionPage",
    "ExecutionStatus",
    "HeartbeatResponse",
    "HeartbeatTimeout",
    "HistoryEvent",
    "HttpError",
    "InputValidationError",
    "LocalRuntime",
    "LogEntry",
    "PayloadTooLarge",
    "RetryPolicy",
    "RunningWorkflowInfo",
    "ScheduleInfo",
    "ScheduleNotFound",
    "Service",
    "ServiceClient",
    "Signal",
    "Subscription",
    "Timeout",
    "TransactionConflict",
    "VersionConflict",
    "Workflow",
    "WorkflowInfo",
    "WorkflowNotFound",
    "WorkflowTimeout",
    "activity",
    "activity_info",
    "all",
    "all_settled",
    "any",
    "api",
    "async_result",
    "condition",
    "current_runtime",
    "current_service",
    "entity",
    "heartbeat",
    "heartbeat_sync",
    "load_ipython_extension",
    "now",
    "parse_duration",
    "patched",
    "publish",
    "race",
    "random",
    "schedule",
    "set_default_runtime",
    "signal",
    "signal_model",
    "sleep",
    "sleep_until",
    "subscription",
    "testing",
    "transact",
    "uuid4",
    "workflow",
    "workflow_info",
]


def __getattr__(name: str) -> Any:
    """The names of `_LAZY` and `ev.aws` (the AWS runtime) are imported on first use, so `import eventual_nb`
    never loads boto3, SQLite or the engine."""
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        value = module if module.__name__.endswith(f".{name}") else getattr(module, name)
        globals()[name] = value
        return value
    if name == "aws":
        try:
            return importlib.import_module("eventual_nb.aws")
        except ModuleNotFoundError as exc:
            raise ImportError(f"ev.aws needs boto3: pip install 'eventual-nb[aws]' ({exc})") from exc
    raise AttributeError(f"module 'eventual_nb' has no attribute {name!r}")


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext eventual_nb` delegates to the kernel extension (`kernel_ext`), imported only here: the
    SDK itself never depends on it."""
    try:
        import kernel_ext
    except ImportError as exc:
        raise ImportError(
            f"the notebook extension needs the notebook extra: pip install 'eventual-nb[notebook]' ({exc})"
        ) from exc
    kernel_ext.load_ipython_extension(ipython)
