"""Built-in metrics exporters: Prometheus, JSON lines and OpenTelemetry.

Every exporter reads :func:`headwater.core.metrics.snapshot` when it exports, never
before: the core keeps plain per-batch counters and nothing here adds work per item.

* ``prometheus`` serves ``/metrics`` from its own HTTP server (``prometheus-client``);
  :class:`HeadwaterCollector` converts a snapshot into metric families at scrape time,
  and :func:`exposition` renders them for ``headwater serve``'s own ``/metrics``;
* ``jsonl`` appends one snapshot per line to a file every ``interval`` seconds, and a
  last one when it stops (so a batch run's final counts are always written);
* ``otel`` feeds OpenTelemetry observable instruments (needs ``headwater[otel]``).

Every metric is listed once, in :data:`METRICS` (name, type, labels, meaning, and its
OpenTelemetry name); ``docs/metrics.md`` documents the same list.
"""

from __future__ import annotations

import importlib
import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

import headwater
from headwater.core.metrics import SnapshotFn, create_exporter, snapshot

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

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
    "register_metrics_exporters",
]

log = logging.getLogger("headwater.exporters")

MetricType = Literal["counter", "gauge", "histogram"]

_STRICT = ConfigDict(extra="forbid")

# ---------------------------------------------------------------------------------------
# the metrics
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetricDef:
    """One exported metric: how it is named, typed and labelled, and what it means."""

    name: str
    """Prometheus name (counters end in ``_total``, durations in ``_seconds``)."""
    type: MetricType
    labels: tuple[str, ...]
    help: str
    otel: str
    """OpenTelemetry instrument name (histograms: ``.count`` and ``.sum`` counters)."""
    unit: str = ""
    """Prometheus unit (``seconds``, ``bytes``) when the name carries one."""
    otel_unit: str = "1"
    """UCUM unit of the OpenTelemetry instrument."""


_PS = ("pipeline", "stage")

