"""The AMQP plugin against a real RabbitMQ: the consumer source (prefetch window, ack
after commit, requeue or dead-letter, redelivery counting) and the publisher-confirm
sink."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import headwater
from connector_services import amqp_url
from services import unique

__all__ = ["amqp_url"]


class Rabbit:
    """Test-side access to the broker (its own connection per call); every queue and
    exchange it made or named is deleted at the end."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.queues: list[str] = []
        self.exchanges: list[str] = []

    def _run(self, fn: Callable[[Any], Any]) -> Any:
        import aio_pika

        async def main() -> Any:
            conn = await aio_pika.connect(self.url)
            try:
                return await fn(await conn.channel())
            finally:
                await conn.close()

        return asyncio.run(main())

    def queue(self, prefix: str = "q") -> str:
        name = unique(prefix)
        self.queues.append(name)
        return name

    def dead_letter_queue(self) -> tuple[str, str]:
        """A fanout exchange and the queue bound to it: ``(exchange, queue)``."""
        exchange, queue = unique("dlx"), self.queue("dlq")
        self.exchanges.append(exchange)

        async def make(ch: Any) -> None:
            ex = await ch.declare_exchange(exchange, "fanout", durable=True)
            q = await ch.declare_queue(queue, durable=True)
            await q.bind(ex)

        self._run(make)
        return exchange, queue

    def publish(self, queue: str, items: list[Any]) -> None:
        import aio_pika

        async def send(ch: Any) -> None:
            for item in items:
                body = json.dumps(item).encode()
                await ch.default_exchange.publish(aio_pika.Message(body), routing_key=queue)

        self._run(send)

    def drain(self, queue: str) -> list[Any]:
        """Every message now in ``queue`` (acknowledged: removed)."""

        async def take(ch: Any) -> list[Any]:
            q = await ch.declare_queue(queue, passive=True)
            out = []
            while (msg := await q.get(fail=False)) is not None:
                out.append(json.loads(msg.body))
                await msg.ack()
            return out

        return list(self._run(take))

    def count(self, queue: str) -> int:
        async def count(ch: Any) -> int:
            q = await ch.declare_queue(queue, passive=True)
            return int(q.declaration_result.message_count)

        return int(self._run(count))

    def cleanup(self) -> None:
        async def delete(ch: Any) -> None:
            for name in self.queues:
                await ch.queue_delete(name)
            for name in self.exchanges:
                await ch.exchange_delete(name)

        self._run(delete)


@pytest.fixture
def rabbit(amqp_url: str) -> Iterator[Rabbit]:
    broker = Rabbit(amqp_url)
    try:
        yield broker
    finally:
        broker.cleanup()


def pipeline(source: dict[str, Any], sink: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": unique("pipe"),
        "sources": {"in": {"action": "amqp", "params": source}},
        "sinks": [sink or {"sink": "collect"}],
        "checkpoint": {"store": "memory", "every_items": 100, "every_seconds": 0.1},
    }


def fail_after(limit: int, seen: list[Any]) -> headwater.PluginManager:
    """Plugins with ``test.fail_after``: a sink keeping items until it holds ``limit``."""

    @headwater.sink("test.fail_after")
    def sink(batch: list[Any]) -> None:
        for item in batch:
            if len(seen) >= limit:
                raise RuntimeError("sink down")
            seen.append(item)

    class Plugin:
        @headwater.hookimpl
        def register_sinks(self, register: Any) -> None:
            register(sink)

    pm = headwater.PluginManager(strict=True).load()
    pm.register(Plugin(), "test-fail-after")
    return pm


