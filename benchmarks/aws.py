"""What a workflow step costs on AWS at list prices: every request the AWS runtime makes, counted on moto.

`python -m benchmarks --only aws` runs, in its own process (`python -m benchmarks.aws worker ...`), moto's
`ThreadedMotoServer` on 127.0.0.1 with dummy credentials, deploys the exported CloudFormation template
into it (`Emulator=true`, as `eventual-nb deploy` does against the emulator), and drives the stack's real
functions (`StackFunctions`) with the `Harness`, starting and signalling executions through
`ev.aws.AwsRuntime`. Nothing here can reach real AWS: every client names moto's loopback endpoint.

* `aws` — N workflows × 10 no-op activities (the shape of `local_throughput`, in waves of `WAVE` at a
  time because moto copies whole tables on every transaction), run twice: with a *warm*
  orchestrator (one `StackFunctions` for the whole run, so its executor cache hits) and with a *cold*
  one (a new `Orchestrator` — a new container — for every invocation, so every turn reads the whole
  history and replays). For each: billable requests per step by API, DynamoDB request units, the
  modelled Lambda invocations and GB-seconds, and the list-price cost per million activity steps by
  service, against the target (≤ $5) and AWS Step Functions Standard ($25 per million transitions).
* `aws_timer_signal` — one execution with an activity, a short timer (SQS), a long timer (Scheduler),
  a signal and a log line: requests and cost per execution.

What is counted (botocore `before-parameter-build`/`after-call` hooks on every client):

* the runtime's calls (start, signal: what the API function or a notebook pays for) and the functions'
  calls (orchestrator, activity worker, timer relay, schedule forwarder) — all billed as made;
* NOT the harness's own calls: it stands in for Lambda's SQS event source mapping (ESM) and for
  EventBridge Scheduler, and polls moto in its own way (a receive per queue per round, queue-attribute
  counts to detect idleness, listing schedules). Those are replaced by a model of what AWS bills:
  the ESM's pollers are free as Lambda compute, but the SQS requests they make ARE billed to the
  queue's owner at SQS prices, so each queue-driven invocation adds one ReceiveMessage and one
  DeleteMessageBatch on its queue (FIFO price for the workflow queue); empty long-poll receives of an
  idle queue are a fixed cost per queue and month, not per step, and are left out (5 pollers long-polling
  20 s make about 650,000 receives a month: $0.26 on a standard queue, $0.32 on a FIFO one). Each fired
  schedule is one Scheduler invocation plus one Lambda invocation.

DynamoDB units are computed from item sizes (attribute names + values, `stores.item_size`) read back
through an unmetered client: a write costs ceil(max(size before, size after) / 1 KB) WRU, doubled inside
`TransactWriteItems`; each listing index (GSI, projection ALL) an item enters, leaves or changes in costs
a standard write on top (a key change costs two); a strongly consistent read costs ceil(size / 4 KB) RRU
(a query sums its items first), an eventually consistent one half.

Lambda duration is modelled, not measured on AWS: each invocation's CPU time in the handler's thread (the
engine's and botocore's work; moto runs in other threads), scaled by the CPU share the function's memory
buys (1,769 MB = one vCPU), plus an assumed in-region latency per AWS request (`ASSUMED_LATENCY_MS`); the
same with the invocation's wall time on moto is reported too.
Cold starts (INIT) and free tiers are left out: prices are list prices beyond the free tier.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import eventual_nb as ev
from benchmarks.results import Comparison, Result
from exporter.handlers import HANDLERS  # the handler names the manifest gives the template

SERVICE = ev.Service("eventual-nb-benchmarks-aws")

ROOT = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
STACK = "bench-aws"

BENCHMARKS = ["aws"]

aws_go = ev.signal("aws_go", str)


@ev.activity
async def aws_noop(i: int) -> int:
    """The no-op activity: returns its input so every result can be checked."""
    return i


@ev.workflow
async def aws_steps(steps: int) -> int:
    """`steps` sequential no-op activities; returns the sum of 0..steps-1."""
    total = 0
    for i in range(steps):
        total += await aws_noop(i)
    return total


@ev.activity(inline=True, timeout="5s")
async def aws_inline_noop(i: int) -> int:
    """The no-op activity, inline: the orchestrator runs it in its own invocation."""
    return i


@ev.workflow
async def aws_inline_steps(steps: int) -> int:
    """`steps` sequential inline no-op activities; returns the sum of 0..steps-1."""
    total = 0
    for i in range(steps):
        total += await aws_inline_noop(i)
    return total


@ev.workflow
async def aws_timer_signal(name: str) -> str:
    """An activity, a short timer (SQS delay), a long timer (Scheduler), a signal and a log line."""
    first = await aws_noop(1)
    await ev.sleep("30s")
    await ev.sleep("20m")
    word = await aws_go.expect()
    print(f"{name} got {word}")
    return f"{name}:{word}:{first}"


def expected_sum(n: int) -> int:
    return n * (n - 1) // 2


# ------------------------------------------------------------------------------------------ prices


@dataclass(frozen=True)
class Price:
    """One list price: `usd` per `per` units of `unit`, from the named AWS pricing page."""

    service: str
    usd: float
    per: float
    unit: str
    source: str

    def cost(self, units: float) -> float:
        return units * self.usd / self.per


#: us-east-1 list prices (read November 2026), beyond any free tier. Each `source` names the page and row.
PRICES: dict[str, Price] = {
    # Amazon DynamoDB pricing, "On-demand capacity": write request units (after the Nov 2024 price cut)
    "dynamodb_wru": Price("DynamoDB", 0.625, 1e6, "write request unit", "Amazon DynamoDB pricing: on-demand WRU"),
    # Amazon DynamoDB pricing, "On-demand capacity": read request units
    "dynamodb_rru": Price("DynamoDB", 0.125, 1e6, "read request unit", "Amazon DynamoDB pricing: on-demand RRU"),
    # Amazon SQS pricing, "Standard queues", first 100 billion requests a month (one request per 64 KB chunk)
    "sqs_standard": Price("SQS", 0.40, 1e6, "request (64 KB chunk)", "Amazon SQS pricing: standard queue requests"),
    # Amazon SQS pricing, "FIFO queues", first 100 billion requests a month
    "sqs_fifo": Price("SQS", 0.50, 1e6, "request (64 KB chunk)", "Amazon SQS pricing: FIFO queue requests"),
    # AWS Lambda pricing, "Requests"
    "lambda_requests": Price("Lambda", 0.20, 1e6, "invocation", "AWS Lambda pricing: requests"),
    # AWS Lambda pricing, "Duration", x86, first 6 billion GB-seconds a month
    "lambda_gb_seconds": Price("Lambda", 0.0000166667, 1, "GB-second", "AWS Lambda pricing: x86 duration"),
    # Amazon EventBridge pricing, "Event buses": custom events published (one event per 64 KB chunk)
    "eventbridge_events": Price("EventBridge", 1.00, 1e6, "custom event", "Amazon EventBridge pricing: custom events"),
    # Amazon EventBridge pricing, "Scheduler": invocations beyond 14 million a month (API calls are not billed)
    "scheduler_invocations": Price(
        "Scheduler", 1.00, 1e6, "invocation", "Amazon EventBridge pricing: Scheduler invocations"
    ),
    # Amazon CloudWatch pricing, "Logs": Standard log ingestion (Lambda's own logs start at the same rate)
    "logs_ingested_gb": Price("CloudWatch Logs", 0.50, 1, "GB ingested", "Amazon CloudWatch pricing: log ingestion"),
}
#: AWS Step Functions pricing, "Standard Workflows": $0.025 per 1,000 state transitions
STEP_FUNCTIONS_STANDARD_PER_MILLION = 25.0
#: AWS Step Functions pricing, "Express Workflows": $1.00 per million requests (executions), plus duration at
#: $0.00001667 per GB-second in 64 MB and 100 ms increments (at most 5 minutes an execution, at least once)
STEP_FUNCTIONS_EXPRESS_PER_MILLION_REQUESTS = 1.0
STEP_FUNCTIONS_EXPRESS_GB_SECOND = 0.00001667
#: the cost this runtime aims to stay under for a million activity steps (USD): queued and inline activities
TARGET_PER_MILLION = 5.0
TARGET_INLINE_PER_MILLION = 1.5

SQS_CHUNK_BYTES = 64 * 1024
EVENTBRIDGE_CHUNK_BYTES = 64 * 1024
#: CloudWatch Logs counts each event's message plus 26 bytes
LOG_EVENT_OVERHEAD_BYTES = 26
#: START, END and REPORT lines Lambda writes for every invocation (text format), about this many bytes
LAMBDA_PLATFORM_LOG_BYTES = 350
#: Lambda gives a function one vCPU at 1,769 MB and a proportional share below (AWS Lambda docs, memory)
LAMBDA_FULL_VCPU_MB = 1769
#: assumed in-region p50 latency of one request from Lambda (ms), by service or "service.Operation"
ASSUMED_LATENCY_MS: dict[str, float] = {
    "dynamodb": 5.0,
    "dynamodb.TransactWriteItems": 12.0,
    "sqs": 10.0,
    "logs": 15.0,
    "events": 15.0,
    "scheduler": 25.0,
}
#: the ESM's batch per function (exporter/template.py consumed_queues); its requests are modelled per batch
QUEUE_FUNCTIONS = {"orchestrator": "sqs_fifo", "activity": "sqs_standard", "timer": "sqs_standard"}


def assumed_latency_ms(service: str, operation: str) -> float:
    return ASSUMED_LATENCY_MS.get(f"{service}.{operation}", ASSUMED_LATENCY_MS.get(service, 10.0))


# ------------------------------------------------------------------------------------- item sizes


def _attribute_size(value: Mapping[str, Any]) -> int:
    from eventual_nb.runtime.aws.stores import attribute_size

    return attribute_size(dict(value))


def item_bytes(item: Mapping[str, Any] | None) -> int:
    if not item:
        return 0
    return sum(len(name.encode("utf-8")) + _attribute_size(value) for name, value in item.items())


def write_units(size_before: int, size_after: int) -> int:
    """WRU of one standard item write: 1 KB units of the larger of the item before and after (min 1)."""
    return max(1, math.ceil(max(size_before, size_after) / 1024))


def read_units(size: int, consistent: bool) -> float:
    """RRU of one read: 4 KB units (min 1), half for an eventually consistent read."""
    units = max(1, math.ceil(size / 4096))
    return float(units) if consistent else units / 2


def index_write_units(
    before: Mapping[str, Any] | None, after: Mapping[str, Any] | None, indexes: list[tuple[str, str]]
) -> int:
    """Standard WRU the table's global secondary indexes (projection ALL) consume for one item change."""
    units = 0
    for hash_key, range_key in indexes:
        was = before is not None and hash_key in before and range_key in before
        now = after is not None and hash_key in after and range_key in after
        if was and now:
            assert before is not None
            assert after is not None
            if (before[hash_key], before[range_key]) != (after[hash_key], after[range_key]):
                units += write_units(item_bytes(before), 0) + write_units(0, item_bytes(after))
            elif before != after:
                units += write_units(item_bytes(before), item_bytes(after))
        elif was:
            units += write_units(item_bytes(before), 0)
        elif now:
            units += write_units(0, item_bytes(after))
    return units


