"""Windowed joins by event time (``compose: {join: ...}``): the state and its rules.

Items of two sources (left and right) are paired when their keys (``on``) are equal and
their event times (``timestamp``) are at most ``within`` seconds apart: each pair is
emitted once, as ``{"key": K, "left": L, "right": R}``, when its second item arrives.

Each side keeps an :class:`~headwater.core.watermarks.EventClock` (largest event time
minus ``lateness``); the join's watermark is the minimum of the two, where a side idle
for ``idle_timeout`` seconds does not count (:class:`MinWatermark`). An item below the
watermark when it arrives is late (dropped or dead-lettered). A buffered item of time
``t`` can only match items of time ``t + within`` or earlier, all of them on time only
while the watermark is at most that: once the watermark passes ``t + within`` the item
is forgotten, so the state holds about ``within + lateness`` seconds of items. With
``how: left`` a left item forgotten without a match is emitted then, with ``right: None``.

This is plain synchronous logic; the runtime feeds it (:mod:`headwater.core.runtime.sources`).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .compose import JoinSpec
from .expr import MissingField
from .statecodec import decode_state, encode_state
from .watermarks import EventClock, MinWatermark, event_time

__all__ = ["JoinState", "Position"]


@dataclass(slots=True, frozen=True)
class Position:
    """A marker a joined source places after the items a reported position covers, so
    that the join cuts its checkpoints where each source can resume."""

    source: str
    position: Any


def _reader(path: str) -> Callable[[Any], Any]:
    """Read ``path`` (a key, or a dotted path into nested mappings) of an item."""
    parts = path.split(".")

    def read(item: Any) -> Any:
        if not isinstance(item, Mapping):
            raise TypeError(
                f"cannot read field {path!r} of a {type(item).__name__} item; expected a mapping"
            )
        if path in item:
            return item[path]
        node: Any = item
        for part in parts:
            if not isinstance(node, Mapping) or part not in node:
                raise MissingField(path)
            node = node[part]
        return node

    return read


class JoinState:
    """Buffers, clocks and matching of one join."""

    def __init__(self, spec: JoinSpec) -> None:
        self.within = spec.within
        self.left_outer = spec.how == "left"
        self.key_of = _reader(spec.on)
        self.time_of = _reader(spec.timestamp)
        self.clocks = [EventClock(spec.lateness), EventClock(spec.lateness)]
        self.watermarks = MinWatermark(self.clocks, spec.idle_timeout)
        self.buffers: list[dict[Any, list[list[Any]]]] = [{}, {}]
        """Per side: key -> entries ``[time, item, matched]`` in arrival order."""
        self.heaps: list[list[tuple[float, int, Any, list[Any]]]] = [[], []]
        """Per side: ``(time, arrival, key, entry)``, to forget entries oldest first."""
        self.arrivals = 0
        self.watermark = -math.inf
        """The join's watermark when last computed (:meth:`advance`)."""

    def add(self, side: int, items: list[Any], out: list[Any], late: list[Any]) -> None:
        """Items of ``side`` (0 left, 1 right) arrived: pairs go to ``out``, late items
        to ``late``."""
        self.watermarks.touch(side)
        clock = self.clocks[side]
        mine = self.buffers[side]
        theirs = self.buffers[1 - side]
        heap = self.heaps[side]
        within = self.within
        for item in items:
            t = event_time(self.time_of(item))
            if t < self.watermark:
                late.append(item)
                continue
            key = self.key_of(item)
            clock.see(t)
            entry = [t, item, False]
            for other in theirs.get(key, ()):
                if abs(other[0] - t) <= within:
                    entry[2] = other[2] = True
                    pair = (item, other[1]) if side == 0 else (other[1], item)
                    out.append({"key": key, "left": pair[0], "right": pair[1]})
            mine.setdefault(key, []).append(entry)
            self.arrivals += 1
            heapq.heappush(heap, (t, self.arrivals, key, entry))

    def advance(self, out: list[Any], now: float | None = None) -> float:
        """Recompute the watermark; forget the entries it passed (emitting unmatched left
        items with ``how: left``). Returns the watermark."""
        wm = self.watermarks.value(now)
        if wm > self.watermark:
            self.watermark = wm
            self._forget(wm - self.within, out)
        return self.watermark

    def _forget(self, before: float, out: list[Any]) -> None:
        for side in (0, 1):
            heap = self.heaps[side]
            buffer = self.buffers[side]
            while heap and heap[0][0] < before:
                _, _, key, entry = heapq.heappop(heap)
                entries = buffer[key]
                entries[:] = [e for e in entries if e is not entry]
                if not entries:
                    del buffer[key]
                if side == 0 and self.left_outer and not entry[2]:
                    out.append({"key": key, "left": entry[1], "right": None})

    def end(self, side: int) -> None:
        """``side`` ended: it no longer holds the watermark back."""
        self.clocks[side].watermark = math.inf

    def flush(self, out: list[Any]) -> None:
        """End of both inputs: unmatched left items (``how: left``), in event-time order."""
        self._forget(math.inf, out)

    def snapshot(self) -> dict[str, Any]:
        """The buffers, clocks and watermark as JSON, for a checkpoint."""
        entries = [
            [side, arrival, t, encode_state(key), encode_state(entry[1]), entry[2]]
            for side in (0, 1)
            for t, arrival, key, entry in self.heaps[side]
        ]
        entries.sort(key=lambda e: e[1])
        wm = self.watermark
        return {
            "clocks": [c.snapshot() for c in self.clocks],
            "watermark": None if math.isinf(wm) else wm,
            "arrivals": self.arrivals,
            "entries": entries,
        }

    def restore(self, state: Any) -> None:
        """Continue from :meth:`snapshot`."""
        if not isinstance(state, dict) or not {"clocks", "entries"} <= set(state):
            raise ValueError(f"join: cannot restore from the checkpointed state {state!r}")
        for clock, max_seen in zip(self.clocks, state["clocks"], strict=True):
            clock.restore(max_seen)
        wm = state.get("watermark")
        self.watermark = -math.inf if wm is None else float(wm)
        self.arrivals = int(state.get("arrivals", 0))
        for side, arrival, t, raw_key, raw_item, matched in state["entries"]:
            key = decode_state(raw_key)
            entry = [t, decode_state(raw_item), bool(matched)]
            self.buffers[side].setdefault(key, []).append(entry)
            heapq.heappush(self.heaps[side], (t, arrival, key, entry))
