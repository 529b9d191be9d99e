"""``knowledge``: the headwater-knowledge example plugin under a stream of queries.

A full-text index of at least 10,000 documents is built from the docstrings of the
standard library and the installed packages (``headwater-knowledge index --stdlib
--site-packages``, nothing downloaded). A server process (this module run with
``--serve``: an engine with the built-in plugins and headwater-knowledge registered,
and a ``headwater.server.Server``) offers the query pipeline with three providers: that
index, the repository's ``docs/`` folder, and the stand-in web search API (in this
process, 200 ms per call). One client runs N queries one after the other (N = 1,000;
quick: 40), each in the same session, and times, from sending ``run``:

* the first ``status`` item (target < 100 ms), the first ``result`` (< 1 s), and the
  ``complete`` item;

while a sampler reads the server's resident set size and CPU time from ``/proc``: peak
RSS (target < 100 MB), CPU share over the queries (< 70% of one core), and RSS after
each query (flat: the last tenth of the queries adds < 5 MB over the second tenth).
Then the same queries again with the stand-in failing 5% of its calls: the error rate
(queries whose web provider failed, or that did not complete; target < 1%) and the
recovery (queries that met a failed call and still had their web results; > 99%).
Last, the plugin's search page in Chromium (``/usr/bin/chromium`` or
``HEADWATER_CHROMIUM``, through Playwright) while 1,000 results and a 5,000-word answer
stream in (full: 3 floods, quick: 1), keys typed meanwhile: the frame rate (target > 30
fps) and the median input latency (< 100 ms); ``n/a`` rows when the browser is missing.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
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
    fmt_bytes,
    fmt_seconds,
)
from ..procs import REPO_ROOT, child_env
from . import Progress

TITLE = "headwater-knowledge: time to first status/result, memory, CPU, errors per query"
DESCRIPTION = (
    "A server with the knowledge pipeline (an FTS5 index of >= 10,000 docstrings, the "
    "docs/ folder, a stand-in web API at 200 ms) answers N queries in a row (1,000; "
    "quick: 40): time to first status (< 100 ms), first result (< 1 s) and complete; peak "
    "RSS (< 100 MB), CPU share (< 70%), RSS flat; then with 5% of web calls failing: "
    "error rate (< 1%) and recovery (> 99%)."
)

PLUGIN_SRC = REPO_ROOT / "example_plugins" / "headwater-knowledge" / "src"
FULL_QUERIES = 1_000
QUICK_QUERIES = 40
MIN_DOCUMENTS = 10_000
WEB_LATENCY = 0.2
FAILING = 0.05
TIMEOUT = 120.0
QUERIES = [
    "cancel a running task",
    "parse json from a string",
    "http request headers",
    "read a file line by line",
    "regular expression groups",
    "thread pool executor",
    "sqlite database connection",
    "validate a model field",
    "websocket connection closed",
    "date and time zone",
    "pipeline checkpoint resume",
    "compress data with zlib",
    "socket timeout error",
    "sort a list by key",
    "environment variables",
]


def _index(workdir: Path, progress: Progress) -> int:
    """Build the index in ``workdir``; returns its number of documents."""
    env = child_env([PLUGIN_SRC])
    proc = subprocess.run(
        [sys.executable, "-m", "headwater_knowledge.cli", "index", "--db", "knowledge.db",
         "--stdlib", "--site-packages"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"indexing failed:\n{proc.stderr}")
    found = re.search(r"knowledge\.db: (\d+) documents", proc.stdout)
    count = int(found.group(1)) if found else 0
    progress(f"index: {count:,} documents")
    return count


def _config(web_url: str) -> dict[str, Any]:
    from headwater_knowledge.pipeline import pipeline, server_config

    pipe = pipeline(index="knowledge.db", folder="docs", web_url=web_url)
    config = server_config(pipe, port=0)
    config["limits"] = {"max_runs": 64}
    config["pipelines"]["flood"] = FLOOD
    return config


# -- the page under a flood: 1,000 results re-ranked and a 5,000-word answer ----------------

CHROMIUM = os.environ.get("HEADWATER_CHROMIUM", "/usr/bin/chromium")
FULL_FLOODS = 3
QUICK_FLOODS = 1
WAIT_MS = 30_000
FLOOD = {
    "pipeline": {
        "name": "flood",
        "sources": {"f": {"action": "bench.flood"}},
        "sinks": [{"sink": "websocket"}],
    },
    "params": {"query": "sources.f.params.query", "session": "sources.f.params.session"},
}
MEASURE = """
window.__frames = [];
window.__input = [];
(function loop(t) {
  window.__frames.push(t);
  requestAnimationFrame(loop);
})(0);
document.addEventListener("keydown", (e) => {
  const t0 = e.timeStamp;
  requestAnimationFrame(() => window.__input.push(performance.now() - t0));
}, true);
"""


def _flood_plugin() -> object:
    """A plugin with ``bench.flood``: the events of a huge query, in the knowledge
    plugin's shapes, paced over ~2 s."""
    import anyio
    from headwater_knowledge.events import (
        AnswerEvent,
        Citation,
        CompleteEvent,
        QueryEvent,
        StatusEvent,
    )
    from headwater_knowledge.rank import Ranker, RankParams
    from pydantic import BaseModel

    import headwater

    class FloodParams(BaseModel):
        query: str = "flood"
        session: str | None = None
        results: int = 1000
        words: int = 5000

    @headwater.action("bench.flood", params=FloodParams)
    async def flood(params: FloodParams) -> AsyncIterator[dict[str, Any]]:
        yield QueryEvent(query=params.query, providers=["a", "b"], started=0).item()
        for name in ("a", "b"):
            yield StatusEvent(provider=name, state="started").item()
        rng = random.Random(1)
        ranker = Ranker(RankParams(limit=params.results))
        urls = [f"https://example.org/doc/{i}" for i in range(params.results)]
        hits = [(p, r, u) for p in ("a", "b") for r, u in enumerate(rng.sample(urls, len(urls)), 1)]
        vocabulary = ["river", "delta", "source", "stream", "basin", "flow"]
        words = [rng.choice(vocabulary) for _ in range(params.words)]
        cite = Citation(n=1, id="x", url=urls[0], title="doc")
        step = 0
        for i, (provider, rank, url) in enumerate(hits):
            hit = {"type": "hit", "provider": provider, "rank": rank, "url": url, "title": url}
            for event in ranker.hit(hit):
                yield event
            if i % 5 == 0 and step * 25 < len(words):
                chunk = " ".join(words[step * 25 : step * 25 + 25])
                yield AnswerEvent(index=step, delta=chunk + " [1] ", citations=[cite]).item()
                step += 1
            if i % 20 == 0:
                await anyio.sleep(0.02)
        for name in ("a", "b"):
            yield StatusEvent(provider=name, state="done", hits=params.results).item()
        yield CompleteEvent(
            query=params.query,
            timings={"total": 2.0, "first_result": 0.01},
            counts={"results": params.results},
            providers={},
        ).item()

    class FloodPlugin:
        @staticmethod
        @headwater.hookimpl
        def register_actions(register: Any) -> None:
            register(flood)

    return FloodPlugin()


