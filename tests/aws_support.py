"""Shared plumbing of the AWS runtime tests: moto's server on loopback, dummy credentials, the stack.

Never real AWS: moto's `ThreadedMotoServer` is started on 127.0.0.1, every client names that endpoint
explicitly, credentials are dummies, and `require_local` FAILS (never skips) a module whose endpoint is
anything but `http://127.0.0.1:<port>`.

A test module binds the fixtures under their names (`moto_endpoint = aws_support.moto_endpoint`,
`dummy_credentials = aws_support.dummy_credentials`; a plain import would trip ruff's F401/F811), so
each module gets its own server (module scope); call `reset_moto` at the start of each test's setup.

`deploy_stack` deploys the exported CloudFormation template itself into moto (with `Emulator=true`,
as `eventual-nb deploy` does against the emulator), adds the Scheduler group moto's CloudFormation
skips, and returns the `EVENTUAL_*` environment the stack's functions get. So the runtime's tests run
against exactly the queues, bus, rules and log group a deploy creates.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest

from exporter.deploy import emulate_recurring_schedules
from exporter.handlers import HANDLERS
from exporter.template import build_template, default_source_bus

REGION = "us-east-1"
STACK = "stores-test"


RETRY_ONCE = {"max_attempts": 1, "initial_interval": 1.0, "backoff": 2.0, "max_interval": 300.0, "non_retryable": []}


def require_local(endpoint: str | None) -> str:
    """Refuse (fail, never skip) any endpoint that is not moto on this machine's loopback."""
    parts = urlsplit(endpoint or "")
    if parts.scheme != "http" or parts.hostname != "127.0.0.1" or not parts.port:
        pytest.fail(f"refusing to run AWS tests against {endpoint!r}: only http://127.0.0.1:<port> (moto)")
    assert endpoint is not None
    return endpoint


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield require_local(f"http://{host}:{port}")
    finally:
        server.stop()


@pytest.fixture
def dummy_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """No profile, no ambient endpoint, dummy keys: a stray client could never reach a real account."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")


def reset_moto(endpoint: str) -> None:
    """Forget every resource of every service (a fresh account for each test)."""
    reset = urllib.request.Request(f"{require_local(endpoint)}/moto-api/reset", method="POST")
    with urllib.request.urlopen(reset, timeout=30) as response:
        assert response.status == 200


def client_kwargs(endpoint: str) -> dict[str, Any]:
    """What `boto3.client(...)` / `AwsClients.from_environment(...)` get: moto's endpoint, named explicitly."""
    return {"endpoint_url": require_local(endpoint), "region_name": REGION}


def aws_client(endpoint: str, service: str) -> Any:
    return boto3.client(service, **client_kwargs(endpoint))


