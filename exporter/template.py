"""`template.json`: plain CloudFormation for an exported service (what `eventual-nb deploy` creates).

Plain CloudFormation rather than SAM because it deploys with boto3 alone, cfn-lint checks all of it offline,
and moto's CloudFormation can create most of it, so the same file serves the real deploy and the offline
tests. The template is a pure function of the manifest: no clock, no paths, no randomness, so an export
is byte-identical across runs and a redeploy of an unchanged notebook is an empty change set.

Everything moto cannot create (API Gateway v2, EventBridge Scheduler, SQS queue policies, the API's
Lambda permission) and every output or policy statement that refers to one carries the `Real` condition,
which is false when the stack is deployed with `Emulator=true`; the test harness stands in for those parts.

Conventions the AWS runtime (eventual_nb/runtime/aws/) relies on:

* Events go onto the bus with `Source` = the publishing service's name, `DetailType` = the event name and
  `Detail` = the event's JSON. Each subscription's rule matches its `source` (default: this service)
  and its event names, and delivers to that subscription's own queue.
* A subscription to another service's events has its rule on *that* service's bus, whose name is a
  parameter of this template (`source_bus_parameter`, listed under `Metadata` as `SOURCE_BUSES_METADATA`),
  by default the bus of a stack named after that service (`default_source_bus`); deploy checks that the bus
  exists. Every stack exports its bus name as `<stack>-BusName`. The functions need no permission on the
  other bus: its rule sends to the queue, which the queue's policy allows.
* Every function gets the same `EVENTUAL_*` environment (table names, queue URLs, bus and log group
  names, the activity-token secret) so one settings reader serves all handlers; the orchestrator also
  gets the Scheduler role and target, the subscription worker a JSON map from queue ARN to subscription
  name.
* Names of stack resources are `${AWS::StackName}-...`, so two stacks of one service never collide; the
  longest suffix is bounded so that any stack name up to `MAX_STACK_NAME_LENGTH` keeps SQS names within
  their 80-character limit (CloudFormation cannot truncate strings, so the deployer must check).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import eventual_nb as ev
from eventual_nb.runtime.aws.clients import (
    ACTIVITY_QUEUE_VARIABLE,
    BUS_VARIABLE,
    ENTITIES_TABLE_VARIABLE,
    EXECUTIONS_TABLE_VARIABLE,
    HISTORY_LAYOUT,
    HISTORY_LAYOUT_VARIABLE,
    HISTORY_TABLE_VARIABLE,
    LOG_GROUP_VARIABLE,
    SCHEDULE_GROUP_VARIABLE,
    SCHEDULE_TARGET_VARIABLE,
    SCHEDULER_ROLE_VARIABLE,
    SERVICE_VARIABLE,
    SUBSCRIPTION_QUEUES_VARIABLE,
    TIMER_QUEUE_VARIABLE,
    WORKFLOW_QUEUE_VARIABLE,
)
from eventual_nb.runtime.aws.schedules import recurring_schedule
from eventual_nb.runtime.aws.stores import LISTING_INDEXES, LISTING_SORT_KEY
from eventual_nb.runtime.core.limits import ORCHESTRATOR_TIMEOUT
from eventual_nb.runtime.core.schedules import Schedule, schedule_from_spec
from eventual_nb.runtime.tokens import SIGNING_KEY_VARIABLE

#: the Lambda runtime the zip is built for (exporter/bundle.py)
LAMBDA_RUNTIME = "python3.12"
LOG_RETENTION_DAYS = 30
#: every queue keeps messages as long as SQS allows: a workflow turn or timer must outlive a broken
#: deploy, and dead letters stay listable
MESSAGE_RETENTION_SECONDS = 1_209_600
#: AWS guidance for SQS → Lambda: a queue's visibility timeout at least six times the consumer's timeout
VISIBILITY_FACTOR = 6
MAX_VISIBILITY_TIMEOUT = 43_200
#: deliveries of one message before SQS moves it to the dead-letter queue, for queues whose handlers are
#: idempotent plumbing (the workflow, activity and timer queues); subscriptions use their retry policy
PLUMBING_RECEIVE_COUNT = 5
MAX_RECEIVE_COUNT = 1000
MAX_QUEUE_NAME_LENGTH = 80
MAX_RESOURCES = 500

_SUBSCRIPTION_SLUG_LENGTH = 16
_SUBSCRIPTION_HASH_LENGTH = 8
#: the longest `-suffix` a queue name gets after the stack name: "-sub-<slug>-<hash>-dlq"
_LONGEST_QUEUE_SUFFIX = len("-sub-") + _SUBSCRIPTION_SLUG_LENGTH + 1 + _SUBSCRIPTION_HASH_LENGTH + len("-dlq")
#: stack names up to this length keep every queue name within SQS's 80 characters
MAX_STACK_NAME_LENGTH = MAX_QUEUE_NAME_LENGTH - _LONGEST_QUEUE_SUFFIX

_BUS_SLUG_LENGTH = 64
_PARTITION_ARN_PREFIX = "arn:${AWS::Partition}"

#: the activity-token secret (eventual_nb/runtime/aws/workers.py reads it as EVENTUAL_SIGNING_KEY). On AWS
#: the stack generates it as a Secrets Manager secret and CloudFormation resolves it into the
#: functions' environment at deploy time (a dynamic reference), so no function calls Secrets Manager at cold
#: start. moto's CloudFormation cannot create secrets, so with Emulator=true the value comes from this
#: NoEcho parameter instead (`eventual-nb deploy` generates it on create and keeps it on update).
SIGNING_KEY_PARAMETER = "SigningKey"
SIGNING_KEY_SECRET = "SigningKeySecret"

REAL = "Real"
NO_VALUE = {"Ref": "AWS::NoValue"}


@dataclass(frozen=True)
class _Function:
    """One Lambda function: its manifest handler key, logical-id stem and sizing."""

    key: str
    stem: str
    timeout: int
    memory: int
    purpose: str


# API Gateway gives up on an integration after 29 s, so a longer API timeout would only hide failures.
# Activities run user code for as long as Lambda allows; the orchestrator replays, dispatches and runs inline
# activities, whose timeouts are checked against its limit at decoration (core.limits.ORCHESTRATOR_TIMEOUT).
_API = _Function("api", "Api", 29, 512, "HTTP API (service routes and /_eventual/ internal routes)")
_ORCHESTRATOR = _Function(
    "orchestrator",
    "Orchestrator",
    int(ORCHESTRATOR_TIMEOUT.total_seconds()),
    512,
    "workflow turns from the FIFO workflow queue",
)
_ACTIVITY = _Function("activity", "Activity", 900, 1024, "activity attempts from the activity queue")
_SUBSCRIPTION = _Function("subscription", "Subscription", 300, 512, "subscription deliveries from their queues")
_TIMER = _Function("timer", "Timer", 60, 256, "due timers from the timer queue")
_SCHEDULE = _Function(
    "schedule", "ScheduleForwarder", 60, 256, "long timers and schedule fires delivered by EventBridge Scheduler"
)

_CONSUME = ["sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ReceiveMessage"]
_SEND = ["sqs:SendMessage"]
_TABLE_READ = ["dynamodb:GetItem", "dynamodb:Query"]
_TABLE_WRITE = ["dynamodb:ConditionCheckItem", "dynamodb:PutItem", "dynamodb:UpdateItem"]
_TABLE_READ_WRITE = [*_TABLE_READ, *_TABLE_WRITE, "dynamodb:DeleteItem"]
#: what entity code needs on the entities table (eventual_nb/runtime/aws/entities.py): strongly consistent
#: reads, queries, conditional puts and deletes, an unconditional put's version increment (UpdateItem), and
#: the same actions again inside `TransactWriteItems` (IAM has no action of its own for it)
_ENTITY_ACCESS = [
    "dynamodb:ConditionCheckItem",
    "dynamodb:DeleteItem",
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:Query",
    "dynamodb:UpdateItem",
]
_LOG_WRITE = ["logs:CreateLogStream", "logs:PutLogEvents"]


def build_template(manifest: dict[str, Any]) -> dict[str, Any]:
    """The CloudFormation template (a JSON-able dict) that deploys the manifest's service.

    Pure and deterministic: the same manifest always gives an equal dict, whatever order the
    subscriptions were defined in.
    """
    return _Builder(manifest).build()


def validate_stack_name(stack_name: str) -> None:
    """Refuse stack names that CloudFormation accepts but that would make a queue name too long for SQS."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", stack_name):
        raise ev.EventualError(
            f"stack name {stack_name!r} is not a CloudFormation stack name (a letter, then letters, digits and '-')"
        )
    if len(stack_name) > MAX_STACK_NAME_LENGTH:
        raise ev.EventualError(
            f"stack name {stack_name!r} has {len(stack_name)} characters; at most {MAX_STACK_NAME_LENGTH} keep "
            f"every SQS queue name within {MAX_QUEUE_NAME_LENGTH} characters"
        )


