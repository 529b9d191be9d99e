"""``metrics``: what the core's always-on instruments cost, metrics on next to metrics off.

The ``throughput`` pipeline (``range -> map(x*2) -> filter(x % 3 != 0) -> sum``) runs with
the runtime's instruments on (per-batch latency histograms, end-to-end latency probes,
registration with the metrics registry) and off (:func:`headwater.core.metrics.set_enabled`,
the switch behind ``HEADWATER_METRICS=0``), alternating within every round. Item and batch
counters are kept either way (run summaries need them), so "off" is the floor.

Two batch sizes: the default (256 items per batch), and 16 items per batch, where per-batch
costs weigh 16 times more. The target applies to the default: the cost of metrics must
stay under 10%. A note reports what one Prometheus scrape of the process costs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..fns import expected_sum
from ..harness import (
    Column,
    Implementation,
    Sample,
    ScenarioReport,
    Settings,
    TargetResult,
    fmt_ns,
    fmt_rate,
    measure,
    timed,
)
from . import Progress
from .throughput import bench_plugin_manager, headwater_model, per_item_derive

TITLE = "cost of the core's metrics: throughput with metrics on vs off"
DESCRIPTION = (
    "One process; the throughput pipeline with the runtime's instruments on and off "
    "(alternating rounds), at the default batch size and at 16 items per batch. "
    "Target: metrics cost < 10% of throughput. Metrics: ns_per_item, items_per_s."
)

FULL_N = 1_000_000
QUICK_N = 300_000
WARMUP_N = 20_000
SMALL_BATCH = 16
MAX_COST = 0.10
"""The target: metrics on keeps at least 90% of the throughput with metrics off."""


def make_run(pm: Any, *, metrics_on: bool, batch_size: int | None) -> Callable[[int], int]:
    """One run of the throughput pipeline with the instruments switched on or off."""
    import headwater
    from headwater.core import metrics

    def run(n: int) -> int:
        model = headwater_model(n)
        model["name"] = f"bench-metrics-{'on' if metrics_on else 'off'}"
        if batch_size is not None:  # small chunks from the source, small batches after it
            model["batch_size"] = batch_size
            model["sources"]["numbers"]["params"]["chunk"] = batch_size
        previous = metrics.enabled()
        metrics.set_enabled(metrics_on)
        try:
            result = headwater.run_sync(model, plugins=pm)
        finally:
            metrics.set_enabled(previous)
        return int(result.output)

    return run


def _impl(name: str, fn: Callable[[int], int], n: int, description: str) -> Implementation:
    return Implementation(
        name,
        run=lambda: timed(lambda: fn(n)),
        warmup=lambda: Sample({}, fn(min(n, WARMUP_N))),
        description=description,
    )


def implementations(n: int) -> list[Implementation]:
    """On/off pairs, each pair next to each other in every round."""
    pm = bench_plugin_manager()
    small = f"{SMALL_BATCH} items per batch"
    return [
        _impl("metrics_on", make_run(pm, metrics_on=True, batch_size=None), n, "default batch"),
        _impl("metrics_off", make_run(pm, metrics_on=False, batch_size=None), n, "default batch"),
        _impl(
            "metrics_on_small_batches",
            make_run(pm, metrics_on=True, batch_size=SMALL_BATCH),
            n,
            small,
        ),
        _impl(
            "metrics_off_small_batches",
            make_run(pm, metrics_on=False, batch_size=SMALL_BATCH),
            n,
            small,
        ),
    ]


def _scrape_seconds() -> tuple[float, int] | None:
    """Median time of one Prometheus exposition of the default engine's metrics (the
    runs of this scenario), and its size in bytes."""
    from headwater.core.metrics import exposition, prometheus_registry

    try:
        registry = prometheus_registry()
        body, _ = exposition(None, registry)
    except ImportError:  # prometheus-client is not installed
        return None
    times = []
    for _ in range(20):
        start = time.perf_counter()
        exposition(None, registry)
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2], len(body)


def _cost_target(report: ScenarioReport, on: str, off: str, label: str) -> TargetResult:
    goal = f"< {MAX_COST:.0%}"
    ratio = report.ratio(on, off, "items_per_s")
    if ratio is None:
        return TargetResult(label, "n/a (not measured)", goal, None)
    cost = 1.0 - ratio
    cpu = report.ratio(on, off, "cpu_items_per_s")
    measured = f"{cost:+.1%} of throughput"
    if cpu is not None:
        measured += f" (cpu: {1.0 - cpu:+.1%})"
    return TargetResult(label, measured, goal, cost < MAX_COST)


def run(settings: Settings, progress: Progress) -> ScenarioReport:
    """Measure the on/off pairs; the target is the cost at the default batch size."""
    n = settings.pick_n(FULL_N, QUICK_N)
    rounds = settings.pick_rounds(full=9, quick=5)
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
        name="metrics",
        title=TITLE,
        params={"N": n, "rounds": rounds, "warm-up": warmup, "small batch": SMALL_BATCH},
        measured=measured,
        columns=[
            Column("ns_per_item", "ns/item", fmt_ns),
            Column("items_per_s", "items/s", fmt_rate, spread=False),
            Column("cpu_ns_per_item", "cpu ns/item", fmt_ns, spread=False),
        ],
        descriptions={i.name: i.description for i in impls},
        baseline="metrics_off",
        ratio_metric="items_per_s",
        ratio_header="speed vs metrics_off",
        show_descriptions=True,
    )
    report.targets = [
        _cost_target(report, "metrics_on", "metrics_off", "cost of metrics (default batch)"),
    ]
    small = report.ratio("metrics_on_small_batches", "metrics_off_small_batches", "items_per_s")
    if small is not None:
        report.notes.append(
            f"at {SMALL_BATCH} items per batch metrics cost {1.0 - small:+.1%} of throughput "
            "(per-batch costs weigh 16x more than at the default batch size)"
        )
    scrape = _scrape_seconds()
    if scrape is not None:
        seconds, size = scrape
        report.notes.append(
            f"one Prometheus scrape of this process (snapshot + exposition, {size:,} bytes) "
            f"takes {seconds * 1e3:.2f} ms"
        )
    report.notes.append(
        "'off' keeps the item and batch counters (run summaries need them); it drops the "
        "latency histograms, the end-to-end probes and the registration of runs"
    )
    report.notes.append(
        "costs are 1 - the median of per-round throughput ratios (on and off run back to "
        "back in every round); negative means on was faster (noise)"
    )
    return report
