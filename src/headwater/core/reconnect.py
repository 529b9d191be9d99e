"""Riding out broker outages: one retry policy for every connection to a broker.

A connection to Redis or NATS (a broker source or sink, the Redis checkpoint store, the
stream bridge between serve nodes) goes through a :class:`Link`. Every operation runs
through :func:`retry` (or :func:`retry_sync`): when it fails with an error the caller
deems transient (a refused or closed connection, a server still loading its data), the
link waits with **capped exponential backoff and jitter** and tries again, reconnecting
first when the caller gives a way to, until the operation succeeds or the outage has
lasted ``deadline`` seconds: then :class:`BrokerUnavailable` says which broker, where,
for how long and the last error.

The decisions are plain synchronous code (:meth:`Link.failed`, :meth:`Link.succeeded`,
:class:`Backoff`) so that they can be driven directly; the async and sync loops around
them are a few lines each. Several operations may fail during the same outage (a source
fetching while its acknowledgements retry): they share the link, so the outage is logged
once, measured once and ends once.

**Logs**, one line per change of state, each naming the broker's address and the error:
the connection was lost; the error changed while still disconnected; it came back
(after how long, in how many attempts); the deadline passed. **Figures**
(:meth:`Link.figures`): connected or not, reconnections, outages, seconds disconnected
(including the current outage), for the engine's metrics.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

__all__ = [
    "DEFAULT_OUTAGE_DEADLINE",
    "Backoff",
    "BrokerUnavailable",
    "Link",
    "display_address",
    "retry",
    "retry_sync",
]

T = TypeVar("T")

DEFAULT_OUTAGE_DEADLINE: Final = 300.0
"""Seconds a broker may stay unreachable before the component using it fails."""

Logger = logging.Logger | logging.LoggerAdapter[Any]


class BrokerUnavailable(RuntimeError):
    """A broker stayed unreachable longer than the outage deadline."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with jitter: the pause before attempt ``n`` (1-based)
    is drawn between half and all of ``min(cap, initial * factor ** (n - 1))``.

    Half of it is fixed so that retries never bunch near zero; the random half spreads
    the reconnections of many workers that lost the same server at the same moment.
    """

    initial: float = 0.1
    """Seconds before the first retry (before jitter)."""
    cap: float = 5.0
    """Longest pause between two attempts."""
    factor: float = 2.0

    def pause(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number ``attempt`` (1 for the first)."""
        ceiling = min(self.cap, self.initial * self.factor ** min(max(attempt, 1) - 1, 64))
        return ceiling / 2 + rand() * ceiling / 2


