"""Write an exported service package: the directory layout below, byte for byte reproducible.

    DIR/pyproject.toml  DIR/eventual.json  DIR/openapi.json  DIR/template.json  DIR/handlers.py
    DIR/<package>/__init__.py  [DIR/lambda.zip]

The manifest and the OpenAPI document describe what the generated package *really* registers, so
they are read from the package after importing it, not guessed from the notebook. That import runs in
a separate Python process: importing the package here would register its definitions into this
process's services, and inside a kernel (`%eventual export`) those are the live definitions the
notebook's executions run on. The child process writes no bytecode, so DIR never holds `__pycache__`.

Nothing written depends on DIR's path, the clock, the user or the machine: the same notebook with the
same eventual-nb version gives the same bytes.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import eventual_nb
from eventual_nb.errors import EventualError
from exporter.errors import ExportError, where
from exporter.handlers import HANDLERS
from exporter.notebook import ExportedSource, read_service

__all__ = [
    "FORMAT",
    "HANDLERS",
    "MANIFEST",
    "WRITTEN_FILES",
    "ExportResult",
    "export_notebook",
    "export_package",
    "json_text",
]

#: the manifest's file name and format version (a directory holding it with this format is an export)
MANIFEST = "eventual.json"
FORMAT = 1
#: every top-level file an export may write (the package directory comes on top)
WRITTEN_FILES = ("pyproject.toml", MANIFEST, "openapi.json", "template.json", "handlers.py", "lambda.zip")
#: seconds the child process that imports the package may take
INSPECT_TIMEOUT = 120


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: the directory, its files (relative, sorted), the zip's facts and the manifest."""

    directory: Path
    files: list[str]
    lambda_zip: dict[str, Any] | None
    manifest: dict[str, Any]


def export_notebook(notebook: str | Path, out_dir: str | Path, *, zip: bool = False, force: bool = False) -> Path:
    """Export `notebook`'s service into `out_dir` and return `out_dir`.

    `out_dir` may be missing, empty, or an earlier export (its exporter-written files are replaced);
    anything else is refused unless `force=True`, and even then only the files an export writes are
    removed. `zip=True` also builds the reproducible `lambda.zip`. Raises `ExportError`.
    """
    return export_package(notebook, out_dir, zip=zip, force=force).directory


def export_package(
    notebook: str | Path, out_dir: str | Path, *, zip: bool = False, force: bool = False
) -> ExportResult:
    """`export_notebook`, returning everything the command line reports (files written, zip facts)."""
    exported = read_service(notebook)
    spec, openapi = inspect_package(exported)
    check_schedules_deploy(exported, spec)
    version = eventual_nb.__version__
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "name": exported.service,
        "package": exported.package,
        "eventual_nb_version": version,
        "notebook": exported.notebook,
        "source_sha256": hashlib.sha256(exported.source.encode("utf-8")).hexdigest(),
        "handlers": dict(HANDLERS),
        "service": spec,
    }

    directory = Path(out_dir)
    try:
        files, lambda_zip = _write_package(directory, exported, manifest, openapi, version, zip=zip, force=force)
    except OSError as exc:  # a file where a directory should be, no permission, a full disk...
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(directory) else ""
        raise ExportError(f"cannot write the package to {directory}: {exc.strerror or exc}{where}") from None
    return ExportResult(directory=directory, files=files, lambda_zip=lambda_zip, manifest=manifest)


def _write_package(
    directory: Path,
    exported: ExportedSource,
    manifest: dict[str, Any],
    openapi: dict[str, Any],
    version: str,
    *,
    zip: bool,
    force: bool,
) -> tuple[list[str], dict[str, Any] | None]:
    """Write the export's files into `directory`; return their names and the zip's facts. Raises OSError."""
    _prepare(directory, exported.package, force=force)
    files: list[str] = []

    def write(relative: str, text: str) -> None:
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("utf-8"))
        files.append(relative)

    write("pyproject.toml", pyproject_text(exported, version))
    write(f"{exported.package}/__init__.py", exported.source)
    write("openapi.json", json_text(openapi))
    write(MANIFEST, json_text(manifest))

    handlers = _piece("exporter.handlers")
    if handlers is not None:
        write("handlers.py", handlers.handlers_source(manifest))
    lambda_zip: dict[str, Any] | None = None
    if zip:
        bundle = _piece("exporter.bundle")
        if bundle is None:
            raise ExportError("--zip needs exporter.bundle (the Lambda bundle builder), which is not installed")
        lambda_zip = dict(bundle.build_lambda_zip(directory, directory / "lambda.zip"))
        files.append("lambda.zip")
        manifest["lambda_zip"] = lambda_zip
        write(MANIFEST, json_text(manifest))
    template = _piece("exporter.template")
    if template is not None:
        write("template.json", json_text(template.build_template(manifest)))
    return sorted(set(files)), lambda_zip


# -- text of the files ---------------------------------------------------------------------------------


