"""template.json (exporter/template.py): deterministic plain CloudFormation that cfn-lint passes offline,
that deploys into moto's CloudFormation with `Emulator=true` (and routes events rule → subscription
queue there), and whose IAM roles give each function only what it uses, on this stack's resources only."""

from __future__ import annotations

import copy
import io
import json
import logging
import re
import urllib.request
import zipfile
from collections.abc import Iterator
from importlib.metadata import version
from typing import Any

import boto3
import pytest
from pydantic import BaseModel

import eventual_nb as ev
from exporter.handlers import HANDLERS
from exporter.template import (
    MAX_QUEUE_NAME_LENGTH,
    MAX_STACK_NAME_LENGTH,
    MAX_VISIBILITY_TIMEOUT,
    VISIBILITY_FACTOR,
    build_template,
    default_source_bus,
    subscription_logical_id,
    validate_stack_name,
)
from tests.aws_support import assert_lint_clean, dumped

# ------------------------------------------------------------------------------------ a real service

SERVICE = ev.Service("tmpl-test")


class AccountOpened(ev.Event):
    account_id: str


class PaymentSettled(ev.Event):
    payment_id: str
    amount: int


approval = ev.signal("approval")


class Customer(BaseModel):
    id: str
    name: str


customers = ev.entity("customers", Customer, key="id")


@ev.activity
async def reserve_number(account_id: str) -> str:
    return f"no-{account_id}"


@ev.activity(retry=ev.RetryPolicy(max_attempts=3))
async def send_letter(account_id: str) -> None:
    return None


@ev.workflow
async def open_account(account_id: str) -> str:
    number = await reserve_number(account_id)
    await approval.expect(timeout="1h")
    await send_letter(account_id)
    return number


@ev.workflow
async def settle(payment_id: str) -> str:
    await ev.sleep("2h")
    return payment_id


@ev.subscription(AccountOpened, name="welcome-email", retry=ev.RetryPolicy(max_attempts=4))
async def welcome(event: AccountOpened) -> None:
    return None


@ev.subscription("PaymentSettled", name="payments audit", source="payments")
async def audit(event: Any) -> None:
    return None


@SERVICE.api.get("/accounts/{account_id}")
async def get_account(account_id: str) -> dict:
    return {"account_id": account_id}


@SERVICE.api.post("/accounts", status_code=202)
async def start_open_account(body: dict) -> dict:
    handle = await open_account.start(body["account_id"])
    return {"execution_id": handle.id}


ZIP_SHA = "ab" * 32


def manifest_of(spec: dict[str, Any], *, with_zip: bool = False) -> dict[str, Any]:
    """The manifest piece 1 writes (eventual.json), around a `Service.spec()`."""
    manifest: dict[str, Any] = {
        "format": 1,
        "name": spec["name"],
        "package": spec["name"].replace("-", "_").replace(".", "_"),
        "eventual_nb_version": version("eventual-nb"),
        "notebook": f"{spec['name']}.ipynb",
        "source_sha256": "0" * 64,
        "handlers": dict(HANDLERS),
        "service": spec,
    }
    if with_zip:
        manifest["lambda_zip"] = {"sha256": ZIP_SHA, "s3_key": f"lambda/{ZIP_SHA}.zip", "size": 1234}
    return manifest


def real_manifest() -> dict[str, Any]:
    spec = SERVICE.spec()
    kinds = ("workflows", "activities", "signals", "events", "subscriptions", "entities")
    counts = {key: len(spec[key]) for key in kinds}
    assert counts == {"workflows": 2, "activities": 2, "signals": 1, "events": 2, "subscriptions": 2, "entities": 1}
    assert len(spec["routes"]) == 2
    return manifest_of(json.loads(json.dumps(spec)))


