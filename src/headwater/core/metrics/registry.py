"""The metrics registry: counters and histograms per stage, cheap enough to stay on.

The runtime updates plain Python counters per *batch* (never per item) and observes
latencies into fixed-bucket histograms. Every :class:`~headwater.Engine` owns one
:class:`MetricsRegistry`; nothing is exported from here: exporters (see
:mod:`headwater.core.metrics.exporting`) read its :meth:`MetricsRegistry.snapshot` — a
JSON-serialisable view of every live run plus the totals of finished ones — when they
scrape or on their interval.

Other parts of the engine add their figures as *sources*: its
:class:`~headwater.core.streaming.StreamingManager` (key ``streams``) and every entered
:class:`~headwater.core.scheduler.Scheduler` (key ``schedulers``, one entry per scheduler).

The runtime's own instruments (latency histograms, end-to-end probes, registration of
runs) can be switched off with the environment variable ``HEADWATER_METRICS=0`` (read
when a registry is created) or ``registry.enabled = False`` (read by each run when it is
created); item and batch counters stay, since run summaries use them.
"""

from __future__ import annotations

import os
import threading
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "ENV_VAR",
    "LATENCY_BUCKETS",
    "Histogram",
    "MetricsRegistry",
    "Probe",
    "RunMetricsSource",
    "enabled",
    "metrics_registry",
    "set_enabled",
    "snapshot",
]

ENV_VAR = "HEADWATER_METRICS"
"""Set to ``0`` (or ``false``, ``no``, ``off``) to switch the runtime's instruments off."""

_OFF = frozenset({"0", "false", "no", "off"})


def _enabled_by_env() -> bool:
    return os.environ.get(ENV_VAR, "1").strip().lower() not in _OFF


def enabled() -> bool:
    """Whether the default engine's runs are instrumented (see
    :attr:`MetricsRegistry.enabled`)."""
    return metrics_registry().enabled


def set_enabled(flag: bool) -> None:
    """Switch the default engine's instruments on or off for runs created from now on
    (an embedder sets ``engine.metrics.enabled`` instead)."""
    metrics_registry().enabled = bool(flag)


LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
"""Upper bounds (seconds) of the latency histogram buckets; +Inf is implicit."""


class Histogram:
    """A fixed-bucket histogram (Prometheus semantics: cumulative on export)."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0

    @property
    def count(self) -> int:
        """Number of observations."""
        return sum(self.counts)

    def observe(
        self,
        value: float,
        _bisect: Callable[[tuple[float, ...], float], int] = bisect_left,
        _bounds: tuple[float, ...] = LATENCY_BUCKETS,
    ) -> None:
        """Record one observation (seconds). Called per batch: kept to two updates."""
        self.counts[_bisect(_bounds, value)] += 1
        self.sum += value

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s observations to this histogram."""
        for i, n in enumerate(other.counts):
            self.counts[i] += n
        self.sum += other.sum

    def to_dict(self) -> dict[str, Any]:
        """``{"buckets": [[le, cumulative count], ...], "count": n, "sum": s}``."""
        cumulative = 0
        buckets: list[list[Any]] = []
        for bound, n in zip([*LATENCY_BUCKETS, float("inf")], self.counts, strict=True):
            cumulative += n
            buckets.append(["+Inf" if bound == float("inf") else bound, cumulative])
        return {"buckets": buckets, "count": cumulative, "sum": self.sum}


@dataclass(slots=True)
class Probe:
    """A latency probe: travels with the data like a checkpoint marker, from a source to
    every sink, which observes ``now - created`` as end-to-end latency."""

    created: float = field(default_factory=time.perf_counter)


class RunMetricsSource(Protocol):
    """What the registry needs from a live run."""

    def metrics(self) -> dict[str, Any]:
        """The run's current counters, histograms and queue depths."""


