"""Read a notebook and turn its service cells into the source of one plain Python module.

The notebook stays the source of truth, so the generated module is a faithful, readable copy of the
cells the service needs, and nothing else:

* magic cells (`%%workflow`, `%%activity`, `%%api`, `%%event`, `%%subscription`, `%%signal`) keep
  their text; the magic line becomes the decorator the magic would have applied, written above the
  definition the magic would have decorated (the last top-level function; every class for
  `%%signal`). Flags are read by the grammar the kernel reads them with (`eventual_nb.magic_syntax`),
  so a flag the kernel refuses is refused here with the same words, and a flag the kernel accepts means
  the same thing;
* code cells marked `#| export` (or tagged `export`) keep their text minus the directive, so imports
  and helper models the definitions need come along, in notebook order;
* everything else stays in the notebook: exploration cells, `%`/`!` lines, cells tagged
  `parameters`, `injected-parameters`, `test`, `skip-execution`, `raises-exception` (or marked
  `#| test` / `#| hide`), cells of other magics (`%%time`, `%%bash`, ...), markdown, outputs.

What would silently go missing is refused instead, naming the cell: another magic's cell marked for
export, a magic name close to one of ours on a cell defining a function or class (`%%workfow`: "did
you mean %%workflow?"), a name an exported function reads when called that no exported code defines
(`_check_free_names`), and a service name `check_service_name` refuses.

The result is deterministic: it depends only on the notebook's cells (never on the clock, the path,
or random cell ids — ids missing from old notebooks are derived from the cell index).
"""

from __future__ import annotations

import ast
import builtins
import difflib
import functools
import json
import keyword
import re
import shlex
import symtable
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import eventual_nb
from eventual_nb import magic_syntax
from eventual_nb.errors import EventualError
from eventual_nb.magic_syntax import CELL_MAGICS as MAGICS
from eventual_nb.magic_syntax import FlagError, max_attempts
from eventual_nb.service import check_service_name
from exporter.errors import ExportError, where

__all__ = [
    "MAGICS",
    "NEVER_EXPORT_DIRECTIVES",
    "NEVER_EXPORT_TAGS",
    "Cell",
    "ExportedCell",
    "ExportedSource",
    "LineOrigin",
    "package_name",
    "read_cells",
    "read_service",
]

#: tags of cells that are never exported (papermill's, nbclient's and nbdev's conventions, plus `test`)
NEVER_EXPORT_TAGS = frozenset(
    {"parameters", "injected-parameters", "test", "skip-execution", "raises-exception", "papermill-error-cell-tag"}
)
#: `#| name` directives of cells that are never exported
NEVER_EXPORT_DIRECTIVES = frozenset({"test", "hide"})
#: `#| name` directives that export a plain code cell (nbdev's family; `exporti` keeps names out of __all__)
EXPORT_DIRECTIVES = frozenset({"export", "exports", "exporti"})
#: the module-level name the generated package binds its service to
SERVICE_VARIABLE = "SERVICE"
#: how alike (difflib's ratio) another cell magic's name must be to one of MAGICS to be taken for a typo
#: of it: `%%workfow` (0.93), `%%signals` (0.92), `%%activty` (0.93) are; IPython's own cell magics
#: (`%%script` 0.67 to `subscription`) are not
SIMILAR_MAGIC = 0.7

_DIRECTIVE = re.compile(r"^#\|\s*([\w-]+)(.*)$")
_EVENTUAL_SERVICE_LINE = re.compile(r"^\s*%eventual\s+service\b(.*)$")


@dataclass(frozen=True)
class LineOrigin:
    """Where a line of the generated module came from: a line of a notebook cell (1-based)."""

    cell_index: int
    cell_id: str
    line: int


@dataclass(frozen=True)
class Cell:
    """One notebook cell as the exporter sees it (source joined, line endings normalised)."""

    index: int
    id: str
    cell_type: str
    source: str
    tags: frozenset[str]


@dataclass
class ExportedCell:
    """A cell that made it into the module: `kind` is the magic's name, or "export" for a plain cell."""

    index: int
    id: str
    kind: str
    #: what the cell registers: ("workflow", "transfer"), ("route", "POST /orders"), ...
    definitions: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class ExportedSource:
    """The module generated from a notebook, with enough bookkeeping to point errors back at cells."""

    notebook: str
    service: str
    package: str
    distribution: str
    title: str | None
    source: str
    cells: list[ExportedCell]
    #: origins[i] is where line i + 1 of `source` came from (None for generated lines)
    origins: list[LineOrigin | None]
    names: list[str]
    #: top-level names bound by code cells that were *not* exported → (cell index, cell id) of the last one;
    #: lets an import failure ("name 'BaseModel' is not defined") say which cell to mark `#| export`
    unexported_names: dict[str, tuple[int, str]] = field(default_factory=dict)

    def origin_of(self, line: int | None) -> LineOrigin | None:
        if line is None or not 1 <= line <= len(self.origins):
            return None
        return self.origins[line - 1]

    def error_at(self, line: int | None, message: str) -> ExportError:
        """An ExportError located at line `line` of the generated module (mapped back to its cell)."""
        origin = self.origin_of(line)
        if origin is None:
            return ExportError(f"{self.notebook}: {message}")
        return ExportError(
            f"{where(self.notebook, origin.cell_index, origin.cell_id, origin.line)}: {message}",
            cell_index=origin.cell_index,
            cell_id=origin.cell_id,
            line=origin.line,
        )


