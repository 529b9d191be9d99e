"""Built-in metrics exporters: Prometheus, JSON lines and OpenTelemetry.

Every exporter reads its snapshot function (an engine's ``engine.metrics.snapshot``) when
it exports, never before: the core keeps plain per-batch counters and nothing here adds
work per item.

* ``prometheus`` serves ``/metrics`` from its own HTTP server (``prometheus-client``),
  with the core's :class:`~headwater.core.metrics.HeadwaterCollector`;
* ``jsonl`` appends one snapshot per line to a file every ``interval`` seconds, and a
  last one when it stops (so a batch run's final counts are always written);
* ``otel`` feeds OpenTelemetry observable instruments (needs ``headwater[otel]``).

The metric catalogue (:data:`~headwater.core.metrics.METRICS`), the Prometheus collector
and exposition, the ``metrics`` configuration section and exporter building live in
:mod:`headwater.core.metrics`; their names are re-exported here for existing imports.
"""

from __future__ import annotations

import importlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

import headwater
from headwater.core.metrics import SnapshotFn
from headwater.core.metrics import build_exporters as _build_exporters
from headwater.core.metrics.catalogue import METRICS, MetricDef, Samples, collect_samples
from headwater.core.metrics.config import ExporterEntry, MetricsConfig
from headwater.core.metrics.prometheus import (
    HeadwaterCollector,
    exposition,
    prometheus_registry,
    require_prometheus,
)
from headwater.core.net import is_loopback

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from headwater.core.components import Component
    from headwater.core.plugins import PluginManager

__all__ = [
    "METRICS",
    "PLUGIN_NAME",
    "ExporterEntry",
    "HeadwaterCollector",
    "JsonlExporter",
    "JsonlExporterParams",
    "MetricDef",
    "MetricsConfig",
    "OpenTelemetryExporter",
    "OtelExporterParams",
    "PrometheusExporter",
    "PrometheusExporterParams",
    "build_exporters",
    "collect_samples",
    "exposition",
    "prometheus_registry",
]

log = logging.getLogger("headwater.exporters")

_STRICT = ConfigDict(extra="forbid")

# ---------------------------------------------------------------------------------------
# Prometheus
# ---------------------------------------------------------------------------------------


class PrometheusExporterParams(BaseModel):
    """Params of the ``prometheus`` exporter."""

    model_config = _STRICT

    port: int = Field(ge=0, le=65535, description="Port to serve /metrics on (0: any free port).")
    host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address to bind. Anything but loopback exposes the metrics (pipeline "
        "and stream names) to the network, without authentication.",
    )
    process_metrics: bool = Field(
        True, description="Also export process_* (CPU, memory, fds) and python_* metrics."
    )


