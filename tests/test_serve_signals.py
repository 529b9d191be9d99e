"""``headwater serve`` as a real subprocess: the exit status after SIGTERM and SIGINT is
the one ``headwater --help`` documents (128 + the signal's number)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from test_server_cli import Lines, headwater
from test_server_helpers import WAIT, http_get

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def documented_exit_code(name: str) -> int:
    """The exit code ``headwater --help`` lists for a signal (read from the help text)."""
    text = subprocess.run(
        [sys.executable, "-m", "headwater", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    for line in text.splitlines():  # "130  interrupted (SIGINT, Ctrl-C); 143 on SIGTERM"
        words = line.split()
        if f"on {name}" in line:
            return int(line.split(f"on {name}")[0].split()[-1])
        if name in line and words and words[0].isdigit():
            return int(words[0])
    raise AssertionError(f"no exit code for {name} in headwater --help:\n{text}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_serve_exits_with_the_documented_code_on_a_signal(
    tmp_path: Path, signum: signal.Signals
) -> None:
    expected = documented_exit_code(signum.name)
    assert expected == 128 + signum
    async with headwater("serve", "--port", "0", cwd=tmp_path) as server:
        err = Lines(server.stderr)
        port = int((await err.until(r"serving on http://127\.0\.0\.1:(\d+)")).group(1))
        status, _, _ = await http_get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200
        server.send_signal(signum)
        with anyio.fail_after(WAIT):
            assert await server.wait() == expected
        text = await err.rest()
    assert f"{signum.name}: shutting down" in text
    assert "server stopped" in text
    assert "Traceback" not in text