class MetricsRegistry:
    """Live runs and the accumulated totals of finished runs, per pipeline and stage."""

    def __init__(self, *, enabled: bool | None = None) -> None:
        self.enabled = _enabled_by_env() if enabled is None else enabled
        """True when runs created from now on time their batches, send latency probes
        and report here (the default; ``HEADWATER_METRICS=0`` turns it off). Runs keep
        the setting they were created with; item and batch counters are always kept."""
        self._lock = threading.Lock()
        self._live: dict[str, RunMetricsSource] = {}
        self._totals: dict[tuple[str, str], dict[str, Any]] = {}
        self._pipelines: dict[str, dict[str, Any]] = {}
        self._extra: dict[str, Callable[[], Any]] = {}
        self._groups: dict[str, dict[str, Callable[[], dict[str, Any]]]] = {}

    def started(self, run_id: str, source: RunMetricsSource) -> None:
        """A run started: include it in snapshots while it runs."""
        with self._lock:
            self._live[run_id] = source

    def finished(self, run_id: str) -> None:
        """A run ended: fold its final figures into the totals.

        The run leaves the live runs and enters the totals in one step, so a concurrent
        snapshot counts it exactly once (counters never dip).
        """
        with self._lock:
            source = self._live.get(run_id)
        if source is None:
            return
        data = source.metrics()  # final: the run has ended
        with self._lock:
            if self._live.pop(run_id, None) is not None:
                self._fold(data)

    def add_source(self, name: str, fn: Callable[[], Any]) -> None:
        """Add a named provider of extra figures (streams, scheduler) to every snapshot.

        ``fn`` is called by every :meth:`snapshot`, possibly from another thread (an
        exporter's HTTP server), and must return JSON-serialisable data; the snapshot
        holds it under ``name``. An exception is reported as ``{"error": ...}`` instead.
        """
        with self._lock:
            self._extra[name] = fn

    def remove_source(self, name: str) -> None:
        """Remove a provider added with :meth:`add_source`."""
        with self._lock:
            self._extra.pop(name, None)

    def add_member(self, group: str, key: str, fn: Callable[[], dict[str, Any]]) -> None:
        """Add one of several providers of the same kind (e.g. every live scheduler).

        The snapshot holds ``group`` as a list with one entry per member:
        ``{"id": key, **fn()}``, sorted by key. Same threading rules as :meth:`add_source`.
        """
        with self._lock:
            self._groups.setdefault(group, {})[key] = fn

    def remove_member(self, group: str, key: str) -> None:
        """Remove a provider added with :meth:`add_member` (the group stays, maybe empty)."""
        with self._lock:
            self._groups.get(group, {}).pop(key, None)

    def _fold(self, data: dict[str, Any]) -> None:
        pipeline = data["pipeline"]
        p = self._pipelines.setdefault(pipeline, _empty_pipeline())
        p["runs"][data["state"]] = p["runs"].get(data["state"], 0) + 1
        _merge_hist(p["e2e_latency"], data["e2e_latency"])
        if data.get("time_to_first_item") is not None:
            p["time_to_first_item"].observe(data["time_to_first_item"])
        for stage, figures in data["stages"].items():
            total = self._totals.setdefault((pipeline, stage), _empty_stage())
            for key in ("items_in", "items_out", "batches_in", "batches_out", "skipped"):
                total[key] += figures[key]
            for kind, n in figures["errors_by_kind"].items():
                total["errors_by_kind"][kind] = total["errors_by_kind"].get(kind, 0) + n
            _merge_hist(total["latency"], figures["latency"])

    def snapshot(self) -> dict[str, Any]:
        """Every figure, JSON-serialisable: live runs added to finished totals."""
        with self._lock:
            live = list(self._live.values())
            totals = {k: _copy_stage(v) for k, v in self._totals.items()}
            pipelines = {k: _copy_pipeline(v) for k, v in self._pipelines.items()}
            extra = dict(self._extra)
            groups = {
                name: sorted(members.items(), key=lambda kv: kv[0])
                for name, members in self._groups.items()
            }
        queues: dict[tuple[str, str], int] = {}
        running: dict[str, int] = {}
        for source in live:
            data = source.metrics()
            pipeline = data["pipeline"]
            running[pipeline] = running.get(pipeline, 0) + 1
            p = pipelines.setdefault(pipeline, _empty_pipeline())
            _merge_hist(p["e2e_latency"], data["e2e_latency"])
            for stage, figures in data["stages"].items():
                total = totals.setdefault((pipeline, stage), _empty_stage())
                for key in ("items_in", "items_out", "batches_in", "batches_out", "skipped"):
                    total[key] += figures[key]
                for kind, n in figures["errors_by_kind"].items():
                    total["errors_by_kind"][kind] = total["errors_by_kind"].get(kind, 0) + n
                _merge_hist(total["latency"], figures["latency"])
            for stage, depth in data["queue_depth"].items():
                queues[(pipeline, stage)] = queues.get((pipeline, stage), 0) + depth
        stages = [
            {
                "pipeline": pipeline,
                "stage": stage,
                **{k: v for k, v in figures.items() if k != "latency"},
                "latency": figures["latency"].to_dict(),
                "queue_depth": queues.get((pipeline, stage), 0),
            }
            for (pipeline, stage), figures in sorted(totals.items())
        ]
        out: dict[str, Any] = {
            "time": time.time(),
            "stages": stages,
            "pipelines": [
                {
                    "pipeline": name,
                    "running": running.get(name, 0),
                    "runs": p["runs"],
                    "e2e_latency": p["e2e_latency"].to_dict(),
                    "time_to_first_item": p["time_to_first_item"].to_dict(),
                }
                for name, p in sorted(pipelines.items())
            ],
        }
        for name, fn in extra.items():
            try:
                out[name] = fn()
            except Exception as exc:  # a provider must never break a scrape
                out[name] = {"error": f"{type(exc).__name__}: {exc}"}
        for name, items in groups.items():
            entries: list[dict[str, Any]] = []
            for key, member in items:
                try:
                    entries.append({"id": key, **member()})
                except Exception as exc:
                    entries.append({"id": key, "error": f"{type(exc).__name__}: {exc}"})
            out[name] = entries
        return out

    def reset(self) -> None:
        """Forget everything (for tests)."""
        with self._lock:
            self._live.clear()
            self._totals.clear()
            self._pipelines.clear()