# -- reading the notebook -----------------------------------------------------------------------------


def read_cells(notebook: Path) -> list[Cell]:
    """The notebook's cells with deterministic ids.

    Read as JSON rather than through `nbformat.read`: nbformat fills missing ids with random ones,
    which would make two exports of the same file differ.
    """
    name = notebook.name
    try:
        text = notebook.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ExportError(f"notebook not found: {notebook}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"cannot read {notebook}: {type(exc).__name__}: {exc}") from None
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ExportError(f"{name} is not a notebook: it is not valid JSON ({exc})") from None
    if not isinstance(document, dict) or not isinstance(document.get("nbformat"), int):
        raise ExportError(f"{name} is not a notebook: it has no 'nbformat' version")
    original_ids = True
    if document["nbformat"] != 4:
        document = _upgrade(document, name)
        original_ids = False  # an upgraded notebook had no ids; nbformat invented random ones
    raw_cells = document.get("cells")
    if not isinstance(raw_cells, list):
        raise ExportError(f"{name} is not a notebook: it has no list of cells")
    cells: list[Cell] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_cells):
        if not isinstance(raw, dict):
            raise ExportError(f"{name}: cell index {index} is not a JSON object")
        cell_id = raw.get("id") if original_ids else None
        if not isinstance(cell_id, str) or not cell_id or cell_id in seen:
            cell_id = _fallback_id(index, seen)
        seen.add(cell_id)
        source = raw.get("source", "")
        if isinstance(source, list):
            source = "".join(str(part) for part in source)
        metadata = raw.get("metadata")
        tags = metadata.get("tags") if isinstance(metadata, dict) else None
        if not isinstance(tags, list):
            tags = []
        cells.append(
            Cell(
                index=index,
                id=cell_id,
                cell_type=str(raw.get("cell_type", "")),
                source=str(source).replace("\r\n", "\n").replace("\r", "\n"),
                tags=frozenset(str(tag) for tag in tags),
            )
        )
    return cells


def _fallback_id(index: int, seen: set[str]) -> str:
    """An id derived from the cell's index (never random), unique within the notebook."""
    candidate = f"cell-{index}"
    suffix = 0
    while candidate in seen:
        suffix += 1
        candidate = f"cell-{index}-{suffix}"
    return candidate


def _upgrade(document: dict[str, Any], name: str) -> dict[str, Any]:
    """Convert an nbformat 3 (or older) notebook to version 4 with nbformat itself."""
    try:
        import nbformat
    except ImportError as exc:
        raise ExportError(
            f"{name} is an nbformat {document['nbformat']} notebook; reading it needs nbformat: "
            f"pip install 'eventual-nb[notebook]' ({exc})"
        ) from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            upgraded = nbformat.convert(nbformat.from_dict(document), 4)
        except Exception as exc:  # noqa: BLE001 - any failure means "not a notebook we can read"
            raise ExportError(f"{name}: cannot convert nbformat {document['nbformat']} to 4: {exc}") from None
    return dict(json.loads(json.dumps(upgraded)))


# -- the service ---------------------------------------------------------------------------------------


def package_name(service: str) -> str:
    """The importable package of a service: its name with '-' and '.' (and anything else not allowed in
    an identifier) turned into '_'."""
    name = re.sub(r"\W", "_", service.replace("-", "_").replace(".", "_"), flags=re.ASCII)
    if not name or name[0].isdigit():
        name = f"service_{name}"
    if keyword.iskeyword(name):
        name = f"{name}_"
    return name


def distribution_name(service: str) -> str:
    """The pyproject `[project] name`: the service name, lowercase, `_` → `-`, plus `-service`."""
    base = re.sub(r"[^a-z0-9.-]+", "-", service.lower().replace("_", "-")).strip("-.") or "notebook"
    return f"{base}-service"


def _check_package(service: str, package: str, notebook: str) -> None:
    """Refuse package names that would shadow what the package itself needs to import."""
    reserved = {"eventual_nb", "exporter", "kernel_ext", "handlers", "fastapi", "pydantic", "starlette", "boto3"}
    if package in sys.stdlib_module_names or package in reserved:
        raise ExportError(
            f"{notebook}: the service '{service}' would become a package named '{package}', which would hide the "
            f"module '{package}' that Python or eventual-nb needs; name the service differently "
            '(`%eventual service NAME` or `ev.Service("NAME")`)'
        )


# -- turning cells into code ---------------------------------------------------------------------------


@dataclass
class _Chunk:
    """One exported cell's lines, ready to be placed in the module."""

    cell: ExportedCell
    lines: list[str]
    origins: list[LineOrigin | None]
    public: bool
    future: list[str]


