"""The run history of the ``headwater`` command, as real subprocesses in a temporary
folder: ``headwater run FILE --serve`` and ``headwater run FILE --history`` record into
``.headwater/runs.db`` there, jobs files record each job's run with its name, a plain
``headwater run`` records nothing (and imports nothing of the server), and a
``headwater serve`` started later in the same folder lists the runs, serves their
records and replays their streams.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dashboard_support import ServeProcess
from headwater.server.history import RunQuery, RunRecord, SQLiteRunStore
from headwater.server.history.records import process_alive, process_identity

WAIT = 120.0
"""Upper bound (seconds) of a command."""

SQUARES = """\
name: squares
sources: {n: {action: range, params: {stop: 300}}}
steps: [{transformer: map, params: {expr: "item * item"}}]
sinks: [{sink: "null"}]
"""

BOOM = """\
name: boom
sources: {n: {action: range, params: {stop: 5}}}
steps:
  - {transformer: map, params: {expr: "10 / (item - 3)"}, on_error: skip}
  - {transformer: map, params: {fn: "operator:truediv"}}
sinks: [{sink: "null"}]
"""

JOBS = """\
jobs:
  extract:
    pipeline:
      sources: {n: {action: range, params: {stop: 20}}}
      sinks: [{sink: collect}]
  load:
    depends_on: [extract]
    pipeline:
      name: loader
      sources: {rows: {from_run: extract}}
      sinks: [{sink: "null"}]
"""

SERVE = "host: 127.0.0.1\nport: 0\n"


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONUNBUFFERED"] = "1"
    out["COLUMNS"] = "200"
    for name in ("HEADWATER_TOKENS", "HEADWATER_TOKEN", "HEADWATER_DISABLE_PLUGINS"):
        out.pop(name, None)
    return out


def headwater(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m headwater ARGS`` in ``cwd``, to its end."""
    return subprocess.run(
        [sys.executable, "-m", "headwater", *args],
        cwd=cwd,
        env=env(),
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def records(folder: Path) -> list[RunRecord]:
    """Every run recorded in ``folder/.headwater/runs.db``, newest first."""
    store = SQLiteRunStore(folder / ".headwater" / "runs.db")
    try:
        return store.query(RunQuery(limit=200)).runs
    finally:
        store.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcess]:
    """``headwater serve`` in ``tmp_path`` (started by the test, once its runs exist)."""
    process = ServeProcess(tmp_path, SERVE)
    try:
        yield process
    finally:
        process.stop()


def get_json(server: ServeProcess, path: str) -> Any:
    with urllib.request.urlopen(server.http_url + path, timeout=30) as response:
        return json.load(response)


def sse_events(server: ServeProcess, path: str) -> list[tuple[str, dict[str, Any]]]:
    """The events of an event stream that ends (a finished run's replay)."""
    events: list[tuple[str, dict[str, Any]]] = []
    kind = ""
    with urllib.request.urlopen(server.http_url + path, timeout=30) as response:
        for raw in response:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
                if kind == "stream_complete":
                    break
    return events


def test_run_serve_is_listed_and_replayed_by_a_later_serve_in_the_same_folder(
    tmp_path: Path, serve: ServeProcess
) -> None:
    (tmp_path / "squares.yaml").write_text(SQUARES)
    done = headwater(tmp_path, "run", "squares.yaml", "--serve", "--stream", "sq")
    assert done.returncode == 0, done.stderr
    assert "history    .headwater/runs.db" in done.stderr
    (recorded,) = records(tmp_path)
    assert (recorded.pipeline, recorded.stream, recorded.state) == ("squares", "sq", "succeeded")
    assert recorded.origin == "run --serve"

    serve.start()
    listed = get_json(serve, "/api/runs")
    assert listed["recording"] is True
    assert [r["run_id"] for r in listed["runs"]] == [recorded.run_id]
    row = listed["runs"][0]
    assert (row["pipeline"], row["state"], row["items_in"]) == ("squares", "succeeded", 300)
    body = get_json(serve, f"/api/runs/{recorded.run_id}")
    assert body["live"] is False
    # its params are --set paths of a file: the dashboard does not offer to run it again
    assert body["can_run_again"] is False
    assert body["run_again_blocked"].startswith("started from the command line (run --serve)")
    assert body["stages"]["sinks.null"]["items_out"] == 300
    assert body["chunks_kept"] == 200  # the default chunks_per_run
    assert body["last_seq"] == 300
    # the stream of the run is replayed from the history: the last 200 chunks
    events = sse_events(serve, "/api/streams/sq/events?since=0")
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "subscribed"
    assert kinds[-1] == "stream_complete"
    chunks = [data["data"] for kind, data in events if kind == "stream_update"]
    assert chunks == [n * n for n in range(100, 300)]
    assert events[-1][1]["reason"] == "succeeded"


def test_run_serve_no_history_keeps_nothing_on_disk(tmp_path: Path) -> None:
    (tmp_path / "squares.yaml").write_text(SQUARES)
    done = headwater(tmp_path, "run", "squares.yaml", "--serve", "--no-history")
    assert done.returncode == 0, done.stderr
    assert "history " not in done.stderr
    assert not (tmp_path / ".headwater" / "runs.db").exists()


