"""The ``streams`` entry of metrics snapshots, over every streaming manager of the process.

A manager joins when it starts (:func:`_track`, which registers :func:`streams_metrics`
as the ``streams`` source of the metrics registry) and leaves when it stops
(:func:`_retire`), keeping its counters so that process totals never go down.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Final

from ..metrics import metrics_registry

if TYPE_CHECKING:
    from .manager import StreamingManager

__all__ = ["streams_metrics"]

_RETIRED_KEYS: Final = (
    "streams_created",
    "streams_closed",
    "messages_sent",
    "bytes_sent",
    "dropped",
    "send_errors",
    "disconnects",
    "subscriptions",
    "replay_hits",
    "replay_misses",
    "replayed",
)
"""Counters of :meth:`StreamingManager.totals` (the rest are current values)."""

_metrics_lock = threading.Lock()
_live_managers: dict[int, StreamingManager] = {}
_retired: dict[str, int] = dict.fromkeys(_RETIRED_KEYS, 0)


def _track(manager: StreamingManager) -> None:
    """A manager started: include it in the ``streams`` entry of metrics snapshots."""
    with _metrics_lock:
        _live_managers[id(manager)] = manager
    metrics_registry().add_source("streams", streams_metrics)


def _retire(manager: StreamingManager) -> None:
    """A manager stopped: keep its counters (they must never go down), forget it."""
    totals = manager.totals()
    with _metrics_lock:
        if _live_managers.pop(id(manager), None) is None:
            return
        for key in _RETIRED_KEYS:
            _retired[key] += totals[key]


def streams_metrics() -> dict[str, Any]:
    """The ``streams`` entry of metrics snapshots, over every manager of the process.

    ``totals``: :meth:`StreamingManager.totals` summed over the running managers plus the
    counters of stopped ones (counters never go down); ``streams``: the
    :meth:`StreamingManager.stats` of every open stream. Safe to call from any thread.
    """
    with _metrics_lock:
        managers = list(_live_managers.values())
        totals: dict[str, int] = {"streams": 0, "clients": 0, **_retired}
    streams: list[dict[str, Any]] = []
    for manager in managers:
        figures = manager.metrics()
        for key, value in figures["totals"].items():
            totals[key] = totals.get(key, 0) + value
        streams.extend(figures["streams"])
    return {"totals": totals, "streams": streams}