class _Reader:
    """Walks a notebook's cells once, collecting the chunks of the module and what they define."""

    def __init__(self, notebook: Path) -> None:
        self.notebook = notebook.name
        self.stem = notebook.stem
        self.cells = read_cells(notebook)
        self.chunks: list[_Chunk] = []
        #: (namespace, name) → where it was first defined and as what (workflows and activities share names)
        self.defined: dict[tuple[str, str], tuple[LineOrigin, str]] = {}
        #: top-level names bound so far by class statements and `from x import Name` in exported cells
        self.classes: set[str] = set()
        self.service_names: list[str] = []
        self.title: str | None = None
        self.magic_cells = 0
        self.unexported_names: dict[str, tuple[int, str]] = {}

    # -------------------------------------------------------------------------------------- errors

    def error(self, cell: Cell, line: int | None, message: str) -> ExportError:
        return ExportError(
            f"{where(self.notebook, cell.index, cell.id, line)}: {message}",
            cell_index=cell.index,
            cell_id=cell.id,
            line=line,
        )

    # ---------------------------------------------------------------------------------------- walk

    def read(self) -> None:
        for cell in self.cells:
            if cell.cell_type == "markdown":
                if self.title is None:
                    self.title = _title(cell.source)
                continue
            if cell.cell_type != "code":
                continue
            self.read_code_cell(cell)

    def read_code_cell(self, cell: Cell) -> None:
        lines = cell.source.split("\n")
        numbers = list(range(1, len(lines) + 1))
        first = 0
        while first < len(lines) and not lines[first].strip():
            first += 1  # IPython drops leading empty lines before looking for a cell magic
        magic: str | None = None
        flags = ""
        magic_line = 0
        if first < len(lines) and lines[first].startswith("%%"):
            parts = lines[first][2:].strip().split(None, 1)
            magic = parts[0] if parts else ""
            flags = parts[1] if len(parts) > 1 else ""
            magic_line = numbers[first]
            lines, numbers = lines[first + 1 :], numbers[first + 1 :]
        directives, lines, numbers = _directives(lines, numbers)
        if cell.tags & NEVER_EXPORT_TAGS or directives & NEVER_EXPORT_DIRECTIVES:
            return
        if magic is not None and magic not in MAGICS:
            self.check_other_magic(cell, magic, magic_line, lines, directives)
            return  # %%time, %%bash, %%capture ...: not service code
        exported = magic is not None or "export" in cell.tags or bool(directives & EXPORT_DIRECTIVES)
        if not exported:
            tree = self.note_service_names(cell, lines, numbers, parsed=None)
            if tree is not None:
                for name in _bound_names(tree):
                    self.unexported_names[name] = (cell.index, cell.id)
            return
        kind = magic or "export"
        body, origins, future, tree = self.clean(cell, lines, numbers)
        kept_numbers = [origin.line if origin is not None else 0 for origin in origins]
        self.note_service_names(cell, lines, numbers, parsed=(tree, kept_numbers))
        exported_cell = ExportedCell(index=cell.index, id=cell.id, kind=kind)
        if magic is not None:
            self.magic_cells += 1
            body, origins = self.decorate(cell, magic, flags, magic_line, body, origins, tree, exported_cell)
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                self.classes.add(node.name)
            elif isinstance(node, ast.ImportFrom):
                self.classes.update(alias.asname or alias.name for alias in node.names if alias.name != "*")
        while body and not body[-1].strip():
            body, origins = body[:-1], origins[:-1]
        public = "exporti" not in directives
        self.chunks.append(_Chunk(exported_cell, body, origins, public, future))

    def check_other_magic(
        self, cell: Cell, magic: str, magic_line: int, lines: list[str], directives: set[str]
    ) -> None:
        """Refuse a cell magic that is not one of ours where leaving the cell out would lose service code.

        Another magic's cell (`%%time`, `%%capture`, `%%bash`, `%%sql` ...) stays in the notebook, like any
        exploration cell, except: a cell marked for export (its code would silently not be), and a name
        close to one of ours (`%%workfow`) on a cell that defines a function or class: that is a typo, and
        the definition would silently be missing from the service.
        """
        ours = ", ".join(f"%%{name}" for name in MAGICS)
        if "export" in cell.tags or directives & EXPORT_DIRECTIVES:
            raise self.error(
                cell,
                magic_line,
                f"%%{magic} is not an eventual-nb magic, so this cell cannot be exported (export keeps {ours} "
                "cells and plain code cells marked `#| export`); remove the magic or the export mark",
            )
        close = difflib.get_close_matches(magic.lower(), MAGICS, n=1, cutoff=SIMILAR_MAGIC)
        if not close:
            return
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SyntaxWarning)
                tree = ast.parse(_transform("\n".join(lines)))
        except SyntaxError:
            return  # not Python: a prompt, a query, a script for another magic
        defined = [
            node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        ]
        if defined:
            raise self.error(
                cell,
                magic_line,
                f"unknown cell magic %%{magic}: did you mean %%{close[0]}? As written, the cell and its "
                f"'{defined[-1]}' are left out of the service (the magics are {ours})",
            )

    # -------------------------------------------------------------------------- cleaning one cell

    def clean(
        self, cell: Cell, lines: list[str], numbers: list[int]
    ) -> tuple[list[str], list[LineOrigin | None], list[str], ast.Module]:
        """Drop `%`/`!` lines and hoist `from __future__` imports; check that what is left compiles.

        Returns the kept lines, their origins, the hoisted future imports and the parsed tree of the kept
        text (whose line numbers index the kept lines).
        """
        text = "\n".join(lines)
        transformed = _transform(text)
        if transformed.count("\n") != text.count("\n"):
            transformed = text  # a transform that joined lines: line numbers must stay true, so use the text
        tree = self.parse(cell, transformed, numbers)
        drop: set[int] = set()
        future: list[str] = []
        for node in tree.body:
            end = node.end_lineno or node.lineno
            if _is_ipython_statement(node):
                drop.update(range(node.lineno, end + 1))
            elif isinstance(node, ast.ImportFrom) and node.module == "__future__":
                future.extend(alias.name for alias in node.names)
                drop.update(range(node.lineno, end + 1))
            else:
                nested = _ipython_call(node)
                if nested is not None:
                    raise self.error(
                        cell,
                        _number(numbers, nested.lineno),
                        "an IPython magic or shell command (`%...`, `!...`) inside a block cannot be exported; "
                        "move it out of the service code",
                    )
        kept_lines = [line for position, line in enumerate(lines, 1) if position not in drop]
        kept_numbers = [number for position, number in enumerate(numbers, 1) if position not in drop]
        kept_text = "\n".join(kept_lines)
        tree = self.parse(cell, kept_text, kept_numbers)
        try:
            compile(kept_text, f"<{self.notebook} cell {cell.index}>", "exec", dont_inherit=True)
        except SyntaxError as exc:
            raise self.error(cell, _number(kept_numbers, exc.lineno), _syntax_message(exc)) from None
        origins: list[LineOrigin | None] = [LineOrigin(cell.index, cell.id, number) for number in kept_numbers]
        return kept_lines, origins, future, tree

    def parse(self, cell: Cell, text: str, numbers: list[int]) -> ast.Module:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SyntaxWarning)
                return ast.parse(text)
        except SyntaxError as exc:
            raise self.error(cell, _number(numbers, exc.lineno), _syntax_message(exc)) from None

    # --------------------------------------------------------------------------- magic → decorator

    def decorate(
        self,
        cell: Cell,
        magic: str,
        flags: str,
        magic_line: int,
        body: list[str],
        origins: list[LineOrigin | None],
        tree: ast.Module,
        exported: ExportedCell,
    ) -> tuple[list[str], list[LineOrigin | None]]:
        """Insert the decorator(s) the magic applies; record what the cell defines."""
        at_magic = LineOrigin(cell.index, cell.id, magic_line)
        functions = [node for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)]
        classes = [node for node in tree.body if isinstance(node, ast.ClassDef)]
        insertions: list[tuple[ast.stmt, str]] = []
        try:
            args = magic_syntax.parse_flags(magic, flags)
        except FlagError as exc:
            raise self.error(cell, magic_line, exc.message) from None
        if magic in ("event", "signal"):
            if magic == "event":
                if not classes:
                    raise self.error(cell, magic_line, magic_syntax.NO_EVENT_CLASS)
                for event_class in classes:
                    self.define(cell, exported, "event", event_class.name, event_class.lineno, origins)
            else:
                assigned = _signal_assignments(tree)
                if not classes and not assigned:
                    raise self.error(cell, magic_line, magic_syntax.NO_SIGNAL)
                for node in classes:
                    insertions.append((node, "@ev.signal_model"))
                    self.define(cell, exported, "signal", node.name, node.lineno, origins)
                for signal_name, statement in assigned:
                    self.define(cell, exported, "signal", signal_name, statement.lineno, origins)
        else:
            try:
                name = magic_syntax.decorated_function(
                    magic, [(node.name, isinstance(node, ast.AsyncFunctionDef)) for node in functions]
                )
            except FlagError as exc:
                raise self.error(cell, magic_line, exc.message) from None
            target = [node for node in functions if node.name == name][-1]
            try:
                decorator, definition = self.decorator(magic, args, target.name)
            except FlagError as exc:
                raise self.error(cell, magic_line, exc.message) from None
            insertions.append((target, decorator))
            self.define(cell, exported, definition[0], definition[1], target.lineno, origins)
        lines, line_origins = list(body), list(origins)
        for decorated, decorator in sorted(insertions, key=lambda item: -_first_line(item[0])):
            position = _first_line(decorated) - 1
            indent = " " * decorated.col_offset
            for text in reversed(decorator.split("\n")):  # `@ev.schedule(...)` goes above `@ev.workflow`
                lines.insert(position, indent + text)
                line_origins.insert(position, at_magic)
        return lines, line_origins

    def decorator(self, magic: str, args: Any, function: str) -> tuple[str, tuple[str, str]]:
        """The decorator text for one magic (its flags as `magic_syntax.parse_flags` read them: durations
        as written) and the (kind, name) it registers."""
        options: list[str] = []
        if magic == "workflow":
            _option(options, "name", args.name)
            _option(options, "timeout", args.timeout)
            workflow = _call("@ev.workflow", options, bare=True)
            name = args.name or function
            scheduled = magic_syntax.schedule_options(args)
            if scheduled is not None:
                workflow = _schedule_decorator(scheduled, name) + "\n" + workflow
            return workflow, ("workflow", name)
        if magic == "activity":
            _option(options, "name", args.name)
            _option(options, "timeout", args.timeout)
            _option(options, "heartbeat_timeout", args.heartbeat_timeout)
            _retry(options, args.retries)
            if args.inline:
                options.append("inline=True")
            return _call("@ev.activity", options, bare=True), ("activity", args.name or function)
        if magic == "api":
            options.append(_literal(args.path))
            if args.status_code is not None:
                options.append(f"status_code={args.status_code}")
            if args.responses:
                entries = ", ".join(
                    f"{code}: {{{_literal('description')}: {_literal(answer['description'])}}}"
                    for code, answer in args.responses.items()
                )
                options.append(f"responses={{{entries}}}")
            method = str(args.method).lower()
            return _call(f"@ev.api.{method}", options, bare=False), ("route", f"{args.method} {args.path}")
        # subscription
        for event in args.events:
            options.append(event if event.isidentifier() and event in self.classes else _literal(event))
        _option(options, "name", args.name)
        _retry(options, args.retries)
        _option(options, "source", args.source)
        return _call("@ev.subscription", options, bare=False), ("subscription", args.name or function)

    def define(
        self, cell: Cell, exported: ExportedCell, kind: str, name: str, line: int, origins: list[LineOrigin | None]
    ) -> None:
        """Record a definition; a second one with the same name (workflows and activities share names) fails."""
        origin = origins[line - 1] if 0 < line <= len(origins) else None
        here = origin or LineOrigin(cell.index, cell.id, 1)
        namespace = "definition" if kind in ("workflow", "activity") else kind
        earlier = self.defined.get((namespace, name))
        if earlier is not None:
            first_origin, first_kind = earlier
            first = where(self.notebook, first_origin.cell_index, first_origin.cell_id, first_origin.line)
            second = where(self.notebook, here.cell_index, here.cell_id, here.line)
            what = f"{_a(first_kind)} and {_a(kind)}" if first_kind != kind else f"two {kind}s"
            raise ExportError(
                f"{second}: {kind} '{name}' is defined twice ({what} named '{name}'): first in {first}, again "
                f"in {second}; a service holds one definition per name, so delete or rename one of them",
                cell_index=here.cell_index,
                cell_id=here.cell_id,
                line=here.line,
            )
        self.defined[(namespace, name)] = (here, kind)
        exported.definitions.append((kind, name))

    # ------------------------------------------------------------------------------- service names

    def note_service_names(
        self, cell: Cell, lines: list[str], numbers: list[int], parsed: tuple[ast.Module, list[int]] | None
    ) -> ast.Module | None:
        """Collect `%eventual service NAME` lines and `ev.Service("NAME")` calls, in notebook order; return
        the cell's parsed tree (None if it does not parse).

        `parsed`: the tree of an exported cell's kept lines and their cell line numbers (else the cell's
        lines are parsed here, after IPython's transform)."""
        found: list[tuple[int, int, str]] = []
        for position, line in enumerate(lines):
            match = _EVENTUAL_SERVICE_LINE.match(line)
            if match is not None:
                found.append((numbers[position], 0, self.service_line(cell, numbers[position], match.group(1))))
        tree: ast.Module | None = None
        tree_numbers = numbers
        if parsed is not None:
            tree, tree_numbers = parsed
        else:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", SyntaxWarning)
                    tree = ast.parse(_transform("\n".join(lines)))
            except SyntaxError:
                tree = None
        if tree is not None:
            for node in ast.walk(tree):
                name = _service_call(node)
                if name is not None and isinstance(node, ast.expr):
                    number = _number(tree_numbers, node.lineno) or 0
                    try:
                        check_service_name(name)
                    except EventualError as exc:
                        raise self.error(cell, number or None, exc.message) from None
                    found.append((number, node.col_offset, name))
        self.service_names.extend(name for _, _, name in sorted(found))
        return tree

    def service_line(self, cell: Cell, line: int, text: str) -> str:
        """The NAME of a `%eventual service NAME` line, read as the kernel reads it (a name it would refuse
        is refused here, with its words)."""
        if any(ch in text for ch in "{}$"):
            raise self.error(
                cell,
                line,
                f"%eventual service {text.strip()}: the exporter cannot evaluate a name computed when the cell "
                "runs ({...} or $...); write the service name out",
            )
        try:
            return magic_syntax.service_name(shlex.split(text))
        except ValueError as exc:  # unbalanced quotes
            raise self.error(cell, line, f"%eventual service: {exc}") from None
        except FlagError as exc:
            raise self.error(cell, line, exc.message) from None


