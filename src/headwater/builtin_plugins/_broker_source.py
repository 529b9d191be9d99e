"""The read loop of the broker sources (``redis.stream``, ``nats.jetstream``), written once.

A broker hands each message to one member of a group and holds it until that member
acknowledges it. A broker source acknowledges a message only after every sink committed
it (at-least-once), so what differs between brokers is small and sits behind
:class:`Broker`: connect, fetch a batch, decode it, acknowledge, reconnect, close.
:func:`read_broker` does the rest, the same for every broker:

* each batch handed to the pipeline is recorded in a :class:`~._brokers.Ledger`, and its
  delivery number reported with ``ctx.checkpoint`` as ``{"delivered": N, "last_<cursor>":
  KEY}`` (again while the broker is idle, so that time-based checkpoints still happen);
* ``ctx.on_commit`` acknowledges every message delivered up to the committed ``N``;
* every call to the broker goes through :func:`~headwater.core.reconnect.retry` on the
  broker's :class:`~headwater.core.reconnect.Link`: through an outage the source waits
  and reconnects (the broker re-reads what it left pending), acknowledgements wait too
  (a message is acknowledged once, never dropped from the ledger before that), and past
  the outage deadline the run fails saying so;
* reading stops when the run drains (``ctx.draining``) or is cancelled, after
  ``max_messages``, or after ``idle_exit`` seconds without a message; a normal stop
  reports a last checkpoint, and the connection is kept until the final commit
  acknowledged everything (the runtime commits it after the generator returned).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncGenerator, Callable, Hashable
from typing import Any, Generic, Protocol, TypeVar

import anyio

from headwater.core.context import StreamContext
from headwater.core.reconnect import BrokerUnavailable, Link, retry

from ._brokers import Ledger, delivered_upto, track

__all__ = ["Acknowledger", "Broker", "ReadLimits", "json_batch_decoder", "read_broker"]

K = TypeVar("K", bound=Hashable)
M = TypeVar("M")


def json_batch_decoder() -> Callable[[list[bytes]], list[Any]]:
    """A decoder of a batch of JSON payloads in UTF-8: the value of each, as ``json.loads``
    gives it, in about half the time (it skips what ``json.loads`` does per call: the
    encoding detection, the type checks, the whitespace scans).

    It raises ``ValueError`` for a payload it would not decode exactly as ``json.loads``
    does (not JSON, whitespace before the value, another encoding than UTF-8): the caller
    then decodes that batch again one payload at a time, with ``json.loads`` and its
    error message.
    """
    raw_decode = json.JSONDecoder().raw_decode

    def decode(payloads: list[bytes]) -> list[Any]:
        values: list[Any] = []
        append = values.append
        for payload in payloads:
            text = payload.decode()
            value, end = raw_decode(text)
            # trailing JSON whitespace (a producer's newline) is what json.loads skips too
            if end != len(text) and text[end:].strip(" \t\n\r"):
                raise ValueError("more than one JSON value")
            append(value)
        return values

    return decode


class ReadLimits(Protocol):
    """The params every broker source has: the most messages per fetch, and when to end
    (after delivering ``max_messages``, after ``idle_exit`` seconds without any)."""

    batch: int
    max_messages: int | None
    idle_exit: float | None


class Broker(Protocol[K, M]):
    """One broker source's connection: what :func:`read_broker` needs of a broker.

    ``K`` is the key a message is acknowledged by (it must be JSON-serialisable: the
    checkpoint reports the last one), ``M`` what :meth:`decode` makes an item of.
    """

    name: str
    """The component (``redis.stream``), in log and error messages."""
    noun: str
    """What it calls its messages (``entries``), in log and error messages."""
    cursor: str
    """What a key is (``id``): the position says ``last_id``, the progress ``last id K``."""
    start: Any
    """The ``last_<cursor>`` reported before the first message."""

    @property
    def log(self) -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
        """Where its messages go (with the run and stage)."""

    @property
    def link(self) -> Link:
        """The connection's state through outages."""

    def transient(self, exc: BaseException) -> bool:
        """True for an error worth retrying (the broker is unreachable or restarting)."""

    async def open(self) -> str:
        """Connect and join the group (creating what is missing); returns the status."""

    async def reconnect(self) -> None:
        """Before retrying after a transient error: connect again if needed, and arrange
        to re-read what this member left pending (a reply lost with the connection)."""

    async def fetch(self, count: int, held: Acknowledger[K]) -> list[tuple[K, M]]:
        """Up to ``count`` messages to deliver, without those still ``held`` (a
        redelivery that the pending acknowledgement covers). A message that must not
        be delivered is settled here (e.g. ``held.ack_now``)."""

    def decode(self, fetched: list[tuple[K, M]]) -> list[Any]:
        """The items the fetched messages become, in order (the hot path: one call per
        batch)."""

    async def ack(self, keys: list[K]) -> int:
        """Acknowledge ``keys`` upstream; returns how many it did (0: it no longer can,
        and the broker redelivers them). Raises when that failed."""

    def ack_failed(self, keys: list[K], exc: Exception) -> bool:
        """Log a failed :meth:`ack` (not a transient error: those are retried); True to
        retry those keys at the next commit."""

    async def close(self) -> None:
        """Disconnect (called once reading ended and acknowledging is done)."""


