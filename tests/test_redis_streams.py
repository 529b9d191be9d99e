"""The Redis Streams plugin against a real Redis: source, sink, checkpoint store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import anyio
import pytest

import headwater
from services import broker_plugins, redis_client, redis_url, unique, until

__all__ = ["redis_client", "redis_url"]


@pytest.fixture
def anyio_backend() -> str:
    """The redis client's async API runs on asyncio only."""
    return "asyncio"


def preload(client: Any, stream: str, n: int, start: int = 0) -> list[bytes]:
    """XADD ``{"data": {"n": i}}`` for i in start..start+n, pipelined; returns the ids."""
    ids: list[bytes] = []
    for offset in range(start, start + n, 5000):
        pipe = client.pipeline(transaction=False)
        for i in range(offset, min(offset + 5000, start + n)):
            pipe.xadd(stream, {"data": json.dumps({"n": i})})
        ids.extend(pipe.execute())
    return ids


def pipeline(
    source: dict[str, Any], sink: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """A pipeline reading with ``redis.stream`` (memory checkpoints) into ``sink``."""
    return {
        "name": unique("pipe"),
        "sources": {"in": {"action": "redis.stream", "params": source}},
        "sinks": [sink or {"sink": "collect"}],
        "checkpoint": {"store": "memory", "every_items": 100, "every_seconds": 0.1},
        **extra,
    }


def pending(client: Any, stream: str, group: str) -> int:
    """Entries delivered to a member of ``group`` and not acknowledged."""
    return int(client.xpending(stream, group)["pending"])


def test_plugin_imports_without_redis_and_explains_when_used() -> None:
    code = """
import sys
sys.modules["redis"] = None          # as if the package were not installed
sys.modules["redis.asyncio"] = None
import headwater.builtin_plugins.redis_streams as mod
from headwater.core.plugins import PluginManager
pm = PluginManager(strict=True).load()
if "headwater.redis" not in pm.plugins:
    pm.register(mod, "headwater.redis")
assert pm.get("action", "redis.stream") is not None
result = headwater.run_sync(
    {"name": "p", "sources": {"s": {"action": "redis.stream",
     "params": {"stream": "x", "group": "g"}}}, "sinks": [{"sink": "collect"}],
     "checkpoint": {"store": "memory"}},
    plugins=pm, raise_on_error=False)
print(result.state, result.errors[0])
"""
    proc = subprocess.run(
        [sys.executable, "-c", "import headwater\n" + code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "failed" in proc.stdout
    assert "pip install 'headwater[redis]'" in proc.stdout


def test_needs_the_commit_protocol(redis_url: str, redis_client: Any) -> None:
    spec = pipeline({"url": redis_url, "stream": unique("s"), "group": "g", "idle_exit": 0.1})
    del spec["checkpoint"]
    result = headwater.run_sync(spec, plugins=broker_plugins(), raise_on_error=False)
    assert result.state == "failed"
    assert "checkpoint: {store: memory}" in str(result.errors[0])


def test_reads_everything_acks_after_commit_and_writes_with_xadd(
    redis_url: str, redis_client: Any
) -> None:
    src, out = unique("in"), unique("out")
    preload(redis_client, src, 2500)
    spec = pipeline(
        {"url": redis_url, "stream": src, "group": "g", "batch": 300, "idle_exit": 0.3},
        {"sink": "redis.stream", "params": {"url": redis_url, "stream": out}},
    )
    result = headwater.run_sync(spec, plugins=broker_plugins())
    assert result.output == {"stream": out, "written": 2500}
    got = [json.loads(fields[b"data"])["n"] for _, fields in redis_client.xrange(out)]
    assert got == list(range(2500))
    assert pending(redis_client, src, "g") == 0
    # the group's position is kept by Redis: a second run finds nothing new
    again = headwater.run_sync(spec, plugins=broker_plugins())
    assert again.output == {"stream": out, "written": 0}


def test_decode_modes_and_envelope(redis_url: str, redis_client: Any) -> None:
    src = unique("in")
    eid = redis_client.xadd(src, {"data": '{"a": 1}', "other": "x"})
    base = {"url": redis_url, "stream": src, "idle_exit": 0.1, "start_id": "0"}
    cases = {
        "json": {"a": 1},
        "text": '{"a": 1}',
        "bytes": b'{"a": 1}',
        "fields": {"data": '{"a": 1}', "other": "x"},
    }
    for i, (mode, expected) in enumerate(cases.items()):
        spec = pipeline({**base, "group": f"g{i}", "decode": mode})
        assert headwater.run_sync(spec, plugins=broker_plugins()).output == [expected]
    spec = pipeline({**base, "group": "genv", "envelope": True})
    assert headwater.run_sync(spec, plugins=broker_plugins()).output == [
        {"id": eid.decode(), "stream": src, "data": {"a": 1}}
    ]


def test_uncommitted_entries_stay_pending_when_a_sink_fails(
    redis_url: str, redis_client: Any
) -> None:
    src = unique("in")
    preload(redis_client, src, 1000)
    seen: list[int] = []

    @headwater.sink("test.fail_after")
    def fail_after(batch: list[Any]) -> None:
        for item in batch:
            if len(seen) >= 450:
                raise RuntimeError("disk full")
            seen.append(item["n"])

    class Plugin:
        @staticmethod
        @headwater.hookimpl
        def register_sinks(register: Any) -> None:
            register(fail_after)

    plugins = broker_plugins()
    plugins.register(Plugin, "test-fail-after")
    spec = pipeline(
        {"url": redis_url, "stream": src, "group": "g", "batch": 100, "idle_exit": 0.5},
        {"sink": "test.fail_after"},
    )
    result = headwater.run_sync(spec, plugins=plugins, raise_on_error=False)
    assert result.state == "failed"
    still = pending(redis_client, src, "g")
    # checkpoints every 100 items: at most the entries since the last commit are acked late
    assert 550 <= still <= 1000
    acked = 1000 - still
    assert acked <= len(seen), "an entry was acknowledged before the sink had it"


def test_redelivers_own_pending_entries_then_reclaims_dead_members(
    redis_url: str, redis_client: Any
) -> None:
    src = unique("in")
    preload(redis_client, src, 30)
    redis_client.xgroup_create(src, "g", id="0")
    redis_client.xreadgroup("g", "me", {src: ">"}, count=10)  # mine, never acked
    redis_client.xreadgroup("g", "dead", {src: ">"}, count=10)  # a dead member's
    spec = pipeline(
        {
            "url": redis_url,
            "stream": src,
            "group": "g",
            "consumer": "me",
            "claim_idle_ms": 1,
            "claim_interval": 0.05,
            "idle_exit": 0.3,
        }
    )
    result = headwater.run_sync(spec, plugins=broker_plugins())
    assert sorted(item["n"] for item in result.output) == list(range(30))
    assert len(result.output) == 30  # reclaimed entries are not delivered twice
    assert pending(redis_client, src, "g") == 0


def test_deleted_pending_entries_are_acknowledged(redis_url: str, redis_client: Any) -> None:
    src = unique("in")
    ids = preload(redis_client, src, 5)
    redis_client.xgroup_create(src, "g", id="0")
    redis_client.xreadgroup("g", "dead", {src: ">"}, count=5)
    redis_client.xdel(src, ids[0], ids[1])
    spec = pipeline(
        {"url": redis_url, "stream": src, "group": "g", "claim_idle_ms": 1, "idle_exit": 0.3}
    )
    result = headwater.run_sync(spec, plugins=broker_plugins())
    assert sorted(item["n"] for item in result.output) == [2, 3, 4]
    assert pending(redis_client, src, "g") == 0


@pytest.mark.anyio
async def test_drain_request_ends_the_run_with_everything_acknowledged(
    redis_url: str, redis_client: Any
) -> None:
    src = unique("in")
    preload(redis_client, src, 200)
    spec = pipeline({"url": redis_url, "stream": src, "group": "g", "batch": 50})
    async with headwater.open_run(spec, plugins=broker_plugins()) as handle:
        stats = handle.stats
        await until(
            lambda: "sinks.collect" in stats and stats["sinks.collect"].items_in >= 200,
            10,
            "the sink to receive every message",
        )
        handle.drain()
        with anyio.fail_after(10):
            result = await handle.wait()
    assert result.state == "succeeded"
    assert len(result.output) == 200
    assert pending(redis_client, src, "g") == 0


def test_sink_trims_with_maxlen_and_encodes(redis_url: str, redis_client: Any) -> None:
    out = unique("out")
    spec = {
        "name": unique("pipe"),
        "sources": {"n": {"action": "range", "params": {"stop": 5000}}},
        "sinks": [
            {"sink": "redis.stream", "params": {"url": redis_url, "stream": out, "maxlen": 1000}}
        ],
    }
    result = headwater.run_sync(spec, plugins=broker_plugins())
    assert result.output == {"stream": out, "written": 5000}
    assert 1000 <= redis_client.xlen(out) < 5000
    last = redis_client.xrevrange(out, count=1)[0][1]
    assert last == {b"data": b"4999"}
    spec["sinks"] = [
        {"sink": "redis.stream", "params": {"url": redis_url, "stream": out, "encode": "text"}}
    ]
    spec["sources"] = {"n": {"action": "iterable", "params": {"items": ["a", "b"]}}}
    headwater.run_sync(spec, plugins=broker_plugins())
    assert [f for _, f in redis_client.xrevrange(out, count=2)] == [
        {b"data": b"b"},
        {b"data": b"a"},
    ]


def test_checkpoint_store_round_trip(redis_url: str, redis_client: Any) -> None:
    from headwater.builtin_plugins.redis_streams import RedisCheckpointStore, RedisStoreParams
    from headwater.core.checkpoints import Checkpoint, CheckpointStore

    prefix = unique("ckpt") + ":"
    store = RedisCheckpointStore(RedisStoreParams(url=redis_url, prefix=prefix))
    try:
        assert isinstance(store, CheckpointStore)
        assert store.load("p") is None
        store.save(Checkpoint("p", "f", 1, {"s": 10}, items=10))
        store.save(Checkpoint("p", "f", 2, {"s": 20}, items=20))
        store.save(Checkpoint("q", "f", 1, {"s": 1}))
        loaded = store.load("p")
        assert loaded is not None
        assert (loaded.seq, loaded.positions) == (2, {"s": 20})
        assert [c.pipeline for c in store.list()] == ["p", "q"]
        assert store.reset("p") is True
        assert store.reset("p") is False
        assert store.load("p") is None
    finally:
        store.reset("q")
        store.close()


def test_resumable_pipeline_resumes_from_the_redis_store(
    redis_url: str, redis_client: Any, tmp_path: Any
) -> None:
    path = tmp_path / "lines.txt"
    path.write_text("".join(f"{i}\n" for i in range(100)), encoding="utf-8")
    prefix = unique("ckpt") + ":"
    spec = {
        "name": unique("pipe"),
        "sources": {"f": {"action": "file.lines", "params": {"path": str(path), "max_lines": 40}}},
        "sinks": [{"sink": "collect"}],
        "checkpoint": {"store": "redis", "params": {"url": redis_url, "prefix": prefix}},
    }
    first = headwater.run_sync(spec, plugins=broker_plugins())
    assert first.output == [str(i) for i in range(40)]
    saved = json.loads(redis_client.get(prefix + spec["name"]))
    assert saved["completed"] is True
    assert saved["items"] == 40


# -- consumer hygiene ------------------------------------------------------------------


def test_default_names_are_leased_per_host_slot(redis_url: str, redis_client: Any) -> None:
    import socket

    from headwater.builtin_plugins._redis import ConsumerLease

    stream = unique("lease")
    prefix = f"{stream}:lease:"
    host = socket.gethostname()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_pid = int(dead.stdout)

    async def scenario() -> tuple[str, str, str, str]:
        from headwater.core.redis_conn import redis_client as make

        client = make(redis_url, "test")
        try:
            first = ConsumerLease(stream, "g", prefix=prefix)
            second = ConsumerLease(stream, "g", prefix=prefix)
            a = await first.acquire(client)
            b = await second.acquire(client)  # a live holder: the next slot
            await first.release(client)
            third = ConsumerLease(stream, "g", prefix=prefix)
            c = await third.acquire(client)  # released: slot 0 again
            # a holder of this host and PID namespace whose process is gone is taken over;
            # one of another PID namespace (a container with the same host name) or of
            # another host is not: its pid cannot be checked from here
            pidns = os.stat("/proc/self/ns/pid").st_ino
            stale = json.dumps(
                {"host": host, "pid": dead_pid, "start": None, "pidns": pidns, "token": "x"}
            )
            other_ns = stale.replace(f'"pidns": {pidns}', '"pidns": 1')
            await client.set(third.key(f"{host}-2"), other_ns, px=60_000)
            await client.set(third.key(f"{host}-3"), stale.replace(host, "elsewhere"))
            await client.set(third.key(f"{host}-4"), stale, px=60_000)
            d = await ConsumerLease(stream, "g", prefix=prefix).acquire(client)
            return a, b, c, d
        finally:
            await client.aclose()

    a, b, c, d = anyio.run(scenario)
    assert (a, b, c) == (f"{host}-0", f"{host}-1", f"{host}-0")
    assert d == f"{host}-4"
    assert 0 < redis_client.pttl(f"{prefix}{stream}:g:{host}-1") <= 30_000


def test_claim_interval_follows_claim_idle_ms() -> None:
    from headwater.builtin_plugins.redis_streams import RedisSourceParams, _ConsumerGroup
    from headwater.core.context import RunIdentity, StreamContext

    ctx = StreamContext(RunIdentity("p", "r"), "sources.s")
    params = RedisSourceParams(stream="s", group="g", consumer="c", claim_idle_ms=30_000)
    assert _ConsumerGroup(params, ctx).claim_interval == 3.0
    params = RedisSourceParams(stream="s", group="g", consumer="c", claim_interval=0.5)
    assert _ConsumerGroup(params, ctx).claim_interval == 0.5


def test_entries_over_max_deliver_go_to_the_dead_letter_stream(
    redis_url: str, redis_client: Any
) -> None:
    src, dlq = unique("in"), unique("dlq")
    ids = preload(redis_client, src, 6)
    redis_client.xgroup_create(src, "g", id="0")
    redis_client.xreadgroup("g", "me", {src: ">"}, count=2)  # mine: 1 delivery so far
    redis_client.xreadgroup("g", "me", {src: "0"}, count=2)  # a restart: 2 deliveries
    redis_client.xreadgroup("g", "dead", {src: ">"}, count=2)  # a dead member's: 1
    spec = pipeline(
        {
            "url": redis_url,
            "stream": src,
            "group": "g",
            "consumer": "me",
            "claim_idle_ms": 1,
            "max_deliver": 2,
            "dead_letter": dlq,
            "idle_exit": 0.3,
        }
    )
    result = headwater.run_sync(spec, plugins=broker_plugins())
    # mine come a third time: dead-lettered; the dead member's a second time: delivered
    assert sorted(item["n"] for item in result.output) == [2, 3, 4, 5]
    dead = redis_client.xrange(dlq)
    assert [f[b"headwater-id"] for _, f in dead] == ids[:2]
    assert {f[b"headwater-deliveries"] for _, f in dead} == {b"3"}
    assert dead[0][1][b"data"] == b'{"n": 0}'
    assert dead[0][1][b"headwater-stream"] == src.encode()
    assert pending(redis_client, src, "g") == 0


def test_idle_consumers_holding_nothing_are_deleted(redis_url: str, redis_client: Any) -> None:
    src = unique("in")
    preload(redis_client, src, 3)
    redis_client.xgroup_create(src, "g", id="0")
    redis_client.xgroup_createconsumer(src, "g", "gone")  # holds nothing
    redis_client.xreadgroup("g", "holder", {src: ">"}, count=1)  # holds an entry

    def idle_ms(name: bytes) -> int:
        return next(c["idle"] for c in redis_client.xinfo_consumers(src, "g") if c["name"] == name)

    import time

    for _ in range(200):  # bounded: until both have been idle 100 ms
        if min(idle_ms(b"gone"), idle_ms(b"holder")) >= 100:
            break
        time.sleep(0.01)
    spec = pipeline(
        {
            "url": redis_url,
            "stream": src,
            "group": "g",
            "consumer": "me",
            "claim_idle_ms": None,
            "delete_idle_consumers": 0.1,
            "idle_exit": 0.2,
        }
    )
    result = headwater.run_sync(spec, plugins=broker_plugins())
    assert len(result.output) == 2
    names = {c["name"] for c in redis_client.xinfo_consumers(src, "g")}
    assert names == {b"holder", b"me"}
