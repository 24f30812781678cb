"""JupyterLab in Debian's Chromium: what a person sees in the notebook.

Kernel-level and widget-state tests prove the messages; only a browser proves that JupyterLab renders
updates sent after the cell returned, and that a click on a widget reaches the runtime. Each test starts
its own lab server (it answers in about 4 s; a whole test takes 15-25 s) so kernelspecs and `.eventual/`
databases never cross tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.jupyter_lab import (
    LabPage,
    chromium,
    install_python_kernelspec,
    lab_page,
    running_lab,
    write_notebook,
)

pytestmark = pytest.mark.browser

# The thread parks until the test drops a flag file, so "the DOM changed after the cell returned" is
# proven by ordering, not by timing: the cell has replied before the flag exists.
BACKGROUND_CELL = """\
import pathlib
import threading
import time

import ipywidgets as widgets
from IPython.display import display

probe = widgets.HTML(value="waiting")
probe.add_class("bg-probe")
display(probe)
flag = pathlib.Path({flag!r})


def advance() -> None:
    deadline = time.monotonic() + 300
    while not flag.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    for step in range(1, 6):
        probe.value = f"step {{step}}"
        time.sleep(0.2)
    probe.value = "done"


threading.Thread(target=advance, daemon=True).start()
"""

# Records every text the probe shows, so the test can check the updates arrived in order.
_WATCH_PROBE_JS = """() => {
  const el = document.querySelector('.bg-probe');
  window.__probeSeen = [el.innerText.trim()];
  new MutationObserver(() => {
    const text = el.innerText.trim();
    if (window.__probeSeen[window.__probeSeen.length - 1] !== text) { window.__probeSeen.push(text); }
  }).observe(el, {subtree: true, childList: true, characterData: true});
}"""

# The kernel extension's contract: cell 0 imports, cells 1-5 are the notebook a
# person writes; the last line of cell 5 displays the live execution widget.
EVENTUAL_CELLS = [
    "from pydantic import BaseModel\nimport asyncio",
    "%eventual service browser-demo",
    '%%activity\nasync def greet(name: str) -> str:\n    return f"hello {name}"',
    "%%signal\nclass Go(BaseModel):\n    ok: bool = True",
    "%%workflow\nasync def waits_for_go(name: str) -> str:\n    await Go.expect()\n    return await greet(name)",
    'h = await waits_for_go.start("browser")\nh',
]


@contextmanager
def lab_session(tmp_path: Path, root: Path, jupyter_path: list[Path]) -> Iterator[LabPage]:
    """Server, browser and page torn down in reverse order even when the test fails half-way."""
    with (
        running_lab(root, tmp_path / "lab-state", jupyter_path) as server,
        chromium() as browser,
        lab_page(browser, server, tmp_path) as lab,
    ):
        yield lab


def test_lab_shows_background_widget_updates(tmp_path: Path) -> None:
    root = tmp_path / "root"
    flag = root / "go.flag"
    write_notebook(
        root / "background.ipynb", [BACKGROUND_CELL.format(flag=str(flag))], "python3", "Python 3 (ipykernel)"
    )
    kernels = install_python_kernelspec(tmp_path / "kernels")

    with lab_session(tmp_path, root, [kernels]) as lab:
        lab.open_notebook("background.ipynb", "python3", cells=1)
        count = lab.run_cell(0)
        lab.wait_for_text(".bg-probe", "waiting")
        lab.page.evaluate(_WATCH_PROBE_JS)
        flag.touch()  # the cell has replied: from here on only the thread changes the widget
        lab.wait_for_text(".bg-probe", "done")
        seen = lab.page.evaluate("() => window.__probeSeen")
        prompt = lab.page.locator(".jp-Cell").first.locator(".jp-InputPrompt").inner_text()
        shot = lab.screenshot(tmp_path / "background-widget.png", scroll_to=".bg-probe")

    expected_order = ["waiting", *(f"step {i}" for i in range(1, 6)), "done"]
    assert seen[0] == "waiting" and seen[-1] == "done", seen
    assert seen == sorted(seen, key=expected_order.index), f"updates rendered out of order: {seen}"
    assert f"[{count}]" in prompt, f"the cell ran again or is still running: prompt {prompt!r}"
    assert shot.stat().st_size > 0


def test_execution_widget_goes_live_and_send_releases_signal(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_notebook(root / "eventual.ipynb", EVENTUAL_CELLS, "eventual", "Eventual (Python 3)")
    # Imported here so a broken kernel_ext fails this test alone, not the harness self-test beside it.
    from kernel_ext.kernelspec import install_kernelspec

    install_kernelspec(prefix=tmp_path / "kernels")
    kernel_json = tmp_path / "kernels" / "share" / "jupyter" / "kernels" / "eventual" / "kernel.json"
    assert kernel_json.is_file(), f"install_kernelspec(prefix=...) wrote no {kernel_json}"

    with lab_session(tmp_path, root, [tmp_path / "kernels" / "share" / "jupyter"]) as lab:
        lab.open_notebook("eventual.ipynb", "eventual", cells=len(EVENTUAL_CELLS))
        lab.run_cells(len(EVENTUAL_CELLS))
        lab.wait_for_text(".eventual-execution .eventual-status", "IN_PROGRESS")
        signal_name = lab.page.locator(".eventual-signal-name select").input_value()
        if signal_name != "Go":
            lab.fail(f"the signal dropdown should preselect the workflow's only signal 'Go', has {signal_name!r}")
        lab.wait_for_text("button.eventual-signal-send", "Send")
        lab.wait_for_text("button.eventual-cancel", "Cancel")
        lab.click("button.eventual-signal-send")  # no cell runs from here on
        lab.wait_for_text(".eventual-execution .eventual-status", "SUCCEEDED")
        lab.wait_for_text(".eventual-execution .eventual-result", "hello browser")
        shot = lab.screenshot(tmp_path / "execution-widget.png", scroll_to=".eventual-execution")

    assert shot.is_file() and shot.stat().st_size > 0
    assert (root / ".eventual" / "browser-demo.db").is_file(), "the local runtime's database is not beside the notebook"


def test_cancel_asks_for_confirmation_and_cancels_the_execution(tmp_path: Path) -> None:
    """The widget's Cancel is a question in the widget (plain ipywidgets, so JupyterLab and Notebook 7 show
    it alike): "No" keeps the execution running, "Yes" cancels the execution (not a signal)."""
    root = tmp_path / "root"
    write_notebook(root / "eventual.ipynb", EVENTUAL_CELLS, "eventual", "Eventual (Python 3)")
    from kernel_ext.kernelspec import install_kernelspec

    install_kernelspec(prefix=tmp_path / "kernels")
    with lab_session(tmp_path, root, [tmp_path / "kernels" / "share" / "jupyter"]) as lab:
        lab.open_notebook("eventual.ipynb", "eventual", cells=len(EVENTUAL_CELLS))
        lab.run_cells(len(EVENTUAL_CELLS))
        lab.wait_for_text(".eventual-execution .eventual-status", "IN_PROGRESS")
        question = ".eventual-cancel-confirmation"
        if lab.page.locator(question).is_visible():
            lab.fail("the cancel question shows before anyone clicked Cancel")
        lab.click("button.eventual-cancel")
        lab.wait_for_text(question, "cancels the execution")
        asked = lab.page.locator(question).inner_text()
        lab.screenshot(tmp_path / "cancel-question.png", scroll_to=question)
        if "not send a signal" not in asked or "waits_for_go/" not in asked:
            lab.fail(f"the question should name the execution and say it is not a signal: {asked!r}")
        lab.click("button.eventual-cancel-keep")
        lab.wait_for_text(".eventual-execution .eventual-message", "keeps running")
        lab.page.locator(question).wait_for(state="hidden")
        lab.click("button.eventual-cancel")
        lab.wait_for_text(question, "cancels the execution")
        lab.click("button.eventual-cancel-confirm")
        lab.wait_for_text(".eventual-execution .eventual-status", "CANCELLED")
        lab.wait_for_text(".eventual-execution .eventual-message", "cancellation of the execution requested")
        shot = lab.screenshot(tmp_path / "cancelled-widget.png", scroll_to=".eventual-execution")

    assert shot.is_file() and shot.stat().st_size > 0
