"""What the HTTP server refuses and how it fails: page tokens it did not issue, unexpected exceptions (an
error id, never the exception), Host headers a DNS-rebinding page would send, booleans where numbers or
durations belong, activity tokens in any spelling but the one issued, and OpenAPI documents that list every
answer the routes give. Real uvicorn on 127.0.0.1 (tests/test_server_client.py's `run_server`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import eventual_nb as ev
from eventual_nb import errors
from eventual_nb.client import ServiceClient
from eventual_nb.runtime.aws import lambda_api
from eventual_nb.runtime.tokens import InvalidToken, TokenSigner
from eventual_nb.server import create_app
from tests.server_support import RunningServer, run_server, token_from
from tests.test_cli_verbs import FIXTURE, free_port, run_cli, start_server

GUARD = ev.Service("tests-server-guard")
SECRET = "s3cret-connection-string"
#: activity tokens handed out by `guard_external`, by key (written in the server's thread)
TOKENS: dict[str, str] = {}


@ev.workflow
async def guard_noop() -> str:
    return "done"


@ev.activity(retry=ev.RetryPolicy(max_attempts=1))
async def guard_external(key: str) -> str:
    return ev.async_result(lambda token: TOKENS.__setitem__(key, token))


@ev.workflow
async def guard_uses_external(key: str) -> str:
    return await guard_external(key)


@GUARD.api.get("/explode")
async def explode() -> dict[str, str]:
    raise RuntimeError(f"database at {SECRET} is down")


@GUARD.api.post("/echo")
async def echo(body: dict[str, Any]) -> dict[str, Any]:
    return body


def make_runtime(kind: str, tmp_path: Path) -> Any:
    if kind == "test":
        return ev.testing.TestEnvironment(service=GUARD)
    return ev.LocalRuntime(tmp_path / "state.db", service=GUARD)


@pytest.fixture(params=["test", "local"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningServer]:
    with run_server(make_runtime(str(request.param), tmp_path)) as running:
        yield running


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[ServiceClient]:
    async with ServiceClient(server.url, timeout=30) as service_client:
        yield service_client


@pytest.fixture
def guard_server(tmp_path: Path) -> Iterator[RunningServer]:
    with run_server(make_runtime("test", tmp_path)) as running:
        yield running


# --------------------------------------------------------------------------------------------- page tokens


async def test_page_tokens_no_listing_issued_are_400_naming_next_token(
    server: RunningServer, client: ServiceClient
) -> None:
    for number in range(3):
        await client.start_execution("guard_noop", name=f"page-{number}")
    async with httpx.AsyncClient(base_url=server.url) as http:
        for token in ["9223372036854775808", "99999999999999999999", "-50", "-0", " 7", "7 ", "1_0", "+1", "007"]:
            answer = await http.get("/_eventual/executions", params={"next_token": token})
            assert answer.status_code == 400, (token, answer.text)
            body = answer.json()
            assert body["error"] == "InvalidPageToken", body
            assert f"invalid next_token {token!r}" in body["message"], body
            assert body["errors"][0]["loc"] == ["query", "next_token"], body
        arabic_three = "\u0663"  # int() reads it as 3
        assert (await http.get("/_eventual/executions", params={"next_token": arabic_three})).status_code == 400
        first = (await http.get("/_eventual/executions", params={"max_results": 2})).json()
        assert first["next_token"] == "2"
        for token in ["", "0"]:  # empty is the first page, as no token
            page = (await http.get("/_eventual/executions", params={"next_token": token, "max_results": 2})).json()
            assert page == first, token
        second = await http.get("/_eventual/executions", params={"next_token": "2", "max_results": 2})
        assert second.status_code == 200
        assert second.json()["executions"]
    with pytest.raises(errors.InvalidPageToken, match="invalid next_token '-50'") as raised:
        await client.list_executions(next_token="-50")
    assert isinstance(raised.value, ev.InputValidationError)  # still a ValueError-like input error


# ------------------------------------------------------------------------------------------ unexpected errors


def test_an_unexpected_exception_answers_an_error_id_and_logs_the_traceback_under_it(
    guard_server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="eventual_nb.server"):
        answer = httpx.get(f"{guard_server.url}/explode", timeout=10)
    assert answer.status_code == 500
    body = answer.json()
    assert SECRET not in answer.text, body
    assert "RuntimeError" not in answer.text, body
    error_id = body["error_id"]
    assert body["error"] == "EventualError", body
    assert error_id in body["message"], body
    records = [record for record in caplog.records if error_id in record.getMessage()]
    assert len(records) == 1, [record.getMessage() for record in caplog.records]
    assert "GET /explode" in records[0].getMessage()
    assert records[0].exc_info is not None
    assert SECRET in str(records[0].exc_info[1])


def test_the_lambda_adapter_answers_an_error_id_for_an_app_that_raises(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            raise RuntimeError("no lifespan here")
        raise RuntimeError(f"token {SECRET} rejected")

    event = {
        "version": "2.0",
        "rawPath": "/x",
        "rawQueryString": "",
        "headers": {"host": "abc123.execute-api.eu-west-1.amazonaws.com"},
        "requestContext": {"http": {"method": "GET", "path": "/x"}, "stage": "$default"},
    }
    with caplog.at_level(logging.ERROR, logger="eventual_nb.server"):
        answer = lambda_api.handle_http_event(app, event, None)
    assert answer["statusCode"] == 500
    assert SECRET not in answer["body"], answer
    assert "RuntimeError" not in answer["body"], answer
    error_id = json.loads(answer["body"])["error_id"]
    assert any(error_id in record.getMessage() and record.exc_info for record in caplog.records)


# ------------------------------------------------------------------------------------------------ Host check


def _status(url: str, host: str, path: str = "/_eventual/health") -> int:
    return httpx.get(f"{url}{path}", headers={"Host": host}, timeout=10).status_code


def test_a_loopback_server_refuses_other_host_names_with_a_clear_403(guard_server: RunningServer) -> None:
    url = guard_server.url
    port = url.rsplit(":", 1)[1]
    for host in [f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", "localhost.", f"[::1]:{port}", "127.8.9.10"]:
        assert _status(url, host) == 200, host
    for host in [f"evil.example:{port}", "attacker.test", "localhost.attacker.test", "10.0.0.1", "[2001:db8::1]"]:
        for path in ["/_eventual/health", "/_eventual/executions", "/openapi.json", "/docs", "/explode"]:
            assert _status(url, host, path) == 403, (host, path)
    answer = httpx.post(f"{url}/_eventual/executions", json={"workflow": "x"}, headers={"Host": "rebind.example:80"})
    assert answer.status_code == 403
    body = answer.json()
    assert "'rebind.example:80' is not allowed" in body["message"], body
    assert "DNS rebinding" in body["message"], body
    assert "--allow-host rebind.example" in body["message"], body


def test_allowed_hosts_adds_names_and_patterns_and_star_allows_any(tmp_path: Path) -> None:
    runtime = ev.testing.TestEnvironment(service=GUARD)
    with run_server(runtime, allowed_hosts=["Bank.Test", "*.corp.example"]) as running:
        for host in ["bank.test", "bank.test:8080", "a.corp.example", "b.a.corp.example:1", "localhost"]:
            assert _status(running.url, host) == 200, host
        for host in ["corp.example", "bank.test.evil", "evil.example"]:
            assert _status(running.url, host) == 403, host
    with run_server(ev.testing.TestEnvironment(service=GUARD), allowed_hosts=["*"]) as running:
        assert _status(running.url, "anything.example") == 200
        # the OpenAPI then promises no 403 for the Host
        schema = httpx.get(f"{running.url}/openapi.json").json()
        assert "403" not in schema["paths"]["/echo"]["post"]["responses"]
    with pytest.raises(TypeError, match="list of host names"):
        create_app(runtime, allowed_hosts="bank.test")


def test_an_empty_allowed_host_is_refused_without_a_traceback(tmp_path: Path) -> None:
    proc = run_cli("serve", str(FIXTURE), "--allow-host", "", "--port", str(free_port()), "--db", str(tmp_path / "db"))
    assert proc.returncode == 1, proc.stderr
    assert "allowed host name is empty" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_eventual_nb_serve_allow_host(tmp_path: Path) -> None:
    running = start_server(FIXTURE, tmp_path / "serve.db", extra=["--allow-host", "shop.lan"])
    try:
        assert _status(running.url, "shop.lan:3111") == 200
        assert _status(running.url, "127.0.0.1") == 200
        answer = httpx.get(f"{running.url}/_eventual/health", headers={"Host": "other.lan"})
        assert answer.status_code == 403
        assert "--allow-host other.lan" in answer.json()["message"]
    finally:
        running.stop()


# ------------------------------------------------------------------------------------- internal route types


async def test_a_boolean_is_not_a_workflow_timeout(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        for value in [True, False]:
            answer = await http.post("/_eventual/executions", json={"workflow": "guard_noop", "timeout": value})
            assert answer.status_code == 422, answer.text
            assert "body.timeout" in answer.json()["message"]
        answer = await http.post("/_eventual/executions", json={"workflow": "guard_noop", "timeout": 30, "name": "t"})
        assert answer.status_code == 200, answer.text


def _signed(key: bytes, contents: Any) -> str:
    body = json.dumps(contents, separators=(",", ":")).encode()
    encoded = base64.urlsafe_b64encode(body).decode().rstrip("=")
    return f"{encoded}.{hmac.new(key, body, hashlib.sha256).hexdigest()}"


def test_activity_tokens_decode_only_in_the_form_they_were_issued() -> None:
    key = b"k" * 32
    signer = TokenSigner(key)
    token = signer.sign("transfer/t-1", 3, 1)
    assert signer.verify(token) == ("transfer/t-1", 3, 1)
    encoded, mac = token.split(".")
    respelled = [
        f"{encoded}=.{mac}",  # padding
        f"{encoded}==.{mac}",
        f"{encoded[:4]}!{encoded[4:]}.{mac}",  # a character the decoder skips
        f"{encoded[:4]}\n{encoded[4:]}.{mac}",
        f"{encoded.replace('_', '/').replace('-', '+')}.{mac}" if "_" in encoded or "-" in encoded else None,
    ]
    # the last character carries spare bits when the length is not a multiple of 4: flip one of them
    if len(encoded) % 4:
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        last = alphabet.index(encoded[-1])
        respelled.append(f"{encoded[:-1]}{alphabet[last ^ 1]}.{mac}")
    for variant in filter(None, respelled):
        assert variant != token
        with pytest.raises(InvalidToken):
            signer.verify(variant)
    for contents in (["transfer/t-1", True, 1], ["transfer/t-1", 3, 1.0], ["transfer/t-1", "3", 1], [1, 3, 1]):
        with pytest.raises(InvalidToken, match="malformed"):
            signer.verify(_signed(key, contents))
    with pytest.raises(InvalidToken):
        signer.verify(f"{encoded}.{mac.upper()}")


async def test_a_respelled_activity_token_does_not_complete_the_activity(
    client: ServiceClient, server: RunningServer
) -> None:
    key = f"respelled-{uuid.uuid4().hex}"
    handle = await client.start_execution(guard_uses_external, key)
    token = await token_from(TOKENS, handle, key)
    encoded, mac = token.split(".")
    async with httpx.AsyncClient(base_url=server.url) as http:
        for variant in [f"{encoded}=.{mac}", f"{encoded[:2]}*{encoded[2:]}.{mac}"]:
            answer = await http.post("/_eventual/activities/success", json={"token": variant, "result": "x"})
            assert answer.status_code == 403, answer.text
            assert answer.json()["error"] == "InvalidToken"
    await client.send_activity_success(token, "the real one")
    assert await handle.result(timeout=10) == "the real one"


# ------------------------------------------------------------------------------------------ OpenAPI answers


def test_the_internal_openapi_lists_the_answers_routes_give(server: RunningServer) -> None:
    paths = httpx.get(f"{server.url}/_eventual/openapi.json").json()["paths"]

    def codes(path: str, method: str) -> set[str]:
        return set(paths[path][method]["responses"])

    assert codes("/_eventual/executions", "get") >= {"200", "400", "403", "422"}
    assert codes("/_eventual/executions", "post") >= {"200", "400", "403", "404", "409", "413", "422"}
    for path in [
        "/_eventual/executions/{id}",
        "/_eventual/history/{id}",
        "/_eventual/logs/{id}",
        "/_eventual/waits/{id}",
    ]:
        assert codes(path, "get") >= {"200", "403", "404"}, path
    assert codes("/_eventual/result/{id}", "get") >= {"200", "403", "404", "422"}
    assert codes("/_eventual/signals", "post") >= {"202", "400", "403", "404", "413", "422"}
    assert codes("/_eventual/cancel/{id}", "post") >= {"202", "400", "403", "404"}
    for path in ["/_eventual/activities/success", "/_eventual/activities/failure", "/_eventual/activities/heartbeat"]:
        assert codes(path, "post") >= {"200", "400", "403", "413", "422"}, path
    # the page token's form is documented, so clients and fuzzers know what a token looks like
    (next_token,) = [p for p in paths["/_eventual/executions"]["get"]["parameters"] if p["name"] == "next_token"]
    assert next_token["schema"]["pattern"] == ev.runtime.base.OFFSET_TOKEN_PATTERN
    error_schema = paths["/_eventual/executions/{id}"]["get"]["responses"]["404"]["content"]["application/json"]
    assert error_schema["schema"]["$ref"].endswith("/ErrorAnswer")


def test_the_public_openapi_lists_the_answers_the_server_gives_before_routes(guard_server: RunningServer) -> None:
    responses = httpx.get(f"{guard_server.url}/openapi.json").json()["paths"]["/echo"]["post"]["responses"]
    assert {"200", "400", "403", "413", "422"} <= set(responses)


def test_a_body_that_is_not_utf8_is_400_in_the_documented_shape(guard_server: RunningServer) -> None:
    for path in ["/echo", "/_eventual/executions"]:
        answer = httpx.post(
            f"{guard_server.url}{path}", content=b"\x01\xff", headers={"content-type": "application/json"}
        )
        assert answer.status_code == 400, answer.text
        body = answer.json()
        assert body["error"] == "InputValidationError", body
        assert "cannot be read" in body["message"], body


def test_405_names_every_method_the_path_takes(guard_server: RunningServer) -> None:
    answer = httpx.request("OPTIONS", f"{guard_server.url}/_eventual/executions")
    assert answer.status_code == 405
    assert set(answer.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST"}
    answer = httpx.put(f"{guard_server.url}/echo")
    assert answer.status_code == 405
    assert answer.headers["allow"] == "POST"
