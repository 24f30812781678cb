"""Running real Jupyter kernels in tests: notebooks through nbclient, raw sessions through jupyter_client.

Kernels are the venv's `python3` kernelspec (this interpreter, with `%load_ext eventual_nb` in the
notebook) or the "Eventual (Python 3)" kernelspec installed into a temporary prefix. Each kernel runs
in the test's tmp dir, so `.eventual/<service>.db` lands there.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nbformat
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

#: seconds a cell may take before the test fails (cells here take well under a second)
CELL_TIMEOUT = 90


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_notebook(
    cells: list[str], directory: Path, *, kernel_name: str = "python3", env: dict[str, str] | None = None
) -> Any:
    """Execute `cells` as a notebook in `directory` (errors are kept as outputs, not raised); `env` is
    added to the kernel's environment (JUPYTER_PATH for a kernelspec installed in a temp prefix)."""
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    notebook.metadata["kernelspec"] = {"name": kernel_name, "display_name": kernel_name, "language": "python"}
    client = NotebookClient(
        notebook,
        kernel_name=kernel_name,
        timeout=CELL_TIMEOUT,
        allow_errors=True,
        resources={"metadata": {"path": str(directory)}},
    )
    with _env(env):
        client.execute()
    nbformat.write(notebook, directory / "executed.ipynb")
    return notebook


@contextmanager
def _env(extra: dict[str, str] | None) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in extra or {}}
    os.environ.update(extra or {})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def text_of(cell: Any, stream: str | None = None) -> str:
    """Everything a cell printed (`stream`: only stdout or stderr), plus plain-text results."""
    parts = []
    for output in cell.outputs:
        if output.output_type == "stream" and (stream is None or output.name == stream):
            parts.append(output.text)
        elif output.output_type in ("execute_result", "display_data") and stream is None:
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def html_of(cell: Any) -> str:
    return "".join(o.get("data", {}).get("text/html", "") for o in cell.outputs if o.output_type == "display_data")


def error_of(cell: Any) -> Any:
    """The cell's `error` output, or None."""
    for output in cell.outputs:
        if output.output_type == "error":
            return output
    return None


def widget_views(cell: Any) -> list[str]:
    """Model ids of the widgets a cell displayed."""
    return [
        o["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]
        for o in cell.outputs
        if o.output_type == "display_data" and "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]


class KernelSession:
    """A raw kernel connection that keeps every iopub message (comm traffic included) with its time."""

    def __init__(self, directory: Path, kernel_name: str = "python3") -> None:
        self.manager = KernelManager(kernel_name=kernel_name)
        self.manager.start_kernel(cwd=str(directory))
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)
        self.messages: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                message = self.client.get_iopub_msg(timeout=0.1)
            except queue.Empty:
                continue
            except Exception:  # noqa: BLE001 - the channel closes when the kernel shuts down
                return
            with self._lock:
                self.messages.append(message)

    def execute(self, code: str, timeout: float = CELL_TIMEOUT) -> dict[str, Any]:
        """Run `code`, wait for its reply; raise with the kernel's traceback if it failed."""
        msg_id = self.client.execute(code)
        reply = self.client.get_shell_msg(timeout=timeout)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.client.get_shell_msg(timeout=timeout)
        if reply["content"]["status"] != "ok":
            raise AssertionError(f"cell failed: {code!r}\n" + "\n".join(reply["content"].get("traceback", [])))
        self.wait_idle(msg_id)
        return reply

    def wait_idle(self, msg_id: str, timeout: float = CELL_TIMEOUT) -> None:
        self.wait_for(
            lambda m: (
                m["msg_type"] == "status"
                and m["parent_header"].get("msg_id") == msg_id
                and m["content"]["execution_state"] == "idle"
            ),
            timeout,
            f"kernel idle after {msg_id}",
        )

    def stdout_of(self, msg_id: str) -> str:
        with self._lock:
            return "".join(
                m["content"]["text"]
                for m in self.messages
                if m["msg_type"] == "stream" and m["parent_header"].get("msg_id") == msg_id
            )

    def run(self, code: str) -> str:
        """Execute and return what the cell printed."""
        reply = self.execute(code)
        return self.stdout_of(reply["parent_header"]["msg_id"])

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.messages)

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            with self._lock:
                fresh = self.messages[seen:]
                seen = len(self.messages)
            for message in fresh:
                if predicate(message):
                    return message
            time.sleep(0.02)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def comm_opens(self) -> dict[str, dict[str, Any]]:
        """comm id -> initial widget state, for every widget the kernel created."""
        return {
            m["content"]["comm_id"]: m["content"]["data"].get("state", {})
            for m in self.snapshot()
            if m["msg_type"] == "comm_open"
        }

    def send_comm(self, comm_id: str, data: dict[str, Any]) -> None:
        """What a frontend sends when the user acts on a widget (e.g. clicks a button)."""
        message = self.client.session.msg("comm_msg", {"comm_id": comm_id, "data": data})
        self.client.shell_channel.send(message)

    def close(self) -> None:
        self._stop.set()
        try:
            self.client.stop_channels()
        finally:
            self.manager.shutdown_kernel(now=False)
