"""JupyterLab in Debian's Chromium: what a person sees in the notebook.

Kernel-level and widget-state tests prove the messages; only a browser proves that JupyterLab renders
updates sent after the cell returned, and that a click on a widget reaches the runtime. Each test starts
its own lab server (it answers in about 4 s; a whole test takes 15-25 s) so kernelspecs and `.eventual/`
databases never cross tests.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import eventual_nb as ev
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
def lab_session(tmp_path: Path, root: Path, jupyter_path: list[Path], app: str = "lab") -> Iterator[LabPage]:
    """Server, browser and page torn down in reverse order even when the test fails half-way."""
    with (
        running_lab(root, tmp_path / "lab-state", jupyter_path, app=app) as server,
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
    assert seen[0] == "waiting", seen
    assert seen[-1] == "done", seen
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

    assert shot.is_file()
    assert shot.stat().st_size > 0
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

    assert shot.is_file()
    assert shot.stat().st_size > 0


# ------------------------------------------------------------------------------------------- the timeline

# A workflow with every kind of span the widget draws: a retried activity (two fast backoffs), a timer, a
# signal wait with a timeout, and a child workflow.
TIMELINE_CELLS = [
    "import asyncio\nimport eventual_nb as ev\nfrom pydantic import BaseModel",
    "%eventual service browser-timeline",
    "@ev.activity(retry=ev.RetryPolicy(max_attempts=3, initial_interval='200ms'))\n"
    "async def reserve(order: str) -> str:\n"
    "    if ev.activity_info().attempt < 3:\n"
    "        raise ConnectionError(f'stock service busy (attempt {ev.activity_info().attempt})')\n"
    "    return order.upper()",
    "%%workflow\nasync def ship(order: str) -> str:\n    await asyncio.sleep(0.3)\n    return f'shipped {order}'",
    "%%signal\nclass Approve(BaseModel):\n    by: str = 'ada'",
    "%%workflow\nasync def checkout(order: str) -> str:\n"
    "    reserved = await reserve(order)\n"
    "    await asyncio.sleep(0.5)\n"
    "    approval = await Approve.expect(timeout='10m')\n"
    "    shipped = await ship(reserved)\n"
    "    return f'{shipped}, approved by {approval.by}'",
    'h = await checkout.start("o1")\nh',
]

_BARS_JS = """() => Array.from(document.querySelectorAll('.eventual-execution .eventual-timeline .ev-item')).map(
  (el) => ({kind: el.dataset.kind, label: el.dataset.label, outcome: el.dataset.outcome}))"""

_TIP_JS = """(label) => {
  const item = Array.from(document.querySelectorAll('.eventual-execution .eventual-timeline .ev-item')).find(
    (el) => el.dataset.label === label);
  const tip = item.querySelector('.ev-tip');
  return {display: getComputedStyle(tip).display, text: tip.querySelector('.ev-tipbox').innerText};
}"""

_LABEL_FILL_JS = """() => getComputedStyle(document.querySelector('.eventual-timeline .ev-row-label')).fill"""


def _brightness(css_colour: str) -> int:
    """Sum of the red, green and blue of an `rgb(r, g, b)` colour (0 black, 765 white)."""
    return sum(int(part) for part in css_colour[css_colour.index("(") + 1 : css_colour.index(")")].split(",")[:3])


def _timeline_widget(tmp_path: Path, app: str) -> None:
    """Run the checkout in `app`, release its signal wait from the widget, and check what the picture shows."""
    root = tmp_path / "root"
    write_notebook(root / "timeline.ipynb", TIMELINE_CELLS, "eventual", "Eventual (Python 3)")
    from kernel_ext.kernelspec import install_kernelspec

    install_kernelspec(prefix=tmp_path / "kernels")
    widget = ".eventual-execution"
    with lab_session(tmp_path, root, [tmp_path / "kernels" / "share" / "jupyter"], app=app) as lab:
        lab.open_notebook("timeline.ipynb", "eventual", cells=len(TIMELINE_CELLS))
        lab.run_cells(len(TIMELINE_CELLS))
        # the signal wait is drawn while it lasts, and said in words above the picture
        lab.wait_for_text(f"{widget} .eventual-timeline .ev-waiting", "signal Approve")
        lab.page.locator(f'{widget} .ev-item[data-kind="signal"][data-outcome="waiting"]').first.wait_for()
        lab.screenshot(tmp_path / f"timeline-{app}-waiting.png", scroll_to=widget)
        lab.click(f"{widget} button.eventual-signal-send")
        lab.wait_for_text(f"{widget} .eventual-status", "SUCCEEDED")
        lab.wait_for_text(f"{widget} .eventual-result", "shipped O1, approved by ada")
        lab.page.locator(f'{widget} .ev-item[data-kind="child"][data-outcome="succeeded"]').first.wait_for()
        drawn = lab.page.evaluate(_BARS_JS)
        # hovering the last attempt shows its result, as a person pointing at it would see
        lab.page.locator(widget).scroll_into_view_if_needed()
        last = lab.page.locator(f'{widget} .ev-item[data-label="attempt 3"] .ev-bar')
        last.hover(force=True)  # the bar may be 2 px wide: point at it even if its retry mark covers it
        tip = lab.page.evaluate(_TIP_JS, "attempt 3")
        picture = lab.page.locator(f"{widget} .eventual-timeline")
        picture.screenshot(path=str(tmp_path / f"timeline-{app}-light.png"))
        lab.page.locator(widget).screenshot(path=str(tmp_path / f"timeline-widget-{app}-light.png"))
        light = lab.page.evaluate(_LABEL_FILL_JS)
        lab.page.evaluate(
            "() => window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Dark'})"
        )
        lab.page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'")
        lab.page.wait_for_function(f"(light) => ({_LABEL_FILL_JS})() !== light", arg=light)
        lab.page.locator("#jupyterlab-splash").wait_for(state="detached")
        dark = lab.page.evaluate(_LABEL_FILL_JS)
        last.hover(force=True)
        picture.screenshot(path=str(tmp_path / f"timeline-{app}-dark.png"))
        lab.page.locator(widget).screenshot(path=str(tmp_path / f"timeline-widget-{app}-dark.png"))

    spans = sorted((item["kind"], item["label"], item["outcome"]) for item in drawn if item["outcome"] != "instant")
    child = next(label for kind, label, _ in spans if kind == "child")
    assert child.startswith("ship/"), spans
    assert spans == sorted(
        [
            ("workflow", "workflow checkout", "succeeded"),
            ("attempt", "attempt 1", "failed"),
            ("backoff", "backoff before attempt 2", "backoff"),
            ("attempt", "attempt 2", "failed"),
            ("backoff", "backoff before attempt 3", "backoff"),
            ("attempt", "attempt 3", "succeeded"),
            ("timer", "timer", "fired"),
            ("signal", "expect Approve", "received"),
            ("child", child, "succeeded"),
        ]
    ), spans
    assert {"kind": "signal", "label": "Approve received", "outcome": "instant"} in drawn
    assert tip["display"] != "none", tip
    assert 'result: "O1"' in tip["text"], tip
    assert _brightness(light) < 300 < _brightness(dark), (light, dark)  # dark text on light, light on dark


def test_the_timeline_widget_in_jupyterlab(tmp_path: Path) -> None:
    _timeline_widget(tmp_path, "lab")


def test_the_timeline_widget_in_notebook_7(tmp_path: Path) -> None:
    _timeline_widget(tmp_path, "notebook")


# ------------------------------------------------------------------------------- a 10,000-event HTML export

BIG = ev.Service("browser-timeline-export")


@ev.activity
async def export_step(i: int) -> int:
    return i


@ev.workflow
async def export_loop(steps: int) -> int:
    total = 0
    for i in range(steps):
        total += await export_step(i)
    return total


def test_a_10000_event_timeline_page_renders_in_chromium_without_the_network(tmp_path: Path) -> None:
    """`eventual-nb timeline ID --html` on a 10,002-event history (a TestEnvironment served over HTTP): the page
    Chromium renders asks for nothing but itself. How long it took is written beside the screenshot for review
    (never asserted: `benchmarks/` measures it)."""
    from eventual_nb.client import ServiceClient
    from tests.server_support import run_server

    page_path = tmp_path / "timeline-10k.html"
    with run_server(ev.testing.TestEnvironment(service=BIG)) as server:

        async def run() -> str:
            async with ServiceClient(server.url, timeout=60) as client:
                handle = await client.start_execution(export_loop, 5000, name="big")
                assert await handle.result(timeout=120) == 5000 * 4999 // 2
                return handle.id

        execution_id = asyncio.run(run())
        written = subprocess.run(
            [sys.executable, "-m", "eventual_nb.cli", "timeline", execution_id, "--url", server.url,
             "--html", str(page_path)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert written.returncode == 0, written.stderr
    assert f"(10002 events) to {page_path}" in written.stdout
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(page_path.as_uri(), wait_until="load")
        page.locator(".ev-item").first.wait_for()
        shown = page.evaluate(
            """() => ({
              bars: document.querySelectorAll('.ev-item').length,
              rows: document.querySelectorAll('table.ev-history tbody tr').length,
              lines: document.querySelector('.ev-history-text pre').textContent.split('\\n').length,
              load_ms: performance.getEntriesByType('navigation')[0].loadEventEnd,
              paint_ms: (performance.getEntriesByType('paint').find((p) => p.name === 'first-contentful-paint')
                         || {startTime: null}).startTime,
            })"""
        )
        page.locator(".ev-timeline-svg").screenshot(path=str(tmp_path / "timeline-10k.png"))
    (tmp_path / "timeline-10k.json").write_text(json.dumps({**shown, "bytes": page_path.stat().st_size}, indent=2))
    assert requested == [page_path.as_uri()], requested
    # every event is in the page (as a text line), the last 1,000 also as table rows; quick calls are drawn as
    # counted runs
    assert shown["lines"] == 10002, shown
    assert shown["rows"] == 1000, shown
    assert 0 < shown["bars"] < 200, shown
