"""``throughput``: items per second through ``range -> map -> filter -> sum``.

Every implementation computes ``sum(2x for x in range(N) if 2x % 3 != 0)`` with the
same two Python functions (:func:`benchmarks.fns.double`, :func:`benchmarks.fns.not_div3`),
except ``headwater_builder``, which uses lambdas as a Python user would. The result is
checked against the closed form in every round. Each round includes the
implementation's own set-up (event loop, pipeline validation), which is negligible at
this N.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from ..fns import anumbers, double, expected_sum, not_div3, numbers
from ..harness import (
    Column,
    Implementation,
    Sample,
    ScenarioReport,
    Settings,
    fmt_ns,
    fmt_rate,
    measure,
    timed,
)
from . import Progress

TITLE = "items/s through range -> map(x*2) -> filter(x % 3 != 0) -> sum"
DESCRIPTION = (
    "One process; headwater (YAML-shaped model and Python builder) against a plain loop, "
    "chained sync and async generators, aiostream, reactivex, streamz and per-item anyio "
    "memory streams. Metrics: ns_per_item, items_per_s."
)

FULL_N = 1_000_000
QUICK_N = 200_000
WARMUP_N = 20_000
ANYIO_BUFFER = 1024
"""Buffer of the per-item anyio streams: the same number of items headwater buffers
between two stages (``batch_size * buffer`` = 256 * 4)."""


# -- implementations -------------------------------------------------------------------


def headwater_model(n: int) -> dict[str, Any]:
    """The pipeline as the YAML file would define it."""
    return {
        "name": "bench-throughput",
        "sources": {"numbers": {"action": "range", "params": {"stop": n}}},
        "steps": [
            {"transformer": "map", "params": {"fn": "benchmarks.fns:double"}},
            {"transformer": "filter", "params": {"fn": "benchmarks.fns:not_div3"}},
        ],
        "sinks": [{"sink": "bench.sum"}],
    }


def bench_plugin_manager() -> Any:
    """A private plugin manager: every installed plugin plus the benchmark sinks."""
    import headwater

    from .. import plugin

    pm = headwater.PluginManager()
    pm.load()
    if not pm.register(plugin, "bench"):
        raise RuntimeError(f"cannot register the benchmark plugin: {pm.failures}")
    return pm


def make_headwater(pm: Any) -> Callable[[int], int]:
    """``headwater``: the model dict, run with ``headwater.run_sync``."""
    import headwater

    def run(n: int) -> int:
        result = headwater.run_sync(headwater_model(n), plugins=pm)
        return int(result.output)

    return run


def make_headwater_builder(pm: Any) -> Callable[[int], int]:
    """``headwater_builder``: the fluent builder with Python lambdas."""
    import headwater

    def run(n: int) -> int:
        pipeline = (
            headwater.Pipeline("bench-throughput-builder")
            .source("range", stop=n)
            .map(lambda x: x * 2)
            .filter(lambda x: x % 3 != 0)
            .sink("bench.sum")
        )
        return int(pipeline.run_sync(plugins=pm).output)

    return run


def plain_loop(n: int) -> int:
    """``plain_loop``: one for-loop over the source generator (the floor)."""
    total = 0
    for x in numbers(n):
        y = double(x)
        if not_div3(y):
            total += y
    return total


def _gmap(fn: Callable[[int], int], items: Iterator[int]) -> Iterator[int]:
    for x in items:
        yield fn(x)


def _gfilter(fn: Callable[[int], bool], items: Iterator[int]) -> Iterator[int]:
    for x in items:
        if fn(x):
            yield x


def sync_chain(n: int) -> int:
    """``sync_chain``: one generator per stage, chained."""
    return sum(_gfilter(not_div3, _gmap(double, numbers(n))))


async def _amap(fn: Callable[[int], int], items: AsyncIterator[int]) -> AsyncIterator[int]:
    async for x in items:
        yield fn(x)


async def _afilter(fn: Callable[[int], bool], items: AsyncIterator[int]) -> AsyncIterator[int]:
    async for x in items:
        if fn(x):
            yield x


def async_chain(n: int) -> int:
    """``async_chain``: one async generator per stage, chained, on asyncio."""

    async def main() -> int:
        total = 0
        async for x in _afilter(not_div3, _amap(double, anumbers(n))):
            total += x
        return total

    return asyncio.run(main())


def aiostream_impl(n: int) -> int:
    """``aiostream``: ``stream.iterate | pipe.map | pipe.filter``, summed."""
    from aiostream import pipe, stream

    async def main() -> int:
        xs = stream.iterate(numbers(n)) | pipe.map(double) | pipe.filter(not_div3)
        total = 0
        async with xs.stream() as items:
            async for x in items:
                total += x
        return total

    return asyncio.run(main())


def reactivex_impl(n: int) -> int:
    """``reactivex``: ``from_iterable.pipe(map, filter, sum)`` on the trampoline."""
    import reactivex
    from reactivex import operators as ops

    source = reactivex.from_iterable(numbers(n))
    return int(source.pipe(ops.map(double), ops.filter(not_div3), ops.sum()).run())


def streamz_impl(n: int) -> int:
    """``streamz``: ``Stream().map().filter().sink()``, one ``emit`` per item."""
    from streamz import Stream

    total = [0]

    def add(x: int) -> None:
        total[0] += x

    source = Stream()
    source.map(double).filter(not_div3).sink(add)
    emit = source.emit
    for x in numbers(n):
        emit(x)
    return total[0]


def anyio_per_item(n: int) -> int:
    """``anyio_per_item``: one task per stage, memory object streams, one send per item."""
    import anyio
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    async def main() -> int:
        total = 0
        s0, r0 = anyio.create_memory_object_stream[int](ANYIO_BUFFER)
        s1, r1 = anyio.create_memory_object_stream[int](ANYIO_BUFFER)
        s2, r2 = anyio.create_memory_object_stream[int](ANYIO_BUFFER)

        async def source(out: MemoryObjectSendStream[int]) -> None:
            async with out:
                for x in numbers(n):
                    await out.send(x)

        async def mapper(
            inp: MemoryObjectReceiveStream[int], out: MemoryObjectSendStream[int]
        ) -> None:
            async with inp, out:
                async for x in inp:
                    await out.send(double(x))

        async def filterer(
            inp: MemoryObjectReceiveStream[int], out: MemoryObjectSendStream[int]
        ) -> None:
            async with inp, out:
                async for x in inp:
                    if not_div3(x):
                        await out.send(x)

        async def summer(inp: MemoryObjectReceiveStream[int]) -> None:
            nonlocal total
            async with inp:
                async for x in inp:
                    total += x

        async with anyio.create_task_group() as tg:
            tg.start_soon(source, s0)
            tg.start_soon(mapper, r0, s1)
            tg.start_soon(filterer, r1, s2)
            tg.start_soon(summer, r2)
        return total

    return anyio.run(main, backend="asyncio")


# -- scenario --------------------------------------------------------------------------


def _impl(
    name: str, fn: Callable[[int], int], n: int, description: str, requires: tuple[str, ...] = ()
) -> Implementation:
    return Implementation(
        name,
        run=lambda: timed(lambda: fn(n)),
        warmup=lambda: Sample({}, fn(min(n, WARMUP_N))),
        description=description,
        requires=requires,
    )


def implementations(n: int) -> list[Implementation]:
    """Every contender, in table order (headwater first, then the baselines, then peers)."""
    pm = bench_plugin_manager()
    return [
        _impl("headwater", make_headwater(pm), n, "YAML-shaped model, importable fns"),
        _impl("headwater_builder", make_headwater_builder(pm), n, "Pipeline builder, lambdas"),
        _impl("plain_loop", plain_loop, n, "for-loop over a generator"),
        _impl("sync_chain", sync_chain, n, "chained generators"),
        _impl("async_chain", async_chain, n, "chained async generators, asyncio"),
        _impl("aiostream", aiostream_impl, n, "aiostream pipe", ("aiostream",)),
        _impl("reactivex", reactivex_impl, n, "reactivex operators", ("reactivex",)),
        _impl("streamz", streamz_impl, n, "streamz, sync emit", ("streamz",)),
        _impl("anyio_per_item", anyio_per_item, n, "anyio memory streams, task per stage"),
    ]


def per_item_derive(n: int) -> Callable[[dict[str, float]], dict[str, float]]:
    """Per-item figures (wall and CPU) from a round's seconds, for N items."""

    def derive(metrics: dict[str, float]) -> dict[str, float]:
        seconds = metrics["seconds"]
        return {
            "ns_per_item": seconds * 1e9 / n,
            "items_per_s": n / seconds,
            "seconds": seconds,
            "cpu_ns_per_item": metrics["cpu_seconds"] * 1e9 / n,
            "cpu_items_per_s": n / max(metrics["cpu_seconds"], 1e-9),
            "cpu_seconds": metrics["cpu_seconds"],
        }

    return derive