# ------------------------------------------------------------------------------------------ meter


@dataclass
class FunctionUse:
    """Invocations of one function and the durations they would be billed."""

    memory_mb: int
    invocations: int = 0
    records: int = 0
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    aws_seconds: float = 0.0
    aws_requests: int = 0
    measured_ms: int = 0
    modelled_ms: int = 0

    def gb_seconds(self, modelled: bool = True) -> float:
        return self.memory_mb / 1024 * (self.modelled_ms if modelled else self.measured_ms) / 1000


class Meter:
    """Counts requests per (actor, service, operation) and the billing units they consume.

    `units[line][what]` is how many units of price line `line` the requests `what` consumed (what is
    "service.Operation", with a suffix for modelled or index parts), so a cost can be traced back to
    the requests that dominate it. The harness's own calls are counted under actor "harness" and
    priced at nothing: the ESM and Scheduler models below stand in for them."""

    def __init__(self, inspector: Any, indexes: dict[str, list[tuple[str, str]]]) -> None:
        self.inspector = inspector
        self.indexes = indexes
        self.active = True
        self.requests: Counter[tuple[str, str, str]] = Counter()
        self.units: dict[str, Counter[str]] = defaultdict(Counter)
        self.functions: dict[str, FunctionUse] = {}
        self.problems: list[str] = []
        self.scheduler_invocations = 0
        self._lock = threading.Lock()
        #: time and requests of the billable actors, read by the invocation wrapper
        self.aws_seconds = 0.0
        self.aws_requests = 0
        self.assumed_ms = 0.0

    def clear(self) -> None:
        """Forget what was counted (the hooks stay on the clients): the next workload starts from zero."""
        self.requests.clear()
        self.units.clear()
        self.functions.clear()
        self.problems.clear()
        self.scheduler_invocations = 0

    # ------------------------------------------------------------------------------ hooks

    def attach(self, events: Any, actor: str) -> None:
        """Count every call made by clients of `events` (a client's `meta.events` or a session's `events`)."""

        def before(params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
            self._before(actor, params, model, context)

        def after(parsed: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
            self._after(actor, parsed, model, context)

        events.register("before-parameter-build", before, unique_id=f"bench-meter-before-{actor}-{id(self)}")
        events.register("after-call", after, unique_id=f"bench-meter-after-{actor}-{id(self)}")

    def _before(self, actor: str, params: dict[str, Any], model: Any, context: dict[str, Any]) -> None:
        if not self.active:
            return
        context["bench_started"] = time.perf_counter()
        context["bench_params"] = dict(params)
        service = model.service_model.service_name
        if service == "dynamodb" and actor != "harness":
            context["bench_before"] = [self._read(table, key) for table, key, _ in self._written(model.name, params)]

    def _after(self, actor: str, parsed: dict[str, Any], model: Any, context: dict[str, Any]) -> None:
        started = context.get("bench_started")
        if started is None:
            return
        elapsed = time.perf_counter() - started
        service, operation = model.service_model.service_name, model.name
        params = context.get("bench_params", {})
        failed = "Error" in parsed
        with self._lock:
            self.requests[(actor, service, operation)] += 1
            if actor == "harness":
                return
            self.aws_seconds += elapsed
            self.aws_requests += 1
            self.assumed_ms += assumed_latency_ms(service, operation)
        try:
            self._price(service, operation, params, parsed, failed, context.get("bench_before", []))
        except Exception as exc:  # noqa: BLE001 - never break the call being measured; reported instead
            self.problems.append(f"could not price {service}.{operation}: {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------------------ pricing

    def _add(self, line: str, what: str, units: float) -> None:
        with self._lock:
            self.units[line][what] += units

    def _price(
        self,
        service: str,
        operation: str,
        params: dict[str, Any],
        parsed: dict[str, Any],
        failed: bool,
        before: list[dict[str, Any] | None],
    ) -> None:
        what = f"{service}.{operation}"
        if service == "dynamodb":
            self._price_dynamodb(operation, params, parsed, failed, before)
        elif service == "sqs":
            line = "sqs_fifo" if str(params.get("QueueUrl", "")).endswith(".fifo") else "sqs_standard"
            self._add(line, what, max(1, math.ceil(_sqs_payload(operation, params, parsed) / SQS_CHUNK_BYTES)))
        elif service == "events":
            if operation == "PutEvents":
                for entry in params.get("Entries", []):
                    size = sum(
                        len(str(entry.get(key, "")).encode("utf-8")) for key in ("Source", "DetailType", "Detail")
                    )
                    self._add("eventbridge_events", what, max(1, math.ceil(size / EVENTBRIDGE_CHUNK_BYTES)))
            else:
                self.problems.append(f"unpriced EventBridge call {what}")
        elif service == "logs":
            if operation == "PutLogEvents":
                size = sum(
                    len(str(e["message"]).encode("utf-8")) + LOG_EVENT_OVERHEAD_BYTES for e in params["logEvents"]
                )
                self._add("logs_ingested_gb", what, size / 1e9)
            elif operation not in ("CreateLogStream", "GetLogEvents"):
                self.problems.append(f"unpriced CloudWatch Logs call {what}")
        elif service == "scheduler":
            pass  # Scheduler bills invocations (modelled from the fired schedules), not its API calls
        else:
            self.problems.append(f"unpriced call {what}")

    def _price_dynamodb(
        self,
        operation: str,
        params: dict[str, Any],
        parsed: dict[str, Any],
        failed: bool,
        before: list[dict[str, Any] | None],
    ) -> None:
        what = f"dynamodb.{operation}"
        if operation == "GetItem":
            item = parsed.get("Item")
            if item is not None and "ProjectionExpression" in params:
                item = self._read(params["TableName"], params["Key"])
            self._add("dynamodb_rru", what, read_units(item_bytes(item), bool(params.get("ConsistentRead"))))
            return
        if operation == "Query":
            self._add("items_read", what, len(parsed.get("Items", [])))  # not a price line: reads per step
            size = sum(item_bytes(item) for item in parsed.get("Items", []))
            consistent = bool(params.get("ConsistentRead")) and "IndexName" not in params
            self._add("dynamodb_rru", what, read_units(size, consistent))
            return
        written = self._written(operation, params)
        if not written and operation not in ("PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems"):
            self.problems.append(f"unpriced DynamoDB call {what}")
            return
        factor = 2 if operation == "TransactWriteItems" else 1
        for (table, key, kind), old in zip(written, before, strict=True):
            if failed or kind == "ConditionCheck":
                new = old
            elif kind == "Put":
                new = next(body["Item"] for body in _write_bodies(operation, params) if _key_of(body) == key)
            elif kind == "Delete":
                new = None
            else:
                new = self._read(table, key)
            self._add("dynamodb_wru", what, factor * write_units(item_bytes(old), item_bytes(new)))
            indexes = self.indexes.get(table, [])
            if indexes and not failed:
                units = index_write_units(old, new, indexes)
                if units:
                    self._add("dynamodb_wru", f"{what} (listing indexes)", units)

    def _written(self, operation: str, params: dict[str, Any]) -> list[tuple[str, dict[str, Any], str]]:
        """(table, key, kind) of every item a write request touches."""
        if operation == "TransactWriteItems":
            found = []
            for item in params.get("TransactItems", []):
                ((kind, body),) = item.items()
                found.append((body["TableName"], _key_of(body), kind))
            return found
        kinds = {"PutItem": "Put", "UpdateItem": "Update", "DeleteItem": "Delete"}
        if operation in kinds:
            return [(params["TableName"], _key_of(params), kinds[operation])]
        return []

    def _read(self, table: str, key: dict[str, Any]) -> dict[str, Any] | None:
        item: dict[str, Any] | None = self.inspector.get_item(TableName=table, Key=key, ConsistentRead=True).get("Item")
        return item

    # ------------------------------------------------------------------------------ modelled parts

    def wrap(self, function: str, handler: Callable[[dict[str, Any], Any], Any], memory_mb: int) -> Any:
        """The handler, measured: its invocation is billed as Lambda, and its ESM requests as SQS."""
        use = self.functions.setdefault(function, FunctionUse(memory_mb))

        def invoked(event: dict[str, Any], context: Any) -> Any:
            seconds, requests, assumed = self.aws_seconds, self.aws_requests, self.assumed_ms
            start, cpu = time.perf_counter(), time.thread_time()
            try:
                return handler(event, context)
            finally:
                wall, cpu = time.perf_counter() - start, time.thread_time() - cpu
                if self.active:
                    self._invoked(function, use, event, wall, cpu, seconds, requests, assumed)

        return invoked

    def _invoked(
        self,
        function: str,
        use: FunctionUse,
        event: dict[str, Any],
        wall: float,
        cpu: float,
        seconds: float,
        requests: int,
        assumed: float,
    ) -> None:
        aws_seconds = self.aws_seconds - seconds
        # the handler thread's CPU time: the engine's and botocore's own work, not moto's (another thread)
        # and not time spent waiting for a core on a busy machine
        compute = cpu * max(1.0, LAMBDA_FULL_VCPU_MB / use.memory_mb)
        use.invocations += 1
        records = event.get("Records") or []
        use.records += len(records)
        use.wall_seconds += wall
        use.cpu_seconds += cpu
        use.aws_seconds += aws_seconds
        use.aws_requests += self.aws_requests - requests
        use.measured_ms += max(1, math.ceil(wall * 1000))
        use.modelled_ms += max(1, math.ceil(compute * 1000 + (self.assumed_ms - assumed)))
        self._add("lambda_requests", f"lambda.Invoke {function}", 1)
        self._add("logs_ingested_gb", f"lambda platform log lines ({function})", LAMBDA_PLATFORM_LOG_BYTES / 1e9)
        line = QUEUE_FUNCTIONS.get(function)
        if line is not None:
            size = sum(len(str(record.get("body", "")).encode("utf-8")) for record in records)
            chunks = max(1, math.ceil(size / SQS_CHUNK_BYTES))
            self._add(line, "sqs.ReceiveMessage (Lambda ESM, modelled)", chunks)
            self._add(line, "sqs.DeleteMessageBatch (Lambda ESM, modelled)", 1)
        if function == "schedule":
            self.scheduler_invocations += 1
            self._add("scheduler_invocations", "scheduler invocation (modelled)", 1)

    def finish_durations(self) -> None:
        """Turn the measured and modelled milliseconds into GB-second units (two lines, one is priced)."""
        for function, use in self.functions.items():
            self.units["lambda_gb_seconds"][f"lambda duration ({function})"] += use.gb_seconds(modelled=True)
            self.units["lambda_gb_seconds_measured"][f"lambda duration ({function})"] += use.gb_seconds(modelled=False)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Checks of the benchmark itself (reading results) are not part of what a step costs."""
        self.active = False
        try:
            yield
        finally:
            self.active = True

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": {
                actor: {
                    f"{service}.{operation}": count
                    for (who, service, operation), count in sorted(self.requests.items())
                    if who == actor
                }
                for actor in sorted({actor for actor, _, _ in self.requests})
            },
            "units": {line: dict(sorted(counter.items())) for line, counter in sorted(self.units.items())},
            "functions": {name: vars(use).copy() for name, use in sorted(self.functions.items())},
            "scheduler_invocations": self.scheduler_invocations,
            "problems": list(self.problems),
        }


def _key_of(body: Mapping[str, Any]) -> dict[str, Any]:
    if "Key" in body:
        return dict(body["Key"])
    item = body["Item"]
    return {name: item[name] for name in ("pk", "sk") if name in item}


def _write_bodies(operation: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    if operation == "TransactWriteItems":
        return [body for item in params.get("TransactItems", []) for kind, body in item.items() if kind == "Put"]
    return [params] if operation == "PutItem" else []


def _sqs_payload(operation: str, params: dict[str, Any], parsed: dict[str, Any]) -> int:
    """Bytes SQS bills a request by (bodies and attributes of the messages it carries)."""

    def attributes(values: Mapping[str, Any]) -> int:
        return sum(
            len(name) + len(str(value.get("DataType", ""))) + len(str(value.get("StringValue", "")))
            for name, value in values.items()
        )

    if operation == "SendMessage":
        return len(str(params.get("MessageBody", "")).encode("utf-8")) + attributes(params.get("MessageAttributes", {}))
    if operation == "SendMessageBatch":
        return sum(
            len(str(entry.get("MessageBody", "")).encode("utf-8")) + attributes(entry.get("MessageAttributes", {}))
            for entry in params.get("Entries", [])
        )
    if operation == "ReceiveMessage":
        return sum(
            len(str(message.get("Body", "")).encode("utf-8")) + attributes(message.get("MessageAttributes", {}))
            for message in parsed.get("Messages", [])
        )
    return 0


# ------------------------------------------------------------------------------------------- costs


def costs(units: Mapping[str, Mapping[str, float]], *, measured_duration: bool = False) -> dict[str, float]:
    """USD per price line (the Lambda duration line from the modelled or the measured milliseconds)."""
    found: dict[str, float] = {}
    for line, price in PRICES.items():
        source = "lambda_gb_seconds_measured" if measured_duration and line == "lambda_gb_seconds" else line
        found[line] = price.cost(sum(units.get(source, {}).values()))
    return found


def cost_by_request(units: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """USD per request kind ("dynamodb.TransactWriteItems", "lambda.Invoke activity", ...), largest first."""
    found: Counter[str] = Counter()
    for line, price in PRICES.items():
        for what, amount in units.get(line, {}).items():
            found[what] += price.cost(amount)
    return dict(found.most_common())


def by_service(line_costs: Mapping[str, float]) -> dict[str, float]:
    found: Counter[str] = Counter()
    for line, usd in line_costs.items():
        found[PRICES[line].service] += usd
    return dict(found)


# ------------------------------------------------------------------------------------------ worker


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise RuntimeError(f"benchmark sanity check failed: {message}")


def _require_loopback(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    _check(
        parts.scheme == "http" and parts.hostname == "127.0.0.1" and bool(parts.port),
        f"refusing endpoint {endpoint!r}: the AWS benchmark only talks to moto on http://127.0.0.1:<port>",
    )
    return endpoint


@dataclass
class Deployed:
    endpoint: str
    environment: dict[str, str]
    memory_mb: dict[str, int]
    indexes: dict[str, list[tuple[str, str]]]
    template: dict[str, Any] = field(repr=False, default_factory=dict)


def deploy(endpoint: str) -> Deployed:
    """The exported template deployed into moto with Emulator=true, plus the Scheduler group it skips
    (the same steps as tests/aws_support.py `deploy_stack`)."""
    import io
    import zipfile

    import boto3

    from eventual_nb.runtime.aws.clients import (
        EXECUTIONS_TABLE_VARIABLE,
        HISTORY_TABLE_VARIABLE,
        SCHEDULE_GROUP_VARIABLE,
    )
    from exporter.template import build_template

    template = build_template({"name": SERVICE.name, "handlers": dict(HANDLERS), "service": {"subscriptions": []}})
    kwargs: dict[str, Any] = {"endpoint_url": endpoint, "region_name": REGION}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("handlers.py", "def api(event, context):\n    return {}\n")
    s3 = boto3.client("s3", **kwargs)
    bucket = f"{STACK}-code"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="lambda/bench.zip", Body=buffer.getvalue())
    cloudformation = boto3.client("cloudformation", **kwargs)
    cloudformation.create_stack(
        StackName=STACK,
        TemplateBody=json.dumps(template),
        Parameters=[
            {"ParameterKey": "Emulator", "ParameterValue": "true"},
            {"ParameterKey": "CodeBucket", "ParameterValue": bucket},
            {"ParameterKey": "CodeKey", "ParameterValue": "lambda/bench.zip"},
        ],
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"],
    )
    cloudformation.get_waiter("stack_create_complete").wait(
        StackName=STACK, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
    )
    resources = {
        item["LogicalResourceId"]: item["PhysicalResourceId"]
        for item in cloudformation.describe_stack_resources(StackName=STACK)["StackResources"]
        if "LogicalResourceId" in item and "PhysicalResourceId" in item
    }
    functions = boto3.client("lambda", **kwargs)
    environment: dict[str, str] = {}
    for logical_id, physical_id in resources.items():
        if logical_id.endswith("Function"):
            configuration = functions.get_function_configuration(FunctionName=physical_id)
            environment.update(configuration.get("Environment", {}).get("Variables", {}))
    boto3.client("scheduler", **kwargs).create_schedule_group(Name=environment[SCHEDULE_GROUP_VARIABLE])
    by_handler = {handler: key for key, handler in HANDLERS.items()}
    memory = {
        by_handler[resource["Properties"]["Handler"]]: int(resource["Properties"]["MemorySize"])
        for resource in template["Resources"].values()
        if resource["Type"] == "AWS::Lambda::Function"
    }
    dynamodb = boto3.client("dynamodb", **kwargs)
    indexes: dict[str, list[tuple[str, str]]] = {}
    for variable in (EXECUTIONS_TABLE_VARIABLE, HISTORY_TABLE_VARIABLE):
        table = dynamodb.describe_table(TableName=environment[variable])["Table"]
        indexes[table["TableName"]] = [
            (
                next(key["AttributeName"] for key in index["KeySchema"] if key["KeyType"] == "HASH"),
                next(key["AttributeName"] for key in index["KeySchema"] if key["KeyType"] == "RANGE"),
            )
            for index in table.get("GlobalSecondaryIndexes", [])
        ]
    return Deployed(endpoint, environment, memory, indexes, template)


class Bench:
    """One deployed stack, a meter on every client, and the runtime that starts executions."""

    def __init__(self, deployed: Deployed) -> None:
        import boto3

        from eventual_nb.aws import AwsRuntime
        from eventual_nb.runtime.aws.harness import ManualClock

        self.deployed = deployed
        self.kwargs: dict[str, Any] = {"endpoint_url": deployed.endpoint, "region_name": REGION}
        self.meter = Meter(boto3.client("dynamodb", **self.kwargs), deployed.indexes)
        self.clock = ManualClock(datetime.now(UTC))
        self.runtime = AwsRuntime(
            region=REGION,
            endpoint_url=deployed.endpoint,
            service=SERVICE,
            environment=deployed.environment,
            clock=self.clock,
        )
        self.meter.attach(self.runtime.session.events, "client")

    def clients(self, actor: str) -> Any:
        """`AwsClients` of the stack whose every boto3 client is metered as `actor`."""
        import boto3

        from eventual_nb.runtime.aws.clients import AwsClients, AwsSettings

        def factory(service: str) -> Any:
            client = boto3.client(service, **self.kwargs)  # type: ignore[call-overload]
            self.meter.attach(client.meta.events, actor)
            return client

        settings = AwsSettings.from_environment(self.deployed.environment)
        # a timer hop of 1 s: moto delays in real seconds while the harness's clock is manual
        return AwsClients(settings, factory, clock=self.clock, timer_hop_seconds=1)

    def reset(self) -> None:
        self.meter.clear()

    def purge(self, ids: list[str]) -> None:
        """Delete finished executions' items through the unmetered client (see `WAVE`)."""
        from eventual_nb.runtime.aws.clients import EXECUTIONS_TABLE_VARIABLE, HISTORY_TABLE_VARIABLE
        from eventual_nb.runtime.aws.stores import execution_pk, to_attributes

        client = self.meter.inspector
        tables = [self.deployed.environment[name] for name in (EXECUTIONS_TABLE_VARIABLE, HISTORY_TABLE_VARIABLE)]
        for table in tables:
            for execution_id in ids:
                pages = client.get_paginator("query").paginate(
                    TableName=table,
                    KeyConditionExpression="pk = :pk",
                    ExpressionAttributeValues=to_attributes({":pk": execution_pk(execution_id)}),
                    ProjectionExpression="pk, sk",
                )
                for page in pages:
                    for item in page.get("Items", []):
                        client.delete_item(TableName=table, Key={"pk": item["pk"], "sk": item["sk"]})

    def handlers(self, cold: bool) -> tuple[dict[str, Any], Callable[[], dict[str, int]]]:
        """Metered handlers of the stack's functions and a reader of the orchestrator's summed stats."""
        from eventual_nb.runtime.aws.functions import StackFunctions
        from eventual_nb.runtime.aws.orchestrator import Orchestrator, OrchestratorStats

        functions = StackFunctions([SERVICE], clients=self.clients("functions"))
        handlers = functions.handlers()
        retired: list[OrchestratorStats] = []
        if cold:

            def orchestrate(event: dict[str, Any], context: Any) -> Any:
                fresh = Orchestrator(functions.stores, functions.clients, functions.services)
                try:
                    return fresh.handle_batch(event, context)
                finally:
                    retired.append(fresh.stats)

            handlers["orchestrator"] = orchestrate
        else:
            retired.append(functions.orchestrator.stats)
        handlers.pop("subscription")  # the benchmark service has no subscriptions
        metered = {
            name: self.meter.wrap(name, handler, self.deployed.memory_mb[name]) for name, handler in handlers.items()
        }

        def stats() -> dict[str, int]:
            total: Counter[str] = Counter()
            for item in retired:
                total.update(vars(item))
            return dict(total)

        return metered, stats

    def harness(self, handlers: dict[str, Any]) -> Any:
        from eventual_nb.runtime.aws.harness import Harness

        return Harness(self.clients("harness"), handlers, self.clock)


def _run(harness: Any, done: Callable[[], bool], wait_seconds: float = 0.0) -> None:
    """Run until idle and `done()` (the harness's idle check can miss a delayed message just come due)."""
    for _ in range(10):
        report = harness.run_until_idle(max_rounds=10_000, wait_seconds=wait_seconds)
        _check(not report.errors, f"a function failed: {report.errors[:3]}")
        if done():
            return
    raise RuntimeError("benchmark sanity check failed: the stack did not get there")


def _history_types(bench: Bench, execution_id: str) -> list[str]:
    with bench.meter.paused():
        history = asyncio.run(bench.runtime.get_execution_history(execution_id))
    return [event.type for event in history]


#: executions run at once: moto deep-copies every table a TransactWriteItems touches (once per item), so
#: each commit costs time and garbage in proportion to the table; finished waves are deleted (unmetered)
#: to keep the tables small. Batches of 10 stay full with 20 executions in flight.
WAVE = 20


def throughput(bench: Bench, workflows: int, steps: int, cold: bool, workflow: Any = aws_steps) -> dict[str, Any]:
    bench.reset()
    handlers, stats = bench.handlers(cold)
    harness = bench.harness(handlers)
    runtime = bench.runtime
    started = time.perf_counter()
    for first in range(0, workflows, WAVE):
        size = min(WAVE, workflows - first)

        async def start_all(count: int) -> list[str]:
            handles = await asyncio.gather(*(runtime.start_execution(workflow, steps) for _ in range(count)))
            return [handle.id for handle in handles]

        ids = asyncio.run(start_all(size))
        _check(len(set(ids)) == size, "executions share an id")

        def finished(ids: list[str] = ids) -> bool:
            with bench.meter.paused():
                records = asyncio.run(_records(runtime, ids))
            return all(record.status != ev.ExecutionStatus.IN_PROGRESS for record in records)

        _run(harness, finished)
        with bench.meter.paused():
            records = asyncio.run(_records(runtime, ids))
        results = {record.result for record in records}
        _check(results == {expected_sum(steps)}, f"wrong results: {results}")
        types = _history_types(bench, ids[-1])
        _check(
            types == ["WorkflowStarted", *(["ActivityScheduled", "ActivitySucceeded"] * steps), "WorkflowSucceeded"],
            f"unexpected history {types}",
        )
        bench.purge(ids)
    elapsed = time.perf_counter() - started
    bench.meter.finish_durations()
    found = bench.meter.snapshot()
    found.update(
        {"executions": workflows, "steps": workflows * steps, "elapsed": elapsed, "orchestrator": stats(), "cold": cold}
    )
    _check(not found["problems"], f"unpriced or unreadable requests: {found['problems'][:5]}")
    return found


async def _records(runtime: Any, ids: list[str]) -> list[Any]:
    return list(await asyncio.gather(*(runtime.get_execution(execution_id) for execution_id in ids)))


def timer_signal(bench: Bench) -> dict[str, Any]:
    bench.reset()
    handlers, stats = bench.handlers(cold=False)
    harness = bench.harness(handlers)
    runtime = bench.runtime
    execution_id = asyncio.run(runtime.start_execution(aws_timer_signal, "ada")).id

    def last_is(kind: str, count: int = 1) -> Callable[[], bool]:
        def check() -> bool:
            types = _history_types(bench, execution_id)
            return types[-1] == kind and types.count(kind) >= count

        return check

    _run(harness, last_is("TimerScheduled"))
    bench.clock.advance(31)  # the 30 s timer is due before its (1 s) hop is over: one hop, as on AWS
    _run(harness, last_is("TimerScheduled", 2), wait_seconds=10)
    bench.clock.advance(20 * 60 + 1)  # the 20 min timer went to the Scheduler: the harness fires it
    _run(harness, last_is("TimerCompleted", 2), wait_seconds=10)
    asyncio.run(runtime.send_signal(execution_id, aws_go, "go", id="go-1"))
    _run(harness, last_is("WorkflowSucceeded"))
    with bench.meter.paused():
        record = asyncio.run(runtime.get_execution(execution_id))
        logs = asyncio.run(runtime.get_execution_logs(execution_id))
    _check(record.result == "ada:go:1", f"wrong result {record.result!r}")
    _check(any("ada got go" in entry.message for entry in logs), "the log line was not written")
    bench.meter.finish_durations()
    found = bench.meter.snapshot()
    found.update({"executions": 1, "history": _history_types(bench, execution_id), "orchestrator": stats()})
    _check(found["scheduler_invocations"] == 1, f"{found['scheduler_invocations']} Scheduler invocations, not 1")
    _check(not found["problems"], f"unpriced or unreadable requests: {found['problems'][:5]}")
    return found


def worker(params: dict[str, Any]) -> dict[str, Any]:
    """Everything against one moto server started here (127.0.0.1, port chosen by the OS)."""
    import logging

    from moto.server import ThreadedMotoServer

    for name in [name for name in os.environ if name.startswith("AWS_ENDPOINT_URL")] + ["AWS_PROFILE"]:
        os.environ.pop(name, None)
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }
    )
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        deployed = deploy(_require_loopback(f"http://{host}:{port}"))
        bench = Bench(deployed)
        workflows, steps = params["workflows"], params["steps"]
        return {
            "memory_mb": deployed.memory_mb,
            "warm": throughput(bench, workflows, steps, cold=False),
            "inline": throughput(bench, params["inline_workflows"], steps, cold=False, workflow=aws_inline_steps),
            "cold": throughput(bench, params["cold_workflows"], steps, cold=True),
            "timer_signal": timer_signal(bench),
        }
    finally:
        server.stop()


def worker_main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "worker":
        print("usage: python -m benchmarks.aws worker PARAMS_JSON OUT_PATH", file=sys.stderr)
        return 2
    found = worker(json.loads(argv[1]))
    Path(argv[2]).write_text(json.dumps(found, indent=1), encoding="utf-8")
    return 0


# ------------------------------------------------------------------------------------------ report


@dataclass(frozen=True)
class Sizes:
    workflows: int
    cold_workflows: int
    inline_workflows: int
    steps: int
    timeout: float


FULL = Sizes(workflows=200, cold_workflows=40, inline_workflows=200, steps=10, timeout=3600)
QUICK = Sizes(workflows=5, cold_workflows=2, inline_workflows=5, steps=10, timeout=300)


def _per(value: float, count: int, scale: float = 1.0) -> float:
    return value / count * scale if count else 0.0


def billable_requests(found: Mapping[str, Any]) -> Counter[str]:
    """AWS requests a user pays for: the client's and the functions' calls and the modelled ESM requests."""
    counted: Counter[str] = Counter()
    for actor in ("client", "functions"):
        counted.update(found["requests"].get(actor, {}))
    for line in ("sqs_fifo", "sqs_standard"):
        for what, units in found["units"].get(line, {}).items():
            if "modelled" in what:
                counted[what.replace(" (Lambda ESM, modelled)", " (ESM)")] += int(units)
    return counted


def _cost_rows(comparison: Comparison, runs: dict[str, dict[str, Any]]) -> None:
    million = 1e6
    totals = {name: sum(costs(found["units"]).values()) for name, found in runs.items()}
    per_step = {name: _per(totals[name], found["steps"], million) for name, found in runs.items()}
    comparison.add(
        "usd_per_million_steps",
        "list-price cost per million activity steps",
        per_step,
        "USD",
        target=f"≤ ${TARGET_PER_MILLION:g} queued (warm), ≤ ${TARGET_INLINE_PER_MILLION:g} inline",
        met=per_step["warm"] <= TARGET_PER_MILLION and per_step["inline"] <= TARGET_INLINE_PER_MILLION,
    )
    services: list[str] = []
    for price in PRICES.values():
        if price.service not in services:
            services.append(price.service)
    for service in services:
        values = {
            name: _per(by_service(costs(found["units"])).get(service, 0.0), found["steps"], million)
            for name, found in runs.items()
        }
        comparison.add(f"usd_{service.lower().replace(' ', '_')}", f"  of which {service}", values, "USD")
    measured = {
        name: _per(sum(costs(found["units"], measured_duration=True).values()), found["steps"], million)
        for name, found in runs.items()
    }
    comparison.add("usd_per_million_steps_moto_durations", "  same, Lambda billed at moto's wall time", measured, "USD")
    activity_lambda = {
        name: _per(
            PRICES["lambda_requests"].cost(found["units"].get("lambda_requests", {}).get("lambda.Invoke activity", 0))
            + PRICES["lambda_gb_seconds"].cost(
                found["units"]["lambda_gb_seconds"].get("lambda duration (activity)", 0)
            ),
            found["steps"],
            million,
        )
        for name, found in runs.items()
    }
    comparison.add(
        "usd_without_activity_lambda",
        "  without the activity function's own Lambda bill",
        {name: per_step[name] - activity_lambda[name] for name in runs},
        "USD",
    )
    comparison.add(
        "step_functions_ratio",
        f"Step Functions Standard (${STEP_FUNCTIONS_STANDARD_PER_MILLION:g}/M transitions) ÷ this",
        {name: STEP_FUNCTIONS_STANDARD_PER_MILLION / value for name, value in per_step.items() if value > 0},
        "×",
    )
    steps_per_execution = {name: _per(found["steps"], found["executions"]) for name, found in runs.items()}
    comparison.add(
        "step_functions_express_requests",
        f"Step Functions Express: its requests alone (${STEP_FUNCTIONS_EXPRESS_PER_MILLION_REQUESTS:g}/M executions)",
        {
            name: _per(STEP_FUNCTIONS_EXPRESS_PER_MILLION_REQUESTS, int(count))
            for name, count in steps_per_execution.items()
        },
        "USD",
    )


def _request_rows(comparison: Comparison, runs: dict[str, dict[str, Any]]) -> None:
    billable = {name: billable_requests(found) for name, found in runs.items()}
    comparison.add(
        "requests_per_step",
        "billable AWS requests per step",
        {name: _per(sum(counted.values()), runs[name]["steps"]) for name, counted in billable.items()},
    )
    kinds = sorted({kind for counted in billable.values() for kind in counted}, key=lambda k: -billable["warm"][k])
    for kind in kinds:
        values = {name: _per(counted[kind], runs[name]["steps"]) for name, counted in billable.items()}
        comparison.add(f"requests_{kind}", f"  {kind}", values)
    comparison.add(
        "wru_per_step",
        "DynamoDB write request units per step",
        {
            name: _per(sum(found["units"].get("dynamodb_wru", {}).values()), found["steps"])
            for name, found in runs.items()
        },
    )
    comparison.add(
        "rru_per_step",
        "DynamoDB read request units per step",
        {
            name: _per(sum(found["units"].get("dynamodb_rru", {}).values()), found["steps"])
            for name, found in runs.items()
        },
    )
    for function in ("orchestrator", "activity"):
        comparison.add(
            f"{function}_invocations_per_step",
            f"{function} invocations per step",
            {name: _per(found["functions"][function]["invocations"], found["steps"]) for name, found in runs.items()},
        )
        comparison.add(
            f"{function}_modelled_ms",
            f"  modelled billed ms per invocation ({runs['warm']['functions'][function]['memory_mb']} MB)",
            {
                name: _per(found["functions"][function]["modelled_ms"], found["functions"][function]["invocations"])
                for name, found in runs.items()
            },
            "ms",
        )
        comparison.add(
            f"{function}_measured_ms",
            "  measured wall ms per invocation on moto",
            {
                name: _per(found["functions"][function]["measured_ms"], found["functions"][function]["invocations"])
                for name, found in runs.items()
            },
            "ms",
        )


def _history_rows(comparison: Comparison, runs: dict[str, dict[str, Any]]) -> None:
    labels = {
        "turns": "orchestrator turns per step",
        "history_queries": "history reads (queries) per step",
        "replays": "replays from scratch per step",
        "warm_hits": "warm cache hits per step",
    }
    for key, label in labels.items():
        comparison.add(
            key,
            label,
            {name: _per(found["orchestrator"].get(key, 0), found["steps"]) for name, found in runs.items()},
        )
    comparison.add(
        "items_read_per_step",
        "items returned by queries per step (events + head)",
        {
            name: _per(sum(found["units"].get("items_read", {}).values()), found["steps"])
            for name, found in runs.items()
        },
    )


def report_cost(sizes: Sizes, found: dict[str, Any]) -> Comparison:
    runs = {"warm": found["warm"], "cold": found["cold"], "inline": found["inline"]}
    comparison = Comparison(
        key="aws",
        title=(
            f"{sizes.workflows} (warm) / {sizes.cold_workflows} (cold) / {sizes.inline_workflows} (inline) workflows "
            f"× {sizes.steps} no-op activities"
        ),
        systems={"warm": "warm orchestrator", "cold": "cold orchestrator", "inline": "inline activities (warm)"},
        params={
            "workflows": sizes.workflows,
            "cold_workflows": sizes.cold_workflows,
            "inline_workflows": sizes.inline_workflows,
            "steps": sizes.steps,
            "memory_mb": found["memory_mb"],
        },
    )
    _cost_rows(comparison, runs)
    _history_rows(comparison, runs)
    _request_rows(comparison, runs)
    warm = runs["warm"]
    top = list(cost_by_request(warm["units"]).items())[:5]
    comparison.info["top_costs_warm"] = "; ".join(
        f"{what}: ${_per(usd, warm['steps'], 1e6):.3f}/M steps" for what, usd in top
    )
    comparison.info["prices"] = "; ".join(
        f"{line}: ${price.usd:g} per {price.per:,.0f} {price.unit} ({price.source})" for line, price in PRICES.items()
    )
    comparison.info["memory_mb"] = ", ".join(f"{name} {mb} MB" for name, mb in sorted(found["memory_mb"].items()))
    comparison.info["assumed_latency_ms"] = ", ".join(f"{key} {ms:g}" for key, ms in ASSUMED_LATENCY_MS.items())
    comparison.info["requests_by_actor_warm"] = json.dumps(warm["requests"], sort_keys=True)
    comparison.footer.append(
        "Costs: us-east-1 list prices beyond the free tiers; DynamoDB on-demand units from item sizes "
        "(transactions 2×, listing indexes 1×); Lambda requests + GB-s with durations modelled from the handler "
        "thread's CPU time (scaled to the memory's vCPU share) plus an assumed in-region latency per request; SQS "
        "requests of Lambda's pollers modelled as one receive + one batch delete per invocation"
    )
    comparison.footer.append(
        f"Step Functions Standard: ${STEP_FUNCTIONS_STANDARD_PER_MILLION:g} per million state transitions, at "
        "least one per activity step, before the Lambda its Task state invokes ('without the activity function's "
        "own Lambda bill' is the like-for-like row); Express: "
        f"${STEP_FUNCTIONS_EXPRESS_PER_MILLION_REQUESTS:g} per million executions plus "
        f"${STEP_FUNCTIONS_EXPRESS_GB_SECOND} per GB-second of its run (64 MB, 100 ms increments), at most 5 minutes "
        "and at least once per execution (no durable waits or signals), before its Task states' Lambdas"
    )
    comparison.notes.append(
        "warm: one StackFunctions for the run (its executor cache hits); cold: a new Orchestrator for every "
        "invocation, as if each ran in a new container (every turn reads the whole history and replays); inline: "
        "the same workflow with an inline activity (`@ev.activity(inline=True)`), warm"
    )
    comparison.notes.append(f"costliest requests (warm): {comparison.info['top_costs_warm']}")
    return comparison


def report_timer_signal(found: dict[str, Any]) -> Result:
    run = found["timer_signal"]
    result = Result(
        key="aws_timer_signal",
        title="one execution: activity, 30 s timer, 20 min timer, signal, log line",
        params={"executions": run["executions"]},
    )
    # the units are one execution's; the table shows what a million of them would cost
    line_costs = costs(run["units"])
    result.add(
        "usd_per_million_executions", "list-price cost per million executions", sum(line_costs.values()) * 1e6, "USD"
    )
    for service, usd in by_service(line_costs).items():
        if usd:
            result.add(f"usd_{service.lower().replace(' ', '_')}", f"  of which {service}", usd * 1e6, "USD")
    billable = billable_requests(run)
    result.add("requests", "billable AWS requests", sum(billable.values()))
    result.add("scheduler_invocations", "Scheduler invocations", run["scheduler_invocations"])
    result.add(
        "lambda_invocations",
        "Lambda invocations",
        sum(use["invocations"] for use in run["functions"].values()),
    )
    result.add("history_events", "history events", len(run["history"]))
    result.add("orchestrator_turns", "orchestrator turns", run["orchestrator"].get("turns", 0))
    result.add("replays", "replays from scratch (warm)", run["orchestrator"].get("replays", 0))
    result.info["requests"] = ", ".join(f"{kind} {count}" for kind, count in sorted(billable.items()))
    result.info["history"] = ", ".join(run["history"])
    return result


def run(quick: bool, only: list[str] | None = None, progress: Callable[[str], None] | None = None) -> list[Any]:
    """Run the AWS benchmark in its own process (moto, dummy credentials) and report what it counted."""
    if only is not None and "aws" not in only:
        return []
    sizes = QUICK if quick else FULL
    if progress is not None:
        progress("aws")
    params = {
        "workflows": sizes.workflows,
        "cold_workflows": sizes.cold_workflows,
        "inline_workflows": sizes.inline_workflows,
        "steps": sizes.steps,
    }
    env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    env.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION})
    with tempfile.TemporaryDirectory(prefix="eventual-bench-aws-") as directory:
        out = Path(directory) / "aws.json"
        completed = subprocess.run(
            [sys.executable, "-m", "benchmarks.aws", "worker", json.dumps(params), str(out)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=sizes.timeout,
        )
        if completed.returncode != 0:
            raise RuntimeError(
                f"the AWS benchmark worker failed ({completed.returncode}):\n{completed.stdout}\n{completed.stderr}"
            )
        found = json.loads(out.read_text(encoding="utf-8"))
    return [report_cost(sizes, found), report_timer_signal(found)]


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