#: where the template lists the other services' buses its subscriptions listen on: `{service: parameter}`
SOURCE_BUSES_METADATA = "EventualSourceBuses"


def bus_name(stack: str, service: str) -> str:
    """The name of the event bus of service `service` deployed as stack `stack` (the `Bus` resource's)."""
    return f"{stack}-{_bus_slug(service)}"


def default_source_bus(service: str) -> str:
    """Where a subscription to service `service`'s events looks by default: the bus of a stack named after it."""
    return bus_name(service, service)


def stack_of_bus(bus: str, service: str) -> str | None:
    """The stack that `bus_name` gave bus `bus` of service `service` (None if the name is not one of those)."""
    suffix = "-" + _bus_slug(service)
    return bus[: -len(suffix)] if bus.endswith(suffix) and len(bus) > len(suffix) else None


def source_bus_parameter(service: str) -> str:
    """`BusOf<CamelCase service><hash>`: the template parameter naming service `service`'s bus."""
    camel = "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", service) if part)
    return f"BusOf{camel[:48]}{_name_hash(service).upper()}"


def _bus_slug(service: str) -> str:
    return _slug(service, "A-Za-z0-9._-", _BUS_SLUG_LENGTH)


def subscription_logical_id(name: str) -> str:
    """`Subscription<CamelCase name><hash>`: readable, alphanumeric, and stable for a given name.

    The hash is always appended: whether it is needed cannot be judged from one name alone
    ("a-b" and "a_b" camel-case alike), and a logical id must not change when another subscription
    is added, or CloudFormation would replace that subscription's queue and lose its messages.
    """
    return _logical_id("Subscription", name)


