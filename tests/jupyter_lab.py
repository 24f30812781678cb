"""A real JupyterLab in a real browser, for tests that must see what a person sees.

Widget state tests without a browser cannot show that the
frontend renders updates sent from a background thread after a cell returned, nor that a click in the
page reaches the kernel. These helpers start `jupyter lab` as a subprocess (sealed off from the user's
Jupyter and IPython settings), drive it with Debian's Chromium through Playwright for Python (the only
browser this project can install: `playwright install` downloads a build of its own, which the
machines cannot fetch), and turn every time-out into an AssertionError that carries the server log,
the page's console and the notebook's outputs, because a bare Playwright TimeoutError says nothing
about why the lab never got there.

Used by tests/test_browser.py; the mechanics (fire-and-forget commands, fresh workspaces with
`?reset`, active-cell pitfalls) are handled here once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import nbformat
from playwright.sync_api import Browser, Locator, Page, sync_playwright
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

#: Debian's Chromium (`make test` installs it when missing); EVENTUAL_CHROMIUM points elsewhere
CHROMIUM = os.environ.get("EVENTUAL_CHROMIUM", "/usr/bin/chromium")
# Generous on purpose: CI shares 2 cores between the lab server, the kernel and Chromium.
TIMEOUT_S = 60.0
_TIMEOUT_MS = TIMEOUT_S * 1000
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

# Every browser-side snippet finds the notebook panel by its path instead of trusting
# `shell.currentWidget`: a click inside an output or a toast can move the focus elsewhere.
_FIND_PANEL = """
const findPanel = (path) => {
  const app = window.jupyterapp;
  if (!app) { return null; }
  for (const w of app.shell.widgets('main')) {
    if (w.context && w.context.path === path && w.content && w.sessionContext) { return w; }
  }
  return null;
};
"""

_KERNEL_IDLE_JS = (
    "([path, kernelName, cells]) => {"
    + _FIND_PANEL
    + """
  const panel = findPanel(path);
  if (!panel || !panel.context.isReady || panel.content.widgets.length !== cells) { return null; }
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  if (!kernel) { return null; }
  if (kernel.name !== kernelName) { return {kernel: kernel.name}; }
  return kernel.connectionStatus === 'connected' && kernel.status === 'idle' ? {kernel: kernel.name} : null;
}"""
)

# Fire-and-forget: returning the command's promise would make Playwright wait for the cell, and a cell
# that awaits something the test has yet to do would deadlock the test.
_RUN_CELL_JS = (
    "([path, index]) => {"
    + _FIND_PANEL
    + """
  const app = window.jupyterapp;
  const panel = findPanel(path);
  window.__labHarnessErrors = window.__labHarnessErrors || [];
  app.shell.activateById(panel.id);
  panel.content.activeCellIndex = index;
  panel.content.deselectAll();
  app.commands.execute('notebook:run-cell').catch(
    (e) => window.__labHarnessErrors.push('notebook:run-cell on cell ' + index + ': ' + e));
  return true;
}"""
)

# A cell is done once the reply set its execution count (the notebook is written without counts and
# each cell runs once); its error outputs come back so a broken cell fails the test at once.
_CELL_DONE_JS = (
    "([path, index]) => {"
    + _FIND_PANEL
    + """
  const panel = findPanel(path);
  const model = panel && panel.content.widgets[index] && panel.content.widgets[index].model;
  if (!model || model.executionCount === null || model.executionCount === undefined) { return null; }
  if (model.executionState === 'running') { return null; }
  const errors = model.outputs.toJSON().filter((o) => o.output_type === 'error').map(
    (o) => o.ename + ': ' + o.evalue + '\\n' + (o.traceback || []).join('\\n'));
  return {count: model.executionCount, errors: errors};
}"""
)

# JupyterLab silently falls back to another kernel of the same language when the notebook's kernelspec
# is missing, so a failure report must say which kernel actually runs.
_SESSION_JS = (
    "(path) => {"
    + _FIND_PANEL
    + """
  const panel = findPanel(path);
  if (!panel) { return 'notebook panel not found'; }
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  if (!kernel) { return 'no kernel (session: ' + !!panel.sessionContext.session + ')'; }
  return 'kernel ' + kernel.name + ' status=' + kernel.status + ' connection=' + kernel.connectionStatus
    + ' cells=' + panel.content.widgets.length;
}"""
)

_OUTPUTS_JS = (
    "(path) => {"
    + _FIND_PANEL
    + """
  const panel = findPanel(path);
  if (!panel) { return null; }
  return panel.content.widgets.map((cell, i) => {
    const m = cell.model;
    const outs = m.outputs ? m.outputs.toJSON() : [];
    return {index: i, count: m.executionCount === undefined ? null : m.executionCount, outputs: outs};
  });
}"""
)


def free_port() -> int:
    """Let the OS pick the port so parallel or leftover servers never collide with ours."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def install_python_kernelspec(prefix: Path) -> Path:
    """Install a `python3` kernelspec for *this* interpreter under `prefix`; return its Jupyter data dir.

    The venv's own share/jupyter/kernels/python3 says just `python`, which resolves through PATH; an
    absolute interpreter path guarantees the kernel imports the venv's ipykernel and ipywidgets. It lands
    in a temporary prefix, never in the user's Jupyter dirs (the project never installs or
    overwrites a user's `python3` kernelspec).
    """
    from ipykernel.kernelspec import install  # only the browser tests need ipykernel here

    install(kernel_name="python3", display_name="Python 3 (ipykernel)", prefix=str(prefix))
    return prefix / "share" / "jupyter"


