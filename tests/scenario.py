"""Shared harness for behaviour tests that must hold with cached instances and with always_replay.

`run_scenario(scenario, always_replay, service)` runs a scenario (which holds its own assertions) in
the requested mode; in always_replay mode it also runs it with cached instances and requires both runs
to record the same histories and end on the same clock, the cached run never replaying and the other
replaying.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import eventual_nb as ev
from eventual_nb.testing import TestEnvironment

START = datetime(2024, 1, 1, tzinfo=UTC)
MODES = pytest.mark.parametrize("always_replay", [False, True], ids=["cached", "always_replay"])

Scenario = Callable[[TestEnvironment], Awaitable[None]]


@dataclass
class Run:
    now: datetime
    histories: dict[str, list[dict[str, Any]]]
    replays: int


async def play(scenario: Scenario, always_replay: bool, service: ev.Service) -> Run:
    async with TestEnvironment(service=service, start=START, always_replay=always_replay) as env:
        await scenario(env)
        histories = {eid: [e.model_dump(mode="json") for e in env.history_of(eid)] for eid in env.executions()}
        return Run(env.now, histories, env.replays)


async def run_scenario(scenario: Scenario, always_replay: bool, service: ev.Service) -> None:
    run = await play(scenario, always_replay, service)
    if always_replay:
        assert run.replays > 0, "always_replay=True never replayed from scratch"
        baseline = await play(scenario, False, service)
        assert baseline.replays == 0
        assert run.histories == baseline.histories
        assert run.now == baseline.now


async def types(h: ev.ExecutionHandle) -> list[str]:
    return [e.type for e in await h.history()]


async def end_time(h: ev.ExecutionHandle) -> datetime | None:
    return (await h.status()).end_time


def seconds(n: float) -> datetime:
    return START + timedelta(seconds=n)
