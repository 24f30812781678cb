"""`python -m benchmarks --quick --json PATH` runs end to end and reports the behavioural facts.

The benchmarks are not tests of speed (timings are never asserted), but the facts they rest
on are checked here: every benchmark produced numbers, cached instances never replay from scratch,
replay-every-step replays once per step, the daily-timer workflow ends exactly N virtual days after
its start, LocalRuntime group-commits concurrent work, commits once per workflow step, runs in WAL with
synchronous=FULL, keeps no completed execution in memory and runs batches beside executions waiting on a
far timer (kept only in the database), DBOS is either measured (when it is installed) or reported as "not installed" without failing the run (CI has only the `dev` extra), the
kernel extension loads the LocalRuntime in a real kernel whose execution widgets show each result, the
schedules benchmark ran every fire once and its scheduler never woke to find nothing due, and
the AWS benchmark (moto on 127.0.0.1, in its own process) counts requests consistent with the turns the
orchestrator took: one commit per turn, one activity invocation per step, no replay when warm and one
per step when cold. The entity benchmarks commit every lone write on its own and group concurrent ones
on the LocalRuntime, and on AWS make one DynamoDB request per operation (the tutorial's debit three),
a transaction of two writes costing 4 write units. The bus benchmark delivers every event it publishes
from one process to the other exactly once. The scale benchmarks report each figure at three sizes:
executions waiting on timers and signals never wake the scheduler while nothing is due and their timers
never fire early, a filtered listing is read in index order (no sort of the matching rows), and new work
ran beside every level of waiting executions.
"""

from __future__ import annotations

import json
import numbers
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

import eventual_nb as ev

SERVICE = ev.Service("test-benchmarks-smoke")

ROOT = Path(__file__).resolve().parent.parent
ENGINE = {"daily_timers", "replay_history", "cached_instances", "always_replay"}
LOCAL = {"local_throughput", "local_latency", "local_memory", "local_in_flight"}
KERNEL = {"kernel_load", "widget_latency"}
AWS = {"aws", "aws_timer_signal"}
TIMELINE = {"timeline"}
SCHEDULES = {"local_schedules"}
ENTITIES = {"entities_local", "entities_aws"}
#: {size column: {metric: value}}, one column per size
SCALE = {"scale_waiting", "scale_listing", "scale_history", "scale_http", "scale_work_while_waiting"}
BUS = {"bus_local"}
EXPECTED = ENGINE | LOCAL | KERNEL | AWS | TIMELINE | SCHEDULES | ENTITIES | SCALE | BUS
#: benchmarks that report {system: {metric: value}}, and the system every run must have measured
COMPARED = {**{key: "local" for key in LOCAL}, "aws": "warm"}


def dbos_importable() -> bool:
    """What the benchmark workers see: `import dbos` in a fresh interpreter of this venv."""
    return subprocess.run([sys.executable, "-c", "import dbos"], capture_output=True, timeout=60).returncode == 0


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    path = tmp_path_factory.mktemp("bench") / "quick.json"
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
    assert "Python" in completed.stdout
    assert "Machine" in completed.stdout
    assert "Date" in completed.stdout
    return json.loads(path.read_text(encoding="utf-8"))


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def test_every_benchmark_reports_numbers(report: dict) -> None:
    assert report["quick"] is True
    assert set(report["benchmarks"]) == EXPECTED
    for key, bench in report["benchmarks"].items():
        assert bench["results"], f"{key} reported nothing"
        # engine benchmarks report one system's numbers; comparisons report {system: {metric: value}}
        main = next(iter(bench["systems"])) if key in SCALE else COMPARED.get(key, "engine")
        per_system = bench["results"] if key in COMPARED or key in SCALE else {main: bench["results"]}
        assert per_system.get(main), f"{key} has no numbers of its main system"
        for system, values in per_system.items():
            for name, value in values.items():
                assert _is_number(value), f"{key}.{system}.{name} is not a number: {value!r}"
                assert value >= 0, f"{key}.{system}.{name} is negative: {value!r}"
    for field in ("python", "platform", "date"):
        assert report["environment"][field]


