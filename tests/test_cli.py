"""The ``headwater`` command, run for real as ``python -m headwater`` in a temporary dir."""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import pytest

from headwater.cli import CLIError, parse_overrides

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TIMEOUT = 120
"""Upper bound for one command; only hit when something hangs."""

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

SIMPLE = """\
name: simple
sources:
  nums: {action: range, params: {stop: 1000, chunk: 100}}
steps:
  - {transformer: map, params: {fn: "builtins:str"}}
sinks:
  - {sink: collect}
"""

ENDLESS = """\
name: endless
sources:
  nums: {action: range, params: {stop: 1000000000000000, chunk: 1000}}
sinks:
  - {sink: "null"}
"""


def _env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"HEADWATER_DISABLE_PLUGINS", "HEADWATER_STRICT_PLUGINS", "FORCE_COLOR"}
    }
    env["COLUMNS"] = "200"  # no wrapping of long lines in what the tests read
    env["PYTHONIOENCODING"] = "utf-8"
    env.update(extra or {})
    return env


def hw(
    *args: str | Path, cwd: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m headwater ARGS`` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "headwater", *map(str, args)],
        cwd=cwd,
        env=_env(env),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=TIMEOUT,
        check=False,
    )


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def assert_clean_error(proc: subprocess.CompletedProcess[str], code: int = 2) -> None:
    """Exit ``code``, one ``headwater: error:`` paragraph, no traceback."""
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "headwater: error:" in proc.stderr


# -- basics -----------------------------------------------------------------------------