def run(settings: Settings, progress: Progress) -> ScenarioReport:
    """Measure every implementation; targets are ratios of items_per_s."""
    n = settings.pick_n(FULL_N, QUICK_N)
    rounds = settings.pick_rounds(full=5, quick=2)
    warmup = settings.pick_warmup(1)
    impls = implementations(n)
    measured = measure(
        impls,
        rounds=rounds,
        warmup=warmup,
        derive=per_item_derive(n),
        expected=expected_sum(n),
        progress=progress,
    )
    report = ScenarioReport(
        name="throughput",
        title=TITLE,
        params={"N": n, "rounds": rounds, "warm-up": warmup},
        measured=measured,
        columns=[
            Column("ns_per_item", "ns/item", fmt_ns),
            Column("items_per_s", "items/s", fmt_rate, spread=False),
            Column("cpu_ns_per_item", "cpu ns/item", fmt_ns, spread=False),
        ],
        descriptions={i.name: i.description for i in impls},
        baseline="async_chain",
        ratio_metric="items_per_s",
        ratio_header="speed vs async_chain",
    )
    report.targets = [
        report.target_ratio("headwater", other, "items_per_s", goal, also="cpu_items_per_s")
        for other, goal in (("async_chain", 2.0), ("aiostream", 25.0), ("plain_loop", 0.5))
    ]
    report.notes.append("every implementation's sum matched the closed form in every round")
    report.notes.append(
        "ratios are medians of per-round ratios (each round runs every implementation "
        "back to back, so drift of the machine's speed cancels out)"
    )
    wall = report.median("headwater", "seconds")
    cpu = report.median("headwater", "cpu_seconds")
    if wall and cpu and cpu < 0.85 * wall:
        report.notes.append(
            f"the machine was busy: headwater's wall time was {wall / cpu:.2f}x its CPU "
            "time; the cpu ns/item column is the steadier figure"
        )
    return report
