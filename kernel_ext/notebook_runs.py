"""Notebooks as tests: the papermill engine `eventual` and the runner behind `eventual-nb run` / `test`.

A notebook chooses its runtime in its `parameters` cell (`runtime = "test"` or `"local"`) and switches to
it with `%eventual runtime {runtime}`; papermill injects overrides after that cell. The engine prepares
what the notebook cannot do for itself:

* the "Eventual (Python 3)" kernel (the kernelspec is installed into this Python's prefix if missing,
  as `make lab` does), so the extension is loaded before the first cell;
* a working directory of its own for every run, holding a copy of the notebook and nothing else: the
  extension opens `.eventual/<service>.db` in the kernel's working directory as soon as it loads, so
  parallel runs must not share one, and no run may write into the repository;
* `nb.metadata["eventual"]`: the runtime the parameters asked for and the one the kernel ran at the end.

The runner executes notebooks in worker processes (papermill changes the process's working directory
and nbclient's kernels are not meant to share a process), and turns papermill's three ways of failing
(a cell error, a cell timeout, an error reported only on stderr) into one report: the cell's index in
the *stored* notebook (the one a user sees, without papermill's injected cell), its source and its
traceback with ANSI colours stripped.
"""

from __future__ import annotations

import ast
import concurrent.futures
import functools
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kernel_ext.kernelspec import KERNEL_NAME, install_kernelspec

#: the papermill engine's name (also its `papermill.engine` entry point)
ENGINE_NAME = "eventual"
#: the runtimes a notebook may ask for in its parameters cell
RUNTIMES = ("test", "local")
#: key of the engine's record in `nb.metadata`
METADATA_KEY = "eventual"
PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"
#: papermill's tag on the banner and anchor cells it adds to a failed notebook
ERROR_MARKER_TAG = "papermill-error-cell-tag"
#: seconds a single cell may run before the run fails (`--timeout`)
DEFAULT_CELL_TIMEOUT = 300.0
#: seconds to wait for the kernel to start
KERNEL_START_TIMEOUT = 60.0

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

# Evaluated in the kernel after the last cell (a user expression, so it prints nothing): the kind of
# runtime the extension ran at the end ("local"/"test"), which is what the notebook really exercised.
# It imports only kernel_ext (loaded already); this module would pull in papermill and nbformat.
_RUNTIME_EXPRESSION = "next((m.host.kind for m in __import__('kernel_ext')._loaded.values()), None)"


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def parse_parameter_value(text: str) -> Any:
    """Read a `-p NAME VALUE` value as papermill's own command line does (its helper is private):
    `True`/`False`/`None`, then an int, then a float, else the string unchanged."""
    if text in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[text]
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            continue
    return text


def ensure_kernelspec() -> Path:
    """The `eventual` kernelspec Jupyter finds; installed into this Python's prefix when there is none."""
    from jupyter_client.kernelspec import KernelSpecManager

    found = KernelSpecManager().find_kernel_specs().get(KERNEL_NAME)
    if found is not None:
        return Path(found)
    return install_kernelspec(prefix=sys.prefix)


def parameters_cells(nb: Any) -> list[int]:
    return [i for i, cell in enumerate(nb.cells) if PARAMETERS_TAG in cell.get("metadata", {}).get("tags", [])]


def default_parameters(nb: Any) -> dict[str, Any]:
    """Literal assignments of the notebook's (first) `parameters` cell, e.g. {"runtime": "test"}."""
    cells = parameters_cells(nb)
    if not cells:
        return {}
    try:
        tree = ast.parse(nb.cells[cells[0]].source)
    except SyntaxError:
        return {}
    values: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    try:
                        values[target.id] = ast.literal_eval(node.value)
                    except ValueError:
                        continue
    return values


def requested_runtime(nb: Any) -> str | None:
    """The runtime this run asks for: papermill's injected parameters first, then the cell's default."""
    injected = nb.metadata.get("papermill", {}).get("parameters") or {}
    runtime = injected.get("runtime", default_parameters(nb).get("runtime"))
    return None if runtime is None else str(runtime)


