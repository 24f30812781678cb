"""Entity benchmarks: operations per second on the LocalRuntime, requests and cost per operation on AWS.

* `entities_local` — a LocalRuntime on a fresh SQLite file (durability "full": every commit fsynced), in
  this process: `put`, `get` and a two-write `ev.transact` (the tutorial's debit: a create-only operation
  marker and a balance at the version read), each by one caller in a loop (every write waits for its own
  commit) and by 32 concurrent tasks (the runtime's group commit folds their writes into shared commits).
  Checks: every entry ends at the version its writes imply; concurrent writes took fewer commits than
  writes.
* `entities_aws` — the service's entities table as the exported template declares it, created in moto's
  server on 127.0.0.1 (in a process of its own, dummy credentials), used through `ev.aws.AwsRuntime`'s
  entity store. Every request is counted and priced by `benchmarks.aws.Meter` (DynamoDB on-demand units
  from item sizes, transactions 2×, us-east-1 list prices): requests, WRU and RRU per operation and the
  cost of a million operations. A Lambda function's own bill is not included: entity calls are made by
  code already running in one (an activity, a route, a subscription).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

import eventual_nb as ev
from benchmarks.results import Result

SERVICE = ev.Service("eventual-nb-benchmarks-entities")
ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ["entities_local", "entities_aws"]
#: operations per measurement (each kind), full and --quick
OPERATIONS, QUICK_OPERATIONS = 2000, 200
AWS_OPERATIONS, QUICK_AWS_OPERATIONS = 100, 10
#: concurrent callers of the concurrent measurements
TASKS = 32


class Account(BaseModel):
    id: str
    balance: int


class AppliedOperation(BaseModel):
    key: str
    account: str
    delta: int


class Line(BaseModel):
    account: str
    at: str
    text: str


accounts = ev.entity("bench_accounts", Account, key="id", service=SERVICE)
operations = ev.entity("bench_operations", AppliedOperation, key="key", service=SERVICE)
lines = ev.entity("bench_lines", Line, key=("account", "at"), service=SERVICE)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise RuntimeError(f"benchmark sanity check failed: {message}")


async def debit(account_id: str, key: str, amount: int = 1) -> int:
    """The tutorial's `apply`: read the balance and the marker, then one transaction (retried on a conflict)."""
    while True:
        entry = await accounts.get_entry(account_id)
        _check(entry is not None, f"no account {account_id}")
        assert entry is not None
        if await operations.get(key) is not None:
            return entry.value.balance
        try:
            await ev.transact(
                operations.put_op(AppliedOperation(key=key, account=account_id, delta=-amount), expected_version=0),
                accounts.put_op(
                    Account(id=account_id, balance=entry.value.balance - amount), expected_version=entry.version
                ),
            )
        except ev.TransactionConflict:
            continue
        return entry.value.balance - amount


# ------------------------------------------------------------------------------------------ LocalRuntime


async def _timed(work: Callable[[int], Awaitable[Any]], count: int, tasks: int = 1) -> float:
    """Operations per second of `work(i)` for i in range(count), by `tasks` concurrent callers."""

    async def caller(first: int) -> None:
        for index in range(first, count, tasks):
            await work(index)

    started = time.perf_counter()
    await asyncio.gather(*(caller(first) for first in range(tasks)))
    return count / (time.perf_counter() - started)


