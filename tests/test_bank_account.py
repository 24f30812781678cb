"""The bank-account tutorial's last step, for real: notebooks/bank-account.ipynb exported with `--zip`,
deployed into moto with `eventual-nb deploy`, and its deployed code run as Lambda would run it (see
tests/test_deploy.py for the container: Python 3.12, only the deployed zip and Lambda's boto3 on the path,
the functions' own environment, moto as the endpoint). Through the API handler the test opens two
accounts, makes one transfer that goes through, one that is cancelled within its window and one whose
execution is cancelled after its debit (and is refunded); the harness drives the functions; the accounts
then are entities in the stack's entities table and their statements were written by the subscription,
fed by the bus.

The notebook itself (including its TestEnvironment tests) runs in CI through `eventual-nb test`; this
module checks what only AWS exercises: the tutorial's entities in DynamoDB and the deploy of the tutorial.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests import aws_support
from tests.aws_support import REGION
from tests.test_deploy import (
    SUBPROCESS_TIMEOUT,
    aws_environment,
    cli,
    deploy_cli,
    deployed_code,
    function_environment,
    lambda_provided,
)
from tests.test_handlers_bundle import lambda_python

moto_endpoint = aws_support.moto_endpoint
dummy_credentials = aws_support.dummy_credentials

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "bank-account.ipynb"
STACK = "bank-account-test"

_CONTAINER = r"""
import json, sys

code, provided = sys.argv[1:3]
sys.path[:0] = [code, provided]
sys.dont_write_bytecode = True

import handlers  # the generated entry points, from the deployed zip
from eventual_nb.runtime.aws.harness import harness_for


def call(method, target, body=None):
    path, _, query = target.partition("?")
    event = {
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": query,
        "headers": {"content-type": "application/json", "host": "bank.example"},
        "requestContext": {"http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1"},
                           "domainName": "bank.example", "stage": "$default", "requestId": "r", "accountId": "123456789012"},
        "isBase64Encoded": False,
    }
    if body is not None:
        event["body"] = json.dumps(body)
    answer = handlers.api(event, None)
    return answer["statusCode"], json.loads(answer["body"]) if answer.get("body") else None


harness = harness_for(handlers)  # Lambda's queue triggers over the generated entry points
out = {}
status, alice = call("POST", "/accounts", {"balance": 10000})
status_b, bob = call("POST", "/accounts", {"balance": 0})
out["opened"] = [status, status_b]
out["refused"] = call("POST", "/accounts", {"balance": -1})
a, b = alice["account_id"], bob["account_id"]

status, started = call("POST", "/transfers", {"source": a, "target": b, "amount": 2500, "cancel_window": 0})
out["started"] = status
harness.run_until_idle(max_rounds=100, wait_seconds=30.0)
out["completed"] = call("GET", "/_eventual/executions/" + started["execution_id"])[1]

status, second = call("POST", "/transfers", {"source": a, "target": b, "amount": 5000, "cancel_window": 600})
harness.run_until_idle(max_rounds=100, wait_seconds=1.0)  # debited; its 10-minute window is open
out["during_window"] = call("GET", "/accounts/" + a)[1]["balance"]
out["cancel"] = call("POST", "/transfers/" + second["execution_id"] + "/cancel?reason=wrong+amount")[0]
harness.run_until_idle(max_rounds=100, wait_seconds=1.0)
out["cancelled"] = call("GET", "/_eventual/executions/" + second["execution_id"])[1]

status, third = call("POST", "/transfers", {"source": a, "target": b, "amount": 1000, "cancel_window": 600})
harness.run_until_idle(max_rounds=100, wait_seconds=1.0)  # debited; its window is open
out["before_execution_cancel"] = call("GET", "/accounts/" + a)[1]["balance"]
out["execution_cancel"] = call("POST", "/_eventual/cancel/" + third["execution_id"])[0]
harness.run_until_idle(max_rounds=100, wait_seconds=1.0)
out["execution_cancelled"] = call("GET", "/_eventual/executions/" + third["execution_id"])[1]
out["alice"] = call("GET", "/accounts/" + a)[1]
out["bob"] = call("GET", "/accounts/" + b)[1]
out["names"] = [a, b]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("bank-account") / "export"
    proc = cli("export", str(NOTEBOOK), "-o", str(directory), "--zip", "--json", env=aws_environment())
    assert proc.returncode == 0, proc.stderr
    return directory


