"""The ``amqp`` sink: publishes each item to an exchange with publisher confirms
(``pip install 'headwater[amqp]'``). Registered by :mod:`headwater.builtin_plugins.amqp`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field, field_validator

import headwater
from headwater.core.context import StreamContext
from headwater.core.reconnect import DEFAULT_OUTAGE_DEADLINE, Link, retry

from ._addresses import check_url, check_url_param
from ._amqp import DEFAULT_URL, Codec, aio_pika, close_quietly, transient
from ._brokers import stage_logger, track
from ._checks.queues import check_amqp_sink
from ._connectors import connector
from ._values import encode_payload

__all__ = ["AmqpSink", "AmqpSinkParams"]


class AmqpSinkParams(BaseModel):
    """Params of the ``amqp`` sink."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    url: str = Field(
        DEFAULT_URL,
        description="Broker URL, amqp://USER:PASSWORD@HOST:PORT/VHOST (amqps:// for TLS).",
    )
    exchange: str = Field("", description="Exchange to publish to ('' : the default exchange).")
    routing_key: str = Field(
        description="Routing key of every message (with the default exchange: the queue)."
    )
    declare_queue: str | None = Field(
        None,
        description="Declare this durable queue (quorum) before publishing, so that messages "
        "sent to the default exchange have somewhere to go.",
    )
    encode: Codec = Field(
        "json", description="How an item becomes a body: json, text (str()) or bytes."
    )
    persistent: bool = Field(
        True, description="Mark messages persistent (delivery mode 2): stored on disk."
    )
    mandatory: bool = Field(
        True,
        description="Fail the batch when the broker cannot route a message to any queue "
        "(instead of dropping it).",
    )
    timeout: float = Field(30.0, gt=0, description="Seconds to wait for a batch's confirms.")
    outage_deadline: float = Field(
        DEFAULT_OUTAGE_DEADLINE,
        gt=0,
        description="Seconds the broker may stay unreachable (reconnecting with backoff) "
        "before the run fails.",
    )

    _url_allowed = field_validator("url")(check_url_param)


@headwater.sink("amqp", params=AmqpSinkParams, check=check_amqp_sink)
class AmqpSink:
    """Publish every item to an AMQP exchange; ``write`` returns once the broker
    confirmed every message of the batch (publisher confirms).

    Publishes of a batch are pipelined, then their confirms awaited together. A
    message the broker cannot route fails the batch (``mandatory``). A batch interrupted
    by an outage is published again in full once the broker is back (at-least-once).
    The output is ``{"exchange", "routing_key", "published"}``.
    """

    def __init__(self, params: AmqpSinkParams, ctx: StreamContext) -> None:
        self.params = params
        self.ctx = ctx
        self.published = 0
        self._conn: Any = None
        self._exchange: Any = None
        self._channel: Any = None
        self.log = stage_logger("headwater.amqp", ctx)
        self.link = Link("amqp sink", params.url, deadline=params.outage_deadline, log=self.log)
        self._untrack: Callable[[], None] = lambda: None

    async def open(self) -> None:
        """Connect, waiting through an outage (and declare the queue if asked)."""
        aio_pika("amqp sink")
        check_url(self.ctx.policy, self.params.url, param=f"{self.ctx.stage}.params.url")
        self._untrack = track(self.ctx, self.link, "sink")
        await retry(self.link, self._connect, transient=transient)

    async def _connect(self) -> None:
        pika = aio_pika("amqp sink")
        old, self._conn = self._conn, None
        await close_quietly(old, self._channel)
        conn = await pika.connect(self.params.url, timeout=10)
        try:
            channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
            self._channel = channel
            if self.params.declare_queue:
                await channel.declare_queue(
                    self.params.declare_queue,
                    durable=True,
                    arguments={"x-queue-type": "quorum"},
                )
            if self.params.exchange:
                self._exchange = await channel.get_exchange(self.params.exchange, ensure=True)
            else:
                self._exchange = channel.default_exchange
        except BaseException:
            await close_quietly(conn)
            raise
        self._conn = conn

    async def _reconnect(self) -> None:
        if self._conn is None or self._conn.is_closed or self._channel.is_closed:
            await self._connect()

    async def write(self, batch: list[Any]) -> None:
        """Publish the batch and wait for its confirms (again after an outage)."""
        if not batch:
            return
        pika = aio_pika("amqp sink")
        p = self.params
        mode = pika.DeliveryMode.PERSISTENT if p.persistent else pika.DeliveryMode.NOT_PERSISTENT
        content_type = "application/json" if p.encode == "json" else None
        messages = [
            pika.Message(
                encode_payload(item, p.encode, "amqp"),
                delivery_mode=mode,
                content_type=content_type,
            )
            for item in batch
        ]

        async def publish() -> None:
            exchange = self._exchange
            with anyio.fail_after(p.timeout):
                await asyncio.gather(
                    *(exchange.publish(m, p.routing_key, mandatory=p.mandatory) for m in messages)
                )

        await retry(self.link, publish, transient=transient, reconnect=self._reconnect)
        self.published += len(batch)

    async def close(self, error: BaseException | None) -> dict[str, Any]:
        """Disconnect; returns ``{"exchange", "routing_key", "published"}``."""
        self._untrack()
        conn, self._conn = self._conn, None
        await close_quietly(conn, self._channel)
        p = self.params
        return {"exchange": p.exchange, "routing_key": p.routing_key, "published": self.published}


connector(
    AmqpSink,
    extra="amqp",
    guarantee="at-least-once: a batch cut by an outage is published again",
    ack="`write` returns once the broker confirmed every message (publisher confirms)",
    ordering="in order, one channel",
    backpressure="each batch waits for its confirms",
    resume="none of its own: the pipeline's checkpoint decides what is sent again",
)
