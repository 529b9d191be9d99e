"""``workers``: messages per second through ``headwater worker`` processes, against
hand-written consumer loops measured in the same run.

**Redis Streams.** The workers share one stream through a consumer group
(``redis.stream`` source, ``jsonl`` sink, checkpoints every 50 ms so acknowledgements
follow promptly). To time the consumption and not the start-up of the processes, the
stream is filled *before* the group can see it: the group is created at ``$`` (after the
last entry), every consumer is started and has joined the group, and only then is the
group's position moved to the start (``XGROUP SETID 0``) and one more entry added to wake
the blocked readers. The clock runs from there until the group has read every entry and
has none pending (every entry acknowledged after the sink committed it). The
hand-written loop (``XREADGROUP COUNT 500`` / write the JSON lines / ``XACK``, with
redis-py) is a process of its own timed the same way.

**NATS JetStream.** A durable pull consumer cannot be moved back, so the clock starts
at the consumer's first delivery (the consumer's info is polled every 5 ms) and stops
once every message is acknowledged. The hand-written loop is ``fetch(500)`` / write /
``ack`` each message, with nats-py.

Both loops parse each message's JSON and write it back as one compact JSON line, as the
worker's ``jsonl`` sink does: the same work. Rows alternate within each round (see the
harness); the ratios in the notes are medians of per-round ratios. The workers are
stopped with SIGTERM (a drain: they must exit 0).

Needs the servers (``HEADWATER_REDIS_URL``, default ``redis://127.0.0.1:6379``;
``HEADWATER_NATS_URL``, default ``nats://127.0.0.1:4222``) and their client packages;
without them the rows are skipped with the reason.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..harness import (
    Column,
    Implementation,
    Measured,
    Sample,
    ScenarioReport,
    Settings,
    TargetResult,
    available,
    fmt_count,
    fmt_rate,
    fmt_seconds,
    measure,
)
from ..procs import child_env
from . import Progress

TITLE = "messages/s through `headwater worker` processes and hand-written consumer loops"
DESCRIPTION = (
    "Redis Streams consumer group and NATS JetStream durable consumer, N small JSON "
    "messages written as JSON lines, ack after commit: 1, 2 and 3 Redis workers and 1 "
    "NATS worker against a hand-written redis-py / nats-py loop in the same run "
    "(start-up not counted)."
)

REDIS_URL = os.environ.get("HEADWATER_REDIS_URL", "redis://127.0.0.1:6379")
NATS_URL = os.environ.get("HEADWATER_NATS_URL", "nats://127.0.0.1:4222")
FULL_N = 200_000
QUICK_N = 20_000
WORKER_COUNTS = (1, 2, 3)
START_TIMEOUT = 120.0
"""Seconds the consumers may take to join, and the consumption to finish."""
TARGET_RATIO = 0.9
"""One worker must reach this share of the hand-written loop's rate."""

WORKER_COMMAND = (sys.executable, "-m", "headwater", "worker")
ENTRY_POINTS = (
    "[headwater]\n"
    "headwater.redis = headwater.builtin_plugins.redis_streams\n"
    "headwater.nats = headwater.builtin_plugins.nats_jetstream\n"
)
METADATA = "Metadata-Version: 2.1\nName: headwater-bench-brokers\nVersion: 0.0.0\n"

REDIS_LOOP = """
import json, sys, redis
url, stream, out = sys.argv[1:4]
r = redis.Redis.from_url(url)
r.xgroup_createconsumer(stream, "bench", "hand")
with open(out, "w", encoding="utf-8") as f:
    while True:
        reply = r.xreadgroup("bench", "hand", {stream: ">"}, count=500, block=100)
        if not reply:
            continue
        entries = reply[0][1]
        f.write("".join(json.dumps(json.loads(fields[b"data"]), separators=(",", ":")) + "\\n"
                        for _, fields in entries))
        f.flush()
        r.xack(stream, "bench", *[entry_id for entry_id, _ in entries])
"""
"""The hand-written Redis consumer: read 500, write them, acknowledge them, forever."""

