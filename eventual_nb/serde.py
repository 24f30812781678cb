"""JSON at every boundary, validated and rebuilt from type annotations with pydantic.

Arguments, results, signal payloads and events are stored as JSON (never pickled) so that history can
be read by other tools and replayed by other processes. Call inputs are hashed from canonical JSON so
that `debit("a", 10)` and `debit(account_id="a", amount=10)` are the same call.

NaN and Infinity are not JSON, so every boundary refuses them with `NotJsonable` (a 422), wherever they
sit in the value: `to_json` (pydantic alone would write a nested NaN as `null`, silently changing the
value, yet refuse a top-level one) and `canonical_json`. The exception is a pydantic model or dataclass
passed as itself: its own config says how its float fields serialize (pydantic's default: `null`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import typing
from collections.abc import Callable
from typing import Any

from pydantic import ConfigDict, PydanticUserError, TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError

from eventual_nb.errors import EventualError, InputValidationError

_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}
#: serialization keeps NaN and Infinity as floats, so that the strict encoding refuses them (see above)
_KEEP_NON_FINITE = ConfigDict(ser_json_inf_nan="constants")
#: encoders built once: `json.dumps` with options builds a new one per call (a hot path)
_STRICT_ENCODER = json.JSONEncoder(allow_nan=False)
_CANONICAL_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_COMPACT_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class NotJsonable(EventualError, TypeError):
    """A value that must cross a boundary cannot be turned into JSON."""

    status_code = 422


def adapter(annotation: Any) -> TypeAdapter[Any]:
    try:
        cached = _ADAPTERS.get(annotation)
    except TypeError:  # unhashable annotation
        return _new_adapter(annotation)
    if cached is None:
        cached = _new_adapter(annotation)
        _ADAPTERS[annotation] = cached
    return cached


def _new_adapter(annotation: Any) -> TypeAdapter[Any]:
    try:
        return TypeAdapter(annotation, config=_KEEP_NON_FINITE)
    except PydanticUserError:  # a model, dataclass or TypedDict: pydantic takes its own config only
        return TypeAdapter(annotation)


#: values that are their own JSON form; a hot path (every activity argument and result) skips pydantic
_PLAIN_SCALARS = (str, int, bool, type(None))


def _is_own_json(value: Any, annotation: Any) -> bool:
    """Whether `value` is a plain scalar under `Any` or its own exact type: then it is its own JSON form and
    what pydantic would return for it, both ways (an `int` for an `int`; a `bool` for an `int` is not)."""
    return type(value) in _PLAIN_SCALARS and (annotation is Any or annotation is type(value))


def to_json(value: Any, annotation: Any = Any, *, what: str = "value") -> Any:
    """Dump `value` to JSON-able builtins; `what` names it in the error ("result of activity 'x'")."""
    if _is_own_json(value, annotation):
        return value
    try:
        dumped = adapter(annotation if annotation is not inspect.Parameter.empty else Any).dump_python(
            value, mode="json"
        )
    except (PydanticSerializationError, ValueError, TypeError) as exc:
        if annotation is not Any:
            try:
                dumped = adapter(Any).dump_python(value, mode="json")
            except (PydanticSerializationError, ValueError, TypeError):
                raise NotJsonable(f"{what} is not JSON-serialisable ({type(value).__name__}): {exc}") from None
        else:
            raise NotJsonable(f"{what} is not JSON-serialisable ({type(value).__name__}): {exc}") from None
    try:
        _STRICT_ENCODER.encode(dumped)
    except (TypeError, ValueError) as exc:
        raise NotJsonable(f"{what} is not JSON-serialisable ({type(value).__name__}): {exc}") from None
    return dumped


def from_json(data: Any, annotation: Any = Any, *, what: str = "value") -> Any:
    """Rebuild a typed value from JSON, raising `InputValidationError` with pydantic's details."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return data
    if _is_own_json(data, annotation):
        return data
    try:
        return adapter(annotation).validate_python(data)
    except ValidationError as exc:
        raise InputValidationError(f"invalid {what}: {exc}", errors=plain_errors(exc)) from None


def validate(value: Any, annotation: Any, *, what: str) -> Any:
    """Validate a Python value against its annotation and return its JSON form."""
    if _is_own_json(value, annotation):
        return value
    if annotation is Any or annotation is inspect.Parameter.empty:
        return to_json(value, Any, what=what)
    try:
        checked = adapter(annotation).validate_python(value)
    except ValidationError as exc:
        raise InputValidationError(f"invalid {what}: {exc}", errors=plain_errors(exc)) from None
    return to_json(checked, annotation, what=what)


