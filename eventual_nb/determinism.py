"""Warnings, at decoration, about workflow code that reads the clock or randomness directly.

Such a call returns a live value: the execution records whatever it led to, and a replay after a
restart, an eviction or a redefinition gets another value and may take another path (a
`DeterminismError` then, or a silently different result). The engine cannot intercept these calls
(they are plain functions, not the event loop), so `@ev.workflow` reads the function's source with
`ast` and warns (`UserWarning`, pointing at the file and line, which a notebook shows under the cell)
about each call that resolves to one of them, naming the deterministic replacement.

Names are resolved the way the code will see them: imports inside the function, then the function's
globals (so `from datetime import datetime as dt; dt.now()` and `from random import choice` are
found, and a user's own `now()` is not). Without source (a function built by `exec`, a C extension)
there is nothing to read and nothing is said.
"""

from __future__ import annotations

import ast
import inspect
import os
import random
import textwrap
import time
import types
import uuid
import warnings
from collections.abc import Callable
from typing import Any

#: qualified name of each nondeterministic callable → what to call instead inside a workflow
REPLACEMENTS: dict[str, str] = {
    "datetime.datetime.now": "ev.now()",
    "datetime.datetime.utcnow": "ev.now()",
    "datetime.datetime.today": "ev.now()",
    "datetime.date.today": "ev.now().date()",
    "time.time": "ev.now().timestamp()",
    "time.time_ns": "ev.now().timestamp()",
    "uuid.uuid1": "ev.uuid4()",
    "uuid.uuid4": "ev.uuid4()",
    "os.urandom": "ev.random() or ev.uuid4()",
    **{
        f"random.{name}": "ev.random()"
        for name in random.__all__
        if callable(getattr(random, name)) and not isinstance(getattr(random, name), type)
    },
}

#: the callables themselves, to recognise them when imported by name (`from time import time`)
_OBJECTS: list[tuple[Any, str]] = [
    (getattr(module, attribute), f"{name}.{attribute}")
    for name, module in (("time", time), ("uuid", uuid), ("os", os), ("random", random))
    for attribute in dir(module)
    if f"{name}.{attribute}" in REPLACEMENTS
]


def nondeterministic_calls(function: Callable[..., Any]) -> list[tuple[str, int, str, str]]:
    """(file, line, call as written, replacement) for each such call in `function`'s source."""
    try:
        lines, first_line = inspect.getsourcelines(function)
        filename = inspect.getsourcefile(function) or function.__code__.co_filename
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except (OSError, TypeError, SyntaxError, AttributeError):
        return []
    imported = _imports_in(tree)
    namespace: dict[str, Any] = getattr(function, "__globals__", {})
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        dotted = _dotted(node.func)
        if dotted is None:
            continue
        qualified = _qualify(dotted, imported, namespace)
        if qualified in REPLACEMENTS:
            line = first_line + node.lineno - 1
            written = ".".join(dotted)
            plain = "." in written and f".{qualified}".endswith(f".{written}")  # not an alias: no need to explain
            call = f"{written}()" if plain else f"{written}() ({qualified})"
            found.append((filename, line, call, REPLACEMENTS[qualified]))
    return sorted(found, key=lambda item: item[1])


def warn_nondeterministic_calls(function: Callable[..., Any], workflow: str) -> None:
    """Warn (`UserWarning`, at the call's file and line) about each call `nondeterministic_calls` finds."""
    for filename, line, call, replacement in nondeterministic_calls(function):
        warnings.warn_explicit(
            f"workflow '{workflow}' calls {call} at {filename}:{line}: a live value, which a replay of the "
            f"execution would not see again (it may then take another path); use {replacement} instead",
            UserWarning,
            filename,
            line,
            module_globals=getattr(function, "__globals__", None),
        )


def _dotted(node: ast.expr) -> list[str] | None:
    """`a.b.c` as ["a", "b", "c"]; None for anything that is not a plain name with attributes."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


def _imports_in(tree: ast.AST) -> dict[str, str]:
    """Names bound by imports inside the function → the qualified names they stand for."""
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    bound[alias.asname] = alias.name
                else:
                    root = alias.name.split(".")[0]
                    bound[root] = root
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return bound


def _qualify(dotted: list[str], imported: dict[str, str], namespace: dict[str, Any]) -> str | None:
    root, rest = dotted[0], dotted[1:]
    if root in imported:
        base: str | None = imported[root]
    elif root in namespace:
        base = _name_of(namespace[root])
    else:
        return None
    if base is None:
        return None
    return ".".join([base, *rest])


def _name_of(value: Any) -> str | None:
    """The qualified name a global stands for, when it is a module, a class or one of the callables."""
    if isinstance(value, types.ModuleType):
        return value.__name__
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    for known, name in _OBJECTS:
        if value is known:
            return name
    return None