def _empty_stage() -> dict[str, Any]:
    return {
        "items_in": 0,
        "items_out": 0,
        "batches_in": 0,
        "batches_out": 0,
        "skipped": 0,
        "errors_by_kind": {},
        "latency": Histogram(),
    }


def _empty_pipeline() -> dict[str, Any]:
    return {"runs": {}, "e2e_latency": Histogram(), "time_to_first_item": Histogram()}


def _copy_stage(v: dict[str, Any]) -> dict[str, Any]:
    out = dict(v)
    out["errors_by_kind"] = dict(v["errors_by_kind"])
    h = Histogram()
    h.merge(v["latency"])
    out["latency"] = h
    return out


def _copy_pipeline(v: dict[str, Any]) -> dict[str, Any]:
    e2e, ttfi = Histogram(), Histogram()
    e2e.merge(v["e2e_latency"])
    ttfi.merge(v["time_to_first_item"])
    return {"runs": dict(v["runs"]), "e2e_latency": e2e, "time_to_first_item": ttfi}


def _merge_hist(into: Histogram, other: Histogram | dict[str, Any]) -> None:
    if isinstance(other, Histogram):
        into.merge(other)


def metrics_registry() -> MetricsRegistry:
    """The default engine's registry (a convenience; an engine's components use
    ``ctx.metrics``, embedders ``engine.metrics``)."""
    from ..engine import default_engine

    return default_engine().metrics


def snapshot() -> dict[str, Any]:
    """The default engine's :meth:`MetricsRegistry.snapshot`."""
    return metrics_registry().snapshot()