@contextmanager
def run_directory(nb: Any, input_path: str | None) -> Iterator[Path]:
    """A fresh temporary directory holding a copy of the notebook (yielded), all removed afterwards.

    The copy sits one folder down, in a folder named like the notebook's own (`<tmp>/notebooks/x.ipynb`), so
    a path the notebook writes relative to its parent (`%eventual export ../build/x`) stays inside the run's
    directory instead of landing in the shared temp dir or in the repository.
    """
    directory = Path(tempfile.mkdtemp(prefix="eventual-nb-run-"))
    try:
        source = Path(input_path) if input_path else None
        name = source.name if source is not None and source.suffix == ".ipynb" else "notebook.ipynb"
        folder = directory / ((source.resolve().parent.name if source is not None else "") or "notebooks")
        folder.mkdir()
        copy = folder / name
        if source is not None and source.is_file():
            shutil.copyfile(source, copy)
        else:
            import nbformat

            nbformat.write(nb, str(copy))
        yield copy
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class EventualEngine:
    """Papermill engine `eventual`: the Eventual kernel, a working directory per run, the runtime recorded.

    Papermill loads its `papermill.engine` entry points while `papermill` itself is being imported, so this
    class cannot subclass papermill's NBClientEngine (importing this module may be what imports papermill):
    it answers papermill's engine calls by handing them to that subclass, built on first use.
    """

    @classmethod
    def nb_kernel_name(cls, nb: Any, name: str | None = None) -> str:
        """The `eventual` kernel unless the caller names another: its extension must load before cell 0."""
        return name or KERNEL_NAME

    @classmethod
    def nb_language(cls, nb: Any, language: str | None = None) -> str:
        return str(_nbclient_engine().nb_language(nb, language))

    @classmethod
    def execute_notebook(cls, nb: Any, kernel_name: str, **kwargs: Any) -> Any:
        return _nbclient_engine().execute_notebook(nb, kernel_name, **kwargs)


@functools.cache
def _kernel_manager() -> Any:
    """The kernel manager of headless runs: Unix sockets (zmq IPC) in a directory only this user can enter,
    instead of TCP ports on 127.0.0.1. Nothing else on the machine can connect to the kernel, and it does not
    warn that it runs "over TCP without encryption" (the warning is right about TCP, so it is not silenced:
    kernels Jupyter starts elsewhere keep it). Windows has no zmq IPC: there it stays TCP."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class LocalSocketKernelManager(AsyncKernelManager):
        _socket_dir: str | None = None

        @default("transport")
        def _transport_default(self) -> str:
            return "tcp" if sys.platform == "win32" else "ipc"

        @default("ip")
        def _ip_default(self) -> str:
            if self.transport != "ipc":
                return str(super()._ip_default())
            # absolute (the kernel runs in another working directory) and short (a socket path has ~100 bytes)
            self._socket_dir = tempfile.mkdtemp(prefix="eventual-kernel-")
            return os.path.join(self._socket_dir, "kernel")

        async def _async_cleanup_resources(self, restart: bool = False) -> None:
            await super()._async_cleanup_resources(restart=restart)  # removes the sockets
            if not restart and self._socket_dir is not None:
                shutil.rmtree(self._socket_dir, ignore_errors=True)

        cleanup_resources = _async_cleanup_resources

    return LocalSocketKernelManager


@functools.cache
def _nbclient_engine() -> Any:
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine

    class RecordingClient(PapermillNotebookClient):
        """Papermill's client, asking the kernel after the last cell which runtime it ran."""

        ran_runtime: str | None = None

        def papermill_execute_cells(self) -> None:
            try:
                super().papermill_execute_cells()
            finally:
                self.ran_runtime = self._ask_runtime()

        def _ask_runtime(self) -> str | None:
            try:
                msg_id = self.kc.execute("", silent=True, user_expressions={"runtime": _RUNTIME_EXPRESSION})
                reply = self.wait_for_reply(msg_id)
                answer = reply["content"]["user_expressions"]["runtime"]
                if answer.get("status") != "ok":
                    return None
                value = ast.literal_eval(answer["data"]["text/plain"])
            except Exception:  # noqa: BLE001 - a dead or timed-out kernel cannot say; the run's own error says why
                return None
            return None if value is None else str(value)

    class Engine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(
            cls,
            nb_man: Any,
            kernel_name: str,
            log_output: bool = False,
            stdout_file: Any = None,
            stderr_file: Any = None,
            start_timeout: float = KERNEL_START_TIMEOUT,
            execution_timeout: float | None = None,
            input_path: str | None = None,
            **kwargs: Any,
        ) -> Any:
            if kernel_name == KERNEL_NAME:
                ensure_kernelspec()
            nb = nb_man.nb
            nb.metadata[METADATA_KEY] = {"runtime": requested_runtime(nb), "kernel": kernel_name, "ran_runtime": None}
            kwargs.pop("timeout", None)
            kwargs.pop("startup_timeout", None)
            with run_directory(nb, input_path) as copy:
                client = RecordingClient(
                    nb_man,
                    kernel_manager_class=_kernel_manager(),
                    timeout=execution_timeout or None,
                    startup_timeout=start_timeout,
                    kernel_name=kernel_name,
                    log_output=log_output,
                    stdout_file=stdout_file,
                    stderr_file=stderr_file,
                    **kwargs,
                )
                # `%eventual export` finds its notebook through JPY_SESSION_NAME, as under Jupyter.
                try:
                    return client.execute(cwd=str(copy.parent), env={**os.environ, "JPY_SESSION_NAME": str(copy)})
                finally:
                    nb.metadata[METADATA_KEY]["ran_runtime"] = client.ran_runtime

    return Engine


