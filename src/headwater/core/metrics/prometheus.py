"""Prometheus: the collector that turns snapshots into metric families, and exposition.

:class:`HeadwaterCollector` converts a registry snapshot into one family per metric of
the catalogue at scrape time, so counts are exact and nothing is done between scrapes;
:func:`prometheus_registry` builds a ``CollectorRegistry`` around one and
:func:`exposition` renders it (``headwater serve``'s ``/metrics``, the ``prometheus``
exporter's own HTTP server). ``prometheus-client`` is imported when used, never when this
module is.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .catalogue import METRICS, collect_samples
from .exporting import SnapshotFn
from .registry import snapshot

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

__all__ = ["HeadwaterCollector", "exposition", "prometheus_registry", "require_prometheus"]

_PROMETHEUS_HINT = (
    "the Prometheus exporter needs prometheus-client: pip install prometheus-client "
    "(or the headwater extra that provides it)"
)


def require_prometheus() -> None:
    """Raise ``ImportError`` with the install hint when ``prometheus-client`` is missing."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError as exc:
        raise ImportError(_PROMETHEUS_HINT) from exc


def _le(bound: Any) -> str:
    return "+Inf" if bound == "+Inf" else repr(float(bound))


class HeadwaterCollector:
    """A ``prometheus_client`` collector: converts a snapshot into metric families at
    scrape time, so counts are exact and exporting costs nothing between scrapes.

    ``snapshot_fn`` is an engine's ``engine.metrics.snapshot`` (default: the default
    engine's, for scripts). Register it wherever Prometheus metrics are served, e.g. into
    an application's own registry:
    ``prometheus_client.REGISTRY.register(HeadwaterCollector(engine.metrics.snapshot))``.
    """

    def __init__(self, snapshot_fn: SnapshotFn | None = None) -> None:
        require_prometheus()
        self.snapshot_fn: SnapshotFn = snapshot_fn if snapshot_fn is not None else snapshot

    def describe(self) -> list[Metric]:
        """Nothing: keeps registration from taking a snapshot (no duplicate checks)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """One family per metric of :data:`METRICS` (families without samples too)."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        samples = collect_samples(self.snapshot_fn())
        for m in METRICS:
            series = samples[m.name]
            labels = list(m.labels)
            if m.type == "counter":
                counter = CounterMetricFamily(m.name, m.help, labels=labels, unit=m.unit)
                for values, value in series.items():
                    counter.add_metric(list(values), value)
                yield counter
            elif m.type == "gauge":
                gauge = GaugeMetricFamily(m.name, m.help, labels=labels, unit=m.unit)
                for values, value in series.items():
                    gauge.add_metric(list(values), value)
                yield gauge
            else:
                hist = HistogramMetricFamily(m.name, m.help, labels=labels, unit=m.unit)
                for values, h in series.items():
                    buckets = [(_le(le), float(n)) for le, n in h["buckets"]]
                    hist.add_metric(list(values), buckets, float(h["sum"]))
                yield hist


def prometheus_registry(
    snapshot_fn: SnapshotFn | None = None, *, process_metrics: bool = True
) -> CollectorRegistry:
    """A new ``CollectorRegistry`` with a :class:`HeadwaterCollector` and, if asked, the
    process, platform and garbage-collector metrics of ``prometheus_client``."""
    require_prometheus()
    from prometheus_client import (
        GCCollector,
        PlatformCollector,
        ProcessCollector,
    )
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(HeadwaterCollector(snapshot_fn))
    if process_metrics:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry


def exposition(accept: str | None, registry: CollectorRegistry) -> tuple[bytes, str]:
    """``registry``'s metrics (see :func:`prometheus_registry`) in the Prometheus text
    format, or OpenMetrics when the ``Accept`` header asks for it: ``(body, content
    type)``. Used by ``headwater serve`` for ``/metrics``. Raises ``ImportError`` (with
    the install hint) without ``prometheus-client``."""
    require_prometheus()
    from prometheus_client.exposition import choose_encoder

    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
