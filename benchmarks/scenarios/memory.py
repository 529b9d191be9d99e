"""``memory``: peak RSS of a long stream, with a fast and with a slow sink.

Each measurement is a fresh child process (``python -m benchmarks._child``) that does
the work and then reads its own peak RSS (see :func:`benchmarks._child.peak_rss_bytes`).
Bounded channels must keep the peak flat however many items flow: ``headwater``
(N items) should sit next to ``headwater_one_item`` (the same pipeline with one item:
the fixed footprint of pydantic, anyio and the plugins), and the slow sink (1 ms per
batch) must not let items pile up in front of it.
"""

from __future__ import annotations

from collections.abc import Callable

from .._child import kept_count
from ..harness import (
    Column,
    Implementation,
    ResultMismatch,
    Sample,
    ScenarioReport,
    Settings,
    available,
    fmt_bytes,
    fmt_seconds,
    measure,
)
from ..procs import run_json_child
from . import Progress

TITLE = "peak RSS of range -> map -> filter -> sink, fresh process each"
DESCRIPTION = (
    "Peak RSS (VmHWM, or ru_maxrss off Linux) of headwater streaming N items into the "
    "null sink and into a sink sleeping 1 ms per batch, next to a bare interpreter, a "
    "bare `import headwater`, the same pipeline with one item, and a plain loop doing the "
    "same work."
)

FULL_N = 10_000_000
QUICK_N = 2_000_000
RSS_LIMIT = 100e6
"""Target: peak RSS below 100 MB (decimal) for both variants."""


def _child(work: str, n: int, expected: int | None) -> Callable[[], Sample]:
    def run() -> Sample:
        data = run_json_child(["-m", "benchmarks._child", work, str(n)])
        result = data["result"]
        if expected is not None and result != expected:
            raise ResultMismatch(f"{work} delivered {result!r} items, expected {expected!r}")
        return Sample(
            {"rss_bytes": float(data["rss_bytes"]), "seconds": float(data["seconds"])}, result
        )

    return run


def run(settings: Settings, progress: Progress) -> ScenarioReport:
    """Measure peak RSS of every variant; targets: both headwater variants < 100 MB."""
    if not available("resource"):
        raise RuntimeError("the memory scenario needs the 'resource' module (POSIX only)")
    n = settings.pick_n(FULL_N, QUICK_N)
    rounds = settings.pick_rounds(full=3, quick=2)
    warmup = settings.pick_warmup(0)
    kept = kept_count(n)
    impls = [
        Implementation(
            "python_bare",
            _child("python_bare", 0, None),
            compare=False,
            description="interpreter only",
        ),
        Implementation(
            "import_headwater",
            _child("import_headwater", 0, None),
            compare=False,
            description="import headwater",
        ),
        Implementation(
            "headwater_one_item",
            _child("headwater", 1, None),
            compare=False,
            description="the pipeline with 1 item (fixed footprint)",
        ),
        Implementation("headwater", _child("headwater", n, None), description="null sink"),
        Implementation(
            "headwater_slow_sink",
            _child("headwater_slow_sink", n, kept),
            compare=False,
            description="sink sleeping 1 ms per batch",
        ),
        Implementation(
            "plain_loop", _child("plain_loop", n, None), description="for-loop, same work"
        ),
    ]
    measured = measure(impls, rounds=rounds, warmup=warmup, expected=kept, progress=progress)
    report = ScenarioReport(
        name="memory",
        title=TITLE,
        params={"N": n, "rounds": rounds, "slow sink delay": "1 ms/batch"},
        measured=measured,
        columns=[
            Column("rss_bytes", "peak RSS", fmt_bytes),
            Column("seconds", "work time", fmt_seconds, spread=False),
        ],
        descriptions={i.name: i.description for i in impls},
        baseline="import_headwater",
        ratio_metric="rss_bytes",
        ratio_header="RSS vs import_headwater",
    )
    report.targets = [
        report.target_below(
            f"headwater peak RSS, {n:,} items", "headwater", "rss_bytes", RSS_LIMIT, fmt_bytes
        ),
        report.target_below(
            f"headwater_slow_sink peak RSS, {n:,} items",
            "headwater_slow_sink",
            "rss_bytes",
            RSS_LIMIT,
            fmt_bytes,
        ),
    ]
    base = report.median("headwater_one_item", "rss_bytes")
    for impl in ("headwater", "headwater_slow_sink"):
        value = report.median(impl, "rss_bytes")
        if base is not None and value is not None:
            report.notes.append(
                f"{impl}: {fmt_bytes(value - base)} above the same pipeline with one item "
                f"(flat memory means close to 0)"
            )
    if n < FULL_N:
        report.notes.append(
            f"the RSS targets are defined for {FULL_N:,} items; this run used {n:,}"
        )
    return report
