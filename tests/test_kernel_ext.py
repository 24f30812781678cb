"""The kernel extension in real kernels: every magic and verb, errors at the right notebook line, safe
redefinition, the kernelspec, and live widgets (comm traffic after the cell returned, a Send click)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import aws_support, svg_support
from tests.kernel_support import (
    KernelSession,
    error_of,
    free_port,
    html_of,
    run_notebook,
    text_of,
    widget_views,
)

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def plain(text: str) -> str:
    return ANSI.sub("", text)


# ------------------------------------------------------------------------------------ every magic and verb

KITCHEN_SINK = [
    # 0
    "%load_ext eventual_nb\nimport asyncio\nimport httpx\nfrom pydantic import BaseModel\nreceived = []\nport = {port}",
    # 1
    "%eventual service kitchen-sink",
    # 2
    "%eventual runtime local --path state/kitchen.db --bus shared/bus.db",
    # 3
    "%%event\nclass OrderPlaced(ev.Event):\n    order_id: str",
    # 4
    "%%subscription OrderPlaced --name record-orders --retries 1\n"
    "async def record(event: OrderPlaced) -> None:\n    received.append(event.order_id)",
    # 5
    "%%signal\nclass Approval(BaseModel):\n    ok: bool",
    # 6
    "%%activity --timeout 10s --retries 2\ndef double(x: int) -> int:\n    print(f'doubling {x}')\n    return 2 * x",
    # 7
    "%%workflow --timeout 1h\nasync def order(n: int) -> int:\n    approval = await Approval.expect()\n"
    "    await ev.publish(OrderPlaced(order_id=f'o{n}'))\n    return await double(n) if approval.ok else -1",
    # 8
    "%%api POST /orders/{n} --status-code 201 --responses 409\nasync def place(n: int) -> dict:\n"
    "    handle = await order.start(n)\n    return {'id': handle.id}",
    # 9: `$port` is expanded by IPython (only %%api opts out of expansion)
    "%eventual serve --port $port",
    # 10
    "response = httpx.post(f'http://127.0.0.1:{port}/orders/21', timeout=30)\n"
    "print(response.status_code)\nexecution_id = response.json()['id']\n"
    "print(sorted(httpx.get(f'http://127.0.0.1:{port}/openapi.json').json()['paths']['/orders/{n}']['post']['responses']))",
    # 11
    "await Approval.send(execution_id, Approval(ok=True))\nprint(await ev.ExecutionHandle(execution_id).result())",
    # 12
    "for _ in range(200):\n    if received:\n        break\n    await asyncio.sleep(0.05)\nprint(received)",
    # 13
    "%eventual status",
    # 14
    "%eventual executions --workflow order",
    # 15
    "%eventual history {execution_id}",
    # 16
    "%eventual timeline {execution_id}",
    # 17
    "%eventual logs {execution_id}",
    # 18
    "%eventual stop",
    # 19
    "%eventual export out",
    # 20
    "%eventual runtime test --start 2024-01-01T00:00:00+00:00",
    # 21
    "%%workflow\nasync def nap() -> str:\n    await asyncio.sleep(86400)\n    return 'rested'",
    # 22
    "nap_handle = await nap.start()",
    # 23
    "%eventual advance 1d",
    # 24
    "print((await nap_handle.status()).status.value, await nap_handle.result())",
    # 25
    "%eventual runtime aws",
    # 26
    "%eventual runtime local",
    # 27
    "%eventual help",
]


def test_a_notebook_using_every_magic_and_verb(tmp_path: Path) -> None:
    cells = list(KITCHEN_SINK)
    cells[0] = cells[0].replace("{port}", str(free_port()))
    nb = run_notebook(cells, tmp_path)
    c = nb.cells
    for index in range(len(c)):
        assert error_of(c[index]) is None, (index, c[index].source, error_of(c[index]))
    assert "service 'kitchen-sink'" in text_of(c[1])
    assert (tmp_path / "state" / "kitchen.db").exists()
    assert f"event bus {tmp_path / 'shared' / 'bus.db'}" in text_of(c[2])
    assert (tmp_path / "shared" / "bus.db").exists(), "the event published in cell 11 went onto the given bus"
    assert "event(s) OrderPlaced" in text_of(c[3])
    assert "subscription 'record-orders'" in text_of(c[4])
    assert "signal(s) Approval" in text_of(c[5])
    assert "activity 'double'" in text_of(c[6])
    assert "workflow 'order' (timeout 1:00:00)" in text_of(c[7])
    assert "route POST /orders/{n}" in text_of(c[8])  # the braces survived: %%api is @no_var_expand
    assert "serving http://127.0.0.1:" in text_of(c[9])
    assert text_of(c[10]).splitlines()[0] == "201"
    assert "'409'" in text_of(c[10]).splitlines()[1]  # --responses 409 is in the route's OpenAPI
    assert text_of(c[11]).strip() == "42"
    assert text_of(c[12]).strip() == "['o21']"
    status = text_of(c[13])
    assert "kitchen-sink: 1 workflows, 1 activities, 1 signals, 1 events, 1 subscriptions, 1 routes" in status
    assert f"LocalRuntime on {tmp_path / 'state' / 'kitchen.db'}" in status
    assert re.search(r"serving +http://127.0.0.1:\d+", status)
    assert widget_views(c[14]), "the executions table is a widget"
    history = html_of(c[15])
    for event_type in (
        "WorkflowStarted",
        "SignalReceived",
        "EventsPublished",
        "ActivityScheduled",
        "WorkflowSucceeded",
    ):
        assert event_type in history
    timeline = html_of(c[16])
    assert "<svg" in timeline
    assert "History" in timeline
    assert "Logs" in timeline
    bars = {(item.kind, item.label, item.outcome) for item in svg_support.bars(timeline)}
    assert ("activity", "double", "succeeded") in bars, bars
    assert ("workflow", "workflow order", "succeeded") in bars, bars
    assert "doubling 21" in timeline  # the logs
    assert "[double] doubling 21" in text_of(c[17])
    assert "stopped the server and the runtime" in text_of(c[18])
    assert "--notebook PATH" in text_of(c[19], "stderr")  # nbclient's kernel is not told its notebook file
    assert "TestEnvironment (virtual clock at 2024-01-01T00:00:00+00:00)" in text_of(c[20])
    assert "virtual clock at 2024-01-02T00:00:00+00:00" in text_of(c[23])
    assert text_of(c[24]).strip() == "SUCCEEDED rested"
    assert "%eventual runtime aws needs --stack NAME" in text_of(c[25], "stderr")
    assert (tmp_path / ".eventual" / "kitchen-sink.db").exists()
    assert "runtime local" in text_of(c[27])


# ------------------------------------------------------------------------------------------- bad input


def test_bad_flags_are_usage_errors_naming_the_flag(tmp_path: Path) -> None:
    nb = run_notebook(
        [
            "%load_ext eventual_nb",
            "%%activity --bogus 1\ndef a() -> int:\n    return 1",
            "%%workflow --timeout 1fortnight\nasync def w() -> None:\n    pass",
            "%%activity --retries many\ndef b() -> int:\n    return 1",
            "%%api FETCH /x\ndef c() -> None:\n    pass",
            "%%workflow\ndef not_async() -> None:\n    pass",
            "%eventual frobnicate",
            "%eventual advance 1d",
            "print('a' in dir(), 'w' in dir())",
            '%%workflow --name "nightly\nasync def q() -> None:\n    pass',
            '%%workflow --name "nightly report"\nasync def r() -> None:\n    pass',
            "print(get_ipython().find_cell_magic('activity').__doc__)",
        ],
        tmp_path,
    )
    c = nb.cells
    for index in (*range(1, 8), 9):  # usage errors go to stderr; they are not exceptions of the user's code
        assert error_of(c[index]) is None, c[index].source
    assert "unrecognized arguments: --bogus 1" in text_of(c[1], "stderr")
    assert "argument --timeout: invalid duration value: '1fortnight'" in text_of(c[2], "stderr")
    assert "argument --retries: invalid retries value: 'many'" in text_of(c[3], "stderr")
    assert "invalid choice: 'FETCH'" in text_of(c[4], "stderr")
    assert "must define an `async def` function" in text_of(c[5], "stderr")
    assert "unknown verb 'frobnicate'" in text_of(c[6], "stderr")
    assert "needs the test runtime" in text_of(c[7], "stderr")
    assert text_of(c[8]).strip() == "False False"  # nothing was defined by the refused cells
    # the line is split as a shell splits it (eventual_nb.magic_syntax, which the exporter reads too)
    assert "%%workflow: No closing quotation" in text_of(c[9], "stderr")
    assert "workflow 'nightly report'" in text_of(c[10])
    assert "--heartbeat-timeout HEARTBEAT_TIMEOUT" in text_of(c[11])  # `%%activity?` lists the flags


def test_the_inline_flag_defines_an_inline_activity_or_says_why_it_cannot(tmp_path: Path) -> None:
    """`%%activity --inline` (the grammar the exporter reads too): an activity the AWS orchestrator runs in its
    own invocation; one that could not run there is refused as the decorator refuses it."""
    nb = run_notebook(
        [
            "%load_ext eventual_nb",
            "%%activity --inline --timeout 5s\nasync def quick(x: int) -> int:\n    return x + 1",
            "print(quick.inline, quick.timeout.total_seconds())",
            "%%activity --inline --timeout 2m\nasync def slow(x: int) -> int:\n    return x",
            "%%activity --timeout 2m\nasync def queued(x: int) -> int:\n    return x",
            "print(queued.inline, getattr(slow, 'inline', None))",
        ],
        tmp_path,
    )
    c = nb.cells
    assert "activity 'quick'" in text_of(c[1])
    assert text_of(c[2]).strip() == "True 5.0"
    assert error_of(c[3]) is not None
    assert "at most 50 s fit" in error_of(c[3])["evalue"]
    assert text_of(c[5]).strip() == "False None"  # `slow` is the cell's plain function, not an activity


def test_workflow_code_reading_the_clock_or_randomness_is_warned_about_under_the_cell(tmp_path: Path) -> None:
    """The warning `@ev.workflow` gives at decoration reaches the notebook (stderr under the cell), for the
    cell magic and the decorator alike, pointing at the line in the cell."""
    nb = run_notebook(
        [
            "%load_ext eventual_nb\nimport random\nfrom datetime import datetime",
            "%%workflow\nasync def stamped() -> str:\n    return datetime.now().isoformat()",
            "@ev.workflow\nasync def rolled() -> int:\n    x = 1\n    return random.randint(1, 6) + x",
            "%%workflow\nasync def fine() -> str:\n    return ev.now().isoformat()",
        ],
        tmp_path,
    )
    c = nb.cells
    stamped, rolled = text_of(c[1], "stderr"), text_of(c[2], "stderr")
    assert "UserWarning: workflow 'stamped' calls datetime.now() at " in stamped, stamped
    assert "use ev.now() instead" in stamped, stamped
    assert "return datetime.now().isoformat()" in stamped, stamped
    assert re.search(r"\.py:3: UserWarning", stamped), stamped  # the magic's line 1 is `%%workflow`
    assert "UserWarning: workflow 'rolled' calls random.randint() at " in rolled, rolled
    assert "use ev.random() instead" in rolled, rolled
    assert re.search(r"\.py:4: UserWarning", rolled), rolled
    assert "Warning" not in text_of(c[3], "stderr")
    assert all(error_of(cell) is None for cell in c)


def test_an_exception_in_a_magic_body_points_at_the_notebook_cell_and_line(tmp_path: Path) -> None:
    nb = run_notebook(
        [
            "%load_ext eventual_nb",
            "%%activity\ndef fine() -> int:\n    return 1\n\nraise ValueError('boom in the body')",
            "%%workflow\nasync def broken(x: int) -> int:\n    return x +\n",
        ],
        tmp_path,
    )
    error = error_of(nb.cells[1])
    assert error is not None
    assert error.ename == "ValueError"
    assert error.evalue == "boom in the body"
    traceback = plain("\n".join(error.traceback))
    assert re.search(r"Cell In\[2\], line 5", traceback), traceback
    assert "raise ValueError('boom in the body')" in traceback
    assert "kernel_ext" not in traceback  # the extension's frames are hidden
    syntax = error_of(nb.cells[2])
    assert syntax is not None
    assert syntax.ename == "SyntaxError"
    assert "line 3" in plain("\n".join(syntax.traceback))


# ----------------------------------------------------------------------------------------- redefinition

REDEFINITION = [
    # 0
    "%load_ext eventual_nb\nimport asyncio\nfrom pydantic import BaseModel\n%eventual service redefinition",
    # 1
    "%%signal\nclass Go(BaseModel):\n    ok: bool = True",
    # 2
    "%%activity\ndef a(x: int) -> str:\n    return f'a{x}'",
    # 3
    "%%activity\ndef b(x: int) -> str:\n    return f'b{x}'",
    # 4
    "%%workflow\nasync def flow(x: int) -> str:\n    first = await a(x)\n    await Go.expect()\n    return first + '-old'",
    # 5
    "async def waiting(handle):\n    for _ in range(400):\n"
    "        if any(e.type == 'ActivitySucceeded' for e in await handle.history()):\n            return\n"
    "        await asyncio.sleep(0.025)\n    raise RuntimeError('never got to the signal')\n"
    "h1 = await flow.start(1)\nh2 = await flow.start(2)\nawait waiting(h1)\nawait waiting(h2)\nprint(h1.id, h2.id)",
    # 6: incompatible: the first durable call changes
    "%%workflow\nasync def flow(x: int) -> str:\n    first = await b(x)\n    await Go.expect()\n    return first + '-new'",
    # 7
    "for h in (h1, h2):\n    await Go.send(h, Go())\nprint(await h1.result(), await h2.result())",
    # 8: new executions use the new code; this one then meets a compatible change
    "h3 = await flow.start(3)\nawait waiting(h3)",
    # 9: compatible: the same durable calls in the same order, a different result
    "%%workflow\nasync def flow(x: int) -> str:\n    first = await b(x)\n    await Go.expect()\n    return first + '-newer'",
    # 10
    "await Go.send(h3, Go())\nprint(await h3.result())",
]


def test_redefinition_reports_incompatible_executions_which_finish_on_the_old_code(tmp_path: Path) -> None:
    nb = run_notebook(REDEFINITION, tmp_path)
    c = nb.cells
    for index in range(len(c)):
        assert error_of(c[index]) is None, (index, error_of(c[index]))
    first, second = text_of(c[5]).split()
    report = text_of(c[6])
    assert "workflow 'flow' redefined: 0 in-flight execution(s) continue on the new code" in report
    assert "2 would break and keep running on the previous definition" in report
    for execution_id in (first, second):
        assert re.search(
            rf"{re.escape(execution_id)} \(seq 0\): history recorded activity 'a'.*code now makes activity 'b'",
            report,
        ), report
    assert text_of(c[7]).strip() == "a1-old a2-old"
    compatible = text_of(c[9])
    assert "1 in-flight execution(s) continue on the new code" in compatible
    assert "would break" not in compatible
    assert text_of(c[10]).strip() == "b3-newer"


# ----------------------------------------------------------------------------------------- kernelspec


def test_the_eventual_kernelspec_loads_the_extension_at_start(tmp_path: Path) -> None:
    from kernel_ext.kernelspec import install_kernelspec

    prefix = tmp_path / "prefix"
    installed = install_kernelspec(prefix=prefix)
    spec = json.loads((installed / "kernel.json").read_text())
    assert spec["display_name"] == "Eventual (Python 3)"
    assert "--ext" in spec["argv"]
    assert installed.name == "eventual"
    nb = run_notebook(
        ["%eventual service from-kernelspec\nprint(type(ev.current_runtime()).__name__)"],
        tmp_path,
        kernel_name="eventual",
        env={"JUPYTER_PATH": str(prefix / "share" / "jupyter")},
    )
    assert error_of(nb.cells[0]) is None, error_of(nb.cells[0])
    assert text_of(nb.cells[0]).strip().endswith("LocalRuntime")


# --------------------------------------------------------------------------------------------- widgets

WIDGET_SETUP = [
    "%load_ext eventual_nb\nimport asyncio\nfrom pydantic import BaseModel\n%eventual service widgets",
    "%%signal\nclass Go(BaseModel):\n    ok: bool = True",
    "%%activity\nasync def slow(i: int) -> int:\n    await asyncio.sleep(0.3)\n    print(f'step {i}')\n    return i",
    "%%workflow\nasync def progress(n: int) -> int:\n    total = 0\n    for i in range(n):\n"
    "        total += await slow(i)\n    await Go.expect()\n    return total",
]


@pytest.fixture
def session(tmp_path: Path) -> Any:
    kernel = KernelSession(tmp_path)
    try:
        for cell in WIDGET_SETUP:
            kernel.execute(cell)
        yield kernel
    finally:
        kernel.close()


def _widget(opens: dict[str, dict[str, Any]], dom_class: str) -> str:
    found = [comm_id for comm_id, state in opens.items() if dom_class in state.get("_dom_classes", [])]
    assert len(found) == 1, f"expected one widget with class {dom_class}, found {len(found)}"
    return found[0]


def _updates(session: KernelSession, comm_id: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (m["header"]["date"].isoformat() if hasattr(m["header"]["date"], "isoformat") else str(m["header"]["date"]),
         m["content"]["data"].get("state", {}))
        for m in session.snapshot()
        if m["msg_type"] == "comm_msg"
        and m["content"]["comm_id"] == comm_id
        and m["content"]["data"].get("method") == "update"
    ]  # fmt: skip


def _shown(session: KernelSession, comm_id: str, shows: Callable[[str], bool], what: str) -> dict[str, Any]:
    """Wait for the update of widget `comm_id` whose `value` `shows` accepts (the frontend would render it)."""
    return session.wait_for(
        lambda m: (
            m["msg_type"] == "comm_msg"
            and m["content"]["comm_id"] == comm_id
            and shows(m["content"]["data"].get("state", {}).get("value", ""))
        ),
        60,
        what,
    )


def test_widget_keeps_updating_after_the_cell_returned_and_send_delivers_the_signal(session: KernelSession) -> None:
    reply = session.execute("h = await progress.start(4)\nh")
    cell_done = reply["header"]["date"]
    opens = session.comm_opens()
    status = _widget(opens, "eventual-status")
    timeline = _widget(opens, "eventual-history")
    send = _widget(opens, "eventual-signal-send")
    result = _widget(opens, "eventual-result")
    # the activities run after the cell returned: the history grows through comm updates
    _shown(
        session,
        timeline,
        lambda value: value.count("ActivitySucceeded") == 4,
        "the timeline to show four finished activities",
    )
    timeline_updates = [
        m for m in session.snapshot() if m["msg_type"] == "comm_msg" and m["content"]["comm_id"] == timeline
    ]
    after = [m for m in timeline_updates if m["header"]["date"] > cell_done]
    assert len(after) >= 2, "several timeline updates arrive after the starting cell returned"
    assert all("SUCCEEDED" not in state.get("value", "") for _, state in _updates(session, status))
    # a click on Send, as the frontend sends it, delivers the signal (no cell runs)
    session.send_comm(send, {"method": "custom", "content": {"event": "click"}})
    _shown(session, status, lambda value: "SUCCEEDED" in value, "the status widget to show SUCCEEDED")
    # each widget sends its own update: the result's may follow the status's
    _shown(session, result, lambda value: "<code>6</code>" in value, "the result widget to show 6 (0 + 1 + 2 + 3)")
    final = session.run("print((await h.status()).status.value)")
    assert final.strip() == "SUCCEEDED"


def test_handles_and_widgets_follow_a_rerun_of_runtime_local_and_say_plainly_when_replaced(
    session: KernelSession,
) -> None:
    """Run All twice re-runs `%eventual runtime local`: the widget shown before and the handle keep working
    on the new runtime (same database); after `%eventual runtime test` the old handle says why it cannot."""
    session.execute("%eventual runtime local")
    session.execute("h = await progress.start(3)\nh")
    opens = session.comm_opens()
    status = _widget(opens, "eventual-status")
    timeline = _widget(opens, "eventual-history")
    send = _widget(opens, "eventual-signal-send")
    _shown(session, timeline, lambda value: "ActivitySucceeded" in value, "the first activity to finish")
    session.execute("%eventual runtime local")  # the execution is in flight: activities still to run
    session.send_comm(send, {"method": "custom", "content": {"event": "click"}})  # the old widget's Send
    _shown(session, status, lambda value: "SUCCEEDED" in value, "the widget shown before the re-run to show SUCCEEDED")
    assert session.run("print(await h.result())").strip() == "3"
    session.execute("%eventual runtime test")
    said = session.run(
        "try:\n    await h.result()\nexcept ev.EventualError as exc:\n    print(type(exc).__name__, exc)"
    )
    assert "belongs to the runtime replaced by `%eventual runtime test`" in said, said
    assert "Traceback" not in said, said
    assert "not running" not in said, said
    session.execute("%eventual runtime local")  # back on the same database: the handle follows again
    assert session.run("print((await h.status()).status.value)").strip() == "SUCCEEDED"


# ------------------------------------------------------------------------------------------- notebooks

ROOT = Path(__file__).resolve().parent.parent


def test_the_getting_started_notebook_runs_on_the_eventual_kernel(tmp_path: Path) -> None:
    import nbformat

    from kernel_ext.kernelspec import install_kernelspec

    prefix = tmp_path / "prefix"
    install_kernelspec(prefix=prefix)
    work = tmp_path / "notebooks"
    work.mkdir()
    saved = work / "getting-started.ipynb"
    shutil.copy(ROOT / "notebooks" / "getting-started.ipynb", saved)
    notebook = nbformat.read(saved, as_version=4)
    cells = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
    # Jupyter tells the kernel its notebook through JPY_SESSION_NAME (what `%eventual export` reads)
    environment = {"JUPYTER_PATH": str(prefix / "share" / "jupyter"), "JPY_SESSION_NAME": str(saved)}
    nb = run_notebook(cells, work, kernel_name="eventual", env=environment)
    outputs = [text_of(cell) for cell in nb.cells]
    for cell in nb.cells:
        assert error_of(cell) is None, (cell.source, error_of(cell))
        assert "Error" not in text_of(cell, "stderr"), (cell.source, text_of(cell, "stderr"))
    assert any("Hello, Ada! (approved by a cell)" in text for text in outputs), outputs
    served = [text for text in outputs if "serving http://127.0.0.1:" in text]
    assert served, outputs
    assert "'execution_id': 'greet/" in served[0], outputs  # the route answered over HTTP
    assert (work / ".eventual" / "greetings.db").exists()
    manifest = json.loads((tmp_path / "build" / "greetings" / "eventual.json").read_text())
    assert manifest["name"] == "greetings"


def test_executions_progress_while_a_cell_blocks(session: KernelSession) -> None:
    """The runtime has its own thread: a cell that blocks the kernel's main thread does not stop it."""
    session.execute("h = await progress.start(3)\nh")
    timeline = _widget(session.comm_opens(), "eventual-history")
    blocking = session.client.execute("import time\ntime.sleep(4)\nprint('woke')")
    _shown(
        session,
        timeline,
        lambda value: value.count("ActivitySucceeded") == 3,
        "three finished activities in the timeline",
    )
    session.wait_idle(blocking)
    finished = [
        m
        for m in session.snapshot()
        if m["msg_type"] == "comm_msg"
        and m["content"]["comm_id"] == timeline
        and m["content"]["data"].get("state", {}).get("value", "").count("ActivitySucceeded") == 3
    ]
    woke = [m for m in session.snapshot() if m["msg_type"] == "stream" and "woke" in m["content"].get("text", "")]
    assert finished
    assert woke
    assert finished[0]["header"]["date"] < woke[0]["header"]["date"], "the timeline moved while the cell slept"