def hand_manifest() -> dict[str, Any]:
    """A realistic eventual.json written out by hand, independent of Service.spec()."""
    retry_once = {
        "max_attempts": 1,
        "initial_interval": 1.0,
        "backoff": 2.0,
        "max_interval": 300.0,
        "non_retryable": [],
    }
    spec = {
        "name": "bank",
        "workflows": [
            {"name": "transfer", "timeout_seconds": 86400.0, "input_schema": {"type": "object"}, "result_schema": None},
            {"name": "close_account", "timeout_seconds": None, "input_schema": None, "result_schema": None},
        ],
        "activities": [
            {
                "name": "debit",
                "timeout_seconds": 30.0,
                "heartbeat_timeout_seconds": None,
                "retry": dict(retry_once, max_attempts=5),
                "parameters": ["account", "amount"],
            },
            {
                "name": "credit",
                "timeout_seconds": None,
                "heartbeat_timeout_seconds": 10.0,
                "retry": retry_once,
                "parameters": ["account", "amount"],
            },
        ],
        "signals": [{"name": "approve", "payload_schema": {"type": "boolean"}}],
        "events": [{"name": "TransferDone", "schema": None}, {"name": "AccountClosed", "schema": None}],
        "subscriptions": [
            {
                "name": "notify-owner",
                "events": ["TransferDone", "AccountClosed"],
                "source": None,
                "retry": dict(retry_once, max_attempts=3),
            },
            {"name": "fraud_watch", "events": ["CardSwiped"], "source": "cards", "retry": retry_once},
        ],
        "routes": [
            {"path": "/transfers", "methods": ["POST"], "name": "start_transfer"},
            {"path": "/accounts/{account_id}", "methods": ["GET"], "name": "get_account"},
        ],
    }
    return manifest_of(spec, with_zip=True)