METRICS: tuple[MetricDef, ...] = (
    # -- per pipeline and stage
    MetricDef(
        "headwater_stage_items_in_total",
        "counter",
        _PS,
        "Items that entered the stage (for a sink: items received).",
        "headwater.stage.items_in",
        otel_unit="{item}",
    ),
    MetricDef(
        "headwater_stage_items_out_total",
        "counter",
        _PS,
        "Items the stage emitted (for a source: produced; for a sink: written).",
        "headwater.stage.items_out",
        otel_unit="{item}",
    ),
    MetricDef(
        "headwater_stage_batches_in_total",
        "counter",
        _PS,
        "Batches that entered the stage.",
        "headwater.stage.batches_in",
        otel_unit="{batch}",
    ),
    MetricDef(
        "headwater_stage_batches_out_total",
        "counter",
        _PS,
        "Non-empty batches the stage emitted (for a sink: written).",
        "headwater.stage.batches_out",
        otel_unit="{batch}",
    ),
    MetricDef(
        "headwater_stage_items_skipped_total",
        "counter",
        _PS,
        "Items dropped by the stage's on_error: skip policy (sent to the dead letter sink).",
        "headwater.stage.items_skipped",
        otel_unit="{item}",
    ),
    MetricDef(
        "headwater_stage_errors_total",
        "counter",
        (*_PS, "kind"),
        "Errors raised in the stage, handled or fatal, by exception type (kind).",
        "headwater.stage.errors",
        otel_unit="{error}",
    ),
    MetricDef(
        "headwater_stage_batch_duration_seconds",
        "histogram",
        _PS,
        "Time spent processing one batch (for a sink: writing it).",
        "headwater.stage.batch.duration",
        unit="seconds",
        otel_unit="s",
    ),
    MetricDef(
        "headwater_stage_queue_depth",
        "gauge",
        _PS,
        "Items waiting in the stage's input channel, over the running runs.",
        "headwater.stage.queue_depth",
        otel_unit="{item}",
    ),
    # -- per pipeline
    MetricDef(
        "headwater_pipeline_runs_total",
        "counter",
        ("pipeline", "state"),
        "Finished runs by final state (succeeded, failed, cancelled).",
        "headwater.pipeline.runs",
        otel_unit="{run}",
    ),
    MetricDef(
        "headwater_pipeline_runs_running",
        "gauge",
        ("pipeline",),
        "Runs of the pipeline running now.",
        "headwater.pipeline.runs_running",
        otel_unit="{run}",
    ),
    MetricDef(
        "headwater_pipeline_end_to_end_latency_seconds",
        "histogram",
        ("pipeline",),
        "Time from a source to every sink, measured by latency probes (one per 0.1 s).",
        "headwater.pipeline.end_to_end_latency",
        unit="seconds",
        otel_unit="s",
    ),
    MetricDef(
        "headwater_pipeline_time_to_first_item_seconds",
        "histogram",
        ("pipeline",),
        "Time from the start of a run to its first item, per finished run.",
        "headwater.pipeline.time_to_first_item",
        unit="seconds",
        otel_unit="s",
    ),
    # -- streaming, over the process
    MetricDef(
        "headwater_streams_open",
        "gauge",
        (),
        "Streams open now.",
        "headwater.streams.open",
        otel_unit="{stream}",
    ),
    MetricDef(
        "headwater_streaming_clients",
        "gauge",
        (),
        "Client subscriptions now, over every stream.",
        "headwater.streaming.clients",
        otel_unit="{client}",
    ),
    MetricDef(
        "headwater_streams_created_total",
        "counter",
        (),
        "Streams created.",
        "headwater.streams.created",
        otel_unit="{stream}",
    ),
    MetricDef(
        "headwater_streams_closed_total",
        "counter",
        (),
        "Streams closed.",
        "headwater.streams.closed",
        otel_unit="{stream}",
    ),
    MetricDef(
        "headwater_streaming_messages_sent_total",
        "counter",
        (),
        "Messages sent to clients, over every stream and client.",
        "headwater.streaming.messages_sent",
        otel_unit="{message}",
    ),
    MetricDef(
        "headwater_streaming_sent_bytes_total",
        "counter",
        (),
        "Bytes of the messages sent to clients.",
        "headwater.streaming.sent_bytes",
        unit="bytes",
        otel_unit="By",
    ),
    MetricDef(
        "headwater_streaming_messages_dropped_total",
        "counter",
        (),
        "Messages dropped for slow clients (policy drop_oldest).",
        "headwater.streaming.messages_dropped",
        otel_unit="{message}",
    ),
    MetricDef(
        "headwater_streaming_send_errors_total",
        "counter",
        (),
        "Sends to a client that failed or timed out.",
        "headwater.streaming.send_errors",
        otel_unit="{error}",
    ),
    MetricDef(
        "headwater_streaming_disconnects_total",
        "counter",
        (),
        "Slow clients disconnected (policy disconnect).",
        "headwater.streaming.disconnects",
        otel_unit="{client}",
    ),
    MetricDef(
        "headwater_streaming_subscriptions_total",
        "counter",
        (),
        "Client subscriptions made.",
        "headwater.streaming.subscriptions",
        otel_unit="{subscription}",
    ),
    MetricDef(
        "headwater_streaming_replay_hits_total",
        "counter",
        (),
        "Resumptions (since=N) served entirely from the replay buffer.",
        "headwater.streaming.replay_hits",
        otel_unit="{resumption}",
    ),
    MetricDef(
        "headwater_streaming_replay_misses_total",
        "counter",
        (),
        "Resumptions that found a gap (history gone or another epoch).",
        "headwater.streaming.replay_misses",
        otel_unit="{resumption}",
    ),
    MetricDef(
        "headwater_streaming_messages_replayed_total",
        "counter",
        (),
        "Messages sent from replay buffers to resuming clients.",
        "headwater.streaming.messages_replayed",
        otel_unit="{message}",
    ),
    # -- per open stream
    MetricDef(
        "headwater_stream_clients",
        "gauge",
        ("stream",),
        "Clients subscribed to the stream now.",
        "headwater.stream.clients",
        otel_unit="{client}",
    ),
    MetricDef(
        "headwater_stream_chunks_total",
        "counter",
        ("stream",),
        "Chunks published on the stream (its last seq).",
        "headwater.stream.chunks",
        otel_unit="{chunk}",
    ),
    MetricDef(
        "headwater_stream_messages_sent_total",
        "counter",
        ("stream",),
        "Messages of the stream sent to clients (over its clients).",
        "headwater.stream.messages_sent",
        otel_unit="{message}",
    ),
    MetricDef(
        "headwater_stream_sent_bytes_total",
        "counter",
        ("stream",),
        "Bytes of the stream's messages sent to clients.",
        "headwater.stream.sent_bytes",
        unit="bytes",
        otel_unit="By",
    ),
    MetricDef(
        "headwater_stream_messages_dropped_total",
        "counter",
        ("stream",),
        "Messages of the stream dropped for slow clients.",
        "headwater.stream.messages_dropped",
        otel_unit="{message}",
    ),
    MetricDef(
        "headwater_stream_replay_hits_total",
        "counter",
        ("stream",),
        "Resumptions of the stream served entirely from its replay buffer.",
        "headwater.stream.replay_hits",
        otel_unit="{resumption}",
    ),
    MetricDef(
        "headwater_stream_replay_misses_total",
        "counter",
        ("stream",),
        "Resumptions of the stream that found a gap.",
        "headwater.stream.replay_misses",
        otel_unit="{resumption}",
    ),
    MetricDef(
        "headwater_stream_buffered_messages",
        "gauge",
        ("stream",),
        "Messages held in the stream's replay buffer now.",
        "headwater.stream.buffered_messages",
        otel_unit="{message}",
    ),
    MetricDef(
        "headwater_stream_buffered_bytes",
        "gauge",
        ("stream",),
        "Bytes held in the stream's replay buffer now.",
        "headwater.stream.buffered_bytes",
        unit="bytes",
        otel_unit="By",
    ),
    MetricDef(
        "headwater_stream_queued_messages",
        "gauge",
        ("stream",),
        "Messages waiting in the stream's client queues now.",
        "headwater.stream.queued_messages",
        otel_unit="{message}",
    ),
    # -- per scheduler
    MetricDef(
        "headwater_scheduler_queue_depth",
        "gauge",
        ("scheduler",),
        "Runs ready and waiting for a slot or resources.",
        "headwater.scheduler.queue_depth",
        otel_unit="{run}",
    ),
    MetricDef(
        "headwater_scheduler_runs",
        "gauge",
        ("scheduler", "state"),
        "Submitted runs in each state now (pending, waiting, running, succeeded, ...).",
        "headwater.scheduler.runs",
        otel_unit="{run}",
    ),
    MetricDef(
        "headwater_scheduler_concurrency",
        "gauge",
        ("scheduler",),
        "Runs the scheduler may run at once.",
        "headwater.scheduler.concurrency",
        otel_unit="{run}",
    ),
    MetricDef(
        "headwater_scheduler_resources_in_use",
        "gauge",
        ("scheduler", "resource"),
        "Units of each named resource held by running runs.",
        "headwater.scheduler.resources_in_use",
        otel_unit="{unit}",
    ),
    MetricDef(
        "headwater_scheduler_resource_capacity",
        "gauge",
        ("scheduler", "resource"),
        "Units of each named resource.",
        "headwater.scheduler.resource_capacity",
        otel_unit="{unit}",
    ),
)
"""Every metric the exporters publish, in exposition order."""

