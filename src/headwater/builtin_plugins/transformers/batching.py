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

from .fields import _STRICT
from .snapshots import _age, _at, _decode_state, _encode_state, _state_dict


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

    type: Literal["tumbling", "sliding"] = Field(
        "tumbling",
        description="tumbling: back-to-back windows, each item in exactly one; sliding: a "
        "window starts every step and lasts size (or seconds), so windows may overlap.",
    )
    size: int | None = Field(
        None, ge=1, le=10_000_000, description="Window length as a count of items."
    )
    seconds: float | None = Field(
        None, gt=0, description="Window length as a duration in seconds (arrival time)."
    )
    step: float | None = Field(
        None,
        gt=0,
        description="Sliding windows only: distance between window starts, in items (with "
        "size) or seconds (with seconds). A step larger than the window leaves gaps.",
    )
    partial: bool = Field(
        True,
        description="At the end of the stream, emit the last incomplete window if it holds "
        "items no emitted window held.",
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
        if info.data.get("type") == "tumbling":
            raise ValueError("step applies to sliding windows only")
        if info.data.get("size") is not None and not float(step).is_integer():
            raise ValueError("step must be a whole number of items when the window has a size")
        return step

    @model_validator(mode="after")
    def _complete(self) -> WindowParams:
        if self.size is None and self.seconds is None:
            raise ValueError("window needs size (a count of items) or seconds (a duration)")
        if self.type == "sliding" and self.step is None:
            raise ValueError("a sliding window needs step (how far each window start moves)")
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
    output="lists of items, one per window",
    capabilities=("stateful",),
)
def window_transformer(params: WindowParams) -> _CountWindows | _TimeWindows:
    """Group items into count or time windows (tumbling or sliding); emits lists.

    A count window holds ``size`` items; a time window holds the items that arrived
    during ``seconds``. Tumbling windows follow each other; sliding windows start every
    ``step`` (items or seconds) and may overlap. Time windows are emitted when they end,
    even while no input arrives; empty time windows are not emitted. At the end of the
    stream the incomplete window is emitted when ``partial`` is true and it holds items
    that no emitted window held.
    """
    if params.size is not None:
        step = params.size if params.step is None else int(params.step)
        return _CountWindows(params.size, step, params.partial)
    assert params.seconds is not None
    step_s = params.seconds if params.step is None else float(params.step)
    return _TimeWindows(params.seconds, step_s, params.partial)
