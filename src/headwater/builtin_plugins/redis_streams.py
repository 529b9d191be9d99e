"""Redis Streams: a consumer-group source, an ``XADD`` sink and a checkpoint store.

Installed with ``pip install 'headwater[redis]'`` (the ``redis`` package, asyncio API).
This module imports without it; a component reports the missing package when used.

* ``redis.stream`` (source) reads with a **consumer group** (``XREADGROUP``; the group
  and the stream are created if missing). Many processes with the same group and
  different consumer names share the stream: each entry goes to one of them. Entries
  are acknowledged (``XACK``) only after every sink committed them: the source reports
  its deliveries as checkpoint positions and acknowledges in ``ctx.on_commit``, so the
  pipeline needs a ``checkpoint:`` section (``{store: memory}`` is enough;
  ``headwater worker`` adds it). Without a ``consumer`` name it leases ``HOST-SLOT``
  (:class:`~._redis.ConsumerLease`), and first re-reads what it left pending under that
  name. Entries left pending by a dead consumer are reclaimed with ``XAUTOCLAIM`` once
  idle for ``claim_idle_ms``; an entry delivered more than ``max_deliver`` times goes
  to the ``dead_letter`` stream; consumers that hold nothing and stayed idle
  ``delete_idle_consumers`` seconds are deleted. A drain request (``headwater worker``
  on SIGTERM) makes it stop reading and return: what it delivered is committed and
  acknowledged before the run ends.
* ``redis.stream`` (sink) appends each item with ``XADD``, one pipelined round trip per
  batch, with optional approximate ``MAXLEN`` trimming.
* ``redis`` (checkpoint store) keeps checkpoints as JSON strings under
  ``headwater:checkpoint:PIPELINE``.

Every component rides out a Redis outage (a restart, a failover, a partition): it
reconnects with backoff for up to ``outage_deadline`` seconds, then fails saying so
(:mod:`headwater.core.reconnect`). Delivery is at-least-once: a consumer killed between
a sink's write and the ``XACK`` leaves its entries pending, and another member (or the
same one restarted) delivers them again. Runs on asyncio (the ``redis`` client's async
API is asyncio-based).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import aclosing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

import headwater
from headwater.core.context import StreamContext
from headwater.core.reconnect import DEFAULT_OUTAGE_DEADLINE, Link

from . import _redis
from ._broker_source import Acknowledger, json_batch_decoder, read_broker
from ._brokers import given_consumer, stage_logger
from ._checks.brokers import check_redis_source
from .redis_sink import (
    RedisCheckpointStore,
    RedisSinkParams,
    RedisStoreParams,
    RedisStreamSink,
)

__all__ = [
    "RedisCheckpointStore",
    "RedisSinkParams",
    "RedisSourceParams",
    "RedisStoreParams",
    "RedisStreamSink",
    "redis_stream_source",
]

DEFAULT_URL = "redis://127.0.0.1:6379"
_ACK_CHUNK = 10_000
"""Most entry ids per ``XACK`` command (one pipelined round trip for all chunks)."""
_CLEANUP_SECONDS = 60.0
"""Seconds between two looks for idle consumers to delete."""
DLQ_FIELDS = ("headwater-stream", "headwater-group", "headwater-id", "headwater-deliveries")
"""Fields added to a dead-lettered entry: original stream, group, entry id and the
number of deliveries."""

Decode = Literal["json", "text", "bytes", "fields"]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# ---------------------------------------------------------------------------------------
# source
# ---------------------------------------------------------------------------------------


class RedisSourceParams(BaseModel):
    """Params of the ``redis.stream`` source."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    url: str = Field(DEFAULT_URL, description="Redis URL, e.g. redis://127.0.0.1:6379/0.")
    stream: str = Field(min_length=1, description="Key of the stream to read.")
    group: str = Field(min_length=1, description="Consumer group shared by the workers.")
    consumer: str | None = Field(
        None,
        min_length=1,
        description="This member's name in the group. Default: HEADWATER_CONSUMER (set by "
        "`headwater worker --consumer`), else HOSTNAME-SLOT, the lowest slot no live worker "
        "of this host holds (leased in Redis; a restarted worker takes its predecessor's).",
    )
    start_id: str = Field(
        "0",
        description="Where a group created by this source starts: 0 (every entry already "
        "in the stream) or $ (only new ones).",
    )
    batch: int = Field(500, ge=1, le=100_000, description="Most entries read per XREADGROUP.")
    block_ms: int = Field(
        500,
        ge=1,
        le=60_000,
        description="Longest wait for new entries per read; also bounds how long a drain "
        "request waits for the read in progress.",
    )
    claim_idle_ms: int | None = Field(
        30_000,
        ge=1,
        description="Reclaim (XAUTOCLAIM) entries pending for another consumer for at least "
        "this long: it is presumed dead. Must exceed the time the pipeline takes to commit "
        "a batch. None: never reclaim.",
    )
    claim_interval: float | None = Field(
        None,
        gt=0,
        description="Seconds between two scans for entries to reclaim. Default: a tenth of "
        "claim_idle_ms, so a dead member's entries move within 1.1 x claim_idle_ms (plus "
        "one block_ms).",
    )
    max_deliver: int | None = Field(
        None,
        ge=1,
        description="An entry delivered more than this many times (it keeps failing the "
        "pipeline) goes to dead_letter and is acknowledged. None: redeliver forever.",
    )
    dead_letter: str | None = Field(
        None,
        min_length=1,
        description="Stream receiving entries over max_deliver (their fields plus "
        "headwater-stream, -group, -id and -deliveries). Without it they are only "
        "acknowledged and logged.",
    )
    delete_idle_consumers: float | None = Field(
        3600.0,
        gt=0,
        description="Delete consumers of the group that hold no pending entry and stayed "
        "idle this many seconds (dead workers' names). None: keep them.",
    )
    outage_deadline: float = Field(
        DEFAULT_OUTAGE_DEADLINE,
        gt=0,
        description="Seconds Redis may stay unreachable (reconnecting with backoff) "
        "before the run fails.",
    )
    decode: Decode = Field(
        "json",
        description="Item made of an entry: json (field parsed as JSON), text (field as "
        "str), bytes (field as bytes) or fields (every field, as a dict of str).",
    )
    field: str = Field("data", min_length=1, description="Field holding the payload.")
    envelope: bool = Field(
        False,
        description='Emit {"id", "stream", "data"} instead of the bare payload (e.g. to '
        "deduplicate downstream by entry id).",
    )
    idle_exit: float | None = Field(
        None,
        gt=0,
        description="End (normally, committing everything) after this many seconds without "
        "a new entry. None: run until cancelled or drained.",
    )
    max_messages: int | None = Field(
        None, ge=1, description="End after delivering this many entries (None: no limit)."
    )


