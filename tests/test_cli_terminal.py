"""``headwater run`` on a real terminal (a pseudo-terminal): Ctrl-C typed at the keyboard
cancels the run and leaves one clean final frame, and the terminal is given back as it
was."""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from test_cli import _env

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX terminals")

LONG = """\
name: long
batch_size: 1
sources: {n: {action: range, params: {stop: 100000}}}
steps: [{transformer: throttle, params: {rate: 50, burst: 1}}]
sinks: [{sink: collect}]
"""

WAIT = 60.0


class Screen:
    """Everything the program writes to the terminal, read in a thread."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.data = b""
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # EIO: the other side is closed
                chunk = b""
            with self.changed:
                if not chunk:
                    self.changed.notify_all()
                    return
                self.data += chunk
                self.changed.notify_all()

    def wait_for(self, text: bytes) -> int:
        """Wait until ``text`` was written; its offset."""
        deadline = time.monotonic() + WAIT
        with self.changed:
            while text not in self.data:
                left = deadline - time.monotonic()
                assert left > 0, f"{text!r} never came: {self.data[-2000:]!r}"
                self.changed.wait(left)
            return self.data.index(text)


def test_ctrl_c_leaves_one_clean_frame_and_the_terminal_as_it_was(tmp_path: Path) -> None:
    (tmp_path / "long.yaml").write_text(LONG)
    master, slave = os.openpty()
    # 118 of the 120 columns are the bar: an echoed ^C would wrap it
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 20, 120, 0, 0))
    before = termios.tcgetattr(slave)
    assert before[3] & termios.ECHOCTL
    env = _env({"TERM": "xterm-256color"})
    env.pop("COLUMNS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "headwater", "run", "long.yaml"],
        cwd=tmp_path,
        env=env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )
    screen = Screen(master)
    try:
        screen.wait_for(b"items/s delivered")
        mark = len(screen.data)
        os.write(master, b"\x03")  # Ctrl-C, as typed: the terminal sends SIGINT
        assert proc.wait(timeout=WAIT) == 130
        screen.wait_for(b"cancelled (interrupted)")
        after = termios.tcgetattr(slave)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(slave)
        screen.thread.join(WAIT)
        os.close(master)
    tail = screen.data[mark:]
    assert b"^C" not in tail  # no echo to wrap the last line of the bars
    assert b"SIGINT: cancelling the run" in tail
    assert after[3] & termios.ECHOCTL  # the terminal is given back as it was
    assert after == before
