"""Tests of the built-in sources ``file.lines`` and ``stdin`` (real files, real pipes)."""

from __future__ import annotations

import io
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import headwater
from headwater.core.plugins import get_plugin_manager

STAGE = "sources.file.lines"


def read_lines(path: Path | str, **params: Any) -> list[str]:
    """Run ``file.lines`` into ``collect`` and return the lines."""
    result = headwater.Pipeline("t").source("file.lines", path=str(path), **params)
    return list(result.sink("collect").run_sync().output)


def reference_lines(text: str, strip: bool = True) -> list[str]:
    """What ``file.lines`` should produce for ``text``: split on \\n, \\r\\n stripped."""
    if not text:
        return []
    parts = text.split("\n")
    last = parts.pop()
    lines = [p.removesuffix("\r") if strip else p + "\n" for p in parts]
    if last:
        lines.append(last)
    return lines


# -- file.lines: content ------------------------------------------------------------------


def test_reads_lines_without_terminators(tmp_path: Path) -> None:
    p = tmp_path / "a.txt"
    p.write_bytes(b"alpha\nbeta\n\ngamma\n")
    assert read_lines(p) == ["alpha", "beta", "", "gamma"]


def test_last_line_without_newline_is_emitted(tmp_path: Path) -> None:
    p = tmp_path / "a.txt"
    p.write_bytes(b"one\ntwo")
    assert read_lines(p) == ["one", "two"]
    assert read_lines(p, strip_newline=False) == ["one\n", "two"]


def test_crlf_is_a_terminator(tmp_path: Path) -> None:
    p = tmp_path / "win.txt"
    p.write_bytes(b"one\r\ntwo\r\n\r\nthree")
    assert read_lines(p) == ["one", "two", "", "three"]
    assert read_lines(p, strip_newline=False) == ["one\r\n", "two\r\n", "\r\n", "three"]


def test_crlf_split_across_blocks(tmp_path: Path) -> None:
    p = tmp_path / "win.txt"
    p.write_bytes(b"abc\r\ndef\r\n")  # block 4 ends right between \r and \n
    for size in (1, 2, 3, 4, 5):
        assert read_lines(p, block_size=size) == ["abc", "def"], size


def test_lone_carriage_return_is_content(tmp_path: Path) -> None:
    p = tmp_path / "cr.txt"
    p.write_bytes(b"a\rb\nc\r")
    assert read_lines(p) == ["a\rb", "c\r"]


def test_empty_file_gives_no_lines(tmp_path: Path) -> None:
    p = tmp_path / "empty.txt"
    p.write_bytes(b"")
    assert read_lines(p) == []


def test_only_newline_gives_one_empty_line(tmp_path: Path) -> None:
    p = tmp_path / "nl.txt"
    p.write_bytes(b"\n")
    assert read_lines(p) == [""]


def test_accepts_a_path_object(tmp_path: Path) -> None:
    p = tmp_path / "a.txt"
    p.write_text("x\ny\n", encoding="utf-8")
    result = headwater.Pipeline("t").source("file.lines", path=p).sink("collect").run_sync()
    assert result.output == ["x", "y"]


def test_multibyte_characters_across_block_boundaries(tmp_path: Path) -> None:
    text = "héllo wörld ✓\n日本語のテキスト\n🙂🙃\nend"
    p = tmp_path / "u.txt"
    p.write_bytes(text.encode("utf-8"))
    expected = reference_lines(text)
    for size in (1, 2, 3, 5, 7, 64):
        assert read_lines(p, block_size=size) == expected, size


def test_other_encodings(tmp_path: Path) -> None:
    text = "café\r\nnaïve\nfin"
    latin = tmp_path / "latin.txt"
    latin.write_bytes(text.encode("latin-1"))
    assert read_lines(latin, encoding="latin-1") == ["café", "naïve", "fin"]
    wide = tmp_path / "utf16.txt"
    wide.write_bytes(text.encode("utf-16"))  # with BOM; 2 bytes per char
    assert read_lines(wide, encoding="utf-16", block_size=3) == ["café", "naïve", "fin"]


