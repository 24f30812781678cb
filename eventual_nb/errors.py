"""One exception root, `EventualError`, with errors that carry the facts a user needs.

Every error has an HTTP status (used by the server and restored by the client) and round-trips through
JSON as `{"error": <type name>, "message": ..., **fields}` so that a `ServiceClient` raises the same
class a runtime raised. Only eventual-nb's own classes are rebuilt that way: a user's subclass of the
same name (a `Timeout` of their own) neither replaces ours nor gets rebuilt, and comes back as a plain
`EventualError` naming it.
"""

from __future__ import annotations

from typing import Any, ClassVar

_REGISTRY: dict[str, type[EventualError]] = {}


class EventualError(Exception):
    """Root of every error raised by eventual-nb."""

    status_code: ClassVar[int] = 400
    #: extra attributes that travel with the error over HTTP
    fields: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__module__ != "eventual_nb" and not cls.__module__.startswith("eventual_nb."):
            return
        known = _REGISTRY.get(cls.__name__)
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise TypeError(f"eventual-nb defines two errors named {cls.__name__}: JSON could not tell them apart")
        _REGISTRY[cls.__name__] = cls  # (a reloaded module replaces its own class)

    def __init__(self, message: str = "") -> None:
        super().__init__(message)

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": type(self).__name__, "message": self.message}
        for name in self.fields:
            body[_json_key(name)] = getattr(self, name, None)
        return body


def _json_key(field: str) -> str:
    """A field named like the body's own keys (`error` on ActivityFailed/ExecutionFailed) travels as `error_type`,
    so it cannot overwrite the class name that `error_from_json` rebuilds from."""
    return "error_type" if field == "error" else field


_REGISTRY["EventualError"] = EventualError


def error_from_json(body: dict[str, Any]) -> EventualError:
    """Rebuild the error a server reported; unknown names become a plain `EventualError`."""
    name = str(body.get("error", "EventualError"))
    message = str(body.get("message", ""))
    cls = _REGISTRY.get(name)
    if cls is None:
        return EventualError(f"{name}: {message}")
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    for field in cls.fields:
        setattr(error, field, body.get(_json_key(field)))
    return error


class InputValidationError(EventualError, ValueError):
    """Input that does not match the declared types; `errors` holds pydantic's details."""

    status_code = 422
    fields = ("errors",)

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class InvalidPageToken(InputValidationError):
    """A `next_token` that no listing issued: malformed, out of range, or made by another listing (HTTP 400)."""

    status_code = 400


class ActivityFailed(EventualError):
    """An activity failed for good; `error` is the original exception's type name."""

    fields = ("error", "activity", "seq", "attempts")

    def __init__(
        self,
        error: str,
        message: str = "",
        *,
        activity: str | None = None,
        seq: int | None = None,
        attempts: int | None = None,
    ) -> None:
        super().__init__(message)
        self.error = error
        self.activity = activity
        self.seq = seq
        self.attempts = attempts

    def __str__(self) -> str:
        where = f"activity '{self.activity}'" if self.activity else "activity"
        tries = f" after {self.attempts} attempt(s)" if self.attempts and self.attempts > 1 else ""
        return f"{where} failed{tries}: {self.error}: {self.message}"


class Timeout(EventualError, TimeoutError):
    """Something durable did not finish in time (an activity attempt, an `expect`, a wait)."""

    status_code = 408


class HeartbeatTimeout(Timeout):
    """An activity stopped sending heartbeats within its `heartbeat_timeout`."""


class DeterminismError(EventualError):
    """Workflow code no longer matches the history it recorded."""

    status_code = 409
    fields = ("execution_id", "seq")

    def __init__(self, message: str, *, execution_id: str | None = None, seq: int | None = None) -> None:
        super().__init__(message)
        self.execution_id = execution_id
        self.seq = seq


class ExecutionAlreadyExists(EventualError):
    """A start reused an execution name with a different input."""

    status_code = 409
    fields = ("execution_id",)

    def __init__(self, message: str, *, execution_id: str | None = None) -> None:
        super().__init__(message)
        self.execution_id = execution_id


class ExecutionNotFound(EventualError, LookupError):
    """No execution has this id."""

    status_code = 404
    fields = ("execution_id",)

    def __init__(self, message: str, *, execution_id: str | None = None) -> None:
        super().__init__(message)
        self.execution_id = execution_id


class WorkflowNotFound(EventualError, LookupError):
    """No workflow of this name is served."""

    status_code = 404
    fields = ("workflow",)

    def __init__(self, message: str, *, workflow: str | None = None) -> None:
        super().__init__(message)
        self.workflow = workflow