def test_daily_timers_end_exactly_n_virtual_days_after_start(report: dict) -> None:
    timers = report["benchmarks"]["daily_timers"]
    days = timers["params"]["days"]
    start = datetime.fromisoformat(timers["info"]["start"])
    end = datetime.fromisoformat(timers["info"]["virtual_end"])
    assert end == start + timedelta(days=days)
    assert timers["results"]["virtual_days"] == days
    # WorkflowStarted + (TimerScheduled, TimerCompleted, ActivityScheduled, ActivitySucceeded) per day + end
    assert timers["results"]["history_events"] == 4 * days + 2
    assert timers["results"]["replays"] == 0


def test_replay_benchmark_replayed_the_whole_history(report: dict) -> None:
    replay = report["benchmarks"]["replay_history"]
    calls = replay["params"]["activity_calls"]
    assert replay["results"]["history_events"] == 2 * calls + 2
    assert replay["results"]["best_seconds"] > 0


def test_cached_instances_never_replay(report: dict) -> None:
    cached = report["benchmarks"]["cached_instances"]
    assert cached["results"]["replays"] == 0
    assert cached["results"]["engine_replayed_events"] == 0
    assert cached["results"]["env_steps_large"] == cached["params"]["large_steps"] + 1


def test_always_replay_replays_every_step_after_the_first(report: dict) -> None:
    always = report["benchmarks"]["always_replay"]
    steps = always["params"]["steps"]
    assert always["results"]["cached_replays"] == 0
    assert always["results"]["always_replays"] == steps
    assert always["results"]["engine_cached_replayed_events"] == 0
    # step k (k = 1..steps) replays the k-1 earlier answers plus WorkflowStarted: O(n²) in total
    assert always["results"]["engine_always_replayed_events"] == steps * (steps + 1) // 2


def test_local_throughput_ran_every_workflow_with_group_commit(report: dict) -> None:
    """200 concurrent workflows must share transactions: fewer commits than workflow steps."""
    bench = report["benchmarks"]["local_throughput"]
    workflows, steps = bench["params"]["workflows"], bench["params"]["steps"]
    local = bench["results"]["local"]
    # one step to start each execution, then one per activity result (the last one ends it)
    assert local["workflow_steps"] == workflows * (steps + 1)
    assert 1 <= local["commits"] < local["workflow_steps"]
    assert local["steps_per_commit"] == pytest.approx(workflows * steps / local["commits"])
    assert local["replays"] == 0
    assert local["cached_executors"] == 0
    assert local["steps_per_second"] > 0


def test_local_latency_commits_once_per_workflow_step(report: dict) -> None:
    """Run alone, a 10-step workflow needs exactly one durable commit per step: the start (with its first
    step) and each activity result (with the step it wakes). Fewer would carry out commands before their
    history is durable; more means an extra fsync on every step (for example one round to record the
    activity's first attempt after the round that scheduled it)."""
    bench = report["benchmarks"]["local_latency"]
    steps = bench["params"]["steps"]
    local = bench["results"]["local"]
    assert local["commits_per_run"] == steps + 1
    assert 0 < local["min_ms"] <= local["p50_ms"] <= local["p90_ms"]
    assert local["p50_ms_normal"] > 0


def test_local_runtime_runs_in_wal_with_synchronous_full(report: dict) -> None:
    """The comparison claims equal durability: LocalRuntime's own connection must report WAL + FULL."""
    for key in ("local_throughput", "local_latency"):
        info = report["benchmarks"][key]["info"]
        assert info["local_settings"] == "journal_mode=wal, synchronous=FULL"
        assert float(info["fsync_commit_ms_wal"]) > 0
    assert report["benchmarks"]["local_latency"]["info"]["local_normal_settings"] == (
        "journal_mode=wal, synchronous=NORMAL"
    )


