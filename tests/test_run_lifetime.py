"""Finished runs are freed: no cache or registry keeps a run (and what it holds) alive.

A server or an embedding runs thousands of pipelines; each run's handle, closures and
buffers must go when the run ends and its caller lets go of it.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest

import headwater

pytestmark = pytest.mark.anyio

SPEC: dict[str, Any] = {
    "name": "lifetime",
    "sources": {"n": {"action": "range", "params": {"stop": 3}}},
    "sinks": [{"sink": "null"}],
}


async def test_streamed_runs_are_freed_when_they_end() -> None:
    handles: list[weakref.ref[headwater.RunHandle]] = []
    async with headwater.Engine() as engine:
        for _ in range(20):
            items = engine.stream(SPEC)
            assert [item async for item in items] == [0, 1, 2]
            assert items.handle is not None
            handles.append(weakref.ref(items.handle))
            del items
        gc.collect()
        alive = [ref for ref in handles if ref() is not None]
        assert alive == [], f"{len(alive)} of {len(handles)} finished runs are still alive"


async def test_runs_are_freed_when_they_end() -> None:
    handles: list[weakref.ref[headwater.RunHandle]] = []
    async with headwater.Engine() as engine:
        for _ in range(20):
            async with engine.open_run(SPEC) as handle:
                await handle.wait()
            handles.append(weakref.ref(handle))
            del handle
        gc.collect()
        assert [ref for ref in handles if ref() is not None] == []
