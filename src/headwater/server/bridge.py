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
follows every mirrored stream with ``XREAD``. A Redis outage is ridden out through
:mod:`headwater.core.reconnect` (backoff with jitter, one log line per change of state,
for as long as it lasts: a node keeps serving its own streams); the chunks published
meanwhile are kept in a bounded queue.

**Liveness.** Every ``heartbeat_interval`` seconds each node sets ``PREFIX node:NODE``
(a new value each time, expiring after ``missed_heartbeats`` intervals) and refreshes
the expiry of every key it owns: its open streams' keys, its entries of ``PREFIX open``
(the hash), the announcements. A mirror whose owner's heartbeat has not changed for
``missed_heartbeats`` intervals (on the mirror's own clock, and not counting time the
mirror itself was cut off from Redis) sends its clients ``stream_error`` with code
``owner_lost`` and closes the stream. A node starting up ignores (and removes)
announcements of owners that are not alive. Closed streams' keys expire ``ttl`` seconds
after closing; every other key expires by itself once no node refreshes it.

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
import time
from collections import deque
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

import anyio
from anyio.abc import TaskGroup

from headwater.core.reconnect import Link
from headwater.core.redis_conn import redis_client, redis_transient
from headwater.core.streaming import Frame, StreamError, StreamingManager, encode_json

from .bridge_config import METRICS_GROUP, OWNER_LOST, BridgeConfig, Mirror, as_text

if TYPE_CHECKING:
    from headwater.core.metrics import MetricsRegistry

__all__ = ["METRICS_GROUP", "OWNER_LOST", "BridgeConfig", "StreamBridge"]

log = logging.getLogger("headwater.bridge")

_QUEUE_LIMIT: Final = 100_000
"""Events waiting to be written to Redis before the oldest are dropped (Redis is down)."""
_WRITE_BATCH: Final = 1000
"""Most events per pipelined round trip."""