def _page_floods(
    port: int, floods: int, progress: Progress
) -> tuple[list[float], list[float]] | str:
    """Frame rates (fps) and median input latencies (s), one per flood, as the page in
    Chromium shows ``floods`` floods while keys are typed; a reason when it cannot run."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return "Playwright for Python is not installed"
    if not Path(CHROMIUM).is_file():
        return f"no Chromium at {CHROMIUM}"
    fps: list[float] = []
    latencies: list[float] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            for i in range(floods):
                context = browser.new_context(viewport={"width": 1000, "height": 800})
                page = context.new_page()
                page.add_init_script(MEASURE)
                page.goto(f"http://127.0.0.1:{port}/plugins/knowledge/?pipeline=flood")
                page.wait_for_selector("#conn[data-state=open]", timeout=WAIT_MS)
                page.fill("#q", "flood")
                page.press("#q", "Enter")
                page.wait_for_selector("#results li", timeout=WAIT_MS)
                start = page.evaluate("performance.now()")
                page.keyboard.type(" and more words", delay=40)
                page.wait_for_selector("#app[data-state=complete]", timeout=WAIT_MS)
                end = page.evaluate("performance.now()")
                frames = page.evaluate(f"window.__frames.filter(t => t >= {start} && t <= {end})")
                gaps = [b - a for a, b in itertools.pairwise(frames)]
                fps.append(1000 * len(gaps) / (frames[-1] - frames[0]))
                latencies.append(statistics.median(page.evaluate("window.__input")) / 1000)
                results = page.locator("#results li").count()
                words = len((page.text_content("#answer") or "").split())
                context.close()
                progress(
                    f"flood {i + 1}/{floods}: {fps[-1]:.0f} fps, input latency "
                    f"{fmt_seconds(latencies[-1])}, {results} results, {words} words"
                )
        finally:
            browser.close()
    return fps, latencies


@contextmanager
def _server(workdir: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """This module with ``--serve`` in ``workdir``; yields the process and its port."""
    env = child_env([PLUGIN_SRC])
    env.pop("HEADWATER_TOKENS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.scenarios.knowledge", "--serve", str(workdir)],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stderr is not None
        line = proc.stdout.readline()
        if not line.startswith("port "):
            raise RuntimeError(f"the server did not start: {line!r} {proc.stderr.read()}")
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        yield proc, int(line.split()[1])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _proc_figures(pid: int) -> tuple[int, float]:
    """``(RSS bytes, CPU seconds)`` of a process, from ``/proc``."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        rss = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss, (int(fields[11]) + int(fields[12])) / ticks


