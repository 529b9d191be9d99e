"""Transformers grouping items into lists: ``batch`` and ``window``.

Both are ``batch`` steps working on whole lists, and stateful (``snapshot()`` /
``restore(state)``). The time-driven variants (``seconds``) expose ``tick_interval`` and
``tick()`` so that the runtime emits due lists even while no input arrives.
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

import headwater

from .fields import _STRICT, FieldPath
from .snapshots import _age, _at, _decode_state, _encode_state, _state_dict
from .window_aggs import WindowAggs, check_agg
from .windows import PaneWindows, SessionWindows


def _tick_interval(period: float) -> float:
    """How often to look for due output: a tenth of ``period``, between 1 ms and 250 ms."""
    return min(max(period / 10.0, 0.001), 0.25)


# ---------------------------------------------------------------------------------------
# batch
# ---------------------------------------------------------------------------------------


class BatchParams(BaseModel):
    """Params of ``batch``."""

    model_config = _STRICT

    size: int | None = Field(
        None, ge=1, le=10_000_000, description="Emit a list as soon as it holds this many items."
    )
    seconds: float | None = Field(
        None,
        gt=0,
        description="Emit a list once its first item has waited this long (even if the "
        "input goes quiet).",
    )

    @model_validator(mode="after")
    def _one_bound(self) -> BatchParams:
        if self.size is None and self.seconds is None:
            raise ValueError("batch needs size, seconds or both")
        return self


class _Batcher:
    """Groups items into lists of ``size`` (``batch`` without ``seconds``)."""

    def __init__(self, size: int | None) -> None:
        self.size = size
        self.pending: list[Any] = []

    def _cut(self, out: list[list[Any]]) -> bool:
        """Move full lists from ``pending`` into ``out``; True if any was cut."""
        size = self.size
        pending = self.pending
        if size is None or len(pending) < size:
            return False
        full = len(pending) - len(pending) % size
        out.extend(pending[i : i + size] for i in range(0, full, size))
        self.pending = pending[full:]
        return True

    def __call__(self, batch: list[Any]) -> list[list[Any]]:
        """Add ``batch``; return the lists completed by it."""
        out: list[list[Any]] = []
        self.pending.extend(batch)
        self._cut(out)
        return out

    def flush(self) -> list[list[Any]]:
        """End of stream: the last, partial list."""
        pending, self.pending = self.pending, []
        return [pending] if pending else []

    def snapshot(self) -> dict[str, Any]:
        """The pending items, for a checkpoint."""
        return {"pending": _encode_state(self.pending)}

    def restore(self, state: Any) -> None:
        """Continue from :meth:`snapshot`."""
        self.pending = _decode_state(_state_dict(state, "batch", "pending")["pending"])


class _TimedBatcher(_Batcher):
    """``batch`` with ``seconds``: also emits a list once its first item is old enough."""

    def __init__(self, size: int | None, seconds: float) -> None:
        super().__init__(size)
        self.seconds = seconds
        self.deadline = math.inf
        self.tick_interval = _tick_interval(seconds)

    def __call__(self, batch: list[Any]) -> list[list[Any]]:
        """Add ``batch``; return the lists completed by it or due by time."""
        now = time.monotonic()
        out = self.tick(now)
        if not batch:
            return out
        if not self.pending:
            self.deadline = now + self.seconds
        self.pending.extend(batch)
        if self._cut(out):
            # what is left arrived in this batch (a list is cut before older items pile up)
            self.deadline = now + self.seconds if self.pending else math.inf
        return out

    def tick(self, now: float | None = None) -> list[list[Any]]:
        """The pending list if its first item has waited ``seconds``, else nothing."""
        if self.pending and (time.monotonic() if now is None else now) >= self.deadline:
            pending, self.pending = self.pending, []
            self.deadline = math.inf
            return [pending]
        return []

    def snapshot(self) -> dict[str, Any]:
        """The pending items and how long the pending list has left, for a checkpoint."""
        state = super().snapshot()
        now = time.monotonic()
        state["left"] = None if math.isinf(self.deadline) else max(0.0, self.deadline - now)
        return state

    def restore(self, state: Any) -> None:
        """Continue from :meth:`snapshot`: the clock resumes where it stopped (the pending
        list has the time it had left at the checkpoint)."""
        super().restore(state)
        left = state.get("left")
        if not self.pending:
            self.deadline = math.inf
        else:
            self.deadline = time.monotonic() + (self.seconds if left is None else float(left))


@headwater.transformer(
    "batch",
    kind="batch",
    params=BatchParams,
    output="lists of consecutive items",
    capabilities=("stateful",),
)
def batch_transformer(params: BatchParams) -> _Batcher:
    """Group consecutive items into lists.

    A list is emitted when it holds ``size`` items, or when its first item has waited
    ``seconds`` (checked even while no input arrives), whichever comes first. The last,
    partial list is emitted at the end of the stream. Concatenating the lists gives back
    the input.
    """
    if params.seconds is None:
        return _Batcher(params.size)
    return _TimedBatcher(params.size, params.seconds)


# ---------------------------------------------------------------------------------------
# window
# ---------------------------------------------------------------------------------------


class WindowParams(BaseModel):
    """Params of ``window``."""

    model_config = _STRICT

    type: Literal["tumbling", "sliding", "session"] = Field(
        "tumbling",
        description="tumbling: back-to-back windows, each item in exactly one; sliding: a "
        "window starts every step and lasts size (or seconds), so windows may overlap; "
        "session: a key's items less than gap apart, ending gap after the last one.",
    )
    size: int | None = Field(
        None, ge=1, le=10_000_000, description="Window length as a count of items."
    )
    seconds: float | None = Field(
        None,
        gt=0,
        description="Window length as a duration in seconds (arrival time; event time "
        "with time: event).",
    )
    step: float | None = Field(
        None,
        gt=0,
        description="Sliding windows only: distance between window starts, in items (with "
        "size) or seconds (with seconds). A step larger than the window leaves gaps.",
    )
    gap: float | None = Field(
        None,
        gt=0,
        description="Session windows only: seconds without an item (of the key) that "
        "close a session.",
    )
    partial: bool = Field(
        True,
        description="At the end of the stream, emit the last incomplete window if it holds "
        "items no emitted window held (keyed and event-time windows: every open window).",
    )
    time: Literal["processing", "event"] = Field(
        "processing",
        description="processing: an item's time is when it arrives; event: it is read from "
        "the timestamp field, and windows are emitted as the watermark passes their end.",
    )
    timestamp: FieldPath | None = Field(
        None,
        description="time: event only: the field holding an item's event time, in seconds "
        "since the epoch or as an ISO 8601 string.",
    )
    by: FieldPath | None = Field(
        None, description="Keep separate windows per value of this field (the window's key)."
    )
    lateness: float = Field(
        0.0,
        ge=0,
        description="time: event only: how much disorder to tolerate, in seconds; the "
        "watermark is the largest event time seen minus lateness.",
    )
    late: Literal["drop", "dead_letter"] = Field(
        "drop",
        description="time: event only: what to do with an item whose event time is below "
        "the watermark when it arrives: drop it (counted as late and skipped) or send it "
        "to the pipeline's dead-letter sink.",
    )
    agg: dict[str, str] = Field(
        default_factory=dict,
        description="Running results added to each window, NAME -> count | sum:FIELD | "
        "min:FIELD | max:FIELD | mean:FIELD.",
    )
    keep_items: bool = Field(
        True,
        description="Keep the window's items (items in the window dict); false keeps only "
        "the agg results, so a window costs a few numbers whatever it holds.",
    )

    @field_validator("seconds")
    @classmethod
    def _not_both(cls, seconds: float | None, info: ValidationInfo) -> float | None:
        if seconds is not None and info.data.get("size") is not None:
            raise ValueError("give size (a count of items) or seconds (a duration), not both")
        return seconds

    @field_validator("step")
    @classmethod
    def _step_fits(cls, step: float | None, info: ValidationInfo) -> float | None:
        if step is None:
            return None
        if info.data.get("type") != "sliding":
            raise ValueError("step applies to sliding windows only")
        if info.data.get("size") is not None and not float(step).is_integer():
            raise ValueError("step must be a whole number of items when the window has a size")
        return step

    @field_validator("agg")
    @classmethod
    def _agg_ok(cls, agg: dict[str, str]) -> dict[str, str]:
        return check_agg(agg)

    @property
    def as_dict(self) -> bool:
        """Windows come out as dicts (key, start, end, items, agg results)."""
        return self.time == "event" or self.by is not None or bool(self.agg)

    @model_validator(mode="after")
    def _complete(self) -> WindowParams:
        event = self.time == "event"
        if self.type == "session":
            if self.gap is None:
                raise ValueError("a session window needs gap (seconds without an item)")
            if self.size is not None or self.seconds is not None:
                raise ValueError("a session window has a gap, not a size or seconds")
        else:
            if self.gap is not None:
                raise ValueError("gap applies to session windows only")
            if self.size is None and self.seconds is None:
                raise ValueError("window needs size (a count of items) or seconds (a duration)")
            if self.type == "sliding" and self.step is None:
                raise ValueError("a sliding window needs step (how far each window start moves)")
        if event and self.timestamp is None:
            raise ValueError("time: event needs timestamp (the field holding event times)")
        if not event:
            for name in ("timestamp", "lateness", "late"):
                if name in self.model_fields_set:
                    raise ValueError(f"{name} applies to time: event only")
        if self.size is not None and (self.as_dict or event):
            raise ValueError("count windows (size) cannot be keyed or use event time; give seconds")
        if not self.keep_items and not self.as_dict:
            raise ValueError(
                "keep_items: false applies to windows as dicts (with time: event, by or agg)"
            )
        return self


class _CountWindows:
    """Windows of ``size`` items starting every ``step`` items (tumbling: step == size)."""

    def __init__(self, size: int, step: int, partial: bool) -> None:
        self.size = size
        self.step = step
        self.partial = partial
        self.buf: list[Any] = []
        self.base = 0
        """Stream index of ``buf[0]``."""
        self.start = 0
        """Stream index where the next window starts."""
        self.covered = 0
        """Stream index up to which items were in an emitted window."""

    def __call__(self, batch: list[Any]) -> list[list[Any]]:
        """Add ``batch``; return the windows it completed."""
        buf = self.buf
        if not buf and self.start > self.base:
            # items in the gap between two windows (step > size) belong to none
            gap = min(self.start - self.base, len(batch))
            self.base += gap
            batch = batch[gap:]
        buf.extend(batch)
        base, size, step, start = self.base, self.size, self.step, self.start
        end = base + len(buf)
        out: list[list[Any]] = []
        while start + size <= end:
            i = start - base
            out.append(buf[i : i + size])
            self.covered = start + size
            start += step
        self.start = start
        drop = min(start - base, len(buf))
        if drop > 0:
            del buf[:drop]
            self.base = base + drop
        return out

    def flush(self) -> list[list[Any]]:
        """End of stream: the incomplete window, if it holds items not yet emitted."""
        buf, self.buf = self.buf, []
        if self.partial and buf and self.base + len(buf) > self.covered:
            return [buf]
        return []

    def snapshot(self) -> dict[str, Any]:
        """The buffered items and stream indexes, for a checkpoint."""
        return {
            "buf": _encode_state(self.buf),
            "base": self.base,
            "start": self.start,
            "covered": self.covered,
        }

    def restore(self, state: Any) -> None:
        """Continue from :meth:`snapshot`."""
        state = _state_dict(state, "window", "buf", "base", "start", "covered")
        self.buf = _decode_state(state["buf"])
        self.base = int(state["base"])
        self.start = int(state["start"])
        self.covered = int(state["covered"])


class _TimeWindows:
    """Windows lasting ``size`` seconds, one starting every ``step`` seconds.

    The first window starts when the first item arrives; later ones follow on that grid.
    Items carry their arrival time; windows without items are not emitted.
    """

    def __init__(self, size: float, step: float, partial: bool) -> None:
        self.size = size
        self.step = step
        self.partial = partial
        self.tick_interval = _tick_interval(min(size, step))
        self.chunks: list[tuple[float, list[Any]]] = []
        """(arrival time, items) in arrival order, all within not-yet-emitted windows."""
        self.start: float | None = None
        """Start time of the next window to emit."""
        self.covered = -math.inf
        """End time of the last emitted window."""

    def _due(self, now: float, out: list[list[Any]]) -> None:
        start = self.start
        if start is None:
            return
        size, step = self.size, self.step
        while start + size <= now:
            chunks = self.chunks
            if not chunks:
                # skip the empty windows at once: next start whose window is still open
                start += (math.floor((now - size - start) / step) + 1) * step
                break
            end = start + size
            window = [x for t, items in chunks if t < end for x in items]
            if window:
                out.append(window)
                self.covered = end
            start += step
            if chunks[0][0] < start:
                self.chunks = [c for c in chunks if c[0] >= start]
        self.start = start

    def __call__(self, batch: list[Any]) -> list[list[Any]]:
        """Add ``batch`` (arriving now); return the windows that ended."""
        now = time.monotonic()
        out: list[list[Any]] = []
        if self.start is None:
            self.start = now
        else:
            self._due(now, out)
        if batch and now >= self.start:  # else: in a gap between windows (step > size)
            self.chunks.append((now, list(batch)))
        return out

    def tick(self) -> list[list[Any]]:
        """The windows that ended since the last call."""
        out: list[list[Any]] = []
        self._due(time.monotonic(), out)
        return out

    def flush(self) -> list[list[Any]]:
        """End of stream: ended windows, then the open one if it holds unemitted items."""
        out = self.tick()
        chunks, self.chunks = self.chunks, []
        if self.partial and chunks and chunks[-1][0] >= self.covered:
            out.append([x for _, items in chunks for x in items])
        return out

    def snapshot(self) -> dict[str, Any]:
        """Pending items with their ages, and the window grid, for a checkpoint.

        Times are kept as ages (seconds before the snapshot): monotonic clocks of two
        processes have nothing in common.
        """
        now = time.monotonic()
        return {
            "chunks": [[now - t, _encode_state(items)] for t, items in self.chunks],
            "start": None if self.start is None else now - self.start,
            "covered": _age(now, self.covered),
        }

    def restore(self, state: Any) -> None:
        """Continue from :meth:`snapshot`: the clock resumes where it stopped, so every
        pending item falls into the same windows as without the interruption."""
        state = _state_dict(state, "window", "chunks", "start", "covered")
        now = time.monotonic()
        self.chunks = [(now - float(age), _decode_state(items)) for age, items in state["chunks"]]
        start = state["start"]
        self.start = None if start is None else now - float(start)
        self.covered = _at(now, state["covered"], -math.inf)


@headwater.transformer(
    "window",
    kind="batch",
    params=WindowParams,
    output="lists of items, one per window; with time: event, by or agg, dicts "
    "{key, start, end, items} plus the agg results",
    capabilities=("stateful",),
)
def window_transformer(
    params: WindowParams,
) -> _CountWindows | _TimeWindows | PaneWindows | SessionWindows:
    """Group items into count, time or session windows (tumbling, sliding, session).

    A count window holds ``size`` items; a time window holds the items that arrived
    during ``seconds``. Tumbling windows follow each other; sliding windows start every
    ``step`` (items or seconds) and may overlap. Time windows are emitted when they end,
    even while no input arrives; empty time windows are not emitted. At the end of the
    stream the incomplete window is emitted when ``partial`` is true and it holds items
    that no emitted window held.

    With ``time: event`` an item's time is its ``timestamp`` field and windows are emitted
    once the watermark (largest event time seen minus ``lateness``) passes their end;
    late items are dropped or dead-lettered (``late``). With ``by`` windows are kept per
    key. Then (and with ``agg``) windows are aligned to multiples of ``seconds`` (sliding:
    of ``step``) since the epoch and each is a dict ``{key, start, end, items}`` plus the
    ``agg`` results; ``keep_items: false`` keeps only the results. Session windows hold
    a key's items less than ``gap`` apart. See the Time and state page.
    """
    if params.as_dict or params.type == "session":
        common: dict[str, Any] = {
            "time_field": params.timestamp,
            "key_field": params.by,
            "lateness": params.lateness,
            "late": params.late,
            # sessions keep their items beside the accumulator (merged in arrival order)
            "aggs": WindowAggs(params.agg, params.keep_items and params.type != "session"),
            "keep_items": params.keep_items,
            "as_dict": params.as_dict,
            "partial": params.partial,
        }
        if params.type == "session":
            assert params.gap is not None
            return SessionWindows(_whole(params.gap), **common)
        assert params.seconds is not None
        size = _whole(params.seconds)
        step = size if params.step is None else _whole(params.step)
        return PaneWindows(size, step, **common)
    if params.size is not None:
        count_step = params.size if params.step is None else int(params.step)
        return _CountWindows(params.size, count_step, params.partial)
    assert params.seconds is not None
    step_s = params.seconds if params.step is None else float(params.step)
    return _TimeWindows(params.seconds, step_s, params.partial)


def _whole(seconds: float) -> float:
    """``seconds`` as an int when it is whole: window bounds of int times stay ints."""
    return int(seconds) if float(seconds).is_integer() else seconds