def _decode_entry(
    entry_id: str, fields: Mapping[bytes, bytes] | None, params: RedisSourceParams
) -> Any:
    """The item for one stream entry, under ``params.decode``."""
    fields = fields or {}
    mode = params.decode
    if mode == "fields":
        value: Any = {_text(k): _text(v) for k, v in fields.items()}
    else:
        raw = fields.get(params.field.encode())
        if raw is None:
            raise ValueError(
                f"entry {entry_id} of stream {params.stream!r} has no field "
                f"{params.field!r} (fields: {sorted(_text(k) for k in fields)}); set `field` "
                "or use decode: fields"
            )
        if mode == "bytes":
            value = bytes(raw)
        elif mode == "text":
            value = _text(raw)
        else:
            try:
                value = json.loads(raw)
            except ValueError as exc:
                raise ValueError(
                    f"entry {entry_id} of stream {params.stream!r}: field "
                    f"{params.field!r} is not JSON ({exc}); use decode: text or bytes"
                ) from None
    if params.envelope:
        return {"id": entry_id, "stream": params.stream, "data": value}
    return value


Entry = tuple[str, Any]
"""A stream entry: its id (as text) and its fields (None once deleted from the stream)."""


def _entries(raw: list[Any]) -> list[Entry]:
    return [(_text(entry_id), fields) for entry_id, fields in raw]


def _decoder(params: RedisSourceParams) -> Callable[[list[Entry]], list[Any]]:
    """The batch decoder of ``params``: the common modes as one comprehension each;
    any entry they cannot handle is decoded again one by one, for the error message."""
    key = params.field.encode()
    decode_json = json_batch_decoder()

    def slow(entries: list[Entry]) -> list[Any]:
        return [_decode_entry(i, f, params) for i, f in entries]

    if params.envelope or params.decode == "fields":
        return slow
    fast: Callable[[list[Entry]], list[Any]]
    if params.decode == "json":

        def fast(entries: list[Entry]) -> list[Any]:
            return decode_json([f[key] for _, f in entries])
    elif params.decode == "text":

        def fast(entries: list[Entry]) -> list[Any]:
            return [f[key].decode() for _, f in entries]
    else:

        def fast(entries: list[Entry]) -> list[Any]:
            return [bytes(f[key]) for _, f in entries]

    def decode(entries: list[Entry]) -> list[Any]:
        try:
            return fast(entries)
        except (AttributeError, KeyError, TypeError, ValueError):
            return slow(entries)

    return decode


