"""Event time and watermarks: reading an item's event time, and the clocks that say
how far event time has progressed.

An item's *event time* is read from a declared field: a number (seconds since the
epoch), an ISO 8601 string (``2024-05-01T12:00:00Z``; without an offset it is UTC) or a
``datetime``. The *watermark* of a stream is the largest event time seen so far minus
the tolerated disorder (``lateness``): the promise that no on-time item older than it
will come. An item whose event time is below the watermark when it arrives is *late*.

Several inputs (the two sides of a join) take the minimum of their watermarks; an input
that stayed idle for ``idle_timeout`` seconds (processing time) stops holding it back
(:class:`MinWatermark`).

Steps that keep event-time state expose it to the runtime through a small protocol:

- ``take_late() -> tuple[list, int]``: the late items to send to the dead-letter sink
  since the last call, and how many late items were dropped; the runtime counts both in
  the stage's ``late`` (and ``skipped``) counters;
- ``watermark``: the step's current watermark (``-inf`` before the first item), which
  the runtime places downstream as a :class:`Watermark` marker when it advanced.
"""

from __future__ import annotations

import datetime
import math
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["EventClock", "LateItem", "MinWatermark", "Watermark", "event_time"]

_UTC = datetime.UTC


class LateItem(Exception):
    """The error recorded with a late item sent to the dead-letter sink."""


@dataclass(slots=True, frozen=True)
class Watermark:
    """A marker travelling beside the data: no on-time item after it has an event time
    below ``value`` (seconds since the epoch)."""

    value: float


def event_time(value: Any) -> float:
    """The event time ``value`` stands for, in seconds since the epoch.

    Accepts an int or float, an ISO 8601 string (naive times are UTC) or a
    ``datetime``. Raises ``ValueError`` saying what the value is otherwise.
    """
    kind = type(value)
    if kind is int or kind is float:
        if value != value or value in (math.inf, -math.inf):
            raise ValueError(f"event time {value!r} is not a finite number")
        return value  # type: ignore[no-any-return]
    if kind is str:
        try:
            when = datetime.datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"event time {value!r} is neither a number of seconds since the epoch nor "
                "an ISO 8601 date and time"
            ) from None
        return _seconds(when)
    if isinstance(value, datetime.datetime):
        return _seconds(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(
            f"event time of type {kind.__name__} ({value!r}); expected seconds since the "
            "epoch or an ISO 8601 string"
        )
    return float(value)


def _seconds(when: datetime.datetime) -> float:
    if when.tzinfo is None:
        when = when.replace(tzinfo=_UTC)
    return when.timestamp()


class EventClock:
    """The watermark of one input: the largest event time seen minus ``lateness``."""

    __slots__ = ("lateness", "max_seen", "watermark")

    def __init__(self, lateness: float) -> None:
        self.lateness = lateness
        self.max_seen = -math.inf
        self.watermark = -math.inf

    def is_late(self, t: float) -> bool:
        """True when an item of event time ``t`` arriving now is late."""
        return t < self.watermark

    def see(self, t: float) -> None:
        """An on-time item of event time ``t`` arrived."""
        if t > self.max_seen:
            self.max_seen = t
            self.watermark = t - self.lateness

    def snapshot(self) -> float | None:
        """The largest event time seen (None before any), for a checkpoint."""
        return None if math.isinf(self.max_seen) else self.max_seen

    def restore(self, max_seen: float | None) -> None:
        """Continue from :meth:`snapshot`."""
        self.max_seen = -math.inf if max_seen is None else max_seen
        self.watermark = self.max_seen - self.lateness


class MinWatermark:
    """The watermark of several inputs: the minimum of theirs, where an input idle for
    ``idle_timeout`` seconds (processing time; None: never) does not count.

    An input that has produced nothing yet holds the watermark back (at ``-inf``)
    until it turns idle; once every input is idle, the largest watermark counts.
    """

    __slots__ = ("clocks", "idle_timeout", "last_seen")

    def __init__(self, clocks: list[EventClock], idle_timeout: float | None) -> None:
        self.clocks = clocks
        self.idle_timeout = idle_timeout
        now = time.monotonic()
        self.last_seen = [now] * len(clocks)

    def touch(self, index: int, now: float | None = None) -> None:
        """Input ``index`` delivered something."""
        self.last_seen[index] = time.monotonic() if now is None else now

    def value(self, now: float | None = None) -> float:
        """The combined watermark now."""
        clocks = self.clocks
        if self.idle_timeout is None:
            return min(c.watermark for c in clocks)
        now = time.monotonic() if now is None else now
        cutoff = now - self.idle_timeout
        active = [
            c.watermark for c, seen in zip(clocks, self.last_seen, strict=True) if seen > cutoff
        ]
        if active:
            return min(active)
        return max(c.watermark for c in clocks)
