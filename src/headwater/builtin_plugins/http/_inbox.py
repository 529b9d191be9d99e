"""Where the webhook's requests wait for its source: a bounded, thread-safe inbox.

The webhook's HTTP server runs in a thread of its own (its own event loop, under
uvicorn); the source runs on the run's event loop. A request's items are *offered* to
the :class:`Inbox` whole or not at all: when they do not fit in what is left of
``capacity`` items, the offer is refused and the server answers 429 (backpressure
reaches the sender, who retries after ``Retry-After``). The source *takes* everything
waiting at once, as one batch.

With ``ack: commit`` each accepted request carries a :class:`Ticket`: its handler waits
for it, and the source settles it once a checkpoint covering the request's items was
committed (the handler then answers 202), or as failed when the run ends first (503:
the sender sends it again).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Any

import anyio
import anyio.lowlevel

from headwater.core.cancel import _set_soon

__all__ = ["Inbox", "Ticket"]


class Ticket:
    """One accepted request waiting for its commit, on the server's event loop.

    Created by the request's handler (on the server's loop); :meth:`settle` may be
    called from any thread, once (later calls do nothing).
    """

    __slots__ = ("_future", "_loop", "items")

    def __init__(self, items: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._future: asyncio.Future[bool] = self._loop.create_future()
        self.items = items

    def settle(self, committed: bool) -> None:
        """Tell the waiting handler: committed (202) or not (503)."""

        def done() -> None:
            if not self._future.done():
                self._future.set_result(committed)

        # RuntimeError: the server's loop is gone, nobody waits any more
        try:
            self._loop.call_soon_threadsafe(done)
        except RuntimeError:
            return

    async def wait(self, patience: float) -> bool | None:
        """True (committed), False (not: the run ended) or None (timed out)."""
        try:
            return await asyncio.wait_for(asyncio.shield(self._future), patience)
        except TimeoutError:
            return None


class Inbox:
    """Requests waiting for the source (see the module docstring).

    Create it on the run's event loop (it keeps the loop's token to wake the source);
    :meth:`offer` is called from the server's thread.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._waiting: deque[tuple[list[Any], Ticket | None]] = deque()
        self._count = 0
        self._closed = False
        self._need_wake = True
        self._ready = anyio.Event()
        self._token = anyio.lowlevel.current_token().native_token
        self.accepted = 0
        """Requests accepted so far."""
        self.refused = 0
        """Requests refused because the inbox was full."""

    # -- the server's side ----------------------------------------------------------------

    def offer(self, items: list[Any], ticket: Ticket | None) -> str | None:
        """Queue a request's items; None when accepted, else why not: ``full`` or
        ``closed``. A request larger than the whole capacity is accepted when the inbox
        is empty (it could never fit otherwise)."""
        with self._lock:
            if self._closed:
                return "closed"
            if self._count and self._count + len(items) > self.capacity:
                self.refused += 1
                return "full"
            self._waiting.append((items, ticket))
            self._count += len(items)
            self.accepted += 1
            ready = self._ready if self._need_wake else None
            self._need_wake = False
        if ready is not None:
            _set_soon(ready, self._token)
        return None

    # -- the source's side -----------------------------------------------------------------

    async def take(self, patience: float) -> list[tuple[list[Any], Ticket | None]]:
        """Everything waiting, after waiting up to ``patience`` seconds for something."""
        with anyio.move_on_after(patience):
            await self._ready.wait()
        with self._lock:
            taken = list(self._waiting)
            self._waiting.clear()
            self._count = 0
            if self._ready.is_set():
                self._ready = anyio.Event()
            self._need_wake = True
        return taken

    def close(self) -> None:
        """Refuse further requests (answered 503)."""
        with self._lock:
            self._closed = True

    def leftovers(self) -> list[tuple[list[Any], Ticket | None]]:
        """What is still waiting, taken without waiting (after :meth:`close`)."""
        with self._lock:
            taken = list(self._waiting)
            self._waiting.clear()
            self._count = 0
        return taken
