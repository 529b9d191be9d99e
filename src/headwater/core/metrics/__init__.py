"""Metrics kept by the core, cheap enough to stay on, and what exports them.

* :mod:`.registry`: :class:`MetricsRegistry` (one per :class:`~headwater.Engine`), the
  counters and histograms the runtime updates per batch, and snapshots of them;
* :mod:`.exporting`: exporters (:class:`MetricsExporter`), built from their components
  (:func:`create_exporter`, :func:`build_exporters`) and run around a block
  (:func:`running_exporters`);
* :mod:`.catalogue`: :data:`METRICS`, every exported metric with its help text, and
  :func:`collect_samples` (a snapshot as samples of those metrics);
* :mod:`.prometheus`: :class:`HeadwaterCollector`, :func:`prometheus_registry` and
  :func:`exposition` (``prometheus-client`` is imported when used);
* :mod:`.config`: :class:`MetricsConfig` and :class:`ExporterEntry`, the ``metrics``
  section of a configuration (pydantic models).

The registry and exporting names are imported with this package (the runtime needs
them); the others are resolved on first use, so importing the runtime stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .exporting import (
    MetricsExporter,
    SnapshotFn,
    build_exporters,
    create_exporter,
    running_exporters,
    start_exporter,
    stop_exporter,
)
from .registry import (
    ENV_VAR,
    LATENCY_BUCKETS,
    Histogram,
    MetricsRegistry,
    Probe,
    RunMetricsSource,
    enabled,
    metrics_registry,
    set_enabled,
    snapshot,
)

if TYPE_CHECKING:
    from .catalogue import METRICS, Labels, MetricDef, MetricType, Samples, collect_samples
    from .config import ExporterEntry, MetricsConfig
    from .prometheus import (
        HeadwaterCollector,
        exposition,
        prometheus_registry,
        require_prometheus,
    )

_LAZY: dict[str, str] = {
    "METRICS": "catalogue",
    "Labels": "catalogue",
    "MetricDef": "catalogue",
    "MetricType": "catalogue",
    "Samples": "catalogue",
    "collect_samples": "catalogue",
    "ExporterEntry": "config",
    "MetricsConfig": "config",
    "HeadwaterCollector": "prometheus",
    "exposition": "prometheus",
    "prometheus_registry": "prometheus",
    "require_prometheus": "prometheus",
}

__all__ = [
    "ENV_VAR",
    "LATENCY_BUCKETS",
    "METRICS",
    "ExporterEntry",
    "HeadwaterCollector",
    "Histogram",
    "Labels",
    "MetricDef",
    "MetricType",
    "MetricsConfig",
    "MetricsExporter",
    "MetricsRegistry",
    "Probe",
    "RunMetricsSource",
    "Samples",
    "SnapshotFn",
    "build_exporters",
    "collect_samples",
    "create_exporter",
    "enabled",
    "exposition",
    "metrics_registry",
    "prometheus_registry",
    "require_prometheus",
    "running_exporters",
    "set_enabled",
    "snapshot",
    "start_exporter",
    "stop_exporter",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
