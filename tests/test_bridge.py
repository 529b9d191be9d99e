"""The Redis bridge between serve nodes: same chunks, same seq, same epoch on every node.

* Two (and a late third) :class:`StreamingManager` bridged in one process: every event
  of the owner's stream reaches the mirrors; replay with ``since`` works on a mirror.
* Two server processes on two ports with the bridge, a pipeline publishing on the first,
  clients on both: every client receives every chunk in order with identical numbers.
* Liveness: a node killed with SIGKILL stops heart-beating; the clients of its streams
  on the other nodes get ``stream_error`` with code ``owner_lost``; a node started later
  ignores the streams of owners that are not alive; no key of the bridge lives for ever.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from headwater.core.events import Progress
from headwater.core.streaming import Frame, StreamingConfig, StreamingManager
from headwater.server.bridge import BridgeConfig, StreamBridge
from services import plugin_env, redis_client, redis_url, stop, unique, until

__all__ = ["redis_client", "redis_url"]

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """The bridge uses the redis client's asyncio API."""
    return "asyncio"


class Recorder:
    """An in-memory client transport keeping every message it is sent."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def send(self, frame: Frame) -> None:
        self.messages.append(json.loads(frame))

    async def close(self, code: str, reason: str) -> None:
        self.messages.append({"type": "closed", "code": code})

    def chunks(self) -> list[tuple[int, Any]]:
        return [(m["seq"], m["data"]) for m in self.messages if m["type"] == "stream_update"]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]


@asynccontextmanager
async def node(redis: str, prefix: str, name: str) -> AsyncIterator[StreamingManager]:
    """A streaming manager with a bridge (short XREAD blocks: quick tests)."""
    config = BridgeConfig(redis=redis, prefix=prefix, node=name, block_ms=50)
    async with AsyncExitStack() as stack:
        manager = await stack.enter_async_context(
            StreamingManager(StreamingConfig(replay_max_chunks=500, shutdown_grace=1))
        )
        await stack.enter_async_context(StreamBridge(manager, config))
        yield manager


async def test_two_bridged_managers_share_a_stream(redis_url: str, redis_client: Any) -> None:
    prefix = unique("bridge") + ":"
    async with node(redis_url, prefix, "a") as a, node(redis_url, prefix, "b") as b:
        sid = await a.create_stream("orders", metadata={"pipeline": "p"})
        await until(lambda: b.has_stream("orders"), 5, "the mirror on node b")
        assert b.info("orders").epoch == a.info("orders").epoch
        on_a, on_b = Recorder(), Recorder()
        await a.register_client(sid, "ca", on_a, since=0)
        await b.register_client(sid, "cb", on_b, since=0)
        for i in range(100):
            await a.push(sid, {"i": i})
            if i == 49:
                await a.forward_event(sid, Progress("sources.s", 50, 100))
        await until(lambda: b.info("orders").seq == 100, 5, "100 chunks on node b")
        # a client resuming on node b with since=60 gets 61..100 from b's replay buffer
        late = Recorder()
        sub = await b.register_client(sid, "late", late, since=60, epoch=a.info("orders").epoch)
        assert sub.gap is None
        await a.close_stream(sid, "completed", summary={"items": 100})
        await until(lambda: not b.has_stream("orders"), 5, "the mirror to close")
        await until(lambda: bool(on_b.of("stream_complete")), 5, "stream_complete on b")
        await until(lambda: bool(late.of("stream_complete")), 5, "stream_complete (late)")
    expected = [(i + 1, {"i": i}) for i in range(100)]
    assert on_a.chunks() == expected
    assert on_b.chunks() == expected
    assert late.chunks() == expected[60:]
    assert [m["done"] for m in on_b.of("progress")] == [50]
    assert on_b.of("stream_complete")[0]["reason"] == "completed"
    assert on_b.of("stream_complete")[0]["summary"] == {"items": 100}
    assert on_b.of("stream_complete")[0]["last_seq"] == 100


async def test_a_late_node_mirrors_what_redis_holds(redis_url: str, redis_client: Any) -> None:
    prefix = unique("bridge") + ":"
    async with node(redis_url, prefix, "a") as a:
        sid = await a.create_stream("s")
        await a.push_many(sid, [{"i": i} for i in range(20)])
        async with node(redis_url, prefix, "c") as c:
            await until(lambda: c.has_stream("s") and c.info("s").seq == 20, 5, "the mirror")
            rec = Recorder()
            await c.register_client(sid, "x", rec, since=0)
            await a.push(sid, {"i": 20})
            await until(lambda: len(rec.chunks()) == 21, 5, "the live chunk on the late node")
        assert rec.chunks() == [(i + 1, {"i": i}) for i in range(21)]


async def test_error_close_and_own_streams_are_not_overwritten(
    redis_url: str, redis_client: Any
) -> None:
    prefix = unique("bridge") + ":"
    async with node(redis_url, prefix, "a") as a, node(redis_url, prefix, "b") as b:
        await b.create_stream("mine")  # node b's own "mine": a's must not replace it
        await a.create_stream("mine")
        await a.create_stream("boom")
        await until(lambda: b.has_stream("boom"), 5, "the mirror")
        rec = Recorder()
        await b.register_client("boom", "x", rec)
        await a.handle_stream_error("boom", RuntimeError("disk full"))
        await until(lambda: bool(rec.of("stream_complete")), 5, "the error on b")
        assert rec.of("stream_error")[0]["error"]["message"] == "disk full"
        assert rec.of("stream_complete")[0]["reason"] == "error"
        await a.push("mine", 1)
        await anyio.sleep(0.3)
        assert b.info("mine").seq == 0
        assert b.info("mine").epoch != a.info("mine").epoch


def start_node(config: dict[str, Any], tmp_path: Path) -> tuple[subprocess.Popen[str], int]:
    """A ``headwater serve --config`` process with the bridge; returns it and its port."""
    env = plugin_env(tmp_path)
    path = tmp_path / f"serve-{unique('cfg')}.yaml"
    path.write_text(json.dumps(config), encoding="utf-8")
    argv = [sys.executable, "-m", "headwater", "serve", "--config", str(path)]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path
    )
    assert proc.stderr is not None
    for _ in range(200):  # bounded: a few lines of start-up output
        line = proc.stderr.readline()
        if not line:
            break
        if "serving on http://" in line:
            return proc, int(line.split("serving on http://")[1].split()[0].rsplit(":", 1)[1])
    stop(proc)
    raise AssertionError(f"the node did not start: {proc.stderr.read()}")


async def collect(client: Any, stream: str) -> list[tuple[int, Any]]:
    """Every chunk of ``stream`` until its ``stream_complete``."""
    chunks: list[tuple[int, Any]] = []
    async for message in client:
        if getattr(message, "stream", None) != stream:
            continue
        if message.type == "stream_update":
            chunks.append((message.seq, message.data))
        elif message.type == "stream_complete":
            assert message.reason == "succeeded", message
            return chunks
    raise AssertionError("the connection closed before the stream completed")


async def subscribe_when_mirrored(stack: AsyncExitStack, url: str, stream: str, since: int) -> Any:
    """Connect to ``url`` and subscribe once the stream exists there (bounded retries)."""
    from headwater.client import RequestFailed, connect

    client = await stack.enter_async_context(connect(url))
    for _ in range(200):
        try:
            await client.subscribe(stream, since=since)
            return client
        except RequestFailed:
            await anyio.sleep(0.05)
    raise AssertionError(f"stream {stream!r} never appeared on {url}")


async def test_two_serve_processes_with_the_bridge(
    tmp_path: Path, redis_url: str, redis_client: Any
) -> None:
    from headwater.client import connect

    prefix = unique("bridge") + ":"
    source, stream = unique("in"), unique("live")
    total = 300
    pipeline = {
        "name": "feed",
        "sources": {
            "in": {
                "action": "redis.stream",
                "params": {
                    "url": redis_url,
                    "stream": source,
                    "group": "feed",
                    "block_ms": 50,
                    "max_messages": total,
                },
            }
        },
        "checkpoint": {"store": "memory", "every_seconds": 0.1},
        "sinks": [{"sink": "websocket"}],
    }
    base = {"port": 0, "pipelines": {"feed": pipeline}}
    bridge = {"redis": redis_url, "prefix": prefix, "block_ms": 50}
    nodes = [start_node({**base, "bridge": {**bridge, "node": n}}, tmp_path) for n in "ab"]
    urls = [f"ws://127.0.0.1:{port}/" for _, port in nodes]
    try:
        with anyio.fail_after(60):
            async with AsyncExitStack() as stack:
                runner = await stack.enter_async_context(connect(urls[0]))
                await runner.run("feed", stream=stream)
                clients = [
                    runner,
                    await subscribe_when_mirrored(stack, urls[0], stream, 0),
                    await subscribe_when_mirrored(stack, urls[1], stream, 0),
                    await subscribe_when_mirrored(stack, urls[1], stream, 0),
                ]
                pipe = redis_client.pipeline(transaction=False)
                for i in range(total - 50):
                    pipe.xadd(source, {"data": json.dumps({"i": i})})
                pipe.execute()
                # a client joining node b late resumes with since: no gap, no duplicate
                await until(
                    lambda: redis_client.xinfo_groups(source)[0]["entries-read"] == total - 50,
                    20,
                    "the pipeline to read the first messages",
                )
                await anyio.sleep(0.3)  # let node b mirror them
                late = await subscribe_when_mirrored(stack, urls[1], stream, 100)
                for i in range(total - 50, total):
                    redis_client.xadd(source, {"data": json.dumps({"i": i})})
                results = [await collect(client, stream) for client in [*clients, late]]
    finally:
        for proc, _ in nodes:
            proc.terminate()
        for proc, _ in nodes:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                stop(proc)
    expected = [(i + 1, {"i": i}) for i in range(total)]
    for got in results[:-1]:
        assert got == expected
    assert results[-1] == expected[100:]


# -- liveness ------------------------------------------------------------------------


def keys_without_ttl(client: Any, prefix: str) -> list[bytes]:
    """Keys under ``prefix`` that would never expire."""
    return [k for k in client.scan_iter(match=f"{prefix}*") if client.pttl(k) == -1]


async def test_a_late_node_ignores_streams_of_dead_owners(
    redis_url: str, redis_client: Any
) -> None:
    prefix = unique("bridge") + ":"
    # what a node killed with SIGKILL leaves behind: its entry, no heartbeat any more
    info = {"node": "ghost", "epoch": "e1", "metadata": {}}
    redis_client.hset(f"{prefix}open", "old", json.dumps(info))
    redis_client.xadd(f"{prefix}stream:old", {"t": "open", "e": "e1", "n": "ghost", "m": "{}"})
    async with node(redis_url, prefix, "a") as a:
        await a.create_stream("live")
        async with node(redis_url, prefix, "late") as late:
            await until(lambda: late.has_stream("live"), 5, "the live stream's mirror")
            assert not late.has_stream("old")
        assert redis_client.hget(f"{prefix}open", "old") is None
        assert redis_client.hget(f"{prefix}open", "live") is not None
        redis_client.delete(f"{prefix}stream:old")
        assert keys_without_ttl(redis_client, prefix) == []


async def test_owner_killed_mirrors_close_with_owner_lost(
    tmp_path: Path, redis_url: str, redis_client: Any
) -> None:
    from headwater.client import connect

    prefix = unique("bridge") + ":"
    source, stream = unique("in"), unique("live")
    interval, missed = 0.2, 3
    pipeline = {
        "name": "feed",
        "sources": {
            "in": {
                "action": "redis.stream",
                "params": {"url": redis_url, "stream": source, "group": "feed", "block_ms": 50},
            }
        },
        "checkpoint": {"store": "memory", "every_seconds": 0.1},
        "sinks": [{"sink": "websocket"}],
    }
    bridge = {
        "redis": redis_url,
        "prefix": prefix,
        "block_ms": 50,
        "heartbeat_interval": interval,
        "missed_heartbeats": missed,
    }
    base = {"port": 0, "pipelines": {"feed": pipeline}}
    nodes = [start_node({**base, "bridge": {**bridge, "node": n}}, tmp_path) for n in "ab"]
    owner, mirror = nodes[0][0], nodes[1][0]
    urls = [f"ws://127.0.0.1:{port}/" for _, port in nodes]
    messages: list[Any] = []
    try:
        with anyio.fail_after(60):
            async with AsyncExitStack() as stack:
                runner = await stack.enter_async_context(connect(urls[0]))
                await runner.run("feed", stream=stream)
                watcher = await subscribe_when_mirrored(stack, urls[1], stream, 0)
                for i in range(5):
                    redis_client.xadd(source, {"data": json.dumps({"i": i})})
                async for message in watcher:  # bounded by fail_after
                    if getattr(message, "stream", None) != stream:
                        continue
                    messages.append(message)
                    if message.type == "stream_update" and message.seq == 5:
                        break
                assert redis_client.hget(f"{prefix}open", stream) is not None
                owner.kill()  # SIGKILL: no closing, no last word
                owner.wait(timeout=10)
                async for message in watcher:
                    if getattr(message, "stream", None) != stream:
                        continue
                    messages.append(message)
                    if message.type == "stream_complete":
                        break
    finally:
        for proc in (owner, mirror):
            proc.terminate()
        for proc in (owner, mirror):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                stop(proc)
    kinds = [m.type for m in messages]
    assert kinds.count("stream_update") == 5
    errors = [m for m in messages if m.type == "stream_error"]
    assert [e.error.get("code") for e in errors] == ["owner_lost"], errors
    assert "node a" in errors[0].error["message"]
    assert messages[-1].type == "stream_complete"
    assert messages[-1].reason == "error"
    # the dead owner's entry is gone, and nothing it left lives for ever
    assert redis_client.hget(f"{prefix}open", stream) is None
    assert redis_client.get(f"{prefix}node:a") is None
    assert keys_without_ttl(redis_client, prefix) == []


async def test_the_bridge_rides_out_a_redis_restart(tmp_path: Path) -> None:
    from broker_servers import RedisServer, _binary
    from services import need

    need("redis", "redis")
    server = RedisServer(_binary("redis-server"), tmp_path / "redis")
    server.start()
    try:
        async with node(server.url, "hw:", "a") as a, node(server.url, "hw:", "b") as b:
            sid = await a.create_stream("s")
            await until(lambda: b.has_stream("s"), 5, "the mirror")
            await a.push_many(sid, [{"i": i} for i in range(10)])
            await until(lambda: b.info("s").seq == 10, 5, "the first chunks on b")
            server.kill()
            await a.push_many(sid, [{"i": i} for i in range(10, 20)])  # queued meanwhile
            await anyio.sleep(1.0)  # the outage itself
            server.start()
            await until(lambda: b.info("s").seq == 20, 30, "the chunks queued during the outage")
            rec = Recorder()
            await b.register_client(sid, "x", rec, since=0)
            assert b.has_stream("s")  # the mirror did not count the outage against a
        assert rec.chunks() == [(i + 1, {"i": i}) for i in range(20)]
    finally:
        server.kill()
