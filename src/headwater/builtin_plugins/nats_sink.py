"""The ``nats.jetstream`` sink: publish each item to JetStream and wait for every
``PubAck`` of the batch (the messages are stored when ``write`` returns).

It rides out an outage of the server as the source does (:mod:`.nats_jetstream`, whose
connection helpers it uses): the connection is replaced with backoff for up to
``outage_deadline`` seconds, and a batch interrupted by the outage is published again in
full (at-least-once).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field

import headwater
from headwater.core.context import StreamContext
from headwater.core.reconnect import DEFAULT_OUTAGE_DEADLINE, Link, retry

from ._brokers import stage_logger, track
from ._checks.brokers import check_nats_sink
from ._values import encode_payload
from .nats_jetstream import (
    DEFAULT_URL,
    Decode,
    _close_quietly,
    _connect,
    _ensure_stream,
    transient,
)

__all__ = ["NatsSinkParams", "NatsStreamSink"]


class NatsSinkParams(BaseModel):
    """Params of the ``nats.jetstream`` sink."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    url: str = Field(DEFAULT_URL, description="NATS server URL, e.g. nats://127.0.0.1:4222.")
    subject: str = Field(min_length=1, description="Subject to publish to.")
    stream: str | None = Field(
        None, description="Expected stream (the publish fails if another stream captures it)."
    )
    create_stream: bool = Field(
        False, description="Create `stream` capturing `subject` if it does not exist."
    )
    encode: Decode = Field(
        "json", description="How an item becomes a payload: json, text (str()) or bytes."
    )
    timeout: float = Field(30.0, gt=0, description="Seconds to wait for a batch's PubAcks.")
    outage_deadline: float = Field(
        DEFAULT_OUTAGE_DEADLINE,
        gt=0,
        description="Seconds the server may stay unreachable (reconnecting with backoff) "
        "before the run fails.",
    )


@headwater.sink("nats.jetstream", params=NatsSinkParams, check=check_nats_sink)
class NatsStreamSink:
    """Publish every item to JetStream; ``write`` returns once every PubAck arrived.

    Publishes of a batch are pipelined (``publish_async``), then awaited together. A
    batch interrupted by an outage is published again in full once the server is back
    (at-least-once). The output is ``{"subject", "published"}``.
    """

    def __init__(self, params: NatsSinkParams, ctx: StreamContext) -> None:
        self.params = params
        self.ctx = ctx
        self.published = 0
        self._nc: Any = None
        self._js: Any = None
        self.log = stage_logger("headwater.nats", ctx)
        self.link = Link(
            "nats.jetstream sink", params.url, deadline=params.outage_deadline, log=self.log
        )
        self._untrack: Callable[[], None] = lambda: None

    async def open(self) -> None:
        """Connect, waiting through an outage (and create the stream if asked)."""
        if self.params.create_stream and self.params.stream is None:
            raise ValueError("nats.jetstream: create_stream needs `stream`")
        self._untrack = track(self.ctx, self.link, "sink")
        await retry(self.link, self._connect, transient=transient)

    async def _connect(self) -> None:
        old, self._nc = self._nc, None
        if old is not None:
            with anyio.move_on_after(2):
                await _close_quietly(old)
        nc = await _connect(self.params.url, "nats.jetstream sink", self.log)
        self._nc, self._js = nc, nc.jetstream()
        if self.params.create_stream:
            assert self.params.stream is not None
            await _ensure_stream(self._js, self.params.stream, [self.params.subject])

    async def _reconnect(self) -> None:
        if self._nc is None or not self._nc.is_connected:
            await self._connect()

    async def write(self, batch: list[Any]) -> None:
        """Publish the batch and wait for its acknowledgements (again after an outage)."""
        if not batch:
            return
        params = self.params
        payloads = [encode_payload(item, params.encode, "nats.jetstream") for item in batch]

        async def publish() -> None:
            js = self._js
            futures = [
                await js.publish_async(params.subject, data, stream=params.stream)
                for data in payloads
            ]
            await asyncio.wait_for(asyncio.gather(*futures), params.timeout)

        await retry(self.link, publish, transient=transient, reconnect=self._reconnect)
        self.published += len(batch)

    async def close(self, error: BaseException | None) -> dict[str, Any]:
        """Disconnect; returns ``{"subject", "published"}``."""
        self._untrack()
        nc, self._nc = self._nc, None
        if nc is not None:
            await _close_quietly(nc)
        return {"subject": self.params.subject, "published": self.published}
