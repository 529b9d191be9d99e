"""Broker outages with real servers the tests start, kill and restart themselves.

* Redis killed for 3 s under two ``headwater worker`` processes: both reconnect and go
  on; nothing is lost; the only duplicates are entries pending at the kill.
* Redis down past a short ``outage_deadline``: the worker exits non-zero and says why.
* The same two for NATS JetStream (whose server may lose the acknowledgements of its
  last moments when killed: those messages come again, nothing read after the outage).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from broker_servers import NatsServer, RedisServer, nats_server, redis_server
from services import headwater_command, plugin_env, stop

__all__ = ["nats_server", "redis_server"]

OUTAGE = 3.0
"""Seconds the broker stays down in the outage tests (the fault itself, not a wait)."""


def wait_for(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll ``predicate`` every 50 ms; fail after ``seconds``."""
    for _ in range(int(seconds / 0.05)):
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {seconds:g}s waiting for {what}")


def show(workers: Workers) -> str:
    """What the workers wrote on stderr (for failure messages)."""
    return "\n".join(f"--- {name}:\n{workers.err(name)[-3000:]}" for name in workers.procs)


def preload(client: Any, stream: str, n: int) -> dict[str, int]:
    """XADD ``{"n": i}`` for i < n (pipelined); returns entry id -> i."""
    ids: dict[str, int] = {}
    for offset in range(0, n, 5000):
        pipe = client.pipeline(transaction=False)
        numbers = range(offset, min(offset + 5000, n))
        for i in numbers:
            pipe.xadd(stream, {"data": json.dumps({"n": i})})
        ids.update((k.decode(), i) for k, i in zip(pipe.execute(), numbers, strict=True))
    return ids


def group_state(client: Any, stream: str, group: str, ids: dict[str, int]) -> tuple[int, int, int]:
    """``(consumers, entries read, pending)`` of a group; zeros before it exists.

    Entries read are counted from the last delivered id (``entries-read`` is not kept
    across an AOF reload by every Redis version)."""
    import redis

    try:
        info = next(g for g in client.xinfo_groups(stream) if g["name"].decode() == group)
        consumers = len(client.xinfo_consumers(stream, group))
    except (redis.ResponseError, StopIteration):
        return 0, 0, 0
    last = info["last-delivered-id"].decode()
    read = ids[last] + 1 if last in ids else 0
    return consumers, read, int(info["pending"])


class Workers:
    """``headwater worker`` processes of one pipeline file, each writing its own jsonl."""

    def __init__(self, tmp_path: Path, source: dict[str, Any], rate: float | None) -> None:
        self.tmp = tmp_path
        spec: dict[str, Any] = {
            "name": "faults",
            "sources": {"in": source},
            "sinks": [{"sink": "jsonl", "params": {"path": "out.jsonl"}}],
            "checkpoint": {"store": "memory", "every_seconds": 0.2},
        }
        if rate is not None:
            spec["steps"] = [{"transformer": "throttle", "params": {"rate": rate, "burst": 50}}]
        self.path = tmp_path / "pipeline.yaml"
        self.path.write_text(json.dumps(spec), encoding="utf-8")
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *extra: str) -> subprocess.Popen[bytes]:
        args = ["worker", str(self.path), f"--set=sinks.0.params.path={name}.jsonl", *extra]
        with open(self.tmp / f"{name}.err", "ab") as err:
            proc = subprocess.Popen(
                headwater_command(*args),
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=plugin_env(self.tmp),
                cwd=self.tmp,
            )
        self.procs[name] = proc
        return proc

    def err(self, name: str) -> str:
        return (self.tmp / f"{name}.err").read_text(errors="replace")

    def out(self, name: str) -> list[int]:
        path = self.tmp / f"{name}.jsonl"
        if not path.exists():
            return []
        lines = path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line)["n"] for line in lines if line.endswith("}")]

    def terminate(self) -> None:
        """SIGTERM every live worker: each drains and exits 0."""
        live = {n: p for n, p in self.procs.items() if p.poll() is None}
        for proc in live.values():
            proc.send_signal(signal.SIGTERM)
        for name, proc in live.items():
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pytest.fail(f"worker {name} did not exit within 30 s of SIGTERM")
            assert code == 0, f"worker {name} exited with {code}:\n{self.err(name)}"

    def stop_all(self) -> None:
        for proc in self.procs.values():
            stop(proc)


