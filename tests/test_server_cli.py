"""``headwater serve`` and ``headwater tail`` as real subprocesses.

The server subprocess discovers its plugins from the installed entry points, exactly as
an operator's would. It is started with ``--port 0`` and announces its address on
stderr; SIGINT must shut it down cleanly (clients told, exit status 130).
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.abc import ByteReceiveStream, Process

from headwater.client import connect
from headwater.server.protocol import StreamUpdateMessage
from test_server_helpers import WAIT, http_get, json_body, of_type, until

pytestmark = pytest.mark.anyio

CONFIG = """\
port: 0
pipelines:
  numbers:
    pipeline: numbers.yaml
    params: {stop: sources.n.params.stop}
  slow:
    name: slow
    batch_size: 1
    sources: {n: {action: range, params: {stop: 1000000}}}
    steps: [{transformer: throttle, params: {rate: 50, burst: 1}}]
    sinks: [{sink: websocket}]
"""

NUMBERS = """\
name: numbers
sources: {n: {action: range, params: {stop: 5}}}
sinks: [{sink: websocket}]
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONUNBUFFERED"] = "1"
    out.pop("HEADWATER_TOKENS", None)
    out["COLUMNS"] = "200"
    return out


class Lines:
    """Reads a subprocess stream line by line, keeping everything read."""

    def __init__(self, stream: ByteReceiveStream | None) -> None:
        assert stream is not None
        self.stream = stream
        self.buffer = b""
        self.lines: list[str] = []

    async def until(self, pattern: str) -> re.Match[str]:
        """Read lines until one matches ``pattern`` (bounded)."""
        regex = re.compile(pattern)
        with anyio.fail_after(WAIT):
            index = 0
            while True:
                for line in self.lines[index:]:
                    found = regex.search(line)
                    if found:
                        return found
                index = len(self.lines)
                chunk = await self.stream.receive()
                self.buffer += chunk
                *complete, self.buffer = self.buffer.split(b"\n")
                self.lines.extend(part.decode() for part in complete)

    async def rest(self) -> str:
        """Everything until the end of the stream."""
        with anyio.fail_after(WAIT):
            try:
                while True:
                    self.buffer += await self.stream.receive()
            except anyio.EndOfStream:
                pass
        return "\n".join(self.lines) + "\n" + self.buffer.decode()


@asynccontextmanager
async def headwater(*args: str, cwd: Path | None = None) -> AsyncIterator[Process]:
    """``python -m headwater ARGS`` as a subprocess (killed if still running at the end)."""
    process = await anyio.open_process(
        [sys.executable, "-m", "headwater", *args], env=env(), cwd=cwd
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        with anyio.fail_after(WAIT):
            await process.wait()


async def test_serve_as_a_subprocess_runs_pipelines_and_stops_cleanly_on_sigint(
    tmp_path: Path,
) -> None:
    (tmp_path / "serve.yaml").write_text(CONFIG)
    (tmp_path / "numbers.yaml").write_text(NUMBERS)
    async with headwater("serve", "--config", "serve.yaml", cwd=tmp_path) as server:
        err = Lines(server.stderr)
        port = int((await err.until(r"serving on http://127\.0\.0\.1:(\d+)")).group(1))
        assert any("no authentication configured" in line for line in err.lines)
        base = f"http://127.0.0.1:{port}"
        status, _, body = await http_get(f"{base}/healthz")
        assert (status, json_body(body)["status"]) == (200, "ok")
        status, _, body = await http_get(f"{base}/api/streams")
        assert json_body(body)["pipelines"] == ["numbers", "slow"]

        async with connect(f"ws://127.0.0.1:{port}/") as client:
            started = await client.run("numbers", {"stop": 3})
            messages = await until(client, of_type("stream_complete", started.stream))
            assert [m.data for m in messages if isinstance(m, StreamUpdateMessage)] == [0, 1, 2]

            # tail a live run, then cancel it: tail prints the chunks and ends
            started = await client.run("slow", stream="live")
            async with headwater("tail", f"ws://127.0.0.1:{port}/", "live", "--since", "0") as tail:
                out, tail_err = Lines(tail.stdout), Lines(tail.stderr)
                await out.until(r"^3$")
                assert out.lines[:4] == ["0", "1", "2", "3"]
                await client.cancel(stream="live")
                assert "stream 'live' ended: cancelled" in await tail_err.rest()
                with anyio.fail_after(WAIT):
                    assert await tail.wait() == 0

            server.send_signal(signal.SIGINT)
            with anyio.fail_after(WAIT):
                rest = [m async for m in client]
            assert client.close_code == 1001
            assert all(m.type != "error" for m in rest)
        with anyio.fail_after(WAIT):
            assert await server.wait() == 130  # 128 + SIGINT, as documented
        text = await err.rest()
        assert "SIGINT: shutting down" in text
        assert "server stopped" in text
        assert "Traceback" not in text


async def test_serve_refuses_unsafe_or_invalid_configurations(tmp_path: Path) -> None:
    async with headwater("serve", "--host", "0.0.0.0", "--port", "0") as server:
        text = await Lines(server.stderr).rest()
        with anyio.fail_after(WAIT):
            assert await server.wait() == 2
    assert "refusing to serve on 0.0.0.0 without authentication" in text
    (tmp_path / "bad.yaml").write_text("port: 0\nlimits: {rate: -1}\npipelines: {x: nope.yaml}\n")
    async with headwater("serve", "--config", str(tmp_path / "bad.yaml")) as server:
        text = await Lines(server.stderr).rest()
        with anyio.fail_after(WAIT):
            assert await server.wait() == 2
    assert "limits.rate: Input should be greater than 0" in text
    assert "pipelines.x.pipeline: cannot read" in text
    assert "Traceback" not in text


async def test_tail_reports_unknown_streams_and_unreachable_servers() -> None:
    from test_server_helpers import running

    async with running() as server, headwater("tail", server.url, "nope") as tail:
        text = await Lines(tail.stderr).rest()
        with anyio.fail_after(WAIT):
            assert await tail.wait() == 1
    assert "cannot follow stream 'nope': unknown_stream" in text
    async with headwater("tail", server.url, "nope") as tail:  # the server is gone now
        text = await Lines(tail.stderr).rest()
        with anyio.fail_after(WAIT):
            assert await tail.wait() == 1
    assert "cannot connect to" in text
