"""The notebook side of eventual-nb: magics, the in-kernel runtime, live widgets.

Loaded with `%load_ext eventual_nb` (which delegates here) or by the "Eventual (Python 3)" kernel.
"""

from __future__ import annotations

import logging
from typing import Any

from kernel_ext.host import RuntimeHost
from kernel_ext.kernelspec import DISPLAY_NAME, KERNEL_NAME, install_kernelspec

__all__ = [
    "DISPLAY_NAME",
    "KERNEL_NAME",
    "RuntimeHost",
    "install_kernelspec",
    "load_ipython_extension",
    "unload_ipython_extension",
]

_loaded: dict[int, Any] = {}


def load_ipython_extension(ipython: Any) -> None:
    """Register the magics, show `ExecutionHandle`s as live widgets, start the default runtime."""
    if id(ipython) in _loaded:
        return
    import eventual_nb as ev
    from eventual_nb.runtime.base import ExecutionHandle
    from kernel_ext.magics import EventualMagics
    from kernel_ext.widgets import WidgetPump

    host = RuntimeHost()
    pump = WidgetPump()
    host.on_commit = pump.poke
    magics = EventualMagics(ipython, host, pump)
    logger = logging.getLogger("eventual_nb")
    logger.addHandler(magics.recent_errors)
    logger.propagate = False  # runtime threads never write into whichever cell ran last
    ipython.register_magics(magics)
    ipython.display_formatter.ipython_display_formatter.for_type(ExecutionHandle, magics.show_handle)
    ipython.push({"ev": ev}, interactive=False)
    _loaded[id(ipython)] = magics
    host.ensure_runtime()


def unload_ipython_extension(ipython: Any) -> None:
    """Stop the runtime, the server and the widget thread; remove the magics."""
    from eventual_nb.runtime.base import ExecutionHandle

    magics = _loaded.pop(id(ipython), None)
    if magics is None:
        return
    magics.pump.stop()
    magics.host.close()
    logger = logging.getLogger("eventual_nb")
    logger.removeHandler(magics.recent_errors)
    logger.propagate = True
    ipython.display_formatter.ipython_display_formatter.pop(ExecutionHandle, None)
    for kind, names in (
        ("cell", ("workflow", "activity", "api", "event", "subscription", "signal")),
        ("line", ("eventual",)),
    ):
        for name in names:
            ipython.magics_manager.magics[kind].pop(name, None)
