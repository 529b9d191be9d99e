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


class _ProgressSlot:
    """A queue entry holding the latest progress of one stage until it is read."""

    __slots__ = ("event",)

    def __init__(self, event: Progress) -> None:
        self.event = event


class EventQueue:
    """Events of one run, in emission order, with progress coalesced per stage.

    Progress is lossy by design: while a stage's progress event waits unread in the
    queue, newer progress of that stage replaces it in place (keeping its position), so a
    consumer that reads slowly, or not at all, costs bounded memory. Other events are kept
    in order up to ``MAX_PENDING``; beyond that the oldest are dropped and counted.
    ``emit`` may be called from worker threads once :meth:`bind_loop` was called.
    """

    def __init__(self) -> None:
        self._queue: deque[Event | _ProgressSlot] = deque()
        self._slots: dict[str, _ProgressSlot] = {}
        self._lock = threading.Lock()
        self._waiter: anyio.Event | None = None
        self._loop_thread = threading.get_ident()
        self._token: object | None = None
        self.dropped = 0

    def bind_loop(self) -> None:
        """Remember the running event loop, so that worker threads can wake the reader."""
        self._loop_thread = threading.get_ident()
        self._token = anyio.lowlevel.current_token()

    def emit(self, event: Event) -> None:
        """Queue an event and wake the reader."""
        with self._lock:
            if isinstance(event, Progress):
                slot = self._slots.get(event.stage)
                if slot is not None:
                    slot.event = event
                    return  # already queued and unread: the reader is awake or will be
                slot = self._slots[event.stage] = _ProgressSlot(event)
                self._queue.append(slot)
            else:
                if len(self._queue) >= MAX_PENDING:
                    dropped = self._queue.popleft()
                    if isinstance(dropped, _ProgressSlot):
                        self._slots.pop(dropped.event.stage, None)
                    self.dropped += 1
                self._queue.append(event)
            waiter = self._waiter
            self._waiter = None
        if waiter is not None:
            if threading.get_ident() == self._loop_thread:
                waiter.set()
            else:
                # RuntimeError: the loop is gone (the run was torn down)
                with contextlib.suppress(RuntimeError):
                    anyio.from_thread.run_sync(waiter.set, token=self._token)  # type: ignore[arg-type]

    def _pop(self) -> Event | None:
        with self._lock:
            if not self._queue:
                self._waiter = anyio.Event()
                return None
            entry = self._queue.popleft()
            if isinstance(entry, _ProgressSlot):
                del self._slots[entry.event.stage]
                return entry.event
            return entry

    async def __aiter__(self) -> AsyncIterator[Event]:
        """Yield events until (and including) the final :class:`Complete`."""
        while True:
            event = self._pop()
            if event is None:
                waiter = self._waiter
                if waiter is not None:
                    await waiter.wait()
                continue
            yield event
            if isinstance(event, Complete):
                return
