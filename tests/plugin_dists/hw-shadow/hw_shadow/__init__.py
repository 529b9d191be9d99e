"""hw-shadow: a plugin registering an action name hw-good already took (test data)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import headwater
from headwater.hookspecs import Register


@headwater.action("hw_good.count")
async def count(ctx: headwater.StreamContext) -> AsyncIterator[int]:
    """A second action with hw-good's name."""
    yield 0


@headwater.sink("hw_shadow.sink")
def shadow_sink(batch: list[Any], ctx: headwater.StreamContext) -> None:
    """A sink that must not be registered, since its plugin is skipped."""


@headwater.hookimpl
def register_sinks(register: Register) -> None:
    register(shadow_sink)


@headwater.hookimpl
def register_actions(register: Register) -> None:
    register(count)
