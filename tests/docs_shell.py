"""Reads the fenced blocks of a documentation page and runs its shell blocks.

A page's ``bash`` and ``console`` blocks run in order, in one fresh folder per page, with
this Python's scripts (``headwater``, ``python``) first on ``PATH``. Markers in the page
source, HTML comments that the rendered page does not show, say how:

``<!-- shell-folder: examples -->`` (anywhere in the page)
    the folder starts with a copy of these paths of the repository (space-separated),
    for a page whose commands run from the root of a checkout; otherwise it is empty.
``<!-- not-run: REASON -->`` (just before a block)
    the block cannot run here (it installs packages, runs the test suite or the
    benchmarks, needs a service or a host this test does not have): it is only parsed
    (``bash -n``).
``<!-- until: TEXT -->``
    each command of the block runs until TEXT appears in its output, then gets SIGINT
    (for commands that run until stopped, such as ``headwater serve``).
``<!-- background: TEXT -->``
    the block's command starts, the page goes on once TEXT appears in its output, and
    it gets SIGINT when the page's last block has run (a server the next blocks use).

A ``yaml``, ``yml``, ``toml`` or ``json`` block whose first line is ``# NAME`` (a file
name) is written to NAME in the folder when it is reached, as a reader following the
page would save it; the first version of each such file is there from the start, since
a page may show a command before the file it reads.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SHELL_LANGUAGES = ("bash", "sh", "shell", "console")
FILE_LANGUAGES = ("yaml", "yml", "toml", "json")

COMMAND_TIMEOUT = 180.0
"""Seconds a block (or a long-running command, to its TEXT) may take before failing."""

STOP_TIMEOUT = 30.0
"""Seconds a long-running command may take to exit after SIGINT."""

_FENCE_OPEN = re.compile(r"^```(\w*)[^\n]*$")
_MARKER = re.compile(r"^<!--\s*([\w-]+)\s*:\s*(.*?)\s*-->\s*$")
_FILE_NAME = re.compile(r"^# ([\w][\w./-]*\.\w+)\s*$")


@dataclass
class Block:
    """One fenced block of a page, with the markers just before it."""

    language: str
    body: str
    line: int
    """1-based line of the opening fence."""
    markers: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"line {self.line}"

    def commands(self) -> list[str]:
        """The block's commands: one per line (``\\`` continues a line), without blank
        lines and comment lines; in a ``console`` block, the lines after ``$ ``."""
        lines = self.body.splitlines()
        if self.language == "console":
            lines = [ln[2:] for ln in lines if ln.startswith("$ ")]
        commands: list[str] = []
        pending = ""
        for raw in lines:
            if raw.rstrip().endswith("\\"):
                pending += raw.rstrip()[:-1] + " "
                continue
            text = (pending + raw).strip()
            pending = ""
            if text and not text.startswith("#"):
                commands.append(text)
        return commands

    def script(self) -> str:
        """The block as a shell script."""
        return "\n".join(self.commands()) if self.language == "console" else self.body

    def saved_as(self) -> str | None:
        """The file name of a file block (``# NAME`` first line), if any."""
        if self.language not in FILE_LANGUAGES:
            return None
        match = _FILE_NAME.match(self.body.partition("\n")[0])
        return match.group(1) if match else None


def read_blocks(text: str) -> tuple[list[Block], dict[str, str]]:
    """The fenced blocks of a page and its page-wide markers (``shell-folder``)."""
    blocks: list[Block] = []
    page: dict[str, str] = {}
    pending: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        marker = _MARKER.match(line)
        opening = _FENCE_OPEN.match(line)
        if marker:
            key, value = marker.groups()
            if key == "shell-folder":
                page[key] = value
            else:
                pending[key] = value
        elif opening:
            end = i + 1
            while end < len(lines) and not lines[end].startswith("```"):
                end += 1
            body = "\n".join(lines[i + 1 : end]) + "\n"
            blocks.append(Block(opening.group(1), body, i + 1, pending))
            pending = {}
            i = end
        elif line.strip():
            pending = {}  # a marker applies to the block right after it
        i += 1
    return blocks, page


def shell_env() -> dict[str, str]:
    """The environment of the commands: this Python's scripts first on ``PATH``."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.pop("HEADWATER_TOKENS", None)
    env["COLUMNS"] = "120"
    return env


def prepare_folder(folder: Path, page: dict[str, str]) -> None:
    """Copy the repository paths a page's ``shell-folder`` marker names into ``folder``."""
    for name in page.get("shell-folder", "").split():
        source = REPO / name
        target = folder / name
        if source.is_dir():
            shutil.copytree(
                source, target, ignore=shutil.ignore_patterns("__pycache__", "*.db", "*.jsonl")
            )
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def save(text: str, target: Path) -> None:
    """Write a file block, making its folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")


def check_syntax(block: Block) -> None:
    """``bash -n``: the block parses."""
    proc = subprocess.run(
        ["bash", "-n", "-c", block.script()], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, f"{block.where}: not valid shell:\n{proc.stderr}"


def run_block(block: Block, folder: Path, env: dict[str, str]) -> None:
    """Run the block as one ``bash -e -o pipefail`` script; it must exit 0."""
    proc = subprocess.Popen(
        ["bash", "-e", "-o", "pipefail", "-c", block.script()],
        cwd=folder,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a timeout ends every process the block started
    )
    try:
        stdout, stderr = proc.communicate(timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(
            f"{block.where}: still running after {COMMAND_TIMEOUT:.0f} s:\n{block.body}"
        ) from None
    assert proc.returncode == 0, (
        f"{block.where}: exit status {proc.returncode}\n{block.body}\n"
        f"--- stdout\n{stdout[-3000:]}\n--- stderr\n{stderr[-3000:]}"
    )


class LongRunning:
    """A command that runs until stopped, its output collected as it comes."""

    def __init__(self, command: str, folder: Path, env: dict[str, str]) -> None:
        self.command = command
        self.output = ""
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            ["bash", "-c", command],
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # SIGINT reaches the command, not this test
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            with self._changed:
                self.output += raw.decode(errors="replace")
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, text: str) -> None:
        """Return once ``text`` is in the output; fail if the command ends first."""
        deadline = time.monotonic() + COMMAND_TIMEOUT
        with self._changed:
            while text not in self.output:
                if not self._reader.is_alive():
                    raise AssertionError(
                        f"{self.command!r} ended (status {self.proc.wait()}) before "
                        f"printing {text!r}:\n{self.output[-3000:]}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{self.command!r} did not print {text!r} in {COMMAND_TIMEOUT:.0f} s:"
                        f"\n{self.output[-3000:]}"
                    )
                self._changed.wait(left)

    def stop(self) -> int:
        """SIGINT, then the exit status (killed and failed when it does not exit)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(
                f"{self.command!r} did not exit within {STOP_TIMEOUT:.0f} s of SIGINT"
            ) from None
        finally:
            self._reader.join(timeout=STOP_TIMEOUT)


@contextmanager
def page_runner(folder: Path) -> Iterator[list[LongRunning]]:
    """The background commands of a page; each is stopped when the page is done."""
    background: list[LongRunning] = []
    try:
        yield background
    finally:
        for command in background:
            command.stop()


def play_page(text: str, folder: Path) -> list[str]:
    """Play a page's blocks in ``folder``; returns what was done, one line a block."""
    blocks, page = read_blocks(text)
    prepare_folder(folder, page)
    env = shell_env()
    done: list[str] = []
    for block in reversed(blocks):  # a command may come before the file it reads
        name = block.saved_as()
        if name is not None:
            save(block.body, folder / name)
    with page_runner(folder) as background:
        for block in blocks:
            name = block.saved_as()
            if name is not None:
                save(block.body, folder / name)
                done.append(f"{block.where}: saved {name}")
                continue
            if block.language not in SHELL_LANGUAGES:
                continue
            check_syntax(block)
            if "not-run" in block.markers:
                done.append(f"{block.where}: parsed only ({block.markers['not-run']})")
            elif "background" in block.markers:
                (command,) = block.commands()
                started = LongRunning(command, folder, env)
                background.append(started)
                started.wait_for(block.markers["background"])
                done.append(f"{block.where}: started {command}")
            elif "until" in block.markers:
                for command in block.commands():
                    running = LongRunning(command, folder, env)
                    try:
                        running.wait_for(block.markers["until"])
                    finally:
                        running.stop()
                done.append(f"{block.where}: ran until {block.markers['until']!r}")
            else:
                run_block(block, folder, env)
                done.append(f"{block.where}: ran")
    return done
