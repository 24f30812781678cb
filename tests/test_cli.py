"""The ``eventual-nb`` command line: every verb exists and takes its flags.

tests/test_cli_verbs.py runs serve and the service-client verbs against a real server. Here they only
appear in the shape checks (help, flags, usage errors).

Each case runs the real module in a subprocess, the way a user or a script calls it.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# the version's one home (pyproject reads it from there), read without importing the package
VERSION = next(
    node.value.value
    for node in ast.parse((ROOT / "eventual_nb" / "_version.py").read_text()).body
    if isinstance(node, ast.Assign)
    and [getattr(target, "id", None) for target in node.targets] == ["__version__"]
    and isinstance(node.value, ast.Constant)
)

#: the verbs that talk to a service (--url, --token, --json)
CLIENT_VERBS = [
    "workflows",
    "start",
    "executions",
    "execution",
    "history",
    "logs",
    "signal",
    "publish",
    "cancel",
    "replay",
    "entities",
    "entity",
    "events",
]
VERBS = ["serve", "export", "run", "test", "kernel", "deploy", "destroy", *CLIENT_VERBS]

# Usage errors of the notebook verbs: exit 2 and a message naming what is wrong, before any kernel
# starts. tests/test_notebook_runs.py runs real notebooks through them.
USAGE_CASES = [
    (["run", "missing.ipynb", "-p", "runtime", "test", "-p", "n", "3"], "no such notebook: missing.ipynb"),
    (["test", "notebooks/", "no-such-dir/"], "no such notebook or directory: no-such-dir"),
    (["test", "pyproject.toml"], "pyproject.toml is not a notebook"),
    (["test", "notebooks/", "--jobs", "0"], "--jobs must be 1 or more"),
]


def cli(*args: str, module: str = "eventual_nb.cli") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(("argv", "message"), USAGE_CASES, ids=[" ".join(c[0]) for c in USAGE_CASES])
def test_notebook_verbs_report_usage_errors(argv: list[str], message: str) -> None:
    proc = cli(*argv)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize(("argv", "message"), USAGE_CASES, ids=[" ".join(c[0]) for c in USAGE_CASES])
def test_notebook_verbs_take_json(argv: list[str], message: str) -> None:
    proc = cli(*argv, "--json")
    assert proc.returncode == 2, proc.stderr
    body = json.loads(proc.stdout)
    assert body["error"] == "UsageError"
    assert message in body["message"]


def test_help_lists_every_verb() -> None:
    proc = cli("--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage: eventual-nb" in proc.stdout
    for verb in VERBS:
        assert verb in proc.stdout, verb


@pytest.mark.parametrize("verb", VERBS)
def test_each_verb_has_help(verb: str) -> None:
    proc = cli(verb, "--help")
    assert proc.returncode == 0, proc.stderr
    assert f"usage: eventual-nb {verb}" in proc.stdout


@pytest.mark.parametrize("verb", CLIENT_VERBS)
def test_service_client_verbs_take_url(verb: str) -> None:
    proc = cli(verb, "--help")
    assert "--url" in proc.stdout
    assert "--token" in proc.stdout
    assert "--json" in proc.stdout


@pytest.mark.parametrize(
    ("verb", "flags"),
    [
        ("serve", ["--db", "--host", "--port"]),
        ("start", ["--name", "--timeout", "--follow"]),
        ("executions", ["--workflow", "--status", "--max-results", "--next-token", "--desc"]),
        ("signal", ["--id"]),
        ("events", ["--source", "--name", "--max-results"]),
        ("replay", ["--target"]),
        ("deploy", ["--stack", "--region", "--endpoint-url", "--bucket", "--json"]),
        ("destroy", ["--stack", "--region", "--endpoint-url", "--json"]),
    ],
)
def test_verbs_declare_their_flags(verb: str, flags: list[str]) -> None:
    proc = cli(verb, "--help")
    assert proc.returncode == 0, proc.stderr
    for flag in flags:
        assert flag in proc.stdout, flag


def test_version() -> None:
    proc = cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"eventual-nb {VERSION}"


def test_python_dash_m_package_is_the_same_cli() -> None:
    proc = cli("--version", module="eventual_nb")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"eventual-nb {VERSION}"
    proc = cli("run", "nb.ipynb", module="eventual_nb")
    assert proc.returncode == 2
    assert "no such notebook: nb.ipynb" in proc.stderr


def test_no_verb_prints_help_and_fails() -> None:
    proc = cli()
    assert proc.returncode == 2
    assert "usage: eventual-nb" in proc.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["export", "nb.ipynb"],  # -o DIR is required
        ["deploy", "out"],  # --stack is required
        ["destroy"],
        ["kernel"],  # needs an action
        ["executions", "--status", "RUNNING"],  # not an ExecutionStatus
        ["replay", "wf/x"],  # --target (the current code) is required
        ["serve"],  # TARGET is required
        ["start"],  # WORKFLOW is required
        ["no-such-verb"],
    ],
)
def test_usage_errors_exit_2_without_traceback(argv: list[str]) -> None:
    proc = cli(*argv)
    assert proc.returncode == 2
    assert "error:" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "not available yet" not in proc.stderr


def test_main_returns_status_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    from eventual_nb.cli import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"eventual-nb {VERSION}"
    assert main(["test", "no-such-dir"]) == 2
    assert "no such notebook or directory: no-such-dir" in capsys.readouterr().err


def test_cli_module_imports_nothing_heavy() -> None:
    # Load cli.py on its own (not through the package __init__) to check the module's own imports:
    # `eventual-nb --help` must stay fast and work on a core install.
    path = str(ROOT / "eventual_nb" / "cli.py")
    code = (
        "import importlib.util, json, sys; "
        f"spec = importlib.util.spec_from_file_location('cli_alone', {path!r}); "
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod); "
        "print(json.dumps([m for m in ('eventual_nb', 'pydantic', 'rich', 'fastapi', 'uvicorn', 'httpx', "
        "'IPython', 'boto3') if m in sys.modules]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
