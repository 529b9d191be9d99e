"""NATS JetStream: a durable pull-consumer source and an acknowledged-publish sink.

Installed with ``pip install 'headwater[nats]'`` (the ``nats-py`` package). This module
imports without it; a component reports the missing package when used.

* ``nats.jetstream`` (source) fetches from a **durable pull consumer** (created if
  missing, explicit acks). Every worker binding the same durable shares its messages:
  each message goes to one of them. A message is acknowledged only after every sink
  committed it (``ctx.on_commit``); the source keeps the message objects of what it
  delivered and has not yet acknowledged. Unacknowledged messages are redelivered by the
  server after ``ack_wait`` (a dead worker's included). A message delivered more than
  ``max_deliver`` times (a poison message that keeps failing the pipeline) is published
  to the ``dead_letter`` subject, with headers saying where it came from, and terminated.
  A drain request (``headwater worker`` on SIGTERM) makes it stop fetching and return:
  what it delivered is committed and acknowledged before the run ends. A worker given no
  name (``HEADWATER_CONSUMER``) leases ``HOST-SLOT`` in a KV bucket
  (:class:`~._nats_slots.SlotLease`); the name appears in its logs.
* ``nats.jetstream`` (sink) publishes each item to JetStream and waits for every
  ``PubAck`` of the batch (the messages are stored when ``write`` returns); it is
  defined in :mod:`.nats_sink`, with the connection helpers of this module.

Both ride out an outage of the server: the connection is replaced with backoff for up
to ``outage_deadline`` seconds (:mod:`headwater.core.reconnect`; the client library's
own reconnection is off, so that there is one policy and one log line per change of
state), then the run fails saying so. Messages delivered before the outage are
acknowledged through the new connection (an ack names its message, not the
connection); what a lost fetch had handed out is redelivered by the server after
``ack_wait``. Delivery is at-least-once. Runs on asyncio (``nats-py`` is asyncio-based).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field

import headwater
from headwater.core.context import StreamContext
from headwater.core.reconnect import DEFAULT_OUTAGE_DEADLINE, Link

from ._broker_source import Acknowledger, json_batch_decoder, read_broker
from ._brokers import given_consumer, require, stage_logger
from ._checks.brokers import check_nats_source
from ._nats_slots import BUCKET, DEFAULT_TTL, SlotLease

__all__ = ["DEFAULT_URL", "NatsSourceParams", "nats_jetstream_source"]

DEFAULT_URL = "nats://127.0.0.1:4222"
DLQ_HEADERS = ("Headwater-Subject", "Headwater-Stream", "Headwater-Seq", "Headwater-Deliveries")
"""Headers of a dead-lettered message: original subject, stream, stream sequence and the
number of deliveries."""

Decode = Literal["json", "text", "bytes"]

log = logging.getLogger("headwater.nats")


def _nats(component: str) -> Any:
    return require("nats", "nats", component)


_ACK = b""
"""Payload of a JetStream acknowledgement (published to the message's reply subject)."""
_TERM = b"+TERM"


async def _connect(
    url: str, component: str, log: logging.Logger | logging.LoggerAdapter[Any]
) -> Any:
    """A connection without the library's own reconnection (see the module docstring).

    Its errors are logged at debug level only: every user-visible line about the
    connection comes from the link (lost, still down, back, given up).
    """
    nats = _nats(component)

    async def quiet(exc: Exception) -> None:
        log.debug("%s: connection error: %s", component, exc)

    return await nats.connect(
        url,
        connect_timeout=5,
        allow_reconnect=False,
        # the smallest bound of the library's own connect loop (0 would mean endless)
        max_reconnect_attempts=1,
        reconnect_time_wait=0.05,
        ping_interval=10,
        max_outstanding_pings=3,
        error_cb=quiet,
    )


def transient(exc: BaseException) -> bool:
    """True for errors of an unreachable, restarting or not yet ready server."""
    if isinstance(exc, OSError | TimeoutError):
        return True
    errors = require("nats.errors", "nats", "nats.jetstream")
    js_errors = require("nats.js.errors", "nats", "nats.jetstream")
    kinds = (
        errors.ConnectionClosedError,
        errors.NoServersError,
        errors.StaleConnectionError,
        errors.UnexpectedEOF,
        errors.OutboundBufferLimitError,
        errors.ConnectionReconnectingError,
        errors.ConnectionDrainingError,
        errors.NoRespondersError,
        errors.FlushTimeoutError,
        js_errors.ServiceUnavailableError,
        js_errors.NoStreamResponseError,
    )
    return isinstance(exc, kinds)


async def _ensure_stream(js: Any, stream: str, subjects: list[str]) -> None:
    """Create ``stream`` capturing ``subjects`` unless a stream of that name exists."""
    errors = require("nats.js.errors", "nats", "nats.jetstream")
    try:
        await js.stream_info(stream)
    except errors.NotFoundError:
        await js.add_stream(name=stream, subjects=subjects)


# ---------------------------------------------------------------------------------------
# source
# ---------------------------------------------------------------------------------------


class NatsSourceParams(BaseModel):
    """Params of the ``nats.jetstream`` source."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    url: str = Field(DEFAULT_URL, description="NATS server URL, e.g. nats://127.0.0.1:4222.")
    stream: str = Field(min_length=1, description="JetStream stream to consume.")
    durable: str = Field(
        min_length=1,
        description="Durable pull consumer shared by the workers (created if missing).",
    )
    subject: str | None = Field(
        None, description="Only messages on this subject (filter); default: all of the stream."
    )
    create_stream: list[str] | None = Field(
        None, description="Create the stream with these subjects if it does not exist."
    )
    batch: int = Field(500, ge=1, le=100_000, description="Most messages per fetch.")
    fetch_timeout: float = Field(
        0.5,
        gt=0,
        le=60,
        description="Longest wait for messages per fetch; also bounds how long a drain "
        "request waits for the fetch in progress.",
    )
    ack_wait: float = Field(
        30.0,
        gt=0,
        description="Seconds the server waits for an ack before redelivering (consumer "
        "setting, used when the consumer is created). Must exceed the time the pipeline "
        "takes to commit a batch.",
    )
    max_ack_pending: int = Field(
        20_000, ge=1, description="Most unacknowledged messages the consumer hands out."
    )
    max_deliver: int | None = Field(
        None,
        ge=1,
        description="A message delivered more than this many times goes to dead_letter "
        "and is terminated. None: redeliver forever.",
    )
    dead_letter: str | None = Field(
        None,
        description="Subject receiving messages over max_deliver (published to JetStream "
        "if a stream captures it, else plain NATS). Without it they are only terminated "
        "and logged.",
    )
    decode: Decode = Field(
        "json", description="Item made of a message: json (parsed), text (str) or bytes."
    )
    envelope: bool = Field(
        False,
        description='Emit {"subject", "seq", "deliveries", "data"} instead of the bare payload.',
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
        description="Seconds the server may stay unreachable (reconnecting with backoff) "
        "before the run fails.",
    )
    lease_bucket: str = Field(
        BUCKET,
        pattern=r"^[a-zA-Z0-9_-]+$",
        description="KV bucket where a worker given no name (HEADWATER_CONSUMER, headwater "
        "worker --consumer) leases HOSTNAME-SLOT, the lowest slot no live worker of this "
        "host holds (created if missing).",
    )
    lease_ttl: float = Field(
        DEFAULT_TTL,
        ge=1,
        description="Seconds a worker-name lease lives without a refresh (a killed worker's "
        "name is free after this long), when this source creates lease_bucket; an existing "
        "bucket keeps its own TTL.",
    )


def _decode_msg(msg: Any, seq: int, deliveries: int, params: NatsSourceParams) -> Any:
    data = msg.data
    if params.decode == "bytes":
        value: Any = bytes(data)
    elif params.decode == "text":
        value = data.decode()
    else:
        try:
            value = json.loads(data)
        except ValueError as exc:
            raise ValueError(
                f"message {seq} of stream {params.stream!r} ({msg.subject}) is not JSON "
                f"({exc}); use decode: text or bytes"
            ) from None
    if params.envelope:
        return {"subject": msg.subject, "seq": seq, "deliveries": deliveries, "data": value}
    return value


async def _ensure_consumer(js: Any, params: NatsSourceParams) -> None:
    """Create the durable pull consumer unless it exists (an existing one is kept as is)."""
    api = require("nats.js.api", "nats", "nats.jetstream")
    errors = require("nats.js.errors", "nats", "nats.jetstream")
    try:
        await js.consumer_info(params.stream, params.durable)
        return
    except errors.NotFoundError:
        pass
    config = api.ConsumerConfig(
        durable_name=params.durable,
        ack_policy=api.AckPolicy.EXPLICIT,
        deliver_policy=api.DeliverPolicy.ALL,
        ack_wait=params.ack_wait,
        max_deliver=-1,
        max_ack_pending=params.max_ack_pending,
        filter_subject=params.subject,
    )
    try:
        await js.add_consumer(params.stream, config)
    except errors.BadRequestError:
        await js.consumer_info(params.stream, params.durable)  # created meanwhile by a peer


async def _dead_letter(
    js: Any, nc: Any, msg: Any, params: NatsSourceParams, log: logging.LoggerAdapter[Any]
) -> None:
    """Publish ``msg`` to the dead-letter subject (if any) and terminate it."""
    meta = msg.metadata
    deliveries = int(meta.num_delivered)
    seq = int(meta.sequence.stream)
    if params.dead_letter is not None:
        headers = dict(
            zip(
                DLQ_HEADERS,
                (msg.subject, params.stream, str(seq), str(deliveries)),
                strict=True,
            )
        )
        errors = require("nats.errors", "nats", "nats.jetstream")
        js_errors = require("nats.js.errors", "nats", "nats.jetstream")
        try:
            await js.publish(params.dead_letter, msg.data, headers=headers, timeout=10)
        except (errors.NoRespondersError, js_errors.NoStreamResponseError):
            await nc.publish(params.dead_letter, msg.data, headers=headers)
            await nc.flush(timeout=10)
        log.warning(
            "nats.jetstream: message %d of %r delivered %d times: sent to %s",
            seq,
            params.stream,
            deliveries,
            params.dead_letter,
        )
    else:
        log.error(
            "nats.jetstream: message %d of %r delivered %d times (> max_deliver %d): "
            "terminated (configure dead_letter to keep such messages)",
            seq,
            params.stream,
            deliveries,
            params.max_deliver,
        )
    await nc.publish(msg.reply, _TERM)


def _decoder(params: NatsSourceParams) -> Callable[[list[tuple[int, Any]]], list[Any]]:
    """The batch decoder of ``params`` (JSON payloads as one comprehension; a message it
    cannot handle is decoded again one by one, for the error message)."""
    decode_json = json_batch_decoder()

    def slow(fetched: list[tuple[int, Any]]) -> list[Any]:
        return [_decode_msg(m, seq, int(m.metadata.num_delivered), params) for seq, m in fetched]

    if params.envelope or params.decode != "json":
        return slow

    def decode(fetched: list[tuple[int, Any]]) -> list[Any]:
        try:
            return decode_json([m.data for _, m in fetched])
        except (AttributeError, TypeError, ValueError):
            return slow(fetched)

    return decode


def _seq_and_deliveries(msg: Any) -> tuple[int, int]:
    """A message's stream sequence and delivery count, read from its reply subject
    (``$JS.ACK.STREAM.CONSUMER.DELIVERED.SSEQ.CSEQ.TS.PENDING``) without building the
    library's metadata object (a tenth of the per-message cost); other forms of the
    subject go through the library."""
    tokens = msg.reply.split(".")
    if len(tokens) == 9:
        return int(tokens[5]), int(tokens[4])
    meta = msg.metadata
    return int(meta.sequence.stream), int(meta.num_delivered)


class _PullConsumer:
    """``nats.jetstream``'s :class:`~._broker_source.Broker`: a durable pull consumer.

    It keeps the message objects of what it delivered and has not yet acknowledged: a
    message is acknowledged by publishing to its reply subject, through whichever
    connection is current (one made after an outage too).
    """

    name = "nats.jetstream"
    noun = "messages"
    cursor = "seq"
    start = 0

    def __init__(self, params: NatsSourceParams, ctx: StreamContext) -> None:
        self.params = params
        self.log = stage_logger("headwater.nats", ctx)
        self.link = Link(
            "nats.jetstream source", params.url, deadline=params.outage_deadline, log=self.log
        )
        self.nc: Any = None
        self.js: Any = None
        self.psub: Any = None
        self.msgs: dict[int, Any] = {}
        self.decode = _decoder(params)
        self.closed = False
        self._connecting = anyio.Lock()
        self.worker = given_consumer(None) or ""
        self.lease = (
            None
            if self.worker
            else SlotLease(
                self,
                params.stream,
                params.durable,
                bucket=params.lease_bucket,
                ttl=params.lease_ttl,
            )
        )

    def transient(self, exc: BaseException) -> bool:
        return transient(exc)

    async def open(self) -> str:
        await self._connect()
        params = self.params
        if self.lease is not None:
            self.worker = await self.lease.claim()
        self.log.info(
            "nats.jetstream: worker %s bound to durable consumer %s of stream %s at %s",
            self.worker,
            params.durable,
            params.stream,
            self.link.address,
        )
        return f"worker {self.worker!r}: durable consumer {params.durable!r} of {params.stream!r}"

    async def _connect(self) -> None:
        params = self.params
        old, self.nc = self.nc, None
        if old is not None:
            with anyio.move_on_after(2):
                await _close_quietly(old)
        nc = await _connect(params.url, "nats.jetstream", self.log)
        try:
            js = nc.jetstream()
            if params.create_stream:
                await _ensure_stream(js, params.stream, params.create_stream)
            await _ensure_consumer(js, params)
            self.psub = await js.pull_subscribe_bind(params.durable, params.stream)
        except BaseException:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await _close_quietly(nc)
            raise
        self.nc, self.js = nc, js

    async def reconnect(self) -> None:
        async with self._connecting:
            if self.closed or (self.nc is not None and self.nc.is_connected):
                return  # another operation replaced it already
            await self._connect()

    async def fetch(self, count: int, held: Acknowledger[int]) -> list[tuple[int, Any]]:
        params = self.params
        if self.nc is None or not self.nc.is_connected:
            raise _nats("nats.jetstream").errors.ConnectionClosedError()
        try:
            msgs = await self.psub.fetch(count, timeout=params.fetch_timeout)
        except TimeoutError:  # nats.errors.TimeoutError and asyncio's: nothing came
            if not self.nc.is_connected:
                raise _nats("nats.jetstream").errors.ConnectionClosedError() from None
            return []
        fetched: list[tuple[int, Any]] = []
        max_deliver = params.max_deliver
        for msg in msgs:
            seq, deliveries = _seq_and_deliveries(msg)
            if seq in held:
                continue  # redelivered while we still hold it: our ack will cover it
            if max_deliver is not None and deliveries > max_deliver:
                await _dead_letter(self.js, self.nc, msg, params, self.log)
                continue
            fetched.append((seq, msg))
            self.msgs[seq] = msg
        return fetched

    async def ack(self, keys: list[int]) -> int:
        if self.closed:
            return 0  # closed for good: the server redelivers them after ack_wait
        nc = self.nc
        if nc is None or not nc.is_connected:  # being replaced: retried once it is
            raise _nats("nats.jetstream").errors.ConnectionClosedError()
        msgs = self.msgs
        publish = nc.publish
        for seq in keys:
            msg = msgs.get(seq)
            if msg is not None:
                await publish(msg.reply, _ACK)
        await nc.flush(timeout=10)
        for seq in keys:  # forgotten once the server has them (retried otherwise)
            msgs.pop(seq, None)
        return len(keys)

    def ack_failed(self, keys: list[int], exc: Exception) -> bool:
        # Unacked messages are redelivered after ack_wait: at-least-once holds.
        self.log.warning("nats.jetstream: acking %d messages failed: %s", len(keys), exc)
        return False

    async def close(self) -> None:
        self.closed = True
        if self.lease is not None:
            await self.lease.release()
        nc, self.nc = self.nc, None
        self.msgs.clear()
        if nc is not None:
            await _close_quietly(nc)


async def _close_quietly(nc: Any) -> None:
    """Close a connection that may be broken already."""
    try:
        await nc.close()
    except Exception:  # a closed or broken connection: nothing left to release
        return


@headwater.action(
    "nats.jetstream",
    params=NatsSourceParams,
    output="the messages of a JetStream stream via a durable pull consumer (see decode)",
    capabilities=("streaming", "resumable"),
    batched=True,
    check=check_nats_source,
)
async def nats_jetstream_source(
    params: NatsSourceParams, ctx: StreamContext
) -> AsyncIterator[list[Any]]:
    """Fetch from a durable JetStream pull consumer; ack after every sink committed.

    Needs a ``checkpoint:`` section (``{store: memory}`` suffices: the consumer keeps
    the position). The checkpoint position is ``{"delivered": N, "last_seq": SEQ}``; on
    each commit the messages delivered up to ``N`` are acknowledged.
    """
    _nats("nats.jetstream")
    async with aclosing(read_broker(_PullConsumer(params, ctx), params, ctx)) as batches:
        async for batch in batches:
            yield batch
