"""``windows``: a keyed event-time tumbling window with count and sum.

N events (1,000,000; quick: 200,000) over 1,000 keys, ten per second of event time,
each up to ``DISORDER`` seconds out of order (bounded disorder, below ``LATENESS``, so
none is late), cut into per-key 60-second tumbling windows with a count and a sum:

* ``headwater``: ``iterable -> window(time: event, by, agg, keep_items: false)`` into a
  sink that digests the windows;
* ``hand_loop``: the same in a hand-written loop over a dict of open windows, firing
  windows as its own watermark passes their end (what one would write without a
  framework);
* ``bytewax``: Bytewax's ``fold_window`` with an event-time ``TumblingWindower`` over a
  ``TestingSource`` (batch_size 1000) run with ``run_main``, when Bytewax is installed.

Every implementation reduces its windows to one digest (number of windows, sum of the
counts, sum of the sums, a checksum of starts and keys) compared with a reference the
hand loop computes beforehand. Targets: headwater >= 0.5x the hand loop's events/s; peak
RSS of a fresh process running headwater over the full N < 100 MB (measured in a child
process, ``python -m benchmarks.scenarios.windows N``).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..harness import (
    Column,
    Implementation,
    Sample,
    ScenarioReport,
    Settings,
    fmt_bytes,
    fmt_ns,
    fmt_rate,
    measure,
    timed,
)
from . import Progress
from .throughput import per_item_derive

TITLE = "keyed event-time tumbling windows (count, sum) against a hand-written loop"
DESCRIPTION = (
    "One process; N events, 1,000 keys, bounded disorder, 60 s tumbling windows per key "
    "with count and sum: headwater's window step, a hand-written dict loop and Bytewax "
    "(if installed), alternating rounds; peak RSS of headwater in a child process. "
    "Targets: headwater >= 0.5x the hand loop's events/s; peak RSS < 100 MB. "
    "Metrics: ns_per_item, items_per_s, rss_bytes."
)

FULL_N = 1_000_000
QUICK_N = 200_000
WARMUP_N = 20_000
KEYS = 1_000
PER_SECOND = 1_000
SIZE = 60
DISORDER = 5
LATENESS = 10
BASE = 1_700_000_000
MIN_RATIO = 0.5
RSS_LIMIT = 100e6

Digest = tuple[int, int, int, int]


def events(n: int) -> Iterator[dict[str, int]]:
    """The events, made as they are read (the input takes no memory of its own)."""
    for i in range(n):
        yield {
            "t": BASE + i // PER_SECOND - (i * 7919) % (DISORDER + 1),
            "k": i % KEYS,
            "v": i % 100,
        }


class _Digest:
    """Reduces windows to a :data:`Digest` as they come."""

    def __init__(self) -> None:
        self.windows = self.count = self.total = self.check = 0

    def add(self, key: int, start: int, count: int, total: int) -> None:
        self.windows += 1
        self.count += count
        self.total += total
        self.check = (self.check + start * 31 + key) % 1_000_000_007

    def result(self) -> Digest:
        return (self.windows, self.count, self.total, self.check)


def hand_loop(n: int) -> Digest:
    """The windows computed by hand: a dict start -> key -> [count, sum]."""
    digest = _Digest()
    panes: dict[int, dict[int, list[int]]] = {}
    largest = -math.inf
    watermark = -math.inf
    next_end = math.inf
    for e in events(n):
        t = e["t"]
        if t < watermark:
            continue  # late
        if t > largest:
            largest = t
            watermark = t - LATENESS
        start = t - t % SIZE
        pane = panes.get(start)
        if pane is None:
            pane = panes[start] = {}
            next_end = min(next_end, start + SIZE)
        acc = pane.get(e["k"])
        if acc is None:
            acc = pane[e["k"]] = [0, 0]
        acc[0] += 1
        acc[1] += e["v"]
        if watermark >= next_end:
            for s in sorted(s for s in panes if s + SIZE <= watermark):
                for key, (count, total) in panes.pop(s).items():
                    digest.add(key, s, count, total)
            next_end = min(panes, default=math.inf) + SIZE
    for s in sorted(panes):
        for key, (count, total) in panes[s].items():
            digest.add(key, s, count, total)
    return digest.result()


def _plugin() -> Any:
    """A plugin with the ``bench.window_digest`` sink, for a private plugin manager."""
    import types

    import headwater

    @headwater.sink("bench.window_digest")
    class DigestSink:
        """Reduce window dicts to a digest; the run's output is the digest."""

        def __init__(self) -> None:
            self.digest = _Digest()

        async def write(self, batch: list[Any]) -> None:
            add = self.digest.add
            for w in batch:
                add(w["key"], w["start"], w["n"], w["total"])

        async def close(self, error: BaseException | None) -> Digest:
            return self.digest.result()

    @headwater.hookimpl
    def register_sinks(register: Any) -> None:
        register(DigestSink)

    module = types.ModuleType("bench_windows_plugin")
    module.register_sinks = register_sinks  # type: ignore[attr-defined]
    return module


def plugin_manager() -> Any:
    import headwater

    pm = headwater.PluginManager()
    pm.load()
    pm.register(_plugin(), "bench-windows")
    return pm


def headwater_run(pm: Any) -> Callable[[int], Digest]:
    import headwater

    def run(n: int) -> Digest:
        model = {
            "name": "bench-windows",
            "sources": {"events": {"action": "iterable", "params": {"items": events(n)}}},
            "steps": [
                {
                    "transformer": "window",
                    "params": {
                        "time": "event",
                        "timestamp": "t",
                        "by": "k",
                        "seconds": SIZE,
                        "lateness": LATENESS,
                        "agg": {"n": "count", "total": "sum:v"},
                        "keep_items": False,
                    },
                }
            ],
            "sinks": [{"sink": "bench.window_digest"}],
            "batch_size": 1024,
        }
        result = headwater.run_sync(model, plugins=pm)
        output: Digest = tuple(result.raise_for_state().output)
        return output

    return run


