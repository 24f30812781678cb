"""A deterministic asyncio event loop for workflow code.

Workflow code is ordinary asyncio: `gather`, `wait`, `wait_for`, `create_task`, `TaskGroup` and
`asyncio.sleep` all run on this loop. It has no I/O and no threads; its clock is the history's time;
every `call_at`/`call_later` becomes a durable timer. The runtime drives it one step at a time
(`run_until_idle`) from inside whatever loop the runtime itself runs on, by swapping the thread's
running loop for the duration of the step, because `run_until_complete` cannot nest.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import hashlib
import itertools
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from eventual_nb.errors import EventualError

if TYPE_CHECKING:
    from eventual_nb.engine.executor import WorkflowExecutor

#: a runaway workflow (an endless loop of `sleep(0)`) must not hang the runtime
MAX_CALLBACKS_PER_STEP = 5_000_000


class NonDeterministicOperation(EventualError, RuntimeError):
    """Workflow code tried to use I/O, threads or real time, which cannot be replayed."""


class _OrderedFuture(asyncio.Future[Any]):
    """A future hashed by its creation order on its workflow loop, not by memory address.

    asyncio keeps tasks and futures in sets (`TaskGroup` cancels its tasks in set order; `wait` and
    `as_completed` iterate sets), and set order follows hashes. With address-based hashes a cached
    instance and a replay could cancel tasks, and so make clean-up calls, in different orders.

    The hash is `salt | order`: the order in the low 32 bits, which are all a set of fewer than 2**32
    entries looks at, so iteration order is the creation order whatever the execution (and the same as
    before the salt existed, so older histories replay); the loop's salt, derived from the execution id,
    in the bits above. Without it the main task of every execution would have the same hash, and asyncio's
    global registry of tasks (one `WeakSet` for all loops) would make every new task probe past all the
    tasks in flight.
    """

    _eventual_hash = 0

    def __hash__(self) -> int:
        return self._eventual_hash


class _OrderedTask(asyncio.Task[Any]):
    """A task hashed by its loop's salt and its creation order on that loop (see `_OrderedFuture`).

    The hash is set before `Task.__init__`, which registers the task in that global `WeakSet`: a weak
    reference keeps the hash it saw first.
    """

    def __init__(
        self,
        coro: Coroutine[Any, Any, Any],
        *,
        loop: WorkflowEventLoop,
        name: str | None,
        context: contextvars.Context | None,
        eventual_hash: int,
    ) -> None:
        self._eventual_hash = eventual_hash
        super().__init__(coro, loop=loop, name=name, context=context)

    def __hash__(self) -> int:
        return self._eventual_hash


def execution_salt(execution_id: str) -> int:
    """28 stable bits from the execution id, shifted above the creation order (see `_OrderedFuture`).

    blake2b, not `hash(str)`, which Python randomises per process: a replay in another process must
    build the same sets. 28 bits keep `salt | order` below 2**61 - 1, where Python would fold the hash.
    """
    digest = hashlib.blake2b(execution_id.encode("utf-8"), digest_size=4).digest()
    return (int.from_bytes(digest, "big") >> 4) << 32


class WorkflowEventLoop(asyncio.AbstractEventLoop):
    """The loop one workflow execution runs on; owned and stepped by its `WorkflowExecutor`."""

    def __init__(self, executor: WorkflowExecutor) -> None:
        self.executor = executor
        self.eventual_log_sink: Callable[[str], None] | None = executor.capture_line
        self._ready: collections.deque[asyncio.Handle] = collections.deque()
        self._time = 0.0
        self.tasks: list[asyncio.Task[Any]] = []
        self._creation_order = itertools.count(execution_salt(executor.execution_id) | 1)
        self._exception_handler: Any = None
        #: set when the workflow function has ended: `run_until_idle` stops there, so tasks it created but
        #: that have not started yet never start (the executor then cancels them, which runs none of their code)
        self.function_ended = False

    # -- stepping ---------------------------------------------------------------------------------------

    @contextmanager
    def running(self) -> Iterator[None]:
        """Make this the thread's running loop while workflow code runs."""
        outer = self.enter()
        try:
            yield
        finally:
            asyncio.events._set_running_loop(outer)

    def enter(self) -> asyncio.AbstractEventLoop | None:
        """`running()` without the generator (the hot path: once per step); returns the loop to restore."""
        outer = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(self)
        return outer

    def run_until_idle(self) -> None:
        count = 0
        ready = self._ready
        while ready:
            handle = ready.popleft()
            if handle._cancelled:
                continue
            handle._run()
            if self.function_ended:
                return
            count += 1
            if count > MAX_CALLBACKS_PER_STEP:
                raise NonDeterministicOperation(
                    f"execution '{self.executor.execution_id}' ran {MAX_CALLBACKS_PER_STEP} callbacks without "
                    "waiting on anything durable (an endless loop of asyncio.sleep(0)?)"
                )

    def set_time(self, when: float) -> None:
        self._time = when

    def fire_timer(self, handle: asyncio.TimerHandle) -> None:
        handle._scheduled = False  # type: ignore[attr-defined]
        self._ready.append(handle)

    # -- the parts of the loop API that asyncio's own code uses ------------------------------------------

    def time(self) -> float:
        return self._time

    def call_soon(  # type: ignore[override]
        self, callback: Callable[..., Any], *args: Any, context: contextvars.Context | None = None
    ) -> asyncio.Handle:
        handle = asyncio.Handle(callback, args, self, context)
        self._ready.append(handle)
        return handle

    def call_later(  # type: ignore[override]
        self,
        delay: float,
        callback: Callable[..., Any],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        return self.call_at(self._time + delay, callback, *args, context=context)

    def call_at(  # type: ignore[override]
        self,
        when: float,
        callback: Callable[..., Any],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        handle = asyncio.TimerHandle(when, callback, args, self, context)
        handle._scheduled = True  # type: ignore[attr-defined]
        self.executor.start_timer(handle)
        return handle

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        self.executor.cancel_timer(handle)

    def create_future(self) -> asyncio.Future[Any]:
        future = _OrderedFuture(loop=self)
        future._eventual_hash = next(self._creation_order)
        return future

    def create_task(  # type: ignore[override]
        self,
        coro: Coroutine[Any, Any, Any],
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[Any]:
        task = _OrderedTask(coro, loop=self, name=name, context=context, eventual_hash=next(self._creation_order))
        self.tasks.append(task)
        return task

    def get_debug(self) -> bool:
        return False

    def set_debug(self, enabled: bool) -> None:
        pass

    def is_running(self) -> bool:
        return True

    def is_closed(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def get_exception_handler(self) -> Any:
        return self._exception_handler

    def set_exception_handler(self, handler: Any) -> None:
        self._exception_handler = handler

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.executor.loop_exception(context)

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        self.executor.loop_exception(context)

    # -- everything that would make a workflow non-deterministic ----------------------------------------

    def _refuse(self, what: str) -> Any:
        raise NonDeterministicOperation(
            f"{what} is not allowed inside workflow '{self.executor.workflow_name}': workflow code must be "
            "deterministic; do I/O, threads and real time in an activity"
        )

    def call_soon_threadsafe(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return self._refuse("call_soon_threadsafe")

    def run_in_executor(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return self._refuse("run_in_executor (and asyncio.to_thread)")

    async def getaddrinfo(self, *args: Any, **kwargs: Any) -> Any:
        return self._refuse("network access")

    async def create_connection(self, *args: Any, **kwargs: Any) -> Any:
        return self._refuse("network access")

    async def create_server(self, *args: Any, **kwargs: Any) -> Any:
        return self._refuse("network access")

    async def subprocess_exec(self, *args: Any, **kwargs: Any) -> Any:
        return self._refuse("subprocesses")

    async def subprocess_shell(self, *args: Any, **kwargs: Any) -> Any:
        return self._refuse("subprocesses")

    def run_forever(self) -> None:
        self._refuse("run_forever")

    def run_until_complete(self, future: Any) -> Any:
        return self._refuse("run_until_complete")

    async def shutdown_asyncgens(self) -> None:
        pass

    async def shutdown_default_executor(self, timeout: float | None = None) -> None:
        pass
