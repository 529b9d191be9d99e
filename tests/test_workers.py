"""``headwater worker`` processes sharing one stream: SIGKILL loses nothing, SIGTERM drains.

Three worker processes consume 100,000 messages (Redis Streams, then NATS JetStream);
one is SIGKILLed midway. In the end every message was written at least once, and every
duplicate is a message the killed worker had received and not yet acknowledged (it had
not been committed by every sink when the worker died). Each worker writes to its own
Redis output stream, in the order it received the messages.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services import (
    headwater_command,
    nats_url,
    plugin_env,
    redis_client,
    redis_url,
    stop,
    unique,
)

__all__ = ["nats_url", "redis_client", "redis_url"]

N = 100_000
WORKERS = ("w1", "w2", "w3")
KILLED = "w2"
CLAIM_IDLE_MS = 4000
"""Far above the workers' commit latency (checkpoints every 0.2 s): only a dead worker's
entries are ever reclaimed."""


def wait_for(
    predicate: Callable[[], bool],
    seconds: float,
    what: str,
    state: Callable[[], str] | None = None,
) -> None:
    """Poll ``predicate`` every 50 ms; fail after ``seconds`` (saying ``state()``)."""
    for _ in range(int(seconds / 0.05)):
        if predicate():
            return
        time.sleep(0.05)
    detail = f" ({state()})" if state is not None else ""
    pytest.fail(f"timed out after {seconds:g}s waiting for {what}{detail}")


def preload_redis(client: Any, stream: str, n: int) -> dict[bytes, int]:
    """XADD ``{"n": i}`` for i < n (pipelined); returns entry id -> i."""
    ids: dict[bytes, int] = {}
    for offset in range(0, n, 10_000):
        pipe = client.pipeline(transaction=False)
        numbers = range(offset, min(offset + 10_000, n))
        for i in numbers:
            pipe.xadd(stream, {"data": json.dumps({"n": i})})
        ids.update(zip(pipe.execute(), numbers, strict=True))
    return ids


def outputs(client: Any, prefix: str) -> dict[str, list[int]]:
    """Worker -> the message numbers it wrote, in order."""
    return {
        w: [json.loads(f[b"data"])["n"] for _, f in client.xrange(f"{prefix}-{w}")] for w in WORKERS
    }


def written(client: Any, prefix: str) -> int:
    return sum(int(client.xlen(f"{prefix}-{w}")) for w in WORKERS)


def start_workers(
    tmp_path: Path, source: dict[str, Any], out: str, redis: str, *extra: str
) -> dict[str, subprocess.Popen[bytes]]:
    """Write the pipeline file and start one ``headwater worker`` per name."""
    spec = {
        "name": "worker-test",
        "sources": {"in": source},
        "sinks": [{"sink": "redis.stream", "params": {"url": redis, "stream": out}}],
        "checkpoint": {"store": "memory", "every_items": 2000, "every_seconds": 0.2},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(json.dumps(spec), encoding="utf-8")  # JSON is YAML
    env = plugin_env(tmp_path)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    for name in WORKERS:
        args = [
            "worker",
            str(path),
            "--consumer",
            name,
            f"--set=sinks.0.params.stream={out}-{name}",
        ]
        with open(tmp_path / f"{name}.err", "wb") as err:
            procs[name] = subprocess.Popen(
                headwater_command(*args, *extra),
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
                cwd=tmp_path,
            )
    return procs


def terminate(procs: dict[str, subprocess.Popen[bytes]], tmp_path: Path) -> None:
    """SIGTERM every live worker; each must drain and exit 0 within 20 s."""
    live = {name: p for name, p in procs.items() if p.poll() is None}
    for proc in live.values():
        proc.send_signal(signal.SIGTERM)
    for name, proc in live.items():
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker {name} did not exit within 20 s of SIGTERM")
        err = (tmp_path / f"{name}.err").read_text(errors="replace")
        assert code == 0, f"worker {name} exited with {code}:\n{err}"
        assert "draining" in err


def check_duplicates(
    out: dict[str, list[int]], unacked_of_killed: set[int]
) -> tuple[int, Counter[int]]:
    """Every message at least once; duplicates only among the killed worker's unacked."""
    counts = Counter(n for numbers in out.values() for n in numbers)
    missing = set(range(N)) - set(counts)
    assert not missing, f"{len(missing)} messages lost, e.g. {sorted(missing)[:5]}"
    dups = Counter({n: c for n, c in counts.items() if c > 1})
    assert max(dups.values(), default=1) <= 2
    stray = set(dups) - unacked_of_killed
    assert not stray, (
        f"{len(stray)} duplicates were not pending for the killed worker, e.g. {sorted(stray)[:5]}"
    )
    return sum(counts.values()), dups


