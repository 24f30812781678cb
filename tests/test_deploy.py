"""`eventual-nb deploy` / `destroy` (exporter/deploy.py) against moto's server, as real subprocesses.

The deploy path end to end: the sample notebook (tests/fixtures/deploy-sample.ipynb) is exported with
`--zip`, deployed with `eventual-nb deploy DIR --stack NAME --endpoint-url <moto>` (so `Emulator=true`),
and then run the way Lambda would run it: a "container" process on Python 3.12 (Lambda's version; the zip
holds cp312 wheels) whose `sys.path` is only the zip *as deployed* (read back from the code bucket) and the
boto3 that the Lambda runtime provides, with the stack functions' `EVENTUAL_*` variables (read from moto's
Lambda function configurations) and `AWS_ENDPOINT_URL` pointing at moto. In it, `handlers.api` receives an
API Gateway payload-2.0 event that starts the workflow, the `Harness` stands in for Lambda's queue triggers
over the generated entry points until the stack is idle, and `handlers.api` then reads the execution back.
Finally `eventual-nb destroy` removes the stack.

Never real AWS: every process gets moto's loopback endpoint and dummy credentials, with profile and
config files pointed at /dev/null (tests/aws_support.py `require_local` refuses anything else).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from eventual_nb.runtime.aws.schedules import scheduler_name
from tests import aws_support
from tests.aws_support import REGION, require_local, reset_moto
from tests.test_handlers_bundle import NOT_ON_LAMBDA, http_event, lambda_python

moto_endpoint = aws_support.moto_endpoint

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tests" / "fixtures" / "deploy-sample.ipynb"
STACK = "deploy-sample-test"
#: what the Lambda Python runtime provides beside the zip (the zip leaves boto3 out on purpose)
LAMBDA_PROVIDED = ("boto3", "botocore", "jmespath", "s3transfer", "dateutil", "urllib3", "six.py")
SUBPROCESS_TIMEOUT = 300


def aws_environment(endpoint: str | None = None, **extra: str) -> dict[str, str]:
    """A child's environment that can only reach moto: dummy keys, no profile, no config or credentials
    file, no ambient endpoint, no EVENTUAL_* leftovers."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "EVENTUAL_")) and key not in ("PYTHONPATH",)
    }
    environment.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    if endpoint is not None:
        environment["AWS_ENDPOINT_URL"] = require_local(endpoint)
    environment.update(extra)
    return environment


def cli(*args: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventual_nb.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        env=env,
        check=False,
    )


def deploy_cli(directory: Path, endpoint: str, *extra: str, stack: str = STACK) -> subprocess.CompletedProcess[str]:
    return cli(
        "deploy",
        str(directory),
        "--stack",
        stack,
        "--endpoint-url",
        require_local(endpoint),
        "--region",
        REGION,
        *extra,
        env=aws_environment(),
    )


