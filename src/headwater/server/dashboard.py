"""The live dashboard's server side: the ``$dashboard`` feed.

The dashboard (``/`` of ``headwater serve``) is a static page (``static/``: plain ES
modules, no build step, no third-party request) that gets everything live over the
WebSocket protocol:

* :class:`DashboardFeed` keeps a reserved stream, :data:`DASHBOARD_STREAM`
  (``$dashboard``), open while somebody watches it. Every :data:`FEED_INTERVAL` seconds it
  pushes one *summary* chunk: runs (with the progress of each stage), streams, items and
  chunks per second, end-to-end latency quantiles of the last interval and recent
  errors. Clients subscribe to it like to any stream, so the server's ``authorize`` hook
  decides who may see it (action ``subscribe``, target ``$dashboard``), and the
  streaming manager's per-client queues and slow-consumer policy apply. The feed learns
  about progress and errors as a :class:`~headwater.core.streaming.StreamObserver` of the
  manager, and reads the rest from its engine's metrics snapshot and the
  server's runs.
* The page, its assets and ``/api/pipelines`` are served over plain HTTP by
  :mod:`headwater.server.dashboard_assets` (:func:`static_response`,
  :func:`pipelines_listing`), re-exported here.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, cast

import anyio
from anyio.abc import TaskGroup

from headwater.core.metrics import LATENCY_BUCKETS
from headwater.core.streaming import Frame, StreamError, StreamingManager

from .dashboard_assets import content_security_policy, pipelines_listing, static_response
from .dashboard_series import SAMPLE_INTERVAL, MetricsSeries, bucket_counts, quantile

if TYPE_CHECKING:
    from .base import BaseServer as Server

__all__ = [
    "DASHBOARD_STREAM",
    "FEED_INTERVAL",
    "RESERVED_PREFIX",
    "DashboardFeed",
    "content_security_policy",
    "pipelines_listing",
    "quantile",
    "static_response",
]

log = logging.getLogger("headwater.server.dashboard")

DASHBOARD_STREAM: Final = "$dashboard"
"""The reserved stream of the dashboard feed."""

RESERVED_PREFIX: Final = "$"
"""Stream ids starting with this are the server's own; a client's ``run`` may not use them."""

FEED_INTERVAL: Final = 0.5
"""Seconds between two summaries of the feed."""

MAX_STREAMS: Final = 200
"""Streams listed in one summary (the oldest first; ``streams_total`` counts them all)."""

MAX_ERRORS: Final = 50
"""Recent errors kept and sent with each summary."""

MAX_ERROR_ROWS: Final = 500
"""Error counts (pipeline, stage, type) sent with each summary (the largest first)."""

MAX_FINISHED_RUNS: Final = 20
"""Finished runs still listed (most recent first) after the live ones."""

HISTORY: Final = 240
"""Chart points kept for ``/api/dashboard`` (two minutes at the default interval)."""

IDLE_TIMEOUT: Final = 60.0
"""Seconds the feed keeps going without any subscriber before it closes its stream."""

_MESSAGE_LIMIT: Final = 500
"""Characters of an error message kept in the feed."""


# -- the feed ---------------------------------------------------------------------------


class DashboardFeed:
    """Pushes a summary of the server to the ``$dashboard`` stream while it is watched.

    Attach it to the server's streaming manager with :meth:`attach` (it observes the
    manager's streams) and call :meth:`open` before subscribing a client to
    :data:`DASHBOARD_STREAM`: the stream is created on demand, fed every ``interval``
    seconds, and closed (reason ``inactive``) once nobody has watched it for
    ``idle_timeout`` seconds, or at the server's shutdown.
    """

    def __init__(
        self,
        server: Server,
        *,
        interval: float = FEED_INTERVAL,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.server = server
        self.interval = interval
        self.idle_timeout = idle_timeout
        self._manager: StreamingManager | None = None
        self._tg: TaskGroup | None = None
        self._scope: anyio.CancelScope | None = None
        self._lock = anyio.Lock()
        self._progress: dict[str, dict[str, dict[str, Any]]] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._errored: set[str] = set()
        self._errors: deque[dict[str, Any]] = deque(maxlen=MAX_ERRORS)
        self._error_id = 0
        self._finished: deque[dict[str, Any]] = deque(maxlen=MAX_FINISHED_RUNS)
        self._history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self._fatal: dict[tuple[str, str, str], int] = {}
        self.series = MetricsSeries()
        """The charts' points over the last minute, 15 minutes and hour."""
        self._chunks = 0
        self._last: dict[str, Any] | None = None
        self._prev: tuple[float, int, dict[str, int], list[int]] | None = None

    # -- wiring -------------------------------------------------------------------------

    def attach(self, manager: StreamingManager, tg: TaskGroup) -> None:
        """Observe ``manager``'s streams; the feed's task will run in ``tg``."""
        self._manager = manager
        self._tg = tg
        manager.add_observer(self)
        tg.start_soon(self._sample)

    async def _sample(self) -> None:
        """Sample the metrics every second until the server stops (the charts' history)."""
        async with anyio.create_task_group() as tg:

            async def stop() -> None:
                await self.server.serve_forever()
                tg.cancel_scope.cancel()

            tg.start_soon(stop)
            while True:
                try:
                    self.series.sample(self.server.engine.metrics.snapshot(), time.time())
                except Exception:  # a bug here must never take the server down
                    log.exception("the dashboard failed to sample the metrics; it goes on")
                await anyio.sleep(SAMPLE_INTERVAL)

    def series_view(self, range_name: str, pipeline: str | None = None) -> dict[str, Any]:
        """The body of ``/api/dashboard/history``: see
        :meth:`~headwater.server.dashboard_series.MetricsSeries.view`."""
        return self.series.view(range_name, pipeline)

    @property
    def active(self) -> bool:
        """True while the feed's stream is open and fed."""
        return self._scope is not None

    async def open(self) -> None:
        """Make sure :data:`DASHBOARD_STREAM` is open and fed (idempotent).

        Raises :class:`~headwater.core.streaming.StreamError` when the stream cannot be
        created (the server is shutting down, too many streams).
        """
        manager, tg = self._manager, self._tg
        if manager is None or tg is None:
            raise RuntimeError("the dashboard feed is not attached to a running server")
        async with self._lock:
            if manager.has_stream(DASHBOARD_STREAM) and self._scope is not None:
                return
            if not manager.has_stream(DASHBOARD_STREAM):
                await manager.create_stream(
                    DASHBOARD_STREAM,
                    metadata={"feed": "dashboard", "interval": self.interval},
                    inactivity_timeout=None,
                )
            self._scope = anyio.CancelScope()
            self._prev = None
            tg.start_soon(self._feed, self._scope)

    async def _feed(self, scope: anyio.CancelScope) -> None:
        manager = self._manager
        assert manager is not None
        idle = 0.0
        try:
            with scope:
                try:
                    self._measure()  # the baseline of the first rates
                except Exception:
                    log.exception("the dashboard feed failed to measure; it goes on")
                while True:
                    await anyio.sleep(self.interval)
                    try:
                        summary = self.tick()
                    except Exception:  # a bug here must never take the server down
                        log.exception("the dashboard feed failed to summarise; it goes on")
                        continue
                    try:
                        await manager.push(DASHBOARD_STREAM, summary)
                        clients = manager.client_count(DASHBOARD_STREAM)
                    except StreamError:
                        return
                    idle = 0.0 if clients else idle + self.interval
                    if idle >= self.idle_timeout:
                        log.debug("no dashboard client for %.0f s: feed stopped", idle)
                        with anyio.CancelScope(shield=True):
                            if manager.has_stream(DASHBOARD_STREAM):
                                await manager.close_stream(DASHBOARD_STREAM, "inactive")
                        return
        finally:
            if self._scope is scope:
                self._scope = None

    # -- StreamObserver -----------------------------------------------------------------

    def stream_opened(self, stream_id: str, epoch: str, metadata: Mapping[str, Any]) -> None:
        """Remember a stream's metadata (pipeline, run)."""
        if not stream_id.startswith(RESERVED_PREFIX):
            meta = {k: metadata.get(k) for k in ("pipeline", "run", "owner") if metadata.get(k)}
            meta["opened_at"] = time.time()
            self._meta[stream_id] = meta

    def chunk_published(self, stream_id: str, epoch: str, seq: int, payload: bytes) -> None:
        """Count a chunk (for chunks per second)."""
        if not stream_id.startswith(RESERVED_PREFIX):
            self._chunks += 1

    def message_broadcast(self, stream_id: str, frame: Frame) -> None:
        """Keep the latest progress of each stage and every error."""
        if stream_id.startswith(RESERVED_PREFIX):
            return
        head = bytes(frame[:40])
        if b'"progress"' not in head and b'"stream_error"' not in head:
            return
        message = json.loads(frame)
        if message.get("type") == "progress":
            stages = self._progress.setdefault(stream_id, {})
            stages[str(message.get("stage"))] = {
                "done": message.get("done"),
                "total": message.get("total"),
                "message": message.get("message"),
            }
        elif message.get("type") == "stream_error":
            self._error(stream_id, message.get("error"))

    def stream_closed(
        self,
        stream_id: str,
        reason: str,
        summary: Mapping[str, Any] | None,
        error: Frame | None,
    ) -> None:
        """A stream ended: the feed's own (stop feeding) or a run's (remember its end)."""
        if stream_id == DASHBOARD_STREAM:
            if self._scope is not None:
                self._scope.cancel()
                self._scope = None
            return
        if stream_id.startswith(RESERVED_PREFIX):
            return
        if error is not None:
            self._error(stream_id, json.loads(error).get("error"))
        elif reason in ("failed", "error") and stream_id not in self._errored:
            self._error(stream_id, {"error": "StreamEnded", "message": f"ended: {reason}"})
        meta = self._meta.pop(stream_id, {})
        progress = self._progress.pop(stream_id, {})
        self._errored.discard(stream_id)
        if not meta.get("run"):
            return
        now = time.time()
        info = dict(summary or {})
        elapsed = info.get("elapsed_seconds")
        started = meta.get("opened_at")
        if isinstance(elapsed, int | float):
            started = now - float(elapsed)
        items = info.get("items_in")
        self._finished.appendleft(
            {
                "run": meta.get("run"),
                "pipeline": meta.get("pipeline"),
                "stream": stream_id,
                "state": reason,
                "owner": meta.get("owner"),
                "started_at": started,
                "ended_at": now,
                "progress": progress,
                "items": items if isinstance(items, int) else None,
            }
        )

    def _error(self, stream_id: str, error: Any) -> None:
        details = dict(error) if isinstance(error, Mapping) else {"message": str(error)}
        meta = self._meta.get(stream_id, {})
        self._error_id += 1
        self._errored.add(stream_id)
        message = str(details.get("message", ""))
        handled = bool(details.get("handled", False))
        if not handled and details.get("stage"):
            key = (
                str(details.get("pipeline") or meta.get("pipeline")),
                str(details.get("stage")),
                str(details.get("error", "Error")),
            )
            self._fatal[key] = self._fatal.get(key, 0) + 1
        self._errors.appendleft(
            {
                "id": self._error_id,
                "time": time.time(),
                "stream": stream_id,
                "pipeline": details.get("pipeline") or meta.get("pipeline"),
                "run": meta.get("run"),
                "stage": details.get("stage"),
                "error": str(details.get("error", "Error")),
                "message": message[:_MESSAGE_LIMIT],
                "handled": handled,
            }
        )

    # -- summaries ----------------------------------------------------------------------

    def _measure(
        self, snap: Mapping[str, Any] | None = None
    ) -> tuple[float, dict[str, float], dict[str, Any]]:
        """Rates since the previous measure: (chunks/s, items/s per pipeline, latency)."""
        now = time.monotonic()
        if snap is None:
            snap = self.server.engine.metrics.snapshot()
        items: dict[str, int] = {}
        for stage in snap.get("stages", ()):
            if str(stage.get("stage", "")).startswith("sources."):
                name = str(stage.get("pipeline"))
                items[name] = items.get(name, 0) + int(stage.get("items_out", 0))
        e2e = [0] * (len(LATENCY_BUCKETS) + 1)
        for pipeline in snap.get("pipelines", ()):
            for i, n in enumerate(bucket_counts(pipeline.get("e2e_latency", {}))):
                if i < len(e2e):
                    e2e[i] += n
        prev, self._prev = self._prev, (now, self._chunks, items, e2e)
        if prev is None:
            return 0.0, {}, {"p50": None, "p99": None, "count": 0}
        then, chunks, before, e2e_before = prev
        elapsed = max(now - then, 1e-6)
        rates = {
            name: max(0, n - before.get(name, 0)) / elapsed
            for name, n in items.items()
            if n != before.get(name, 0)
        }
        window = [max(0, a - b) for a, b in zip(e2e, e2e_before, strict=True)]
        latency = {
            "p50": quantile(0.5, window),
            "p99": quantile(0.99, window),
            "count": sum(window),
        }
        return (self._chunks - chunks) / elapsed, rates, latency

    def tick(self) -> dict[str, Any]:
        """Measure and return one summary (the chunk pushed to ``$dashboard``)."""
        snap = self.server.engine.metrics.snapshot()
        chunks, by_pipeline, latency = self._measure(snap)
        summary = self.state(snap)
        summary["throughput"] = {
            "items": sum(by_pipeline.values()),
            "chunks": chunks,
            "by_pipeline": by_pipeline,
        }
        summary["latency"] = latency
        self._history.append(
            {
                "time": summary["time"],
                "items": summary["throughput"]["items"],
                "chunks": chunks,
                "p50": latency["p50"],
                "p99": latency["p99"],
            }
        )
        # stage names, messages and params may hold substituted secrets
        summary = cast("dict[str, Any]", self.server.engine.services.secrets.mask_data(summary))
        self._last = summary
        return summary

    def state(self, snap: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The server's state now (everything of a summary but the rates); ``snap`` is a
        metrics snapshot already taken."""
        server = self.server
        manager = server.manager
        if snap is None:
            snap = server.engine.metrics.snapshot()
        queues = {
            (str(s.get("pipeline")), str(s.get("stage"))): int(s.get("queue_depth", 0) or 0)
            for s in snap.get("stages", ())
        }
        runs: list[dict[str, Any]] = []
        for run in server.runs:
            runs.append(
                {
                    "run": run.run_id,
                    "pipeline": run.pipeline,
                    "stream": run.stream,
                    "state": run.handle.state,
                    "owner": self._meta.get(run.stream, {}).get("owner"),
                    "started_at": run.started_at,
                    "ended_at": None,
                    "progress": dict(self._progress.get(run.stream, {})),
                    "items": _items(run),
                    "stages": {
                        name: {
                            "in": st.items_in,
                            "out": st.items_out,
                            "errors": st.errors,
                            "skipped": st.skipped,
                            "queue": queues.get((run.pipeline, name), 0),
                        }
                        for name, st in list(run.handle.stats.items())
                    },
                }
            )
        runs.extend(self._finished)
        streams: list[dict[str, Any]] = []
        ids = [s for s in manager.active_streams() if not s.startswith(RESERVED_PREFIX)]
        for stream_id in ids[:MAX_STREAMS]:
            try:
                stats = manager.stats(stream_id)
            except StreamError:  # pragma: no cover - closed meanwhile
                continue
            feeding = server.run_of_stream(stream_id)
            meta = self._meta.get(stream_id, {})
            streams.append(
                {
                    "stream": stream_id,
                    "state": feeding.handle.state if feeding is not None else "open",
                    "clients": stats["clients"],
                    "seq": stats["seq"],
                    "dropped": stats["dropped"],
                    "pipeline": meta.get("pipeline"),
                    "run": meta.get("run"),
                }
            )
        pipelines: dict[str, dict[str, Any]] = {
            name: {"pipeline": name, "named": True, "running": 0, "runs": {}}
            for name in sorted(server.pipelines)
        }
        for entry in snap.get("pipelines", ()):
            name = str(entry.get("pipeline"))
            row = pipelines.setdefault(name, {"pipeline": name, "named": False})
            row["running"] = entry.get("running", 0)
            row["runs"] = entry.get("runs", {})
        return {
            "time": time.time(),
            "interval": self.interval,
            "connections": server.connections,
            "pipelines": list(pipelines.values()),
            "runs": runs,
            "streams": streams,
            "streams_total": len(ids),
            "errors": list(self._errors),
            "error_totals": self.error_totals(snap),
            "history": {"recording": server.history.enabled},
        }

    def error_totals(self, snap: Mapping[str, Any]) -> dict[str, Any]:
        """Errors counted by the metrics (what ``/metrics`` shows as
        ``headwater_stage_errors_total``), by pipeline, stage and type, each split into
        fatal (it failed its run; seen on the server's streams) and handled; items sent
        to dead letters and skipped, by pipeline."""
        rows: list[dict[str, Any]] = []
        dead_letter: dict[str, int] = {}
        skipped: dict[str, int] = {}
        for stage in snap.get("stages", ()):
            pipeline, name = str(stage.get("pipeline")), str(stage.get("stage"))
            for kind, count in (stage.get("errors_by_kind") or {}).items():
                fatal = min(int(count), self._fatal.get((pipeline, name, str(kind)), 0))
                rows.append(
                    {
                        "pipeline": pipeline,
                        "stage": name,
                        "error": str(kind),
                        "count": int(count),
                        "fatal": fatal,
                        "handled": int(count) - fatal,
                    }
                )
            if name == "dead_letter" or name.startswith("dead_letter"):
                dead_letter[pipeline] = dead_letter.get(pipeline, 0) + int(
                    stage.get("items_in", 0) or 0
                )
            if stage.get("skipped"):
                skipped[pipeline] = skipped.get(pipeline, 0) + int(stage.get("skipped", 0))
        rows.sort(key=lambda r: (-r["count"], r["pipeline"], r["stage"], r["error"]))
        total = sum(r["count"] for r in rows)
        fatal = sum(r["fatal"] for r in rows)
        return {
            "total": total,
            "fatal": fatal,
            "handled": total - fatal,
            "rows": rows[:MAX_ERROR_ROWS],
            "rows_total": len(rows),
            "dead_letter": dead_letter,
            "skipped": skipped,
        }

    def history(self) -> dict[str, Any]:
        """The body of ``/api/dashboard``: the last summary (or the state now) and the
        chart points of the last minutes, oldest first."""
        summary = self._last if self._last is not None and self.active else self.state()
        return {
            "interval": self.interval,
            "active": self.active,
            "summary": summary,
            "points": list(self._history),
        }


def _items(run: Any) -> int | None:
    """Items the run's sources have produced so far."""
    if run is None:
        return None
    try:
        stats = run.handle.stats
        return sum(int(s.items_out) for name, s in stats.items() if name.startswith("sources."))
    except Exception:  # pragma: no cover - stats are plain counters
        return None
