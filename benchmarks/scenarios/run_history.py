"""``run-history``: the run store with 10,000 runs: its size, ``/api/runs`` latency, RSS.

The built-in SQLite run store (``.headwater/runs.db`` of a temporary folder) is filled with
N finished runs (N = 10,000; quick: 2,000) of five pipelines, each with a record like a
real one (params, stage counters, a fatal error with its traceback for one run in ten,
handled errors) and 20 chunks of 100 bytes, through the store's own ``save``. Then a
``headwater serve`` subprocess on 127.0.0.1 opens it (retention set to keep them all) and
answers, R times each (R = 200; quick: 50), ``GET /api/runs`` (the newest 50), filtered by
pipeline, filtered by state, a page deep in the list (a keyset cursor) and
``GET /api/runs/{id}``. Reported: insert time per run, the file's size, the median and
p99 latency of each request, and the server's resident set size after the requests.
Target: every median under 50 ms. Nothing leaves 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import json
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from ..harness import (
    Column,
    Measured,
    ScenarioReport,
    Settings,
    Stat,
    fmt_bytes,
    fmt_seconds,
)
from ..procs import child_env
from . import Progress

TITLE = "run history: 10,000 runs in the SQLite run store, /api/runs latency and RSS"
DESCRIPTION = (
    "Fills the built-in SQLite run store with N runs (10,000; quick: 2,000), each with "
    "20 chunks; serves it and times GET /api/runs (newest, by pipeline, by state, a deep "
    "page, one run) R times (200; quick: 50). Reports store size, insert time per run, "
    "latency median and p99, server RSS (target: medians < 50 ms)."
)

FULL_RUNS = 10_000
QUICK_RUNS = 2_000
FULL_REQUESTS = 200
QUICK_REQUESTS = 50
TARGET = 0.050
TIMEOUT = 60.0
PIPELINES = ("ingest", "enrich", "alerts", "export", "audit")

CONFIG = """\
host: 127.0.0.1
port: 0
history: {max_runs: 100000, max_bytes: 10000000000}
"""


def fill(path: Path, runs: int) -> float:
    """Insert ``runs`` runs into a store at ``path``; seconds per run."""
    from headwater.server.history import RunRecord, SQLiteRunStore

    store = SQLiteRunStore(path)
    chunks = [(seq, json.dumps({"n": seq, "pad": "x" * 80}).encode()) for seq in range(1, 21)]
    tb = "Traceback (most recent call last):\n" + '  File "x.py", line 1, in f\n' * 12
    began = time.perf_counter()
    now = time.time() - runs
    for i in range(runs):
        failed = i % 10 == 0
        record = RunRecord(
            run_id=f"{i:012x}",
            pipeline=PIPELINES[i % len(PIPELINES)],
            stream=f"{PIPELINES[i % len(PIPELINES)]}-{i:012x}",
            state="failed" if failed else "succeeded",
            started_at=now + i,
            ended_at=now + i + 0.5,
            params={"stop": i, "path": f"data/{i}.jsonl"},
            graph={"sources": [{"stage": "sources.n", "component": "range"}], "steps": []},
            stages={
                "sources.n": {"items_in": 0, "items_out": 20, "errors": 0, "skipped": 0},
                "sinks.websocket": {"items_in": 20, "items_out": 20, "errors": 0, "skipped": 0},
            },
            items_in=20,
            elapsed_seconds=0.5,
            fatal={
                "stage": "steps[0].map",
                "error": "ValueError",
                "message": "bad",
                "traceback": tb,
            }
            if failed
            else None,
            handled=[{"stage": "steps[0].map", "error": "KeyError", "count": 3, "message": "k"}],
            last_seq=20,
            chunks_kept=20,
        )
        record.measure(sum(len(c[1]) for c in chunks))
        store.save(record, chunks)
    seconds = (time.perf_counter() - began) / runs
    store.close()
    return seconds


def rss_bytes(pid: int) -> int:
    """The resident set size of process ``pid`` (Linux: ``VmRSS``)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def serve(workdir: Path) -> tuple[subprocess.Popen[str], int]:
    """``headwater serve`` in ``workdir``; the process and its port."""
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
    assert proc.stderr is not None
    deadline = time.monotonic() + TIMEOUT
    while True:
        line = proc.stderr.readline()
        if not line or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"headwater serve did not start: {line!r}")
        found = re.search(r"serving on http://127\.0\.0\.1:(\d+)", line)
        if found:
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, int(found.group(1))


def timed_get(url: str) -> tuple[float, dict[str, object]]:
    """Seconds to answer ``GET url`` (the body read), and the body."""
    began = time.perf_counter()
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        body = response.read()
    return time.perf_counter() - began, json.loads(body)


def run(settings: Settings, progress: Progress) -> ScenarioReport:
    """Fill, serve, time the requests."""
    if not sys.platform.startswith("linux"):
        raise RuntimeError("the run-history scenario needs Linux (/proc)")
    runs = settings.pick_n(FULL_RUNS, QUICK_RUNS)
    requests = settings.pick_rounds(FULL_REQUESTS, QUICK_REQUESTS)
    stats: dict[str, dict[str, Stat]] = {}
    samples: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="hw-run-history-") as tmp:
        workdir = Path(tmp)
        db = workdir / ".headwater" / "runs.db"
        per_run = fill(db, runs)
        size = sum(p.stat().st_size for p in db.parent.iterdir())
        progress(f"{runs:,} runs inserted ({fmt_seconds(per_run)} each), store {fmt_bytes(size)}")
        proc, port = serve(workdir)
        try:
            base = f"http://127.0.0.1:{port}/api/runs"
            _, first = timed_get(f"{base}?limit=50")
            cursor = first["next"]
            for _ in range(runs // 50 // 2 - 1):  # half-way down the list
                _, page = timed_get(f"{base}?limit=50&cursor={cursor}")
                cursor = page["next"]
            listed = first["runs"]
            assert isinstance(listed, list)
            assert len(listed) == 50
            one = listed[7]["run_id"]
            urls = {
                "newest 50": f"{base}?limit=50",
                "by pipeline": f"{base}?pipeline=alerts&limit=50",
                "failed only": f"{base}?state=failed&limit=50",
                "page half-way": f"{base}?limit=50&cursor={cursor}",
                "one run": f"{base}/{one}",
            }
            for name, url in urls.items():
                times = [timed_get(url)[0] for _ in range(requests)]
                times.sort()
                p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
                row = {"median": statistics.median(times), "p99": p99}
                stats[name] = {k: Stat.of([v]) for k, v in row.items()}
                samples[name] = [row]
                progress(f"{name}: median {fmt_seconds(row['median'])}, p99 {fmt_seconds(p99)}")
            rss = rss_bytes(proc.pid)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    report = ScenarioReport(
        name="run-history",
        title=TITLE,
        params={"runs": runs, "requests each": requests, "chunks per run": 20},
        measured=Measured(stats, samples, {}),
        columns=[
            Column("median", "median", fmt_seconds, spread=False),
            Column("p99", "p99", fmt_seconds, spread=False),
        ],
    )
    for name in stats:
        report.targets.append(
            report.target_below(f"GET /api/runs: {name}", name, "median", TARGET, fmt_seconds)
        )
    report.notes.append(
        f"store: {fmt_bytes(size)} for {runs:,} runs ({size / runs / 1024:.1f} kB per run)"
    )
    report.notes.append(f"insert: {fmt_seconds(per_run)} per run (one transaction each)")
    report.notes.append(f"server RSS after the requests: {fmt_bytes(rss)}")
    return report