class StreamBridge:
    """Shares a node's streams through Redis and mirrors the other nodes' (see module).

    An async context manager: entering connects to Redis (waiting through an outage),
    starts the writer, reader, heartbeat and owner-watching tasks and begins observing
    the manager (which must be running); leaving writes what is queued (briefly), then
    stops. With ``metrics`` (the engine's registry: a server passes its engine's), the
    connection's figures (:meth:`figures`) are in its snapshots under ``brokers`` from
    the start of the connection to the end of the bridge.
    """

    def __init__(
        self,
        manager: StreamingManager,
        config: BridgeConfig,
        *,
        metrics: MetricsRegistry | None = None,
    ) -> None:
        self.manager = manager
        self.config = config
        self._metrics = metrics
        self.node = config.node or secrets.token_hex(6)
        prefix = config.prefix
        self._announce_key = f"{prefix}streams"
        self._open_key = f"{prefix}open"
        self._prefix = prefix
        self._maxlen = config.maxlen or max(1, manager.config.replay_max_chunks)
        self._window = config.heartbeat_interval * config.missed_heartbeats
        """Seconds without a new heartbeat after which an owner counts as lost."""
        self._key_ttl_ms = int(self._window * 2000) + 1000
        """Expiry of the keys a node refreshes at each heartbeat (two windows)."""
        self._queue: deque[tuple[str, dict[str, Any]]] = deque()
        self._wake = anyio.Event()
        self._write_lock = anyio.Lock()
        self._mirrors: dict[str, Mirror] = {}
        self._shared: dict[str, str] = {}
        """This node's shared open streams: id -> their ``open`` hash entry (JSON)."""
        self._beats: dict[str, tuple[bytes | None, float]] = {}
        """Owner node -> (its last heartbeat value, when this node saw it change)."""
        self._beat = 0
        self._outages_seen = 0
        self._client: Any = None
        self._tg: TaskGroup | None = None
        self._announce_cursor: bytes = b"$"
        self.link = Link("stream bridge", config.redis, deadline=None, log=log)
        """The connection to Redis through outages (figures: :meth:`Link.figures`)."""
        self.dropped = 0
        """Events dropped because Redis was unreachable for too long."""
        self.relayed = 0
        """Remote chunks published into the local manager."""
        self.owners_lost = 0
        """Mirrored streams closed because their owner stopped heart-beating."""

    # -- lifecycle ----------------------------------------------------------------------

    def figures(self) -> dict[str, Any]:
        """The connection's figures (:meth:`Link.figures
        <headwater.core.reconnect.Link.figures>`: connected, reconnects, outages, seconds
        disconnected) with the labels of a broker connection (``pipeline`` empty, ``stage``
        and ``role`` ``bridge``), this node's id and the events queued or dropped while
        Redis was out of reach."""
        return {
            "pipeline": "",
            "stage": "bridge",
            "role": "bridge",
            **self.link.figures(),
            "node": self.node,
            "queued": len(self._queue),
            "dropped": self.dropped,
        }

    def _metrics_key(self) -> str:
        return f"bridge/{self.node}"

    async def __aenter__(self) -> Self:
        from headwater.core.reconnect import retry

        if self._metrics is not None:
            self._metrics.add_member(METRICS_GROUP, self._metrics_key(), self.figures)
        try:
            self._client = redis_client(self.config.redis, "the stream bridge", timeout=None)
            await retry(self.link, self._start, transient=redis_transient)
        except BaseException:
            if self._metrics is not None:
                self._metrics.remove_member(METRICS_GROUP, self._metrics_key())
            raise
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        tg.start_soon(self._writer)
        tg.start_soon(self._reader)
        tg.start_soon(self._heartbeat)
        tg.start_soon(self._watch_owners)
        self.manager.add_observer(self)
        log.info("bridge: node %s sharing streams through %s", self.node, self.link.address)
        return self

    async def _start(self) -> None:
        """Beat once, then follow the open streams of the live owners."""
        client = self._client
        await self._beat_once()
        newest = await client.xrevrange(self._announce_key, count=1)
        self._announce_cursor = newest[0][0] if newest else b"0-0"
        entries = {
            as_text(k): json.loads(v) for k, v in (await client.hgetall(self._open_key)).items()
        }
        owners = sorted({str(info.get("node", "")) for info in entries.values()} - {self.node})
        alive = (
            dict(zip(owners, await client.mget(self._node_key(n) for n in owners), strict=True))
            if owners
            else {}
        )
        dead = []
        now = time.monotonic()
        for stream_id, info in entries.items():
            owner = str(info.get("node", ""))
            if owner == self.node:
                continue
            if alive.get(owner) is None:
                dead.append(stream_id)
                continue
            self._beats.setdefault(owner, (alive[owner], now))
            self._follow(stream_id, info)
        if dead:
            await client.hdel(self._open_key, *dead)
            log.info(
                "bridge: ignored %d streams of nodes that are not alive: %s",
                len(dead),
                ", ".join(sorted(dead)),
            )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.manager.remove_observer(self)
        if self._metrics is not None:
            self._metrics.remove_member(METRICS_GROUP, self._metrics_key())
        tg, self._tg = self._tg, None
        try:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                for _ in range(100):  # bounded: flush what is queued, then stop
                    if not self._queue:
                        break
                    await self._flush()
                await self._client.delete(self._node_key(self.node))
        except Exception as exc:
            log.warning("bridge: could not write the last events to Redis: %s", exc)
        finally:
            if tg is not None:
                tg.cancel_scope.cancel()
                await tg.__aexit__(None, None, None)
            client, self._client = self._client, None
            if client is not None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                    await client.aclose()

    async def _retrying(self, step: Any, what: str) -> None:
        """Run ``step()`` for ever: a Redis error pauses it (see :class:`Link`), any other
        error is logged and retried after the same pauses (the bridge must outlive it).
        Each Redis command that goes through ends an outage (``link.succeeded()``, called
        where the commands are: a step may also wait without talking to Redis)."""
        while True:
            try:
                await step()
            except Exception as exc:
                if redis_transient(exc):
                    await anyio.sleep(self.link.failed(exc))
                else:
                    log.exception("bridge: %s failed; retrying", what)
                    await anyio.sleep(self.link.backoff.pause(3))

    # -- observer (out) -----------------------------------------------------------------

    def _shares(self, stream_id: str) -> bool:
        return stream_id in self._shared

    def _key(self, stream_id: str) -> str:
        return f"{self._prefix}stream:{stream_id}"

    def _node_key(self, node: str) -> str:
        return f"{self._prefix}node:{node}"

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
        try:
            meta = encode_json(dict(metadata))
        except Exception:
            meta = b"{}"
        info = {"node": self.node, "epoch": epoch, "metadata": json.loads(meta)}
        self._shared[stream_id] = json.dumps(info)
        fields = {"t": "open", "e": epoch, "n": self.node, "m": meta}
        self._put(self._key(stream_id), fields)
        self._put("", {"op": "open", "stream": stream_id})

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
        del self._shared[stream_id]
        fields: dict[str, Any] = {"t": "close", "r": reason}
        if summary is not None:
            try:
                fields["m"] = encode_json(dict(summary))
            except Exception:
                log.debug("bridge: summary of %r is not JSON; not relayed", stream_id)
        if error is not None:
            fields["x"] = error
        self._put(self._key(stream_id), fields)
        self._put("", {"op": "close", "stream": stream_id})

    # -- writer -------------------------------------------------------------------------

    async def _writer(self) -> None:
        async def step() -> None:
            while True:
                if not self._queue:
                    self._wake = anyio.Event()
                    await self._wake.wait()
                await self._flush()

        await self._retrying(step, "writing to Redis")

    async def _flush(self) -> None:
        """Write up to one batch of queued events (removed once written)."""
        async with self._write_lock:
            await self._write_batch()

    async def _write_batch(self) -> None:
        queue = self._queue
        batch = [queue[i] for i in range(min(len(queue), _WRITE_BATCH))]
        if not batch:
            return
        ttl = self._key_ttl_ms
        pipe = self._client.pipeline(transaction=False)
        for key, fields in batch:
            if key:
                pipe.xadd(key, fields, maxlen=self._maxlen, approximate=True)
                if fields["t"] == "close":
                    pipe.expire(key, int(self.config.ttl))
                elif fields["t"] == "open":
                    pipe.pexpire(key, ttl)
                continue
            stream_id = fields["stream"]
            if fields["op"] == "open":
                info = self._shared.get(stream_id)
                if info is not None:
                    pipe.hset(self._open_key, stream_id, info)
                    pipe.pexpire(self._open_key, ttl)
            else:
                pipe.hdel(self._open_key, stream_id)
            pipe.xadd(
                self._announce_key,
                {"op": fields["op"], "stream": stream_id, "node": self.node},
                maxlen=10_000,
                approximate=True,
            )
            pipe.pexpire(self._announce_key, ttl)
        await pipe.execute()
        self.link.succeeded()
        for _ in batch:
            queue.popleft()

    # -- liveness -----------------------------------------------------------------------

    async def _beat_once(self) -> None:
        """Say this node is alive; keep the keys it owns from expiring."""
        self._beat += 1
        ttl = self._key_ttl_ms
        pipe = self._client.pipeline(transaction=False)
        pipe.set(
            self._node_key(self.node),
            f"{self._beat}",
            px=int(self._window * 1000),
        )
        for stream_id, info in list(self._shared.items()):
            pipe.pexpire(self._key(stream_id), ttl)
            pipe.hset(self._open_key, stream_id, info)  # back, if Redis lost its data
        pipe.pexpire(self._open_key, ttl)
        pipe.pexpire(self._announce_key, ttl)
        await pipe.execute()
        self.link.succeeded()

    async def _heartbeat(self) -> None:
        async def step() -> None:
            while True:
                await anyio.sleep(self.config.heartbeat_interval)
                await self._beat_once()

        await self._retrying(step, "the heartbeat")

    async def _watch_owners(self) -> None:
        async def step() -> None:
            while True:
                await anyio.sleep(self.config.heartbeat_interval)
                await self._check_owners()

        await self._retrying(step, "watching the owners of mirrored streams")

    async def _check_owners(self) -> None:
        """Close the mirrors of owners whose heartbeat stopped changing."""
        owners = sorted({m.node for m in self._mirrors.values()})
        if not owners:
            return
        values = await self._client.mget([self._node_key(n) for n in owners])
        self.link.succeeded()
        now = time.monotonic()
        # time this node spent cut off from Redis says nothing of the owners
        cut_off = self.link.outages != self._outages_seen
        self._outages_seen = self.link.outages
        for owner, value in zip(owners, values, strict=True):
            seen = self._beats.get(owner)
            if seen is None or seen[0] != value or cut_off:
                # new, alive, or our own outage just ended: count from now
                self._beats[owner] = (value, now)
            elif now - seen[1] >= self._window:
                await self._owner_lost(owner, now - seen[1])
        for gone in set(self._beats) - set(owners):
            del self._beats[gone]

    async def _owner_lost(self, owner: str, silent: float) -> None:
        lost = [m for m in self._mirrors.values() if m.node == owner]
        log.warning(
            "bridge: node %s sent no heartbeat for %.1fs (%d missed): closing its %d "
            "mirrored streams with %s",
            owner,
            silent,
            self.config.missed_heartbeats,
            len(lost),
            OWNER_LOST,
        )
        self._beats.pop(owner, None)
        for mirror in lost:
            self._mirrors.pop(mirror.stream_id, None)
            self.owners_lost += 1
            if mirror.epoch is None or not self.manager.has_stream(mirror.stream_id):
                continue
            error = {
                "error": "OwnerLost",
                "code": OWNER_LOST,
                "message": f"node {owner}, which owns stream {mirror.stream_id!r}, stopped "
                f"sending heartbeats ({self.config.missed_heartbeats} missed)",
                "node": owner,
            }
            try:
                await self.manager.handle_stream_error(mirror.stream_id, error)
            except StreamError:
                continue  # closed meanwhile
        if lost:
            await self._client.hdel(self._open_key, *[m.stream_id for m in lost])

    # -- reader (in) --------------------------------------------------------------------

    def _follow(self, stream_id: str, info: Mapping[str, Any]) -> None:
        node = str(info.get("node", ""))
        if node == self.node or stream_id in self._mirrors:
            return
        metadata = info.get("metadata")
        self._mirrors[stream_id] = Mirror(
            stream_id,
            self._key(stream_id),
            node,
            dict(metadata) if isinstance(metadata, Mapping) else {},
        )

    async def _reader(self) -> None:
        async def step() -> None:
            while True:
                await self._read_once()

        await self._retrying(step, "reading from Redis")

    async def _read_once(self) -> None:
        keys: dict[str, bytes] = {self._announce_key: self._announce_cursor}
        for mirror in self._mirrors.values():
            keys[mirror.key] = mirror.cursor
        reply = await self._client.xread(keys, count=1000, block=self.config.block_ms)
        self.link.succeeded()
        for key, entries in reply or []:
            name = as_text(key)
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
                await self._relay(found, {as_text(k): v for k, v in fields.items()})

    async def _announcement(self, fields: Mapping[bytes, bytes]) -> None:
        op = as_text(fields.get(b"op", b""))
        stream_id = as_text(fields.get(b"stream", b""))
        node = as_text(fields.get(b"node", b""))
        if op == "open" and node != self.node:
            raw = await self._client.hget(self._open_key, stream_id)
            info = json.loads(raw) if raw else {"node": node}
            self._beats.setdefault(node, (None, time.monotonic()))
            self._follow(stream_id, info)

    async def _relay(self, mirror: Mirror, fields: dict[str, Any]) -> None:
        kind = as_text(fields.get("t", b""))
        manager = self.manager
        stream_id = mirror.stream_id
        try:
            if kind in ("open", "chunk"):
                epoch = as_text(fields["e"])
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
                    await manager.close_stream(stream_id, as_text(fields["r"]), summary=summary)
        except StreamError as exc:
            if exc.code in ("stream_closed", "unknown_stream", "stream_exists"):
                # closed locally (shutdown), or this node has its own: stop mirroring it
                self._mirrors.pop(stream_id, None)
                return
            log.warning("bridge: relaying %s of stream %r failed: %s", kind, stream_id, exc)

    async def _ensure_local(self, mirror: Mirror, epoch: str) -> None:
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
