"""The NATS JetStream plugin against a real NATS server with JetStream."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

import headwater
from services import broker_plugins, nats_url, unique, until

__all__ = ["nats_url"]

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """nats-py runs on asyncio only."""
    return "asyncio"


class JetStream:
    """A test's connection, and the streams it created (deleted afterwards)."""

    def __init__(self, nc: Any) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.streams: list[str] = []

    async def stream(self, prefix: str = "s") -> tuple[str, str]:
        """Create a stream with a unique name; returns ``(stream, subject)``."""
        name = unique(prefix).replace("-", "_")
        subject = f"{name}.data"
        await self.js.add_stream(name=name, subjects=[f"{name}.>"])
        self.streams.append(name)
        return name, subject

    async def publish(self, subject: str, n: int, start: int = 0) -> None:
        """Publish ``{"n": i}`` for i in start..start+n, waiting for every PubAck."""
        for offset in range(start, start + n, 2000):
            futures = [
                await self.js.publish_async(subject, json.dumps({"n": i}).encode())
                for i in range(offset, min(offset + 2000, start + n))
            ]
            for future in futures:
                await future

    async def ack_pending(self, stream: str, durable: str) -> tuple[int, int]:
        """``(num_ack_pending, num_pending)`` of a consumer."""
        info = await self.js.consumer_info(stream, durable)
        return int(info.num_ack_pending), int(info.num_pending)


@pytest.fixture
async def jetstream(nats_url: str) -> AsyncIterator[JetStream]:
    import nats

    nc = await nats.connect(nats_url)
    js = JetStream(nc)
    try:
        yield js
    finally:
        for name in js.streams:
            with contextlib.suppress(Exception):  # already gone
                await js.js.delete_stream(name)
        await nc.close()


def pipeline(source: dict[str, Any], sink: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": unique("pipe"),
        "sources": {"in": {"action": "nats.jetstream", "params": source}},
        "sinks": [sink or {"sink": "collect"}],
        "checkpoint": {"store": "memory", "every_items": 100, "every_seconds": 0.1},
    }