def display_address(url: str) -> str:
    """``url`` without credentials (``redis://:secret@host:6379/0`` -> ``redis://host:6379/0``),
    for logs, errors and metrics."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable address>"
    if not parts.scheme or parts.hostname is None:
        return url if "@" not in url else url.rpartition("@")[2]
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or "no message"
    return f"{type(exc).__name__}: {text}"


class Link:
    """One connection's state through outages (see the module docstring).

    ``what`` names the user of the connection in messages (``redis.stream source``),
    ``address`` the broker (credentials are removed). ``deadline`` None retries for ever
    (the bridge of a serve node, which must outlive the outage).
    """

    def __init__(
        self,
        what: str,
        address: str,
        *,
        deadline: float | None = DEFAULT_OUTAGE_DEADLINE,
        log: Logger,
        backoff: Backoff = Backoff(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.address = display_address(address)
        self.deadline = deadline
        self.log = log
        self.backoff = backoff
        self._clock = clock
        self._lock = threading.Lock()
        self.connected = False
        """True once an operation succeeded, False again during an outage."""
        self.reconnects = 0
        """Outages that ended with the connection back."""
        self.outages = 0
        self.attempts = 0
        """Failed attempts during the current outage (0 while connected)."""
        self._down_since: float | None = None
        self._down_total = 0.0
        self._last_error: str | None = None

    # -- the policy (synchronous) -------------------------------------------------------

    @property
    def down(self) -> bool:
        """True during an outage (from the first failure to the next success)."""
        return self._down_since is not None

    def failed(self, exc: BaseException) -> float:
        """A transient failure: returns the pause before the next attempt.

        Logs the loss of the connection (first failure of an outage) and any change of
        error afterwards; raises :class:`BrokerUnavailable` once the outage has lasted
        ``deadline`` seconds.
        """
        now = self._clock()
        error = _describe(exc)
        with self._lock:
            self.connected = False
            self.attempts += 1
            attempts = self.attempts
            if self._down_since is None:
                self._down_since = now
                self.outages += 1
                self._last_error = error
                limit = "for ever" if self.deadline is None else f"for up to {self.deadline:g}s"
                self.log.warning(
                    "%s: connection to %s lost (%s); reconnecting %s",
                    self.what,
                    self.address,
                    error,
                    limit,
                )
            elif error != self._last_error:
                self._last_error = error
                self.log.warning(
                    "%s: %s still unreachable after %.1fs (%s)",
                    self.what,
                    self.address,
                    now - self._down_since,
                    error,
                )
            elapsed = now - self._down_since
        if self.deadline is not None and elapsed >= self.deadline:
            message = (
                f"{self.what}: {self.address} unreachable for {elapsed:.1f}s, longer than "
                f"the outage deadline ({self.deadline:g}s; param outage_deadline); "
                f"last error: {error}"
            )
            self.log.error("%s", message)
            raise BrokerUnavailable(message) from exc
        pause = self.backoff.pause(attempts)
        if self.deadline is not None:
            pause = min(pause, max(0.0, self.deadline - elapsed))
        return pause

    def succeeded(self) -> None:
        """An operation went through: ends the outage, if there was one."""
        if self.connected and self._down_since is None:
            return
        with self._lock:
            self.connected = True
            since, self._down_since = self._down_since, None
            attempts, self.attempts = self.attempts, 0
            self._last_error = None
            if since is None:
                return
            elapsed = self._clock() - since
            self._down_total += elapsed
            self.reconnects += 1
        self.log.warning(
            "%s: reconnected to %s after %.1fs (%d failed attempt%s)",
            self.what,
            self.address,
            elapsed,
            attempts,
            "" if attempts == 1 else "s",
        )

    def figures(self) -> dict[str, Any]:
        """Connected or not, reconnections, outages and seconds disconnected in all
        (the current outage included): the link's metrics, JSON-serialisable."""
        with self._lock:
            current = 0.0 if self._down_since is None else self._clock() - self._down_since
            return {
                "component": self.what,
                "address": self.address,
                "connected": self.connected,
                "reconnects": self.reconnects,
                "outages": self.outages,
                "disconnected_seconds": round(self._down_total + current, 3),
            }


async def retry(
    link: Link,
    op: Callable[[], Awaitable[T]],
    *,
    transient: Callable[[BaseException], bool],
    reconnect: Callable[[], Awaitable[object]] | None = None,
) -> T:
    """Await ``op()`` until it succeeds, through outages (see :class:`Link`).

    An exception for which ``transient`` is false propagates at once. Before each new
    attempt ``reconnect()`` runs when given (a failure there counts as a failed attempt).
    """
    import anyio

    retrying = False
    while True:
        try:
            if retrying and reconnect is not None:
                await reconnect()
            result = await op()
        except Exception as exc:
            if isinstance(exc, BrokerUnavailable) or not transient(exc):
                raise
            await anyio.sleep(link.failed(exc))
            retrying = True
            continue
        link.succeeded()
        return result


def retry_sync(
    link: Link,
    op: Callable[[], T],
    *,
    transient: Callable[[BaseException], bool],
    reconnect: Callable[[], object] | None = None,
) -> T:
    """:func:`retry` for blocking code (e.g. a checkpoint store running in a thread)."""
    retrying = False
    while True:
        try:
            if retrying and reconnect is not None:
                reconnect()
            result = op()
        except Exception as exc:
            if isinstance(exc, BrokerUnavailable) or not transient(exc):
                raise
            time.sleep(link.failed(exc))
            retrying = True
            continue
        link.succeeded()
        return result
