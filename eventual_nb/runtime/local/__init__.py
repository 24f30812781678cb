"""LocalRuntime: the embedded SQLite runtime, and the HTTP server that `eventual-nb serve` runs.

`server` imports FastAPI; it is not imported here so that the SDK stays light.
"""

from eventual_nb.runtime.local.runtime import LocalRuntime
from eventual_nb.runtime.local.store import DatabaseLocked

__all__ = ["DatabaseLocked", "LocalRuntime"]
