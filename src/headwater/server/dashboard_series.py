"""The dashboard's charts over time: a bounded history of the engine's metrics.

:class:`MetricsSeries` samples the engine's metrics snapshot once a second while the
server runs and keeps, for the whole server, each pipeline and each stage, points at
three resolutions (:data:`RANGES`): the last minute at one point a second, the last 15
minutes at one point per 10 seconds and the last hour at one point a minute. A point
holds items per second (what a pipeline's sources produced; what a stage emitted), the
p50 and p99 latency of that interval (end to end for a pipeline, per batch for a stage,
interpolated from the histograms' buckets) and the queue depth (the largest seen in the
interval). Memory is bounded: a fixed number of points per series and of series.

Points are only made while the server samples, so a time the server was down is a gap
in the timestamps, which the page draws as a gap (never as a flat zero).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from headwater.core.metrics import LATENCY_BUCKETS

__all__ = ["MAX_SERIES", "RANGES", "MetricsSeries", "bucket_counts", "quantile"]

RANGES: Final[dict[str, tuple[float, int]]] = {
    "1m": (1.0, 60),
    "15m": (10.0, 90),
    "1h": (60.0, 60),
}
"""Range name -> (seconds per point, points kept)."""

MAX_SERIES: Final = 300
"""Series kept (the server's, then pipelines and stages as they appear)."""

SAMPLE_INTERVAL: Final = 1.0
"""Seconds between two samples of the metrics."""

_NBUCKETS: Final = len(LATENCY_BUCKETS) + 1


def quantile(
    q: float, counts: Sequence[int], bounds: Sequence[float] = LATENCY_BUCKETS
) -> float | None:
    """Estimate the ``q`` quantile from per-bucket (not cumulative) histogram counts.

    ``counts`` has one entry per bound plus the +Inf bucket, as
    :attr:`~headwater.core.metrics.Histogram.counts`. The value is interpolated linearly
    inside its bucket, like Prometheus' ``histogram_quantile``; a quantile falling in the
    +Inf bucket is reported as the largest finite bound. None when there is no
    observation.
    """
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    cumulative = 0
    for i, n in enumerate(counts):
        if n <= 0:
            continue
        if cumulative + n >= rank:
            if i >= len(bounds):
                return float(bounds[-1])
            lower = float(bounds[i - 1]) if i > 0 else 0.0
            upper = float(bounds[i])
            return lower + (upper - lower) * max(0.0, rank - cumulative) / n
        cumulative += n
    return float(bounds[-1])  # pragma: no cover - rank <= total always matches above


def bucket_counts(hist: Mapping[str, Any]) -> list[int]:
    """Per-bucket counts of a histogram as :meth:`Histogram.to_dict` exports it."""
    out: list[int] = []
    previous = 0
    for _, cumulative in hist.get("buckets", ()):
        out.append(max(0, int(cumulative) - previous))
        previous = int(cumulative)
    return out


@dataclass(slots=True)
class _Level:
    """One resolution of one series: its points and the interval being accumulated."""

    step: float
    points: deque[tuple[float, float, float | None, float | None, int]]
    bucket: float | None = None
    items: float = 0.0
    seconds: float = 0.0
    hist: list[int] = field(default_factory=lambda: [0] * _NBUCKETS)
    queue: int = 0

    def add(self, t: float, dt: float, items: int, hist: Sequence[int], queue: int) -> None:
        """Account ``items`` produced over the last ``dt`` seconds, ending at ``t``."""
        bucket = math.floor(t / self.step) * self.step
        if self.bucket is not None and bucket != self.bucket:
            self.flush()
        if self.bucket is None or bucket != self.bucket:
            self.bucket = bucket
        self.items += items
        self.seconds += dt
        for i, n in enumerate(hist[:_NBUCKETS]):
            self.hist[i] += n
        self.queue = max(self.queue, queue)

    def flush(self) -> None:
        """Close the interval being accumulated into a point."""
        if self.bucket is None or self.seconds <= 0:
            return
        self.points.append(
            (
                self.bucket,
                self.items / self.seconds,
                quantile(0.5, self.hist),
                quantile(0.99, self.hist),
                self.queue,
            )
        )
        self.bucket = None
        self.items = 0.0
        self.seconds = 0.0
        self.hist = [0] * _NBUCKETS
        self.queue = 0

    def view(self) -> list[tuple[float, float, float | None, float | None, int]]:
        """The closed points, oldest first."""
        return list(self.points)


class _Series:
    """One series (the server, a pipeline or a stage) at every resolution."""

    __slots__ = ("levels", "prev_hist", "prev_items")

    def __init__(self) -> None:
        self.levels = {
            name: _Level(step, deque(maxlen=size)) for name, (step, size) in RANGES.items()
        }
        self.prev_items: int | None = None
        self.prev_hist: list[int] | None = None

    def sample(self, t: float, dt: float, items: int, hist: Sequence[int], queue: int) -> None:
        """Add the change of the cumulative ``items`` and ``hist`` since the last sample."""
        if self.prev_items is None or self.prev_hist is None:
            self.prev_items, self.prev_hist = items, list(hist)
            return
        delta = max(0, items - self.prev_items)
        window = [max(0, a - b) for a, b in zip(hist, self.prev_hist, strict=False)]
        self.prev_items, self.prev_hist = items, list(hist)
        for level in self.levels.values():
            level.add(t, dt, delta, window, queue)


class MetricsSeries:
    """A bounded history of the server's, pipelines' and stages' figures."""

    def __init__(self) -> None:
        self._series: dict[str, _Series] = {}
        self._last: float | None = None

    def _get(self, key: str) -> _Series | None:
        found = self._series.get(key)
        if found is None and len(self._series) < MAX_SERIES:
            found = self._series[key] = _Series()
        return found

    def sample(self, snap: Mapping[str, Any], t: float) -> None:
        """Account one metrics snapshot taken at ``t`` (seconds since the epoch)."""
        last, self._last = self._last, t
        # a pause longer than a few samples (the server was stopped, the loop stalled)
        # is a gap: start the deltas again rather than spreading them over the pause
        dt = t - last if last is not None else 0.0
        if last is None or dt <= 0 or dt > 5 * SAMPLE_INTERVAL:
            for series in self._series.values():
                series.prev_items = None
            dt = SAMPLE_INTERVAL
        zero = [0] * _NBUCKETS
        total_items = 0
        total_hist = [0] * _NBUCKETS
        total_queue = 0
        per_pipeline: dict[str, list[Any]] = {}
        for stage in snap.get("stages", ()):
            pipeline = str(stage.get("pipeline"))
            name = str(stage.get("stage"))
            queue = int(stage.get("queue_depth", 0) or 0)
            out = int(stage.get("items_out", 0) or 0)
            entry = per_pipeline.setdefault(pipeline, [0, 0])
            if name.startswith("sources."):
                entry[0] += out
            entry[1] += queue
            stage_series = self._get(f"stage:{pipeline}/{name}")
            if stage_series is not None:
                hist = bucket_counts(stage.get("latency") or {}) or zero
                stage_series.sample(t, dt, out, hist, queue)
        for pipeline in snap.get("pipelines", ()):
            name = str(pipeline.get("pipeline"))
            items, queue = per_pipeline.get(name, (0, 0))
            hist = bucket_counts(pipeline.get("e2e_latency") or {}) or zero
            pipeline_series = self._get(f"pipeline:{name}")
            if pipeline_series is not None:
                pipeline_series.sample(t, dt, items, hist, queue)
            total_items += items
            total_queue += queue
            for i, n in enumerate(hist[:_NBUCKETS]):
                total_hist[i] += n
        server = self._get("total")
        if server is not None:
            server.sample(t, dt, total_items, total_hist, total_queue)

    def view(self, range_name: str, pipeline: str | None = None) -> dict[str, Any]:
        """The points of ``range_name`` (``1m``, ``15m``, ``1h``): the server's, every
        pipeline's and, with ``pipeline``, its stages'. Raises ``ValueError`` for an
        unknown range."""
        if range_name not in RANGES:
            raise ValueError(f"range: {range_name[:20]!r} is not one of {', '.join(RANGES)}")
        step, size = RANGES[range_name]
        out: dict[str, Any] = {}
        for key, series in self._series.items():
            if key.startswith("stage:") and (
                pipeline is None or not key.startswith(f"stage:{pipeline}/")
            ):
                continue
            points = series.levels[range_name].view()
            out[key] = {
                "t": [p[0] for p in points],
                "items": [round(p[1], 3) for p in points],
                "p50": [p[2] for p in points],
                "p99": [p[3] for p in points],
                "queue": [p[4] for p in points],
            }
        return {
            "range": range_name,
            "step": step,
            "span": step * size,
            "now": self._last,
            "pipeline": pipeline,
            "series": out,
        }
