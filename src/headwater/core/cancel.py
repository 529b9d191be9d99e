"""An explicit cancellation signal an embedder can hand around: :class:`CancelToken`.

anyio's cancel scopes cancel the code lexically inside them. A token cancels a stream
from anywhere: another task, another thread, another event loop. ``cancel()`` only
flips a flag under a lock and schedules wake-ups, so it is safe (and cheap) to call from
any thread, any number of times; the first reason given is the one kept.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import anyio
import anyio.lowlevel

__all__ = ["CancelToken"]


class CancelToken:
    """A one-shot, thread-safe cancellation signal.

    ::

        token = headwater.CancelToken()
        async for chunk in engine.stream_action("file.find", cancel=token, ...):
            if enough(chunk):
                token.cancel("found it")   # or from another task or thread

    A stream watching the token is cancelled as soon as it fires and raises
    :class:`~headwater.PipelineCancelled` carrying the reason. One token may watch
    several streams; it cannot be reset.
    """

    __slots__ = ("_cancelled", "_lock", "_reason", "_waiters")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled = False
        self._reason: str | None = None
        self._waiters: list[tuple[anyio.Event, int, Any]] = []

    @property
    def cancelled(self) -> bool:
        """True once :meth:`cancel` was called."""
        return self._cancelled

    @property
    def reason(self) -> str | None:
        """The reason given to the first :meth:`cancel` call (None when none was)."""
        return self._reason

    def cancel(self, reason: str | None = None) -> None:
        """Fire the token: wake every :meth:`wait` on any event loop. Later calls do
        nothing (the first reason is kept). Never blocks."""
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            self._reason = reason
            waiters, self._waiters = self._waiters, []
        here = threading.get_ident()
        for event, thread, token in waiters:
            if thread == here:
                event.set()
            else:
                _set_soon(event, token)

    async def wait(self) -> None:
        """Return once the token is cancelled (at once if it already is)."""
        with self._lock:
            if self._cancelled:
                event = None
            else:
                event = anyio.Event()
                entry = (event, threading.get_ident(), anyio.lowlevel.current_token().native_token)
                self._waiters.append(entry)
        if event is None:
            await anyio.lowlevel.checkpoint()
            return
        try:
            await event.wait()
        finally:
            with self._lock, contextlib.suppress(ValueError):
                self._waiters.remove(entry)

    def __repr__(self) -> str:
        if not self._cancelled:
            return "<CancelToken>"
        return f"<CancelToken cancelled reason={self._reason!r}>"


def _set_soon(event: anyio.Event, native_token: Any) -> None:
    """Set ``event`` in the event loop of ``native_token`` (asyncio's loop or trio's
    token) without waiting for it: the caller may be another loop's thread."""
    schedule = getattr(native_token, "call_soon_threadsafe", None)  # asyncio
    if schedule is None:
        schedule = native_token.run_sync_soon  # trio
    # RuntimeError (asyncio) or trio.RunFinishedError: that loop is gone, nobody waits
    with contextlib.suppress(Exception):
        schedule(event.set)