class Acknowledger(Generic[K]):
    """Acknowledges committed deliveries; owns the connection once the reader is done.

    The runtime places the final checkpoint marker after the source generator returned,
    so the last commit callback comes after the generator's ``finally``: the connection
    is then kept open until everything delivered is acknowledged. Keys being
    acknowledged (through an outage, that may take a while) still count as held, so that
    a re-read of this member's pending messages does not deliver them again.
    """

    def __init__(self, broker: Broker[K, Any]) -> None:
        self.broker = broker
        self.ledger: Ledger[K] = Ledger()
        self.finished = False
        self.acked = 0
        self._acking: set[K] = set()
        self._lock = anyio.Lock()
        self._done = f"{broker.name}: acknowledged %d {broker.noun} (%d in all)"

    def __contains__(self, key: object) -> bool:
        return key in self.ledger or key in self._acking

    async def commit(self, position: Any) -> None:
        """``ctx.on_commit`` callback: acknowledge what was delivered up to ``position``."""
        upto = delivered_upto(position)
        if upto is None:
            return
        async with self._lock:
            keys = self.ledger.release(upto)
            if keys:
                await self._ack(keys)
            if self.finished and not self.ledger:
                await self.close()

    async def ack_now(self, keys: list[K]) -> None:
        """Acknowledge messages that never reach the pipeline (e.g. deleted upstream)."""
        if keys:
            async with self._lock:
                await self._ack(keys)

    async def _ack(self, keys: list[K]) -> None:
        broker = self.broker
        self._acking.update(keys)
        try:
            done = await retry(
                broker.link,
                lambda: broker.ack(keys),
                transient=broker.transient,
                reconnect=broker.reconnect,
            )
        except BrokerUnavailable:
            raise  # the outage outlasted the deadline: the run fails
        except Exception as exc:
            # Never fail the run for one refused ack: what is not acknowledged is
            # delivered again (at the next commit, or by the broker later).
            if broker.ack_failed(keys, exc):
                self.ledger.restore(keys)
            return
        finally:
            self._acking.difference_update(keys)
        if done:
            self.acked += done
            broker.log.debug(self._done, done, self.acked)

    async def finish(self, *, normally: bool) -> None:
        """The reader is done: close now, or after the final commit acknowledged all."""
        self.finished = True
        if not normally or not self.ledger:
            await self.close()

    async def close(self) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await self.broker.close()


async def read_broker(
    broker: Broker[K, Any], limits: ReadLimits, ctx: StreamContext
) -> AsyncGenerator[list[Any], None]:
    """Deliver ``broker``'s messages in batches; acknowledge after every sink committed.

    Needs the commit protocol (a ``checkpoint:`` section). The checkpoint position is
    ``{"delivered": N, "last_<cursor>": KEY}``.
    """
    if not ctx.checkpointing:
        raise RuntimeError(
            f"{broker.name} acknowledges {broker.noun} only after every sink committed them, "
            "which needs the commit protocol: add `checkpoint: {store: memory}` to the "
            "pipeline (headwater worker adds it for you)"
        )
    acker: Acknowledger[K] = Acknowledger(broker)
    ledger = acker.ledger
    ctx.on_commit(acker.commit)
    field, label = f"last_{broker.cursor}", f"last {broker.cursor}"
    last = broker.start
    normally = False
    link, transient, reconnect = broker.link, broker.transient, broker.reconnect
    untrack = track(ctx, link, "source")
    try:
        ctx.status(await retry(link, broker.open, transient=transient))
        delivered = 0
        idle_since = time.monotonic()
        ctx.checkpoint({"delivered": 0, field: last})
        while not ctx.draining and not ctx.cancelled:
            count = limits.batch
            if limits.max_messages is not None:
                if delivered >= limits.max_messages:
                    break
                count = min(count, limits.max_messages - delivered)
            fetched = await retry(
                link,
                lambda: broker.fetch(count, acker),  # noqa: B023 - awaited at once
                transient=transient,
                reconnect=reconnect,
            )
            if fetched:
                items = broker.decode(fetched)
                n = ledger.add([key for key, _ in fetched])
                delivered += len(fetched)
                last = fetched[-1][0]
                yield items
                ctx.checkpoint({"delivered": n, field: last})
                ctx.progress(delivered, message=f"{label} {last}")
                idle_since = time.monotonic()
            else:
                # Nothing new: report again so that a time-based checkpoint (and so the
                # acknowledgement of what was delivered) happens while the broker is idle.
                ctx.checkpoint({"delivered": ledger.delivered, field: last})
                if limits.idle_exit is not None and (
                    time.monotonic() - idle_since >= limits.idle_exit
                ):
                    break
        ctx.checkpoint({"delivered": ledger.delivered, field: last})
        normally = True
    finally:
        untrack()
        with anyio.CancelScope(shield=True):
            await acker.finish(normally=normally)
