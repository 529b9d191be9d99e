"""Values substituted into the server's files (``${VAR}``) never reach a client: run
replies, progress and status, errors, event streams, on both front ends.

The server configuration is loaded as ``headwater serve`` loads it, with the serving
engine's secrets (:func:`~headwater.server.load_server_config`). Its pipelines put the
planted value where a client can see it: a source reporting progress and status about
its (secret) address, a step named after it whose errors are skipped, a file path that
a client's run finds outside the roots. Every surface must show the mask (``***``)
where the value was, so that a test that never reaches the value cannot pass.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import BaseModel, ConfigDict
from websockets.asyncio.client import connect as ws_connect

import headwater
from headwater.hookspecs import Register
from headwater.server import AsgiApp, Server, load_server_config
from test_server_helpers import FRONTS, WAIT, Served, make_plugins, serve_asgi, uvicorn_port

pytestmark = pytest.mark.anyio

SECRET = "hw-SECRET-7d31c9"


class ReportParams(BaseModel):
    """Params of ``test.report``."""

    model_config = ConfigDict(extra="forbid")

    address: str
    stop: int = 3
    pause: float = 0.0
    """Pacing between items (the source's own rhythm, not a synchronisation)."""


@headwater.action("test.report", params=ReportParams, capabilities=("progress",))
async def report(params: ReportParams, ctx: headwater.StreamContext) -> AsyncIterator[int]:
    """Yield ``0..stop-1``, telling in progress and status which address it reads."""
    ctx.status(f"connected to {params.address}")
    for i in range(params.stop):
        ctx.progress(i + 1, params.stop, f"read {i + 1} from {params.address}")
        yield i
        await anyio.sleep(params.pause)


class SecretsPlugin:
    """The throwaway plugin of these tests."""

    @headwater.hookimpl
    def register_actions(self, register: Register) -> None:
        register(report)


CONFIG = """\
port: 0
pipelines:
  report:
    pipeline:
      name: report
      batch_size: 1
      sources: {feed: {action: test.report, params: {address: "redis://h/${HW_PLANTED}"}}}
      steps:
        - {transformer: map, name: "check-${HW_PLANTED}", params: {expr: "1 // (item - 1)"},
           on_error: skip}
      sinks: [{sink: websocket}]
    params: {stop: sources.feed.params.stop, pause: sources.feed.params.pause}
  lines:
    pipeline:
      name: lines
      sources: {log: {action: file.lines, params: {path: "FOLDER/data/${HW_PLANTED}.log"}}}
      sinks: [{sink: websocket}]
    params: {encoding: sources.log.params.encoding}
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=FRONTS)
def front(request: pytest.FixtureRequest) -> str:
    """Which front end serves: ``serve`` or ``asgi``."""
    return str(request.param)


@asynccontextmanager
async def planted(folder: Path, front: str) -> AsyncIterator[Served]:
    """A server of ``front`` whose configuration substitutes the planted value."""
    (folder / "data").mkdir()
    (folder / "data" / f"{SECRET}.log").write_text("one\ntwo\n")
    (folder / "serve.yaml").write_text(CONFIG.replace("FOLDER", str(folder)))
    engine = headwater.Engine(
        plugin_manager=make_plugins((SecretsPlugin(), "secrets-tests")),
        policy=headwater.SandboxPolicy(roots=(folder,)),
    )
    previous = os.environ.get("HW_PLANTED")
    os.environ["HW_PLANTED"] = SECRET
    try:
        config = load_server_config(folder / "serve.yaml", secrets=engine.services.secrets)
    finally:
        if previous is None:
            del os.environ["HW_PLANTED"]
        else:
            os.environ["HW_PLANTED"] = previous
    async with engine:
        if front == "serve":
            async with Server(config, engine=engine, base_dir=folder) as server:
                yield Served(server, server.port, front)
            return
        app = AsgiApp(config, engine=engine, base_dir=folder)
        async with serve_asgi(app) as uv:
            yield Served(app, uvicorn_port(uv), front, uv)


async def frames_until_complete(ws: Any, request: dict[str, Any]) -> list[str]:
    """The raw frames a ``run`` request gets until its stream completes (or an error)."""
    await ws.send(json.dumps(request))
    frames: list[str] = []
    with anyio.fail_after(WAIT):
        while True:
            frame = str(await ws.recv())
            frames.append(frame)
            kind = json.loads(frame)["type"]
            if kind in ("stream_complete", "error"):
                return frames


def assert_masked(surface: str, text: str) -> None:
    """No planted value in ``text``, and the mask where it was."""
    assert SECRET not in text, f"{surface} leaks the planted value:\n{text}"
    assert "***" in text, f"{surface} never showed the value, masked or not:\n{text}"


async def test_run_replies_progress_status_and_errors_are_masked(
    front: str, tmp_path: Path
) -> None:
    async with planted(tmp_path, front) as server, ws_connect(server.url) as ws:
        frames = await frames_until_complete(
            ws, {"type": "run", "pipeline": "report", "stream": "r1", "id": 1}
        )
        kinds = {json.loads(f)["type"] for f in frames}
        assert {"run_started", "progress", "status", "stream_error", "stream_complete"} <= kinds
        for kind in ("progress", "status", "stream_error"):
            assert_masked(kind, "".join(f for f in frames if f'"type":"{kind}"' in f))
        assert_masked("the run's frames", "".join(frames))


async def test_event_streams_are_masked(front: str, tmp_path: Path) -> None:
    import httpx

    async with (
        planted(tmp_path, front) as server,
        ws_connect(server.url) as ws,
        httpx.AsyncClient(timeout=WAIT) as http,
    ):
        params = {"stop": 1_000_000, "pause": 0.005}
        request = {"type": "run", "pipeline": "report", "stream": "r2", "params": params}
        await ws.send(json.dumps({**request, "id": 1}))
        with anyio.fail_after(WAIT):
            while json.loads(await ws.recv())["type"] != "run_started":
                pass
        lines: list[str] = []
        url = f"{server.http_url}/api/streams/r2/events?since=0"
        with anyio.fail_after(WAIT):
            async with http.stream("GET", url) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    lines.append(line)
                    if sum(x == "event: progress" for x in lines) == 3:
                        await ws.send(json.dumps({"type": "cancel", "stream": "r2"}))
                    if line == "event: stream_complete":
                        break
        body = "\n".join(lines)
        assert "event: progress" in body
        assert_masked("the event stream", body)


async def test_error_replies_are_masked(front: str, tmp_path: Path) -> None:
    async with planted(tmp_path, front) as server, ws_connect(server.url) as ws:
        # the log's folder becomes a link out of the roots after the server checked it:
        # the run's check names the path, which holds the planted value
        data = tmp_path / "data"
        data.rename(tmp_path / "kept")
        outside = tmp_path.parent / f"{tmp_path.name}-outside"
        outside.mkdir()
        data.symlink_to(outside)
        frames = await frames_until_complete(
            ws, {"type": "run", "pipeline": "lines", "params": {"encoding": "utf-8"}, "id": 1}
        )
        error = json.loads(frames[-1])
        assert (error["type"], error["code"]) == ("error", "invalid_params"), frames
        assert "outside the allowed roots" in error["message"]
        assert_masked("the error reply", frames[-1])
