"""The small service `benchmarks.scale` serves with `eventual-nb serve` for its HTTP burst (`scale_http`).

A module of its own so the server loads this one service and nothing else of the benchmarks.
"""

from __future__ import annotations

import eventual_nb as ev

SERVICE = ev.Service("eventual-nb-benchmarks-burst")


@ev.workflow
async def burst_order(i: int) -> int:
    """Returns its input at once: the burst measures starting executions, not running them."""
    return i
