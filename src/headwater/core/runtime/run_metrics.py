"""Figures of a run: when its items moved (with latency probes), the summary of its
result, and the live figures the metrics registry reads."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..errors import StageError
from ..events import RunState
from ..metrics import Probe

if TYPE_CHECKING:
    from .run import _Run
    from .sinks import _Output

PROBE_INTERVAL = 0.1
"""Seconds between two end-to-end latency probes sent by a source."""


class _Clock:
    """When the run's items moved: the start, the first item and the last item.

    The watchdog reads it for the ``first_item`` and ``idle`` timeouts and the summary
    reports the time to the first item. With metrics on (``probing``), it also places
    the latency probes that sinks time end-to-end latency with.
    """

    __slots__ = ("first_item_at", "held", "last_item_at", "last_probe", "probing", "t0")

    def __init__(self, probing: bool) -> None:
        self.probing = probing
        self.t0 = 0.0
        self.first_item_at: float | None = None
        """Seconds from the start to the first item a source produced."""
        self.last_item_at = 0.0
        self.last_probe = 0.0
        self.held = False
        """True while the consumer of an ``engine.stream`` has not taken the items handed
        to it yet: the sources wait for it, which is not the run being idle."""

    def hold(self, held: bool) -> None:
        """The consumer starts (True) or stops (False) holding the run back; when it
        stops, the ``idle`` timeout counts from now."""
        self.held = held
        if not held:
            self.last_item_at = time.monotonic()

    def start(self) -> None:
        """The run's graph starts now: the timeouts count from here."""
        self.t0 = time.monotonic()
        self.last_item_at = self.t0

    def mark(self, n: int, out: _Output | None = None) -> None:
        """A source just produced ``n`` items (already put into ``out``, or about to be).

        Per batch, never per item. Records the first and last item times; with metrics on
        and ``out`` given, places a latency probe in ``out`` after those items at most
        every :data:`PROBE_INTERVAL` seconds. A probe is a marker: it costs no wait, is
        dropped by a closed channel, never splits a batch, and travels behind the items
        put before it (through every stage, to every sink of a fan-out).
        """
        now = time.monotonic()
        if self.first_item_at is None and n:
            self.first_item_at = now - self.t0
        self.last_item_at = now
        if out is not None and self.probing and now - self.last_probe >= PROBE_INTERVAL:
            # a latency probe after these items: sinks observe end-to-end latency
            self.last_probe = now
            out.put_marker(Probe())


def _summary(run: _Run, state: RunState, elapsed: float) -> dict[str, Any]:
    """The summary of a finished run (what :attr:`RunResult.summary` holds)."""
    produced = run.produced()
    return {
        "pipeline": run.spec.name,
        "run_id": run.identity.run_id,
        "state": state,
        "elapsed_seconds": elapsed,
        "items_in": produced,
        "items_per_second": produced / elapsed if elapsed > 0 else None,
        "time_to_first_item_seconds": run.clock.first_item_at,
        "stages": {name: s.to_dict() for name, s in run.stats.items()},
        "errors": [
            e.to_dict()
            if isinstance(e, StageError)
            else {"error": type(e).__name__, "message": str(e)}
            for e in run.errors
        ],
        "cancel_reason": run.cancel_reason,
        "checkpoint": run.checkpoints.summary(),
        "fallbacks": {stage: dict(info) for stage, info in run.fallbacks.items()},
    }


def _live_metrics(run: _Run) -> dict[str, Any]:
    """Figures for the metrics registry (may be called from another thread)."""
    for _ in range(3):
        try:
            stages = {name: st.metrics() for name, st in list(run.stats.items())}
            queues = {name: len(ch.items) for name, ch in list(run.queues.items())}
            break
        except RuntimeError:  # a dict changed size under us: try again
            continue
    else:  # pragma: no cover - three concurrent resizes in a row
        stages, queues = {}, {}
    return {
        "pipeline": run.spec.name,
        "run_id": run.identity.run_id,
        "state": run.state,
        "stages": stages,
        "queue_depth": queues,
        "e2e_latency": run.e2e,
        "time_to_first_item": run.clock.first_item_at,
    }
