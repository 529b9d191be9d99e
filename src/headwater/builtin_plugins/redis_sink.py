"""The ``redis.stream`` sink (``XADD``) and the ``redis`` checkpoint store.

Registered by :mod:`.redis_streams` (the ``headwater.redis`` plugin), which also holds
the source. Both ride out a Redis outage through :mod:`headwater.core.reconnect`: a
batch (or a checkpoint) interrupted by a lost connection is written again once Redis is
back, for up to ``outage_deadline`` seconds.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

import headwater
from headwater.core.checkpoints import Checkpoint, CheckpointError
from headwater.core.context import StreamContext
from headwater.core.reconnect import (
    DEFAULT_OUTAGE_DEADLINE,
    BrokerUnavailable,
    Link,
    retry,
    retry_sync,
)

from . import _redis
from ._brokers import require, stage_logger, track
from ._checks.brokers import check_redis_sink, check_redis_store

__all__ = ["RedisCheckpointStore", "RedisSinkParams", "RedisStoreParams", "RedisStreamSink"]

DEFAULT_URL = "redis://127.0.0.1:6379"
log = logging.getLogger("headwater.redis")

Encode = Literal["json", "text", "bytes", "fields"]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisSinkParams(BaseModel):
    """Params of the ``redis.stream`` sink."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    url: str = Field(DEFAULT_URL, description="Redis URL, e.g. redis://127.0.0.1:6379/0.")
    stream: str = Field(min_length=1, description="Key of the stream to append to.")
    encode: Encode = Field(
        "json",
        description="How an item becomes an entry: json (one field, JSON), text (str()), "
        "bytes (bytes or str) or fields (the item is a mapping of field -> value).",
    )
    field: str = Field("data", min_length=1, description="Field holding the payload.")
    maxlen: int | None = Field(
        None, ge=1, description="Trim the stream to about this many entries (MAXLEN ~)."
    )
    outage_deadline: float = Field(
        DEFAULT_OUTAGE_DEADLINE,
        gt=0,
        description="Seconds Redis may stay unreachable (reconnecting with backoff) "
        "before the run fails.",
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


@headwater.sink("redis.stream", params=RedisSinkParams, check=check_redis_sink)
class RedisStreamSink:
    """Append every item to a Redis stream with XADD (one pipelined round trip per batch).

    At-least-once: an entry is in Redis when ``write`` returns; a batch interrupted by a
    lost connection is written again in full once Redis is back (the entries that had
    made it are then there twice). The output is ``{"stream", "written"}``.
    """

    def __init__(self, params: RedisSinkParams, ctx: StreamContext) -> None:
        self.params = params
        self.ctx = ctx
        self.written = 0
        self._client: Any = None
        self.link = Link(
            "redis.stream sink",
            params.url,
            deadline=params.outage_deadline,
            log=stage_logger("headwater.redis", ctx),
        )
        self._untrack: Callable[[], None] = lambda: None

    async def open(self) -> None:
        """Connect (waiting through an outage) and check the server answers."""
        self._untrack = track(self.ctx, self.link, "sink")
        self._client = _redis.client(self.params.url, "redis.stream sink", timeout=30.0)
        await retry(self.link, self._client.ping, transient=_redis.transient)

    async def write(self, batch: list[Any]) -> None:
        """XADD every item of the batch, pipelined (again after an outage)."""
        if not batch:
            return
        params = self.params
        fields = [_encode_item(item, params) for item in batch]

        async def xadd() -> None:
            pipe = self._client.pipeline(transaction=False)
            for entry in fields:
                pipe.xadd(params.stream, entry, maxlen=params.maxlen, approximate=True)
            await pipe.execute()

        await retry(self.link, xadd, transient=_redis.transient)
        self.written += len(batch)

    async def close(self, error: BaseException | None) -> dict[str, Any]:
        """Disconnect; returns ``{"stream", "written"}``."""
        self._untrack()
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        return {"stream": self.params.stream, "written": self.written}


class RedisStoreParams(BaseModel):
    """Params of the ``redis`` checkpoint store."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    url: str = Field(DEFAULT_URL, description="Redis URL, e.g. redis://127.0.0.1:6379/0.")
    prefix: str = Field(
        "headwater:checkpoint:", description="Key prefix; the pipeline name follows it."
    )
    timeout: float = Field(5.0, gt=0, description="Socket timeout in seconds.")
    outage_deadline: float = Field(
        DEFAULT_OUTAGE_DEADLINE,
        gt=0,
        description="Seconds Redis may stay unreachable (reconnecting with backoff) "
        "before a load or save fails.",
    )


@headwater.checkpoint_store("redis", params=RedisStoreParams, check=check_redis_store)
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
        retry_mod = require("redis.retry", "redis", "the redis checkpoint store")
        backoff = require("redis.backoff", "redis", "the redis checkpoint store")
        self._client: Any = sync.Redis.from_url(
            self.params.url,
            socket_timeout=self.params.timeout,
            socket_connect_timeout=self.params.timeout,
            retry=retry_mod.Retry(backoff.NoBackoff(), 0),
        )
        self.link = Link(
            "redis checkpoint store", self.params.url, deadline=self.params.outage_deadline, log=log
        )

    def _key(self, pipeline: str) -> str:
        return f"{self.params.prefix}{pipeline}"

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return retry_sync(self.link, lambda: fn(*args), transient=_redis.transient)
        except BrokerUnavailable as exc:
            raise CheckpointError(f"cannot {what} a checkpoint: {exc}") from None
        except Exception as exc:
            raise CheckpointError(
                f"redis checkpoint store at {self.link.address}: cannot {what}: {exc}"
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