# -- assembling the module -----------------------------------------------------------------------------


def read_service(notebook_path: str | Path) -> ExportedSource:
    """Read a notebook and generate the source of its service package (`<package>/__init__.py`).

    Raises `ExportError` naming the cell (index and id) and line for anything the kernel would refuse
    (a syntax error, bad flags, a magic cell without its definition), for two definitions of one name,
    and for a notebook without any service cell.
    """
    notebook = Path(notebook_path)
    if notebook.suffix != ".ipynb":
        raise ExportError(f"expected a notebook (.ipynb), got {notebook.name}")
    try:
        # IPython's transformer finds `%` and `!` lines
        import IPython.core.inputtransformer2  # noqa: F401
    except ImportError as exc:
        raise ExportError(
            f"exporting {notebook.name} needs the notebook extra: pip install 'eventual-nb[notebook]' ({exc})"
        ) from None
    reader = _Reader(notebook)
    reader.read()
    if reader.magic_cells == 0:
        raise ExportError(
            f"{reader.notebook} has no service cells: export keeps %%workflow, %%activity, %%api, %%event, "
            "%%subscription and %%signal cells (plus cells marked `#| export`), and this notebook has none"
        )
    service = reader.service_names[-1] if reader.service_names else reader.stem
    if not reader.service_names:
        try:
            check_service_name(service)
        except EventualError as exc:
            raise ExportError(
                f"{reader.notebook}: the service is named after the notebook's file, and {exc.message}; name it "
                "in a cell with `%eventual service NAME` (or rename the file)"
            ) from None
    package = package_name(service)
    _check_package(service, package, reader.notebook)
    version = eventual_nb.__version__

    body_lines: list[str] = []
    body_origins: list[LineOrigin | None] = []
    future: list[str] = []
    private_names: set[str] = set()
    for chunk in reader.chunks:
        body_lines += ["", "", f"# %% {reader.notebook} #{chunk.cell.id}"]
        body_origins += [None, None, None]
        body_lines += chunk.lines
        body_origins += chunk.origins
        for name in chunk.future:
            if name not in future:
                future.append(name)
        if not chunk.public:
            private_names.update(_top_level_names(ast.parse("\n".join(chunk.lines))))

    names = sorted(
        name
        for name in _top_level_names(ast.parse("\n".join(body_lines)))
        if not name.startswith("_") and name not in private_names
    )
    if SERVICE_VARIABLE not in names:
        names = sorted([*names, SERVICE_VARIABLE])

    head: list[str] = [f"# AUTOGENERATED by eventual-nb {version}; edit {reader.notebook}, not this file."]
    if reader.title:
        head.append(_docstring(reader.title))
    if future:
        head += ["", f"from __future__ import {', '.join(future)}"]
    head += ["", "import eventual_nb as ev", "", f"{SERVICE_VARIABLE} = ev.Service({_literal(service)})", ""]
    head.append("__all__ = [")
    head += [f"    {_literal(name)}," for name in names]
    head.append("]")

    lines = head + body_lines
    origins: list[LineOrigin | None] = [None for _ in head]
    origins += body_origins
    source = "\n".join(lines) + "\n"
    exported = ExportedSource(
        notebook=reader.notebook,
        service=service,
        package=package,
        distribution=distribution_name(service),
        title=reader.title,
        source=source,
        cells=[chunk.cell for chunk in reader.chunks],
        origins=origins,
        names=names,
        unexported_names=reader.unexported_names,
    )
    try:
        compile(source, f"{package}/__init__.py", "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise exported.error_at(exc.lineno, _syntax_message(exc)) from None
    _check_free_names(exported)
    return exported


# -- names exported code needs at call time ------------------------------------------------------------

#: the ast nodes that open a scope of their own (a symtable "function" table; classes are checked through
#: their methods), by the name symtable gives their table
_SCOPE_NODES: dict[str, tuple[type[ast.AST], ...]] = {
    "lambda": (ast.Lambda,),
    "listcomp": (ast.ListComp,),
    "setcomp": (ast.SetComp,),
    "dictcomp": (ast.DictComp,),
    "genexpr": (ast.GeneratorExp,),
}


def _check_free_names(exported: ExportedSource) -> None:
    """Refuse names that exported functions read at call time but nothing in the package defines.

    A function body runs long after the import that checks the package, so a name that only an
    unexported cell defines (the notebook had it, the package does not) would export cleanly and fail
    with `NameError` in production. `symtable` says which names each function, lambda and
    comprehension takes from the module's globals; each must be bound at the module's top level
    (assignment, `for`, `with`, `import`, `def`, `class`, any branch), declared `global` and assigned by
    some function, or be a builtin or a module dunder. Annotations are not read at call time (and not at
    all under `from __future__ import annotations`), so names only they use are not checked. A package
    with `from x import *` is not checked: what the star binds is unknown until import.
    """
    tree = ast.parse(exported.source)
    if any(isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names) for node in ast.walk(tree)):
        return
    module = symtable.symtable(exported.source, f"{exported.package}/__init__.py", "exec")
    defined = {symbol.get_name() for symbol in module.get_symbols() if symbol.is_local()}
    defined |= set(dir(builtins))
    missing: list[tuple[str, str, symtable.SymbolTable]] = []  # (name, owning function, table)

    def walk(table: symtable.SymbolTable, owner: str | None) -> None:
        if table.get_type() == "function":
            owner = owner if table.get_name() in _SCOPE_NODES else table.get_name()
            for symbol in table.get_symbols():
                if symbol.is_declared_global() and symbol.is_assigned():
                    defined.add(symbol.get_name())
                elif symbol.is_global() and symbol.is_referenced():
                    missing.append((symbol.get_name(), owner or "<module>", table))
        for child in table.get_children():
            walk(child, owner)

    walk(module, None)
    found: dict[str, tuple[int, str]] = {}  # name → (line of its first call-time use, function)
    for name, owner, table in missing:
        if name in defined or (name.startswith("__") and name.endswith("__")):
            continue
        line = _first_use(tree, table, name)
        if line is not None and (name not in found or line < found[name][0]):
            found[name] = (line, owner)
    if not found:
        return
    problems = sorted((line, name, owner) for name, (line, owner) in found.items())
    line, name, owner = problems[0]
    message = (
        f"name '{name}' is used by the exported function '{owner}' but nothing exported defines it (it is not a "
        "builtin, and no exported cell assigns or imports it), so calling it would raise NameError"
    )
    if name in exported.unexported_names:
        index, cell_id = exported.unexported_names[name]
        message += f"; cell index {index} (id '{cell_id}') defines it: mark that cell `#| export`"
    else:
        message += "; define or import it in an exported cell"
    others = []
    for other_line, other_name, _ in problems[1:]:
        origin = exported.origin_of(other_line)
        place = f"cell index {origin.cell_index} (id '{origin.cell_id}'), line {origin.line}" if origin else ""
        others.append(f"'{other_name}' ({place})" if place else f"'{other_name}'")
    if others:
        message += f". Also undefined: {', '.join(others)}"
    raise exported.error_at(line, message)


