"""Kernel-extension benchmarks: what a notebook user waits for, measured in real ipykernel processes.

* `kernel_load` — `%load_ext eventual_nb` in a fresh `python3` kernel (its own temporary working
  directory): the time from sending the `execute_request` to its `execute_reply`, seen from the client,
  and the time inside the cell (`time.perf_counter()` around the load). Each run uses a new kernel,
  because only the first load in a process imports anything. `import eventual_nb` in a fresh
  `python -c` is reported next to it, to tell the SDK's share from the extension's (IPython widgets,
  the runtime thread, opening the database).
* `widget_latency` — from the history event that ends an execution (`WorkflowSucceeded`) to the widget
  comm message that shows `SUCCEEDED`: what "live" means for the execution widget. Each execution is
  started and displayed in one cell and signalled from the next; the client reads IOPub without
  waiting for the signalling cell, finds the `comm_msg` update of that execution's status widget and
  subtracts the event's timestamp (fetched from the kernel afterwards) from the message's
  `header.date`. Both are the kernel process's wall clock in UTC, so no clock skew enters.

Nothing has a peer yet; the numbers are absolute, with targets. Each benchmark checks what it measured
(the extension loaded the LocalRuntime, every execution succeeded and its widget said so, latencies
are plausible) and raises when it is wrong: a fast wrong answer is not a benchmark result.
"""

from __future__ import annotations

import json
import queue
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from benchmarks.local import percentile
from benchmarks.results import Result
from kernel_ext.widgets import REFRESH_INTERVAL

BENCHMARKS = ["kernel_load", "widget_latency"]

#: the plain ipykernel kernelspec of the environment: the extension must load in any IPython kernel
KERNEL_NAME = "python3"
#: seconds a kernel may take to start and answer `kernel_info`
STARTUP_TIMEOUT = 60.0
#: seconds one cell may take (a load, a start, a signal round trip): generous, a loaded CI box is slow
CELL_TIMEOUT = 60.0
#: a latency at or above this is not slow, it is broken (a missed update the next refresh picked up)
LATENCY_LIMIT_S = 10.0
#: the widget pump refreshes on a fixed period that starts when a handle is displayed, so a signal sent
#: right after the display cell always lands at the same phase of it and every latency comes out the
#: same (period minus the cell round trip). Each signal waits a different fraction of this spread first
#: (golden-ratio steps cover it evenly even for 5 runs), so the runs sample the whole refresh period.
PHASE_SPREAD_S = REFRESH_INTERVAL
GOLDEN = (5**0.5 - 1) / 2


@dataclass(frozen=True)
class Sizes:
    kernels: int
    imports: int
    signals: int


