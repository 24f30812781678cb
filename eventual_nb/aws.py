"""`ev.aws.AwsRuntime`: Eventual's service-client protocol on a deployed (or emulated) AWS stack.

    async with ev.aws.AwsRuntime(stack="shop-prod", region="eu-west-1") as runtime:
        handle = await runtime.start_execution("checkout", {"order_id": "o-1"})
        print(await handle.result(timeout="5m"))

The runtime is a *client* of the stack: it writes execution records (DynamoDB), sends start, signal and
cancel messages to the workflow FIFO queue, publishes to the service's bus and reads records, histories
and the per-execution CloudWatch streams. It runs no workflow code itself; the stack's orchestrator,
activity, timer and subscription functions do (offline: `eventual_nb.runtime.aws.harness.Harness`).

Where the stack's names come from: `environment` (the `EVENTUAL_*` variables the template gives every
function; inside Lambda the default, `os.environ`), or, given `stack=`, the CloudFormation stack's
outputs and resources plus the variables of its functions (for the service name and the subscription
queue map). Nothing is looked up before the first call (or `async with`), so constructing one is cheap.

Durability of a start: `start_execution` returns once the execution record is written and its start
message is on the FIFO queue. `WorkflowStarted` is committed by the orchestrator's first turn, built
from that record only, so an acknowledged start can no longer be lost.

Completing an activity by token (`send_activity_success/failure/heartbeat`) needs the stack's signing key
(`signing_key=`, else `EVENTUAL_SIGNING_KEY` of the environment or of the stack's functions): the token is
verified here, then the attempt's claim row is settled with one conditional update (so exactly one
completion wins) and the outcome goes to the workflow queue, as the activity worker would send it
(`workers.report_outcome`: a failure the retry policy retries becomes the next attempt).

boto3 is synchronous: every call runs in a worker thread (`asyncio.to_thread`), so the event loop
serving a notebook or an HTTP server never blocks on AWS. This module imports boto3 when a runtime is
constructed, never at import time (`import eventual_nb` stays boto3-free).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from eventual_nb import errors
from eventual_nb.durations import deadline_after
from eventual_nb.engine.history import HistoryEvent, LogEntry
from eventual_nb.events import envelope, source_of
from eventual_nb.runtime import core
from eventual_nb.runtime.activity_runner import token_result
from eventual_nb.runtime.aws.clients import (
    ACTIVITY_QUEUE_VARIABLE,
    BUS_VARIABLE,
    ENTITIES_TABLE_VARIABLE,
    EXECUTIONS_TABLE_VARIABLE,
    HISTORY_LAYOUT_VARIABLE,
    HISTORY_TABLE_VARIABLE,
    LOG_GROUP_VARIABLE,
    SCHEDULE_GROUP_VARIABLE,
    TIMER_QUEUE_VARIABLE,
    WORKFLOW_QUEUE_VARIABLE,
    AwsClients,
    AwsSettings,
    Bus,
    event_to_dict,
)
from eventual_nb.runtime.aws.entities import DynamoEntityStore
from eventual_nb.runtime.aws.schedules import ScheduleKeeper, start_recorded
from eventual_nb.runtime.aws.stores import ExecutionStore, HistoryStore, ScheduleStore
from eventual_nb.runtime.aws.workers import (
    DEAD_LETTER_ATTEMPTS,
    DEAD_LETTER_ERROR,
    DEAD_LETTER_MESSAGE,
    SIGNING_KEY_VARIABLE,
    report_outcome,
)
from eventual_nb.runtime.base import (
    DeadLetter,
    Execution,
    ExecutionHandle,
    ExecutionPage,
    ExecutionStatus,
    HeartbeatResponse,
    PublishedEvent,
    RuntimeBase,
    check_max_results,
    execution_id_of,
    signal_name_of,
)
from eventual_nb.runtime.core import AttemptOutcome, StartAttempt, limits, schedules, wire
from eventual_nb.runtime.core.schedules import ScheduleInfo, ScheduleState
from eventual_nb.runtime.tokens import TokenSigner
from eventual_nb.service import Service
from eventual_nb.signals import encode_payload

__all__ = ["AwsRuntime"]

T = TypeVar("T")

#: stack output -> the `EVENTUAL_*` variable it stands for (exporter/template.py `add_outputs`)
STACK_OUTPUTS = {
    "ExecutionsTableName": EXECUTIONS_TABLE_VARIABLE,
    "EntitiesTableName": ENTITIES_TABLE_VARIABLE,
    "HistoryTableName": HISTORY_TABLE_VARIABLE,
    "HistoryLayout": HISTORY_LAYOUT_VARIABLE,
    "WorkflowQueueUrl": WORKFLOW_QUEUE_VARIABLE,
    "ActivityQueueUrl": ACTIVITY_QUEUE_VARIABLE,
    "TimerQueueUrl": TIMER_QUEUE_VARIABLE,
    "BusName": BUS_VARIABLE,
    "ExecutionLogGroupName": LOG_GROUP_VARIABLE,
    "ScheduleGroupName": SCHEDULE_GROUP_VARIABLE,
}
#: stack resource (logical id) -> variable, for stacks whose outputs lack one (older templates)
STACK_RESOURCES = {
    "ExecutionsTable": EXECUTIONS_TABLE_VARIABLE,
    "EntitiesTable": ENTITIES_TABLE_VARIABLE,
    "HistoryTable": HISTORY_TABLE_VARIABLE,
    "WorkflowQueue": WORKFLOW_QUEUE_VARIABLE,
    "ActivityQueue": ACTIVITY_QUEUE_VARIABLE,
    "TimerQueue": TIMER_QUEUE_VARIABLE,
    "ExecutionLogGroup": LOG_GROUP_VARIABLE,
}
#: what every call of the runtime needs from the stack
REQUIRED_VARIABLES = (EXECUTIONS_TABLE_VARIABLE, HISTORY_TABLE_VARIABLE, WORKFLOW_QUEUE_VARIABLE)
#: polling of `wait_for_execution`: first pause, growth factor, longest pause (seconds)
WAIT_FIRST = 0.05
WAIT_FACTOR = 1.5
WAIT_LONGEST = 2.0
#: receives of one dead-letter queue per `list_dead_letters` call (10 messages each at most)
MAX_DEAD_LETTER_RECEIVES = 100


class AwsRuntime(RuntimeBase):
    """The service-client protocol against one AWS stack (see the module docstring)."""

    page_token_pattern = None  # opaque: base64 of the listing's per-partition cursors

    def __init__(
        self,
        stack: str | None = None,
        region: str | None = None,
        endpoint_url: str | None = None,
        *,
        service: Service | str | None = None,
        services: list[Service | str] | None = None,
        environment: Mapping[str, str] | None = None,
        clock: Callable[[], datetime] | None = None,
        signing_key: bytes | str | None = None,
        clients: AwsClients | None = None,
    ) -> None:
        """`signing_key`: the secret activity tokens are signed with (the stack's `EVENTUAL_SIGNING_KEY`);
        by default read from the stack's environment, needed only to complete activities by token.
        `clients`: the clients of the stack's own functions, which give this runtime to the code they run
        (activities, subscription handlers: their entities, starts and events reach the same stack and
        endpoint); the stack's names then come from their settings."""
        try:
            import boto3
        except ModuleNotFoundError as exc:
            raise ImportError(f"ev.aws needs boto3: pip install 'eventual-nb[aws]' ({exc})") from exc
        self.stack = stack
        self.endpoint_url = endpoint_url
        self._serve(service, services)
        self.clock: Callable[[], datetime] = (
            clock or (clients.clock if clients is not None else None) or (lambda: datetime.now(UTC))
        )
        self._given_environment = None if environment is None else dict(environment)
        self._lock = threading.Lock()
        self._signing_key = signing_key.encode() if isinstance(signing_key, str) else signing_key
        self._signer: TokenSigner | None = None
        self._clients: AwsClients | None = None
        self._executions: ExecutionStore | None = None
        self._history: HistoryStore | None = None
        self._keeper: ScheduleKeeper | None = None
        self._entities: DynamoEntityStore | None = None
        if clients is not None:
            self.session = None
            self.region = str(clients.client("dynamodb").meta.region_name)
            self._adopt(clients, self._signing_key)
            return
        self.session = boto3.session.Session(region_name=region or _environment_region())
        if not self.session.region_name:
            raise errors.EventualError(
                "no AWS region: pass AwsRuntime(region=...) or set AWS_REGION (or AWS_DEFAULT_REGION, or a "
                "profile's region via AWS_PROFILE)"
            )
        self.region = str(self.session.region_name)
        if self.session.get_credentials() is None:
            raise errors.EventualError(
                "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run "
                "where an IAM role provides them (Lambda, EC2, ECS)"
            )

    def __repr__(self) -> str:
        where = f"stack={self.stack!r}" if self.stack else "environment"
        return f"AwsRuntime({where}, region={self.region!r})"

    # ----------------------------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> AwsRuntime:
        await asyncio.to_thread(self._resolve)
        self.enter_current()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.exit_current()

    def client(self, service: str) -> Any:
        """A boto3 client of this runtime's session (region, credentials, endpoint)."""
        if self.session is None:  # lent by the stack's functions
            return self._resolve().client(service)
        return self.session.client(service, endpoint_url=self.endpoint_url)

    def _resolve(self) -> AwsClients:
        """Find the stack's names (once) and build the clients; blocking, so called from a worker thread."""
        with self._lock:
            if self._clients is not None:
                return self._clients
            if self._given_environment is not None:
                environment = dict(self._given_environment)
            elif self.stack is not None:
                environment = self._stack_environment(self.stack)
            else:
                environment = dict(os.environ)
            missing = [name for name in REQUIRED_VARIABLES if not environment.get(name)]
            if missing:
                raise errors.EventualError(
                    f"AwsRuntime cannot find its stack: {', '.join(missing)} not set; pass stack='<stack name>' "
                    "(read from CloudFormation), environment={...} (the EVENTUAL_* variables of the stack's "
                    "functions), or run inside one of those functions"
                )
            settings = AwsSettings.from_environment(environment)
            settings.check_layout(self.stack)
            built: dict[str, Any] = {}
            for name in ("dynamodb", "sqs", "events", "logs"):
                built[name] = self.client(name)

            def factory(name: str) -> Any:
                return built[name] if name in built else self.client(name)

            clients = AwsClients(settings, factory, clock=self.clock)
            key = self._signing_key or (environment.get(SIGNING_KEY_VARIABLE) or "").encode()
            return self._adopt(clients, key)

    def _adopt(self, clients: AwsClients, key: bytes | None) -> AwsClients:
        self._signer = TokenSigner(key) if key else None
        dynamodb = clients.client("dynamodb")
        self._executions = ExecutionStore(dynamodb, clients.settings.executions_table)
        self._history = HistoryStore(dynamodb, clients.settings.history_table)
        self._keeper = ScheduleKeeper(
            self._executions, ScheduleStore(dynamodb, clients.settings.executions_table), clients, self
        )
        self._clients = clients
        return clients

    def entity_store(self) -> DynamoEntityStore:
        """The service's entities, in the stack's entities table (`eventual_nb/runtime/aws/entities.py`)."""
        if self._entities is None:
            clients = self._resolve()
            self._entities = DynamoEntityStore(clients.client("dynamodb"), clients.settings.entities_table)
        return self._entities

    def _stack_environment(self, stack: str) -> dict[str, str]:
        """The `EVENTUAL_*` variables of `stack`: its functions' variables, then its outputs and resources."""
        cloudformation = self.client("cloudformation")
        try:
            described = cloudformation.describe_stacks(StackName=stack)["Stacks"]
        except cloudformation.exceptions.ClientError as exc:
            raise errors.EventualError(
                f"cannot read CloudFormation stack {stack!r} in {self.region}: {exc} (deployed with "
                "`eventual-nb deploy DIR --stack NAME`? right region?)"
            ) from exc
        if not described:
            raise errors.EventualError(f"no CloudFormation stack {stack!r} in {self.region}")
        resources = _stack_resources(cloudformation, stack)
        # the functions' own variables carry what outputs do not: the service name, the subscription map
        environment = _function_variables(self.client("lambda"), resources)
        for logical_id, variable in STACK_RESOURCES.items():
            if logical_id in resources:
                environment[variable] = resources[logical_id]
        for output in described[0].get("Outputs", []):
            named = STACK_OUTPUTS.get(str(output.get("OutputKey")))
            if named is not None and output.get("OutputValue"):
                environment[named] = str(output["OutputValue"])
        return environment

    async def _call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Resolve the stack if needed, then run blocking boto3 work in a worker thread."""

        def work() -> T:
            self._resolve()
            return function(*args, **kwargs)

        return await asyncio.to_thread(work)

    @property
    def executions(self) -> ExecutionStore:
        self._resolve()
        assert self._executions is not None
        return self._executions

    @property
    def history(self) -> HistoryStore:
        self._resolve()
        assert self._history is not None
        return self._history

    @property
    def clients(self) -> AwsClients:
        return self._resolve()

    # ----------------------------------------------------------------------------- the protocol

    async def start_execution(
        self, workflow: Any, input: Any = None, name: str | None = None, timeout: Any = None
    ) -> ExecutionHandle:
        definition, raw_input = self.start_definition(workflow, input)
        now = self.clock()
        execution_id = core.execution_id_for(definition.name, name, now)
        limits.refuse_too_large(limits.WORKFLOW_INPUT, raw_input, f"execution '{execution_id}'")
        limit = core.timeout_limit(timeout, None)  # only an explicit one rides on the record
        if limit is not None:  # refused here, where the caller hears of it, not in the orchestrator's turn
            deadline_after(now, limit, what="timeout")
        service = core.service_of(definition)

        def start() -> bool:
            return start_recorded(
                self.executions,
                self.clients,
                execution_id,
                definition.name,
                raw_input,
                now,
                service=service,
                limit=limit,
            )

        created = await self._call(start)
        return ExecutionHandle(execution_id, definition.name, runtime=self, already_running=not created)

    async def get_execution(self, id: str) -> Execution:
        return await self._call(lambda: self.executions.get(id))

    # ----------------------------------------------------------------------------- schedules

    @property
    def schedule_keeper(self) -> ScheduleKeeper:
        """The stack's schedule states and what changing them starts (shared with the schedule forwarder)."""
        self._resolve()
        assert self._keeper is not None
        return self._keeper

    async def list_schedules(self) -> list[ScheduleInfo]:
        def read() -> list[ScheduleInfo]:
            now = self.clock()
            return [
                schedules.schedule_info(schedule, self.schedule_keeper.state(schedule, now))
                for schedule in self.served_schedules()
            ]

        return await self._call(read)

    async def pause_schedule(self, name: str) -> None:
        schedule = self.schedule_definition(name)

        def pause() -> None:
            keeper = self.schedule_keeper
            keeper.change(schedule, lambda state: schedules.store_only(schedules.pause(self._known(state))))
            keeper.set_enabled(schedule, False)

        await self._call(pause)

    async def resume_schedule(self, name: str) -> None:
        schedule = self.schedule_definition(name)

        def resume() -> None:
            keeper = self.schedule_keeper
            keeper.change(
                schedule, lambda state: schedules.store_only(schedules.resume(self._known(state), self.clock()))
            )
            keeper.set_enabled(schedule, True)

        await self._call(resume)

    async def trigger_schedule(self, name: str) -> ExecutionHandle:
        schedule = self.schedule_definition(name)

        def trigger() -> list[tuple[str, bool]]:
            return self.schedule_keeper.change(
                schedule, lambda state: schedules.decide_trigger(schedule, self._known(state), self.clock())
            )

        ((execution_id, created),) = await self._call(trigger)
        return ExecutionHandle(execution_id, schedule.workflow, runtime=self, already_running=not created)

    def _known(self, state: ScheduleState | None) -> ScheduleState:
        return ScheduleState.new(self.clock()) if state is None else state

    async def list_executions(
        self,
        workflow: str | None = None,
        statuses: list[ExecutionStatus] | None = None,
        next_token: str | None = None,
        max_results: int = 100,
        sort: str = "asc",
    ) -> ExecutionPage:
        """A page in start-time order, from the executions table's listing indexes (eventually consistent:
        an execution started a moment ago may be missing from the first page that would hold it)."""
        return await self._call(
            lambda: self.executions.list(
                workflow=workflow, statuses=statuses, next_token=next_token, max_results=max_results, sort=sort
            )
        )

    async def get_execution_history(self, id: str) -> list[HistoryEvent]:
        def read() -> list[HistoryEvent]:
            self.executions.get(id)  # ExecutionNotFound for unknown ids
            return self.history.read(id)

        return await self._call(read)

    async def get_execution_logs(self, id: str) -> list[LogEntry]:
        def read() -> list[LogEntry]:
            self.executions.get(id)
            return self.clients.logs.read(id)

        return await self._call(read)

    async def send_signal(self, execution: Any, signal: Any, payload: Any = None, id: str | None = None) -> None:
        """Check the execution runs, then send `SignalReceived` to its FIFO group.

        A signal `id` is de-duplicated by the workflow engine, which ignores a second `SignalReceived`
        with an id it has seen, so a repeated send (a client retry) is delivered once."""
        execution_id = execution_id_of(execution)
        name = signal_name_of(signal)
        encoded = encode_payload(signal, payload, self.served_services())
        limits.refuse_too_large(limits.SIGNAL_PAYLOAD, encoded, f"signal '{name}' to '{execution_id}'")

        def send() -> None:
            status = self.executions.get(execution_id).status
            event = core.signal_received(execution_id, status, name, encoded, id, self.clock())
            self.clients.send_workflow_event(execution_id, event_to_dict(event))

        await self._call(send)

    async def publish_events(self, *events: Any) -> None:
        """Put the events on the service's bus (Source = the event's service, else this runtime's)."""
        items = [(envelope(event), source_of(event)) for event in events]
        if not items:
            return
        for item, _ in items:
            limits.refuse_too_large(limits.EVENT, item, f"event '{item['name']}'")

        def publish() -> None:
            clients = self.clients
            if not clients.settings.bus_name:
                raise errors.EventualError("EVENTUAL_BUS_NAME not set: this runtime does not know the stack's bus")
            default = self._default_source()
            by_source: dict[str, list[dict[str, Any]]] = {}
            for item, source in items:
                by_source.setdefault(source or default, []).append(item)
            bus = Bus(clients.client("events"), clients.settings.bus_name, default)
            for source, envelopes in by_source.items():
                bus.publish(envelopes, source)

        await self._call(publish)

    def _default_source(self) -> str:
        """The bus convention's Source for events of no particular service: the stack's service."""
        service = self.clients.settings.service
        if service:
            return service
        served = self.served_services() if self._served_names is not None else []
        if len(served) == 1:
            return served[0].name
        raise errors.EventualError(
            "cannot tell which service publishes these events: set EVENTUAL_SERVICE or pass AwsRuntime(service=...)"
        )

    async def cancel_execution(self, id: str) -> None:
        def cancel() -> None:
            event = core.cancel_requested(id, self.executions.get(id).status, self.clock())
            self.clients.send_workflow_event(id, event_to_dict(event))

        await self._call(cancel)

    # ------------------------------------------------------------------------- completion by token

    def _verified(self, token: str) -> tuple[str, int, int]:
        """(execution, seq, attempt) of a genuine token; `InvalidToken` for a forged or foreign one."""
        self._resolve()
        if self._signer is None:
            raise errors.EventualError(
                f"completing an activity by token needs the stack's signing key: pass AwsRuntime(signing_key=...) "
                f"or give the runtime's environment {SIGNING_KEY_VARIABLE} (the secret the activity function has)"
            )
        return self._signer.verify(token)

    def _pending(self, execution_id: str, seq: int, attempt: int) -> dict[str, Any]:
        """The attempt's claim row while it still waits for its outcome and its execution runs."""
        row = self.executions.pending_claim(execution_id, seq, attempt)
        if row is None or self.executions.get(execution_id).status != ExecutionStatus.IN_PROGRESS:
            raise core.token_not_pending(execution_id, seq, attempt)
        return row

    def _settle(self, execution_id: str, seq: int, attempt: int, outcome: AttemptOutcome) -> None:
        """Settle the attempt on its claim row (exactly one completion wins), then send what it means, as
        the worker would: the claim keeps the attempt's message, so a failure is retried per its policy
        whether the attempt still ran or waited for its token."""
        row = self.executions.settle_claim(execution_id, seq, attempt, outcome.kind.value)
        if row is None:
            raise core.token_not_pending(execution_id, seq, attempt)
        report_outcome(self.clients, _claimed_attempt(row, execution_id, seq, attempt), outcome)

    async def send_activity_success(self, token: str, result: Any = None) -> None:
        execution_id, seq, attempt = await self._call(self._verified, token)

        def complete() -> None:
            start = _claimed_attempt(self._pending(execution_id, seq, attempt), execution_id, seq, attempt)
            encoded = token_result(self.activity_definition(start.name), start.name, result)
            limits.refuse_too_large(
                limits.ACTIVITY_RESULT, encoded, f"activity '{start.name}' (seq {seq}) of '{execution_id}'"
            )
            self._settle(execution_id, seq, attempt, core.succeeded(encoded))

        await self._call(complete)

    async def send_activity_failure(self, token: str, error: str, message: str | None = None) -> None:
        execution_id, seq, attempt = await self._call(self._verified, token)
        outcome = core.failed_named(error, message)

        def fail() -> None:
            self._pending(execution_id, seq, attempt)
            self._settle(execution_id, seq, attempt, outcome)

        await self._call(fail)

    async def send_activity_heartbeat(self, token: str) -> HeartbeatResponse:
        """Stamp the waiting attempt's row; `cancelled` once it was settled or its execution ended."""
        execution_id, seq, attempt = await self._call(self._verified, token)

        def beat() -> HeartbeatResponse:
            try:
                running = self.executions.get(execution_id).status == ExecutionStatus.IN_PROGRESS
            except errors.ExecutionNotFound:
                running = False
            alive = running and self.executions.heartbeat_claim(execution_id, seq, attempt, self.clock())
            return HeartbeatResponse(cancelled=not alive)

        return await self._call(beat)

    async def list_events(
        self, max_results: int = 100, source: str | None = None, name: str | None = None
    ) -> list[PublishedEvent]:
        """Not on AWS: EventBridge keeps no record of a bus's events that could be read back (an archive can
        only be replayed onto a bus)."""
        check_max_results(max_results)
        raise errors.EventualError(
            "the AWS runtime cannot list events: EventBridge keeps no readable record of the events on a bus; "
            "subscriptions receive them, and what they could not handle stays listable as dead letters"
        )

    async def list_dead_letters(self) -> list[DeadLetter]:
        """Subscription deliveries that used up their retries, read from each subscription's dead-letter
        queue WITHOUT removing them: messages are received with `VisibilityTimeout=0`, so they stay
        visible (each look raises their receive count; dead-letter queues have no redrive of their own,
        so nothing moves). The subscription worker dead-letters a delivery's last failed attempt itself,
        with the error's type, message and the attempts (message attributes); `time` is when it did. A
        message SQS's redrive moved instead (a worker that died mid-delivery) carries no reason: its
        `error` is `MaxReceiveCountExceeded`, `attempts` the queue's `maxReceiveCount`, `time` when the
        event was first sent."""
        return await self._call(self._dead_letters)

    def _dead_letters(self) -> list[DeadLetter]:
        clients = self.clients
        sqs = clients.client("sqs")
        found: list[DeadLetter] = []
        for queue_arn, subscription in sorted(clients.settings.subscription_queues.items(), key=lambda i: i[1]):
            url = sqs.get_queue_url(QueueName=queue_arn.rsplit(":", 1)[-1])["QueueUrl"]
            policy_text = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])["Attributes"].get(
                "RedrivePolicy"
            )
            if not policy_text:
                continue
            policy = json.loads(policy_text)
            dead_url = sqs.get_queue_url(QueueName=str(policy["deadLetterTargetArn"]).rsplit(":", 1)[-1])["QueueUrl"]
            attempts = int(policy.get("maxReceiveCount", 1))
            seen: set[str] = set()
            for _ in range(MAX_DEAD_LETTER_RECEIVES):
                messages = sqs.receive_message(
                    QueueUrl=dead_url,
                    MaxNumberOfMessages=10,
                    VisibilityTimeout=0,
                    WaitTimeSeconds=0,
                    MessageSystemAttributeNames=["SentTimestamp"],
                    MessageAttributeNames=["All"],
                ).get("Messages", [])
                fresh = [message for message in messages if message["MessageId"] not in seen]
                if not fresh:
                    break
                for message in fresh:
                    seen.add(message["MessageId"])
                    found.append(_dead_letter(message, subscription, attempts))
        found.sort(key=lambda letter: letter.time)
        return found

    async def wait_for_execution(self, id: str, timeout: float | None) -> Execution:
        """Poll the record (with backoff, up to `WAIT_LONGEST` s between reads) until it ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = WAIT_FIRST
        while True:
            execution = await self.get_execution(id)
            if execution.status != ExecutionStatus.IN_PROGRESS:
                return execution
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise errors.Timeout(f"execution '{id}' did not finish within {timeout} s")
                pause = min(pause, left)
            await asyncio.sleep(pause)
            pause = min(WAIT_LONGEST, pause * WAIT_FACTOR)


def _stack_resources(cloudformation: Any, stack: str) -> dict[str, str]:
    """The physical id of each of `stack`'s resources, by logical id."""
    resources: dict[str, str] = {}

    def add(items: list[dict[str, Any]]) -> None:
        for item in items:
            if item.get("LogicalResourceId") and item.get("PhysicalResourceId"):
                resources[item["LogicalResourceId"]] = item["PhysicalResourceId"]

    try:
        for page in cloudformation.get_paginator("list_stack_resources").paginate(StackName=stack):
            add(page.get("StackResourceSummaries", []))
    except cloudformation.exceptions.ClientError:
        # fall back to the (at most 100 items) describe call some policies allow instead
        add(cloudformation.describe_stack_resources(StackName=stack).get("StackResources", []))
    return resources


