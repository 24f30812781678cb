"""A real uvicorn server in a thread for tests of the HTTP server: `run_server(runtime, **create_app options)`.

Shared by the server's test modules (a test module imported by another would be imported twice, under two
names, and register its workflows twice).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from eventual_nb.server import create_app


@dataclass
class RunningServer:
    url: str
    runtime: Any
    token: str | None

    def headers(self) -> dict[str, str]:
        return {} if self.token is None else {"Authorization": f"Bearer {self.token}"}


@contextlib.contextmanager
def run_server(runtime: Any, **options: Any) -> Iterator[RunningServer]:
    """uvicorn serving `create_app(runtime, **options)` in a thread, on a free loopback port."""
    app = create_app(runtime, **options)
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP; without it each
    # response waits ~40 ms for a delayed ACK (Nagle)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="test-uvicorn", daemon=True)
    thread.start()
    running = RunningServer(url=f"http://127.0.0.1:{port}", runtime=runtime, token=options.get("token"))
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the test server stopped during startup (see the log above)")
            if time.monotonic() > deadline:
                raise RuntimeError("the test server did not start within 20 s")
            time.sleep(0.01)
        health = httpx.get(f"{running.url}/_eventual/health", headers=running.headers(), timeout=10)
        assert health.status_code == 200, health.text
        yield running
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        assert not thread.is_alive(), "the test server did not shut down"


def wait_until_serving(process: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 30) -> None:
    """Wait until the server `process` (its output going to `log`) answers its health route at `url`; fail with
    its log if it exits or does not answer within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/_eventual/health", timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    process.kill()
    raise AssertionError(f"server did not come up:\n{log.read_text()}")


async def token_from(tokens: dict[str, str], handle: Any, key: str) -> str:
    """Drive `handle`'s execution until an async activity has put its token under `key` in `tokens`."""
    import eventual_nb as ev

    for _ in range(200):
        if key in tokens:
            return tokens[key]
        with contextlib.suppress(ev.Timeout, ev.testing.Stuck):
            await handle.result(timeout=0.05)
    raise AssertionError(f"the activity for {key!r} never handed out a token")
