"""The HTTP server (`create_app`) and `ev.ServiceClient` against a real uvicorn server on 127.0.0.1.

Each test starts uvicorn in a background thread on a free port, serving `create_app(runtime)`, and talks
to it over real sockets: the client in the test's event loop, the runtime in the server's. The runtime
comes from `make_runtime(kind, tmp_path)`; the `runtime_kind` fixture is parametrised so other runtimes
(LocalRuntime) can run the same tests.

With a TestEnvironment, time only moves when something drives it: the server's result long-poll calls
`wait_for_execution`, which runs due work and advances virtual time, so tests that need background
work to happen (an activity handing out its token, a subscription failing) drive it through `result()`
(see `drive`).
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

import eventual_nb as ev
from eventual_nb.client import ServerUnreachable, ServiceClient, Unauthorized
from eventual_nb.runtime.tokens import InvalidToken
from tests.server_support import RunningServer, run_server, token_from

SERVICE = ev.Service("tests-server-client")


# ------------------------------------------------------------------------------------------ definitions


class TransferRequest(BaseModel):
    source: str
    target: str
    amount: int = Field(gt=0)


class Approval(BaseModel):
    ok: bool


class ScDeposited(ev.Event):
    account: str
    amount: int


sc_approval = ev.signal("sc_approval", Approval)

#: activity tokens handed out by `sc_external`, by key (written in the server's thread)
TOKENS: dict[str, str] = {}


@ev.activity
async def sc_double(amount: int) -> int:
    print(f"doubling {amount}")
    return amount * 2


@ev.workflow
async def sc_transfer(request: TransferRequest) -> dict[str, Any]:
    print(f"transferring {request.amount} from {request.source} to {request.target}")
    doubled = await sc_double(request.amount)
    return {"source": request.source, "target": request.target, "doubled": doubled}


@ev.workflow
async def sc_noop() -> str:
    return "done"


@ev.workflow
async def sc_waits_approval() -> bool:
    approval = await sc_approval.expect()
    return approval.ok


@ev.workflow
async def sc_naps() -> str:
    await ev.sleep("1 day")
    return "rested"


@ev.activity(retry=ev.RetryPolicy(max_attempts=1))
async def sc_external(key: str) -> str:
    return ev.async_result(lambda token: TOKENS.__setitem__(key, token))


@ev.workflow
async def sc_uses_external(key: str) -> str:
    return await sc_external(key)


@ev.subscription(ScDeposited, name="sc_on_deposit", retry=ev.RetryPolicy(max_attempts=1))
async def sc_on_deposit(event: ScDeposited) -> None:
    raise RuntimeError(f"ledger down for {event.account}")


# the service's own REST API


@SERVICE.api.post("/transfers", status_code=202)
async def start_transfer(body: TransferRequest) -> dict[str, str]:
    handle = await sc_transfer.start(body)
    return {"execution_id": handle.id}


@SERVICE.api.get("/accounts/{account_id}")
async def get_account(account_id: str) -> dict[str, str]:
    if account_id != "acc-1":
        raise ev.HttpError(404, f"no such account {account_id!r}")
    return {"id": account_id}


# ----------------------------------------------------------------------------------------------- server


def make_runtime(kind: str, tmp_path: Path) -> Any:
    """The runtime a test server runs; parametrise `runtime_kind` with more kinds to cover them."""
    if kind == "test":
        return ev.testing.TestEnvironment(service=SERVICE)
    if kind == "local":
        return ev.LocalRuntime(tmp_path / "state.db", service=SERVICE)
    raise ValueError(f"unknown runtime kind {kind!r}")


@pytest.fixture(params=["test", "local"])
def runtime_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server(runtime_kind: str, tmp_path: Path) -> Iterator[RunningServer]:
    with run_server(make_runtime(runtime_kind, tmp_path)) as running:
        yield running


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[ServiceClient]:
    async with ServiceClient(server.url, token=server.token, timeout=30) as service_client:
        yield service_client


async def drive(client: ServiceClient, until: Callable[[], Any], what: str) -> None:
    """Let background work happen until `until()` is true.

    A TestEnvironment only runs work when something waits: running a no-op workflow to completion
    through the result long-poll runs everything due. Real runtimes run it anyway; this just waits.
    """
    for _ in range(200):
        if await _maybe_await(until()):
            return
        handle = await client.start_execution(sc_noop)
        assert await handle.result(timeout=10) == "done"
        await asyncio.sleep(0.01)
    raise AssertionError(f"gave up waiting for {what}")


async def _maybe_await(value: Any) -> Any:
    if asyncio.iscoroutine(value):
        return await value
    return value


def unique(prefix: str) -> str:
    """A `sc_external` key no other test (or other runtime kind of this test) used: TOKENS outlives servers."""
    return f"{prefix}-{uuid.uuid4().hex}"


async def wait_for_token(client: ServiceClient, handle: ev.ExecutionHandle, key: str) -> str:
    """Drive the execution until its `sc_external` activity has handed out its token."""
    return await token_from(TOKENS, handle, key)


# ------------------------------------------------------------------------------------------ round trips


async def test_health_and_list_workflows(client: ServiceClient, server: RunningServer) -> None:
    health = await client.health()
    assert health["status"] == "ok"
    assert health["services"] == [SERVICE.name]
    workflows = await client.list_workflows()
    assert all(isinstance(info, ev.WorkflowInfo) for info in workflows)
    assert {info.name for info in workflows} == set(SERVICE.workflows)
    assert {info.service for info in workflows} == {SERVICE.name}


async def test_start_result_status_history_and_logs_round_trip(client: ServiceClient) -> None:
    request = TransferRequest(source="a", target="b", amount=21)
    handle = await client.start_execution(sc_transfer, request, name="t-1")
    assert isinstance(handle, ev.ExecutionHandle)
    assert handle.id == "sc_transfer/t-1"
    assert handle.workflow == "sc_transfer"
    assert handle.runtime is client
    assert handle.already_running is False

    assert await handle.result(timeout=10) == {"source": "a", "target": "b", "doubled": 42}

    execution = await client.get_execution(handle.id)
    assert isinstance(execution, ev.Execution)
    assert execution.status is ev.ExecutionStatus.SUCCEEDED
    assert execution.input == {"source": "a", "target": "b", "amount": 21}
    assert execution.result == {"source": "a", "target": "b", "doubled": 42}
    assert execution.end_time is not None
    assert execution.end_time >= execution.start_time
    assert (await handle.status()) == execution

    history = await client.get_execution_history(handle.id)
    types = [event.type for event in history]
    assert types[0] == "WorkflowStarted"
    assert types[-1] == "WorkflowSucceeded"
    assert "ActivityScheduled" in types
    assert "ActivitySucceeded" in types
    scheduled = next(event for event in history if event.type == "ActivityScheduled")
    assert scheduled.name == "sc_double"
    succeeded = next(event for event in history if event.type == "ActivitySucceeded")
    assert succeeded.result == 42
    assert succeeded.seq == scheduled.seq
    assert [event.model_dump() for event in await handle.history()] == [event.model_dump() for event in history]

    logs = await client.get_execution_logs(handle.id)
    assert all(isinstance(entry, ev.LogEntry) for entry in logs)
    messages = {(entry.source, entry.message) for entry in logs}
    assert ("workflow", "transferring 21 from a to b") in messages
    assert ("sc_double", "doubling 21") in messages


async def test_repeated_start_is_already_running_and_a_different_input_conflicts(client: ServiceClient) -> None:
    first = await client.start_execution("sc_transfer", {"source": "a", "target": "b", "amount": 1}, name="same")
    again = await client.start_execution("sc_transfer", {"source": "a", "target": "b", "amount": 1}, name="same")
    assert again.id == first.id
    assert again.already_running is True
    with pytest.raises(ev.ExecutionAlreadyExists) as caught:
        await client.start_execution("sc_transfer", {"source": "a", "target": "b", "amount": 2}, name="same")
    assert caught.value.execution_id == "sc_transfer/same"
    assert "different input" in caught.value.message


async def test_list_executions_filters_pages_and_sorts(client: ServiceClient) -> None:
    started = [await client.start_execution(sc_noop, name=f"n{index}") for index in range(5)]
    for handle in started[:3]:
        assert await handle.result(timeout=10) == "done"
    waiting = await client.start_execution(sc_waits_approval, name="w")

    everything = await client.list_executions()
    assert [execution.id for execution in everything.executions] == [h.id for h in [*started, waiting]]
    assert everything.next_token is None

    noops = await client.list_executions(workflow="sc_noop")
    assert {execution.id for execution in noops.executions} == {h.id for h in started}

    pages: list[str] = []
    token: str | None = None
    while True:
        page = await client.list_executions(workflow="sc_noop", max_results=2, next_token=token)
        assert len(page.executions) <= 2
        pages.extend(execution.id for execution in page.executions)
        token = page.next_token
        if token is None:
            break
    assert pages == [h.id for h in started]

    newest_first = await client.list_executions(workflow="sc_noop", sort="desc")
    assert [execution.id for execution in newest_first.executions] == [h.id for h in reversed(started)]

    in_progress = await client.list_executions(statuses=[ev.ExecutionStatus.IN_PROGRESS])
    assert all(execution.status is ev.ExecutionStatus.IN_PROGRESS for execution in in_progress.executions)
    assert waiting.id in {execution.id for execution in in_progress.executions}
    done = await client.list_executions(statuses=[ev.ExecutionStatus.SUCCEEDED, ev.ExecutionStatus.FAILED])
    assert {execution.id for execution in done.executions} >= {h.id for h in started[:3]}
    assert waiting.id not in {execution.id for execution in done.executions}


async def test_signals_by_object_and_by_name(client: ServiceClient) -> None:
    first = await client.start_execution(sc_waits_approval, name="s1")
    await client.send_signal(first, sc_approval, Approval(ok=True))
    assert await first.result(timeout=10) is True

    second = await client.start_execution(sc_waits_approval, name="s2")
    await second.signal("sc_approval", {"ok": False}, id="sig-1")
    assert await second.result(timeout=10) is False
    received = [event for event in await second.history() if event.type == "SignalReceived"]
    assert [(event.signal, event.payload, event.id) for event in received] == [("sc_approval", {"ok": False}, "sig-1")]


async def test_a_signal_nobody_waits_for_is_buffered_but_an_unknown_execution_is_404(client: ServiceClient) -> None:
    """An unknown signal *name* is legitimate (signals are buffered until expected); an unknown *execution* is not."""
    handle = await client.start_execution(sc_waits_approval, name="buffered")
    await client.send_signal(handle, "sc_never_declared", {"any": "thing"})
    await client.send_signal(handle, sc_approval, Approval(ok=True))
    assert await handle.result(timeout=10) is True
    received = [event.signal for event in await handle.history() if event.type == "SignalReceived"]
    assert received == ["sc_never_declared", "sc_approval"]

    with pytest.raises(ev.ExecutionNotFound) as caught:
        await client.send_signal("sc_waits_approval/nobody", sc_approval, Approval(ok=True))
    assert caught.value.execution_id == "sc_waits_approval/nobody"


async def test_waits_say_what_an_execution_waits_on_which_history_does_not_record(client: ServiceClient) -> None:
    """`expect()` without a timeout records nothing in history: only the waits route can say the execution
    waits on that signal, and since when (history time)."""
    handle = await client.start_execution(sc_waits_approval, name="waiting")
    waits = await client.get_execution_waits(handle.id)
    started = (await handle.history())[0].timestamp
    assert waits.execution_id == handle.id
    assert waits.now >= started
    assert [(wait.kind, wait.name, wait.since) for wait in waits.waits] == [("signal", "sc_approval", started)]
    await handle.signal(sc_approval, Approval(ok=True))
    assert await handle.result(timeout=10) is True
    assert (await client.get_execution_waits(handle.id)).waits == []


async def test_a_typed_signal_with_a_wrong_payload_is_422_naming_the_field(client: ServiceClient) -> None:
    handle = await client.start_execution(sc_waits_approval, name="typed")
    with pytest.raises(ev.InputValidationError) as caught:
        await client.send_signal(handle, "sc_approval", {"ok": [1, 2]})
    assert any(error["loc"][-1] == "ok" for error in caught.value.errors)
    assert "sc_approval" in caught.value.message


async def test_cancel_round_trips(client: ServiceClient) -> None:
    handle = await client.start_execution(sc_naps, name="sleepy")
    await client.cancel_execution(handle.id)
    with pytest.raises(ev.ExecutionCancelled) as caught:
        await handle.result(timeout=10)
    assert caught.value.execution_id == handle.id
    assert (await client.get_execution(handle.id)).status is ev.ExecutionStatus.CANCELLED
    assert [event.type for event in await handle.history()][-1] == "WorkflowCancelled"


async def test_result_times_out_with_ev_timeout_while_the_execution_keeps_going(client: ServiceClient) -> None:
    handle = await client.start_execution(sc_naps, name="long-nap")
    with pytest.raises(ev.Timeout):
        await handle.result(timeout=0.3)
    assert (await handle.status()).status is ev.ExecutionStatus.IN_PROGRESS


async def test_failed_execution_raises_execution_failed_through_the_client(client: ServiceClient) -> None:
    key = unique("fails")
    handle = await client.start_execution(sc_uses_external, key)
    token = await wait_for_token(client, handle, key)
    await client.send_activity_failure(token, "ValueError", "no way")
    with pytest.raises(ev.ExecutionFailed) as caught:
        await handle.result(timeout=10)
    assert caught.value.error == "ValueError"
    assert caught.value.message == "no way"
    assert caught.value.execution_id == handle.id
    execution = await client.get_execution(handle.id)
    assert (execution.status, execution.error, execution.message) == (ev.ExecutionStatus.FAILED, "ValueError", "no way")


async def test_async_activity_heartbeat_and_success_through_the_client(client: ServiceClient) -> None:
    key = unique("succeeds")
    handle = await client.start_execution(sc_uses_external, key)
    token = await wait_for_token(client, handle, key)
    beat = await client.send_activity_heartbeat(token)
    assert isinstance(beat, ev.HeartbeatResponse)
    assert beat.cancelled is False
    await client.send_activity_success(token, "finished elsewhere")
    assert await handle.result(timeout=10) == "finished elsewhere"
    assert (await client.send_activity_heartbeat(token)).cancelled is True
    with pytest.raises(ev.EventualError, match="no longer pending"):
        await client.send_activity_success(token, "twice")


async def test_a_forged_activity_token_is_invalid_token_403(client: ServiceClient, server: RunningServer) -> None:
    key = unique("forged")
    handle = await client.start_execution(sc_uses_external, key)
    token = await wait_for_token(client, handle, key)
    body, mac = token.split(".")
    forged = f"{body}.{'0' * len(mac)}"
    with pytest.raises(InvalidToken):
        await client.send_activity_success(forged, "nope")
    with pytest.raises(InvalidToken):
        await client.send_activity_heartbeat("not-a-token")
    with pytest.raises(InvalidToken):
        await client.send_activity_failure(f"{body}.é", "ValueError")
    async with httpx.AsyncClient(base_url=server.url) as http:
        answer = await http.post("/_eventual/activities/success", json={"token": forged, "result": 1})
    assert answer.status_code == 403
    assert answer.json()["error"] == "InvalidToken"


async def test_publish_events_reach_subscriptions_and_failures_are_dead_lettered(client: ServiceClient) -> None:
    await client.publish_events(ScDeposited(account="acc-9", amount=5))

    async def dead_lettered() -> bool:
        return bool(await client.list_dead_letters())

    await drive(client, dead_lettered, "the failing subscription to be dead-lettered")
    letters = await client.list_dead_letters()
    assert len(letters) == 1
    letter = letters[0]
    assert isinstance(letter, ev.DeadLetter)
    assert letter.subscription == "sc_on_deposit"
    assert letter.error == "RuntimeError"
    assert letter.message == "ledger down for acc-9"
    assert letter.attempts == 1
    assert letter.event == {"name": "ScDeposited", "event": {"account": "acc-9", "amount": 5}}


async def test_publishing_an_event_with_wrong_field_types_is_422_naming_the_field(client: ServiceClient) -> None:
    with pytest.raises(ev.InputValidationError) as caught:
        await client.publish_events({"name": "ScDeposited", "event": {"account": "a", "amount": "lots"}})
    assert "amount" in caught.value.message
    assert caught.value.errors[0]["loc"][-1] == "amount"
    assert await client.list_dead_letters() == []


# ------------------------------------------------------------------------------------------ error round trips


async def test_unknown_execution_raises_execution_not_found_from_every_method(client: ServiceClient) -> None:
    missing = "sc_transfer/does-not-exist"
    calls = [
        client.get_execution(missing),
        client.get_execution_history(missing),
        client.get_execution_logs(missing),
        client.get_execution_waits(missing),
        client.cancel_execution(missing),
        client.send_signal(missing, "sc_approval", {"ok": True}),
        client.wait_for_execution(missing, 1),
        ev.ExecutionHandle(missing, runtime=client).result(timeout=1),
    ]
    for call in calls:
        with pytest.raises(ev.ExecutionNotFound) as caught:
            await call
        assert caught.value.execution_id == missing
        assert missing in caught.value.message


async def test_unknown_workflow_and_invalid_input_round_trip(client: ServiceClient, server: RunningServer) -> None:
    with pytest.raises(ev.WorkflowNotFound) as not_found:
        await client.start_execution("sc_no_such_workflow", {})
    assert not_found.value.workflow == "sc_no_such_workflow"

    with pytest.raises(ev.InputValidationError) as invalid:
        await client.start_execution(sc_transfer, {"source": "a", "amount": -1})
    locations = {tuple(error["loc"]) for error in invalid.value.errors}
    assert ("target",) in locations
    assert ("amount",) in locations
    assert "sc_transfer" in invalid.value.message

    with pytest.raises(ev.InputValidationError, match="invalid execution name"):
        await client.start_execution(sc_noop, name="no spaces allowed")

    async with httpx.AsyncClient(base_url=server.url) as http:
        answer = await http.get("/_eventual/executions/sc_transfer/does-not-exist")
        assert answer.status_code == 404
        assert answer.json()["error"] == "ExecutionNotFound"
        answer = await http.post("/_eventual/executions", json={"workflow": "sc_no_such_workflow"})
        assert answer.status_code == 404
        assert answer.json() | {"message": None} == {
            "error": "WorkflowNotFound",
            "workflow": "sc_no_such_workflow",
            "message": None,
        }
        answer = await http.post("/_eventual/executions", json={"workflow": "sc_transfer", "input": {"source": 1}})
        assert answer.status_code == 422
        assert answer.json()["error"] == "InputValidationError"
        assert answer.json()["errors"]


async def test_ids_with_odd_characters_reach_the_server_intact(client: ServiceClient) -> None:
    """Ids travel as path segments; unicode, spaces, '?', '#', '%' and dot segments must arrive unchanged."""
    for missing in ["wf/ü ñ?#%2F", "wf/../x", "a/./b", "../..", "wf/name/with/more/slashes"]:
        with pytest.raises(ev.ExecutionNotFound) as caught:
            await client.get_execution(missing)
        assert caught.value.execution_id == missing


async def test_an_unreachable_server_says_how_to_start_one() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with ServiceClient(f"http://127.0.0.1:{port}") as unreachable:
        with pytest.raises(ServerUnreachable) as caught:
            await unreachable.list_workflows()
    assert isinstance(caught.value, ev.EventualError)
    assert f"127.0.0.1:{port}" in caught.value.message
    assert "eventual-nb serve" in caught.value.message


# ------------------------------------------------------------------------------------------ service routes


async def test_a_service_route_starts_a_workflow_and_is_in_the_openapi(
    server: RunningServer, client: ServiceClient
) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        answer = await http.post("/transfers", json={"source": "x", "target": "y", "amount": 4})
        assert answer.status_code == 202, answer.text
        execution_id = answer.json()["execution_id"]
        assert execution_id.startswith("sc_transfer/")
        result = await ev.ExecutionHandle(execution_id, runtime=client).result(timeout=10)
        assert result == {"source": "x", "target": "y", "doubled": 8}

        schema = (await http.get("/openapi.json")).json()
        assert "post" in schema["paths"]["/transfers"]
        assert "TransferRequest" in json.dumps(schema["paths"]["/transfers"]["post"])
        assert not any(path.startswith("/_eventual") for path in schema["paths"])
        internal = (await http.get("/_eventual/openapi.json")).json()
        assert "/_eventual/executions" in internal["paths"]
        assert "/_eventual/result/{id}" in internal["paths"]


async def test_http_error_from_a_handler_and_wrong_types_on_a_service_route(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/accounts/acc-1")).json() == {"id": "acc-1"}
        answer = await http.get("/accounts/acc-2")
        assert answer.status_code == 404
        assert answer.json() == {"error": "HttpError", "message": "no such account 'acc-2'", "status": 404}

        answer = await http.post("/transfers", json={"source": "x", "target": "y", "amount": "lots"})
        assert answer.status_code == 422
        body = answer.json()
        assert body["error"] == "InputValidationError"
        assert "body.amount" in body["message"]
        assert body["detail"][0]["loc"] == ["body", "amount"]


async def test_malformed_json_is_400_saying_so(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        for path in ["/_eventual/executions", "/_eventual/signals", "/transfers"]:
            answer = await http.post(
                path, content=b'{"workflow": "sc_noop",', headers={"content-type": "application/json"}
            )
            assert answer.status_code == 400, (path, answer.text)
            assert answer.json()["error"] == "InputValidationError"
            assert "not valid JSON" in answer.json()["message"]


async def test_wrong_types_on_internal_routes_are_422_naming_the_field(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        cases = [
            ("POST", "/_eventual/executions", {"json": {"workflow": 5}}, "body.workflow"),
            ("POST", "/_eventual/executions", {"json": {}}, "body.workflow"),
            ("POST", "/_eventual/executions", {"json": {"workflow": "sc_noop", "bogus": 1}}, "body.bogus"),
            ("POST", "/_eventual/executions", {"json": {"workflow": "sc_noop", "timeout": "soon"}}, "timeout"),
            ("POST", "/_eventual/executions", {"json": {"workflow": "sc_noop", "timeout": -1}}, "timeout"),
            ("POST", "/_eventual/executions", {"json": {"workflow": "sc_noop", "timeout": 1e300}}, "timeout"),
            ("POST", "/_eventual/executions", {"json": {"workflow": "sc_noop", "timeout": True}}, "timeout"),
            ("POST", "/_eventual/executions", {"json": {"workflow": "sc_noop", "timeout": False}}, "timeout"),
            (
                "POST",
                "/_eventual/executions",
                {
                    "content": b'{"workflow": "sc_noop", "timeout": NaN}',
                    "headers": {"content-type": "application/json"},
                },
                "finite",
            ),
            ("POST", "/_eventual/executions", {"json": {"workflow": "sc_noop", "timeout": "3650000d"}}, "100 years"),
            (
                "POST",
                "/_eventual/executions",
                {"json": {"workflow": "sc_noop", "timeout": "900000000 days"}},
                "timeout",
            ),
            ("POST", "/_eventual/executions", {"json": [1, 2]}, "body"),
            ("GET", "/_eventual/executions", {"params": {"max_results": "many"}}, "query.max_results"),
            ("GET", "/_eventual/executions", {"params": {"max_results": "0"}}, "query.max_results"),
            ("GET", "/_eventual/executions", {"params": {"status": "SLEEPING"}}, "query.status"),
            ("GET", "/_eventual/executions", {"params": {"sort": "sideways"}}, "query.sort"),
            ("GET", "/_eventual/result/sc_noop/x", {"params": {"timeout": "-3"}}, "query.timeout"),
            ("GET", "/_eventual/result/sc_noop/x", {"params": {"timeout": "nan"}}, "query.timeout"),
            ("POST", "/_eventual/signals", {"json": {"execution": "sc_noop/x"}}, "body.signal"),
            ("POST", "/_eventual/events", {"json": {"events": [{"name": "ScDeposited"}]}}, "body.events.0.event"),
            ("POST", "/_eventual/activities/failure", {"json": {"token": "t"}}, "body.error"),
            ("POST", "/_eventual/activities/heartbeat", {"json": {"token": 7}}, "body.token"),
        ]
        for method, path, options, named in cases:
            answer = await http.request(method, path, **options)
            assert answer.status_code == 422, (method, path, options, answer.text)
            body = answer.json()
            assert body["error"] in ("InputValidationError", "InvalidDuration"), body
            assert named in body["message"], (named, body["message"])


async def test_unknown_internal_routes_and_methods_are_4xx_in_the_eventual_shape(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        answer = await http.get("/_eventual/nothing-here")
        assert answer.status_code == 404
        assert answer.json()["error"] == "HttpError"
        assert "/_eventual/nothing-here" in answer.json()["message"]
        answer = await http.delete("/_eventual/executions")
        assert answer.status_code == 405
        assert answer.json()["error"] == "HttpError"
        assert (await http.get("/not-a-route")).json() == {"detail": "Not Found"}


async def test_oversize_bodies_get_413_with_or_without_content_length(server: RunningServer) -> None:
    big = {"workflow": "sc_noop", "input": "x" * (2 << 20)}
    async with httpx.AsyncClient(base_url=server.url) as http:
        for path in ["/_eventual/executions", "/transfers"]:
            answer = await http.post(path, json=big)
            assert answer.status_code == 413, path
            assert answer.json()["error"] == "HttpError"
            assert "too large" in answer.json()["message"]

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"workflow": "sc_noop", "input": "'
            for _ in range(32):
                yield b"y" * (64 << 10)
            yield b'"}'

        answer = await http.post(
            "/_eventual/executions", content=chunks(), headers={"content-type": "application/json"}
        )
        assert "content-length" not in answer.request.headers
        assert answer.status_code == 413
        # a body just under the limit is fine (and reaches the runtime, which rejects the input it does not take)
        answer = await http.post("/_eventual/executions", json={"workflow": "sc_noop", "input": "z" * 1_000_000})
        assert answer.status_code == 422
        assert "takes no input" in answer.json()["message"]
    async with ServiceClient(server.url) as still_serving:
        assert (await still_serving.health())["status"] == "ok"


async def test_the_app_makes_its_runtime_the_default_while_it_runs(tmp_path: Path, runtime_kind: str) -> None:
    """Handlers run outside any `async with runtime:` block, so the app makes its runtime the process default
    (the /transfers handler's `sc_transfer.start` relies on it), and restores the previous default after."""
    before = ev.current_runtime(required=False)
    runtime = make_runtime(runtime_kind, tmp_path)
    with run_server(runtime) as server:
        assert ev.current_runtime() is runtime
        async with httpx.AsyncClient(base_url=server.url) as http:
            answer = await http.post("/transfers", json={"source": "x", "target": "y", "amount": 1})
            assert answer.status_code == 202
    assert ev.current_runtime(required=False) is before


def test_a_client_works_across_event_loops(server: RunningServer) -> None:
    """Scripts and CLI verbs call `asyncio.run` more than once; one client must keep working in each new loop."""
    shared = ServiceClient(server.url)

    async def list_and_close() -> list[ev.WorkflowInfo]:
        async with shared:
            return await shared.list_workflows()

    first = asyncio.run(shared.list_workflows())  # leaves its connection pool open, bound to a loop now closed
    second = asyncio.run(list_and_close())
    assert [info.name for info in first] == [info.name for info in second] != []


# ------------------------------------------------------------------------------------------ bearer token


async def test_a_token_guards_internal_routes_but_not_service_routes(tmp_path: Path, runtime_kind: str) -> None:
    with run_server(make_runtime(runtime_kind, tmp_path), token="s3cret-token") as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-token"}]:
                for method, path in [("GET", "/_eventual/health"), ("POST", "/_eventual/executions")]:
                    answer = await http.request(method, path, headers=headers, json={"workflow": "sc_noop"})
                    assert answer.status_code == 401, (headers, path)
                    assert answer.json()["error"] == "Unauthorized"
                    assert answer.headers["www-authenticate"].startswith("Bearer")
            answer = await http.get("/_eventual/health", headers={"Authorization": "Bearer s3cret-token"})
            assert answer.status_code == 200
            answer = await http.post("/transfers", json={"source": "x", "target": "y", "amount": 1})
            assert answer.status_code == 202
            assert (await http.get("/accounts/acc-1")).status_code == 200

        async with ServiceClient(server.url) as anonymous:
            with pytest.raises(Unauthorized, match="token"):
                await anonymous.list_workflows()
        async with ServiceClient(server.url, token="wrong") as wrong:
            with pytest.raises(Unauthorized, match="does not match"):
                await wrong.list_workflows()
        async with ServiceClient(server.url, token="s3cret-token") as authorised:
            handle = await authorised.start_execution(sc_noop)
            assert await handle.result(timeout=10) == "done"


# ------------------------------------------------------------------------------------------ fuzz

_KNOWN_IDS = ["sc_waits_approval/fuzz", "sc_naps/fuzz", "sc_noop/fuzz", "sc_transfer/fuzz"]

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
_ids = st.one_of(
    st.sampled_from(_KNOWN_IDS),
    st.text(max_size=30),
    st.lists(st.text(max_size=8), min_size=1, max_size=4).map("/".join),
    st.sampled_from(list(SERVICE.workflows)).flatmap(lambda name: st.text(max_size=12).map(lambda n: f"{name}/{n}")),
)
_names = st.one_of(st.none(), st.text(max_size=12), st.from_regex(r"[a-z0-9][a-z0-9._:-]{0,10}", fullmatch=True))
_timeouts = st.one_of(
    st.none(), st.floats(), st.integers(), st.text(max_size=10), st.sampled_from(["5m", "1e9 days", "inf", "-1s"])
)
_transfers = st.fixed_dictionaries(
    {"source": st.text(max_size=5), "target": st.text(max_size=5), "amount": st.integers(-5, 1000)}
)
_start_bodies = st.fixed_dictionaries(
    {"workflow": st.sampled_from([*SERVICE.workflows, "nope"]) | st.text(max_size=10)},
    optional={"input": _json | _transfers, "name": _names, "timeout": _timeouts},
)
_signal_bodies = st.fixed_dictionaries(
    {"execution": _ids, "signal": st.sampled_from(["sc_approval", "other"]) | st.text(max_size=8)},
    optional={"payload": _json | st.fixed_dictionaries({"ok": _json}), "id": st.text(max_size=8) | st.none()},
)
_event_bodies = st.fixed_dictionaries(
    {
        "events": st.lists(
            st.fixed_dictionaries(
                {
                    "name": st.sampled_from(["ScDeposited", "Other"]) | st.text(max_size=8),
                    "event": _json | st.fixed_dictionaries({"account": _json, "amount": _json}),
                }
            ),
            max_size=3,
        )
    }
)
_token_bodies = st.fixed_dictionaries(
    {"token": st.text(max_size=40) | st.text(alphabet="abcdefXYZ0123456789-_=.", max_size=80)},
    optional={"result": _json, "error": st.text(max_size=10), "message": st.text(max_size=10) | st.none()},
)
#: (method, path template, body strategy) of every route; the fuzz mostly uses the right method and body shape
_ENDPOINTS: list[tuple[str, str, Any]] = [
    ("GET", "/_eventual", None),
    ("GET", "/_eventual/health", None),
    ("GET", "/_eventual/workflows", None),
    ("POST", "/_eventual/executions", _start_bodies),
    ("GET", "/_eventual/executions", None),
    ("GET", "/_eventual/executions/{id}", None),
    ("GET", "/_eventual/history/{id}", None),
    ("GET", "/_eventual/logs/{id}", None),
    ("GET", "/_eventual/waits/{id}", None),
    ("GET", "/_eventual/result/{id}", None),
    ("POST", "/_eventual/signals", _signal_bodies),
    ("POST", "/_eventual/events", _event_bodies),
    ("POST", "/_eventual/cancel/{id}", None),
    ("POST", "/_eventual/activities/success", _token_bodies),
    ("POST", "/_eventual/activities/failure", _token_bodies),
    ("POST", "/_eventual/activities/heartbeat", _token_bodies),
    ("GET", "/_eventual/dead-letters", None),
    ("GET", "/_eventual/schedules", None),
    ("POST", "/_eventual/schedules/{id}/pause", None),
    ("POST", "/_eventual/schedules/{id}/resume", None),
    ("POST", "/_eventual/schedules/{id}/trigger", None),
    ("GET", "/_eventual/entities", None),
    ("GET", "/_eventual/entities/{id}/entry", None),
    ("GET", "/_eventual/openapi.json", None),
    ("GET", "/_eventual/{id}", None),
    ("POST", "/transfers", _transfers | st.fixed_dictionaries({"source": _json, "target": _json, "amount": _json})),
    ("GET", "/accounts/{id}", None),
]
_query_values = st.one_of(
    st.text(max_size=12),
    st.integers().map(str),
    st.floats().map(str),
    st.sampled_from(["asc", "desc", "IN_PROGRESS", "SUCCEEDED", "0", "-1", "1e999", "inf", "0.01"]),
)
_queries = st.lists(
    st.tuples(
        st.sampled_from(["timeout", "max_results", "status", "sort", "workflow", "next_token", "key"])
        | st.text(max_size=6),
        _query_values,
    ),
    max_size=4,
)
_bodies = st.one_of(
    st.none().map(lambda _: ("none", None)),
    _json.map(lambda value: ("json", value)),
    st.binary(max_size=64).map(lambda value: ("bytes", value)),
    st.text(max_size=40).map(lambda value: ("text", value)),
)


@settings(
    max_examples=100,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    deadline=None,
)
@given(endpoint=st.sampled_from(_ENDPOINTS), data=st.data())
def test_fuzz_internal_and_service_routes_never_answer_5xx(
    fuzz_http: httpx.Client, endpoint: tuple[str, str, Any], data: st.DataObject
) -> None:
    """Random methods, paths (ids with '/', unicode, dot segments), queries and bodies: always a 2xx/4xx, never 5xx.

    Mostly the route's own method and body shape with random field values (so requests get past routing and
    validation into the runtime), sometimes anything at all.
    """
    right_method, template, shaped = endpoint
    method = data.draw(st.sampled_from([right_method] * 5 + ["GET", "POST", "PUT", "DELETE", "PATCH"]))
    execution_id = data.draw(_ids)
    query = data.draw(_queries)
    bodies = _bodies if shaped is None else st.one_of(shaped.map(lambda value: ("json", value)), _bodies)
    kind, value = data.draw(bodies)
    path = template.replace("{id}", quote(execution_id, safe="/"))
    if template == "/_eventual/result/{id}":
        # the result route long-polls (30 s) on an execution in progress: keep its wait short, so the
        # examples stay within the test's timeout, but still fuzz how `timeout` is read
        query = [(key, value) for key, value in query if key != "timeout"]
        query.append(("timeout", data.draw(st.sampled_from(["0", "0.01", "-1", "x", "1e999", "inf", "nan", ""]))))
    options: dict[str, Any] = {"params": query}
    if kind == "json":
        options["content"] = json.dumps(value).encode()
        options["headers"] = {"content-type": "application/json"}
    elif kind == "bytes":
        options["content"] = value
        options["headers"] = {"content-type": "application/json"}
    elif kind == "text":
        options["content"] = value.encode("utf-8", "surrogatepass")
    answer = fuzz_http.request(method, path, **options)
    assert answer.status_code < 500, (method, path, query, value, answer.status_code, answer.text)
    if answer.status_code >= 400 and path.startswith("/_eventual"):
        error = answer.json()
        assert isinstance(error.get("error"), str), error
        assert error.get("message"), error


@pytest.fixture
def fuzz_http(server: RunningServer) -> Iterator[httpx.Client]:
    """A client of the server, which already has a few executions the fuzz can hit by id."""
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for workflow, payload in [
            ("sc_waits_approval", None),
            ("sc_naps", None),
            ("sc_noop", None),
            ("sc_transfer", {"source": "a", "target": "b", "amount": 3}),
        ]:
            answer = http.post("/_eventual/executions", json={"workflow": workflow, "input": payload, "name": "fuzz"})
            assert answer.status_code == 200, answer.text
        answer = http.get("/_eventual/result/sc_transfer/fuzz", params={"timeout": 10})
        assert answer.json()["status"] == "SUCCEEDED"
        yield http
