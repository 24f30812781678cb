"""Notebook → deployable service package.

`export_notebook(notebook, out_dir, zip=False, force=False)` writes the package directory:
`pyproject.toml`, `eventual.json`, `openapi.json`, `template.json`, `handlers.py`, the service's
package and, with `zip=True`, `lambda.zip`. `eventual-nb export` and `%eventual export` call it.

Importing this package stays cheap: nbformat, IPython and the kernel's magics load only when a
notebook is read.
"""

from __future__ import annotations

from exporter.errors import ExportError
from exporter.package import ExportResult, export_notebook, export_package

__all__ = ["ExportError", "ExportResult", "export_notebook", "export_package"]