_BY_NAME: dict[str, MetricDef] = {m.name: m for m in METRICS}

Labels = tuple[str, ...]
Samples = dict[str, dict[Labels, Any]]
"""Metric name -> label values (in the metric's label order) -> number or histogram."""

_STAGE_COUNTERS: tuple[tuple[str, str], ...] = (
    ("headwater_stage_items_in_total", "items_in"),
    ("headwater_stage_items_out_total", "items_out"),
    ("headwater_stage_batches_in_total", "batches_in"),
    ("headwater_stage_batches_out_total", "batches_out"),
    ("headwater_stage_items_skipped_total", "skipped"),
    ("headwater_stage_queue_depth", "queue_depth"),
)

_STREAMING_TOTALS: tuple[tuple[str, str], ...] = (
    ("headwater_streams_open", "streams"),
    ("headwater_streaming_clients", "clients"),
    ("headwater_streams_created_total", "streams_created"),
    ("headwater_streams_closed_total", "streams_closed"),
    ("headwater_streaming_messages_sent_total", "messages_sent"),
    ("headwater_streaming_sent_bytes_total", "bytes_sent"),
    ("headwater_streaming_messages_dropped_total", "dropped"),
    ("headwater_streaming_send_errors_total", "send_errors"),
    ("headwater_streaming_disconnects_total", "disconnects"),
    ("headwater_streaming_subscriptions_total", "subscriptions"),
    ("headwater_streaming_replay_hits_total", "replay_hits"),
    ("headwater_streaming_replay_misses_total", "replay_misses"),
    ("headwater_streaming_messages_replayed_total", "replayed"),
)

