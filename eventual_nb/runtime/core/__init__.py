"""The execution core: every rule of execution, decided once, for all three runtimes.

The core knows no storage, no transport and no clock. It takes typed values and returns typed values;
the runtimes — `TestEnvironment` (memory, virtual clock), `LocalRuntime` (SQLite, asyncio timers) and
`AwsRuntime` (DynamoDB, SQS, EventBridge, Lambda) — only store, transport and wake.

Messages (what comes in)
------------------------
* To an execution: history events, which the engine's step takes as input — `WorkflowStarted` (`begin`),
  `SignalReceived` (`signal_received` from outside; `Deliver` actions from workflows), `CancelRequested`
  (`cancel_requested`), a due timer's event (`timer_fired`: `TimerCompleted`, or the `WorkflowFailed` of
  a workflow timeout), an activity's settled result (`Settle.event`), a child's end (`child_result`).
* About an activity attempt: an `AttemptOutcome` — succeeded, failed, timed out, heartbeat missed, or
  waiting for its token (`Outcome`). A deadline check of a running or waiting attempt is
  `missed_deadline` + `expired`.
* About a subscription delivery: the error its handler raised.

Decisions (what the core answers)
---------------------------------
* A **turn** (`turn`): given the step an execution just made (`StepOutput`, from its `WorkflowExecutor`)
  and where it belongs (`Lineage`), the log lines to write and the **actions** to carry out. The
  history events to record are the step's own. When the step ended the execution, its turn also says
  what ending means: `Finish` (the status), `Deliver(CancelRequested)` to each child still running,
  `Deliver(ChildWorkflowSucceeded/Failed)` to the parent.
* A **start** (`execution_id_for`, `admit`, `timeout_limit`, `begin`): the id, idempotency by input hash
  (`ExecutionAlreadyExists` for another input), `WorkflowStarted`, the workflow-timeout timer.
* **After an attempt** (`retry_or_settle`): `RetryAt(due, attempt)` per the `RetryPolicy`, or
  `Settle(event)`, or `AwaitToken`. A `RetryAt` or `AwaitToken` carries the `note` the runtime logs for
  the attempt (the line `eventual_nb.attempts` writes and the timeline reads).
* **Which subscriptions an event reaches** (`subscriptions_for`), and which of them it reaches when another
  runtime published it over the local bus (`bus_subscriptions_for`: those that name its source).
* **After a failed delivery** (`after_delivery`): `RetryDeliveryAt(due, attempt)` or a `DeadLetter`.
* **Schedule fires** (`core.schedules`: `decide_due`, `decide_delivery`, `decide_trigger`, `pause`,
  `resume`): the executions to start (named after their fire), the fires skipped, the schedule's new state
  and when to ask again.

Actions (what goes out)
-----------------------
Frozen dataclasses in `actions`: `StartAttempt`, `ArmTimer`, `DisarmTimer`, `Deliver`, `Publish`,
`StartChild`, `Finish`. They are the transactional outbox: a runtime commits a turn's history events (and
`Finish`) before it carries out any action, and carries out each action idempotently, so carrying one
out again after a crash is harmless. `wire` is their JSON form for runtimes that store them.

Facts
-----
Where a decision needs a fact only storage has, the runtime passes it in: `turn(status_of=...)` asks the
status of a signal's target; `admit` takes the input hash of an existing execution; `signal_received` and
`cancel_requested` take the target's status; `retry_or_settle` takes the stored retry policy. The core
never reads or writes SQLite, DynamoDB or a runtime's memory.

What a runtime may and may not do
---------------------------------
It may choose how to store and transport (rows, items, queue messages, heap entries), when to wake, how
to batch commits, how to cache executors, and which clock stamps what it records. It must not decide
anything the core decides: no command dispatch of its own, no retry or timeout rule, no building of the
events above. A rule written twice is a defect.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from eventual_nb.runtime.core.actions import (
        TIMEOUT_TIMER_KEY,
        Action,
        ArmTimer,
        Deliver,
        DisarmTimer,
        Finish,
        Publish,
        StartAttempt,
        StartChild,
        timer_key,
    )
    from eventual_nb.runtime.core.attempts import (
        NO_DEADLINES,
        ActivityOptions,
        AttemptDecision,
        AttemptOutcome,
        AwaitToken,
        Deadlines,
        Outcome,
        RetryAt,
        Settle,
        attempt_deadlines,
        default_retry,
        expired,
        failed,
        failed_named,
        heartbeat_at,
        missed_deadline,
        not_served,
        retry_or_settle,
        succeeded,
        token_not_pending,
        waiting,
    )
    from eventual_nb.runtime.core.deliveries import (
        RetryDeliveryAt,
        after_delivery,
        bus_subscriptions_for,
        reads_the_bus,
        subscriptions_for,
    )
    from eventual_nb.runtime.core.execution import (
        Begun,
        Lineage,
        StatusLookup,
        Turn,
        admit,
        begin,
        blocked_note,
        cancel_requested,
        child_not_started,
        child_result,
        execution_id_for,
        finish,
        not_found,
        service_of,
        signal_received,
        timed_out,
        timeout_limit,
        timer_fired,
        turn,
    )

#: the names this package re-exports, by the module that defines them: imported on first use, so code that
#: needs one module (the `ev.schedule` decorator reads `core.schedules`) does not load the whole core, and
#: `import eventual_nb` stays short (`python -m benchmarks --only kernel_load`)
_EXPORTS: dict[str, tuple[str, ...]] = {
    "actions": (
        "TIMEOUT_TIMER_KEY",
        "Action",
        "ArmTimer",
        "Deliver",
        "DisarmTimer",
        "Finish",
        "Publish",
        "StartAttempt",
        "StartChild",
        "timer_key",
    ),
    "attempts": (
        "NO_DEADLINES",
        "ActivityOptions",
        "AttemptDecision",
        "AttemptOutcome",
        "AwaitToken",
        "Deadlines",
        "Outcome",
        "RetryAt",
        "Settle",
        "attempt_deadlines",
        "default_retry",
        "expired",
        "failed",
        "failed_named",
        "heartbeat_at",
        "missed_deadline",
        "not_served",
        "retry_or_settle",
        "succeeded",
        "token_not_pending",
        "waiting",
    ),
    "deliveries": (
        "RetryDeliveryAt",
        "after_delivery",
        "bus_subscriptions_for",
        "reads_the_bus",
        "subscriptions_for",
    ),
    "execution": (
        "Begun",
        "Lineage",
        "StatusLookup",
        "Turn",
        "admit",
        "begin",
        "blocked_note",
        "cancel_requested",
        "child_not_started",
        "child_result",
        "execution_id_for",
        "finish",
        "not_found",
        "service_of",
        "signal_received",
        "timed_out",
        "timeout_limit",
        "timer_fired",
        "turn",
    ),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
_SUBMODULES = frozenset({*_EXPORTS, "limits", "schedules", "wire"})

__all__ = [
    "NO_DEADLINES",
    "TIMEOUT_TIMER_KEY",
    "Action",
    "ActivityOptions",
    "ArmTimer",
    "AttemptDecision",
    "AttemptOutcome",
    "AwaitToken",
    "Begun",
    "Deadlines",
    "Deliver",
    "DisarmTimer",
    "Finish",
    "Lineage",
    "Outcome",
    "Publish",
    "RetryAt",
    "RetryDeliveryAt",
    "Settle",
    "StartAttempt",
    "StartChild",
    "StatusLookup",
    "Turn",
    "admit",
    "after_delivery",
    "attempt_deadlines",
    "begin",
    "blocked_note",
    "bus_subscriptions_for",
    "cancel_requested",
    "child_not_started",
    "child_result",
    "default_retry",
    "execution_id_for",
    "expired",
    "failed",
    "failed_named",
    "finish",
    "heartbeat_at",
    "missed_deadline",
    "not_found",
    "not_served",
    "reads_the_bus",
    "retry_or_settle",
    "service_of",
    "signal_received",
    "subscriptions_for",
    "succeeded",
    "timed_out",
    "timeout_limit",
    "timer_fired",
    "timer_key",
    "token_not_pending",
    "turn",
    "waiting",
]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:  # `core.wire`, `core.schedules`: the modules themselves, imported on first use
        return importlib.import_module(f"{__name__}.{name}")
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
