"""Fan the same streams out from several ``headwater serve`` nodes, through Redis Streams.

A :class:`StreamBridge` attaches to one node's
:class:`~headwater.core.streaming.StreamingManager`:

* **Out:** it observes the node's own streams (a ``websocket`` sink, a run started by a
  client) and appends every event to the Redis stream ``PREFIX stream:ID``: the stream's
  opening (epoch, metadata), each chunk (its ``seq``, its epoch and its data exactly as
  encoded once by the owner), control messages (progress, status, errors) and the
  closing (reason, summary). The key is trimmed to about the replay buffer's size
  (``XADD MAXLEN ~``) and expires ``ttl`` seconds after the stream closed. Openings and
  closings are also announced on ``PREFIX streams`` and listed in the hash ``PREFIX
  open``.
* **In:** it follows the announcements and mirrors every other node's open streams into
  its own manager: same stream id, same **epoch**, same **sequence numbers**, same
  bytes. A client connected to any node receives the chunks in order, with the numbers
  the owner gave them, and may resume with ``since`` (and ``epoch``) on any node. A node
  started late mirrors what Redis still holds (about the replay buffer).

Events leave in order through one queue and one pipelined writer task; one reader task
follows every mirrored stream with ``XREAD``. Redis outages are logged and retried; the
chunks published meanwhile are kept in a bounded queue.

Enabled in the server configuration (``bridge: {redis: "redis://127.0.0.1:6379"}``), or
around any manager::

    async with StreamingManager() as manager, StreamBridge(manager, BridgeConfig(redis=url)):
        ...

Needs the ``redis`` package (``pip install 'headwater[redis]'``); importing this module
does not. Runs on asyncio (the ``redis`` client's async API).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import secrets
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

import anyio
from anyio.abc import TaskGroup
from pydantic import BaseModel, ConfigDict, Field

from headwater.core.streaming import Frame, StreamError, StreamingManager, encode_json

__all__ = ["BridgeConfig", "StreamBridge"]

log = logging.getLogger("headwater.bridge")

_QUEUE_LIMIT: Final = 100_000
"""Events waiting to be written to Redis before the oldest are dropped (Redis is down)."""
_WRITE_BATCH: Final = 1000
"""Most events per pipelined round trip."""
_RETRY_SECONDS: Final = (0.5, 1.0, 2.0, 5.0)
"""Pauses between attempts when Redis does not answer (the last one repeats)."""


class BridgeConfig(BaseModel):
    """The ``bridge`` section of the server configuration."""

    model_config = ConfigDict(extra="forbid")

    redis: str = Field(
        min_length=1, description="Redis URL shared by the nodes, e.g. redis://127.0.0.1:6379."
    )
    prefix: str = Field("headwater:", description="Prefix of every key the bridge uses.")
    node: str | None = Field(
        None, min_length=1, description="This node's id (default: random, new at each start)."
    )
    streams: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Patterns (fnmatch) of this node's streams to share with the others.",
    )
    maxlen: int | None = Field(
        None,
        ge=1,
        description="Entries kept per stream in Redis (about). Default: the node's replay "
        "buffer size (streaming.replay_max_chunks), so a late node can replay as much.",
    )
    ttl: float = Field(
        3600.0, gt=0, description="Seconds a closed stream's key is kept before it expires."
    )
    block_ms: int = Field(
        1000, ge=10, le=60_000, description="Longest wait of one XREAD for new events."
    )


@dataclass(slots=True)
class _Mirror:
    """A remote stream this node mirrors."""

    stream_id: str
    key: str
    node: str
    metadata: dict[str, Any]
    cursor: bytes = b"0-0"
    epoch: str | None = None
    """Epoch of the local copy (None until it exists)."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class StreamBridge:
    """Shares a node's streams through Redis and mirrors the other nodes' (see module).

    An async context manager: entering connects to Redis, starts the writer and reader
    tasks and begins observing the manager (which must be running); leaving writes what
    is queued (briefly), then stops.
    """

    def __init__(self, manager: StreamingManager, config: BridgeConfig) -> None:
        self.manager = manager
        self.config = config
        self.node = config.node or secrets.token_hex(6)
        prefix = config.prefix
        self._announce_key = f"{prefix}streams"
        self._open_key = f"{prefix}open"
        self._prefix = prefix
        self._maxlen = config.maxlen or max(1, manager.config.replay_max_chunks)
        self._queue: deque[tuple[str, dict[str, Any]]] = deque()
        self._wake = anyio.Event()
        self._write_lock = anyio.Lock()
        self._mirrors: dict[str, _Mirror] = {}
        self._shared: set[str] = set()
        self._client: Any = None
        self._tg: TaskGroup | None = None
        self._announce_cursor: bytes = b"$"
        self.dropped = 0
        """Events dropped because Redis was unreachable for too long."""
        self.relayed = 0
        """Remote chunks published into the local manager."""

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        from headwater.core.optional import require

        aioredis = require("redis.asyncio", "redis", "the stream bridge")
        self._client = aioredis.Redis.from_url(self.config.redis)
        await self._client.ping()
        newest = await self._client.xrevrange(self._announce_key, count=1)
        self._announce_cursor = newest[0][0] if newest else b"0-0"
        for stream_id, raw in (await self._client.hgetall(self._open_key)).items():
            self._follow(_text(stream_id), json.loads(raw))
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        tg.start_soon(self._writer)
        tg.start_soon(self._reader)
        self.manager.add_observer(self)
        log.info("bridge: node %s sharing streams through %s", self.node, self.config.redis)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.manager.remove_observer(self)
        tg, self._tg = self._tg, None
        try:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                for _ in range(100):  # bounded: flush what is queued, then stop
                    if not self._queue:
                        break
                    await self._flush()
        finally:
            if tg is not None:
                tg.cancel_scope.cancel()
                await tg.__aexit__(None, None, None)
            client, self._client = self._client, None
            if client is not None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                    await client.aclose()

    # -- observer (out) -----------------------------------------------------------------

    def _shares(self, stream_id: str) -> bool:
        return stream_id in self._shared

    def _key(self, stream_id: str) -> str:
        return f"{self._prefix}stream:{stream_id}"

    def _put(self, key: str, fields: dict[str, Any]) -> None:
        if len(self._queue) >= _QUEUE_LIMIT:
            self._queue.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                log.warning("bridge: Redis is not keeping up; %d events dropped", self.dropped)
        self._queue.append((key, fields))
        self._wake.set()

    def stream_opened(self, stream_id: str, epoch: str, metadata: Mapping[str, Any]) -> None:
        """Announce a stream of this node (unless it is a mirror or not shared)."""
        if stream_id in self._mirrors:
            return
        if not any(fnmatch.fnmatchcase(stream_id, p) for p in self.config.streams):
            return
        self._shared.add(stream_id)
        try:
            meta = encode_json(dict(metadata))
        except Exception:
            meta = b"{}"
        fields = {"t": "open", "e": epoch, "n": self.node, "m": meta}
        self._put(self._key(stream_id), fields)
        self._put("", {"op": "open", "stream": stream_id, "node": self.node, "e": epoch, "m": meta})

    def chunk_published(self, stream_id: str, epoch: str, seq: int, payload: bytes) -> None:
        """Queue one chunk of a shared stream."""
        if stream_id in self._shared:
            self._put(self._key(stream_id), {"t": "chunk", "e": epoch, "s": seq, "d": payload})

    def message_broadcast(self, stream_id: str, frame: Frame) -> None:
        """Queue a control message of a shared stream."""
        if stream_id in self._shared:
            self._put(self._key(stream_id), {"t": "msg", "d": frame})

    def stream_closed(
        self,
        stream_id: str,
        reason: str,
        summary: Mapping[str, Any] | None,
        error: Frame | None,
    ) -> None:
        """Queue the closing of a shared stream."""
        if stream_id not in self._shared:
            return
        self._shared.discard(stream_id)
        fields: dict[str, Any] = {"t": "close", "r": reason}
        if summary is not None:
            try:
                fields["m"] = encode_json(dict(summary))
            except Exception:
                log.debug("bridge: summary of %r is not JSON; not relayed", stream_id)
        if error is not None:
            fields["x"] = error
        self._put(self._key(stream_id), fields)
        self._put("", {"op": "close", "stream": stream_id, "node": self.node})

    # -- writer -------------------------------------------------------------------------

    async def _writer(self) -> None:
        attempt = 0
        while True:
            if not self._queue:
                self._wake = anyio.Event()
                await self._wake.wait()
            try:
                await self._flush()
                attempt = 0
            except Exception as exc:
                pause = _RETRY_SECONDS[min(attempt, len(_RETRY_SECONDS) - 1)]
                attempt += 1
                log.warning("bridge: writing to Redis failed (%s); retrying in %gs", exc, pause)
                await anyio.sleep(pause)

    async def _flush(self) -> None:
        """Write up to one batch of queued events (removed once written)."""
        async with self._write_lock:
            await self._write_batch()

    async def _write_batch(self) -> None:
        queue = self._queue
        batch = [queue[i] for i in range(min(len(queue), _WRITE_BATCH))]
        if not batch:
            return
        pipe = self._client.pipeline(transaction=False)
        for key, fields in batch:
            if key:
                pipe.xadd(key, fields, maxlen=self._maxlen, approximate=True)
                if fields["t"] == "close":
                    pipe.expire(key, int(self.config.ttl))
                continue
            stream_id = fields["stream"]
            if fields["op"] == "open":
                info = {
                    "node": self.node,
                    "epoch": fields["e"],
                    "metadata": json.loads(fields["m"]),
                }
                pipe.hset(self._open_key, stream_id, json.dumps(info))
            else:
                pipe.hdel(self._open_key, stream_id)
            pipe.xadd(
                self._announce_key,
                {"op": fields["op"], "stream": stream_id, "node": self.node},
                maxlen=10_000,
                approximate=True,
            )
        await pipe.execute()
        for _ in batch:
            queue.popleft()

    # -- reader (in) --------------------------------------------------------------------

    def _follow(self, stream_id: str, info: Mapping[str, Any]) -> None:
        node = str(info.get("node", ""))
        if node == self.node or stream_id in self._mirrors:
            return
        metadata = info.get("metadata")
        self._mirrors[stream_id] = _Mirror(
            stream_id,
            self._key(stream_id),
            node,
            dict(metadata) if isinstance(metadata, Mapping) else {},
        )

    async def _reader(self) -> None:
        attempt = 0
        while True:
            try:
                await self._read_once()
                attempt = 0
            except Exception as exc:
                pause = _RETRY_SECONDS[min(attempt, len(_RETRY_SECONDS) - 1)]
                attempt += 1
                log.warning("bridge: reading from Redis failed (%s); retrying in %gs", exc, pause)
                await anyio.sleep(pause)

    async def _read_once(self) -> None:
        keys: dict[str, bytes] = {self._announce_key: self._announce_cursor}
        for mirror in self._mirrors.values():
            keys[mirror.key] = mirror.cursor
        reply = await self._client.xread(keys, count=1000, block=self.config.block_ms)
        for key, entries in reply or []:
            name = _text(key)
            if name == self._announce_key:
                for entry_id, fields in entries:
                    self._announce_cursor = entry_id
                    await self._announcement(fields)
                continue
            found = next((m for m in self._mirrors.values() if m.key == name), None)
            if found is None:
                continue
            for entry_id, fields in entries:
                if self._mirrors.get(found.stream_id) is not found:
                    break  # closed (or dropped) by an earlier entry
                found.cursor = entry_id
                await self._relay(found, {_text(k): v for k, v in fields.items()})

    async def _announcement(self, fields: Mapping[bytes, bytes]) -> None:
        op = _text(fields.get(b"op", b""))
        stream_id = _text(fields.get(b"stream", b""))
        node = _text(fields.get(b"node", b""))
        if op == "open" and node != self.node:
            raw = await self._client.hget(self._open_key, stream_id)
            info = json.loads(raw) if raw else {"node": node}
            self._follow(stream_id, info)

    async def _relay(self, mirror: _Mirror, fields: dict[str, Any]) -> None:
        kind = _text(fields.get("t", b""))
        manager = self.manager
        stream_id = mirror.stream_id
        try:
            if kind in ("open", "chunk"):
                epoch = _text(fields["e"])
                if kind == "open":
                    mirror.metadata = json.loads(fields.get("m") or b"{}")
                await self._ensure_local(mirror, epoch)
                if kind == "chunk":
                    await manager.push_encoded(stream_id, fields["d"], seq=int(fields["s"]))
                    self.relayed += 1
            elif kind == "msg" and mirror.epoch is not None:
                await manager.broadcast_frame(stream_id, fields["d"])
            elif kind == "close":
                del self._mirrors[stream_id]
                if mirror.epoch is not None and manager.has_stream(stream_id):
                    if "x" in fields:
                        await manager.broadcast_frame(stream_id, fields["x"])
                    summary = json.loads(fields["m"]) if "m" in fields else None
                    await manager.close_stream(stream_id, _text(fields["r"]), summary=summary)
        except StreamError as exc:
            if exc.code in ("stream_closed", "unknown_stream", "stream_exists"):
                # closed locally (shutdown), or this node has its own: stop mirroring it
                self._mirrors.pop(stream_id, None)
                return
            log.warning("bridge: relaying %s of stream %r failed: %s", kind, stream_id, exc)

    async def _ensure_local(self, mirror: _Mirror, epoch: str) -> None:
        """Create the local copy (or replace one of an older epoch)."""
        manager = self.manager
        stream_id = mirror.stream_id
        if mirror.epoch == epoch and manager.has_stream(stream_id):
            return
        if mirror.epoch is None and manager.has_stream(stream_id):
            log.warning(
                "bridge: stream %r of node %s is not mirrored: this node has its own",
                stream_id,
                mirror.node,
            )
            raise StreamError("conflict", code="stream_exists", stream_id=stream_id)
        if mirror.epoch is not None and manager.has_stream(stream_id):
            await manager.close_stream(stream_id, "restarted")
        metadata = {**mirror.metadata, "bridge": {"node": mirror.node}}
        await manager.create_stream(
            stream_id, metadata=metadata, inactivity_timeout=None, epoch=epoch
        )
        mirror.epoch = epoch
