"""A core install (``pip install eventual-nb``, no extras) gives a working SDK and command line and
does not drag in Jupyter or AWS: those are the `notebook` and `aws` extras.

Built from a copy of the checkout in a fresh virtual environment, so that the build writes nothing
into the work tree and nothing from the development venv leaks in.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
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
import importlib.metadata, json, sys
import eventual_nb
loaded = {m: m in sys.modules for m in ("IPython", "boto3", "ipywidgets", "fastapi")}
print(json.dumps({**loaded, "version": eventual_nb.__version__, "installed": importlib.metadata.version("eventual-nb")}))
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
    assert loaded["installed"] == loaded["version"], "the build reads the version from eventual_nb.__version__"

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


def test_the_version_is_written_once() -> None:
    """eventual_nb/_version.py is the version's one home: pyproject declares it dynamic and reads it from
    there, and the code asks that module (never a copy, never installed metadata that can lag a checkout)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "eventual_nb._version.__version__"}
    import eventual_nb

    literal = f'"{eventual_nb.__version__}"'
    holders = [
        str(path.relative_to(ROOT))
        for path in [ROOT / "pyproject.toml", *sorted((ROOT / "eventual_nb").rglob("*.py"))]
        if literal in path.read_text(encoding="utf-8")
    ]
    assert holders == ["eventual_nb/_version.py"]