def bytewax_run() -> Callable[[int], Digest] | None:
    """Bytewax's event-time tumbling ``fold_window``, or None when not installed."""
    try:
        import bytewax.operators as op
        import bytewax.operators.windowing as win
        from bytewax.dataflow import Dataflow
        from bytewax.operators.windowing import EventClock, TumblingWindower
        from bytewax.testing import TestingSink, TestingSource, run_main
    except ImportError:
        return None
    from datetime import UTC, datetime, timedelta

    def run(n: int) -> Digest:
        flow = Dataflow("windows")
        inp = op.input("in", flow, TestingSource(events(n), batch_size=1000))
        keyed = op.key_on("key", inp, lambda e: str(e["k"]))
        clock: Any = EventClock(
            lambda e: datetime.fromtimestamp(e["t"], UTC),
            wait_for_system_duration=timedelta(seconds=LATENESS),
        )
        windower = TumblingWindower(
            length=timedelta(seconds=SIZE), align_to=datetime.fromtimestamp(0, UTC)
        )
        folded = win.fold_window(
            "fold",
            keyed,
            clock,
            windower,
            lambda: [0, 0],
            lambda acc, e: [acc[0] + 1, acc[1] + e["v"]],
            lambda a, b: [a[0] + b[0], a[1] + b[1]],
        )
        got: list[Any] = []
        op.output("out", folded.down, TestingSink(got))
        run_main(flow)  # type: ignore[no-untyped-call]  # bytewax ships no annotations here
        digest = _Digest()
        for key, (window_id, (count, total)) in got:
            start = window_id * SIZE
            digest.add(int(key), start, count, total)
        return digest.result()

    return run


def _impl(name: str, fn: Callable[[int], Digest], n: int, description: str) -> Implementation:
    return Implementation(
        name,
        run=lambda: timed(lambda: fn(n)),
        warmup=lambda: Sample({}, fn(min(n, WARMUP_N))),
        description=description,
    )


def _rss(n: int) -> Callable[[], Sample]:
    def run() -> Sample:
        from ..procs import run_json_child

        data = run_json_child(["-m", "benchmarks.scenarios.windows", str(n)])
        return Sample({"rss_bytes": float(data["rss_bytes"])}, tuple(data["result"]))

    return run


def run(settings: Settings, progress: Progress) -> ScenarioReport:
    """Measure events/s against the hand loop (and Bytewax), then peak RSS in a child."""
    n = settings.pick_n(FULL_N, QUICK_N)
    rounds = settings.pick_rounds(full=5, quick=2)
    warmup = settings.pick_warmup(1)
    progress("computing the reference digest")
    reference = hand_loop(n)
    pm = plugin_manager()
    impls = [
        _impl("headwater", headwater_run(pm), n, "window(time: event, by, agg) -> digest sink"),
        _impl("hand_loop", hand_loop, n, "for-loop over a dict of open windows"),
    ]
    bytewax = bytewax_run()
    if bytewax is not None:
        impls.append(_impl("bytewax", bytewax, n, "fold_window, TestingSource batch 1000"))
    measured = measure(
        impls,
        rounds=rounds,
        warmup=warmup,
        derive=per_item_derive(n),
        expected=reference,
        progress=progress,
    )
    memory = measure(
        [Implementation("headwater_rss", _rss(n), description="fresh process, full run")],
        rounds=1,
        warmup=0,
        expected=reference,
        progress=progress,
    )
    measured.stats.update(memory.stats)
    measured.samples.update(memory.samples)
    report = ScenarioReport(
        name="windows",
        title=TITLE,
        params={
            "N": n,
            "keys": KEYS,
            "window": f"{SIZE} s",
            "disorder": f"{DISORDER} s",
            "lateness": f"{LATENESS} s",
            "rounds": rounds,
        },
        measured=measured,
        columns=[
            Column("ns_per_item", "ns/event", fmt_ns),
            Column("items_per_s", "events/s", fmt_rate, spread=False),
            Column("cpu_ns_per_item", "cpu ns/event", fmt_ns, spread=False),
            Column("rss_bytes", "peak RSS", fmt_bytes, spread=False),
        ],
        descriptions={i.name: i.description for i in impls},
        show_descriptions=True,
    )
    report.targets = [
        report.target_ratio(
            "headwater", "hand_loop", "items_per_s", MIN_RATIO, also="cpu_items_per_s"
        ),
        report.target_below(
            f"headwater peak RSS, {n:,} events", "headwater_rss", "rss_bytes", RSS_LIMIT, fmt_bytes
        ),
    ]
    if bytewax is None:
        report.notes.append("bytewax is not installed: pip install bytewax to compare")
    per_event = report.median("headwater", "ns_per_item")
    if per_event is not None:
        report.notes.append(f"headwater costs {per_event:,.0f} ns per event")
    report.notes.append("every implementation matched the reference digest in every round")
    return report


def _child(n: int) -> None:
    """``python -m benchmarks.scenarios.windows N``: one headwater run, then peak RSS."""
    from .._child import peak_rss_bytes

    began = time.perf_counter()
    result = headwater_run(plugin_manager())(n)
    seconds = time.perf_counter() - began
    print(json.dumps({"rss_bytes": peak_rss_bytes(), "seconds": seconds, "result": result}))


if __name__ == "__main__":
    _child(int(sys.argv[1]))
