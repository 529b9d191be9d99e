"""MQTT: a subscriber source that acknowledges after every sink committed, and a publisher
sink.

Installed with ``pip install 'headwater[mqtt]'`` (``paho-mqtt`` 2, whose
``manual_ack`` lets the PUBACK of a QoS 1 message wait). This module imports without
it; a component reports the missing package when used. paho runs its network loop in a
thread, so both components run on asyncio and on trio (:mod:`._mqtt`).

* ``mqtt`` (source) subscribes to topic filters at QoS 0 or 1 in a **persistent
  session** (MQTT 5 clean start off with a session expiry; 3.1.1 clean session off),
  under a stable client id. A QoS 1 message is acknowledged (PUBACK) only after every
  sink committed it (``ctx.on_commit``), so the pipeline needs a ``checkpoint:``
  section (``{store: memory}`` is enough). The broker keeps what arrives while the
  worker is away and sends again, after a reconnection, what it sent without a PUBACK:
  at-least-once, with at most the window of unacknowledged messages delivered twice.
  QoS 0 messages are at-most-once: the broker forgets them once sent.
* ``mqtt`` (sink) publishes each item to a topic at QoS 0 or 1, optionally retained;
  with QoS 1, ``write`` returns once the broker acknowledged every message (PUBACK).

Mosquitto's settings bound what the source gets: ``max_inflight_messages`` (default 20)
is the window of unacknowledged QoS 1 messages for MQTT 3.1.1 clients (MQTT 5 clients
announce theirs: ``receive_maximum``), and ``max_queued_messages`` (default 1000) is how
many messages it queues for a client beyond that window, connected or away: **more are
dropped**. A pipeline that must not lose messages while its worker is down sets
``max_queued_messages`` (and ``max_queued_bytes``) to what an outage can bring, or 0 for
no limit, and ``persistence true`` so that sessions survive a broker restart.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field, field_validator

import headwater
from headwater.core.context import StreamContext
from headwater.core.reconnect import DEFAULT_OUTAGE_DEADLINE, Link, retry

from ._addresses import check_url, check_url_param
from ._broker_source import Acknowledger, read_broker
from ._brokers import given_consumer, stage_logger, track
from ._checks.queues import check_mqtt
from ._connectors import connector
from ._mqtt import Inbox, MqttConnection, paho, transient
from ._values import encode_payload

__all__ = ["MqttSink", "MqttSinkParams", "MqttSourceParams", "mqtt_source"]

DEFAULT_URL = "mqtt://127.0.0.1:1883"
Codec = Literal["json", "text", "bytes"]


class _Common(BaseModel):
    """Params both components have."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    url: str = Field(
        DEFAULT_URL,
        description="Broker URL: mqtt://HOST:PORT, or mqtts:// for TLS (user and password "
        "may be in the URL; put secrets in ${VAR}).",
    )
    username: str | None = Field(None, description="User name (else the URL's).")
    password: str | None = Field(None, description="Password (else the URL's).")
    protocol: Literal["5", "3.1.1"] = Field("5", description="MQTT version: 5 or 3.1.1.")
    keepalive: int = Field(30, ge=5, le=3600, description="Seconds between keepalive pings.")
    outage_deadline: float = Field(
        DEFAULT_OUTAGE_DEADLINE,
        gt=0,
        description="Seconds the broker may stay unreachable (paho reconnecting) before "
        "the run fails.",
    )

    _url_allowed = field_validator("url")(check_url_param)


