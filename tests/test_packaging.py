"""A core install (``pip install eventual-nb``, no extras) gives a working SDK and command line and
does not drag in Jupyter or AWS (DESIGN §2 "Packaging").

Built from a copy of the checkout in a fresh virtual environment, so that the build writes nothing
into the work tree and nothing from the development venv leaks in.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

IGNORE = shutil.ignore_patterns(
    ".venv",
    ".git",
    "__pycache__",
    "build",
    "dist",
    "*.egg-info",
    ".eventual",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".hypothesis",
)

PROBE = """
import json, sys
import eventual_nb
print(json.dumps({m: m in sys.modules for m in ("IPython", "boto3", "ipywidgets", "fastapi")}))
"""


def run(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(900)
def test_core_install_has_no_jupyter_or_aws(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=IGNORE)
    venv = tmp_path / "venv"
    outside = tmp_path / "elsewhere"  # a cwd where neither the checkout nor its copy is importable
    outside.mkdir()

    proc = run([sys.executable, "-m", "venv", str(venv)], cwd=outside, timeout=300)
    assert proc.returncode == 0, proc.stderr
    proc = run([str(venv / "bin" / "pip"), "install", "--quiet", str(src)], cwd=outside, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    proc = run([str(venv / "bin" / "python"), "-c", PROBE], cwd=outside, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not loaded["IPython"], "import eventual_nb must not import IPython"
    assert not loaded["boto3"], "import eventual_nb must not import boto3"
    assert not loaded["ipywidgets"], "import eventual_nb must not import ipywidgets"

    proc = run([str(venv / "bin" / "eventual-nb"), "--help"], cwd=outside, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: eventual-nb" in proc.stdout
    assert "serve" in proc.stdout

    # The extras were not installed.
    proc = run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.util as u; print(u.find_spec('IPython') is None)",
        ],
        cwd=outside,
        timeout=120,
    )
    assert proc.stdout.strip() == "True"