def test_three_redis_workers_one_killed(tmp_path: Path, redis_url: str, redis_client: Any) -> None:
    started = time.monotonic()
    stream, out = unique("work"), unique("out")
    ids = preload_redis(redis_client, stream, N)
    source = {
        "action": "redis.stream",
        "params": {
            "url": redis_url,
            "stream": stream,
            "group": "workers",
            "batch": 500,
            "claim_idle_ms": CLAIM_IDLE_MS,
            "claim_interval": 0.5,
        },
    }
    procs = start_workers(tmp_path, source, out, redis_url)
    try:
        wait_for(
            lambda: (
                written(redis_client, out) >= N // 3 and redis_client.xlen(f"{out}-{KILLED}") > 0
            ),
            60,
            "a third of the messages",
        )
        procs[KILLED].kill()
        procs[KILLED].wait(timeout=10)
        pending = redis_client.xpending_range(stream, "workers", "-", "+", N, KILLED)
        unacked = {ids[p["message_id"]] for p in pending}
        wait_for(
            lambda: written(redis_client, out) >= N,
            90,
            "every message to be written",
            lambda: (
                f"written {written(redis_client, out)}, group "
                f"{redis_client.xinfo_groups(stream)}, consumers "
                f"{redis_client.xinfo_consumers(stream, 'workers')}"
            ),
        )
        wait_for(
            lambda: int(redis_client.xpending(stream, "workers")["pending"]) == 0,
            20,
            "every entry to be acknowledged",
        )
        terminate(procs, tmp_path)
    finally:
        for proc in procs.values():
            stop(proc)
    total, dups = check_duplicates(outputs(redis_client, out), unacked)
    assert int(redis_client.xpending(stream, "workers")["pending"]) == 0
    print(
        f"redis: {total:,} writes for {N:,} messages, {len(dups)} duplicates, "
        f"{len(unacked)} entries pending for the killed worker, "
        f"{time.monotonic() - started:.1f}s"
    )


ACKED = re.compile(rb"acknowledged \d+ messages \((\d+) in all\)")


async def _nats_stream(url: str, name: str, n: int) -> None:
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=name, subjects=[f"{name}.>"])
        for offset in range(0, n, 5000):
            futures = [
                await js.publish_async(f"{name}.work", json.dumps({"n": i}).encode())
                for i in range(offset, min(offset + 5000, n))
            ]
            for future in futures:
                await future
    finally:
        await nc.close()


async def _nats_consumer(url: str, stream: str, durable: str) -> tuple[int, int]:
    import nats

    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().consumer_info(stream, durable)
        return int(info.num_ack_pending), int(info.num_pending)
    finally:
        await nc.close()


async def _nats_delete(url: str, stream: str) -> None:
    import nats

    nc = await nats.connect(url)
    try:
        await nc.jetstream().delete_stream(stream)
    finally:
        await nc.close()


def test_three_nats_workers_one_killed(
    tmp_path: Path, nats_url: str, redis_url: str, redis_client: Any
) -> None:
    import anyio

    started = time.monotonic()
    stream, out = unique("work").replace("-", "_"), unique("out")
    anyio.run(_nats_stream, nats_url, stream, N)
    source = {
        "action": "nats.jetstream",
        "params": {
            "url": nats_url,
            "stream": stream,
            "durable": "workers",
            "batch": 500,
            "ack_wait": CLAIM_IDLE_MS / 1000,
        },
    }
    # -vv: the workers log each acknowledgement (the killed one's last line counts)
    procs = start_workers(tmp_path, source, out, redis_url, "-vv")
    try:
        wait_for(
            lambda: (
                written(redis_client, out) >= N // 3 and redis_client.xlen(f"{out}-{KILLED}") > 0
            ),
            60,
            "a third of the messages",
        )
        procs[KILLED].kill()
        procs[KILLED].wait(timeout=10)
        # What the killed worker wrote after its last acknowledgement (a lower bound of
        # what it acknowledged: the log line comes after the ack) may come again.
        log = (tmp_path / f"{KILLED}.err").read_bytes()
        acked = [int(m) for m in ACKED.findall(log)]
        acked_total = acked[-1] if acked else 0
        killed_out = outputs(redis_client, out)[KILLED]
        assert acked_total <= len(killed_out)
        unacked = set(killed_out[acked_total:])
        wait_for(
            lambda: written(redis_client, out) >= N,
            90,
            "every message to be written",
            lambda: (
                f"written {written(redis_client, out)}, consumer (ack pending, pending) "
                f"{anyio.run(_nats_consumer, nats_url, stream, 'workers')}"
            ),
        )
        wait_for(
            lambda: anyio.run(_nats_consumer, nats_url, stream, "workers") == (0, 0),
            30,
            "every message to be acknowledged",
        )
        terminate(procs, tmp_path)
    finally:
        for proc in procs.values():
            stop(proc)
        anyio.run(_nats_delete, nats_url, stream)
    total, dups = check_duplicates(outputs(redis_client, out), unacked)
    print(
        f"nats: {total:,} writes for {N:,} messages, {len(dups)} duplicates, "
        f"{len(killed_out) - acked_total} written and unacknowledged by the killed worker, "
        f"{time.monotonic() - started:.1f}s"
    )