def test_local_memory_keeps_no_completed_execution_in_memory(report: dict) -> None:
    bench = report["benchmarks"]["local_memory"]
    local = bench["results"]["local"]
    assert local["stored"] == bench["params"]["executions"] + 1  # and the warm-up execution
    assert local["cached_executors"] == 0
    assert local["waiters"] == 0
    assert 0 < local["rss_before_mb"] <= local["peak_rss_mb"]
    assert 0 < local["rss_mb"] <= local["peak_rss_mb"]
    assert local["database_mb"] > 0


def test_local_in_flight_ran_every_batch_beside_the_waiting_executions(report: dict) -> None:
    bench = report["benchmarks"]["local_in_flight"]
    local = bench["results"]["local"]
    assert bench["params"]["waiting"] > 0
    assert bench["params"]["batches"] >= 2
    assert local["alone_per_second"] > 0
    assert local["beside_per_second"] > 0
    assert local["slowdown"] > 0
    assert local["cached_executors"] == 0  # sleepers an hour away are not kept: replayed when their timer fires


def test_kernel_benchmarks_load_the_runtime_and_see_every_widget_update(report: dict) -> None:
    """Real kernels: `%load_ext` brought up a LocalRuntime, and every signalled execution's widget showed
    SUCCEEDED after its WorkflowSucceeded event (the benchmark raises otherwise); numbers are consistent,
    never judged against their targets."""
    load = report["benchmarks"]["kernel_load"]
    assert load["params"] == {"kernels": 2, "imports": 2}
    assert set(load["results"]) == {
        "median_seconds",
        "max_seconds",
        "kernel_median_seconds",
        "kernel_max_seconds",
        "import_median_seconds",
    }
    times = load["results"]
    # inside the cell is part of the round trip, run by run, so also for the median and the max
    assert 0 < times["kernel_median_seconds"] <= times["median_seconds"] <= times["max_seconds"]
    assert 0 < times["kernel_max_seconds"] <= times["max_seconds"]
    assert times["import_median_seconds"] > 0
    assert "LocalRuntime" in load["info"]["status"]
    assert set(load["targets"]) == {"median_seconds", "max_seconds", "import_median_seconds"}

    widgets = report["benchmarks"]["widget_latency"]
    assert widgets["params"]["executions"] == 5
    assert set(widgets["results"]) == {"p50_ms", "p90_ms", "max_ms", "signal_to_shown_p50_ms"}
    latency = widgets["results"]
    assert 0 <= latency["p50_ms"] <= latency["p90_ms"] <= latency["max_ms"] < 10_000
    assert latency["signal_to_shown_p50_ms"] > 0
    assert widgets["targets"] == {"p50_ms": "< 250 ms"}


def test_dbos_is_measured_exactly_when_installed(report: dict) -> None:
    """DBOS columns hold numbers when `dbos` is importable and read "not installed" otherwise."""
    installed = dbos_importable()
    for key in ("local_throughput", "local_latency"):
        bench = report["benchmarks"][key]
        dbos_systems = [system for system in bench["systems"] if system != "local"]
        assert dbos_systems, f"{key} compares against no DBOS configuration"
        for system in dbos_systems:
            if installed:
                assert system not in bench["unavailable"]
                measured = bench["results"][system]
                assert measured["steps_per_second" if key == "local_throughput" else "p50_ms"] > 0
                assert bench["info"][f"{system}_settings"].endswith("synchronous=FULL")
            else:
                assert bench["unavailable"][system] == "not installed"
                assert bench["results"][system] == {}
    if installed:
        throughput = report["benchmarks"]["local_throughput"]
        local_rate = throughput["results"]["local"]["steps_per_second"]
        dbos_rate = throughput["results"]["dbos"]["steps_per_second"]
        assert throughput["results"]["dbos"]["speedup"] == pytest.approx(local_rate / dbos_rate)
        assert throughput["info"]["dbos_settings"] == "journal_mode=delete, synchronous=FULL"