def resources_of(template: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    return {key: value for key, value in template["Resources"].items() if value["Type"] == resource_type}


REAL_ONLY_TYPES = {
    "AWS::ApiGatewayV2::Api",
    "AWS::ApiGatewayV2::Integration",
    "AWS::ApiGatewayV2::Route",
    "AWS::ApiGatewayV2::Stage",
    "AWS::Lambda::Permission",
    "AWS::SQS::QueuePolicy",
    "AWS::Scheduler::ScheduleGroup",
    "AWS::SecretsManager::Secret",  # the activity-token secret; the emulator gets a NoEcho parameter instead
}
PSEUDO_PARAMETERS = {"AWS::Partition", "AWS::Region", "AWS::AccountId", "AWS::StackName", "AWS::URLSuffix"}


# ------------------------------------------------------------------------------------ shape and naming


def test_build_is_deterministic_and_ignores_definition_order() -> None:
    for manifest in (hand_manifest(), real_manifest()):
        first, second = build_template(manifest), build_template(copy.deepcopy(manifest))
        assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
        reordered = copy.deepcopy(manifest)
        reordered["service"]["subscriptions"].reverse()
        assert dumped(build_template(reordered)) == dumped(first)


def test_parameters_condition_and_code_key() -> None:
    with_zip = build_template(hand_manifest())
    assert with_zip["Parameters"]["Emulator"] == {
        "Type": "String",
        "AllowedValues": ["true", "false"],
        "Default": "false",
        "Description": with_zip["Parameters"]["Emulator"]["Description"],
    }
    assert with_zip["Conditions"] == {"Real": {"Fn::Equals": [{"Ref": "Emulator"}, "false"]}}
    assert with_zip["Parameters"]["CodeKey"]["Default"] == f"lambda/{ZIP_SHA}.zip"
    assert "Default" not in with_zip["Parameters"]["CodeBucket"]
    assert "Default" not in build_template(real_manifest())["Parameters"]["CodeKey"]


def test_logical_ids_are_alphanumeric_and_stable_per_subscription_name() -> None:
    template = build_template(real_manifest())
    for logical_id in [*template["Resources"], *template["Outputs"]]:
        assert re.fullmatch(r"[A-Za-z0-9]{1,255}", logical_id), logical_id
    audit_id = subscription_logical_id("payments audit")
    assert re.fullmatch(r"SubscriptionPaymentsAudit[0-9A-F]{8}", audit_id)
    assert subscription_logical_id("payments audit") == audit_id  # a pure function of the name
    assert subscription_logical_id("a-b") != subscription_logical_id("a_b")  # same CamelCase, told apart
    for stem in (audit_id, subscription_logical_id("welcome-email")):
        for suffix in ("Queue", "DeadLetterQueue", "Rule", "QueuePolicy", "EventSourceMapping"):
            assert f"{stem}{suffix}" in template["Resources"]


def test_resource_names_are_per_stack_and_queue_names_fit_sqs() -> None:
    template = build_template(hand_manifest())
    longest_stack = "s" * MAX_STACK_NAME_LENGTH
    validate_stack_name(longest_stack)
    with pytest.raises(ev.EventualError, match="at most"):
        validate_stack_name(longest_stack + "s")
    with pytest.raises(ev.EventualError, match="not a CloudFormation stack name"):
        validate_stack_name("1-starts-with-a-digit")

    def with_stack(name: Any) -> str:
        assert set(name) == {"Fn::Sub"}, name
        assert isinstance(name["Fn::Sub"], str), name
        assert "${AWS::StackName}" in name["Fn::Sub"], name
        return str(name["Fn::Sub"]).replace("${AWS::StackName}", longest_stack)

    queues = resources_of(template, "AWS::SQS::Queue")
    assert len(queues) == 2 * (3 + 2)  # workflow, activity, timer + two subscriptions, each with a DLQ
    for logical_id, queue in queues.items():
        properties = queue["Properties"]
        name = with_stack(properties["QueueName"])
        assert len(name) <= MAX_QUEUE_NAME_LENGTH, (logical_id, name)
        assert re.fullmatch(r"[A-Za-z0-9_-]+(\.fifo)?", name), name
        assert name.endswith(".fifo") == bool(properties.get("FifoQueue")), logical_id
    workflow = queues["WorkflowQueue"]["Properties"]
    assert workflow["ContentBasedDeduplication"] is True
    assert workflow["DeduplicationScope"] == "messageGroup"
    assert workflow["FifoThroughputLimit"] == "perMessageGroupId"
    assert queues["WorkflowDeadLetterQueue"]["Properties"]["FifoQueue"] is True
    for table in resources_of(template, "AWS::DynamoDB::Table").values():
        with_stack(table["Properties"]["TableName"])
        assert table["Properties"]["BillingMode"] == "PAY_PER_REQUEST"
        assert [key["AttributeName"] for key in table["Properties"]["KeySchema"]] == ["pk", "sk"]
    log_groups = resources_of(template, "AWS::Logs::LogGroup")
    assert len(log_groups) == 1 + 6  # executions + one per function
    for log_group in log_groups.values():
        with_stack(log_group["Properties"]["LogGroupName"])
        assert log_group["Properties"]["RetentionInDays"] > 0
    assert with_stack(template["Resources"]["Bus"]["Properties"]["Name"]) == f"{longest_stack}-bank"


def test_functions_and_queue_visibility() -> None:
    manifest = hand_manifest()
    manifest["handlers"]["api"] = "handlers.custom_api_entry"  # taken from the manifest, not assumed
    template = build_template(manifest)
    functions = resources_of(template, "AWS::Lambda::Function")
    by_handler = {function["Properties"]["Handler"]: key for key, function in functions.items()}
    assert by_handler == {
        "handlers.custom_api_entry": "ApiFunction",
        "handlers.orchestrator": "OrchestratorFunction",
        "handlers.activity_worker": "ActivityFunction",
        "handlers.subscription_worker": "SubscriptionFunction",
        "handlers.timer": "TimerFunction",
        "handlers.schedule_forwarder": "ScheduleForwarderFunction",
    }
    timeouts = {key: function["Properties"]["Timeout"] for key, function in functions.items()}
    assert (timeouts["ApiFunction"], timeouts["OrchestratorFunction"], timeouts["ActivityFunction"]) == (29, 60, 900)
    for key, function in functions.items():
        properties = function["Properties"]
        assert properties["Runtime"] == "python3.12"
        assert properties["Architectures"] == ["x86_64"]
        assert properties["Code"] == {"S3Bucket": {"Ref": "CodeBucket"}, "S3Key": {"Ref": "CodeKey"}}
        assert properties["Role"] == {"Fn::GetAtt": [key.removesuffix("Function") + "Role", "Arn"]}
        assert properties["MemorySize"] >= 128
        variables = properties["Environment"]["Variables"]
        assert variables["EVENTUAL_RUNTIME"] == "aws"
        assert variables["EVENTUAL_SERVICE"] == "bank"
        assert variables["EVENTUAL_EXECUTIONS_TABLE"] == {"Ref": "ExecutionsTable"}
        assert variables["EVENTUAL_HISTORY_TABLE"] == {"Ref": "HistoryTable"}
        assert variables["EVENTUAL_WORKFLOW_QUEUE_URL"] == {"Ref": "WorkflowQueue"}
        assert variables["EVENTUAL_ACTIVITY_QUEUE_URL"] == {"Ref": "ActivityQueue"}
        assert variables["EVENTUAL_TIMER_QUEUE_URL"] == {"Ref": "TimerQueue"}
        assert variables["EVENTUAL_BUS_NAME"] == {"Fn::GetAtt": ["Bus", "Name"]}

    mappings = resources_of(template, "AWS::Lambda::EventSourceMapping")
    consumers: dict[str, str] = {}
    for mapping in mappings.values():
        queue = mapping["Properties"]["EventSourceArn"]["Fn::GetAtt"][0]
        function = mapping["Properties"]["FunctionName"]["Ref"]
        consumers[queue] = function
        assert mapping["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
        assert mapping["Properties"]["Enabled"] == {"Fn::If": ["Real", True, False]}  # the harness polls in moto
        visibility = template["Resources"][queue]["Properties"]["VisibilityTimeout"]
        wanted = min(VISIBILITY_FACTOR * timeouts[function], MAX_VISIBILITY_TIMEOUT)
        assert wanted <= visibility <= MAX_VISIBILITY_TIMEOUT, (queue, visibility, timeouts[function])
    subscription_queues = {f"{subscription_logical_id(name)}Queue" for name in ("notify-owner", "fraud_watch")}
    assert consumers == {
        "WorkflowQueue": "OrchestratorFunction",
        "ActivityQueue": "ActivityFunction",
        "TimerQueue": "TimerFunction",
        **dict.fromkeys(subscription_queues, "SubscriptionFunction"),
    }
    # every queue that is not a dead-letter queue has one consumer, and dead letters go to the DLQ of its stem
    for key, queue in resources_of(template, "AWS::SQS::Queue").items():
        if key.endswith("DeadLetterQueue"):
            continue
        assert key in consumers, key
        redrive = queue["Properties"]["RedrivePolicy"]
        assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": [key.removesuffix("Queue") + "DeadLetterQueue", "Arn"]}
    notify_queue = template["Resources"][f"{subscription_logical_id('notify-owner')}Queue"]["Properties"]
    assert notify_queue["RedrivePolicy"]["maxReceiveCount"] == 3  # the subscription's retry policy


def test_subscription_rules_match_source_and_event_names() -> None:
    template = build_template(hand_manifest())
    notify = template["Resources"][f"{subscription_logical_id('notify-owner')}Rule"]["Properties"]
    assert notify["EventPattern"] == {"source": ["bank"], "detail-type": ["AccountClosed", "TransferDone"]}
    assert notify["EventBusName"] == {"Fn::GetAtt": ["Bus", "Name"]}
    fraud_id = subscription_logical_id("fraud_watch")
    fraud = template["Resources"][f"{fraud_id}Rule"]["Properties"]
    assert fraud["EventPattern"] == {"source": ["cards"], "detail-type": ["CardSwiped"]}
    assert fraud["Targets"] == [{"Arn": {"Fn::GetAtt": [f"{fraud_id}Queue", "Arn"]}, "Id": "subscription-queue"}]
    policy = template["Resources"][f"{fraud_id}QueuePolicy"]
    assert policy["Condition"] == "Real"
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert statement["Condition"] == {"ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": [f"{fraud_id}Rule", "Arn"]}}}