def test_help_lists_the_commands(tmp_path: Path) -> None:
    proc = hw("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for command in ("run", "validate", "plugins", "describe", "schema"):
        assert command in proc.stdout
    assert "exit codes" in proc.stdout


def test_version(tmp_path: Path) -> None:
    import headwater

    proc = hw("--version", cwd=tmp_path)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"headwater {headwater.__version__}"


def test_no_command_is_a_usage_error(tmp_path: Path) -> None:
    proc = hw(cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


# -- run --------------------------------------------------------------------------------


def test_run_succeeds_and_prints_a_summary_on_stderr(tmp_path: Path) -> None:
    pipeline = write(tmp_path, "p.yaml", SIMPLE)
    proc = hw("run", pipeline, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # stdout stays clean for sinks
    err = proc.stderr
    assert "running pipeline 'simple'" in err
    assert "pipeline 'simple' succeeded: 1,000 items" in err
    assert "items/s" in err
    for stage in ("sources.nums", "steps[0].map", "sinks.collect"):
        assert stage in err
    assert re.search(r"^collect\s+1,000\s+kept in memory", err, re.M), err
    assert ANSI.search(err) is None  # no live display when stderr is not a terminal


def test_run_json_summary_on_stdout(tmp_path: Path) -> None:
    pipeline = write(tmp_path, "p.yaml", SIMPLE)
    proc = hw("run", pipeline, "--json", "--set", "sources.nums.params.stop=5", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["pipeline"] == "simple"
    assert summary["state"] == "succeeded"
    assert summary["items_in"] == 5
    assert summary["errors"] == []
    assert summary["cancel_reason"] is None
    assert list(summary["stages"]) == ["sources.nums", "steps[0].map", "sinks.collect"]
    assert summary["stages"]["sinks.collect"]["items_out"] == 5
    assert summary["outputs"] == {"collect": ["0", "1", "2", "3", "4"]}


def test_run_set_overrides_values_with_yaml_types(tmp_path: Path) -> None:
    pipeline = write(tmp_path, "p.yaml", SIMPLE)
    proc = hw(
        "run",
        pipeline,
        "--json",
        "--set",
        "sources.nums.params.stop=3",
        "--set",
        "steps[0].params.fn=builtins:repr",
        "--set=sources.nums.params.start=1",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["outputs"]["collect"] == ["1", "2"]


def test_run_set_with_a_wrong_type_names_the_path(tmp_path: Path) -> None:
    pipeline = write(tmp_path, "p.yaml", SIMPLE)
    proc = hw("run", pipeline, "--set", "sources.nums.params.stop=many", cwd=tmp_path)
    assert_clean_error(proc)
    assert "sources.nums.params.stop" in proc.stderr


def test_run_failing_pipeline_exits_1_with_the_stage_error(tmp_path: Path) -> None:
    pipeline = write(
        tmp_path,
        "p.yaml",
        """\
        name: fails
        sources:
          nums: {action: range, params: {stop: 10}}
        steps:
          - {transformer: map, params: {fn: "math:log"}}
        sinks:
          - {sink: collect}
        """,
    )
    proc = hw("run", pipeline, "--json", cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "pipeline 'fails' failed" in proc.stderr
    assert "steps[0].map" in proc.stderr
    assert "ValueError: math domain error" in proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["state"] == "failed"
    assert summary["errors"][0]["stage"] == "steps[0].map"
    assert summary["errors"][0]["position"] == 0
    verbose = hw("run", pipeline, "-v", cwd=tmp_path)
    assert verbose.returncode == 1
    assert "Traceback" in verbose.stderr  # -v shows where the error came from


def test_run_skipped_errors_are_reported_and_counted(tmp_path: Path) -> None:
    pipeline = write(
        tmp_path,
        "p.yaml",
        """\
        name: skips
        sources:
          nums: {action: range, params: {stop: 10}}
        steps:
          - {transformer: map, params: {fn: "math:log"}, on_error: skip}
        sinks:
          - {sink: collect}
        """,
    )
    proc = hw("run", pipeline, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "warning: steps[0].map at item 0: ValueError: math domain error" in proc.stderr
    assert "[on_error: skip]" in proc.stderr
    stage = json.loads(proc.stdout)["stages"]["steps[0].map"]
    assert (stage["errors"], stage["skipped"], stage["items_out"]) == (1, 1, 9)


def test_run_timeout_exits_1(tmp_path: Path) -> None:
    pipeline = write(tmp_path, "p.yaml", ENDLESS + "timeouts: {total: 0.3}\n")
    proc = hw("run", pipeline, "--json", cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "cancelled (total timeout)" in proc.stderr
    assert "exceeded its total timeout" in proc.stderr
    assert json.loads(proc.stdout)["state"] == "cancelled"


def test_run_missing_file_exits_2(tmp_path: Path) -> None:
    proc = hw("run", "nowhere.yaml", cwd=tmp_path)
    assert_clean_error(proc)
    assert "no such file: nowhere.yaml" in proc.stderr


def test_run_forced_progress_renders_bars(tmp_path: Path) -> None:
    pipeline = write(tmp_path, "p.yaml", SIMPLE)
    proc = hw("run", pipeline, "--progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    plain = ANSI.sub("", proc.stderr)
    # range reports its total and the map step keeps the number of items: the run's bar
    # counts the items delivered against it, and ends complete, with a percentage
    assert re.search(r"simple .*1,000/1,000\s+100%.*delivered · read 1,000", plain), plain


def test_no_progress_wins(tmp_path: Path) -> None:
    pipeline = write(tmp_path, "p.yaml", SIMPLE)
    proc = hw("run", pipeline, "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0
    assert "1,000/1,000" not in proc.stderr


class _Lines:
    """Reads a text stream in a thread, so that waits on it can be bounded."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, needle: str, timeout: float) -> bool:
        """True once a line containing ``needle`` was read; False on timeout or EOF."""
        while True:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                return False
            if line is None:
                return False
            self.lines.append(line)
            if needle in line:
                return True

    def rest(self, timeout: float) -> str:
        """Everything read, up to the end of the stream."""
        self._thread.join(timeout)
        while not self._queue.empty():
            line = self._queue.get()
            if line is not None:
                self.lines.append(line)
        return "".join(self.lines)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize(
    ("signum", "code", "reason", "backend"),
    [
        (signal.SIGINT, 130, "interrupted", "asyncio"),
        (signal.SIGTERM, 143, "terminated", "asyncio"),
        pytest.param(
            signal.SIGINT,
            130,
            "interrupted",
            "trio",
            marks=pytest.mark.skipif(
                importlib.util.find_spec("trio") is None, reason="trio not installed"
            ),
        ),
    ],
)
def test_signal_cancels_the_run_cleanly(
    tmp_path: Path, signum: signal.Signals, code: int, reason: str, backend: str
) -> None:
    pipeline = write(tmp_path, "p.yaml", ENDLESS)
    proc = subprocess.Popen(
        [sys.executable, "-m", "headwater", "run", str(pipeline), "--json", "--backend", backend],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    stderr = _Lines(proc.stderr)
    stdout = _Lines(proc.stdout)
    try:
        assert stderr.wait_for("running pipeline", TIMEOUT), stderr.rest(1)
        proc.send_signal(signum)
        proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = stderr.rest(TIMEOUT)
    out = stdout.rest(TIMEOUT)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert f"pipeline 'endless' cancelled ({reason})" in err
    summary = json.loads(out)
    assert summary["state"] == "cancelled"
    assert summary["cancel_reason"] == reason


# -- validate / schema ------------------------------------------------------------------


def test_validate_ok(tmp_path: Path) -> None:
    pipeline = write(tmp_path, "p.yaml", SIMPLE)
    proc = hw("validate", pipeline, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("OK: pipeline 'simple'")
    assert "1 source, 1 step, 1 sink" in proc.stdout


def test_validate_bad_yaml(tmp_path: Path) -> None:
    pipeline = write(tmp_path, "p.yaml", "name: [unclosed\nsources: {}\n")
    proc = hw("validate", pipeline, cwd=tmp_path)
    assert_clean_error(proc)
    assert "not valid YAML" in proc.stderr
    assert "p.yaml" in proc.stderr


def test_validate_unknown_key_names_its_path(tmp_path: Path) -> None:
    pipeline = write(tmp_path, "p.yaml", SIMPLE.replace("{stop: 1000", "{stop: 1000, sotp: 1"))
    proc = hw("validate", pipeline, cwd=tmp_path)
    assert_clean_error(proc)
    assert "sources.nums.params.sotp: unknown key" in proc.stderr


def test_validate_unknown_shape_key(tmp_path: Path) -> None:
    pipeline = write(tmp_path, "p.yaml", SIMPLE + "stepz: []\n")
    proc = hw("validate", pipeline, cwd=tmp_path)
    assert_clean_error(proc)
    assert "stepz: unknown key" in proc.stderr


def test_validate_set_path_out_of_range(tmp_path: Path) -> None:
    pipeline = write(tmp_path, "p.yaml", SIMPLE)
    proc = hw("validate", pipeline, "--set", "steps[5].params.fn=x", cwd=tmp_path)
    assert_clean_error(proc)
    assert "steps[5]" in proc.stderr


def test_validate_unknown_component_suggests(tmp_path: Path) -> None:
    text = SIMPLE.replace("action: range", "action: rnge").replace("map,", "mapp,")
    pipeline = write(tmp_path, "p.yaml", text)
    proc = hw("validate", pipeline, cwd=tmp_path)
    assert_clean_error(proc)
    assert "sources.nums.action: no action 'rnge'; did you mean 'range'?" in proc.stderr
    assert "steps[0].transformer: no transformer 'mapp'; did you mean 'map'?" in proc.stderr
    assert "2 problems" in proc.stderr


def test_set_without_equals_is_a_usage_error(tmp_path: Path) -> None:
    pipeline = write(tmp_path, "p.yaml", SIMPLE)
    proc = hw("validate", pipeline, "--set", "name", cwd=tmp_path)
    assert_clean_error(proc)
    assert "--set expects KEY=VALUE" in proc.stderr


def test_schema_is_json(tmp_path: Path) -> None:
    proc = hw("schema", cwd=tmp_path)
    assert proc.returncode == 0
    schema = json.loads(proc.stdout)
    assert "sources" in schema["properties"]
    assert "sinks" in schema["required"]


# -- plugins / describe -----------------------------------------------------------------


def _plugins_json(tmp_path: Path, *args: str, env: Mapping[str, str] | None = None) -> Any:
    proc = hw(*args, "plugins", "--json", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _owner(tmp_path: Path, kind: str, name: str) -> str:
    data = _plugins_json(tmp_path)
    return str(
        next(c["plugin"] for c in data["components"] if (c["kind"], c["name"]) == (kind, name))
    )


def test_plugins_json_structure(tmp_path: Path) -> None:
    data = _plugins_json(tmp_path)
    assert set(data) == {"plugins", "components", "failures"}
    assert data["failures"] == []
    plugin_keys = {"name", "distribution", "version", "module", "components", "disabled"}
    for plugin in data["plugins"]:
        assert set(plugin) == plugin_keys
    component_keys = {"name", "kind", "plugin", "distribution", "version", "description"}
    for component in data["components"]:
        assert component_keys <= set(component)
        assert "params_schema" in component
    by_name = {(c["kind"], c["name"]): c for c in data["components"]}
    assert by_name["action", "range"]["distribution"] == "headwater"
    owner = by_name["action", "range"]["plugin"]
    owning = next(p for p in data["plugins"] if p["name"] == owner)
    assert "action:range" in owning["components"]


def test_plugins_human_listing(tmp_path: Path) -> None:
    proc = hw("plugins", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "plugins loaded" in proc.stdout
    assert re.search(r"action\s+range\s+Count", proc.stdout)
    assert "LOAD ERRORS" not in proc.stdout


def test_describe_range_json(tmp_path: Path) -> None:
    proc = hw("describe", "range", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads(proc.stdout)
    assert (meta["name"], meta["kind"]) == ("range", "action")
    assert "progress" in meta["capabilities"]
    assert "stop" in meta["params_schema"]["properties"]
    assert "stop" in meta["params_schema"]["required"]


def test_describe_human(tmp_path: Path) -> None:
    proc = hw("describe", "range", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("range  (action)")
    assert re.search(r"stop\s+integer\s+required", proc.stdout)
    assert "params JSON schema" in proc.stdout


def test_describe_unknown_suggests(tmp_path: Path) -> None:
    proc = hw("describe", "rnage", cwd=tmp_path)
    assert_clean_error(proc)
    assert "did you mean 'range'" in proc.stderr


def test_describe_wrong_kind(tmp_path: Path) -> None:
    proc = hw("describe", "range", "--kind", "sink", cwd=tmp_path)
    assert_clean_error(proc)
    assert "no sink named 'range'; 'range' is an action" in proc.stderr


def test_disable_plugin_option_and_env(tmp_path: Path) -> None:
    owner = _owner(tmp_path, "sink", "collect")
    pipeline = write(tmp_path, "p.yaml", SIMPLE)
    assert hw("validate", pipeline, cwd=tmp_path).returncode == 0
    cases: list[tuple[list[str | Path], dict[str, str] | None]] = [
        (["--disable-plugin", owner, "validate", pipeline], None),
        (["validate", pipeline, "-p", f"no:{owner}"], None),
        (["validate", pipeline], {"HEADWATER_DISABLE_PLUGINS": f"nothing,{owner}"}),
    ]
    for args, env in cases:
        proc = hw(*args, cwd=tmp_path, env=env)
        assert_clean_error(proc)
        assert "sinks[0].sink: no sink 'collect'" in proc.stderr
    data = _plugins_json(tmp_path, "-p", f"no:{owner}")
    assert next(p for p in data["plugins"] if p["name"] == owner)["disabled"] is True
    assert all(c["plugin"] != owner for c in data["components"])


def test_pipeline_file_can_disable_plugins(tmp_path: Path) -> None:
    owner = _owner(tmp_path, "sink", "collect")
    pipeline = write(tmp_path, "p.yaml", SIMPLE + f"plugins: {{disable: [{owner}]}}\n")
    proc = hw("validate", pipeline, cwd=tmp_path)
    assert_clean_error(proc)
    assert "no sink 'collect'" in proc.stderr


def test_p_option_needs_no_prefix(tmp_path: Path) -> None:
    proc = hw("-p", "something", "plugins", cwd=tmp_path)
    assert_clean_error(proc)
    assert "-p expects no:NAME" in proc.stderr


@pytest.fixture
def broken_plugin_path(tmp_path: Path) -> Path:
    """A real (tiny) installed distribution whose headwater plugin fails to import."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "hw_broken_plugin.py").write_text("raise ImportError('needs libfoo')\n")
    info = site / "hw_broken-1.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hw-broken\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text("[headwater]\nbroken = hw_broken_plugin\n")
    return site


def test_broken_plugin_is_reported_not_fatal(tmp_path: Path, broken_plugin_path: Path) -> None:
    env = {"PYTHONPATH": str(broken_plugin_path)}
    data = _plugins_json(tmp_path, env=env)
    assert len(data["failures"]) == 1
    failure = data["failures"][0]
    assert failure["plugin"] == "broken"
    assert failure["distribution"] == "hw-broken"
    assert failure["version"] == "1.2"
    assert failure["stage"] == "import"
    assert "needs libfoo" in failure["error"]
    assert any(c["name"] == "range" for c in data["components"])

    human = hw("plugins", cwd=tmp_path, env=env)
    assert human.returncode == 0
    assert "LOAD ERRORS" in human.stdout
    assert "needs libfoo" in human.stdout
    assert "Traceback" not in human.stdout + human.stderr

    pipeline = write(tmp_path, "p.yaml", SIMPLE)
    ok = hw("run", pipeline, cwd=tmp_path, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "needs libfoo" in ok.stderr  # a warning, and the run goes on

    strict = hw("--strict-plugins", "plugins", cwd=tmp_path, env=env)
    assert strict.returncode == 2
    assert "LOAD ERRORS" in strict.stdout
    proc = hw("validate", pipeline, "--strict-plugins", cwd=tmp_path, env=env)
    assert_clean_error(proc)
    assert "needs libfoo" in proc.stderr

    disabled = _plugins_json(tmp_path, "-p", "no:broken", env=env)
    assert disabled["failures"] == []


DEMO_PLUGIN = """\
from pydantic import BaseModel

import headwater


class TicksParams(BaseModel):
    n: int = 5


@headwater.action("demo.ticks", params=TicksParams)
async def ticks(params, ctx):
    \"\"\"Count without a known total, with messages.\"\"\"
    ctx.status("warming up")
    for i in range(params.n):
        ctx.progress(i + 1, None, f"tick {i + 1}")
        yield i


@headwater.hookimpl
def register_actions(register):
    register(ticks)
"""


@pytest.fixture
def demo_plugin_path(tmp_path: Path) -> Path:
    """A real (tiny) installed distribution contributing the action ``demo.ticks``."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "hw_demo_plugin.py").write_text(DEMO_PLUGIN)
    info = site / "hw_demo-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hw-demo\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[headwater]\ndemo = hw_demo_plugin\n")
    return site


def test_third_party_progress_and_status(tmp_path: Path, demo_plugin_path: Path) -> None:
    env = {"PYTHONPATH": str(demo_plugin_path)}
    data = _plugins_json(tmp_path, env=env)
    demo = next(p for p in data["plugins"] if p["name"] == "demo")
    assert (demo["distribution"], demo["version"]) == ("hw-demo", "0.3")
    assert demo["components"] == ["action:demo.ticks"]
    pipeline = write(
        tmp_path,
        "p.yaml",
        """\
        name: ticking
        sources:
          t: {action: demo.ticks, params: {n: 7}}
        sinks:
          - {sink: collect}
        """,
    )
    plain = hw("run", pipeline, cwd=tmp_path, env=env)
    assert plain.returncode == 0, plain.stderr
    assert "sources.t: warming up" in plain.stderr  # status messages, even without bars
    live = hw("run", pipeline, "--progress", cwd=tmp_path, env=env)
    assert live.returncode == 0, live.stderr
    text = ANSI.sub("", live.stderr)
    # unknown total: a count (no "done/total", no percentage) and the latest message
    assert re.search(r"ticking .* 7 .*read 7 · sources\.t: tick 7", text), text
    assert "7/" not in text


# -- examples ---------------------------------------------------------------------------


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of the examples, laid out as in the repository, to run them from its root."""
    root = tmp_path / "checkout"
    shutil.copytree(EXAMPLES, root / "examples")
    return root


def test_quickstart_example_runs(checkout: Path) -> None:
    # As a newcomer runs it from the repository root, with faster pacing for the test.
    proc = hw(
        "run", "examples/quickstart.yaml", "--set", "steps.0.params.rate=100000", cwd=checkout
    )
    assert proc.returncode == 0, proc.stderr
    assert "pipeline 'quickstart' succeeded: 4,000 items" in proc.stderr
    lines = (checkout / "examples" / "out" / "quickstart.jsonl").read_text().splitlines()
    expected = [{"number": str(n)} for n in range(1, 4001) if "7" in str(n)]
    assert [json.loads(line) for line in lines] == expected


def test_errors_live_example_runs(checkout: Path) -> None:
    proc = hw("run", "examples/errors_live.yaml", cwd=checkout)
    assert proc.returncode == 0, proc.stderr
    printed = [json.loads(line) for line in proc.stdout.splitlines()]
    written = (checkout / "examples" / "out" / "errors.jsonl").read_text().splitlines()
    assert len(printed) == 5
    assert sorted(printed, key=str) == sorted((json.loads(line) for line in written), key=str)
    assert {e["service"] for e in printed} == {"app", "audit"}
    assert all(set(e) == {"time", "service", "message"} for e in printed)


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_every_example_validates(example: str, checkout: Path) -> None:
    proc = hw("validate", Path("examples") / example, cwd=checkout)
    assert proc.returncode == 0, proc.stderr


# -- in-process helpers -----------------------------------------------------------------


def test_parse_overrides_reads_yaml_scalars() -> None:
    values = parse_overrides(
        [
            "a=10",
            "b=1.5",
            "c=true",
            "d='10'",
            "e=",
            "f=[x, y]",
            "g=ERROR: (.*)",
            "h=a=b",
            "steps[0].params.size = 3",
        ]
    )
    assert values == {
        "a": 10,
        "b": 1.5,
        "c": True,
        "d": "10",
        "e": None,
        "f": ["x", "y"],
        "g": "ERROR: (.*)",
        "h": "a=b",
        "steps[0].params.size": 3,
    }
    with pytest.raises(CLIError):
        parse_overrides(["=1"])
