"""The file roots of the sandbox: every built-in that opens a path stays inside them.

Each attack (an absolute path, ``..``, a symlink out, ``/proc``, ``follow_symlinks``
walking out, a symlink swapped in after validation, a sink writing outside) is tried on
real files against an engine whose policy has one root; a hypothesis test compares the
policy's decision with a plain resolver written here from ``lstat`` and ``readlink``.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import headwater
from headwater import SandboxPolicy
from headwater.builtin_plugins.files.walk import NEVER_OPENED, OUTSIDE_ROOTS, _Walker
from headwater.core.errors import PipelineFailed, PipelineValidationError, StageError
from headwater.core.pipeline import resolve
from headwater.core.policy import SandboxError, open_nofollow

SECRET = "top secret\n"


@pytest.fixture(scope="module")
def plugins() -> headwater.PluginManager:
    """The installed plugins, loaded once for the module's engines."""
    return headwater.PluginManager().load()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """``tmp/jail`` (the root) beside ``tmp/outside`` (a secret), with links between.

    jail/ok.txt, jail/logs/app.log, jail/logs/sub/deep.log; jail/in -> logs (inside),
    jail/out -> ../outside, jail/secret.txt -> ../outside/secret.txt, jail/proc -> /proc.
    """
    base = tmp_path.resolve()
    jail, outside = base / "jail", base / "outside"
    (jail / "logs" / "sub").mkdir(parents=True)
    outside.mkdir()
    (jail / "ok.txt").write_text("fine\n")
    (jail / "logs" / "app.log").write_text("start\nERROR inside\n")
    (jail / "logs" / "sub" / "deep.log").write_text("ERROR deep\n")
    (outside / "secret.txt").write_text(SECRET + "ERROR outside\n")
    (jail / "in").symlink_to("logs")
    (jail / "out").symlink_to("../outside")
    (jail / "secret.txt").symlink_to("../outside/secret.txt")
    (jail / "proc").symlink_to("/proc")
    return jail


@pytest.fixture
def engine(tree: Path, plugins: headwater.PluginManager) -> headwater.Engine:
    """An engine whose only root is the jail."""
    return headwater.Engine(plugin_manager=plugins, policy=SandboxPolicy(roots=(tree,)))


def collect(engine: headwater.Engine, action: str, **params: Any) -> list[Any]:
    """Run ``action`` as source ``f`` into the collect sink; return its items."""
    pipeline = headwater.Pipeline("t").source(action, name="f", **params).sink("collect")
    return list(pipeline.run_sync(engine=engine).output)


def refusal(engine: headwater.Engine, action: str, **params: Any) -> str:
    """The validation issue of source ``f``'s path param."""
    pipeline = headwater.Pipeline("t").source(action, name="f", **params).sink("collect")
    with pytest.raises(PipelineValidationError) as info:
        engine.prepare(pipeline.build())
    [issue] = info.value.issues
    assert issue.path == "sources.f.params.path"
    return issue.message


# -- the policy -----------------------------------------------------------------------------


def test_default_root_is_the_working_directory_and_the_environment_sets_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert SandboxPolicy.from_environment({}).roots == (tmp_path.resolve(),)
    assert SandboxPolicy().roots == (tmp_path.resolve(),)
    (tmp_path / "a").mkdir()
    env = {"HEADWATER_ROOTS": f"a{os.pathsep}/srv/data, /opt/x"}
    assert SandboxPolicy.from_environment(env).roots == (
        tmp_path.resolve() / "a",
        Path("/srv/data"),
        Path("/opt/x"),
    )
    assert SandboxPolicy(roots="a").roots == (tmp_path.resolve() / "a",)  # type: ignore[arg-type]
    # an override (server config, --root) wins over the environment
    policy = SandboxPolicy.from_environment(env, roots=("/srv/other",))
    assert policy.roots == (Path("/srv/other"),)
    # an Engine reads the environment when made
    monkeypatch.setenv("HEADWATER_ROOTS", "a")
    assert headwater.Engine().policy.roots == (tmp_path.resolve() / "a",)
    monkeypatch.delenv("HEADWATER_ROOTS")
    assert headwater.Engine().policy.roots == (tmp_path.resolve(),)