def test_missing_dbos_is_reported_not_fatal(tmp_path: Path) -> None:
    """With `import dbos` failing (a shadowing module), the run still succeeds and says so."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "dbos.py").write_text('raise ImportError("dbos hidden by the benchmark smoke test")\n')
    path = tmp_path / "latency.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow), os.environ.get("PYTHONPATH", "")])}
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "local_latency", "--json", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=200,
        env=env,
    )
    assert completed.returncode == 0, f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
    assert "not installed" in completed.stdout
    bench = json.loads(path.read_text(encoding="utf-8"))["benchmarks"]
    assert set(bench) == {"local_latency"}
    assert bench["local_latency"]["unavailable"] == {"dbos": "not installed"}
    assert bench["local_latency"]["results"]["local"]["p50_ms"] > 0


def test_aws_costs_are_counted_and_add_up(report: dict) -> None:
    """Every step was billed for requests; the services' parts add up to the total, warm and cold."""
    bench = report["benchmarks"]["aws"]
    assert set(bench["systems"]) == {"warm", "cold", "inline"}
    assert bench["unavailable"] == {}
    assert bench["targets"]["usd_per_million_steps"] == "≤ $5 queued (warm), ≤ $1.5 inline"
    assert set(bench["params"]["memory_mb"]) >= {"orchestrator", "activity", "timer", "schedule"}
    for system in ("warm", "cold"):
        found = bench["results"][system]
        total = found["usd_per_million_steps"]
        parts = sum(
            value
            for key, value in found.items()
            if key.startswith("usd_")
            and key
            not in {"usd_per_million_steps", "usd_per_million_steps_moto_durations", "usd_without_activity_lambda"}
        )
        assert total > 0
        assert parts == pytest.approx(total)
        for service in ("dynamodb", "sqs", "lambda", "cloudwatch_logs"):
            assert found[f"usd_{service}"] > 0, f"{system}: nothing billed for {service}"
        assert 0 < found["usd_without_activity_lambda"] < total
        assert found["step_functions_ratio"] == pytest.approx(25 / total)
        assert found["requests_per_step"] > 0
        assert found["wru_per_step"] > 0
        assert found["rru_per_step"] > 0
        # each step is one activity attempt: one invocation, one claim, one outcome
        assert found["activity_invocations_per_step"] == 1
        assert found["requests_dynamodb.PutItem"] > 1  # claims, plus the records the client wrote
        # a turn commits once (one conditional PutItem, no transaction); a cold turn reads its history once
        # (the histories fit in one page), a warm one reads nothing after the first turn of an execution
        turns = found["turns"]
        steps = bench["params"]["steps"]
        assert turns == pytest.approx((steps + 1) / steps)
        assert "requests_dynamodb.TransactWriteItems" not in found
        assert found["requests_dynamodb.PutItem"] > turns
        reads = turns if system == "cold" else 1 / steps
        assert found["history_queries"] == pytest.approx(reads)
        assert found["orchestrator_invocations_per_step"] <= turns
        assert found["orchestrator_modelled_ms"] > 0
        assert found["activity_measured_ms"] > 0


def test_aws_inline_steps_run_in_the_orchestrator_and_add_up(report: dict) -> None:
    """Inline activities take no activity invocation, no claim and no attempt message: one turn item per step,
    and sequential steps share orchestrator invocations."""
    bench = report["benchmarks"]["aws"]
    found = bench["results"]["inline"]
    parts = sum(
        value
        for key, value in found.items()
        if key.startswith("usd_")
        and key not in {"usd_per_million_steps", "usd_per_million_steps_moto_durations", "usd_without_activity_lambda"}
    )
    assert found["usd_per_million_steps"] > 0
    assert parts == pytest.approx(found["usd_per_million_steps"])
    assert found["activity_invocations_per_step"] == 0
    assert found["requests_dynamodb.PutItem"] < bench["results"]["warm"]["requests_dynamodb.PutItem"]
    assert found["orchestrator_invocations_per_step"] < found["turns"]
    assert found["usd_per_million_steps"] < bench["results"]["warm"]["usd_per_million_steps"]


