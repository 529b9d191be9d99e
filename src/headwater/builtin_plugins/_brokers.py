"""What the broker plugins (``redis.stream``, ``nats.jetstream``) share.

Their read loop itself is :func:`._broker_source.read_broker`; here are its parts:

* **The ledger** of messages delivered to the pipeline but not yet committed by every
  sink, by delivery number: the source reports that number as its checkpoint position,
  and the commit callback releases (acknowledges upstream) everything up to it.
* **Consumer names** given by the operator (``--consumer``, ``HEADWATER_CONSUMER``);
  without one, a source leases a ``HOST-SLOT`` name in its broker (the slot is chosen
  by :mod:`._slots`: Redis ``SET NX`` with a TTL, a JetStream KV entry).
* **Links**: every connection to a broker is a :class:`~headwater.core.reconnect.Link`
  (reconnection through outages), whose figures join the engine's metrics under
  ``brokers`` (:func:`track`), and whose messages carry the run and stage
  (:func:`stage_logger`).
* The lazy import of optional client libraries with an actionable error
  (:func:`require`, from :mod:`headwater.core.optional`).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Final, Generic, TypeVar

from headwater.core.context import StreamContext
from headwater.core.optional import MissingDependency, require
from headwater.core.reconnect import Link

__all__ = [
    "CONSUMER_ENV",
    "METRICS_GROUP",
    "Ledger",
    "MissingDependency",
    "delivered_upto",
    "given_consumer",
    "require",
    "stage_logger",
    "track",
]

CONSUMER_ENV: Final = "HEADWATER_CONSUMER"
"""Environment variable naming this process's consumer (``headwater worker --consumer``)."""


METRICS_GROUP: Final = "brokers"
"""Where broker connections appear in the engine's metrics snapshot (one entry each)."""


def given_consumer(param: str | None) -> str | None:
    """The consumer name the operator chose: the component's ``consumer`` param, else
    ``HEADWATER_CONSUMER`` (``headwater worker --consumer``); None: lease a default one."""
    if param:
        return param
    return os.environ.get(CONSUMER_ENV, "").strip() or None


def stage_logger(name: str, ctx: StreamContext) -> logging.LoggerAdapter[logging.Logger]:
    """Logger ``name`` whose records carry the run and stage of ``ctx`` (``run_id``,
    ``pipeline``, ``stage`` attributes, as ``ctx.logger``'s)."""
    extra = {"pipeline": ctx.pipeline, "stage": ctx.stage, "run_id": ctx.run_id}
    return logging.LoggerAdapter(logging.getLogger(name), extra)


def track(ctx: StreamContext, link: Link, role: str) -> Callable[[], None]:
    """Show ``link`` in the engine's metrics while the stage runs; returns the remover.

    The entry is ``{"id", "pipeline", "stage", "role", "component", "address",
    "connected", "reconnects", "outages", "disconnected_seconds"}``.
    """
    key = f"{ctx.run_id}/{ctx.stage}/{role}"
    labels = {"pipeline": ctx.pipeline, "stage": ctx.stage, "role": role}
    metrics = ctx.metrics

    def figures() -> dict[str, Any]:
        return {**labels, **link.figures()}

    metrics.add_member(METRICS_GROUP, key, figures)
    return lambda: metrics.remove_member(METRICS_GROUP, key)


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
