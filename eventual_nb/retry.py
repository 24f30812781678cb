"""`RetryPolicy`: how often an activity or a subscription delivery is tried, and how long to wait.

Retries are opt-in (one attempt by default, as in Eventual), exponential, without jitter, so that
waits are the same in virtual time and in tests.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

from eventual_nb.durations import DurationLike, parse_duration


class RetryPolicy(BaseModel):
    """`RetryPolicy(max_attempts=3, initial_interval="1s", backoff=2.0, max_interval="5m")`."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True, defer_build=True)

    max_attempts: int = Field(default=1, ge=1)
    initial_interval: timedelta = timedelta(seconds=1)
    backoff: float = Field(default=2.0, ge=1.0, allow_inf_nan=False)
    max_interval: timedelta = timedelta(minutes=5)
    non_retryable: tuple[str, ...] = ()

    def __init__(
        self,
        max_attempts: int = 1,
        initial_interval: DurationLike = 1,
        backoff: float = 2.0,
        max_interval: DurationLike = 300,
        non_retryable: Any = (),
        **extra: Any,
    ) -> None:
        super().__init__(
            max_attempts=max_attempts,
            initial_interval=parse_duration(initial_interval, what="initial_interval"),
            backoff=backoff,
            max_interval=parse_duration(max_interval, what="max_interval"),
            non_retryable=non_retryable,
            **extra,
        )

    @field_validator("non_retryable", mode="before")
    @classmethod
    def _names(cls, value: Any) -> tuple[str, ...]:
        if isinstance(value, (str, type)):
            value = (value,)
        names = []
        for item in value or ():
            if isinstance(item, type) and issubclass(item, BaseException):
                names.append(item.__name__)
            elif isinstance(item, str):
                names.append(item)
            else:
                raise ValueError(f"non_retryable entries must be exception classes or names, got {item!r}")
        return tuple(names)

    @field_serializer("initial_interval", "max_interval")
    def _seconds(self, value: timedelta) -> float:
        return value.total_seconds()

    def delay_after(self, attempt: int) -> timedelta:
        """Wait before attempt `attempt + 1`: min(initial * backoff**(attempt-1), max).

        Computed in floats and capped before it becomes a `timedelta`: the uncapped value of a late attempt
        (backoff 10, attempt 400) is too large for one."""
        try:
            seconds = self.initial_interval.total_seconds() * self.backoff ** (attempt - 1)
        except OverflowError:
            return self.max_interval
        return min(timedelta(seconds=min(seconds, self.max_interval.total_seconds())), self.max_interval)

    def retries(self, attempt: int, error_types: tuple[str, ...]) -> bool:
        """Whether a failed `attempt` (whose error and its base classes are `error_types`) is retried."""
        if attempt >= self.max_attempts:
            return False
        return not any(name in self.non_retryable for name in error_types)


def exception_type_names(error: BaseException) -> tuple[str, ...]:
    """The exception's class name and those of its bases, for `non_retryable` matching."""
    return tuple(cls.__name__ for cls in type(error).__mro__ if cls not in (object, BaseException))
