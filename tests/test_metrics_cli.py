"""``headwater run --metrics-port/--metrics-jsonl`` as a real process, scraped while it runs.

The pipeline reads standard input: the test writes N lines, scrapes ``/metrics`` until the
sink has them all (the run is still going: stdin is open), checks every count exactly,
then closes stdin so that the run ends, and checks the last JSON line.
"""

from __future__ import annotations

import json
import os
import queue
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

import pytest

TIMEOUT = 60
N = 500

PIPELINE = """\
name: cli-metrics
sources:
  lines: {action: stdin}
steps:
  - transformer: map
    params: {fn: "builtins:int"}
  - transformer: filter
    params: {fn: "builtins:bool"}
sinks:
  - sink: "null"
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
    env["COLUMNS"] = "200"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def _lines(stream: IO[str], into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line)


def _scrape(url: str) -> dict[tuple[str, str], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("pipeline") == "cli-metrics" and "le" not in sample.labels:
                key = (sample.name, sample.labels.get("stage") or sample.labels.get("state", ""))
                out[key] = sample.value
    return out


def test_a_running_batch_job_is_scraped_with_exact_counts(tmp_path: Path) -> None:
    pytest.importorskip("prometheus_client")
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE, encoding="utf-8")
    jsonl = tmp_path / "metrics.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "headwater",
            "run",
            str(pipeline),
            "--no-progress",
            "--metrics-port",
            "0",
            "--metrics-jsonl",
            str(jsonl),
            "--metrics-interval",
            "0.2",
        ],
        cwd=tmp_path,
        env=_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )
    assert proc.stdin is not None
    assert proc.stderr is not None
    errors: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stderr, errors), daemon=True).start()
    try:
        url = None
        seen: list[str] = []
        deadline = time.monotonic() + TIMEOUT
        while url is None and time.monotonic() < deadline:
            try:
                line = errors.get(timeout=1)
            except queue.Empty:
                assert proc.poll() is None, "".join(seen)
                continue
            seen.append(line)
            found = re.search(r"metrics at (http://127\.0\.0\.1:\d+/metrics)", line)
            if found:
                url = found.group(1)
        assert url is not None, "".join(seen)

        proc.stdin.write("".join(f"{i}\n" for i in range(N)))
        proc.stdin.flush()
        got: dict[tuple[str, str], float] = {}
        while time.monotonic() < deadline:
            got = _scrape(url)
            if got.get(("headwater_stage_items_out_total", "sinks.null")) == N - 1:
                break
            time.sleep(0.05)
        # still running (stdin is open), every item counted exactly
        assert proc.poll() is None
        assert got[("headwater_pipeline_runs_running", "")] == 1
        assert got[("headwater_stage_items_out_total", "sources.lines")] == N
        assert got[("headwater_stage_items_in_total", "steps[0].map")] == N
        assert got[("headwater_stage_items_out_total", "steps[0].map")] == N
        assert got[("headwater_stage_items_in_total", "steps[1].filter")] == N
        assert got[("headwater_stage_items_out_total", "steps[1].filter")] == N - 1
        assert got[("headwater_stage_items_in_total", "sinks.null")] == N - 1
        assert got[("headwater_stage_items_out_total", "sinks.null")] == N - 1
        assert ("headwater_pipeline_runs_total", "succeeded") not in got

        proc.stdin.close()
        assert proc.wait(timeout=TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT)
    last = json.loads(jsonl.read_text(encoding="utf-8").splitlines()[-1])
    stages = {s["stage"]: s for s in last["stages"] if s["pipeline"] == "cli-metrics"}
    assert stages["sinks.null"]["items_out"] == N - 1
    assert last["pipelines"][0]["runs"] == {"succeeded": 1}
    # the server is gone with the process
    with pytest.raises(urllib.error.URLError):
        _scrape(url)


def _hw(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headwater", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=TIMEOUT,
        input="",
        check=False,
    )


def test_bad_metrics_options_are_clean_errors(tmp_path: Path) -> None:
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE, encoding="utf-8")
    proc = _hw(
        "run", str(pipeline), "--metrics-jsonl", "m.jsonl", "--metrics-interval", "0", cwd=tmp_path
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "interval" in proc.stderr

    proc = _hw("run", str(pipeline), "--metrics-port", "70000", cwd=tmp_path)
    assert proc.returncode == 2
    assert "between 0 and 65535" in proc.stderr


def test_a_taken_metrics_port_is_reported(tmp_path: Path) -> None:
    pytest.importorskip("prometheus_client")
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE, encoding="utf-8")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _hw("run", str(pipeline), "--metrics-port", str(port), cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "cannot start metrics" in proc.stderr


def test_a_jobs_file_runs_with_metrics(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(
        textwrap.dedent(
            """\
            jobs:
              first:
                pipeline:
                  name: cli-jobs-first
                  sources: {n: {action: range, params: {stop: 10}}}
                  sinks: [{sink: "null"}]
            """
        ),
        encoding="utf-8",
    )
    jsonl = tmp_path / "m.jsonl"
    proc = _hw("run", str(jobs), "--metrics-jsonl", str(jsonl), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    last = json.loads(jsonl.read_text(encoding="utf-8").splitlines()[-1])
    stages = {s["stage"]: s for s in last["stages"] if s["pipeline"] == "cli-jobs-first"}
    assert stages["sinks.null"]["items_out"] == 10


def test_serve_exposes_metrics_and_writes_json_lines(tmp_path: Path) -> None:
    pytest.importorskip("prometheus_client")
    import signal

    jsonl = tmp_path / "serve.jsonl"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "headwater", "serve", "--port", "0"),
            *("--metrics-jsonl", str(jsonl), "--metrics-interval", "0.1"),
        ],
        cwd=tmp_path,
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )
    assert proc.stderr is not None
    errors: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stderr, errors), daemon=True).start()
    try:
        base = None
        seen: list[str] = []
        deadline = time.monotonic() + TIMEOUT
        while base is None and time.monotonic() < deadline:
            try:
                line = errors.get(timeout=1)
            except queue.Empty:
                assert proc.poll() is None, "".join(seen)
                continue
            seen.append(line)
            found = re.search(r"serving on (http://127\.0\.0\.1:\d+)", line)
            if found:
                base = found.group(1)
        assert base is not None, "".join(seen)
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text = response.read().decode()
        assert re.search(r"^headwater_streams_open 0\.0$", text, re.MULTILINE), text
        assert "# TYPE headwater_stage_items_in_total counter" in text
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=TIMEOUT) == 130  # 128 + SIGINT, as `headwater --help` documents
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT)
    last = json.loads(jsonl.read_text(encoding="utf-8").splitlines()[-1])
    assert last["streams"]["totals"]["streams"] == 0
    assert "time" in last