# ------------------------------------------------------------------------------------- a deployed stack

moto_endpoint = aws_support.moto_endpoint
dummy_credentials = aws_support.dummy_credentials

AWS_STACK = "kernel-aws"
AWS_SERVICE = "kernel-aws"
#: the definitions the notebook makes with magics, as the stack's functions import them (an export's package)
AWS_SERVICE_MODULE = f"""
import eventual_nb as ev
from pydantic import BaseModel

SERVICE = ev.Service({AWS_SERVICE!r})


@ev.signal_model
class Go(BaseModel):
    ok: bool = True


@ev.activity
def shout(name: str) -> str:
    print(f"shouting {{name}}")
    return name.upper()


@ev.workflow
async def loud(name: str) -> str:
    word = await shout(name)
    await Go.expect()
    return word
"""
AWS_CELLS = [
    f"%load_ext eventual_nb\nfrom pydantic import BaseModel\n%eventual service {AWS_SERVICE}",
    "%%signal\nclass Go(BaseModel):\n    ok: bool = True",
    "%%activity\ndef shout(name: str) -> str:\n    print(f'shouting {name}')\n    return name.upper()",
    "%%workflow\nasync def loud(name: str) -> str:\n    word = await shout(name)\n    await Go.expect()\n    return word",
]
#: the stack's functions, standing in for Lambda: the harness polls the queues until told to stop (a file
#: appears) or its time is up, whichever comes first
AWS_FUNCTIONS = r"""
import json, pathlib, sys, time
from datetime import UTC, datetime

directory, endpoint, region = sys.argv[1:4]
sys.path.insert(0, directory)
import kernel_aws_service
from eventual_nb.runtime.aws.functions import StackFunctions
from eventual_nb.runtime.aws.harness import Harness

environment = json.loads(pathlib.Path(directory, "environment.json").read_text())
functions = StackFunctions(
    [kernel_aws_service.SERVICE], environ=environment, client_kwargs={"endpoint_url": endpoint, "region_name": region}
)
harness = Harness(functions.clients, functions.handlers(), lambda: datetime.now(UTC))
deadline = time.monotonic() + 150
while time.monotonic() < deadline and not pathlib.Path(directory, "stop").exists():
    harness.run_until_idle()
    time.sleep(0.2)
"""


