"""The measuring machinery every scenario shares.

A scenario declares :class:`Implementation` objects (one callable per round each) and
hands them to :func:`measure`, which

* runs one warm-up round of every implementation,
* then ``rounds`` rounds, *alternating* implementations within each round
  (A B C A B C ...): this machine's speed drifts within seconds, and interleaving puts
  every implementation under the same drift instead of giving one the fast seconds,
* checks after every call that each comparable implementation produced the same result
  as the first one (a :class:`ResultMismatch` aborts the scenario),
* and summarises every metric as median, min and max.

:class:`ScenarioReport` is what a scenario returns: the summaries, the table layout,
the ratio baseline and the targets; :func:`render` prints it, :func:`to_json` gives the
``{"IMPLEMENTATION": {"METRIC": number}}`` part of the ``--json`` file.
"""

from __future__ import annotations

import gc
import importlib.util
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Column",
    "Implementation",
    "Measured",
    "ResultMismatch",
    "Sample",
    "ScenarioReport",
    "Settings",
    "Stat",
    "TargetResult",
    "available",
    "children_cpu_seconds",
    "fmt_bytes",
    "fmt_count",
    "fmt_ns",
    "fmt_rate",
    "fmt_seconds",
    "measure",
    "render",
    "timed",
    "to_json",
]


@dataclass(frozen=True, slots=True)
class Settings:
    """Command-line choices every scenario honours.

    ``None`` means "the scenario's default for this mode"; the options exist so that
    the smoke test can run a scenario in a tiny mode.
    """

    quick: bool = False
    rounds: int | None = None
    warmup: int | None = None
    n: int | None = None
    plugins: int | None = None

    def pick_rounds(self, full: int, quick: int) -> int:
        """Measured rounds: ``--rounds`` if given, else the full or quick default."""
        return max(1, self.rounds if self.rounds is not None else (quick if self.quick else full))

    def pick_warmup(self, default: int = 1) -> int:
        """Warm-up rounds: ``--warmup`` if given, else ``default``."""
        return max(0, self.warmup if self.warmup is not None else default)

    def pick_n(self, full: int, quick: int) -> int:
        """Item count: ``--n`` if given, else the full or quick default."""
        return max(1, self.n if self.n is not None else (quick if self.quick else full))


@dataclass(slots=True)
class Sample:
    """One call of one implementation: its metrics and the result to compare."""

    metrics: dict[str, float]
    result: Any = None


@dataclass(slots=True)
class Implementation:
    """One contender of a scenario.

    ``run`` performs one measured round and returns a :class:`Sample`; ``warmup`` (if
    given) is called instead of ``run`` for the warm-up rounds, e.g. on a smaller input.
    ``requires`` lists importable modules: if one is missing the implementation is
    skipped with a note. Only implementations with ``compare=True`` take part in the
    result check.
    """

    name: str
    run: Callable[[], Sample]
    description: str = ""
    requires: tuple[str, ...] = ()
    warmup: Callable[[], Sample] | None = None
    compare: bool = True


_NO_EXPECTATION: Any = object()


class ResultMismatch(Exception):
    """Two implementations disagreed: the scenario's numbers would be meaningless."""


@dataclass(frozen=True, slots=True)
class Stat:
    """Median, min and max of one metric over the measured rounds."""

    median: float
    min: float
    max: float
    rounds: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        """Summarise ``values`` (at least one)."""
        return cls(statistics.median(values), min(values), max(values), len(values))


@dataclass(slots=True)
class Measured:
    """What :func:`measure` returns."""

    stats: dict[str, dict[str, Stat]]
    """Implementation -> metric -> summary over the measured rounds."""
    samples: dict[str, list[dict[str, float]]]
    """Implementation -> the metrics of each measured round, in round order."""
    skipped: dict[str, str]
    """Implementations left out (a peer is not installed) -> why."""