class MqttSourceParams(_Common):
    """Params of the ``mqtt`` source."""

    topics: list[str] = Field(
        min_length=1,
        description="Topic filters to subscribe to (+ and # wildcards; $share/GROUP/FILTER "
        "shares one filter between workers with MQTT 5).",
    )
    qos: Literal[0, 1] = Field(
        1,
        description="Subscription QoS: 1 (acknowledged after the sinks commit: "
        "at-least-once) or 0 (at-most-once).",
    )
    client_id: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="Client id of the persistent session: keep it stable across restarts. "
        "Default: headwater-PIPELINE, with -CONSUMER when HEADWATER_CONSUMER (headwater "
        "worker --consumer) is set.",
    )
    session_expiry: int = Field(
        86_400,
        ge=0,
        description="Seconds the broker keeps the session (subscriptions, queued "
        "messages) after a disconnection. 0: a clean session, nothing kept.",
    )
    receive_maximum: int = Field(
        1000,
        ge=1,
        le=65_535,
        description="MQTT 5: most unacknowledged QoS 1 messages the broker sends at once "
        "(the window redelivered after a crash). Keep it at least the checkpoint's "
        "every_items, or the source waits for every_seconds. MQTT 3.1.1: the broker's "
        "max_inflight_messages rules instead.",
    )
    batch: int = Field(500, ge=1, le=100_000, description="Most messages per batch.")
    buffer: int = Field(
        10_000,
        ge=1,
        description="QoS 0 messages arriving while this many messages wait for the "
        "pipeline are dropped (counted in the source's status). QoS 1 messages are never "
        "dropped here: the broker's window and queue bound them.",
    )
    fetch_timeout: float = Field(
        0.5, gt=0, le=60, description="Longest wait for a message per batch."
    )
    decode: Codec = Field(
        "json", description="Item made of a payload: json (parsed), text (str) or bytes."
    )
    envelope: bool = Field(
        False,
        description='Emit {"topic", "qos", "retain", "dup", "data"} instead of the bare payload.',
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


def _decoded(payload: bytes, mode: Codec, topic: str) -> Any:
    if mode == "bytes":
        return bytes(payload)
    if mode == "text":
        return payload.decode()
    try:
        return json.loads(payload)
    except ValueError as exc:
        raise ValueError(
            f"message on {topic!r} is not JSON ({exc}); use decode: text or bytes"
        ) from None


class _Subscriber:
    """``mqtt``'s :class:`~._broker_source.Broker`: a subscriber with manual PUBACKs.

    A key is a local delivery number; it maps to the packet id (``mid``), QoS and
    session epoch of its message. A QoS 1 message the broker sends again (``dup``)
    while this process still holds its packet id is not delivered twice: the pending
    acknowledgement covers it.
    """

    name = "mqtt"
    noun = "messages"
    cursor = "n"
    start = 0

    def __init__(self, params: MqttSourceParams, ctx: StreamContext) -> None:
        self.params = params
        self.log = stage_logger("headwater.mqtt", ctx)
        self.link = Link("mqtt source", params.url, deadline=params.outage_deadline, log=self.log)
        consumer = given_consumer(None)
        self.client_id = params.client_id or "-".join(
            part for part in ("headwater", ctx.pipeline, consumer) if part
        )
        self.conn: MqttConnection | None = None
        self.count = 0
        self.msgs: dict[int, tuple[int, int, int]] = {}
        """key -> (mid, qos, session epoch) of what was delivered and not acknowledged."""
        self.held: dict[int, int] = {}
        """mid -> key of the QoS 1 messages held (this session epoch)."""
        self.epoch = 0
        self.dropped = 0

    def transient(self, exc: BaseException) -> bool:
        return transient(exc)

    async def open(self) -> str:
        p = self.params
        if self.conn is None:  # retried through an outage: one client, reconnecting
            inbox = Inbox(p.buffer)
            conn = MqttConnection(
                p.url,
                client_id=self.client_id,
                protocol=p.protocol,
                session_expiry=p.session_expiry,
                keepalive=p.keepalive,
                username=p.username,
                password=p.password,
                inbox=inbox,
                component="mqtt",
                receive_maximum=p.receive_maximum,
                manual_ack=True,
            )
            conn.subscribe_to = [(topic, p.qos) for topic in p.topics]
            conn.client.on_message = lambda client, userdata, msg: inbox.put(msg)
            self.conn = conn
            conn.start()
        await self.conn.wait_connected(5.0)
        self.conn.check()
        self.log.info(
            "mqtt: client %s subscribed to %s at %s", self.client_id, p.topics, self.link.address
        )
        return f"client {self.client_id!r} subscribed to {', '.join(p.topics)}"

    async def reconnect(self) -> None:
        if self.conn is not None:
            await self.conn.wait_connected(1.0)

    async def fetch(self, count: int, held: Acknowledger[int]) -> list[tuple[int, Any]]:
        conn, p = self.conn, self.params
        assert conn is not None
        conn.check()
        await conn.inbox.wait(p.fetch_timeout)
        taken = conn.inbox.take(count)
        if conn.inbox.dropped > self.dropped:
            self.log.warning(
                "mqtt: %d QoS 0 messages dropped: %d were waiting for the pipeline (param buffer)",
                conn.inbox.dropped - self.dropped,
                p.buffer,
            )
            self.dropped = conn.inbox.dropped
        if not taken:
            conn.check()  # nothing came: because the connection went down?
        epoch = conn.session_epoch
        if epoch != self.epoch:
            self.held.clear()  # a new session: the broker forgot the earlier packet ids
            self.epoch = epoch
        fetched: list[tuple[int, Any]] = []
        for msg in taken:
            if msg.qos == 1 and msg.dup and msg.mid in self.held:
                continue  # sent again while we hold it: our PUBACK will cover it
            self.count += 1
            key = self.count
            self.msgs[key] = (msg.mid, msg.qos, epoch)
            if msg.qos == 1:
                self.held[msg.mid] = key
            fetched.append((key, msg))
        return fetched

    def decode(self, fetched: list[tuple[int, Any]]) -> list[Any]:
        p = self.params
        if not p.envelope and p.decode == "json":
            try:
                return [json.loads(m.payload) for _, m in fetched]
            except ValueError:
                pass  # again one by one below, for the message
        out = []
        for _, m in fetched:
            value = _decoded(m.payload, p.decode, m.topic)
            if p.envelope:
                value = {
                    "topic": m.topic,
                    "qos": m.qos,
                    "retain": bool(m.retain),
                    "dup": bool(m.dup),
                    "data": value,
                }
            out.append(value)
        return out

    async def ack(self, keys: list[int]) -> int:
        conn = self.conn
        if conn is None:
            return 0
        conn.check()  # down: retried once paho reconnected (the session keeps the ids)
        epoch = conn.session_epoch
        done = 0
        for key in keys:
            mid, qos, at = self.msgs.pop(key, (0, 0, -1))
            if qos == 1 and at == epoch:
                conn.client.ack(mid, 1)
                if self.held.get(mid) == key:
                    del self.held[mid]
                done += 1
        return done

    def ack_failed(self, keys: list[int], exc: Exception) -> bool:
        self.log.warning("mqtt: acknowledging %d messages failed: %s", len(keys), exc)
        return True

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with anyio.CancelScope(shield=True):
                await conn.flush()  # the PUBACKs reach the broker before we leave
                await conn.close()


@headwater.action(
    "mqtt",
    params=MqttSourceParams,
    output="the payloads of the messages on the topics (see decode and envelope)",
    capabilities=("streaming", "resumable"),
    batched=True,
    check=check_mqtt,
)
async def mqtt_source(params: MqttSourceParams, ctx: StreamContext) -> AsyncIterator[list[Any]]:
    """Subscribe to MQTT topics in a persistent session; PUBACK after every sink committed.

    Needs a ``checkpoint:`` section (``{store: memory}`` suffices: the broker's session
    keeps what is not acknowledged). The checkpoint position is ``{"delivered": N,
    "last_n": K}``; on each commit every QoS 1 message delivered up to ``N`` is
    acknowledged, in the order received (as MQTT requires).
    """
    paho("mqtt")
    check_url(ctx.policy, params.url, param=f"{ctx.stage}.params.url")
    async with aclosing(read_broker(_Subscriber(params, ctx), params, ctx)) as batches:
        async for batch in batches:
            yield batch


# ---------------------------------------------------------------------------------------
# sink
# ---------------------------------------------------------------------------------------


class MqttSinkParams(_Common):
    """Params of the ``mqtt`` sink."""

    topic: str = Field(min_length=1, description="Topic to publish to (no wildcards).")
    qos: Literal[0, 1] = Field(
        1, description="1: write waits for the broker's PUBACKs (at-least-once); 0: no wait."
    )
    retain: bool = Field(
        False, description="Retain each message: the broker keeps the last one of the topic."
    )
    client_id: str | None = Field(
        None, min_length=1, max_length=128, description="Client id (default: a random one)."
    )
    encode: Codec = Field(
        "json", description="How an item becomes a payload: json, text (str()) or bytes."
    )
    timeout: float = Field(
        30.0, gt=0, description="Seconds to wait, while connected, for a batch's PUBACKs."
    )


@headwater.sink("mqtt", params=MqttSinkParams, check=check_mqtt)
class MqttSink:
    """Publish every item to an MQTT topic; with QoS 1, ``write`` returns once the broker
    acknowledged every message of the batch.

    paho keeps QoS 1 messages until their PUBACK and sends them again after a
    reconnection (at-least-once); QoS 0 messages published while the connection is down
    are lost (at-most-once). The output is ``{"topic", "published"}``.
    """

    def __init__(self, params: MqttSinkParams, ctx: StreamContext) -> None:
        self.params = params
        self.ctx = ctx
        self.published = 0
        self.log = stage_logger("headwater.mqtt", ctx)
        self.link = Link("mqtt sink", params.url, deadline=params.outage_deadline, log=self.log)
        self.conn: MqttConnection | None = None
        self._untrack: Callable[[], None] = lambda: None

    async def open(self) -> None:
        """Connect, waiting through an outage."""
        p = self.params
        paho("mqtt sink")
        check_url(self.ctx.policy, p.url, param=f"{self.ctx.stage}.params.url")
        self._untrack = track(self.ctx, self.link, "sink")
        inbox = Inbox(1)
        self.conn = MqttConnection(
            p.url,
            client_id=p.client_id or "",
            protocol=p.protocol,
            session_expiry=0,
            keepalive=p.keepalive,
            username=p.username,
            password=p.password,
            inbox=inbox,
            component="mqtt sink",
        )
        self.conn.client.on_publish = lambda *args: inbox.wake()
        self.conn.start()
        await self.conn.wait_connected(5.0)
        await retry(self.link, self._connected, transient=transient, reconnect=self._wait)

    async def _connected(self) -> None:
        assert self.conn is not None
        self.conn.check()

    async def _wait(self) -> None:
        assert self.conn is not None
        await self.conn.wait_connected(1.0)

    async def write(self, batch: list[Any]) -> None:
        """Publish the batch; with QoS 1, wait for every PUBACK (through an outage)."""
        if not batch:
            return
        conn = self.conn
        assert conn is not None
        p = self.params
        payloads = [encode_payload(item, p.encode, "mqtt") for item in batch]
        await retry(self.link, self._connected, transient=transient, reconnect=self._wait)
        publish = conn.client.publish
        infos = [publish(p.topic, data, qos=p.qos, retain=p.retain) for data in payloads]
        patience = time.monotonic() + p.timeout
        while not all(info.is_published() for info in infos):
            if conn.connected:
                if time.monotonic() > patience:
                    raise TimeoutError(
                        f"mqtt: the broker acknowledged {sum(i.is_published() for i in infos)} "
                        f"of {len(infos)} messages within {p.timeout:g}s (param timeout)"
                    )
                await conn.inbox.wait_state(0.5)
                continue
            # down: paho sends them again once reconnected; the link bounds the outage
            await retry(self.link, self._connected, transient=transient, reconnect=self._wait)
            patience = time.monotonic() + p.timeout
        self.published += len(batch)

    async def close(self, error: BaseException | None) -> dict[str, Any]:
        """Disconnect; returns ``{"topic", "published"}``."""
        self._untrack()
        conn, self.conn = self.conn, None
        if conn is not None:
            with anyio.CancelScope(shield=True):
                await conn.close()
        return {"topic": self.params.topic, "published": self.published}


connector(
    mqtt_source,
    extra="mqtt",
    guarantee="at-least-once with QoS 1 (a crash repeats what was not acknowledged); "
    "at-most-once with QoS 0",
    ack="PUBACK once every sink committed the message, in the order received",
    ordering="as the broker delivers (per topic); redeliveries after a reconnection first",
    backpressure="the broker's window of unacknowledged QoS 1 messages; QoS 0 messages "
    "beyond `buffer` waiting ones are dropped",
    resume="the persistent session (`client_id`, `session_expiry`) keeps the subscriptions "
    "and what arrives while away (up to Mosquitto's `max_queued_messages`)",
)
connector(
    MqttSink,
    extra="mqtt",
    guarantee="at-least-once with QoS 1 (resent after a reconnection); at-most-once with QoS 0",
    ack="`write` returns after every PUBACK (QoS 1)",
    ordering="in order",
    backpressure="each batch waits for its PUBACKs",
    resume="none of its own: the pipeline's checkpoint decides what is sent again",
)
