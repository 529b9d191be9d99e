"""``server-memory``: RSS of a ``headwater serve`` process across floods of connections.

A ``headwater serve`` subprocess (127.0.0.1, port 0) runs one pipeline into the stream
``bench`` (a throttled ``range`` of 1 kB JSON objects feeding the ``websocket`` sink,
started by one client that stays connected and reads everything). Each round floods it
with C WebSocket connections (C = 1,000; quick: 200), at most ``CONCURRENCY`` at a time:
each connects, subscribes to ``bench`` with ``since: 0`` (its replay buffer, 200 chunks,
comes first), waits for ``subscribed`` and vanishes as a killed client does: it drops its
TCP connection, without a closing handshake, while the server is still sending the
replay. After each round the harness waits until ``/healthz`` counts only the
feeding client again, then reads the server's resident set size (``VmRSS`` from
``/proc/PID/status``). Every loop is bounded; nothing leaves 127.0.0.1.

Memory a server keeps for connections that have gone shows up as growth from round to
round. The first rounds warm the process up (imports, caches, allocator pools); the target
is on the growth after them: rounds 5 to 10 together must add less than 5 MB.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..harness import (
    Column,
    Measured,
    ScenarioReport,
    Settings,
    Stat,
    TargetResult,
    available,
    fmt_bytes,
    fmt_seconds,
)
from ..procs import child_env
from . import Progress

TITLE = "RSS of `headwater serve` across rounds of 1,000 connect/subscribe/disconnect"
DESCRIPTION = (
    "A `headwater serve` subprocess with one live stream; each round opens C WebSocket "
    "connections (C = 1,000, quick: 200) that subscribe with since=0, then drop the TCP "
    "connection mid-replay; the server's RSS after each round "
    "shows whether memory of gone connections is kept (target: rounds 5-10 add < 5 MB)."
)

FULL_CONNECTIONS = 1_000
QUICK_CONNECTIONS = 200
FULL_ROUNDS = 10
QUICK_ROUNDS = 3
CONCURRENCY = 100
"""Connections open at the same time during a flood."""
GROWTH_FROM = 5
"""The first round counted in the growth target (the ones before warm the server up)."""
GROWTH_LIMIT = 5e6
"""Target: rounds GROWTH_FROM..FULL_ROUNDS add less than 5 MB (decimal) together."""
TIMEOUT = 60.0
"""Seconds the server may take to start, a round to finish, or to settle after it."""
STREAM = "bench"

CONFIG = """\
port: 0
limits: {max_connections: 2000, rate: 1000, burst: 1000}
streaming: {replay_max_chunks: 200}
pipelines:
  feed:
    name: feed
    batch_size: 1
    sources: {n: {action: range, params: {stop: 1000000000}}}
    steps:
      - {transformer: map, params: {expr: '{"n": item, "pad": "x" * 1000}'}}
      - {transformer: throttle, params: {rate: 500, burst: 10}}
    sinks: [{sink: websocket}]
"""


def rss_bytes(pid: int) -> int:
    """The current resident set size of process ``pid`` (Linux: ``VmRSS``)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