def _function_variables(functions: Any, resources: Mapping[str, str]) -> dict[str, str]:
    """The environment variables of the stack's functions (the first function to set one wins)."""
    environment: dict[str, str] = {}
    for logical_id in ("SubscriptionFunction", "OrchestratorFunction", "ApiFunction"):
        physical_id = resources.get(logical_id)
        if physical_id is None:
            continue
        try:
            configuration = functions.get_function_configuration(FunctionName=physical_id)
        except functions.exceptions.ClientError:
            continue  # no lambda:GetFunctionConfiguration: outputs still give the essentials
        variables = configuration.get("Environment", {}).get("Variables", {})
        for name, value in variables.items():
            environment.setdefault(str(name), str(value))
    return environment


def _claimed_attempt(row: Mapping[str, Any], execution_id: str, seq: int, attempt: int) -> StartAttempt:
    """The attempt a claim row holds (its activity message); a row without one (a worker of an earlier
    release) stands for an attempt of an unknown activity with the default options."""
    if "message" in row:
        return wire.attempt_from_message(row["message"])
    return StartAttempt(execution_id, seq, attempt, "?", {}, core.ActivityOptions())


def _environment_region() -> str | None:
    """Lambda sets AWS_REGION (botocore reads AWS_DEFAULT_REGION): take either."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def _dead_letter(message: Mapping[str, Any], subscription: str, attempts: int) -> DeadLetter:
    """A DLQ message (an EventBridge envelope) in the local runtime's shape: `{"name", "event"}`."""
    try:
        body = json.loads(message["Body"])
    except ValueError:
        body = message["Body"]
    if isinstance(body, dict) and "detail-type" in body:
        event: dict[str, Any] = {"name": body["detail-type"], "event": body.get("detail")}
    else:
        event = {"name": None, "event": body}
    sent = message.get("Attributes", {}).get("SentTimestamp")
    moment = datetime.fromtimestamp(int(sent) / 1000, UTC) if sent else datetime.now(UTC)
    reason = {name: value.get("StringValue") for name, value in (message.get("MessageAttributes") or {}).items()}
    if reason.get(DEAD_LETTER_ERROR):
        return DeadLetter(
            event=event,
            subscription=subscription,
            error=str(reason[DEAD_LETTER_ERROR]),
            message=str(reason.get(DEAD_LETTER_MESSAGE) or ""),
            attempts=int(reason.get(DEAD_LETTER_ATTEMPTS) or attempts),
            time=moment,
        )
    return DeadLetter(
        event=event,
        subscription=subscription,
        error="MaxReceiveCountExceeded",
        message=f"not delivered after {attempts} attempt(s); moved to the dead-letter queue",
        attempts=attempts,
        time=moment,
    )
