"""AMQP 0-9-1 (RabbitMQ): a queue consumer source with manual acknowledgement and a sink
with publisher confirms.

Installed with ``pip install 'headwater[amqp]'`` (``aio-pika``). This module imports
without it; a component reports the missing package when used. Runs on asyncio
(``aio-pika`` is asyncio-based).

* ``amqp`` (source) consumes a queue (declared if missing: classic or quorum, with an
  optional dead-letter exchange and delivery limit) with a **prefetch window**: the
  broker hands out at most ``prefetch`` unacknowledged messages. A message is
  acknowledged only after every sink committed it (``ctx.on_commit``), so the pipeline
  needs a ``checkpoint:`` section (``{store: memory}`` is enough; ``headwater worker``
  adds it). Messages of a consumer that dies (or loses its connection) before that are
  requeued by the broker and delivered again: at-least-once, with at most ``prefetch``
  messages delivered twice per crash. A message delivered more than ``max_deliver``
  times (RabbitMQ counts them in the ``x-delivery-count`` header of quorum queues) is
  rejected without requeue: the queue's dead-letter exchange receives it. When a run
  ends abnormally, what it took and did not commit is requeued (``on_failure:
  requeue``) or rejected to the dead-letter exchange (``on_failure: dead_letter``).
* ``amqp`` (sink) publishes each item to an exchange with **publisher confirms**:
  ``write`` returns once the broker confirmed every message of the batch (stored, for a
  durable queue and persistent messages). A batch interrupted by an outage is published
  again in full once the broker is back (at-least-once).

Both ride out a broker outage: they reconnect with backoff for up to
``outage_deadline`` seconds (:mod:`headwater.core.reconnect`; aio-pika's own robust
reconnection is not used, so there is one policy), then the run fails saying so.

The sink is defined in :mod:`headwater.builtin_plugins.amqp_sink` (and importable from
here); both are registered by name by the ``headwater.amqp`` plugin of
:mod:`headwater.builtin_plugins.catalogue`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field, field_validator

import headwater
from headwater.core.context import StreamContext
from headwater.core.reconnect import DEFAULT_OUTAGE_DEADLINE, Link

from ._addresses import check_url, check_url_param
from ._amqp import DEFAULT_URL, Codec, aio_pika, close_quietly, transient
from ._broker_source import Acknowledger, read_broker
from ._brokers import stage_logger
from ._checks.queues import check_amqp_source
from ._connectors import connector
from .amqp_sink import AmqpSink, AmqpSinkParams

__all__ = ["AmqpSink", "AmqpSinkParams", "AmqpSourceParams", "amqp_source"]

# ---------------------------------------------------------------------------------------
# source
# ---------------------------------------------------------------------------------------


class AmqpSourceParams(BaseModel):
    """Params of the ``amqp`` source."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    url: str = Field(
        DEFAULT_URL,
        description="Broker URL, amqp://USER:PASSWORD@HOST:PORT/VHOST (amqps:// for TLS); "
        "put the password in ${VAR}.",
    )
    queue: str = Field(min_length=1, description="Queue to consume.")
    declare: bool = Field(
        True,
        description="Declare the queue (durable) if it does not exist, with queue_type, "
        "dead_letter_exchange and delivery_limit. False: it must exist.",
    )
    queue_type: Literal["classic", "quorum"] = Field(
        "quorum",
        description="Type of a declared queue: quorum (replicated; counts deliveries in "
        "x-delivery-count) or classic.",
    )
    dead_letter_exchange: str | None = Field(
        None,
        description="Dead-letter exchange of a declared queue: it receives the messages "
        "rejected over max_deliver or by on_failure: dead_letter.",
    )
    delivery_limit: int | None = Field(
        None,
        ge=1,
        description="x-delivery-limit of a declared quorum queue: the broker itself "
        "dead-letters a message returned this many times.",
    )
    bind: list[str] = Field(
        default_factory=list,
        description="Bind the queue to `exchange` with these routing keys (patterns for "
        "a topic exchange).",
    )
    exchange: str | None = Field(
        None, description="Exchange the `bind` keys bind to (it must exist)."
    )
    prefetch: int = Field(
        1000,
        ge=1,
        le=65_535,
        description="Most unacknowledged messages the broker hands this consumer (basic.qos "
        "prefetch count): the window of messages delivered again after a crash. Keep it at "
        "least the checkpoint's every_items, or the source waits for every_seconds.",
    )
    batch: int = Field(500, ge=1, le=100_000, description="Most messages per batch.")
    fetch_timeout: float = Field(
        0.5,
        gt=0,
        le=60,
        description="Longest wait for a message per batch; also bounds how long a drain "
        "request waits.",
    )
    max_deliver: int | None = Field(
        None,
        ge=1,
        description="Reject (to the dead-letter exchange) a message delivered more than "
        "this many times, read from x-delivery-count (quorum queues). None: never.",
    )
    on_failure: Literal["requeue", "dead_letter"] = Field(
        "requeue",
        description="What happens to messages taken and not committed when the run ends "
        "abnormally (a failed stage, a cancellation): requeue (delivered again) or "
        "dead_letter (rejected without requeue: the dead-letter exchange gets them).",
    )
    decode: Codec = Field(
        "json", description="Item made of a message body: json (parsed), text (str) or bytes."
    )
    envelope: bool = Field(
        False,
        description='Emit {"routing_key", "exchange", "redelivered", "deliveries", '
        '"message_id", "headers", "data"} instead of the bare body.',
    )
    idle_exit: float | None = Field(
        None,
        gt=0,
        description="End (normally, committing everything) after this many seconds without "
        "a new message. None: run until cancelled or drained.",
    )
    max_messages: int | None = Field(
        None, ge=1, description="End after delivering this many messages (None: no limit)."
    )
    outage_deadline: float = Field(
        DEFAULT_OUTAGE_DEADLINE,
        gt=0,
        description="Seconds the broker may stay unreachable (reconnecting with backoff) "
        "before the run fails.",
    )

    _url_allowed = field_validator("url")(check_url_param)


