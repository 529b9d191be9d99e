"""The commit protocol: checkpoint markers and their acknowledgement by every sink.

A resumable source reports positions through ``ctx.checkpoint(position)``. Every so
often (by item count and/or time) the runtime turns one of those reports into a
:class:`Marker` placed in the source's output channel right after the items it covers.
The marker travels with the data: each fused stage snapshots its stateful steps when the
marker passes, and each sink acknowledges it after writing every item before it
(transactional sinks commit the checkpoint in the same transaction as those items). Once
every sink acknowledged a marker, the checkpoint is saved to the store.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from .checkpoints import Checkpoint, CheckpointStore

__all__ = ["Checkpointer", "Marker"]


@dataclass(slots=True)
class Marker:
    """A checkpoint barrier travelling through the stages with the data."""

    seq: int
    positions: dict[str, Any]
    items: int
    final: bool = False
    """True for the marker after the last item: the run completed."""
    states: dict[str, Any] = field(default_factory=dict)


class Checkpointer:
    """Decides when to place markers and saves checkpoints that every sink acknowledged."""

    def __init__(
        self,
        *,
        pipeline: str,
        fingerprint: str,
        store: CheckpointStore,
        every_items: int | None,
        every_seconds: float | None,
        start: Checkpoint | None,
        sinks: list[str],
    ) -> None:
        self.pipeline = pipeline
        self.fingerprint = fingerprint
        self.store = store
        self.every_items = every_items
        self.every_seconds = every_seconds
        self.committed = start
        self.seq = start.seq if start else 0
        self.base_items = start.items if start else 0
        self.states = dict(start.states) if start else {}
        self._sinks = frozenset(sinks)
        self._acks: dict[int, set[str]] = {}
        self._last_items = 0
        self._last_time = time.monotonic()
        self._last_position: dict[str, Any] = {}
        self._lock = anyio.Lock()
        self.saved = 0
        self.listeners: list[Callable[[Checkpoint], Any]] = []
        """Called (awaited if async) after each checkpoint is saved: sources use it to
        acknowledge upstream (e.g. XACK) only what every sink committed."""

    def report(self, source: str, position: Any, produced: int) -> Marker | None:
        """A source is at ``position`` after ``produced`` items: a marker when one is due."""
        self._last_position[source] = position
        if not self._due(produced):
            return None
        return self._marker(produced, final=False)

    def cut(self, positions: dict[str, Any], produced: int) -> Marker | None:
        """A marker for a cut across several sources (a join), at ``positions`` after
        ``produced`` items, when one is due."""
        if not self._due(produced):
            return None
        self._last_position.update(positions)
        return self._marker(produced, final=False)

    def _due(self, produced: int) -> bool:
        return (
            self.every_items is not None and produced - self._last_items >= self.every_items
        ) or (
            self.every_seconds is not None
            and time.monotonic() - self._last_time >= self.every_seconds
        )

    def final(self, produced: int) -> Marker:
        """The marker after the last item of a source that ended normally."""
        return self._marker(produced, final=True)

    def stopped(self, produced: int) -> Marker:
        """The marker after the last item of a source stopped by a clean cancellation:
        the sources' last reported positions, not a completion."""
        return self._marker(produced, final=False)

    def _marker(self, produced: int, *, final: bool) -> Marker:
        self.seq += 1
        self._last_items = produced
        self._last_time = time.monotonic()
        return Marker(self.seq, dict(self._last_position), self.base_items + produced, final)

    def checkpoint_for(self, marker: Marker) -> Checkpoint:
        """The checkpoint a marker stands for (what sinks and the store persist)."""
        return Checkpoint(
            pipeline=self.pipeline,
            fingerprint=self.fingerprint,
            seq=marker.seq,
            positions=dict(marker.positions),
            states=dict(marker.states),
            items=marker.items,
            completed=marker.final,
        )

    async def ack(self, marker: Marker, sink: str) -> None:
        """``sink`` has durably handled every item before ``marker``."""
        acks = self._acks.setdefault(marker.seq, set())
        acks.add(sink)
        if acks < self._sinks:
            return
        del self._acks[marker.seq]
        checkpoint = self.checkpoint_for(marker)
        async with self._lock:
            if self.committed is not None and self.committed.seq >= checkpoint.seq:
                return
            await anyio.to_thread.run_sync(self.store.save, checkpoint)
            self.committed = checkpoint
            self.saved += 1
            for listener in self.listeners:
                result = listener(checkpoint)
                if inspect.isawaitable(result):
                    await result
