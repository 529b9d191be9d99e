"""Keyed and event-time windows: the engine behind ``window`` with ``time: event``,
``by``, ``agg`` or ``type: session``.

Time. With ``time: event`` an item's time is read from its ``timestamp`` field (see
:func:`headwater.core.watermarks.event_time`) and the step keeps a watermark: the
largest event time seen minus ``lateness``. An item whose time is below the watermark
when it arrives is late: dropped (counted) or sent to the dead-letter sink. With
``time: processing`` an item's time is the wall clock when its batch arrives, and the
watermark is the wall clock (ticked while no input arrives): nothing is ever late.

Windows. Tumbling windows are aligned to multiples of ``size`` since the epoch (start =
floor(t / size) * size, end = start + size); sliding windows of ``size`` start at
multiples of ``step`` (an item is in every window with start <= t < end); a session
window of a key holds items less than ``gap`` apart and ends ``gap`` after its last
item. A window is emitted once the watermark reaches its end; windows due together are
emitted in order of end, then start, then key. At the end of the stream every open
window is emitted (with ``partial``).

State is kept per window and key: the items (in arrival order) unless ``keep_items`` is
false, and the running ``agg`` figures (:mod:`.window_aggs`). Everything is snapshotted
as JSON for checkpoints.
"""

from __future__ import annotations

import heapq
import math
import time
from typing import Any

from headwater.core.watermarks import EventClock, event_time

from .fields import field_getter, quick_getter
from .snapshots import _decode_state, _encode_state, _state_dict
from .window_aggs import WindowAggs

__all__ = ["PaneWindows", "SessionWindows"]

_INF = math.inf


class _Windows:
    """What tumbling, sliding and session windows share: time, lateness, output."""

    def __init__(
        self,
        *,
        time_field: str | None,
        key_field: str | None,
        lateness: float,
        late: str,
        aggs: WindowAggs,
        keep_items: bool,
        as_dict: bool,
        partial: bool,
        period: float,
    ) -> None:
        self.get_time = quick_getter(time_field) if time_field else None
        self.get_key = quick_getter(key_field) if key_field else None
        self.checked = [field_getter(f) for f in (time_field, key_field) if f] + aggs.checked
        """Getters whose errors name the field, to explain a failed item."""
        self.clock = EventClock(lateness if time_field else 0.0)
        self.dead_letter = late == "dead_letter"
        self.late_items: list[Any] = []
        self.late_dropped = 0
        self.aggs = aggs
        self.keep_items = keep_items
        self.as_dict = as_dict
        self.partial = partial
        self.next_end = _INF
        """The earliest end of an open window: nothing is due before it."""
        if time_field is None:
            # processing time: windows end by the wall clock, also while no input arrives
            self.tick_interval = min(max(period / 10.0, 0.001), 0.25)
            self.tick = self._tick

    @property
    def watermark(self) -> float | None:
        """The step's event-time watermark (``-inf`` before the first item); None with
        processing time."""
        return None if self.get_time is None else self.clock.watermark

    def advance(self, upstream: float) -> list[Any]:
        """An earlier event-time step's watermark: no on-time item before it will come,
        so this step's watermark is at least ``upstream`` minus its lateness; return the
        windows that made due."""
        clock = self.clock
        if self.get_time is None or upstream <= clock.max_seen:
            return []
        clock.see(upstream)
        return self._fire(clock.watermark) if clock.watermark >= self.next_end else []

    def _explain(self, batch: list[Any], exc: Exception) -> Exception:
        """The error naming the field an item of ``batch`` lacks (the hot loop reads
        fields with plain subscripts), or ``exc`` itself."""
        for item in batch:
            for get in self.checked:
                try:
                    get(item)
                except Exception as named:
                    return named
        return exc

    def __call__(self, batch: list[Any]) -> list[Any]:
        """Add ``batch``; return the windows the watermark passed."""
        try:
            return self._add(batch)
        except (KeyError, IndexError, TypeError) as exc:
            raise self._explain(batch, exc) from exc

    def _add(self, batch: list[Any]) -> list[Any]:
        raise NotImplementedError

    def _late(self, item: Any) -> None:
        if self.dead_letter:
            self.late_items.append(item)
        else:
            self.late_dropped += 1

    def take_late(self) -> tuple[list[Any], int]:
        """Late items for the dead-letter sink and the number dropped, since the last call."""
        items, dropped = self.late_items, self.late_dropped
        if not items and not dropped:
            return items, 0
        self.late_items = []
        self.late_dropped = 0
        return items, dropped

    def _now(self) -> float:
        """Processing time: the wall clock, never going back."""
        now = time.time()
        clock = self.clock
        if now > clock.max_seen:
            clock.see(now)
        return clock.max_seen

    def _window(self, key: Any, start: float, end: float, acc: list[Any], items: Any) -> Any:
        if not self.as_dict:
            return items
        out: dict[str, Any] = {"key": key, "start": start, "end": end}
        if self.keep_items:
            out["items"] = items
        self.aggs.results(acc, out)
        return out

    def _tick(self) -> list[Any]:
        """Processing time: the windows that ended by the wall clock."""
        wm = self._now()
        return self._fire(wm) if wm >= self.next_end else []

    def _fire(self, wm: float) -> list[Any]:
        raise NotImplementedError

    def flush(self) -> list[Any]:
        """End of stream: every open window (with ``partial``)."""
        out = self._fire(_INF)
        return out if self.partial else []


