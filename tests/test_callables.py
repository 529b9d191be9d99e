"""``fn`` params name only callables the sandbox policy allows.

Real pipelines, real modules written to disk, the real ``headwater`` command; the names
are checked before anything is imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import ValidationError

import headwater
from headwater.builtin_plugins.catalogue import command as builtin_command
from headwater.builtin_plugins.catalogue import sinks as builtin_sinks
from headwater.builtin_plugins.catalogue import sources as builtin_sources
from headwater.builtin_plugins.catalogue import transformers as builtin_transformers
from headwater.builtin_plugins.transformers.itemwise import CallableParams
from headwater.core.callables import DEFAULT_BUILTINS, DEFAULT_MODULES, NEVER, resolve_callable
from headwater.core.types import import_callable

POLICY_HINT = "the operator can allow more with HEADWATER_ALLOW_CALLABLES or sandbox.callables"

ATTACK = """\
name: attack
sources:
  words: {action: iterable, params: {items: ["id"]}}
steps:
  - {transformer: map, params: {fn: "subprocess:getoutput"}}
sinks:
  - {sink: stdout}
"""

FNS_MODULE = """\
from subprocess import getoutput  # imported, not defined here: never allowed by the module


def double(x):
    return x * 2


def dump(x):
    return str(x)


def _hidden(x):
    return x


class Shout:
    @staticmethod
    def loud(x):
        return str(x).upper()