async def _local(count: int) -> Result:
    result = Result("entities_local", "entities on a LocalRuntime (SQLite, durability full)")
    result.params = {"operations": count, "concurrent_tasks": TASKS}
    with tempfile.TemporaryDirectory(prefix="eventual-bench-entities-") as directory:
        async with ev.LocalRuntime(Path(directory) / "state.db", service=SERVICE) as runtime:
            before = runtime.commits
            put = await _timed(lambda i: accounts.put(Account(id=f"s{i}", balance=100), expected_version=0), count)
            sequential_commits = runtime.commits - before
            get = await _timed(lambda i: accounts.get(f"s{i}"), count)
            transact = await _timed(
                lambda i: ev.transact(
                    operations.put_op(AppliedOperation(key=f"t{i}", account=f"s{i}", delta=-1), expected_version=0),
                    accounts.put_op(Account(id=f"s{i}", balance=99), expected_version=1),
                ),
                count,
            )
            before = runtime.commits
            put_concurrent = await _timed(
                lambda i: accounts.put(Account(id=f"c{i}", balance=100), expected_version=0), count, TASKS
            )
            concurrent_commits = runtime.commits - before
            get_concurrent = await _timed(lambda i: accounts.get(f"c{i}"), count, TASKS)
            debit_concurrent = await _timed(lambda i: debit(f"c{i}", f"d{i}"), count, TASKS)
            checks = [await accounts.get_entry(key) for key in ("s0", f"s{count - 1}", "c0", f"c{count - 1}")]
            page = await lines.query("nobody")
    _check([entry.version for entry in checks if entry is not None] == [2, 2, 2, 2], f"versions {checks}")
    _check([entry.value.balance for entry in checks if entry is not None] == [99] * 4, f"balances {checks}")
    _check(sequential_commits >= count, f"{sequential_commits} commits for {count} sequential puts: some unfsynced")
    _check(concurrent_commits < count, f"{concurrent_commits} commits for {count} concurrent puts: no group commit")
    _check(page.entries == [], "an empty partition listed entries")
    result.add("put_per_s", "put (create-only), one caller", put, "ops/s")
    result.add("commits_per_put", "  commits per put", sequential_commits / count)
    result.add("get_per_s", "get, one caller", get, "ops/s")
    result.add("transact_per_s", "transact of 2 writes, one caller", transact, "ops/s")
    result.add("put_concurrent_per_s", f"put, {TASKS} tasks", put_concurrent, "ops/s")
    result.add("commits_per_put_concurrent", "  commits per put", concurrent_commits / count)
    result.add("get_concurrent_per_s", f"get, {TASKS} tasks", get_concurrent, "ops/s")
    result.add(
        "debit_concurrent_per_s", f"tutorial debit (2 reads + transact), {TASKS} tasks", debit_concurrent, "ops/s"
    )
    result.notes.append(
        "one caller: each write returns after its own fsynced commit; 32 tasks: the writes that arrive together "
        "share a commit (group commit), each still atomic on its own (a savepoint)"
    )
    return result


# ------------------------------------------------------------------------------------------ AWS (moto)


def _entities_table(endpoint: str) -> str:
    """Create the entities table exactly as the exported template declares it (minus what create_table lacks)."""
    import boto3

    from exporter.handlers import HANDLERS
    from exporter.template import build_template

    spec = SERVICE.spec()
    template = build_template({"name": SERVICE.name, "handlers": dict(HANDLERS), "service": spec})
    properties = dict(template["Resources"]["EntitiesTable"]["Properties"])
    properties.pop("PointInTimeRecoverySpecification")  # an UpdateContinuousBackups call, not create_table's
    properties["TableName"] = "bench-entities"
    boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1").create_table(**properties)
    return "bench-entities"


async def _aws_operations(count: int, meter: Any) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}

    async def measure(name: str, work: Callable[[int], Awaitable[Any]]) -> None:
        meter.clear()
        for index in range(count):
            await work(index)
        found[name] = {"count": count, **meter.snapshot()}

    await measure("create", lambda i: accounts.put(Account(id=f"a{i}", balance=100), expected_version=0))
    await measure("get", lambda i: accounts.get(f"a{i}"))
    await measure("put_versioned", lambda i: accounts.put(Account(id=f"a{i}", balance=90), expected_version=1))
    await measure("put_unconditional", lambda i: accounts.put(Account(id=f"a{i}", balance=80)))

    async def conflict(index: int) -> None:
        try:
            await accounts.put(Account(id=f"a{index}", balance=0), expected_version=1)
        except ev.VersionConflict:
            return
        raise RuntimeError("benchmark sanity check failed: a stale put was not refused")

    await measure("conflict", conflict)
    await measure(
        "transact_2",
        lambda i: ev.transact(
            operations.put_op(AppliedOperation(key=f"t{i}", account=f"a{i}", delta=-1), expected_version=0),
            accounts.put_op(Account(id=f"a{i}", balance=79), expected_version=3),
        ),
    )
    await measure("debit", lambda i: debit(f"a{i}", f"d{i}"))
    for index in range(10):
        await lines.put(Line(account="alice", at=f"{index:04d}", text="x" * 100))

    async def query(index: int) -> None:
        page = await lines.query("alice", limit=10)
        _check(len(page.entries) == 10 and page.next_token is None, f"a page of {len(page.entries)}")

    await measure("query_10", query)
    return found


