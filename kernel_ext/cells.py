"""Running a magic cell's body so that errors point at the notebook cell and line.

The body goes through the shell's caching compiler with one leading newline (the `%%magic` line is
line 1 of the cell), labelled with the current execution count, so a traceback reads
`Cell In[5], line 4` and functions defined in the body keep correct tracebacks later (the compiler
caches the source under the cell's name). Frames of the extension set `__tracebackhide__`.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Definitions:
    """What a cell body defines at its top level, in order."""

    functions: list[str] = field(default_factory=list)
    async_functions: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    assigned: list[str] = field(default_factory=list)

    @property
    def all_functions(self) -> list[str]:
        return [name for name in self.order if name in self.functions or name in self.async_functions]

    order: list[str] = field(default_factory=list)


def top_level_definitions(source: str) -> Definitions | None:
    """Names a body defines at its top level (parsed, not executed); None if it does not parse (running
    it then reports the SyntaxError at the right notebook line)."""
    found = Definitions()
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    for node in tree.body:
        if isinstance(node, ast.AsyncFunctionDef):
            found.async_functions.append(node.name)
            found.order.append(node.name)
        elif isinstance(node, ast.FunctionDef):
            found.functions.append(node.name)
            found.order.append(node.name)
        elif isinstance(node, ast.ClassDef):
            found.classes.append(node.name)
            found.order.append(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    found.assigned.append(target.id)
                    found.order.append(target.id)
    return found


def run_body(shell: Any, body: str) -> None:
    """Execute `body` in the notebook's namespace through the shell's caching compiler."""
    __tracebackhide__ = True
    transformed = shell.transform_cell(body)
    source = "\n" + transformed
    number = max(0, int(getattr(shell, "execution_count", 1)) - 1)
    compiler = shell.compile
    filename = compiler.cache(source, number, raw_code="\n" + body)
    tree = compiler.ast_parse(source, filename=filename)
    tree = shell.transform_ast(tree)
    code = compiler(tree, filename, "exec")
    exec(code, shell.user_ns)