def test_a_service_without_subscriptions_has_no_subscription_function() -> None:
    manifest = hand_manifest()
    manifest["service"]["subscriptions"] = []
    template = build_template(manifest)
    assert "SubscriptionFunction" not in template["Resources"]
    assert not resources_of(template, "AWS::Events::Rule")
    assert not resources_of(template, "AWS::SQS::QueuePolicy")
    assert_lint_clean(template)


# ------------------------------------------------------------------------------------ Real condition


def references(node: Any, guarded: bool = False) -> Iterator[tuple[str, bool]]:
    """(logical id or parameter, inside the true branch of `Fn::If [Real, ...]`) for each reference in node."""
    if isinstance(node, list):
        for item in node:
            yield from references(item, guarded)
    elif isinstance(node, dict):
        if set(node) == {"Ref"}:
            yield node["Ref"], guarded
        elif set(node) == {"Fn::GetAtt"}:
            yield node["Fn::GetAtt"][0], guarded
        elif set(node) == {"Fn::If"}:
            condition, when_true, when_false = node["Fn::If"]
            yield from references(when_true, guarded or condition == "Real")
            yield from references(when_false, guarded)
        elif set(node) == {"Fn::Sub"}:
            body, variables = (node["Fn::Sub"], {}) if isinstance(node["Fn::Sub"], str) else node["Fn::Sub"]
            for name in sub_variables(body):
                if name not in variables:
                    yield name.split(".")[0], guarded
            yield from references(list(variables.values()), guarded)
        else:
            for value in node.values():
                yield from references(value, guarded)


def sub_variables(body: str) -> list[str]:
    return [name for name in re.findall(r"\$\{([^}]*)\}", body) if not name.startswith("!")]


