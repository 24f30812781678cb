"""Subscription deliveries: which subscriptions an event reaches, and what a failed delivery means."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from eventual_nb import errors
from eventual_nb.durations import deadline_after
from eventual_nb.events import Subscription
from eventual_nb.retry import RetryPolicy, exception_type_names
from eventual_nb.runtime.base import DeadLetter
from eventual_nb.service import Service


def subscriptions_for(services: Iterable[Service], name: str, source: str | None) -> list[Subscription]:
    """The subscriptions of `services` that an event named `name` published by `source` reaches."""
    return [
        subscription
        for service in services
        for subscription in service.subscriptions.values()
        if subscription.matches(name, source)
    ]


def bus_subscriptions_for(services: Iterable[Service], name: str, source: str | None) -> list[Subscription]:
    """The subscriptions of `services` that an event named `name` reaches when another runtime published it
    as service `source` (over the local bus): those that name that source (`source=`). None when `services`
    include `source` itself: the runtime that published the event delivered it to that service's subscribers
    (another runtime serving the same service, a notebook beside `eventual-nb serve`, must not do it twice)."""
    services = list(services)
    if source is None or any(service.name == source for service in services):
        return []
    return [
        subscription
        for service in services
        for subscription in service.subscriptions.values()
        if subscription.source == source and subscription.matches(name, source)
    ]


def reads_the_bus(services: Iterable[Service]) -> bool:
    """Whether any of `services` subscribes to events of a service not among them (`source=`): only such a
    runtime has anything to read from the local bus, so only it looks there now and then for a ring it may
    have missed; the others sleep until something is due (no idle wake-ups)."""
    services = list(services)
    names = {service.name for service in services}
    return any(
        subscription.source is not None and subscription.source not in names
        for service in services
        for subscription in service.subscriptions.values()
    )


@dataclass(frozen=True, slots=True)
class RetryDeliveryAt:
    """Deliver the event again at `due`, as attempt `attempt`."""

    due: datetime
    attempt: int


def after_delivery(
    subscription: str, policy: RetryPolicy, item: dict[str, Any], attempt: int, error: BaseException, now: datetime
) -> RetryDeliveryAt | DeadLetter:
    """Delivery attempt `attempt` of `item` to `subscription` raised `error` at `now`: retry it after the
    policy's backoff, or — out of attempts, or a `non_retryable` error — keep it as a dead letter."""
    if policy.retries(attempt, exception_type_names(error)):
        return RetryDeliveryAt(deadline_after(now, policy.delay_after(attempt), what="retry interval"), attempt + 1)
    return DeadLetter(
        event=item,
        subscription=subscription,
        error=errors.error_type_name(error),
        message=errors.error_message(error),
        attempts=attempt,
        time=now,
    )
