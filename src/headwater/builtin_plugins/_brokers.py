"""What the broker plugins (``redis.stream``, ``nats.jetstream``) share.

Their read loop itself is :func:`._broker_source.read_broker`; here are its parts:

* **The ledger** of messages delivered to the pipeline but not yet committed by every
  sink, by delivery number: the source reports that number as its checkpoint position,
  and the commit callback releases (acknowledges upstream) everything up to it.
* **Consumer names** (``--consumer``, ``HEADWATER_CONSUMER``, or ``HOST-PID``), and the
  lazy import of optional client libraries with an actionable error (:func:`require`,
  from :mod:`headwater.core.optional`).
"""

from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Hashable, Iterable
from typing import Any, Final, Generic, TypeVar

from headwater.core.optional import MissingDependency, require

__all__ = [
    "CONSUMER_ENV",
    "Ledger",
    "MissingDependency",
    "default_consumer",
    "delivered_upto",
    "require",
]

CONSUMER_ENV: Final = "HEADWATER_CONSUMER"
"""Environment variable naming this process's consumer (``headwater worker --consumer``)."""


def default_consumer() -> str:
    """This process's consumer name: ``HEADWATER_CONSUMER``, else ``HOSTNAME-PID``."""
    name = os.environ.get(CONSUMER_ENV, "").strip()
    return name or f"{socket.gethostname()}-{os.getpid()}"


K = TypeVar("K", bound=Hashable)


class Ledger(Generic[K]):
    """Messages delivered to the pipeline and not yet committed, by delivery number.

    Each batch handed to the pipeline gets the next delivery number (:meth:`add`); the
    source reports it as its checkpoint position. When a checkpoint covering delivery
    ``n`` is committed, :meth:`release` returns every key delivered up to ``n``, to be
    acknowledged upstream. Keys are also kept in a set so that a message reclaimed
    while this process still holds it is not delivered twice.
    """

    __slots__ = ("_batches", "_keys", "delivered", "released")

    def __init__(self) -> None:
        self._batches: deque[tuple[int, list[K]]] = deque()
        self._keys: set[K] = set()
        self.delivered = 0
        """Number of the last delivery (0 before the first)."""
        self.released = 0
        """Highest delivery number released so far."""

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def add(self, keys: Iterable[K]) -> int:
        """Record one delivery; returns its number."""
        batch = list(keys)
        self.delivered += 1
        self._batches.append((self.delivered, batch))
        self._keys.update(batch)
        return self.delivered

    def release(self, upto: int) -> list[K]:
        """Forget and return the keys of every delivery numbered ``upto`` or less."""
        out: list[K] = []
        batches = self._batches
        while batches and batches[0][0] <= upto:
            _, keys = batches.popleft()
            out.extend(keys)
        self._keys.difference_update(out)
        self.released = max(self.released, upto)
        return out

    def restore(self, keys: list[K]) -> None:
        """Put back keys whose acknowledgement failed, to retry at the next commit."""
        if keys:
            self._batches.appendleft((self.released, keys))
            self._keys.update(keys)


def delivered_upto(position: Any) -> int | None:
    """The delivery number of a broker source's checkpoint position, if it has one."""
    if isinstance(position, dict):
        value = position.get("delivered")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None
