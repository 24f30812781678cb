"""Events on the service's bus and the subscriptions that receive them.

Delivery is at-least-once, unordered, one event per call, retried per the subscription's policy and
then dead-lettered (kept and listable). Inside a workflow, `publish` is recorded and happens once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from eventual_nb import errors
from eventual_nb.engine.executor import current_executor
from eventual_nb.retry import RetryPolicy
from eventual_nb.runtime.base import current_runtime
from eventual_nb.service import Service, all_services, current_service


class Event(BaseModel):
    """Base class of events: a pydantic model whose name is the class name (or `__event_name__`).

    `defer_build`: an event class is validated when something is published or delivered, so pydantic builds
    its validator then, not at import (this base class is defined by `import eventual_nb`)."""

    model_config = ConfigDict(defer_build=True)

    __event_name__: ClassVar[str | None] = None
    __event_service__: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        service = current_service()
        cls.__event_service__ = service.name
        service.events[event_name(cls)] = cls


def event_name(event: type[Event] | Event | str) -> str:
    if isinstance(event, str):
        return event
    cls = event if isinstance(event, type) else type(event)
    return cls.__dict__.get("__event_name__") or cls.__name__


def envelope(event: Any) -> dict[str, Any]:
    """`{"name": ..., "event": {...}}`, the form events travel and are stored in."""
    if isinstance(event, Event):
        return {"name": event_name(event), "event": event.model_dump(mode="json")}
    if isinstance(event, dict) and isinstance(event.get("name"), str) and isinstance(event.get("event"), dict):
        return {"name": event["name"], "event": event["event"]}
    raise errors.InputValidationError(
        f"cannot publish {event!r}: pass ev.Event instances or {{'name': ..., 'event': {{...}}}} envelopes"
    )


def source_of(event: Any) -> str | None:
    """The service an event belongs to (the one its class was defined in)."""
    if isinstance(event, Event):
        return type(event).__event_service__
    return None


async def publish(*events: Any) -> None:
    """Publish events: recorded once inside a workflow, sent to the runtime's bus elsewhere."""
    if not events:
        return
    envelopes = [envelope(event) for event in events]
    executor = current_executor()
    if executor is not None:
        executor.publish(envelopes)
        return
    await current_runtime().publish_events(*events)


class Subscription:
    """A handler called once per matching event (at least once; retried, then dead-lettered)."""

    def __init__(
        self,
        handler: Callable[[Any], Awaitable[Any] | Any],
        events: tuple[type[Event] | str, ...],
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        source: str | None = None,
        service: Service | None = None,
    ) -> None:
        if not events:
            raise TypeError("@ev.subscription needs at least one event class (or event name)")
        self.handler = handler
        self.events = events
        self.event_names = tuple(event_name(event) for event in events)
        self.name: str = name or str(getattr(handler, "__name__", "subscription"))
        self.retry = retry or RetryPolicy()
        self.source = source
        self.service = service

    def __repr__(self) -> str:
        return f"<subscription {self.name!r} on {list(self.event_names)}>"

    def matches(self, name: str, source: str | None) -> bool:
        if name not in self.event_names:
            return False
        wanted = self.source or (self.service.name if self.service else None)
        return source is None or wanted is None or wanted == source

    def decode(self, item: dict[str, Any]) -> Any:
        """Rebuild the event instance from its envelope using the subscribed class."""
        for event in self.events:
            if isinstance(event, type) and event_name(event) == item["name"]:
                return event.model_validate(item["event"])
        cls = find_event(item["name"])
        return cls.model_validate(item["event"]) if cls is not None else item["event"]

    def __call__(self, event: Any) -> Any:
        return self.handler(event)

    def spec(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "events": list(self.event_names),
            "source": self.source,
            "retry": self.retry.model_dump(mode="json"),
        }


def subscription(
    *events: type[Event] | str,
    name: str | None = None,
    retry: RetryPolicy | None = None,
    source: str | None = None,
) -> Callable[[Callable[[Any], Any]], Subscription]:
    """`@ev.subscription(AccountOpened, name="welcome-email", retry=ev.RetryPolicy(max_attempts=5))`."""

    def register(handler: Callable[[Any], Any]) -> Subscription:
        service = current_service()
        definition = Subscription(handler, events, name=name, retry=retry, source=source, service=service)
        service.subscriptions[definition.name] = definition
        return definition

    return register


def find_event(name: str) -> type[Event] | None:
    for service in all_services():
        found = service.events.get(name)
        if found is not None:
            return found
    return None
