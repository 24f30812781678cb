"""The HTTP face of a runtime: the service's own routes plus the internal `/_eventual/` routes.

It knows no particular runtime: it serves whatever implements the service-client protocol, a LocalRuntime
under `eventual-nb serve` and `%eventual serve`, an AwsRuntime in a deployed stack's API function.
`create_app(runtime)` builds the FastAPI app that `eventual-nb serve` runs with uvicorn:

* every served service's `service.api` router, with its OpenAPI at `/openapi.json`;
* the internal routes under `/_eventual/` that back `ev.ServiceClient` and the CLI (their own OpenAPI
  is at `/_eventual/openapi.json`). Execution ids contain '/', so routes take them as the last path
  segments (`{id:path}`);
* errors as JSON: every `ev.EventualError` answers its `status_code` with `{"error": <type name>,
  "message": ..., **fields}` (so the client raises the same class); invalid requests answer 422 (400
  for a body that is not JSON) naming the fields; bodies over `max_body_bytes` answer 413;
* with `token=` set, every `/_eventual/` route demands `Authorization: Bearer <token>` (401 otherwise);
  the service's own routes stay open, as a service's public API;
* requests must name the server by a loopback name in their `Host` header (`localhost`, `127.0.0.1`,
  `[::1]`, any port), or one of `allowed_hosts`; others answer 403. As in Jupyter Server, this stops a
  web page from driving a local server through DNS rebinding (its requests carry the page's host name);
* an unexpected exception answers 500 with a generic message and an error id; the traceback goes to the
  `eventual_nb.server` log under that id, never to the client.

The app runs the runtime for its lifetime (`async with runtime:`) and makes it the process-wide default,
so route handlers that call `await wf.start(x)` use it.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from eventual_nb import errors
from eventual_nb._version import __version__
from eventual_nb.client import LONG_POLL_SECONDS, Unauthorized
from eventual_nb.durations import DurationField
from eventual_nb.engine.history import dump_history
from eventual_nb.events import Event
from eventual_nb.runtime import base
from eventual_nb.runtime.base import (
    DeadLetter,
    EntityInfo,
    EntityRecord,
    Execution,
    ExecutionPage,
    ExecutionStatus,
    ExecutionWaits,
    HeartbeatResponse,
    PublishedEvent,
    ServiceClientProtocol,
    StartResponse,
    WorkflowInfo,
)
from eventual_nb.runtime.core.schedules import ScheduleInfo
from eventual_nb.serde import plain_errors
from eventual_nb.service import Service, current_service

INTERNAL_PREFIX = "/_eventual"
DEFAULT_MAX_BODY_BYTES = 1 << 20
#: Host names a loopback server answers to besides loopback IP addresses (as Jupyter Server's `local_hostnames`).
LOOPBACK_NAMES = ("localhost",)

LOGGER = logging.getLogger("eventual_nb.server")

# ------------------------------------------------------------------------------------------ request bodies


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StartRequest(_Body):
    workflow: str = Field(min_length=1, description="name of the workflow to start")
    input: Any = Field(None, description="the workflow's input, as JSON")
    name: str | None = Field(None, description="execution name (the id becomes '<workflow>/<name>')")
    timeout: DurationField | None = Field(None, description="workflow timeout: seconds, or a duration like '5m'")


class SignalRequest(_Body):
    execution: str = Field(min_length=1, description="id of the execution to signal")
    signal: str = Field(min_length=1, description="signal name")
    payload: Any = Field(None, description="signal payload, as JSON")
    id: str | None = Field(None, description="optional signal id: a repeated id is delivered once")


class EventEnvelope(_Body):
    name: str = Field(min_length=1, description="event type name")
    event: dict[str, Any] = Field(description="the event's fields")


class PublishRequest(_Body):
    events: list[EventEnvelope]


class ActivitySuccessRequest(_Body):
    token: str = Field(description="the activity token from `ev.activity_info().token` / `ev.async_result`")
    result: Any = Field(None, description="the activity's result, as JSON")


class ActivityFailureRequest(_Body):
    token: str
    error: str = Field(min_length=1, description="error type name (matched by retry policies' non_retryable)")
    message: str | None = None


class HeartbeatRequest(_Body):
    token: str


class ScheduleAnswer(BaseModel):
    schedule: str
    paused: bool


class TriggerResponse(StartResponse):
    workflow: str


class ErrorAnswer(BaseModel):
    """The body of every error answer: the error's type name (the class `ServiceClient` raises) and a message,
    with the error's own fields (`execution_id`, `errors`, ...) beside them."""

    model_config = ConfigDict(extra="allow")

    error: str = Field(description="error type name, e.g. ExecutionNotFound")
    message: str = Field(description="what was wrong, and where")


