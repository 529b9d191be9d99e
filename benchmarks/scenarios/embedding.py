"""``embedding``: what iterating a run with ``engine.stream`` costs next to a sink.

The pipeline is ``range -> map(x*2) -> filter(x % 3 != 0)`` (the ``throughput`` steps,
with the same functions by import path). ``null_sink`` ends it in the ``null`` sink and
runs it with ``engine.run``; ``stream`` declares no sink and counts the items in an
``async for`` over ``engine.stream``, so every item crosses into the consumer's code;
``stream_batches`` takes them a batch at a time with ``next_batch()``.
``async_for_floor`` is no headwater at all: a bare async generator over the same output
items, in batches of the same size, counted by the same loop as ``stream``. It is what
one ``async for`` step costs on this interpreter, so ``null_sink / (null_sink +
async_for_floor)`` is the highest ratio a per-item ``async for`` can reach here, however
little ``engine.stream`` adds; the notes print that ceiling and what ``stream`` costs
beyond it. All four count the items that left the steps, checked against the closed
form in every round. The engine (plugins loaded, policy allowing ``benchmarks.fns``) is
built once; each round includes the event loop and the pipeline's validation.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from ..fns import double, not_div3
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
from .throughput import per_item_derive

TITLE = "engine.stream: items/s through range -> map -> filter into the consumer vs a null sink"
DESCRIPTION = (
    "One process; the throughput steps ending in the null sink (engine.run) next to the "
    "same steps iterated with engine.stream (per item and per batch), and a bare async "
    "generator over the same items (the interpreter's cost of one async for step). "
    "Target: stream >= 0.8x null_sink. Metrics: ns_per_item, items_per_s."
)

FULL_N = 1_000_000
QUICK_N = 200_000
WARMUP_N = 20_000
TARGET = 0.8
"""``stream`` keeps at least this share of ``null_sink``'s throughput."""
CHUNK = 4096
"""Values per batch of the ``range`` source (its default), and of ``async_for_floor``."""


def model(n: int, *, sink: bool) -> dict[str, Any]:
    """The pipeline, with the ``null`` sink or with none (iterated)."""
    data: dict[str, Any] = {
        "name": "bench-embedding",
        "sources": {"numbers": {"action": "range", "params": {"stop": n, "chunk": CHUNK}}},
        "steps": [
            {"transformer": "map", "params": {"fn": "benchmarks.fns:double"}},
            {"transformer": "filter", "params": {"fn": "benchmarks.fns:not_div3"}},
        ],
    }
    if sink:
        data["sinks"] = [{"sink": "null"}]
    return data


def expected_count(n: int) -> int:
    """Items that leave the steps: ``x`` in ``range(n)`` with ``2x % 3 != 0``."""
    return n - (n + 2) // 3


def make_engine() -> Any:
    """One engine for every round: built-in plugins, callables of ``benchmarks.fns``."""
    import headwater

    engine = headwater.Engine(policy=headwater.SandboxPolicy(callables=("benchmarks.fns",)))
    engine.load()
    return engine


def make_null_sink(engine: Any) -> Callable[[int], int]:
    """``null_sink``: ``engine.run`` into the ``null`` sink (its output is the count)."""
    import anyio

    def run(n: int) -> int:
        result = anyio.run(lambda: engine.run(model(n, sink=True)))
        return int(result.output)

    return run


def make_stream(engine: Any) -> Callable[[int], int]:
    """``stream``: ``async for`` over ``engine.stream``, counting."""
    import anyio

    async def main(n: int) -> int:
        count = 0
        async with engine.stream(model(n, sink=False)) as items:
            async for _ in items:
                count += 1
        return count

    return lambda n: anyio.run(main, n)


def make_stream_batches(engine: Any) -> Callable[[int], int]:
    """``stream_batches``: ``next_batch()`` over ``engine.stream``, counting."""
    import anyio

    async def main(n: int) -> int:
        count = 0
        async with engine.stream(model(n, sink=False)) as items:
            while (batch := await items.next_batch()) is not None:
                count += len(batch)
        return count

    return lambda n: anyio.run(main, n)


def output_batches(n: int) -> list[list[int]]:
    """The items leaving the steps, batch by batch as the pipeline hands them over."""
    return [
        [y for y in map(double, range(start, min(start + CHUNK, n))) if not_div3(y)]
        for start in range(0, n, CHUNK)
    ]


