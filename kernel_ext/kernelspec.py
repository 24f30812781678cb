"""The "Eventual (Python 3)" kernelspec (name `eventual`): ipykernel with the extension loaded at start.

Nothing here installs or overwrites a kernelspec named `python3`.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

KERNEL_NAME = "eventual"
DISPLAY_NAME = "Eventual (Python 3)"


def kernel_json(python: str | None = None) -> dict[str, object]:
    """`--ext eventual_nb` loads the extension in the kernel (IPython's `extra_extensions`)."""
    return {
        "argv": [
            python or sys.executable,
            "-m",
            "ipykernel_launcher",
            "-f",
            "{connection_file}",
            "--ext",
            "eventual_nb",
        ],
        "display_name": DISPLAY_NAME,
        "language": "python",
        "metadata": {"debugger": True},
    }


def install_kernelspec(*, user: bool = False, prefix: str | Path | None = None, python: str | None = None) -> Path:
    """Install the kernelspec (system-wide, `user=True` for the user's, or under `prefix`); return its dir."""
    from jupyter_client.kernelspec import KernelSpecManager

    with tempfile.TemporaryDirectory() as staging:
        source = Path(staging) / KERNEL_NAME
        source.mkdir()
        (source / "kernel.json").write_text(json.dumps(kernel_json(python), indent=2) + "\n", encoding="utf-8")
        installed = KernelSpecManager().install_kernel_spec(
            str(source), kernel_name=KERNEL_NAME, user=user, prefix=None if prefix is None else str(prefix)
        )
    return Path(installed)
