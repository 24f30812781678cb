"""LocalRuntime: the embedded SQLite runtime. The HTTP app that serves it (and any other runtime) is
`eventual_nb.server`."""

from eventual_nb.runtime.local.runtime import LocalRuntime
from eventual_nb.runtime.local.store import DatabaseLocked

__all__ = ["DatabaseLocked", "LocalRuntime"]
