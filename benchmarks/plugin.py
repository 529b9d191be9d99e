"""A throwaway headwater plugin with the sinks the benchmarks need.

Registered on a private plugin manager (``pm.register(benchmarks.plugin, "bench")``) in
the benchmark process, or discovered through a temporary ``headwater`` entry point in the
child processes of the ``first-item`` scenario. It uses the same hooks and decorators as
any third-party plugin.
"""

from __future__ import annotations

import sys
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field

import headwater

__all__ = ["LINE_MARKER", "LinesSink", "SlowNullSink", "SumSink", "register_sinks"]

LINE_MARKER = "HWBENCH"
"""Prefix of every line :class:`LinesSink` writes, so a watcher can tell them apart."""


@headwater.sink("bench.sum")
class SumSink:
    """Add up every item; the run's output is the total."""

    def __init__(self) -> None:
        self.total = 0

    async def write(self, batch: list[Any]) -> None:
        """Add one batch to the total."""
        self.total += sum(batch)

    async def close(self, error: BaseException | None) -> int:
        """Return the total."""
        return self.total


class SlowParams(BaseModel):
    """Params of ``bench.slow_null``."""

    model_config = ConfigDict(extra="forbid")

    delay: float = Field(0.001, ge=0, description="Seconds to sleep per batch.")


@headwater.sink("bench.slow_null", params=SlowParams)
class SlowNullSink:
    """Discard items, sleeping ``delay`` seconds per batch: a slow consumer."""

    def __init__(self, params: SlowParams) -> None:
        self.delay = params.delay
        self.count = 0
        self.batches = 0

    async def write(self, batch: list[Any]) -> None:
        """Count the batch, then sleep (the pipeline must hold back meanwhile)."""
        self.count += len(batch)
        self.batches += 1
        await anyio.sleep(self.delay)

    async def close(self, error: BaseException | None) -> dict[str, int]:
        """Return how many items and batches arrived."""
        return {"items": self.count, "batches": self.batches}


@headwater.sink("bench.lines")
class LinesSink:
    """Write each item to stdout as ``HWBENCH <item>``, flushing after every batch."""

    def __init__(self) -> None:
        self.count = 0

    async def write(self, batch: list[Any]) -> None:
        """Write and flush one batch."""
        out = sys.stdout
        out.write("".join(f"{LINE_MARKER} {item}\n" for item in batch))
        out.flush()
        self.count += len(batch)

    async def close(self, error: BaseException | None) -> int:
        """Return the number of lines written."""
        return self.count


@headwater.hookimpl
def register_sinks(register: Any) -> None:
    """Register the benchmark sinks."""
    register(SumSink)
    register(SlowNullSink)
    register(LinesSink)