def test_redis_killed_for_three_seconds_under_two_workers(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    n = 12_000
    client = redis_server.client()
    ids = preload(client, "jobs", n)
    source = {
        "action": "redis.stream",
        "params": {
            "url": redis_server.url,
            "stream": "jobs",
            "group": "g",
            "batch": 100,
            "block_ms": 100,
            "claim_idle_ms": None,  # only the outage may explain a redelivery
        },
    }
    workers = Workers(tmp_path, source, rate=1500)
    lost = f"connection to {redis_server.url} lost"
    back = f"reconnected to {redis_server.url}"
    try:
        for name in ("a", "b"):
            workers.start(name)
        wait_for(
            lambda: group_state(client, "jobs", "g", ids)[:2] >= (2, 2000),
            60,
            "both workers to read",
        )
        consumers = sorted(c["name"].decode() for c in client.xinfo_consumers("jobs", "g"))
        client.close()
        redis_server.kill()
        killed_at = time.monotonic()
        wait_for(lambda: all(lost in workers.err(w) for w in "ab"), 30, "both to see the loss")
        probe = redis_server.probe()
        try:
            seen = probe.client()
            pending = {
                r["message_id"].decode() for r in seen.xpending_range("jobs", "g", "-", "+", n)
            }
            read_at_kill = group_state(seen, "jobs", "g", ids)[1]
            seen.close()
        finally:
            probe.kill()
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - killed_at)))
        redis_server.start()
        wait_for(lambda: all(back in workers.err(w) for w in "ab"), 30, "both to reconnect")
        client = redis_server.client()
        wait_for(
            lambda: group_state(client, "jobs", "g", ids)[1:] == (n, 0),
            90,
            "every entry read and acknowledged",
        )
        workers.terminate()
    finally:
        workers.stop_all()
    outputs = {w: workers.out(w) for w in "ab"}
    counts = Counter(i for out in outputs.values() for i in out)
    assert set(counts) == set(range(n)), f"lost: {sorted(set(range(n)) - set(counts))[:10]}"
    duplicates = {i for i, c in counts.items() if c > 1}
    pending_numbers = {ids[p] for p in pending}
    assert duplicates <= pending_numbers, sorted(duplicates - pending_numbers)[:10]
    assert max(counts.values()) <= 2
    for w, out in outputs.items():  # both went on after the outage
        assert any(i >= read_at_kill for i in out), f"worker {w} wrote nothing new after it"
        assert workers.err(w).count(lost) == 1, "one line per change of state"
    # default names, leased: two live workers never share one
    assert len(set(consumers)) == 2
    print(
        f"redis outage: {len(pending)} entries pending at the kill, "
        f"{len(duplicates)} written twice, {sum(counts.values())} lines for {n}"
    )


def test_redis_down_past_the_deadline_fails_the_worker(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    client = redis_server.client()
    preload(client, "jobs", 500)
    client.close()
    source = {
        "action": "redis.stream",
        "params": {
            "url": redis_server.url,
            "stream": "jobs",
            "group": "g",
            "block_ms": 100,
            "outage_deadline": 1.5,
        },
    }
    workers = Workers(tmp_path, source, rate=None)
    try:
        proc = workers.start("a")
        wait_for(lambda: len(workers.out("a")) == 500, 60, "the worker to write everything")
        redis_server.kill()
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the worker did not give up after its outage deadline")
    finally:
        workers.stop_all()
    err = workers.err("a")
    assert code == 1, err
    assert f"{redis_server.url} unreachable for" in err
    assert "longer than the outage deadline (1.5s" in err


async def _nats_publish(url: str, stream: str, n: int) -> None:
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"{stream}.>"])
        for offset in range(0, n, 2000):
            futures = [
                await js.publish_async(f"{stream}.work", json.dumps({"n": i}).encode())
                for i in range(offset, min(offset + 2000, n))
            ]
            for future in futures:
                await future
    finally:
        await nc.close()


