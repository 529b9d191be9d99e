"""Redis Streams: a consumer-group source, an ``XADD`` sink and a checkpoint store.

Installed with ``pip install 'headwater[redis]'`` (the ``redis`` package, asyncio API).
This module imports without it; a component reports the missing package when used.

* ``redis.stream`` (source) reads with a **consumer group** (``XREADGROUP``; the group
  and the stream are created if missing). Many processes with the same group and
  different consumer names share the stream: each entry goes to one of them. Entries
  are acknowledged (``XACK``) only after every sink committed them: the source reports
  its deliveries as checkpoint positions and acknowledges in ``ctx.on_commit``, so the
  pipeline needs a ``checkpoint:`` section (``{store: memory}`` is enough;
  ``headwater worker`` adds it). Entries left pending by a dead consumer are reclaimed
  with ``XAUTOCLAIM`` once idle for ``claim_idle_ms``. A drain request (``headwater
  worker`` on SIGTERM) makes it stop reading and return: what it delivered is committed
  and acknowledged before the run ends.
* ``redis.stream`` (sink) appends each item with ``XADD``, one pipelined round trip per
  batch, with optional approximate ``MAXLEN`` trimming.
* ``redis`` (checkpoint store) keeps checkpoints as JSON strings under
  ``headwater:checkpoint:PIPELINE``.

Delivery is at-least-once: a consumer killed between a sink's write and the ``XACK``
leaves its entries pending, and another member (or the same one restarted) delivers
them again. Runs on asyncio (the ``redis`` client's async API is asyncio-based).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field

import headwater
from headwater.core.checkpoints import Checkpoint, CheckpointError
from headwater.core.context import StreamContext

from ._brokers import Ledger, default_consumer, delivered_upto, require

__all__ = [
    "RedisCheckpointStore",
    "RedisSinkParams",
    "RedisSourceParams",
    "RedisStoreParams",
    "RedisStreamSink",
    "redis_stream_source",
]

DEFAULT_URL = "redis://127.0.0.1:6379"
log = logging.getLogger("headwater.redis")
_ACK_CHUNK = 10_000
"""Most entry ids per ``XACK`` command (one pipelined round trip for all chunks)."""

Decode = Literal["json", "text", "bytes", "fields"]


def _redis_asyncio(component: str) -> Any:
    return require("redis.asyncio", "redis", component)


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
        "`headwater worker --consumer`), else HOSTNAME-PID.",
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
    claim_interval: float = Field(
        5.0, gt=0, description="Seconds between two scans for entries to reclaim."
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
    entry_id: bytes, fields: Mapping[bytes, bytes] | None, params: RedisSourceParams
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
                f"entry {_text(entry_id)} of stream {params.stream!r} has no field "
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
                    f"entry {_text(entry_id)} of stream {params.stream!r}: field "
                    f"{params.field!r} is not JSON ({exc}); use decode: text or bytes"
                ) from None
    if params.envelope:
        return {"id": _text(entry_id), "stream": params.stream, "data": value}
    return value


class _RedisAcker:
    """Acknowledges committed entries; owns the client once the reader is done with it.

    The runtime places the final checkpoint marker after the source generator returned,
    so the last commit callback comes after the generator's ``finally``: the client is
    then kept open until everything delivered is acknowledged (or reopened if needed).
    """

    def __init__(self, params: RedisSourceParams, ledger: Ledger[bytes], client: Any) -> None:
        self.params = params
        self.ledger = ledger
        self.client: Any = client
        self.finished = False
        self.acked = 0
        self._lock = anyio.Lock()

    async def commit(self, position: Any) -> None:
        """``ctx.on_commit`` callback: XACK every entry delivered up to ``position``."""
        upto = delivered_upto(position)
        if upto is None:
            return
        async with self._lock:
            ids = self.ledger.release(upto)
            if ids:
                await self._ack(ids)
            if self.finished and not self.ledger:
                await self.close()

    async def ack_now(self, ids: list[bytes]) -> None:
        """Acknowledge entries that never reach the pipeline (deleted from the stream)."""
        if ids:
            async with self._lock:
                await self._ack(ids)

    async def _ack(self, ids: list[bytes]) -> None:
        if self.client is None:
            self.client = _redis_asyncio("redis.stream").Redis.from_url(self.params.url)
        try:
            pipe = self.client.pipeline(transaction=False)
            for start in range(0, len(ids), _ACK_CHUNK):
                pipe.xack(self.params.stream, self.params.group, *ids[start : start + _ACK_CHUNK])
            await pipe.execute()
            self.acked += len(ids)
            log.debug("redis.stream: acknowledged %d entries (%d in all)", len(ids), self.acked)
        except Exception as exc:
            # The entries stay pending upstream: they are retried at the next commit (or
            # reclaimed after a restart). At-least-once either way; never fail the run.
            self.ledger.restore(ids)
            log.warning(
                "redis.stream: XACK of %d entries of %r failed (%s); retrying at the next commit",
                len(ids),
                self.params.stream,
                exc,
            )

    async def finish(self, *, normally: bool) -> None:
        """The reader is done: close now, or after the final commit acknowledged all."""
        self.finished = True
        if not normally or not self.ledger:
            await self.close()

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await client.aclose()


async def _ensure_group(client: Any, params: RedisSourceParams) -> None:
    """``XGROUP CREATE ... MKSTREAM`` unless the group exists."""
    try:
        await client.xgroup_create(params.stream, params.group, id=params.start_id, mkstream=True)
    except Exception as exc:
        if "BUSYGROUP" not in str(exc):
            raise


@headwater.action(
    "redis.stream",
    params=RedisSourceParams,
    output="the entries of a Redis stream read with a consumer group (see decode)",
    capabilities=("streaming", "resumable"),
    batched=True,
)
async def redis_stream_source(
    params: RedisSourceParams, ctx: StreamContext
) -> AsyncIterator[list[Any]]:
    """Read a Redis stream as one member of a consumer group; ack after the sinks commit.

    Needs a ``checkpoint:`` section (``{store: memory}`` suffices: the group keeps the
    position). The checkpoint position is ``{"delivered": N, "last_id": ID}``; on each
    commit every entry delivered up to ``N`` is acknowledged with ``XACK``. At start the
    consumer first re-delivers its own pending entries (a restart under the same name),
    then reads new ones, and every ``claim_interval`` seconds reclaims entries that dead
    members left pending longer than ``claim_idle_ms``.
    """
    aioredis = _redis_asyncio("redis.stream")
    if not ctx.checkpointing:
        raise RuntimeError(
            "redis.stream acknowledges entries only after every sink committed them, which "
            "needs the commit protocol: add `checkpoint: {store: memory}` to the pipeline "
            "(headwater worker adds it for you)"
        )
    consumer = params.consumer or default_consumer()
    client = aioredis.Redis.from_url(params.url)
    ledger: Ledger[bytes] = Ledger()
    acker = _RedisAcker(params, ledger, client)
    ctx.on_commit(acker.commit)
    normally = False
    try:
        await _ensure_group(client, params)
        ctx.status(f"consumer {consumer!r} of group {params.group!r} on {params.stream!r}")
        stream, group = params.stream, params.group
        last_id = ""
        own_cursor: bytes | None = b"0"  # first our own pending entries, then new ones
        claim_cursor = b"0-0"
        claim_due = time.monotonic()
        idle_since = time.monotonic()
        delivered = 0
        ctx.checkpoint({"delivered": 0, "last_id": last_id})
        while not ctx.draining and not ctx.cancelled:
            if params.max_messages is not None and delivered >= params.max_messages:
                break
            count = params.batch
            if params.max_messages is not None:
                count = min(count, params.max_messages - delivered)
            entries: list[tuple[bytes, Any]] = []
            now = time.monotonic()
            if params.claim_idle_ms is not None and now >= claim_due:
                reply = await client.xautoclaim(
                    stream, group, consumer, params.claim_idle_ms, claim_cursor, count=count
                )
                claim_cursor = reply[0]
                entries = [e for e in reply[1] if e[0] not in ledger]
                gone = list(reply[2]) if len(reply) > 2 else []
                await acker.ack_now(gone)  # deleted from the stream: nothing to deliver
                if claim_cursor in (b"0-0", "0-0"):
                    claim_cursor = b"0-0"
                    claim_due = now + params.claim_interval
                if entries:
                    log.info(
                        "redis.stream: consumer %s reclaimed %d entries of %r",
                        consumer,
                        len(entries),
                        stream,
                    )
            if not entries and own_cursor is not None:
                reply = await client.xreadgroup(group, consumer, {stream: own_cursor}, count=count)
                own = reply[0][1] if reply else []
                if own:
                    own_cursor = own[-1][0]
                    entries = [e for e in own if e[0] not in ledger]
                    gone = [e[0] for e in entries if not e[1]]
                    entries = [e for e in entries if e[1]]
                    await acker.ack_now(gone)
                else:
                    own_cursor = None
            elif not entries:
                reply = await client.xreadgroup(
                    group, consumer, {stream: ">"}, count=count, block=params.block_ms
                )
                entries = reply[0][1] if reply else []
            if entries:
                items = [_decode_entry(eid, fields, params) for eid, fields in entries]
                ids = [eid for eid, _ in entries]
                n = ledger.add(ids)
                delivered += len(ids)
                last_id = _text(ids[-1])
                yield items
                ctx.checkpoint({"delivered": n, "last_id": last_id})
                ctx.progress(delivered, message=f"last id {last_id}")
                idle_since = time.monotonic()
            else:
                # Nothing new: report again so that a time-based checkpoint (and so the
                # acknowledgement of what was delivered) happens while the stream is idle.
                ctx.checkpoint({"delivered": ledger.delivered, "last_id": last_id})
                if params.idle_exit is not None and (
                    time.monotonic() - idle_since >= params.idle_exit
                ):
                    break
        ctx.checkpoint({"delivered": ledger.delivered, "last_id": last_id})
        normally = True
    finally:
        with anyio.CancelScope(shield=True):
            await acker.finish(normally=normally)


# ---------------------------------------------------------------------------------------
# sink
# ---------------------------------------------------------------------------------------


class RedisSinkParams(BaseModel):
    """Params of the ``redis.stream`` sink."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    url: str = Field(DEFAULT_URL, description="Redis URL, e.g. redis://127.0.0.1:6379/0.")
    stream: str = Field(min_length=1, description="Key of the stream to append to.")
    encode: Decode = Field(
        "json",
        description="How an item becomes an entry: json (one field, JSON), text (str()), "
        "bytes (bytes or str) or fields (the item is a mapping of field -> value).",
    )
    field: str = Field("data", min_length=1, description="Field holding the payload.")
    maxlen: int | None = Field(
        None, ge=1, description="Trim the stream to about this many entries (MAXLEN ~)."
    )