def test_everything_moto_cannot_create_is_conditioned_on_real() -> None:
    template = build_template(real_manifest())
    real_only = {key for key, resource in template["Resources"].items() if resource.get("Condition") == "Real"}
    left_to_harness = {template["Resources"][key]["Type"] for key in real_only}
    print("resource types left to the harness (Condition Real):", sorted(left_to_harness))
    assert left_to_harness == REAL_ONLY_TYPES
    # on AWS every function's signing key is the stack's generated secret, resolved at deploy time
    for key, resource in template["Resources"].items():
        if resource["Type"] == "AWS::Lambda::Function":
            key_source = resource["Properties"]["Environment"]["Variables"]["EVENTUAL_SIGNING_KEY"]
            assert key_source == {
                "Fn::If": [
                    "Real",
                    {"Fn::Sub": "{{resolve:secretsmanager:${SigningKeySecret}:SecretString}}"},
                    {"Ref": "SigningKey"},
                ]
            }, key
    assert {key for key, output in template["Outputs"].items() if output.get("Condition") == "Real"} == {"ApiUrl"}
    # nothing that exists in the emulator names a Real-only resource outside `Fn::If [Real, ...]`
    unconditional = [
        (key, value)
        for key, value in [*template["Resources"].items(), *template["Outputs"].items()]
        if value.get("Condition") != "Real"
    ]
    for key, value in unconditional:
        for name, guarded in references(value):
            assert guarded or name not in real_only, f"{key} refers to {name}, which is absent in the emulator"


# ------------------------------------------------------------------------------------ cfn-lint (offline)


def test_cfn_lint_reports_no_errors() -> None:
    assert_lint_clean(build_template(hand_manifest()))
    assert_lint_clean(build_template(real_manifest()))
    # and the check is live: a dangling reference is an error
    broken = build_template(hand_manifest())
    broken["Resources"]["ApiFunction"]["Properties"]["Role"] = {"Fn::GetAtt": ["NoSuchRole", "Arn"]}
    with pytest.raises(AssertionError, match="NoSuchRole"):
        assert_lint_clean(broken)


# ------------------------------------------------------------------------------------ IAM


def role_statements(template: dict[str, Any], role: str) -> list[dict[str, Any]]:
    """Every statement of the role's inline policies, both branches of any Fn::If included."""
    statements: list[dict[str, Any]] = []

    def collect(node: Any) -> None:
        if isinstance(node, dict) and set(node) == {"Fn::If"}:
            for branch in node["Fn::If"][1:]:
                collect(branch)
        elif isinstance(node, dict) and node != {"Ref": "AWS::NoValue"}:
            statements.append(node)

    for policy in template["Resources"][role]["Properties"]["Policies"]:
        for statement in policy["PolicyDocument"]["Statement"]:
            collect(statement)
    return statements


def named_resources(resource: Any, template: dict[str, Any]) -> set[str]:
    """The logical ids one policy Resource entry is built from; fails on anything else."""
    assert isinstance(resource, dict), f"a literal Resource {resource!r} names nothing of this stack"
    names = {name for name, _guarded in references(resource)}
    logical_ids = names - PSEUDO_PARAMETERS
    assert logical_ids, f"{resource!r} is built from pseudo parameters only, so it could name another stack's resources"
    assert logical_ids <= set(template["Resources"]), f"{resource!r} names {logical_ids - set(template['Resources'])}"
    return logical_ids


def grants(template: dict[str, Any], role: str, action: str, logical_id: str) -> bool:
    for statement in role_statements(template, role):
        if action in statement["Action"] and any(
            logical_id in named_resources(resource, template) for resource in statement["Resource"]
        ):
            return True
    return False


