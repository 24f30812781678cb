"""The exporter's notebook side (exporter/notebook.py, exporter/package.py): notebook → package.

Everything runs on real files and real processes: notebooks are written with nbformat into the test's
tmp dir, `eventual-nb export` and `eventual-nb serve` run as subprocesses, the generated package is
imported by a clean interpreter that cannot import Jupyter, and the round trip drives a served notebook
and its served export over HTTP with the same calls. (template.json, handlers.py and lambda.zip have
their own tests, next to the pieces that write them.)
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest

import eventual_nb as ev
from exporter import ExportError, export_notebook
from exporter.notebook import read_service
from tests.kernel_support import run_notebook, text_of

ROOT = Path(__file__).resolve().parent.parent

# -- notebooks ----------------------------------------------------------------------------------------


@dataclass
class C:
    """One cell of a test notebook: code unless `markdown`; `id` fixed so messages can be asserted."""

    source: str
    id: str
    tags: tuple[str, ...] = ()
    markdown: bool = False
    output: str | None = None


def write_notebook(path: Path, cells: list[C]) -> Path:
    notebook = nbformat.v4.new_notebook()
    for cell in cells:
        made = nbformat.v4.new_markdown_cell(cell.source) if cell.markdown else nbformat.v4.new_code_cell(cell.source)
        made["id"] = cell.id
        if cell.tags:
            made["metadata"]["tags"] = list(cell.tags)
        if cell.output is not None:
            made["outputs"] = [nbformat.v4.new_output("stream", name="stdout", text=cell.output)]
            made["execution_count"] = 1
        notebook.cells.append(made)
    notebook.metadata["kernelspec"] = {"name": "eventual", "display_name": "Eventual (Python 3)", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)
    return path


# The round-trip service: every kind of magic cell, plus cells that must stay out of the export (each
# of which would break the import or clash with a definition if it were exported).
ORDERS = [
    C("# Orders service\n\nA notebook with every kind of service cell.", "title", markdown=True),
    C("#| export\nimport asyncio\n\nfrom pydantic import BaseModel\n\n%eventual service orders", "imports"),
    C("class Order(BaseModel):\n    id: str\n    quantity: int", "models", tags=("export",)),
    C("%%event\nclass OrderPlaced(ev.Event):\n    order_id: str\n    total: float", "events"),
    C("%%signal\nclass Approval(BaseModel):\n    approver: str", "signals"),
    C(
        "%%activity --retries 1 --timeout 30s\n"
        "def price(order_id: str, quantity: int) -> float:\n"
        "    print(f'pricing {order_id}')\n"
        "    return quantity * 2.5",
        "price",
        output="activity 'price' in service 'orders'\n",
    ),
    C(
        "%%workflow --timeout 1h\n"
        "async def place_order(order: Order) -> dict:\n"
        "    total = await price(order.id, order.quantity)\n"
        "    await asyncio.sleep(0.2)  # a durable timer\n"
        "    approval = await Approval.expect(timeout='10m')\n"
        "    await ev.publish(OrderPlaced(order_id=order.id, total=total))\n"
        "    return {'order': order.id, 'total': total, 'approved_by': approval.approver}",
        "place-order",
    ),
    C("%%workflow\nasync def ship(order_id: str) -> str:\n    return f'shipped {order_id}'", "ship"),
    C(
        "%%subscription OrderPlaced --name ship-placed-orders --retries 2\n"
        "async def ship_placed(event: OrderPlaced) -> None:\n"
        "    await ship.start(event.order_id, name=event.order_id)",
        "subscription",
    ),
    C(
        "%%api POST /orders --status-code 202\n"
        "async def create_order(order: Order) -> dict:\n"
        "    handle = await place_order.start(order, name=order.id)\n"
        "    return {'execution_id': handle.id}",
        "post-orders",
    ),
    C(
        "%%api GET /orders/{order_id} --responses 404\n"
        "async def get_order(order_id: str) -> dict:\n"
        "    execution = await ev.current_runtime().get_execution(f'place_order/{order_id}')\n"
        "    return {'status': str(execution.status), 'result': execution.result}",
        "get-order",
    ),
    # never exported: exploration (top-level await), parameters (even if also tagged export), a test cell
    # redefining a workflow, `#| hide`, `#| test`, another cell magic
    C("h = await place_order.start(Order(id='x', quantity=1))\nh", "explore", output="<handle>"),
    C("runtime = 'test'\nundefined_in_parameters()", "params", tags=("parameters", "export")),
    C("%%workflow\nasync def place_order(order: dict) -> None:\n    pass", "test-cell", tags=("test",)),
    C("#| hide\nraise RuntimeError('hidden cell exported')", "hidden"),
    C("#| test\nassert False, 'test cell exported'", "test-directive"),
    C("%%time\nraise RuntimeError('timed cell exported')", "timed"),
    C("## Notes\nNothing to export here.", "notes", markdown=True),
]

EXPECTED_FILES = {
    "pyproject.toml",
    "eventual.json",
    "openapi.json",
    "template.json",
    "handlers.py",
    "orders/__init__.py",
}


def files_of(directory: Path) -> dict[str, str]:
    """Every file under `directory` (relative path → sha256 of its bytes)."""
    return {
        path.relative_to(directory).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("EVENTUAL_")}
    return subprocess.run(
        [sys.executable, "-m", "eventual_nb.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )


@pytest.fixture
def orders(tmp_path: Path) -> Path:
    return write_notebook(tmp_path / "notebooks" / "orders.ipynb", ORDERS)


# -- the package --------------------------------------------------------------------------------------


def test_export_writes_exactly_the_contract_files(orders: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert export_notebook(orders, out) == out
    assert set(files_of(out)) == EXPECTED_FILES

    source = (out / "orders" / "__init__.py").read_text()
    assert source.startswith("# AUTOGENERATED by eventual-nb 0.1.0; edit orders.ipynb, not this file.\n")
    assert '"""Orders service"""' in source.splitlines()[1]
    for cell_id in ("imports", "models", "events", "signals", "price", "place-order", "ship", "subscription"):
        assert f"# %% orders.ipynb #{cell_id}\n" in source
    for cell_id in ("explore", "params", "test-cell", "hidden", "test-directive", "timed", "title", "notes"):
        assert f"#{cell_id}\n" not in source
    for decorator in (
        '@ev.activity(timeout="30s", retry=ev.RetryPolicy(max_attempts=2))\ndef price(',
        '@ev.workflow(timeout="1h")\nasync def place_order(',
        "@ev.workflow\nasync def ship(",
        '@ev.subscription(OrderPlaced, name="ship-placed-orders", retry=ev.RetryPolicy(max_attempts=3))\n',
        '@ev.api.post("/orders", status_code=202)\nasync def create_order(',
        '@ev.api.get("/orders/{order_id}", responses={404: {"description": "Not Found"}})\nasync def get_order(',
        "@ev.signal_model\nclass Approval(BaseModel):",
    ):
        assert decorator in source, decorator
    assert "%eventual" not in source
    assert "\n%%" not in source
    assert "pricing {order_id}')\n    return quantity * 2.5\n" in source  # the cell's text, unchanged
    assert 'SERVICE = ev.Service("orders")' in source
    all_names = ast.literal_eval(source.split("__all__ = ", 1)[1].split("\n]\n", 1)[0] + "\n]")
    assert all_names == sorted(all_names)
    assert all_names == [
        "Approval",
        "Order",
        "OrderPlaced",
        "SERVICE",
        "create_order",
        "get_order",
        "place_order",
        "price",
        "ship",
        "ship_placed",
    ]

    manifest = json.loads((out / "eventual.json").read_text())
    assert manifest["format"] == 1
    assert (manifest["name"], manifest["package"], manifest["notebook"]) == ("orders", "orders", "orders.ipynb")
    assert manifest["eventual_nb_version"] == "0.1.0"
    assert manifest["source_sha256"] == hashlib.sha256((out / "orders" / "__init__.py").read_bytes()).hexdigest()
    assert manifest["handlers"]["api"] == "handlers.api"
    assert manifest["handlers"]["activity"] == "handlers.activity_worker"
    assert "lambda_zip" not in manifest
    service = manifest["service"]
    assert [w["name"] for w in service["workflows"]] == ["place_order", "ship"]
    assert service["workflows"][0]["timeout_seconds"] == 3600
    assert [a["name"] for a in service["activities"]] == ["price"]
    assert service["activities"][0]["retry"]["max_attempts"] == 2
    assert service["activities"][0]["timeout_seconds"] == 30
    assert [s["name"] for s in service["signals"]] == ["Approval"]
    assert [e["name"] for e in service["events"]] == ["OrderPlaced"]
    assert service["subscriptions"] == [
        {
            "name": "ship-placed-orders",
            "events": ["OrderPlaced"],
            "source": None,
            "retry": {
                "max_attempts": 3,
                "initial_interval": 1.0,
                "backoff": 2.0,
                "max_interval": 300.0,
                "non_retryable": [],
            },
        }
    ]
    assert [(r["methods"], r["path"]) for r in service["routes"]] == [
        (["POST"], "/orders"),
        (["GET"], "/orders/{order_id}"),
    ]

    openapi = json.loads((out / "openapi.json").read_text())
    assert set(openapi["paths"]) == {"/orders", "/orders/{order_id}"}  # its own routes, no /_eventual/
    assert "202" in openapi["paths"]["/orders"]["post"]["responses"]

    project = tomllib.loads((out / "pyproject.toml").read_text())
    assert project["project"]["name"] == "orders-service"
    assert project["project"]["version"] == "0.1.0"
    assert project["project"]["dependencies"] == ["eventual-nb==0.1.0"]
    assert project["tool"]["setuptools"]["packages"] == ["orders"]

    for name in files_of(out):
        text = (out / name).read_bytes()
        assert str(tmp_path).encode() not in text, f"{name} holds the export's path"
        assert text.endswith(b"\n"), name
    for name in ("eventual.json", "openapi.json", "template.json"):
        value = json.loads((out / name).read_text())
        assert (out / name).read_text() == json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def test_exporting_twice_gives_identical_bytes(orders: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "elsewhere" / "second"
    assert cli("export", str(orders), "-o", str(first)).returncode == 0
    assert cli("export", str(orders), "-o", str(second)).returncode == 0
    assert files_of(first) == files_of(second)
    assert set(files_of(first)) == EXPECTED_FILES

    # a newer modification time and a re-export over the earlier export change nothing either
    stat = orders.stat()
    os.utime(orders, (stat.st_atime + 3600, stat.st_mtime + 3600))
    proc = cli("export", str(orders), "-o", str(first))
    assert proc.returncode == 0, proc.stderr
    assert files_of(first) == files_of(second)


def test_missing_cell_ids_get_ids_from_their_index(tmp_path: Path) -> None:
    """Old notebooks (nbformat 4.4) have no cell ids; the markers must not be random."""
    notebook = {
        "nbformat": 4,
        "nbformat_minor": 4,
        "metadata": {},
        "cells": [
            {
                "cell_type": "code",
                "metadata": {},
                "source": ["%%workflow\n", "async def w() -> int:\n", "    return 1"],
            },
            {"cell_type": "code", "metadata": {}, "source": "%%activity\ndef a() -> int:\n    return 2"},
        ],
    }
    path = tmp_path / "old.ipynb"
    path.write_text(json.dumps(notebook))
    export_notebook(path, tmp_path / "a")
    export_notebook(path, tmp_path / "b")
    assert files_of(tmp_path / "a") == files_of(tmp_path / "b")
    source = (tmp_path / "a" / "old" / "__init__.py").read_text()
    assert "# %% old.ipynb #cell-0\n@ev.workflow\nasync def w()" in source
    assert "# %% old.ipynb #cell-1\n@ev.activity\ndef a()" in source


def test_the_package_imports_without_jupyter(orders: Path, tmp_path: Path) -> None:
    """A clean interpreter (-I: no PYTHONPATH, no user site, no current directory) that cannot import any
    Jupyter package, nor the exporter or the kernel extension, imports the package and finds its service."""
    out = export_notebook(orders, tmp_path / "out")
    script = f"""