def test_the_kernel_runs_on_a_deployed_stack_with_live_widgets(
    tmp_path: Path, moto_endpoint: str, dummy_credentials: None
) -> None:
    """`%eventual runtime aws --stack` in a real kernel (dummy credentials, moto's endpoint): a start from a cell
    runs on the stack's functions (another process), the widget follows by polling, its Send click signals
    through the stack, and status, executions, history and logs read the stack."""
    aws_support.reset_moto(moto_endpoint)
    stack = aws_support.deploy_stack(moto_endpoint, stack=AWS_STACK, service=AWS_SERVICE)
    functions_dir = tmp_path / "functions"
    functions_dir.mkdir()
    (functions_dir / "kernel_aws_service.py").write_text(AWS_SERVICE_MODULE)
    (functions_dir / "environment.json").write_text(json.dumps(stack.environment))
    kernel = KernelSession(tmp_path)
    functions = subprocess.Popen(
        [sys.executable, "-c", AWS_FUNCTIONS, str(functions_dir), moto_endpoint, aws_support.REGION],
        cwd=functions_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for cell in AWS_CELLS:
            kernel.execute(cell)
        switched = kernel.run(
            f"%eventual runtime aws --stack {AWS_STACK} --region {aws_support.REGION} --endpoint-url {moto_endpoint}"
        )
        assert f"AwsRuntime on stack {AWS_STACK} in {aws_support.REGION}" in switched
        kernel.execute("h = await loud.start('ada', name='ada')\nh")
        opens = kernel.comm_opens()
        status, timeline = _widget(opens, "eventual-status"), _widget(opens, "eventual-timeline")
        send, result = _widget(opens, "eventual-signal-send"), _widget(opens, "eventual-result")

        def widget_shows(comm_id: str, text: str) -> Any:
            return lambda m: (
                m["msg_type"] == "comm_msg"
                and m["content"]["comm_id"] == comm_id
                and text in m["content"]["data"].get("state", {}).get("value", "")
            )

        history_widget = _widget(opens, "eventual-history")
        kernel.wait_for(widget_shows(history_widget, "ActivitySucceeded"), 90, "the history to show the activity")
        kernel.send_comm(send, {"method": "custom", "content": {"event": "click"}})
        kernel.wait_for(widget_shows(status, "SUCCEEDED"), 90, "the status widget to show SUCCEEDED")
        kernel.wait_for(widget_shows(result, "ADA"), 90, "the result widget to show the result")
        assert kernel.run("print(await h.result())").strip() == "ADA"

        report = kernel.run("%eventual status")
        assert f"AwsRuntime on stack {AWS_STACK} in {aws_support.REGION}" in report
        assert "in progress  0" in report
        before = len(kernel.comm_opens())
        kernel.execute("%eventual executions --workflow loud")
        table = [state for state in list(kernel.comm_opens().values())[before:] if "eventual-executions" in
                 state.get("_dom_classes", [])]  # fmt: skip
        assert table, "the executions table is a widget"
        kernel.wait_for(
            lambda m: (
                m["msg_type"] == "comm_msg"
                and "loud/ada" in m["content"]["data"].get("state", {}).get("value", "")
                and "SUCCEEDED" in m["content"]["data"].get("state", {}).get("value", "")
                and m["content"]["comm_id"] not in (status, timeline, history_widget, result)
            ),
            60,
            "the executions table to list loud/ada",
        )
        history = kernel.execute("%eventual history loud/ada")
        shown = "".join(
            m["content"]["data"].get("text/html", "")
            for m in kernel.snapshot()
            if m["msg_type"] == "display_data"
            and m["parent_header"].get("msg_id") == history["parent_header"]["msg_id"]
        )
        for event_type in ("WorkflowStarted", "ActivitySucceeded", "SignalReceived", "WorkflowSucceeded"):
            assert event_type in shown, shown
        assert "shouting ada" in kernel.run("%eventual logs loud/ada")
    finally:
        (functions_dir / "stop").touch()
        try:
            _, errors = functions.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            functions.kill()
            _, errors = functions.communicate()
        finally:
            kernel.close()
    assert functions.returncode == 0, errors