class PaneWindows(_Windows):
    """Tumbling (``step == size``) and sliding windows aligned to the epoch."""

    def __init__(self, size: float, step: float, **kw: Any) -> None:
        super().__init__(period=min(size, step), **kw)
        self.size = size
        self.step = step
        self.panes: dict[float, dict[Any, list[Any]]] = {}
        """Open windows: start -> key -> accumulator."""

    def _add(self, batch: list[Any]) -> list[Any]:
        if self.get_time is None:
            now = self._now()
            for item in batch:
                self._place(now, item)
        elif self.step != self.size:
            clock = self.clock
            get_time = self.get_time
            for item in batch:
                t = get_time(item)
                if type(t) is not int and not (type(t) is float and t - t == 0):
                    t = event_time(t)
                if t < clock.watermark:
                    self._late(item)
                    continue
                clock.see(t)
                self._place(t, item)
        else:
            self._tumble(batch)
        wm = self.clock.watermark
        return self._fire(wm) if wm >= self.next_end else []

    def _place(self, t: float, item: Any) -> None:
        """Add one item of time ``t`` to every window it falls in."""
        size = self.size
        step = self.step
        key = None if self.get_key is None else self.get_key(item)
        start = t // step * step
        panes = self.panes
        while start + size > t:  # sliding windows may leave gaps (step > size)
            pane = panes.get(start)
            if pane is None:
                pane = panes[start] = {}
                if start + size < self.next_end:
                    self.next_end = start + size
            acc = pane.get(key)
            if acc is None:
                acc = pane[key] = self.aggs.new()
            self.aggs.update(acc, item)
            start -= step

    def _tumble(self, batch: list[Any]) -> None:
        """Event-time tumbling windows: the hot loop, with everything in locals."""
        get_time = self.get_time
        assert get_time is not None
        get_key = self.get_key
        panes = self.panes
        size = self.size
        new = self.aggs.new
        update = self.aggs.update
        clock = self.clock
        wm = clock.watermark
        max_seen = clock.max_seen
        lateness = clock.lateness
        next_end = self.next_end
        key = None
        try:
            for item in batch:
                t = get_time(item)
                if type(t) is not int and not (type(t) is float and t - t == 0):
                    t = event_time(t)
                if t < wm:
                    self._late(item)
                    continue
                if t > max_seen:
                    max_seen = t
                    wm = t - lateness
                start = t // size * size
                pane = panes.get(start)
                if pane is None:
                    pane = panes[start] = {}
                    if start + size < next_end:
                        next_end = start + size
                if get_key is not None:
                    key = get_key(item)
                acc = pane.get(key)
                if acc is None:
                    acc = pane[key] = new()
                update(acc, item)
        finally:
            clock.max_seen = max_seen
            clock.watermark = wm
            self.next_end = next_end

    def _fire(self, wm: float) -> list[Any]:
        """Emit and forget the windows whose end the watermark ``wm`` reached."""
        panes = self.panes
        size = self.size
        out: list[Any] = []
        for start in sorted(s for s in panes if s + size <= wm):
            end = start + size
            for key, acc in panes.pop(start).items():
                out.append(self._window(key, start, end, acc, acc[0]))
        self.next_end = min(panes) + size if panes else _INF
        return out

    def snapshot(self) -> dict[str, Any]:
        """Open windows and the largest time seen, for a checkpoint."""
        return {
            "max_seen": self.clock.snapshot(),
            "panes": [
                [start, [[_encode_state(k), _encode_state(acc)] for k, acc in pane.items()]]
                for start, pane in self.panes.items()
            ],
        }

    def restore(self, state: Any) -> None:
        """Continue from :meth:`snapshot`."""
        state = _state_dict(state, "window", "max_seen", "panes")
        self.clock.restore(state["max_seen"])
        self.panes = {
            start: {_decode_state(k): _decode_state(acc) for k, acc in pane}
            for start, pane in state["panes"]
        }
        self.next_end = min(self.panes) + self.size if self.panes else _INF