def json_text(value: Any) -> str:
    """Every JSON file of an export: sorted keys, two-space indent, UTF-8, one trailing newline."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _toml_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # JSON's escapes are valid in a TOML basic string


def pyproject_text(exported: ExportedSource, version: str) -> str:
    """The package's pyproject.toml: installable with pip, pinned to the eventual-nb that exported it."""
    description = f"The {exported.service} service, exported from {exported.notebook} by eventual-nb"
    lines = [
        f"# AUTOGENERATED by eventual-nb {version}; edit {exported.notebook}, not this file.",
        "[build-system]",
        'requires = ["setuptools>=69"]',
        'build-backend = "setuptools.build_meta"',
        "",
        "[project]",
        f"name = {_toml_string(exported.distribution)}",
        'version = "0.1.0"',
        f"description = {_toml_string(description)}",
        'requires-python = ">=3.11"',
        f"dependencies = [{_toml_string(f'eventual-nb=={version}')}]",
        "",
        "[tool.setuptools]",
        f"packages = [{_toml_string(exported.package)}]",
    ]
    return "\n".join(lines) + "\n"


# -- reading what the package registers ----------------------------------------------------------------

# Runs in a child process: imports the staged package without writing bytecode and reports its service's
# spec and OpenAPI document (or where the import failed) as JSON in a file, since the package's own code
# may print to stdout while it loads.
_INSPECT = r"""
import importlib, json, sys, traceback
sys.dont_write_bytecode = True
staging, package, service_name, out = sys.argv[1:5]
sys.path.insert(0, staging)
try:
    importlib.import_module(package)
except BaseException as exc:
    frames = [[frame.filename, frame.lineno] for frame in traceback.extract_tb(exc.__traceback__)]
    syntax = [exc.filename, exc.lineno] if isinstance(exc, SyntaxError) else None
    detail = exc.msg if isinstance(exc, SyntaxError) else str(exc)
    result = {"error": {"type": type(exc).__name__, "message": detail, "frames": frames, "syntax": syntax}}
else:
    from fastapi.openapi.utils import get_openapi

    from eventual_nb.service import all_services, get_service

    service = get_service(service_name)
    strays = {}
    for other in all_services():
        if other is service:
            continue
        kinds = {
            "workflows": sorted(other.workflows), "activities": sorted(other.activities),
            "signals": sorted(other.signals), "events": sorted(other.events),
            "subscriptions": sorted(other.subscriptions), "entities": sorted(other.entities),
            "routes": sorted(getattr(r, "path", "") for r in other._router.routes) if other._router else [],
        }
        if any(kinds.values()):
            strays[other.name] = kinds
    from eventual_nb import __version__
    from eventual_nb.server import HostCheck, with_guard_answers

    routes = service.api.routes if service is not None else []
    # the schema `eventual-nb serve DIR` answers on loopback: the routes plus the server's own answers
    openapi = get_openapi(title=f"{service_name} (eventual-nb)", version=__version__, routes=routes)
    result = {
        "spec": service.spec() if service is not None else None,
        "openapi": with_guard_answers(openapi, HostCheck(()), internal=False, token=False),
        "strays": strays,
    }
with open(out, "w", encoding="utf-8") as sink:
    json.dump(result, sink)
"""


def inspect_package(exported: ExportedSource) -> tuple[dict[str, Any], dict[str, Any]]:
    """Import the generated package in a child process; return its service's spec and OpenAPI document.

    An import failure becomes an ExportError at the notebook cell and line the failing code came from.
    """
    with tempfile.TemporaryDirectory(prefix="eventual-export-") as staging:
        root = Path(staging)
        source = root / "stage" / exported.package / "__init__.py"
        source.parent.mkdir(parents=True)
        source.write_bytes(exported.source.encode("utf-8"))
        report = root / "report.json"
        try:
            proc = subprocess.run(
                [
                    sys.executable,
                    "-B",
                    "-c",
                    _INSPECT,
                    str(root / "stage"),
                    exported.package,
                    exported.service,
                    str(report),
                ],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=INSPECT_TIMEOUT,
                env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
            )
        except subprocess.TimeoutExpired:
            raise ExportError(
                f"{exported.notebook}: importing the exported package took more than {INSPECT_TIMEOUT} s; "
                "exported cells should only define things (move long-running code to cells that are not exported)"
            ) from None
        if not report.is_file():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            raise ExportError(
                f"{exported.notebook}: importing the exported package failed (exit {proc.returncode}):\n{tail}"
            )
        result = json.loads(report.read_text(encoding="utf-8"))
        error = result.get("error")
        if error is not None:
            raise _import_error(exported, error, str(source))
    strays: dict[str, dict[str, list[str]]] = result["strays"]
    if strays:
        described = "; ".join(
            f"service '{name}' got " + ", ".join(f"{kind} {', '.join(items)}" for kind, items in kinds.items() if items)
            for name, kinds in sorted(strays.items())
        )
        raise ExportError(
            f"{exported.notebook}: an export holds one service, '{exported.service}' (the last `%eventual service` "
            f'or `ev.Service("...")` of the notebook), but the exported cells also define things in other services: '
            f"{described}. Use one service per notebook"
        )
    if result["spec"] is None:
        raise ExportError(f"{exported.notebook}: the exported package did not create the service '{exported.service}'")
    return dict(result["spec"]), dict(result["openapi"])


