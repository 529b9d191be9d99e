"""Secrets planted through ``${VAR}`` and ``${file:...}`` never reach any output surface.

Every place a value of a pipeline or server file can show up is read for real: the CLI's
stdout and stderr of ``run`` (text and ``--json``), ``validate``, ``describe`` and a jobs
run, its logs (text and JSON, with tracebacks) and its error messages; and a running
``headwater serve``: ``/api/pipelines``, ``/api/streams``, ``/api/dashboard``,
``/metrics``, the raw WebSocket frames of ``run`` requests and the server's own log.
The planted values are distinct strings nobody else writes, so a grep finds any leak;
each surface must also show the mask (``***``) where a secret was, so that the test
cannot pass by never reaching the secret at all.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import connect as ws_connect

from test_cli import hw
from test_server_cli import Lines, headwater
from test_server_helpers import WAIT, http_get

ENV_SECRET = "env-SECRET-4f9a2c"
FILE_SECRET = "file-SECRET-b81d07"
URL_PASSWORD = "url-PASSWORD-63e5"
SECRETS = (ENV_SECRET, FILE_SECRET, URL_PASSWORD)

LEAK = """\
name: leak
sources:
  n: {action: file.lines, params: {path: "missing-${HW_SECRET}.log"}}
sinks:
  - {sink: collect, name: "out-${file:token.txt}"}
"""

LOUD = """\
name: loud
description: "reaches redis://user:${HW_URL_PASSWORD}@h:1 as ${HW_SECRET}"
sources:
  n: {action: range, params: {stop: 2}}
steps:
  - {transformer: map, params: {fn: "hwleak:shout"}, on_error: skip}
sinks:
  - {sink: collect, name: "kept-${file:token.txt}"}
"""

BAD = """\
name: bad
sources:
  a: {action: range, params: {stop: 2}}
compose: {merge: ["${HW_SECRET}", a]}
sinks: [{sink: collect}]
"""

HWLEAK = """\
import logging, os

def shout(item):
    secret = os.environ["HW_SECRET"]
    logging.getLogger("hwleak").warning("item %s with token %s", item, secret)
    raise ConnectionError(f"cannot reach redis://user:{os.environ['HW_URL_PASSWORD']}@h:1")
"""

JOBS = """\
jobs:
  first: {pipeline: leak.yaml}
"""


def plant(folder: Path) -> dict[str, str]:
    """Write the files of the tests in ``folder``; return the environment they need."""
    (folder / "token.txt").write_text(FILE_SECRET + "\n")
    (folder / "leak.yaml").write_text(LEAK)
    (folder / "loud.yaml").write_text(LOUD)
    (folder / "bad.yaml").write_text(BAD)
    (folder / "jobs.yaml").write_text(JOBS)
    (folder / "hwleak.py").write_text(HWLEAK)
    return {
        "HW_SECRET": ENV_SECRET,
        "HW_URL_PASSWORD": URL_PASSWORD,
        "HEADWATER_ALLOW_CALLABLES": "hwleak:shout",
        "PYTHONPATH": str(folder),
    }


def assert_masked(surface: str, text: str, *, shows_mask: bool = True) -> None:
    """No planted value in ``text``; the mask shown where one was (unless told not)."""
    for secret in SECRETS:
        assert secret not in text, f"{surface} leaks {secret!r}:\n{text}"
    if shows_mask:
        assert "***" in text, f"{surface} never showed a secret, masked or not:\n{text}"


# -- the command line ----------------------------------------------------------------------


def test_the_command_line_masks_every_output(tmp_path: Path) -> None:
    extra = plant(tmp_path)

    proc = hw("validate", "leak.yaml", cwd=tmp_path, env=extra)
    assert proc.returncode == 0, proc.stderr
    assert_masked("validate", proc.stdout + proc.stderr, shows_mask=False)

    proc = hw("validate", "bad.yaml", cwd=tmp_path, env=extra)
    assert proc.returncode == 2
    assert "compose.merge: names unknown source(s) '***'" in proc.stderr
    assert_masked("validate error", proc.stdout + proc.stderr)

    proc = hw("run", "leak.yaml", "--json", cwd=tmp_path, env=extra)
    assert proc.returncode == 1
    summary = json.loads(proc.stdout)
    assert "sinks.out-***" in summary["stages"]
    assert "missing-***.log" in summary["errors"][0]["message"]
    assert_masked("run --json stdout", proc.stdout)
    assert_masked("run stderr", proc.stderr)

    proc = hw("run", "leak.yaml", "-v", cwd=tmp_path, env=extra)
    assert "Traceback" in proc.stderr  # -v: the failing stage's traceback
    assert_masked("run -v", proc.stdout + proc.stderr)

    proc = hw("run", "loud.yaml", "-v", cwd=tmp_path, env=extra)
    assert proc.returncode == 0, proc.stderr
    assert "headwater: warning: item 0 with token ***" in proc.stderr  # the log handler
    assert "redis://user:***@h:1 [on_error: skip]" in proc.stderr  # the handled errors
    assert_masked("run logs", proc.stdout + proc.stderr)

    proc = hw("run", "loud.yaml", "--log-format", "json", "-v", cwd=tmp_path, env=extra)
    records = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert any(r["message"] == "item 1 with token ***" for r in records)
    assert_masked("run --log-format json", proc.stdout + proc.stderr)

    proc = hw("run", "jobs.yaml", cwd=tmp_path, env=extra)
    assert proc.returncode == 1
    assert_masked("run of a jobs file", proc.stdout + proc.stderr)

    proc = hw("describe", "file.lines", cwd=tmp_path, env=extra)
    assert proc.returncode == 0, proc.stderr
    assert_masked("describe", proc.stdout + proc.stderr, shows_mask=False)


# -- a running server ----------------------------------------------------------------------

SERVE = """\
port: 0
pipelines:
  loud: loud.yaml
  leak:
    pipeline: leak.yaml
    params: {path: sources.n.params.path}
  ticking:
    pipeline:
      name: ticking
      batch_size: 1
      sources: {n: {action: range, params: {stop: 1000000}}}
      steps: [{transformer: throttle, params: {rate: 50, burst: 1}}]
      sinks: [{sink: websocket}, {sink: "null", name: "drop-${file:token.txt}"}]
    params: {stop: sources.n.params.stop}