def _deliveries(msg: Any) -> int:
    """How many times ``msg`` was delivered, this time included: quorum queues count the
    earlier ones in ``x-delivery-count``; elsewhere only ``redelivered`` is known."""
    count = (msg.headers or {}).get("x-delivery-count")
    if isinstance(count, int):
        return count + 1
    return 2 if msg.redelivered else 1


def _decode(body: bytes, mode: Codec, what: str) -> Any:
    if mode == "bytes":
        return bytes(body)
    if mode == "text":
        return body.decode()
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ValueError(f"{what} is not JSON ({exc}); use decode: text or bytes") from None


class _Consumer:
    """``amqp``'s :class:`~._broker_source.Broker`: one consumer of the queue.

    A delivery tag only means something on the channel it came from, so a key is
    ``GENERATION.TAG``, the generation counting channels: a key of an earlier channel
    cannot be acknowledged any more (the broker requeued its message when the channel
    closed) and is dropped.
    """

    name = "amqp"
    noun = "messages"
    cursor = "tag"
    start = ""

    def __init__(self, params: AmqpSourceParams, ctx: StreamContext) -> None:
        self.params = params
        self.log = stage_logger("headwater.amqp", ctx)
        self.link = Link("amqp source", params.url, deadline=params.outage_deadline, log=self.log)
        self.conn: Any = None
        self.channel: Any = None
        self.generation = 0
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.msgs: dict[str, Any] = {}
        self.closed = False

    def transient(self, exc: BaseException) -> bool:
        return transient(exc)

    async def open(self) -> str:
        await self._connect()
        p = self.params
        self.log.info(
            "amqp: consuming queue %s at %s (prefetch %d)", p.queue, self.link.address, p.prefetch
        )
        return f"consuming queue {p.queue!r} (prefetch {p.prefetch})"

    async def _connect(self) -> None:
        pika = aio_pika("amqp")
        p = self.params
        old, old_channel, self.conn, self.channel = self.conn, self.channel, None, None
        await close_quietly(old, old_channel)
        conn = await pika.connect(p.url, timeout=10)
        try:
            channel = await conn.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=p.prefetch)
            if p.declare:
                args: dict[str, Any] = {"x-queue-type": p.queue_type}
                if p.dead_letter_exchange is not None:
                    args["x-dead-letter-exchange"] = p.dead_letter_exchange
                if p.delivery_limit is not None:
                    args["x-delivery-limit"] = p.delivery_limit
                queue = await channel.declare_queue(p.queue, durable=True, arguments=args)
            else:
                queue = await channel.declare_queue(p.queue, passive=True)
            if p.bind:
                if p.exchange is None:
                    raise ValueError("amqp: `bind` needs `exchange`")
                for key in p.bind:
                    await queue.bind(p.exchange, routing_key=key)
            self.generation += 1
            self.inbox = asyncio.Queue()
            inbox = self.inbox
            await queue.consume(self._receiver(inbox), no_ack=False)
        except BaseException:
            await close_quietly(conn)
            raise
        self.conn, self.channel = conn, channel

    @staticmethod
    def _receiver(inbox: asyncio.Queue[Any]) -> Callable[[Any], Any]:
        async def receive(message: Any) -> None:
            inbox.put_nowait(message)  # bounded by the prefetch window

        return receive

    async def reconnect(self) -> None:
        if self.closed:
            return
        if (
            self.conn is None
            or self.conn.is_closed
            or self.channel is None
            or self.channel.is_closed
        ):
            await self._connect()

    async def fetch(self, count: int, held: Acknowledger[str]) -> list[tuple[str, Any]]:
        if self.channel is None or self.channel.is_closed:
            raise aio_pika("amqp").exceptions.ChannelInvalidStateError("channel closed")
        inbox = self.inbox
        taken: list[Any] = []
        if inbox.empty():
            with anyio.move_on_after(self.params.fetch_timeout):
                taken.append(await inbox.get())
            if not taken and (self.channel.is_closed or self.conn.is_closed):
                raise aio_pika("amqp").exceptions.ChannelInvalidStateError("channel closed")
        while len(taken) < count and not inbox.empty():
            taken.append(inbox.get_nowait())
        gen = self.generation
        fetched: list[tuple[str, Any]] = []
        limit = self.params.max_deliver
        for msg in taken:
            if limit is not None and _deliveries(msg) > limit:
                await self._dead_letter(msg)
                continue
            key = f"{gen}.{msg.delivery_tag}"
            fetched.append((key, msg))
            self.msgs[key] = msg
        return fetched

    async def _dead_letter(self, msg: Any) -> None:
        await msg.reject(requeue=False)
        self.log.warning(
            "amqp: message %s of queue %r delivered %d times (> max_deliver %d): rejected "
            "to the queue's dead-letter exchange%s",
            msg.message_id or msg.delivery_tag,
            self.params.queue,
            _deliveries(msg),
            self.params.max_deliver,
            ""
            if self.params.dead_letter_exchange
            else " (none declared here: dropped unless the queue has one)",
        )

    def decode(self, fetched: list[tuple[str, Any]]) -> list[Any]:
        p = self.params
        mode = p.decode
        if not p.envelope:
            if mode == "json":
                try:
                    return [json.loads(m.body) for _, m in fetched]
                except ValueError:
                    pass  # decoded again one by one below, for the message
            elif mode == "bytes":
                return [bytes(m.body) for _, m in fetched]
        out = []
        for _, m in fetched:
            value = _decode(m.body, mode, f"message {m.delivery_tag} of queue {p.queue!r}")
            if p.envelope:
                value = {
                    "routing_key": m.routing_key,
                    "exchange": m.exchange,
                    "redelivered": bool(m.redelivered),
                    "deliveries": _deliveries(m),
                    "message_id": m.message_id,
                    "headers": {k: v for k, v in (m.headers or {}).items() if _plain(v)},
                    "data": value,
                }
            out.append(value)
        return out

    async def ack(self, keys: list[str]) -> int:
        gen = str(self.generation)
        last: Any = None
        for key in keys:
            msg = self.msgs.pop(key, None)
            if msg is not None and key.partition(".")[0] == gen:
                last = msg
        if last is None or self.closed:
            return 0  # their channel is gone: the broker requeued them
        # every earlier tag of this channel was acknowledged before or is in `keys`
        await last.ack(multiple=True)
        return len(keys)

    def ack_failed(self, keys: list[str], exc: Exception) -> bool:
        self.log.warning("amqp: acknowledging %d messages failed: %s", len(keys), exc)
        return False  # the channel is gone with them: the broker requeued them

    async def close(self) -> None:
        if self.msgs and self.params.on_failure == "dead_letter" and self.channel is not None:
            gen = str(self.generation)
            rejected = 0
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                for key, msg in list(self.msgs.items()):
                    if key.partition(".")[0] == gen and not self.channel.is_closed:
                        await msg.reject(requeue=False)
                        rejected += 1
            self.log.warning(
                "amqp: the run ended with %d uncommitted messages of %r: rejected to the "
                "dead-letter exchange (on_failure: dead_letter)",
                rejected,
                self.params.queue,
            )
        self.closed = True
        self.msgs.clear()
        conn, channel, self.conn, self.channel = self.conn, self.channel, None, None
        await close_quietly(conn, channel)


