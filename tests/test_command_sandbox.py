"""The ``command`` action under the operator's sandbox policy.

Real programs in real folders: a fake ``ls`` on a ``PATH`` the pipeline sets must never
run; the operator's ``PATH`` and allow-list decide; deny patterns understand options.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import headwater
from headwater.builtin_plugins.catalogue import command as command_module
from headwater.builtin_plugins.command_policy import PROTECTED_ENV, deny_matches

pytestmark = pytest.mark.skipif(
    sys.platform == "win32" or shutil.which("ls") is None, reason="needs POSIX ls and sh"
)

FAKE = '#!/bin/sh\necho "fake $(basename "$0") ran as $0"\ntouch "{marker}"\n'


@pytest.fixture(scope="module")
def plugins() -> headwater.PluginManager:
    pm = headwater.PluginManager(load_entry_points=False, strict=True)
    from headwater.builtin_plugins.catalogue import sinks, sources

    for name, module in (
        ("headwater.sources", sources),
        ("headwater.sinks", sinks),
        ("headwater.command", command_module),
    ):
        assert pm.register(module, name)
    return pm


@pytest.fixture
def evil(tmp_path: Path) -> Path:
    """A folder holding its own ``ls``, which leaves a marker file when it runs."""
    folder = tmp_path / "evil"
    folder.mkdir()
    script = folder / "ls"
    script.write_text(FAKE.format(marker=tmp_path / "fake-ran"))
    script.chmod(0o755)
    return folder


def engine(plugins: headwater.PluginManager, **policy: Any) -> headwater.Engine:
    return headwater.Engine(plugin_manager=plugins, policy=headwater.SandboxPolicy(**policy))


def run(plugins: headwater.PluginManager, params: dict[str, Any], **policy: Any) -> list[Any]:
    pipeline = headwater.Pipeline("cmd").source("command", **params).sink("collect")
    return list(pipeline.run_sync(engine=engine(plugins, **policy)).output)


def refused(plugins: headwater.PluginManager, params: dict[str, Any], **policy: Any) -> str:
    with pytest.raises(headwater.PipelineValidationError) as info:
        run(plugins, params, **policy)
    return str(info.value)


def stdout(items: list[Any]) -> list[str]:
    return [i["line"] for i in items if i["stream"] == "stdout"]


# -- a PATH of the pipeline's own cannot swap the program -------------------------------------


@pytest.mark.parametrize(
    ("params", "policy"),
    [
        ({"allow": ["ls"]}, {}),
        ({}, {"commands": ("ls",)}),
        ({"allow": ["ls"]}, {"commands": ("ls", "cat")}),
        ({"allow": ["ls"], "inherit_env": False}, {}),
    ],
    ids=["allow-param", "operator-list", "both", "no-inherit"],
)
def test_a_pipeline_path_is_refused(
    plugins: headwater.PluginManager,
    tmp_path: Path,
    evil: Path,
    params: dict[str, Any],
    policy: dict[str, Any],
) -> None:
    params = {"argv": ["ls", str(tmp_path)], "env": {"PATH": str(evil)}, **params}
    message = refused(plugins, params, **policy)
    assert "sources.command.params.env: PATH: a pipeline may not set PATH" in message
    assert "HEADWATER_COMMAND_ENV" in message
    assert not (tmp_path / "fake-ran").exists()


def test_an_allowed_path_variable_still_does_not_choose_the_program(
    plugins: headwater.PluginManager, tmp_path: Path, evil: Path
) -> None:
    """With PATH allowed, the child sees it, but ``ls`` is the operator's ``ls``."""
    params = {"argv": ["ls", "-a", str(tmp_path)], "allow": ["ls"], "env": {"PATH": str(evil)}}
    lines = stdout(run(plugins, params, command_env=("PATH",)))
    assert "evil" in lines
    assert not (tmp_path / "fake-ran").exists()


def test_the_operator_path_decides_and_the_absolute_path_runs(
    plugins: headwater.PluginManager, tmp_path: Path, evil: Path
) -> None:
    """The operator may put a folder on the policy's PATH; that program then runs, under
    its absolute path."""
    params = {"argv": ["ls"], "allow": ["ls"]}
    lines = stdout(run(plugins, params, command_path=f"{evil}{os.pathsep}{os.defpath}"))
    assert lines == [f"fake ls ran as {evil / 'ls'}"]
    assert (tmp_path / "fake-ran").exists()