def _encode_item(item: Any, params: RedisSinkParams) -> dict[str | bytes, Any]:
    mode = params.encode
    if mode == "fields":
        if not isinstance(item, Mapping) or not item:
            raise TypeError(
                f"redis.stream with encode: fields needs non-empty mappings, got "
                f"{type(item).__name__}"
            )
        return {
            str(k): v if isinstance(v, str | bytes | int | float) else json.dumps(v)
            for k, v in item.items()
        }
    if mode == "json":
        from pydantic_core import to_json

        return {params.field: to_json(item, inf_nan_mode="null")}
    if mode == "bytes":
        if not isinstance(item, bytes | bytearray | str):
            raise TypeError(f"redis.stream with encode: bytes needs bytes or str, got {item!r}")
        return {params.field: bytes(item) if not isinstance(item, str) else item}
    return {params.field: str(item)}


@headwater.sink("redis.stream", params=RedisSinkParams)
class RedisStreamSink:
    """Append every item to a Redis stream with XADD (one pipelined round trip per batch).

    At-least-once: an entry is in Redis when ``write`` returns. The output is ``{"stream",
    "written"}``.
    """

    def __init__(self, params: RedisSinkParams, ctx: StreamContext) -> None:
        self.params = params
        self.ctx = ctx
        self.written = 0
        self._client: Any = None

    async def open(self) -> None:
        """Connect (and check the server answers)."""
        aioredis = _redis_asyncio("redis.stream sink")
        self._client = aioredis.Redis.from_url(self.params.url)
        await self._client.ping()

    async def write(self, batch: list[Any]) -> None:
        """XADD every item of the batch, pipelined."""
        if not batch:
            return
        params = self.params
        pipe = self._client.pipeline(transaction=False)
        for item in batch:
            pipe.xadd(
                params.stream,
                _encode_item(item, params),
                maxlen=params.maxlen,
                approximate=True,
            )
        await pipe.execute()
        self.written += len(batch)

    async def close(self, error: BaseException | None) -> dict[str, Any]:
        """Disconnect; returns ``{"stream", "written"}``."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        return {"stream": self.params.stream, "written": self.written}


# ---------------------------------------------------------------------------------------
# checkpoint store
# ---------------------------------------------------------------------------------------


class RedisStoreParams(BaseModel):
    """Params of the ``redis`` checkpoint store."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    url: str = Field(DEFAULT_URL, description="Redis URL, e.g. redis://127.0.0.1:6379/0.")
    prefix: str = Field(
        "headwater:checkpoint:", description="Key prefix; the pipeline name follows it."
    )
    timeout: float = Field(5.0, gt=0, description="Socket timeout in seconds.")


