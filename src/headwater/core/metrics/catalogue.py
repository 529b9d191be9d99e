"""The metric catalogue: every metric headwater exports, and snapshots as its samples.

:data:`METRICS` lists each metric once (name, type, labels, meaning, and its
OpenTelemetry name), in exposition order; ``docs/metrics.md`` documents the same list.
:func:`collect_samples` turns a registry snapshot into samples of those metrics, which
every exporter (Prometheus, OpenTelemetry, third-party ones) publishes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["METRICS", "Labels", "MetricDef", "MetricType", "Samples", "collect_samples"]

MetricType = Literal["counter", "gauge", "histogram"]


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
_BROKER = ("pipeline", "stage", "role", "address")

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
    # -- per broker connection (sources and sinks of Redis Streams, NATS JetStream)
    MetricDef(
        "headwater_broker_connected",
        "gauge",
        _BROKER,
        "1 while the connection to the broker works, 0 during an outage.",
        "headwater.broker.connected",
    ),
    MetricDef(
        "headwater_broker_reconnects_total",
        "counter",
        _BROKER,
        "Outages of the connection that ended with the connection back.",
        "headwater.broker.reconnects",
        otel_unit="{reconnect}",
    ),
    MetricDef(
        "headwater_broker_disconnected_seconds_total",
        "counter",
        _BROKER,
        "Seconds the connection spent disconnected (the current outage included).",
        "headwater.broker.disconnected",
        unit="seconds",
        otel_unit="s",
    ),
    # -- the event loop (headwater worker)
    MetricDef(
        "headwater_event_loop_lag_seconds",
        "gauge",
        (),
        "How late the event loop's latest tick woke up.",
        "headwater.event_loop.lag",
        unit="seconds",
        otel_unit="s",
    ),
    MetricDef(
        "headwater_event_loop_stalls_total",
        "counter",
        (),
        "Times the event loop was blocked longer than the lag threshold.",
        "headwater.event_loop.stalls",
        otel_unit="{stall}",
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
    """Turn a registry snapshot (:meth:`~headwater.core.metrics.MetricsRegistry.snapshot`)
    into samples of :data:`METRICS`.

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
    for link in snap.get("brokers") or ():
        if "error" in link:
            continue
        labels: Labels = tuple(str(link.get(k, "")) for k in _BROKER)
        add("headwater_broker_connected", labels, 1 if link.get("connected") else 0)
        add("headwater_broker_reconnects_total", labels, link.get("reconnects", 0))
        seconds = link.get("disconnected_seconds", 0)
        add("headwater_broker_disconnected_seconds_total", labels, seconds)
    loop = snap.get("event_loop")
    if isinstance(loop, Mapping) and "error" not in loop:
        add("headwater_event_loop_lag_seconds", (), loop.get("lag_seconds", 0.0))
        add("headwater_event_loop_stalls_total", (), loop.get("stalls", 0))
    return out