def test_relative_entries_of_the_operator_path_are_ignored(
    plugins: headwater.PluginManager,
    tmp_path: Path,
    evil: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(evil)
    message = refused(plugins, {"argv": ["ls"], "allow": ["ls"]}, command_path=f".{os.pathsep}")
    assert "program 'ls' not found on the operator's PATH" in message
    assert not (tmp_path / "fake-ran").exists()


def test_a_bare_name_allows_only_the_operator_program(
    plugins: headwater.PluginManager, tmp_path: Path, evil: Path
) -> None:
    """A path to another file of the same name is refused; the same file by another path
    (a symlinked folder) is the same program."""
    message = refused(plugins, {"argv": [str(evil / "ls")]}, commands=("ls",))
    assert "program '" in message
    assert "not in the operator's allow-list" in message
    assert not (tmp_path / "fake-ran").exists()
    real_ls = shutil.which("ls", path=os.defpath)
    assert real_ls is not None
    alias = tmp_path / "alias"
    alias.symlink_to(Path(real_ls).parent, target_is_directory=True)
    lines = stdout(run(plugins, {"argv": [str(alias / "ls"), "-d", "."]}, commands=("ls",)))
    assert lines == ["."]


def test_multi_call_programs_are_told_apart_by_name(
    plugins: headwater.PluginManager, tmp_path: Path
) -> None:
    """``ls`` and ``rm`` as links to one file (busybox): allowing one is not the other."""
    folder = tmp_path / "bin"
    folder.mkdir()
    multi = folder / "multi"
    multi.write_text(FAKE.format(marker=tmp_path / "multi-ran"))
    multi.chmod(0o755)
    (folder / "ls").symlink_to(multi)
    (folder / "rm").symlink_to(multi)
    policy = {"commands": ("ls",), "command_path": str(folder)}
    message = refused(plugins, {"argv": ["rm", "x"]}, **policy)
    assert "program 'rm' refused: not in the operator's allow-list" in message
    assert not (tmp_path / "multi-ran").exists()
    assert stdout(run(plugins, {"argv": ["ls"]}, **policy)) == [f"fake ls ran as {folder / 'ls'}"]


@pytest.mark.parametrize(
    "name",
    [
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "DYLD_INSERT_LIBRARIES",
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "BASH_ENV",
        "ENV",
        "BASH_FUNC_ls%%",
        "IFS",
        "NODE_OPTIONS",
        "path",
    ],
)
def test_loader_variables_are_refused(
    plugins: headwater.PluginManager, tmp_path: Path, name: str
) -> None:
    marker = tmp_path / "marker"
    params = {"argv": ["touch", str(marker)], "allow": ["touch"], "env": {name: str(tmp_path)}}
    message = refused(plugins, params)
    assert f"sources.command.params.env: {name}: a pipeline may not set {name}" in message
    assert not marker.exists()


def test_the_operator_may_allow_protected_variables(
    plugins: headwater.PluginManager, tmp_path: Path
) -> None:
    script = 'echo "$LD_LIBRARY_PATH $GREETING"'
    env = {"LD_LIBRARY_PATH": str(tmp_path), "GREETING": "hello"}
    params = {"argv": ["sh", "-c", script], "allow": ["sh"], "env": env}
    assert stdout(run(plugins, params, command_env=("LD_*",))) == [f"{tmp_path} hello"]
    assert "PYTHONPATH" in refused(
        plugins, {**params, "env": {"PYTHONPATH": "x"}}, command_env=("LD_*",)
    )
    # the unrestricted policy of trusted code: no allow-list needed, any variable
    unrestricted = {"argv": ["sh", "-c", "echo $PYTHONPATH"], "env": {"PYTHONPATH": "p"}}
    assert stdout(run(plugins, unrestricted, unrestricted=True)) == ["p"]


def test_the_allow_param_only_narrows_the_operator_list(
    plugins: headwater.PluginManager, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    params = {"argv": ["touch", str(marker)], "allow": ["touch"]}
    message = refused(plugins, params, commands=("ls",))
    assert "program 'touch' refused: not in the operator's allow-list" in message
    message = refused(plugins, {**params, "allow": ["ls"]}, commands=("ls", "touch"))
    assert "program 'touch' refused: not in the allow param" in message
    assert not marker.exists()
    assert run(plugins, params, commands=("ls", "touch"))[-1]["returncode"] == 0
    assert marker.exists()


# -- deny patterns ----------------------------------------------------------------------------

RECURSIVE = ["-R", "-lR", "-Rl", "--recursive", "--recur", "--recursive=yes", "--r"]


@pytest.mark.parametrize("arg", RECURSIVE)
def test_deny_refuses_every_form_of_an_option(
    plugins: headwater.PluginManager, tmp_path: Path, arg: str
) -> None:
    params = {"argv": ["ls", arg, str(tmp_path)], "allow": ["ls"], "deny": ["-R", "--recursive"]}
    assert f"argument {arg!r} refused: it matches deny pattern" in refused(plugins, params)


@pytest.mark.parametrize("arg", ["-l", "-r", "-la", "--reverse", "--", "recursive", "-"])
def test_deny_lets_other_arguments_through(
    plugins: headwater.PluginManager, tmp_path: Path, arg: str
) -> None:
    params = {"argv": ["ls", arg, "."], "allow": ["ls"], "deny": ["-R", "--recursive"]}
    items = run(plugins, {**params, "cwd": str(tmp_path)}, roots=(tmp_path,))
    assert items[-1]["stream"] == "exit"


@pytest.mark.parametrize(
    ("arg", "pattern", "expected"),
    [
        ("--color=always", "--color=al*", True),
        ("--col=always", "--color=al*", True),
        ("--color=never", "--color=al*", False),
        ("--color", "--color=al*", False),
        ("--force-with-lease", "--force*", True),
        ("--fo", "--force*", True),
        ("--file=/etc/passwd", "/etc/*", True),
        ("--file=/tmp/x", "/etc/*", False),
        ("--Recursive", "--[rR]ecursive", True),
        ("--Rec", "--[rR]ecursive", True),
        ("--xec", "--[rR]ecursive", False),
        ("-rf", "-f", True),
        ("-rf", "-rf", True),
        ("-r", "-rf", False),
        ("rm", "-r", False),
        ("--", "--", True),
        ("--x", "--", False),
    ],
)
def test_deny_semantics(arg: str, pattern: str, expected: bool) -> None:
    assert deny_matches(arg, pattern) is expected


ALPHABET = "ab-="


def _starts_a_match(text: str, pattern: str) -> bool:
    """Brute force: some completion of ``text`` over the alphabet matches ``pattern``
    (a completion never needs more characters than the pattern has)."""
    for n in range(len(pattern) + 1):
        for tail in itertools.product(ALPHABET, repeat=n):
            if fnmatchcase(text + "".join(tail), pattern):
                return True
    return False


def reference_deny(arg: str, pattern: str) -> bool:
    """The documented semantics, written out plainly."""
    if fnmatchcase(arg, pattern):
        return True
    if arg.startswith("--"):  # a long option, --NAME or --NAME=VALUE
        name, _, value = arg[2:].partition("=")
        has_value = "=" in arg[2:]
        if name == "":
            return False
        if pattern.startswith("--"):
            pattern_name, _, pattern_value = pattern[2:].partition("=")
            if not _starts_a_match(name, pattern_name):
                return False
            if "=" not in pattern[2:]:
                return True
            return has_value and fnmatchcase(value, pattern_value)
        if pattern.startswith("-"):
            return False
        return has_value and fnmatchcase(value, pattern)
    if arg.startswith("-") and len(arg) > 2 and pattern.startswith("-"):
        return any(fnmatchcase(f"-{letter}", pattern) for letter in arg[1:])
    return False


@settings(max_examples=400, deadline=None)
@given(
    arg=st.text(alphabet=ALPHABET, max_size=6),
    pattern=st.text(alphabet=ALPHABET + "*?", max_size=6),
)
def test_deny_matches_the_reference(arg: str, pattern: str) -> None:
    assert deny_matches(arg, pattern) is reference_deny(arg, pattern)


@settings(max_examples=200, deadline=None)
@given(
    name=st.text(alphabet="ab", min_size=1, max_size=4),
    pattern=st.text(alphabet="ab*?", max_size=5),
)
def test_long_patterns_refuse_every_prefix(name: str, pattern: str) -> None:
    """Directly: ``--NAME`` is refused exactly when NAME begins a match of the pattern."""
    assert deny_matches(f"--{name}", f"--{pattern}") is _starts_a_match(name, pattern)


def test_protected_names_are_documented() -> None:
    assert {"PATH", "LD_*", "PYTHON*", "DYLD_*", "BASH_ENV", "ENV", "IFS"} <= set(PROTECTED_ENV)


# -- the working folder and the inherited environment -----------------------------------------


def test_cwd_outside_the_roots_is_refused(plugins: headwater.PluginManager, tmp_path: Path) -> None:
    message = refused(plugins, {"argv": ["ls"], "cwd": "/etc"}, commands=("ls",), roots=(tmp_path,))
    assert "cwd" in message
    assert "outside" in message


def test_cwd_inside_the_roots_runs_there(plugins: headwater.PluginManager, tmp_path: Path) -> None:
    (tmp_path / "marker.txt").write_text("x")
    items = run(
        plugins, {"argv": ["ls"], "cwd": str(tmp_path)}, commands=("ls",), roots=(tmp_path,)
    )
    assert "marker.txt" in stdout(items)


def test_programs_never_inherit_the_server_tokens(
    plugins: headwater.PluginManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADWATER_TOKENS", "planted-token-123")
    monkeypatch.setenv("HEADWATER_TEST_VISIBLE", "visible-value")
    items = run(plugins, {"argv": ["env"]}, commands=("env",), roots=(tmp_path,))
    lines = stdout(items)
    assert "HEADWATER_TEST_VISIBLE=visible-value" in lines
    assert not any("planted-token-123" in line for line in lines)
