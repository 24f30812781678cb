"""The service registry: which workflows, activities, signals, events, subscriptions and routes exist.

A `Service` is looked up by name, so re-running a notebook cell that says `ev.Service("bank")` is
harmless. The current service is process-wide (a module global, not a ContextVar) because notebook
cells, threads and the kernel's runtime thread must all see the same one.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import APIRouter

    from eventual_nb.activities import Activity
    from eventual_nb.events import Event, Subscription
    from eventual_nb.signals import Signal
    from eventual_nb.workflows import Workflow

_lock = threading.RLock()
_services: dict[str, Service] = {}
_current: Service | None = None
#: bumped whenever a service is created, so callers may cache lists of services
generation = 0

DEFAULT_SERVICE = "default"


class Service:
    """A named collection of building blocks; `Service(name)` returns the existing one of that name."""

    name: str
    workflows: dict[str, Workflow]
    activities: dict[str, Activity]
    signals: dict[str, Signal]
    events: dict[str, type[Event]]
    subscriptions: dict[str, Subscription]

    def __new__(cls, name: str = DEFAULT_SERVICE) -> Service:
        global _current, generation
        if not isinstance(name, str) or not name:
            raise ValueError(f"a service name must be a non-empty string, got {name!r}")
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
            f"{len(self.signals)} signals, {len(self.events)} events, {len(self.subscriptions)} subscriptions>"
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
