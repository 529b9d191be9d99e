"""Built-in sinks."""

from __future__ import annotations

from typing import Any

import headwater


@headwater.sink("collect")
class CollectSink:
    """Keep every item in memory; the run's output is the list (for embedding and tests)."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    async def write(self, batch: list[Any]) -> None:
        self.items.extend(batch)

    async def close(self, error: BaseException | None) -> list[Any]:
        return self.items


@headwater.sink("null")
class NullSink:
    """Discard every item; the output is the number of items received."""

    def __init__(self) -> None:
        self.count = 0

    async def write(self, batch: list[Any]) -> None:
        self.count += len(batch)

    async def close(self, error: BaseException | None) -> int:
        return self.count


@headwater.hookimpl
def register_sinks(register: Any) -> None:
    """Register the built-in sinks."""
    register(CollectSink)
    register(NullSink)