FULL = Sizes(kernels=5, imports=5, signals=20)
QUICK = Sizes(kernels=2, imports=2, signals=5)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise RuntimeError(f"benchmark sanity check failed: {message}")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _as_datetime(value: Any) -> datetime:
    """`header.date` as jupyter_client hands it over (a datetime; a string from older versions)."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))


# -------------------------------------------------------------------------------------------- kernel


@dataclass
class Cell:
    """What one executed cell produced: its reply and its stdout (IOPub messages of that request)."""

    msg_id: str
    reply: dict[str, Any]
    stdout: str
    #: perf_counter() seconds from sending the execute_request to receiving its execute_reply
    round_trip: float


@dataclass
class Update:
    """One widget `comm_msg` update as read from IOPub."""

    comm_id: str
    state: dict[str, Any]
    date: datetime
    received: float


class Kernel:
    """A fresh kernel (`python3` kernelspec, cwd a temporary directory) and a blocking client.

    Every IOPub message read goes through `read`, which keeps the widget models' state (a widget's
    `comm_open` carries its first state, `comm_msg` updates change it: classes added after construction
    arrive as updates), so cells can be awaited one after another without losing widget traffic.
    The kernel's own stdout/stderr go to a file in its directory (shown when something fails), not
    over the benchmark's progress display.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.output_path = directory / "kernel-output.log"
        self._output: IO[bytes] | None = None
        self.manager: Any = None
        self.client: Any = None
        #: widget comm id → merged state
        self.models: dict[str, dict[str, Any]] = {}
        self.updates: list[Update] = []

    def __enter__(self) -> Kernel:
        from jupyter_client.manager import start_new_kernel

        self._output = self.output_path.open("wb")
        try:
            self.manager, self.client = start_new_kernel(
                startup_timeout=STARTUP_TIMEOUT,
                kernel_name=KERNEL_NAME,
                cwd=str(self.directory),
                stdout=self._output,
                stderr=self._output,
            )
        except BaseException:
            self._output.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        try:
            if self.client is not None:
                self.client.stop_channels()
            if self.manager is not None and self.manager.has_kernel:
                self.manager.shutdown_kernel(now=False)
        finally:
            if self._output is not None:
                self._output.close()

    def kernel_output(self) -> str:
        """The kernel process's stdout/stderr so far (for error messages)."""
        try:
            return self.output_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        except OSError:
            return ""

    # ------------------------------------------------------------------------------------- messages

    def read(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        """The next IOPub message (tracking widget state); raise when `deadline` (monotonic) passes."""
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise queue.Empty
            message: dict[str, Any] = self.client.get_iopub_msg(timeout=remaining)
        except queue.Empty:
            alive = self.manager.is_alive()
            raise TimeoutError(
                f"no IOPub message for {waiting_for} within the timeout (kernel alive: {alive}); "
                f"kernel output:\n{self.kernel_output()}"
            ) from None
        kind = message["msg_type"]
        content = message["content"]
        if kind == "comm_open" and content.get("target_name") == "jupyter.widget":
            self.models[content["comm_id"]] = dict(content.get("data", {}).get("state", {}))
        elif kind == "comm_msg" and content.get("data", {}).get("method") == "update":
            state = content["data"].get("state", {})
            self.models.setdefault(content["comm_id"], {}).update(state)
            self.updates.append(
                Update(content["comm_id"], state, _as_datetime(message["header"]["date"]), time.perf_counter())
            )
        return message

    def reply(self, msg_id: str, deadline: float) -> dict[str, Any]:
        """The shell reply to `msg_id` (skipping replies to requests nobody waited for)."""
        while True:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise queue.Empty
                message: dict[str, Any] = self.client.get_shell_msg(timeout=remaining)
            except queue.Empty:
                raise TimeoutError(
                    f"no execute_reply to {msg_id} within the timeout; kernel output:\n{self.kernel_output()}"
                ) from None
            if message["parent_header"].get("msg_id") == msg_id:
                return message

    def execute(
        self,
        code: str,
        *,
        timeout: float = CELL_TIMEOUT,
        until: Callable[[dict[str, Any]], bool] | None = None,
    ) -> Cell:
        """Run `code` and wait for its reply and for the kernel to go idle; raise if the cell failed.

        The reply is read first, so `round_trip` ends when it arrives (IOPub waits in its socket).
        With `until`, also keep reading IOPub (messages of any request) until it returns True for one:
        what the cell started may show up after the cell itself is done.
        """
        deadline = time.monotonic() + timeout
        started = time.perf_counter()
        msg_id: str = self.client.execute(code, store_history=True)
        reply = self.reply(msg_id, deadline)
        round_trip = time.perf_counter() - started
        idle, seen, stdout, errors = False, until is None, [], []
        while not (idle and seen):
            message = self.read(deadline, f"cell {code.splitlines()[0]!r}")
            if not seen and until is not None and until(message):
                seen = True
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind == "stream" and content.get("name") == "stdout":
                stdout.append(content["text"])
            elif kind == "error":
                errors.append(_ANSI.sub("", "\n".join(content.get("traceback", [])))[-2000:])
            elif kind == "status" and content.get("execution_state") == "idle":
                idle = True
        content = reply["content"]
        if content.get("status") != "ok" or errors:
            detail = "\n".join(errors) or f"{content.get('ename')}: {content.get('evalue')}"
            raise RuntimeError(f"cell failed in the kernel:\n{code}\n---\n{detail}")
        return Cell(msg_id, reply, "".join(stdout), round_trip)


# --------------------------------------------------------------------------------------- kernel_load


#: the load, timed inside the cell too (the rest of the cell costs microseconds)
LOAD_CELL = (
    "import time as _bench_time\n"
    "_bench_t0 = _bench_time.perf_counter()\n"
    "%load_ext eventual_nb\n"
    "_bench_load_s = _bench_time.perf_counter() - _bench_t0"
)

IMPORT_SCRIPT = "import time; t = time.perf_counter(); import eventual_nb; print(time.perf_counter() - t)"


@dataclass
class LoadRun:
    client_seconds: float
    kernel_seconds: float
    status: str = field(repr=False)


def load_once() -> LoadRun:
    """Start a fresh kernel in a new temporary directory, load the extension, check `%eventual status`."""
    with tempfile.TemporaryDirectory(prefix="eventual-bench-kernel-") as directory, Kernel(Path(directory)) as kernel:
        load = kernel.execute(LOAD_CELL)
        status = kernel.execute("print(repr(_bench_load_s))\n%eventual status").stdout
        first, _, rest = status.partition("\n")
        runtime_lines = [line for line in rest.splitlines() if line.startswith("runtime")]
        _check(
            bool(runtime_lines) and "LocalRuntime" in runtime_lines[0],
            f"`%eventual status` after `%load_ext eventual_nb` shows no LocalRuntime line:\n{rest}",
        )
        return LoadRun(load.round_trip, float(first), rest)


def import_seconds() -> float:
    """`import eventual_nb` in a fresh interpreter of this environment, timed inside that interpreter."""
    completed = subprocess.run(
        [sys.executable, "-c", IMPORT_SCRIPT], capture_output=True, text=True, timeout=CELL_TIMEOUT, check=False
    )
    _check(completed.returncode == 0, f"`import eventual_nb` failed in a fresh interpreter:\n{completed.stderr}")
    return float(completed.stdout.strip().splitlines()[-1])


def kernel_load(sizes: Sizes, progress: Callable[[str], None]) -> Result:
    runs: list[LoadRun] = []
    for index in range(sizes.kernels):
        progress(f"kernel_load (kernel {index + 1}/{sizes.kernels})")
        runs.append(load_once())
    imports = [import_seconds() for _ in range(sizes.imports)]
    client = [run.client_seconds for run in runs]
    inside = [run.kernel_seconds for run in runs]
    _check(all(0 < k <= c for k, c in zip(inside, client, strict=True)), f"kernel-side {inside} vs client {client}")
    result = Result(
        key="kernel_load",
        title="%load_ext eventual_nb in a fresh kernel",
        params={"kernels": sizes.kernels, "imports": sizes.imports},
        info={"kernel": KERNEL_NAME, "status": runs[-1].status.strip()},
    )
    median, worst = statistics.median(client), max(client)
    result.add(
        "median_seconds",
        f"execute_request → reply (median of {len(client)})",
        median,
        "s",
        target="< 1 s",
        met=median < 1,
    )
    result.add("max_seconds", "execute_request → reply (max)", worst, "s", target="< 1 s", met=worst < 1)
    result.add("kernel_median_seconds", "inside the cell (median)", statistics.median(inside), "s")
    result.add("kernel_max_seconds", "inside the cell (max)", max(inside), "s")
    import_median = statistics.median(imports)
    result.add(
        "import_median_seconds",
        f"import eventual_nb, fresh python -c, over its start-up (median of {len(imports)})",
        import_median,
        "s",
        target="≤ 0.15 s",
        met=import_median <= 0.15,
    )
    return result


# ------------------------------------------------------------------------------------ widget_latency


SETUP_CELLS = [
    "%load_ext eventual_nb\nfrom pydantic import BaseModel\nimport json as _bench_json\nhs = []",
    "%eventual service eventual-nb-benchmarks-kernel",
    "%%activity\nasync def bench_touch(i: int) -> int:\n    return i",
    "%%signal\nclass Go(BaseModel):\n    ok: bool = True",
    (
        "%%workflow --timeout 1h\n"
        "async def bench_wait_go(i: int) -> int:\n"
        "    await Go.expect()\n"
        "    return await bench_touch(i)"
    ),
]
HISTORY_CELL = (
    "print(_bench_json.dumps({_h.id: {'status': (await _h.status()).status.value, 'events': "
    "[[e.type, e.timestamp.isoformat()] for e in await _h.history()]} for _h in hs}))"
)


def _model_id(reference: Any) -> str:
    """`IPY_MODEL_<comm id>` (how a container's state names its children) → the comm id."""
    return str(reference).removeprefix("IPY_MODEL_")


def find_status_widget(kernel: Kernel, execution_id: str, known: set[str]) -> str:
    """The comm id of the status HTML of the execution widget displayed for `execution_id`.

    The root VBox carries `eventual-execution`; its first row holds the title (the execution id) and
    the status HTML (`eventual-status`). Roots seen for earlier executions (`known`) are skipped.
    """
    roots = [
        comm_id
        for comm_id, state in kernel.models.items()
        if comm_id not in known and "eventual-execution" in state.get("_dom_classes", [])
    ]
    _check(len(roots) == 1, f"expected one new execution widget for {execution_id}, found {len(roots)}")
    known.add(roots[0])
    found: list[str] = []
    titles: list[str] = []

    def walk(comm_id: str) -> None:
        state = kernel.models.get(comm_id, {})
        classes = state.get("_dom_classes", [])
        if "eventual-status" in classes:
            found.append(comm_id)
        elif state.get("_model_name") == "HTMLModel":
            titles.append(str(state.get("value", "")))
        for child in state.get("children", []):
            walk(_model_id(child))

    walk(roots[0])
    _check(len(found) == 1, f"the widget of {execution_id} has {len(found)} status widgets")
    _check(any(execution_id in title for title in titles), f"the new widget does not show {execution_id}: {titles}")
    return found[0]


@dataclass
class Shown:
    """One execution: when its widget showed SUCCEEDED (kernel clock, and client perf_counter)."""

    execution_id: str
    shown_at: datetime
    received: float
    sent: float


def signal_and_watch(kernel: Kernel, index: int, known: set[str], delay: float = 0.0) -> Shown:
    """Start and display execution `index`, then (`delay` seconds later) signal it from another cell and
    watch its status widget."""
    started = kernel.execute(f"h = await bench_wait_go.start({index})\nhs.append(h)\nprint(h.id)\nh")
    execution_id = started.stdout.strip().splitlines()[-1]
    status_comm = find_status_widget(kernel, execution_id, known)
    shown: list[Update] = []

    def succeeded(message: dict[str, Any]) -> bool:
        content = message["content"]
        if message["msg_type"] != "comm_msg" or content.get("comm_id") != status_comm:
            return False
        data = content.get("data", {})
        if data.get("method") != "update" or "SUCCEEDED" not in str(data.get("state", {}).get("value", "")):
            return False
        shown.append(kernel.updates[-1])
        return True

    time.sleep(delay)
    sent = time.perf_counter()
    kernel.execute("await Go.send(h, Go())", until=succeeded)
    return Shown(execution_id, shown[0].date, shown[0].received, sent)


def widget_latency(sizes: Sizes, progress: Callable[[str], None]) -> Result:
    progress("widget_latency (starting a kernel)")
    with tempfile.TemporaryDirectory(prefix="eventual-bench-widgets-") as directory, Kernel(Path(directory)) as kernel:
        for cell in SETUP_CELLS:
            kernel.execute(cell)
        known: set[str] = set()
        warm_up = signal_and_watch(kernel, 0, known)
        shown: list[Shown] = []
        for index in range(1, sizes.signals + 1):
            progress(f"widget_latency ({index}/{sizes.signals})")
            shown.append(signal_and_watch(kernel, index, known, (index * GOLDEN) % 1 * PHASE_SPREAD_S))
        report = json.loads(kernel.execute(HISTORY_CELL).stdout.strip().splitlines()[-1])
    not_succeeded = {key: value["status"] for key, value in report.items() if value["status"] != "SUCCEEDED"}
    _check(not not_succeeded, f"executions that did not succeed: {not_succeeded}")
    _check(len(report) == sizes.signals + 1, f"expected {sizes.signals + 1} executions, the kernel has {len(report)}")
    latencies: list[float] = []
    for run in shown:
        ends = [stamp for kind, stamp in report[run.execution_id]["events"] if kind == "WorkflowSucceeded"]
        _check(len(ends) == 1, f"{run.execution_id} has {len(ends)} WorkflowSucceeded events")
        latency = (run.shown_at - datetime.fromisoformat(ends[0])).total_seconds()
        _check(
            0 <= latency < LATENCY_LIMIT_S,
            f"{run.execution_id}: WorkflowSucceeded at {ends[0]}, widget showed SUCCEEDED at "
            f"{run.shown_at.isoformat()} ({latency:+.3f} s)",
        )
        latencies.append(latency)
    round_trips = [run.received - run.sent for run in shown]
    result = Result(
        key="widget_latency",
        title="history event → widget update",
        params={"executions": sizes.signals, "warm_up": 1, "signal_delay_spread_ms": PHASE_SPREAD_S * 1000},
        info={"kernel": KERNEL_NAME, "warm_up_execution": warm_up.execution_id},
    )
    p50 = percentile(latencies, 0.5) * 1000
    result.add(
        "p50_ms", f"WorkflowSucceeded → comm_msg, p50 of {len(latencies)}", p50, "ms", target="< 250 ms", met=p50 < 250
    )
    result.add("p90_ms", "WorkflowSucceeded → comm_msg, p90", percentile(latencies, 0.9) * 1000, "ms")
    result.add("max_ms", "WorkflowSucceeded → comm_msg, max", max(latencies) * 1000, "ms")
    result.add(
        "signal_to_shown_p50_ms",
        "signal cell sent → SUCCEEDED received (client), p50",
        percentile(round_trips, 0.5) * 1000,
        "ms",
    )
    return result


# -------------------------------------------------------------------------------------------- runner

RUNNERS: dict[str, Callable[[Sizes, Callable[[str], None]], Result]] = {
    "kernel_load": kernel_load,
    "widget_latency": widget_latency,
}


def run(quick: bool, names: list[str], progress: Callable[[str], None] | None = None) -> list[Result]:
    """Run the named kernel benchmarks (in `BENCHMARKS` order); each starts and stops its own kernels."""
    sizes = QUICK if quick else FULL
    report = progress or (lambda _key: None)
    results = []
    for key in BENCHMARKS:
        if key in names:
            report(key)
            results.append(RUNNERS[key](sizes, report))
    return results