def write_notebook(path: Path, sources: Sequence[str], kernel_name: str, display_name: str) -> Path:
    """Write code cells without outputs or counts, so "execution count set" means "ran in this test"."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": kernel_name, "display_name": display_name, "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


@dataclass
class LabServer:
    """A running `jupyter lab` (or Notebook 7: `app="notebook"`) subprocess; its log file is the first thing
    to read when a test fails."""

    url: str
    root_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    app: str = "lab"

    def log_tail(self, lines: int = 80) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no server log: {exc})"
        return "\n".join(_ANSI.sub("", text).splitlines()[-lines:])

    def api(self, method: str, path: str, timeout: float = 10.0) -> Any:
        request = urllib.request.Request(self.url + path, method=method)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def stop(self) -> None:
        """Shut kernels down through the API first: jupyter_client starts each kernel in its own session,
        so killing the server would orphan them (with their runtime threads and SQLite files)."""
        if self.process.poll() is None:
            with suppress(OSError, ValueError, urllib.error.URLError):
                for kernel in self.api("GET", "/api/kernels"):
                    self.api("DELETE", f"/api/kernels/{kernel['id']}", timeout=20.0)
            with suppress(OSError, urllib.error.URLError):
                self.api("POST", "/api/shutdown")
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=15)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def lab_environment(state_dir: Path, jupyter_path: Sequence[Path]) -> dict[str, str]:
    """Point every Jupyter and IPython directory into `state_dir` so the user's settings never leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER_", "JPY_", "IPYTHON"))}
    dirs = {name: state_dir / name for name in ("config", "data", "runtime", "ipython")}
    for directory in dirs.values():
        directory.mkdir(parents=True, exist_ok=True)
    env["JUPYTER_CONFIG_DIR"] = str(dirs["config"])
    env["JUPYTER_DATA_DIR"] = str(dirs["data"])
    env["JUPYTER_RUNTIME_DIR"] = str(dirs["runtime"])
    env["IPYTHONDIR"] = str(dirs["ipython"])
    if jupyter_path:
        env["JUPYTER_PATH"] = os.pathsep.join(str(p) for p in jupyter_path)
    env["PYTHONUNBUFFERED"] = "1"
    # Lab asks "receive official Jupyter news?" in a toast that covers outputs in screenshots.
    settings = dirs["config"] / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    return env


