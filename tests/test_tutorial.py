"""docs/tutorial-first-plugin.md works as written, in a fresh virtual environment.

The test reads the page's fenced blocks in order and plays them: every line of a ``bash``
block is run (``headwater ...`` as ``python -m headwater ...``, a line ending in ``&`` in
the background until ``kill %1``, ``python -m pip install`` offline, ``mkdir`` and ``cd``
in the test's working directory); a ``yml`` block whose first line is ``# FILE`` is
saved as ``FILE``; a ``python`` block whose first line is ``# FILE`` starts that file and
the ``python`` blocks after it, up to the next such block, are appended to it. The
``console`` block (installing headwater from a checkout) is not played: the test's
environment already has headwater. The ``toml`` blocks must be in the generated
``pyproject.toml``, and the ``text`` blocks of outputs must match what the commands
printed.
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
from pathlib import Path

import pytest

from http_helpers import free_port
from venv_helpers import TIMEOUT, PluginVenv, make_plugin_venv

PAGE = Path(__file__).resolve().parent.parent / "docs" / "tutorial-first-plugin.md"
PAGE_PORT = "8765"

pytestmark = pytest.mark.slow  # a new virtual environment, a pip install
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


class Tutorial:
    """Plays the tutorial's commands in a venv, keeping a current directory."""

    def __init__(self, env: PluginVenv) -> None:
        self.env = env
        self.cwd = env.workdir
        self.port = str(free_port())
        self.outputs: dict[str, str] = {}
        """stdout of each command run, by its command line."""
        self.errors: dict[str, str] = {}
        """stderr of each command run, by its command line."""
        self.background: subprocess.Popen[str] | None = None
        self.background_output = ""
        self.python_file: Path | None = None

    def command(self, line: str) -> None:
        """Run one command line of a ``bash`` block."""
        words = shlex.split(line.replace(PAGE_PORT, self.port), comments=True)
        if not words:
            return
        program, args = words[0], words[1:]
        if program == "mkdir":
            for name in args:
                (self.cwd / name).mkdir()
        elif program == "cd":
            (target,) = args
            self.cwd = (self.cwd / target).resolve()
            assert self.cwd.is_dir(), f"cd {target}: no such directory"
        elif program == "headwater" and args[-1] == "&":
            self.start_background(args[:-1])
        elif program == "headwater":
            proc = self.env.run("-m", "headwater", *args, cwd=self.cwd)
            self.outputs[line], self.errors[line] = proc.stdout, proc.stderr
        elif words == ["kill", "%1"]:
            self.stop_background()
        elif words[:5] == ["python", "-m", "pip", "install", "-e"]:
            (target,) = words[5:]
            match = re.fullmatch(r"(.*?)(\[.*\])?", target)
            assert match is not None
            project, extras = match.groups()
            assert extras == "[test]"  # pytest is already importable in the test venv
            self.env.pip_install(self.cwd / project, editable=True)
        elif words[:3] == ["python", "-m", "pytest"]:
            proc = self.env.run("-m", "pytest", "-p", "no:cacheprovider", *words[3:], cwd=self.cwd)
            self.outputs[line] = proc.stdout
        else:
            pytest.fail(f"the tutorial runs a command this test does not know: {line}")

    def start_background(self, args: list[str]) -> None:
        """Start ``headwater ARGS`` (a server); return once it serves."""
        assert self.background is None, "a second background command"
        self.background = subprocess.Popen(
            [str(self.env.python), "-m", "headwater", *args],
            cwd=self.cwd,
            env=self.env.environ(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.background.stdout is not None
        for out in self.background.stdout:  # blocks until the server says it serves
            self.background_output += out
            if out.startswith("serving on "):
                return
        pytest.fail(f"the server ended before serving:\n{self.background_output}")

    def stop_background(self) -> None:
        """``kill %1``: interrupt the server as Ctrl-C does, and wait for it."""
        assert self.background is not None, "kill %1 without a background command"
        self.background.send_signal(signal.SIGINT)
        rest, _ = self.background.communicate(timeout=TIMEOUT)
        self.background_output += rest
        self.background = None

    def python_block(self, body: str) -> None:
        """Write a ``python`` block to the file it names, or append it to the last one."""
        first = body.partition("\n")[0]
        if first.startswith("# ") and first.endswith(".py"):
            self.python_file = self.cwd / first.removeprefix("# ").strip()
            self.python_file.write_text(body, encoding="utf-8")
        else:
            assert self.python_file is not None, "a python block before any file"
            with self.python_file.open("a", encoding="utf-8") as out:
                out.write("\n\n" + body)


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> Tutorial:
    """The whole tutorial, followed in a new virtual environment."""
    tutorial = Tutorial(make_plugin_venv(tmp_path_factory.mktemp("tutorial")))
    try:
        for language, body in FENCE.findall(PAGE.read_text(encoding="utf-8")):
            if language == "bash":
                for line in body.splitlines():
                    tutorial.command(line)
            elif language == "yml":
                name = body.partition("\n")[0].removeprefix("# ").strip()
                (tutorial.cwd / name).write_text(body, encoding="utf-8")
            elif language == "python":
                tutorial.python_block(body)
    finally:
        if tutorial.background is not None:
            tutorial.background.kill()
            tutorial.background.communicate(timeout=TIMEOUT)
    return tutorial


def _blocks(language: str) -> list[str]:
    return [
        body for lang, body in FENCE.findall(PAGE.read_text(encoding="utf-8")) if lang == language
    ]


def test_tests_of_the_plugin_pass(played: Tutorial) -> None:
    assert "4 passed" in played.outputs["python -m pytest"]
    assert "4 passed" in "".join(_blocks("text"))
    tests = (played.cwd / "tests" / "test_acme_weather.py").read_text(encoding="utf-8")
    assert "assert_conforms(" in tests


def test_action_transformer_and_sink_are_listed(played: Tutorial) -> None:
    listing = played.env.headwater_json("plugins")
    plugins = {p["name"]: p for p in listing["plugins"]}
    assert plugins["acme_weather"]["distribution"] == "acme-weather"
    assert plugins["acme_weather"]["components"] == [
        "action:acme_weather.readings",
        "transformer:acme_weather.fahrenheit",
        "sink:acme_weather.alerts",
    ]
    listed = played.outputs["headwater plugins"]
    for name in ("acme_weather.readings", "acme_weather.fahrenheit", "acme_weather.alerts"):
        assert name in listed
    described = played.outputs["headwater describe acme_weather.alerts"]
    assert "above_f" in described
    assert "required" in described


def test_the_plugin_is_checked(played: Tutorial) -> None:
    shown = "".join(_blocks("text"))
    plain = played.outputs["headwater plugins --check acme-weather"]
    assert "checked 2, skipped 1, failed 0" in plain
    assert "checked 2, skipped 1, failed 0" in shown
    with_params = next(line for line in played.outputs if "--params" in line)
    assert "checked 3, skipped 0, failed 0" in played.outputs[with_params]
    assert "checked 3, skipped 0, failed 0" in shown
    written = (played.cwd / "check.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["station"] for line in written] == ["rome"]  # the sink ran
    proc = played.env.run("-m", "headwater", "plugins", "--check", "acme-weather", "--json")
    data = json.loads(proc.stdout)
    runs = {r["component"]: r["status"] for r in data["results"] if r["check"] == "run"}
    assert runs == {
        "acme_weather.readings": "pass",
        "acme_weather.fahrenheit": "pass",
        "acme_weather.alerts": "skip",
    }


def test_tail_receives_the_served_output(played: Tutorial) -> None:
    tail = next(line for line in played.outputs if line.startswith("headwater tail"))
    received = [json.loads(line) for line in played.outputs[tail].splitlines()]
    assert len(received) == 48  # 24 hours of two stations
    assert all("temp_f" in item for item in received)
    shown = next(body for body in _blocks("text") if '"station"' in body)
    for line in shown.splitlines()[:2]:
        assert json.loads(line) == received[shown.splitlines().index(line)]
    alerts = (played.cwd / "alerts.jsonl").read_text(encoding="utf-8").splitlines()
    assert alerts
    assert len(alerts) == sum(item["temp_f"] > 65 for item in received)
    assert f"serving on http://127.0.0.1:{played.port}" in played.background_output
    assert "server stopped" in played.background_output


def test_shown_files_match_the_scaffold(played: Tutorial) -> None:
    pyproject = (played.cwd / "pyproject.toml").read_text()
    tomls = _blocks("toml")
    assert tomls
    assert all(body in pyproject for body in tomls)


def test_the_server_was_stopped_by_the_page(played: Tutorial) -> None:
    assert played.background is None  # the page's kill %1 ended it