class _Sampler:
    """Peak RSS of a process, sampled every 20 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _proc_figures(self.pid)[0])

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def _queries(
    port: int, n: int, api: Any, pid: int, progress: Progress
) -> list[dict[str, float]]:
    """Run ``n`` queries in a row; one row of timings and outcomes per query."""
    import anyio
    from websockets.asyncio.client import connect

    rows: list[dict[str, float]] = []
    async with connect(f"ws://127.0.0.1:{port}/", max_size=None) as ws:
        for i in range(n):
            failed_before = api.failed
            query = QUERIES[i % len(QUERIES)]
            started = time.perf_counter()
            request = {"type": "run", "pipeline": "knowledge", "id": i,
                       "params": {"query": query, "session": "bench"}}  # fmt: skip
            await ws.send(json.dumps(request))
            row = {"first_status": -1.0, "first_result": -1.0, "complete": -1.0, "ok": 0.0}
            stream = None
            with anyio.fail_after(TIMEOUT):
                async for raw in ws:
                    m = json.loads(raw)
                    now = time.perf_counter() - started
                    if m["type"] == "run_started" and m.get("ref") == i:
                        stream = m["stream"]
                    elif m["type"] == "error":
                        raise RuntimeError(f"query {i}: {m}")
                    elif m.get("stream") != stream or stream is None:
                        continue
                    elif m["type"] == "stream_update":
                        kind = m["data"]["type"]
                        if kind == "status" and row["first_status"] < 0:
                            row["first_status"] = now
                        elif kind == "result" and row["first_result"] < 0:
                            row["first_result"] = now
                        elif kind == "complete":
                            web = m["data"]["providers"].get("web", {})
                            row["ok"] = float(web.get("state") == "done")
                    elif m["type"] == "stream_complete":
                        row["complete"] = now
                        row["ok"] *= float(m["reason"] == "succeeded")
                        break
            row["met_failure"] = float(api.failed > failed_before)
            row["rss"] = float(_proc_figures(pid)[0])
            rows.append(row)
            if (i + 1) % max(1, n // 10) == 0:
                progress(f"{i + 1}/{n} queries, RSS {fmt_bytes(row['rss'])}")
    return rows


def _stat(values: list[float]) -> Stat:
    return Stat.of(values or [float("nan")])


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else float("nan")


def run(settings: Settings, progress: Progress) -> ScenarioReport:
    """The queries without and with failing web calls; targets as in the module doc."""
    if not sys.platform.startswith("linux"):
        raise RuntimeError("the knowledge scenario reads /proc: it needs Linux")
    sys.path.insert(0, str(PLUGIN_SRC))
    import anyio
    from headwater_knowledge.standin import StandIn

    n = settings.pick_n(FULL_QUERIES, QUICK_QUERIES)
    with tempfile.TemporaryDirectory(prefix="hw-knowledge-") as tmp:
        workdir = Path(tmp)
        shutil.copytree(REPO_ROOT / "docs", workdir / "docs")
        documents = _index(workdir, progress)
        with StandIn(latency=WEB_LATENCY, page_latency=0.02) as api:
            (workdir / "serve.json").write_text(json.dumps(_config(api.url)))
            with _server(workdir) as (proc, port):
                _, cpu_before = _proc_figures(proc.pid)
                began = time.perf_counter()
                with _Sampler(proc.pid) as sampler:
                    rows = anyio.run(_queries, port, n, api, proc.pid, progress)
                wall = time.perf_counter() - began
                _, cpu_after = _proc_figures(proc.pid)
                peak = sampler.peak
                progress(f"now with {FAILING:.0%} of web calls failing")
                api.configure(error_rate=FAILING)
                failing = anyio.run(_queries, port, n, api, proc.pid, progress)
                floods = QUICK_FLOODS if settings.quick else FULL_FLOODS
                page = _page_floods(port, floods, progress)
    cpu_share = (cpu_after - cpu_before) / wall
    metrics = ("first_status", "first_result", "complete")
    stats = {
        "queries": {m: _stat([r[m] for r in rows]) for m in metrics},
        "5% failing": {m: _stat([r[m] for r in failing]) for m in metrics},
    }
    report = ScenarioReport(
        name="knowledge",
        title=TITLE,
        params={"queries": n, "documents": documents, "web latency": f"{WEB_LATENCY:g} s"},
        measured=Measured(stats, {"queries": rows, "5% failing": failing}, {}),
        columns=[
            Column("first_status", "first status", fmt_seconds),
            Column("first_result", "first result", fmt_seconds),
            Column("complete", "complete", fmt_seconds),
        ],
    )
    p95_status = _p95([r["first_status"] for r in rows])
    p95_result = _p95([r["first_result"] for r in rows])
    errors = sum(1 for r in failing if not r["ok"]) / len(failing)
    met = [r for r in failing if r["met_failure"]]
    recovery = sum(r["ok"] for r in met) / len(met) if met else float("nan")
    tenth = max(1, n // 10)
    growth = statistics.median(r["rss"] for r in rows[-tenth:]) - statistics.median(
        r["rss"] for r in rows[tenth : 2 * tenth] or rows[:tenth]
    )
    full = n >= FULL_QUERIES
    report.targets += [
        TargetResult("first status, p95", fmt_seconds(p95_status), "< 100 ms", p95_status < 0.1),
        TargetResult("first result, p95", fmt_seconds(p95_result), "< 1 s", p95_result < 1.0),
        TargetResult("server peak RSS", fmt_bytes(peak), "< 100 MB", peak < 100e6),
        TargetResult("server CPU share", f"{cpu_share:.0%}", "< 70%", cpu_share < 0.7),
        TargetResult(
            "RSS added, last tenth vs second", fmt_bytes(growth), "< 5 MB",
            growth < 5e6 if full else None,
        ),
        TargetResult(f"error rate, {FAILING:.0%} of web calls failing", f"{errors:.2%}", "< 1%",
                     errors < 0.01),
        TargetResult("recovery of queries that met a failed call",
                     f"{recovery:.1%} of {len(met)}", "> 99%", recovery > 0.99 if met else None),
    ]  # fmt: skip
    if isinstance(page, str):
        report.targets += [
            TargetResult("page frame rate, 1,000 results streaming", f"n/a ({page})", "> 30 fps",
                         None),
            TargetResult("page input latency, median", f"n/a ({page})", "< 100 ms", None),
        ]  # fmt: skip
    else:
        fps, latency = statistics.median(page[0]), statistics.median(page[1])
        report.targets += [
            TargetResult("page frame rate, 1,000 results streaming", f"{fps:.0f} fps",
                         "> 30 fps", fps > 30),
            TargetResult("page input latency, median", fmt_seconds(latency), "< 100 ms",
                         latency < 0.1),
        ]  # fmt: skip
        report.notes.append(
            f"page: {len(page[0])} flood(s) of 1,000 results and 5,000 words in Chromium; "
            f"fps {', '.join(f'{f:.0f}' for f in page[0])}"
        )
    report.notes.append(
        f"{n} queries in {wall:.1f} s; server CPU {cpu_after - cpu_before:.1f} s; "
        f"{sum(r['met_failure'] for r in failing):.0f} queries met a failed web call"
    )
    return report


# -- the server process ----------------------------------------------------------------------


async def _serve(workdir: Path) -> None:
    import anyio
    import headwater_knowledge

    import headwater
    from headwater.server import Server, ServerConfig

    os.chdir(workdir)
    config = ServerConfig.model_validate(json.loads((workdir / "serve.json").read_text()))
    plugins = headwater.PluginManager()
    plugins.load()
    plugins.register(headwater_knowledge, "headwater_knowledge")
    plugins.register(_flood_plugin(), "bench-flood")
    engine = headwater.Engine(plugin_manager=plugins)
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with engine, Server(config, engine=engine, base_dir=workdir) as server:
            print(f"port {server.port}", flush=True)
            async for _ in signals:
                return


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        import anyio

        anyio.run(_serve, Path(sys.argv[2]))
