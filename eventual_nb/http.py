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


def declared_responses(codes: list[int]) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` for the error statuses a route declares (`%%api ... --responses 404 409`).

    A handler that raises `ev.HttpError(404, ...)` answers a status its OpenAPI would not list; declaring it
    puts it in the schema (with the standard reason phrase) so clients and fuzzers such as schemathesis know
    the route gives it. The magic and the exporter both build the option here, so a notebook and its export
    describe the same API."""
    from http import HTTPStatus

    from eventual_nb.errors import EventualError

    declared: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            raise EventualError(f"--responses: {code} is not an HTTP status code") from None
        if code < 400:
            raise EventualError(f"--responses: {code} is not an error status (declare 4xx and 5xx answers only)")
        declared[code] = {"description": phrase}
    return declared
