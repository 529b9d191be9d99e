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
from contextlib import aclosing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

import headwater
from headwater.core.checkpoints import Checkpoint, CheckpointError
from headwater.core.context import StreamContext

from ._broker_source import Acknowledger, read_broker
from ._brokers import default_consumer, require

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
    log = log

    def __init__(self, params: RedisSourceParams) -> None:
        self.params = params
        self.consumer = params.consumer or default_consumer()
        self.client: Any = None
        self.own_cursor: bytes | None = b"0"  # first our own pending entries, then new ones
        self.claim_cursor = b"0-0"
        self.claim_due = 0.0

    async def open(self) -> str:
        params = self.params
        self.client = _redis_asyncio("redis.stream").Redis.from_url(params.url)
        await _ensure_group(self.client, params)
        self.claim_due = time.monotonic()
        return f"consumer {self.consumer!r} of group {params.group!r} on {params.stream!r}"

    async def fetch(self, count: int, held: Acknowledger[str]) -> list[Entry]:
        params, client, consumer = self.params, self.client, self.consumer
        stream, group = params.stream, params.group
        entries: list[Entry] = []
        now = time.monotonic()
        if params.claim_idle_ms is not None and now >= self.claim_due:
            reply = await client.xautoclaim(
                stream, group, consumer, params.claim_idle_ms, self.claim_cursor, count=count
            )
            self.claim_cursor = reply[0]
            entries = [e for e in _entries(reply[1]) if e[0] not in held]
            gone = [_text(i) for i in reply[2]] if len(reply) > 2 else []
            await held.ack_now(gone)  # deleted from the stream: nothing to deliver
            if self.claim_cursor in (b"0-0", "0-0"):
                self.claim_cursor = b"0-0"
                self.claim_due = now + params.claim_interval
            if entries:
                log.info(
                    "redis.stream: consumer %s reclaimed %d entries of %r",
                    consumer,
                    len(entries),
                    stream,
                )
        if not entries and self.own_cursor is not None:
            reply = await client.xreadgroup(group, consumer, {stream: self.own_cursor}, count=count)
            own = reply[0][1] if reply else []
            if own:
                self.own_cursor = own[-1][0]
                entries = [e for e in _entries(own) if e[0] not in held]
                gone = [e[0] for e in entries if not e[1]]
                entries = [e for e in entries if e[1]]
                await held.ack_now(gone)
            else:
                self.own_cursor = None
        elif not entries:
            reply = await client.xreadgroup(
                group, consumer, {stream: ">"}, count=count, block=params.block_ms
            )
            entries = _entries(reply[0][1]) if reply else []
        return entries

    def decode(self, key: str, message: Any) -> Any:
        return _decode_entry(key, message, self.params)

    async def ack(self, keys: list[str]) -> int:
        if self.client is None:  # closed by the reader: reopen for the final commit
            self.client = _redis_asyncio("redis.stream").Redis.from_url(self.params.url)
        pipe = self.client.pipeline(transaction=False)
        for start in range(0, len(keys), _ACK_CHUNK):
            pipe.xack(self.params.stream, self.params.group, *keys[start : start + _ACK_CHUNK])
        await pipe.execute()
        return len(keys)

    def ack_failed(self, keys: list[str], exc: Exception) -> bool:
        # The entries stay pending upstream: they are retried at the next commit (or
        # reclaimed after a restart).
        log.warning(
            "redis.stream: XACK of %d entries of %r failed (%s); retrying at the next commit",
            len(keys),
            self.params.stream,
            exc,
        )
        return True

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            await client.aclose()


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
    _redis_asyncio("redis.stream")
    async with aclosing(read_broker(_ConsumerGroup(params), params, ctx)) as batches:
        async for batch in batches:
            yield batch


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
