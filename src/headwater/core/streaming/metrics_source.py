"""The ``streams`` entry of an engine's metrics snapshots, over its streaming managers.

Each :class:`~headwater.core.metrics.MetricsRegistry` has at most one
:class:`StreamsMetrics` (see :func:`streams_metrics_of`), registered as its ``streams``
source. A manager joins when it starts (:meth:`StreamsMetrics.track`) and leaves when it
stops (:meth:`StreamsMetrics.retire`), keeping its counters so that the engine's totals
never go down. Managers of different engines never meet.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from ..metrics import MetricsRegistry
    from .manager import StreamingManager

__all__ = ["StreamsMetrics", "streams_metrics_of"]

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

_SOURCE: Final = "streams"
_registries_lock = threading.Lock()


class StreamsMetrics:
    """The streaming managers of one engine, as one ``streams`` metrics source."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[int, StreamingManager] = {}
        self._retired: dict[str, int] = dict.fromkeys(_RETIRED_KEYS, 0)

    def track(self, manager: StreamingManager) -> None:
        """A manager started: include it in the snapshots."""
        with self._lock:
            self._live[id(manager)] = manager

    def retire(self, manager: StreamingManager) -> None:
        """A manager stopped: keep its counters (they must never go down), forget it."""
        totals = manager.totals()
        with self._lock:
            if self._live.pop(id(manager), None) is None:
                return
            for key in _RETIRED_KEYS:
                self._retired[key] += totals[key]

    def __call__(self) -> dict[str, Any]:
        """``totals``: :meth:`StreamingManager.totals` summed over the running managers
        plus the counters of stopped ones; ``streams``: the :meth:`StreamingManager.stats`
        of every open stream. Safe to call from any thread."""
        with self._lock:
            managers = list(self._live.values())
            totals: dict[str, int] = {"streams": 0, "clients": 0, **self._retired}
        streams: list[dict[str, Any]] = []
        for manager in managers:
            figures = manager.metrics()
            for key, value in figures["totals"].items():
                totals[key] = totals.get(key, 0) + value
            streams.extend(figures["streams"])
        return {"totals": totals, "streams": streams}


def streams_metrics_of(registry: MetricsRegistry) -> StreamsMetrics:
    """The :class:`StreamsMetrics` of ``registry``, created and registered on first use."""
    with _registries_lock:
        found = getattr(registry, "_streams_metrics", None)
        if found is None:
            found = StreamsMetrics()
            registry._streams_metrics = found  # type: ignore[attr-defined]
            registry.add_source(_SOURCE, found)
        return found