def _first_use(tree: ast.Module, table: symtable.SymbolTable, name: str) -> int | None:
    """The first line where the scope of `table` reads `name`, outside annotations; None if only
    annotations do (symtable counts `x: Name = ...` in a function body as a use; it is never evaluated)."""
    kinds = _SCOPE_NODES.get(table.get_name(), (ast.FunctionDef, ast.AsyncFunctionDef))
    lines: list[int] = []
    for node in ast.walk(tree):
        if not isinstance(node, kinds) or getattr(node, "lineno", None) != table.get_lineno():
            continue
        body: list[ast.AST] = [node]  # a comprehension: all of it
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if node.name != table.get_name():
                continue
            body = list(node.body)  # decorators, defaults and argument annotations run in the enclosing scope
        elif isinstance(node, ast.Lambda):
            body = [node.body]
        inner = [child for root in body for child in ast.walk(root)]
        annotations = {
            id(part) for child in inner if isinstance(child, ast.AnnAssign) for part in ast.walk(child.annotation)
        }
        lines += [
            child.lineno
            for child in inner
            if isinstance(child, ast.Name) and child.id == name and id(child) not in annotations
        ]
    return min(lines, default=None)


# -- helpers -------------------------------------------------------------------------------------------


def _a(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def _title(markdown: str) -> str | None:
    for line in markdown.split("\n"):
        match = re.match(r"^#\s+(.+?)\s*#*\s*$", line)
        if match:
            return match.group(1)
    return None


def _docstring(title: str) -> str:
    if '"' not in title and "\\" not in title and title.isprintable():
        return f'"""{title}"""'
    return repr(title)


def _directives(lines: list[str], numbers: list[int]) -> tuple[set[str], list[str], list[int]]:
    """Leading `#| name` lines (blank lines may sit between them): their names, and the lines without them."""
    names: set[str] = set()
    drop: set[int] = set()
    for position, line in enumerate(lines):
        if not line.strip():
            continue
        match = _DIRECTIVE.match(line.strip())
        if match is None:
            break
        names.add(match.group(1))
        drop.add(position)
    kept = [
        (line, number)
        for position, (line, number) in enumerate(zip(lines, numbers, strict=True))
        if position not in drop
    ]
    return names, [line for line, _ in kept], [number for _, number in kept]


@functools.cache
def _transformer() -> Any:
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager()


def _transform(text: str) -> str:
    """IPython's own rewrite of `%magic` and `!shell` lines into `get_ipython()` calls (one line each)."""
    try:
        transformed = _transformer().transform_cell(text + "\n")
    except Exception:  # noqa: BLE001 - IPython could not make sense of it: ast will report the syntax error
        return text
    return str(transformed)[:-1] if str(transformed).endswith("\n") else str(transformed)


def _is_get_ipython(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Call)
        and isinstance(node.func.value.func, ast.Name)
        and node.func.value.func.id == "get_ipython"
    )


