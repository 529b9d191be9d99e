"""Tests of the ``command`` built-in: real processes, real process groups, real signals."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import headwater
from headwater.builtin_plugins import catalogue
from headwater.builtin_plugins import command as command_module
from headwater.core.context import RunIdentity, StreamContext
from headwater.core.services import EngineServices
from headwater.testing import builtin_plugin_manager

pytestmark = pytest.mark.skipif(
    sys.platform == "win32" or shutil.which("sh") is None, reason="needs a POSIX sh"
)

SH = ["sh", "-c"]


@pytest.fixture(scope="module")
def plugins() -> headwater.PluginManager:
    """The built-ins, with ``headwater.command`` registered by hand until its entry point."""
    manager = builtin_plugin_manager()
    if "headwater.command" not in manager.plugins:
        assert manager.register(catalogue.command, "headwater.command"), manager.failures
    return manager


@pytest.fixture(autouse=True)
def _no_operator_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(command_module.ALLOW_ENV, raising=False)


def pipeline(**params: Any) -> headwater.Pipeline:
    return headwater.Pipeline("cmd").source("command", **params).sink("collect")


def engine(plugins: headwater.PluginManager, **policy: Any) -> headwater.Engine:
    """An engine on ``plugins`` whose operator policy has the ``policy`` fields."""
    return headwater.Engine(plugin_manager=plugins, policy=headwater.SandboxPolicy(**policy))


def ctx() -> StreamContext:
    return StreamContext(RunIdentity("t", "r"), "sources.command")


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for a reaper counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: os.kill said it exists
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_gone(pids: list[int], seconds: float = 5.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = [pid for pid in pids if alive(pid)]
        if not left:
            return []
        time.sleep(0.02)
    return [pid for pid in pids if alive(pid)]


@pytest.fixture
def reaper() -> Iterator[list[int]]:
    """Pids a test started; any still alive at the end are killed (and the test fails)."""
    pids: list[int] = []
    yield pids
    left = [pid for pid in pids if alive(pid)]
    for pid in left:
        os.kill(pid, 9)
    assert not left, f"processes left running: {left}"


# -- streaming --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_lines_stream_in_order_as_they_come(tmp_path: Path) -> None:
    """Each line arrives while the program still runs: the program waits for a file that
    the test creates only once it received the line before."""
    go = [tmp_path / "go1", tmp_path / "go2"]
    wait = "while [ ! -e {} ]; do sleep 0.01; done"
    script = f"echo one; {wait.format(go[0])}; echo two >&2; {wait.format(go[1])}; printf 'three'"
    params = command_module.CommandParams(argv=[*SH, script], allow=["sh"])
    items: list[dict[str, Any]] = []
    with anyio.fail_after(60):
        async for batch in command_module.command.obj(params, ctx()):
            for item in batch:
                items.append(item)
                if len(items) <= len(go):  # "one", then "two": let the program go on
                    go[len(items) - 1].touch()
    assert items[:3] == [
        {"stream": "stdout", "line": "one"},
        {"stream": "stderr", "line": "two"},
        {"stream": "stdout", "line": "three"},
    ]
    exit_item = items[3]
    assert exit_item["stream"] == "exit"
    assert exit_item["returncode"] == 0
    assert exit_item["signal"] is None
    assert exit_item["timed_out"] is False


def test_exit_status_is_an_item_and_a_status_message(plugins: headwater.PluginManager) -> None:
    events: list[Any] = []

    async def main() -> headwater.RunResult:
        spec = pipeline(argv=[*SH, "echo out; exit 3"], allow=["sh"])
        async with headwater.open_run(spec, plugins=plugins) as handle:
            events.extend([event async for event in handle.events()])
            return await handle.wait()

    result = anyio.run(main)
    assert result.state == "succeeded"  # check is off: a status is data, not a failure
    assert result.output[0] == {"stream": "stdout", "line": "out"}
    assert result.output[-1]["returncode"] == 3
    messages = [e.message for e in events if isinstance(e, headwater.Status) and e.stage]
    assert any("started sh (pid" in (m or "") for m in messages)
    assert "sh exited with status 3" in messages


def test_check_fails_on_a_non_zero_status(plugins: headwater.PluginManager) -> None:
    result = pipeline(argv=[*SH, "exit 4"], allow=["sh"], check=True).run_sync(
        plugins=plugins, raise_on_error=False
    )
    assert result.state == "failed"
    assert "CommandFailed: sh exited with status 4" in str(result.errors[0])


def test_killed_by_a_signal(plugins: headwater.PluginManager) -> None:
    result = pipeline(argv=[*SH, "kill -TERM $$"], allow=["sh"]).run_sync(plugins=plugins)
    assert result.output[-1]["returncode"] == -15
    assert result.output[-1]["signal"] == "SIGTERM"


def test_env_cwd_and_long_lines(plugins: headwater.PluginManager, tmp_path: Path) -> None:
    script = 'echo "$GREETING from $(pwd)"; printf "%0300d\\n" 0'
    result = pipeline(
        argv=[*SH, script],
        allow=["sh"],
        env={"GREETING": "hello"},
        cwd=str(tmp_path),
        max_line_bytes=128,
    ).run_sync(plugins=plugins)
    lines = [i for i in result.output if i["stream"] == "stdout"]
    assert lines[0]["line"] == f"hello from {tmp_path}"
    assert [i.get("partial", False) for i in lines[1:]] == [True, True, False]
    assert "".join(i["line"] for i in lines[1:]) == "0" * 300


def test_program_allowed_by_full_path(plugins: headwater.PluginManager) -> None:
    sh = shutil.which("sh")
    assert sh is not None
    result = pipeline(argv=[*SH, "echo ok"], allow=[sh]).run_sync(plugins=plugins)
    assert result.output[0]["line"] == "ok"


# -- timeout and cancellation: the whole process group goes -----------------------------


def test_timeout_kills_the_group(
    plugins: headwater.PluginManager, tmp_path: Path, reaper: list[int]
) -> None:
    pidfile = tmp_path / "pids"
    script = 'sleep 60 & echo $! > "$1"; echo started; wait'
    started = time.monotonic()
    result = pipeline(argv=[*SH, script, "sh", str(pidfile)], allow=["sh"], timeout=0.5).run_sync(
        plugins=plugins, raise_on_error=False
    )
    reaper.append(int(pidfile.read_text()))
    assert time.monotonic() - started < 5
    assert result.state == "failed"
    assert "TimeoutError: sh timed out after 0.5s" in str(result.errors[0])
    assert wait_gone(reaper) == []


async def _wait_for_pids(pidfile: Path, count: int) -> list[int]:
    with anyio.fail_after(10):
        while True:
            path = anyio.Path(pidfile)
            text = await path.read_text() if await path.exists() else ""
            pids = [int(p) for p in text.split()]
            if len(pids) >= count:
                return pids
            await anyio.sleep(0.02)


CHILDREN = 'sleep 60 & echo $! >> "$1"; sleep 60 & echo $! >> "$1"; echo $$ >> "$1"; wait'
"""A shell that starts two children and waits: three pids written to the file in $1."""


@pytest.mark.anyio
async def test_cancelling_the_run_kills_every_child(
    plugins: headwater.PluginManager, tmp_path: Path, reaper: list[int]
) -> None:
    pidfile = tmp_path / "pids"
    spec = pipeline(argv=[*SH, CHILDREN, "sh", str(pidfile)], allow=["sh"])
    async with headwater.open_run(spec, plugins=plugins) as handle:
        reaper.extend(await _wait_for_pids(pidfile, 3))
        assert all(alive(pid) for pid in reaper)
        handle.cancel("test")
        result = await handle.wait()
    assert result.state == "cancelled"
    assert wait_gone(reaper) == []


@pytest.mark.anyio
async def test_closing_the_generator_kills_every_child(tmp_path: Path, reaper: list[int]) -> None:
    """What the runtime does when a consumer stops early (``take``): ``aclose()``."""
    pidfile = tmp_path / "pids"
    script = CHILDREN.replace("wait", "echo ready; wait")
    params = command_module.CommandParams(argv=[*SH, script, "sh", str(pidfile)], allow=["sh"])
    agen = command_module.command.obj(params, ctx())
    try:
        async for batch in agen:
            if any(item.get("line") == "ready" for item in batch):
                break
    finally:
        await agen.aclose()
    reaper.extend(await _wait_for_pids(pidfile, 3))
    assert wait_gone(reaper) == []


def test_stopping_early_downstream_kills_the_program(
    plugins: headwater.PluginManager, tmp_path: Path, reaper: list[int]
) -> None:
    pidfile = tmp_path / "pids"
    script = 'echo $$ > "$1"; while true; do echo tick; sleep 0.01; done'
    result = (
        headwater.Pipeline("early")
        .source("command", argv=[*SH, script, "sh", str(pidfile)], allow=["sh"])
        .step("take", count=5)
        .sink("collect")
        .run_sync(plugins=plugins)
    )
    reaper.append(int(pidfile.read_text()))
    assert [i["line"] for i in result.output] == ["tick"] * 5
    assert wait_gone(reaper) == []


# -- refused commands never run -----------------------------------------------------------

OPERATOR_LIST = "not in the operator's allow-list (HEADWATER_COMMAND_ALLOW or sandbox.commands)"
DENIED: list[tuple[dict[str, Any], tuple[str, ...] | None, str]] = [
    ({}, None, "no allow-list"),
    ({"allow": ["ls"]}, None, "not in the allow param"),
    ({"allow": ["touch"], "deny": ["*marker*"]}, None, "matches deny pattern '*marker*'"),
    ({"allow": ["touch"], "deny": ["touch"]}, None, "matches deny pattern 'touch'"),
    ({"allow": ["touch"]}, ("ls", "cat"), OPERATOR_LIST),
    ({}, ("ls",), OPERATOR_LIST),
    ({"allow": ["touch"]}, (), OPERATOR_LIST),
]


@pytest.mark.parametrize(("params", "commands", "message"), DENIED)
def test_denied_commands_are_refused_before_running(
    plugins: headwater.PluginManager,
    tmp_path: Path,
    params: dict[str, Any],
    commands: tuple[str, ...] | None,
    message: str,
) -> None:
    marker = tmp_path / "marker"
    with pytest.raises(headwater.PipelineValidationError) as info:
        pipeline(argv=["touch", str(marker)], **params).run_sync(
            engine=engine(plugins, commands=commands)
        )
    assert "sources.command.params" in str(info.value)
    assert message in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("argv", "params", "message"),
    [
        (["sh", "-c", "touch {marker}"], {"allow": ["sh"], "deny": ["-c"]}, "deny pattern '-c'"),
        (["{copy}", "{marker}"], {"allow": ["touch"]}, "not in the allow param"),
        (["./touch", "{marker}"], {"allow": ["touch"]}, "not found"),
        (["no-such-program-hw", "{marker}"], {"allow": ["no-such-program-hw"]}, "not found"),
        ("touch {marker}", {"allow": ["touch"]}, "argv: Input should be a valid list"),
        (["touch", "{marker}\0x"], {"allow": ["touch"]}, "NUL character"),
        ([], {"allow": ["touch"]}, "at least 1 item"),
    ],
    ids=[
        "deny-flag",
        "path-for-bare-name",
        "relative-path",
        "missing",
        "shell-string",
        "nul",
        "empty",
    ],
)
def test_more_refusals(
    plugins: headwater.PluginManager,
    tmp_path: Path,
    argv: Any,
    params: dict[str, Any],
    message: str,
) -> None:
    marker = tmp_path / "marker"
    touch = shutil.which("touch")
    assert touch is not None
    copy = shutil.copy(touch, tmp_path / "touch")  # the same name, another file
    fill = {"marker": str(marker), "copy": str(copy)}
    argv = argv.format(**fill) if isinstance(argv, str) else [a.format(**fill) for a in argv]
    with pytest.raises(headwater.PipelineValidationError) as info:
        pipeline(argv=argv, **params).run_sync(plugins=plugins)
    assert message in str(info.value)
    assert not marker.exists()


def test_operator_allow_list_alone_permits(
    plugins: headwater.PluginManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The positive control of the refusals above: an allowed touch does create the file."""
    monkeypatch.setenv(command_module.ALLOW_ENV, " ls , touch ")
    marker = tmp_path / "marker"
    policy = headwater.SandboxPolicy.from_environment()
    assert policy.commands == ("ls", "touch")
    spec = pipeline(argv=["touch", str(marker)])
    result = spec.run_sync(engine=headwater.Engine(plugin_manager=plugins, policy=policy))
    assert result.output[-1]["returncode"] == 0
    assert marker.exists()


@pytest.mark.anyio
async def test_policy_is_checked_again_when_the_run_starts(tmp_path: Path) -> None:
    """Params validated under one policy do not run on an engine with a stricter one."""
    marker = tmp_path / "marker"
    loose = headwater.SandboxPolicy(commands=("touch",))
    params = command_module.CommandParams.model_validate(
        {"argv": ["touch", str(marker)]}, context=loose.validation_context()
    )
    strict = StreamContext(
        RunIdentity("t", "r"),
        "sources.command",
        services=EngineServices(policy=headwater.SandboxPolicy(commands=("ls",))),
    )
    with pytest.raises(PermissionError, match="not in the operator's allow-list"):
        async for _ in command_module.command.obj(params, strict):
            pass
    assert not marker.exists()


def test_describe_lists_the_safety_params(plugins: headwater.PluginManager) -> None:
    meta = plugins.get("action", "command").metadata()
    props = meta["params_schema"]["properties"]
    assert {"argv", "allow", "deny", "timeout", "check"} <= set(props)
    assert meta["params_schema"]["required"] == ["argv"]
    assert "streaming" in meta["capabilities"]