def run_container(endpoint: str, tmp_path: Path) -> dict[str, Any]:
    code = deployed_code(endpoint, STACK, tmp_path)
    provided = lambda_provided(tmp_path)
    environment = aws_environment(endpoint, **function_environment(endpoint, STACK))
    proc = subprocess.run(
        [lambda_python(), "-I", "-S", "-c", _CONTAINER, str(code), str(provided)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        env=environment,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_the_tutorial_deploys_and_moves_money_through_the_stack(
    export_dir: Path, moto_endpoint: str, dummy_credentials: None, tmp_path: Path
) -> None:
    aws_support.reset_moto(moto_endpoint)
    manifest = json.loads((export_dir / "eventual.json").read_text())
    assert manifest["name"] == "bank"
    entities = {entity["name"]: entity["key"] for entity in manifest["service"]["entities"]}
    assert entities == {"accounts": ["id"], "operations": ["key"], "statement_lines": ["account", "transfer_id"]}
    proc = deploy_cli(export_dir, moto_endpoint, "--json", stack=STACK)
    assert proc.returncode == 0, proc.stderr

    ran = run_container(moto_endpoint, tmp_path)
    assert ran["opened"] == [201, 201]
    status, refused = ran["refused"]
    assert status == 422, refused
    assert refused["detail"][0]["loc"] == ["body", "balance"], refused
    assert ran["started"] == 202
    assert ran["completed"]["status"] == "SUCCEEDED", ran["completed"]
    assert ran["completed"]["result"] == {"status": "completed", "detail": ""}
    assert ran["during_window"] == 7500 - 5000  # the second transfer's money left at once
    assert ran["cancel"] == 202
    assert ran["cancelled"]["status"] == "SUCCEEDED", ran["cancelled"]
    assert ran["cancelled"]["result"] == {"status": "cancelled", "detail": "wrong amount"}
    # cancelling the third transfer's execution after its debit refunds it, then ends CANCELLED
    assert ran["before_execution_cancel"] == 7500 - 1000
    assert ran["execution_cancel"] == 202
    assert ran["execution_cancelled"]["status"] == "CANCELLED", ran["execution_cancelled"]
    alice, bob = ran["names"]
    assert ran["alice"]["balance"] == 7500
    assert ran["bob"]["balance"] == 2500
    # the subscription (bus -> rule -> queue -> function) wrote both statements
    assert ran["bob"]["statement"] == [f"+25.00 from {alice}"]
    assert ran["alice"]["statement"] == [
        f"-25.00 to {bob}",
        f"cancelled: 50.00 to {bob} (wrong amount)",
        f"cancelled: 10.00 to {bob} (the execution was cancelled)",
    ]

    # the accounts are entities: items of the stack's entities table (pk "<entity>#<key>", sk "#" for
    # one-part keys), at the version their last transaction wrote; the executions table holds none
    dynamodb = aws_support.aws_client(moto_endpoint, "dynamodb")
    item = dynamodb.get_item(
        TableName=f"{STACK}-entities", Key={"pk": {"S": f"accounts#{alice}"}, "sk": {"S": "#"}}, ConsistentRead=True
    )["Item"]
    assert json.loads(item["value"]["S"]) == {"id": alice, "balance": 7500}
    assert item["v"] == {"N": "6"}  # opened, then debited three times and refunded twice
    executions = dynamodb.scan(TableName=f"{STACK}-executions")["Items"]
    assert not [row for row in executions if not row["pk"]["S"].startswith("exec#")]

    proc = cli("destroy", "--stack", STACK, "--endpoint-url", moto_endpoint, "--region", REGION, env=aws_environment())
    assert proc.returncode == 0, proc.stderr
