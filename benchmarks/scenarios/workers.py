"""``workers``: messages per second, and CPU time per message, through ``headwater
worker`` processes against hand-written consumer loops measured in the same run.

**Same work on both sides.** Every consumer (the hand-written loops and the workers)
reads the same N small JSON messages, 500 per read, parses each one, writes it back as
one compact JSON line (the same encoder settings as the ``jsonl`` sink: no spaces,
UTF-8), flushes and fsyncs the file, and only then acknowledges the batch: the
hand-written loops after every read, the workers at every checkpoint, which the
benchmark's pipeline takes every 500 items (so after every read as well, and at the
latest 50 ms after the last one). After each round the output files are compared: the
same lines (sorted) or the scenario aborts.

**Redis Streams.** The consumers share one stream through a consumer group. The stream
is filled *before* the group can see it: the group is created at ``$``, every consumer
has joined, then the group is moved to the start (``XGROUP SETID 0``) and one more entry
wakes the blocked readers. The clock runs from there until the group has read every
entry and has none pending. Hand-written: redis-py ``XREADGROUP COUNT 500`` / write /
``XACK`` of the batch in one command.

**NATS JetStream.** A durable pull consumer cannot be moved back, so the clock starts at
the consumer's first delivery (polled every 10 ms on one connection) and stops once
every message is acknowledged. Hand-written: nats-py ``fetch(500)`` / write / ``ack``
of each message.

**CPU time.** Beside the wall clock, each consumer process's own CPU time (user + system,
read from the process at the start and at the end of the timed window: start-up and
shutdown are not counted) is reported per message. Other processes competing for the
machine stretch the wall clock, hardly the CPU time: on a busy machine the CPU figure is
the steadier one. Rows alternate within each round (hand-written loop, then worker);
the ratios are medians of per-round ratios, with their spread.

Needs the servers (``HEADWATER_REDIS_URL``, default ``redis://127.0.0.1:6379``;
``HEADWATER_NATS_URL``, default ``nats://127.0.0.1:4222``) and their client packages;
without them the rows are skipped with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
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

TITLE = "messages/s and CPU per message: `headwater worker` processes vs hand-written loops"
DESCRIPTION = (
    "Redis Streams consumer group and NATS JetStream durable consumer, N small JSON "
    "messages read 500 at a time, written as JSON lines, fsynced, then acknowledged: "
    "1 worker (and, in full mode, 2 and 3 Redis workers) against a hand-written "
    "redis-py / nats-py loop doing the same work, alternating within each round "
    "(start-up not counted). Wall-clock rate and the consumer's CPU time per message."
)

REDIS_URL = os.environ.get("HEADWATER_REDIS_URL", "redis://127.0.0.1:6379")
NATS_URL = os.environ.get("HEADWATER_NATS_URL", "nats://127.0.0.1:4222")
FULL_N = 200_000
QUICK_N = 100_000
"""Quick mode too measures a steady state: the worker commits a partial batch up to
``every_seconds`` (50 ms) after its last read, a fixed cost that weighs 10% on 30,000
messages (about 0.5 s) and 3% on 100,000."""
BATCH = 500
"""Messages per read, on both sides; also the workers' checkpoint interval in items."""
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

_LOOP_WRITE = """
import json, os, sys
encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
loads = json.loads
def write(f, payloads):
    f.write("".join([encode(loads(p)) + "\\n" for p in payloads]))
    f.flush()
    os.fsync(f.fileno())
"""
"""What both hand-written loops do with a batch: what the ``jsonl`` sink does (compact
JSON, UTF-8, one line each), then flush and fsync, as the sink does before a commit."""

REDIS_LOOP = (
    _LOOP_WRITE
    + """
import redis
url, stream, out = sys.argv[1:4]
r = redis.Redis.from_url(url)
r.xgroup_createconsumer(stream, "bench", "hand")
with open(out, "w", encoding="utf-8") as f:
    while True:
        reply = r.xreadgroup("bench", "hand", {stream: ">"}, count=500, block=100)
        if not reply:
            continue
        entries = reply[0][1]
        write(f, [fields[b"data"] for _, fields in entries])
        r.xack(stream, "bench", *[entry_id for entry_id, _ in entries])
"""
)
"""The hand-written Redis consumer: read 500, write them, acknowledge them, forever."""

