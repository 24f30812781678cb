"""The in-kernel runtime: a LocalRuntime or TestEnvironment on its own thread and event loop, or an
AwsRuntime, a client of a deployed stack whose functions run the code (`%eventual runtime aws`).

Why a thread: asyncio tasks on the kernel's own loop stall while a synchronous cell blocks, and
executions must progress while cells run or the kernel sits idle. Cells reach the runtime through its
protocol methods, which hop to this loop by themselves (`RuntimeBase`), so `h = await transfer.start(x)`
in a cell just works.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import eventual_nb as ev
from eventual_nb.runtime import base
from eventual_nb.runtime.base import RuntimeBase
from eventual_nb.runtime.testing import TestEnvironment
from eventual_nb.service import current_service

if TYPE_CHECKING:
    from eventual_nb.aws import AwsRuntime

#: how long a cell waits for the runtime thread to do something quick (start, stop, a query)
CALL_TIMEOUT = 60.0


class RuntimeHost:
    """Owns the runtime thread, its loop, the active runtime and (optionally) an HTTP server on it."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()
        self.runtime: RuntimeBase | None = None
        #: "local", "test" or "aws"
        self.kind: str | None = None
        self.path: Path | None = None
        self.durability = "full"
        self.service_name: str | None = None
        self._server: Any = None
        self._server_task: concurrent.futures.Future[Any] | None = None
        self.server_url: str | None = None

    # ------------------------------------------------------------------------------------------- thread

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                ready = threading.Event()
                loop = asyncio.new_event_loop()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    ready.set()
                    loop.run_forever()

                self._thread = threading.Thread(target=run, name="eventual-runtime", daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    def submit(self, coroutine: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        """Schedule `coroutine` on the runtime loop from any thread (widget callbacks use this)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def call(self, coroutine: Coroutine[Any, Any, Any], timeout: float = CALL_TIMEOUT) -> Any:
        """Run `coroutine` on the runtime loop and wait for its result (from a thread that is not it)."""
        return self.submit(coroutine).result(timeout)

    # ------------------------------------------------------------------------------------------ runtime

    def default_path(self, service: str) -> Path:
        """`.eventual/<service>.db` beside the notebook (the kernel's working directory)."""
        return Path.cwd() / ".eventual" / f"{service}.db"

    def ensure_runtime(self, command: str | None = None) -> RuntimeBase:
        """The active runtime, starting the default one (a LocalRuntime for the current service); `command`
        is what the user ran, named to handles of a runtime this replaces (`%eventual service other`)."""
        with self._lock:
            service = current_service().name
            runtime = self.runtime
            if runtime is None:
                runtime = self.use_local(None, command=command)
            elif self.kind == "local" and self.service_name != service and self._uses_default_path:
                # `%eventual service other`: its own database, on the same bus
                runtime = self.use_local(None, bus=self.bus, command=command)
            return runtime

    _uses_default_path = True
    #: the event bus the local runtime was given (`--bus`), None for the default beside its database
    bus: Path | None = None

    def use_local(
        self,
        path: str | Path | None,
        durability: str = "full",
        *,
        bus: str | Path | None = None,
        command: str | None = None,
    ) -> ev.LocalRuntime:
        """Switch to a LocalRuntime on `path` (default `.eventual/<service>.db`) sharing the event bus `bus`
        (default `bus.db` beside the database: other notebooks and `eventual-nb serve` processes in this
        directory). `command` is what the user ran, for handles of the runtime this replaces (see `_replacing`)."""
        with self._lock:
            service = current_service().name
            with self._replacing(command or "%eventual runtime local"):
                self._uses_default_path = path is None
                database = Path(path).resolve() if path is not None else self.default_path(service)
                bus_path = Path(bus).resolve() if bus is not None else None
                runtime = ev.LocalRuntime(database, durability=durability, service=service, bus=bus_path)
                self.call(runtime.start())
                self._activate(runtime, "local", service)
                self.path, self.durability, self.bus = database, durability, bus_path
            return runtime

    def use_test(
        self, start: datetime | None = None, *, service: str | None = None, command: str | None = None
    ) -> TestEnvironment:
        """Switch to a TestEnvironment (virtual clock) serving every service of the notebook, or only
        `service` (a process that holds other services, such as a test run)."""
        with self._lock:
            with self._replacing(command or "%eventual runtime test"):
                environment = TestEnvironment(start=start, service=service)

                async def enter() -> None:
                    await environment.__aenter__()
                    environment.exit_current()  # the process-wide default is set below, not a ContextVar

                self.call(enter())
                self._activate(environment, "test", current_service().name)
                self.path = None
            return environment

    def use_aws(
        self, stack: str, region: str | None = None, endpoint_url: str | None = None, *, command: str | None = None
    ) -> AwsRuntime:
        """Switch to an AwsRuntime on `stack`, serving the current service.

        The stack is read (its outputs, resources and the functions' variables) before the previous
        runtime stops, so a wrong name, region or endpoint leaves the kernel on the runtime it had. The
        AwsRuntime runs no workflow code: the stack's functions do (offline, the harness standing in for
        Lambda). It cannot tell when they commit, so the widgets poll it (kernel_ext/widgets.py)."""
        from eventual_nb.aws import AwsRuntime

        with self._lock:
            service = current_service().name
            runtime = AwsRuntime(stack=stack, region=region, endpoint_url=endpoint_url, service=service)

            async def enter() -> None:
                await runtime.__aenter__()
                runtime.exit_current()  # the process-wide default is set by `_activate`, not a ContextVar

            self.call(enter())
            with self._replacing(command or f"%eventual runtime aws --stack {stack}"):
                self._activate(runtime, "aws", service)
                self.path = None
            return runtime

    @contextmanager
    def _replacing(self, command: str) -> Iterator[None]:
        """Stop the active runtime, then let the block start its replacement.

        Handles and widgets bound to the stopped runtime wait until the block is done, then follow the new
        runtime when it opens the same store (Run All re-runs `%eventual runtime local`), and otherwise say
        plainly that their execution belongs to the runtime `command` replaced (`ev.runtime.base.serving_runtime`).
        """
        old = self.runtime
        handover = threading.Event()
        if old is not None:
            old._handover = handover
            old.replaced_because = f"the runtime replaced by `{command}`"
        try:
            self.stop_runtime()
            yield
        finally:
            handover.set()

    #: called after every commit of the active runtime (the widget pump's `poke`)
    on_commit: Any = None

    def _activate(self, runtime: RuntimeBase, kind: str, service: str) -> None:
        self.runtime, self.kind, self.service_name = runtime, kind, service
        if self.on_commit is not None:
            runtime.add_commit_listener(self.on_commit)
        base.set_default_runtime(runtime)

    def stop_runtime(self, command: str | None = None) -> None:
        """Stop the server and the runtime (its executions resume when a runtime opens the database again);
        `command` is what the user ran, named to handles of the stopped runtime (`%eventual stop`)."""
        with self._lock:
            self.stop_server()
            runtime, self.runtime = self.runtime, None
            if runtime is None:
                return
            if command is not None:
                runtime.replaced_because = f"the runtime stopped by `{command}`"
            if base._default_runtime is runtime:
                base.set_default_runtime(None)
            if isinstance(runtime, TestEnvironment):
                self.call(runtime.__aexit__(None, None, None))
            elif isinstance(runtime, ev.LocalRuntime):
                self.call(runtime.stop())
            # an AwsRuntime is a client of the stack: nothing of it runs here, nothing to stop
            self.kind = None

    # ------------------------------------------------------------------------------------------- server

    def serve(self, host: str = "127.0.0.1", port: int = 3111) -> str:
        """Serve the notebook's API (its routes and `/_eventual/`) from the kernel, on the runtime loop."""
        import uvicorn

        from eventual_nb.server import create_app

        with self._lock:
            runtime = self.ensure_runtime()
            self.stop_server()
            app = create_app(runtime, own_runtime=False)
            config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
            server = uvicorn.Server(config)
            started = threading.Event()

            async def run() -> None:
                task = asyncio.ensure_future(server.serve())
                # uvicorn's Server tells it started only through its `started` flag (no event to await)
                while not server.started and not task.done():  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
                started.set()
                await task

            self._server = server
            self._server_task = self.submit(run())
            started.wait(CALL_TIMEOUT)
            if not server.started:
                error = self._server_task.exception(timeout=5) if self._server_task.done() else None
                self._server = self._server_task = None
                raise ev.EventualError(f"could not serve on {host}:{port}: {error or 'the server did not start'}")
            if port == 0:  # the system picked a free port: read it back from the listening socket
                port = int(server.servers[0].sockets[0].getsockname()[1])
            self.server_url = f"http://{host}:{port}"
            return self.server_url

    def stop_server(self) -> None:
        with self._lock:
            server, task = self._server, self._server_task
            self._server = self._server_task = None
            self.server_url = None
            if server is None or task is None:
                return
            server.should_exit = True
            with contextlib.suppress(Exception, concurrent.futures.CancelledError):  # stopping anyway
                task.result(CALL_TIMEOUT)

    def close(self) -> None:
        """Stop everything and the thread (extension unload)."""
        with self._lock:
            try:
                self.stop_runtime()
            finally:
                loop, self._loop = self._loop, None
                if loop is not None and not loop.is_closed():
                    loop.call_soon_threadsafe(loop.stop)
                    if self._thread is not None:
                        self._thread.join(CALL_TIMEOUT)
                    loop.close()
                self._thread = None
