"""The local event bus across processes: delivery latency, events per second, and CPU while idle.

* `bus_local` — two processes in one scratch directory, as two `eventual-nb serve` would run: this one
  publishes from a LocalRuntime serving a "bank" service; a subscriber process (`python -m benchmarks.bus
  subscriber DIR ...`) runs a LocalRuntime serving a "notifications" service whose subscription names
  the bank as its source. Both use durability "full" (every commit fsynced, the bus's too).
  - latency: events published one at a time (a pause between them, so each travels alone); each carries
    its publish time, and the subscriber's handler notes when it is called (one machine, one clock).
    The time covers the publisher's commit, the append to the bus, the wake-up through the FIFO, the
    subscriber's commit of the delivery and the handler call. p50 and p99.
  - throughput: events published in batches of 100 (`publish_events(*batch)`); events per second from
    the first publish to the last handler call.
  - idle: the subscriber's CPU time over a quiet interval before anything is published (it waits on
    its FIFO in the kernel; an idle look at the bus every 5 s is the only other work).
  Checks: every event was delivered exactly once (nothing crashed, so at-least-once gives exactly once).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import eventual_nb as ev
from benchmarks.results import Result

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ["bus_local"]
#: events of the latency and of the throughput measurement, full and --quick
LATENCY_EVENTS, QUICK_LATENCY_EVENTS = 200, 30
THROUGHPUT_EVENTS, QUICK_THROUGHPUT_EVENTS = 5000, 500
BATCH = 100
#: pause between two latency events (seconds)
GAP = 0.02
#: the quiet interval over which the subscriber's CPU is measured (seconds), full and --quick
IDLE, QUICK_IDLE = 3.0, 1.0
#: how long to wait for the subscriber process (seconds)
PROCESS_TIMEOUT = 300

BANK = ev.Service("eventual-nb-benchmarks-bus-bank")


class BusBenchEvent(ev.Event):
    phase: str
    n: int
    sent: float


NOTES = ev.Service("eventual-nb-benchmarks-bus-notes")
#: (phase, n, sent, received) of every delivery, in the subscriber process
RECEIVED: list[tuple[str, int, float, float]] = []


@ev.subscription("BusBenchEvent", source=BANK.name, name="bench-bus-receive")
def receive(event: Any) -> None:
    fields = event if isinstance(event, dict) else event.model_dump()
    RECEIVED.append((fields["phase"], fields["n"], fields["sent"], time.time()))


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise RuntimeError(f"benchmark sanity check failed: {message}")


# -------------------------------------------------------------------------------------- the subscriber


async def _subscribe(directory: Path, expected: int, idle: float) -> None:
    async with ev.LocalRuntime(directory / "notes.db", service=NOTES):
        cpu = time.process_time()
        await asyncio.sleep(idle)
        idle_cpu = time.process_time() - cpu
        (directory / "ready.json").write_text(json.dumps({"idle_cpu_seconds": idle_cpu, "idle_seconds": idle}))
        deadline = time.monotonic() + PROCESS_TIMEOUT
        # the handler may run on a worker thread: a list to poll, not an event to await
        while len(RECEIVED) < expected and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    (directory / "received.json").write_text(json.dumps(RECEIVED))


# -------------------------------------------------------------------------------------- the publisher


async def _wait_for(path: Path, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + PROCESS_TIMEOUT
    while not await asyncio.to_thread(path.exists):
        _check(process.poll() is None, f"the subscriber process exited with {process.returncode}")
        _check(time.monotonic() < deadline, f"the subscriber wrote no {path.name}")
        await asyncio.sleep(0.01)


async def _measure(quick: bool) -> Result:
    latency_events = QUICK_LATENCY_EVENTS if quick else LATENCY_EVENTS
    throughput_events = QUICK_THROUGHPUT_EVENTS if quick else THROUGHPUT_EVENTS
    idle = QUICK_IDLE if quick else IDLE
    result = Result("bus_local", "local event bus between two processes (SQLite, durability full)")
    result.params = {"latency_events": latency_events, "throughput_events": throughput_events, "batch": BATCH}
    with tempfile.TemporaryDirectory(prefix="eventual-bench-bus-") as name:
        directory = Path(name)
        command = [sys.executable, "-m", "benchmarks.bus", "subscriber", name]
        arguments = [*command, str(latency_events + throughput_events), str(idle)]
        process = subprocess.Popen(arguments, cwd=ROOT)  # noqa: ASYNC220 - started once, before anything is timed
        try:
            await _wait_for(directory / "ready.json", process)
            async with ev.LocalRuntime(directory / "bank.db", service=BANK) as runtime:
                for n in range(latency_events):
                    await runtime.publish_events(BusBenchEvent(phase="latency", n=n, sent=time.time()))
                    await asyncio.sleep(GAP)
                started = time.time()
                for first in range(0, throughput_events, BATCH):
                    batch = range(first, min(first + BATCH, throughput_events))
                    await runtime.publish_events(
                        *(BusBenchEvent(phase="throughput", n=n, sent=time.time()) for n in batch)
                    )
                await _wait_for(directory / "received.json", process)
            process.wait(timeout=PROCESS_TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        ready = json.loads((directory / "ready.json").read_text())
        received = json.loads((directory / "received.json").read_text())
    latencies = [(got - sent) * 1000 for phase, _n, sent, got in received if phase == "latency"]
    throughput = [(n, got) for phase, n, _sent, got in received if phase == "throughput"]
    _check(sorted(n for phase, n, *_ in received if phase == "latency") == list(range(latency_events)), "latency")
    _check(sorted(n for n, _got in throughput) == list(range(throughput_events)), "throughput events lost or doubled")
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    result.add("latency_p50_ms", "cross-process delivery latency p50", cuts[49], "ms", target="< 200 ms")
    result.add("latency_p99_ms", "cross-process delivery latency p99", cuts[98], "ms")
    result.add(
        "events_per_s",
        f"events/s, published in batches of {BATCH}",
        throughput_events / (max(got for _n, got in throughput) - started),
        "events/s",
    )
    idle_percent = 100 * ready["idle_cpu_seconds"] / ready["idle_seconds"]
    result.add("idle_cpu_percent", f"subscriber CPU while idle ({ready['idle_seconds']:g} s)", idle_percent, "%")
    result.add("delivered", "events delivered (each exactly once)", len(received))
    result.notes.append(
        "the subscriber sleeps on a FIFO in `.eventual/bus.db-wake/` (epoll); the publisher writes one byte to "
        "it after each append to the bus"
    )
    return result


def run(quick: bool, chosen: list[str], progress: Any) -> list[Result]:
    progress("bus_local")
    return [asyncio.run(_measure(quick))]


if __name__ == "__main__":
    if sys.argv[1:2] != ["subscriber"]:
        sys.exit("usage: python -m benchmarks.bus subscriber DIR EXPECTED IDLE_SECONDS")
    asyncio.run(_subscribe(Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