def register_engine() -> None:
    """Make `engine_name="eventual"` work in this process even when the entry point is not installed."""
    from papermill.engines import papermill_engines

    papermill_engines.register(ENGINE_NAME, EventualEngine)


# -- the runner ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CellFailure:
    """Where and why a run failed. `index` counts cells of the stored notebook (papermill's injected
    cell not counted); `executed_index` is papermill's count, which includes it."""

    index: int | None
    executed_index: int | None
    execution_count: int | None
    source: str
    ename: str
    evalue: str
    traceback: str

    @property
    def message(self) -> str:
        return f"{self.ename}: {self.evalue}" if self.evalue else self.ename


@dataclass(frozen=True)
class NotebookRun:
    notebook: str
    output: str
    parameters: dict[str, Any]
    runtime: str | None
    ran_runtime: str | None
    passed: bool
    duration: float
    failure: CellFailure | None = None

    @property
    def status(self) -> str:
        return "passed" if self.passed else "failed"

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["status"] = self.status
        return body


def _tags(cell: Any) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _executed_cells(nb: Any) -> list[Any]:
    """The cells as papermill executed them: without the error banner and anchor it adds afterwards."""
    return [cell for cell in nb.cells if ERROR_MARKER_TAG not in _tags(cell)]


def _stored_index(executed: list[Any], index: int) -> int:
    return sum(1 for cell in executed[:index] if INJECTED_TAG not in _tags(cell))


def _stderr_of(cell: Any) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("name") == "stderr")


def _error_failure(nb: Any, error: Any) -> CellFailure:
    """From papermill's PapermillExecutionError and the notebook it saved."""
    executed = _executed_cells(nb)
    index = int(error.cell_index)
    cell = executed[index] if 0 <= index < len(executed) else None
    traceback = strip_ansi("\n".join(error.traceback or []))
    evalue = strip_ansi(str(error.evalue or ""))
    if not evalue and not traceback and cell is not None:
        # A magic's UsageError is only stderr text; papermill reports it as an empty CellExecutionError.
        traceback = strip_ansi(_stderr_of(cell)).rstrip()
        evalue = next((line for line in traceback.splitlines() if line.strip()), "")
    return CellFailure(
        index=_stored_index(executed, index) if cell is not None else None,
        executed_index=index,
        execution_count=error.exec_count,
        source=str(error.source),
        ename=str(error.ename),
        evalue=evalue,
        traceback=traceback,
    )