def manifest(
    name: str = "stores-test",
    subscriptions: list[dict[str, Any]] | None = None,
    schedules: list[dict[str, Any]] | None = None,
    entities: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The smallest manifest `build_template` accepts; a subscription is `{"name", "events"[, "source"]}`, a
    schedule its `Schedule.spec()`, an entity its `Entity.spec()` (any entity gives the stack its entities
    table)."""
    items = [{"source": None, "retry": RETRY_ONCE, **subscription} for subscription in (subscriptions or [])]
    return {
        "name": name,
        "handlers": dict(HANDLERS),
        "service": {"subscriptions": items, "schedules": list(schedules or []), "entities": entities or []},
    }


def dumped(template: dict[str, Any]) -> str:
    """A template as `template.json` holds it."""
    return json.dumps(template, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def assert_lint_clean(template: dict[str, Any]) -> None:
    """cfn-lint (offline) finds no error in `template`; its warnings are printed."""
    from cfnlint.api import lint
    from cfnlint.config import ManualArgs

    matches = lint(dumped(template), config=ManualArgs(regions=["us-east-1"]))
    errors = [match for match in matches if match.rule.severity == "error"]
    for match in matches:
        if match.rule.severity != "error":
            print(f"cfn-lint {match.rule.severity} {match.rule.id} line {match.linenumber}: {match.message}")
    assert not errors, "\n".join(f"{match.rule.id} line {match.linenumber}: {match.message}" for match in errors)


def template_tables(stack: str = STACK) -> dict[str, dict[str, Any]]:
    """`create_table` arguments for the two tables, straight from the template of a tiny service."""
    template = build_template(manifest())

    def resolve(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {"Fn::Sub"} and isinstance(value["Fn::Sub"], str):
                return value["Fn::Sub"].replace("${AWS::StackName}", stack)
            assert not any(key.startswith(("Fn::", "Ref")) for key in value), value
            return {key: resolve(item) for key, item in value.items()}
        if isinstance(value, list):
            return [resolve(item) for item in value]
        return value

    return {name: resolve(template["Resources"][name]["Properties"]) for name in ("ExecutionsTable", "HistoryTable")}


@dataclass
class Stack:
    """A deployed (emulated) stack: its name, outputs and the functions' merged `EVENTUAL_*` variables."""

    name: str
    outputs: dict[str, str]
    environment: dict[str, str]
    resources: dict[str, str]


def ensure_source_buses(endpoint: str, service: str, subscriptions: list[dict[str, Any]]) -> None:
    """The buses of the other services `subscriptions` name as their source, where their rules go: `eventual-nb
    deploy` wants the source's stack deployed first; a test that deploys only the subscriber stands a bare bus
    of the default name in for it (left as it is when the source's own stack made it)."""
    events = aws_client(endpoint, "events")
    for source in sorted({item["source"] for item in subscriptions if item.get("source") not in (None, service)}):
        with contextlib.suppress(events.exceptions.ResourceAlreadyExistsException):
            events.create_event_bus(Name=default_source_bus(source))


def deploy_stack(
    endpoint: str,
    stack: str = "harness-test",
    service: str = "harness-svc",
    subscriptions: list[dict[str, Any]] | None = None,
    schedules: list[dict[str, Any]] | None = None,
    entities: list[dict[str, Any]] | None = None,
) -> Stack:
    """Deploy the service's template into moto with Emulator=true, plus what it skips there, as `eventual-nb
    deploy` does: the Scheduler group and the recurring schedules of the service's `schedules`.

    The returned environment is the union of every function's variables (the orchestrator's Scheduler
    settings, the subscription function's queue map), i.e. what a process serving all functions sees."""
    template = build_template(manifest(service, subscriptions, schedules, entities))
    ensure_source_buses(endpoint, service, subscriptions or [])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("handlers.py", "def api(event, context):\n    return {}\n")
    s3 = aws_client(endpoint, "s3")
    bucket = f"{stack}-code"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="lambda/tiny.zip", Body=buffer.getvalue())
    cloudformation = aws_client(endpoint, "cloudformation")
    cloudformation.create_stack(
        StackName=stack,
        TemplateBody=json.dumps(template),
        Parameters=[
            {"ParameterKey": "Emulator", "ParameterValue": "true"},
            {"ParameterKey": "CodeBucket", "ParameterValue": bucket},
            {"ParameterKey": "CodeKey", "ParameterValue": "lambda/tiny.zip"},
        ],
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"],
    )
    cloudformation.get_waiter("stack_create_complete").wait(
        StackName=stack, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
    )
    (described,) = cloudformation.describe_stacks(StackName=stack)["Stacks"]
    outputs = {output["OutputKey"]: output["OutputValue"] for output in described["Outputs"]}
    resources = {
        item["LogicalResourceId"]: item["PhysicalResourceId"]
        for item in cloudformation.describe_stack_resources(StackName=stack)["StackResources"]
        if "LogicalResourceId" in item and "PhysicalResourceId" in item
    }
    functions = aws_client(endpoint, "lambda")
    environment: dict[str, str] = {}
    for logical_id, physical_id in resources.items():
        if logical_id.endswith("Function"):
            configuration = functions.get_function_configuration(FunctionName=physical_id)
            environment.update(configuration.get("Environment", {}).get("Variables", {}))
    # the Scheduler group and the recurring schedules are `Real`-only in the template; the emulator's stand-in
    # creates them (`exporter.deploy` does the same for `eventual-nb deploy --endpoint-url`)
    scheduler = aws_client(endpoint, "scheduler")
    scheduler.create_schedule_group(Name=environment["EVENTUAL_SCHEDULE_GROUP"])
    forwarder = functions.get_function_configuration(FunctionName=resources["ScheduleForwarderFunction"])
    role = aws_client(endpoint, "iam").get_role(RoleName=resources["SchedulerRole"])["Role"]
    emulate_recurring_schedules(
        scheduler,
        template,
        group=environment["EVENTUAL_SCHEDULE_GROUP"],
        target_arn=forwarder["FunctionArn"],
        role_arn=role["Arn"],
    )
    return Stack(stack, outputs, environment, resources)
