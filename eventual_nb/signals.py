"""Signals: named messages sent to one execution.

Unlike Eventual, a signal that arrives while nothing waits or listens is buffered per execution and
consumed, oldest first, by the next `expect()`; nothing is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Generic, TypeVar

from eventual_nb import errors
from eventual_nb.durations import DurationLike, format_duration, parse_duration
from eventual_nb.engine.executor import SignalHandlerEntry, WorkflowExecutor, current_executor
from eventual_nb.runtime.base import current_runtime, execution_id_of
from eventual_nb.serde import adapter, from_json, validate
from eventual_nb.service import Service, current_service

T = TypeVar("T")
M = TypeVar("M", bound=type)


class Signal(Generic[T]):
    """A named signal with an optional payload type (`ev.signal("approval", Approval)`)."""

    def __init__(self, name: str, payload_type: Any = None, *, service: Service | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a signal name must be a non-empty string, got {name!r}")
        self.name = name
        self.payload_type = payload_type
        self.service = service

    def __repr__(self) -> str:
        return f"<signal {self.name!r}>"

    def encode(self, payload: Any) -> Any:
        if self.payload_type is None:
            return validate(payload, Any, what=f"payload of signal '{self.name}'")
        return validate(payload, self.payload_type, what=f"payload of signal '{self.name}'")

    def decode(self, raw: Any) -> T:
        if self.payload_type is None:
            return raw  # type: ignore[no-any-return]
        return from_json(raw, self.payload_type, what=f"payload of signal '{self.name}'")  # type: ignore[no-any-return]

    async def expect(self, timeout: DurationLike | None = None) -> T:
        """Wait for the next signal (buffered ones first); raises `ev.Timeout` after `timeout`."""
        executor = _require(f"signal '{self.name}'.expect()")
        found, raw = executor.take_buffered_signal(self.name)
        if found:
            return self.decode(raw)
        future = executor.add_signal_waiter(self.name)
        handle = None
        if timeout is not None:
            limit = parse_duration(timeout, what="expect timeout", after=executor.now)
            handle = asyncio.get_running_loop().call_later(limit.total_seconds(), self._expire, future, limit)
            executor.mark_signal_timeout(handle, self.name)
        try:
            raw = await future
        finally:
            if handle is not None:
                handle.cancel()
        return self.decode(raw)

    def _expire(self, future: asyncio.Future[Any], limit: timedelta) -> None:
        if not future.done():
            future.set_exception(
                errors.Timeout(f"signal '{self.name}' was not received within {format_duration(limit)}")
            )

    def on(self, handler: Callable[[T], Any]) -> SignalSubscription:
        """Call `handler(payload)` for every signal from now on (it may be async and make durable calls)."""
        executor = _require(f"signal '{self.name}'.on()")
        entry = executor.add_signal_handler(self.name, lambda raw: handler(self.decode(raw)))
        return SignalSubscription(self.name, executor, entry)

    async def send(self, execution: Any, payload: Any = None, id: str | None = None) -> None:
        """Send to an execution (id or handle); inside a workflow it is recorded and sent exactly once."""
        encoded = self.encode(payload)
        executor = current_executor()
        if executor is not None:
            executor.send_signal(execution_id_of(execution), self.name, encoded, id)
            return
        await current_runtime().send_signal(execution, self, payload, id=id)

    def spec(self) -> dict[str, Any]:
        schema = None
        if self.payload_type is not None:
            try:
                schema = adapter(self.payload_type).json_schema()
            except Exception:  # noqa: BLE001 - a schema is a courtesy, not a requirement
                schema = None
        return {"name": self.name, "payload_schema": schema}


class SignalSubscription:
    """Returned by `Signal.on`; `dispose()` stops new deliveries (running handlers finish)."""

    def __init__(self, name: str, executor: WorkflowExecutor, entry: SignalHandlerEntry) -> None:
        self._name = name
        self._executor = executor
        self._entry = entry

    def dispose(self) -> None:
        self._executor.remove_signal_handler(self._name, self._entry)

    @property
    def disposed(self) -> bool:
        return self._entry.disposed


def _require(what: str) -> WorkflowExecutor:
    executor = current_executor()
    if executor is None:
        raise errors.NotInWorkflow(f"{what} can only be used inside a workflow")
    return executor


def signal(name: str, payload_type: Any = None) -> Signal[Any]:
    """Declare a signal in the current service (re-declaring replaces it)."""
    service = current_service()
    definition: Signal[Any] = Signal(name, payload_type, service=service)
    service.signals[name] = definition
    return definition


def signal_model(payload_type: M) -> M:
    """Make a payload class its own signal, named after the class: `await Approval.expect()`,
    `await Approval.send(execution, Approval(...))`, `Approval.on(handler)`.

    What a `%%signal` cell does to each class it defines, as a plain decorator, so the exported package
    (and any `.py` module) gets the same signal as the notebook. Returns the class itself.
    """
    declared = signal(payload_type.__name__, payload_type)
    for helper in ("expect", "send", "on"):
        # type.__setattr__: pydantic's model metaclass would treat a plain assignment as a field default
        type.__setattr__(payload_type, helper, getattr(declared, helper))
    type.__setattr__(payload_type, "__eventual_signal__", declared)
    return payload_type


def encode_payload(signal: Any, payload: Any, services: list[Service] | None = None) -> Any:
    """JSON form of a payload for a `Signal` or a signal name (looked up in `services`, by default all;
    a runtime passes the services it serves, so a same-named signal of another service is not used)."""
    if isinstance(signal, Signal):
        return signal.encode(payload)
    found = find_signal(str(signal), services)
    if found is not None:
        return found.encode(payload)
    return validate(payload, Any, what=f"payload of signal '{signal}'")


def find_signal(name: str, services: list[Service] | None = None) -> Signal[Any] | None:
    from eventual_nb.service import all_services

    for service in services if services is not None else all_services():
        found = service.signals.get(name)
        if found is not None:
            return found
    return None
