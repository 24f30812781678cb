"""API Gateway HTTP API (payload format 2.0) → the service's ASGI app, inside a Lambda function.

Why our own adapter rather than a third-party one: the mapping is small (an event becomes one ASGI http
scope and one request message; the response messages become one dict) and owning it keeps the Lambda
zip free of extra dependencies and lets the tests pin the exact behaviour the exported service relies on.

Why one event loop on a daemon thread for the whole process: a runtime binds itself to the loop it was
started on (its home loop) and keeps background tasks there (a LocalRuntime's scheduler), and an app's
lifespan is entered once and must stay entered across invocations. A loop that only ran during
`asyncio.run` would close under them after the first request. Lambda freezes the whole process between
invocations, threads included, so the thread costs nothing there; run locally, work such as a started
workflow keeps progressing between requests, as it does under `eventual-nb serve`.

`api_handler` is what the generated `handlers.api` calls: it builds the app once per process, on the
runtime named by `EVENTUAL_RUNTIME`: `aws`, the default, serves on an `AwsRuntime` over the stack the
function's `EVENTUAL_*` variables name (it writes records and sends messages; the stack's other
functions run the code); `local` serves on a LocalRuntime at `EVENTUAL_DB` inside this process.
`function_handler` is what the other entry points call (`eventual_nb.runtime.aws.functions`).
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import concurrent.futures
import json
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any, TypeVar
from urllib.parse import unquote

from eventual_nb import errors

LOGGER = logging.getLogger("eventual_nb.lambda")

DEFAULT_DB = "/tmp/eventual.db"
#: how long the process waits at exit for the runtime to stop cleanly (its database closed)
STOP_TIMEOUT_SECONDS = 5.0

#: content types answered as text; anything else (and anything with a Content-Encoding) travels as base64,
#: because API Gateway can only pass a string body and would otherwise mangle bytes that are not UTF-8
TEXT_MEDIA_TYPES = frozenset(
    {
        "application/json",
        "application/javascript",
        "application/xml",
        "application/x-www-form-urlencoded",
        "application/yaml",
        "application/x-yaml",
        "application/graphql",
    }
)

# the ASGI shapes, spelled as Starlette spells them so a FastAPI app type-checks as an ASGIApp
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

T = TypeVar("T")

# ------------------------------------------------------------------------------------- the process loop


class _ProcessLoop:
    """The event loop every invocation of this process runs on (see the module docstring for why)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), name="eventual-lambda-loop", daemon=True)
        self.thread.start()
        ready.wait()

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        self.loop.run_forever()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coroutine` on the process loop and wait for its result in the calling thread."""
        if threading.current_thread() is self.thread:
            coroutine.close()
            raise errors.EventualError(
                "handle_http_event was called from the Lambda adapter's own event loop; call it from a plain thread"
            )
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout)


_process_loop_lock = threading.Lock()
_process_loop: _ProcessLoop | None = None


def process_loop() -> _ProcessLoop:
    """The process's one event loop, started on first use."""
    global _process_loop
    with _process_loop_lock:
        if _process_loop is None:
            _process_loop = _ProcessLoop()
        return _process_loop


# ------------------------------------------------------------------------------------------- lifespan


class _Lifespan:
    """An app's ASGI lifespan, entered once per process and left only by `shutdown_app` (or never)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        #: lifespan state (Starlette copies it into every request's `request.state`)
        self.state: dict[str, Any] = {}
        self.supported = True
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._stopped: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def startup(self) -> None:
        self._task = asyncio.create_task(self._main(), name="eventual-lambda-lifespan")
        await self._inbox.put({"type": "lifespan.startup"})
        await self._started

    async def shutdown(self) -> None:
        if self._task is None or self._task.done():
            return
        self._stopping = True
        await self._inbox.put({"type": "lifespan.shutdown"})
        await self._stopped

    async def _main(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        try:
            await self.app(scope, self._inbox.get, self._send)
        except Exception as exc:  # noqa: BLE001 - an app that does not speak lifespan raises anything
            if not self._started.done():
                # an app that raises before answering the startup does not speak lifespan (ASGI spec): serve it
                # without one, as uvicorn does
                self.supported = False
            elif self._stopping and not self._stopped.done():
                self._stopped.set_exception(exc)
            elif self._started.exception() is None:  # a failed startup was reported already
                LOGGER.error("the app's lifespan ended with %s: %s", type(exc).__name__, exc)
        finally:
            if not self._started.done():
                self._started.set_result(None)
            if not self._stopped.done():
                self._stopped.set_result(None)

    async def _send(self, message: Message) -> None:
        kind = message.get("type")
        if kind == "lifespan.startup.complete":
            self._started.set_result(None)
        elif kind == "lifespan.startup.failed":
            self._started.set_exception(errors.EventualError(f"the app's startup failed: {_reason(message)}"))
        elif kind == "lifespan.shutdown.complete":
            self._stopped.set_result(None)
        elif kind == "lifespan.shutdown.failed":
            self._stopped.set_exception(errors.EventualError(f"the app's shutdown failed: {_reason(message)}"))


def _reason(message: Message) -> str:
    """The last line of a lifespan failure (Starlette sends the whole traceback, which goes to the log)."""
    text = str(message.get("message") or "").strip()
    if not text:
        return "no reason given"
    LOGGER.error("%s:\n%s", message.get("type"), text)
    return text.splitlines()[-1]


#: apps whose lifespan started (or is starting) in this process, by id; the `_Lifespan` keeps the app alive
_lifespans: dict[int, asyncio.Task[_Lifespan]] = {}


async def _lifespan_of(app: ASGIApp) -> _Lifespan:
    """The app's lifespan, started on first use; a failed startup is tried again by the next invocation."""
    task = _lifespans.get(id(app))
    if task is None:
        task = asyncio.create_task(_start(app))
        _lifespans[id(app)] = task
    try:
        return await asyncio.shield(task)
    except BaseException:
        if task.done() and _lifespans.get(id(app)) is task:
            del _lifespans[id(app)]
        raise


async def _start(app: ASGIApp) -> _Lifespan:
    lifespan = _Lifespan(app)
    await lifespan.startup()
    return lifespan


def shutdown_app(app: ASGIApp, timeout: float | None = STOP_TIMEOUT_SECONDS) -> None:
    """Leave `app`'s lifespan (stopping a runtime it owns); the next invocation starts it again."""

    async def shutdown() -> None:
        task = _lifespans.pop(id(app), None)
        if task is None:
            return
        lifespan = await task
        await lifespan.shutdown()

    process_loop().run(shutdown(), timeout)


# ---------------------------------------------------------------------------------------- the adapter


def handle_http_event(app: ASGIApp, event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Serve one API Gateway HTTP API (payload 2.0) event with the ASGI `app`; answer the Lambda response."""
    return process_loop().run(_invoke(app, event, context))


async def _invoke(app: ASGIApp, event: dict[str, Any], context: Any) -> dict[str, Any]:
    lifespan = await _lifespan_of(app)
    scope = http_scope(event, context)
    if lifespan.supported:
        scope["state"] = dict(lifespan.state)
    body = request_body(event)
    status, headers, chunks = await _call(app, scope, body)
    return lambda_response(status, headers, b"".join(chunks))


def http_scope(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """The ASGI http scope of a payload-2.0 event.

    `rawPath` arrives percent-encoded: the scope's `path` is its decoded form (what routes match, so an
    encoded '/' in an execution id reaches a `{id:path}` parameter as '/'), `raw_path` the bytes as sent.
    On a named stage (not `$default`) API Gateway keeps the stage in the path; it becomes the `root_path`.
    """
    context_of_request = event.get("requestContext") or {}
    http = context_of_request.get("http") or {}
    method = str(http.get("method") or "GET").upper()
    raw_path = str(event.get("rawPath") or http.get("path") or "/")
    headers: dict[str, str] = {str(name).lower(): str(value) for name, value in (event.get("headers") or {}).items()}
    cookies = event.get("cookies") or []
    if cookies and "cookie" not in headers:
        headers["cookie"] = "; ".join(str(cookie) for cookie in cookies)
    body = event.get("body")
    if body and "content-length" not in headers:
        headers["content-length"] = str(len(request_body(event)))
    host = headers.get("host") or str(context_of_request.get("domainName") or "localhost")
    scheme = headers.get("x-forwarded-proto", "https").split(",")[0].strip() or "https"
    port_text = headers.get("x-forwarded-port", "").split(",")[0].strip()
    port = int(port_text) if port_text.isdigit() else (443 if scheme == "https" else 80)
    stage = str(context_of_request.get("stage") or "$default")
    root_path = ""
    if stage != "$default" and (raw_path == f"/{stage}" or raw_path.startswith(f"/{stage}/")):
        root_path = f"/{stage}"
    source_ip = str(http.get("sourceIp") or "")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": scheme,
        "path": unquote(raw_path),
        "raw_path": raw_path.encode("utf-8"),
        "root_path": root_path,
        "query_string": str(event.get("rawQueryString") or "").encode("utf-8"),
        "headers": [(name.encode("latin-1"), _header_bytes(value)) for name, value in headers.items()],
        "client": (source_ip, 0) if source_ip else None,
        "server": (host.split(":")[0], port),
        "extensions": {},
        "aws.event": event,
        "aws.context": context,
    }


def _header_bytes(value: str) -> bytes:
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


def request_body(event: dict[str, Any]) -> bytes:
    """The request body as bytes (API Gateway base64-encodes bodies it does not take for text)."""
    body = event.get("body")
    if not body:
        return b""
    if event.get("isBase64Encoded"):
        return base64.b64decode(body)
    return str(body).encode("utf-8")


async def _call(app: ASGIApp, scope: dict[str, Any], body: bytes) -> tuple[int, list[tuple[bytes, bytes]], list[bytes]]:
    """Run one request through the app; collect the status, headers and body chunks it sends."""
    sent_request = False
    finished = asyncio.Event()
    status: int | None = None
    headers: list[tuple[bytes, bytes]] = []
    chunks: list[bytes] = []

    async def receive() -> Message:
        nonlocal sent_request
        if not sent_request:
            sent_request = True
            return {"type": "http.request", "body": body, "more_body": False}
        # the client "disconnects" once the whole response is out, as a real one would
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        kind = message.get("type")
        if kind == "http.response.start":
            status = int(message["status"])
            headers.extend((bytes(name), bytes(value)) for name, value in message.get("headers", []))
        elif kind == "http.response.body":
            chunks.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                finished.set()

    try:
        await app(scope, receive, send)
    except Exception as exc:
        if status is not None and finished.is_set():
            # Starlette answers an unhandled error with its 500 handler and then re-raises it for the server
            # to log: the response is complete, so answer it
            LOGGER.error(
                "the app raised after answering %s %s: %s: %s", scope["method"], scope["path"], type(exc).__name__, exc
            )
            return status, headers, chunks
        if status is not None:
            raise  # the response had started but not finished: there is no honest way to answer now
        from eventual_nb.server import internal_error

        payload = json.dumps(internal_error(exc, scope["method"], scope["path"])).encode()
        return 500, [(b"content-type", b"application/json")], [payload]
    finally:
        finished.set()
    if status is None:
        return _internal_error("internal server error: the app sent no response")
    return status, headers, chunks


def _internal_error(message: str) -> tuple[int, list[tuple[bytes, bytes]], list[bytes]]:
    payload = json.dumps({"error": "EventualError", "message": message}).encode()
    return 500, [(b"content-type", b"application/json")], [payload]


def lambda_response(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> dict[str, Any]:
    """The payload-2.0 Lambda response: repeated headers comma-joined, each Set-Cookie in `cookies`."""
    merged: dict[str, str] = {}
    cookies: list[str] = []
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        if name == "set-cookie":
            cookies.append(value)
        elif name in merged:
            merged[name] = f"{merged[name]}, {value}"
        else:
            merged[name] = value
    text: str | None = None
    if is_text(merged.get("content-type"), merged.get("content-encoding")):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
    return {
        "statusCode": status,
        "headers": merged,
        "cookies": cookies,
        "body": text if text is not None else base64.b64encode(body).decode("ascii"),
        "isBase64Encoded": text is None,
    }


def is_text(content_type: str | None, content_encoding: str | None = None) -> bool:
    """Whether a response body goes back to API Gateway as text (else base64)."""
    if content_encoding and content_encoding.strip().lower() not in ("", "identity"):
        return False
    if not content_type:
        return True  # no declared type: an empty body, or text by HTTP's old default; not-UTF-8 falls back
    media_type = content_type.split(";")[0].strip().lower()
    return (
        media_type.startswith("text/")
        or media_type in TEXT_MEDIA_TYPES
        or media_type.endswith("+json")
        or media_type.endswith("+xml")
    )


# ------------------------------------------------------------------------------ the API function's app

_api_lock = threading.Lock()
_api: tuple[str | None, ASGIApp] | None = None


def api_handler(event: dict[str, Any], context: Any, *, service: str | None = None) -> dict[str, Any]:
    """Entry point of the API function: the app of `service` (built once per process) answers `event`."""
    return handle_http_event(api_app(service), event, context)


def api_app(service: str | None = None) -> ASGIApp:
    """The API function's app, built on first use on the runtime `EVENTUAL_RUNTIME` names."""
    global _api
    with _api_lock:
        if _api is None:
            _api = (service, _build_api_app(service))
        elif _api[0] != service:
            raise errors.EventualError(
                f"this process already serves service {_api[0]!r}; one Lambda process serves one service, not {service!r}"
            )
        return _api[1]


def _build_api_app(service: str | None) -> ASGIApp:
    kind = (os.environ.get("EVENTUAL_RUNTIME") or "aws").strip().lower()
    if kind not in ("aws", "local"):
        raise errors.EventualError(f"EVENTUAL_RUNTIME={kind!r} is not a runtime: use 'local' or 'aws'")
    from eventual_nb.runtime import base
    from eventual_nb.server import create_app
    from eventual_nb.service import all_services, get_service

    if service is not None and get_service(service) is None:
        known = ", ".join(repr(found.name) for found in all_services()) or "none"
        raise errors.EventualError(
            f"no service named {service!r} was registered by importing the exported package (registered: {known})"
        )
    runtime: Any
    if kind == "aws":
        from eventual_nb.aws import AwsRuntime

        # the stack's names come from this function's own EVENTUAL_* variables (os.environ)
        runtime = AwsRuntime(service=service)
    else:
        from eventual_nb.runtime.local import LocalRuntime

        runtime = LocalRuntime(os.environ.get("EVENTUAL_DB") or DEFAULT_DB, service=service)
        process_loop().run(runtime.start())
        atexit.register(_stop_runtime, runtime)
    base.set_default_runtime(runtime)
    # API Gateway delivers requests with the API's own domain as Host and guards the API itself: the
    # loopback Host check of a local server does not apply
    app: ASGIApp = create_app(runtime, own_runtime=False, allowed_hosts=["*"])
    return app


def _stop_runtime(runtime: Any) -> None:
    """At exit, stop the runtime on its loop so its database closes cleanly (the loop's thread is a daemon)."""
    try:
        process_loop().run(runtime.stop(), STOP_TIMEOUT_SECONDS)
    except Exception:
        LOGGER.exception("stopping the %s at exit failed", type(runtime).__name__)


# ------------------------------------------------------------------------------ the other entry points


def function_handler(function: str, event: dict[str, Any], context: Any, *, service: str | None = None) -> Any:
    """Entry point of the queue-driven functions (`orchestrator`, `activity`, `subscription`, `timer`,
    `schedule`): built once per process from the function's `EVENTUAL_*` variables. Imported lazily so an
    API-only process (EVENTUAL_RUNTIME=local) never loads the AWS runtime's modules."""
    from eventual_nb.runtime.aws import functions

    return functions.invoke(function, event, context, service=service)
