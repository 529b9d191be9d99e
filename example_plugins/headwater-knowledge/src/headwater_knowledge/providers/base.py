"""What every provider shares: settings, the hit callback, timeouts and status events.

A provider is a coroutine ``search(params, ctx, emit)`` that calls ``await emit(hit)``
for each hit, in its own order, and may return a note for its final status. It is plain
structured async code (task groups and timeouts are fine inside). :func:`run_provider`
runs one with its timeout and turns what happens into ``status`` and ``hit`` events: a
provider that raises ends ``failed`` (after an ``error`` event naming the exception), one
that overruns its timeout ``timed_out``; either way nothing is raised, so one provider
never stops the others.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any, Protocol

import anyio
import headwater
from pydantic import BaseModel, ConfigDict, Field

from ..background import Send, stream_from
from ..events import ErrorEvent, HitEvent, StatusEvent

__all__ = ["Emit", "ProviderSettings", "Search", "provider_events", "run_provider"]

Emit = Callable[[HitEvent], Awaitable[None]]
"""The callback a provider calls with each hit."""

STATUS_INTERVAL = 0.1
"""Seconds between two ``running`` statuses of one provider (hits are never delayed)."""


class ProviderSettings(BaseModel):
    """Settings every provider has."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    limit: int = Field(20, ge=1, le=1000, description="Most hits to return.")
    timeout: float = Field(
        5.0, gt=0, le=300, description="Seconds the provider may take; then it times out."
    )


class Search(Protocol):
    """A provider's search coroutine."""

    def __call__(
        self, params: Any, ctx: headwater.StreamContext, emit: Emit
    ) -> Awaitable[str | None]: ...


def _unwrap(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]  # a task group's wrapping says nothing
    return exc


def _kind(exc: BaseException) -> str:
    return type(_unwrap(exc)).__name__


def _message(exc: BaseException) -> str:
    exc = _unwrap(exc)
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]


async def run_provider(
    name: str,
    search: Search,
    params: ProviderSettings,
    ctx: headwater.StreamContext,
    send: Send,
    scope: anyio.CancelScope | None = None,
) -> StatusEvent:
    """Run one provider to its end, sending its ``hit`` and ``status`` events to ``send``.

    The ``started`` status is the caller's to send (it goes out before any work starts).
    Returns the final status (also sent). Cancelling ``scope`` (the caller's) ends the
    provider with state ``cancelled``.
    """
    started = time.monotonic()
    hits = 0
    last_status = started
    stage = ctx.child(f"{ctx.stage}.{name}", ctx.plugin)

    async def emit(hit: HitEvent) -> None:
        nonlocal hits, last_status
        hits += 1
        await send.send(hit.item())
        now = time.monotonic()
        if now - last_status >= STATUS_INTERVAL:
            last_status = now
            stage.progress(hits, params.limit, f"{hits} hits")
            await send.send(
                StatusEvent(provider=name, state="running", hits=hits, elapsed=now - started).item()
            )

    scope = scope if scope is not None else anyio.CancelScope()
    state = "done"
    message: str | None = None
    failure: ErrorEvent | None = None
    try:
        with scope, anyio.move_on_after(params.timeout) as deadline:
            message = await search(params, stage, emit)
        if deadline.cancelled_caught:
            state, message = "timed_out", f"no answer within {params.timeout:g} s"
        elif scope.cancelled_caught:
            state, message = "cancelled", None
    except Exception as exc:  # noqa: BLE001 - a provider's failure is its status
        state, message = "failed", _message(exc)
        stage.logger.warning("provider %s failed: %s", name, message)
        failure = ErrorEvent(where=name, error=_kind(exc), message=message)
    elapsed = time.monotonic() - started
    stage.progress(hits, hits, f"{hits} hits, {state}")
    final = StatusEvent(provider=name, state=state, hits=hits, elapsed=elapsed, message=message)
    with anyio.CancelScope(shield=True):
        if failure is not None:
            await send.send(failure.item())
        await send.send(final.item())
    return final


async def provider_events(
    name: str, search: Search, params: ProviderSettings, ctx: headwater.StreamContext
) -> AsyncIterator[dict[str, Any]]:
    """The events of one provider run on its own: ``started``, hits, the final status.

    This is the body of each provider's action (``knowledge.fts``...); ``knowledge.search``
    runs several providers at once with :func:`run_provider` instead.
    """
    yield StatusEvent(provider=name, state="started").item()

    async def work(send: Send) -> None:
        await run_provider(name, search, params, ctx, send)

    async with aclosing(stream_from(work)) as events:
        async for event in events:
            yield event
