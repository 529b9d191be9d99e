"""Built-in stream actions (sources)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

import headwater
from headwater.core.context import StreamContext


class RangeParams(BaseModel):
    """Params of ``range``."""

    model_config = ConfigDict(extra="forbid")

    start: int = Field(0, description="First value.")
    stop: int = Field(description="End value (exclusive).")
    step: int = Field(1, description="Increment; may be negative, not zero.")
    chunk: int = Field(4096, ge=1, le=1_000_000, description="Values emitted per batch.")


@headwater.action(
    "range",
    params=RangeParams,
    output="integers from start to stop (exclusive)",
    capabilities=("streaming", "progress"),
    batched=True,
)
async def range_source(params: RangeParams, ctx: StreamContext) -> AsyncIterator[list[int]]:
    """Count from ``start`` to ``stop`` like Python's range(), in batches."""
    if params.step == 0:
        raise ValueError("range step must not be zero")
    values = range(params.start, params.stop, params.step)
    total = len(values)
    chunk = params.chunk
    for offset in range(0, total, chunk):
        yield list(values[offset : offset + chunk])
        ctx.progress(min(offset + chunk, total), total)


class IterableParams(BaseModel):
    """Params of ``iterable``."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    items: Any = Field(description="Any Python iterable or async iterable (embedding only).")


@headwater.action(
    "iterable",
    params=IterableParams,
    output="the items of the given iterable",
    capabilities=("streaming",),
)
async def iterable_source(params: IterableParams, ctx: StreamContext) -> AsyncIterator[Any]:
    """Stream the items of a Python iterable or async iterable (for embedding)."""
    items = params.items
    if hasattr(items, "__aiter__"):
        async for item in items:
            yield item
        return
    if not isinstance(items, Iterable):
        raise TypeError(f"iterable needs an iterable, got {type(items).__name__}")
    for item in items:
        yield item


@headwater.hookimpl
def register_actions(register: Any) -> None:
    """Register the built-in sources."""
    register(range_source)
    register(iterable_source)