def _ipython_call(node: ast.AST) -> ast.Call | None:
    for child in ast.walk(node):
        if _is_get_ipython(child):
            assert isinstance(child, ast.Call)
            return child
    return None


def _is_ipython_statement(node: ast.stmt) -> bool:
    """`%magic`, `!cmd`, `x = !cmd`, `x = %magic`, `name?` after IPython's transform."""
    value = node.value if isinstance(node, ast.Expr | ast.Assign) else None
    return value is not None and _is_get_ipython(value)


def _service_call(node: ast.AST) -> str | None:
    """The NAME of `ev.Service("NAME")` / `Service("NAME")` / `run_line_magic('eventual', 'service NAME')`."""
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    if _is_get_ipython(node) and isinstance(func, ast.Attribute) and func.attr == "run_line_magic":
        if len(node.args) == 2 and all(
            isinstance(arg, ast.Constant) and isinstance(arg.value, str) for arg in node.args
        ):
            magic, line = (arg.value for arg in node.args)  # type: ignore[attr-defined]
            try:
                words = shlex.split(line)
            except ValueError:
                return None
            if magic == "eventual" and len(words) == 2 and words[0] == "service" and not set("{}$") & set(words[1]):
                return str(words[1])
        return None
    named = (isinstance(func, ast.Attribute) and func.attr == "Service") or (
        isinstance(func, ast.Name) and func.id == "Service"
    )
    if not named:
        return None
    argument: ast.expr | None = node.args[0] if node.args else None
    for keyword_argument in node.keywords:
        if keyword_argument.arg == "name":
            argument = keyword_argument.value
    if isinstance(argument, ast.Constant) and isinstance(argument.value, str) and argument.value:
        return argument.value
    return None