def aws_worker(params: dict[str, Any]) -> dict[str, Any]:
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    from benchmarks.aws import Meter, _require_loopback
    from eventual_nb.aws import AwsRuntime
    from eventual_nb.runtime.aws.clients import AwsClients, AwsSettings

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = _require_loopback(f"http://{host}:{port}")
        table = _entities_table(endpoint)
        kwargs = {"endpoint_url": endpoint, "region_name": "us-east-1"}
        meter = Meter(boto3.client("dynamodb", **kwargs), {})

        def factory(service: str) -> Any:
            client = boto3.client(service, **kwargs)  # type: ignore[call-overload]
            meter.attach(client.meta.events, "entities")
            return client

        settings = AwsSettings(service=SERVICE.name, entities_table=table)
        runtime = AwsRuntime(service=SERVICE, clients=AwsClients(settings, factory))

        async def run() -> dict[str, dict[str, Any]]:
            ev.set_default_runtime(runtime)
            try:
                return await _aws_operations(params["operations"], meter)
            finally:
                ev.set_default_runtime(None)

        return asyncio.run(run())
    finally:
        server.stop()


def _aws(count: int) -> Result:
    from benchmarks.aws import PRICES, costs

    env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    env.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }
    )
    with tempfile.TemporaryDirectory(prefix="eventual-bench-entities-aws-") as directory:
        out = Path(directory) / "entities.json"
        completed = subprocess.run(
            [sys.executable, "-m", "benchmarks.entities", "aws-worker", json.dumps({"operations": count}), str(out)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if completed.returncode != 0:
            raise RuntimeError(f"the entities AWS worker failed:\n{completed.stdout}\n{completed.stderr}")
        found = json.loads(out.read_text(encoding="utf-8"))
    result = Result("entities_aws", "entities on AWS (DynamoDB on-demand, counted on moto): per operation")
    result.params = {"operations": count}
    labels = {
        "create": "put, create-only (PutItem)",
        "get": "get (GetItem, strongly consistent)",
        "put_versioned": "put at a version (PutItem)",
        "put_unconditional": "put, no version (UpdateItem)",
        "conflict": "put refused by a version conflict",
        "transact_2": "transact of 2 writes (TransactWriteItems)",
        "debit": "tutorial debit: 2 gets + transact of 2",
        "query_10": "query, a page of 10 entries of 100 B",
    }
    for name, label in labels.items():
        run = found[name]
        count = run["count"]
        _check(not run["problems"], f"{name}: {run['problems'][:3]}")
        requests = sum(run["requests"].get("entities", {}).values())
        wru = sum(run["units"].get("dynamodb_wru", {}).values())
        rru = sum(run["units"].get("dynamodb_rru", {}).values())
        usd = sum(costs(run["units"]).values())
        result.add(f"{name}_requests", label, requests / count, "requests")
        result.add(f"{name}_wru", "  write request units", wru / count, "WRU")
        result.add(f"{name}_rru", "  read request units", rru / count, "RRU")
        result.add(f"{name}_usd_per_million", "  list price per million", usd / count * 1e6, "USD")
        result.info[f"{name}_requests"] = json.dumps(run["requests"].get("entities", {}), sort_keys=True)
    result.info["prices"] = "; ".join(
        f"{line}: ${PRICES[line].usd:g} per {PRICES[line].per:,.0f} {PRICES[line].unit}"
        for line in ("dynamodb_wru", "dynamodb_rru")
    )
    result.notes.append(
        "DynamoDB only: the calls are made by code already running in a Lambda function (an activity, a route, "
        "a subscription), whose own bill the AWS benchmark counts; values are small (under 1 KB)"
    )
    return result


def run(quick: bool, names: list[str], progress: Callable[[str], None] | None = None) -> list[Result]:
    found: list[Result] = []
    if "entities_local" in names:
        (progress or (lambda _key: None))("entities_local")
        found.append(asyncio.run(_local(QUICK_OPERATIONS if quick else OPERATIONS)))
    if "entities_aws" in names:
        (progress or (lambda _key: None))("entities_aws")
        found.append(_aws(QUICK_AWS_OPERATIONS if quick else AWS_OPERATIONS))
    return found


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "aws-worker":
        print("usage: python -m benchmarks.entities aws-worker PARAMS_JSON OUT_PATH", file=sys.stderr)
        sys.exit(2)
    Path(sys.argv[3]).write_text(json.dumps(aws_worker(json.loads(sys.argv[2]))), encoding="utf-8")
