"""Test plumbing that keeps CI honest.

* With CI=true a skipped test fails: a test that never ran is not a passing test.
* Browser tests (`@pytest.mark.browser`) need Debian's Chromium at /usr/bin/chromium, which `make test`
  installs when it is missing and apt-get is usable (.ci/chromium). Where it cannot be had they do not
  run, and the run ends with a "browser tests not run" section naming each of them and why (with
  CI=true they fail instead, like every skip): a machine without a browser still tests everything else,
  and nobody mistakes that for a run that checked the notebook in a browser.
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
import shutil
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
    config.addinivalue_line("markers", "browser: drives JupyterLab in Debian's Chromium (/usr/bin/chromium)")


#: browser tests this run could not run (no Chromium), named at the end of the run
_browser_not_run: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    browser = [item for item in items if item.get_closest_marker("browser") is not None]
    if not browser:
        return
    from tests.jupyter_lab import CHROMIUM

    if shutil.which(CHROMIUM) is not None:
        return
    reason = (
        f"no {CHROMIUM}: install Debian's `chromium` package (`make test` does when apt-get is usable, "
        "as root or with passwordless sudo)"
    )
    for item in browser:
        item.add_marker(pytest.mark.skip(reason=reason))
    _browser_not_run[:] = [reason, *(item.nodeid for item in browser)]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _browser_not_run:
        reason, *names = _browser_not_run
        terminalreporter.section(f"browser tests not run ({len(names)})", yellow=True)
        terminalreporter.line(reason)
        for name in names:
            terminalreporter.line(f"  {name}")


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
