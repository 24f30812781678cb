"""Test plumbing that keeps CI honest.

* With CI=true a skipped test fails: a test that never ran is not a passing test.
* Hypothesis runs without deadlines (timings belong in benchmarks/, never in tests).
* Every history a TestEnvironment produced is replayed through `ev.testing.replay` against the
  current workflow definition when the environment closes; a divergence fails the test. So a
  TestEnvironment that bypassed the engine, or an engine that replays differently than it runs,
  cannot pass. Tests that change workflow code on purpose opt out with `@pytest.mark.no_replay_check`.
* A module that defines `SERVICE = ev.Service("...")` gets it made current before each of its tests,
  so workflows defined inside test functions land in that module's service.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

import eventual_nb as ev
from eventual_nb.runtime.base import ExecutionStatus
from eventual_nb.testing import TestEnvironment

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

settings.register_profile(
    "ci", deadline=None, print_blob=True, derandomize=False, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if IN_CI else os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "no_replay_check: the test changes workflow code on purpose")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (CI=true turns skips into failures): {report.longrepr}"


_divergences: list[str] = []
_replayed: list[int] = [0]


def _replay_histories(env: TestEnvironment) -> None:
    for execution_id in env.executions():
        state = env._executions[execution_id]
        if state.blocked is not None:
            continue  # the runtime already reported it; the test asserts on it
        try:
            definition = env.workflow_definition(state.workflow)
        except ev.EventualError:
            continue
        try:
            commands = ev.testing.replay(definition, env.history_of(execution_id), execution_id=execution_id)
        except Exception as exc:  # noqa: BLE001 - report whatever the replay raised
            _divergences.append(f"{execution_id}: {type(exc).__name__}: {exc}")
            continue
        _replayed[0] += 1
        if state.status != ExecutionStatus.IN_PROGRESS and commands:
            _divergences.append(f"{execution_id}: replay of an ended execution issued commands {commands}")


TestEnvironment.observers.append(_replay_histories)


@pytest.fixture(autouse=True)
def _replay_check(request: pytest.FixtureRequest) -> Iterator[None]:
    _divergences.clear()
    yield
    if request.node.get_closest_marker("no_replay_check") is None and _divergences:
        found = "\n".join(_divergences)
        _divergences.clear()
        pytest.fail(f"replaying recorded histories diverged:\n{found}")
    _divergences.clear()


@pytest.fixture(autouse=True)
def _module_service(request: pytest.FixtureRequest) -> None:
    service = getattr(request.module, "SERVICE", None)
    if isinstance(service, ev.Service):
        ev.Service(service.name)
