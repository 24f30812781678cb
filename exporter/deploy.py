"""`eventual-nb deploy DIR --stack NAME` and `eventual-nb destroy --stack NAME`: an export onto AWS with boto3.

    result = deploy("build/shop", "shop-prod", region="eu-west-1")
    print(result.outputs["ApiUrl"])
    destroy("shop-prod", region="eu-west-1")

Deploy reads what `eventual-nb export NOTEBOOK -o DIR --zip` wrote (`eventual.json`, `template.json`,
`lambda.zip`), checks the zip against the manifest's sha256, uploads it to the code bucket under the
template's `CodeKey` (`lambda/<sha256>.zip`: a changed zip gets a new key, which is what makes
CloudFormation redeploy the functions' code), then creates or updates the stack through a change set,
so a redeploy of an unchanged export is reported as "up to date" and changes nothing.

Choices a user relies on:

* Code bucket: `--bucket NAME`, else `eventual-nb-code-<account id>-<region>`, created on first use. One
  bucket per account and region serves every stack: keys are content addressed, so stacks never overwrite
  each other's code and an unchanged zip is not uploaded again. `destroy` keeps the bucket (other stacks
  may use it); it holds only code.
* Activity-token secret (EVENTUAL_SIGNING_KEY in every function): on AWS the stack generates it as a
  Secrets Manager secret, kept across updates. In emulator mode (moto cannot create secrets) the
  template's NoEcho parameter `SigningKey` stands in: deploy gives it a fresh random secret when the
  stack is created and `UsePreviousValue` on every update, so tokens handed out before a redeploy stay
  valid either way.
* Other services' buses: a subscription to another service's events puts its rule on that service's
  bus, a template parameter (exporter/template.py), by default the bus of a stack named after that
  service; `source_buses={"bank": "bank-prod-bank"}` (`--source-bus bank=bank-prod-bank`) names another.
  Deploy checks that each such bus exists before creating anything, and otherwise says which stack to
  deploy first.
* Emulator mode: with an `endpoint_url` (moto's server, say) the stack is deployed with `Emulator=true`,
  which leaves out what the emulator cannot create (exporter/template.py), and deploy creates the
  EventBridge Scheduler group that the template then skips (destroy deletes it again), and in it the
  template's recurring schedules (`AWS::Scheduler::Schedule`, one per `@ev.schedule`) from their very
  properties (`emulate_recurring_schedules`); moto stores them and the test harness fires them.

What moto (5.x) does differently, handled here: its CreateChangeSet answers an UPDATE without changes
with a `ValidationError` ("No updates are to be performed.") where AWS creates a FAILED change set
saying it "didn't contain changes" (both mean up to date). Its ExecuteChangeSet never evaluates the
template's Outputs (a stack created through a change set has none, and NoEcho parameters are not masked),
so in emulator mode the outputs are read back from the functions' `EVENTUAL_*` variables, which name
the same resources. It executes change sets and deletes stacks synchronously, records stack-level events
only, and cannot fail a single resource, so the path for a failed stack operation (the failing
resources' reasons, exit 1) runs against AWS only.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eventual_nb.errors import EventualError
from eventual_nb.runtime.aws.clients import HISTORY_LAYOUT_VARIABLE, AwsSettings
from exporter.template import (
    SIGNING_KEY_PARAMETER,
    SOURCE_BUSES_METADATA,
    default_source_bus,
    stack_of_bus,
    validate_stack_name,
)

__all__ = [
    "DeployError",
    "DeployResult",
    "DestroyResult",
    "StackEvent",
    "default_bucket",
    "deploy",
    "destroy",
    "emulate_recurring_schedules",
]

#: CloudFormation's limit for a template sent inline; a larger one goes through the code bucket
MAX_TEMPLATE_BODY = 51_200
#: the capabilities the template needs: it creates IAM roles with generated names
CAPABILITIES = ["CAPABILITY_IAM"]
#: seconds between two looks at a stack or change set (an emulator answers at once, AWS takes minutes)
POLL_SECONDS = 3.0
EMULATOR_POLL_SECONDS = 0.2
#: how long deploy and destroy wait for CloudFormation before giving up (the stack keeps going)
WAIT_SECONDS = 3600.0
#: what CloudFormation says of a change set that changes nothing (AWS), and moto's equivalent refusal
_NO_CHANGES = ("didn't contain changes", "No updates are to be performed")

#: stack statuses deploy may start from, and what it does there
_CREATABLE = {"REVIEW_IN_PROGRESS"}
_UPDATABLE = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_ROLLBACK_COMPLETE", "IMPORT_COMPLETE"}
_SUCCEEDED = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "DELETE_COMPLETE", "IMPORT_COMPLETE"}
_FAILED = {
    "CREATE_FAILED",
    "DELETE_FAILED",
    "ROLLBACK_COMPLETE",
    "ROLLBACK_FAILED",
    "UPDATE_FAILED",
    "UPDATE_ROLLBACK_COMPLETE",
    "UPDATE_ROLLBACK_FAILED",
    "IMPORT_ROLLBACK_COMPLETE",
    "IMPORT_ROLLBACK_FAILED",
}


class DeployError(EventualError):
    """A deploy or destroy that did not happen or did not finish; `failures` holds the failing resources'
    `{"resource", "type", "status", "reason"}` when CloudFormation reported any."""

    fields = ("stack", "failures")

    def __init__(self, message: str, *, stack: str | None = None, failures: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.stack = stack
        self.failures = failures or []


@dataclass(frozen=True)
class StackEvent:
    """One stack event, as the progress display shows it."""

    time: datetime
    resource: str
    resource_type: str
    status: str
    reason: str

    @property
    def failed(self) -> bool:
        return self.status.endswith("_FAILED")


#: what `deploy` and `destroy` report while they work: a phase (text) or a stack event
Progress = Callable[[str | StackEvent], None]


@dataclass(frozen=True)
class DeployResult:
    """What a deploy did: `action` is "created", "updated" or "unchanged" (the stack was up to date)."""

    stack: str
    stack_id: str
    region: str
    action: str
    status: str
    bucket: str
    code_key: str
    emulator: bool
    outputs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DestroyResult:
    stack: str
    stack_id: str
    region: str
    status: str


# ------------------------------------------------------------------------------------------ the session


def _session(region: str | None) -> Any:
    """A boto3 session with a region and credentials, or an EventualError saying how to provide them
    (checked before anything is read from or created in the account)."""
    try:
        import boto3
    except ModuleNotFoundError as exc:
        raise EventualError(f"deploying needs boto3: pip install 'eventual-nb[aws]' ({exc})") from exc
    session = boto3.session.Session(
        region_name=region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
    )
    if not session.region_name:
        raise EventualError(
            "no AWS region: pass --region (region= in Python) or set AWS_REGION (or AWS_DEFAULT_REGION, or a "
            "profile's region via AWS_PROFILE)"
        )
    if session.get_credentials() is None:
        raise EventualError(
            "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run where "
            "an IAM role provides them"
        )
    return session


class _Aws:
    """The clients of one deploy or destroy (one region, one endpoint)."""

    def __init__(self, region: str | None, endpoint_url: str | None) -> None:
        self.session = _session(region)
        self.region = str(self.session.region_name)
        self.endpoint_url = endpoint_url
        self._clients: dict[str, Any] = {}

    def client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = self.session.client(service, endpoint_url=self.endpoint_url)
        return self._clients[service]

    @property
    def cloudformation(self) -> Any:
        return self.client("cloudformation")

    def describe(self, stack: str) -> dict[str, Any] | None:
        """The stack's description, or None when no stack of that name exists (deleted ones do not count)."""
        from botocore.exceptions import ClientError

        try:
            stacks = self.cloudformation.describe_stacks(StackName=stack)["Stacks"]
        except ClientError as exc:
            if _code(exc) == "ValidationError" and "does not exist" in str(exc):
                return None
            raise _aws_error(f"cannot read stack {stack!r} in {self.region}", exc, stack) from exc
        live = [item for item in stacks if item.get("StackStatus") != "DELETE_COMPLETE"]
        return live[0] if live else None


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _aws_error(what: str, exc: Exception, stack: str | None = None) -> DeployError:
    """An AWS error as a DeployError naming what was being done (credentials that AWS rejects included)."""
    from botocore.exceptions import EndpointConnectionError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return DeployError(f"{what}: no AWS credentials ({exc})", stack=stack)
    if isinstance(exc, EndpointConnectionError):
        return DeployError(f"{what}: cannot reach AWS ({exc})", stack=stack)
    return DeployError(f"{what}: {exc}", stack=stack)