@headwater.exporter("prometheus", params=PrometheusExporterParams)
class PrometheusExporter:
    """Serve every metric at ``http://HOST:PORT/metrics`` for Prometheus to scrape.

    The figures are read from the core's snapshot at each scrape (a custom collector):
    counts are exact and nothing is done between scrapes.
    """

    def __init__(self, params: PrometheusExporterParams, snapshot_fn: SnapshotFn) -> None:
        require_prometheus()
        self.params = params
        self.registry = prometheus_registry(snapshot_fn, process_metrics=params.process_metrics)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None
        """The port listened on, once started (the real one when ``port`` is 0)."""

    @property
    def url(self) -> str | None:
        """``http://HOST:PORT/metrics`` once started."""
        if self.port is None:
            return None
        host = self.params.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> None:
        """Listen (in a daemon thread of ``prometheus_client``)."""
        from prometheus_client import start_http_server

        if self._server is not None:
            return
        if not is_loopback(self.params.host):
            log.warning(
                "serving metrics on %s: reachable from the network, without authentication",
                self.params.host,
            )
        server, thread = start_http_server(
            self.params.port, addr=self.params.host, registry=self.registry
        )
        self._server, self._thread = server, thread
        self.port = int(server.server_port)

    def stop(self) -> None:
        """Stop listening."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)


# ---------------------------------------------------------------------------------------
# JSON lines
# ---------------------------------------------------------------------------------------


class JsonlExporterParams(BaseModel):
    """Params of the ``jsonl`` exporter."""

    model_config = _STRICT

    path: str = Field(min_length=1, description="File to append snapshots to (created).")
    interval: float = Field(10.0, gt=0, le=86_400, description="Seconds between two snapshots.")


@headwater.exporter("jsonl", params=JsonlExporterParams)
class JsonlExporter:
    """Append a metrics snapshot as one JSON line to a file every ``interval`` seconds.

    A last line is written when the exporter stops, so the file always ends with the
    final figures. Each line is a whole snapshot (see ``docs/metrics.md``).
    """

    def __init__(self, params: JsonlExporterParams, snapshot_fn: SnapshotFn) -> None:
        self.params = params
        self.snapshot_fn = snapshot_fn
        self.path = Path(params.path)
        self.lines = 0
        """Lines written so far."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._failed = False

    def start(self) -> None:
        """Check that the file can be opened, then write in a daemon thread."""
        if self._thread is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8"):
            pass  # fail now (a bad path) rather than silently in the thread
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._loop, name="headwater-metrics-jsonl", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and write the final snapshot."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout=10)
        self.write()

    def write(self) -> None:
        """Append one snapshot now."""
        try:
            line = json.dumps(self.snapshot_fn(), separators=(",", ":"), default=str)
            with self._lock, self.path.open("a", encoding="utf-8") as f:
                f.write(line + "\n")
            self.lines += 1
        except Exception:
            if not self._failed:  # once, not every interval
                self._failed = True
                log.exception("cannot write metrics to %s", self.path)

    def _loop(self) -> None:
        while not self._stop.wait(self.params.interval):
            self.write()


# ---------------------------------------------------------------------------------------
# OpenTelemetry
# ---------------------------------------------------------------------------------------

_OTEL_HINT = (
    "the otel exporter needs the OpenTelemetry SDK: pip install 'headwater[otel]' "
    "(or opentelemetry-sdk)"
)


class OtelExporterParams(BaseModel):
    """Params of the ``otel`` exporter."""

    model_config = _STRICT

    meter_name: str = Field(
        "headwater", min_length=1, description="Name of the meter the instruments belong to."
    )
    cache_seconds: float = Field(
        0.5,
        ge=0,
        le=60,
        description="One snapshot serves every instrument read within this time (one "
        "collection reads them all).",
    )


class _CachedSamples:
    """Samples of one snapshot, shared by every instrument of one collection."""

    def __init__(self, snapshot_fn: SnapshotFn, ttl: float) -> None:
        self.snapshot_fn = snapshot_fn
        self.ttl = ttl
        self._lock = threading.Lock()
        self._at = -1e18
        self._samples: Samples = {}

    def get(self) -> Samples:
        with self._lock:
            now = time.monotonic()
            if now - self._at > self.ttl or not self._samples:
                self._samples = collect_samples(self.snapshot_fn())
                self._at = now
            return self._samples


