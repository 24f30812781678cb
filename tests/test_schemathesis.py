"""Schemathesis against the bank-account tutorial as a user serves it: notebooks/bank-account.ipynb exported
with `eventual-nb export`, served with `eventual-nb serve DIR` (uvicorn on 127.0.0.1), and both of its
OpenAPI documents fuzzed: the service's own (`/openapi.json`) and the internal one
(`/_eventual/openapi.json`).

Every check and every phase runs, with a bounded number of examples (tests/fixtures/schemathesis.toml);
no answer may be a 5xx and no check may fail, except those the config file writes down with a reason.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_cli_verbs import Server, run_cli, start_server

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "bank-account.ipynb"
CONFIG = ROOT / "tests" / "fixtures" / "schemathesis.toml"
#: one schemathesis run; with 40 examples an operation both runs take well under a minute on 2 cores
RUN_TIMEOUT = 110


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("schemathesis")
    export = run_cli("export", str(NOTEBOOK), "-o", str(directory / "bank-account"))
    assert export.returncode == 0, export.stderr
    running = start_server(directory / "bank-account", directory / "state.db", cwd=directory)
    try:
        yield running
        assert running.process.poll() is None, f"the server died under the fuzz:\n{running.log.read_text()}"
    finally:
        running.stop()


@pytest.mark.timeout(RUN_TIMEOUT + 30)
@pytest.mark.parametrize("schema", ["openapi.json", "_eventual/openapi.json"])
def test_schemathesis_finds_no_server_error_and_no_failed_check(bank: Server, schema: str, tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(CONFIG),
        "--no-color",
        "run",
        f"{bank.url}/{schema}",
        "--url",
        bank.url,
        "--report-dir",
        str(tmp_path),
    ]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"schemathesis found failures (exit {proc.returncode}):\n{output}"
    assert "Server error" not in output, output
    # the run reached every operation of the document
    assert "Tested:" in output, output