def test_plugin_imports_without_nats_and_explains_when_used() -> None:
    code = """
import sys
sys.modules["nats"] = None          # as if nats-py were not installed
import headwater
import headwater.builtin_plugins.nats_jetstream as mod
from headwater.core.plugins import PluginManager
pm = PluginManager(strict=True).load()
if "headwater.nats" not in pm.plugins:
    pm.register(mod, "headwater.nats")
result = headwater.run_sync(
    {"name": "p", "sources": {"s": {"action": "nats.jetstream",
     "params": {"stream": "x", "durable": "d"}}}, "sinks": [{"sink": "collect"}],
     "checkpoint": {"store": "memory"}},
    plugins=pm, raise_on_error=False)
print(result.state, result.errors[0])
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "failed" in proc.stdout
    assert "pip install 'headwater[nats]'" in proc.stdout


async def test_consumes_acks_after_commit_and_publishes_with_puback(
    nats_url: str, jetstream: JetStream
) -> None:
    stream, subject = await jetstream.stream("in")
    await jetstream.publish(subject, 2000)
    out_stream = unique("out").replace("-", "_")
    jetstream.streams.append(out_stream)
    spec = pipeline(
        {"url": nats_url, "stream": stream, "durable": "workers", "batch": 250, "idle_exit": 0.5},
        {
            "sink": "nats.jetstream",
            "params": {
                "url": nats_url,
                "subject": f"{out_stream}.x",
                "stream": out_stream,
                "create_stream": True,
            },
        },
    )
    result = await headwater.run(spec, plugins=broker_plugins())
    assert result.output == {"subject": f"{out_stream}.x", "published": 2000}
    assert await jetstream.ack_pending(stream, "workers") == (0, 0)
    info = await jetstream.js.stream_info(out_stream)
    assert info.state.messages == 2000
    sub = await jetstream.js.pull_subscribe(f"{out_stream}.x", durable="check", stream=out_stream)
    got: list[int] = []
    for _ in range(100):
        if len(got) >= 2000:
            break
        for msg in await sub.fetch(1000, timeout=5):
            got.append(json.loads(msg.data)["n"])
            await msg.ack()
    assert got == list(range(2000))


async def test_uncommitted_messages_are_not_acked_when_a_sink_fails(
    nats_url: str, jetstream: JetStream
) -> None:
    stream, subject = await jetstream.stream("in")
    await jetstream.publish(subject, 1000)
    seen: list[int] = []

    @headwater.sink("test.nats_fail_after")
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
    plugins.register(Plugin, "test-nats-fail-after")
    spec = pipeline(
        {"url": nats_url, "stream": stream, "durable": "d", "batch": 100, "ack_wait": 30},
        {"sink": "test.nats_fail_after"},
    )
    result = await headwater.run(spec, plugins=plugins, raise_on_error=False)
    assert result.state == "failed"
    info = await jetstream.js.consumer_info(stream, "d")
    acked = int(info.ack_floor.stream_seq)
    assert 0 < acked <= len(seen), "a message was acknowledged before the sink had it"
    assert int(info.num_ack_pending) + int(info.num_pending) == 1000 - acked


async def test_messages_over_max_deliver_go_to_the_dead_letter_subject(
    nats_url: str, jetstream: JetStream
) -> None:
    stream, subject = await jetstream.stream("in")
    dlq_stream, dlq_subject = await jetstream.stream("dlq")
    await jetstream.js.publish(subject, b'{"n": 1}')  # the poison message
    durable = "d"
    source = {
        "url": nats_url,
        "stream": stream,
        "durable": durable,
        "max_deliver": 2,
        "dead_letter": dlq_subject,
        "idle_exit": 0.5,
    }
    from headwater.builtin_plugins.nats_jetstream import NatsSourceParams, _ensure_consumer

    # the consumer the source would create; the poison message fails twice
    await _ensure_consumer(jetstream.js, NatsSourceParams(**source))
    psub = await jetstream.js.pull_subscribe_bind(durable, stream)
    for _ in range(2):
        [msg] = await psub.fetch(1, timeout=5)
        await msg.nak()
    await psub.unsubscribe()
    await jetstream.js.publish(subject, b'{"n": 0}')
    await jetstream.js.publish(subject, b'{"n": 2}')
    result = await headwater.run(pipeline(source), plugins=broker_plugins())
    assert sorted(item["n"] for item in result.output) == [0, 2]
    dead = await jetstream.js.pull_subscribe(dlq_subject, durable="check", stream=dlq_stream)
    [msg] = await dead.fetch(1, timeout=5)
    assert json.loads(msg.data) == {"n": 1}
    assert msg.headers["Headwater-Subject"] == subject
    assert msg.headers["Headwater-Deliveries"] == "3"
    assert await jetstream.ack_pending(stream, durable) == (0, 0)


async def test_drain_request_ends_the_run_with_everything_acknowledged(
    nats_url: str, jetstream: JetStream
) -> None:
    stream, subject = await jetstream.stream("in")
    await jetstream.publish(subject, 300)
    spec = pipeline({"url": nats_url, "stream": stream, "durable": "d", "batch": 50})
    async with headwater.open_run(spec, plugins=broker_plugins()) as handle:
        stats = handle.stats
        await until(
            lambda: "sinks.collect" in stats and stats["sinks.collect"].items_in >= 300,
            10,
            "the sink to receive every message",
        )
        handle.drain()
        with anyio.fail_after(10):
            result = await handle.wait()
    assert result.state == "succeeded"
    assert len(result.output) == 300
    assert await jetstream.ack_pending(stream, "d") == (0, 0)


async def test_envelope_and_decode(nats_url: str, jetstream: JetStream) -> None:
    stream, subject = await jetstream.stream("in")
    await jetstream.js.publish(subject, b'{"a": 1}')
    base = {"url": nats_url, "stream": stream, "idle_exit": 0.3}
    text = await headwater.run(
        pipeline({**base, "durable": "t", "decode": "text"}), plugins=broker_plugins()
    )
    assert text.output == ['{"a": 1}']
    env = await headwater.run(
        pipeline({**base, "durable": "e", "envelope": True}), plugins=broker_plugins()
    )
    assert env.output == [{"subject": subject, "seq": 1, "deliveries": 1, "data": {"a": 1}}]
