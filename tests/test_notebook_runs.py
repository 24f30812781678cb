"""Notebooks as tests: `eventual-nb test` / `eventual-nb run` through papermill's `eventual` engine,
the committed notebooks' hygiene, every notebook on both runtimes, and the Binder set-up from scratch.

Everything runs for real: the CLI in a subprocess, real "Eventual (Python 3)" kernels, and for Binder a fresh
virtual environment built from binder/requirements.txt and binder/postBuild.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import nbformat
import pytest

from kernel_ext.notebook_runs import RUNTIMES, default_parameters, parameters_cells, parse_parameter_value

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "notebooks"
NOTEBOOKS = ROOT / "notebooks"
EVENTUAL_NB = str(Path(sys.executable).parent / "eventual-nb")

BROKEN_CELL_SOURCE = 'assert remaining >= 0, f"overdrawn: {remaining}"'


def eventual_nb(*args: str, timeout: float = 110) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EVENTUAL_NB, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=_env_without_columns()
    )


def _env_without_columns() -> dict[str, str]:
    # rich reads COLUMNS; without it piped output is wide enough that paths are not cut.
    return {key: value for key, value in os.environ.items() if key != "COLUMNS"}


def committed_notebooks() -> list[Path]:
    found = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert found, f"no notebooks in {NOTEBOOKS}"
    return found


def junit_cases(path: Path) -> dict[str, ET.Element]:
    root = ET.parse(path).getroot()
    return {case.get("file", ""): case for case in root.iter("testcase")}


# ----------------------------------------------------------------------------------------------- the runner


def test_a_failing_cell_fails_the_run_and_is_reported_with_index_source_and_traceback(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    proc = eventual_nb(
        "test", "tests/fixtures/notebooks", "--junit", str(junit), "--jobs", "2", "--output-dir", str(tmp_path)
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert "FAILED tests/fixtures/notebooks/broken.ipynb" in out
    # Cell 5 of the stored notebook (markdown title, parameters, runtime, activity, workflow, the assert).
    assert "cell 5, In [5]: AssertionError: overdrawn: -50" in out
    assert BROKEN_CELL_SOURCE in out
    assert "Cell In[5], line 2" in out  # the traceback, colours stripped
    assert "\x1b[" not in out
    assert "1 passed, 1 failed" in out

    cases = junit_cases(junit)
    assert set(cases) == {"tests/fixtures/notebooks/broken.ipynb", "tests/fixtures/notebooks/passing.ipynb"}
    failure = cases["tests/fixtures/notebooks/broken.ipynb"].find("failure")
    assert failure is not None
    assert failure.get("message") == "AssertionError: overdrawn: -50"
    assert failure.text is not None
    assert failure.text.startswith("cell 5, In [5]: AssertionError: overdrawn: -50")
    assert BROKEN_CELL_SOURCE in failure.text
    assert "Cell In[5], line 2" in failure.text
    assert cases["tests/fixtures/notebooks/passing.ipynb"].find("failure") is None
    root = ET.parse(junit).getroot()
    assert (root.get("tests"), root.get("failures")) == ("2", "1")

    # The executed notebooks went to --output-dir, the inputs are untouched and no database landed beside them.
    assert (tmp_path / "broken.ipynb").is_file()
    assert (tmp_path / "passing.ipynb").is_file()
    assert not (FIXTURES / ".eventual").exists()


def test_run_passes_parameters_and_runs_in_a_fresh_directory(tmp_path: Path) -> None:
    source = FIXTURES / "passing.ipynb"
    before = source.read_bytes()
    output = tmp_path / "out.ipynb"
    proc = eventual_nb(
        "run", str(source), "-p", "runtime", "local", "-p", "count", "3", "-p", "greeting", "hey", "-o", str(output)
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed, 0 failed" in proc.stdout
    assert source.read_bytes() == before

    nb = nbformat.read(output, as_version=4)
    injected = [cell for cell in nb.cells if "injected-parameters" in cell.metadata.get("tags", [])]
    assert len(injected) == 1
    assert 'runtime = "local"' in injected[0].source
    assert "count = 3" in injected[0].source
    assert 'greeting = "hey"' in injected[0].source
    assert nb.metadata["eventual"] == {"runtime": "local", "ran_runtime": "local", "kernel": "eventual"}
    assert nb.metadata["papermill"]["parameters"] == {"runtime": "local", "count": 3, "greeting": "hey"}
    printed = "".join(output.get("text", "") for cell in nb.cells for output in cell.get("outputs", []))
    assert "result ['HEY', 'HEY', 'HEY']" in printed
    # The kernel ran in a directory of its own holding a copy of the notebook and the local runtime's database.
    assert "files ['.eventual', 'passing.ipynb']" in printed
    assert f"cwd {ROOT}" not in printed


def test_a_headless_run_does_not_print_the_kernels_tcp_warning(tmp_path: Path) -> None:
    """`make demo` and `eventual-nb run/test` talk to their kernel over Unix sockets, so the kernel has no reason to
    warn "running over TCP without encryption" into the run's output."""
    proc = eventual_nb("run", str(FIXTURES / "passing.ipynb"), "-o", str(tmp_path / "out.ipynb"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "without encryption" not in proc.stdout + proc.stderr, proc.stderr


def test_usage_errors_and_timeouts_name_their_cell(tmp_path: Path) -> None:
    """A magic's UsageError reaches papermill only as stderr text (empty evalue); a timeout as
    CellTimeoutError without an error output. Both are reported with their cell."""
    notebooks = tmp_path / "nbs"
    notebooks.mkdir()
    for name, cells in {
        "bad_magic": ['runtime = "test"', "%eventual runtime nowhere"],
        "slow": ['runtime = "test"', "x = 1", "import time\ntime.sleep(60)"],
    }.items():
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "eventual", "display_name": "Eventual (Python 3)", "language": "python"}
        nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
        nb.cells[0].metadata["tags"] = ["parameters"]
        nbformat.write(nb, notebooks / f"{name}.ipynb")
    junit = tmp_path / "junit.xml"
    proc = eventual_nb(
        "test", str(notebooks), "--timeout", "3", "--junit", str(junit), "--output-dir", str(tmp_path / "out")
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert "0 passed, 2 failed" in out
    assert "cell 1, In [2]: CellExecutionError: UsageError:" in out
    assert "%eventual runtime nowhere" in out
    assert "cell 2" in out
    assert "CellTimeoutError: A cell timed out" in out
    assert "time.sleep(60)" in out

    cases = {Path(file).name: case for file, case in junit_cases(junit).items()}
    bad = cases["bad_magic.ipynb"].find("failure")
    assert bad is not None
    assert (bad.get("message") or "").startswith("CellExecutionError: UsageError:")
    slow = cases["slow.ipynb"].find("failure")
    assert slow is not None
    assert slow.get("type") == "CellTimeoutError"


def test_parameter_values_parse_as_papermills_command_line() -> None:
    assert parse_parameter_value("3") == 3
    assert parse_parameter_value("2.5") == 2.5
    assert parse_parameter_value("True") is True
    assert parse_parameter_value("None") is None
    assert parse_parameter_value("local") == "local"
    assert parse_parameter_value("true") == "true"  # papermill's -p only knows the Python spellings


# ------------------------------------------------------------------------------------ the committed notebooks


@pytest.mark.parametrize("notebook", committed_notebooks(), ids=lambda path: path.name)
def test_committed_notebooks_have_no_outputs_and_one_parameters_cell(notebook: Path) -> None:
    nb = nbformat.read(notebook, as_version=4)
    nbformat.validate(nb)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{notebook.name}: cell {index} is stored with outputs"
            assert cell.execution_count is None, f"{notebook.name}: cell {index} is stored with an execution count"
    tagged = parameters_cells(nb)
    assert len(tagged) == 1, f"{notebook.name}: {len(tagged)} cells tagged `parameters` (want exactly one)"
    defaults = default_parameters(nb)
    assert defaults.get("runtime") in RUNTIMES, (
        f"{notebook.name}: the parameters cell must assign runtime = one of {RUNTIMES}, got {defaults}"
    )
    assert nb.metadata.get("kernelspec", {}).get("name") == "eventual"


@pytest.mark.timeout(400)  # runs every notebook under notebooks/ (2 at a time): grows with the notebooks
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_every_notebook_runs_on_each_runtime(runtime: str, tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    proc = eventual_nb(
        "test", "notebooks/", "-p", "runtime", runtime, "--junit", str(junit), "--output-dir", str(tmp_path),
        timeout=390,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cases = junit_cases(junit)
    for notebook in committed_notebooks():
        relative = notebook.relative_to(ROOT).as_posix()
        assert relative in cases, f"{relative} was not run"
        assert cases[relative].find("failure") is None
        assert relative in proc.stdout
        ran = nbformat.read(tmp_path / notebook.name, as_version=4).metadata["eventual"]
        assert ran["runtime"] == runtime
        assert ran["ran_runtime"] == runtime, f"{relative} asked for {runtime} but ran {ran['ran_runtime']}"
    assert not (NOTEBOOKS / ".eventual").exists()


# ---------------------------------------------------------------------------------------------------- Binder


def python_312() -> str:
    """Binder's runtime.txt says python-3.12: build the environment with a 3.12 (else this interpreter)."""
    candidates = [*map(str, sorted(Path("/root/.pyenv/versions").glob("3.12*/bin/python")))]
    if shutil.which("python3.12"):
        candidates.append(str(shutil.which("python3.12")))
    for candidate in candidates:
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 12))"],
                               capture_output=True, text=True, check=False)  # fmt: skip
        if probe.returncode == 0 and probe.stdout.strip() == "True":
            return candidate
    return sys.executable


def repository_copy(destination: Path) -> Path:
    """The repository's files as a fresh clone (plus uncommitted ones) would have them, without build output."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


@pytest.mark.timeout(600)  # a fresh virtual environment: pip installs the kernel stack (from its cache when warm)
def test_binder_environment_from_scratch_runs_getting_started(tmp_path: Path) -> None:
    binder = ROOT / "binder"
    assert (binder / "runtime.txt").read_text().strip() == "python-3.12"
    requirements = (binder / "requirements.txt").read_text()
    assert "ipykernel>=7.4" in requirements
    assert "ipywidgets>=8.1.9" in requirements

    repo = repository_copy(tmp_path / "repo")
    home = tmp_path / "home"
    home.mkdir()
    venv = tmp_path / "venv"
    subprocess.run([python_312(), "-m", "venv", str(venv)], check=True, timeout=120)
    pip_cache = subprocess.run(
        [sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True, check=False
    ).stdout.strip()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("JUPYTER", "IPYTHON", "PYTHON", "VIRTUAL_ENV", "JPY_"))
    }
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(venv),
        HOME=str(home),  # jupyter trust writes its signatures database under the user's data dir
        JUPYTER_CONFIG_DIR=str(home / ".jupyter"),
        JUPYTER_DATA_DIR=str(home / ".local" / "share" / "jupyter"),
        IPYTHONDIR=str(home / ".ipython"),
    )
    if pip_cache:
        env["PIP_CACHE_DIR"] = pip_cache  # the user's cache: a warm machine does not download again

    def run(*command: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"{' '.join(command)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        return proc

    run(str(venv / "bin" / "pip"), "install", "-q", "-r", "binder/requirements.txt")
    run("bash", "binder/postBuild")

    kernel = json.loads((venv / "share" / "jupyter" / "kernels" / "eventual" / "kernel.json").read_text())
    assert Path(kernel["argv"][0]).parent == venv / "bin"
    config = (venv / "etc" / "ipython" / "ipython_kernel_config.py").read_text()
    assert 'c.InteractiveShellApp.extensions = ["eventual_nb"]' in config
    assert (home / ".local" / "share" / "jupyter" / "nbsignatures.db").is_file()

    # The tutorial as Binder opens it: its own kernelspec (from its metadata), its stored parameters, the
    # notebook's folder as working directory, and the notebook's path in JPY_SESSION_NAME, as Jupyter's
    # server tells its kernels (`%eventual export` reads the saved notebook from there).
    output = tmp_path / "getting-started.out.ipynb"
    env["JPY_SESSION_NAME"] = str(repo / "notebooks" / "getting-started.ipynb")
    run(
        str(venv / "bin" / "papermill"), "notebooks/getting-started.ipynb", str(output),
        "--cwd", str(repo / "notebooks"), "--no-progress-bar",
    )  # fmt: skip
    del env["JPY_SESSION_NAME"]
    executed = nbformat.read(output, as_version=4)
    assert executed.metadata["papermill"]["exception"] is None
    assert executed.metadata["kernelspec"]["name"] == "eventual"

    # Every kernel of the image loads the extension, the plain python3 one too.
    probe = nbformat.v4.new_notebook()
    probe.cells = [nbformat.v4.new_code_cell("%eventual status")]
    nbformat.write(probe, tmp_path / "probe.ipynb")
    run(
        str(venv / "bin" / "papermill"), str(tmp_path / "probe.ipynb"), str(tmp_path / "probe.out.ipynb"),
        "-k", "python3", "--cwd", str(tmp_path), "--no-progress-bar",
    )  # fmt: skip
    status = nbformat.read(tmp_path / "probe.out.ipynb", as_version=4).cells[0]
    text = "".join(output.get("text", "") for output in status.outputs)
    assert "runtime" in text, status.outputs