NATS_LOOP = """
import asyncio, json, sys, nats
async def main(url, stream, out):
    nc = await nats.connect(url)
    sub = await nc.jetstream().pull_subscribe_bind("bench", stream)
    with open(out, "w", encoding="utf-8") as f:
        while True:
            try:
                msgs = await sub.fetch(500, timeout=0.5)
            except TimeoutError:
                continue
            f.write("".join(json.dumps(json.loads(m.data), separators=(",", ":")) + "\\n"
                            for m in msgs))
            f.flush()
            for m in msgs:
                await m.ack()
asyncio.run(main(*sys.argv[1:4]))
"""
"""The hand-written JetStream consumer: fetch 500, write them, ack each, forever."""


def _reachable(url: str, default_port: int, what: str) -> str | None:
    import socket

    parts = urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or default_port)
    try:
        with socket.create_connection(address, 2):
            return None
    except OSError as exc:
        return f"no {what} server at {url} ({exc.strerror or exc})"


def _declared() -> bool:
    from importlib.metadata import entry_points

    return "headwater.redis" in {ep.name for ep in entry_points(group="headwater")}


@contextmanager
def workspace() -> Iterator[tuple[Path, dict[str, str]]]:
    """A temp dir, and the workers' environment (the broker plugins findable)."""
    with tempfile.TemporaryDirectory(prefix="headwater-bench-workers-") as tmp:
        root = Path(tmp)
        extra: list[Path] = []
        if not _declared():  # until headwater's own metadata declares the plugins
            info = root / "site" / "headwater_bench_brokers-0.0.0.dist-info"
            info.mkdir(parents=True)
            (info / "METADATA").write_text(METADATA, encoding="utf-8")
            (info / "entry_points.txt").write_text(ENTRY_POINTS, encoding="utf-8")
            extra.append(root / "site")
        yield root, child_env(extra)


def _message(i: int) -> str:
    return json.dumps({"n": i, "name": f"item-{i}", "value": i * 0.5})


def _wait(predicate: Callable[[], bool], what: str, interval: float = 0.005) -> None:
    for _ in range(int(START_TIMEOUT / interval)):
        if predicate():
            return
        time.sleep(interval)
    raise RuntimeError(f"timed out after {START_TIMEOUT:g}s waiting for {what}")


def _errors(procs: list[subprocess.Popen[bytes]]) -> str:
    out = []
    for proc in procs:
        if proc.poll() is not None and proc.stderr is not None:
            out.append(proc.stderr.read().decode(errors="replace").strip()[-2000:])
    return "\n".join(out) or "(no output)"


def _stop(procs: list[subprocess.Popen[bytes]], *, drain: bool) -> None:
    """SIGTERM the workers (each must drain and exit 0); kill the hand-written loops."""
    for proc in procs:
        proc.send_signal(signal.SIGTERM if drain else signal.SIGKILL)
    codes = [proc.wait(timeout=60) for proc in procs]
    if drain and any(codes):
        raise RuntimeError(f"workers exited with {codes}: {_errors(procs)}")


def _start(argv: list[str], env: dict[str, str], root: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=root
    )


def _spec(name: str, source: dict[str, Any], out: str) -> dict[str, Any]:
    return {
        "name": name,
        "sources": {"in": source},
        "sinks": [{"sink": "jsonl", "params": {"path": out}}],
        "checkpoint": {"store": "memory", "every_items": 5000, "every_seconds": 0.05},
    }


# ---------------------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------------------


def _preload(client: Any, stream: str, n: int) -> None:
    for offset in range(0, n, 10_000):
        pipe = client.pipeline(transaction=False)
        for i in range(offset, min(offset + 10_000, n)):
            pipe.xadd(stream, {"data": _message(i)})
        pipe.execute()


def _group(client: Any, stream: str) -> dict[str, Any]:
    groups = client.xinfo_groups(stream)
    return dict(groups[0]) if groups else {}