def plain_errors(exc: ValidationError) -> list[dict[str, Any]]:
    plain = []
    for item in exc.errors(include_url=False, include_context=False):
        plain.append({"loc": list(item.get("loc", ())), "msg": item.get("msg"), "type": item.get("type")})
    return plain


def canonical_json(value: Any) -> str:
    """The one JSON text of a value: sorted keys, no spaces, UTF-8 kept, so equal values give equal text
    (input hashes, de-duplication ids).

    NaN and Infinity are refused with `NotJsonable`, as `to_json` refuses them: they have no JSON form
    (Python's `NaN` token is not JSON, and other readers reject it)."""
    return _encode(_CANONICAL_ENCODER, value)


def compact_json(value: Any) -> str:
    """JSON text to store: no spaces, UTF-8 kept, keys in the value's own order (a workflow reads its
    input back as it was given); NaN and Infinity refused as by `canonical_json`."""
    return _encode(_COMPACT_ENCODER, value)


def _encode(encoder: json.JSONEncoder, value: Any) -> str:
    try:
        return encoder.encode(value)
    except (ValueError, TypeError) as exc:  # NaN/Infinity ("out of range float"), a cycle, a non-JSON type
        raise NotJsonable(f"{value!r:.80} is not JSON: {exc}") from None


def input_hash(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def type_hints(function: Callable[..., Any]) -> dict[str, Any]:
    """Resolved annotations; names that cannot be resolved (local classes) fall back to `Any`."""
    try:
        return typing.get_type_hints(function, include_extras=True)
    except Exception:  # noqa: BLE001 - unresolvable annotations are common in notebooks
        hints: dict[str, Any] = {}
        for name, annotation in getattr(function, "__annotations__", {}).items():
            hints[name] = Any if isinstance(annotation, str) else annotation
        return hints


class CallShape:
    """How a function's arguments become a JSON dict keyed by parameter name, and back."""

    def __init__(self, function: Callable[..., Any], what: str) -> None:
        self.what = what
        self.signature = inspect.signature(function)
        hints = type_hints(function)
        self.annotations = {name: hints.get(name, Any) for name in self.signature.parameters}
        self.return_annotation = hints.get("return", Any)
        parameters = list(self.signature.parameters.values())
        #: how each argument is named in an error, built once (every call binds and unbinds them)
        self._what = {name: f"argument '{name}' of {what}" for name in self.signature.parameters}
        #: names of the parameters when every one is plain positional-or-keyword (the usual case), so a
        #: call made only with positional arguments binds without `inspect` (a hot path: every call)
        self._positional_names: tuple[str, ...] | None = None
        if all(parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for parameter in parameters):
            self._positional_names = tuple(parameter.name for parameter in parameters)

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        names = self._positional_names
        if names is not None and not kwargs and len(args) == len(names):
            return {
                name: self._dump(value, self.annotations[name], name) for name, value in zip(names, args, strict=True)
            }
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InputValidationError(f"invalid arguments for {self.what}: {exc}") from None
        bound.apply_defaults()
        result: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            parameter = self.signature.parameters[name]
            annotation = self.annotations[name]
            if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
                result[name] = [self._dump(item, annotation, name) for item in value]
            elif parameter.kind is inspect.Parameter.VAR_KEYWORD:
                result[name] = {key: self._dump(item, annotation, name) for key, item in value.items()}
            else:
                result[name] = self._dump(value, annotation, name)
        return result

    def _dump(self, value: Any, annotation: Any, name: str) -> Any:
        return validate(value, annotation, what=self._what[name])

    def unbind(self, data: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for name, parameter in self.signature.parameters.items():
            if name not in data:
                continue
            annotation = self.annotations[name]
            what = self._what[name]
            value = data[name]
            if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
                args.extend(from_json(item, annotation, what=what) for item in value)
            elif parameter.kind is inspect.Parameter.VAR_KEYWORD:
                kwargs.update({key: from_json(item, annotation, what=what) for key, item in value.items()})
            elif parameter.kind is inspect.Parameter.KEYWORD_ONLY:
                kwargs[name] = from_json(value, annotation, what=what)
            else:
                args.append(from_json(value, annotation, what=what))
        return args, kwargs
