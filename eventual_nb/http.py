"""`ev.api`: the current service's FastAPI router, resolved at the moment it is used.

A proxy (not the router itself) because notebooks switch services between cells and module-level
code decorates routes before any service may have been created.
"""

from __future__ import annotations

from typing import Any

from eventual_nb.service import current_service


class ApiProxy:
    """Every attribute resolves to `ev.current_service().api` at access time."""

    def __getattr__(self, name: str) -> Any:
        return getattr(current_service().api, name)

    def __repr__(self) -> str:
        return f"<ev.api of service {current_service().name!r}>"


api: Any = ApiProxy()
