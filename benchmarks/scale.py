"""Scale: how the LocalRuntime's costs grow with the work it holds, each at three sizes (the curve).

* `scale_waiting` — 1,000 / 3,000 / 10,000 executions in flight on one LocalRuntime, half waiting on a
  signal, half on a timer: RSS (and per execution), CPU while idle (process CPU time over a few seconds
  with every timer still ahead: must be about 0, nothing polls; the scheduler's wake-ups meanwhile), and
  the timers' wake-up precision — each timer execution sleeps until an absolute deadline (`ev.sleep_until`,
  deadlines spread over a few seconds), and how late it fired is its execution's end time (the round that
  handled the timer) minus the deadline: p50, p99, max.
* `scale_listing` — 10,000 / 30,000 / 100,000 stored executions of two workflows (one in ten FAILED, the
  rest SUCCEEDED), created by starting short executions through the runtime's API (each ends in its first
  step, so a batch of starts is one group commit): p50 of the first page of 100 of
  `list_executions(workflow=..., statuses=[...])`, with one status, with two, and newest first. The SQL
  the listing ran is captured (`set_trace_callback` on the runtime's own connection) and its
  `EXPLAIN QUERY PLAN` must search the `executions` table through an index, or the benchmark fails; a
  plan that sorts the matching rows (a temporary B-tree) is reported, as it grows with them.
* `scale_history` — a 10,000 / 30,000 / 100,000-event history (sequential activity calls, made by driving
  the bare engine): replay from scratch (`ev.testing.replay`, best of a few; from the objects and from the
  JSON text a store holds), and memory: the peak `tracemalloc` sees during the replay, and the size of the
  parsed history.
* `scale_http` — 100 / 300 / 1,000 executions started in one burst through `eventual-nb serve` (a
  separate process, a fresh database each, on 127.0.0.1) by an `httpx.AsyncClient` with a pool of up to
  100 connections: starts per second from the burst's start to its last answer, the p50 / p99
  acknowledgement (start committed, answered) measured from the burst's start, as every request was sent
  then, and the server process's CPU per start. Checks: every answer is a new, distinct execution and
  every one of them succeeds.
* `scale_work_while_waiting` — two-step executions run in batches on a LocalRuntime with nothing else in
  flight, then beside 10,000 and then 100,000 executions waiting on a one-hour timer (the worker of
  `benchmarks.local`'s `local_in_flight`, one runtime, sleepers added between the levels): executions per
  second and per CPU-second, and the ratio to "none" (target ≤ 1.25×).

The runtime measurements each run in their own Python process (RSS must be theirs alone), through the
workspace of `benchmarks.local`: `python -m benchmarks.scale worker TASK PARAMS OUT`. Every measurement
checks what it measured and fails loudly when it is wrong. `--quick` runs each at small sizes.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import os
import re
import sqlite3
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import eventual_nb as ev
from benchmarks.engine import bench_sequential, drive_engine
from benchmarks.local import Workspace, percentile, rss_mb, worker_main
from benchmarks.results import Comparison
from eventual_nb.engine.history import dump_history, parse_history

BENCHMARKS = ["scale_waiting", "scale_listing", "scale_history", "scale_http", "scale_work_while_waiting"]

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ev.Service("eventual-nb-benchmarks-scale")
SCALE_GO = ev.signal("scale-go", str)

#: the HTTP burst's client pool (every request is sent at once; at most this many connections carry them)
MAX_CONNECTIONS = 100
#: the ratio "work while work waits" must stay within (issue target), judged on full sizes only
WORK_TARGET = 1.25


@dataclass(frozen=True)
class Sizes:
    waiting: tuple[int, ...]
    idle_seconds: float
    spread_seconds: float
    stored: tuple[int, ...]
    list_samples: int
    history_events: tuple[int, ...]
    replay_repeats: int
    burst: tuple[int, ...]
    #: executions waiting on a timer beside the batches (0 is measured on its own runtime)
    work_waiting: tuple[int, ...]
    work_batch: int
    work_batches: int
    worker_timeout: float


FULL = Sizes(
    waiting=(1_000, 3_000, 10_000),
    idle_seconds=3.0,
    spread_seconds=5.0,
    stored=(10_000, 30_000, 100_000),
    list_samples=101,
    history_events=(10_002, 30_002, 100_002),
    replay_repeats=3,
    burst=(100, 300, 1_000),
    work_waiting=(10_000, 100_000),
    work_batch=2_000,
    work_batches=5,
    worker_timeout=1_800,
)
QUICK = Sizes(
    waiting=(200, 500, 1_000),
    idle_seconds=1.0,
    spread_seconds=1.0,
    stored=(1_000, 2_000, 5_000),
    list_samples=21,
    history_events=(1_002, 3_002, 10_002),
    replay_repeats=1,
    burst=(20, 50, 100),
    work_waiting=(500, 2_000),
    work_batch=200,
    work_batches=2,
    worker_timeout=120,
)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise RuntimeError(f"benchmark sanity check failed: {message}")


# ------------------------------------------------------------------------------------------ workflows


@ev.workflow
async def scale_wait_timer(deadline: float) -> float:
    """Sleep until `deadline` (seconds since the epoch); returns it, so each result can be checked."""
    await ev.sleep_until(datetime.fromtimestamp(deadline, UTC))
    return deadline


@ev.workflow
async def scale_wait_signal() -> str:
    """Wait for the `scale-go` signal (never sent: these executions stay in flight)."""
    return await SCALE_GO.expect()


def _settle(i: int) -> int:
    """One in ten fails, so a listing by status has something to filter."""
    if (i // 2) % 10 == 0:
        raise ValueError(f"item {i} refused")
    return i


@ev.workflow
async def scale_order(i: int) -> int:
    return _settle(i)


@ev.workflow
async def scale_refund(i: int) -> int:
    return _settle(i)


# ------------------------------------------------------------------------------------ worker helpers


async def _start_many(
    runtime: ev.LocalRuntime, start: Callable[[int], Awaitable[ev.ExecutionHandle]], count: int, chunk: int = 2_000
) -> list[ev.ExecutionHandle]:
    """Start `count` executions in concurrent batches of `chunk`; return once each has taken its first step."""
    steps = runtime.steps
    handles: list[ev.ExecutionHandle] = []
    for first in range(0, count, chunk):
        handles += await asyncio.gather(*(start(i) for i in range(first, min(count, first + chunk))))
    while runtime.steps - steps < count:  # noqa: ASYNC110 - the runtime counts steps, it has no event
        await asyncio.sleep(0.02)
    return handles


def _runtime(directory: Path) -> ev.LocalRuntime:
    return ev.LocalRuntime(directory / "scale.db", durability="full", service=SERVICE)


async def waiting_worker(params: dict[str, Any], directory: Path) -> dict[str, Any]:
    count, idle, spread = params["executions"], params["idle_seconds"], params["spread_seconds"]
    gc.collect()
    before, _ = rss_mb()
    async with _runtime(directory) as runtime:
        _check(await scale_wait_timer(time.time() + 0.05) > 0, "the warm-up timer returned a wrong result")
        gc.collect()
        started, _ = rss_mb()
        signals, timers = count // 2, count - count // 2
        clock = time.perf_counter()
        signalled = await _start_many(runtime, lambda _i: scale_wait_signal.start(), signals)
        rate = signals / (time.perf_counter() - clock)
        # every timer is due after all are started and the idle window is over (twice the time the signal
        # waiters took to start, as the machine is shared), spread evenly over `spread` seconds
        first_due = time.time() + 2 * timers / rate + idle + 1.0
        deadlines = [first_due + spread * i / timers for i in range(timers)]
        timed = await _start_many(runtime, lambda i: scale_wait_timer.start(deadlines[i]), timers)
        start_seconds = time.perf_counter() - clock
        gc.collect()
        waiting_rss, _ = rss_mb()
        _check(time.time() + idle < first_due, "starting the timers took longer than planned: a timer is due already")
        wakeups, idle_wakeups, cpu = runtime.wakeups, runtime.idle_wakeups, time.process_time()
        await asyncio.sleep(idle)
        idle_cpu = time.process_time() - cpu
        wakeups, idle_wakeups = runtime.wakeups - wakeups, runtime.idle_wakeups - idle_wakeups
        results = await asyncio.gather(*(handle.result() for handle in timed))
        _check(results == deadlines, "a timer execution returned a wrong deadline")
        late = []
        for handle, deadline in zip(timed, deadlines, strict=True):
            execution = await runtime.get_execution(handle.id)
            assert execution.end_time is not None
            late.append(execution.end_time.timestamp() - deadline)
        _check(min(late) > -0.001, f"a timer fired {-min(late) * 1000:.1f} ms before its deadline")
        sample = signalled[:: max(1, signals // 50)]
        statuses = {(await runtime.get_execution(handle.id)).status for handle in sample}
        _check(statuses == {ev.ExecutionStatus.IN_PROGRESS}, f"signal waiters ended: {statuses}")
        cached = len(getattr(runtime, "_executors", ()))
    return {
        "rss_before_mb": before,
        "rss_started_mb": started,
        "rss_waiting_mb": waiting_rss,
        "start_seconds": start_seconds,
        "idle_cpu_seconds": idle_cpu,
        "idle_wakeups": idle_wakeups,
        "wakeups": wakeups,
        "late": late,
        "cached_executors": cached,
    }


#: the listings `scale_listing` times: (label, list_executions arguments)
LISTINGS: dict[str, dict[str, Any]] = {
    "one_status": {"workflow": "scale_order", "statuses": [ev.ExecutionStatus.FAILED]},
    "two_statuses": {
        "workflow": "scale_order",
        "statuses": [ev.ExecutionStatus.FAILED, ev.ExecutionStatus.CANCELLED],
    },
    "newest_first": {"workflow": "scale_order", "statuses": [ev.ExecutionStatus.SUCCEEDED], "sort": "desc"},
    "workflow_only": {"workflow": "scale_order"},
}


def _query_plan(connection: sqlite3.Connection, statement: str) -> list[str]:
    """The `EXPLAIN QUERY PLAN` details of `statement` (a SELECT with its values bound, as traced)."""
    return [str(row[3]) for row in connection.execute(f"EXPLAIN QUERY PLAN {statement}").fetchall()]


def _check_index_used(name: str, plan: list[str]) -> None:
    """The listing must search `executions` through an index: a full scan grows with every stored execution."""
    searches = [detail for detail in plan if re.match(r"(SEARCH|SCAN) executions\b", detail)]
    _check(bool(searches), f"{name}: no step of the plan reads the executions table: {plan}")
    for detail in searches:
        _check("USING" in detail and "INDEX" in detail, f"{name}: the listing scans the executions table: {plan}")


async def listing_worker(params: dict[str, Any], directory: Path) -> dict[str, Any]:
    count, samples = params["executions"], params["samples"]
    async with _runtime(directory) as runtime:

        def start(i: int) -> Awaitable[ev.ExecutionHandle]:
            return (scale_order if i % 2 == 0 else scale_refund).start(i)

        clock = time.perf_counter()
        await _start_many(runtime, start, count)
        create_seconds = time.perf_counter() - clock
        failed, token = 0, None
        while True:
            page = await runtime.list_executions(**LISTINGS["one_status"], next_token=token, max_results=1000)
            failed, token = failed + len(page.executions), page.next_token
            if token is None:
                break
        expected = sum(1 for i in range(0, count, 2) if (i // 2) % 10 == 0)
        _check(failed == expected, f"{failed} FAILED executions of scale_order listed, {expected} expected")
        connection = runtime._db.connection  # type: ignore[union-attr]  # the runtime's own connection
        found: dict[str, Any] = {}
        for name, arguments in LISTINGS.items():
            traced: list[str] = []
            connection.set_trace_callback(traced.append)
            try:
                page = await runtime.list_executions(**arguments)
            finally:
                connection.set_trace_callback(None)
            wanted = set(arguments.get("statuses") or ev.ExecutionStatus)
            _check(0 < len(page.executions) <= 100, f"{name}: a page of {len(page.executions)}")
            for execution in page.executions:
                _check(execution.workflow == "scale_order" and execution.status in wanted, f"{name}: {execution}")
            statement = next(sql for sql in traced if sql.lstrip().upper().startswith("SELECT"))
            plan = _query_plan(connection, statement)
            _check_index_used(name, plan)
            times = []
            for _ in range(samples):
                clock = time.perf_counter()
                await runtime.list_executions(**arguments)
                times.append(time.perf_counter() - clock)
            found[name] = {"times": times, "plan": plan}
    return {"create_seconds": create_seconds, "listings": found}


WORKERS: dict[str, Callable[[dict[str, Any], Path], Any]] = {
    "scale_waiting": waiting_worker,
    "scale_listing": listing_worker,
}


# ------------------------------------------------------------------------------------------ benchmarks


def columns(counts: tuple[int, ...] | list[int], unit: str) -> dict[str, str]:
    """One column per size (the curve): key `n<count>` (what the JSON's results are keyed by), heading '10,000 x'."""
    return {f"n{count}": f"{count:,} {unit}" for count in counts}


def waiting(sizes: Sizes, workspace: Workspace) -> Comparison:
    result = Comparison(
        "scale_waiting",
        "executions in flight on one LocalRuntime, half on a timer, half on a signal",
        columns(sizes.waiting, "in flight"),
        params={"executions": list(sizes.waiting), "idle_seconds": sizes.idle_seconds},
    )
    found = {
        f"n{count}": workspace.run(
            "scale_waiting",
            {"executions": count, "idle_seconds": sizes.idle_seconds, "spread_seconds": sizes.spread_seconds},
        )
        for count in sizes.waiting
    }
    counts = {f"n{count}": count for count in sizes.waiting}

    def row(key: str, label: str, value: Callable[[dict[str, Any], int], float], unit: str = "", **kw: Any) -> None:
        result.add(key, label, {size: value(found[size], counts[size]) for size in found}, unit, **kw)

    late = {size: [seconds * 1000 for seconds in measured["late"]] for size, measured in found.items()}
    row("rss_mb", "RSS with them all waiting", lambda f, _n: f["rss_waiting_mb"], "MB")
    row(
        "kb_per_execution",
        "  per waiting execution",
        lambda f, n: (f["rss_waiting_mb"] - f["rss_started_mb"]) * 1024 / n,
        "KB",
    )
    row("starts_per_second", "started per second", lambda f, n: n / f["start_seconds"], "/s")
    row(
        "idle_cpu_ms_per_s",
        f"CPU while idle ({sizes.idle_seconds:g} s, timers ahead)",
        lambda f, _n: f["idle_cpu_seconds"] * 1000 / sizes.idle_seconds,
        "ms/s",
        target="≈ 0",
    )
    idle_wakeups = {size: measured["wakeups"] for size, measured in found.items()}
    result.add(
        "idle_wakeups", "  scheduler wake-ups meanwhile", idle_wakeups, target="0", met=not any(idle_wakeups.values())
    )
    result.add("late_p50_ms", "timer fired late: p50", {size: percentile(late[size], 0.5) for size in found}, "ms")
    result.add("late_p99_ms", "  p99", {size: percentile(late[size], 0.99) for size in found}, "ms")
    result.add("late_max_ms", "  max", {size: max(late[size]) for size in found}, "ms")
    row("cached_executors", "executors cached", lambda f, _n: f["cached_executors"])
    result.notes.append(
        f"timers are spread over {sizes.spread_seconds:g} s; 'late' is the end time of the timer's execution "
        "(the round that handled it) minus its deadline; CPU while idle is process CPU time (all threads) "
        f"over {sizes.idle_seconds:g} s with every timer still ahead"
    )
    return result


LISTING_LABELS = {
    "one_status": "workflow + 1 status",
    "two_statuses": "workflow + 2 statuses",
    "newest_first": "workflow + 1 status, newest first",
    "workflow_only": "workflow alone (no status)",
}


def listing(sizes: Sizes, workspace: Workspace) -> Comparison:
    result = Comparison(
        "scale_listing",
        "list_executions(workflow=..., statuses=[...]): the first page of 100",
        columns(sizes.stored, "stored"),
        params={"executions": list(sizes.stored), "samples": sizes.list_samples},
    )
    found = {
        f"n{count}": workspace.run("scale_listing", {"executions": count, "samples": sizes.list_samples})
        for count in sizes.stored
    }
    counts = {f"n{count}": count for count in sizes.stored}
    result.add(
        "created_per_second",
        "stored per second (short executions started)",
        {size: counts[size] / f["create_seconds"] for size, f in found.items()},
        "/s",
    )
    for name, label in LISTING_LABELS.items():
        times = {size: f["listings"][name]["times"] for size, f in found.items()}
        plans = {size: "; ".join(f["listings"][name]["plan"]) for size, f in found.items()}
        result.add(
            f"{name}_p50_ms", f"{label}: p50", {size: percentile(times[size], 0.5) * 1000 for size in found}, "ms"
        )
        result.add(
            f"{name}_sorts",
            "  plan sorts the matching rows",
            {size: int("TEMP B-TREE" in plan) for size, plan in plans.items()},
        )
        for size, plan in plans.items():
            result.info[f"plan_{name}_{size}"] = plan
    result.notes.append(
        "each query's EXPLAIN QUERY PLAN searched the executions table through an index (checked); "
        "'plan sorts the matching rows' (1) means it builds a temporary B-tree for ORDER BY over every match"
    )
    return result


def history(sizes: Sizes) -> Comparison:
    result = Comparison(
        "scale_history",
        "replay a long history from scratch",
        columns(sizes.history_events, "events"),
        params={"events": list(sizes.history_events), "repeats": sizes.replay_repeats},
    )
    found = {f"n{events}": replay_history(events, sizes.replay_repeats) for events in sizes.history_events}
    events = {f"n{count}": count for count in sizes.history_events}
    result.add("replay_seconds", "replay (best)", {size: f["best"] for size, f in found.items()}, "s")
    result.add("us_per_event", "  per event", {size: f["best"] * 1e6 / events[size] for size, f in found.items()}, "µs")
    result.add(
        "replay_json_seconds",
        "replay from the JSON text (best)",
        {size: f["best_json"] for size, f in found.items()},
        "s",
    )
    result.add(
        "replay_peak_mb",
        "replay's peak memory (tracemalloc)",
        {size: f["replay_peak"] / 2**20 for size, f in found.items()},
        "MB",
    )
    result.add(
        "history_mb", "the parsed history (tracemalloc)", {size: f["held"] / 2**20 for size, f in found.items()}, "MB"
    )
    result.notes.append(
        "histories of sequential activity calls made by the bare engine; memory is tracemalloc's (Python "
        "allocations) in a separate replay of the objects: its peak, and what parsing the JSON text keeps"
    )
    return result


def replay_history(events: int, repeats: int) -> dict[str, float]:
    """Replay an `events`-event history: best seconds from objects and from JSON text, and memory in bytes."""
    calls = (events - 2) // 2
    run = drive_engine(calls)
    _check(run.history_events == events, f"{calls} calls made {run.history_events} events, not {events}")
    text = json.dumps(dump_history(run.history))

    def replay(source: Any) -> float:
        gc.collect()
        clock = time.perf_counter()
        commands = ev.testing.replay(bench_sequential, source, execution_id=run.execution_id)
        seconds = time.perf_counter() - clock
        _check(commands == [], f"replaying {events} events issued {commands}")
        return seconds

    best = min(replay(run.history) for _ in range(repeats))
    best_json = min(replay(text) for _ in range(repeats))
    gc.collect()
    tracemalloc.start()
    try:
        replay(run.history)
        _, replay_peak = tracemalloc.get_traced_memory()
        before, _ = tracemalloc.get_traced_memory()
        parsed = parse_history(text)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    _check(len(parsed) == events, "the parsed history lost events")
    return {"best": best, "best_json": best_json, "replay_peak": replay_peak, "held": held}


# ---------------------------------------------------------------------------------------------- HTTP


async def _serve(db: Path) -> tuple[asyncio.subprocess.Process, str, asyncio.Task[bytes]]:
    """`eventual-nb serve` of `benchmarks/scale_service.py` on a free port; (process, URL, stderr drain)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "eventual_nb",
        "serve",
        str(ROOT / "benchmarks" / "scale_service.py"),
        "--db",
        str(db),
        "--port",
        "0",
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    seen = b""
    try:
        async with asyncio.timeout(120):
            while (match := re.search(rb"serving .* on (http://\S+)", seen)) is None:
                line = await process.stderr.readline()
                if not line:
                    raise RuntimeError(f"eventual-nb serve exited before serving:\n{seen.decode(errors='replace')}")
                seen += line
    except BaseException:
        process.kill()
        await process.wait()
        raise
    drain = asyncio.ensure_future(process.stderr.read())  # the server's later warnings must not block it
    return process, match.group(1).decode(), drain


async def _succeeded(client: Any, workflow: str) -> int:
    count, token = 0, None
    while True:
        query: dict[str, Any] = {"workflow": workflow, "status": "SUCCEEDED", "max_results": 1000}
        if token is not None:
            query["next_token"] = token
        response = await client.get("/_eventual/executions", params=query)
        response.raise_for_status()
        page = response.json()
        count, token = count + len(page["executions"]), page.get("next_token")
        if token is None:
            return count


async def burst(count: int, directory: Path) -> dict[str, Any]:
    import httpx

    process, url, drain = await _serve(directory / f"burst-{count}.db")
    try:
        connections = min(count, MAX_CONNECTIONS)
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300) as client:

            async def start(i: int) -> tuple[float, dict[str, Any]]:
                response = await client.post("/_eventual/executions", json={"workflow": "burst_order", "input": i})
                answered = time.perf_counter()
                _check(response.status_code == 200, f"start {i} answered {response.status_code}: {response.text}")
                return answered, response.json()

            await start(-1)  # warm-up: the first request builds what later ones reuse
            server_cpu, client_cpu, clock = _cpu_seconds(process.pid), time.process_time(), time.perf_counter()
            answers = await asyncio.gather(*(start(i) for i in range(count)))
            acks = [answered - clock for answered, _ in answers]
            server_cpu, client_cpu = _cpu_seconds(process.pid) - server_cpu, time.process_time() - client_cpu
            ids = {body["execution_id"] for _, body in answers}
            _check(len(ids) == count, f"{count} starts made {len(ids)} distinct executions")
            _check(not any(body["already_running"] for _, body in answers), "a start found its execution running")
            async with asyncio.timeout(120):
                while await _succeeded(client, "burst_order") < count + 1:  # noqa: ASYNC110 - another process
                    await asyncio.sleep(0.1)
    finally:
        process.terminate()
        await process.wait()
        await drain
    return {"acks": acks, "seconds": max(acks), "server_cpu": server_cpu, "client_cpu": client_cpu}


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) of process `pid` so far, from /proc (Linux); NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http(sizes: Sizes) -> Comparison:
    result = Comparison(
        "scale_http",
        "executions started in one burst through `eventual-nb serve`",
        columns(sizes.burst, "at once"),
        params={"burst": list(sizes.burst)},
    )
    with tempfile.TemporaryDirectory(prefix="eventual-bench-scale-http-") as directory:
        found = {f"n{count}": asyncio.run(burst(count, Path(directory))) for count in sizes.burst}
    acks = {size: [seconds * 1000 for seconds in f["acks"]] for size, f in found.items()}
    result.add(
        "starts_per_second",
        "starts per second",
        {size: len(acks[size]) / f["seconds"] for size, f in found.items()},
        "/s",
    )
    result.add("ack_p50_ms", "acknowledged: p50", {size: percentile(times, 0.5) for size, times in acks.items()}, "ms")
    result.add("ack_p99_ms", "  p99", {size: percentile(times, 0.99) for size, times in acks.items()}, "ms")
    cpu = {
        size: f["server_cpu"] * 1000 / len(acks[size]) for size, f in found.items() if not math.isnan(f["server_cpu"])
    }
    result.add("server_cpu_ms_per_start", "server process CPU per start", cpu, "ms")
    client = {size: f["client_cpu"] * 1000 / len(acks[size]) for size, f in found.items()}
    result.add("client_cpu_ms_per_start", "client (httpx) CPU per start", client, "ms")
    result.notes.append(
        f"all requests are sent at once over a pool of up to {MAX_CONNECTIONS} connections, so acknowledgement "
        "times count from the burst's start: the server answers each start once its commit (grouped with the "
        "others') is durable; the server's CPU per start (/proc, 10 ms ticks) does not stretch on a shared machine"
    )
    return result


# ------------------------------------------------------------------------------------ work while waiting


def work_while_waiting(sizes: Sizes, workspace: Workspace) -> Comparison:
    batch, batches = sizes.work_batch, sizes.work_batches
    levels = list(sizes.work_waiting)
    result = Comparison(
        "scale_work_while_waiting",
        f"two-step executions ({batches} batches of {batch:,}) beside executions waiting on a timer",
        {"n0": "none waiting", **columns(levels, "waiting")},
        params={"waiting": [0, *levels], "batch": batch, "batches": batches},
    )
    params = {"waiting": levels, "batch": batch, "batches": batches}
    found = workspace.run("local_in_flight", params, module="benchmarks.local")
    mean = statistics.fmean

    def rates(times: list[list[float]]) -> tuple[float, float]:
        return mean(batch / wall for wall, _ in times), mean(batch / cpu for _, cpu in times if cpu > 0)

    measured = {"n0": rates(found["alone"]), **{f"n{count}": rates(times) for count, times, _ in found["levels"]}}
    alone, alone_cpu = measured["n0"]
    judged = levels[-1] >= FULL.work_waiting[-1]
    ratios = {size: alone_cpu / cpu for size, (_, cpu) in measured.items()}
    result.add("per_second", "executions per second", {size: wall for size, (wall, _) in measured.items()}, "/s")
    result.add("per_cpu_second", "executions per CPU-second", {size: cpu for size, (_, cpu) in measured.items()}, "/s")
    result.add("ratio", "none ÷ this (wall)", {size: alone / wall for size, (wall, _) in measured.items()}, "×")
    result.add(
        "cpu_ratio",
        "none ÷ this (per CPU-second)",
        ratios,
        "×",
        target=f"≤ {WORK_TARGET:g}×" if judged else None,
        met=max(ratios.values()) <= WORK_TARGET if judged else None,
    )
    result.add("cached_executors", "executors cached", {f"n{count}": cached for count, _, cached in found["levels"]})
    result.notes.append(
        "the target is judged per CPU-second (steady on a shared machine; wall-clock rates are shown too); the "
        "waiting executions sleep an hour, so they take no step while the batches run (no replays: checked)"
    )
    return result


def run(quick: bool, names: list[str], progress: Callable[[str], None] | None = None) -> list[Comparison]:
    sizes = QUICK if quick else FULL
    workspace = Workspace(sizes, module="benchmarks.scale")
    benchmarks: dict[str, Callable[[], Comparison]] = {
        "scale_waiting": lambda: waiting(sizes, workspace),
        "scale_listing": lambda: listing(sizes, workspace),
        "scale_history": lambda: history(sizes),
        "scale_http": lambda: http(sizes),
        "scale_work_while_waiting": lambda: work_while_waiting(sizes, workspace),
    }
    results = []
    try:
        for key, benchmark in benchmarks.items():
            if key in names:
                if progress is not None:
                    progress(key)
                results.append(benchmark())
    finally:
        workspace.close()
    return results


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:], WORKERS, "benchmarks.scale"))