NATS_LOOP = (
    _LOOP_WRITE
    + """
import asyncio, nats
async def main(url, stream, out):
    nc = await nats.connect(url)
    sub = await nc.jetstream().pull_subscribe_bind("bench", stream)
    with open(out, "w", encoding="utf-8") as f:
        while True:
            try:
                msgs = await sub.fetch(500, timeout=0.5)
            except TimeoutError:
                continue
            write(f, [m.data for m in msgs])
            for m in msgs:
                await m.ack()
asyncio.run(main(*sys.argv[1:4]))
"""
)
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


_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _line(i: int) -> bytes:
    """The output line of message ``i`` (without its newline), as every consumer writes it."""
    return _ENCODE(json.loads(_message(i))).encode()


def _digest(lines: list[bytes]) -> tuple[int, str]:
    lines.sort()
    return len(lines), hashlib.sha256(b"\n".join(lines)).hexdigest()


def expected_output(n: int) -> tuple[int, str]:
    """The line count and digest (sorted lines) every consumer's output must have."""
    return _digest([_line(i) for i in range(n)])


def output_of(paths: list[Path], n: int) -> tuple[int, str]:
    """The line count and digest of the consumers' output files together, without the
    line of the entry that woke the Redis readers (message ``n``); the files are deleted."""
    lines: list[bytes] = []
    for path in paths:
        if path.exists():
            lines += path.read_bytes().splitlines()
            path.unlink()
    wake = _line(n)
    if wake in lines:
        lines.remove(wake)
    return _digest(lines)


