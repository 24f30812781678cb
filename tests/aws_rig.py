"""The AWS leg of the behavioural suite (tests/test_local_runtime.py): a stack in moto, driven in the background.

`aws_stack_runtime(endpoint, service)` deploys the service's exported template into moto (after a reset:
each test gets a fresh account), builds the stack's real functions (`StackFunctions`, over moto's endpoint,
real clock, one-second timer hops since moto's SQS delays are whole real seconds) and an `AwsRuntime` over
the same stack, and runs a `HarnessDriver` for the duration: one background thread that polls the queues
and fires due schedules, so the suite's tests simply wait in real time, as they do on the LocalRuntime.

Why one thread and not `asyncio.to_thread` per wait: the harness must never call handlers concurrently (its
docstring), and the suite's waits overlap (a test may await `handle.result()` while a predicate polls), so
exactly one owner of the harness runs for the whole test, independent of how the test waits.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime

import eventual_nb as ev
from eventual_nb.aws import AwsRuntime
from eventual_nb.runtime.aws.functions import StackFunctions
from eventual_nb.runtime.aws.harness import Harness, RunReport
from tests.aws_support import REGION, client_kwargs, deploy_stack, require_local, reset_moto

LOGGER = logging.getLogger("tests.aws_rig")

#: the activity tokens' secret, given to the stack's functions and to the runtime (as a deploy would)
SIGNING_KEY = "aws-rig-signing-key-0123456789"
#: pauses of the driver after rounds that found nothing to do: the first, and the longest it grows to
#: (doubling), so an idle stack costs moto a few requests a tenth of a second, not a busy loop
FIRST_IDLE_PAUSE = 0.01
LONGEST_IDLE_PAUSE = 0.1


@dataclass
class HarnessDriver:
    """Calls `harness.poll_once()` in a loop on one background thread until stopped."""

    harness: Harness
    report: RunReport = field(default_factory=RunReport)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="aws-rig-harness", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pause = FIRST_IDLE_PAUSE
        while not self._stop.is_set():
            try:
                handled = self.harness.poll_once(self.report)
            except Exception:  # the next round tries again; the test's own waits report what is missing
                LOGGER.exception("harness round failed")
                handled = 0
            if handled:
                pause = FIRST_IDLE_PAUSE
            else:
                self._stop.wait(pause)
                pause = min(LONGEST_IDLE_PAUSE, pause * 2)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None


@dataclass
class AwsStack:
    runtime: AwsRuntime
    functions: StackFunctions
    driver: HarnessDriver


@contextlib.asynccontextmanager
async def aws_stack_runtime(
    endpoint: str, service: ev.Service, *, clock: Callable[[], datetime] | None = None
) -> AsyncIterator[AwsStack]:
    """A fresh stack of `service` in moto, its functions driven in the background, and `AwsRuntime` entered.

    `clock`: what the functions, the harness (which fires schedules by it) and the runtime read as now
    (an `ev.testing.ManualClock` for tests of schedules); real time by default."""
    require_local(endpoint)
    reset_moto(endpoint)
    async with _stack(endpoint, "suite", service, clock=clock) as stack:
        yield stack


@contextlib.asynccontextmanager
async def aws_stack_pair(
    endpoint: str, source: ev.Service, subscriber: ev.Service
) -> AsyncIterator[tuple[AwsRuntime, AwsRuntime]]:
    """Two stacks in a fresh moto: `source` deployed as a stack named after it (so the subscriber's template
    finds its bus by the default of its parameter), then `subscriber`; each driven by its own harness."""
    require_local(endpoint)
    reset_moto(endpoint)
    async with _stack(endpoint, source.name, source) as first, _stack(endpoint, subscriber.name, subscriber) as second:
        yield first.runtime, second.runtime


@contextlib.asynccontextmanager
async def _stack(
    endpoint: str, name: str, service: ev.Service, *, clock: Callable[[], datetime] | None = None
) -> AsyncIterator[AwsStack]:
    subscriptions = [subscription.spec() for subscription in service.subscriptions.values()]
    schedules = [schedule.spec() for schedule in service.schedules.values()]
    entities = [entity.spec() for entity in service.entities.values()]
    stack = deploy_stack(
        endpoint,
        stack=name,
        service=service.name,
        subscriptions=subscriptions,
        schedules=schedules,
        entities=entities,
    )
    environment = {**stack.environment, "EVENTUAL_SIGNING_KEY": SIGNING_KEY}
    functions = StackFunctions(
        [service],
        environ=environment,
        client_kwargs=client_kwargs(endpoint),
        timer_hop_seconds=1,
        signing_key=SIGNING_KEY.encode(),
        clock=clock,
    )
    harness = Harness(functions.clients, functions.handlers(), functions.clients.clock)
    driver = HarnessDriver(harness)
    runtime = AwsRuntime(
        region=REGION, endpoint_url=require_local(endpoint), environment=environment, service=service, clock=clock
    )
    driver.start()
    try:
        async with runtime:
            yield AwsStack(runtime, functions, driver)
    finally:
        driver.stop()