async def _ensure_group(client: Any, params: RedisSourceParams) -> None:
    """``XGROUP CREATE ... MKSTREAM`` unless the group exists."""
    try:
        await client.xgroup_create(params.stream, params.group, id=params.start_id, mkstream=True)
    except Exception as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class _ConsumerGroup:
    """``redis.stream``'s :class:`~._broker_source.Broker`: one member of the group."""

    name = "redis.stream"
    noun = "entries"
    cursor = "id"
    start = ""

    def __init__(self, params: RedisSourceParams, ctx: StreamContext) -> None:
        self.params = params
        self.log = stage_logger("headwater.redis", ctx)
        self.link = Link(
            "redis.stream source", params.url, deadline=params.outage_deadline, log=self.log
        )
        given = given_consumer(params.consumer)
        self.lease = None if given else _redis.ConsumerLease(params.stream, params.group)
        self.consumer = given or ""
        self.client: Any = None
        self.decode = _decoder(params)
        self.own_cursor: bytes | None = b"0"  # first our own pending entries, then new ones
        self.claim_cursor = b"0-0"
        self.claim_due = 0.0
        self.cleanup_due = 0.0
        idle = params.claim_idle_ms
        self.claim_interval = params.claim_interval or max(0.05, (idle or 0) / 10_000)

    def transient(self, exc: BaseException) -> bool:
        return _redis.transient(exc, missing_group=True)

    async def open(self) -> str:
        params = self.params
        if self.client is None:
            # a read never waits longer than block_ms: a silent server is found in time
            timeout = params.block_ms / 1000 + 10.0
            self.client = _redis.client(params.url, "redis.stream", timeout=timeout)
        await _ensure_group(self.client, params)
        if self.lease is not None:
            self.consumer = await self.lease.acquire(self.client)
        self.claim_due = self.cleanup_due = time.monotonic()
        where = f"{params.stream!r} at {self.link.address}"
        self.log.info(
            "redis.stream: consumer %s joined group %s of %s", self.consumer, params.group, where
        )
        return f"consumer {self.consumer!r} of group {params.group!r} on {params.stream!r}"

    async def reconnect(self) -> None:
        if self.client is None:
            return
        await _ensure_group(self.client, self.params)  # gone if Redis lost its data
        if self.lease is not None and not await self.lease.refresh(self.client):
            await self._lost_lease()
        self.own_cursor = b"0"  # a read whose reply was lost left entries pending for us

    async def _lost_lease(self) -> None:
        assert self.lease is not None
        old = self.consumer
        self.consumer = await self.lease.acquire(self.client)
        self.log.warning(
            "redis.stream: consumer name %s was taken over while this worker was out of "
            "reach; reading as %s now",
            old,
            self.consumer,
        )
        self.own_cursor = b"0"

    async def fetch(self, count: int, held: Acknowledger[str]) -> list[Entry]:
        params, client = self.params, self.client
        now = time.monotonic()
        lease = self.lease
        if lease is not None and now >= lease.refresh_due and not await lease.refresh(client):
            await self._lost_lease()
        if params.delete_idle_consumers is not None and now >= self.cleanup_due:
            await self._delete_idle_consumers()
            self.cleanup_due = now + _CLEANUP_SECONDS
        entries: list[Entry] = []
        if params.claim_idle_ms is not None and now >= self.claim_due:
            entries = await self._claim(count, held, now)
        if not entries and self.own_cursor is not None:
            entries = await self._own_pending(count, held)
        elif not entries:
            reply = await client.xreadgroup(
                params.group,
                self.consumer,
                {params.stream: ">"},
                count=count,
                block=params.block_ms,
            )
            entries = _entries(reply[0][1]) if reply else []
        return entries

    async def _claim(self, count: int, held: Acknowledger[str], now: float) -> list[Entry]:
        params = self.params
        assert params.claim_idle_ms is not None
        reply = await self.client.xautoclaim(
            params.stream,
            params.group,
            self.consumer,
            params.claim_idle_ms,
            self.claim_cursor,
            count=count,
        )
        self.claim_cursor = reply[0]
        entries = [e for e in _entries(reply[1]) if e[0] not in held]
        gone = [_text(i) for i in reply[2]] if len(reply) > 2 else []
        await held.ack_now(gone)  # deleted from the stream: nothing to deliver
        if self.claim_cursor in (b"0-0", "0-0"):
            self.claim_cursor = b"0-0"
            self.claim_due = now + self.claim_interval
        if entries:
            self.log.info(
                "redis.stream: consumer %s reclaimed %d entries of %r",
                self.consumer,
                len(entries),
                params.stream,
            )
        return await self._dead_letters(entries, held)

    async def _own_pending(self, count: int, held: Acknowledger[str]) -> list[Entry]:
        params = self.params
        reply = await self.client.xreadgroup(
            params.group, self.consumer, {params.stream: self.own_cursor}, count=count
        )
        own = reply[0][1] if reply else []
        if not own:
            self.own_cursor = None
            return []
        self.own_cursor = own[-1][0]
        entries = [e for e in _entries(own) if e[0] not in held]
        await held.ack_now([e[0] for e in entries if not e[1]])  # deleted upstream
        return await self._dead_letters([e for e in entries if e[1]], held)

    async def _dead_letters(self, entries: list[Entry], held: Acknowledger[str]) -> list[Entry]:
        """Redelivered entries past ``max_deliver``: to the dead-letter stream, acked."""
        params = self.params
        if params.max_deliver is None or not entries:
            return entries
        rows = await self.client.xpending_range(
            params.stream,
            params.group,
            min=entries[0][0],
            max=entries[-1][0],
            count=len(entries) + len(held.ledger) + 1,
            consumername=self.consumer,
        )
        counts = {_text(r["message_id"]): int(r["times_delivered"]) for r in rows}
        over = [e for e in entries if counts.get(e[0], 0) > params.max_deliver]
        if not over:
            return entries
        pipe = self.client.pipeline(transaction=True)  # dead-lettered if and only if acked
        for entry_id, fields in over:
            if params.dead_letter is not None:
                extra = (params.stream, params.group, entry_id, str(counts[entry_id]))
                pipe.xadd(
                    params.dead_letter, {**fields, **dict(zip(DLQ_FIELDS, extra, strict=True))}
                )
        pipe.xack(params.stream, params.group, *[e[0] for e in over])
        await pipe.execute()
        for entry_id, _ in over:
            self.log.warning(
                "redis.stream: entry %s of %r delivered %d times (> max_deliver %d): %s",
                entry_id,
                params.stream,
                counts[entry_id],
                params.max_deliver,
                f"sent to {params.dead_letter}"
                if params.dead_letter
                else "acknowledged and dropped (configure dead_letter to keep such entries)",
            )
        dead = {e[0] for e in over}
        return [e for e in entries if e[0] not in dead]

    async def _delete_idle_consumers(self) -> None:
        params = self.params
        assert params.delete_idle_consumers is not None
        idle_ms = int(params.delete_idle_consumers * 1000)
        deleted = await self.client.eval(
            _redis.DELETE_IDLE_CONSUMERS,
            1,
            params.stream,
            params.group,
            idle_ms,
            self.consumer,
        )
        if deleted:
            self.log.info(
                "redis.stream: deleted %d idle consumers of group %s holding nothing: %s",
                len(deleted),
                params.group,
                ", ".join(_text(n) for n in deleted),
            )

    async def ack(self, keys: list[str]) -> int:
        if self.client is None:  # closed by the reader: reopen for the final commit
            self.client = _redis.client(self.params.url, "redis.stream", timeout=10.0)
        pipe = self.client.pipeline(transaction=False)
        for start in range(0, len(keys), _ACK_CHUNK):
            pipe.xack(self.params.stream, self.params.group, *keys[start : start + _ACK_CHUNK])
        await pipe.execute()
        return len(keys)

    def ack_failed(self, keys: list[str], exc: Exception) -> bool:
        # The entries stay pending upstream: they are retried at the next commit (or
        # reclaimed after a restart).
        self.log.warning(
            "redis.stream: XACK of %d entries of %r failed (%s); retrying at the next commit",
            len(keys),
            self.params.stream,
            exc,
        )
        return True

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            try:
                if self.lease is not None:
                    await self.lease.release(client)
            except Exception as exc:  # it expires by itself
                self.log.debug("redis.stream: releasing the consumer name failed: %s", exc)
            finally:
                await client.aclose()


@headwater.action(
    "redis.stream",
    params=RedisSourceParams,
    output="the entries of a Redis stream read with a consumer group (see decode)",
    capabilities=("streaming", "resumable"),
    batched=True,
    check=check_redis_source,
)
async def redis_stream_source(
    params: RedisSourceParams, ctx: StreamContext
) -> AsyncIterator[list[Any]]:
    """Read a Redis stream as one member of a consumer group; ack after the sinks commit.

    Needs a ``checkpoint:`` section (``{store: memory}`` suffices: the group keeps the
    position). The checkpoint position is ``{"delivered": N, "last_id": ID}``; on each
    commit every entry delivered up to ``N`` is acknowledged with ``XACK``. At start (and
    after reconnecting) the consumer first re-delivers its own pending entries, then
    reads new ones, and every ``claim_interval`` seconds reclaims entries that dead
    members left pending longer than ``claim_idle_ms``.
    """
    _redis.redis_asyncio("redis.stream")
    async with aclosing(read_broker(_ConsumerGroup(params, ctx), params, ctx)) as batches:
        async for batch in batches:
            yield batch