def test_an_absolute_path_outside_the_roots_is_refused_naming_param_and_roots(
    tree: Path,
) -> None:
    policy = SandboxPolicy(roots=(tree,))
    with pytest.raises(SandboxError) as info:
        policy.check_path("/etc/passwd", param="sources.f.params.path")
    message = str(info.value)
    assert message.startswith("sources.f.params.path: '/etc/passwd' is outside the allowed roots")
    assert repr(str(tree)) in message
    assert "HEADWATER_ROOTS" in message
    assert policy.check_path(tree / "ok.txt") == tree / "ok.txt"


def test_dotdot_cannot_climb_out(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = SandboxPolicy(roots=(tree,))
    monkeypatch.chdir(tree / "logs")
    assert policy.check_path("../ok.txt") == tree / "ok.txt"
    assert policy.check_path("sub/../../logs/./app.log") == tree / "logs" / "app.log"
    for path in ("../../outside/secret.txt", "../" * 12 + "etc/passwd", "sub/../../.."):
        with pytest.raises(SandboxError, match="outside the allowed roots"):
            policy.check_path(path)


def test_symlinks_are_judged_by_their_target(tree: Path) -> None:
    policy = SandboxPolicy(roots=(tree,))
    assert policy.check_path(tree / "in" / "app.log") == tree / "logs" / "app.log"
    for path in ("secret.txt", "out/secret.txt", "out", "in/../out/secret.txt"):
        with pytest.raises(SandboxError) as info:
            policy.check_path(tree / path)
        assert "resolves to" in str(info.value)
        assert str(tree.parent / "outside") in str(info.value)


@pytest.mark.parametrize("path", ["/proc/self/environ", "/sys/kernel", "/dev/zero", "/proc"])
def test_proc_sys_dev_are_never_allowed_even_under_root_slash(path: str, tree: Path) -> None:
    policy = SandboxPolicy(roots=(Path("/"),))
    with pytest.raises(SandboxError, match="which the file tools never open"):
        policy.check_path(path)
    with pytest.raises(SandboxError, match="never open"):
        policy.check_path(tree / "proc" / "self" / "environ")  # through a symlink
    assert policy.check_path(tree / "ok.txt") == tree / "ok.txt"
    assert SandboxPolicy(roots=(Path("/proc"),)).allows_path("/proc/self") is False
    assert SandboxPolicy(unrestricted=True).allows_path(path) is True


def test_a_folder_swapped_for_a_symlink_after_the_check_is_not_followed(tree: Path) -> None:
    """The race open_nofollow closes: the path was checked, then a folder of it became a
    symlink out of the roots before the open."""
    policy = SandboxPolicy(roots=(tree,))
    (tree / "box").mkdir()
    (tree / "box" / "secret.txt").write_text("inside\n")
    real = policy.check_path(tree / "box" / "secret.txt")
    (tree / "box").rename(tree / "box.old")
    (tree / "box").symlink_to(tree.parent / "outside")
    with pytest.raises(SandboxError, match="became a symbolic link after the path was checked"):
        open_nofollow(real, os.O_RDONLY)
    # the last component too
    (tree / "note").write_text("inside\n")
    real = policy.check_path(tree / "note")
    (tree / "note").unlink()
    (tree / "note").symlink_to(tree.parent / "outside" / "secret.txt")
    with pytest.raises(SandboxError, match="not followed"):
        open_nofollow(real, os.O_RDONLY)
    with pytest.raises(FileNotFoundError) as missing:
        open_nofollow(tree / "nope" / "x", os.O_RDONLY)
    assert missing.value.filename == str(tree / "nope" / "x")


# -- the same decision as a plain resolver (hypothesis) ------------------------------------------

NAMES = [
    "logs",
    "sub",
    "app.log",
    "ok.txt",
    "..",
    ".",
    "in",
    "out",
    "secret.txt",
    "up",
    "abs",
    "back",
    "proc",
    "self",
    "environ",
    "missing",
]


def reference_real(path: str) -> str:
    """The real path of an absolute ``path``, resolved component by component with
    ``lstat``/``readlink`` (a missing component is taken as written, like realpath)."""
    done = ""
    todo = [p for p in path.split("/") if p]
    hops = 0
    while todo:
        name = todo.pop(0)
        if name == ".":
            continue
        if name == "..":
            done = done.rsplit("/", 1)[0]
            continue
        candidate = f"{done}/{name}"
        try:
            is_link = stat.S_ISLNK(os.lstat(candidate).st_mode)
        except OSError:
            is_link = False
        if not is_link:
            done = candidate
            continue
        hops += 1
        assert hops < 40, "a symlink loop in the test tree"
        target = os.readlink(candidate)
        if target.startswith("/"):
            done = ""
        todo = [p for p in target.split("/") if p] + todo
    return done or "/"


def reference_allowed(real: str, roots: list[str]) -> bool:
    """Inside a root (string prefixes) and outside /proc, /sys, /dev."""

    def under(folder: str) -> bool:
        return real == folder or real.startswith(folder.rstrip("/") + "/")

    return any(under(r) for r in roots) and not any(under(f) for f in ("/proc", "/sys", "/dev"))


@pytest.fixture(scope="module")
def maze(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tree of folders and links for the generated paths (made once)."""
    base = tmp_path_factory.mktemp("maze").resolve()
    jail, outside = base / "jail", base / "outside"
    (jail / "logs" / "sub").mkdir(parents=True)
    outside.mkdir()
    (jail / "ok.txt").write_text("x")
    (jail / "logs" / "app.log").write_text("x")
    (outside / "secret.txt").write_text("x")
    (jail / "in").symlink_to("logs")
    (jail / "out").symlink_to("../outside")
    (jail / "logs" / "up").symlink_to("../..")
    (jail / "logs" / "abs").symlink_to(outside)
    (jail / "secret.txt").symlink_to("../outside/secret.txt")
    (outside / "back").symlink_to("../jail/logs")
    (jail / "proc").symlink_to("/proc")
    return jail


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    start=st.sampled_from(["", "logs", "logs/sub", "../outside"]),
    parts=st.lists(st.sampled_from(NAMES), max_size=8),
    root_slash=st.booleans(),
)
def test_check_path_agrees_with_a_plain_resolver(
    maze: Path, start: str, parts: list[str], root_slash: bool
) -> None:
    roots = [Path("/")] if root_slash else [maze]
    policy = SandboxPolicy(roots=tuple(roots))
    cwd = os.path.normpath(os.path.join(maze, start))
    relative = "/".join(parts) or "."
    expected_real = reference_real(f"{cwd}/{relative}")
    expected = reference_allowed(expected_real, [str(r) for r in roots])
    old = os.getcwd()
    os.chdir(cwd)
    try:
        try:
            real = policy.check_path(relative)
        except SandboxError:
            allowed = False
        else:
            allowed = True
            assert str(real) == expected_real
    finally:
        os.chdir(old)
    assert allowed == expected, (relative, expected_real)


# -- the file tools -------------------------------------------------------------------------------


def attack_path(tree: Path, attack: str) -> str:
    """A path reaching out of the jail: absolute, through ``..``, a symlink, or /proc."""
    return {
        "absolute": str(tree.parent / "outside" / "secret.txt"),
        "dotdot": str(tree / "logs" / ".." / ".." / "outside" / "secret.txt"),
        "symlink": str(tree / "secret.txt"),
        "proc": "/proc/self/environ",
    }[attack]


ATTACKS = ["absolute", "dotdot", "proc", "symlink"]


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("action", ["file.view", "file.lines", "file.find"])
def test_file_readers_refuse_paths_out_of_the_roots(
    engine: headwater.Engine, tree: Path, action: str, attack: str
) -> None:
    path = attack_path(tree, attack)
    extra = {"pattern": "secret"} if action == "file.find" else {}
    message = refusal(engine, action, path=path, **extra)
    assert repr(path) in message
    expected = "never open" if attack == "proc" else f"outside the allowed roots ('{tree}')"
    assert expected in message


@pytest.mark.parametrize("action", ["dir.tree", "file.find"])
def test_tree_walkers_refuse_roots_out_of_the_roots(
    engine: headwater.Engine, tree: Path, action: str
) -> None:
    extra = {"pattern": "secret"} if action == "file.find" else {}
    for path in (tree / "out", tree / "logs" / ".." / "..", Path("/proc/self")):
        message = refusal(engine, action, path=str(path), **extra)
        assert "outside the allowed roots" in message or "never open" in message


def test_the_tools_still_read_inside_the_roots(engine: headwater.Engine, tree: Path) -> None:
    assert collect(engine, "file.view", path=str(tree / "in" / "app.log"))[1]["text"] == (
        "ERROR inside"
    )
    assert collect(engine, "file.lines", path=str(tree / "ok.txt")) == ["fine"]
    found = collect(engine, "file.find", path=str(tree), pattern="ERROR")
    assert sorted(f["text"] for f in found) == ["ERROR deep", "ERROR inside"]


def test_paths_not_validated_with_the_policy_are_checked_when_opened(
    engine: headwater.Engine, tree: Path
) -> None:
    """Resolved without a policy in the validation context (as params built in Python
    are), the pipeline still meets the run's policy when the file is opened."""
    spec = headwater.Pipeline("t").source("file.view", name="f", path=str(tree / "secret.txt"))
    resolved = resolve(spec.sink("collect").build(), engine.load())
    result = anyio.run(engine.create_run(resolved).start)
    with pytest.raises(PipelineFailed) as info:
        result.raise_for_state()
    raise_stage_error(info.value, "sources.f", tree)


def raise_stage_error(failed: PipelineFailed, stage: str, tree: Path) -> None:
    """Assert the run failed in ``stage`` with a refusal naming its path param."""
    [error] = failed.errors
    assert isinstance(error, StageError)
    assert error.stage == stage
    assert isinstance(error.cause, SandboxError)
    assert str(error.cause).startswith(f"{stage}.params.path: ")
    assert str(tree) in str(error.cause)


@pytest.mark.parametrize("action", ["file.view", "file.lines", "file.find"])
def test_a_symlink_swapped_in_after_validation_is_refused_at_run_time(
    engine: headwater.Engine, tree: Path, action: str
) -> None:
    """TOCTOU: the path was a link inside the roots when validated, then made to point
    out of them; the open checks again and refuses."""
    link = tree / "current.log"
    link.symlink_to("logs/app.log")
    extra = {"pattern": "ERROR"} if action == "file.find" else {}
    spec = headwater.Pipeline("t").source(action, name="f", path=str(link), **extra)
    resolved, pm = engine.prepare(spec.sink("collect").build())
    link.unlink()
    link.symlink_to(tree.parent / "outside" / "secret.txt")
    result = anyio.run(engine.create_run(resolved, pm).start)
    assert result.state == "failed"
    with pytest.raises(PipelineFailed) as info:
        result.raise_for_state()
    raise_stage_error(info.value, "sources.f", tree)


def test_follow_symlinks_never_walks_out_of_the_roots(engine: headwater.Engine, tree: Path) -> None:
    # max_depth bounds the walk should a link ever lead into /proc
    entries = collect(engine, "dir.tree", path=str(tree), follow_symlinks=True, max_depth=4)
    by_name = {e["path"][len(str(tree)) + 1 :]: e for e in entries}
    assert by_name["in"]["type"] == "dir"  # a link inside the roots is followed
    assert "in/app.log" in by_name
    for name in ("out", "secret.txt", "proc"):
        assert by_name[name]["type"] == "symlink"
        assert by_name[name]["error"] == OUTSIDE_ROOTS
    assert not any(p.startswith(("out/", "proc/")) for p in by_name)

    found = collect(
        engine, "file.find", path=str(tree), pattern="ERROR", follow_symlinks=True, max_depth=4
    )
    texts = sorted(f["text"] for f in found)
    assert texts == ["ERROR deep", "ERROR deep", "ERROR inside", "ERROR inside"]  # via in/
    assert not any("outside" in f["text"] for f in found)


def test_a_walk_of_root_slash_never_enters_proc_sys_dev(plugins: headwater.PluginManager) -> None:
    slash = headwater.Engine(plugin_manager=plugins, policy=SandboxPolicy(roots=(Path("/"),)))
    entries = collect(slash, "dir.tree", path="/", max_depth=2)
    by_path = {e["path"]: e for e in entries}
    for folder in ("/proc", "/sys", "/dev"):
        if folder in by_path:
            assert by_path[folder]["error"] == NEVER_OPENED
    assert "/proc" in by_path
    assert not [p for p in by_path if p.startswith(("/proc/", "/sys/", "/dev/"))]
    assert any(p.startswith("/etc/") for p in by_path)  # the rest is walked
    found = collect(
        slash,
        "file.find",
        path="/",
        pattern=".",
        regex=True,
        max_depth=2,
        include=["version", "cmdline", "hostname"],
    )
    assert not [f for f in found if f["file"].startswith(("/proc/", "/sys/", "/dev/"))]


def test_a_folder_or_file_swapped_while_walking_is_not_followed(tree: Path) -> None:
    """White-box: the walk holds each folder open and opens what it lists relative to it
    with O_NOFOLLOW, so entries swapped for symlinks mid-walk lead nowhere outside."""
    (tree / "logs" / "zz").mkdir()
    policy = SandboxPolicy(roots=(tree,))
    walker = _Walker(
        str(tree / "logs"),
        policy=policy,
        param="sources.f.params.path",
        max_depth=None,
        follow_symlinks=False,
        exclude=[],
        hidden=True,
    )
    seen: list[str] = []
    opened: list[str] = []
    for entry in walker:
        if entry is None:
            continue
        seen.append(entry.rel)
        if entry.rel == "app.log":
            # swap the file (listed, not yet opened) and a folder (listed, not yet entered)
            (tree / "logs" / "app.log").unlink()
            (tree / "logs" / "app.log").symlink_to(tree.parent / "outside" / "secret.txt")
            (tree / "logs" / "zz").rmdir()
            (tree / "logs" / "zz").symlink_to(tree.parent / "outside")
            with pytest.raises(OSError, match="symbolic links"):  # ELOOP: O_NOFOLLOW
                walker.open_file(entry)
        elif entry.kind == "file":
            with walker.open_file(entry) as handle:
                opened.append(handle.read().decode())
    assert "zz/secret.txt" not in seen
    assert all("secret" not in text for text in opened)


@pytest.mark.parametrize("attack", ["absolute", "dotdot", "symlink"])
@pytest.mark.parametrize("sink", ["jsonl", "sqlite"])
def test_sinks_refuse_to_write_out_of_the_roots(
    engine: headwater.Engine, tree: Path, sink: str, attack: str
) -> None:
    target = {
        "absolute": tree.parent / "outside" / "w.out",
        "dotdot": tree / ".." / "outside" / "w.out",
        "symlink": tree / "out" / "w.out",
    }[attack]
    extra: dict[str, Any] = {"table": "t"} if sink == "sqlite" else {}
    spec = headwater.Pipeline("t").source("range", stop=3).sink(sink, path=str(target), **extra)
    with pytest.raises(PipelineValidationError) as info:
        engine.prepare(spec.build())
    [issue] = info.value.issues
    assert issue.path == "sinks[0].params.path"
    assert "outside the allowed roots" in issue.message
    assert not (tree.parent / "outside" / "w.out").exists()
    spec = headwater.Pipeline("t").source("iterable", items=[{"n": 1}])
    spec = spec.sink(sink, path=str(tree / f"w.{sink}"), **extra)
    assert spec.run_sync(engine=engine).state == "succeeded"
    assert (tree / f"w.{sink}").stat().st_size > 0


@pytest.mark.parametrize("sink", ["jsonl", "sqlite"])
def test_a_sink_folder_swapped_for_a_symlink_after_validation_is_refused(
    engine: headwater.Engine, tree: Path, sink: str
) -> None:
    (tree / "reports").mkdir()
    extra: dict[str, Any] = {"table": "t"} if sink == "sqlite" else {}
    path = str(tree / "reports" / "r.out")
    spec = headwater.Pipeline("t").source("range", stop=3).sink(sink, path=path, **extra)
    resolved, pm = engine.prepare(spec.build())
    (tree / "reports").rmdir()
    (tree / "reports").symlink_to(tree.parent / "outside")
    result = anyio.run(engine.create_run(resolved, pm).start)
    with pytest.raises(PipelineFailed) as info:
        result.raise_for_state()
    [error] = info.value.errors
    assert isinstance(error, StageError)
    assert error.stage == f"sinks.{sink}"
    assert str(error.cause).startswith(f"sinks.{sink}.params.path: ")
    assert not (tree.parent / "outside" / "r.out").exists()


def test_sqlite_refuses_a_journal_planted_as_a_symlink(
    engine: headwater.Engine, tree: Path
) -> None:
    (tree / "db.sqlite-wal").symlink_to(tree.parent / "outside" / "wal")
    spec = headwater.Pipeline("t").source("range", stop=3)
    spec = spec.sink("sqlite", path=str(tree / "db.sqlite"), table="t")
    with pytest.raises(PipelineFailed, match="SQLite would write through it"):
        spec.run_sync(engine=engine)
    assert not (tree.parent / "outside" / "wal").exists()
    spec = headwater.Pipeline("t").source("iterable", items=[{"n": 1}])
    spec = spec.sink("sqlite", path=":memory:", table="t")
    assert spec.run_sync(engine=engine).state == "succeeded"


def test_a_checkpoint_store_path_set_by_the_pipeline_must_be_inside(
    engine: headwater.Engine, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tree)
    data: dict[str, Any] = {
        "name": "t",
        "sources": {"n": {"action": "range", "params": {"stop": 3}}},
        "sinks": [{"sink": "collect"}],
        "checkpoint": {"params": {"path": str(tree.parent / "outside" / "ck.db")}},
    }
    with pytest.raises(PipelineValidationError) as info:
        engine.prepare(data)
    assert [i.path for i in info.value.issues] == ["checkpoint.params.path"]
    del data["checkpoint"]["params"]  # the default store path is the operator's
    engine.prepare(data)


def test_unrestricted_switches_the_checks_off(tree: Path, plugins: headwater.PluginManager) -> None:
    free = headwater.Engine(
        plugin_manager=plugins, policy=SandboxPolicy(roots=(tree,), unrestricted=True)
    )
    assert collect(free, "file.lines", path=str(tree / "secret.txt"))[0] == "top secret"
    entries = collect(free, "dir.tree", path=str(tree), follow_symlinks=True, max_depth=2)
    assert any(e["path"].endswith("out/secret.txt") for e in entries)


# -- the command line -----------------------------------------------------------------------------


@pytest.fixture
def cli_env() -> dict[str, str]:
    """An operator's environment: no HEADWATER_ROOTS (the working directory is the root)."""
    env = {k: v for k, v in os.environ.items() if k != "HEADWATER_ROOTS"}
    env["COLUMNS"] = "200"
    return env


def test_headwater_run_roots_at_the_working_directory_and_takes_root_options(
    tree: Path, cli_env: dict[str, str]
) -> None:
    (tree / "p.yaml").write_text(
        "name: p\n"
        "sources: {f: {action: file.lines, params: {path: ../outside/secret.txt}}}\n"
        "sinks: [{sink: stdout}]\n"
    )

    def headwater_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "headwater", *args],
            cwd=tree,
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    for args in (["run", "p.yaml", "--no-progress"], ["validate", "p.yaml"]):
        proc = headwater_cli(*args)
        assert proc.returncode == 2, proc.stderr
        assert "sources.f.params.path: '../outside/secret.txt'" in proc.stderr
        assert f"outside the allowed roots ('{tree}')" in proc.stderr
        assert "Traceback" not in proc.stderr
    proc = headwater_cli("run", "p.yaml", "--no-progress", "--root", "../outside")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "top secret"
    proc = headwater_cli("validate", "p.yaml", "--root", "..")
    assert proc.returncode == 0, proc.stderr


def test_headwater_run_reads_headwater_roots(tree: Path, cli_env: dict[str, str]) -> None:
    (tree / "p.yaml").write_text(
        "name: p\n"
        "sources: {f: {action: file.view, params: {path: ../outside/secret.txt}}}\n"
        "sinks: [{sink: jsonl, params: {path: ../outside/copy.jsonl}}]\n"
    )
    cli_env["HEADWATER_ROOTS"] = str(tree.parent / "outside")
    proc = subprocess.run(
        [sys.executable, "-m", "headwater", "run", "p.yaml", "--no-progress"],
        cwd=tree,
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "top secret" in (tree.parent / "outside" / "copy.jsonl").read_text()


def test_sqlite_sink_made_without_a_context_uses_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unit tests build sinks by hand (no context): the environment's policy applies."""
    from headwater.builtin_plugins.sqlite_sink import SqliteParams, SqliteSink

    monkeypatch.setenv("HEADWATER_ROOTS", str(tmp_path / "allowed"))
    (tmp_path / "allowed").mkdir()
    sink = SqliteSink(SqliteParams(path=str(tmp_path / "elsewhere.db"), table="t"), None)  # type: ignore[arg-type]
    with pytest.raises(SandboxError, match="outside the allowed roots"):
        sink.open()
    sink = SqliteSink(SqliteParams(path=str(tmp_path / "allowed" / "a.db"), table="t"), None)  # type: ignore[arg-type]
    sink.open()
    sink.write([{"a": 1}])
    sink.close(None)
    with sqlite3.connect(tmp_path / "allowed" / "a.db") as conn:
        assert conn.execute("SELECT a FROM t").fetchall() == [(1,)]