def test_sigterm_drains_and_leaves_nothing_pending(
    tmp_path: Path, redis_url: str, redis_client: Any
) -> None:
    stream, out = unique("work"), unique("out")
    preload_redis(redis_client, stream, 20_000)
    source = {
        "action": "redis.stream",
        "params": {"url": redis_url, "stream": stream, "group": "g", "batch": 200},
    }
    spec = {
        "name": "drain-test",
        "sources": {"in": source},
        "steps": [{"transformer": "throttle", "params": {"rate": 4000, "burst": 200}}],
        "sinks": [{"sink": "redis.stream", "params": {"url": redis_url, "stream": out}}],
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(json.dumps(spec), encoding="utf-8")
    proc = subprocess.Popen(
        headwater_command("worker", str(path), "--consumer", "solo", "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=plugin_env(tmp_path),
        cwd=tmp_path,
    )
    try:
        wait_for(lambda: redis_client.xlen(out) > 0, 30, "the first writes")
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        stop(proc)
    assert proc.returncode == 0, stderr.decode(errors="replace")
    summary = json.loads(stdout)
    assert summary["drained"] is True
    assert int(redis_client.xpending(stream, "g")["pending"]) == 0
    consumers = {c["name"]: c for c in redis_client.xinfo_consumers(stream, "g")}
    assert consumers[b"solo"]["pending"] == 0
    read = int(redis_client.xinfo_groups(stream)[0]["entries-read"] or 0)
    assert 0 < read < 20_000, "the worker read everything before SIGTERM: no drain tested"
    assert redis_client.xlen(out) == read  # what it read, it wrote, and acknowledged


def test_a_restarted_worker_takes_its_name_back_and_reads_its_pending_first(
    tmp_path: Path, redis_url: str, redis_client: Any
) -> None:
    stream = unique("work")
    ids = preload_redis(redis_client, stream, 3000)
    spec = {
        "name": "restart-test",
        "sources": {
            "in": {
                "action": "redis.stream",
                "params": {
                    "url": redis_url,
                    "stream": stream,
                    "group": "g",
                    "batch": 100,
                    "claim_idle_ms": None,  # only its own restart may deliver them again
                },
            }
        },
        "steps": [{"transformer": "throttle", "params": {"rate": 1000, "burst": 50}}],
        "sinks": [{"sink": "jsonl", "params": {"path": "first.jsonl"}}],
        "checkpoint": {"store": "memory", "every_seconds": 0.2},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(json.dumps(spec), encoding="utf-8")
    env = plugin_env(tmp_path)
    env.pop("HEADWATER_CONSUMER", None)

    def worker(out: str) -> subprocess.Popen[bytes]:
        with open(tmp_path / f"{out}.err", "wb") as err:
            return subprocess.Popen(
                headwater_command("worker", str(path), f"--set=sinks.0.params.path={out}.jsonl"),
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
                cwd=tmp_path,
            )

    def lines(out: str) -> list[int]:
        file = tmp_path / f"{out}.jsonl"
        text = file.read_text(encoding="utf-8") if file.exists() else ""
        return [json.loads(line)["n"] for line in text.splitlines() if line.endswith("}")]

    def consumers() -> dict[bytes, int]:
        try:
            infos = redis_client.xinfo_consumers(stream, "g")
        except Exception:
            return {}
        return {c["name"]: int(c["pending"]) for c in infos}

    first = worker("first")
    second: subprocess.Popen[bytes] | None = None
    try:
        wait_for(
            lambda: len(lines("first")) >= 300 and sum(consumers().values()) > 0,
            60,
            "the first worker to write and hold entries",
        )
        first.kill()
        first.wait(timeout=10)
        ((name, held),) = consumers().items()
        rows = redis_client.xpending_range(stream, "g", "-", "+", 3000, name)
        pending = [ids[r["message_id"]] for r in rows]
        assert len(pending) == held > 0
        second = worker("second")
        wait_for(lambda: len(lines("second")) >= len(pending), 60, "the pending entries")
        assert list(consumers()) == [name], "the restarted worker took another name"
        assert lines("second")[: len(pending)] == pending
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=20) == 0
    finally:
        stop(first)
        if second is not None:
            stop(second)
    assert name.decode().rsplit("-", 1)[1] == "0"
