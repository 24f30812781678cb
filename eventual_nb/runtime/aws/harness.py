"""A driver that stands in for Lambda's SQS pollers and for EventBridge Scheduler, for offline runs on moto.

moto stores queues, buses, schedules and tables faithfully but runs no code: event source mappings are
deployed disabled in the emulator (`Emulator=true`), and schedules never fire. The
`Harness` plays those two parts, with the same contracts the handlers meet on AWS:

* Lambda's SQS event source mapping: it receives from the workflow FIFO queue, the activity queue, the
  timer queue and each subscription queue, calls the function's handler with an SQS batch event
  (`Records[]` with `messageId`, `receiptHandle`, `body`, `attributes` incl. `MessageGroupId` on FIFO,
  `eventSourceARN`, ...), deletes what succeeded and makes what failed visible again at once, per the
  handler's `batchItemFailures` (`ReportBatchItemFailures`). A handler that raises fails its whole
  batch; a malformed or unknown `itemIdentifier` fails it too, as on Lambda. On the FIFO queue, once a
  message of a group failed, later messages of that group in the batch count as failed even if the
  handler did not list them, so a group's order survives a failure.
* EventBridge Scheduler: `fire_due_schedules` lists the schedules of the group. A one-time `at()` schedule
  whose time has come by the harness's clock is delivered to its target — an SQS queue (`send_message`)
  or a Lambda function (the `schedule` handler, called with the parsed input) — and deleted
  (`ActionAfterCompletion=DELETE`). A recurring `cron()`/`rate()` schedule is delivered once per fire
  between the harness's last look and its clock, oldest first, with `<aws.scheduler.scheduled-time>` in
  its input replaced by the fire's time, as Scheduler does. Like Scheduler, a DISABLED schedule skips
  the fires of its disabled span, and a `rate()` counts from when the schedule was first seen (here: by
  the harness's clock). Cron expressions are read in AWS's 6-field form (`?`, days of the week 1-7 from
  Sunday, a year field of `*`) in `ScheduleExpressionTimezone`: a local time skipped by a daylight-saving
  change does not fire, one that happens twice fires once.

Handlers are keyed by the template's function keys: `orchestrator`, `activity`, `timer`, `subscription`,
`schedule`; each is `handler(event, context) -> dict | None`, exactly what the generated `handlers.py`
exports. Why one thread: moto's FIFO receive is racy with concurrent consumers (order breaks) and its
`TransactWriteItems` deep-copies whole tables, so the harness calls one handler at a time, in order.

Time: the harness's `clock` decides when schedules are due (and is what the test's handlers should
use for "now"); SQS delays are real seconds in moto. Pair a `ManualClock` with
`AwsClients(timer_hop_seconds=1)`: a pending timer then re-checks the manual clock about once a real
second, and `advance(...)` moves time forward and runs until idle, waiting (`wait_seconds`) for the
hops in flight.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from eventual_nb import errors
from eventual_nb.runtime.aws.clients import AwsClients, utc
from eventual_nb.runtime.aws.functions import ENTRY_POINTS, process_functions
from eventual_nb.runtime.aws.schedules import SCHEDULED_TIME, group_schedule_names
from eventual_nb.runtime.clock import ManualClock

__all__ = ["Harness", "HarnessNotIdle", "LambdaContext", "ManualClock", "RunReport", "harness_for", "recurring_fires"]

LOGGER = logging.getLogger("eventual_nb.aws.harness")

Handler = Callable[[dict[str, Any], Any], "dict[str, Any] | None"]

WORKFLOW = "orchestrator"
ACTIVITY = "activity"
TIMER = "timer"
SUBSCRIPTION = "subscription"
SCHEDULE = "schedule"

#: the template's event source mapping batch sizes (`exporter/template.py` `consumed_queues`)
BATCH_SIZES = {WORKFLOW: 10, ACTIVITY: 1, TIMER: 10, SUBSCRIPTION: 10}
#: moto's default account: the `account` field it leaves out of EventBridge envelopes
DEFAULT_ACCOUNT = "123456789012"
#: the order of a real EventBridge envelope's keys
ENVELOPE_KEYS = ("version", "id", "detail-type", "source", "account", "time", "region", "resources", "detail")

_AT = re.compile(r"at\((\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})\)")
_CRON = re.compile(r"cron\((.+)\)")
_RATE = re.compile(r"rate\((\d+) (minute|minutes|hour|hours|day|days)\)")
_RATE_UNITS = {"minute": 60, "hour": 3600, "day": 86400}


class HarnessNotIdle(errors.EventualError):
    """Work was still being done after `max_rounds` rounds (a message that fails forever, a busy loop)."""


@dataclass
class LambdaContext:
    """The attributes of Lambda's context object that handlers commonly read."""

    function_name: str
    invoked_function_arn: str
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    memory_limit_in_mb: int = 512
    function_version: str = "$LATEST"
    log_group_name: str = ""
    log_stream_name: str = ""
    remaining_millis: int = 60_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_millis


