"""The per-run queue of control events, read by a run handle's ``events()``."""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import AsyncIterator

import anyio

from .events import Complete, Event, Progress

__all__ = ["EventQueue"]

MAX_PENDING = 10_000


class EventQueue:
    """Events of one run, in order, with progress coalesced per stage.

    Progress is lossy by design (the latest value per stage wins), so a consumer that
    reads slowly, or not at all, costs bounded memory. Other events are kept in order up
    to ``MAX_PENDING``; beyond that the oldest non-final events are dropped and counted.
    ``emit`` may be called from worker threads.
    """

    def __init__(self) -> None:
        self._progress: dict[str, Progress] = {}
        self._queue: deque[Event] = deque()
        self._waiter: anyio.Event | None = None
        self._loop_thread = threading.get_ident()
        self._finished = False
        self.dropped = 0

    def emit(self, event: Event) -> None:
        """Queue an event and wake the reader."""
        if isinstance(event, Progress):
            self._progress[event.stage] = event
        else:
            if len(self._queue) >= MAX_PENDING:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(event)
            if isinstance(event, Complete):
                self._finished = True
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if threading.get_ident() == self._loop_thread:
                waiter.set()
            else:
                # RuntimeError: not an anyio worker thread, or the loop is gone
                with contextlib.suppress(RuntimeError):
                    anyio.from_thread.run_sync(waiter.set)

    async def __aiter__(self) -> AsyncIterator[Event]:
        """Yield events until (and including) the final :class:`Complete`."""
        while True:
            if self._progress:
                pending = list(self._progress.values())
                self._progress.clear()
                for progress in pending:
                    yield progress
            while self._queue:
                event = self._queue.popleft()
                yield event
                if isinstance(event, Complete):
                    return
            if not self._progress:
                waiter = self._waiter = anyio.Event()
                await waiter.wait()