def make_async_for_floor(*sizes: int) -> Callable[[int], int]:
    """``async_for_floor``: ``async for`` over a bare async generator yielding the
    pipeline's output items, counting. The items of each of ``sizes`` are computed
    here, outside the timing."""
    import anyio

    made = {n: output_batches(n) for n in sizes}

    async def items(batches: list[list[int]]) -> Any:
        for batch in batches:
            for item in batch:
                yield item

    async def main(batches: list[list[int]]) -> int:
        count = 0
        async for _ in items(batches):
            count += 1
        return count

    return lambda n: anyio.run(main, made[n])


def _impl(name: str, fn: Callable[[int], int], n: int, description: str) -> Implementation:
    return Implementation(
        name,
        run=lambda: timed(lambda: fn(n)),
        warmup=lambda: Sample({}, fn(min(n, WARMUP_N))),
        description=description,
    )


def run(settings: Settings, progress: Progress) -> ScenarioReport:
    """Measure the four; the target is the ratio of ``stream`` to ``null_sink``."""
    n = settings.pick_n(FULL_N, QUICK_N)
    rounds = settings.pick_rounds(full=7, quick=2)
    warmup = settings.pick_warmup(1)
    engine = make_engine()
    impls = [
        _impl("null_sink", make_null_sink(engine), n, "engine.run into the null sink"),
        _impl("stream", make_stream(engine), n, "async for over engine.stream"),
        _impl("stream_batches", make_stream_batches(engine), n, "engine.stream, next_batch()"),
        _impl(
            "async_for_floor",
            make_async_for_floor(n, min(n, WARMUP_N)),
            n,
            "a bare async generator over the same items: one async for step, no headwater",
        ),
    ]
    measured = measure(
        impls,
        rounds=rounds,
        warmup=warmup,
        derive=per_item_derive(n),
        expected=expected_count(n),
        progress=progress,
    )
    report = ScenarioReport(
        name="embedding",
        title=TITLE,
        params={"N": n, "rounds": rounds, "warm-up": warmup},
        measured=measured,
        columns=[
            Column("ns_per_item", "ns/item", fmt_ns),
            Column("items_per_s", "items/s", fmt_rate, spread=False),
            Column("cpu_ns_per_item", "cpu ns/item", fmt_ns, spread=False),
        ],
        descriptions={i.name: i.description for i in impls},
        baseline="null_sink",
        ratio_metric="items_per_s",
        ratio_header="speed vs null_sink",
    )
    report.targets = [
        report.target_ratio("stream", "null_sink", "items_per_s", TARGET, also="cpu_items_per_s")
    ]
    ratio = report.ratio("stream", "null_sink", "items_per_s")
    if ratio is not None:
        report.notes.append(f"engine.stream runs at {ratio:.2f}x the null sink's items/s")
    report.notes.append(
        "every item of 'stream' crosses one 'async for' step into the consumer's code; "
        "'stream_batches' shows the runtime's own cost of handing items over"
    )
    report.notes.extend(floor_notes(measured.samples, n))
    return report


def floor_notes(samples: dict[str, list[dict[str, float]]], n: int) -> list[str]:
    """The ceiling a per-item ``async for`` can reach here, and what ``stream`` costs
    beyond ``null_sink`` plus that step; per-round figures, median (ns per item that
    reaches the consumer)."""
    rows = [samples.get(name, []) for name in ("null_sink", "stream", "async_for_floor")]
    rounds = list(zip(*rows, strict=False))
    if not rounds:
        return []
    out = expected_count(n) or 1
    base = [null["ns_per_item"] for null, _, _ in rounds]
    floor = [f["ns_per_item"] for _, _, f in rounds]
    extra = [s["ns_per_item"] - null["ns_per_item"] for null, s, _ in rounds]
    ceiling = statistics.median(b / (b + f) for b, f in zip(base, floor, strict=True))
    per_out = n / out
    step = statistics.median(floor) * per_out
    beyond = statistics.median(e - f for e, f in zip(extra, floor, strict=True)) * per_out
    return [
        f"one async for step plus the loop's count costs {step:.0f} ns per item on this "
        f"interpreter (async_for_floor): if engine.stream added nothing else, 'stream' "
        f"would reach null_sink / (null_sink + async_for_floor) = {ceiling:.2f}x",
        f"stream costs {statistics.median(extra) * per_out:.0f} ns per item reaching the "
        f"consumer over null_sink, {beyond:.0f} ns of it beyond that async for step "
        f"({out:,} of the {n:,} items reach it)",
    ]