@dataclass(frozen=True, slots=True)
class Column:
    """One metric shown in a scenario's table, with its formatter."""

    metric: str
    header: str
    fmt: Callable[[float], str]
    spread: bool = True
    """Show ``min..max`` next to the median."""


@dataclass(frozen=True, slots=True)
class TargetResult:
    """A target from ``benchmarks/README.md`` and whether this run met it."""

    label: str
    measured: str
    goal: str
    met: bool | None
    """None when it could not be evaluated (a peer is not installed)."""


@dataclass(slots=True)
class ScenarioReport:
    """Everything a scenario measured, ready to print and to write as JSON."""

    name: str
    title: str
    params: dict[str, Any]
    measured: Measured
    columns: list[Column]
    descriptions: dict[str, str] = field(default_factory=dict)
    baseline: str | None = None
    ratio_metric: str | None = None
    ratio_header: str = ""
    targets: list[TargetResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    show_descriptions: bool = False
    """Add a column with each implementation's description (when rows measure different
    things, as in ``first-item``)."""

    @property
    def stats(self) -> dict[str, dict[str, Stat]]:
        """Implementation -> metric -> summary."""
        return self.measured.stats

    @property
    def skipped(self) -> dict[str, str]:
        """Implementations that were not run, and why."""
        return self.measured.skipped

    def median(self, impl: str, metric: str) -> float | None:
        """The median of ``metric`` for ``impl``, or None if it was not measured."""
        stat = self.stats.get(impl, {}).get(metric)
        return None if stat is None else stat.median

    def ratio(self, impl: str, other: str, metric: str) -> float | None:
        """``impl / other`` for ``metric``: the median of the per-round ratios.

        Each round measures ``impl`` and ``other`` within seconds of each other, so the
        per-round ratio cancels most of the machine's drift; its median is steadier than
        the ratio of the two medians (used only when the rounds do not pair up). None if
        either was not measured.
        """
        rows_a = self.measured.samples.get(impl, [])
        rows_b = self.measured.samples.get(other, [])
        if rows_a and len(rows_a) == len(rows_b):
            pairs = [
                a[metric] / b[metric]
                for a, b in zip(rows_a, rows_b, strict=True)
                if metric in a and metric in b and b[metric] != 0
            ]
            if len(pairs) == len(rows_a):
                return statistics.median(pairs)
        a_med = self.median(impl, metric)
        b_med = self.median(other, metric)
        if a_med is None or b_med is None or b_med == 0:
            return None
        return a_med / b_med

    def target_ratio(
        self, impl: str, other: str, metric: str, at_least: float, also: str | None = None
    ) -> TargetResult:
        """A ``impl >= at_least x other`` target on ``metric`` (higher is better).

        ``also`` names a second metric whose ratio is shown next to it for information
        (e.g. the CPU-time figure when the machine is busy); only ``metric`` decides.
        """
        label = f"{impl} vs {other} ({metric})"
        goal = f">= {at_least:g}x"
        value = self.ratio(impl, other, metric)
        if value is None:
            missing = other if other in self.skipped or other not in self.stats else impl
            return TargetResult(label, f"n/a ({missing} not measured)", goal, None)
        measured = f"{value:.2f}x"
        extra = None if also is None else self.ratio(impl, other, also)
        if extra is not None:
            measured += f" ({also}: {extra:.2f}x)"
        return TargetResult(label, measured, goal, value >= at_least)

    def target_ratio_below(self, impl: str, other: str, metric: str, below: float) -> TargetResult:
        """A ``impl < below x other`` target on ``metric`` (lower is better)."""
        label = f"{impl} vs {other} ({metric})"
        goal = f"< {below:g}x"
        value = self.ratio(impl, other, metric)
        if value is None:
            return TargetResult(label, "n/a (not measured)", goal, None)
        return TargetResult(label, f"{value:.2f}x", goal, value < below)

    def target_below(
        self, label: str, impl: str, metric: str, limit: float, fmt: Callable[[float], str]
    ) -> TargetResult:
        """A ``median(impl, metric) < limit`` target (lower is better)."""
        value = self.median(impl, metric)
        goal = f"< {fmt(limit)}"
        if value is None:
            return TargetResult(label, f"n/a ({impl} not measured)", goal, None)
        return TargetResult(label, fmt(value), goal, value < limit)


def available(module: str) -> bool:
    """True when ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def timed(fn: Callable[[], Any]) -> Sample:
    """Call ``fn`` once after a garbage collection.

    Metrics: ``seconds`` (wall) and ``cpu_seconds`` (this process's CPU time, which other
    processes competing for the CPU do not inflate).
    """
    gc.collect()
    cpu = time.process_time()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu
    return Sample({"seconds": seconds, "cpu_seconds": cpu_seconds}, result)


def children_cpu_seconds() -> float | None:
    """CPU time (user + system) of every child process reaped so far; None if unknown.

    The difference across one ``subprocess.run`` is that child's CPU time.
    """
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _check(
    reference: tuple[str, Any] | None, impl: Implementation, sample: Sample, phase: str
) -> tuple[str, Any] | None:
    if not impl.compare:
        return reference
    if reference is None:
        return (impl.name, sample.result)
    ref_name, ref_result = reference
    if sample.result != ref_result:
        raise ResultMismatch(
            f"{impl.name} produced {sample.result!r} but {ref_name} produced {ref_result!r} "
            f"({phase})"
        )
    return reference


def measure(
    impls: Iterable[Implementation],
    *,
    rounds: int,
    warmup: int = 1,
    derive: Callable[[dict[str, float]], dict[str, float]] | None = None,
    expected: Any = _NO_EXPECTATION,
    progress: Callable[[str], None] | None = None,
) -> Measured:
    """Run the implementations alternately and summarise each metric.

    ``derive`` maps one sample's metrics to the full metric set (e.g. adds
    ``ns_per_item`` from ``seconds``); it is applied per sample, before summarising.
    ``expected``, when given, is the result every comparable implementation must produce
    in the measured rounds (on top of agreeing with each other).
    Implementations whose ``requires`` are not importable are skipped, with the reason.
    Raises :class:`ResultMismatch` as soon as two results differ.
    """
    active: list[Implementation] = []
    skipped: dict[str, str] = {}
    for impl in impls:
        missing = [m for m in impl.requires if not available(m)]
        if missing:
            skipped[impl.name] = f"not installed: {', '.join(missing)}"
        else:
            active.append(impl)
    samples: dict[str, list[dict[str, float]]] = {impl.name: [] for impl in active}
    reference: tuple[str, Any] | None = None
    for w in range(warmup):
        for impl in active:
            if progress is not None:
                progress(f"warm-up {w + 1}/{warmup}: {impl.name}")
            sample = (impl.warmup or impl.run)()
            # warm-ups may run on a smaller input: compare them among themselves only
            if impl.warmup is None:
                reference = _check(reference, impl, sample, "warm-up")
    round_ref: tuple[str, Any] | None = None
    if expected is not _NO_EXPECTATION:
        round_ref = ("the reference computation", expected)
    for r in range(rounds):
        for impl in active:
            if progress is not None:
                progress(f"round {r + 1}/{rounds}: {impl.name}")
            sample = impl.run()
            round_ref = _check(round_ref, impl, sample, f"round {r + 1}")
            metrics = derive(sample.metrics) if derive is not None else sample.metrics
            samples[impl.name].append(metrics)
    stats: dict[str, dict[str, Stat]] = {}
    for name, rows in samples.items():
        if not rows:
            continue
        keys = list(rows[0])
        stats[name] = {k: Stat.of([row[k] for row in rows]) for k in keys}
    return Measured(stats, samples, skipped)


# -- formatting ------------------------------------------------------------------------


def fmt_seconds(value: float) -> str:
    """``0.0123`` -> ``12.3 ms``."""
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.1f} ms"
    return f"{value * 1e6:.0f} us"


def fmt_ns(value: float) -> str:
    """Nanoseconds per item."""
    return f"{value:,.0f} ns" if value >= 100 else f"{value:.1f} ns"


def fmt_rate(value: float) -> str:
    """Items (or messages) per second."""
    if value >= 1e6:
        return f"{value / 1e6:.2f} M/s"
    if value >= 1e3:
        return f"{value / 1e3:.1f} k/s"
    return f"{value:.0f} /s"


def fmt_bytes(value: float) -> str:
    """Bytes, in decimal megabytes (the unit of the README's targets)."""
    return f"{value / 1e6:.1f} MB"


def fmt_count(value: float) -> str:
    """A plain count."""
    return f"{value:,.0f}"


def _cell(stat: Stat | None, column: Column) -> str:
    if stat is None:
        return "-"
    text = column.fmt(stat.median)
    if column.spread and stat.rounds > 1:
        text += f" [{column.fmt(stat.min)} .. {column.fmt(stat.max)}]"
    return text


def render(report: ScenarioReport) -> str:
    """The scenario's table, targets and notes as plain text."""
    lines: list[str] = []
    params = ", ".join(
        f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in report.params.items()
    )
    lines.append(f"== {report.name}: {report.title}")
    if params:
        lines.append(f"   {params}")
    header = ["implementation", *(c.header for c in report.columns)]
    if report.show_descriptions:
        header.insert(1, "what")
    use_ratio = report.baseline is not None and report.ratio_metric is not None
    if use_ratio:
        header.append(report.ratio_header or f"vs {report.baseline}")
    rows: list[list[str]] = []
    for impl, metrics in report.stats.items():
        row = [impl, *(_cell(metrics.get(c.metric), c) for c in report.columns)]
        if report.show_descriptions:
            row.insert(1, report.descriptions.get(impl, ""))
        if use_ratio:
            assert report.baseline is not None
            assert report.ratio_metric is not None
            value = report.ratio(impl, report.baseline, report.ratio_metric)
            row.append("-" if value is None else f"{value:.2f}x")
        rows.append(row)
    for impl, reason in report.skipped.items():
        rows.append([impl, f"skipped ({reason})", *([""] * (len(header) - 2))])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    left = 2 if report.show_descriptions else 1

    def line(cells: list[str]) -> str:
        out = [c.ljust(w) for c, w in zip(cells[:left], widths[:left], strict=True)]
        out += [
            c.rjust(w) if c else " " * w for c, w in zip(cells[left:], widths[left:], strict=True)
        ]
        return "  ".join(out).rstrip()

    lines.append(line(header))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(line(r) for r in rows)
    if any(c.spread for c in report.columns):
        lines.append("(median [min .. max] over the measured rounds)")
    if report.targets:
        lines.append("targets:")
        for t in report.targets:
            mark = {True: "MET", False: "NOT MET", None: "n/a"}[t.met]
            lines.append(f"  [{mark:^7}] {t.label}: {t.measured} (target {t.goal})")
    for note in report.notes:
        lines.append(f"note: {note}")
    for impl, reason in report.skipped.items():
        lines.append(f"note: {impl} skipped: {reason}")
    return "\n".join(lines)


def to_json(report: ScenarioReport) -> dict[str, dict[str, float]]:
    """``{"IMPLEMENTATION": {"METRIC": median, "METRIC_min": ..., "METRIC_max": ...}}``."""
    out: dict[str, dict[str, float]] = {}
    for impl, metrics in report.stats.items():
        entry: dict[str, float] = {}
        for name, stat in metrics.items():
            entry[name] = stat.median
            entry[f"{name}_min"] = stat.min
            entry[f"{name}_max"] = stat.max
        if metrics:
            entry["rounds"] = next(iter(metrics.values())).rounds
        out[impl] = entry
    return out
