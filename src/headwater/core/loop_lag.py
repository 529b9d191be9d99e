"""Watching the event loop for code that blocks it.

Everything of a run shares one event loop: a ``fn`` that sleeps, a sink doing blocking
I/O on it, or a CPU-bound step stalls every stage, every broker connection (heartbeats
and acknowledgements included) and every HTTP probe of the process. :class:`LagMonitor`
finds such code:

* a **tick task** on the loop sleeps ``interval`` seconds at a time and measures how late
  it wakes up (the loop's *lag*);
* a **watchdog thread** notices when the tick is overdue by more than ``threshold``
  while it happens, and logs a warning with the **stack of the loop's thread** at that
  moment: the code that is blocking it (once per stall, with its length when it ends).

:meth:`LagMonitor.figures` (``lag_seconds``, ``max_lag_seconds``, ``stalls``,
``stalled_seconds``, ``stalled_now``) joins the engine's metrics under ``event_loop``.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from types import TracebackType
from typing import Any, Self

import anyio

__all__ = ["LagMonitor"]

log = logging.getLogger("headwater.loop")


class LagMonitor:
    """Measures the event loop's lag and reports what blocks it (see the module).

    An async context manager, entered on the loop to watch. ``metrics`` (an engine's
    :class:`~headwater.core.metrics.MetricsRegistry`), when given, shows the figures
    under ``event_loop`` while the monitor runs.
    """

    def __init__(
        self,
        *,
        threshold: float = 0.5,
        interval: float = 0.05,
        metrics: Any = None,
        logger: logging.Logger | logging.LoggerAdapter[Any] = log,
    ) -> None:
        if threshold <= 0 or interval <= 0:
            raise ValueError("threshold and interval must be > 0")
        self.threshold = threshold
        self.interval = interval
        self.metrics = metrics
        self.log = logger
        self.lag = 0.0
        """Lateness of the latest tick, in seconds."""
        self.max_lag = 0.0
        self.stalls = 0
        """Stalls longer than ``threshold`` seen so far."""
        self.stalled_seconds = 0.0
        self._last_tick = time.monotonic()
        self._stall_reported = False
        self._loop_thread = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tg: Any = None

    def figures(self) -> dict[str, Any]:
        """The monitor's metrics (JSON-serialisable)."""
        overdue = time.monotonic() - self._last_tick - self.interval
        return {
            "lag_seconds": round(self.lag, 6),
            "max_lag_seconds": round(self.max_lag, 6),
            "stalls": self.stalls,
            "stalled_seconds": round(self.stalled_seconds, 3),
            "stalled_now": round(max(0.0, overdue), 3) if self._stall_reported else 0.0,
        }

    def stalled_for(self) -> float:
        """Seconds the loop has been blocked right now (0 when it runs)."""
        return max(0.0, time.monotonic() - self._last_tick - self.interval)

    async def _tick(self) -> None:
        interval = self.interval
        while True:
            # measured from the previous tick (or the start), so that a block before this
            # task first ran counts too
            await anyio.sleep(interval)
            now = time.monotonic()
            self.lag = max(0.0, now - self._last_tick - interval)
            self.max_lag = max(self.max_lag, self.lag)
            self._last_tick = now
            if self._stall_reported:
                self._stall_reported = False
                self.stalled_seconds += self.lag
                self.log.warning("event loop ran again after being blocked for %.2fs", self.lag)

    def _watch(self) -> None:
        """The watchdog thread: report a stall once, with the loop thread's stack."""
        period = min(self.interval, self.threshold) / 2
        while not self._stop.wait(period):
            overdue = time.monotonic() - self._last_tick - self.interval
            if overdue < self.threshold or self._stall_reported:
                continue
            frame = sys._current_frames().get(self._loop_thread)
            stack = "".join(traceback.format_stack(frame)) if frame is not None else ""
            self._stall_reported = True
            self.stalls += 1
            self.log.warning(
                "event loop blocked for more than %.2fs: something runs on it without "
                "awaiting (blocking I/O, time.sleep, heavy CPU); the loop thread is at:\n%s",
                overdue,
                stack.rstrip(),
                extra={"stack": stack},
            )

    async def __aenter__(self) -> Self:
        self._loop_thread = threading.get_ident()
        self._last_tick = time.monotonic()
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="headwater-loop-lag", daemon=True)
        self._thread.start()
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        tg.start_soon(self._tick)
        if self.metrics is not None:
            self.metrics.add_source("event_loop", self.figures)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.metrics is not None:
            self.metrics.remove_source("event_loop")
        self._stop.set()
        tg, self._tg = self._tg, None
        if tg is not None:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)
        if self._thread is not None:
            self._thread.join(timeout=1)