def test_aws_warm_orchestrator_never_replays_and_cold_replays_every_step(report: dict) -> None:
    results = report["benchmarks"]["aws"]["results"]
    assert results["warm"]["replays"] == 0
    assert results["warm"]["warm_hits"] == 1  # every turn after the first of an execution
    assert results["cold"]["warm_hits"] == 0
    assert results["cold"]["replays"] == 1
    # a cold turn reads the whole history: more read units than a warm one reading just the head
    assert results["cold"]["rru_per_step"] >= results["warm"]["rru_per_step"]


def test_aws_timer_signal_execution_uses_the_scheduler_once(report: dict) -> None:
    bench = report["benchmarks"]["aws_timer_signal"]
    results = bench["results"]
    assert results["scheduler_invocations"] == 1
    assert results["history_events"] == 9  # started, activity ×2, two timers ×2, signal, succeeded
    assert results["replays"] == 0
    assert results["orchestrator_turns"] == 5
    assert results["requests"] > 0
    assert results["usd_per_million_executions"] > 0
    assert results["usd_scheduler"] == pytest.approx(1.0)  # one invocation at $1 per million
    # the log stream is created once, by the first write that finds it missing (which it then writes again)
    assert "logs.CreateLogStream 1" in bench["info"]["requests"]
    assert "logs.PutLogEvents 2" in bench["info"]["requests"]


def test_local_schedules_ran_every_fire_once_without_idle_wakeups(report: dict) -> None:
    """Every schedule fired once a simulated minute (the benchmark checks each execution exists once), and the
    scheduler slept between fires: it never woke to find nothing to do, during the hour or while nothing was
    due (its next fires a simulated minute away and the clock still)."""
    bench = report["benchmarks"]["local_schedules"]
    params, results = bench["params"], bench["results"]
    assert results["fires"] == params["schedules"] * params["minutes"]
    assert results["cpu_ms_per_fire"] > 0
    assert results["wall_seconds_per_minute"] > 0
    assert results["idle_wakeups_per_minute"] == 0
    assert results["quiet_idle_wakeups_per_minute"] == 0
    assert results["quiet_wakeups"] == 0
    assert 0 < results["commits_per_minute"]


def test_entity_writes_commit_alone_or_grouped_on_the_local_runtime(report: dict) -> None:
    local = report["benchmarks"]["entities_local"]["results"]
    assert local["commits_per_put"] >= 1  # a lone caller's every write waited for its own fsynced commit
    assert local["commits_per_put_concurrent"] < 1  # concurrent writes shared commits
    for key in ("put_per_s", "get_per_s", "transact_per_s", "put_concurrent_per_s", "debit_concurrent_per_s"):
        assert local[key] > 0, key


def test_entity_operations_on_aws_take_one_request_each(report: dict) -> None:
    aws = report["benchmarks"]["entities_aws"]["results"]
    for name in ("create", "get", "put_versioned", "put_unconditional", "conflict", "transact_2", "query_10"):
        assert aws[f"{name}_requests"] == 1, name
    assert aws["debit_requests"] == 3  # get the account, get the marker, one transaction
    assert (aws["get_rru"], aws["get_wru"]) == (1, 0)  # strongly consistent, under 4 KB
    assert (aws["create_wru"], aws["conflict_wru"]) == (1, 1)  # a refused conditional write is billed too
    assert aws["transact_2_wru"] == 4  # two items, each twice in a transaction
    assert aws["debit_usd_per_million"] > aws["transact_2_usd_per_million"] > aws["create_usd_per_million"]