def _signal_assignments(tree: ast.Module) -> list[tuple[str, ast.stmt]]:
    """`name = ev.signal("approval", ...)` statements: (signal name, statement)."""
    found: list[tuple[str, ast.stmt]] = []
    for node in tree.body:
        value: ast.expr | None
        targets: list[ast.expr]
        if isinstance(node, ast.Assign):
            value, targets = node.value, node.targets
        elif isinstance(node, ast.AnnAssign):
            value, targets = node.value, [node.target]
        else:
            continue
        if not isinstance(value, ast.Call):
            continue
        func = value.func
        if not (
            (isinstance(func, ast.Attribute) and func.attr == "signal")
            or (isinstance(func, ast.Name) and func.id == "signal")
        ):
            continue
        first = value.args[0] if value.args else None
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            found.append((first.value, node))
        else:
            found += [(target.id, node) for target in targets if isinstance(target, ast.Name)]
    return found


def _first_line(node: ast.stmt) -> int:
    decorators: list[ast.expr] = getattr(node, "decorator_list", [])  # classes and functions have them
    return min([node.lineno, *(decorator.lineno for decorator in decorators)])


def _number(numbers: list[int], line: int | None) -> int | None:
    """The cell line of line `line` (1-based) of a text built from the cell lines `numbers`."""
    if line is None or not numbers:
        return None
    if line < 1:
        return numbers[0]
    if line > len(numbers):
        return numbers[-1]
    return numbers[line - 1]


