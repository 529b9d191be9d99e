"""Calling author code: arity-tolerant argument passing and sync/async bridging."""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Callable
from typing import Any

import anyio

__all__ = ["call_flexible", "maybe_await_in_thread", "positional_arity"]


_ARITIES: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
"""Arity by callable, held weakly: a cache must never keep a run's closures alive."""


def positional_arity(fn: Callable[..., Any]) -> int:
    """How many positional arguments ``fn`` accepts (a large number for ``*args``)."""
    try:
        return _ARITIES[fn]
    except KeyError:
        arity = _ARITIES[fn] = _arity(fn)
        return arity
    except TypeError:  # not weakly referenceable (builtins, which live for ever anyway)
        try:
            return _cached_arity(fn)
        except TypeError:  # unhashable
            return _arity(fn)


@functools.lru_cache(maxsize=256)
def _cached_arity(fn: Callable[..., Any]) -> int:
    return _arity(fn)


def _arity(fn: Callable[..., Any]) -> int:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return 99
    count = 0
    for param in sig.parameters.values():
        if param.kind is param.VAR_POSITIONAL:
            return 99
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            count += 1
    return count


def call_flexible(fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn`` with as many of ``args`` (in order, None params dropped) as it takes.

    Lets authors write ``def count(params, ctx)``, ``def count(params)`` or, for components
    without a params model, ``def tick(ctx)``.
    """
    return fn(*args[: positional_arity(fn)])


def params_and_ctx(params: Any, ctx: Any) -> tuple[Any, ...]:
    """The leading arguments for a component: ``(params, ctx)`` or ``(ctx,)``."""
    return (ctx,) if params is None else (params, ctx)


async def maybe_await_in_thread(fn: Callable[..., Any] | None, *args: Any) -> Any:
    """Await ``fn(*args)`` if it is async; run it in a worker thread if it is sync."""
    if fn is None:
        return None
    if inspect.iscoroutinefunction(fn):
        return await fn(*args)
    result = await anyio.to_thread.run_sync(lambda: fn(*args))
    if inspect.isawaitable(result):
        return await result
    return result