@contextmanager
def serving(workdir: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """``headwater serve`` in ``workdir`` (stopped with SIGTERM at the end); yields the
    process and its port."""
    (workdir / "serve.yaml").write_text(CONFIG)
    env = child_env()
    env.pop("HEADWATER_TOKENS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "headwater", "serve", "--config", "serve.yaml"],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + TIMEOUT
        port = None
        while port is None:
            line = proc.stderr.readline()
            if not line or time.monotonic() > deadline:
                raise RuntimeError(f"headwater serve did not start: {line!r}")
            found = re.search(r"serving on http://127\.0\.0\.1:(\d+)", line)
            if found:
                port = int(found.group(1))
        # keep reading its log, so that a full pipe never blocks the server
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def clients(port: int) -> int:
    """Open connections of the server, from ``/healthz``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=TIMEOUT) as r:
        return int(json.load(r)["clients"])


def _settle(port: int, expected: int) -> None:
    """Wait until the server counts ``expected`` connections (the gone ones cleaned up)."""
    deadline = time.monotonic() + TIMEOUT
    while clients(port) != expected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server still counts {clients(port)} connections")
        time.sleep(0.05)  # an outside observer has no event to wait on


async def _feed(url: str, started: Any) -> None:
    """Start the pipeline into ``bench`` and stay connected (the run's owner), reading
    everything, until cancelled."""
    from websockets.asyncio.client import connect

    async with connect(url, max_size=None, max_queue=None) as ws:
        await ws.send(json.dumps({"type": "run", "pipeline": "feed", "stream": STREAM, "id": 1}))
        async for raw in ws:
            if not started.is_set() and json.loads(raw).get("type") == "subscribed":
                started.set()


async def _one(url: str) -> None:
    """Connect, subscribe to ``bench`` with ``since: 0``, wait for ``subscribed``, then
    drop the TCP connection (no closing handshake), as a killed client would."""
    from websockets.asyncio.client import connect

    async with connect(url, max_size=None, open_timeout=TIMEOUT) as ws:
        await ws.send(json.dumps({"type": "subscribe", "stream": STREAM, "since": 0, "id": 1}))
        async for raw in ws:
            kind = json.loads(raw).get("type")
            if kind == "subscribed":
                ws.transport.abort()
                return
            if kind == "error":
                raise RuntimeError(f"subscribe failed: {raw!r}")
        raise RuntimeError("the connection closed before `subscribed`")


async def _flood(url: str, connections: int) -> None:
    """``connections`` clients, at most ``CONCURRENCY`` at a time."""
    import anyio

    limiter = anyio.CapacityLimiter(CONCURRENCY)

    async def guarded() -> None:
        async with limiter:
            await _one(url)

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            for _ in range(connections):
                tg.start_soon(guarded)


async def _rounds(
    proc: subprocess.Popen[str], port: int, connections: int, rounds: int, progress: Progress
) -> list[dict[str, float]]:
    """The floods; one row per round (row 0: before the first)."""
    import anyio

    url = f"ws://127.0.0.1:{port}/"
    started = anyio.Event()
    rows: list[dict[str, float]] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(_feed, url, started)
        with anyio.fail_after(TIMEOUT):
            await started.wait()
        await anyio.to_thread.run_sync(_settle, port, 1)
        before = rss_bytes(proc.pid)
        rows.append({"rss_bytes": float(before), "added_bytes": 0.0, "seconds": 0.0})
        for k in range(1, rounds + 1):
            began = time.perf_counter()
            await _flood(url, connections)
            seconds = time.perf_counter() - began
            await anyio.to_thread.run_sync(_settle, port, 1)
            rss = rss_bytes(proc.pid)
            rows.append(
                {"rss_bytes": float(rss), "added_bytes": float(rss - before), "seconds": seconds}
            )
            progress(f"round {k}: RSS {fmt_bytes(rss)} ({fmt_bytes(rss - before)} added)")
            before = rss
        tg.cancel_scope.cancel()
    return rows


def measure_rounds(connections: int, rounds: int, progress: Progress) -> list[dict[str, float]]:
    """Start the server, flood it ``rounds`` times; the RSS row of each round."""
    import anyio

    with (
        tempfile.TemporaryDirectory(prefix="hw-server-memory-") as tmp,
        serving(Path(tmp)) as (proc, port),
    ):
        return anyio.run(_rounds, proc, port, connections, rounds, progress)


def _label(k: int) -> str:
    return "start" if k == 0 else f"round {k:>2}"


def run(settings: Settings, progress: Progress) -> ScenarioReport:
    """RSS after each round; target: rounds 5-10 add < 5 MB together."""
    if not sys.platform.startswith("linux") or not available("websockets"):
        raise RuntimeError("the server-memory scenario needs Linux (/proc) and websockets")
    connections = settings.pick_n(FULL_CONNECTIONS, QUICK_CONNECTIONS)
    rounds = settings.pick_rounds(FULL_ROUNDS, QUICK_ROUNDS)
    rows = measure_rounds(connections, rounds, progress)
    stats = {_label(k): {m: Stat.of([v]) for m, v in row.items()} for k, row in enumerate(rows)}
    samples = {_label(k): [row] for k, row in enumerate(rows)}
    report = ScenarioReport(
        name="server-memory",
        title=TITLE,
        params={"connections per round": connections, "rounds": rounds, "at once": CONCURRENCY},
        measured=Measured(stats, samples, {}),
        columns=[
            Column("rss_bytes", "RSS after", fmt_bytes, spread=False),
            Column("added_bytes", "added", fmt_bytes, spread=False),
            Column("seconds", "flood time", fmt_seconds, spread=False),
        ],
    )
    last = len(rows) - 1
    label = f"RSS added by rounds {GROWTH_FROM}-{FULL_ROUNDS}"
    goal = f"< {fmt_bytes(GROWTH_LIMIT)}"
    if last >= FULL_ROUNDS and connections >= FULL_CONNECTIONS:
        growth = rows[FULL_ROUNDS]["rss_bytes"] - rows[GROWTH_FROM - 1]["rss_bytes"]
        report.targets.append(TargetResult(label, fmt_bytes(growth), goal, growth < GROWTH_LIMIT))
    else:
        report.targets.append(
            TargetResult(label, f"n/a ({rounds} rounds of {connections:,})", goal, None)
        )
    total = rows[last]["rss_bytes"] - rows[0]["rss_bytes"]
    report.notes.append(f"all {rounds} rounds together added {fmt_bytes(total)}")
    return report