class ScheduleNotFound(EventualError, LookupError):
    """No schedule of this name is served (`pause_schedule`, `resume_schedule`, `trigger_schedule`)."""

    status_code = 404
    fields = ("schedule",)

    def __init__(self, message: str, *, schedule: str | None = None) -> None:
        super().__init__(message)
        self.schedule = schedule


class ExecutionFailed(EventualError):
    """An execution ended FAILED; `error` and `message` are what escaped the workflow."""

    status_code = 409
    fields = ("error", "execution_id")

    def __init__(self, error: str, message: str = "", *, execution_id: str | None = None) -> None:
        super().__init__(message)
        self.error = error
        self.execution_id = execution_id

    def __str__(self) -> str:
        where = f"execution '{self.execution_id}'" if self.execution_id else "execution"
        return f"{where} failed: {self.error}: {self.message}"


class WorkflowTimeout(ExecutionFailed, Timeout):
    """An execution ran past its workflow timeout and was ended FAILED."""

    def __init__(self, message: str = "", *, execution_id: str | None = None, error: str = "") -> None:
        super().__init__("WorkflowTimeout", message, execution_id=execution_id)


class ExecutionCancelled(EventualError):
    """An execution ended CANCELLED."""

    status_code = 409
    fields = ("execution_id",)

    def __init__(self, message: str = "", *, execution_id: str | None = None) -> None:
        super().__init__(message)
        self.execution_id = execution_id


class HttpError(EventualError):
    """Raise in an API handler to answer with this status and a JSON error body."""

    fields = ("status",)

    def __init__(self, status: int, message: str = "", *, data: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.data = data

    @property
    def status_code(self) -> int:  # type: ignore[override]
        return int(self.status)


class VersionConflict(EventualError):
    """An entity's `put` or `delete` named a version the stored entry does not have (optimistic concurrency).

    `expected_version` is what the call named (0: "must not exist yet"), `actual_version` what is stored
    (0: nothing is). Read the entry again and retry, or give up: the write did not happen."""

    status_code = 409
    fields = ("entity", "key", "expected_version", "actual_version")

    def __init__(
        self,
        message: str = "",
        *,
        entity: str | None = None,
        key: Any = None,
        expected_version: int | None = None,
        actual_version: int | None = None,
    ) -> None:
        super().__init__(message)
        self.entity = entity
        self.key = key
        self.expected_version = expected_version
        self.actual_version = actual_version

    @property
    def expected(self) -> int | None:
        """The version the call expected (the same as `expected_version`)."""
        return self.expected_version

    @property
    def actual(self) -> int | None:
        """The version stored when the call was refused (the same as `actual_version`)."""
        return self.actual_version


class TransactionConflict(EventualError):
    """`ev.transact` applied none of its operations because at least one condition did not hold.

    `reasons` has one entry per operation, in order: None for those that held, else a short text such as
    "version 3, expected 4" (version 0: the entry does not exist)."""

    status_code = 409
    fields = ("reasons",)

    def __init__(self, message: str = "", *, reasons: list[str | None] | None = None) -> None:
        super().__init__(message)
        self.reasons = list(reasons or [])


class InvalidEntityValue(InputValidationError):
    """An entity value its model refuses (on `put`, or a stored one on read after the model changed), one over
    the size limit, or a key of the wrong shape; `errors` holds pydantic's details where there are any."""


class EntityNotFound(EventualError, LookupError):
    """No entity of this name is served, or no entry has this key (the inspection routes' 404)."""

    status_code = 404
    fields = ("entity", "key")

    def __init__(self, message: str, *, entity: str | None = None, key: Any = None) -> None:
        super().__init__(message)
        self.entity = entity
        self.key = key


class NotInWorkflow(EventualError, RuntimeError):
    """A workflow-only function was called outside a workflow (or an activity-only one outside)."""


class NoRuntime(EventualError, RuntimeError):
    """Something needed a runtime and none was set."""


class PayloadTooLarge(EventualError, ValueError):
    """A payload (a workflow's input, a signal's payload, an event, an activity's result) larger than the AWS
    service that carries it accepts (the README's "Service limits"); refused on the call that sent it, before
    anything was recorded. The LocalRuntime and the TestEnvironment accept it and warn in the execution's logs."""

    status_code = 413


def error_type_name(error: BaseException) -> str:
    """The name reported for an exception escaping user code (activities keep the original)."""
    if isinstance(error, ActivityFailed):
        return error.error
    if isinstance(error, ExecutionFailed) and not isinstance(error, WorkflowTimeout):
        return error.error
    return type(error).__name__


def error_message(error: BaseException) -> str:
    if isinstance(error, (ActivityFailed, ExecutionFailed)):
        return error.message
    return str(error)
