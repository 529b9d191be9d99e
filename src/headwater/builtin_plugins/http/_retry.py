"""Retrying HTTP calls: which answers to retry, how long to wait, when to stop calling.

Both the ``http.request`` transformer and the ``http`` sink send through
:func:`send_with_retries`: a transport error (refused, reset, timed out) or an answer
whose status is in ``retry_on`` (429 and 5xx by default) is tried again, up to
``retries`` more times. The pause is the server's ``Retry-After`` when it gives one
(seconds or an HTTP date, capped at ``max_retry_after``), else capped exponential
backoff with jitter (:class:`headwater.core.reconnect.Backoff`, the brokers' own).

:class:`CircuitBreaker` is plain synchronous code: after ``threshold`` calls in a row
failed for good, it *opens* and calls fail at once (``CircuitOpen``) for ``reset``
seconds; then one call is let through (half-open) and its outcome closes or re-opens
it. A failing API is then not hammered, and the items meanwhile go to the step's
``on_error`` without waiting for timeouts.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import anyio

from headwater.core.reconnect import Backoff

__all__ = [
    "RETRY_ON",
    "CircuitBreaker",
    "CircuitOpen",
    "HttpStatusError",
    "RetryPolicy",
    "retry_after",
    "send_with_retries",
]

RETRY_ON: Final = (429, 500, 502, 503, 504)
"""Statuses retried by default: rate limited, and the server's transient failures."""


class HttpStatusError(RuntimeError):
    """An answer with an unexpected status (after any retries)."""

    def __init__(self, method: str, url: str, status: int, body: str) -> None:
        detail = f": {body}" if body else ""
        super().__init__(f"{method} {url} answered {status}{detail}")
        self.status = status


class CircuitOpen(RuntimeError):
    """The circuit breaker is open: the call was not made."""


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait according to a ``Retry-After`` header (delta-seconds or an HTTP
    date); None when absent or unreadable. Never negative."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:  # pragma: no cover - older Pythons returned None
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a call is retried (see the module docstring)."""

    retries: int = 3
    retry_on: Sequence[int] = RETRY_ON
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.1, cap=10.0))
    max_retry_after: float = 60.0

    def pause(self, attempt: int, header: str | None) -> float:
        """Seconds before retry ``attempt`` (1 for the first): the server's
        ``Retry-After`` if it gave one, else the backoff."""
        asked = retry_after(header)
        if asked is not None:
            return min(asked, self.max_retry_after)
        return self.backoff.pause(attempt)


class CircuitBreaker:
    """Opens after ``threshold`` failed calls in a row (see the module docstring)."""

    def __init__(
        self, threshold: int, reset: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold = threshold
        self.reset = reset
        self._clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self._probing = False
        self.opened = 0
        """How many times it opened."""

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open``."""
        if self.opened_at is None:
            return "closed"
        if self._probing or self._clock() - self.opened_at >= self.reset:
            return "half-open"
        return "open"

    def allow(self) -> bool:
        """May a call be made now? While half-open, only one probe at a time."""
        if self.opened_at is None:
            return True
        if self._probing or self._clock() - self.opened_at < self.reset:
            return False
        self._probing = True
        return True

    def succeeded(self) -> None:
        """A call went through: the circuit closes."""
        self.failures = 0
        self.opened_at = None
        self._probing = False

    def failed(self) -> None:
        """A call failed for good (after its retries)."""
        self.failures += 1
        if self._probing or (self.opened_at is None and self.failures >= self.threshold):
            self.opened_at = self._clock()
            self.opened += 1
        self._probing = False

    def check(self, what: str) -> None:
        """Raise :class:`CircuitOpen` unless a call may be made now."""
        if not self.allow():
            raise CircuitOpen(
                f"{what}: circuit open after {self.failures} failed calls in a row; "
                f"calls resume {self.reset:g}s after it opened"
            )


def transient(exc: BaseException) -> bool:
    """True for transport errors worth retrying (refused, reset, timed out)."""
    import httpx

    return isinstance(exc, httpx.TransportError)


async def send_with_retries(
    send: Callable[[], Awaitable[Any]],
    policy: RetryPolicy,
    *,
    on_retry: Callable[[int, str], None] | None = None,
) -> Any:
    """Await ``send()`` (an httpx response) until it answers with a status not in
    ``retry_on``, retrying transport errors and those statuses up to ``policy.retries``
    times. Returns the last response (the caller judges its status); raises the last
    transport error. ``on_retry(attempt, why)`` is told of each retry."""
    attempt = 0
    while True:
        try:
            response = await send()
        except Exception as exc:
            if not transient(exc) or attempt >= policy.retries:
                raise
            attempt += 1
            if on_retry is not None:
                on_retry(attempt, f"{type(exc).__name__}: {exc}")
            await anyio.sleep(policy.pause(attempt, None))
            continue
        if response.status_code not in policy.retry_on or attempt >= policy.retries:
            return response
        attempt += 1
        header = response.headers.get("retry-after")
        await response.aclose()
        if on_retry is not None:
            on_retry(attempt, f"status {response.status_code}")
        await anyio.sleep(policy.pause(attempt, header))
