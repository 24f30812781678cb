"""Bad command lines get one clear error line and a documented exit status, never a traceback.

Each case runs ``python -m eventual_nb.cli`` as a real subprocess, as a user would, in a scratch working
directory holding the files the cases name. Exit statuses are the README's: 1 the operation failed,
2 the command line does not make sense. ``serve`` says "serving ... on" only once it listens, so none of
these failing starts may print it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ROOT / "tests" / "fixtures" / "cli_service.py"
NOTEBOOK = ROOT / "notebooks" / "getting-started.ipynb"
FAILED, USAGE = 1, 2


@dataclass
class Case:
    argv: list[str]
    status: int
    #: what the one error line says
    message: str
    env: dict[str, str] = field(default_factory=dict)


CASES = {
    "export into a path under a file": Case(
        ["export", str(NOTEBOOK), "-o", "afile/sub"], FAILED, "cannot write the package to afile/sub: Not a directory"
    ),
    "export where no directory can be made": Case(
        ["export", str(NOTEBOOK), "-o", "/proc/x/y"], FAILED, "cannot write the package to /proc/x/y"
    ),
    "url port too large": Case(["workflows", "--url", "http://127.0.0.1:99999"], USAGE, "Port out of range"),
    "url port 65536": Case(["workflows", "--url", "http://127.0.0.1:65536"], USAGE, "Port out of range"),
    "url port not a number": Case(["workflows", "--url", "http://127.0.0.1:abc"], USAGE, "invalid service URL"),
    "url unclosed ipv6": Case(["workflows", "--url", "http://[::1"], USAGE, "Invalid IPv6 URL"),
    "EVENTUAL_URL malformed": Case(["executions"], USAGE, "$EVENTUAL_URL: invalid service URL", {"EVENTUAL_URL": "x"}),
    "serve port too large": Case(["serve", str(SERVICE), "--port", "99999"], USAGE, "argument --port: a port is 0"),
    "serve port negative": Case(["serve", str(SERVICE), "--port", "-1"], USAGE, "argument --port: a port is 0"),
    "serve with a short signing key": Case(
        ["serve", str(SERVICE), "--port", "0"],
        FAILED,
        "EVENTUAL_SIGNING_KEY is 5 bytes long; an activity signing key needs at least 16 bytes",
        {"EVENTUAL_SIGNING_KEY": "short"},
    ),
    "serve on a port in use": Case(["serve", str(SERVICE), "--port", "{busy}"], FAILED, "Address already in use"),
    "serve with a bus under a file": Case(
        ["serve", str(SERVICE), "--port", "0", "--bus", "afile/bus.db"],
        FAILED,
        "cannot open the event bus afile/bus.db",
    ),
    "serve with a bus that is not SQLite": Case(
        ["serve", str(SERVICE), "--port", "0", "--bus", "afile"], FAILED, "cannot open the event bus afile"
    ),
    "deploy with a source bus that is not SERVICE=BUS": Case(
        ["deploy", "afile", "--stack", "s", "--source-bus", "bank"], USAGE, "--source-bus takes SERVICE=BUS"
    ),
    "serve a file without definitions": Case(
        ["serve", "noservice.py", "--port", "0"], FAILED, "cannot load noservice.py: it defines no workflow"
    ),
    "serve a module without definitions": Case(
        ["serve", "os", "--port", "0"], FAILED, "cannot load os: it defines no workflow"
    ),
    "run a notebook that is not JSON": Case(["run", "notjson.ipynb"], USAGE, "notjson.ipynb is not a notebook"),
    "test a notebook that is not JSON": Case(["test", "notjson.ipynb"], USAGE, "notjson.ipynb is not a notebook"),
    "run a binary notebook": Case(["run", "binary.ipynb"], USAGE, "binary.ipynb is not a notebook: it is not UTF-8"),
}


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the user's EVENTUAL_* settings, plus `extra`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("EVENTUAL_")}
    env.update(extra)
    return env


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another socket listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("name", list(CASES))
def test_bad_command_lines_get_one_error_line_and_an_exit_status(name: str, tmp_path: Path, busy_port: int) -> None:
    case = CASES[name]
    (tmp_path / "afile").write_text("a file, not a directory\n")
    (tmp_path / "notjson.ipynb").write_text("not json\n")
    (tmp_path / "binary.ipynb").write_bytes(bytes(range(200, 256)) * 4)
    (tmp_path / "noservice.py").write_text("x = 1\n")
    argv = [arg.format(busy=busy_port) for arg in case.argv]
    proc = subprocess.run(
        [sys.executable, "-m", "eventual_nb.cli", *argv],
        cwd=tmp_path,
        env=clean_env(**case.env),
        capture_output=True,
        text=True,
        timeout=90,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == case.status, output
    assert "Traceback" not in output
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, proc.stderr
    assert case.message in errors[0]
    assert "serving" not in output


def test_serve_says_serving_with_the_port_it_bound(tmp_path: Path) -> None:
    """`--port 0` picks a free port; the "serving ... on URL" line comes once the server listens, with
    the port it got, and that URL answers."""
    import httpx

    process = subprocess.Popen(
        [sys.executable, "-m", "eventual_nb.cli", "serve", str(SERVICE), "--port", "0", "--db", "state.db"],
        cwd=tmp_path,
        env=clean_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        assert line.startswith("serving cli-service on http://127.0.0.1:"), line
        url = line.split(" on ", 1)[1].split()[0]
        assert not url.endswith(":0")
        assert httpx.get(f"{url}/_eventual/health", timeout=10).json()["status"] == "ok"
    finally:
        process.terminate()
        process.wait(30)