def redis_round(root: Path, env: dict[str, str], workers: int, n: int) -> Callable[[], Sample]:
    """Start ``workers`` worker processes (0: the hand-written loop), release ``n``
    entries, time them to the last acknowledgement."""

    def run() -> Sample:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        stream = f"headwater-bench-{uuid.uuid4().hex[:10]}"
        source = {
            "action": "redis.stream",
            "params": {"url": REDIS_URL, "stream": stream, "group": "bench", "block_ms": 100},
        }
        path = root / f"{stream}.yaml"
        path.write_text(json.dumps(_spec("bench-redis", source, "out.jsonl")), encoding="utf-8")
        procs: list[subprocess.Popen[bytes]] = []
        try:
            _preload(client, stream, n)
            client.xgroup_create(stream, "bench", id="$")
            if workers == 0:
                argv = [sys.executable, "-c", REDIS_LOOP, REDIS_URL, stream, str(root / "hand")]
                procs.append(_start(argv, env, root))
            for w in range(workers):
                out = f"--set=sinks.0.params.path=out-{stream}-{w}.jsonl"
                procs.append(_start([*WORKER_COMMAND, str(path), out], env, root))
            joined = max(workers, 1)
            _wait(
                lambda: (
                    len(client.xinfo_consumers(stream, "bench")) >= joined
                    or any(p.poll() is not None for p in procs)
                ),
                "the consumers to join the group",
                0.02,
            )
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a consumer exited early: {_errors(procs)}")
            start = time.perf_counter()
            client.xgroup_setid(stream, "bench", "0")
            client.xadd(stream, {"data": _message(n)})  # wakes the blocked readers
            total = n + 1

            def done() -> bool:
                group = _group(client, stream)
                return int(group.get("entries-read") or 0) >= total and not group["pending"]

            _wait(done, "every entry to be acknowledged")
            seconds = time.perf_counter() - start
            _stop(procs, drain=workers > 0)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            client.delete(stream)
            client.close()
        return Sample(
            {"seconds": seconds, "messages_per_s": total / seconds, "messages": float(total)},
            n,  # the entry that wakes the readers is not one of the n
        )

    return run


# ---------------------------------------------------------------------------------------
# NATS
# ---------------------------------------------------------------------------------------


async def _nats_prepare(stream: str, n: int) -> None:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig

    nc = await nats.connect(NATS_URL)
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"{stream}.>"])
        for offset in range(0, n, 5000):
            futures = [
                await js.publish_async(f"{stream}.in", _message(i).encode())
                for i in range(offset, min(offset + 5000, n))
            ]
            for future in futures:
                await future
        config = ConsumerConfig(
            durable_name="bench", ack_policy=AckPolicy.EXPLICIT, max_ack_pending=20_000
        )
        await js.add_consumer(stream, config)
    finally:
        await nc.close()


async def _nats_state(stream: str) -> tuple[int, int, int]:
    """``(delivered, ack pending, pending)`` of the bench consumer."""
    import nats

    nc = await nats.connect(NATS_URL)
    try:
        info = await nc.jetstream().consumer_info(stream, "bench")
        return int(info.delivered.consumer_seq), info.num_ack_pending, info.num_pending
    finally:
        await nc.close()


async def _nats_delete(stream: str) -> None:
    import nats

    nc = await nats.connect(NATS_URL)
    try:
        await nc.jetstream().delete_stream(stream)
    finally:
        await nc.close()


def nats_round(root: Path, env: dict[str, str], workers: int, n: int) -> Callable[[], Sample]:
    """Start ``workers`` worker processes (0: the hand-written loop) on a stream of
    ``n`` messages; time from the first delivery to the last acknowledgement."""

    def run() -> Sample:
        import anyio

        stream = f"HWBENCH{uuid.uuid4().hex[:10]}"
        anyio.run(_nats_prepare, stream, n)
        source = {
            "action": "nats.jetstream",
            "params": {"url": NATS_URL, "stream": stream, "durable": "bench"},
        }
        path = root / f"{stream}.yaml"
        path.write_text(json.dumps(_spec("bench-nats", source, "out.jsonl")), encoding="utf-8")
        procs: list[subprocess.Popen[bytes]] = []
        try:
            if workers == 0:
                argv = [sys.executable, "-c", NATS_LOOP, NATS_URL, stream, str(root / "hand")]
                procs.append(_start(argv, env, root))
            for w in range(workers):
                out = f"--set=sinks.0.params.path=out-{stream}-{w}.jsonl"
                procs.append(_start([*WORKER_COMMAND, str(path), out], env, root))
            state = [0, 0, n]

            def poll() -> tuple[int, int, int]:
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError(f"a consumer exited early: {_errors(procs)}")
                state[:] = anyio.run(_nats_state, stream)
                return state[0], state[1], state[2]

            # each poll is a connection of its own: every 50 ms, not to steal the CPU
            _wait(lambda: poll()[0] > 0, "the first delivery", 0.05)
            start = time.perf_counter()
            _wait(lambda: poll()[1:] == (0, 0), "every message to be acknowledged", 0.05)
            seconds = time.perf_counter() - start
            _stop(procs, drain=workers > 0)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            anyio.run(_nats_delete, stream)
        return Sample({"seconds": seconds, "messages_per_s": n / seconds, "messages": float(n)}, n)

    return run


