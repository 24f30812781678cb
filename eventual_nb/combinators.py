"""Eventual's Promise combinators for Python awaitables: `all`, `all_settled`, `any`, `race`.

They take awaitables as positional arguments (plain values pass through), decide by argument order
when several inputs have already settled, and cancel the inputs still pending once the outcome is
known. They work inside workflows (deterministically) and in ordinary asyncio code.
"""

from __future__ import annotations

import asyncio
import builtins
import inspect
from collections.abc import Callable
from typing import Any

from eventual_nb import errors

_Outcome = tuple[str, Any] | None


def _as_future(item: Any, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Any]:
    if inspect.isawaitable(item):
        return asyncio.ensure_future(item, loop=loop)
    future = loop.create_future()
    future.set_result(item)
    return future


def _failure(future: asyncio.Future[Any]) -> BaseException | None:
    if future.cancelled():
        return asyncio.CancelledError()
    return future.exception()


async def _combine(inputs: tuple[Any, ...], decide: Callable[[list[asyncio.Future[Any]]], _Outcome]) -> Any:
    loop = asyncio.get_running_loop()
    futures = [_as_future(item, loop) for item in inputs]
    decided: asyncio.Future[tuple[str, Any]] = loop.create_future()

    def check(_: Any = None) -> None:
        if decided.done():
            return
        outcome = decide(futures)
        if outcome is not None:
            decided.set_result(outcome)

    for future in futures:
        future.add_done_callback(check)
    check()
    try:
        kind, value = await decided
    finally:
        for future in futures:
            future.remove_done_callback(check)
            if not future.done():
                future.cancel()
            elif not future.cancelled():
                future.exception()  # retrieved: the combinator handled it
    if kind == "error":
        raise value
    return value


def _decide_all(futures: list[asyncio.Future[Any]]) -> _Outcome:
    for future in futures:
        if future.done():
            error = _failure(future)
            if error is not None:
                return ("error", error)
    if builtins.all(future.done() for future in futures):
        return ("result", [future.result() for future in futures])
    return None


def _decide_all_settled(futures: list[asyncio.Future[Any]]) -> _Outcome:
    if not builtins.all(future.done() for future in futures):
        return None
    results = []
    for future in futures:
        error = _failure(future)
        results.append(error if error is not None else future.result())
    return ("result", results)


def _decide_any(futures: list[asyncio.Future[Any]]) -> _Outcome:
    for future in futures:
        if future.done() and _failure(future) is None:
            return ("result", future.result())
    if builtins.all(future.done() for future in futures):
        failures = [_failure(future) for future in futures]
        return ("error", BaseExceptionGroup("every input of ev.any() failed", failures))
    return None


def _decide_race(futures: list[asyncio.Future[Any]]) -> _Outcome:
    for future in futures:
        if future.done():
            error = _failure(future)
            return ("error", error) if error is not None else ("result", future.result())
    return None


async def all(*awaitables: Any) -> list[Any]:
    """Results of every input, in order; the first failure wins."""
    return await _combine(awaitables, _decide_all)  # type: ignore[no-any-return]


async def all_settled(*awaitables: Any) -> list[Any]:
    """Each input's result or exception instance, like `gather(return_exceptions=True)`."""
    return await _combine(awaitables, _decide_all_settled)  # type: ignore[no-any-return]


async def any(*awaitables: Any) -> Any:
    """The first success; if every input fails, an `ExceptionGroup` of the failures in argument order."""
    if not awaitables:
        raise errors.EventualError("ev.any() needs at least one awaitable")
    return await _combine(awaitables, _decide_any)


async def race(*awaitables: Any) -> Any:
    """The first input to settle, success or failure."""
    if not awaitables:
        raise errors.EventualError("ev.race() needs at least one awaitable")
    return await _combine(awaitables, _decide_race)
