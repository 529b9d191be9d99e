"""``expr``: the cost of an expression against the same step with a Python function.

Three workloads, each measured with an importable ``fn`` and with the equivalent ``expr``,
all six alternating within every round:

* ``ints``: the throughput pipeline, ``range(N) -> map -> filter -> sum``, with
  ``benchmarks.fns:double`` / ``not_div3`` against ``expr: "item * 2"`` /
  ``"item % 3 != 0"`` (the ``%`` and ``*`` guards of expressions are on this path);
* ``records``: ``iterable(N log records) -> filter -> null``, with
  ``benchmarks.fns:slow_error`` against ``expr: "level == 'ERROR' and latency > 0.5"``
  (names read from a mapping item);
* ``loop``: the fused loop alone, ``list(filter(f, records))``, where ``f`` is the
  function or the compiled expression: the per-item cost without the pipeline around it.

Every implementation checks its own result against a reference computed once beforehand
and returns whether it matched, so the harness's comparison catches a wrong answer.
Target: each ``expr`` variant keeps at least half the items/s of its ``fn`` variant.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..fns import expected_sum, records, slow_error
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
from .throughput import bench_plugin_manager, per_item_derive

TITLE = "expressions vs Python functions: filter/map with expr against the same step with fn"
DESCRIPTION = (
    "One process; the throughput pipeline, a filter of log records, and the bare fused "
    "loop, each with an importable fn and with the equivalent expr (alternating rounds). "
    "Target: expr items/s >= 0.5x fn. Metrics: ns_per_item, items_per_s."
)

FULL_N = 500_000
QUICK_N = 100_000
WARMUP_N = 10_000
MIN_RATIO = 0.5
"""The target: an expression keeps at least half the speed of the function (within 2x)."""

RECORD_EXPR = "level == 'ERROR' and latency > 0.5"
INT_STEPS = {
    "fn": [
        {"transformer": "map", "params": {"fn": "benchmarks.fns:double"}},
        {"transformer": "filter", "params": {"fn": "benchmarks.fns:not_div3"}},
    ],
    "expr": [
        {"transformer": "map", "params": {"expr": "item * 2"}},
        {"transformer": "filter", "params": {"expr": "item % 3 != 0"}},
    ],
}
RECORD_STEPS = {
    "fn": [{"transformer": "filter", "params": {"fn": "benchmarks.fns:slow_error"}}],
    "expr": [{"transformer": "filter", "params": {"expr": RECORD_EXPR}}],
}


def _ints(pm: Any, variant: str) -> Callable[[int], bool]:
    import headwater

    def run(n: int) -> bool:
        model = {
            "name": f"bench-expr-ints-{variant}",
            "sources": {"numbers": {"action": "range", "params": {"stop": n}}},
            "steps": INT_STEPS[variant],
            "sinks": [{"sink": "bench.sum"}],
        }
        return int(headwater.run_sync(model, plugins=pm).output) == expected_sum(n)

    return run


def _records(pm: Any, variant: str, data: list[dict[str, object]]) -> Callable[[int], bool]:
    import headwater

    def run(n: int) -> bool:
        items = data[:n]
        model = {
            "name": f"bench-expr-records-{variant}",
            "sources": {"logs": {"action": "iterable", "params": {"items": items}}},
            "steps": RECORD_STEPS[variant],
            "sinks": [{"sink": "null"}],
        }
        return int(headwater.run_sync(model, plugins=pm).output) == _expected_count(items)

    return run


def _loop(variant: str, data: list[dict[str, object]]) -> Callable[[int], bool]:
    from headwater import Expression

    def run(n: int) -> bool:
        items = data[:n]
        fn = slow_error if variant == "fn" else Expression(RECORD_EXPR).fn
        return len(list(filter(fn, items))) == _expected_count(items)

    return run


_COUNTS: dict[int, int] = {}


def _expected_count(items: list[dict[str, Any]]) -> int:
    """How many records the filter keeps, counted once per size outside the timing."""
    if len(items) not in _COUNTS:
        _COUNTS[len(items)] = sum(1 for r in items if r["level"] == "ERROR" and r["latency"] > 0.5)
    return _COUNTS[len(items)]


def _impl(name: str, fn: Callable[[int], bool], n: int, description: str) -> Implementation:
    return Implementation(
        name,
        run=lambda: timed(lambda: fn(n)),
        warmup=lambda: Sample({}, fn(min(n, WARMUP_N))),
        description=description,
    )


def implementations(n: int) -> list[Implementation]:
    """Each workload with fn, then with expr."""
    pm = bench_plugin_manager()
    data = records(n)
    for size in (n, min(n, WARMUP_N)):
        _expected_count(data[:size])
    return [
        _impl("ints_fn", _ints(pm, "fn"), n, "range -> map(fn) -> filter(fn) -> sum"),
        _impl("ints_expr", _ints(pm, "expr"), n, "range -> map(expr) -> filter(expr) -> sum"),
        _impl("records_fn", _records(pm, "fn", data), n, "iterable -> filter(fn) -> null"),
        _impl("records_expr", _records(pm, "expr", data), n, "iterable -> filter(expr) -> null"),
        _impl("loop_fn", _loop("fn", data), n, "list(filter(fn, records))"),
        _impl("loop_expr", _loop("expr", data), n, "list(filter(expr.fn, records))"),
    ]


def run(settings: Settings, progress: Progress) -> ScenarioReport:
    """Measure the six implementations; targets are expr/fn ratios of items_per_s."""
    n = settings.pick_n(FULL_N, QUICK_N)
    rounds = settings.pick_rounds(full=7, quick=3)
    warmup = settings.pick_warmup(1)
    impls = implementations(n)
    measured = measure(
        impls,
        rounds=rounds,
        warmup=warmup,
        derive=per_item_derive(n),
        expected=True,
        progress=progress,
    )
    report = ScenarioReport(
        name="expr",
        title=TITLE,
        params={"N": n, "rounds": rounds, "warm-up": warmup},
        measured=measured,
        columns=[
            Column("ns_per_item", "ns/item", fmt_ns),
            Column("items_per_s", "items/s", fmt_rate, spread=False),
            Column("cpu_ns_per_item", "cpu ns/item", fmt_ns, spread=False),
        ],
        descriptions={i.name: i.description for i in impls},
        show_descriptions=True,
    )
    report.targets = [
        report.target_ratio(
            f"{work}_expr", f"{work}_fn", "items_per_s", MIN_RATIO, also="cpu_items_per_s"
        )
        for work in ("ints", "records", "loop")
    ]
    for work in ("ints", "records", "loop"):
        ratio = report.ratio(f"{work}_expr", f"{work}_fn", "ns_per_item")
        if ratio is not None:
            report.notes.append(f"{work}: expr takes {ratio:.2f}x the time of fn per item")
    report.notes.append("every implementation matched its reference result in every round")
    return report