def test_iam_roles_are_least_privilege() -> None:
    template = build_template(hand_manifest())
    roles = resources_of(template, "AWS::IAM::Role")
    assert set(roles) == {
        "ApiRole",
        "OrchestratorRole",
        "ActivityRole",
        "SubscriptionRole",
        "TimerRole",
        "ScheduleForwarderRole",
        "SchedulerRole",
    }
    for role in roles:
        statements = role_statements(template, role)
        assert statements, role
        for statement in statements:
            assert statement["Effect"] == "Allow"
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            for action in actions:
                assert "*" not in action, (role, action)
                assert re.fullmatch(r"[a-z0-9-]+:[A-Za-z0-9]+", action), (role, action)
            assert isinstance(statement["Resource"], list), (role, statement)
            assert statement["Resource"], (role, statement)
            for resource in statement["Resource"]:
                named_resources(resource, template)

    subscription_queues = [f"{subscription_logical_id(name)}Queue" for name in ("notify-owner", "fraud_watch")]
    # what each function needs
    assert grants(template, "ApiRole", "sqs:SendMessage", "WorkflowQueue")
    assert grants(template, "ApiRole", "dynamodb:PutItem", "ExecutionsTable")
    assert grants(template, "OrchestratorRole", "sqs:ReceiveMessage", "WorkflowQueue")
    assert grants(template, "OrchestratorRole", "sqs:SendMessage", "ActivityQueue")
    assert grants(template, "OrchestratorRole", "dynamodb:PutItem", "HistoryTable")
    assert grants(template, "OrchestratorRole", "scheduler:CreateSchedule", "ScheduleGroup")
    assert grants(template, "OrchestratorRole", "iam:PassRole", "SchedulerRole")
    assert grants(template, "ActivityRole", "sqs:ReceiveMessage", "ActivityQueue")
    assert grants(template, "TimerRole", "sqs:SendMessage", "WorkflowQueue")
    assert grants(template, "ScheduleForwarderRole", "sqs:SendMessage", "TimerQueue")
    assert grants(template, "SchedulerRole", "lambda:InvokeFunction", "ScheduleForwarderFunction")
    for queue in subscription_queues:
        assert grants(template, "SubscriptionRole", "sqs:ReceiveMessage", queue)
    # and what it does not
    assert not grants(template, "ApiRole", "sqs:ReceiveMessage", "ActivityQueue")
    assert not grants(template, "ApiRole", "sqs:SendMessage", "ActivityQueue")
    assert not grants(template, "ApiRole", "sqs:ReceiveMessage", "WorkflowQueue")
    assert not grants(template, "ApiRole", "dynamodb:PutItem", "HistoryTable")
    assert not grants(template, "ActivityRole", "sqs:ReceiveMessage", "WorkflowQueue")
    assert not grants(template, "ActivityRole", "dynamodb:PutItem", "HistoryTable")
    assert not grants(template, "TimerRole", "dynamodb:PutItem", "ExecutionsTable")
    assert not grants(template, "TimerRole", "events:PutEvents", "Bus")
    assert not grants(template, "ScheduleForwarderRole", "sqs:SendMessage", "WorkflowQueue")
    for role in ("ApiRole", "OrchestratorRole", "ActivityRole", "TimerRole", "ScheduleForwarderRole"):
        for queue in subscription_queues:
            assert not grants(template, role, "sqs:ReceiveMessage", queue), (role, queue)
    for role in set(roles) - {"OrchestratorRole"}:
        assert not grants(template, role, "iam:PassRole", "SchedulerRole"), role
        assert not grants(template, role, "scheduler:CreateSchedule", "ScheduleGroup"), role
    # each function writes its own log group and no other function's
    for role in set(roles) - {"SchedulerRole"}:
        stem = role.removesuffix("Role")
        for other in set(roles) - {"SchedulerRole"}:
            own = other == role
            assert grants(template, role, "logs:PutLogEvents", f"{other.removesuffix('Role')}LogGroup") == own
        assert grants(template, role, "logs:CreateLogStream", f"{stem}LogGroup")
    # an event source mapping only works if its function may consume that queue
    for mapping in resources_of(template, "AWS::Lambda::EventSourceMapping").values():
        queue = mapping["Properties"]["EventSourceArn"]["Fn::GetAtt"][0]
        role = mapping["Properties"]["FunctionName"]["Ref"].removesuffix("Function") + "Role"
        for action in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"):
            assert grants(template, role, action, queue), (role, action, queue)


