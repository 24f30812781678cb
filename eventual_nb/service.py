"""The service registry: which workflows, activities, signals, events, subscriptions and routes exist.

A `Service` is looked up by name, so re-running a notebook cell that says `ev.Service("bank")` is
harmless. The current service is process-wide (a module global, not a ContextVar) because notebook
cells, threads and the kernel's runtime thread must all see the same one.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from eventual_nb.errors import EventualError

if TYPE_CHECKING:
    from fastapi import APIRouter

    from eventual_nb.activities import Activity
    from eventual_nb.entities import Entity
    from eventual_nb.events import Event, Subscription
    from eventual_nb.runtime.core.schedules import Schedule
    from eventual_nb.signals import Signal
    from eventual_nb.workflows import Workflow

_lock = threading.RLock()
_services: dict[str, Service] = {}
_current: Service | None = None
#: bumped whenever a service is created, so callers may cache lists of services
generation = 0
#: bumped whenever a schedule is added, replaced or removed in any service (`schedules_changed`): a running
#: runtime compares it with the one it last saw and looks at its schedules again only when it moved
schedule_generation = 0
_schedule_watchers: list[Callable[[], None]] = []

DEFAULT_SERVICE = "default"
#: the longest service name: it becomes part of AWS resource names, which are short
MAX_SERVICE_NAME = 64
SERVICE_NAME_RULE = (
    f"a service name is 1 to {MAX_SERVICE_NAME} ASCII letters, digits, '.', '_', '-' and inner spaces, starting "
    "with a letter or digit"
)
_SERVICE_NAME_CHARACTERS = re.compile(r"[A-Za-z0-9._ -]")


class InvalidServiceName(EventualError, ValueError):
    """A service name that cannot name a package, a database file, an event source and AWS resources."""


def check_service_name(name: object) -> str:
    """Return `name` if it may name a service; raise `InvalidServiceName` saying what is wrong otherwise.

    The one rule for `ev.Service(NAME)`, `%eventual service NAME` and the exporter: a service's name
    becomes its package name, its local database file, the `source` of the events it publishes (which
    EventBridge matches, and whose `aws.` prefix it reserves) and part of its AWS resources' names.
    """
    if not isinstance(name, str):
        raise InvalidServiceName(f"a service name must be a string, got {type(name).__name__} {name!r}")
    reason = None
    bad = sorted({ch for ch in name if not _SERVICE_NAME_CHARACTERS.fullmatch(ch)})
    if not name:
        reason = "it is empty"
    elif bad:
        reason = f"{', '.join(repr(ch) for ch in bad)} {'is' if len(bad) == 1 else 'are'} not allowed"
    elif len(name) > MAX_SERVICE_NAME:
        reason = f"it is {len(name)} characters long"
    elif not name[0].isalnum():
        reason = "it must start with a letter or digit"
    elif name.endswith(" "):
        reason = "it ends with a space"
    elif name.lower().startswith("aws."):
        reason = "EventBridge reserves event sources starting with 'aws.'"
    if reason is not None:
        raise InvalidServiceName(f"invalid service name {name!r}: {reason}; {SERVICE_NAME_RULE}")
    return name


class Service:
    """A named collection of building blocks; `Service(name)` returns the existing one of that name.

    `name` must pass `check_service_name` (else `InvalidServiceName`, a `ValueError`)."""

    name: str
    workflows: dict[str, Workflow[Any]]
    activities: dict[str, Activity[Any, Any]]
    signals: dict[str, Signal[Any]]
    events: dict[str, type[Event]]
    subscriptions: dict[str, Subscription]
    schedules: dict[str, Schedule]
    entities: dict[str, Entity[Any]]

    def __new__(cls, name: str = DEFAULT_SERVICE) -> Service:
        global _current, generation
        check_service_name(name)
        with _lock:
            service = _services.get(name)
            if service is None:
                service = super().__new__(cls)
                service.name = name
                service.workflows = {}
                service.activities = {}
                service.signals = {}
                service.events = {}
                service.subscriptions = {}
                service.schedules = {}
                service.entities = {}
                service._router = None
                _services[name] = service
                generation += 1
            _current = service
            return service

    _router: APIRouter | None

    @property
    def api(self) -> APIRouter:
        """The service's FastAPI router (created on first use so FastAPI is imported only when needed)."""
        if self._router is None:
            from fastapi import APIRouter

            self._router = APIRouter()
        return self._router

    def __repr__(self) -> str:
        return (
            f"<Service {self.name!r}: {len(self.workflows)} workflows, {len(self.activities)} activities, "
            f"{len(self.signals)} signals, {len(self.events)} events, {len(self.subscriptions)} subscriptions, "
            f"{len(self.schedules)} schedules, {len(self.entities)} entities>"
        )

    def spec(self) -> dict[str, Any]:
        """A JSON-able manifest of every building block (used by `eventual.json` and the CLI)."""
        routes = []
        if self._router is not None:
            for route in self._router.routes:
                methods = sorted(getattr(route, "methods", None) or [])
                routes.append(
                    {"path": getattr(route, "path", ""), "methods": methods, "name": getattr(route, "name", None)}
                )
        return {
            "name": self.name,
            "workflows": [workflow.spec() for workflow in self.workflows.values()],
            "activities": [activity.spec() for activity in self.activities.values()],
            "signals": [signal.spec() for signal in self.signals.values()],
            "events": [_event_spec(name, event) for name, event in self.events.items()],
            "subscriptions": [subscription.spec() for subscription in self.subscriptions.values()],
            "schedules": [schedule.spec() for schedule in self.schedules.values()],
            "entities": [entity.spec() for entity in self.entities.values()],
            "routes": routes,
        }


def _event_spec(name: str, event: type[Event]) -> dict[str, Any]:
    try:
        schema = event.model_json_schema()
    except Exception:  # noqa: BLE001 - a schema is a courtesy, not a requirement
        schema = None
    return {"name": name, "schema": schema}


def current_service() -> Service:
    """The service that module-level decorators register into (one named `default` if none was made)."""
    with _lock:
        if _current is None:
            return Service(DEFAULT_SERVICE)
        return _current


def all_services() -> list[Service]:
    with _lock:
        return list(_services.values())


def get_service(name: str) -> Service | None:
    with _lock:
        return _services.get(name)


def schedules_changed() -> None:
    """A schedule was added, replaced or removed (a re-run notebook cell): bump `schedule_generation` and call
    every watcher, so a runtime asleep until its next fire looks at its schedules now."""
    global schedule_generation
    with _lock:
        schedule_generation += 1
        watchers = list(_schedule_watchers)
    for watcher in watchers:
        watcher()


def watch_schedules(callback: Callable[[], None]) -> None:
    """Call `callback()` (from whichever thread defines the schedule: keep it tiny and thread-safe) after each
    change of any service's schedules; `unwatch_schedules` stops it."""
    with _lock:
        _schedule_watchers.append(callback)


def unwatch_schedules(callback: Callable[[], None]) -> None:
    with _lock:
        if callback in _schedule_watchers:
            _schedule_watchers.remove(callback)