def test_invalid_bytes_fail_with_path_and_offset(tmp_path: Path) -> None:
    p = tmp_path / "bad.txt"
    p.write_bytes(b"good\nbad \xff here\n")
    with pytest.raises(headwater.PipelineFailed) as info:
        read_lines(p)
    err = info.value.errors[0]
    assert isinstance(err, headwater.StageError)
    assert err.stage == STAGE
    message = str(err.cause)
    assert str(p) in message
    assert "utf-8" in message
    assert "byte 9" in message


def test_invalid_bytes_replaced_on_request(tmp_path: Path) -> None:
    p = tmp_path / "bad.txt"
    p.write_bytes(b"good\nbad \xff here\n")
    assert read_lines(p, errors="replace") == ["good", "bad \ufffd here"]


def test_start_line_and_max_lines(tmp_path: Path) -> None:
    p = tmp_path / "n.txt"
    p.write_text("".join(f"{i}\n" for i in range(1, 101)), encoding="utf-8")
    assert read_lines(p, start_line=98) == ["98", "99", "100"]
    assert read_lines(p, max_lines=3) == ["1", "2", "3"]
    assert read_lines(p, start_line=10, max_lines=2, block_size=7) == ["10", "11"]
    assert read_lines(p, max_lines=0) == []
    assert read_lines(p, start_line=500) == []


@settings(max_examples=150, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(["a", "é", "✓", "\n", "\r", " ", "🙂"]), max_size=60),
    block_size=st.integers(min_value=1, max_value=16),
    strip=st.booleans(),
)
def test_matches_reference_splitting(
    tmp_path_factory: pytest.TempPathFactory, text: str, block_size: int, strip: bool
) -> None:
    p = tmp_path_factory.mktemp("prop") / "f.txt"
    p.write_bytes(text.encode("utf-8"))
    got = read_lines(p, block_size=block_size, strip_newline=strip)
    assert got == reference_lines(text, strip)


# -- file.lines: large files and progress -------------------------------------------------


@pytest.mark.anyio
async def test_large_file_streams_in_batches_with_byte_progress(tmp_path: Path) -> None:
    p = tmp_path / "big.log"
    expected = [f"{i:06d} " + "x" * (i % 37) for i in range(200_000)]
    p.write_text("\n".join(expected) + "\n", encoding="utf-8")
    size = p.stat().st_size
    assert size > 4 * 256 * 1024  # spans several default blocks

    spec = headwater.Pipeline("big").source("file.lines", path=str(p)).sink("collect")
    progress: list[headwater.Progress] = []
    async with headwater.open_run(spec) as handle:
        async for event in handle.events():
            if isinstance(event, headwater.Progress) and event.stage == STAGE:
                progress.append(event)
    result = await handle.wait()

    assert result.state == "succeeded"
    assert result.output == expected
    assert progress, "no progress event"
    last = progress[-1]
    assert last.done == size
    assert last.total == size
    assert last.fraction == 1.0
    dones = [e.done for e in progress]
    assert dones == sorted(dones)
    assert all(e.total == size for e in progress)
    assert result.summary["stages"][STAGE]["items_out"] == 200_000


@pytest.mark.anyio
async def test_progress_of_an_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.txt"
    p.write_bytes(b"")
    spec = headwater.Pipeline("e").source("file.lines", path=str(p)).sink("collect")
    progress = []
    async with headwater.open_run(spec) as handle:
        async for event in handle.events():
            if isinstance(event, headwater.Progress):
                progress.append(event)
    assert (await handle.wait()).output == []
    assert [(e.done, e.total) for e in progress] == [(0, 0)]