def client(endpoint: str, service: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=require_local(endpoint),
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def stack_names(endpoint: str) -> list[str]:
    stacks = client(endpoint, "cloudformation").describe_stacks()["Stacks"]
    return sorted(stack["StackName"] for stack in stacks if stack["StackStatus"] != "DELETE_COMPLETE")


def bucket_names(endpoint: str) -> list[str]:
    return sorted(bucket["Name"] for bucket in client(endpoint, "s3").list_buckets().get("Buckets", []))


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample notebook exported with its lambda.zip (the slow part: once per module)."""
    directory = tmp_path_factory.mktemp("deploy-sample") / "export"
    proc = cli("export", str(SAMPLE), "-o", str(directory), "--zip", "--json", env=aws_environment())
    assert proc.returncode == 0, proc.stderr
    assert "lambda.zip" in json.loads(proc.stdout)["files"]
    return directory


@pytest.fixture
def moto(moto_endpoint: str) -> str:
    reset_moto(moto_endpoint)
    return moto_endpoint


# ---------------------------------------------------------------------------------------- the container

_CONTAINER = r"""
import json, sys

code, provided, request_path = sys.argv[1:4]
sys.path[:0] = [code, provided]
sys.dont_write_bytecode = True
requests = json.loads(open(request_path, encoding="utf-8").read())

import handlers  # the generated entry points, from the deployed zip
from eventual_nb.runtime.aws.harness import harness_for

started = handlers.api(requests["start"], None)
harness = harness_for(handlers)  # Lambda's queue triggers over the generated entry points
report = harness.run_until_idle(max_rounds=50, wait_seconds=30.0)
execution = handlers.api(requests["execution"], None)
logs = handlers.api(requests["logs"], None)
print(json.dumps({
    "python": list(sys.version_info[:2]),
    "modules": {name: sys.modules[name].__file__ for name in ("handlers", "eventual_nb", "boto3")},
    "started": started,
    "invocations": [invocation.function for invocation in report.invocations],
    "execution": execution,
    "logs": logs,
    "loaded": sorted({name.split(".")[0] for name in sys.modules}),
}))
"""


def function_environment(endpoint: str, stack: str) -> dict[str, str]:
    """The union of the stack functions' variables, as moto's Lambda reports them (what Lambda would set)."""
    cloudformation, functions = client(endpoint, "cloudformation"), client(endpoint, "lambda")
    variables: dict[str, str] = {}
    for item in cloudformation.describe_stack_resources(StackName=stack)["StackResources"]:
        if item.get("ResourceType") == "AWS::Lambda::Function" and item.get("PhysicalResourceId"):
            configuration = functions.get_function_configuration(FunctionName=item["PhysicalResourceId"])
            variables.update(configuration["Environment"]["Variables"])
    return variables


def deployed_code(endpoint: str, stack: str, into: Path) -> Path:
    """The zip the stack's functions name (CodeBucket/CodeKey), unpacked as Lambda unpacks it."""
    (described,) = client(endpoint, "cloudformation").describe_stacks(StackName=stack)["Stacks"]
    parameters = {item["ParameterKey"]: item["ParameterValue"] for item in described["Parameters"]}
    body = client(endpoint, "s3").get_object(Bucket=parameters["CodeBucket"], Key=parameters["CodeKey"])["Body"]
    archive = into / "lambda.zip"
    archive.write_bytes(body.read())
    code = into / "task"
    with zipfile.ZipFile(archive) as opened:
        opened.extractall(code)
    return code


def lambda_provided(into: Path) -> Path:
    """boto3 and its pure-Python dependencies, as the Lambda runtime provides them (links into this venv)."""
    import boto3 as installed

    site = Path(installed.__file__).resolve().parent.parent
    provided = into / "runtime"
    provided.mkdir()
    for name in LAMBDA_PROVIDED:
        (provided / name).symlink_to(site / name)
    return provided


def run_container(endpoint: str, stack: str, tmp_path: Path, requests: dict[str, Any]) -> dict[str, Any]:
    code = deployed_code(endpoint, stack, tmp_path)
    provided = lambda_provided(tmp_path)
    request_path = tmp_path / "requests.json"
    request_path.write_text(json.dumps(requests), encoding="utf-8")
    environment = aws_environment(endpoint, **function_environment(endpoint, stack))
    proc = subprocess.run(
        [lambda_python(), "-I", "-S", "-c", _CONTAINER, str(code), str(provided), str(request_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        env=environment,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("handlers", "eventual_nb"):
        assert Path(result["modules"][name]).is_relative_to(code), result["modules"]
    # the API function and the orchestrator ran without what only the command line and ServiceClient use
    # (the zip does not carry it: an import of it would have failed the run)
    assert not set(result["loaded"]) & set(NOT_ON_LAMBDA), result["loaded"]
    assert not {path.name for path in code.iterdir()} & set(NOT_ON_LAMBDA)
    return result


def body_of(answer: dict[str, Any]) -> Any:
    assert answer["isBase64Encoded"] is False, answer
    return json.loads(answer["body"])


# ------------------------------------------------------------------------------------------- acceptance


def test_an_exported_service_deploys_runs_a_workflow_and_is_destroyed(
    export_dir: Path, moto: str, tmp_path: Path
) -> None:
    proc = deploy_cli(export_dir, moto, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["action"] == "created"
    assert result["status"] == "CREATE_COMPLETE"
    assert result["emulator"] is True
    assert result["bucket"] == "eventual-nb-code-123456789012-us-east-1"
    manifest = json.loads((export_dir / "eventual.json").read_text())
    assert result["code_key"] == manifest["lambda_zip"]["s3_key"]
    assert result["outputs"]["ExecutionsTableName"] == f"{STACK}-executions"
    assert result["outputs"]["WorkflowQueueUrl"].endswith(f"/{STACK}-workflow.fifo")
    assert result["outputs"]["ScheduleGroupName"] == f"{STACK}-timers"

    # what the deploy left: the stack in emulator mode, a random signing key in every function, the group
    cloudformation = client(moto, "cloudformation")
    (described,) = cloudformation.describe_stacks(StackName=STACK)["Stacks"]
    parameters = {item["ParameterKey"]: item["ParameterValue"] for item in described["Parameters"]}
    assert parameters["Emulator"] == "true"
    variables = function_environment(moto, STACK)
    assert len(variables["EVENTUAL_SIGNING_KEY"]) >= 32
    assert variables["EVENTUAL_SERVICE"] == "deploy-sample"
    scheduler = client(moto, "scheduler")
    scheduler.get_schedule_group(Name=f"{STACK}-timers")
    # the notebook's `%%workflow --schedule` is an EventBridge schedule, made in the emulator from the template
    nightly = scheduler.get_schedule(Name=scheduler_name("nightly"), GroupName=f"{STACK}-timers")
    assert (nightly["ScheduleExpression"], nightly["ScheduleExpressionTimezone"], nightly["State"]) == (
        "cron(0 6 * * ? *)",
        "Europe/Paris",
        "ENABLED",
    )
    forwarder = next(
        item["PhysicalResourceId"]
        for item in cloudformation.describe_stack_resources(StackName=STACK)["StackResources"]
        if item.get("LogicalResourceId") == "ScheduleForwarderFunction"
    )
    assert nightly["Target"]["Arn"].endswith(f":function:{forwarder}")
    assert json.loads(nightly["Target"]["Input"]) == {
        "eventual_schedule": "nightly",
        "scheduled_time": "<aws.scheduler.scheduled-time>",
    }

    # the deployed code runs: start through the API, the harness drives the functions, read it back
    start = http_event(
        "POST", "/welcome", headers={"content-type": "application/json"}, body=json.dumps({"name": "ada"})
    )
    requests = {
        "start": start,
        "execution": http_event("GET", "/_eventual/executions/welcome/ada"),
        "logs": http_event("GET", "/_eventual/logs/welcome/ada"),
    }
    ran = run_container(moto, STACK, tmp_path, requests)
    assert ran["python"] == [3, 12]
    assert ran["started"]["statusCode"] == 202, ran["started"]
    assert body_of(ran["started"]) == {"execution_id": "welcome/ada"}
    assert "orchestrator" in ran["invocations"], ran["invocations"]
    assert "activity" in ran["invocations"], ran["invocations"]
    assert ran["execution"]["statusCode"] == 200, ran["execution"]
    execution = body_of(ran["execution"])
    assert execution["status"] == "SUCCEEDED", execution
    assert execution["result"] == {"name": "ada", "greeting": "hello ada"}
    assert any("greeting ada" in entry["message"] for entry in body_of(ran["logs"])), ran["logs"]

    proc = cli("destroy", "--stack", STACK, "--endpoint-url", moto, "--region", REGION, "--json", env=aws_environment())
    assert proc.returncode == 0, proc.stderr
    destroyed = json.loads(proc.stdout)
    assert destroyed["status"] == "DELETE_COMPLETE"
    assert destroyed["stack_id"] == described["StackId"]
    with pytest.raises(ClientError, match="does not exist"):
        cloudformation.describe_stacks(StackName=STACK)
    (gone,) = cloudformation.describe_stacks(StackName=described["StackId"])["Stacks"]
    assert gone["StackStatus"] == "DELETE_COMPLETE"
    assert client(moto, "lambda").list_functions()["Functions"] == []
    with pytest.raises(ClientError, match="ResourceNotFound"):
        client(moto, "scheduler").get_schedule_group(Name=f"{STACK}-timers")
    # the code bucket stays: it is shared by every stack of the account and region
    assert result["bucket"] in bucket_names(moto)

    proc = cli("destroy", "--stack", STACK, "--endpoint-url", moto, "--region", REGION, env=aws_environment())
    assert proc.returncode == 1
    assert f"there is no stack '{STACK}' in {REGION}" in proc.stderr


def test_a_second_deploy_is_up_to_date_and_a_changed_template_is_an_update_keeping_the_key(
    export_dir: Path, moto: str, tmp_path: Path
) -> None:
    bucket = "my-own-code-bucket"
    first = deploy_cli(export_dir, moto, "--bucket", bucket, "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["bucket"] == bucket
    key = function_environment(moto, STACK)["EVENTUAL_SIGNING_KEY"]

    again = deploy_cli(export_dir, moto, "--bucket", bucket)
    assert again.returncode == 0, again.stderr
    assert f"stack {STACK} is up to date" in again.stdout
    assert "already in s3://" in again.stdout  # the zip was not uploaded twice
    assert "WorkflowQueueUrl" in again.stdout  # the outputs table
    # the empty change set was deleted: only the executed one is left
    change_sets = client(moto, "cloudformation").list_change_sets(StackName=STACK)["Summaries"]
    assert len(change_sets) <= 1, change_sets

    # a changed template (here: one more log group) goes through an UPDATE change set
    changed = tmp_path / "changed"
    changed.mkdir()
    for name in ("eventual.json", "lambda.zip"):
        (changed / name).write_bytes((export_dir / name).read_bytes())
    template = json.loads((export_dir / "template.json").read_text())
    template["Resources"]["AuditLogGroup"] = {
        "Type": "AWS::Logs::LogGroup",
        "Properties": {"LogGroupName": {"Fn::Sub": "/eventual/${AWS::StackName}/audit"}, "RetentionInDays": 90},
    }
    (changed / "template.json").write_text(json.dumps(template))
    updated = deploy_cli(changed, moto, "--bucket", bucket, "--json")
    assert updated.returncode == 0, updated.stderr
    assert json.loads(updated.stdout)["action"] == "updated"
    assert json.loads(updated.stdout)["status"] == "UPDATE_COMPLETE"
    assert function_environment(moto, STACK)["EVENTUAL_SIGNING_KEY"] == key  # UsePreviousValue
    groups = client(moto, "logs").describe_log_groups(logGroupNamePrefix=f"/eventual/{STACK}/audit")
    assert [group.get("retentionInDays") for group in groups["logGroups"]] == [90]
    assert bucket_names(moto) == [bucket]


# ---------------------------------------------------------------------------------------------- refusals


def test_a_bad_stack_name_is_refused_before_anything_is_created(export_dir: Path, moto: str) -> None:
    for name, says in (("1stack", "is not a CloudFormation stack name"), ("s" * 60, "at most")):
        proc = deploy_cli(export_dir, moto, stack=name)
        assert proc.returncode == 1, proc.stderr
        assert says in proc.stderr
        assert "Traceback" not in proc.stderr
    assert stack_names(moto) == []
    assert bucket_names(moto) == []


def test_an_export_without_its_zip_says_how_to_build_it(export_dir: Path, moto: str, tmp_path: Path) -> None:
    unzipped = tmp_path / "no-zip"
    unzipped.mkdir()
    for name in ("eventual.json", "template.json"):
        (unzipped / name).write_bytes((export_dir / name).read_bytes())
    proc = deploy_cli(unzipped, moto, "--json")
    assert proc.returncode == 1
    assert f"has no lambda.zip (the functions' code); run `eventual-nb export NOTEBOOK -o {unzipped} --zip`" in (
        proc.stderr
    )
    assert json.loads(proc.stdout)["error"] == "DeployError"

    (unzipped / "lambda.zip").write_bytes(b"not the zip the manifest records")
    proc = deploy_cli(unzipped, moto)
    assert proc.returncode == 1
    assert "does not belong to this export" in proc.stderr

    proc = deploy_cli(tmp_path / "nowhere", moto)
    assert proc.returncode == 1
    assert "is not a directory" in proc.stderr
    assert stack_names(moto) == []
    assert bucket_names(moto) == []


def test_missing_region_or_credentials_are_clear_errors(export_dir: Path, moto: str) -> None:
    no_region = {key: value for key, value in aws_environment().items() if key != "AWS_DEFAULT_REGION"}
    proc = cli("deploy", str(export_dir), "--stack", STACK, "--endpoint-url", moto, env=no_region)
    assert proc.returncode == 1
    assert "error: EventualError: no AWS region: pass --region" in proc.stderr
    assert "Traceback" not in proc.stderr

    no_credentials = {key: value for key, value in aws_environment().items() if not key.startswith("AWS_SECRET")}
    no_credentials.pop("AWS_ACCESS_KEY_ID")
    for argv in (
        ["deploy", str(export_dir), "--stack", STACK],
        ["destroy", "--stack", STACK],
    ):
        proc = cli(*argv, "--endpoint-url", moto, "--region", REGION, env=no_credentials)
        assert proc.returncode == 1, argv
        assert "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert stack_names(moto) == []
    assert bucket_names(moto) == []


def test_a_stack_operation_that_fails_exits_1_with_the_reason(export_dir: Path, moto: str, tmp_path: Path) -> None:
    """moto cannot leave a resource CREATE_FAILED (it fails the ExecuteChangeSet call instead), so what is
    checked here is its form of a failure: the reason reaches the user, exit 1, no traceback."""
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("eventual.json", "lambda.zip"):
        (broken / name).write_bytes((export_dir / name).read_bytes())
    template = json.loads((export_dir / "template.json").read_text())
    template["Resources"]["BrokenQueue"] = {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": "not a queue name"}}
    (broken / "template.json").write_text(json.dumps(template))
    proc = deploy_cli(broken, moto, "--json")
    assert proc.returncode == 1
    assert f"error: DeployError: deploying stack '{STACK}' in {REGION} failed" in proc.stderr
    assert "Can only include alphanumeric characters, hyphens, or underscores" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert json.loads(proc.stdout)["stack"] == STACK

    proc = deploy_cli(export_dir, "http://127.0.0.1:1")
    assert proc.returncode == 1
    assert "cannot reach AWS" in proc.stderr
    assert "Traceback" not in proc.stderr


def previous_layout_export(export_dir: Path, into: Path) -> Path:
    """The export as the previous version wrote it: a template whose stack records no history layout (it
    stored one item per history event and a head)."""
    into.mkdir()
    for name in ("eventual.json", "lambda.zip"):
        (into / name).write_bytes((export_dir / name).read_bytes())
    template = json.loads((export_dir / "template.json").read_text())
    del template["Outputs"]["HistoryLayout"]
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::Lambda::Function":
            del resource["Properties"]["Environment"]["Variables"]["EVENTUAL_HISTORY_LAYOUT"]
    (into / "template.json").write_text(json.dumps(template))
    return into


async def test_a_stack_deployed_with_the_previous_history_layout_is_refused_with_how_to_redeploy(
    export_dir: Path, moto: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = deploy_cli(previous_layout_export(export_dir, tmp_path / "old"), moto)
    assert old.returncode == 0, old.stderr

    proc = deploy_cli(export_dir, moto, "--json")
    assert proc.returncode == 1, proc.stderr
    assert f"stack '{STACK}' was deployed with an earlier layout (one item per history event" in proc.stderr
    assert "redeploy the service with this version" in proc.stderr
    assert "eventual-nb destroy" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert json.loads(proc.stdout)["error"] == "DeployError"
    assert "EVENTUAL_HISTORY_LAYOUT" not in function_environment(moto, STACK)  # nothing was changed

    from eventual_nb.aws import AwsRuntime
    from eventual_nb.errors import EventualError

    for name, value in aws_environment().items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    runtime = AwsRuntime(stack=STACK, region=REGION, endpoint_url=require_local(moto))
    with pytest.raises(EventualError, match=f"stack '{STACK}' was deployed with an earlier layout.*redeploy"):
        await runtime.get_execution("anything/x")

    # deployed again (destroyed, then created by this version), the stack is accepted
    assert (
        cli("destroy", "--stack", STACK, "--endpoint-url", moto, "--region", REGION, env=aws_environment()).returncode
        == 0
    )
    fresh = deploy_cli(export_dir, moto)
    assert fresh.returncode == 0, fresh.stderr
    with pytest.raises(EventualError, match="no execution"):
        await AwsRuntime(stack=STACK, region=REGION, endpoint_url=require_local(moto)).get_execution("anything/x")