# ---------------------------------------------------------------------------------------
# the scenario
# ---------------------------------------------------------------------------------------


def _name(broker: str, workers: int) -> str:
    if workers == 0:
        return f"{broker}_hand_loop"
    return f"{broker}_{workers}_worker{'s' if workers > 1 else ''}"


def _describe(broker: str, workers: int) -> str:
    if workers == 0:
        client = "redis-py" if broker == "redis" else "nats-py"
        return f"{broker}: hand-written {client} loop"
    return f"{broker}: {workers} worker process{'es' if workers > 1 else ''}"


def run(settings: Settings, progress: Progress) -> ScenarioReport:
    """Measure the hand-written loops and the workers; target: 1 worker >= 0.9x."""
    n = settings.pick_n(FULL_N, QUICK_N)
    rounds = settings.pick_rounds(full=3, quick=1)
    warmup = settings.pick_warmup(0)
    plan = {"redis": (0, *WORKER_COUNTS), "nats": (0, 1)}
    names = [_name(b, w) for b, counts in plan.items() for w in counts]
    problems: dict[str, str | None] = {}
    for broker, url, port, module in (
        ("redis", REDIS_URL, 6379, "redis"),
        ("nats", NATS_URL, 4222, "nats"),
    ):
        problem = None if available(module) else f"not installed: {module}"
        problems[broker] = problem or _reachable(url, port, broker)
    with workspace() as (root, env):
        impls: list[Implementation] = []
        skipped: dict[str, str] = {}
        for broker, counts in plan.items():
            make = redis_round if broker == "redis" else nats_round
            for w in counts:
                problem = problems[broker]
                if problem is not None:
                    skipped[_name(broker, w)] = problem
                    continue
                impls.append(
                    Implementation(
                        _name(broker, w),
                        make(root, env, w, n),
                        description=_describe(broker, w),
                        requires=(broker,),
                    )
                )
        measured = (
            measure(impls, rounds=rounds, warmup=warmup, progress=progress)
            if impls
            else Measured({}, {}, {})
        )
        measured.skipped.update(skipped)
    report = ScenarioReport(
        name="workers",
        title=TITLE,
        params={"n": n, "rounds": rounds, "cores": os.cpu_count() or 0},
        measured=measured,
        columns=[
            Column("messages_per_s", "messages/s", fmt_rate),
            Column("seconds", "time", fmt_seconds),
            Column("messages", "messages", fmt_count, spread=False),
        ],
        descriptions={name: _describe(*_parse(name)) for name in names},
        show_descriptions=True,
    )
    for broker in plan:
        worker, hand = _name(broker, 1), _name(broker, 0)
        ratio = report.ratio(worker, hand, "messages_per_s")
        goal = f">= {TARGET_RATIO:g}x the hand-written loop"
        label = f"{broker}: 1 worker vs the hand-written loop"
        if ratio is None:
            report.targets.append(TargetResult(label, "n/a (not measured)", goal, None))
            continue
        report.targets.append(TargetResult(label, f"{ratio:.2f}x", goal, ratio >= TARGET_RATIO))
        report.notes.append(f"{broker}: 1 worker runs at {ratio:.2f}x the hand-written loop")
    redis_ratio = report.ratio(_name("redis", 3), _name("redis", 1), "messages_per_s")
    cores = os.cpu_count() or 0
    if cores and cores < 4 and redis_ratio is not None:
        report.notes.append(
            f"{cores} cores for the workers, the servers and this process: more workers "
            f"than cores compete for the CPU (3 workers: {redis_ratio:.2f}x one), so the "
            "curve flattens early here"
        )
    return report


def _parse(name: str) -> tuple[str, int]:
    broker, _, rest = name.partition("_")
    return broker, 0 if rest == "hand_loop" else int(rest.split("_")[0])