def _syntax_message(exc: SyntaxError) -> str:
    message = f"SyntaxError: {exc.msg}"
    if exc.text and exc.text.strip():
        message += f"\n    {exc.text.strip()}"
    return message


def _literal(text: str) -> str:
    """A Python string literal, double-quoted when that needs no escapes (as ruff would write it)."""
    if '"' not in text and "\\" not in text and text.isprintable():
        return f'"{text}"'
    return repr(text)


def _option(options: list[str], name: str, value: str | None) -> None:
    if value is not None:
        options.append(f"{name}={_literal(str(value))}")


def _call(decorator: str, options: list[str], *, bare: bool) -> str:
    if not options and bare:
        return decorator
    return f"{decorator}({', '.join(options)})"


def _schedule_decorator(options: dict[str, str], workflow: str) -> str:
    """`@ev.schedule("0 9 * * MON-FRI", timezone="Europe/Paris")` for `%%workflow --schedule ...` flags, checked
    here as the kernel checks them (`define_schedule`), so a cron line the kernel refuses does not export."""
    from eventual_nb.runtime.core.schedules import define_schedule

    try:
        define_schedule(name=workflow, workflow=workflow, **options)
    except EventualError as exc:
        raise FlagError(f"%%workflow: {exc.message}") from None
    arguments = [_literal(options["cron"])] if "cron" in options else []
    for key in ("every", "timezone", "overlap", "catchup"):
        _option(arguments, key, options.get(key))
    return _call("@ev.schedule", arguments, bare=False)


def _retry(options: list[str], retries: int | None) -> None:
    attempts = max_attempts(retries)
    if attempts is not None:
        options.append(f"retry=ev.RetryPolicy(max_attempts={attempts})")


def _bound_names(tree: ast.Module) -> list[str]:
    """Top-level names a cell binds, imports included (what a later cell may rely on)."""
    names = _top_level_names(tree)
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                if alias.name != "*":
                    names.append(alias.asname or alias.name.split(".")[0])
    return names


def _top_level_names(tree: ast.Module) -> list[str]:
    """Names a module binds at its top level with def, class or assignment (not imports), in order."""
    names: list[str] = []

    def targets(target: ast.expr) -> None:
        if isinstance(target, ast.Name):
            names.append(target.id)
        elif isinstance(target, ast.Tuple | ast.List):
            for element in target.elts:
                targets(element)
        elif isinstance(target, ast.Starred):
            targets(target.value)

    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                targets(target)
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets(node.target)
    return [name for name in dict.fromkeys(names) if name != "__all__"]