def _interrupted_failure(nb: Any, exc: BaseException) -> CellFailure:
    """A timeout or a dead kernel: the cell is the last one papermill started (it still says completed)."""
    executed = _executed_cells(nb) if nb is not None else []
    started = [i for i, cell in enumerate(executed) if cell.get("metadata", {}).get("papermill", {}).get("start_time")]
    index = started[-1] if started else None
    cell = executed[index] if index is not None else None
    return CellFailure(
        index=_stored_index(executed, index) if index is not None else None,
        executed_index=index,
        execution_count=cell.get("execution_count") if cell is not None else None,
        source=str(cell.source) if cell is not None else "",
        ename=type(exc).__name__,
        evalue=strip_ansi(str(exc)).strip().splitlines()[0] if str(exc).strip() else "",
        traceback=strip_ansi(str(exc)).strip(),
    )


def run_notebook(
    notebook: str | Path,
    output: str | Path,
    parameters: dict[str, Any] | None = None,
    *,
    cell_timeout: float | None = DEFAULT_CELL_TIMEOUT,
) -> NotebookRun:
    """Execute one notebook with the `eventual` engine into `output`; failures are returned, not raised."""
    import nbformat
    import papermill as pm
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    register_engine()
    notebook, output = Path(notebook), Path(output)
    if output.resolve() == notebook.resolve():
        raise ValueError(f"the output notebook {output} would overwrite its input")
    output.parent.mkdir(parents=True, exist_ok=True)
    parameters = dict(parameters or {})
    stored = nbformat.read(str(notebook), as_version=4)
    runtime = parameters.get("runtime", default_parameters(stored).get("runtime"))
    failure: CellFailure | None = None
    started = time.monotonic()
    try:
        pm.execute_notebook(
            str(notebook),
            str(output),
            parameters=parameters,
            engine_name=ENGINE_NAME,
            progress_bar=False,
            execution_timeout=cell_timeout,
            start_timeout=KERNEL_START_TIMEOUT,
        )
    except PapermillExecutionError as error:
        failure = _error_failure(_read(output), error)
    except (CellTimeoutError, DeadKernelError) as exc:
        failure = _interrupted_failure(_read(output), exc)
    except Exception as exc:  # noqa: BLE001 - e.g. no such kernel: the run failed before any cell
        failure = CellFailure(None, None, None, "", type(exc).__name__, strip_ansi(str(exc)), strip_ansi(str(exc)))
    duration = time.monotonic() - started
    executed = _read(output)
    record = executed.metadata.get(METADATA_KEY, {}) if executed is not None else {}
    return NotebookRun(
        notebook=str(notebook),
        output=str(output),
        parameters=parameters,
        runtime=None if runtime is None else str(runtime),
        ran_runtime=record.get("ran_runtime"),
        passed=failure is None,
        duration=duration,
        failure=failure,
    )


def _read(path: Path) -> Any:
    import nbformat

    try:
        return nbformat.read(str(path), as_version=4)
    except (OSError, ValueError):
        return None


def check_notebook(path: Path) -> None:
    """Raise ValueError saying why nbformat cannot read `path` as a notebook (not JSON, not UTF-8 text, not
    a notebook's structure), so a run is never started on it only to fail with nbformat's traceback."""
    import nbformat
    from nbformat.reader import NotJSONError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nbformat.read(str(path), as_version=4)
    except NotJSONError:
        raise ValueError(f"{path} is not a notebook: it is not valid JSON") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not a notebook: it is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - nbformat raises many types for JSON that is no notebook
        raise ValueError(f"{path} is not a notebook nbformat can read: {type(exc).__name__}: {exc}") from None