def test_plugin_imports_without_aio_pika_and_explains_when_used() -> None:
    code = """
import sys
sys.modules["aio_pika"] = None
import headwater
result = headwater.run_sync(
    {"name": "p", "sources": {"s": {"action": "amqp", "params": {"queue": "q"}}},
     "sinks": [{"sink": "collect"}], "checkpoint": {"store": "memory"}}, raise_on_error=False)
print(result.state, result.errors[0])
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'headwater[amqp]'" in proc.stdout


def test_confirmed_publish_then_consume_everything_once(amqp_url: str, rabbit: Rabbit) -> None:
    queue, out = rabbit.queue(), rabbit.queue("out")
    spec = {
        "name": unique("pub"),
        "sources": {"n": {"action": "range", "params": {"stop": 3000}}},
        "steps": [{"transformer": "map", "params": {"expr": "{'n': item}"}}],
        "sinks": [
            {
                "sink": "amqp",
                "params": {"url": amqp_url, "routing_key": queue, "declare_queue": queue},
            }
        ],
    }
    published = headwater.run_sync(spec)
    assert published.output == {"exchange": "", "routing_key": queue, "published": 3000}
    assert rabbit.count(queue) == 3000  # confirmed: in the queue when write returned
    consume = pipeline(
        {"url": amqp_url, "queue": queue, "prefetch": 500, "batch": 200, "idle_exit": 0.5},
        {"sink": "amqp", "params": {"url": amqp_url, "routing_key": out, "declare_queue": out}},
    )
    result = headwater.run_sync(consume)
    assert result.output["published"] == 3000
    assert [m["n"] for m in rabbit.drain(out)] == list(range(3000))
    assert rabbit.count(queue) == 0  # every message acknowledged
    assert headwater.run_sync(consume).output["published"] == 0


def test_uncommitted_messages_are_requeued_and_delivered_again(
    amqp_url: str, rabbit: Rabbit
) -> None:
    queue = rabbit.queue()
    source = {"url": amqp_url, "queue": queue, "prefetch": 200, "batch": 50, "idle_exit": 0.5}
    # declare (quorum) through the source first, then fill it
    assert headwater.run_sync(pipeline(source)).output == []
    rabbit.publish(queue, [{"n": i} for i in range(1000)])
    seen: list[Any] = []
    failed = headwater.run_sync(
        pipeline(source, {"sink": "test.fail_after"}),
        plugins=fail_after(450, seen),
        raise_on_error=False,
    )
    assert failed.state == "failed"
    again = headwater.run_sync(pipeline(source))
    got = [m["n"] for m in seen] + [m["n"] for m in again.output]
    assert set(got) == set(range(1000))  # nothing lost
    duplicates = len(got) - 1000
    assert 0 <= duplicates <= source["prefetch"]  # at most the window again
    redelivered = [m["n"] for m in again.output if m["n"] in {s["n"] for s in seen}]
    assert len(redelivered) == duplicates


def test_poison_messages_go_to_the_dead_letter_exchange(amqp_url: str, rabbit: Rabbit) -> None:
    queue = rabbit.queue()
    dlx, dlq = rabbit.dead_letter_queue()
    source = {
        "url": amqp_url,
        "queue": queue,
        "dead_letter_exchange": dlx,
        "max_deliver": 2,
        "prefetch": 10,
        "batch": 10,
        "idle_exit": 0.5,
        "envelope": True,
    }
    assert headwater.run_sync(pipeline(source)).output == []
    rabbit.publish(queue, [{"n": 0}])
    deliveries = []
    for _ in range(2):  # each run fails on it: returned to the queue, counted
        seen: list[Any] = []
        result = headwater.run_sync(
            pipeline(source, {"sink": "test.fail_after"}),
            plugins=fail_after(0, seen),
            raise_on_error=False,
        )
        assert result.state == "failed"
    third = headwater.run_sync(pipeline(source))
    assert third.output == []  # delivered a third time: over max_deliver, dead-lettered
    assert rabbit.drain(dlq) == [{"n": 0}]
    assert rabbit.count(queue) == 0
    rabbit.publish(queue, [{"n": 1}])
    [envelope] = headwater.run_sync(pipeline(source)).output
    deliveries.append(envelope["deliveries"])
    assert envelope["data"] == {"n": 1}
    assert envelope["routing_key"] == queue
    assert deliveries == [1]


def test_on_failure_dead_letter_rejects_what_the_run_did_not_commit(
    amqp_url: str, rabbit: Rabbit
) -> None:
    queue = rabbit.queue()
    dlx, dlq = rabbit.dead_letter_queue()
    source = {
        "url": amqp_url,
        "queue": queue,
        "dead_letter_exchange": dlx,
        "on_failure": "dead_letter",
        "prefetch": 1000,
        "batch": 100,
        "idle_exit": 0.5,
    }
    assert headwater.run_sync(pipeline(source)).output == []
    rabbit.publish(queue, [{"n": i} for i in range(500)])
    seen: list[Any] = []
    result = headwater.run_sync(
        pipeline(source, {"sink": "test.fail_after"}),
        plugins=fail_after(250, seen),
        raise_on_error=False,
    )
    assert result.state == "failed"
    dead = [m["n"] for m in rabbit.drain(dlq)]
    rest = [m["n"] for m in headwater.run_sync(pipeline(source)).output]
    committed = {m["n"] for m in seen} - set(dead) - set(rest)
    assert dead  # what the failed run held went to the dead-letter queue
    assert sorted(set(dead) | set(rest) | committed) == list(range(500))  # nothing lost
    assert not set(dead) & set(rest)


def test_an_unroutable_message_fails_the_batch(amqp_url: str) -> None:
    spec = {
        "name": unique("pub"),
        "sources": {"n": {"action": "range", "params": {"stop": 3}}},
        "sinks": [{"sink": "amqp", "params": {"url": amqp_url, "routing_key": unique("none")}}],
    }
    result = headwater.run_sync(spec, raise_on_error=False)
    assert result.state == "failed"
    assert "reply_text='NO_ROUTE'" in str(result.errors[0])


def test_refused_credentials_fail_at_once(amqp_url: str) -> None:
    bad = amqp_url.replace("guest:guest@", "guest:wrong@")
    spec = pipeline({"url": bad, "queue": unique("q"), "idle_exit": 0.2})
    result = headwater.run_sync(spec, raise_on_error=False)
    assert result.state == "failed"
    assert "ACCESS_REFUSED" in str(result.errors[0])  # not retried until the outage deadline