@pytest.mark.anyio
async def test_max_lines_stops_reading_early(tmp_path: Path) -> None:
    """With ``max_lines`` satisfied, the rest of the file is never read."""
    p = tmp_path / "many.txt"
    p.write_text("line\n" * 50_000, encoding="utf-8")
    size = p.stat().st_size
    spec = headwater.Pipeline("m").source("file.lines", path=str(p), block_size=4096, max_lines=10)
    progress = []
    async with headwater.open_run(spec.sink("null")) as handle:
        async for event in handle.events():
            if isinstance(event, headwater.Progress):
                progress.append(event)
    assert (await handle.wait()).output == 10
    assert progress[-1].done == 4096
    assert progress[-1].total == size


@pytest.mark.anyio
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX named pipes")
async def test_named_pipe_has_unknown_total(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "wb") as w:
            for i in range(3):
                w.write(f"chunk {i}\n".encode())
                w.flush()
                time.sleep(0.05)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    spec = headwater.Pipeline("f").source("file.lines", path=str(fifo)).sink("collect")
    progress = []
    async with headwater.open_run(spec) as handle:
        async for event in handle.events():
            if isinstance(event, headwater.Progress):
                progress.append(event)
    writer.join(timeout=10)
    assert (await handle.wait()).output == ["chunk 0", "chunk 1", "chunk 2"]
    assert progress
    assert all(e.total is None for e in progress)
    assert progress[-1].done == len(b"chunk 0\n") * 3


# -- file.lines: errors -------------------------------------------------------------------


@pytest.mark.anyio
async def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "missing.log"
    spec = headwater.Pipeline("m").source("file.lines", path=str(missing)).sink("collect")
    with pytest.raises(headwater.PipelineFailed) as info:
        await spec.run()
    err = info.value.errors[0]
    assert isinstance(err, headwater.StageError)
    assert err.stage == STAGE
    assert err.plugin is not None
    assert isinstance(err.cause, FileNotFoundError)
    assert "no such file" in str(err.cause)
    assert str(missing) in str(err.cause)
    assert str(missing) in str(info.value)


def test_missing_relative_path_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(headwater.PipelineFailed) as info:
        read_lines("app.log")
    message = str(info.value.errors[0])
    assert "'app.log'" in message
    assert str(tmp_path / "app.log") in message


def test_directory_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(headwater.PipelineFailed) as info:
        read_lines(tmp_path)
    cause = info.value.errors[0].cause  # type: ignore[attr-defined]
    assert isinstance(cause, IsADirectoryError | PermissionError)  # Windows: EACCES
    assert str(tmp_path) in str(cause)


def test_bad_params_are_validation_errors(tmp_path: Path) -> None:
    spec = (
        headwater.Pipeline("v")
        .source("file.lines", path="x", encoding="no-such-codec", errors="nope", start_line=0)
        .sink("collect")
    )
    with pytest.raises(headwater.PipelineValidationError) as info:
        spec.run_sync()
    paths = {issue.path for issue in info.value.issues}
    assert paths == {
        "sources['file.lines'].params.encoding",
        "sources['file.lines'].params.errors",
        "sources['file.lines'].params.start_line",
    }
    assert "no-such-codec" in str(info.value)


def test_metadata() -> None:
    pm = get_plugin_manager()
    lines = pm.get("action", "file.lines").metadata()
    assert set(lines["capabilities"]) == {"streaming", "progress", "resumable"}
    assert lines["description"]
    props = lines["params_schema"]["properties"]
    assert {"path", "encoding", "errors", "strip_newline", "start_line", "max_lines"} <= set(props)
    assert all(p.get("description") for p in props.values())
    stdin = pm.get("action", "stdin").metadata()
    assert "streaming" in stdin["capabilities"]
    assert all(p.get("description") for p in stdin["params_schema"]["properties"].values())


# -- stdin (real subprocesses) --------------------------------------------------------------

STDIN_SCRIPT = """
import sys
import headwater
params = dict(arg.split("=", 1) for arg in sys.argv[1:])
strip = params.pop("strip", "true") == "true"
fmt = params.pop("format", "json")
result = (
    headwater.Pipeline("cat")
    .source("stdin", strip_newline=strip, **params)
    .sink("stdout", format=fmt)
    .run_sync()
)
print("count", result.output, file=sys.stderr)
"""


