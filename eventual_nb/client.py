"""`ev.ServiceClient(url)`: the service-client protocol over HTTP, against `eventual-nb serve`.

    async with ev.ServiceClient("http://127.0.0.1:3111") as client:
        handle = await client.start_execution("checkout", {"order_id": "o-1"})
        print(await handle.result())

It returns the same shapes and raises the same errors as the runtimes (an unknown id raises
`ev.ExecutionNotFound`, bad input `ev.InputValidationError` with pydantic's details, ...): the server
answers `{"error": <type name>, "message": ..., **fields}` and the client rebuilds that class.

`async with client:` only closes the HTTP connection pool at the end of the block; it does not make the
client the current runtime. To send `wf.start(...)` from plain code to a server, make it the default
explicitly: `ev.set_default_runtime(client)`.

httpx is imported when the first request is made, so `import eventual_nb` stays light.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from eventual_nb import errors
from eventual_nb.durations import optional_duration
from eventual_nb.engine.history import HISTORY_ADAPTER, HistoryEvent, LogEntry
from eventual_nb.events import envelope
from eventual_nb.runtime.base import (
    DeadLetter,
    EntityInfo,
    EntityRecord,
    Execution,
    ExecutionHandle,
    ExecutionPage,
    ExecutionStatus,
    ExecutionWaits,
    HeartbeatResponse,
    PublishedEvent,
    ServiceClientProtocol,
    WorkflowInfo,
    execution_id_of,
    signal_name_of,
)
from eventual_nb.runtime.core.schedules import ScheduleInfo
from eventual_nb.serde import to_json

if TYPE_CHECKING:
    import httpx

#: where `ServiceClient()` and the CLI's client verbs look when no URL is given: `eventual-nb serve`'s default
DEFAULT_URL = "http://127.0.0.1:3111"
#: the longest the server holds a result long-poll open; the client polls again until its own deadline
LONG_POLL_SECONDS = 30.0


class Unauthorized(errors.EventualError):
    """The server's internal routes need `Authorization: Bearer <EVENTUAL_TOKEN>` and it was missing or wrong."""

    status_code = 401


class ServerUnreachable(errors.EventualError, ConnectionError):
    """No eventual-nb server answered at the client's URL."""

    status_code = 503


class InvalidURL(errors.EventualError, ValueError):
    """A service URL the client cannot connect to as written (no host, a port out of range, not http)."""


def check_url(url: str) -> str:
    """Return `url` if it names a server the client can talk to: `http(s)://HOST[:PORT][/prefix]`.

    Checked when the client is made, so a typo is reported as what it is rather than as a connection
    failure (or an `OverflowError` from the socket) at the first request. Raises `InvalidURL`.
    """
    from urllib.parse import urlsplit

    def invalid(reason: str) -> InvalidURL:
        return InvalidURL(f"invalid service URL {url!r}: {reason}; expected http://HOST:PORT, e.g. {DEFAULT_URL}")

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise invalid(str(exc)) from None
    if parts.scheme not in ("http", "https"):
        raise invalid(f"the scheme must be http or https, not {parts.scheme!r}" if parts.scheme else "no scheme")
    if not parts.hostname:
        raise invalid("no host")
    if port == 0:
        raise invalid("port 0 cannot be connected to")
    return url