@headwater.exporter("otel", params=OtelExporterParams)
class OpenTelemetryExporter:
    """Publish every metric as OpenTelemetry observable instruments (``headwater[otel]``).

    The instruments are read from the core's snapshot whenever the application's
    ``MeterProvider`` collects (its metric readers decide when and where to export:
    OTLP, Prometheus, console ...). Histograms are published as two counters,
    ``NAME.count`` and ``NAME.sum``. Uses the global meter provider unless one is
    passed as ``meter_provider`` (when built from Python).
    """

    def __init__(
        self,
        params: OtelExporterParams,
        snapshot_fn: SnapshotFn,
        *,
        meter_provider: Any = None,
    ) -> None:
        try:
            # imported by name: the optional SDK is not needed to type-check headwater
            self._otel: Any = importlib.import_module("opentelemetry.metrics")
        except ImportError as exc:
            raise ImportError(_OTEL_HINT) from exc
        self.params = params
        self.meter_provider = meter_provider
        self._samples = _CachedSamples(snapshot_fn, params.cache_seconds)
        self._running = False
        self._instruments: list[Any] = []

    def start(self) -> None:
        """Create the observable instruments (once; a restarted exporter reuses them)."""
        self._running = True
        if self._instruments:
            return
        from headwater import __version__

        provider = self.meter_provider or self._otel.get_meter_provider()
        meter = provider.get_meter(self.params.meter_name, __version__)
        for m in METRICS:
            if m.type == "histogram":
                self._instruments.append(
                    meter.create_observable_counter(
                        f"{m.otel}.count",
                        callbacks=[self._callback(m, "count")],
                        unit="{observation}",
                        description=f"{m.help} (number of observations)",
                    )
                )
                self._instruments.append(
                    meter.create_observable_counter(
                        f"{m.otel}.sum",
                        callbacks=[self._callback(m, "sum")],
                        unit=m.otel_unit,
                        description=f"{m.help} (sum of observations)",
                    )
                )
            else:
                create = (
                    meter.create_observable_counter
                    if m.type == "counter"
                    else meter.create_observable_gauge
                )
                self._instruments.append(
                    create(
                        m.otel,
                        callbacks=[self._callback(m, None)],
                        unit=m.otel_unit,
                        description=m.help,
                    )
                )

    def stop(self) -> None:
        """Stop publishing (OpenTelemetry instruments cannot be removed: they go quiet)."""
        self._running = False

    def _callback(self, metric: MetricDef, part: str | None) -> Callable[[Any], Iterable[Any]]:
        observation = self._otel.Observation

        def observe(options: Any) -> Iterable[Any]:
            if not self._running:
                return []
            series = self._samples.get()[metric.name]
            out = []
            for values, value in series.items():
                attributes = dict(zip(metric.labels, values, strict=True))
                number = value if part is None else value[part]
                out.append(observation(number, attributes))
            return out

        return observe


# ---------------------------------------------------------------------------------------
# the plugin
# ---------------------------------------------------------------------------------------

PLUGIN_NAME = "headwater.exporters"
"""The entry-point name of this plugin."""


def _builtin_components() -> dict[str, Component]:
    # (mypy sees the decorated classes as classes; they are Components)
    components: tuple[Any, ...] = (PrometheusExporter, JsonlExporter, OpenTelemetryExporter)
    return {c.name: c for c in components}


def build_exporters(
    entries: Sequence[ExporterEntry | Mapping[str, Any]],
    plugins: PluginManager | None = None,
    snapshot_fn: SnapshotFn | None = None,
) -> list[Any]:
    """Instantiate exporters by name (not started: see
    :func:`headwater.core.metrics.running_exporters`); a script's convenience over
    :func:`headwater.core.metrics.build_exporters`.

    ``plugins`` and ``snapshot_fn`` default to the default engine's plugin manager and
    metrics (an embedder passes ``engine.load()`` and ``engine.metrics.snapshot``). The
    built-in exporters are also found when this plugin is not registered through its
    entry point (a checkout whose metadata predates it), unless it was disabled. Raises
    ``ComponentNotFound``, ``pydantic.ValidationError`` or ``ImportError`` (a missing
    optional dependency).
    """
    from headwater.core.engine import default_engine

    if plugins is None or snapshot_fn is None:
        engine = default_engine()
        plugins = engine.load() if plugins is None else plugins
        snapshot_fn = engine.metrics.snapshot if snapshot_fn is None else snapshot_fn
    manager = plugins.load()
    info = manager.plugins.get(PLUGIN_NAME)
    fallback = {} if info is not None and info.disabled else _builtin_components()
    return _build_exporters(entries, manager, snapshot_fn, fallback=fallback)