@contextmanager
def running_lab(
    root_dir: Path, state_dir: Path, jupyter_path: Sequence[Path] = (), app: str = "lab"
) -> Iterator[LabServer]:
    """Run `jupyter lab` (or `jupyter notebook`, Notebook 7, with `app="notebook"`) on 127.0.0.1 serving
    `root_dir`, with kernelspecs also found in `jupyter_path`.

    Token, password and XSRF checks are off (loopback, test only), and `expose_app_in_browser` gives
    the page `window.jupyterapp`, the handle the tests drive the lab with (Notebook 7 is built from the
    lab's parts: the same commands and notebook panels).
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    workspaces = state_dir / "workspaces"
    workspaces.mkdir(exist_ok=True)
    port = free_port()
    log_path = state_dir / "lab.log"
    argv = [
        sys.executable,
        "-m",
        "jupyter",
        app,
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        "--ServerApp.allow_root=True",
        "--IdentityProvider.token=",
        "--PasswordIdentityProvider.hashed_password=",
        "--ServerApp.disable_check_xsrf=True",
        f"--ServerApp.root_dir={root_dir}",
    ]
    if app == "lab":
        argv += [
            f"--LabApp.workspaces_dir={workspaces}",
            "--LabApp.expose_app_in_browser=True",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
    else:
        argv += ["--JupyterNotebookApp.expose_app_in_browser=True"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            cwd=root_dir,
            env=lab_environment(state_dir, jupyter_path),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = LabServer(url=f"http://127.0.0.1:{port}", root_dir=root_dir, log_path=log_path, process=process, app=app)
    try:
        _wait_until_serving(server)
        yield server
    finally:
        server.stop()


def _wait_until_serving(server: LabServer) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(
                f"jupyter lab exited with code {server.process.returncode} before serving.\n"
                f"--- server log ---\n{server.log_tail()}"
            )
        try:
            server.api("GET", "/api/status", timeout=2.0)
            return
        except (OSError, urllib.error.URLError, ValueError) as exc:
            last_error = repr(exc)
        time.sleep(0.25)
    raise AssertionError(
        f"jupyter lab did not answer /api/status within {TIMEOUT_S:.0f} s (last: {last_error}).\n"
        f"--- server log ---\n{server.log_tail()}"
    )


@dataclass
class LabPage:
    """One Chromium page on the lab, keeping what is needed to explain a failure."""

    page: Page
    server: LabServer
    artifacts_dir: Path
    notebook: str = ""
    console: list[str] = field(default_factory=list)

    def open_notebook(self, notebook: str, kernel_name: str, cells: int) -> None:
        """Open `notebook` in a fresh workspace and wait until its kernel is connected and idle.

        A fresh, reset workspace keeps tabs restored from earlier runs from duplicating `.jp-Cell`.
        """
        __tracebackhide__ = True  # pytest: show the test line, not harness internals
        self.notebook = notebook
        if self.server.app == "lab":
            workspace = f"t{uuid.uuid4().hex[:12]}"
            self.page.goto(f"{self.server.url}/lab/workspaces/{workspace}/tree/{notebook}?reset")
        else:  # Notebook 7: one notebook per page
            self.page.goto(f"{self.server.url}/notebooks/{notebook}")
        started = self._wait(
            _KERNEL_IDLE_JS,
            [notebook, kernel_name, cells],
            f"notebook {notebook} open with an idle `{kernel_name}` kernel",
        )
        if started["kernel"] != kernel_name:
            self.fail(
                f"the lab started kernel `{started['kernel']}` instead of `{kernel_name}` (it falls back to any "
                f"kernel of the same language): is the `{kernel_name}` kernelspec on JUPYTER_PATH?"
            )

    def run_cell(self, index: int) -> int:
        """Run one cell and wait for its reply; a cell that raised fails the test with its traceback."""
        __tracebackhide__ = True
        self.page.evaluate(_RUN_CELL_JS, [self.notebook, index])
        done = self._wait(_CELL_DONE_JS, [self.notebook, index], f"cell {index} of {self.notebook} to finish")
        if done["errors"]:
            self.fail(f"cell {index} raised:\n" + _ANSI.sub("", "\n".join(done["errors"])))
        return int(done["count"])

    def run_cells(self, count: int) -> None:
        """Run cells in order, each after the previous one replied, as a person would."""
        __tracebackhide__ = True
        for index in range(count):
            self.run_cell(index)

    def wait_for_text(self, selector: str, text: str) -> Locator:
        """Wait until an element matching `selector` shows `text` (case-insensitive substring)."""
        __tracebackhide__ = True
        locator = self.page.locator(selector).filter(has_text=text).first
        try:
            locator.wait_for(state="visible", timeout=_TIMEOUT_MS)
        except PlaywrightTimeoutError:
            shown = self._texts_of(selector)
            self.fail(f"no `{selector}` showed {text!r} within {TIMEOUT_S:.0f} s; it showed {shown!r}")
        return locator

    def click(self, selector: str) -> None:
        """Click the one element matching `selector` the way a person would (scrolled into view)."""
        __tracebackhide__ = True
        locator = self.page.locator(selector)
        try:
            locator.first.wait_for(state="visible", timeout=_TIMEOUT_MS)
            count = locator.count()
            if count != 1:
                self.fail(f"expected exactly one `{selector}` to click, found {count}")
            locator.click(timeout=_TIMEOUT_MS)
        except PlaywrightTimeoutError:
            self.fail(f"could not click `{selector}` within {TIMEOUT_S:.0f} s")

    def screenshot(self, path: Path, scroll_to: str | None = None) -> Path:
        if scroll_to is not None:
            with suppress(PlaywrightError):
                self.page.locator(scroll_to).first.scroll_into_view_if_needed(timeout=5000)
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def fail(self, message: str) -> NoReturn:
        """Raise with everything needed to debug a browser test from a CI log alone."""
        __tracebackhide__ = True
        shot = self.artifacts_dir / "failure.png"
        with suppress(PlaywrightError):
            self.screenshot(shot)
        parts = [
            message,
            f"--- page: {self.page.url} (screenshot: {shot}) ---",
            f"--- harness errors ---\n{self._harness_errors()}",
            f"--- session ---\n{self._evaluate(_SESSION_JS)}",
            f"--- dialogs ---\n{self._texts_of('.jp-Dialog')}",
            f"--- notebook outputs ---\n{self._outputs_summary()}",
            "--- rendered outputs (widgets show errors here) ---\n"
            + "\n".join(text[:800] for text in self._texts_of(".jp-Cell .jp-OutputArea-output")),
            "--- browser console (last 40) ---\n" + "\n".join(self.console[-40:]),
            f"--- server log ({self.server.log_path}) ---\n{self.server.log_tail()}",
        ]
        # `from None`: Playwright's own traceback only repeats the selector this message already names.
        raise AssertionError("\n".join(parts)) from None

    def _wait(self, js: str, arg: Any, what: str) -> Any:
        __tracebackhide__ = True
        try:
            handle = self.page.wait_for_function(js, arg=arg, timeout=_TIMEOUT_MS, polling=250)
        except PlaywrightTimeoutError:
            self.fail(f"timed out after {TIMEOUT_S:.0f} s waiting for {what}")
        return handle.json_value()

    def _texts_of(self, selector: str) -> list[str]:
        try:
            return [" ".join(t.split()) for t in self.page.locator(selector).all_inner_texts()]
        except PlaywrightError as exc:
            return [f"(could not read: {exc})"]

    def _evaluate(self, js: str) -> Any:
        try:
            return self.page.evaluate(js, self.notebook)
        except PlaywrightError as exc:
            return f"(could not read: {exc})"

    def _harness_errors(self) -> str:
        errors = self._evaluate("() => window.__labHarnessErrors || []")
        return "\n".join(errors) if isinstance(errors, list) and errors else str(errors or "(none)")

    def _outputs_summary(self) -> str:
        if not self.notebook:
            return "(no notebook opened)"
        try:
            cells = self.page.evaluate(_OUTPUTS_JS, self.notebook)
        except PlaywrightError as exc:
            return f"(could not read: {exc})"
        if cells is None:
            return "(notebook panel not found)"
        lines = []
        for cell in cells:
            lines.append(f"[{cell['index']}] execution_count={cell['count']}")
            for out in cell["outputs"]:
                lines.append("    " + _describe_output(out)[:600].replace("\n", "\n    "))
        return "\n".join(lines)


def _describe_output(out: dict[str, Any]) -> str:
    kind = out.get("output_type", "?")
    if kind == "stream":
        text = out.get("text", "")
        return f"{out.get('name')}: " + ("".join(text) if isinstance(text, list) else text)
    if kind == "error":
        return f"error {out.get('ename')}: {out.get('evalue')}"
    data = out.get("data", {})
    plain = data.get("text/plain", "")
    plain = "".join(plain) if isinstance(plain, list) else plain
    return f"{kind} {sorted(data)}: {plain}"


@contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's Chromium, headless; `--no-sandbox` because tests and CI run as root."""
    if shutil.which(CHROMIUM) is None:
        raise AssertionError(f"{CHROMIUM} is missing: install Debian's `chromium` package (`make test` does)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu"],
        )
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def lab_page(browser: Browser, server: LabServer, artifacts_dir: Path) -> Iterator[LabPage]:
    """A fresh browser context per test, recording console output and page errors for `fail()`."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.set_default_timeout(_TIMEOUT_MS)
    page = context.new_page()
    lab = LabPage(page=page, server=server, artifacts_dir=artifacts_dir)
    page.on("console", lambda msg: lab.console.append(f"{msg.type}: {msg.text}"))
    page.on("pageerror", lambda exc: lab.console.append(f"pageerror: {exc}"))
    try:
        yield lab
    finally:
        with suppress(PlaywrightError):
            context.close()