def discover(paths: Sequence[str | Path]) -> list[Path]:
    """Notebooks named or found (recursively, sorted) under directories; checkpoints and hidden dirs skipped.
    Raises FileNotFoundError naming a path that does not exist, ValueError for a file that is no notebook
    (see `check_notebook`)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for candidate in sorted(path.rglob("*.ipynb")):
                relative = candidate.relative_to(path).parts
                if not any(part.startswith(".") for part in relative):
                    found.append(candidate)
        elif path.is_file():
            if path.suffix != ".ipynb":
                raise ValueError(f"{path} is not a notebook (.ipynb)")
            found.append(path)
        else:
            raise FileNotFoundError(f"no such notebook or directory: {path}")
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    for path in unique.values():
        check_notebook(path)
    return list(unique.values())


def output_paths(notebooks: Sequence[Path], directory: Path) -> list[Path]:
    """One output file per notebook in `directory`, unique even when notebooks share a name."""
    taken: set[str] = set()
    outputs = []
    for notebook in notebooks:
        name, n = f"{notebook.stem}.ipynb", 1
        while name in taken:
            n += 1
            name = f"{notebook.stem}-{n}.ipynb"
        taken.add(name)
        outputs.append(directory / name)
    return outputs


def run_notebooks(
    notebooks: Sequence[Path],
    outputs: Sequence[Path],
    parameters: dict[str, Any],
    *,
    jobs: int,
    cell_timeout: float | None = DEFAULT_CELL_TIMEOUT,
    on_done: Callable[[NotebookRun], None] | None = None,
) -> list[NotebookRun]:
    """Run every notebook, `jobs` at a time in worker processes; results in the order of `notebooks`."""
    ensure_kernelspec()  # once, before workers could race to install it
    if jobs <= 1 or len(notebooks) <= 1:
        results = []
        for notebook, output in zip(notebooks, outputs, strict=True):
            result = run_notebook(notebook, output, parameters, cell_timeout=cell_timeout)
            if on_done is not None:
                on_done(result)
            results.append(result)
        return results
    # spawn, not fork: the parent may hold threads (rich, jupyter_client) that fork would copy mid-state.
    context = multiprocessing.get_context("spawn")
    by_index: dict[int, NotebookRun] = {}
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {
            pool.submit(run_notebook, notebook, output, parameters, cell_timeout=cell_timeout): i
            for i, (notebook, output) in enumerate(zip(notebooks, outputs, strict=True))
        }
        for future in concurrent.futures.as_completed(futures):
            result = future.result()
            by_index[futures[future]] = result
            if on_done is not None:
                on_done(result)
    return [by_index[i] for i in range(len(notebooks))]


def junit_xml(runs: Sequence[NotebookRun], suite: str = "eventual-nb notebooks") -> bytes:
    """JUnit XML: one testcase per notebook run; a failure's message is `ename: evalue`, its text the cell
    index, source and traceback."""
    import xml.etree.ElementTree as ET

    failures = sum(1 for run in runs if not run.passed)
    root = ET.Element("testsuites", tests=str(len(runs)), failures=str(failures), errors="0")
    total = sum(run.duration for run in runs)
    testsuite = ET.SubElement(
        root, "testsuite", name=suite, tests=str(len(runs)), failures=str(failures), errors="0", skipped="0"
    )
    testsuite.set("time", f"{total:.3f}")
    root.set("time", f"{total:.3f}")
    for run in runs:
        case = ET.SubElement(
            testsuite,
            "testcase",
            classname=Path(run.notebook).parent.as_posix().replace("/", ".") or "notebooks",
            name=f"{Path(run.notebook).name}[{run.runtime or 'default'}]",
            file=run.notebook,
            time=f"{run.duration:.3f}",
        )
        if run.failure is not None:
            element = ET.SubElement(case, "failure", message=run.failure.message, type=run.failure.ename)
            element.text = failure_text(run.failure)
        ET.SubElement(case, "system-out").text = f"output notebook: {run.output}"
    ET.indent(root)
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))


def failure_text(failure: CellFailure) -> str:
    """The report of one failure: which cell (stored index, and papermill's when it differs), its source,
    its traceback."""
    if failure.index is None:
        where = "before any cell ran"
    else:
        where = f"cell {failure.index}"
        if failure.executed_index is not None and failure.executed_index != failure.index:
            where += f" (papermill's index {failure.executed_index}, counting its injected-parameters cell)"
        if failure.execution_count is not None:
            where += f", In [{failure.execution_count}]"
    parts = [f"{where}: {failure.message}"]
    if failure.source:
        parts += ["--- source ---", failure.source.rstrip()]
    if failure.traceback:
        parts += ["--- traceback ---", failure.traceback.rstrip()]
    return "\n".join(parts)