def test_run_history_records_params_stages_errors_and_chunks(
    tmp_path: Path, serve: ServeProcess
) -> None:
    (tmp_path / "squares.yaml").write_text(SQUARES)
    (tmp_path / "boom.yaml").write_text(BOOM)
    good = headwater(
        tmp_path, "run", "squares.yaml", "--history", "--set", "sources.n.params.stop=50"
    )
    assert good.returncode == 0, good.stderr
    bad = headwater(tmp_path, "run", "boom.yaml", "--history")
    assert bad.returncode == 1, bad.stderr
    failed, succeeded = records(tmp_path)

    assert succeeded.pipeline == "squares"
    assert succeeded.state == "succeeded"
    assert succeeded.origin == "run"
    assert succeeded.params == {"sources.n.params.stop": 50}
    assert succeeded.ended_at is not None
    assert succeeded.ended_at >= succeeded.started_at
    assert succeeded.items_in == 50
    assert succeeded.stages["steps[0].map"]["items_out"] == 50
    assert (succeeded.chunks_kept, succeeded.last_seq) == (50, 50)

    assert failed.pipeline == "boom"
    assert failed.state == "failed"
    assert failed.fatal is not None
    assert failed.fatal["stage"] == "steps[1].map"
    assert failed.fatal["error"] == "TypeError"
    assert failed.fatal["traceback"].startswith("Traceback (most recent call last):")
    assert "TypeError" in failed.fatal["traceback"]
    assert [(h["stage"], h["error"], h["count"]) for h in failed.handled] == [
        ("steps[0].map", "ZeroDivisionError", 1)
    ]

    # a server started later in the folder shows them
    serve.start()
    body = get_json(serve, f"/api/runs/{failed.run_id}")
    assert body["fatal"]["error"] == "TypeError"
    assert body["handled_total"] == 1
    listed = get_json(serve, "/api/runs?state=succeeded")
    assert [r["run_id"] for r in listed["runs"]] == [succeeded.run_id]


def test_a_plain_run_records_nothing_and_imports_nothing_of_the_server(tmp_path: Path) -> None:
    (tmp_path / "squares.yaml").write_text(SQUARES)
    script = (
        "import sys\n"
        "from headwater.cli import main\n"
        "code = main(['run', 'squares.yaml'])\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('headwater.server',"
        " 'headwater.cli.history')))\n"
        "print('LOADED', loaded)\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout
    assert not (tmp_path / ".headwater").exists()


def test_a_jobs_file_with_history_records_each_job_with_its_name(
    tmp_path: Path, serve: ServeProcess
) -> None:
    (tmp_path / "jobs.yaml").write_text(JOBS)
    plain = headwater(tmp_path, "run", "jobs.yaml")
    assert plain.returncode == 0, plain.stderr
    assert not (tmp_path / ".headwater").exists()

    done = headwater(tmp_path, "run", "jobs.yaml", "--history")
    assert done.returncode == 0, done.stderr
    by_job = {r.job: r for r in records(tmp_path)}
    assert set(by_job) == {"extract", "load"}
    assert by_job["extract"].pipeline == "extract"  # an inline pipeline takes the job's name
    assert by_job["load"].pipeline == "loader"
    for record in by_job.values():
        assert record.state == "succeeded"
        assert record.origin == "jobs"
        assert record.items_in == 20
        assert record.chunks_kept == 20
    assert by_job["load"].started_at >= by_job["extract"].ended_at  # type: ignore[operator]

    serve.start()
    rows = get_json(serve, "/api/runs")["runs"]
    assert sorted((r["job"], r["pipeline"]) for r in rows) == [
        ("extract", "extract"),
        ("load", "loader"),
    ]
    body = get_json(serve, f"/api/runs/{by_job['load'].run_id}")
    assert body["can_run_again"] is False
    assert body["run_again_blocked"].startswith("started from job 'load' of a jobs file (jobs)")
    assert body["job"] == "load"


def test_only_the_runs_of_processes_that_are_gone_are_marked_interrupted(
    tmp_path: Path,
) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
        timeout=WAIT,
    )
    dead = process_identity().rsplit(":", 2)[0] + f":{gone.stdout.strip()}:1"
    assert process_alive(process_identity())
    assert not process_alive(dead)
    assert not process_alive(None)
    assert process_alive("another-host:1:1")  # cannot be checked from here: left alone

    store = SQLiteRunStore(tmp_path / "runs.db")
    now = time.time()
    for run_id, process in (("mine", process_identity()), ("dead", dead), ("old", None)):
        store.save(RunRecord(run_id, "p", f"p-{run_id}", "running", now, process=process))
    assert store.interrupt(now) == 2
    states = {run_id: store.get(run_id).state for run_id in ("mine", "dead", "old")}  # type: ignore[union-attr]
    assert states == {"mine": "running", "dead": "interrupted", "old": "interrupted"}
    store.close()
