"""``workers``: messages per second through 1, 2 and 3 ``headwater worker`` processes.

The workers share one Redis stream through a consumer group (``redis.stream`` source,
``null`` sink, checkpoints every 50 ms so acknowledgements follow promptly). To time
the consumption and not the start-up of the processes, the stream is filled *before*
the group can see it: the group is created at ``$`` (after the last entry), every worker
is started and has joined the group, and only then is the group's position moved to the
start (``XGROUP SETID 0``) and one more entry added to wake the blocked readers. The
clock runs from there until the group has read every entry and has none pending (every
entry acknowledged after the sink committed it). The workers are then stopped with
SIGTERM (a drain: they must exit 0).

Needs a Redis server (``HEADWATER_REDIS_URL``, default ``redis://127.0.0.1:6379``) and
the ``redis`` package; without them every row is skipped with the reason.
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
    available,
    fmt_count,
    fmt_rate,
    fmt_seconds,
    measure,
)
from ..procs import child_env
from . import Progress

TITLE = "messages/s through 1, 2 and 3 `headwater worker` processes sharing a Redis stream"
DESCRIPTION = (
    "Redis Streams consumer group, N small JSON messages, null sink, ack after commit: "
    "time from releasing the preloaded stream to the group until every entry is "
    "acknowledged, for 1, 2 and 3 worker processes (start-up not counted)."
)

REDIS_URL = os.environ.get("HEADWATER_REDIS_URL", "redis://127.0.0.1:6379")
FULL_N = 200_000
QUICK_N = 20_000
WORKER_COUNTS = (1, 2, 3)
START_TIMEOUT = 60.0
"""Seconds the workers may take to join the group, and the consumption to finish."""

WORKER_COMMAND = (sys.executable, "-m", "headwater", "worker")
ENTRY_POINTS = (
    "[headwater]\n"
    "headwater.redis = headwater.builtin_plugins.redis_streams\n"
    "headwater.nats = headwater.builtin_plugins.nats_jetstream\n"
)
METADATA = "Metadata-Version: 2.1\nName: headwater-bench-brokers\nVersion: 0.0.0\n"


def _reachable(url: str) -> str | None:
    import socket

    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 2):
            return None
    except OSError as exc:
        return f"no Redis server at {url} ({exc.strerror or exc})"


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


def _preload(client: Any, stream: str, n: int) -> None:
    for offset in range(0, n, 10_000):
        pipe = client.pipeline(transaction=False)
        for i in range(offset, min(offset + 10_000, n)):
            pipe.xadd(stream, {"data": json.dumps({"n": i})})
        pipe.execute()


def _group(client: Any, stream: str) -> dict[str, Any]:
    groups = client.xinfo_groups(stream)
    return dict(groups[0]) if groups else {}


def _wait(predicate: Callable[[], bool], what: str, interval: float = 0.005) -> None:
    for _ in range(int(START_TIMEOUT / interval)):
        if predicate():
            return
        time.sleep(interval)
    raise RuntimeError(f"timed out after {START_TIMEOUT:g}s waiting for {what}")


def one_round(root: Path, env: dict[str, str], workers: int, n: int) -> Callable[[], Sample]:
    """Start ``workers`` processes, release ``n`` entries, time them to the last ack."""

    def run() -> Sample:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        stream = f"headwater-bench-{uuid.uuid4().hex[:10]}"
        spec = {
            "name": "bench-workers",
            "sources": {
                "in": {
                    "action": "redis.stream",
                    "params": {
                        "url": REDIS_URL,
                        "stream": stream,
                        "group": "bench",
                        "batch": 1000,
                        "block_ms": 100,
                    },
                }
            },
            "sinks": [{"sink": "null"}],
            "checkpoint": {"store": "memory", "every_items": 5000, "every_seconds": 0.05},
        }
        path = root / f"{stream}.yaml"
        path.write_text(json.dumps(spec), encoding="utf-8")
        procs: list[subprocess.Popen[bytes]] = []
        try:
            _preload(client, stream, n)
            client.xgroup_create(stream, "bench", id="$")
            for w in range(workers):
                procs.append(
                    subprocess.Popen(
                        [*WORKER_COMMAND, str(path), "--consumer", f"w{w}"],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                        env=env,
                        cwd=root,
                    )
                )
            _wait(
                lambda: (
                    len(client.xinfo_consumers(stream, "bench")) >= workers
                    or any(p.poll() is not None for p in procs)
                ),
                "the workers to join the group",
                0.02,
            )
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a worker exited early: {_errors(procs)}")
            start = time.perf_counter()
            client.xgroup_setid(stream, "bench", "0")
            client.xadd(stream, {"data": json.dumps({"n": n})})  # wakes the blocked readers
            total = n + 1

            def done() -> bool:
                group = _group(client, stream)
                return int(group.get("entries-read") or 0) >= total and not group["pending"]

            _wait(done, "every entry to be acknowledged")
            seconds = time.perf_counter() - start
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            codes = [proc.wait(timeout=30) for proc in procs]
            if any(codes):
                raise RuntimeError(f"workers exited with {codes}: {_errors(procs)}")
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            client.delete(stream)
            client.close()
        return Sample(
            {"seconds": seconds, "messages_per_s": total / seconds, "messages": float(total)},
            total,
        )

    return run


def _errors(procs: list[subprocess.Popen[bytes]]) -> str:
    out = []
    for proc in procs:
        if proc.poll() is not None and proc.stderr is not None:
            out.append(proc.stderr.read().decode(errors="replace").strip()[-2000:])
    return "\n".join(out) or "(no output)"


def _name(workers: int) -> str:
    return f"redis_{workers}_worker{'s' if workers > 1 else ''}"


def run(settings: Settings, progress: Progress) -> ScenarioReport:
    """Measure 1, 2 and 3 workers; no target (the curve is the result)."""
    n = settings.pick_n(FULL_N, QUICK_N)
    rounds = settings.pick_rounds(full=3, quick=1)
    warmup = settings.pick_warmup(0)
    names = [_name(w) for w in WORKER_COUNTS]
    problem = (
        None if available("redis") else "not installed: redis (pip install 'headwater[redis]')"
    )
    if problem is None:
        problem = _reachable(REDIS_URL)
    with workspace() as (root, env):
        if problem is not None:
            measured = Measured({}, {}, dict.fromkeys(names, problem))
        else:
            impls = [
                Implementation(
                    _name(w),
                    one_round(root, env, w, n),
                    description=f"{w} worker process{'es' if w > 1 else ''}",
                    requires=("redis",),
                )
                for w in WORKER_COUNTS
            ]
            measured = measure(impls, rounds=rounds, warmup=warmup, progress=progress)
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
        descriptions={name: name.replace("_", " ") for name in names},
        baseline=names[0],
        ratio_metric="messages_per_s",
        ratio_header="vs 1 worker",
    )
    cores = os.cpu_count() or 0
    if cores and cores < 4 and problem is None:
        report.notes.append(
            f"{cores} cores for the workers, the Redis server and this process: more "
            "workers than cores compete for the CPU, so the curve flattens early here"
        )
    return report
