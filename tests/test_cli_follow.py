"""From a pipeline file to a WebSocket client, as real subprocesses on 127.0.0.1:
``headwater run FILE --serve``, ``headwater tail`` of a live, a finished and a forgotten
stream, ``headwater tail --run`` of a server's named pipeline, and the status line."""

from __future__ import annotations

import json
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

from test_server_helpers import http_get, json_body

pytestmark = pytest.mark.anyio

WAIT = 60.0
"""Upper bound of every wait: subprocesses start slowly on a loaded machine."""

SLOW = """\
name: slow
batch_size: 1
sources: {n: {action: range, params: {stop: 40}}}
steps: [{transformer: throttle, params: {rate: 40, burst: 1}}]
sinks: [{sink: collect}]
"""

QUICK = """\
name: quick
sources: {n: {action: range, params: {stop: 5}}}
steps: [{transformer: map, params: {expr: "item * 10"}}]
sinks: [{sink: jsonl, params: {path: out.jsonl}}]
"""

CONFIG = """\
port: 0
history: {HISTORY}
pipelines:
  numbers:
    pipeline:
      name: numbers
      sources: {n: {action: range, params: {stop: 5}}}
      sinks: [{sink: websocket}]
    params: {stop: sources.n.params.stop}
  broken:
    pipeline:
      name: broken
      sources: {n: {action: range, params: {stop: 5}}}
      steps: [{transformer: map, params: {expr: "1 / (item - 2)"}}]
      sinks: [{sink: websocket}]
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONUNBUFFERED"] = "1"
    out["COLUMNS"] = "200"
    for name in ("HEADWATER_TOKENS", "HEADWATER_TOKEN", "HEADWATER_DISABLE_PLUGINS"):
        out.pop(name, None)
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
        index = 0
        with anyio.fail_after(WAIT):
            while True:
                for line in self.lines[index:]:
                    if found := regex.search(line):
                        return found
                index = len(self.lines)
                try:
                    self.buffer += await self.stream.receive()
                except anyio.EndOfStream:
                    raise AssertionError(f"{pattern!r} never came:\n" + self.text()) from None
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
        *complete, self.buffer = self.buffer.split(b"\n")
        self.lines.extend(part.decode() for part in complete)
        return self.text()

    def text(self) -> str:
        return "\n".join(self.lines) + "\n" + self.buffer.decode()


@asynccontextmanager
async def headwater(*args: str, cwd: Path) -> AsyncIterator[Process]:
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


async def finished(process: Process) -> int:
    with anyio.fail_after(WAIT):
        return await process.wait()


async def test_run_serve_serves_the_run_and_tail_follows_then_replays_it(
    tmp_path: Path,
) -> None:
    (tmp_path / "slow.yaml").write_text(SLOW)
    async with headwater("run", "slow.yaml", "--serve", "--keep-serving", cwd=tmp_path) as run:
        err = Lines(run.stderr)
        url = (await err.until(r"serving on (http://127\.0\.0\.1:\d+) ")).group(1)
        ws = url.replace("http://", "ws://") + "/"
        stream = (await err.until(r"^  stream     (slow-\w+)$")).group(1)
        run_id = stream.removeprefix("slow-")
        assert f"{url}/runs/{run_id}" in err.text()

        # a client that comes while the run goes on gets every chunk, then the end
        async with headwater("tail", ws, stream, "--since", "0", cwd=tmp_path) as tail:
            out = await Lines(tail.stdout).rest()
            tail_err = await Lines(tail.stderr).rest()
            assert await finished(tail) == 0, tail_err
        assert out.split() == [str(i) for i in range(40)]
        assert f"stream {stream!r} ended: succeeded (40 chunks" in tail_err

        await err.until("the run has ended; still serving")
        status, _, body = await http_get(f"{url}/api/pipelines")
        assert status == 200
        assert "slow" in json.dumps(json_body(body))
        status, _, _ = await http_get(f"{url}/runs/{run_id}")
        assert status == 200

        # after the end, tail replays what the server kept, then ends as it would have
        async with headwater("tail", ws, stream, cwd=tmp_path) as tail:
            out = await Lines(tail.stdout).rest()
            tail_err = await Lines(tail.stderr).rest()
            assert await finished(tail) == 0, tail_err
        assert out.split() == [str(i) for i in range(40)]
        assert "has already ended (succeeded); replaying what the server kept" in tail_err

        run.send_signal(signal.SIGINT)  # only stops the server now: the run succeeded
        assert await finished(run) == 0
        text = await err.rest()
    assert "pipeline 'slow' succeeded: 40 items" in text
    assert "server stopped" in text
    assert "Traceback" not in text


async def test_run_serve_exits_with_the_run_and_prints_sinks_as_a_table(tmp_path: Path) -> None:
    (tmp_path / "quick.yaml").write_text(QUICK)
    async with headwater("run", "quick.yaml", "--serve", "--stream", "q", cwd=tmp_path) as run:
        text = await Lines(run.stderr).rest()
        assert await finished(run) == 0, text
    assert "  stream     q" in text
    assert re.search(r"^sink\s+items\s+where", text, re.M), text
    assert re.search(r"^jsonl\s+5\s+path=out\.jsonl", text, re.M), text
    assert re.search(r"^websocket\s+5\s+stream=q", text, re.M), text
    assert "{'" not in text  # no Python dicts
    assert (tmp_path / "out.jsonl").read_text().split() == ["0", "10", "20", "30", "40"]


async def test_run_serve_refuses_options_it_cannot_honour(tmp_path: Path) -> None:
    (tmp_path / "quick.yaml").write_text(QUICK)
    for args, problem in (
        (("--port", "0"), "--port applies with --serve"),
        (("--serve", "--resume"), "--resume and --force do not apply with --serve"),
    ):
        async with headwater("run", "quick.yaml", *args, cwd=tmp_path) as run:
            text = await Lines(run.stderr).rest()
            assert await finished(run) == 2
        assert problem in text


@asynccontextmanager
async def serving(tmp_path: Path, history: str = "{store: memory}") -> AsyncIterator[str]:
    """``headwater serve`` with :data:`CONFIG`; yields its WebSocket URL."""
    (tmp_path / "serve.yaml").write_text(CONFIG.replace("{HISTORY}", history))
    async with headwater("serve", "--config", "serve.yaml", cwd=tmp_path) as server:
        err = Lines(server.stderr)
        port = (await err.until(r"serving on http://127\.0\.0\.1:(\d+)")).group(1)
        yield f"ws://127.0.0.1:{port}/"
        server.send_signal(signal.SIGINT)
        assert await finished(server) == 130


async def tail(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    async with headwater("tail", *args, cwd=tmp_path) as process:
        out = await Lines(process.stdout).rest()
        err = await Lines(process.stderr).rest()
        return await finished(process), out, err


async def test_tail_run_starts_a_named_pipeline_and_exits_with_its_outcome(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as url:
        code, out, err = await tail(tmp_path, url, "--run", "numbers", "--param", "stop=3")
        assert (code, out.split()) == (0, ["0", "1", "2"]), err
        assert re.search(r"started run \w+ of 'numbers' on stream 'numbers-\w+'", err)
        assert re.search(r"run \w+ ended: succeeded \(3 chunks", err)

        code, out, err = await tail(tmp_path, url, "--run", "broken")
        assert code == 1, err
        assert "ZeroDivisionError" in err
        assert "ended: failed" in err

        code, _, err = await tail(tmp_path, url, "--run", "numbers", "--param", "stp=3")
        assert code == 2
        assert "cannot run 'numbers': invalid_params" in err
        assert "stp: unknown param (allowed: stop)" in err
        code, _, err = await tail(tmp_path, url, "--run", "nope")
        assert code == 2
        assert "unknown_pipeline" in err
        assert "Traceback" not in err


async def test_tail_says_plainly_that_a_stream_ended_when_nothing_is_kept(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path, history="{enabled: false}") as url:
        code, out, err = await tail(tmp_path, url, "--run", "numbers", "--stream", "gone")
        assert (code, out.split()) == (0, ["0", "1", "2", "3", "4"]), err
        code, out, err = await tail(tmp_path, url, "gone", "--since", "0")
        assert (code, out.strip()) == (3, ""), err
        assert "stream 'gone' has ended, and the server keeps nothing of it" in err
        assert "Traceback" not in err


async def test_tail_on_a_closed_stdout_ends_quietly(tmp_path: Path) -> None:
    async with serving(tmp_path) as url:
        read_end, write_end = os.pipe()
        args = ["tail", url, "--run", "numbers", "--param", "stop=100000"]
        process = await anyio.open_process(
            [sys.executable, "-m", "headwater", *args],
            env=env(),
            cwd=tmp_path,
            stdout=write_end,
        )
        os.close(write_end)
        try:
            with anyio.fail_after(WAIT):
                first = await anyio.to_thread.run_sync(os.read, read_end, 2)
            assert first == b"0\n"
            os.close(read_end)  # the reader goes away, as `| head -1` does
            err = await Lines(process.stderr).rest()
            assert await finished(process) == 0, err
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert "error" not in err
    assert "Broken pipe" not in err


async def test_tail_status_is_a_periodic_line_on_a_pipe_not_one_per_chunk(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as url:
        code, out, err = await tail(
            tmp_path, url, "--run", "numbers", "--param", "stop=2000", "--status-every", "3600"
        )
    assert code == 0, err
    assert len(out.split()) == 2000
    assert "progress" not in err
    # the period is an hour: no status line at all, only the start and the end
    assert len([line for line in err.splitlines() if line.strip()]) == 2, err


async def test_tail_needs_a_stream_or_a_run(tmp_path: Path) -> None:
    for args, problem in (
        (("ws://127.0.0.1:1/",), "give the STREAM to follow, or --run PIPELINE"),
        (("ws://127.0.0.1:1/", "s", "--run", "p"), "give either a STREAM"),
        (("ws://127.0.0.1:1/", "s", "--param", "a=1"), "--param and --stream apply with --run"),
    ):
        code, _, err = await tail(tmp_path, *args)
        assert code == 2
        assert problem in err


def test_serve_reports_every_problem_of_its_configuration_at_once(tmp_path: Path) -> None:
    from test_cli import hw

    (tmp_path / "bad.yaml").write_text(
        "port: 0\n"
        "limits: {rate: -1}\n"
        "pipelines:\n"
        "  a:\n"
        "    pipeline:\n"
        "      name: a\n"
        "      sources: {n: {action: range, params: {stop: 3}}}\n"
        "      steps: [{transformer: mapp}]\n"
        "      sinks: [{sink: websocket}]\n"
        "  b: nope.yaml\n"
    )
    proc = hw("serve", "--config", "bad.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "(3 problems)" in proc.stderr
    assert "limits.rate: Input should be greater than 0" in proc.stderr
    assert "pipelines.b.pipeline: cannot read nope.yaml" in proc.stderr
    assert "pipelines.a.steps[0].transformer: no transformer 'mapp'; did you mean 'map'?" in (
        proc.stderr
    )


def test_serve_help_names_the_dashboard_and_the_endpoints(tmp_path: Path) -> None:
    from test_cli import hw

    text = hw("serve", "--help", cwd=tmp_path).stdout
    for needle in ("dashboard", "/metrics", "/api/pipelines", "/api/runs", "/healthz"):
        assert needle in text
    assert "130" in text  # its exit codes


def test_run_off_a_terminal_prints_a_progress_line_every_period(tmp_path: Path) -> None:
    from test_cli import hw

    (tmp_path / "p.yaml").write_text(
        "name: paced\nbatch_size: 1\n"
        "sources: {n: {action: range, params: {stop: 300}}}\n"
        "steps: [{transformer: throttle, params: {rate: 100, burst: 1}}]\n"
        "sinks: [{sink: collect}]\n"
    )
    proc = hw("run", "p.yaml", "--progress-every", "0.2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("progress: ")]
    assert lines, proc.stderr
    # counted at the sink against the source's total, with an ETA; what the source has
    # read (ahead of the throttle) is apart
    pattern = re.compile(
        r"progress: ([\d,]+)/300 \(\d+%\) delivered in \d+s · [\d.,]+ items/s delivered"
        r" · ETA \d+s · read ([\d,]+)"
    )
    found = next((m for line in lines if (m := pattern.search(line))), None)
    assert found, lines
    assert int(found.group(1).replace(",", "")) <= int(found.group(2).replace(",", ""))
    assert "\r" not in proc.stderr  # plain lines, never rewritten
    quiet = hw("run", "p.yaml", "--no-progress", "--progress-every", "0.2", cwd=tmp_path)
    assert "progress: " not in quiet.stderr