@dataclass
class Invocation:
    """One handler call: which function, on what, and what came of it."""

    function: str
    source: str
    message_ids: list[str]
    failed: list[str]
    error: BaseException | None = None


@dataclass
class RunReport:
    """What `run_until_idle` did: useful in assertions and, above all, in failure messages."""

    rounds: int = 0
    invocations: list[Invocation] = field(default_factory=list)
    fired_schedules: list[str] = field(default_factory=list)
    #: messages still delayed or in flight when the run stopped (timers hopping through the queue)
    pending: int = 0

    @property
    def errors(self) -> list[tuple[str, BaseException]]:
        return [(item.function, item.error) for item in self.invocations if item.error is not None]

    def calls(self, function: str) -> list[Invocation]:
        return [item for item in self.invocations if item.function == function]


@dataclass
class _Queue:
    function: str
    name: str
    url: str
    arn: str
    fifo: bool
    subscription: str | None = None


class Harness:
    """Drives the handlers of one stack from its queues and schedules (see the module docstring)."""

    def __init__(
        self,
        clients: AwsClients,
        handlers: Mapping[str, Handler],
        clock: Callable[[], datetime],
        *,
        subscription_queues: Mapping[str, str] | None = None,
        account: str = DEFAULT_ACCOUNT,
        visibility_timeout: int = 300,
        function_timeout: float = 60.0,
    ) -> None:
        """`subscription_queues` maps queue ARN → subscription name (default: the clients' settings,
        i.e. `EVENTUAL_SUBSCRIPTION_QUEUES`). Queues without a handler are not polled."""
        self.clients = clients
        self.handlers = dict(handlers)
        self.clock = clock
        self.account = account
        self.visibility_timeout = visibility_timeout
        #: the functions' time limit, in seconds: what each invocation's context reports as remaining
        self.function_timeout = function_timeout
        self.sqs = clients.client("sqs")
        self.region = str(self.sqs.meta.region_name)
        self.subscription_queues = dict(
            clients.settings.subscription_queues if subscription_queues is None else subscription_queues
        )
        self._queues: list[_Queue] | None = None
        #: recurring schedule name -> (when the harness first saw it, fires up to this instant are done)
        self._recurring: dict[str, tuple[datetime, datetime]] = {}

    # ----------------------------------------------------------------------------------- queues

    def queues(self) -> list[_Queue]:
        """The polled queues, workflow queue first (resolved once: URL, ARN, FIFO or not)."""
        if self._queues is None:
            settings = self.clients.settings
            found: list[_Queue] = []
            for function, url in (
                (WORKFLOW, settings.workflow_queue_url),
                (ACTIVITY, settings.activity_queue_url),
                (TIMER, settings.timer_queue_url),
            ):
                if url and function in self.handlers:
                    found.append(self._describe(function, url))
            if SUBSCRIPTION in self.handlers:
                for arn, name in sorted(self.subscription_queues.items(), key=lambda item: item[1]):
                    url = self.sqs.get_queue_url(QueueName=arn.rsplit(":", 1)[-1])["QueueUrl"]
                    found.append(self._describe(SUBSCRIPTION, url, name))
            self._queues = found
        return self._queues

    def _describe(self, function: str, url: str, subscription: str | None = None) -> _Queue:
        attributes = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn", "FifoQueue"])
        arn = attributes["Attributes"]["QueueArn"]
        fifo = attributes["Attributes"].get("FifoQueue") == "true"
        return _Queue(function, arn.rsplit(":", 1)[-1], url, arn, fifo, subscription)

    def pending(self) -> int:
        """Messages that exist but cannot be received yet (delayed, or in flight elsewhere)."""
        return sum(delayed + invisible for _, delayed, invisible in self._counts())

    def visible(self) -> int:
        """Messages a receive would return now (e.g. a delayed one that became visible after the last round)."""
        return sum(visible for visible, _, _ in self._counts())

    def _counts(self) -> list[tuple[int, int, int]]:
        counts = []
        for queue in self.queues():
            attributes = self.sqs.get_queue_attributes(
                QueueUrl=queue.url,
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesDelayed",
                    "ApproximateNumberOfMessagesNotVisible",
                ],
            )["Attributes"]
            counts.append(
                (
                    int(attributes.get("ApproximateNumberOfMessages", 0)),
                    int(attributes.get("ApproximateNumberOfMessagesDelayed", 0)),
                    int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
                )
            )
        return counts

    # ------------------------------------------------------------------------------------ rounds

    def run_until_idle(self, max_rounds: int = 100, wait_seconds: float = 0.0) -> RunReport:
        """Poll every queue and the schedules in rounds until a round finds nothing to do.

        With `wait_seconds` > 0, an empty round while messages are still delayed (a timer hopping
        through the queue) waits for them, up to that many real seconds in total. Raises
        `HarnessNotIdle` when `max_rounds` rounds all found work."""
        report = RunReport()
        deadline = time.monotonic() + wait_seconds
        while True:
            if report.rounds >= max_rounds:
                last = report.invocations[-3:]
                raise HarnessNotIdle(
                    f"still busy after {max_rounds} rounds ({len(report.invocations)} invocations; last: {last})"
                )
            report.rounds += 1
            did = self.poll_once(report)
            if did:
                continue
            counts = self._counts()
            if any(visible for visible, _, _ in counts):
                continue  # became visible after this round's receive: not idle yet
            report.pending = sum(delayed + invisible for _, delayed, invisible in counts)
            if report.pending and time.monotonic() < deadline:
                report.rounds -= 1  # waiting is not a round of work
                time.sleep(0.2)
                continue
            return report

    def advance(self, delta: timedelta | float, max_rounds: int = 100, wait_seconds: float = 5.0) -> RunReport:
        """Move a `ManualClock` forward and run until idle (waiting for timer hops in flight)."""
        advance = getattr(self.clock, "advance", None)
        if advance is None:
            raise errors.EventualError("advance() needs a clock that can be moved (a ManualClock)")
        advance(delta)
        return self.run_until_idle(max_rounds=max_rounds, wait_seconds=wait_seconds)

    def poll_once(self, report: RunReport | None = None) -> int:
        """One round: fire due schedules, then one receive per queue; returns how much was handled."""
        report = report if report is not None else RunReport()
        handled = len(self.fire_due_schedules(report))
        for queue in self.queues():
            handled += self._poll(queue, report)
        return handled

    def _poll(self, queue: _Queue, report: RunReport) -> int:
        messages = self.sqs.receive_message(
            QueueUrl=queue.url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=self.visibility_timeout,
            WaitTimeSeconds=0,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        size = BATCH_SIZES.get(queue.function, 10)
        for start in range(0, len(messages), size):
            self._invoke(queue, messages[start : start + size], report)
        return len(messages)

    def _invoke(self, queue: _Queue, messages: list[dict[str, Any]], report: RunReport) -> None:
        records = [self.sqs_record(queue, message) for message in messages]
        ids = [record["messageId"] for record in records]
        error: BaseException | None = None
        try:
            response = self.handlers[queue.function]({"Records": records}, self.context(queue.function))
            failed = self._failures(response, ids)
        except Exception as caught:  # Lambda's contract: any exception fails the whole batch
            LOGGER.exception("%s handler failed on %d records from %s", queue.function, len(ids), queue.name)
            error, failed = caught, set(ids)
        if queue.fifo:
            failed = self._fifo_failures(records, failed)
        report.invocations.append(
            Invocation(queue.function, queue.subscription or queue.name, ids, [i for i in ids if i in failed], error)
        )
        done = [message for message in messages if message["MessageId"] not in failed]
        retry = [message for message in messages if message["MessageId"] in failed]
        if done:
            reply = self.sqs.delete_message_batch(
                QueueUrl=queue.url,
                Entries=[{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(done)],
            )
            if reply.get("Failed"):
                raise errors.EventualError(f"could not delete processed messages from {queue.name}: {reply['Failed']}")
        if retry:
            self.sqs.change_message_visibility_batch(
                QueueUrl=queue.url,
                Entries=[
                    {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                    for n, m in enumerate(retry)
                ],
            )

    @staticmethod
    def _failures(response: Any, ids: list[str]) -> set[str]:
        """The failed message ids of a `ReportBatchItemFailures` response; a malformed one fails all."""
        if response is None:
            return set()
        if not isinstance(response, Mapping):
            raise errors.EventualError(f"handler returned {response!r}, not a batch response")
        items = response.get("batchItemFailures") or []
        failed: set[str] = set()
        for item in items:
            identifier = item.get("itemIdentifier") if isinstance(item, Mapping) else None
            if not identifier or identifier not in ids:
                # Lambda treats the whole batch as failed when an identifier is empty or unknown
                raise errors.EventualError(f"batchItemFailures names {item!r}, which is not in the batch")
            failed.add(str(identifier))
        return failed

    @staticmethod
    def _fifo_failures(records: list[dict[str, Any]], failed: set[str]) -> set[str]:
        """Once a group's message failed, its later messages in the batch are failed too (order)."""
        broken: set[str] = set()
        result = set(failed)
        for record in records:
            group = record["attributes"].get("MessageGroupId", "")
            if group in broken:
                result.add(record["messageId"])
            elif record["messageId"] in failed:
                broken.add(group)
        return result

    # ------------------------------------------------------------------------------ event shapes

    def context(self, function: str) -> LambdaContext:
        return LambdaContext(
            function_name=f"harness-{function}",
            invoked_function_arn=f"arn:aws:lambda:{self.region}:{self.account}:function:harness-{function}",
            remaining_millis=int(self.function_timeout * 1000),
        )

    def sqs_record(self, queue: _Queue, message: Mapping[str, Any]) -> dict[str, Any]:
        """Lambda's SQS record for a received message (subscription bodies get a complete envelope)."""
        body = str(message["Body"])
        if queue.function == SUBSCRIPTION:
            body = json.dumps(self.envelope(json.loads(body)), ensure_ascii=False)
        attributes = dict(message.get("Attributes", {}))
        return {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": body,
            "attributes": attributes,
            "messageAttributes": {
                name: {
                    "stringValue": value.get("StringValue"),
                    "binaryValue": value.get("BinaryValue"),
                    "stringListValues": [],
                    "binaryListValues": [],
                    "dataType": value.get("DataType"),
                }
                for name, value in message.get("MessageAttributes", {}).items()
            },
            "md5OfBody": hashlib.md5(body.encode("utf-8")).hexdigest(),  # SQS's own checksum
            "eventSource": "aws:sqs",
            "eventSourceARN": queue.arn,
            "awsRegion": self.region,
        }

    def envelope(self, delivered: Mapping[str, Any]) -> dict[str, Any]:
        """EventBridge's envelope as AWS delivers it: moto leaves out `account`, so it is added here."""
        complete = dict(delivered)
        complete.setdefault("account", self.account)
        complete.setdefault("version", "0")
        complete.setdefault("resources", [])
        complete.setdefault("region", self.region)
        ordered = {key: complete[key] for key in ENVELOPE_KEYS if key in complete}
        ordered.update({key: value for key, value in complete.items() if key not in ordered})
        return ordered

    # --------------------------------------------------------------------------------- schedules

    def fire_due_schedules(self, report: RunReport | None = None) -> list[str]:
        """Deliver every one-time schedule of the group whose `at()` time is <= clock(); returns their names."""
        group = self.clients.settings.schedule_group
        if not group:
            return []
        scheduler = self.clients.client("scheduler")
        now = utc(self.clock())
        fired: list[str] = []
        for name in group_schedule_names(scheduler, group):
            schedule = scheduler.get_schedule(Name=name, GroupName=group)
            if _is_recurring(schedule):
                fired.extend(self._fire_recurring(schedule, now, report))
                continue
            due = self._at(schedule)
            if schedule.get("State") == "DISABLED" or due is None or due > now:
                continue
            target = schedule["Target"]
            try:
                self._deliver(target)
            except Exception as caught:  # Scheduler retries a failed delivery; so do we
                LOGGER.exception("schedule %s could not be delivered to %s", name, target.get("Arn"))
                if report is not None:
                    report.invocations.append(Invocation(SCHEDULE, name, [], [name], caught))
                continue
            # ActionAfterCompletion=DELETE (what TimerClient sets); a one-time schedule without it would
            # stay, spent, on AWS: the harness removes it either way rather than remember what it fired
            # not found: the forwarder (or a cancel) deleted it already
            with contextlib.suppress(scheduler.exceptions.ResourceNotFoundException):
                scheduler.delete_schedule(Name=name, GroupName=group)
            fired.append(name)
            if report is not None:
                report.fired_schedules.append(name)
        return fired

    def _fire_recurring(self, schedule: Mapping[str, Any], now: datetime, report: RunReport | None) -> list[str]:
        """Deliver the fires of a `cron()`/`rate()` schedule since the last look, oldest first; a failed
        delivery stops there and is tried again next round (Scheduler retries)."""
        name = str(schedule["Name"])
        first_seen, done = self._recurring.setdefault(name, (now, now))
        if schedule.get("State") == "DISABLED":
            self._recurring[name] = (first_seen, now)  # Scheduler skips what falls in a disabled span
            return []
        fired: list[str] = []
        for fire in recurring_fires(schedule, first_seen, done, now):
            target = dict(schedule["Target"])
            stamp = fire.strftime("%Y-%m-%dT%H:%M:%SZ")
            target["Input"] = str(target.get("Input", "{}")).replace(SCHEDULED_TIME, stamp)
            try:
                self._deliver(target)
            except Exception as caught:
                LOGGER.exception("recurring schedule %s could not deliver its fire of %s", name, stamp)
                if report is not None:
                    report.invocations.append(Invocation(SCHEDULE, name, [], [name], caught))
                self._recurring[name] = (first_seen, fire - timedelta(microseconds=1))
                return fired
            fired.append(f"{name}@{stamp}")
            if report is not None:
                report.fired_schedules.append(fired[-1])
        self._recurring[name] = (first_seen, now)
        return fired

    @staticmethod
    def _at(schedule: Mapping[str, Any]) -> datetime | None:
        match = _AT.fullmatch(str(schedule.get("ScheduleExpression", "")))
        if match is None:
            return None  # rate()/cron() schedules are not timers; the harness leaves them alone
        zone = ZoneInfo(str(schedule.get("ScheduleExpressionTimezone") or "UTC"))
        return datetime.fromisoformat(match.group(1)).replace(tzinfo=zone).astimezone(UTC)

    def _deliver(self, target: Mapping[str, Any]) -> None:
        arn = str(target["Arn"])
        text = str(target.get("Input", "{}"))
        if ":sqs:" in arn:
            url = self.sqs.get_queue_url(QueueName=arn.rsplit(":", 1)[-1])["QueueUrl"]
            self.sqs.send_message(QueueUrl=url, MessageBody=text)
            return
        if ":lambda:" in arn:
            handler = self.handlers.get(SCHEDULE)
            if handler is None:
                raise errors.EventualError(f"a schedule targets the function {arn} but no 'schedule' handler is given")
            handler(json.loads(text), self.context(SCHEDULE))
            return
        raise errors.EventualError(f"the harness cannot deliver a schedule to {arn}")


def _is_recurring(schedule: Mapping[str, Any]) -> bool:
    return str(schedule.get("ScheduleExpression", "")).startswith(("cron(", "rate("))


def recurring_fires(
    schedule: Mapping[str, Any], first_seen: datetime, after: datetime, until: datetime
) -> list[datetime]:
    """The fires of a recurring Scheduler schedule in `(after, until]` (aware UTC), oldest first.

    `rate(N unit)` fires every N units from `first_seen`; `cron(...)` as AWS reads its 6 fields in
    `ScheduleExpressionTimezone` (see the module docstring). Refuses what the harness cannot read."""
    from eventual_nb.runtime.core.schedules import define_schedule

    expression = str(schedule.get("ScheduleExpression", ""))
    rate = _RATE.fullmatch(expression)
    if rate is not None:
        step = timedelta(seconds=int(rate.group(1)) * _RATE_UNITS[rate.group(2).rstrip("s")])
        first = (after - first_seen) // step + 1
        last = (until - first_seen) // step
        return [first_seen + k * step for k in range(max(first, 1), last + 1)]
    cron = _CRON.fullmatch(expression)
    if cron is None:
        raise errors.EventualError(f"the harness cannot read the schedule expression {expression!r}")
    fields = cron.group(1).split()
    if len(fields) != 6 or fields[5] != "*":
        raise errors.EventualError(
            f"the harness reads 6-field cron() expressions with a year of '*', not {expression!r}"
        )
    minute, hour, day_of_month, month, day_of_week = fields[:5]
    line = " ".join([minute, hour, day_of_month.replace("?", "*"), month, _cron_weekdays(day_of_week)])
    zone = str(schedule.get("ScheduleExpressionTimezone") or "UTC")
    walker = define_schedule(name="harness", workflow="harness", cron=line, timezone=zone)
    return walker.fires(after, until)


def _cron_weekdays(field: str) -> str:
    """AWS's day-of-week field (1-7 from Sunday, `?`) in cron's numbering (0-6 from Sunday, `*`)."""
    if field == "?":
        return "*"
    return re.sub(r"(?<![#\d])([1-7])", lambda match: str(int(match.group(1)) - 1), field)


def harness_for(handlers: Any, clock: Callable[[], datetime] | None = None, **options: Any) -> Harness:
    """A `Harness` driving an export's generated `handlers` module (imported from the export or its zip)
    the way Lambda would: its entry points, over this process's functions' clients. `options` go to
    `Harness` (e.g. `visibility_timeout`, `function_timeout`)."""
    clients = process_functions(getattr(handlers, "SERVICE", None)).clients
    entry_points = {key: getattr(handlers, entry) for key, entry in ENTRY_POINTS.items()}
    return Harness(clients, entry_points, clock or clients.clock, **options)