def test_the_step_profiler_runs_the_workflow_and_prints_its_top_frames() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.profile_step", "--runs", "3", "--steps", "2", "--top", "5"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "3 runs × 2 steps on LocalRuntime" in completed.stdout
    assert "µs per step" in completed.stdout
    assert "ncalls" in completed.stdout


def _columns(bench: dict, sizes: list[int]) -> list[dict]:
    """The results of a scale benchmark, one dict per size (in order), each size measured."""
    assert len(sizes) == 3, "a curve has three sizes"
    assert list(bench["systems"]) == [f"n{size}" for size in sizes]
    return [bench["results"][f"n{size}"] for size in sizes]


def test_scale_waiting_executions_sleep_until_due_and_no_timer_fires_early(report: dict) -> None:
    """With every timer ahead, the scheduler did not wake once in the idle window (no polling), whatever the
    number in flight; each timer fired at or after its deadline (the benchmark checks every one)."""
    bench = report["benchmarks"]["scale_waiting"]
    for size, found in zip(bench["params"]["executions"], _columns(bench, bench["params"]["executions"]), strict=True):
        assert found["idle_wakeups"] == 0, size
        assert 0 <= found["late_p50_ms"] <= found["late_p99_ms"] <= found["late_max_ms"], size
        assert found["rss_mb"] > 0
        assert 0 < found["cached_executors"] <= size


def test_scale_listing_reads_a_status_in_index_order(report: dict) -> None:
    """Listing by workflow and one status (either order) walks the index in the order of the page: no sort of
    every matching row, so the page costs the same however many are stored (the benchmark fails outright
    when a listing scans the table instead of searching an index)."""
    bench = report["benchmarks"]["scale_listing"]
    for found in _columns(bench, bench["params"]["executions"]):
        assert found["one_status_sorts"] == 0
        assert found["newest_first_sorts"] == 0
        for name in ("one_status", "two_statuses", "newest_first", "workflow_only"):
            assert found[f"{name}_p50_ms"] > 0
        assert found["created_per_second"] > 0
    assert all(plan.startswith("SEARCH executions USING") for plan in bench["info"].values())


def test_scale_history_and_http_report_each_size(report: dict) -> None:
    history = report["benchmarks"]["scale_history"]
    for found in _columns(history, history["params"]["events"]):
        assert found["replay_seconds"] > 0
        assert found["us_per_event"] > 0
        assert found["history_mb"] > 0
    burst = report["benchmarks"]["scale_http"]
    for found in _columns(burst, burst["params"]["burst"]):
        assert found["starts_per_second"] > 0
        assert 0 < found["ack_p50_ms"] <= found["ack_p99_ms"]


def test_scale_work_ran_beside_every_level_of_waiting_executions(report: dict) -> None:
    bench = report["benchmarks"]["scale_work_while_waiting"]
    levels = bench["params"]["waiting"]
    assert levels[0] == 0
    columns = _columns(bench, levels)
    assert columns[0]["cpu_ratio"] == pytest.approx(1.0)
    for size, found in zip(levels[1:], columns[1:], strict=True):
        assert found["per_cpu_second"] > 0
        assert found["cpu_ratio"] == pytest.approx(columns[0]["per_cpu_second"] / found["per_cpu_second"])
        assert found["cached_executors"] == 0, size  # an hour away: replayed when due, not kept


def test_the_bus_benchmark_delivered_every_event_across_processes(report: dict) -> None:
    bench = report["benchmarks"]["bus_local"]
    events = bench["params"]["latency_events"] + bench["params"]["throughput_events"]
    assert bench["results"]["delivered"] == events  # the benchmark's own check: each once, none lost
    for key in ("latency_p50_ms", "latency_p99_ms", "events_per_s", "idle_cpu_percent"):
        assert bench["results"][key] >= 0, key
