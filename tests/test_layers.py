"""The layering rule import-linter cannot state: `eventual_nb` imports `kernel_ext` and `exporter` only
inside functions (`load_ipython_extension`, the CLI verbs and the CLI's TARGET loader), never when a
module of `eventual_nb` is imported.

import-linter (`lint-imports`, contracts in pyproject.toml) sees function-local imports as imports like
any other, so its contract names the modules allowed to reach the notebook extension and the exporter
in `ignore_imports`; this test holds those imports to being lazy, so `import eventual_nb` (and a Lambda
cold start) never loads Jupyter or the exporter.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UPPER_LAYERS = ("kernel_ext", "exporter")


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imported(node: ast.Import | ast.ImportFrom) -> list[str]:
    """The modules an import statement imports, as import-linter counts them (`from pkg import mod` is an
    import of `pkg.mod` when `mod` is a module of this repository)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level or not node.module:
        return []
    names = [f"{node.module}.{alias.name}" for alias in node.names]
    found = [name for name in names if _is_module(name)]
    return list(dict.fromkeys(found if len(found) == len(names) else [node.module, *found]))


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_level_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, module) of every import that runs when the module is imported: at the top level, in a
    class body, under `if`/`try`/`with` — anywhere but inside a function or an `if TYPE_CHECKING:` block."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.extend((node.lineno, name) for name in _imported(node))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def deferred_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, module) of the imports `module_level_imports` leaves out: inside functions, under TYPE_CHECKING."""
    every = [
        (node.lineno, name)
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for name in _imported(node)
    ]
    eager = set(module_level_imports(tree))
    return [item for item in every if item not in eager]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sdk_modules() -> dict[str, ast.Module]:
    return {
        _module_name(path): ast.parse(path.read_text(encoding="utf-8"), str(path))
        for path in sorted((ROOT / "eventual_nb").rglob("*.py"))
    }


def _is_upper(name: str) -> bool:
    return any(name == layer or name.startswith(f"{layer}.") for layer in UPPER_LAYERS)


def test_eventual_nb_imports_kernel_ext_and_exporter_only_inside_functions() -> None:
    eager = [
        f"{module} line {line}: import {name}"
        for module, tree in _sdk_modules().items()
        for line, name in module_level_imports(tree)
        if _is_upper(name)
    ]
    assert eager == [], "eventual_nb must import kernel_ext/exporter lazily (inside the function that needs it)"


def test_the_contracts_name_exactly_the_lazy_imports_there_are() -> None:
    """Every function-local import of kernel_ext/exporter in eventual_nb is one the import-linter contract
    names (so a new one is a decision written down), and every one it names exists."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = config["tool"]["importlinter"]["contracts"]
    (contract,) = [c for c in contracts if c["source_modules"] == ["eventual_nb"]]
    assert sorted(contract["forbidden_modules"]) == sorted(UPPER_LAYERS)
    named = {tuple(part.strip() for part in entry.split("->")) for entry in contract["ignore_imports"]}
    lazy = {
        (module, name)
        for module, tree in _sdk_modules().items()
        for _, name in deferred_imports(tree)
        if _is_upper(name)
    }
    assert lazy == named


def test_the_checker_sees_what_it_must() -> None:
    """The checker itself: eager imports anywhere a module runs, lazy ones only inside functions."""
    tree = ast.parse(
        "import kernel_ext\n"
        "try:\n    from exporter import deploy\nexcept ImportError:\n    pass\n"
        "class A:\n    import exporter.bundle\n"
        "if TYPE_CHECKING:\n    from kernel_ext.host import RuntimeHost\n"
        "def f():\n    from exporter import export_package\n"
        "async def g():\n    import kernel_ext.magics\n"
    )
    assert [name for _, name in module_level_imports(tree)] == ["kernel_ext", "exporter.deploy", "exporter.bundle"]
    assert sorted(name for _, name in deferred_imports(tree)) == [
        "exporter",
        "kernel_ext.host",
        "kernel_ext.magics",
    ]
