"""`python -m benchmarks --quick --json PATH` runs end to end and reports the engine's behavioural facts.

The benchmarks are not tests of speed (timings are never asserted, DESIGN §8), but the facts they rest
on are checked here: every benchmark produced numbers, cached instances never replay from scratch,
replay-every-step replays once per step, and the daily-timer workflow ends exactly N virtual days
after its start.
"""

from __future__ import annotations

import json
import numbers
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

import eventual_nb as ev

SERVICE = ev.Service("test-benchmarks-smoke")

ROOT = Path(__file__).resolve().parent.parent
EXPECTED = {"daily_timers", "replay_history", "cached_instances", "always_replay"}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    path = tmp_path_factory.mktemp("bench") / "quick.json"
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert completed.returncode == 0, f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
    assert "Python" in completed.stdout and "Machine" in completed.stdout and "Date" in completed.stdout
    return json.loads(path.read_text(encoding="utf-8"))


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def test_every_benchmark_reports_numbers(report: dict) -> None:
    assert report["quick"] is True
    assert set(report["benchmarks"]) == EXPECTED
    for key, bench in report["benchmarks"].items():
        assert bench["results"], f"{key} reported nothing"
        for name, value in bench["results"].items():
            assert _is_number(value), f"{key}.{name} is not a number: {value!r}"
            assert value >= 0, f"{key}.{name} is negative: {value!r}"
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