import importlib.abc, json, sys

BLOCKED = {{"IPython", "ipykernel", "ipywidgets", "nbformat", "nbclient", "jupyter_client", "jupyter_core",
           "papermill", "kernel_ext", "exporter"}}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked in this test: {{name}}")
        return None

sys.meta_path.insert(0, Block())
sys.path.insert(0, {str(out)!r})
import orders

service = orders.SERVICE
routes = sorted((sorted(route.methods)[0], route.path) for route in service.api.routes)
print(json.dumps({{
    "service": service.name,
    "workflows": sorted(service.workflows),
    "activities": sorted(service.activities),
    "signals": sorted(service.signals),
    "events": sorted(service.events),
    "subscriptions": sorted(service.subscriptions),
    "routes": routes,
    "retries": service.activities["price"].retry.max_attempts,
    "timeout": service.workflows["place_order"].timeout.total_seconds(),
    "approval_is_signal": orders.Approval.__eventual_signal__ is service.signals["Approval"],
    "jupyter": sorted(name for name in sys.modules if name.split(".")[0] in BLOCKED),
    "all": orders.__all__,
}}))
"""
    proc = subprocess.run([sys.executable, "-I", "-B", "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert found["service"] == "orders"
    assert found["workflows"] == ["place_order", "ship"]
    assert found["activities"] == ["price"]
    assert found["signals"] == ["Approval"]
    assert found["events"] == ["OrderPlaced"]
    assert found["subscriptions"] == ["ship-placed-orders"]
    assert found["routes"] == [["GET", "/orders/{order_id}"], ["POST", "/orders"]]
    assert found["retries"] == 2
    assert found["timeout"] == 3600
    assert found["approval_is_signal"] is True
    assert found["jupyter"] == []
    assert "SERVICE" in found["all"]
    assert not list(out.rglob("__pycache__"))


def test_magic_lines_future_imports_and_internal_cells(tmp_path: Path) -> None:
    notebook = write_notebook(
        tmp_path / "lines.ipynb",
        [
            C(
                "#| export\nfrom __future__ import annotations\nimport os\n!ls\nlisting = !ls\n%time x = 1\nSEP = os.sep",
                "lines",
            ),
            C("#|exporti\nINTERNAL = 2\n\ndef _helper() -> int:\n    return INTERNAL", "internal"),
            C("%%activity\n%load_ext something\ndef a() -> str:\n    return SEP", "activity"),
        ],
    )
    out = export_notebook(notebook, tmp_path / "out")
    source = (out / "lines" / "__init__.py").read_text()
    head, _, body = source.partition("# %% lines.ipynb #lines\n")
    assert "from __future__ import annotations\n" in head  # hoisted: Python wants it first
    assert body.startswith("import os\nSEP = os.sep\n")
    assert "!ls" not in source
    assert "get_ipython" not in source
    assert "%time" not in source
    assert "%load_ext" not in source
    assert "INTERNAL = 2" in source
    names = ast.literal_eval(source.split("__all__ = ", 1)[1].split("\n]\n", 1)[0] + "\n]")
    assert names == ["SEP", "SERVICE", "a"]  # an `#| exporti` cell's names stay out of __all__

    error = _export_error(
        tmp_path / "nested",
        [C("#| export\ndef f():\n    %time 1", "nested"), C("%%workflow\nasync def w() -> None: ...", "w")],
    )
    assert_located(error, 0, "nested", 3)
    assert "inside a block cannot be exported" in error.message


# -- bad input ----------------------------------------------------------------------------------------


def _export_error(tmp_path: Path, cells: list[C], name: str = "bad.ipynb") -> ExportError:
    notebook = write_notebook(tmp_path / name, cells)
    with pytest.raises(ExportError) as caught:
        export_notebook(notebook, tmp_path / "out")
    assert not (tmp_path / "out").exists(), "a failed export must not write anything"
    return caught.value


def assert_located(error: ExportError, index: int, cell_id: str, line: int) -> None:
    assert (error.cell_index, error.cell_id, error.line) == (index, cell_id, line), error.message
    assert f"cell index {index} (id '{cell_id}'), line {line}" in error.message


def test_syntax_error_in_a_magic_cell_names_cell_and_line(tmp_path: Path) -> None:
    error = _export_error(
        tmp_path,
        [
            C("# Title", "md", markdown=True),
            C("%%activity --retries 1\ndef price(x: int) -> int:\n    return x +\n", "broken"),
        ],
    )
    assert_located(error, 1, "broken", 3)  # the %%activity line is line 1
    assert "SyntaxError" in error.message
    assert "return x +" in error.message


def test_syntax_error_in_an_export_cell_and_bad_flags(tmp_path: Path) -> None:
    error = _export_error(
        tmp_path,
        [C("#| export\nimport os\nif True\n    pass", "helpers"), C("%%workflow\nasync def w() -> None: ...", "w")],
    )
    assert_located(error, 0, "helpers", 3)

    error = _export_error(tmp_path, [C("%%workflow --timeout soon\nasync def w() -> None: ...", "flags")])
    assert_located(error, 0, "flags", 1)
    assert "invalid duration value: 'soon'" in error.message

    error = _export_error(tmp_path, [C("%%workflow\ndef not_async() -> None: ...", "sync")])
    assert_located(error, 0, "sync", 1)
    assert "async def" in error.message

    error = _export_error(tmp_path, [C("\n%%api GET items\nasync def items() -> list: ...", "path")])
    assert_located(error, 0, "path", 2)
    assert "must start with '/'" in error.message

    error = _export_error(tmp_path, [C("%%api GET /items --responses 200\nasync def items() -> list: ...", "ok")])
    assert_located(error, 0, "ok", 1)
    assert "200 is not an error status" in error.message


def test_reading_a_notebook_loads_neither_the_kernel_extension_nor_widgets(tmp_path: Path) -> None:
    """The exporter reads the magics' flags with eventual_nb.magic_syntax, not through the kernel's magics,
    so exporting needs no kernel extension and no ipywidgets (in a fresh interpreter, as the CLI runs it)."""
    notebook = write_notebook(
        tmp_path / "plain.ipynb",
        [C("%%activity --timeout 30s --retries 1\ndef a() -> int:\n    return 1", "a"), WORKFLOW],
    )
    probe = (
        "import json, sys\n"
        "from exporter.notebook import read_service\n"
        f"source = read_service({str(notebook)!r}).source\n"
        "print(json.dumps([source, sorted(m for m in sys.modules if m.split('.')[0] in ('kernel_ext', 'ipywidgets'))]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    source, loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert '@ev.activity(timeout="30s", retry=ev.RetryPolicy(max_attempts=2))' in source
    assert loaded == []


def test_magic_lines_split_as_a_shell_splits_them(tmp_path: Path) -> None:
    """Quotes group words and are not part of them (the kernel reads the line with the same grammar,
    eventual_nb.magic_syntax); an unclosed quote is an error at the magic line, not a traceback."""
    exported = read_service(
        write_notebook(
            tmp_path / "quoted.ipynb",
            [
                C("%%workflow --name \"nightly report\" --timeout '2h'\nasync def w() -> None: ...", "w"),
                C("%%subscription 'order placed' --name ship\ndef ship(event: dict) -> None: ...", "s"),
            ],
        )
    )
    assert '@ev.workflow(name="nightly report", timeout="2h")' in exported.source
    assert '@ev.subscription("order placed", name="ship")' in exported.source

    error = _export_error(tmp_path, [C('\n%%workflow --name "nightly\nasync def w() -> None: ...', "open")])
    assert_located(error, 0, "open", 2)
    assert "%%workflow: No closing quotation" in error.message


def test_the_inline_flag_is_exported_as_the_decorators_option(tmp_path: Path) -> None:
    exported = read_service(
        write_notebook(
            tmp_path / "inline.ipynb",
            [
                C("%%activity --inline --timeout 5s\nasync def quick(x: int) -> int:\n    return x", "quick"),
                C("%%activity --timeout 5s\nasync def queued(x: int) -> int:\n    return x", "queued"),
                WORKFLOW,
            ],
        )
    )
    assert '@ev.activity(timeout="5s", inline=True)\nasync def quick(' in exported.source
    assert '@ev.activity(timeout="5s")\nasync def queued(' in exported.source


def test_notebook_without_service_cells(tmp_path: Path) -> None:
    error = _export_error(
        tmp_path,
        [C("# Just notes", "md", markdown=True), C("#| export\nx = 1", "code"), C("%%time\ny = 2", "timed")],
        name="notes.ipynb",
    )
    assert "notes.ipynb has no service cells" in error.message
    assert error.cell_index is None

    error = _export_error(tmp_path, [C("%%workflow\nasync def w() -> None: ...", "only", tags=("test",))])
    assert "has no service cells" in error.message


def test_two_definitions_with_the_same_name_name_both_cells(tmp_path: Path) -> None:
    error = _export_error(
        tmp_path,
        [
            C("%%workflow\nasync def transfer(x: int) -> int:\n    return x", "first"),
            C("# between", "md", markdown=True),
            C("%%workflow --timeout 1h\n\nasync def transfer(x: int) -> int:\n    return x + 1", "second"),
        ],
    )
    assert_located(error, 2, "second", 3)
    assert "workflow 'transfer' is defined twice" in error.message
    assert "cell index 0 (id 'first'), line 2" in error.message

    error = _export_error(
        tmp_path,
        [
            C("%%activity\ndef charge(x: int) -> int:\n    return x", "activity"),
            C("%%workflow --name charge\nasync def run(x: int) -> int:\n    return x", "workflow"),
        ],
    )
    assert_located(error, 1, "workflow", 2)
    assert "an activity and a workflow named 'charge'" in error.message
    assert "cell index 0 (id 'activity')" in error.message

    error = _export_error(
        tmp_path,
        [
            C("%%api GET /a\nasync def one() -> int:\n    return 1", "one"),
            C("%%api get /a\nasync def two() -> int:\n    return 2", "two"),
        ],
    )
    assert "route 'GET /a' is defined twice" in error.message
    assert_located(error, 1, "two", 2)


def test_an_import_failure_names_the_cell_to_export(tmp_path: Path) -> None:
    error = _export_error(
        tmp_path,
        [
            C("from pydantic import BaseModel", "imports"),
            C("%%signal\nclass Approval(BaseModel):\n    by: str", "signal"),
        ],
    )
    assert_located(error, 1, "signal", 2)
    assert "NameError: name 'BaseModel' is not defined" in error.message
    assert "cell index 0 (id 'imports'), which is not exported" in error.message
    assert "#| export" in error.message


def test_output_directory_that_is_not_an_export(orders: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "orders").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    (out / "orders" / "keep.py").write_text("mine too")
    with pytest.raises(ExportError) as caught:
        export_notebook(orders, out)
    assert "not an earlier export" in caught.value.message
    assert "--force" in caught.value.message
    untouched = {
        "notes.txt": hashlib.sha256(b"mine").hexdigest(),
        "orders/keep.py": hashlib.sha256(b"mine too").hexdigest(),
    }
    assert files_of(out) == untouched

    export_notebook(orders, out, force=True)
    assert set(files_of(out)) == EXPECTED_FILES | {"notes.txt", "orders/keep.py"}
    assert (out / "notes.txt").read_text() == "mine"

    (out / "some.file").write_text("x")
    with pytest.raises(ExportError, match="it exists and is not a directory"):
        export_notebook(orders, out / "some.file")


def test_reexport_replaces_an_earlier_export_of_another_service(tmp_path: Path) -> None:
    """An earlier export is replaced without --force; its package goes, even when the service was renamed,
    and so does bytecode left by serving it."""
    out = tmp_path / "out"
    first = write_notebook(tmp_path / "a" / "svc.ipynb", [C("%%workflow\nasync def w() -> int:\n    return 1", "w")])
    export_notebook(first, out)
    assert set(files_of(out)) == {
        "pyproject.toml",
        "eventual.json",
        "openapi.json",
        "template.json",
        "handlers.py",
        "svc/__init__.py",
    }
    (out / "svc" / "__pycache__").mkdir()
    (out / "svc" / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"stale")
    renamed = write_notebook(
        tmp_path / "b" / "svc.ipynb",
        [C("%eventual service renamed", "service"), C("%%workflow\nasync def w() -> int:\n    return 1", "w")],
    )
    export_notebook(renamed, out)
    assert set(files_of(out)) == {
        "pyproject.toml",
        "eventual.json",
        "openapi.json",
        "template.json",
        "handlers.py",
        "renamed/__init__.py",
    }
    assert not (out / "svc").exists()


def test_service_name_last_one_wins(tmp_path: Path) -> None:
    notebook = write_notebook(
        tmp_path / "naming.ipynb",
        [
            C("%eventual service first", "a"),
            C("#| export\nimport eventual_nb as ev\nev.Service('second')", "b"),
            C("%%workflow\nasync def w() -> int:\n    return 1", "w"),
            C("%eventual service third\nprint('exploring')", "c"),
            C("ev.Service('ignored-in-a-test-cell')", "t", tags=("test",)),
        ],
    )
    with pytest.raises(ExportError) as caught:
        export_notebook(notebook, tmp_path / "out")
    # the exported cell switches to 'second' after 'third' was made current: definitions land elsewhere
    assert "one service, 'third'" in caught.value.message
    assert "service 'second' got workflows w" in caught.value.message

    plain = write_notebook(tmp_path / "Plain Name.ipynb", [C("%%workflow\nasync def w() -> int:\n    return 1", "w")])
    export_notebook(plain, tmp_path / "plain")
    manifest = json.loads((tmp_path / "plain" / "eventual.json").read_text())
    assert (manifest["name"], manifest["package"]) == ("Plain Name", "Plain_Name")
    assert tomllib.loads((tmp_path / "plain" / "pyproject.toml").read_text())["project"]["name"] == "plain-name-service"


WORKFLOW = C("%%workflow\nasync def w() -> int:\n    return 1", "w")


def test_an_unknown_cell_magic_close_to_ours_is_refused_with_the_closest_one(tmp_path: Path) -> None:
    """A typo such as %%workfow would drop the cell and its workflow from the export without a word."""
    error = _export_error(
        tmp_path,
        [C("# Title", "md", markdown=True), C("%%workfow\nasync def transfer() -> int:\n    return 1", "typo")],
    )
    assert_located(error, 1, "typo", 1)
    assert "unknown cell magic %%workfow: did you mean %%workflow?" in error.message
    assert "'transfer'" in error.message

    error = _export_error(tmp_path, [WORKFLOW, C("\n%%signals\nclass Approval(ev.Event):\n    by: str", "signals")])
    assert_located(error, 1, "signals", 2)
    assert "did you mean %%signal?" in error.message

    # another magic's cell that is marked for export would silently not be
    error = _export_error(tmp_path, [WORKFLOW, C("%%time\n#| export\nRATE = 3", "timed")])
    assert_located(error, 1, "timed", 1)
    assert "%%time is not an eventual-nb magic, so this cell cannot be exported" in error.message
    error = _export_error(tmp_path, [WORKFLOW, C("%%capture\nRATE = 3", "captured", tags=("export",))])
    assert_located(error, 1, "captured", 1)


def test_other_cell_magics_stay_in_the_notebook(tmp_path: Path) -> None:
    """Every cell magic IPython itself registers, even on a cell that defines a function, and a magic
    close to ours whose body is not Python (a prompt for `%%ai`), are exploration: left out, no error."""
    listed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json; from IPython.core.interactiveshell import InteractiveShell; "
            "print(json.dumps(sorted(InteractiveShell.instance().magics_manager.magics['cell'])))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    magics = json.loads(listed.stdout)
    assert {"time", "capture", "writefile", "bash", "script"} <= set(magics)
    cells = [WORKFLOW]
    cells += [C(f"%%{magic}\ndef helper_{n}():\n    return 1", f"m{n}") for n, magic in enumerate(magics)]
    cells.append(C("%%ai chatgpt\nWrite a workflow that refunds a transfer.", "prompt"))
    exported = read_service(write_notebook(tmp_path / "magics.ipynb", cells))
    assert [cell.id for cell in exported.cells] == ["w"]


def test_a_name_only_an_unexported_cell_defines_is_refused(tmp_path: Path) -> None:
    """The function would export and import cleanly, then raise NameError when called."""
    error = _export_error(
        tmp_path,
        [
            C("import asyncio\nRATE = 3", "setup"),
            C("%%workflow\nasync def w(x: int) -> int:\n    y = x * 2\n    await asyncio.sleep(1)\n    return y", "w"),
        ],
    )
    assert_located(error, 1, "w", 4)
    assert "name 'asyncio' is used by the exported function 'w' but nothing exported defines it" in error.message
    assert "cell index 0 (id 'setup') defines it: mark that cell `#| export`" in error.message

    error = _export_error(
        tmp_path,
        [
            C("%%activity\ndef fee(x: int) -> int:\n    return [x * RATE for _ in range(1)][0]", "fee"),
            C("#| export\nhelper = lambda v: v + OFFSET", "helper"),
        ],
    )
    assert_located(error, 0, "fee", 3)  # inside a comprehension
    assert "name 'RATE'" in error.message
    assert "define or import it in an exported cell" in error.message
    assert "Also undefined: 'OFFSET' (cell index 1 (id 'helper'), line 2)" in error.message

    notebook = write_notebook(
        tmp_path / "rate.ipynb", [C("RATE = 3", "rate"), C("%%workflow\nasync def w() -> int:\n    return RATE", "w")]
    )
    proc = cli("export", str(notebook), "-o", str(tmp_path / "never"))
    assert proc.returncode == 1
    assert "rate.ipynb, cell index 1 (id 'w'), line 3: name 'RATE'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_names_exported_code_defines_in_any_way_are_not_refused(tmp_path: Path) -> None:
    """Everything a module binds (imports in branches and try blocks, for and with targets, `global`
    assignments in functions), builtins, dunders, comprehension variables, the generated `ev` and
    `SERVICE`, `%%event`/`%%signal` classes; annotations, which are not read at call time."""
    notebook = write_notebook(
        tmp_path / "names.ipynb",
        [
            C(
                "#| export\nfrom __future__ import annotations\nimport os, json as j\nfrom typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from decimal import Decimal\nfor K in range(2):\n    pass\n"
                "with open(os.devnull) as DEVNULL:\n    pass\ntry:\n    import ujson as fastjson\n"
                "except ImportError:\n    fastjson = None\n\ndef init():\n    global LATE\n    LATE = 1\n\n"
                "def helper(x: Missing) -> Decimal:\n    y: Undefined = 3\n"
                "    return [a + b for a in range(K) for b in {c: 1 for c in 'ab'}.values()] + [LATE, j.dumps(y), "
                "os.sep, __name__, DEVNULL, fastjson, len]\n",
                "helpers",
            ),
            C("%%event\nclass Placed(ev.Event):\n    id: str", "event"),
            C("%%signal\nclass Approval(ev.Event):\n    by: str", "signal"),
            C(
                "%%workflow\nasync def w() -> str:\n    await ev.publish(Placed(id='x'))\n"
                "    approval = await Approval.expect()\n    init()\n    return str(helper(1)) + SERVICE.name + approval.by",
                "w",
            ),
            C(
                "#| export\nclass Thing:\n    attr = 1\n\n    def m(self) -> int:\n        return Thing.attr + self.attr",
                "thing",
            ),
        ],
    )
    export_notebook(notebook, tmp_path / "out")  # also imports the package
    for shipped in (ROOT / "notebooks").glob("*.ipynb"):
        assert read_service(shipped).cells


def test_invalid_service_names_are_refused(tmp_path: Path) -> None:
    """One rule (eventual_nb.service.check_service_name) for ev.Service, `%eventual service` and the export."""
    from eventual_nb.service import InvalidServiceName, check_service_name

    with pytest.raises(InvalidServiceName, match="'!' is not allowed"):
        ev.Service("bad name!!")
    for name in ("", "-leading", "aws.reserved", "x" * 65, "trailing "):
        with pytest.raises(InvalidServiceName):
            ev.Service(name)
    assert check_service_name("Plain Name") == "Plain Name"

    error = _export_error(tmp_path, [C("%eventual service bad name!!", "unquoted"), WORKFLOW])
    assert_located(error, 0, "unquoted", 1)
    assert "%eventual service takes one NAME" in error.message
    error = _export_error(tmp_path, [C("%eventual service 'bad name!!'", "quoted"), WORKFLOW])
    assert_located(error, 0, "quoted", 1)
    assert "invalid service name 'bad name!!': '!' is not allowed" in error.message
    error = _export_error(tmp_path, [C("#| export\nSERVICE_NAME = 1\nev.Service('bad name!!')", "call"), WORKFLOW])
    assert_located(error, 0, "call", 3)
    error = _export_error(tmp_path, [C("%eventual service {name}", "dynamic"), WORKFLOW])
    assert "write the service name out" in error.message
    error = _export_error(tmp_path, [WORKFLOW], name="orders (1).ipynb")
    assert "the service is named after the notebook's file" in error.message
    assert "%eventual service NAME" in error.message


# -- the command line ----------------------------------------------------------------------------------


def test_cli_export(orders: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = cli("export", str(orders), "-o", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert body == {"dir": str(out), "files": sorted(EXPECTED_FILES), "lambda_zip": None}

    proc = cli("export", str(orders), "-o", str(out))  # over the earlier export, no --force needed
    assert proc.returncode == 0, proc.stderr
    assert f"exported service 'orders' from orders.ipynb to {out}" in proc.stdout
    assert "orders/__init__.py" in proc.stdout

    other = tmp_path / "occupied"
    other.mkdir()
    (other / "README").write_text("not an export")
    proc = cli("export", str(orders), "-o", str(other), "--json")
    assert proc.returncode == 1
    assert "error: ExportError:" in proc.stderr
    assert "--force" in proc.stderr
    assert json.loads(proc.stdout)["error"] == "ExportError"
    assert "Traceback" not in proc.stderr
    proc = cli("export", str(orders), "-o", str(other), "--force")
    assert proc.returncode == 0, proc.stderr
    assert (other / "README").is_file()
    assert (other / "eventual.json").is_file()

    broken = write_notebook(tmp_path / "broken.ipynb", [C("%%workflow\nasync def w(:\n    pass", "bad")])
    proc = cli("export", str(broken), "-o", str(tmp_path / "never"), "--json")
    assert proc.returncode == 1
    assert "broken.ipynb, cell index 0 (id 'bad'), line 2: SyntaxError" in proc.stderr
    assert "Traceback" not in proc.stderr
    body = json.loads(proc.stdout)
    assert (body["error"], body["cell_index"], body["cell_id"], body["line"]) == ("ExportError", 0, "bad", 2)
    assert not (tmp_path / "never").exists()

    proc = cli("export", str(tmp_path / "missing.ipynb"), "-o", str(tmp_path / "never"))
    assert proc.returncode == 1
    assert "notebook not found" in proc.stderr

    proc = cli("export", str(orders))  # -o is required: a usage error
    assert proc.returncode == 2
    assert "-o/--output" in proc.stderr

    # serving a notebook that does not export fails with the same message
    proc = cli("serve", str(broken), "--port", str(free_port()), "--db", str(tmp_path / "db"))
    assert proc.returncode == 1
    assert "cell index 0 (id 'bad'), line 2" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- %eventual export ---------------------------------------------------------------------------------


def test_eventual_export_magic_exports_the_kernels_notebook(orders: Path, tmp_path: Path) -> None:
    """In a real kernel: Jupyter tells the kernel its notebook through JPY_SESSION_NAME (ipykernel sets
    `__session__` from it); without it, `--notebook PATH` says which file to export."""
    work = tmp_path / "kernel"
    work.mkdir()
    cells = run_notebook(
        ["%load_ext eventual_nb", "%eventual export out", "%eventual export out --not-a-flag"],
        work,
        env={"JPY_SESSION_NAME": str(orders)},
    ).cells
    assert "exported service 'orders' from orders.ipynb" in text_of(cells[1]), text_of(cells[1])
    assert set(files_of(work / "out")) == EXPECTED_FILES
    assert "unrecognized arguments: --not-a-flag" in text_of(cells[2])

    cells = run_notebook(
        ["%load_ext eventual_nb", "%eventual export again", f"%eventual export again --notebook {orders}"], work
    ).cells
    assert "pass it: %eventual export DIR --notebook PATH" in text_of(cells[1])
    assert "exported service 'orders'" in text_of(cells[2]), text_of(cells[2])
    assert files_of(work / "again") == files_of(work / "out")


def test_the_kernel_refuses_bad_service_names_and_exports_with_undefined_names(tmp_path: Path) -> None:
    """In a real kernel, `%eventual service` refuses what the exporter refuses (same words), and
    `%eventual export` says which name an exported function lacks."""
    undefined = write_notebook(
        tmp_path / "undefined.ipynb",
        [C("RATE = 3", "rate"), C("%%workflow\nasync def w() -> int:\n    return RATE", "w")],
    )
    cells = run_notebook(
        [
            "%load_ext eventual_nb",
            "%eventual service bad name!!",
            "%eventual service 'bad name!!'",
            "%eventual service fine-name",
            f"%eventual export out --notebook {undefined}",
        ],
        tmp_path,
    ).cells
    assert "%eventual service takes one NAME" in text_of(cells[1]), text_of(cells[1])
    assert "invalid service name 'bad name!!': '!' is not allowed" in text_of(cells[2]), text_of(cells[2])
    assert "service 'fine-name'" in text_of(cells[3]), text_of(cells[3])
    assert "undefined.ipynb, cell index 1 (id 'w'), line 3: name 'RATE'" in text_of(cells[4]), text_of(cells[4])
    assert not (tmp_path / "out").exists()


# -- round trip ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Served:
    process: subprocess.Popen[str]
    url: str
    log: Path

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(15)
        return self.log.read_text()


def serve(target: Path, db: Path) -> Served:
    """`eventual-nb serve TARGET` in a subprocess, once its health route answers."""
    port = free_port()
    db.parent.mkdir(parents=True, exist_ok=True)
    log = db.parent / "serve.log"
    env = {key: value for key, value in os.environ.items() if not key.startswith("EVENTUAL_")}
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "eventual_nb.cli", "serve", str(target), "--port", str(port), "--db", str(db)],
            cwd=db.parent,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
    served = Served(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise AssertionError(f"serve {target} exited {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{served.url}/_eventual/health", timeout=2).status_code == 200:
                return served
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"serve {target} did not answer within 60 s:\n{served.stop()}")
        time.sleep(0.1)


@pytest.fixture
def servers(orders: Path, tmp_path: Path) -> Iterator[tuple[Served, Served]]:
    exported = tmp_path / "export"
    proc = cli("export", str(orders), "-o", str(exported))
    assert proc.returncode == 0, proc.stderr
    from_notebook = serve(orders, tmp_path / "notebook-run" / "state.db")
    try:
        from_export = serve(exported, tmp_path / "export-run" / "state.db")
    except BaseException:
        from_notebook.stop()
        raise
    yield from_notebook, from_export
    from_notebook.stop()
    from_export.stop()
    assert not list(exported.rglob("__pycache__")), "serving an export must not write bytecode into it"


TIME_FIELDS = ("timestamp", "timeout_at", "until")


def comparable(history: list[Any]) -> list[dict[str, Any]]:
    """History events without what depends on the clock."""
    events = []
    for event in history:
        data = event.model_dump(mode="json")
        events.append({key: value for key, value in data.items() if key not in TIME_FIELDS})
    return events


async def wait_for(check: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def drive(url: str) -> dict[str, Any]:
    """One fixed sequence of calls: start through the service's own route, signal through ServiceClient,
    wait for the results; return everything a user could observe, minus times."""
    client = ev.ServiceClient(url)
    seen: dict[str, Any] = {}
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            started = await http.post("/orders", json={"id": "o-1", "quantity": 4})
            seen["start"] = (started.status_code, started.json())
            again = await http.post("/orders", json={"id": "o-1", "quantity": 4})
            seen["start again"] = (again.status_code, again.json())
            invalid = await http.post("/orders", json={"id": "o-2"})
            seen["invalid"] = (invalid.status_code, invalid.json())
            execution_id = started.json()["execution_id"]

            async def expecting() -> bool:
                history = await client.get_execution_history(execution_id)
                return sum(event.type == "TimerScheduled" for event in history) == 2

            # the sleep's timer fired and expect(timeout=...) scheduled its own: the workflow waits for the
            # signal, so the signal lands at the same point of the history in both runs
            await wait_for(expecting, "the workflow to wait for the signal")
            await client.send_signal(execution_id, "Approval", {"approver": "ann"})

            async def ended(id: str) -> Any:
                try:
                    execution = await client.get_execution(id)
                except ev.ExecutionNotFound:
                    return None
                return execution if execution.status != ev.ExecutionStatus.IN_PROGRESS else None

            for id in (execution_id, "ship/o-1"):
                execution = await wait_for(lambda id=id: ended(id), f"{id} to end")
                seen[id] = execution.model_dump(mode="json", exclude={"start_time", "end_time"})
                seen[f"{id} history"] = comparable(await client.get_execution_history(id))
            got = await http.get("/orders/o-1")
            seen["get"] = (got.status_code, got.json())
            seen["workflows"] = sorted(workflow.name for workflow in await client.list_workflows())
            seen["openapi"] = (await http.get("/openapi.json")).json()
    finally:
        await client.aclose()
    return seen


async def test_round_trip_notebook_and_export_answer_alike(servers: tuple[Served, Served], tmp_path: Path) -> None:
    from_notebook, from_export = servers
    notebook_answers = await drive(from_notebook.url)
    export_answers = await drive(from_export.url)
    assert notebook_answers == export_answers

    answers = export_answers
    assert answers["start"] == (202, {"execution_id": "place_order/o-1"})
    assert answers["start again"] == (202, {"execution_id": "place_order/o-1"})
    assert answers["invalid"][0] == 422
    assert answers["place_order/o-1"]["status"] == "SUCCEEDED"
    assert answers["place_order/o-1"]["result"] == {"order": "o-1", "total": 10.0, "approved_by": "ann"}
    assert answers["ship/o-1"]["result"] == "shipped o-1"
    assert answers["get"] == (200, {"status": "SUCCEEDED", "result": answers["place_order/o-1"]["result"]})
    assert answers["workflows"] == ["place_order", "ship"]
    assert [event["type"] for event in answers["place_order/o-1 history"]] == [
        "WorkflowStarted",
        "ActivityScheduled",
        "ActivitySucceeded",
        "TimerScheduled",
        "TimerCompleted",
        "TimerScheduled",
        "SignalReceived",
        "EventsPublished",
        "WorkflowSucceeded",
    ]
    # the served OpenAPI document is the one the export wrote
    assert answers["openapi"] == json.loads((tmp_path / "export" / "openapi.json").read_text())
