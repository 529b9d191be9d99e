"""hw-good: a healthy third-party headwater plugin (test data)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from pydantic import BaseModel, ConfigDict, Field

import headwater
from headwater.hookspecs import Register


class CountParams(BaseModel):
    """Params of ``hw_good.count``."""

    model_config = ConfigDict(extra="forbid")

    stop: int = Field(ge=0, description="How many numbers to yield.")


@headwater.action("hw_good.count", params=CountParams, capabilities=("progress",))
async def count(params: CountParams, ctx: headwater.StreamContext) -> AsyncIterator[int]:
    """Count from zero up to ``stop`` (exclusive)."""
    for i in range(params.stop):
        ctx.progress(i + 1, params.stop)
        yield i


@headwater.transformer("hw_good.square")
def square(item: int) -> int:
    """Square each number."""
    return item * item


@headwater.hookimpl
def register_actions(register: Register) -> None:
    register(count)


@headwater.hookimpl
def register_transformers(register: Register) -> None:
    register(square)