_PER_STREAM: tuple[tuple[str, str], ...] = (
    ("headwater_stream_clients", "clients"),
    ("headwater_stream_chunks_total", "seq"),
    ("headwater_stream_messages_sent_total", "messages_sent"),
    ("headwater_stream_sent_bytes_total", "bytes_sent"),
    ("headwater_stream_messages_dropped_total", "dropped"),
    ("headwater_stream_replay_hits_total", "replay_hits"),
    ("headwater_stream_replay_misses_total", "replay_misses"),
    ("headwater_stream_buffered_messages", "buffered"),
    ("headwater_stream_buffered_bytes", "buffered_bytes"),
    ("headwater_stream_queued_messages", "queued"),
)


def collect_samples(snap: Mapping[str, Any]) -> Samples:
    """Turn a :func:`~headwater.core.metrics.snapshot` into samples of :data:`METRICS`.

    Counters and gauges are numbers; histograms are the snapshot's
    ``{"buckets": [[le, cumulative], ...], "count": n, "sum": s}``. Samples of one
    metric with the same labels (two streaming managers with a stream of the same id)
    are added up. Entries a provider could not produce (``{"error": ...}``) are skipped.
    """
    out: Samples = {m.name: {} for m in METRICS}

    def add(name: str, labels: Labels, value: Any) -> None:
        series = out[name]
        if isinstance(value, dict) or labels not in series:
            series[labels] = value
        else:
            series[labels] += value

    for st in snap.get("stages") or ():
        key = (str(st["pipeline"]), str(st["stage"]))
        for name, field in _STAGE_COUNTERS:
            add(name, key, st.get(field, 0))
        for kind, n in (st.get("errors_by_kind") or {}).items():
            add("headwater_stage_errors_total", (*key, str(kind)), n)
        add("headwater_stage_batch_duration_seconds", key, st["latency"])
    for p in snap.get("pipelines") or ():
        name = str(p["pipeline"])
        for state, n in (p.get("runs") or {}).items():
            add("headwater_pipeline_runs_total", (name, str(state)), n)
        add("headwater_pipeline_runs_running", (name,), p.get("running", 0))
        add("headwater_pipeline_end_to_end_latency_seconds", (name,), p["e2e_latency"])
        add("headwater_pipeline_time_to_first_item_seconds", (name,), p["time_to_first_item"])
    streams = snap.get("streams")
    if isinstance(streams, Mapping) and "error" not in streams:
        totals = streams.get("totals") or {}
        for name, field in _STREAMING_TOTALS:
            add(name, (), totals.get(field, 0))
        for info in streams.get("streams") or ():
            stream = (str(info["stream"]),)
            for name, field in _PER_STREAM:
                add(name, stream, info.get(field, 0))
    schedulers = snap.get("schedulers")
    if isinstance(schedulers, list):
        for entry in schedulers:
            if "error" in entry:
                continue
            sid = str(entry["id"])
            add("headwater_scheduler_queue_depth", (sid,), entry.get("queue_depth", 0))
            add("headwater_scheduler_concurrency", (sid,), entry.get("concurrency", 0))
            for state, n in (entry.get("runs_by_state") or {}).items():
                add("headwater_scheduler_runs", (sid, str(state)), n)
            for resource, n in (entry.get("resources_in_use") or {}).items():
                add("headwater_scheduler_resources_in_use", (sid, str(resource)), n)
            for resource, n in (entry.get("capacity") or {}).items():
                add("headwater_scheduler_resource_capacity", (sid, str(resource)), n)
    return out


