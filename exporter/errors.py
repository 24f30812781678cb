"""`ExportError`: what stops a notebook from becoming a package, said in the notebook's own terms.

A user fixes an export problem in the notebook, not in the generated file, so every error that comes
from a cell names that cell the way a notebook user can find it: its index (0-based, in file order,
markdown cells included), its id (stable across edits, shown by JupyterLab's cell metadata and in the
generated file's `# %% NOTEBOOK #<id>` markers) and the line inside the cell (the `%%magic` line is
line 1, as the kernel counts it).
"""

from __future__ import annotations

from typing import ClassVar

from eventual_nb.errors import EventualError

__all__ = ["ExportError", "where"]


def where(notebook: str, cell_index: int | None, cell_id: str | None, line: int | None) -> str:
    """The location prefix of a message: `nb.ipynb, cell index 3 (id 'a1b2'), line 2`."""
    parts = [notebook]
    if cell_index is not None:
        cell = f"cell index {cell_index}"
        if cell_id is not None:
            cell += f" (id '{cell_id}')"
        parts.append(cell)
    if line is not None:
        parts.append(f"line {line}")
    return ", ".join(parts)


class ExportError(EventualError):
    """A notebook that cannot be exported, or an output directory the exporter must not overwrite.

    `cell_index`, `cell_id` and `line` locate the problem when it comes from a cell (None otherwise);
    the message already names them, so printing the message is enough.
    """

    fields: ClassVar[tuple[str, ...]] = ("cell_index", "cell_id", "line")

    def __init__(
        self,
        message: str,
        *,
        cell_index: int | None = None,
        cell_id: str | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(message)
        self.cell_index = cell_index
        self.cell_id = cell_id
        self.line = line
