"""Crash safety of a real `eventual-nb serve` process killed with SIGKILL three times.

50 executions x 5 activities are in flight; the server is killed at random moments and restarted on
the same database. Afterwards every execution succeeds with the right result, every step is in
history exactly once, and every activity's side effect happened at least once with few repeats.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import eventual_nb as ev
from tests.server_support import wait_until_serving

FIXTURE = Path(__file__).parent / "fixtures" / "crash_service.py"
EXECUTIONS = 50
STEPS = 5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ends(effects: Path) -> int:
    return effects.read_text().count("end ")


def _start_server(port: int, db: Path, effects: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CRASH_SIDE_EFFECTS": str(effects), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "eventual_nb.cli", "serve", str(FIXTURE), "--port", str(port), "--db", str(db)],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    wait_until_serving(process, f"http://127.0.0.1:{port}", log)
    return process


@pytest.mark.timeout(300)
async def test_sigkill_three_times_loses_nothing_and_invents_nothing(tmp_path: Path) -> None:
    port = _free_port()
    db, effects, log = tmp_path / "crash.db", tmp_path / "effects.txt", tmp_path / "server.log"
    effects.touch()
    chaos = random.Random(os.environ.get("CRASH_SEED", "eventual"))
    server = _start_server(port, db, effects, log)
    url = f"http://127.0.0.1:{port}"
    try:
        async with ev.ServiceClient(url) as client:
            handles = await asyncio.gather(
                *(client.start_execution("crash_flow", value, name=f"crash-{value}") for value in range(EXECUTIONS))
            )
            assert len({handle.id for handle in handles}) == EXECUTIONS
        total = EXECUTIONS * STEPS
        for fraction in (0.1, 0.4, 0.7):
            # kill while work is certainly in flight: after a random share of the side effects happened
            threshold = int(total * chaos.uniform(fraction, fraction + 0.2))
            # the server process writes the side effects: a file to poll, no event to await
            while _ends(effects) < threshold:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            server.send_signal(signal.SIGKILL)
            server.wait()
            server = _start_server(port, db, effects, log)
        async with ev.ServiceClient(url) as client:
            for value in range(EXECUTIONS):
                execution = await client.wait_for_execution(f"crash_flow/crash-{value}", 120)
                assert execution.status == ev.ExecutionStatus.SUCCEEDED, execution
                assert execution.result == sum(value * 10 + step for step in range(STEPS))
                history = await client.get_execution_history(execution.id)
                scheduled = collections.Counter(e.seq for e in history if e.type == "ActivityScheduled")
                succeeded = collections.Counter(e.seq for e in history if e.type == "ActivitySucceeded")
                assert scheduled == succeeded == {seq: 1 for seq in range(STEPS)}, [e.type for e in history]
                assert [e.type for e in history].count("WorkflowStarted") == 1
                assert [e.type for e in history].count("WorkflowSucceeded") == 1
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
    lines = [line.split() for line in effects.read_text().splitlines()]
    runs = collections.Counter((line[1], line[2]) for line in lines if line[0] == "end")
    begun = collections.Counter((line[1], line[2]) for line in lines if line[0] == "begin")
    assert set(runs) == {(f"crash_flow/crash-{value}", str(seq)) for value in range(EXECUTIONS) for seq in range(STEPS)}
    repeats = sum(count - 1 for count in runs.values())
    interrupted = sum(begun.values()) - sum(runs.values())
    print(
        f"side effects: {sum(runs.values())} of {len(runs)} activities, {repeats} repeated, {interrupted} interrupted"
    )
    assert interrupted > 0, "no kill landed while an activity was running"
    # each kill can only repeat the activities that were in flight at that moment (at most one per execution)
    assert repeats <= 3 * EXECUTIONS, f"{repeats} repeated side effects"