def schedule_logical_id(name: str) -> str:
    """`Schedule<CamelCase name><hash>`, stable for a given name as `subscription_logical_id`."""
    return _logical_id("Schedule", name)


def _logical_id(kind: str, name: str) -> str:
    camel = "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", name) if part)
    return f"{kind}{camel[:48]}{_name_hash(name).upper()}"


def subscription_queue_suffix(name: str) -> str:
    """`sub-<slug>-<hash>`, the part of a subscription's queue name after `${AWS::StackName}-`."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:_SUBSCRIPTION_SLUG_LENGTH].strip("-")
    return f"sub-{slug or 'x'}-{_name_hash(name)}"


def _name_hash(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8")).hexdigest()[:_SUBSCRIPTION_HASH_LENGTH]


def _slug(text: str, allowed: str, length: int) -> str:
    return re.sub(f"[^{allowed}]+", "-", text).strip("-")[:length].strip("-") or "service"


def _ref(logical_id: str) -> dict[str, Any]:
    return {"Ref": logical_id}


def _arn(logical_id: str) -> dict[str, Any]:
    return {"Fn::GetAtt": [logical_id, "Arn"]}


def _stack_named(suffix: str) -> dict[str, Any]:
    return {"Fn::Sub": "${AWS::StackName}" + suffix}


def _log_group_named(suffix: str) -> dict[str, Any]:
    return {"Fn::Sub": "/eventual/${AWS::StackName}" + suffix}


def _pk_sk_table(suffix: str) -> dict[str, Any]:
    """An on-demand table `${AWS::StackName}<suffix>` keyed by the strings `pk` and `sk` (every table here)."""
    return {
        "TableName": _stack_named(suffix),
        "AttributeDefinitions": [
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        "KeySchema": [
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }


def _statement(actions: list[str], resources: list[Any], condition: dict[str, Any] | None = None) -> dict[str, Any]:
    statement: dict[str, Any] = {"Effect": "Allow", "Action": sorted(set(actions)), "Resource": resources}
    if condition is not None:
        statement["Condition"] = condition
    return statement


def _only_real(statement: dict[str, Any]) -> dict[str, Any]:
    """A policy statement naming a resource that exists only when the stack is not in the emulator."""
    return {"Fn::If": [REAL, statement, NO_VALUE]}


def _visibility_timeout(consumer: _Function) -> int:
    return min(VISIBILITY_FACTOR * consumer.timeout, MAX_VISIBILITY_TIMEOUT)


class _Builder:
    """Accumulates resources for one manifest; split out so each block of the design is one method."""

    def __init__(self, manifest: dict[str, Any]) -> None:
        self.manifest = manifest
        self.service_name: str = manifest["name"]
        self.handlers: dict[str, str] = manifest["handlers"]
        subscriptions = manifest.get("service", {}).get("subscriptions", [])
        self.subscriptions: list[dict[str, Any]] = sorted(subscriptions, key=lambda item: item["name"])
        schedules = manifest.get("service", {}).get("schedules", [])
        self.schedules: list[Schedule] = sorted(
            (schedule_from_spec(spec) for spec in schedules), key=lambda item: item.name
        )
        self.has_entities = bool(manifest.get("service", {}).get("entities"))
        #: the other services whose events subscriptions here receive (their buses are parameters)
        self.sources = sorted(
            {item["source"] for item in self.subscriptions if item.get("source") not in (None, self.service_name)}
        )
        self.resources: dict[str, Any] = {}
        self.outputs: dict[str, Any] = {}

    def add(self, logical_id: str, resource_type: str, properties: dict[str, Any], **extra: Any) -> str:
        if logical_id in self.resources:
            raise ev.EventualError(f"two template resources would share the logical id {logical_id!r}")
        self.resources[logical_id] = {"Type": resource_type, "Properties": properties, **extra}
        return logical_id

    def build(self) -> dict[str, Any]:
        self.signing_key()
        self.storage()
        self.queues()
        self.bus_and_subscriptions()
        self.log_groups()
        self.scheduler()
        self.functions()
        self.http_api()
        self.add_outputs()
        if len(self.resources) > MAX_RESOURCES:
            raise ev.EventualError(
                f"service {self.service_name!r} needs {len(self.resources)} CloudFormation resources; a stack "
                f"holds at most {MAX_RESOURCES} (each subscription takes 5)"
            )
        code_key: dict[str, Any] = {
            "Type": "String",
            "Description": "S3 key of lambda.zip in CodeBucket (name it after the zip's sha256 so updates deploy)",
        }
        lambda_zip = self.manifest.get("lambda_zip")
        if lambda_zip:
            code_key["Default"] = lambda_zip["s3_key"]
        version = self.manifest.get("eventual_nb_version", "unknown")
        metadata = {"Metadata": {SOURCE_BUSES_METADATA: {s: source_bus_parameter(s) for s in self.sources}}}
        return {
            "AWSTemplateFormatVersion": "2010-09-09",
            **(metadata if self.sources else {}),
            "Description": f"eventual-nb service {self.service_name!r} (exported with eventual-nb {version})"[:1024],
            "Parameters": {
                "Emulator": {
                    "Type": "String",
                    "AllowedValues": ["true", "false"],
                    "Default": "false",
                    "Description": "true when deploying into an emulator (moto): leaves out what it cannot create",
                },
                "CodeBucket": {
                    "Type": "String",
                    "MinLength": 3,
                    "Description": "S3 bucket holding lambda.zip",
                },
                "CodeKey": code_key,
                SIGNING_KEY_PARAMETER: {
                    "Type": "String",
                    "NoEcho": True,
                    "Default": "",
                    "Description": "with Emulator=true only: the secret that signs activity tokens "
                    "(EVENTUAL_SIGNING_KEY); on AWS the stack generates a Secrets Manager secret instead",
                },
                **{
                    source_bus_parameter(source): {
                        "Type": "String",
                        "Default": default_source_bus(source),
                        "Description": f"EventBridge bus of service {source!r}, where this service's subscriptions "
                        f"to its events put their rules (default: that of a stack named {source!r})"[:4000],
                    }
                    for source in self.sources
                },
            },
            "Conditions": {REAL: {"Fn::Equals": [{"Ref": "Emulator"}, "false"]}},
            "Resources": self.resources,
            "Outputs": self.outputs,
        }

    # ---------------------------------------------------------------------------------------- storage

    def signing_key(self) -> None:
        """The activity-token secret, generated by Secrets Manager on AWS (see SIGNING_KEY_PARAMETER)."""
        self.add(
            SIGNING_KEY_SECRET,
            "AWS::SecretsManager::Secret",
            {
                "Description": {"Fn::Sub": "eventual-nb: signs the activity tokens of stack ${AWS::StackName}"},
                "GenerateSecretString": {"PasswordLength": 64, "ExcludePunctuation": True},
            },
            Condition=REAL,
        )

    def storage(self) -> None:
        for logical_id, suffix in (("ExecutionsTable", "-executions"), ("HistoryTable", "-history")):
            properties = _pk_sk_table(suffix)
            if logical_id == "ExecutionsTable":
                self.listing_indexes(properties)
            self.add(logical_id, "AWS::DynamoDB::Table", properties)
        if self.has_entities:
            # one table for all of the service's entities (`eventual_nb/runtime/aws/entities.py` has the layout:
            # pk = "<entity>#<partition>", sk = the sort key); point-in-time recovery is on, since entities are
            # the service's own data, which no execution history could rebuild
            properties = _pk_sk_table("-entities")
            properties["PointInTimeRecoverySpecification"] = {"PointInTimeRecoveryEnabled": True}
            self.add("EntitiesTable", "AWS::DynamoDB::Table", properties)

    @staticmethod
    def listing_indexes(properties: dict[str, Any]) -> None:
        """The sparse, sharded indexes `ExecutionStore.list` reads (eventual_nb/runtime/aws/stores.py): by status,
        and by workflow and status (ended executions), each sorted by start time. Their partition keys carry a
        shard number, so listing never funnels every execution into one partition."""
        for attribute in [*LISTING_INDEXES.values(), LISTING_SORT_KEY]:
            properties["AttributeDefinitions"].append({"AttributeName": attribute, "AttributeType": "S"})
        properties["GlobalSecondaryIndexes"] = [
            {
                "IndexName": index,
                "KeySchema": [
                    {"AttributeName": attribute, "KeyType": "HASH"},
                    {"AttributeName": LISTING_SORT_KEY, "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
            for index, attribute in LISTING_INDEXES.items()
        ]

    # ----------------------------------------------------------------------------------------- queues

    def queue_pair(
        self, stem: str, suffix: str, consumer: _Function, max_receive_count: int, *, fifo: bool = False
    ) -> None:
        """A queue and its dead-letter queue (`<stem>Queue`, `<stem>DeadLetterQueue`)."""
        ending = ".fifo" if fifo else ""
        dead_letter: dict[str, Any] = {
            "QueueName": _stack_named(f"{suffix}-dlq{ending}"),
            "MessageRetentionPeriod": MESSAGE_RETENTION_SECONDS,
        }
        queue: dict[str, Any] = {
            "QueueName": _stack_named(f"{suffix}{ending}"),
            "VisibilityTimeout": _visibility_timeout(consumer),
            "MessageRetentionPeriod": MESSAGE_RETENTION_SECONDS,
            "RedrivePolicy": {
                "deadLetterTargetArn": _arn(f"{stem}DeadLetterQueue"),
                "maxReceiveCount": max(1, min(max_receive_count, MAX_RECEIVE_COUNT)),
            },
        }
        if fifo:
            dead_letter["FifoQueue"] = True
            queue.update(
                {
                    "FifoQueue": True,
                    "ContentBasedDeduplication": True,
                    "DeduplicationScope": "messageGroup",
                    "FifoThroughputLimit": "perMessageGroupId",
                }
            )
        self.add(f"{stem}DeadLetterQueue", "AWS::SQS::Queue", dead_letter)
        self.add(f"{stem}Queue", "AWS::SQS::Queue", queue)

    def queues(self) -> None:
        # One FIFO group per execution keeps each execution's turns single-writer and in order.
        self.queue_pair("Workflow", "-workflow", _ORCHESTRATOR, PLUMBING_RECEIVE_COUNT, fifo=True)
        # Standard queues: FIFO queues reject per-message DelaySeconds, which timers and retries need.
        self.queue_pair("Activity", "-activities", _ACTIVITY, PLUMBING_RECEIVE_COUNT)
        self.queue_pair("Timer", "-timers", _TIMER, PLUMBING_RECEIVE_COUNT)

    # ----------------------------------------------------------------------------- bus, subscriptions

    def bus_and_subscriptions(self) -> None:
        self.add("Bus", "AWS::Events::EventBus", {"Name": _stack_named("-" + _bus_slug(self.service_name))})
        for subscription in self.subscriptions:
            name = subscription["name"]
            stem = subscription_logical_id(name)
            retry = subscription.get("retry") or {}
            self.queue_pair(stem, "-" + subscription_queue_suffix(name), _SUBSCRIPTION, retry.get("max_attempts", 1))
            queue, rule = f"{stem}Queue", f"{stem}Rule"
            self.add(
                rule,
                "AWS::Events::Rule",
                {
                    "Description": f"delivers {', '.join(subscription['events'])} to subscription {name!r}"[:512],
                    "EventBusName": self.bus_of(subscription.get("source") or self.service_name),
                    "EventPattern": {
                        "source": [subscription.get("source") or self.service_name],
                        "detail-type": sorted(set(subscription["events"])),
                    },
                    "State": "ENABLED",
                    "Targets": [{"Arn": _arn(queue), "Id": "subscription-queue"}],
                },
            )
            self.add(
                f"{stem}QueuePolicy",
                "AWS::SQS::QueuePolicy",
                {
                    "Queues": [_ref(queue)],
                    "PolicyDocument": {
                        "Version": "2012-10-17",
                        "Statement": [
                            {
                                "Effect": "Allow",
                                "Principal": {"Service": "events.amazonaws.com"},
                                "Action": "sqs:SendMessage",
                                "Resource": _arn(queue),
                                "Condition": {"ArnEquals": {"aws:SourceArn": _arn(rule)}},
                            }
                        ],
                    },
                },
                Condition=REAL,
            )

    def bus_of(self, source: str) -> dict[str, Any]:
        """The bus that service `source` publishes on: this stack's, or the parameter naming another's."""
        if source == self.service_name:
            # GetAtt Bus.Name rather than Ref: both work on AWS, and moto fails on the Ref.
            return {"Fn::GetAtt": ["Bus", "Name"]}
        return _ref(source_bus_parameter(source))

    # ------------------------------------------------------------------------------------------- logs

    def functions_in_use(self) -> list[_Function]:
        functions = [_API, _ORCHESTRATOR, _ACTIVITY, _TIMER, _SCHEDULE]
        if self.subscriptions:
            functions.insert(3, _SUBSCRIPTION)
        return functions

    def log_groups(self) -> None:
        self.add(
            "ExecutionLogGroup",
            "AWS::Logs::LogGroup",
            {"LogGroupName": _log_group_named("/executions"), "RetentionInDays": LOG_RETENTION_DAYS},
        )
        # Lambda writes to these through LoggingConfig, so the function names can stay generated by
        # CloudFormation (a FunctionName would cap stack names at 64 characters and block replacements).
        for function in self.functions_in_use():
            self.add(
                f"{function.stem}LogGroup",
                "AWS::Logs::LogGroup",
                {"LogGroupName": _log_group_named(f"/functions/{function.key}"), "RetentionInDays": LOG_RETENTION_DAYS},
            )

    # -------------------------------------------------------------------------------------- scheduler

    def scheduler(self) -> None:
        self.add("ScheduleGroup", "AWS::Scheduler::ScheduleGroup", {"Name": _stack_named("-timers")}, Condition=REAL)
        # The role Scheduler assumes to fire a long timer into the forwarder; not conditional, so the
        # orchestrator's environment and PassRole can name it in the emulator too.
        self.add(
            "SchedulerRole",
            "AWS::IAM::Role",
            {
                "AssumeRolePolicyDocument": _trust("scheduler.amazonaws.com", same_account=True),
                "Policies": [
                    _policy([_statement(["lambda:InvokeFunction"], [_arn(f"{_SCHEDULE.stem}Function")])]),
                ],
            },
        )
        # One recurring schedule per `@ev.schedule`, delivering each fire with its scheduled time to the
        # forwarder (eventual_nb/runtime/aws/schedules.py). In the emulator, `eventual-nb deploy` creates
        # them in moto from these very properties.
        for schedule in self.schedules:
            self.add(
                schedule_logical_id(schedule.name),
                "AWS::Scheduler::Schedule",
                recurring_schedule(
                    schedule,
                    group=_ref("ScheduleGroup"),
                    target_arn=_arn(f"{_SCHEDULE.stem}Function"),
                    role_arn=_arn("SchedulerRole"),
                ),
                Condition=REAL,
            )

    # -------------------------------------------------------------------------------------- functions

    def environment(self) -> dict[str, Any]:
        return {
            "EVENTUAL_RUNTIME": "aws",
            SERVICE_VARIABLE: self.service_name,
            EXECUTIONS_TABLE_VARIABLE: _ref("ExecutionsTable"),
            HISTORY_TABLE_VARIABLE: _ref("HistoryTable"),
            # what the history table holds; the runtime refuses a stack of another layout (clients.py)
            HISTORY_LAYOUT_VARIABLE: HISTORY_LAYOUT,
            WORKFLOW_QUEUE_VARIABLE: _ref("WorkflowQueue"),
            ACTIVITY_QUEUE_VARIABLE: _ref("ActivityQueue"),
            TIMER_QUEUE_VARIABLE: _ref("TimerQueue"),
            BUS_VARIABLE: {"Fn::GetAtt": ["Bus", "Name"]},
            LOG_GROUP_VARIABLE: _ref("ExecutionLogGroup"),
            # the group's name rather than a Ref: the group is absent in the emulator, where the harness
            # creates one of this name
            SCHEDULE_GROUP_VARIABLE: _stack_named("-timers"),
            **({ENTITIES_TABLE_VARIABLE: _ref("EntitiesTable")} if self.has_entities else {}),
            # the activity worker signs tokens with it and the API checks them; every function gets it so
            # that user code completing an activity by token works wherever it runs
            SIGNING_KEY_VARIABLE: {
                "Fn::If": [
                    REAL,
                    {"Fn::Sub": "{{resolve:secretsmanager:${" + SIGNING_KEY_SECRET + "}:SecretString}}"},
                    _ref(SIGNING_KEY_PARAMETER),
                ]
            },
        }

    def statements(self, function: _Function) -> list[Any]:
        """What `function` does, and nothing more: each statement names resources of this stack only. The
        functions that run entity code (API routes, activities, subscriptions) may also read and write the
        entities table; the orchestrator, which runs workflow code, may not."""
        own = self.own_statements(function)
        if self.has_entities and function in (_API, _ACTIVITY, _SUBSCRIPTION):
            own.append(_statement(_ENTITY_ACCESS, [_arn("EntitiesTable")]))
        return own

    def own_statements(self, function: _Function) -> list[Any]:
        """What `function` needs for the runtime's own work (queues, execution tables, bus, logs)."""
        tables = {"ExecutionsTable": _arn("ExecutionsTable"), "HistoryTable": _arn("HistoryTable")}
        bus = _statement(["events:PutEvents"], [_arn("Bus")])
        schedules = {
            "Fn::Sub": _PARTITION_ARN_PREFIX + ":scheduler:${AWS::Region}:${AWS::AccountId}:schedule/${ScheduleGroup}/*"
        }
        own_logs = _statement(_LOG_WRITE, [_arn(f"{function.stem}LogGroup")])
        execution_logs = _arn("ExecutionLogGroup")
        pass_scheduler_role = _statement(
            ["iam:PassRole"],
            [_arn("SchedulerRole")],
            {"StringEquals": {"iam:PassedToService": "scheduler.amazonaws.com"}},
        )
        if function is _API:
            # starts executions (record + first message), sends signals, reads records, histories and logs;
            # with schedules, pauses and resumes their Scheduler schedules (UpdateSchedule passes the role)
            statements = [
                own_logs,
                _statement(_SEND, [_arn("WorkflowQueue")]),
                _statement(_TABLE_READ + _TABLE_WRITE, [tables["ExecutionsTable"]]),
                # lists executions through the sharded listing indexes (`runtime/aws/stores.py`)
                _statement(["dynamodb:Query"], [{"Fn::Sub": "${ExecutionsTable.Arn}/index/*"}]),
                _statement(_TABLE_READ, [tables["HistoryTable"]]),
                bus,
                _statement(
                    ["logs:CreateLogStream", "logs:FilterLogEvents", "logs:GetLogEvents", "logs:PutLogEvents"],
                    [execution_logs],
                ),
            ]
            if self.schedules:
                statements.append(pass_scheduler_role)
                statements.append(
                    _only_real(_statement(["scheduler:GetSchedule", "scheduler:UpdateSchedule"], [schedules]))
                )
            return statements
        if function is _ORCHESTRATOR:
            # replays and appends history, then dispatches activities, timers, child workflows and events
            return [
                own_logs,
                _statement(_CONSUME + _SEND, [_arn("WorkflowQueue")]),
                _statement(_SEND, [_arn("ActivityQueue"), _arn("TimerQueue")]),
                _statement(
                    [*_TABLE_READ_WRITE, "dynamodb:BatchWriteItem"],
                    [tables["ExecutionsTable"], tables["HistoryTable"]],
                ),
                bus,
                _statement(_LOG_WRITE, [execution_logs]),
                pass_scheduler_role,
                _only_real(
                    _statement(
                        ["scheduler:CreateSchedule", "scheduler:DeleteSchedule", "scheduler:GetSchedule"], [schedules]
                    )
                ),
            ]
        if function is _ACTIVITY:
            # claims attempts (conditional writes), heartbeats, re-queues retries, reports results
            return [
                own_logs,
                _statement(_CONSUME + _SEND, [_arn("ActivityQueue")]),
                _statement(_SEND, [_arn("WorkflowQueue")]),
                _statement(_TABLE_READ + _TABLE_WRITE, [tables["ExecutionsTable"]]),
                bus,
                _statement(_LOG_WRITE, [execution_logs]),
            ]
        if function is _SUBSCRIPTION:
            # runs handlers, which may publish events, start workflows and send signals
            queues = [_arn(f"{subscription_logical_id(item['name'])}Queue") for item in self.subscriptions]
            return [
                own_logs,
                _statement(_CONSUME, queues),
                _statement(_SEND, [_arn("WorkflowQueue")]),
                _statement(_TABLE_READ + _TABLE_WRITE, [tables["ExecutionsTable"]]),
                bus,
                _statement(_LOG_WRITE, [execution_logs]),
            ]
        if function is _TIMER:
            # hands due timers to the workflow queue; re-queues one that arrived early
            return [
                own_logs,
                _statement(_CONSUME + _SEND, [_arn("TimerQueue")]),
                _statement(_SEND, [_arn("WorkflowQueue")]),
            ]
        if function is _SCHEDULE:
            # moves a fired long timer onto the timer queue and deletes its schedule; with schedules, starts
            # each fire's execution (record + first message) and keeps the schedule's state item
            statements = [
                own_logs,
                _statement(_SEND, [_arn("TimerQueue")]),
                _only_real(_statement(["scheduler:DeleteSchedule"], [schedules])),
            ]
            if self.schedules:
                statements.append(_statement(_SEND, [_arn("WorkflowQueue")]))
                statements.append(_statement(_TABLE_READ + _TABLE_WRITE, [tables["ExecutionsTable"]]))
            return statements
        raise AssertionError(f"no policy for function {function.key!r}")

    def functions(self) -> None:
        for function in self.functions_in_use():
            role = self.add(
                f"{function.stem}Role",
                "AWS::IAM::Role",
                {
                    "AssumeRolePolicyDocument": _trust("lambda.amazonaws.com"),
                    # inline, so the role carries its permissions before the event source mappings are
                    # created (AWS checks the role's SQS permissions at that moment)
                    "Policies": [_policy(self.statements(function))],
                },
            )
            variables = self.environment()
            if function is _ORCHESTRATOR:
                variables[SCHEDULER_ROLE_VARIABLE] = _arn("SchedulerRole")
                variables[SCHEDULE_TARGET_VARIABLE] = _arn(f"{_SCHEDULE.stem}Function")
            if function is _SUBSCRIPTION:
                variables[SUBSCRIPTION_QUEUES_VARIABLE] = self.subscription_queue_map()
            logical_id = self.add(
                f"{function.stem}Function",
                "AWS::Lambda::Function",
                {
                    "Description": f"{self.service_name}: {function.purpose}"[:256],
                    "Runtime": LAMBDA_RUNTIME,
                    "Architectures": ["x86_64"],
                    "Handler": self.handlers[function.key],
                    "Code": {"S3Bucket": _ref("CodeBucket"), "S3Key": _ref("CodeKey")},
                    "Role": _arn(role),
                    "Timeout": function.timeout,
                    "MemorySize": function.memory,
                    "Environment": {"Variables": variables},
                    "LoggingConfig": {"LogGroup": _ref(f"{function.stem}LogGroup")},
                },
            )
            for queue, batch_size in self.consumed_queues(function):
                self.add(
                    queue.removesuffix("Queue") + "EventSourceMapping",
                    "AWS::Lambda::EventSourceMapping",
                    {
                        "EventSourceArn": _arn(queue),
                        "FunctionName": _ref(logical_id),
                        "BatchSize": batch_size,
                        "FunctionResponseTypes": ["ReportBatchItemFailures"],
                        # Created in the emulator too, so the wiring is checked, but disabled there: moto
                        # cannot run the function, and each failed attempt it makes counts as a receive,
                        # pushing messages to the dead-letter queue before the harness sees them.
                        "Enabled": {"Fn::If": [REAL, True, False]},
                    },
                )

    def consumed_queues(self, function: _Function) -> list[tuple[str, int]]:
        if function is _ORCHESTRATOR:
            return [("WorkflowQueue", 10)]
        if function is _ACTIVITY:
            # one attempt per invocation, so activities run in parallel and one slow attempt delays no other
            return [("ActivityQueue", 1)]
        if function is _TIMER:
            return [("TimerQueue", 10)]
        if function is _SUBSCRIPTION:
            return [(f"{subscription_logical_id(item['name'])}Queue", 10) for item in self.subscriptions]
        return []

    def subscription_queue_map(self) -> dict[str, Any]:
        """`{"<queue ARN>": "<subscription name>", ...}` as a string: how the worker tells deliveries apart."""
        entries: list[str] = []
        variables: dict[str, Any] = {}
        for index, subscription in enumerate(self.subscriptions):
            variable = f"Queue{index}"
            variables[variable] = _arn(f"{subscription_logical_id(subscription['name'])}Queue")
            # `${` in a name would read as a Sub variable; `${!` is Sub's escape for a literal `${`
            name = json.dumps(subscription["name"], ensure_ascii=False).replace("${", "${!")
            entries.append(f'"${{{variable}}}": {name}')
        return {"Fn::Sub": ["{" + ", ".join(entries) + "}", variables]}

    # --------------------------------------------------------------------------------------- HTTP API

    def http_api(self) -> None:
        function = f"{_API.stem}Function"
        self.add(
            "HttpApi",
            "AWS::ApiGatewayV2::Api",
            {"Name": _stack_named("-api"), "ProtocolType": "HTTP", "Description": f"{self.service_name} HTTP API"},
            Condition=REAL,
        )
        self.add(
            "HttpApiIntegration",
            "AWS::ApiGatewayV2::Integration",
            {
                "ApiId": _ref("HttpApi"),
                "IntegrationType": "AWS_PROXY",
                "IntegrationUri": _arn(function),
                "PayloadFormatVersion": "2.0",
            },
            Condition=REAL,
        )
        # one catch-all route: FastAPI inside the function does the routing, as it does locally
        self.add(
            "HttpApiRoute",
            "AWS::ApiGatewayV2::Route",
            {
                "ApiId": _ref("HttpApi"),
                "RouteKey": "$default",
                "Target": {"Fn::Sub": "integrations/${HttpApiIntegration}"},
            },
            Condition=REAL,
        )
        self.add(
            "HttpApiStage",
            "AWS::ApiGatewayV2::Stage",
            {"ApiId": _ref("HttpApi"), "StageName": "$default", "AutoDeploy": True},
            Condition=REAL,
        )
        self.add(
            "HttpApiPermission",
            "AWS::Lambda::Permission",
            {
                "Action": "lambda:InvokeFunction",
                "FunctionName": _ref(function),
                "Principal": "apigateway.amazonaws.com",
                "SourceArn": {
                    "Fn::Sub": _PARTITION_ARN_PREFIX + ":execute-api:${AWS::Region}:${AWS::AccountId}:${HttpApi}/*"
                },
            },
            Condition=REAL,
        )

    # ---------------------------------------------------------------------------------------- outputs

    def add_outputs(self) -> None:
        def output(name: str, value: Any, description: str, condition: str | None = None) -> None:
            self.outputs[name] = {"Value": value, "Description": description}
            if condition is not None:
                self.outputs[name]["Condition"] = condition

        output(
            "ApiUrl",
            {"Fn::Sub": "https://${HttpApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}"},
            "base URL of the service's HTTP API",
            REAL,
        )
        output("BusName", {"Fn::GetAtt": ["Bus", "Name"]}, "EventBridge bus the service publishes to")
        self.outputs["BusName"]["Export"] = {"Name": _stack_named("-BusName")}
        output("WorkflowQueueUrl", _ref("WorkflowQueue"), "FIFO queue of workflow turns")
        output("ActivityQueueUrl", _ref("ActivityQueue"), "queue of activity attempts")
        output("TimerQueueUrl", _ref("TimerQueue"), "queue of timers due within 15 minutes")
        output("ExecutionsTableName", _ref("ExecutionsTable"), "DynamoDB table of execution records")
        output("HistoryTableName", _ref("HistoryTable"), "DynamoDB table of execution histories")
        output("HistoryLayout", HISTORY_LAYOUT, "how the history table stores histories (one item per turn)")
        if self.has_entities:
            output("EntitiesTableName", _ref("EntitiesTable"), "DynamoDB table of the service's entities")
        output("ExecutionLogGroupName", _ref("ExecutionLogGroup"), "log group with one stream per execution")
        output("ScheduleGroupName", _stack_named("-timers"), "EventBridge Scheduler group for long timers")


def _trust(service: str, *, same_account: bool = False) -> dict[str, Any]:
    statement: dict[str, Any] = {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}
    if same_account:
        # confused-deputy guard: only schedules of this account may use the role
        statement["Condition"] = {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    return {"Version": "2012-10-17", "Statement": [statement]}


def _policy(statements: list[Any]) -> dict[str, Any]:
    return {"PolicyName": "eventual", "PolicyDocument": {"Version": "2012-10-17", "Statement": statements}}
