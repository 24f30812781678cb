"""The Lambda side of an export: the API Gateway adapter, the generated handlers.py and the lambda.zip.

* The adapter (`eventual_nb.runtime.aws.lambda_api`) runs a real app from `create_app` on a LocalRuntime in a
  temporary directory, fed with API Gateway HTTP API payload-2.0 events as API Gateway sends them.
* `handlers.py` is generated for a small exported-like package written to a temporary directory and run in
  a subprocess with a clean `sys.path` (`python -I`, the directory put on `sys.path` by the runner script,
  because `-I` ignores PYTHONPATH) with EVENTUAL_RUNTIME=local.
* The zip is built twice per session (one module-scoped fixture), unpacked, and its handlers imported by
  Python 3.12 (the Lambda runtime's version: the zip holds cp312 wheels, which do not import on this 3.11)
  with nothing but the unpacked zip and the standard library on `sys.path` (`-I -S`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

import eventual_nb as ev
from eventual_nb.runtime.aws import lambda_api
from eventual_nb.server import create_app
from exporter.bundle import LAMBDA_DEPENDENCIES, SIZE_LIMIT, build_lambda_zip, lambda_requirements
from exporter.errors import ExportError
from exporter.handlers import HANDLERS, handlers_source

SERVICE = ev.Service("tests-lambda-api")

WORKER_ENTRY_POINTS = ["orchestrator", "activity_worker", "subscription_worker", "timer", "schedule_forwarder"]
#: import names of the core install's parts that Lambda never runs (the command line's rich, the local
#: server's uvicorn, ServiceClient's httpx, and what they pull in): not in lambda.zip, never imported there
NOT_ON_LAMBDA = ("rich", "pygments", "markdown_it", "mdurl", "uvicorn", "click", "h11", "httpx", "httpcore", "certifi")

# -------------------------------------------------------------------------------- the service under test


class LaItem(BaseModel):
    name: str
    price: float = Field(gt=0)


@ev.activity
async def la_shout(name: str) -> str:
    return name.upper()


@ev.workflow
async def la_greet(name: str) -> str:
    return await la_shout(name)


@SERVICE.api.get("/items/{item_id}")
async def la_get_item(item_id: int, q: str | None = None, tag: list[str] = Query(default=[])) -> dict[str, Any]:
    return {"id": item_id, "q": q, "tags": tag}


@SERVICE.api.post("/items", status_code=201)
async def la_create_item(item: LaItem) -> dict[str, Any]:
    return {"created": item.model_dump()}


@SERVICE.api.post("/reverse")
async def la_reverse(request: Request) -> Response:
    return Response(content=(await request.body())[::-1], media_type="application/octet-stream")


@SERVICE.api.get("/files/{path:path}")
async def la_file(path: str) -> dict[str, str]:
    return {"path": path}


@SERVICE.api.get("/login")
async def la_login(response: Response) -> dict[str, bool]:
    response.set_cookie("session", "abc123", httponly=True)
    response.set_cookie("theme", "dark")
    return {"ok": True}


@SERVICE.api.get("/whoami")
async def la_whoami(request: Request) -> dict[str, Any]:
    return {
        "cookies": dict(request.cookies),
        "client": request.client.host if request.client else None,
        "agent": request.headers.get("user-agent"),
        "url": str(request.url),
    }


@SERVICE.api.get("/page")
async def la_page() -> HTMLResponse:
    return HTMLResponse("<p>héllo wörld</p>")


@SERVICE.api.get("/logo.png")
async def la_logo() -> Response:
    return Response(content=bytes(range(256)), media_type="image/png")


@SERVICE.api.get("/boom")
async def la_boom() -> dict[str, str]:
    raise RuntimeError("the ledger is on fire")


@SERVICE.api.post("/greetings/{name}", status_code=202)
async def la_start_greeting(name: str) -> dict[str, str]:
    handle = await la_greet.start(name, name=name)
    return {"execution_id": handle.id}


# ------------------------------------------------------------------------------------------------ helpers


def http_event(
    method: str,
    raw_path: str,
    *,
    query: str = "",
    headers: dict[str, str] | None = None,
    body: bytes | str | None = None,
    base64_body: bool = False,
    cookies: list[str] | None = None,
    stage: str = "$default",
) -> dict[str, Any]:
    """An API Gateway HTTP API event (payload format 2.0), shaped as API Gateway sends it."""
    sent_headers = {
        "host": "abc123.execute-api.eu-west-1.amazonaws.com",
        "user-agent": "pytest",
        "x-forwarded-proto": "https",
    }
    sent_headers.update({name.lower(): value for name, value in (headers or {}).items()})
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": raw_path,
        "rawQueryString": query,
        "headers": sent_headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": "abc123.execute-api.eu-west-1.amazonaws.com",
            "http": {
                "method": method,
                "path": raw_path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.7",
                "userAgent": "pytest",
            },
            "requestId": "request-1",
            "routeKey": "$default",
            "stage": stage,
        },
        "isBase64Encoded": base64_body,
    }
    if cookies:
        event["cookies"] = cookies
    if body is not None:
        raw = body.encode() if isinstance(body, str) else body
        event["body"] = base64.b64encode(raw).decode() if base64_body else raw.decode()
    return event


def json_body(answer: dict[str, Any]) -> Any:
    assert answer["isBase64Encoded"] is False, answer
    return json.loads(answer["body"])


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    """The service's app on a LocalRuntime; the adapter's lifespan starts the runtime on the process loop.

    Any Host, as the API function's own app (`lambda_api.api_app`): events carry the API's domain."""
    runtime = ev.LocalRuntime(tmp_path_factory.mktemp("lambda-api") / "state.db", service=SERVICE)
    served = create_app(runtime, services=[SERVICE], own_runtime=True, allowed_hosts=["*"])
    yield served
    lambda_api.shutdown_app(served)


def call(app: lambda_api.ASGIApp, event: dict[str, Any]) -> dict[str, Any]:
    return lambda_api.handle_http_event(app, event, None)


# ------------------------------------------------------------------------------------------------ adapter


def test_get_with_query_string(app: FastAPI) -> None:
    answer = call(app, http_event("GET", "/items/7", query="q=hello%20world&tag=a&tag=b%26c"))
    assert answer["statusCode"] == 200
    assert answer["headers"]["content-type"] == "application/json"
    assert answer["cookies"] == []
    assert json_body(answer) == {"id": 7, "q": "hello world", "tags": ["a", "b&c"]}


def test_post_json_body(app: FastAPI) -> None:
    item = {"name": "lamp", "price": 12.5}
    answer = call(
        app, http_event("POST", "/items", headers={"content-type": "application/json"}, body=json.dumps(item))
    )
    assert answer["statusCode"] == 201
    assert json_body(answer) == {"created": item}


def test_post_base64_body(app: FastAPI) -> None:
    item = {"name": "chaise longue", "price": 99.0}
    event = http_event(
        "POST", "/items", headers={"content-type": "application/json"}, body=json.dumps(item), base64_body=True
    )
    answer = call(app, event)
    assert answer["statusCode"] == 201
    assert json_body(answer) == {"created": item}


def test_binary_request_and_response_travel_as_base64(app: FastAPI) -> None:
    payload = bytes(range(256)) * 4
    event = http_event(
        "POST", "/reverse", headers={"content-type": "application/octet-stream"}, body=payload, base64_body=True
    )
    answer = call(app, event)
    assert answer["statusCode"] == 200
    assert answer["isBase64Encoded"] is True
    assert base64.b64decode(answer["body"]) == payload[::-1]
    image = call(app, http_event("GET", "/logo.png"))
    assert image["isBase64Encoded"] is True
    assert image["headers"]["content-type"] == "image/png"
    assert base64.b64decode(image["body"]) == bytes(range(256))


def test_text_response_stays_text(app: FastAPI) -> None:
    answer = call(app, http_event("GET", "/page"))
    assert answer["isBase64Encoded"] is False
    assert answer["body"] == "<p>héllo wörld</p>"


def test_path_parameters_keep_their_slashes(app: FastAPI) -> None:
    assert json_body(call(app, http_event("GET", "/files/reports/2024/q1.csv"))) == {"path": "reports/2024/q1.csv"}
    # rawPath arrives percent-encoded: an encoded '/' reaches the {path:path} parameter as '/'
    assert json_body(call(app, http_event("GET", "/files/a%2Fb%20c"))) == {"path": "a/b c"}


def test_not_found(app: FastAPI) -> None:
    answer = call(app, http_event("GET", "/nowhere"))
    assert answer["statusCode"] == 404
    assert json_body(answer) == {"detail": "Not Found"}
    internal = call(app, http_event("GET", "/_eventual/nowhere"))
    assert internal["statusCode"] == 404
    assert json_body(internal)["error"] == "HttpError"


def test_invalid_input(app: FastAPI) -> None:
    bad_price = call(
        app,
        http_event("POST", "/items", headers={"content-type": "application/json"}, body='{"name": "x", "price": -1}'),
    )
    assert bad_price["statusCode"] == 422
    assert json_body(bad_price)["error"] == "InputValidationError"
    assert "price" in json_body(bad_price)["message"]
    bad_id = call(app, http_event("GET", "/items/seven"))
    assert bad_id["statusCode"] == 422
    not_json = call(app, http_event("POST", "/items", headers={"content-type": "application/json"}, body="{oops"))
    assert not_json["statusCode"] == 400
    assert "not valid JSON" in json_body(not_json)["message"]


def test_set_cookie_headers_become_cookies(app: FastAPI) -> None:
    answer = call(app, http_event("GET", "/login"))
    assert answer["statusCode"] == 200
    assert "set-cookie" not in answer["headers"]
    assert len(answer["cookies"]) == 2
    assert answer["cookies"][0].startswith("session=abc123;")
    assert "HttpOnly" in answer["cookies"][0]
    assert answer["cookies"][1].startswith("theme=dark;")


def test_request_cookies_client_and_url(app: FastAPI) -> None:
    answer = call(app, http_event("GET", "/whoami", query="x=1", cookies=["session=abc123", "theme=dark"]))
    assert json_body(answer) == {
        "cookies": {"session": "abc123", "theme": "dark"},
        "client": "203.0.113.7",
        "agent": "pytest",
        "url": "https://abc123.execute-api.eu-west-1.amazonaws.com/whoami?x=1",
    }


def test_named_stage_becomes_the_root_path(app: FastAPI) -> None:
    answer = call(app, http_event("GET", "/prod/items/3", stage="prod"))
    assert answer["statusCode"] == 200
    assert json_body(answer) == {"id": 3, "q": None, "tags": []}


def test_unhandled_error_answers_500_with_an_error_id_only(app: FastAPI, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="eventual_nb.server"):
        answer = call(app, http_event("GET", "/boom"))
    assert answer["statusCode"] == 500
    body = json_body(answer)
    assert body["error"] == "EventualError"
    assert "the ledger is on fire" not in answer["body"]
    assert "RuntimeError" not in answer["body"]
    logged = [record for record in caplog.records if body["error_id"] in record.getMessage()]
    assert logged
    assert "the ledger is on fire" in str(logged[0].exc_info[1] if logged[0].exc_info else None)


def test_workflow_runs_between_requests_and_internal_routes_take_ids_with_slashes(app: FastAPI) -> None:
    started = call(app, http_event("POST", "/greetings/bob"))
    assert started["statusCode"] == 202
    execution_id = json_body(started)["execution_id"]
    assert execution_id == "la_greet/bob"
    result = call(app, http_event("GET", f"/_eventual/result/{execution_id}", query="timeout=20"))
    assert result["statusCode"] == 200
    assert json_body(result)["status"] == "SUCCEEDED"
    assert json_body(result)["result"] == "BOB"
    encoded = call(app, http_event("GET", f"/_eventual/executions/{quote(execution_id, safe='')}"))
    assert json_body(encoded)["id"] == execution_id
    history = call(app, http_event("GET", f"/_eventual/history/{execution_id}"))
    assert json_body(history)[0]["type"] == "WorkflowStarted"


def test_lambda_response_joins_repeated_headers() -> None:
    answer = lambda_api.lambda_response(
        200,
        [(b"Vary", b"accept"), (b"vary", b"origin"), (b"Set-Cookie", b"a=1"), (b"content-type", b"text/csv")],
        b"x,y\n",
    )
    assert answer == {
        "statusCode": 200,
        "headers": {"vary": "accept, origin", "content-type": "text/csv"},
        "cookies": ["a=1"],
        "body": "x,y\n",
        "isBase64Encoded": False,
    }
    gzipped = lambda_api.lambda_response(
        200, [(b"content-type", b"text/plain"), (b"content-encoding", b"gzip")], b"\x1f\x8b"
    )
    assert gzipped["isBase64Encoded"] is True


def test_lifespan_starts_once_per_process_and_a_failed_startup_is_tried_again() -> None:
    log: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(served: FastAPI) -> AsyncIterator[dict[str, Any]]:
        log.append("startup")
        if log.count("startup") == 1:
            raise RuntimeError("the database is not up yet")
        yield {"greeting": "hello"}
        log.append("shutdown")

    counted = FastAPI(lifespan=lifespan)

    @counted.get("/hello")
    async def hello(request: Request) -> dict[str, str]:
        return {"greeting": request.state.greeting}

    with pytest.raises(ev.EventualError, match=r"startup failed: .*the database is not up yet"):
        call(counted, http_event("GET", "/hello"))
    for _ in range(3):
        assert json_body(call(counted, http_event("GET", "/hello"))) == {"greeting": "hello"}
    assert log == ["startup", "startup"]
    lambda_api.shutdown_app(counted)
    assert log == ["startup", "startup", "shutdown"]
    assert json_body(call(counted, http_event("GET", "/hello"))) == {"greeting": "hello"}
    lambda_api.shutdown_app(counted)


def test_an_app_without_lifespan_is_served() -> None:
    async def bare(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan here")
        request = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"got " + request["body"], "more_body": False})

    answer = call(bare, http_event("POST", "/", body="ping"))
    assert (answer["statusCode"], answer["body"]) == (200, "got ping")
    lambda_api.shutdown_app(bare)


def test_handlers_without_their_stack_say_which_variables_are_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside a deployed stack (no EVENTUAL_* variables) every entry point fails with an error naming what is
    missing, never a NotImplementedError; an unknown EVENTUAL_RUNTIME is named too."""
    from eventual_nb.runtime.aws import functions

    for name in ("EVENTUAL_EXECUTIONS_TABLE", "EVENTUAL_HISTORY_TABLE", "EVENTUAL_WORKFLOW_QUEUE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("EVENTUAL_RUNTIME", "kubernetes")
    with pytest.raises(ev.EventualError, match="'kubernetes' is not a runtime"):
        lambda_api.api_handler(http_event("GET", "/items/1"), None, service=SERVICE.name)
    functions.reset_process_functions()
    for entry in WORKER_ENTRY_POINTS:
        function = {"activity_worker": "activity", "subscription_worker": "subscription"}.get(entry, entry)
        function = "schedule" if function == "schedule_forwarder" else function
        with pytest.raises(ev.EventualError, match="EVENTUAL_EXECUTIONS_TABLE, EVENTUAL_HISTORY_TABLE") as worker:
            lambda_api.function_handler(function, {"Records": []}, None, service=SERVICE.name)
        assert not isinstance(worker.value, NotImplementedError)
    with pytest.raises(ev.EventualError, match="unknown function 'api'"):
        lambda_api.function_handler("api", {"Records": []}, None, service=SERVICE.name)


# ------------------------------------------------------------------------------ an exported-like package

PACKAGE_SOURCE = '''\
"""An exported-like service for the Lambda tests."""

from datetime import datetime

import eventual_nb as ev

SERVICE = ev.Service("lambda-shop")


@ev.schedule("0 9 * * MON-FRI", timezone="Europe/Paris")  # the cron library and the zone database come along
@ev.workflow
async def morning(fired_at: datetime) -> str:
    return fired_at.isoformat()


@ev.activity
async def pack(order: str) -> str:
    return f"packed {order}"


@ev.workflow
async def ship(order: str) -> str:
    return await pack(order)


@ev.api.get("/orders/{order}")
async def get_order(order: str, gift: bool = False) -> dict:
    return {"order": order, "gift": gift}


@ev.api.post("/orders/{order}", status_code=202)
async def place_order(order: str) -> dict:
    handle = await ship.start(order, name=order)
    return {"execution_id": handle.id}
'''

MANIFEST: dict[str, Any] = {
    "format": 1,
    "name": "lambda-shop",
    "package": "lambda_shop",
    "eventual_nb_version": ev.__version__,
    "notebook": "lambda-shop.ipynb",
    "handlers": HANDLERS,
}

#: run as `python -I RUNNER DIR REQUESTS`: DIR alone is put on sys.path (-I ignores PYTHONPATH and does not
#: add the script's own directory); prints the answers to REQUESTS and what each worker entry point raised
RUNNER = """\
import json
import sys

sys.path.insert(0, sys.argv[1])

import handlers
from eventual_nb.errors import EventualError

out = {"version": list(sys.version_info[:2]), "answers": [handlers.api(event, None) for event in json.loads(sys.argv[2])]}
out["modules"] = {name: sys.modules[name].__file__ for name in ("handlers", "eventual_nb", "pydantic_core", "lambda_shop")}
from datetime import datetime, timezone
import lambda_shop

after = datetime(2026, 3, 27, 12, tzinfo=timezone.utc)  # a Friday before Paris moves to summer time
out["next_fires"] = [str(lambda_shop.SERVICE.schedules["morning"].next_fire(after))]
out["next_fires"].append(str(lambda_shop.SERVICE.schedules["morning"].next_fire(datetime.fromisoformat(out["next_fires"][0]))))
out["workers"] = {}
for entry in ("orchestrator", "activity_worker", "subscription_worker", "timer", "schedule_forwarder"):
    try:
        getattr(handlers, entry)({"Records": []}, None)
    except EventualError as exc:
        out["workers"][entry] = [type(exc).__name__, isinstance(exc, NotImplementedError), str(exc)]
out["loaded"] = sorted(sys.modules)
print(json.dumps(out))
"""


def write_export(directory: Path) -> Path:
    """The files of an export that the Lambda side reads: the package, handlers.py and eventual.json."""
    (directory / "lambda_shop").mkdir(parents=True)
    (directory / "lambda_shop" / "__init__.py").write_text(PACKAGE_SOURCE)
    (directory / "handlers.py").write_text(handlers_source(MANIFEST))
    (directory / "eventual.json").write_text(json.dumps(MANIFEST, indent=2, sort_keys=True) + "\n")
    return directory


SHOP_REQUESTS = [
    http_event("GET", "/orders/o-1", query="gift=true"),
    http_event("POST", "/orders/o-2"),
    http_event("GET", "/_eventual/result/ship/o-2", query="timeout=20"),
    http_event("GET", "/nowhere"),
]


def run_handlers(python: str, code_dir: Path, tmp_path: Path, *flags: str) -> dict[str, Any]:
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    environment = {key: value for key, value in os.environ.items() if not key.startswith("EVENTUAL_")}
    environment.update({"EVENTUAL_RUNTIME": "local", "EVENTUAL_DB": str(tmp_path / "lambda.db")})
    result = subprocess.run(
        [python, "-I", *flags, str(runner), str(code_dir), json.dumps(SHOP_REQUESTS)],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


def check_shop_answers(out: dict[str, Any], code_dir: Path) -> None:
    get_order, place_order, result, missing = out["answers"]
    assert (get_order["statusCode"], json.loads(get_order["body"])) == (200, {"order": "o-1", "gift": True})
    assert (place_order["statusCode"], json.loads(place_order["body"])) == (202, {"execution_id": "ship/o-2"})
    execution = json.loads(result["body"])
    assert (execution["status"], execution["result"]) == ("SUCCEEDED", "packed o-2")
    assert missing["statusCode"] == 404
    assert Path(out["modules"]["handlers"]) == code_dir / "handlers.py"
    assert Path(out["modules"]["lambda_shop"]) == code_dir / "lambda_shop" / "__init__.py"
    # the schedule fired on Monday at 09:00 in Paris, which is UTC+2 from that Sunday on
    assert out["next_fires"] == ["2026-03-30 07:00:00+00:00", "2026-03-31 07:00:00+00:00"]
    assert sorted(out["workers"]) == sorted(WORKER_ENTRY_POINTS)
    for entry, (kind, not_implemented, message) in out["workers"].items():
        assert (kind, not_implemented) == ("EventualError", False), entry
        assert "EVENTUAL_EXECUTIONS_TABLE, EVENTUAL_HISTORY_TABLE, EVENTUAL_WORKFLOW_QUEUE_URL not set" in message
    # what a cold start loads: no test harness, nothing only the command line or ServiceClient use
    loaded = set(out["loaded"])
    assert "eventual_nb.runtime.aws.harness" not in loaded
    assert not {name.split(".")[0] for name in loaded} & set(NOT_ON_LAMBDA), sorted(loaded)


# ---------------------------------------------------------------------------------------------- handlers.py


def test_handlers_source_is_deterministic() -> None:
    from exporter import package

    assert package.HANDLERS == HANDLERS  # the manifest the exporter writes names these entry points
    text = handlers_source(MANIFEST)
    assert handlers_source(dict(reversed(list(MANIFEST.items())))) == text
    assert text.startswith(f"# AUTOGENERATED by eventual-nb {ev.__version__}; edit lambda-shop.ipynb, not this file.\n")
    assert text.endswith("\n")
    assert not text.endswith("\n\n")
    assert "import lambda_shop  # registers the service's definitions\n" in text
    assert str(Path.cwd()) not in text
    assert str(Path.home()) not in text
    defined = set(compile(text, "handlers.py", "exec").co_names)
    assert defined >= {handler.split(".")[1] for handler in HANDLERS.values()}
    renamed = handlers_source({**MANIFEST, "notebook": "other.ipynb"})
    assert [line for line in renamed.splitlines() if line not in text.splitlines()] == [renamed.splitlines()[0]]


def test_handlers_source_refuses_a_bad_manifest() -> None:
    with pytest.raises(ExportError, match="not a Python module name"):
        handlers_source({**MANIFEST, "package": "lambda-shop"})
    with pytest.raises(ExportError, match="by file name only"):
        handlers_source({**MANIFEST, "notebook": "/home/someone/lambda-shop.ipynb"})
    with pytest.raises(ExportError, match="no 'name'"):
        handlers_source({key: value for key, value in MANIFEST.items() if key != "name"})


def test_generated_handlers_serve_the_api_in_a_clean_process(tmp_path: Path) -> None:
    export = write_export(tmp_path / "export")
    out = run_handlers(sys.executable, export, tmp_path)
    check_shop_answers(out, export)


# -------------------------------------------------------------------------------------------------- the zip


def lambda_python() -> str:
    """Python 3.12, as on Lambda: the zip's compiled extensions (pydantic_core) are built for CPython 3.12."""
    candidates = sorted(Path("/root/.pyenv/versions").glob("3.12*/bin/python"))
    for candidate in [*map(str, candidates), shutil.which("python3.12")]:
        if not candidate:
            continue
        probe = subprocess.run(
            [candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 12))"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip() == "True":
            return candidate
    pytest.fail(
        "no Python 3.12 on this machine: the lambda.zip holds CPython 3.12 wheels, so importing its handlers needs "
        "3.12 (install one, e.g. `pyenv install 3.12`, or put python3.12 on PATH)"
    )


class Builds:
    def __init__(self, export: Path, first: Path, second: Path) -> None:
        self.export = export
        self.first_path, self.second_path = first, second
        first.parent.mkdir()
        second.parent.mkdir()
        self.first = build_lambda_zip(export, first)
        self.second = build_lambda_zip(export, second)


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    """The expensive part, once per session: two builds of the same export in this environment."""
    root = tmp_path_factory.mktemp("lambda-zip")
    export = write_export(root / "export")
    return Builds(export, root / "first" / "lambda.zip", root / "second" / "lambda.zip")


def test_zip_is_reproducible(builds: Builds) -> None:
    assert builds.first == builds.second
    assert builds.first_path.read_bytes() == builds.second_path.read_bytes()
    assert builds.first["s3_key"] == f"lambda/{builds.first['sha256']}.zip"
    assert builds.first["size"] == builds.first_path.stat().st_size
    assert builds.first["size"] < SIZE_LIMIT
    assert sorted(path.name for path in builds.first_path.parent.iterdir()) == ["lambda.zip"]


def test_zip_layout(builds: Builds) -> None:
    with zipfile.ZipFile(builds.first_path) as archive:
        entries = archive.infolist()
    names = [entry.filename for entry in entries]
    assert names == sorted(names)
    for entry in entries:
        assert entry.date_time == (1980, 1, 1, 0, 0, 0), entry.filename
        assert entry.external_attr >> 16 == 0o100644, entry.filename
        assert entry.compress_type == zipfile.ZIP_DEFLATED, entry.filename
        assert entry.extra == b"", entry.filename
        assert not entry.is_dir(), entry.filename
    tops = {name.split("/")[0] for name in names}
    assert {"handlers.py", "lambda_shop", "eventual_nb", "pydantic", "pydantic_core", "fastapi", "starlette"} <= tops
    assert "eventual_nb/runtime/aws/lambda_api.py" in names
    for absent in ("kernel_ext", "exporter", "boto3", "botocore", "bin", "tests", *NOT_ON_LAMBDA):
        assert absent not in tops
    distributions = {top.removesuffix(".dist-info").split("-")[0].lower() for top in tops if top.endswith(".dist-info")}
    assert not distributions & {*NOT_ON_LAMBDA, "markdown_it_py"}, distributions
    for name in names:
        assert "__pycache__" not in name, name
        assert not name.endswith(".pyc"), name
        assert not name.endswith((".dist-info/RECORD", ".dist-info/direct_url.json", ".dist-info/INSTALLER")), name
    assert any(name.startswith("pydantic_core/") and "cpython-312-x86_64-linux-gnu" in name for name in names)
    pinned = {pin.split("==")[0].replace("-", "_").lower(): pin.split("==")[1] for pin in lambda_requirements()}
    for name in names:
        top = name.split("/")[0]
        if top.endswith(".dist-info") and not top.startswith("eventual_nb-"):
            distribution, version = top.removesuffix(".dist-info").split("-", 1)
            assert pinned.get(distribution.lower()) == version, top


def test_handlers_import_from_the_unpacked_zip_on_python_3_12(builds: Builds, tmp_path: Path) -> None:
    python = lambda_python()
    unpacked = tmp_path / "task"
    with zipfile.ZipFile(builds.first_path) as archive:
        archive.extractall(unpacked)
    # -S as well as -I: not even the 3.12 interpreter's own site-packages, only the zip and the standard library
    out = run_handlers(python, unpacked, tmp_path, "-S")
    assert out["version"] == [3, 12]
    for module in ("eventual_nb", "pydantic_core"):
        assert Path(out["modules"][module]).is_relative_to(unpacked), out["modules"]
    check_shop_answers(out, unpacked)


def test_lambda_requirements_are_what_the_functions_import() -> None:
    """pydantic and fastapi with everything they require, pinned to what is installed; not the rest of the
    core install (the zip stays small, and a cold start does not pay for the command line)."""
    import importlib.metadata

    pinned = {pin.split("==")[0]: pin.split("==")[1] for pin in lambda_requirements()}
    core = {
        requirement.split(">")[0].split("=")[0].split(" ")[0]
        for requirement in importlib.metadata.requires("eventual-nb") or []
        if "extra" not in requirement
    }
    assert LAMBDA_DEPENDENCIES < core
    assert LAMBDA_DEPENDENCIES <= set(pinned)
    assert {"starlette", "pydantic-core", "anyio", "typing-extensions"} <= set(pinned)
    assert not set(pinned) & {
        "rich",
        "pygments",
        "markdown-it-py",
        "mdurl",
        "uvicorn",
        "click",
        "h11",
        "httpx",
        "httpcore",
        "certifi",
    }
    for name, version in pinned.items():
        assert importlib.metadata.version(name) == version