def check_schedules_deploy(exported: ExportedSource, spec: dict[str, Any]) -> None:
    """Refuse, before anything is written, a schedule that EventBridge Scheduler cannot run (an export is
    what `eventual-nb deploy` puts on AWS): the message names the schedule and the cell of its workflow."""
    from eventual_nb.runtime.aws.schedules import aws_expression
    from eventual_nb.runtime.core.schedules import schedule_from_spec

    for item in spec.get("schedules", []):
        schedule = schedule_from_spec(item)
        try:
            aws_expression(schedule)
        except EventualError as exc:
            cells = [cell for cell in exported.cells if ("workflow", schedule.workflow) in cell.definitions]
            if not cells:
                raise ExportError(f"{exported.notebook}: {exc.message}") from None
            cell = cells[-1]
            raise ExportError(
                f"{where(exported.notebook, cell.index, cell.id, 1)}: {exc.message}",
                cell_index=cell.index,
                cell_id=cell.id,
                line=1,
            ) from None


def _import_error(exported: ExportedSource, error: dict[str, Any], source: str) -> ExportError:
    kind, message = str(error["type"]), str(error["message"])
    line: int | None = None
    syntax = error.get("syntax")
    if syntax and syntax[0] == source:
        line = syntax[1]
    else:
        own = [frame_line for filename, frame_line in error.get("frames", []) if filename == source]
        line = own[-1] if own else None
    hint = ""
    missing = re.match(r"name '(\w+)' is not defined", message)
    found = exported.unexported_names.get(missing.group(1)) if missing else None
    if found is not None:
        hint = (
            f"; it is bound (defined or imported) in {where(exported.notebook, found[0], found[1], None)}, which is not exported: mark "
            "that cell with `#| export` (or tag it `export`) so it becomes part of the package"
        )
    elif kind == "NameError":
        hint = (
            "; if a cell that is not exported defines or imports it, mark that cell with `#| export` "
            "(or tag it `export`) so it becomes part of the package"
        )
    elif kind in ("ModuleNotFoundError", "ImportError"):
        hint = "; the exported package must import on its own (install what it needs, or export the code it imports)"
    return exported.error_at(line, f"importing the exported package failed: {kind}: {message}{hint}")


# -- the output directory ------------------------------------------------------------------------------


def _earlier_export(directory: Path) -> dict[str, Any] | None:
    """The manifest of an earlier export in `directory`, or None if it is not one."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(manifest, dict) and manifest.get("format") == FORMAT:
        return manifest
    return None


def _prepare(directory: Path, package: str, *, force: bool) -> None:
    """Make `directory` ready: create it, or clear the files an earlier export wrote (and only those)."""
    if directory.exists() and not directory.is_dir():
        raise ExportError(f"cannot export to {directory}: it exists and is not a directory")
    if not directory.exists():
        directory.mkdir(parents=True)
        return
    if not any(directory.iterdir()):
        return
    previous = _earlier_export(directory)
    if previous is None and not force:
        raise ExportError(
            f"cannot export to {directory}: it exists, holds files and is not an earlier export (it has no "
            f"{MANIFEST} with format {FORMAT}); choose another directory, or pass --force (force=True) to "
            "replace the files an export writes there"
        )
    packages = {package}
    earlier = previous.get("package") if previous is not None else None
    if isinstance(earlier, str) and earlier.isidentifier():
        packages.add(earlier)
    for name in WRITTEN_FILES:
        _remove_file(directory / name)
    _remove_bytecode(directory / "__pycache__", "handlers")
    for name in sorted(packages):
        folder = directory / name
        _remove_file(folder / "__init__.py")
        _remove_bytecode(folder / "__pycache__", "__init__")
        _remove_empty(folder)


def _remove_file(path: Path) -> None:
    if path.is_file() or path.is_symlink():
        path.unlink()


def _remove_bytecode(cache: Path, module: str) -> None:
    """Bytecode Python wrote for a module an export writes (serving DIR imports it), then the cache if empty."""
    if not cache.is_dir():
        return
    for compiled in cache.glob(f"{module}.*.pyc"):
        _remove_file(compiled)
    _remove_empty(cache)


def _remove_empty(folder: Path) -> None:
    if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
        folder.rmdir()


# -- the other pieces ----------------------------------------------------------------------------------


def _piece(module: str) -> ModuleType | None:
    """The exporter module that writes one of the other files, or None when it is not part of this install."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return None
        raise
