"""Bounded, batching channels between pipeline stages.

A :class:`BatchChannel` is a bounded buffer of *items* with one consumer that takes
everything pending at once. A fast producer that never suspends fills it to capacity
before the consumer runs, so batches grow to the capacity; a slow producer suspends
after every item, so the consumer receives each item at once. Batch size adapts to the
producer with no timer and no per-item await: that is what makes per-item authoring cheap.

Memory is bounded by construction: a producer that finds the channel at capacity waits
until the consumer takes the pending items (backpressure).
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from typing import Any

import anyio

__all__ = ["BatchChannel", "DownstreamClosed", "ThreadFeed"]


class DownstreamClosed(Exception):
    """The consumer stopped reading (e.g. ``take`` got enough): the producer should stop."""


class BatchChannel:
    """Single-consumer, multi-producer bounded channel of items, read in batches."""

    __slots__ = (
        "_markers",
        "_not_empty",
        "_not_full",
        "_producer_scopes",
        "_reader_closed",
        "_writers",
        "capacity",
        "items",
        "taken",
    )

    def __init__(self, capacity: int, writers: int = 1) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.items: list[Any] = []
        """Pending items. Producers may append to it directly (then call :meth:`pushed`),
        re-reading the attribute after every suspension: :meth:`get` replaces the list."""
        self.taken = 0
        """Items handed to the consumer so far."""
        self._writers = writers
        self._not_empty: anyio.Event | None = None
        self._not_full: anyio.Event | None = None
        self._reader_closed = False
        self._producer_scopes: list[anyio.CancelScope] = []
        self._markers: list[tuple[int, Any]] = []

    def add_writers(self, count: int) -> None:
        """Declare ``count`` more producers (``merge`` of several sources)."""
        self._writers += count

    def add_producer_scope(self, scope: anyio.CancelScope) -> None:
        """Register a producer's scope, cancelled when the consumer stops reading."""
        self._producer_scopes.append(scope)
        if self._reader_closed:
            scope.cancel()

    # -- producer side ------------------------------------------------------------------

    def wake(self) -> None:
        """Wake a waiting consumer; call after appending to an empty ``items`` list."""
        waiter = self._not_empty
        if waiter is not None:
            self._not_empty = None
            waiter.set()

    async def pushed(self) -> None:
        """Call after appending: wakes the consumer, waits while the channel is full."""
        if self._reader_closed:
            raise DownstreamClosed
        self.wake()
        while len(self.items) >= self.capacity:
            if self._not_full is None:
                self._not_full = anyio.Event()
            await self._not_full.wait()
            if self._reader_closed:
                raise DownstreamClosed

    async def put_batch(self, batch: list[Any]) -> None:
        """Append a whole batch (waiting first while the channel is full).

        The channel may keep ``batch`` itself: the caller must not use it afterwards.
        """
        if self._reader_closed:
            raise DownstreamClosed
        while len(self.items) >= self.capacity:
            if self._not_full is None:
                self._not_full = anyio.Event()
            await self._not_full.wait()
            if self._reader_closed:
                raise DownstreamClosed
        if self.items:
            self.items.extend(batch)
        else:
            # adopt the list rather than copy it: the producer hands it over for good
            self.items = batch
            self.wake()

    def put_marker(self, marker: Any) -> None:
        """Place a checkpoint marker after every item put so far (it travels with them)."""
        if self._reader_closed:
            return
        self._markers.append((self.taken + len(self.items), marker))
        self.wake()

    def pop_markers(self, base: int) -> list[tuple[int, Any]]:
        """Markers taken with the last batch, as ``(offset in that batch, marker)``.

        ``base`` is the value of :attr:`taken` before the batch was taken.
        """
        markers = self._markers
        if not markers:
            return markers
        self._markers = []
        return [(index - base, marker) for index, marker in markers]

    @property
    def has_markers(self) -> bool:
        """True when markers wait to be popped."""
        return bool(self._markers)

    def close_writer(self) -> None:
        """One producer is done; the consumer sees the end once all producers are."""
        self._writers -= 1
        if self._writers <= 0:
            self.wake()

    @property
    def reader_closed(self) -> bool:
        """True once the consumer stopped reading."""
        return self._reader_closed

    # -- consumer side ------------------------------------------------------------------

    async def get(self) -> list[Any]:
        """Take every pending item; raises ``anyio.EndOfStream`` when drained and closed."""
        while not self.items and not self._markers:
            if self._writers <= 0:
                raise anyio.EndOfStream
            waiter = self._not_empty = anyio.Event()
            await waiter.wait()
        batch = self.items
        self.items = []
        self.taken += len(batch)
        full_waiter = self._not_full
        if full_waiter is not None:
            self._not_full = None
            full_waiter.set()
        return batch

    def close_reader(self) -> None:
        """The consumer will read no more: pending items are dropped, producers stop."""
        if self._reader_closed:
            return
        self._reader_closed = True
        self.items.clear()
        for scope in self._producer_scopes:
            scope.cancel()
        waiter = self._not_full
        if waiter is not None:
            self._not_full = None
            waiter.set()


class ThreadFeed:
    """Carries items from a worker thread (a sync generator) into a :class:`BatchChannel`.

    Create it on the event loop; the producing thread may be any thread.

    The thread appends under a lock and wakes the event loop only when the buffer goes
    from empty to non-empty; it blocks while the buffer is full (backpressure reaches the
    generator) and stops at the next item once :meth:`stop` was called.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)
        self._items: deque[Any] = deque()
        self._need_wake = True
        self._stopped = False
        self._done = False
        self.error: BaseException | None = None
        self._ready = anyio.Event()
        # must be created on the event loop: the worker is a plain daemon thread, which
        # needs the loop's token to call back into it
        self._token = anyio.lowlevel.current_token()

    # -- thread side --------------------------------------------------------------------

    def put(self, item: Any) -> bool:
        """Called in the worker thread; returns False when the run is stopping."""
        with self._lock:
            while len(self._items) >= self.capacity and not self._stopped:
                self._space.wait(0.25)
            if self._stopped:
                return False
            self._items.append(item)
            ready = self._ready if self._need_wake else None
            self._need_wake = False
        if ready is not None:
            self._wake_from_thread(ready)
        return True

    def finish(self, error: BaseException | None = None) -> None:
        """Called in the worker thread when the generator ended (or raised)."""
        with self._lock:
            self.error = error
            self._done = True
            self._need_wake = False
            ready = self._ready
        self._wake_from_thread(ready)

    def _wake_from_thread(self, ready: anyio.Event) -> None:
        # RuntimeError: the event loop is gone, the run was torn down and nobody waits
        with contextlib.suppress(RuntimeError):
            anyio.from_thread.run_sync(ready.set, token=self._token)

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stopped

    # -- event loop side ----------------------------------------------------------------

    async def drain(self) -> tuple[list[Any], bool]:
        """Wait for items; returns ``(items, done)``."""
        await self._ready.wait()
        with self._lock:
            items = list(self._items)
            self._items.clear()
            done = self._done
            self._ready = anyio.Event()
            if done:
                self._ready.set()
            else:
                self._need_wake = True
            self._space.notify_all()
        return items, done

    def stop(self) -> None:
        """Ask the thread to stop at its next item and unblock it if it waits for space."""
        with self._lock:
            self._stopped = True
            self._space.notify_all()