def _plain(value: Any) -> bool:
    """A header value that JSON can carry as is."""
    return value is None or isinstance(value, str | int | float | bool)


@headwater.action(
    "amqp",
    params=AmqpSourceParams,
    output="the bodies of the queue's messages (see decode and envelope)",
    capabilities=("streaming", "resumable"),
    batched=True,
    check=check_amqp_source,
)
async def amqp_source(params: AmqpSourceParams, ctx: StreamContext) -> AsyncIterator[list[Any]]:
    """Consume an AMQP queue with a prefetch window; acknowledge after every sink committed.

    Needs a ``checkpoint:`` section (``{store: memory}`` suffices: the queue keeps what is
    not acknowledged). The checkpoint position is ``{"delivered": N, "last_tag":
    "CHANNEL.TAG"}``; on each commit every message delivered up to ``N`` is acknowledged
    (one ``basic.ack`` with ``multiple``).
    """
    aio_pika("amqp")
    check_url(ctx.policy, params.url, param=f"{ctx.stage}.params.url")
    async with aclosing(read_broker(_Consumer(params, ctx), params, ctx)) as batches:
        async for batch in batches:
            yield batch


connector(
    amqp_source,
    extra="amqp",
    guarantee="at-least-once: a crash hands at most `prefetch` messages out again",
    ack="`basic.ack` (multiple) once every sink committed the messages",
    ordering="queue order; a requeued message comes back out of order",
    backpressure="the prefetch window: at most `prefetch` unacknowledged messages",
    resume="the queue keeps every unacknowledged message; over `max_deliver`, to the "
    "dead-letter exchange",
)