"""


@pytest.fixture(scope="module")
def plugins() -> headwater.PluginManager:
    """The built-ins these tests use, registered by hand (no other installed plugin)."""
    pm = headwater.PluginManager(load_entry_points=False, strict=True)
    for name, module in (
        ("headwater.sources", builtin_sources),
        ("headwater.transformers", builtin_transformers),
        ("headwater.sinks", builtin_sinks),
        ("headwater.command", builtin_command),
    ):
        assert pm.register(module, name)
    return pm


@pytest.fixture
def fns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A package ``hwfns`` on ``sys.path``: ``hwfns.fns`` and ``hwfns.loud`` (whose
    import writes a marker file: importing it at all is a failure of the sandbox)."""
    package = tmp_path / "site" / "hwfns"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "fns.py").write_text(FNS_MODULE)
    marker = tmp_path / "imported"
    (package / "loud.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n\ndef run(x):\n    return x\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in ("hwfns", "hwfns.fns", "hwfns.loud"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return tmp_path


def engine(plugins: headwater.PluginManager, **policy: Any) -> headwater.Engine:
    return headwater.Engine(plugin_manager=plugins, policy=headwater.SandboxPolicy(**policy))


def mapped(items: list[Any], fn: Any) -> headwater.Pipeline:
    return (
        headwater.Pipeline("p").source("iterable", items=items).step("map", fn=fn).sink("collect")
    )


def refusal(plugins: headwater.PluginManager, fn: str, **policy: Any) -> str:
    """The validation error of a map over ``fn`` under ``policy``."""
    with pytest.raises(headwater.PipelineValidationError) as info:
        mapped([1], fn).run_sync(engine=engine(plugins, **policy))
    return str(info.value)


def hw(
    *args: str | Path, cwd: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "headwater", *map(str, args)],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# -- the attack: a YAML map that runs a shell command --------------------------------------


@pytest.mark.parametrize("command", ["validate", "run"])
def test_cli_refuses_subprocess_getoutput(tmp_path: Path, command: str) -> None:
    pipeline = tmp_path / "attack.yaml"
    pipeline.write_text(ATTACK)
    proc = hw(
        command, pipeline, cwd=tmp_path, env={"HEADWATER_DISABLE_PLUGINS": "headwater.command"}
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert (
        "steps[0].params.fn: callable 'subprocess:getoutput' is not allowed by the sandbox "
        "policy; allowed: builtins abs, " in proc.stderr
    )
    assert POLICY_HINT in proc.stderr
    assert "uid=" not in proc.stdout + proc.stderr


def test_cli_runs_a_module_the_operator_allows(fns: Path) -> None:
    pipeline = fns / "p.yaml"
    pipeline.write_text(
        ATTACK.replace("subprocess:getoutput", "hwfns.fns:double").replace('"id"', "21")
    )
    env = {"PYTHONPATH": str(fns / "site")}
    refused = hw("run", pipeline, cwd=fns, env=env)
    assert refused.returncode == 2
    assert "callable 'hwfns.fns:double' is not allowed" in refused.stderr
    allowed = hw("run", pipeline, cwd=fns, env={**env, "HEADWATER_ALLOW_CALLABLES": "hwfns.fns"})
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.splitlines() == ["42"]


# -- the default allow-list -------------------------------------------------------------------


def test_the_default_allows_pure_builtins_and_modules(plugins: headwater.PluginManager) -> None:
    run = engine(plugins)
    assert mapped([-2, 3], "builtins:abs").run_sync(engine=run).output == [2, 3]
    assert mapped(["ab"], "builtins:repr").run_sync(engine=run).output == ["'ab'"]
    assert mapped([16], "math:sqrt").run_sync(engine=run).output == [4.0]
    assert mapped([16], "math.sqrt").run_sync(engine=run).output == [4.0]
    assert mapped([[1, 3]], "statistics:mean").run_sync(engine=run).output == [2]
    assert mapped(['{"a": 1}'], "json:loads").run_sync(engine=run).output == [{"a": 1}]
    assert mapped([" a "], "re:escape").run_sync(engine=run).output == ["\\ a\\ "]
    day = mapped(["2024-05-01"], "datetime:date.fromisoformat").run_sync(engine=run).output
    assert [d.isoformat() for d in day] == ["2024-05-01"]
    result = headwater.Pipeline("r").source("range", stop=5).step("reduce", fn="operator:add")
    assert result.sink("collect").run_sync(engine=run).output == [10]


@pytest.mark.parametrize(
    ("fn", "why"),
    [
        ("subprocess:getoutput", "; allowed: builtins abs, all"),
        ("os.system", "; allowed:"),
        ("os:system", "; allowed:"),
        ("builtins:print", "; allowed:"),
        ("builtins:eval", ": 'eval' is never allowed"),
        ("builtins:__import__", ": names starting with '_' are never allowed"),
        ("math:_private", ": names starting with '_' are never allowed"),
        ("re:compile", ": 'compile' is never allowed"),
        ("operator:attrgetter", "; allowed:"),
        ("operator:methodcaller", "; allowed:"),
        ("json:codecs.lookup", ": 'codecs' is a module, and a name may only reach through"),
        ("json:decoder.scanstring", ": 'decoder' is a module"),
        ("statistics:random.randint", ": 'random' is a module"),
        ("statistics:groupby", ": 'groupby' is not defined in 'statistics'"),
    ],
)
def test_the_default_refuses(plugins: headwater.PluginManager, fn: str, why: str) -> None:
    message = refusal(plugins, fn)
    canonical = fn if ":" in fn else ":".join(fn.rsplit(".", 1))
    assert (
        f"steps[0].params.fn: callable {canonical!r} is not allowed by the sandbox policy{why}"
        in message
    )


def test_the_documented_lists(plugins: headwater.PluginManager) -> None:
    """What the docs promise is what the code holds."""
    assert {"len", "str", "int", "float", "abs", "round", "min", "max", "sum", "sorted"} <= set(
        DEFAULT_BUILTINS
    )
    assert set(DEFAULT_MODULES) == {"operator", "math", "statistics", "json", "re", "datetime"}
    assert {"eval", "exec", "compile", "open", "getattr", "setattr", "vars", "input"} <= NEVER
    assert not DEFAULT_BUILTINS & NEVER


# -- the operator extends it ------------------------------------------------------------------


def test_a_module_entry_allows_what_is_defined_in_it(
    plugins: headwater.PluginManager, fns: Path
) -> None:
    run = engine(plugins, callables=("hwfns.fns",))
    assert mapped([2], "hwfns.fns:double").run_sync(engine=run).output == [4]
    assert mapped(["a"], "hwfns.fns:Shout.loud").run_sync(engine=run).output == ["A"]
    message = refusal(plugins, "hwfns.fns:getoutput", callables=("hwfns.fns",))
    assert "'getoutput' is not defined in 'hwfns.fns'" in message
    assert "names starting with '_'" in refusal(plugins, "hwfns.fns:_hidden", callables=("hwfns",))
    assert "not allowed" in refusal(plugins, "hwfns.fns:double", callables=("hwfns",))


def test_pattern_entries(plugins: headwater.PluginManager, fns: Path) -> None:
    run = engine(plugins, callables=("hwfns.fns:d*",))
    assert mapped([2], "hwfns.fns:double").run_sync(engine=run).output == [4]
    assert mapped([2], "hwfns.fns:dump").run_sync(engine=run).output == ["2"]
    assert "allowed: " in refusal(plugins, "hwfns.fns:Shout.loud", callables=("hwfns.fns:d*",))
    # a glob admits only what the module defines; an exact entry is the operator's choice
    glob = refusal(plugins, "hwfns.fns:getoutput", callables=("hwfns.fns:*",))
    assert "'getoutput' is not defined in 'hwfns.fns'" in glob
    exact = engine(plugins, callables=("operator:attrgetter",))
    out = mapped(["real"], "operator:attrgetter").run_sync(engine=exact).output
    assert out[0](1.5) == 1.5


def test_never_overrides_every_entry(plugins: headwater.PluginManager) -> None:
    allow_all = ("builtins", "builtins:*", "*", "*:*", "builtins:eval", "builtins:open")
    run = engine(plugins, callables=allow_all)
    assert mapped(["x"], "builtins:print").run_sync(engine=run).output == [None]
    for name in ("eval", "exec", "open", "getattr", "setattr", "vars", "input", "breakpoint"):
        assert f"{name!r} is never allowed" in refusal(
            plugins, f"builtins:{name}", callables=allow_all
        )


def test_a_refused_name_is_never_imported(plugins: headwater.PluginManager, fns: Path) -> None:
    message = refusal(plugins, "hwfns.loud:run", callables=("hwfns.fns",))
    assert "callable 'hwfns.loud:run' is not allowed" in message
    assert "hwfns.loud" not in sys.modules
    assert not (fns / "imported").exists()
    run = engine(plugins, callables=("hwfns.loud",))  # the positive control: it does import
    assert mapped([1], "hwfns.loud:run").run_sync(engine=run).output == [1]
    assert (fns / "imported").exists()


def test_python_callables_are_not_checked(plugins: headwater.PluginManager) -> None:
    """An embedder's own functions (and any real callable) pass through untouched."""

    def shout(text: str) -> str:
        return text.upper()

    run = engine(plugins)
    assert mapped(["a"], shout).run_sync(engine=run).output == ["A"]
    assert mapped(["a"], str.upper).run_sync(engine=run).output == ["A"]
    assert import_callable(eval) is eval


def test_unrestricted_switches_the_checks_off(plugins: headwater.PluginManager) -> None:
    unrestricted = headwater.SandboxPolicy(unrestricted=True)
    assert resolve_callable("os.path:basename", unrestricted) is os.path.basename
    with pytest.raises(ValueError, match="not allowed"):
        resolve_callable("os.path:basename", headwater.SandboxPolicy())


def test_without_a_policy_in_the_context_the_environment_decides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HEADWATER_ALLOW_CALLABLES", raising=False)
    with pytest.raises(ValidationError, match="not allowed by the sandbox policy"):
        CallableParams.model_validate({"fn": "os.path:basename"})
    monkeypatch.setenv("HEADWATER_ALLOW_CALLABLES", "os.path:basename")
    assert CallableParams.model_validate({"fn": "os.path:basename"}).fn is os.path.basename


# -- a client's run request is checked with the same policy ---------------------------------


def test_a_server_run_request_is_validated_with_the_engine_policy() -> None:
    from headwater.client import RequestFailed
    from headwater.server import Server, ServerConfig
    from test_server_helpers import WAIT, client_of, make_plugins, of_type, until

    config = ServerConfig.model_validate(
        {
            "port": 0,
            "pipelines": {
                "mapped": {
                    "pipeline": {
                        "name": "mapped",
                        "sources": {"words": {"action": "iterable", "params": {"items": ["id"]}}},
                        "steps": [{"transformer": "map", "params": {"fn": "builtins:len"}}],
                        "sinks": [{"sink": "websocket"}],
                    },
                    "params": {"fn": "steps[0].params.fn"},
                }
            },
        }
    )

    async def main() -> list[Any]:
        server = Server(config, engine=engine(make_plugins()))
        async with server, client_of(server) as client:
            with anyio.fail_after(WAIT):
                with pytest.raises(RequestFailed) as info:
                    await client.run("mapped", {"fn": "subprocess:getoutput"})
                assert info.value.code == "invalid_params"
                assert "callable 'subprocess:getoutput' is not allowed" in str(info.value)
                started = await client.run("mapped", {"fn": "builtins:str"})
                messages = await until(client, of_type("stream_complete", started.stream))
        return [getattr(m, "data", None) for m in messages if m.type == "stream_update"]

    assert anyio.run(main) == ["id"]