def _cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) the processes ``pids`` have used so far."""
    total = 0.0
    for pid in pids:
        try:
            import psutil  # type: ignore[import-untyped]
        except ImportError:  # Linux without psutil: the same numbers, from /proc
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                fields = f.read().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            continue
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def _sample(seconds: float, cpu: float, messages: int, result: tuple[int, str]) -> Sample:
    return Sample(
        {
            "seconds": seconds,
            "messages_per_s": messages / seconds,
            "cpu_us_per_message": cpu / messages * 1e6,
            "messages_per_cpu_s": messages / cpu if cpu > 0 else 0.0,
            "messages": float(messages),
        },
        result,
    )


def _wait(predicate: Callable[[], bool], what: str, interval: float = 0.005) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {START_TIMEOUT:g}s waiting for {what}")
        time.sleep(interval)


async def _await(predicate: Callable[[], Awaitable[bool]], what: str, interval: float) -> None:
    import anyio

    deadline = time.monotonic() + START_TIMEOUT
    while not await predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {START_TIMEOUT:g}s waiting for {what}")
        await anyio.sleep(interval)


def _errors(procs: list[subprocess.Popen[bytes]]) -> str:
    out = []
    for proc in procs:
        if proc.poll() is not None and proc.stderr is not None:
            out.append(proc.stderr.read().decode(errors="replace").strip()[-2000:])
    return "\n".join(out) or "(no output)"


def _check_alive(procs: list[subprocess.Popen[bytes]]) -> None:
    if any(p.poll() is not None for p in procs):
        raise RuntimeError(f"a consumer exited early: {_errors(procs)}")


def _stop(procs: list[subprocess.Popen[bytes]], *, drain: bool) -> None:
    """SIGTERM the workers (each must drain and exit 0); kill the hand-written loops."""
    for proc in procs:
        proc.send_signal(signal.SIGTERM if drain else signal.SIGKILL)
    codes = [proc.wait(timeout=60) for proc in procs]
    if drain and any(codes):
        raise RuntimeError(f"workers exited with {codes}: {_errors(procs)}")


def _reap(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _start(argv: list[str], env: dict[str, str], root: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=root
    )


def _consumers(
    root: Path, env: dict[str, str], workers: int, loop: str, url: str, stream: str, spec: Path
) -> tuple[list[subprocess.Popen[bytes]], list[Path]]:
    """Start the hand-written ``loop`` (``workers`` == 0) or that many workers; returns
    the processes and the files they write."""
    if workers == 0:
        out = root / f"hand-{stream}.jsonl"
        return [_start([sys.executable, "-c", loop, url, stream, str(out)], env, root)], [out]
    procs, outs = [], []
    for w in range(workers):
        out = root / f"out-{stream}-{w}.jsonl"
        procs.append(
            _start([*WORKER_COMMAND, str(spec), f"--set=sinks.0.params.path={out}"], env, root)
        )
        outs.append(out)
    return procs, outs


def _spec(root: Path, name: str, source: dict[str, Any]) -> Path:
    spec = {
        "name": name,
        "sources": {"in": source},
        "sinks": [{"sink": "jsonl", "params": {"path": "out.jsonl"}}],
        # a commit (flush, fsync, acknowledgement) after every read, as the hand loops do
        "checkpoint": {"store": "memory", "every_items": BATCH, "every_seconds": 0.05},
    }
    path = root / f"{name}.yaml"
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


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
        params = {"url": REDIS_URL, "stream": stream, "group": "bench", "block_ms": 100}
        spec = _spec(root, stream, {"action": "redis.stream", "params": {**params, "batch": BATCH}})
        procs: list[subprocess.Popen[bytes]] = []
        try:
            _preload(client, stream, n)
            client.xgroup_create(stream, "bench", id="$")
            procs, outs = _consumers(root, env, workers, REDIS_LOOP, REDIS_URL, stream, spec)
            joined = max(workers, 1)
            _wait(
                lambda: (
                    len(client.xinfo_consumers(stream, "bench")) >= joined
                    or any(p.poll() is not None for p in procs)
                ),
                "the consumers to join the group",
                0.02,
            )
            _check_alive(procs)
            pids = [p.pid for p in procs]
            cpu = _cpu_seconds(pids)
            start = time.perf_counter()
            client.xgroup_setid(stream, "bench", "0")
            client.xadd(stream, {"data": _message(n)})  # wakes the blocked readers
            total = n + 1

            def done() -> bool:
                group = _group(client, stream)
                return int(group.get("entries-read") or 0) >= total and not group["pending"]

            _wait(done, "every entry to be acknowledged")
            seconds = time.perf_counter() - start
            cpu = _cpu_seconds(pids) - cpu
            _stop(procs, drain=workers > 0)
        finally:
            _reap(procs)
            client.delete(stream)
            client.close()
        return _sample(seconds, cpu, total, output_of(outs, n))

    return run


# ---------------------------------------------------------------------------------------
# NATS
# ---------------------------------------------------------------------------------------


async def _nats_fill(js: Any, stream: str, n: int) -> None:
    from nats.js.api import AckPolicy, ConsumerConfig

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


async def _nats_round(
    root: Path, env: dict[str, str], workers: int, n: int
) -> tuple[float, float, list[Path]]:
    import anyio
    import nats

    stream = f"HWBENCH{uuid.uuid4().hex[:10]}"
    params = {"url": NATS_URL, "stream": stream, "durable": "bench", "batch": BATCH}
    spec = _spec(root, stream, {"action": "nats.jetstream", "params": params})
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        await _nats_fill(js, stream, n)
        procs, outs = _consumers(root, env, workers, NATS_LOOP, NATS_URL, stream, spec)
        pids = [p.pid for p in procs]

        async def delivered() -> bool:
            _check_alive(procs)
            info = await js.consumer_info(stream, "bench")
            return int(info.delivered.consumer_seq) > 0

        async def acknowledged() -> bool:
            _check_alive(procs)
            info = await js.consumer_info(stream, "bench")
            return (info.num_ack_pending, info.num_pending) == (0, 0)

        # one connection for every poll, every 10 ms: not to steal the consumer's CPU
        await _await(delivered, "the first delivery", 0.01)
        cpu = _cpu_seconds(pids)
        start = time.perf_counter()
        await _await(acknowledged, "every message to be acknowledged", 0.01)
        seconds = time.perf_counter() - start
        cpu = _cpu_seconds(pids) - cpu
        await anyio.to_thread.run_sync(lambda: _stop(procs, drain=workers > 0))
    finally:
        _reap(procs)
        with anyio.CancelScope(shield=True):
            await js.delete_stream(stream)
            await nc.close()
    return seconds, cpu, outs


def nats_round(root: Path, env: dict[str, str], workers: int, n: int) -> Callable[[], Sample]:
    """Start ``workers`` worker processes (0: the hand-written loop) on a stream of
    ``n`` messages; time from the first delivery to the last acknowledgement."""

    def run() -> Sample:
        import anyio

        seconds, cpu, outs = anyio.run(_nats_round, root, env, workers, n)
        return _sample(seconds, cpu, n, output_of(outs, n))

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


def _fmt_us(value: float) -> str:
    return f"{value:.1f} us"


def round_ratios(measured: Measured, impl: str, other: str, metric: str) -> list[float]:
    """``impl / other`` for ``metric`` in every round (both ran seconds apart)."""
    rows_a = measured.samples.get(impl, [])
    rows_b = measured.samples.get(other, [])
    return [a[metric] / b[metric] for a, b in zip(rows_a, rows_b, strict=False) if b[metric]]


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x [{min(values):.2f} .. {max(values):.2f}]"


def _target(measured: Measured, broker: str) -> tuple[TargetResult, str | None]:
    worker, hand = _name(broker, 1), _name(broker, 0)
    rate = round_ratios(measured, worker, hand, "messages_per_s")
    cpu = round_ratios(measured, worker, hand, "messages_per_cpu_s")
    label = f"{broker}: 1 worker vs the hand-written loop (messages/s)"
    goal = f">= {TARGET_RATIO:g}x, median of per-round ratios"
    if not rate:
        return TargetResult(label, "n/a (not measured)", goal, None), None
    median = statistics.median(rate)
    shown = f"{_spread(rate)} over {len(rate)} rounds; per CPU-second {_spread(cpu)}"
    note = (
        f"{broker}: 1 worker / hand-written loop, per round: messages/s "
        + ", ".join(f"{r:.2f}" for r in rate)
        + "; messages per CPU-second "
        + ", ".join(f"{r:.2f}" for r in cpu)
    )
    return TargetResult(label, shown, goal, median >= TARGET_RATIO), note


def run(settings: Settings, progress: Progress) -> ScenarioReport:
    """Measure the hand-written loops and the workers; target: 1 worker >= 0.9x."""
    n = settings.pick_n(FULL_N, QUICK_N)
    rounds = settings.pick_rounds(full=5, quick=3)
    warmup = settings.pick_warmup(0)
    redis_counts = (0, 1) if settings.quick else (0, 1, 2, 3)
    plan = {"redis": redis_counts, "nats": (0, 1)}
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
            measure(
                impls,
                rounds=rounds,
                warmup=warmup,
                expected=expected_output(n),
                progress=progress,
            )
            if impls
            else Measured({}, {}, {})
        )
        measured.skipped.update(skipped)
    report = ScenarioReport(
        name="workers",
        title=TITLE,
        params={"n": n, "batch": BATCH, "rounds": rounds, "cores": os.cpu_count() or 0},
        measured=measured,
        columns=[
            Column("messages_per_s", "messages/s", fmt_rate),
            Column("cpu_us_per_message", "CPU/message", _fmt_us),
            Column("seconds", "time", fmt_seconds),
            Column("messages", "messages", fmt_count, spread=False),
        ],
        descriptions={name: _describe(*_parse(name)) for name in names},
        show_descriptions=True,
    )
    for broker in plan:
        target, note = _target(measured, broker)
        report.targets.append(target)
        if note is not None:
            report.notes.append(note)
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