def child_env() -> dict[str, str]:
    """The environment of a child interpreter: UTF-8 stdio, unbuffered."""
    return {**os.environ, "PYTHONIOENCODING": "utf-8", "PYTHONUNBUFFERED": "1"}


def run_child(data: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run the stdin -> stdout pipeline in a child process fed with ``data``."""
    return subprocess.run(
        [sys.executable, "-c", STDIN_SCRIPT, *args],
        input=data,
        capture_output=True,
        timeout=60,
        env=child_env(),
        check=False,
    )


def test_stdin_lines_reach_stdout() -> None:
    proc = run_child("one\r\ntwo\n\nünïcode ✓\nlast".encode())
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode("utf-8").splitlines()
    assert out == ['"one"', '"two"', '""', '"ünïcode ✓"', '"last"']
    assert b"count 5" in proc.stderr


def test_stdin_keeps_terminators_on_request() -> None:
    proc = run_child(b"a\r\nb\n", "strip=false", "format=repr")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().splitlines() == ["'a\\r\\n'", "'b\\n'"]


def test_stdin_encoding() -> None:
    proc = run_child("café\n".encode("latin-1"), "encoding=latin-1", "format=str")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode("utf-8") == "café\n"


def test_stdin_decode_error_fails_the_run() -> None:
    proc = run_child(b"ok\n\xff\xfe\n")
    assert proc.returncode != 0
    assert b"PipelineFailed" in proc.stderr
    assert b"sources.stdin" in proc.stderr


def test_stdin_empty_input() -> None:
    proc = run_child(b"")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b""
    assert b"count 0" in proc.stderr


def test_stdin_delivers_each_line_promptly() -> None:
    """Interactive use: every line comes out before the next one is even written."""
    lines: queue.Queue[bytes] = queue.Queue()
    with subprocess.Popen(
        [sys.executable, "-c", STDIN_SCRIPT, "format=str"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
    ) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        stdout = proc.stdout

        def pump() -> None:
            for raw in iter(stdout.readline, b""):
                lines.put(raw)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            for word in ("first", "second", "third"):
                proc.stdin.write(word.encode() + b"\n")
                proc.stdin.flush()
                # the pipe stays open: the line must come through on its own
                assert lines.get(timeout=30) == word.encode() + b"\n"
            proc.stdin.close()
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            reader.join(timeout=5)
        assert b"count 3" in proc.stderr.read()


def test_stdin_cancelled_run_does_not_keep_the_process_alive() -> None:
    """A run stopped while stdin is idle (still open) ends, and so does the process."""
    script = (
        "import sys, headwater\n"
        "r = headwater.Pipeline('t').source('stdin').sink('collect')"
        ".timeouts(total=0.3).run_sync(raise_on_error=False, backend=sys.argv[1])\n"
        "print(r.state)\n"
    )
    for backend in ("asyncio", "trio"):
        with subprocess.Popen(
            [sys.executable, "-c", script, backend],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=child_env(),
        ) as proc:
            assert proc.stdout is not None
            started = time.monotonic()
            try:
                code = proc.wait(timeout=30)  # stdin is never written to nor closed
                out = proc.stdout.read()
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            assert code == 0, backend
            assert out.strip() == b"cancelled", backend
            assert time.monotonic() - started < 30


@pytest.mark.anyio
@pytest.mark.parametrize(
    "stream",
    [
        pytest.param(lambda: io.StringIO("a\nb\r\n\nçé"), id="text-stream"),
        pytest.param(lambda: io.TextIOWrapper(io.BytesIO("a\nb\r\n\nçé".encode())), id="binary"),
    ],
)
async def test_stdin_in_process(monkeypatch: pytest.MonkeyPatch, stream: Any) -> None:
    monkeypatch.setattr(sys, "stdin", stream())
    result = await headwater.Pipeline("in").source("stdin").sink("collect").run()
    assert result.output == ["a", "b", "", "çé"]