def default_bucket(account_id: str, region: str) -> str:
    """The code bucket a deploy uses when none is given: one per account and region (see the module doc)."""
    return f"eventual-nb-code-{account_id}-{region}"


# ------------------------------------------------------------------------------------------- the export


@dataclass(frozen=True)
class _Export:
    directory: Path
    manifest: dict[str, Any]
    template: dict[str, Any]
    template_text: str
    zip_path: Path
    zip_sha256: str
    code_key: str


def _read_export(directory: Path) -> _Export:
    """The export in `directory`, checked: its manifest, template and a lambda.zip that matches both."""
    rebuild = f"run `eventual-nb export NOTEBOOK -o {directory} --zip`"
    if not directory.is_dir():
        raise DeployError(f"{directory} is not a directory; {rebuild} first")
    manifest_path = directory / "eventual.json"
    template_path = directory / "template.json"
    zip_path = directory / "lambda.zip"
    for path in (manifest_path, template_path):
        if not path.is_file():
            raise DeployError(f"{directory} is not an export (no {path.name}); {rebuild} first")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        template = json.loads(template_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DeployError(f"{directory}: eventual.json or template.json is not JSON ({exc}); {rebuild}") from None
    if not isinstance(manifest, dict) or not isinstance(template, dict):
        raise DeployError(f"{directory}: eventual.json and template.json must hold JSON objects; {rebuild}")
    if not zip_path.is_file():
        raise DeployError(f"{directory} has no lambda.zip (the functions' code); {rebuild} (with --zip)")
    recorded = manifest.get("lambda_zip")
    if not isinstance(recorded, dict) or not isinstance(recorded.get("sha256"), str):
        raise DeployError(f"{manifest_path} does not record a lambda.zip; {rebuild} (with --zip)")
    digest = hashlib.sha256(zip_path.read_bytes()).hexdigest()
    if digest != recorded["sha256"]:
        raise DeployError(
            f"{zip_path} has sha256 {digest}, but {manifest_path.name} records {recorded['sha256']}: the zip does "
            f"not belong to this export; {rebuild} again"
        )
    code_key = template.get("Parameters", {}).get("CodeKey", {}).get("Default")
    if code_key != recorded.get("s3_key"):
        raise DeployError(
            f"{template_path.name} deploys code key {code_key!r}, but {manifest_path.name} records "
            f"{recorded.get('s3_key')!r}: the files come from different exports; {rebuild} again"
        )
    text = json.dumps(template, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return _Export(directory, manifest, template, text, zip_path, digest, str(code_key))


# ----------------------------------------------------------------------------------------------- deploy


def deploy(
    directory: str | Path,
    stack: str,
    *,
    region: str | None = None,
    endpoint_url: str | None = None,
    bucket: str | None = None,
    source_buses: dict[str, str] | None = None,
    progress: Progress | None = None,
    poll_seconds: float | None = None,
    wait_seconds: float = WAIT_SECONDS,
) -> DeployResult:
    """Deploy the export in `directory` as stack `stack`; answer what was done and the stack's outputs.

    `source_buses`: the event bus of each other service whose events the service subscribes to, by service
    name (default: the bus of a stack named after that service).

    Raises `DeployError` (an `EventualError`) for a bad export, a bad stack name, missing region or
    credentials, a missing bus of another service (before anything is created) and for a stack operation
    that failed."""
    report: Progress = progress or (lambda _item: None)
    validate_stack_name(stack)
    export = _read_export(Path(directory))
    buses = _source_buses(export, source_buses or {})
    aws = _Aws(region, endpoint_url)
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        _check_source_buses(aws, export, buses)
        return _deploy(aws, export, stack, bucket, report, poll_seconds, wait_seconds, buses)
    except (BotoCoreError, ClientError) as exc:
        raise _aws_error(f"deploying stack {stack!r} in {aws.region} failed", exc, stack) from exc


def _source_buses(export: _Export, given: dict[str, str]) -> dict[str, tuple[str, str]]:
    """`{service: (template parameter, bus name)}` for each other service the export subscribes to."""
    parameters: dict[str, str] = export.template.get("Metadata", {}).get(SOURCE_BUSES_METADATA, {})
    unknown = sorted(set(given) - set(parameters))
    if unknown:
        listens = ", ".join(repr(source) for source in sorted(parameters)) or "no other service"
        raise DeployError(
            f"--source-bus names {', '.join(repr(name) for name in unknown)}, but service "
            f"{export.manifest.get('name')!r} subscribes to events of {listens}"
        )
    return {
        source: (parameter, given.get(source) or default_source_bus(source)) for source, parameter in parameters.items()
    }


def _check_source_buses(aws: _Aws, export: _Export, buses: dict[str, tuple[str, str]]) -> None:
    """Refuse to deploy subscriptions onto a bus that does not exist (CloudFormation would fail half-way)."""
    from botocore.exceptions import ClientError

    for source, (_parameter, bus) in sorted(buses.items()):
        try:
            aws.client("events").describe_event_bus(Name=bus)
        except ClientError as exc:
            if _code(exc) != "ResourceNotFoundException":
                raise
            stack = stack_of_bus(bus, source)
            first = f"deploy service {source!r} first" + (f" as stack {stack!r}" if stack else "")
            raise DeployError(
                f"service {export.manifest.get('name')!r} subscribes to events of service {source!r}, whose event "
                f"bus {bus!r} does not exist in {aws.region}: {first} (`eventual-nb deploy DIR --stack "
                f"{stack or source}`), or name its bus with --source-bus {source}=BUS"
            ) from None


def _deploy(
    aws: _Aws,
    export: _Export,
    stack: str,
    bucket: str | None,
    report: Progress,
    poll_seconds: float | None,
    wait_seconds: float,
    buses: dict[str, tuple[str, str]],
) -> DeployResult:
    endpoint_url = aws.endpoint_url
    emulator = endpoint_url is not None
    pause = poll_seconds if poll_seconds is not None else (EMULATOR_POLL_SECONDS if emulator else POLL_SECONDS)
    current = aws.describe(stack)
    if current is None or current["StackStatus"] in _CREATABLE:
        change_set_type = "CREATE"
    elif current["StackStatus"] in _UPDATABLE:
        _check_layout(aws, stack)
        change_set_type = "UPDATE"
    elif current["StackStatus"] == "ROLLBACK_COMPLETE":
        raise DeployError(
            f"stack {stack!r} failed to create and was rolled back (ROLLBACK_COMPLETE); it cannot be updated: "
            f"delete it with `eventual-nb destroy --stack {stack}`, then deploy again",
            stack=stack,
        )
    else:
        raise DeployError(
            f"stack {stack!r} is {current['StackStatus']}; wait until CloudFormation has finished with it, "
            "then deploy again",
            stack=stack,
        )

    code_bucket = bucket or default_bucket(_account_id(aws), aws.region)
    _ensure_bucket(aws, code_bucket, report)
    _upload_code(aws, code_bucket, export, report)

    parameters: list[dict[str, Any]] = [
        {"ParameterKey": "Emulator", "ParameterValue": "true" if emulator else "false"},
        {"ParameterKey": "CodeBucket", "ParameterValue": code_bucket},
        {"ParameterKey": "CodeKey", "ParameterValue": export.code_key},
        *({"ParameterKey": parameter, "ParameterValue": bus} for parameter, bus in sorted(buses.values())),
    ]
    if emulator and SIGNING_KEY_PARAMETER in export.template.get("Parameters", {}):
        previous = {item["ParameterKey"] for item in (current or {}).get("Parameters", [])}
        if change_set_type == "UPDATE" and SIGNING_KEY_PARAMETER in previous:
            parameters.append({"ParameterKey": SIGNING_KEY_PARAMETER, "UsePreviousValue": True})
        else:
            parameters.append({"ParameterKey": SIGNING_KEY_PARAMETER, "ParameterValue": secrets.token_urlsafe(32)})

    template_argument = _template_argument(aws, code_bucket, export, stack)
    name = f"eventual-nb-{datetime.now(UTC).strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"
    report(f"creating change set {name} ({change_set_type})")
    cloudformation = aws.cloudformation
    from botocore.exceptions import ClientError

    try:
        created = cloudformation.create_change_set(
            StackName=stack,
            ChangeSetName=name,
            ChangeSetType=change_set_type,
            Parameters=parameters,
            Capabilities=CAPABILITIES,
            Description=f"eventual-nb deploy of {export.manifest.get('name')!r} ({export.code_key})"[:1024],
            **template_argument,
        )
    except ClientError as exc:
        if change_set_type == "UPDATE" and any(text in str(exc) for text in _NO_CHANGES):
            return _unchanged(aws, stack, code_bucket, export, emulator, report)
        raise _aws_error(f"cannot create a change set for stack {stack!r}", exc, stack) from exc
    change_set_id = created["Id"]
    described = _wait_for_change_set(aws, change_set_id, stack, pause, wait_seconds)
    if described["Status"] == "FAILED":
        reason = str(described.get("StatusReason", ""))
        if any(text in reason for text in _NO_CHANGES):
            cloudformation.delete_change_set(ChangeSetName=change_set_id)
            return _unchanged(aws, stack, code_bucket, export, emulator, report)
        raise DeployError(f"CloudFormation refused the change set for stack {stack!r}: {reason}", stack=stack)
    changes = described.get("Changes", [])
    report(f"executing change set: {len(changes)} resource change(s)")
    seen = _event_ids(aws, stack)
    cloudformation.execute_change_set(ChangeSetName=change_set_id)
    final = _wait_for_stack(aws, stack, seen, pause, wait_seconds, report)
    if emulator:
        _ensure_schedule_group(aws, stack, report)
        _ensure_recurring_schedules(aws, stack, export.template, report)
    return DeployResult(
        stack=stack,
        stack_id=str(final["StackId"]),
        region=aws.region,
        action="created" if change_set_type == "CREATE" else "updated",
        status=str(final["StackStatus"]),
        bucket=code_bucket,
        code_key=export.code_key,
        emulator=emulator,
        outputs=_outputs(aws, final, emulator),
    )


def _check_layout(aws: _Aws, stack: str) -> None:
    """Refuse to update a stack whose history table holds another layout than this version writes: its
    executions in flight could not continue (`AwsSettings.check_layout` says the same at run time).

    Read from the deployed template (the layout its functions are given), which CloudFormation keeps for
    every stack (moto reports no outputs for a stack created through a change set)."""
    body = aws.cloudformation.get_template(StackName=stack, TemplateStage="Original")["TemplateBody"]
    template = json.loads(body) if isinstance(body, str) else body
    layouts = {
        str(resource.get("Properties", {}).get("Environment", {}).get("Variables", {}).get(HISTORY_LAYOUT_VARIABLE, ""))
        for resource in template.get("Resources", {}).values()
        if isinstance(resource, dict) and resource.get("Type") == "AWS::Lambda::Function"
    }
    try:
        for layout in sorted(layouts) or [""]:
            AwsSettings(history_layout=layout).check_layout(stack)
    except EventualError as exc:
        raise DeployError(str(exc), stack=stack) from None


def _unchanged(aws: _Aws, stack: str, bucket: str, export: _Export, emulator: bool, report: Progress) -> DeployResult:
    report(f"stack {stack} is up to date: the template, the code and the parameters are unchanged")
    current = aws.describe(stack)
    assert current is not None
    if emulator:
        _ensure_schedule_group(aws, stack, report)
        _ensure_recurring_schedules(aws, stack, export.template, report)
    return DeployResult(
        stack=stack,
        stack_id=str(current["StackId"]),
        region=aws.region,
        action="unchanged",
        status=str(current["StackStatus"]),
        bucket=bucket,
        code_key=export.code_key,
        emulator=emulator,
        outputs=_outputs(aws, current, emulator),
    )


def _outputs(aws: _Aws, described: dict[str, Any], emulator: bool) -> dict[str, str]:
    """The stack's outputs; in the emulator, stood in for by the functions' environment when it has none."""
    outputs = {str(item["OutputKey"]): str(item.get("OutputValue", "")) for item in described.get("Outputs", [])}
    if outputs or not emulator:
        return outputs
    # moto's ExecuteChangeSet never evaluates a template's Outputs, so a stack it created through a change
    # set has none; every output but the `Real`-only ApiUrl names what an EVENTUAL_* variable also holds
    from eventual_nb.aws import STACK_OUTPUTS

    variables: dict[str, str] = {}
    cloudformation, functions = aws.cloudformation, aws.client("lambda")
    for item in cloudformation.describe_stack_resources(StackName=described["StackId"]).get("StackResources", []):
        if item.get("ResourceType") == "AWS::Lambda::Function" and item.get("PhysicalResourceId"):
            configuration = functions.get_function_configuration(FunctionName=item["PhysicalResourceId"])
            variables.update(configuration.get("Environment", {}).get("Variables", {}))
    return {output: variables[variable] for output, variable in STACK_OUTPUTS.items() if variable in variables}


def _account_id(aws: _Aws) -> str:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return str(aws.client("sts").get_caller_identity()["Account"])
    except (BotoCoreError, ClientError) as exc:
        raise _aws_error(
            "cannot tell which AWS account the credentials belong to (needed to name the code "
            "bucket; or pass --bucket)",
            exc,
        ) from exc


def _ensure_bucket(aws: _Aws, bucket: str, report: Progress) -> None:
    """Create the code bucket unless it exists (and is ours); us-east-1 takes no LocationConstraint."""
    from botocore.exceptions import ClientError

    s3 = aws.client("s3")
    try:
        s3.head_bucket(Bucket=bucket)
        return
    except ClientError as exc:
        code = _code(exc)
        if code in ("403", "AccessDenied", "Forbidden"):
            raise DeployError(
                f"the code bucket {bucket!r} exists but these credentials cannot use it (another account's?); "
                "pass --bucket with a bucket of yours"
            ) from exc
        if code not in ("404", "NoSuchBucket", "NotFound"):
            raise _aws_error(f"cannot read the code bucket {bucket!r}", exc) from exc
    report(f"creating code bucket {bucket}")
    arguments: dict[str, Any] = {"Bucket": bucket}
    if aws.region != "us-east-1":
        arguments["CreateBucketConfiguration"] = {"LocationConstraint": aws.region}
    try:
        s3.create_bucket(**arguments)
    except ClientError as exc:
        if _code(exc) != "BucketAlreadyOwnedByYou":
            raise _aws_error(f"cannot create the code bucket {bucket!r}", exc) from exc
    try:
        s3.put_public_access_block(
            Bucket=bucket,
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": True,
                "IgnorePublicAcls": True,
                "BlockPublicPolicy": True,
                "RestrictPublicBuckets": True,
            },
        )
    except ClientError as exc:
        raise _aws_error(f"cannot block public access to the code bucket {bucket!r}", exc) from exc


def _upload_code(aws: _Aws, bucket: str, export: _Export, report: Progress) -> None:
    """Put lambda.zip at its content-addressed key, unless an object of the same sha256 is already there."""
    from botocore.exceptions import ClientError

    s3 = aws.client("s3")
    try:
        head = s3.head_object(Bucket=bucket, Key=export.code_key)
        if head.get("Metadata", {}).get("sha256") == export.zip_sha256:
            report(f"lambda.zip already in s3://{bucket}/{export.code_key}")
            return
    except ClientError as exc:
        if _code(exc) not in ("404", "NoSuchKey", "NotFound"):
            raise _aws_error(f"cannot read s3://{bucket}/{export.code_key}", exc) from exc
    size = export.zip_path.stat().st_size
    report(f"uploading lambda.zip ({size / 2**20:.1f} MiB) to s3://{bucket}/{export.code_key}")
    try:
        s3.put_object(
            Bucket=bucket,
            Key=export.code_key,
            Body=export.zip_path.read_bytes(),
            Metadata={"sha256": export.zip_sha256},
        )
    except ClientError as exc:
        raise _aws_error(f"cannot upload lambda.zip to s3://{bucket}/{export.code_key}", exc) from exc


def _template_argument(aws: _Aws, bucket: str, export: _Export, stack: str) -> dict[str, str]:
    """`TemplateBody` when it fits CloudFormation's inline limit, else a `TemplateURL` in the code bucket."""
    if len(export.template_text.encode("utf-8")) <= MAX_TEMPLATE_BODY:
        return {"TemplateBody": export.template_text}
    digest = hashlib.sha256(export.template_text.encode("utf-8")).hexdigest()
    key = f"templates/{digest}.json"
    aws.client("s3").put_object(Bucket=bucket, Key=key, Body=export.template_text.encode("utf-8"))
    return {"TemplateURL": f"https://{bucket}.s3.{aws.region}.amazonaws.com/{key}"}


def _wait_for_change_set(aws: _Aws, change_set_id: str, stack: str, pause: float, limit: float) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    while True:
        described: dict[str, Any] = aws.cloudformation.describe_change_set(ChangeSetName=change_set_id)
        if described.get("Status") in ("CREATE_COMPLETE", "FAILED"):
            return described
        if time.monotonic() > deadline:
            raise DeployError(f"the change set for stack {stack!r} was not ready within {limit:.0f} s", stack=stack)
        time.sleep(pause)


def _event_ids(aws: _Aws, stack: str) -> set[str]:
    """The stack's events so far, so the progress display shows only those of this operation."""
    events = aws.cloudformation.describe_stack_events(StackName=stack).get("StackEvents", [])
    return {str(item["EventId"]) for item in events}


def _stack_events(raw: list[dict[str, Any]]) -> list[StackEvent]:
    return [
        StackEvent(
            time=item.get("Timestamp") or datetime.now(UTC),
            resource=str(item.get("LogicalResourceId", "")),
            resource_type=str(item.get("ResourceType", "")),
            status=str(item.get("ResourceStatus", "")),
            reason=str(item.get("ResourceStatusReason", "") or ""),
        )
        for item in raw
    ]


def _wait_for_stack(
    aws: _Aws, stack: str, seen: set[str], pause: float, limit: float, report: Progress
) -> dict[str, Any]:
    """Poll the stack until it settles, reporting each new event; a failed operation raises DeployError
    with the failing resources' reasons."""
    from botocore.exceptions import ClientError

    cloudformation = aws.cloudformation
    deadline = time.monotonic() + limit
    failures: list[StackEvent] = []
    while True:
        try:
            raw = cloudformation.describe_stack_events(StackName=stack).get("StackEvents", [])
            (described,) = cloudformation.describe_stacks(StackName=stack)["Stacks"]
        except ClientError as exc:
            raise _aws_error(f"lost track of stack {stack!r}", exc, stack) from exc
        fresh = [item for item in reversed(raw) if str(item["EventId"]) not in seen]
        for item, event in zip(fresh, _stack_events(fresh), strict=True):
            seen.add(str(item["EventId"]))
            if event.failed:
                failures.append(event)
            report(event)
        status = str(described["StackStatus"])
        if status in _SUCCEEDED:
            return dict(described)
        if status in _FAILED:
            raise _failed(stack, status, described, failures)
        if time.monotonic() > deadline:
            raise DeployError(
                f"stack {stack!r} is still {status} after {limit:.0f} s; CloudFormation goes on without us: "
                "watch it in the console or run the command again later",
                stack=stack,
            )
        time.sleep(pause)


def _failed(stack: str, status: str, described: dict[str, Any], failures: list[StackEvent]) -> DeployError:
    """The error for a stack operation that ended in `status`, naming each resource that failed and why."""
    causes = [event for event in failures if event.reason and event.resource != stack] or failures
    details = [
        {"resource": event.resource, "type": event.resource_type, "status": event.status, "reason": event.reason}
        for event in causes
    ]
    lines = [f"  {event.resource} ({event.resource_type}) {event.status}: {event.reason}" for event in causes]
    summary = described.get("StackStatusReason") or ""
    message = f"stack {stack!r} ended {status}" + (f" ({summary})" if summary else "")
    if lines:
        message += "; failing resources:\n" + "\n".join(lines)
    return DeployError(message, stack=stack, failures=details)


def _schedule_group(stack: str) -> str:
    """The Scheduler group the template names `${AWS::StackName}-timers` (EVENTUAL_SCHEDULE_GROUP)."""
    return f"{stack}-timers"


def _ensure_schedule_group(aws: _Aws, stack: str, report: Progress) -> None:
    from botocore.exceptions import ClientError

    scheduler = aws.client("scheduler")
    try:
        scheduler.get_schedule_group(Name=_schedule_group(stack))
        return
    except ClientError as exc:
        if _code(exc) != "ResourceNotFoundException":
            raise _aws_error(f"cannot read the Scheduler group {_schedule_group(stack)!r}", exc, stack) from exc
    try:
        scheduler.create_schedule_group(Name=_schedule_group(stack))
    except ClientError as exc:
        if _code(exc) != "ConflictException":
            raise _aws_error(f"cannot create the Scheduler group {_schedule_group(stack)!r}", exc, stack) from exc
        return
    report(f"created Scheduler group {_schedule_group(stack)} (the emulator's stand-in for the template's)")


def _ensure_recurring_schedules(aws: _Aws, stack: str, template: dict[str, Any], report: Progress) -> None:
    from botocore.exceptions import ClientError

    if not any(item.get("Type") == RECURRING_SCHEDULE_TYPE for item in template.get("Resources", {}).values()):
        return
    try:
        # the plural call: moto's DescribeStackResource fails on a stack holding resources it left out
        listed = aws.cloudformation.describe_stack_resources(StackName=stack)["StackResources"]
        physical = {
            item["LogicalResourceId"]: item["PhysicalResourceId"]
            for item in listed
            if "LogicalResourceId" in item and "PhysicalResourceId" in item
        }
        target_arn = aws.client("lambda").get_function_configuration(
            FunctionName=physical["ScheduleForwarderFunction"]
        )["FunctionArn"]
        role_arn = aws.client("iam").get_role(RoleName=physical["SchedulerRole"])["Role"]["Arn"]
        names = emulate_recurring_schedules(
            aws.client("scheduler"), template, group=_schedule_group(stack), target_arn=target_arn, role_arn=role_arn
        )
    except ClientError as exc:
        raise _aws_error(
            f"cannot create the recurring schedules of stack {stack!r} in the emulator", exc, stack
        ) from exc
    report(f"created {len(names)} recurring schedule(s) in {_schedule_group(stack)} (the emulator's stand-in)")


RECURRING_SCHEDULE_TYPE = "AWS::Scheduler::Schedule"


def emulate_recurring_schedules(
    scheduler: Any, template: dict[str, Any], *, group: str, target_arn: str, role_arn: str
) -> list[str]:
    """Create (or update) in an emulator the template's recurring schedules, which carry `Condition: Real`,
    from their template properties with the group, forwarder and role resolved; delete the group's recurring
    schedules the template no longer declares. Returns the names of the schedules created or updated.

    `scheduler` is a boto3 Scheduler client of the emulator. A schedule's state (paused, ENABLED/DISABLED)
    is kept across a redeploy, as a pause must survive a deploy of unchanged code."""
    from eventual_nb.runtime.aws.schedules import NAME_PREFIX, group_schedule_names

    declared: list[str] = []
    for resource in template.get("Resources", {}).values():
        if resource.get("Type") != RECURRING_SCHEDULE_TYPE:
            continue
        properties = json.loads(json.dumps(resource["Properties"]))
        properties["GroupName"] = group
        properties["Target"].update({"Arn": target_arn, "RoleArn": role_arn})
        declared.append(properties["Name"])
        try:
            current = scheduler.get_schedule(Name=properties["Name"], GroupName=group)
        except scheduler.exceptions.ResourceNotFoundException:
            scheduler.create_schedule(**properties)
            continue
        properties["State"] = current.get("State", properties["State"])
        scheduler.update_schedule(**properties)
    for name in group_schedule_names(scheduler, group):
        if name.startswith(NAME_PREFIX) and name not in declared:
            scheduler.delete_schedule(Name=name, GroupName=group)
    return declared


# ---------------------------------------------------------------------------------------------- destroy


def destroy(
    stack: str,
    *,
    region: str | None = None,
    endpoint_url: str | None = None,
    progress: Progress | None = None,
    poll_seconds: float | None = None,
    wait_seconds: float = WAIT_SECONDS,
) -> DestroyResult:
    """Delete stack `stack` (its tables, queues, functions and logs) and wait until it is gone.

    The code bucket stays (see the module docstring). Raises `DeployError` when there is no such stack or
    the deletion failed (with the resources CloudFormation could not delete)."""
    report: Progress = progress or (lambda _item: None)
    validate_stack_name(stack)
    aws = _Aws(region, endpoint_url)
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return _destroy(aws, stack, report, poll_seconds, wait_seconds)
    except (BotoCoreError, ClientError) as exc:
        raise _aws_error(f"destroying stack {stack!r} in {aws.region} failed", exc, stack) from exc


def _destroy(aws: _Aws, stack: str, report: Progress, poll_seconds: float | None, wait_seconds: float) -> DestroyResult:
    endpoint_url = aws.endpoint_url
    pause = poll_seconds if poll_seconds is not None else (EMULATOR_POLL_SECONDS if endpoint_url else POLL_SECONDS)
    current = aws.describe(stack)
    if current is None:
        raise DeployError(f"there is no stack {stack!r} in {aws.region} (nothing to destroy)", stack=stack)
    stack_id = str(current["StackId"])
    emulated = any(
        item.get("ParameterKey") == "Emulator" and item.get("ParameterValue") == "true"
        for item in current.get("Parameters", [])
    )
    seen = _event_ids(aws, stack_id)
    report(f"deleting stack {stack} ({current['StackStatus']})")
    from botocore.exceptions import ClientError

    try:
        aws.cloudformation.delete_stack(StackName=stack_id)
    except ClientError as exc:
        raise _aws_error(f"cannot delete stack {stack!r}", exc, stack) from exc
    final = _wait_for_stack(aws, stack_id, seen, pause, wait_seconds, report)
    if emulated:
        try:
            aws.client("scheduler").delete_schedule_group(Name=_schedule_group(stack))
            report(f"deleted Scheduler group {_schedule_group(stack)}")
        except ClientError as exc:
            if _code(exc) != "ResourceNotFoundException":
                raise _aws_error(f"cannot delete the Scheduler group {_schedule_group(stack)!r}", exc, stack) from exc
    return DestroyResult(stack=stack, stack_id=stack_id, region=aws.region, status=str(final["StackStatus"]))
