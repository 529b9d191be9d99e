"""docs/tutorial-first-plugin.md works as written, in a fresh virtual environment.

The test reads the page's fenced blocks in order and plays them: every line of a ``bash``
block is run (``headwater ...`` as ``python -m headwater ...``, ``python -m pip install``
offline, ``mkdir`` and ``cd`` in the test's working directory), and a ``yml`` block whose
first line is ``# FILE`` is saved as ``FILE``. The ``text`` and ``toml`` blocks that show
generated files must match what ``headwater new-plugin`` wrote.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from venv_helpers import PluginVenv, make_plugin_venv

PAGE = Path(__file__).resolve().parent.parent / "docs" / "tutorial-first-plugin.md"

pytestmark = pytest.mark.slow  # a new virtual environment, a pip install
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


class Tutorial:
    """Plays the tutorial's commands in a venv, keeping a current directory."""

    def __init__(self, env: PluginVenv) -> None:
        self.env = env
        self.cwd = env.workdir
        self.outputs: dict[str, str] = {}
        """stdout of each command run, by its command line."""

    def command(self, line: str) -> None:
        """Run one command line of a ``bash`` block."""
        words = shlex.split(line, comments=True)
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
        elif program == "headwater":
            self.outputs[line] = self.env.run("-m", "headwater", *args, cwd=self.cwd).stdout
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


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> Tutorial:
    """The whole tutorial, followed in a new virtual environment."""
    tutorial = Tutorial(make_plugin_venv(tmp_path_factory.mktemp("tutorial")))
    for language, body in FENCE.findall(PAGE.read_text(encoding="utf-8")):
        if language == "bash":
            for line in body.splitlines():
                tutorial.command(line)
        elif language == "yml":
            name = body.partition("\n")[0].removeprefix("# ").strip()
            (tutorial.cwd / name).write_text(body, encoding="utf-8")
    return tutorial


def test_tests_of_the_new_plugin_pass(played: Tutorial) -> None:
    assert "4 passed" in played.outputs["python -m pytest"]


def test_new_action_is_listed(played: Tutorial) -> None:
    listing = played.env.headwater_json("plugins")
    plugins = {p["name"]: p for p in listing["plugins"]}
    assert plugins["acme_weather"]["distribution"] == "acme-weather"
    assert plugins["acme_weather"]["components"] == ["action:acme_weather.count"]
    assert "acme_weather.count" in played.outputs["headwater plugins"]
    described = played.outputs["headwater describe acme_weather.count"]
    assert "start_at" in described


def test_run_produces_the_chunks(played: Tutorial) -> None:
    assert played.outputs["headwater run count.yaml"].split() == ["0", "1", "2", "3", "4"]
    # the same file, its chunks collected and reported in the JSON summary
    args = ("run", "count.yaml", "--set", "sinks.0.sink=collect", "--no-progress", "--json")
    proc = played.env.run("-m", "headwater", *args, cwd=played.cwd)
    assert json.loads(proc.stdout)["outputs"] == {"collect": [0, 1, 2, 3, 4]}


def test_conformance_check_passes(played: Tutorial) -> None:
    assert "headwater plugins --check" in played.outputs  # it exited 0


def test_shown_files_match_the_scaffold(played: Tutorial) -> None:
    blocks = FENCE.findall(PAGE.read_text(encoding="utf-8"))
    module = (played.cwd / "src" / "acme_weather" / "__init__.py").read_text()
    pyproject = (played.cwd / "pyproject.toml").read_text()
    assert ("text", module) in blocks
    tomls = [body for language, body in blocks if language == "toml"]
    assert tomls
    assert all(body in pyproject for body in tomls)
