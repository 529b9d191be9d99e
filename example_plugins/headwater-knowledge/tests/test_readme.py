"""The README is a tutorial: its commands run, in order, from an empty folder to a query
answered by the served page's pipeline; its Python blocks run; its pipeline runs.

It needs the distribution installed (its ``headwater`` entry point and the
``headwater-knowledge`` command), as a reader has it after ``pip install``; the fixed
ports of the text are replaced by free ones.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: {proc.stderr and proc.stderr.read()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


@pytest.fixture
def tutorial(tmp_path: Path) -> Iterator[tuple[list[tuple[str, str]], Path, dict[str, str]]]:
    if not README.is_file():
        pytest.skip("the README is not beside the tests")
    try:
        importlib.metadata.distribution("headwater-knowledge")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("headwater-knowledge is not installed (pip install it to run its README)")
    text = README.read_text(encoding="utf-8")
    ports = {"8765": str(_free_port()), "8766": str(_free_port())}
    for old, new in ports.items():
        text = text.replace(old, new)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
    # the commands a reader's pip install puts on PATH, for this interpreter
    shims = tmp_path / "bin"
    shims.mkdir()
    for command, module in (
        ("headwater", "headwater"),
        ("headwater-knowledge", "headwater_knowledge.cli"),
    ):
        shim = shims / command
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m {module} "$@"\n')
        shim.chmod(0o755)
    env["PATH"] = f"{shims}{os.pathsep}{env.get('PATH', '')}"
    yield FENCE.findall(text), tmp_path, {**env, **{f"PORT_{k}": v for k, v in ports.items()}}


def test_the_readme_runs_from_install_to_an_answer(
    tutorial: tuple[list[tuple[str, str]], Path, dict[str, str]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    blocks, workdir, env = tutorial
    monkeypatch.chdir(workdir)
    background: list[subprocess.Popen[str]] = []
    ran: list[str] = []
    try:
        for language, body in blocks:
            if language == "bash":
                for line in body.replace("\\\n", " ").splitlines():
                    line = line.split(" #")[0].strip()
                    if not line or line.startswith(
                        ("#", "python -m pip install", "python -m pytest")
                    ):
                        continue
                    if line.endswith("&") or line.startswith("headwater serve"):
                        proc = subprocess.Popen(
                            ["bash", "-c", f"exec {line.rstrip('&')}"],
                            cwd=workdir,
                            env=env,
                            text=True,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE,
                        )
                        background.append(proc)
                        port = (
                            env["PORT_8765"]
                            if line.startswith("headwater serve")
                            else env["PORT_8766"]
                        )
                        _wait_port(int(port), proc)
                    else:
                        done = subprocess.run(
                            ["bash", "-c", line],
                            cwd=workdir,
                            env=env,
                            text=True,
                            capture_output=True,
                            timeout=300,
                            check=False,
                        )
                        assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
                        if line == "headwater plugins":
                            assert "headwater_knowledge" in done.stdout
                    ran.append(line)
            elif language == "python":
                code = compile(body, "README.md", "exec")
                exec(code, {"__name__": "readme"})  # noqa: S102 - the README's code is the test
                ran.append("python")
            elif language == "yaml":
                (workdir / "pipeline.yaml").write_text(body)
                done = subprocess.run(
                    [sys.executable, "-m", "headwater", "run", "pipeline.yaml", "--no-progress"],
                    cwd=workdir,
                    env=env,
                    text=True,
                    capture_output=True,
                    timeout=300,
                    check=False,
                )
                assert done.returncode == 0, done.stderr
                events = [
                    json.loads(line) for line in (workdir / "answer.jsonl").read_text().splitlines()
                ]
                assert events[-1]["type"] == "complete"
                assert {p for p, s in events[-1]["providers"].items() if s["state"] == "done"} == {
                    "fts",
                    "files",
                    "web",
                }
                ran.append("yaml")
    finally:
        for proc in background:
            proc.terminate()
        for proc in background:
            proc.wait(30)
    printed = capsys.readouterr().out
    assert "headwater" in printed.lower()  # the client's answer quotes the notes
    assert any(r.startswith("headwater serve") for r in ran)
    assert ran.count("python") == 2 and "yaml" in ran
