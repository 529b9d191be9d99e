"""The run's timeouts (``first_item``, ``idle``, ``total``): a watchdog task."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio

from ..errors import PipelineTimeout

if TYPE_CHECKING:
    from .run import _Run


async def _watchdog(run: _Run, scope: anyio.CancelScope) -> None:
    """Cancel the run when one of its timeouts expires; returns at once without any.

    Sleeps until the nearest deadline, re-reading the run's clock each time (an item
    moves the ``idle`` deadline; the first item drops the ``first_item`` one). On expiry
    it records a :class:`PipelineTimeout` and cancels the run (the run ends
    ``cancelled``). Once no deadline is left (only ``first_item`` was set, and the first
    item came) it returns. ``scope`` lets the run stop the watchdog once the stages ended.
    """
    t = run.spec.timeouts
    if t.first_item is None and t.idle is None and t.total is None:
        return
    clock = run.clock
    with scope:
        while True:
            now = time.monotonic()
            deadlines: list[tuple[float, str, float]] = []
            if t.total is not None:
                deadlines.append((clock.t0 + t.total, "total", t.total))
            if t.first_item is not None and clock.first_item_at is None:
                deadlines.append((clock.t0 + t.first_item, "first item", t.first_item))
            if t.idle is not None:
                # a stream's consumer holding the items is not the run being idle
                idle_from = now if clock.held else clock.last_item_at
                deadlines.append((idle_from + t.idle, "idle", t.idle))
            if not deadlines:
                return
            when, which, seconds = min(deadlines)
            if now >= when:
                run.timed_out(PipelineTimeout(run.spec.name, which, seconds), f"{which} timeout")
                return
            await anyio.sleep(when - now)