@headwater.checkpoint_store("redis", params=RedisStoreParams)
class RedisCheckpointStore:
    """Checkpoints in Redis, one JSON string per pipeline (``PREFIX + pipeline``).

    Shared by every process that reaches the server: a pipeline resumed on another
    machine continues from the same checkpoint. Durable only as far as the Redis server
    persists its data (AOF or RDB). Pipelines run by several workers at once should use
    ``memory`` (the consumer group holds their position) or distinct pipeline names.
    """

    def __init__(self, params: RedisStoreParams | None = None) -> None:
        self.params = params if params is not None else RedisStoreParams()
        sync = require("redis", "redis", "the redis checkpoint store")
        self._client: Any = sync.Redis.from_url(
            self.params.url,
            socket_timeout=self.params.timeout,
            socket_connect_timeout=self.params.timeout,
        )

    def _key(self, pipeline: str) -> str:
        return f"{self.params.prefix}{pipeline}"

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:
            raise CheckpointError(
                f"redis checkpoint store at {self.params.url}: cannot {what}: {exc}"
            ) from None

    def load(self, pipeline: str) -> Checkpoint | None:
        """The latest checkpoint of ``pipeline``, or None."""
        raw = self._call("read", self._client.get, self._key(pipeline))
        if raw is None:
            return None
        try:
            return Checkpoint.from_json(_text(raw))
        except (ValueError, TypeError) as exc:
            raise CheckpointError(
                f"checkpoint of {pipeline!r} in Redis ({self._key(pipeline)}) is unreadable "
                f"({exc}); delete the key to start over"
            ) from None

    def save(self, checkpoint: Checkpoint) -> None:
        """Replace ``checkpoint.pipeline``'s checkpoint."""
        data = checkpoint.to_json()
        self._call("write", self._client.set, self._key(checkpoint.pipeline), data)

    def list(self) -> list[Checkpoint]:
        """Every pipeline's checkpoint under the prefix, by name."""
        keys = sorted(
            self._call("list", lambda: list(self._client.scan_iter(match=self.params.prefix + "*")))
        )
        out: list[Checkpoint] = []
        for key in keys:
            raw = self._call("read", self._client.get, key)
            if raw is not None:
                out.append(Checkpoint.from_json(_text(raw)))
        return out

    def reset(self, pipeline: str) -> bool:
        """Forget ``pipeline``'s checkpoint."""
        return bool(self._call("delete", self._client.delete, self._key(pipeline)))

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()


@headwater.hookimpl
def register_actions(register: Any) -> None:
    """Register the Redis Streams source."""
    register(redis_stream_source)


@headwater.hookimpl
def register_sinks(register: Any) -> None:
    """Register the Redis Streams sink."""
    register(RedisStreamSink)


@headwater.hookimpl
def register_checkpoint_stores(register: Any) -> None:
    """Register the Redis checkpoint store."""
    register(RedisCheckpointStore)