def test_only_a_service_with_entities_gets_an_entities_table_and_only_entity_code_may_use_it() -> None:
    """API routes, activities and subscriptions run entity code; the orchestrator runs workflow code, which
    may not use entities, and the timer functions run none."""
    without = build_template(hand_manifest())
    assert "EntitiesTable" not in without["Resources"]
    assert "EntitiesTableName" not in without["Outputs"]
    assert all(
        "EVENTUAL_ENTITIES_TABLE" not in function["Properties"]["Environment"]["Variables"]
        for function in resources_of(without, "AWS::Lambda::Function").values()
    )

    manifest = hand_manifest()
    manifest["service"]["entities"] = [{"name": "accounts", "model": "Account", "key": ["id"], "schema": None}]
    template = build_template(manifest)
    assert_lint_clean(template)
    table = template["Resources"]["EntitiesTable"]["Properties"]
    assert table["TableName"] == {"Fn::Sub": "${AWS::StackName}-entities"}
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert template["Outputs"]["EntitiesTableName"]["Value"] == {"Ref": "EntitiesTable"}
    for role in ("ApiRole", "ActivityRole", "SubscriptionRole"):
        for action in ("GetItem", "Query", "PutItem", "UpdateItem", "DeleteItem", "ConditionCheckItem"):
            assert grants(template, role, f"dynamodb:{action}", "EntitiesTable"), (role, action)
        assert not grants(template, role, "dynamodb:Scan", "EntitiesTable")
    for role in ("OrchestratorRole", "TimerRole", "ScheduleForwarderRole", "SchedulerRole"):
        for action in ("GetItem", "Query", "PutItem", "UpdateItem", "DeleteItem", "ConditionCheckItem"):
            assert not grants(template, role, f"dynamodb:{action}", "EntitiesTable"), (role, action)
    api = template["Resources"]["ApiFunction"]["Properties"]["Environment"]["Variables"]
    assert api["EVENTUAL_ENTITIES_TABLE"] == {"Ref": "EntitiesTable"}


# ------------------------------------------------------------------------------------ moto's CloudFormation


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        # moto's backends are process-wide: start from nothing whatever earlier test modules created
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=30).close()
        yield endpoint
    finally:
        server.stop()