def _answers(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a route's error answers, so its schema lists every status it gives."""
    return {code: {"model": ErrorAnswer, "description": text} for code, text in descriptions.items()}


_NO_EXECUTION = {404: "no execution has this id (ExecutionNotFound)"}
_NO_SCHEDULE = {404: "no schedule of this name is served (ScheduleNotFound)"}
_ACTIVITY_TOKEN = {
    400: "the activity is no longer pending, or the body is not JSON",
    403: "the token was not issued by this runtime: malformed, forged or signed by another key (InvalidToken)",
}


# ---------------------------------------------------------------------------------------------- the app


def create_app(
    runtime: Any,
    services: list[Service] | None = None,
    *,
    token: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    own_runtime: bool = True,
    allowed_hosts: Iterable[str] = (),
) -> FastAPI:
    """The FastAPI app serving `services` (default: what `runtime` serves) and the internal routes.

    `token`: when set, the `/_eventual/` routes demand `Authorization: Bearer <token>`.
    `max_body_bytes`: larger request bodies are refused with 413 before any handler runs.
    `own_runtime`: start and stop `runtime` with the app (`eventual-nb serve`); False when it already
    runs and outlives the server (`%eventual serve` in a kernel).
    `allowed_hosts`: `Host` names accepted besides the loopback ones (`localhost`, loopback addresses):
    exact names (`myhost.lan`), `*.example.com` for its subdomains, or `"*"` for any host, which turns
    the check off (a server behind a gateway or listening beyond loopback, where clients name the
    machine however they reach it). Any port is accepted. Others answer 403.
    """
    if max_body_bytes < 0:
        raise ValueError(f"max_body_bytes must be >= 0, got {max_body_bytes}")
    if token is not None and not token:
        raise ValueError("token must be a non-empty string (or None for no authentication)")
    hosts = HostCheck(allowed_hosts)
    served = _services_of(runtime, services)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not own_runtime:
            yield
            return
        previous = base._default_runtime
        try:
            async with runtime:
                base.set_default_runtime(runtime)
                yield
        finally:
            base.set_default_runtime(previous)

    names = ", ".join(service.name for service in served) or "no service"
    app = FastAPI(title=f"{names} (eventual-nb)", version=__version__, lifespan=lifespan)
    app.state.runtime = runtime
    app.state.services = served

    internal = _internal_router(runtime, served)
    app.include_router(internal, include_in_schema=False)
    for service in served:
        app.include_router(service.api)

    internal_schema: dict[str, Any] = {}

    @app.get(f"{INTERNAL_PREFIX}/openapi.json", include_in_schema=False)
    async def internal_openapi() -> dict[str, Any]:
        if not internal_schema:
            schema = get_openapi(title="eventual-nb internal API", version=__version__, routes=internal.routes)
            internal_schema.update(with_guard_answers(schema, hosts, internal=True, token=token is not None))
        return internal_schema

    service_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = with_guard_answers(service_openapi(), hosts, internal=False, token=False)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    app.add_exception_handler(errors.EventualError, _eventual_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _request_validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(ValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_exception)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected_error)
    app.add_middleware(_Guard, token=token, max_body_bytes=max_body_bytes, hosts=hosts)
    return app


def serve(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 3111,
    *,
    on_ready: Callable[[str], None] | None = None,
    **options: Any,
) -> None:
    """Run `app` with uvicorn until interrupted (log level `warning` unless `log_level=` says otherwise).

    The socket is bound here first, so a port in use (or a host that cannot be listened on) raises one
    `EventualError` naming it, before the app starts. `on_ready(url)` is called once the app has started
    and listens, with the port actually bound (`port=0` picks a free one). An app whose startup fails
    raises `EventualError` (uvicorn has logged why).
    """
    import uvicorn

    sock = listening_socket(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if on_ready is not None:
                on_ready(f"http://{shown}:{bound}")

    options.setdefault("log_level", "warning")
    server = Server(uvicorn.Config(app, host=host, port=bound, **options))
    with sock:
        try:
            server.run(sockets=[sock])
        except SystemExit:  # uvicorn exits when the app's startup fails, after logging why
            raise errors.EventualError(f"the service on {host} port {bound} did not start (see above)") from None


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host`/`port` and listening; `EventualError` naming them when that fails.

    The socket says it is TCP (`IPPROTO_TCP`, not the 0 `socket.socket()` leaves): asyncio turns Nagle's
    algorithm off (`TCP_NODELAY`) only on connections accepted from such a socket, and without that each
    answer uvicorn writes in two parts (head, body) waits about 40 ms for the client's delayed ACK — every
    request on a kept-alive connection took 40+ ms instead of under one.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # the family uvicorn would pick
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen()
    except (OSError, OverflowError) as exc:
        sock.close()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise errors.EventualError(f"cannot listen on {host} port {port}: {reason}") from None
    return sock


def _services_of(runtime: Any, services: list[Service] | None) -> list[Service]:
    if services is not None:
        return list(services)
    served = getattr(runtime, "served_services", None)
    if callable(served):
        return list(served())
    service = getattr(runtime, "service", None)
    if isinstance(service, Service):
        return [service]
    return [current_service()]


# ------------------------------------------------------------------------------------------ internal routes


def _internal_router(runtime: ServiceClientProtocol, served: list[Service]) -> APIRouter:
    """The `/_eventual/` routes: the service-client protocol over HTTP, for `ServiceClient` and the CLI."""
    router = APIRouter(prefix=INTERNAL_PREFIX, tags=["eventual"])

    @router.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness: which runtime and services this server runs."""
        return {
            "status": "ok",
            "runtime": type(runtime).__name__,
            "services": [service.name for service in served],
            "version": __version__,
        }

    @router.get("/workflows")
    async def list_workflows() -> list[WorkflowInfo]:
        return list(await runtime.list_workflows())

    _execution_routes(router, runtime)
    _message_routes(router, runtime, served)
    _activity_routes(router, runtime)

    @router.get("/dead-letters")
    async def list_dead_letters() -> list[DeadLetter]:
        return list(await runtime.list_dead_letters())

    _schedule_routes(router, runtime)
    _entity_routes(router, runtime)
    return router


def _execution_routes(router: APIRouter, runtime: ServiceClientProtocol) -> None:
    """Starting executions and reading them: state, listing, history, logs, waits, the result long-poll."""
    # documented, not enforced here: the runtime checks tokens and answers 400 (InvalidPageToken)
    pattern = getattr(runtime, "page_token_pattern", None)
    token_schema: dict[str, Any] = {"json_schema_extra": {"pattern": pattern}} if isinstance(pattern, str) else {}

    @router.post(
        "/executions",
        responses=_answers(
            {
                404: "no workflow of this name is served (WorkflowNotFound)",
                409: "an execution of this name exists with another input (ExecutionAlreadyExists)",
            }
        ),
    )
    async def start_execution(body: StartRequest) -> StartResponse:
        """Start an execution; answers once its start is committed (`already_running` for a repeated start)."""
        handle = await runtime.start_execution(body.workflow, body.input, name=body.name, timeout=body.timeout)
        return StartResponse(execution_id=handle.id, already_running=bool(getattr(handle, "already_running", False)))

    @router.get(
        "/executions",
        responses=_answers({400: "next_token is not a page token of this listing (InvalidPageToken)"}),
    )
    async def list_executions(
        workflow: str | None = None,
        status: Annotated[list[ExecutionStatus] | None, Query(description="repeatable")] = None,
        # a default rather than Annotated: the annotation is a string (future import) that cannot name a local
        next_token: str | None = Query(
            None, description="the `next_token` of the page before; none for the first page", **token_schema
        ),
        max_results: Annotated[int, Query(ge=1, le=1000)] = 100,
        sort: Literal["asc", "desc"] = "asc",
    ) -> ExecutionPage:
        page: ExecutionPage = await runtime.list_executions(
            workflow=workflow, statuses=status or None, next_token=next_token, max_results=max_results, sort=sort
        )
        return page

    @router.get("/executions/{id:path}", responses=_answers(_NO_EXECUTION))
    async def get_execution(id: str) -> Execution:
        execution: Execution = await runtime.get_execution(id)
        return execution

    @router.get("/history/{id:path}", responses=_answers(_NO_EXECUTION))
    async def get_execution_history(id: str) -> list[dict[str, Any]]:
        return dump_history(await runtime.get_execution_history(id))

    @router.get("/logs/{id:path}", responses=_answers(_NO_EXECUTION))
    async def get_execution_logs(id: str) -> list[dict[str, Any]]:
        return [entry.model_dump(mode="json") for entry in await runtime.get_execution_logs(id)]

    @router.get("/waits/{id:path}", responses=_answers(_NO_EXECUTION))
    async def get_execution_waits(id: str) -> ExecutionWaits:
        """What the execution is blocked on now (signal `expect`s and conditions are recorded nowhere else)."""
        waits: ExecutionWaits = await runtime.get_execution_waits(id)
        return waits

    @router.get("/result/{id:path}", responses=_answers(_NO_EXECUTION))
    async def wait_for_result(
        id: str,
        timeout: Annotated[float, Query(ge=0, allow_inf_nan=False, description="seconds to wait (at most 30)")] = (
            LONG_POLL_SECONDS
        ),
    ) -> Execution:
        """Long-poll: wait up to min(timeout, 30) s for the execution to end; answer its state either way."""
        try:
            execution: Execution = await runtime.wait_for_execution(id, min(timeout, LONG_POLL_SECONDS))
        except errors.Timeout:
            execution = await runtime.get_execution(id)
        return execution


def _message_routes(router: APIRouter, runtime: ServiceClientProtocol, served: list[Service]) -> None:
    """What is sent to executions: signals, events (checked against the served event types, and listed),
    cancellation."""

    @router.post(
        "/signals",
        status_code=202,
        responses=_answers({**_NO_EXECUTION, 400: "the execution has ended, or the body is not JSON"}),
    )
    async def send_signal(body: SignalRequest) -> dict[str, Any]:
        """Send a signal; one no execution waits for yet is buffered for the next `expect()`."""
        await runtime.send_signal(body.execution, body.signal, body.payload, id=body.id)
        return {"execution_id": body.execution, "signal": body.signal}

    @router.post("/events", status_code=202)
    async def publish_events(body: PublishRequest) -> dict[str, Any]:
        """Publish events; those of a known type are validated against it (422 naming the field otherwise)."""
        items: list[Any] = []
        for index, item in enumerate(body.events):
            cls = _event_class(item.name, served)
            if cls is None:
                items.append({"name": item.name, "event": item.event})
                continue
            try:
                items.append(cls.model_validate(item.event))
            except ValidationError as exc:
                details = plain_errors(exc)
                for detail in details:
                    detail["loc"] = ["body", "events", index, "event", *detail["loc"]]
                raise errors.InputValidationError(
                    f"invalid event '{item.name}' (events[{index}]): {_describe(details)}", errors=details
                ) from None
        await runtime.publish_events(*items)
        return {"published": len(items)}

    @router.get("/events", responses=_answers({400: "this runtime keeps no readable record of its events"}))
    async def list_events(
        max_results: Annotated[int, Query(ge=1, le=base.MAX_RESULTS_LIMIT)] = 100,
        source: Annotated[str | None, Query(description="only events of this service")] = None,
        name: Annotated[str | None, Query(description="only events of this name")] = None,
    ) -> list[PublishedEvent]:
        """The most recent events published (on a LocalRuntime: every runtime's on its bus), newest first."""
        return list(await runtime.list_events(max_results, source, name))

    @router.post(
        "/cancel/{id:path}",
        status_code=202,
        responses=_answers({**_NO_EXECUTION, 400: "the execution has already ended"}),
    )
    async def cancel_execution(id: str) -> dict[str, Any]:
        await runtime.cancel_execution(id)
        return {"execution_id": id}


def _activity_routes(router: APIRouter, runtime: ServiceClientProtocol) -> None:
    """Completing activities by token (`async_result`) and their heartbeats."""

    @router.post("/activities/success", responses=_answers(_ACTIVITY_TOKEN))
    async def send_activity_success(body: ActivitySuccessRequest) -> dict[str, Any]:
        await runtime.send_activity_success(body.token, body.result)
        return {"ok": True}

    @router.post("/activities/failure", responses=_answers(_ACTIVITY_TOKEN))
    async def send_activity_failure(body: ActivityFailureRequest) -> dict[str, Any]:
        await runtime.send_activity_failure(body.token, body.error, body.message)
        return {"ok": True}

    @router.post("/activities/heartbeat", responses=_answers(_ACTIVITY_TOKEN))
    async def send_activity_heartbeat(body: HeartbeatRequest) -> HeartbeatResponse:
        response: HeartbeatResponse = await runtime.send_activity_heartbeat(body.token)
        return response


def _schedule_routes(router: APIRouter, runtime: ServiceClientProtocol) -> None:
    """Schedules: the served ones with their state, and pausing, resuming and triggering one."""

    @router.get("/schedules")
    async def list_schedules() -> list[ScheduleInfo]:
        """The served schedules with their state: paused, next fire (None while paused), last fire, skipped."""
        return list(await runtime.list_schedules())

    @router.post("/schedules/{name}/pause", responses=_answers(_NO_SCHEDULE))
    async def pause_schedule(name: str) -> ScheduleAnswer:
        """Stop firing the schedule until it is resumed (pausing a paused schedule changes nothing)."""
        await runtime.pause_schedule(name)
        return ScheduleAnswer(schedule=name, paused=True)

    @router.post("/schedules/{name}/resume", responses=_answers(_NO_SCHEDULE))
    async def resume_schedule(name: str) -> ScheduleAnswer:
        """Fire again from now on: the fires of the paused span are not caught up."""
        await runtime.resume_schedule(name)
        return ScheduleAnswer(schedule=name, paused=False)

    @router.post(
        "/schedules/{name}/trigger",
        responses=_answers({**_NO_SCHEDULE, 409: "an execution of this name exists with another input"}),
    )
    async def trigger_schedule(name: str) -> TriggerResponse:
        """Start one execution of the schedule's workflow now, paused or not, with now (to the second) as
        its input and name; a second trigger in the same second answers `already_running`."""
        handle = await runtime.trigger_schedule(name)
        return TriggerResponse(
            execution_id=handle.id,
            workflow=handle.workflow,
            already_running=bool(getattr(handle, "already_running", False)),
        )


def _entity_routes(router: APIRouter, runtime: ServiceClientProtocol) -> None:
    """Inspecting entities: the served ones, and one entry as stored."""

    @router.get("/entities")
    async def list_entities() -> list[EntityInfo]:
        """The served entities (`ev.entity`), with their number of entries where that is cheap to count."""
        return list(await runtime.list_entities())

    @router.get(
        "/entities/{name}/entry",
        responses=_answers(
            {
                404: "no entity of this name is served, or it has no entry with this key, or no entry could have "
                "this key (EntityNotFound)",
            }
        ),
    )
    async def get_entity(
        name: str,
        key: Annotated[str, Query(description="the key, or a two-part key's partition")],
        sort: Annotated[str | None, Query(description="a two-part key's sort key")] = None,
    ) -> EntityRecord:
        """One entry as stored: its value (as written, whatever the model says now) and its version."""
        record: EntityRecord = await runtime.get_entity(name, key if sort is None else (key, sort))
        return record


def _event_class(name: str, served: list[Service]) -> type[Event] | None:
    for service in served:
        found = service.events.get(name)
        if found is not None:
            return found
    return None


# ---------------------------------------------------------------------------------------------- errors


def _is_internal(path: str) -> bool:
    return path == INTERNAL_PREFIX or path.startswith(INTERNAL_PREFIX + "/")


def _jsonable(value: Any) -> Any:
    """Whatever an error carries, as JSON (unknown objects become their str)."""
    return json.loads(json.dumps(value, default=str, allow_nan=False, ensure_ascii=False))


def _error_body(body: dict[str, Any]) -> dict[str, Any]:
    try:
        return dict(_jsonable(body))
    except (TypeError, ValueError):
        return {"error": str(body.get("error", "EventualError")), "message": str(body.get("message", ""))}


def _describe(details: list[dict[str, Any]]) -> str:
    parts = []
    for detail in details:
        where = ".".join(str(part) for part in detail.get("loc", ())) or "(root)"
        parts.append(f"{where}: {detail.get('msg', 'invalid')}")
    return "; ".join(parts)


async def _eventual_error(request: Request, exc: errors.EventualError) -> Response:
    status = exc.status_code
    if not isinstance(status, int) or not 400 <= status <= 599:
        status = 500
    body = exc.to_json()
    data = getattr(exc, "data", None)
    if isinstance(exc, errors.HttpError) and data is not None:
        body["data"] = data
    return JSONResponse(_error_body(body), status_code=status)


async def _request_validation_error(request: Request, exc: RequestValidationError) -> Response:
    details: list[dict[str, Any]] = []
    for item in exc.errors():
        detail = {"loc": list(item.get("loc", ())), "msg": item.get("msg"), "type": item.get("type")}
        if "ctx" in item:
            detail["ctx"] = item["ctx"]
        details.append(detail)
    details = _jsonable(details)
    for detail in details:
        if detail.get("type") == "json_invalid":
            position = detail["loc"][1] if len(detail["loc"]) > 1 else "?"
            reason = (detail.get("ctx") or {}).get("error", "JSON decode error")
            message = f"the request body is not valid JSON ({reason} at character {position})"
            return JSONResponse(
                {"error": "InputValidationError", "message": message, "errors": details, "detail": details},
                status_code=400,
            )
    message = f"invalid request to {request.method} {request.url.path}: {_describe(details)}"
    return JSONResponse(
        {"error": "InputValidationError", "message": message, "errors": details, "detail": details},
        status_code=422,
    )


async def _validation_error(request: Request, exc: ValidationError) -> Response:
    details = _jsonable(plain_errors(exc))
    message = f"invalid {exc.title}: {_describe(details)}"
    return JSONResponse({"error": "InputValidationError", "message": message, "errors": details}, status_code=422)


async def _http_exception(request: Request, exc: StarletteHTTPException) -> Response:
    if exc.status_code == 405:
        exc.headers = {**(exc.headers or {}), "Allow": ", ".join(_allowed_methods(request))}
    if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
        # FastAPI could not read the body (e.g. not UTF-8): the documented 400 shape, on every route
        message = f"the request body cannot be read: {exc.__cause__}"
        return JSONResponse({"error": "InputValidationError", "message": message, "detail": exc.detail}, 400)
    if not _is_internal(request.url.path):
        return await http_exception_handler(request, exc)
    message = str(exc.detail)
    if exc.status_code == 404:
        message = f"no internal route {request.method} {request.url.path} ({exc.detail})"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    return JSONResponse(
        {"error": "HttpError", "message": message, "status": exc.status_code},
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route takes at this path: Starlette's 405 names only the first route's methods.

    Found by asking the routes whether each method would match, which holds however routers nest."""
    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)
    ]


def internal_error(exc: BaseException, method: str, path: str) -> dict[str, Any]:
    """Log an unexpected exception with its traceback under a fresh error id; the client's answer names only the id.

    The exception's type and message may hold internals (SQL, file paths, secrets in values), so they go to
    the `eventual_nb.server` log, never to the client, who quotes the id to whoever reads the log.
    """
    error_id = uuid.uuid4().hex[:16]
    LOGGER.error("internal server error %s answering %s %s", error_id, method, path, exc_info=exc)
    return {
        "error": "EventualError",
        "message": f"internal server error (error id {error_id}): the server's log has the details under this id",
        "error_id": error_id,
    }


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    return JSONResponse(internal_error(exc, request.method, request.url.path), status_code=500)


# --------------------------------------------------------------------------- host, auth and body limit


class HostCheck:
    """Which `Host` headers the server answers: loopback names and addresses, plus `allowed` (see `create_app`).

    A request without a Host header passes: browsers, the only clients DNS rebinding can use, always send one.
    """

    def __init__(self, allowed: Iterable[str]) -> None:
        if isinstance(allowed, str):
            raise TypeError("allowed_hosts is a list of host names, not one string")
        names = {name.strip().lower().rstrip(".") for name in allowed}
        if "" in names:
            raise errors.InputValidationError("an allowed host name is empty: give a name like 'shop.lan'")
        self.any = "*" in names
        self.suffixes = tuple(name[1:] for name in names if name.startswith("*."))
        self.names = {name for name in names if not name.startswith("*")} | set(LOOPBACK_NAMES)

    def allows(self, header: bytes | None) -> bool:
        if self.any or header is None:
            return True
        name = host_name(header.decode("latin-1"))
        if name in self.names or name.endswith(self.suffixes):
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False

    def refusal(self, header: bytes) -> str:
        name = host_name(header.decode("latin-1")) or "?"
        return (
            f"host {header.decode('latin-1')!r} is not allowed: this server answers requests addressed to "
            "localhost or a loopback address, so that a web page cannot reach it through DNS rebinding; "
            f"to reach it as {name!r}, start it with `eventual-nb serve ... --allow-host {name}` "
            f"(or create_app(..., allowed_hosts=[{name!r}]))"
        )


def host_name(header: str) -> str:
    """The host name of a Host header, without port or IPv6 brackets, lower case, without a trailing dot."""
    header = header.strip().lower()
    if header.startswith("["):
        name, bracket, _ = header[1:].partition("]")
        return name if bracket else header
    name, colon, port = header.rpartition(":")
    if colon and port.isdigit() and ":" not in name:
        header = name
    return header.rstrip(".")


def with_guard_answers(schema: dict[str, Any], hosts: HostCheck, *, internal: bool, token: bool) -> dict[str, Any]:
    """Add the answers `_Guard` gives before any route runs to every operation of an OpenAPI schema."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault(ErrorAnswer.__name__, ErrorAnswer.model_json_schema())
    answer = {"application/json": {"schema": {"$ref": f"#/components/schemas/{ErrorAnswer.__name__}"}}}
    guard: dict[str, str] = {}
    if not hosts.any:
        guard["403"] = "the Host header names neither a loopback host nor an allowed one"
    if internal and token:
        guard["401"] = "missing or wrong `Authorization: Bearer <token>`"
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            answers = dict(guard)
            if "requestBody" in operation:
                answers["400"] = "the body is not valid JSON"
                answers["413"] = "the body is larger than the server's limit"
            for code, text in answers.items():
                if code in responses:
                    if text not in responses[code].get("description", ""):
                        responses[code]["description"] += f"; or {text}"
                else:
                    responses[code] = {"description": text, "content": answer}
    return schema


class _Guard:
    """ASGI middleware: the Host check, bearer token on `/_eventual/` routes, a hard limit on request body
    size, and the last word on unexpected exceptions.

    The body is read (at most `max_body_bytes`) before the app sees it, so the limit holds whether or not
    the client sent Content-Length. A refused body is drained (up to a bound) before answering 413 so the
    client, still sending, gets to read the answer instead of a reset connection.
    """

    def __init__(self, app: ASGIApp, *, token: str | None, max_body_bytes: int, hosts: HostCheck) -> None:
        self.app = app
        self.token = None if token is None else token.encode()
        self.max_body_bytes = max_body_bytes
        self.drain_limit = max(8 * max_body_bytes, 16 << 20)
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {key.lower(): value for key, value in scope.get("headers", [])}
        if await self._refused_host(scope, headers.get(b"host"), send):
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if await self._refused_headers(scope, headers, receive, send):
            return
        body = await self._read_body(receive, send)
        if body is not None:
            await self._answer(scope, body, receive, send)

    async def _refused_host(self, scope: Scope, host: bytes | None, send: Send) -> bool:
        """Whether the Host header is refused, having answered 403 (a websocket is closed instead)."""
        if self.hosts.allows(host):
            return False
        assert host is not None
        LOGGER.warning("refused a request for %s with Host %r", scope.get("path"), host)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return True
        await _send_json(send, 403, {"error": "HttpError", "message": self.hosts.refusal(host), "status": 403})
        return True

    async def _refused_headers(self, scope: Scope, headers: dict[bytes, bytes], receive: Receive, send: Send) -> bool:
        """Whether the headers alone refuse the request, having answered: 401 for a missing or wrong token on
        the internal routes, 400 for a bad Content-Length, 413 for a declared body over the limit."""
        if self.token is not None and _is_internal(scope.get("path", "")):
            problem = self._auth_problem(headers.get(b"authorization"))
            if problem is not None:
                await _send_json(
                    send,
                    401,
                    {"error": Unauthorized.__name__, "message": problem},
                    extra_headers=[(b"www-authenticate", b'Bearer realm="eventual"')],
                )
                return True
        declared = headers.get(b"content-length")
        if declared is None:
            return False
        try:
            length = int(declared)
        except ValueError:
            length = -1
        if length < 0:
            await _send_json(
                send, 400, {"error": "HttpError", "message": "invalid Content-Length header", "status": 400}
            )
            return True
        if length > self.max_body_bytes:
            await self._drain(receive, 0)
            await self._too_large(send)
            return True
        return False

    async def _read_body(self, receive: Receive, send: Send) -> bytes | None:
        """The whole request body; None once the client went away or the body passed the limit (answered 413)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None  # the client went away before sending its body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                if message.get("more_body", False):
                    await self._drain(receive, size)
                await self._too_large(send)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _answer(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        """Run the app on the body read; an unexpected exception before the answer started becomes a 500."""
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, replay, watch)
        except Exception as exc:
            # answered here rather than by Starlette's last-resort handler, which answers and then re-raises
            # for the server to log the traceback a second time, without the error id
            if started:
                raise  # the answer is under way: there is no honest way to finish it
            await _send_json(send, 500, internal_error(exc, scope.get("method", "?"), scope.get("path", "?")))

    def _auth_problem(self, header: bytes | None) -> str | None:
        assert self.token is not None
        if header is None:
            return "missing Authorization header: the internal /_eventual/ routes need 'Authorization: Bearer <token>'"
        scheme, _, value = header.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not value.strip():
            return "the Authorization header must be 'Bearer <token>'"
        if not hmac.compare_digest(value.strip(), self.token):
            return "wrong bearer token for the internal /_eventual/ routes"
        return None

    async def _drain(self, receive: Receive, already: int) -> None:
        size = already
        while size <= self.drain_limit:
            message = await receive()
            if message["type"] != "http.request":
                return
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def _too_large(self, send: Send) -> None:
        await _send_json(
            send,
            413,
            {
                "error": "HttpError",
                "message": f"request body too large: the limit is {self.max_body_bytes} bytes",
                "status": 413,
            },
        )


async def _send_json(
    send: Send, status: int, body: dict[str, Any], extra_headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra_headers or [])})
    await send({"type": "http.response.body", "body": payload, "more_body": False})