class ServiceClient(ServiceClientProtocol):
    """Eventual's service client over HTTP (`/_eventual/` routes of `eventual-nb serve`).

    `url` is the server's base URL; `token` the bearer token it demands when it listens beyond loopback
    (`EVENTUAL_TOKEN`); `timeout` the seconds any one request may take (result long-polls add the time
    they wait on top). A malformed `url` raises `InvalidURL` here (see `check_url`). Usable with or without `async with` (then call `await client.aclose()`).
    """

    def __init__(self, url: str = DEFAULT_URL, *, token: str | None = None, timeout: float = 30.0) -> None:
        self.url = check_url(url).rstrip("/")
        self.token = token
        self.timeout = float(timeout)
        self._http: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"ServiceClient({self.url!r})"

    # -- lifecycle -----------------------------------------------------------------------------------

    async def __aenter__(self) -> ServiceClient:
        """Return the client itself; it does not become the current runtime (see the module docstring)."""
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool; the client opens a new one if it is used again."""
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._http is not None and self._loop is not loop:
            # first used under another event loop (each `asyncio.run` of a script or CLI verb has its own):
            # that pool's connections belong to the old loop, so start a fresh one
            self._http = None
        if self._http is None:
            import httpx

            self._loop = loop

            headers = {"Accept": "application/json"}
            if self.token is not None:
                headers["Authorization"] = f"Bearer {self.token}"
            self._http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=self.timeout)
        return self._http

    # -- transport -----------------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Any = None,
        timeout: float | None = None,
    ) -> Any:
        import httpx

        client = self._client()
        try:
            response = await client.request(
                method,
                path,
                json=json,
                params=params,
                timeout=self.timeout if timeout is None else timeout,
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ServerUnreachable(
                f"the eventual-nb server at {self.url} is not reachable ({exc or type(exc).__name__}); start one with "
                "`eventual-nb serve app.py` (a .py file, module, exported package or notebook), or pass the "
                "right url= / --url"
            ) from None
        except httpx.TimeoutException as exc:
            raise errors.Timeout(
                f"the eventual-nb server at {self.url} did not answer {method} {path} in time "
                f"({type(exc).__name__}); raise timeout= if it is busy"
            ) from None
        except httpx.HTTPError as exc:
            raise errors.EventualError(
                f"request {method} {path} to the eventual-nb server at {self.url} failed: {type(exc).__name__}: {exc}"
            ) from None
        if response.status_code >= 400:
            raise self._error(response)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise errors.EventualError(
                f"the server at {self.url} answered {method} {path} with something that is not JSON "
                f"(HTTP {response.status_code}): {response.text[:200]!r}; is it an eventual-nb server?"
            ) from None

    def _error(self, response: httpx.Response) -> errors.EventualError:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            error = errors.error_from_json(body)
            if isinstance(error, Unauthorized):
                hint = (
                    "pass token= to ServiceClient (or --token / EVENTUAL_TOKEN to the CLI)"
                    if self.token is None
                    else "the token given does not match the server's EVENTUAL_TOKEN"
                )
                return Unauthorized(f"{error.message} ({hint})")
            return error
        text = response.text[:500]
        if response.status_code == 404:
            return errors.EventualError(
                f"the server at {self.url} has no route {response.request.method} {response.request.url.path} "
                f"(HTTP 404: {text}); is it an eventual-nb server of a compatible version?"
            )
        return errors.EventualError(f"the server at {self.url} answered HTTP {response.status_code}: {text}")

    # -- the service-client protocol -----------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        """The server's `/_eventual/health` answer (raises `ServerUnreachable` if there is none)."""
        answer = await self._request("GET", "/_eventual/health")
        return dict(answer or {})

    async def list_workflows(self) -> list[WorkflowInfo]:
        answer = await self._request("GET", "/_eventual/workflows")
        return [WorkflowInfo.model_validate(item) for item in answer]

    async def start_execution(
        self, workflow: Any, input: Any = None, name: str | None = None, timeout: Any = None
    ) -> ExecutionHandle:
        workflow_name = workflow if isinstance(workflow, str) else getattr(workflow, "name", None)
        if not isinstance(workflow_name, str):
            raise errors.EventualError(f"expected a workflow or its name, got {workflow!r}")
        limit = optional_duration(timeout, what="timeout")
        body = {
            "workflow": workflow_name,
            "input": None if input is None else to_json(input, what=f"input of workflow '{workflow_name}'"),
            "name": name,
            "timeout": None if limit is None else limit.total_seconds(),
        }
        answer = await self._request("POST", "/_eventual/executions", json=body)
        return ExecutionHandle(
            answer["execution_id"],
            workflow_name,
            runtime=self,
            already_running=bool(answer.get("already_running", False)),
        )

    async def get_execution(self, id: str) -> Execution:
        answer = await self._request("GET", f"/_eventual/executions/{_quote_id(id)}")
        return Execution.model_validate(answer)

    async def list_executions(
        self,
        workflow: str | None = None,
        statuses: list[ExecutionStatus] | None = None,
        next_token: str | None = None,
        max_results: int = 100,
        sort: str = "asc",
    ) -> ExecutionPage:
        params: list[tuple[str, str]] = [("max_results", str(max_results)), ("sort", sort)]
        if workflow is not None:
            params.append(("workflow", workflow))
        for status in statuses or []:
            params.append(("status", str(getattr(status, "value", status))))
        if next_token is not None:
            params.append(("next_token", next_token))
        answer = await self._request("GET", "/_eventual/executions", params=params)
        return ExecutionPage.model_validate(answer)

    async def get_execution_history(self, id: str) -> list[HistoryEvent]:
        answer = await self._request("GET", f"/_eventual/history/{_quote_id(id)}")
        return HISTORY_ADAPTER.validate_python(answer)

    async def get_execution_logs(self, id: str) -> list[LogEntry]:
        answer = await self._request("GET", f"/_eventual/logs/{_quote_id(id)}")
        return [LogEntry.model_validate(item) for item in answer]

    async def get_execution_waits(self, id: str) -> ExecutionWaits:
        answer = await self._request("GET", f"/_eventual/waits/{_quote_id(id)}")
        return ExecutionWaits.model_validate(answer)

    async def send_signal(self, execution: Any, signal: Any, payload: Any = None, id: str | None = None) -> None:
        execution_id = execution_id_of(execution)
        name = signal_name_of(signal)
        encode = None if isinstance(signal, str) else getattr(signal, "encode", None)  # str.encode is not ours
        encoded = encode(payload) if callable(encode) else to_json(payload, what=f"payload of signal '{name}'")
        body = {"execution": execution_id, "signal": name, "payload": encoded, "id": id}
        await self._request("POST", "/_eventual/signals", json=body)

    async def publish_events(self, *events: Any) -> None:
        if not events:
            return
        items = []
        for event in events:
            item = envelope(event)
            items.append({"name": item["name"], "event": to_json(item["event"], what=f"event '{item['name']}'")})
        await self._request("POST", "/_eventual/events", json={"events": items})

    async def cancel_execution(self, id: str) -> None:
        await self._request("POST", f"/_eventual/cancel/{_quote_id(id)}")

    async def send_activity_success(self, token: str, result: Any = None) -> None:
        body = {"token": token, "result": to_json(result, what="activity result")}
        await self._request("POST", "/_eventual/activities/success", json=body)

    async def send_activity_failure(self, token: str, error: str, message: str | None = None) -> None:
        body = {"token": token, "error": str(error), "message": message}
        await self._request("POST", "/_eventual/activities/failure", json=body)

    async def send_activity_heartbeat(self, token: str) -> HeartbeatResponse:
        answer = await self._request("POST", "/_eventual/activities/heartbeat", json={"token": token})
        return HeartbeatResponse.model_validate(answer)

    async def list_dead_letters(self) -> list[DeadLetter]:
        answer = await self._request("GET", "/_eventual/dead-letters")
        return [DeadLetter.model_validate(item) for item in answer]

    async def list_schedules(self) -> list[ScheduleInfo]:
        answer = await self._request("GET", "/_eventual/schedules")
        return [ScheduleInfo.model_validate(item) for item in answer]

    async def pause_schedule(self, name: str) -> None:
        await self._request("POST", f"/_eventual/schedules/{_quote_name(name)}/pause")

    async def resume_schedule(self, name: str) -> None:
        await self._request("POST", f"/_eventual/schedules/{_quote_name(name)}/resume")

    async def trigger_schedule(self, name: str) -> ExecutionHandle:
        answer = await self._request("POST", f"/_eventual/schedules/{_quote_name(name)}/trigger")
        return ExecutionHandle(
            answer["execution_id"],
            answer.get("workflow"),
            runtime=self,
            already_running=bool(answer.get("already_running", False)),
        )

    async def list_events(
        self, max_results: int = 100, source: str | None = None, name: str | None = None
    ) -> list[PublishedEvent]:
        params: dict[str, str] = {"max_results": str(max_results)}
        for key, value in (("source", source), ("name", name)):
            if value is not None:
                params[key] = value
        answer = await self._request("GET", "/_eventual/events", params=params)
        return [PublishedEvent.model_validate(item) for item in answer]

    async def list_entities(self) -> list[EntityInfo]:
        answer = await self._request("GET", "/_eventual/entities")
        return [EntityInfo.model_validate(item) for item in answer]

    async def get_entity(self, name: str, key: Any) -> EntityRecord:
        """Entry `key` of entity `name` as stored; `key` is the key itself, or `(partition, sort)`."""
        params = {"key": str(key[0]), "sort": str(key[1])} if isinstance(key, tuple | list) else {"key": str(key)}
        answer = await self._request("GET", f"/_eventual/entities/{quote(name, safe='')}/entry", params=params)
        return EntityRecord.model_validate(answer)

    async def wait_for_execution(self, id: str, timeout: float | None) -> Execution:
        """Long-poll the server until the execution ends; `ev.Timeout` after `timeout` seconds (None: forever)."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        path = f"/_eventual/result/{_quote_id(id)}"
        while True:
            remaining = LONG_POLL_SECONDS if deadline is None else max(0.0, deadline - time.monotonic())
            wait = min(remaining, LONG_POLL_SECONDS)
            answer = await self._request("GET", path, params={"timeout": f"{wait:.3f}"}, timeout=wait + self.timeout)
            execution = Execution.model_validate(answer)
            if execution.status != ExecutionStatus.IN_PROGRESS:
                return execution
            if deadline is not None and time.monotonic() >= deadline:
                raise errors.Timeout(f"execution '{id}' did not finish within {timeout:g}s")
            if wait <= 0:
                await asyncio.sleep(0.01)


def _quote_name(name: str) -> str:
    """A schedule name as one path segment (names hold no '/', but whatever is passed reaches the server whole)."""
    if not isinstance(name, str):
        raise errors.EventualError(f"expected a schedule name, got {name!r}")
    return quote(name, safe="").replace(".", "%2E") if name in (".", "..") else quote(name, safe="")


def _quote_id(id: str) -> str:
    """An execution id as the last path segment(s): '/' stays (the server takes `{id:path}`), the rest is quoted.

    Segments that are exactly '.' or '..' are written as %2E so no URL normalisation removes them.
    """
    if not isinstance(id, str):
        raise errors.EventualError(f"expected an execution id, got {id!r}")
    segments = [quote(segment, safe="") for segment in id.split("/")]
    return "/".join(segment.replace(".", "%2E") if segment in (".", "..") else segment for segment in segments)
