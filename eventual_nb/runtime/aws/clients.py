"""The AWS runtime's senders: thin synchronous wrappers over boto3 that fix each message's wire format.

Every piece of the AWS runtime (API, orchestrator, activity worker, timer, schedule forwarder,
subscription worker) talks to the others only through the JSON bodies built here, so the format lives
in one place:

* workflow FIFO queue, `MessageGroupId` derived from the execution id (`group_id`):
  `{"type": "start", "execution_id": ID}`, `{"type": "event", "execution_id": ID, "event": {...}}` and
  `{"type": "attempt", "execution_id": ID, "attempt": {...}}` (an inline activity's attempt for the
  orchestrator to run: a retry after its backoff, or one its last invocation had no time left for);
* activity queue (standard): `{"execution_id", "seq", "attempt", "name", "input", "options"}`;
* timer queue (standard, because FIFO queues reject per-message `DelaySeconds`):
  `{"execution_id": ID, "due": ISO 8601 UTC, "event": {...}}` (or `"attempt": {...}` instead of
  `"event"`: an inline activity's retry, relayed as an attempt message); a timer further away than
  `SCHEDULER_THRESHOLD_SECONDS` is an EventBridge Scheduler `at()` schedule whose input is the same body;
* bus: `put_events` entries with `Source` = service name, `DetailType` = event name, `Detail` = event JSON.

Why every send must be safe to repeat: the orchestrator dispatches only after committing history, and
re-dispatches when it may have died in between (see orchestrator.py), so each send is keyed — FIFO dedup
ids, Scheduler names (`ConflictException` = already scheduled) — and every consumer still expects
duplicates (SQS dedup lasts five minutes, and moto forgets it once a message is deleted).

Nothing here imports boto3 at import time (the generated `handlers.py` stays cheap on a cold start):
the wrappers take already-built clients and `AwsClients.from_environment` imports boto3 when called.
`AwsClients` also offers the orchestrator's `Dispatch` methods (`send_workflow_event`, `send_activities`,
`schedule_timer`, `cancel_timer`, `publish`, `write_logs`, `start_child`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from eventual_nb import errors
from eventual_nb.engine.history import EVENT_ADAPTER, HistoryEvent, LogEntry
from eventual_nb.serde import canonical_json

#: SQS's largest `DelaySeconds`; a timer further away than this goes to EventBridge Scheduler
MAX_SQS_DELAY_SECONDS = 900
#: SQS's limits of one `SendMessageBatch` call: entries, and the total of their bodies
MAX_SQS_BATCH_ENTRIES = 10
MAX_SQS_BATCH_BYTES = 256 * 1024
SCHEDULER_THRESHOLD_SECONDS = MAX_SQS_DELAY_SECONDS
#: EventBridge's limit of entries per `put_events` call
MAX_PUT_EVENTS_ENTRIES = 10
#: EventBridge's limit on one `put_events` request (entries are counted by their strings' UTF-8 size)
MAX_PUT_EVENTS_BYTES = 256 * 1024
#: CloudWatch Logs limits of one `put_log_events` call (each event costs 26 bytes of overhead)
MAX_LOG_BATCH_EVENTS = 10_000
MAX_LOG_BATCH_BYTES = 1_048_576
LOG_EVENT_OVERHEAD = 26
#: CloudWatch's limit on one log event's message; longer lines are cut (and say so)
MAX_LOG_MESSAGE_BYTES = 256 * 1024 - LOG_EVENT_OVERHEAD

WORKFLOW_QUEUE_VARIABLE = "EVENTUAL_WORKFLOW_QUEUE_URL"
ACTIVITY_QUEUE_VARIABLE = "EVENTUAL_ACTIVITY_QUEUE_URL"
TIMER_QUEUE_VARIABLE = "EVENTUAL_TIMER_QUEUE_URL"
BUS_VARIABLE = "EVENTUAL_BUS_NAME"
LOG_GROUP_VARIABLE = "EVENTUAL_EXECUTION_LOG_GROUP"
SCHEDULE_GROUP_VARIABLE = "EVENTUAL_SCHEDULE_GROUP"
SCHEDULER_ROLE_VARIABLE = "EVENTUAL_SCHEDULER_ROLE_ARN"
SCHEDULE_TARGET_VARIABLE = "EVENTUAL_SCHEDULE_TARGET_ARN"
SUBSCRIPTION_QUEUES_VARIABLE = "EVENTUAL_SUBSCRIPTION_QUEUES"
SERVICE_VARIABLE = "EVENTUAL_SERVICE"
EXECUTIONS_TABLE_VARIABLE = "EVENTUAL_EXECUTIONS_TABLE"
HISTORY_TABLE_VARIABLE = "EVENTUAL_HISTORY_TABLE"
#: the history layout a stack was deployed with (the template sets it on every function and as an output)
HISTORY_LAYOUT_VARIABLE = "EVENTUAL_HISTORY_LAYOUT"
#: the layout this code reads and writes: one DynamoDB item per turn (`stores.py`). Stacks deployed before
#: it existed stored one item per event and a history head, and carry no layout at all.
HISTORY_LAYOUT = "turns-1"
#: the service's entities table (`ev.entity`); a stack of a service without entities has none
ENTITIES_TABLE_VARIABLE = "EVENTUAL_ENTITIES_TABLE"

#: what SQS allows in a MessageGroupId / MessageDeduplicationId: 1-128 printable ASCII, no space
_SQS_ID = re.compile(r"[!-~]{1,128}")
#: what CloudWatch allows in a log stream name
_LOG_STREAM = re.compile(r"[^:*]{1,512}")


# ------------------------------------------------------------------------------------------ keys


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def event_to_dict(event: HistoryEvent) -> dict[str, Any]:
    """A history event as the JSON dict the messages carry (the form `EVENT_ADAPTER` reads back)."""
    dumped: dict[str, Any] = EVENT_ADAPTER.dump_python(event, mode="json")
    return dumped


def group_id(execution_id: str) -> str:
    """The FIFO `MessageGroupId` of an execution: the id itself when SQS accepts it, else its hash.

    Ids are `<workflow>/<name>` with a user-chosen name, which may be longer than 128 characters or hold
    characters SQS refuses; consumers must read the execution id from the body, never from the group."""
    if _SQS_ID.fullmatch(execution_id):
        return execution_id
    return "h-" + _sha256(execution_id)[:64]


def start_dedup_id(execution_id: str) -> str:
    return _sha256(execution_id + ":start")[:64]


def event_dedup_id(execution_id: str, event: Mapping[str, Any]) -> str:
    """The FIFO dedup id of an event message: a hash of the execution id and the event's canonical JSON.

    The execution id is part of it (the contract's first draft hashed the event alone) because moto
    ignores `DeduplicationScope=messageGroup` and would drop an equal event of another execution. The
    event's text is `serde.canonical_json`, so an event holding NaN is refused (`NotJsonable`) rather
    than keyed by a text no JSON reader accepts."""
    return _sha256(execution_id + ":" + canonical_json(event))[:64]


def schedule_name(execution_id: str, key: str) -> str:
    """Scheduler names allow only `[0-9A-Za-z._-]{1,64}`, so a timer's schedule is named by a hash."""
    return "t-" + _sha256(execution_id + ":" + key)[:40]


def log_stream_name(execution_id: str) -> str:
    """One stream per execution, named by its id unless CloudWatch refuses the id (`:` or `*`, > 512)."""
    if _LOG_STREAM.fullmatch(execution_id):
        return execution_id
    return "sha256/" + _sha256(execution_id)


def utc(moment: datetime) -> datetime:
    """Aware UTC (naive datetimes are taken as UTC, as everywhere in the runtime)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def delay_until(due: datetime, now: datetime, cap: int = MAX_SQS_DELAY_SECONDS) -> int:
    """Whole seconds to wait (rounded up, so a timer never arrives early by a fraction), at most `cap`."""
    remaining = (utc(due) - utc(now)).total_seconds()
    return max(0, min(cap, math.ceil(remaining)))


def _check_sqs_reply(reply: Mapping[str, Any], what: str) -> None:
    failed = reply.get("Failed") or []
    if failed:
        raise errors.EventualError(f"{what}: SQS refused {len(failed)} entries: {failed}")


# ------------------------------------------------------------------------------------------ queues


class WorkflowQueue:
    """The FIFO queue of workflow turns: one message group per execution keeps its turns in order."""

    def __init__(self, sqs: Any, url: str) -> None:
        self.sqs = sqs
        self.url = url

    def send_start(self, execution_id: str) -> None:
        self._send(execution_id, {"type": "start", "execution_id": execution_id}, start_dedup_id(execution_id))

    def send_event(self, execution_id: str, event: Mapping[str, Any]) -> None:
        body = {"type": "event", "execution_id": execution_id, "event": dict(event)}
        self._send(execution_id, body, event_dedup_id(execution_id, event))

    def send_attempt(self, execution_id: str, attempt: Mapping[str, Any]) -> None:
        """An inline activity's attempt (its activity message), for the orchestrator to run."""
        body = {"type": "attempt", "execution_id": execution_id, "attempt": dict(attempt)}
        self._send(execution_id, body, _sha256(f"{execution_id}:attempt:{canonical_json(dict(attempt))}")[:64])

    def _send(self, execution_id: str, body: dict[str, Any], dedup_id: str) -> None:
        self.sqs.send_message(
            QueueUrl=self.url,
            MessageBody=json.dumps(body, ensure_ascii=False),
            MessageGroupId=group_id(execution_id),
            MessageDeduplicationId=dedup_id,
        )


class ActivityQueue:
    """The standard queue of activity attempts; the worker de-duplicates by its claim row per attempt."""

    def __init__(self, sqs: Any, url: str) -> None:
        self.sqs = sqs
        self.url = url

    def send(self, message: Mapping[str, Any], delay_seconds: int = 0) -> None:
        """`delay_seconds` (≤ 900) is for retries with backoff; a first attempt goes out at once."""
        if not 0 <= delay_seconds <= MAX_SQS_DELAY_SECONDS:
            raise errors.EventualError(f"activity delay {delay_seconds}s is outside SQS's 0..900 s")
        missing = {"execution_id", "seq", "attempt", "name"} - set(message)
        if missing:
            raise errors.EventualError(f"activity message lacks {sorted(missing)}: {dict(message)!r}")
        self.sqs.send_message(
            QueueUrl=self.url, MessageBody=json.dumps(dict(message), ensure_ascii=False), DelaySeconds=delay_seconds
        )

    def send_batch(self, messages: Sequence[Mapping[str, Any]]) -> None:
        """First attempts, in `SendMessageBatch` calls of at most 10 messages and 256 KB (one request, and one
        billed request per 64 KB of it, instead of one per message). Raises `EventualError` naming the
        messages SQS refused (those it accepted are on the queue: a repeat is dropped by the claim row)."""
        batch: list[dict[str, Any]] = []
        size = 0
        for message in messages:
            missing = {"execution_id", "seq", "attempt", "name"} - set(message)
            if missing:
                raise errors.EventualError(f"activity message lacks {sorted(missing)}: {dict(message)!r}")
            body = json.dumps(dict(message), ensure_ascii=False)
            length = len(body.encode("utf-8"))
            if batch and (len(batch) == MAX_SQS_BATCH_ENTRIES or size + length > MAX_SQS_BATCH_BYTES):
                self._send_entries(batch)
                batch, size = [], 0
            batch.append({"Id": str(len(batch)), "MessageBody": body})
            size += length
        if batch:
            self._send_entries(batch)

    def _send_entries(self, entries: list[dict[str, Any]]) -> None:
        if len(entries) == 1:  # a batch of one costs the same and says less when it fails
            self.sqs.send_message(QueueUrl=self.url, MessageBody=entries[0]["MessageBody"])
            return
        _check_sqs_reply(self.sqs.send_message_batch(QueueUrl=self.url, Entries=entries), "sending activity attempts")


class TimerClient:
    """Timers: a delayed message on the standard timer queue, or a Scheduler `at()` schedule beyond 15 min.

    A timer message is `{"execution_id", "due", "event"}`; whoever receives it (the timer function) calls
    `relay`, which forwards `event` to the workflow queue once `due` has come and otherwise sends the
    body back to the timer queue for the remaining time, so a long wait hops through the queue.

    `hop_seconds` caps every SQS delay (900, SQS's maximum, on AWS). The offline harness runs a manual
    clock while moto delays messages in real seconds, so it uses a short hop: a pending timer then
    re-checks the manual clock every `hop_seconds` of real time.

    A timer cannot be recalled once its message is on the queue; `cancel` only deletes a schedule. The
    orchestrator ignores a `TimerCompleted` for a timer the workflow no longer waits on."""

    def __init__(
        self,
        sqs: Any,
        timer_url: str,
        scheduler: Any | None = None,
        group: str | None = None,
        role_arn: str | None = None,
        target_arn: str | None = None,
        *,
        hop_seconds: int = MAX_SQS_DELAY_SECONDS,
    ) -> None:
        if not 0 < hop_seconds <= MAX_SQS_DELAY_SECONDS:
            raise errors.EventualError(f"hop_seconds must be within 1..900, not {hop_seconds}")
        self.sqs = sqs
        self.url = timer_url
        self.scheduler = scheduler
        self.group = group
        self.role_arn = role_arn
        self.target_arn = target_arn
        self.hop_seconds = hop_seconds

    @staticmethod
    def body(execution_id: str, due: datetime, event: Mapping[str, Any], kind: str = "event") -> dict[str, Any]:
        """A timer body; `kind` "attempt" carries an inline activity's attempt message instead of an event."""
        return {"execution_id": execution_id, "due": utc(due).isoformat(), kind: dict(event)}

    def schedule(
        self, execution_id: str, key: str, due: datetime, event: Mapping[str, Any], now: datetime, kind: str = "event"
    ) -> str:
        """Arrange for `event` to reach the execution's workflow queue at `due`; returns `"sqs"` or `"scheduler"`.

        `key` names the timer within its execution (e.g. its seq, or "timeout"); only the Scheduler path
        uses it, as the schedule's name, which makes a repeated schedule a no-op. `kind` "attempt": `event`
        is an inline activity's attempt message (a retry after its backoff)."""
        body = self.body(execution_id, due, event, kind)
        if (utc(due) - utc(now)).total_seconds() <= SCHEDULER_THRESHOLD_SECONDS:
            self.requeue(body, now)
            return "sqs"
        scheduler, group, role_arn, target_arn = self._scheduler_settings()
        # at() takes whole seconds in the given time zone; round up so the schedule never fires early
        at = utc(due)
        if at.microsecond:
            at = at.replace(microsecond=0) + timedelta(seconds=1)
        # a conflict: already scheduled, this is a re-dispatch of the same timer
        with contextlib.suppress(scheduler.exceptions.ConflictException):
            scheduler.create_schedule(
                Name=schedule_name(execution_id, key),
                GroupName=group,
                ScheduleExpression=f"at({at.strftime('%Y-%m-%dT%H:%M:%S')})",
                ScheduleExpressionTimezone="UTC",
                FlexibleTimeWindow={"Mode": "OFF"},
                # a one-time schedule deletes itself after firing; `cancel` deletes it before
                ActionAfterCompletion="DELETE",
                Target={
                    "Arn": target_arn,
                    "RoleArn": role_arn,
                    "Input": json.dumps(body, ensure_ascii=False),
                    "RetryPolicy": {"MaximumEventAgeInSeconds": 86_400, "MaximumRetryAttempts": 185},
                },
                Description=f"timer {key} of {execution_id}"[:512],
            )
        return "scheduler"

    def cancel(self, execution_id: str, key: str) -> None:
        """Delete the timer's schedule if it has one; a timer on the SQS queue cannot be recalled."""
        if self.scheduler is None or not self.group:
            return
        with contextlib.suppress(self.scheduler.exceptions.ResourceNotFoundException):
            self.scheduler.delete_schedule(Name=schedule_name(execution_id, key), GroupName=self.group)

    def requeue(self, body: Mapping[str, Any], now: datetime) -> None:
        """Put a timer body on the timer queue for the rest of its wait (at most one hop)."""
        due = datetime.fromisoformat(str(body["due"]))
        self.sqs.send_message(
            QueueUrl=self.url,
            MessageBody=json.dumps(dict(body), ensure_ascii=False),
            DelaySeconds=delay_until(due, now, self.hop_seconds),
        )

    def relay(self, body: Mapping[str, Any], workflow_queue: WorkflowQueue, now: datetime) -> bool:
        """The timer function's job: forward a due timer's event, or hop again. True when forwarded."""
        due = datetime.fromisoformat(str(body["due"]))
        if utc(due) <= utc(now):
            if "attempt" in body:
                workflow_queue.send_attempt(str(body["execution_id"]), body["attempt"])
            else:
                workflow_queue.send_event(str(body["execution_id"]), body["event"])
            return True
        self.requeue(body, now)
        return False

    def _scheduler_settings(self) -> tuple[Any, str, str, str]:
        if self.scheduler is None or not self.group or not self.role_arn or not self.target_arn:
            raise errors.EventualError(
                f"a timer beyond {SCHEDULER_THRESHOLD_SECONDS} s needs EventBridge Scheduler: set "
                f"{SCHEDULE_GROUP_VARIABLE}, {SCHEDULER_ROLE_VARIABLE} and {SCHEDULE_TARGET_VARIABLE} "
                "(the orchestrator function has them)"
            )
        return self.scheduler, self.group, self.role_arn, self.target_arn


# -------------------------------------------------------------------------------------------- bus


class Bus:
    """The service's EventBridge bus, with the template's convention (Source, DetailType, Detail)."""

    def __init__(self, events: Any, bus_name: str, source: str) -> None:
        self.events = events
        self.bus_name = bus_name
        self.source = source

    def entries(self, envelopes: Iterable[Mapping[str, Any]], source: str | None = None) -> list[dict[str, Any]]:
        """`put_events` entries for `{"name": ..., "event": {...}}` envelopes (the form events travel in)."""
        return [
            {
                "EventBusName": self.bus_name,
                "Source": source or self.source,
                "DetailType": str(envelope["name"]),
                "Detail": json.dumps(envelope["event"], ensure_ascii=False),
            }
            for envelope in envelopes
        ]

    def publish(self, envelopes: Iterable[Mapping[str, Any]], source: str | None = None) -> int:
        """Publish in calls of at most 10 entries (and 256 KB); raises if EventBridge refused any entry.

        At least once: a retried publish may deliver an event twice, as EventBridge itself may."""
        batch: list[dict[str, Any]] = []
        size = 0
        sent = 0
        for entry in self.entries(envelopes, source):
            entry_size = sum(len(str(entry[key]).encode("utf-8")) for key in ("Source", "DetailType", "Detail"))
            if batch and (len(batch) == MAX_PUT_EVENTS_ENTRIES or size + entry_size > MAX_PUT_EVENTS_BYTES):
                sent += self._put(batch)
                batch, size = [], 0
            batch.append(entry)
            size += entry_size
        if batch:
            sent += self._put(batch)
        return sent

    def _put(self, batch: list[dict[str, Any]]) -> int:
        reply = self.events.put_events(Entries=batch)
        if reply.get("FailedEntryCount"):
            failures = [
                (entry["DetailType"], result.get("ErrorCode"), result.get("ErrorMessage"))
                for entry, result in zip(batch, reply.get("Entries", []), strict=False)
                if result.get("ErrorCode")
            ]
            raise errors.EventualError(f"EventBridge refused {reply['FailedEntryCount']} events: {failures}")
        return len(batch)


# ------------------------------------------------------------------------------------------- logs


class ExecutionLogs:
    """Captured output of executions: one CloudWatch stream per execution in the execution log group.

    Each log event's message is the JSON `{"time", "source", "message"}` of one `LogEntry`, and its
    CloudWatch timestamp is the wall-clock time of writing, not the entry's: CloudWatch rejects events
    more than 14 days old or 2 hours ahead, and replayed or test-clock times may be either (so `clock`
    is for tests of this class only; `AwsClients` never passes its own, possibly manual, clock)."""

    def __init__(self, logs: Any, group: str, clock: Callable[[], datetime] | None = None) -> None:
        self.logs = logs
        self.group = group
        self.clock = clock or (lambda: datetime.now(UTC))

    def write(self, execution_id: str, entries: Iterable[LogEntry | Mapping[str, Any]]) -> int:
        items = [entry if isinstance(entry, LogEntry) else LogEntry.model_validate(entry) for entry in entries]
        if not items:
            return 0
        stream = log_stream_name(execution_id)
        stamp = int(utc(self.clock()).timestamp() * 1000)
        batch: list[dict[str, Any]] = []
        size = 0
        for item in items:
            message = self._message(item)
            cost = len(message.encode("utf-8")) + LOG_EVENT_OVERHEAD
            if batch and (len(batch) == MAX_LOG_BATCH_EVENTS or size + cost > MAX_LOG_BATCH_BYTES):
                self._put(stream, batch)
                batch, size = [], 0
            batch.append({"timestamp": stamp, "message": message})
            size += cost
        self._put(stream, batch)
        return len(items)

    def read(self, execution_id: str) -> list[LogEntry]:
        """Every entry of the execution, oldest first (empty when it never logged)."""
        entries: list[LogEntry] = []
        arguments: dict[str, Any] = {
            "logGroupName": self.group,
            "logStreamName": log_stream_name(execution_id),
            "startFromHead": True,
        }
        while True:
            try:
                reply = self.logs.get_log_events(**arguments)
            except self.logs.exceptions.ResourceNotFoundException:
                return entries
            for event in reply.get("events", []):
                entries.append(self._entry(event))
            token = reply.get("nextForwardToken")
            if not reply.get("events") or not token or token == arguments.get("nextToken"):
                return entries
            arguments["nextToken"] = token

    @staticmethod
    def _message(entry: LogEntry) -> str:
        text = entry.message
        encoded = text.encode("utf-8")
        # leave room for the JSON wrapper; escaping can grow the text, so cut generously
        limit = MAX_LOG_MESSAGE_BYTES // 2 - 1024
        if len(encoded) > limit:
            text = encoded[:limit].decode("utf-8", errors="ignore") + " …[truncated]"
        return json.dumps(
            {"time": utc(entry.time).isoformat(), "source": entry.source, "message": text}, ensure_ascii=False
        )

    @staticmethod
    def _entry(event: Mapping[str, Any]) -> LogEntry:
        try:
            data = json.loads(event["message"])
            return LogEntry(time=data["time"], message=data["message"], source=data["source"])
        except (ValueError, KeyError, TypeError):
            # a line someone else wrote into the stream: keep it, with CloudWatch's own time
            moment = datetime.fromtimestamp(int(event.get("timestamp", 0)) / 1000, UTC)
            return LogEntry(time=moment, message=str(event.get("message", "")), source="")

    def _put(self, stream: str, batch: list[dict[str, Any]]) -> None:
        """Put one batch; the stream is created when the put finds it missing, so an execution's stream is
        created once (by its first write), not on every write of every container."""
        try:
            reply = self.logs.put_log_events(logGroupName=self.group, logStreamName=stream, logEvents=batch)
        except self.logs.exceptions.ResourceNotFoundException:
            # another writer may have created it in between
            with contextlib.suppress(self.logs.exceptions.ResourceAlreadyExistsException):
                self.logs.create_log_stream(logGroupName=self.group, logStreamName=stream)
            reply = self.logs.put_log_events(logGroupName=self.group, logStreamName=stream, logEvents=batch)
        rejected = reply.get("rejectedLogEventsInfo")
        if rejected:
            raise errors.EventualError(f"CloudWatch Logs rejected log events of stream {stream!r}: {rejected}")


# -------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class AwsSettings:
    """The `EVENTUAL_*` variables the stack gives its functions (not every function gets every one)."""

    service: str = ""
    executions_table: str = ""
    history_table: str = ""
    entities_table: str = ""
    workflow_queue_url: str = ""
    activity_queue_url: str = ""
    timer_queue_url: str = ""
    bus_name: str = ""
    execution_log_group: str = ""
    schedule_group: str = ""
    scheduler_role_arn: str = ""
    schedule_target_arn: str = ""
    #: subscription queue ARN → subscription name (the subscription function's map)
    subscription_queues: dict[str, str] = field(default_factory=dict)
    history_layout: str = ""

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> AwsSettings:
        source = os.environ if environ is None else environ
        queues_text = source.get(SUBSCRIPTION_QUEUES_VARIABLE) or "{}"
        try:
            queues = json.loads(queues_text)
        except ValueError as error:
            raise errors.EventualError(f"{SUBSCRIPTION_QUEUES_VARIABLE} is not JSON: {queues_text!r}") from error
        if not isinstance(queues, dict):
            raise errors.EventualError(f"{SUBSCRIPTION_QUEUES_VARIABLE} must map queue ARNs to names: {queues!r}")
        return cls(
            service=source.get(SERVICE_VARIABLE, ""),
            executions_table=source.get(EXECUTIONS_TABLE_VARIABLE, ""),
            history_table=source.get(HISTORY_TABLE_VARIABLE, ""),
            entities_table=source.get(ENTITIES_TABLE_VARIABLE, ""),
            workflow_queue_url=source.get(WORKFLOW_QUEUE_VARIABLE, ""),
            activity_queue_url=source.get(ACTIVITY_QUEUE_VARIABLE, ""),
            timer_queue_url=source.get(TIMER_QUEUE_VARIABLE, ""),
            bus_name=source.get(BUS_VARIABLE, ""),
            execution_log_group=source.get(LOG_GROUP_VARIABLE, ""),
            schedule_group=source.get(SCHEDULE_GROUP_VARIABLE, ""),
            scheduler_role_arn=source.get(SCHEDULER_ROLE_VARIABLE, ""),
            schedule_target_arn=source.get(SCHEDULE_TARGET_VARIABLE, ""),
            subscription_queues={str(arn): str(name) for arn, name in queues.items()},
            history_layout=source.get(HISTORY_LAYOUT_VARIABLE, ""),
        )

    def check_layout(self, stack: str | None = None) -> None:
        """Refuse a stack whose tables hold another history layout than this code's (`HISTORY_LAYOUT`).

        Not migrated: an execution in flight on the old layout cannot continue on the new one (its history
        items are of another shape), so the stack is redeployed by this version; see the README, "Upgrading
        a deployed stack"."""
        if self.history_layout == HISTORY_LAYOUT:
            return
        which = f"stack {stack!r}" if stack else "this stack"
        found = (
            f"history layout {self.history_layout!r}"
            if self.history_layout
            else "an earlier layout (one item per history event, and a history head)"
        )
        raise errors.EventualError(
            f"{which} was deployed with {found}, but this eventual-nb stores history as {HISTORY_LAYOUT!r} "
            "(one DynamoDB item per turn): redeploy the service with this version (let the executions in "
            "flight finish first, then `eventual-nb destroy` and `eventual-nb deploy`, or deploy it under a "
            "new stack name)"
        )

    def require(self, *names: str) -> None:
        missing = [name for name in names if not getattr(self, name)]
        if missing:
            variables = ", ".join(f"EVENTUAL_{name.upper()}" for name in missing)
            raise errors.EventualError(f"{variables} not set: this function of the stack was not given them")


class AwsClients:
    """The boto3 clients and senders of one process, built once (a Lambda container reuses them).

    boto3 clients are built lazily, on first use, so a function pays only for the services it calls.
    It also satisfies the orchestrator's `Dispatch` protocol; `clock` gives the `now` timers are
    measured from (the harness passes its manual clock)."""

    def __init__(
        self,
        settings: AwsSettings,
        client_factory: Callable[[str], Any],
        *,
        clock: Callable[[], datetime] | None = None,
        timer_hop_seconds: int = MAX_SQS_DELAY_SECONDS,
    ) -> None:
        self.settings = settings
        self._factory = client_factory
        self._clients: dict[str, Any] = {}
        self.clock = clock or (lambda: datetime.now(UTC))
        self.timer_hop_seconds = timer_hop_seconds
        self._workflow_queue: WorkflowQueue | None = None
        self._activity_queue: ActivityQueue | None = None
        self._timers: TimerClient | None = None
        self._bus: Bus | None = None
        self._logs: ExecutionLogs | None = None

    @classmethod
    def from_environment(
        cls,
        session_or_kwargs: Any = None,
        *,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], datetime] | None = None,
        timer_hop_seconds: int = MAX_SQS_DELAY_SECONDS,
    ) -> AwsClients:
        """Clients for the stack named by the `EVENTUAL_*` variables (of `environ`, default `os.environ`).

        `session_or_kwargs` is a boto3 `Session`, or keyword arguments for `boto3.client` such as
        `{"endpoint_url": "http://127.0.0.1:5000", "region_name": "us-east-1"}` (the offline tests always
        name moto's endpoint explicitly), or None for boto3's defaults (inside Lambda)."""
        settings = AwsSettings.from_environment(environ)
        if session_or_kwargs is None or isinstance(session_or_kwargs, Mapping):
            import boto3  # deferred: see the module docstring

            kwargs = dict(session_or_kwargs or {})

            def factory(service: str) -> Any:
                return boto3.client(service, **kwargs)

        else:
            session = session_or_kwargs

            def factory(service: str) -> Any:
                return session.client(service)

        return cls(settings, factory, clock=clock, timer_hop_seconds=timer_hop_seconds)

    def client(self, service: str) -> Any:
        """The boto3 client of `service` ("sqs", "events", "logs", "scheduler", "dynamodb"), built once."""
        if service not in self._clients:
            self._clients[service] = self._factory(service)
        return self._clients[service]

    # --------------------------------------------------------------------------------- senders

    @property
    def workflow_queue(self) -> WorkflowQueue:
        if self._workflow_queue is None:
            self.settings.require("workflow_queue_url")
            self._workflow_queue = WorkflowQueue(self.client("sqs"), self.settings.workflow_queue_url)
        return self._workflow_queue

    @property
    def activity_queue(self) -> ActivityQueue:
        if self._activity_queue is None:
            self.settings.require("activity_queue_url")
            self._activity_queue = ActivityQueue(self.client("sqs"), self.settings.activity_queue_url)
        return self._activity_queue

    @property
    def timers(self) -> TimerClient:
        if self._timers is None:
            self.settings.require("timer_queue_url")
            settings = self.settings
            self._timers = TimerClient(
                self.client("sqs"),
                settings.timer_queue_url,
                self.client("scheduler") if settings.schedule_group else None,
                settings.schedule_group or None,
                settings.scheduler_role_arn or None,
                settings.schedule_target_arn or None,
                hop_seconds=self.timer_hop_seconds,
            )
        return self._timers

    @property
    def bus(self) -> Bus:
        if self._bus is None:
            self.settings.require("bus_name", "service")
            self._bus = Bus(self.client("events"), self.settings.bus_name, self.settings.service)
        return self._bus

    @property
    def logs(self) -> ExecutionLogs:
        if self._logs is None:
            self.settings.require("execution_log_group")
            # wall-clock stamps, not `self.clock`: CloudWatch judges them against its own time
            self._logs = ExecutionLogs(self.client("logs"), self.settings.execution_log_group)
        return self._logs

    # ------------------------------------------------------------------------- Dispatch protocol

    def send_workflow_event(self, execution_id: str, event: Mapping[str, Any]) -> None:
        self.workflow_queue.send_event(execution_id, event)

    def start_child(self, execution_id: str) -> None:
        self.workflow_queue.send_start(execution_id)

    def send_activity(self, message: Mapping[str, Any]) -> None:
        self.activity_queue.send(message)

    def send_activities(self, messages: Sequence[Mapping[str, Any]]) -> None:
        self.activity_queue.send_batch(messages)

    def schedule_timer(self, execution_id: str, key: str, due: datetime, event: Mapping[str, Any]) -> None:
        self.timers.schedule(execution_id, key, due, event, self.clock())

    def send_attempt(self, execution_id: str, attempt: Mapping[str, Any]) -> None:
        self.workflow_queue.send_attempt(execution_id, attempt)

    def schedule_attempt(self, execution_id: str, key: str, due: datetime, attempt: Mapping[str, Any]) -> None:
        self.timers.schedule(execution_id, key, due, attempt, self.clock(), kind="attempt")

    def cancel_timer(self, execution_id: str, key: str) -> None:
        self.timers.cancel(execution_id, key)

    def publish(self, envelopes: Sequence[Mapping[str, Any]], source: str | None = None) -> None:
        if envelopes:
            self.bus.publish(envelopes, source)

    def write_logs(self, execution_id: str, entries: Sequence[LogEntry | Mapping[str, Any]]) -> None:
        if entries:
            self.logs.write(execution_id, entries)