class SessionWindows(_Windows):
    """Session windows: a key's items less than ``gap`` apart; each ends ``gap`` after
    its last item.

    A key's open sessions are ``[first, last, accumulator, items]`` lists (``items`` as
    ``(arrival number, item)`` pairs, so that sessions an item bridges merge in arrival
    order). A heap of ``(end, first, key number, tiebreak, key)`` finds due sessions; an
    entry whose session grew or merged since is stale and skipped.
    """

    def __init__(self, gap: float, **kw: Any) -> None:
        super().__init__(period=gap, **kw)
        self.gap = gap
        self.sessions: dict[Any, list[list[Any]]] = {}
        self.key_ids: dict[Any, int] = {}
        self.heap: list[tuple[float, float, int, int, Any]] = []
        self.seq = 0
        """Arrival number of the next item."""
        self.pushes = 0

    def _add(self, batch: list[Any]) -> list[Any]:
        get_time = self.get_time
        get_key = self.get_key
        clock = self.clock
        now = self._now() if get_time is None else 0.0
        key = None
        for item in batch:
            if get_time is None:
                t = now
            else:
                t = get_time(item)
                if type(t) is not int and not (type(t) is float and t - t == 0):
                    t = event_time(t)
                if t < clock.watermark:
                    self._late(item)
                    continue
                clock.see(t)
            if get_key is not None:
                key = get_key(item)
            self._insert(key, t, item)
        wm = clock.watermark
        return self._fire(wm) if wm >= self.next_end else []

    def _insert(self, key: Any, t: float, item: Any) -> None:
        gap = self.gap
        seq = self.seq
        self.seq = seq + 1
        open_ = self.sessions.get(key)
        if open_ is None:
            open_ = self.sessions[key] = []
            self.key_ids[key] = self.pushes
        hits = [s for s in open_ if s[0] - gap < t < s[1] + gap]
        session: list[Any]
        if not hits:
            session = [t, t, self.aggs.new(), [] if self.keep_items else None]
            open_.append(session)
        else:
            session = hits[0]
            for other in hits[1:]:  # t bridges sessions: they become one
                open_.remove(other)
                session[0] = min(session[0], other[0])
                session[1] = max(session[1], other[1])
                self.aggs.merge(session[2], other[2])
                if self.keep_items:
                    session[3] = list(heapq.merge(session[3], other[3]))
            session[0] = min(session[0], t)
            session[1] = max(session[1], t)
        self.aggs.update(session[2], item)
        if self.keep_items:
            session[3].append((seq, item))
        self._push(key, session)

    def _push(self, key: Any, session: list[Any]) -> None:
        end = session[1] + self.gap
        self.pushes += 1
        heapq.heappush(self.heap, (end, session[0], self.key_ids[key], self.pushes, key))
        if end < self.next_end:
            self.next_end = end

    def _fire(self, wm: float) -> list[Any]:
        """Emit and forget the sessions whose end the watermark ``wm`` reached."""
        heap = self.heap
        gap = self.gap
        out: list[Any] = []
        while heap and heap[0][0] <= wm:
            end, first, _, _, key = heapq.heappop(heap)
            open_ = self.sessions.get(key)
            for session in open_ or ():
                if session[0] == first and session[1] + gap == end:
                    assert open_ is not None
                    open_.remove(session)
                    items = [x for _, x in session[3]] if self.keep_items else None
                    out.append(self._window(key, first, end, session[2], items))
                    if not open_:
                        del self.sessions[key]
                        del self.key_ids[key]
                    break
        self.next_end = heap[0][0] if heap else _INF
        return out

    def snapshot(self) -> dict[str, Any]:
        """Open sessions and the largest time seen, for a checkpoint."""
        return {
            "max_seen": self.clock.snapshot(),
            "seq": self.seq,
            "sessions": [
                [_encode_state(key), self.key_ids[key], _encode_state(open_)]
                for key, open_ in self.sessions.items()
            ],
        }

    def restore(self, state: Any) -> None:
        """Continue from :meth:`snapshot`."""
        state = _state_dict(state, "window", "max_seen", "seq", "sessions")
        self.clock.restore(state["max_seen"])
        self.seq = int(state["seq"])
        self.sessions = {}
        self.key_ids = {}
        self.heap = []
        self.next_end = _INF
        for raw_key, key_id, raw in state["sessions"]:
            key = _decode_state(raw_key)
            self.sessions[key] = open_ = _decode_state(raw)
            self.key_ids[key] = int(key_id)
            self.pushes = max(self.pushes, int(key_id))
            for session in open_:
                if self.keep_items:
                    session[3] = [tuple(pair) for pair in session[3]]
                self._push(key, session)