def client(endpoint: str, service: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


# the longest stack name allowed, so moto checks every queue name against SQS's limits
STACK = ("tmpl-test-stack-" + "x" * MAX_STACK_NAME_LENGTH)[:MAX_STACK_NAME_LENGTH]


@pytest.fixture(scope="module")
def deployed(moto_endpoint: str) -> dict[str, Any]:
    """The real service's template deployed into moto with Emulator=true."""
    template = build_template(real_manifest())
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("handlers.py", "def api(event, context):\n    return {}\n")
    s3 = client(moto_endpoint, "s3")
    s3.create_bucket(Bucket="tmpl-test-code")
    s3.put_object(Bucket="tmpl-test-code", Key="lambda/tiny.zip", Body=buffer.getvalue())
    # the other service's bus, where "payments audit" puts its rule (deploy checks that it exists)
    client(moto_endpoint, "events").create_event_bus(Name=default_source_bus("payments"))
    cloudformation = client(moto_endpoint, "cloudformation")
    cloudformation.create_stack(
        StackName=STACK,
        TemplateBody=dumped(template),
        Parameters=[
            {"ParameterKey": "Emulator", "ParameterValue": "true"},
            {"ParameterKey": "CodeBucket", "ParameterValue": "tmpl-test-code"},
            {"ParameterKey": "CodeKey", "ParameterValue": "lambda/tiny.zip"},
        ],
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"],
    )
    cloudformation.get_waiter("stack_create_complete").wait(
        StackName=STACK, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
    )
    (stack,) = cloudformation.describe_stacks(StackName=STACK)["Stacks"]
    resources = cloudformation.describe_stack_resources(StackName=STACK)["StackResources"]
    return {"template": template, "stack": stack, "resources": resources}


def test_deploys_into_moto_with_the_emulator_parameter(moto_endpoint: str, deployed: dict[str, Any]) -> None:
    template, stack, resources = deployed["template"], deployed["stack"], deployed["resources"]
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    outputs = {output["OutputKey"]: output["OutputValue"] for output in stack["Outputs"]}
    assert "ApiUrl" not in outputs  # Condition Real
    assert set(outputs) == set(template["Outputs"]) - {"ApiUrl"}
    assert outputs["BusName"] == f"{STACK}-tmpl-test"
    assert outputs["WorkflowQueueUrl"].endswith(f"/{STACK}-workflow.fifo")

    # moto lists a resource it left out without a logical id, so compare the ones it names
    created = {item["LogicalResourceId"]: item for item in resources if "LogicalResourceId" in item}
    for item in created.values():
        print(f"created {item['ResourceType']:36} {item['LogicalResourceId']}")
        assert item["ResourceStatus"] == "CREATE_COMPLETE"
    unconditional = {key for key, resource in template["Resources"].items() if resource.get("Condition") != "Real"}
    assert set(created) == unconditional
    left_out = {template["Resources"][key]["Type"] for key in set(template["Resources"]) - unconditional}
    print("resource types left to the harness:", sorted(left_out))
    assert left_out == REAL_ONLY_TYPES

    entities = client(moto_endpoint, "dynamodb").describe_table(TableName=outputs["EntitiesTableName"])["Table"]
    assert entities["TableName"] == f"{STACK}-entities"
    assert [key["AttributeName"] for key in entities["KeySchema"]] == ["pk", "sk"]

    sqs = client(moto_endpoint, "sqs")
    workflow = sqs.get_queue_attributes(QueueUrl=outputs["WorkflowQueueUrl"], AttributeNames=["All"])["Attributes"]
    assert workflow["FifoQueue"] == "true"
    assert workflow["ContentBasedDeduplication"] == "true"
    welcome_queue = created[f"{subscription_logical_id('welcome-email')}Queue"]["PhysicalResourceId"]
    welcome = sqs.get_queue_attributes(QueueUrl=welcome_queue, AttributeNames=["All"])["Attributes"]
    assert json.loads(welcome["RedrivePolicy"])["maxReceiveCount"] == 4

    functions = client(moto_endpoint, "lambda")
    mappings = functions.list_event_source_mappings()["EventSourceMappings"]
    assert len(mappings) == 5
    assert {mapping["State"] for mapping in mappings} == {"Disabled"}
    subscription_function = created["SubscriptionFunction"]["PhysicalResourceId"]
    configuration = functions.get_function_configuration(FunctionName=subscription_function)
    assert (configuration["Runtime"], configuration["Handler"]) == ("python3.12", "handlers.subscription_worker")
    variables = configuration["Environment"]["Variables"]
    assert variables["EVENTUAL_BUS_NAME"] == outputs["BusName"]
    assert variables["EVENTUAL_ENTITIES_TABLE"] == outputs["EntitiesTableName"]
    assert variables["EVENTUAL_WORKFLOW_QUEUE_URL"] == outputs["WorkflowQueueUrl"]
    queue_arns = {
        name: sqs.get_queue_attributes(
            QueueUrl=created[f"{subscription_logical_id(name)}Queue"]["PhysicalResourceId"], AttributeNames=["QueueArn"]
        )["Attributes"]["QueueArn"]
        for name in ("welcome-email", "payments audit")
    }
    assert json.loads(variables["EVENTUAL_SUBSCRIPTION_QUEUES"]) == {arn: name for name, arn in queue_arns.items()}


def drain(sqs: Any, queue_url: str) -> list[tuple[str, str, dict[str, Any]]]:
    received: list[tuple[str, str, dict[str, Any]]] = []
    while True:
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
            "Messages", []
        )
        if not messages:
            return received
        for message in messages:
            body = json.loads(message["Body"])
            received.append((body["source"], body["detail-type"], body["detail"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])


def test_rules_route_events_to_subscription_queues_in_moto(moto_endpoint: str, deployed: dict[str, Any]) -> None:
    outputs = {output["OutputKey"]: output["OutputValue"] for output in deployed["stack"]["Outputs"]}
    created = {item["LogicalResourceId"]: item for item in deployed["resources"] if "LogicalResourceId" in item}
    queues = {
        name: created[f"{subscription_logical_id(name)}Queue"]["PhysicalResourceId"]
        for name in ("welcome-email", "payments audit")
    }
    events = client(moto_endpoint, "events")
    own, payments = outputs["BusName"], default_source_bus("payments")
    entries = [
        (own, "tmpl-test", "AccountOpened", {"account_id": "a-1"}),  # → welcome-email
        (payments, "payments", "PaymentSettled", {"payment_id": "p-1", "amount": 5}),  # → payments audit
        (own, "payments", "PaymentSettled", {"payment_id": "p-3", "amount": 9}),  # not on the payments bus: no one
        (own, "tmpl-test", "PaymentSettled", {"payment_id": "p-2", "amount": 7}),  # our own PaymentSettled: no one
        (own, "elsewhere", "AccountOpened", {"account_id": "a-2"}),  # another service's AccountOpened: no one
    ]
    answer = events.put_events(
        Entries=[
            {"EventBusName": bus, "Source": source, "DetailType": detail_type, "Detail": json.dumps(detail)}
            for bus, source, detail_type, detail in entries
        ]
    )
    assert answer["FailedEntryCount"] == 0
    sqs = client(moto_endpoint, "sqs")
    assert drain(sqs, queues["welcome-email"]) == [entries[0][1:]]
    assert drain(sqs, queues["payments audit"]) == [entries[1][1:]]