# ---------------------------------------------------------------------------------------
# Prometheus
# ---------------------------------------------------------------------------------------

_PROMETHEUS_HINT = (
    "the Prometheus exporter needs prometheus-client: pip install prometheus-client "
    "(or the headwater extra that provides it)"
)


def _require_prometheus() -> None:
    try:
        import prometheus_client  # noqa: F401
    except ImportError as exc:
        raise ImportError(_PROMETHEUS_HINT) from exc


def _le(bound: Any) -> str:
    return "+Inf" if bound == "+Inf" else repr(float(bound))


class HeadwaterCollector:
    """A ``prometheus_client`` collector: converts a snapshot into metric families at
    scrape time, so counts are exact and exporting costs nothing between scrapes.

    Register it wherever Prometheus metrics are served, e.g. into an application's own
    registry: ``prometheus_client.REGISTRY.register(HeadwaterCollector())``.
    """

    def __init__(self, snapshot_fn: SnapshotFn | None = None) -> None:
        _require_prometheus()
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
    _require_prometheus()
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
    _require_prometheus()
    from prometheus_client.exposition import choose_encoder

    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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
        _require_prometheus()
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
        if not _is_loopback(self.params.host):
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
# configuration: exporters by name
# ---------------------------------------------------------------------------------------


class ExporterEntry(BaseModel):
    """One exporter to start: its component name and params."""

    model_config = _STRICT

    exporter: str = Field(min_length=1, description="Exporter name, e.g. prometheus or jsonl.")
    params: dict[str, Any] = Field(default_factory=dict, description="The exporter's params.")


class MetricsConfig(BaseModel):
    """The ``metrics`` section of a configuration: exporters to run alongside."""

    model_config = _STRICT

    exporters: list[ExporterEntry] = Field(
        default_factory=list, description="Exporters started with the process, in order."
    )


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
    :func:`headwater.core.metrics.running_exporters`).

    Names are looked up among the registered exporters of ``plugins`` (default: the
    process-wide manager). The built-in ones are also found when this plugin is not
    registered through its entry point (a checkout whose metadata predates it), unless
    it was disabled. Raises ``ComponentNotFound``, ``pydantic.ValidationError`` or
    ``ImportError`` (a missing optional dependency).
    """
    from headwater.core.components import ComponentKind
    from headwater.core.errors import ComponentNotFound
    from headwater.core.plugins import get_plugin_manager

    manager = (plugins if plugins is not None else get_plugin_manager()).load()
    out: list[Any] = []
    for raw in entries:
        entry = raw if isinstance(raw, ExporterEntry) else ExporterEntry.model_validate(raw)
        try:
            component = manager.registry.get(ComponentKind.EXPORTER, entry.exporter)
        except ComponentNotFound:
            info = manager.plugins.get(PLUGIN_NAME)
            builtin = _builtin_components().get(entry.exporter)
            if builtin is None or (info is not None and info.disabled):
                raise
            component = builtin
        out.append(create_exporter(component, entry.params, snapshot_fn))
    return out


@headwater.hookimpl
def register_metrics_exporters(register: Any) -> None:
    """Register the built-in exporters."""
    register(PrometheusExporter)
    register(JsonlExporter)
    register(OpenTelemetryExporter)