async def _nats_consumer(url: str, stream: str, durable: str) -> tuple[int, int, int]:
    """``(num_ack_pending, num_pending, last stream sequence delivered)``."""
    import nats

    nc = await nats.connect(url, allow_reconnect=False)
    try:
        info = await nc.jetstream().consumer_info(stream, durable)
        delivered = int(info.delivered.stream_seq or 0)
        return int(info.num_ack_pending), int(info.num_pending), delivered
    finally:
        await nc.close()


def test_nats_killed_for_three_seconds_under_two_workers(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    import anyio

    n = 12_000
    anyio.run(_nats_publish, nats_server.url, "JOBS", n)
    source = {
        "action": "nats.jetstream",
        "params": {
            "url": nats_server.url,
            "stream": "JOBS",
            "durable": "g",
            "batch": 100,
            "fetch_timeout": 0.2,
            "ack_wait": 10,  # far above the time a batch takes to commit
        },
    }
    workers = Workers(tmp_path, source, rate=1500)
    lost = f"connection to {nats_server.url} lost"
    back = f"reconnected to {nats_server.url}"
    try:
        for name in ("a", "b"):
            workers.start(name)
        wait_for(lambda: all(len(workers.out(w)) >= 500 for w in "ab"), 60, "both workers to write")
        # Stop the workers while the server dies, to know what it had delivered.
        for proc in workers.procs.values():
            proc.send_signal(signal.SIGSTOP)
        delivered = anyio.run(_nats_consumer, nats_server.url, "JOBS", "g")[2]
        nats_server.kill()
        killed_at = time.monotonic()
        for proc in workers.procs.values():
            proc.send_signal(signal.SIGCONT)
        written_at_kill = {w: len(workers.out(w)) for w in "ab"}
        wait_for(lambda: all(lost in workers.err(w) for w in "ab"), 30, "both to see the loss")
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - killed_at)))
        nats_server.start()
        wait_for(lambda: all(back in workers.err(w) for w in "ab"), 60, "both to reconnect")

        def done() -> bool:
            try:
                return anyio.run(_nats_consumer, nats_server.url, "JOBS", "g")[:2] == (0, 0)
            except Exception:
                return False

        wait_for(
            lambda: len(set(workers.out("a")) | set(workers.out("b"))) >= n and done(),
            90,
            "every message written and acknowledged",
        )
        workers.terminate()
    finally:
        workers.stop_all()
    outputs = {w: workers.out(w) for w in "ab"}
    counts = Counter(i for out in outputs.values() for i in out)
    assert set(counts) == set(range(n))
    for w, out in outputs.items():
        assert len(out) > written_at_kill[w], f"worker {w} wrote nothing after the outage"
    # A server killed with SIGKILL may lose what it recorded in its last moments
    # (JetStream writes consumer state lazily): deliveries and acknowledgements, so
    # those messages come again. Nothing delivered after the outage may come twice.
    twice = {i for i, c in counts.items() if c > 1}
    assert all(i < delivered for i in twice), sorted(i for i in twice if i >= delivered)[:10]
    assert max(counts.values()) <= 2
    print(f"nats outage: {len(twice)} of the {delivered} messages delivered before the kill twice")


def test_nats_down_past_the_deadline_fails_the_worker(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    import anyio

    anyio.run(_nats_publish, nats_server.url, "JOBS", 300)
    source = {
        "action": "nats.jetstream",
        "params": {
            "url": nats_server.url,
            "stream": "JOBS",
            "durable": "g",
            "fetch_timeout": 0.2,
            "outage_deadline": 1.5,
        },
    }
    workers = Workers(tmp_path, source, rate=None)
    try:
        proc = workers.start("a")
        wait_for(lambda: len(workers.out("a")) == 300, 60, "the worker to write everything")
        nats_server.kill()
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the worker did not give up after its outage deadline")
    finally:
        workers.stop_all()
    err = workers.err("a")
    assert code == 1, err
    assert f"{nats_server.url} unreachable for" in err
    assert "longer than the outage deadline (1.5s" in err
