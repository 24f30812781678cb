"""The stack's queue-driven Lambda functions, built once per process from the `EVENTUAL_*` environment.

`StackFunctions` holds one `Orchestrator`, one `ActivityWorker`, one `SubscriptionWorker`, the timer
relay and the schedule forwarder, all sharing one `AwsClients` (boto3 clients are built lazily, so a
function pays only for what it calls). `handlers()` maps the template's function keys to their
`handler(event, context)` callables: exactly what the `Harness` drives offline and what the generated
`handlers.py` calls inside Lambda. Nothing here imports the harness (it is for tests and benchmarks, and a
Lambda cold start should not load it): `eventual_nb.runtime.aws.harness.harness_for` builds one over an
export's handlers.

Why one object per process rather than one per function: a Lambda container runs one function, but a
local emulator (`Harness`) runs all of them in one process, and the orchestrator's warm instance cache
is only worth anything if it outlives an invocation. `process_functions(service)` keeps the one
instance of the process, so a warm container reuses its clients, its cache and its worker loops.

Where the clients point: inside Lambda, boto3's defaults (region and credentials from the function's
role). Offline, `AWS_ENDPOINT_URL` (read by boto3 itself) or an explicit `client_kwargs`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from eventual_nb import errors
from eventual_nb.aws import AwsRuntime
from eventual_nb.runtime.aws.clients import MAX_SQS_DELAY_SECONDS, AwsClients, AwsSettings
from eventual_nb.runtime.aws.orchestrator import Orchestrator
from eventual_nb.runtime.aws.schedules import ScheduleKeeper
from eventual_nb.runtime.aws.stores import ExecutionStore, HistoryStore, ScheduleStore
from eventual_nb.runtime.aws.workers import (
    ActivityWorker,
    Handler,
    SubscriptionWorker,
    schedule_forwarder,
    timer_handler,
)
from eventual_nb.runtime.base import ServedDefinitions
from eventual_nb.service import Service, all_services, get_service

__all__ = [
    "ENTRY_POINTS",
    "FUNCTION_KEYS",
    "StackFunctions",
    "invoke",
    "process_functions",
    "reset_process_functions",
]

#: what every function needs from its environment (the rest is checked by the part that uses it)
REQUIRED_SETTINGS = ("executions_table", "history_table", "workflow_queue_url")
#: function key (exporter/template.py, harness.py) → its entry point in an export's generated handlers.py
ENTRY_POINTS: dict[str, str] = {
    "orchestrator": "orchestrator",
    "activity": "activity_worker",
    "subscription": "subscription_worker",
    "timer": "timer",
    "schedule": "schedule_forwarder",
}
#: the template's function keys in the order a stack lists them
FUNCTION_KEYS = tuple(ENTRY_POINTS)


class StackFunctions:
    """Every queue-driven function of one stack, over one set of clients (see the module docstring)."""

    def __init__(
        self,
        services: Sequence[Service],
        *,
        clients: AwsClients | None = None,
        environ: Mapping[str, str] | None = None,
        client_kwargs: Any = None,
        clock: Callable[[], datetime] | None = None,
        timer_hop_seconds: int = MAX_SQS_DELAY_SECONDS,
        signing_key: bytes | None = None,
    ) -> None:
        """`clients` wins; else they are built from `environ` (default `os.environ`) with `client_kwargs`
        (a boto3 Session or `boto3.client` keyword arguments, e.g. moto's `endpoint_url`)."""
        if not services:
            raise errors.EventualError("StackFunctions needs the service(s) whose code the functions run")
        self.services = list(services)
        if clients is None:
            # checked before boto3 is imported, so a function missing its variables says exactly that
            AwsSettings.from_environment(environ).require(*REQUIRED_SETTINGS)
            clients = AwsClients.from_environment(
                client_kwargs, environ=environ, clock=clock, timer_hop_seconds=timer_hop_seconds
            )
        self.clients = clients
        settings = clients.settings
        settings.require(*REQUIRED_SETTINGS)
        settings.check_layout()
        dynamodb = clients.client("dynamodb")
        self.stores = (
            ExecutionStore(dynamodb, settings.executions_table),
            HistoryStore(dynamodb, settings.history_table),
        )
        # what activities and subscription handlers see as the current runtime: this stack, over these clients
        self.runtime = AwsRuntime(services=[*self.services], signing_key=signing_key, clients=clients)
        self.orchestrator = Orchestrator(self.stores, clients, self.services, clock=clients.clock, runtime=self.runtime)
        self.activity_worker = ActivityWorker(
            self.stores, clients, self.services, signing_key=signing_key, environ=environ, runtime=self.runtime
        )
        self.subscription_worker = SubscriptionWorker(clients, self.services, runtime=self.runtime)
        self.timer = timer_handler(clients)
        self.schedules = ScheduleKeeper(
            self.stores[0],
            ScheduleStore(dynamodb, settings.executions_table),
            clients,
            ServedDefinitions.of(self.services),
        )
        self.schedule_forwarder = schedule_forwarder(clients, self.schedules)

    def handlers(self) -> dict[str, Handler]:
        """Function key (`orchestrator`, `activity`, `subscription`, `timer`, `schedule`) → handler."""
        return {
            "orchestrator": self.orchestrator.handle_batch,
            "activity": self.activity_worker.handle_batch,
            "subscription": self.subscription_worker.handle_batch,
            "timer": self.timer,
            "schedule": self.schedule_forwarder,
        }


_process_lock = threading.Lock()
_process: tuple[str | None, StackFunctions] | None = None


def _services_for(service: str | None) -> list[Service]:
    if service is None:
        found = all_services()
        if not found:
            raise errors.EventualError("no service is registered: import the exported package before its handlers run")
        return list(found)
    named = get_service(service)
    if named is None:
        known = ", ".join(repr(item.name) for item in all_services()) or "none"
        raise errors.EventualError(
            f"no service named {service!r} was registered by importing the exported package (registered: {known})"
        )
    return [named]


def process_functions(service: str | None = None) -> StackFunctions:
    """This process's `StackFunctions` for `service`, built on first use from `os.environ`."""
    global _process
    with _process_lock:
        if _process is None:
            _process = (service, StackFunctions(_services_for(service)))
        elif _process[0] != service:
            raise errors.EventualError(
                f"this process already runs the functions of service {_process[0]!r}, not {service!r}"
            )
        return _process[1]


def reset_process_functions() -> None:
    """Forget the process's functions (tests that deploy a fresh stack into the same process)."""
    global _process
    with _process_lock:
        _process = None


def invoke(function: str, event: dict[str, Any], context: Any, *, service: str | None = None) -> Any:
    """What the generated `handlers.py` entry points call: run `function` of this process on `event`."""
    if function not in FUNCTION_KEYS:
        raise errors.EventualError(f"unknown function {function!r}: expected one of {', '.join(FUNCTION_KEYS)}")
    return process_functions(service).handlers()[function](event, context)
