"""Load the code of a service from what a user points the command line at (`eventual-nb serve TARGET`,
`eventual-nb replay ID --target TARGET`).

TARGET is one of:

* a ``.py`` file: run as a module under a unique name (its directory goes on ``sys.path`` so it can
  import its neighbours, as ``python file.py`` would allow);
* a dotted module name: imported with the current directory on ``sys.path``;
* a directory: an exported package (``eventual.json`` names it with ``{"name": ..., "package": ...}``),
  a package itself (it holds ``__init__.py``), or a directory holding exactly one package;
* a notebook (``.ipynb``): exported (as `eventual-nb export` would) into a temporary directory that
  lives as long as the process, and that package is imported. So serving a notebook runs exactly the
  code its export holds, and a notebook that would not export does not serve, with the same error.

`load_target` returns the services whose definitions the load added or replaced, so ``serve`` serves
what the target defined rather than everything the process happens to hold.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib
import importlib.util
import json
import shutil
import sys
import tempfile
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from eventual_nb import errors
from eventual_nb.service import Service, all_services

__all__ = ["TargetError", "load_target"]


class TargetError(errors.EventualError):
    """A TARGET that could not be found or whose code failed to import."""


def load_target(target: str) -> list[Service]:
    """Import the code TARGET names; return the services that gained or replaced definitions.

    When the load changed no service (its code was already imported), every service that has any
    definition is returned. A target that leaves nothing defined (a module such as `os`, a script
    without definitions, a bare `ev.Service("x")`) raises `TargetError`: there would be nothing to serve
    or replay, and serving an empty service hides the mistake.
    """
    before = _snapshot()
    _import_target(target)
    after = _snapshot()

    def defines(service: Service) -> bool:
        return any(after.get(service.name, {}).values())

    changed = [service for service in all_services() if after.get(service.name) != before.get(service.name)]
    found = changed if any(defines(service) for service in changed) else [s for s in all_services() if defines(s)]
    if not found:
        raise TargetError(
            f"cannot load {target}: it defines no workflow, activity, signal, event, subscription or API route "
            "(point at the service's code: a .py file, a module, an exported package directory or a notebook)"
        )
    return found


# -- what changed -------------------------------------------------------------------------------------


def _snapshot() -> dict[str, dict[str, Any]]:
    """Identity of every definition of every service: a replaced definition counts as a change."""
    found: dict[str, dict[str, Any]] = {}
    for service in all_services():
        router = service._router
        found[service.name] = {
            "workflows": {name: id(item) for name, item in service.workflows.items()},
            "activities": {name: id(item) for name, item in service.activities.items()},
            "signals": {name: id(item) for name, item in service.signals.items()},
            "events": {name: id(item) for name, item in service.events.items()},
            "subscriptions": {name: id(item) for name, item in service.subscriptions.items()},
            "routes": [id(route) for route in router.routes] if router is not None else [],
        }
    return found


# -- importing ----------------------------------------------------------------------------------------


def _import_target(target: str) -> ModuleType:
    if not target:
        raise TargetError("no TARGET given: pass a .py file, a module name or an exported package directory")
    path = Path(target)
    if target.endswith(".ipynb"):
        if not path.is_file():
            raise TargetError(f"notebook not found: {target}")
        return _import_notebook(path)
    if path.is_dir():
        return _import_directory(path)
    if path.is_file():
        return _import_file(path)
    if target.endswith(".py") or "/" in target or "\\" in target:
        raise TargetError(f"file not found: {target}")
    return _import_module(target, root=Path.cwd(), shown=target)


def _import_file(path: Path) -> ModuleType:
    path = path.resolve()
    if path.suffix != ".py":
        raise TargetError(f"cannot load {path}: expected a .py file, a module name, a package directory or a notebook")
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    stem = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in path.stem)
    name = f"_eventual_target_{stem}_{digest}"
    _on_path(path.parent)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise TargetError(f"cannot load {path}: Python cannot import it as a module")
    module = importlib.util.module_from_spec(spec)
    # registered before running, as the import system does: pydantic resolves forward references
    # (`from __future__ import annotations`) through sys.modules[module.__name__]
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(name, None)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise TargetError(_failure(str(path), exc, path.parent)) from exc
    return module


def _import_notebook(path: Path) -> ModuleType:
    """Export the notebook into a temporary directory (removed at exit) and import the package there."""
    try:
        from exporter import ExportError, export_notebook
    except ImportError as exc:
        raise TargetError(
            f"cannot load {path}: serving a notebook needs the notebook extra: pip install 'eventual-nb[notebook]' "
            f"({exc})"
        ) from None
    directory = Path(tempfile.mkdtemp(prefix="eventual-nb-notebook-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    try:
        export_notebook(path, directory / "export")
    except ExportError as exc:
        raise TargetError(f"cannot load {path}: {exc.message}") from None
    return _import_directory(directory / "export")


def _import_directory(path: Path) -> ModuleType:
    path = path.resolve()
    manifest = path / "eventual.json"
    if manifest.is_file():
        try:
            spec = json.loads(manifest.read_text())
            package = spec["package"]
            if not isinstance(package, str) or not package:
                raise TypeError("'package' must be a non-empty string")
        except (ValueError, KeyError, TypeError) as exc:
            raise TargetError(
                f"cannot load {path}: {manifest} is not a valid manifest ({type(exc).__name__}: {exc}); "
                'it must be JSON with {"name": ..., "package": ...}'
            ) from None
        # an export holds exactly the files the exporter wrote; serving it must not add __pycache__
        previous, sys.dont_write_bytecode = sys.dont_write_bytecode, True
        try:
            return _import_module(package, root=path, shown=str(path))
        finally:
            sys.dont_write_bytecode = previous
    if (path / "__init__.py").is_file():
        return _import_module(path.name, root=path.parent, shown=str(path))
    packages = sorted(child.name for child in path.iterdir() if child.is_dir() and (child / "__init__.py").is_file())
    if len(packages) == 1:
        return _import_module(packages[0], root=path, shown=str(path))
    if not packages:
        raise TargetError(
            f"cannot load {path}: the directory has no eventual.json and holds no Python package "
            "(a sub-directory with __init__.py)"
        )
    raise TargetError(
        f"cannot load {path}: the directory holds several packages ({', '.join(packages)}) and no eventual.json "
        "says which one is the service"
    )


def _import_module(name: str, *, root: Path, shown: str) -> ModuleType:
    _on_path(root)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            if shown == name:
                raise TargetError(
                    f"cannot load {name}: no such file or directory, and no importable module of that name "
                    f"(looked on sys.path, which starts with {root})"
                ) from None
            raise TargetError(f"cannot load {shown}: no module named '{name}' in {root}") from None
        raise TargetError(_failure(shown, exc, root)) from exc
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise TargetError(_failure(shown, exc, root)) from exc


def _on_path(directory: Path) -> None:
    entry = str(directory)
    if entry not in sys.path:
        sys.path.insert(0, entry)


def _failure(shown: str, exc: BaseException, root: Path) -> str:
    """`cannot load X: <error>` plus where it happened: the deepest frame in the target's own code."""
    where = ""
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f'\n  File "{exc.filename}", line {exc.lineno}'
        if exc.text:
            where += f"\n    {exc.text.strip()}"
    else:
        frames = [
            frame
            for frame in traceback.extract_tb(exc.__traceback__)
            if not frame.filename.startswith("<") and "importlib" not in Path(frame.filename).parts
        ]
        own = [frame for frame in frames if _under(frame.filename, root)]
        chosen = own or frames
        if chosen:
            frame = chosen[-1]
            where = f'\n  File "{frame.filename}", line {frame.lineno}, in {frame.name}'
            if frame.line:
                where += f"\n    {frame.line.strip()}"
    detail = str(exc) if not isinstance(exc, SyntaxError) else (exc.msg or str(exc))
    if isinstance(exc, SystemExit):
        detail = f"the code called exit({exc.code!r}) while loading"
    return f"cannot load {shown}: {type(exc).__name__}: {detail}{where}"


def _under(filename: str, root: Path) -> bool:
    try:
        Path(filename).resolve().relative_to(root.resolve())
    except (ValueError, OSError):
        return False
    return True