"""

SERVED_LEAK = LEAK.replace("sinks:\n", "sinks:\n  - {sink: websocket}\n")


async def run_frames(url: str, pipeline: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """The raw frames a WebSocket client gets for a ``run`` until its stream ends."""
    frames: list[dict[str, Any]] = []
    async with ws_connect(url) as ws:
        await ws.send(json.dumps({"type": "run", "pipeline": pipeline, "params": params, "id": 1}))
        with anyio.fail_after(WAIT):
            while True:
                frame = json.loads(await ws.recv())
                frames.append(frame)
                if frame["type"] in ("stream_complete", "error"):
                    return frames


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_running_server_masks_every_surface(
    tmp_path: Path, anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in plant(tmp_path).items():
        monkeypatch.setenv(name, value)  # the server inherits them
    (tmp_path / "leak.yaml").write_text(SERVED_LEAK)
    (tmp_path / "serve.yaml").write_text(SERVE)
    async with headwater("serve", "--config", "serve.yaml", "-v", cwd=tmp_path) as server:
        err = Lines(server.stderr)
        port = int((await err.until(r"serving on http://127\.0\.0\.1:(\d+)")).group(1))
        base, url = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/"

        # a run that fails naming its (secret) path, and one with a client's value,
        # which is never substituted
        failed = await run_frames(url, "leak", {})
        assert failed[-1]["type"] == "stream_complete"
        literal = await run_frames(url, "leak", {"path": "${HW_SECRET}"})
        text = json.dumps(literal)
        assert "no such file: '${HW_SECRET}'" in text
        loud = await run_frames(url, "loud", {})  # its component logs a secret
        assert_masked("run replies", json.dumps(failed) + text + json.dumps(loud))

        async with ws_connect(url) as watcher:
            ref = {"type": "run", "pipeline": "ticking", "params": {}, "id": 7}
            await watcher.send(json.dumps(ref))
            await watcher.send(json.dumps({"type": "subscribe", "stream": "$dashboard", "id": 8}))
            feed: list[str] = []  # the dashboard's live feed, as a browser gets it
            with anyio.fail_after(WAIT):
                while not any('"stream":"$dashboard"' in f and "***" in f for f in feed):
                    frame = await watcher.recv()
                    feed.append(str(frame).replace(" ", ""))
            assert_masked("the $dashboard stream", "".join(feed))
            seen = {}
            for path in ("/api/pipelines", "/api/streams", "/api/dashboard", "/metrics"):
                status, _, body = await http_get(base + path)
                assert status == 200, (path, body)
                seen[path] = body.decode()
        assert '"default":"missing-***.log"' in seen["/api/pipelines"].replace(" ", "")
        assert_masked("/api/pipelines", seen["/api/pipelines"])
        assert_masked("/api/streams", seen["/api/streams"], shows_mask=False)
        assert_masked("/api/dashboard", seen["/api/dashboard"])
        assert_masked("/metrics", seen["/metrics"])

        server.send_signal(signal.SIGINT)
        with anyio.fail_after(WAIT):
            await server.wait()
        assert_masked("the server's log", await err.rest())
