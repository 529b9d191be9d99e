"""The pytest plugin shipped for plugin authors (``headwater.testing``)."""

from __future__ import annotations

import json
import types
from collections.abc import AsyncIterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import BaseModel, ConfigDict

import headwater
from headwater.client import Client
from headwater.conformance import _structural_problems
from headwater.core import engine as engine_module
from headwater.core.plugins import get_plugin_manager
from headwater.hookspecs import Register
from headwater.testing import (
    CheckResult,
    ConformanceError,
    RegisterPlugin,
    assert_conforms,
    builtin_plugin_manager,
    check_component,
    collect_run,
    make_plugins,
    run_pipeline,
)

pytest_plugins = ["pytester"]


@headwater.action("demo.count")
async def count(ctx: headwater.StreamContext) -> AsyncIterator[int]:
    """Yield 0, 1, 2."""
    for i in range(3):
        yield i


class CountPlugin:
    @headwater.hookimpl
    def register_actions(self, register: Register) -> None:
        register(count)


class BrokenPlugin:
    @headwater.hookimpl
    def register_sinks(self, register: Register) -> None:
        raise RuntimeError("no backend")


def count_module() -> types.ModuleType:
    module = types.ModuleType("hw_count_plugin")

    @headwater.hookimpl
    def register_actions(register: Register) -> None:
        register(count)

    module.register_actions = register_actions  # type: ignore[attr-defined]
    return module


PIPELINE = headwater.Pipeline("t").source("demo.count").sink("collect")


def test_plugin_is_declared_as_a_pytest11_entry_point() -> None:
    declared = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert declared.get("headwater") == "headwater.testing"


def test_plugin_is_loaded_automatically(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.has_plugin("headwater")


def test_headwater_plugins_holds_only_the_builtins(
    headwater_plugins: headwater.PluginManager,
) -> None:
    assert get_plugin_manager() is headwater_plugins
    assert {p.distribution for p in headwater_plugins.plugins.values()} == {"headwater"}
    assert "range" in headwater_plugins.registry.names("action")
    assert headwater_plugins.failures == []


def test_headwater_plugins_is_strict(headwater_plugins: headwater.PluginManager) -> None:
    with pytest.raises(headwater.PluginLoadError) as info:
        headwater_plugins.register(BrokenPlugin(), "broken")
    assert isinstance(info.value.__cause__, RuntimeError)


def test_register_plugin_and_run(register_plugin: RegisterPlugin) -> None:
    info = register_plugin(CountPlugin(), "counting", distribution="hw-count", version="0.3")
    assert info.components == ["action:demo.count"]
    assert info.distribution == "hw-count"

    result = run_pipeline(PIPELINE)
    assert result.state == "succeeded"
    assert result.output == [0, 1, 2]
    component = get_plugin_manager().get("action", "demo.count")
    assert (component.plugin, component.version) == ("counting", "0.3")


def test_register_plugin_module_defaults_to_its_name(
    register_plugin: RegisterPlugin, headwater_plugins: headwater.PluginManager
) -> None:
    info = register_plugin(count_module())
    assert info.name == "hw_count_plugin"
    assert headwater_plugins.get("action", "demo.count").plugin == "hw_count_plugin"


def test_register_plugin_raises_for_a_broken_plugin(
    register_plugin: RegisterPlugin, headwater_plugins: headwater.PluginManager
) -> None:
    with pytest.raises(headwater.PluginLoadError, match="no backend") as info:
        register_plugin(BrokenPlugin())
    assert isinstance(info.value.__cause__, RuntimeError)
    assert [f.plugin for f in headwater_plugins.failures] == ["BrokenPlugin"]


def test_register_plugin_refuses_a_disabled_plugin(
    register_plugin: RegisterPlugin, headwater_plugins: headwater.PluginManager
) -> None:
    headwater_plugins._disabled.add("off")  # white-box: as if HEADWATER_DISABLE_PLUGINS=off
    with pytest.raises(headwater.PluginLoadError, match="'off' is disabled"):
        register_plugin(CountPlugin(), "off")


def test_register_plugin_with_a_lenient_manager(pytester: pytest.Pytester) -> None:
    """An overridden, non-strict ``headwater_plugins`` still makes broken plugins raise."""
    pytester.makeconftest(
        """
        import pytest
        from headwater.testing import builtin_plugin_manager

        @pytest.fixture
        def headwater_plugins():
            return builtin_plugin_manager(strict=False)
        """
    )
    pytester.makepyfile(
        """
        import headwater
        import pytest

        class Broken:
            @headwater.hookimpl
            def register_actoins(self, register):
                pass

        def test_broken(register_plugin, headwater_plugins):
            with pytest.raises(headwater.PluginLoadError, match="did you mean"):
                register_plugin(Broken(), "broken")
            assert headwater_plugins.failures[0].stage == "unknown-hook"
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_run_pipeline_with_plugin_objects() -> None:
    result = run_pipeline(PIPELINE, plugins=[CountPlugin()])
    assert result.output == [0, 1, 2]


def test_run_pipeline_with_a_manager_and_trio() -> None:
    manager = builtin_plugin_manager()
    manager.register(CountPlugin(), "counting")
    result = run_pipeline(PIPELINE.build(), manager, backend="trio")
    assert result.output == [0, 1, 2]


def fail(item: int) -> int:
    raise ValueError(f"bad item {item}")


def test_run_pipeline_failures(headwater_plugins: headwater.PluginManager) -> None:
    spec = headwater.Pipeline("f").source("range", stop=2).map(fail).sink("collect")
    with pytest.raises(headwater.PipelineFailed, match="bad item 0"):
        run_pipeline(spec)
    result = run_pipeline(spec, raise_on_error=False)
    assert result.state == "failed"
    assert isinstance(result.errors[0], headwater.StageError)


def test_run_pipeline_from_yaml(tmp_path: Path, headwater_plugins: headwater.PluginManager) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "name: y\nsources: {n: {action: range, params: {stop: 3}}}\nsinks: [{sink: collect}]\n",
        encoding="utf-8",
    )
    assert run_pipeline(path).output == [0, 1, 2]
    with pytest.raises(headwater.PipelineValidationError):
        run_pipeline({"name": "x"})


@pytest.fixture
def _keep_default_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process pytester runs below replace the default engine: restore it."""
    monkeypatch.setattr(engine_module, "_default", engine_module._default)


@pytest.mark.usefixtures("_keep_default_manager")
def test_fixtures_in_a_plugin_authors_project(pytester: pytest.Pytester) -> None:
    """The fixtures work with no set-up; state is restored and plugins unregistered."""
    pytester.makepyfile(
        hw_demo_plugin="""
        import headwater

        @headwater.action("demo.count")
        async def count(ctx):
            for i in range(3):
                yield i

        @headwater.hookimpl
        def register_actions(register):
            register(count)
        """,
        conftest="""
        import pytest
        from headwater.testing import builtin_plugin_manager

        @pytest.fixture(scope="module")
        def headwater_plugins():
            # a manager shared by the module: register_plugin must clean up after itself
            return builtin_plugin_manager()
        """,
        test_demo="""
        import headwater
        import hw_demo_plugin
        from headwater.core import plugins
        from headwater.testing import run_pipeline

        SENTINEL = headwater.PluginManager(load_entry_points=False)
        plugins.reset_plugin_manager(SENTINEL)
        PIPELINE = headwater.Pipeline("t").source("demo.count").sink("collect")

        def test_register(register_plugin, headwater_plugins):
            register_plugin(hw_demo_plugin)
            result = run_pipeline(PIPELINE, headwater_plugins)
            assert result.output == [0, 1, 2]

        def test_unregistered_after_the_test(headwater_plugins):
            assert "demo.count" not in headwater_plugins.registry.names("action")
            assert "hw_demo_plugin" not in headwater_plugins.plugins
            assert not headwater_plugins.has_listeners("register_actions") or all(
                impl.plugin_name != "hw_demo_plugin"
                for impl in headwater_plugins._pm.hook.register_actions.get_hookimpls()
            )

        def test_register_again(register_plugin):
            register_plugin(hw_demo_plugin)

        def test_default_manager_restored():
            assert plugins.get_plugin_manager() is SENTINEL
        """,
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)


@pytest.mark.usefixtures("_keep_default_manager")
def test_function_scoped_fixture_restores_the_previous_manager(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import headwater
        from headwater.core import plugins

        SENTINEL = headwater.PluginManager(load_entry_points=False)
        plugins.reset_plugin_manager(SENTINEL)

        def test_uses_fixture(headwater_plugins):
            assert plugins.get_plugin_manager() is headwater_plugins is not SENTINEL

        def test_restored():
            assert plugins.get_plugin_manager() is SENTINEL
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)


# -- make_plugins, collect_run ------------------------------------------------------------


def test_make_plugins_holds_only_the_given_plugins() -> None:
    manager = make_plugins(CountPlugin())
    assert "demo.count" in manager.registry.names("action")
    assert "range" in manager.registry.names("action")
    bare = make_plugins(count, builtins=False)
    assert bare.registry.names("action") == ["demo.count"]
    assert bare.plugins["components"].components == ["action:demo.count"]
    with pytest.raises(headwater.PluginLoadError):
        make_plugins(BrokenPlugin())


def test_collect_run_an_action_with_its_events() -> None:
    result, events = collect_run("range", make_plugins(), params={"stop": 3})
    assert result.output == [0, 1, 2]
    assert isinstance(events[-1], headwater.Complete)
    assert any(isinstance(e, headwater.Progress) for e in events)
    result, _ = collect_run(count, [CountPlugin()])
    assert result.output == [0, 1, 2]


def test_collect_run_a_pipeline_and_failures(headwater_plugins: headwater.PluginManager) -> None:
    result, events = collect_run(_range_pipeline())
    assert result.output == [0, 1]
    spec = headwater.Pipeline("f").source("range", stop=2).map(fail).sink("collect")
    with pytest.raises(headwater.PipelineFailed):
        collect_run(spec)
    result, events = collect_run(spec, raise_on_error=False)
    assert result.state == "failed"
    assert any(isinstance(e, headwater.ErrorEvent) for e in events)
    with pytest.raises(TypeError, match="params="):
        collect_run(spec, params={"stop": 1})


def _range_pipeline() -> headwater.Pipeline:
    return headwater.Pipeline("r").source("range", stop=2).sink("collect")


# -- live_server --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_live_server(live_server: tuple[headwater.Server, Client]) -> None:
    server, client = live_server
    assert server.host == "127.0.0.1"
    assert server.port > 0
    await server.manager.create_stream("news")
    subscribed = await client.subscribe("news")
    assert subscribed.type == "subscribed"
    await server.manager.push("news", {"n": 1})
    with anyio.fail_after(10):
        async for message in client:
            if message.type == "stream_update":
                assert message.data == {"n": 1}
                break


@pytest.mark.usefixtures("_keep_default_manager")
def test_live_server_in_an_authors_project(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        from headwater.server import ServerConfig

        @pytest.fixture
        def live_server_config():
            return ServerConfig(port=0, pipelines={"count": {"pipeline": {
                "name": "count", "sources": {"n": {"action": "range", "params": {"stop": 3}}},
                "sinks": [{"sink": "websocket"}]}}})

        @pytest.mark.anyio
        async def test_run(live_server):
            server, client = live_server
            started = await client.run("count")
            assert started.type == "run_started"
            assert "count" in server.pipelines
        """
    )
    outcomes = pytester.runpytest("-p", "no:cacheprovider").parseoutcomes()
    # a trio parametrisation (from a conftest) is skipped: the server runs on asyncio
    assert outcomes.get("passed") == 1
    assert "failed" not in outcomes
    assert "errors" not in outcomes


# -- the conformance kit ------------------------------------------------------------------


class TickParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stop: int = 20
    pause: float = 0.0


closed: list[str] = []


@headwater.action("good.ticks", params=TickParams, capabilities=("progress", "resumable"))
async def good_ticks(params: TickParams, ctx: headwater.StreamContext) -> AsyncIterator[int]:
    """Counts, with progress, resumable and slow enough to be timed out."""
    try:
        for i in range(int(ctx.resume_position or 0), params.stop):
            yield i
            ctx.checkpoint(i + 1)
            ctx.progress(i + 1, params.stop)
            await anyio.sleep(params.pause)
    finally:
        closed.append("good")


@headwater.action("bad.ticks", params=TickParams, capabilities=("progress", "resumable"))
async def bad_ticks(params: TickParams, ctx: headwater.StreamContext) -> AsyncIterator[int]:
    """Claims progress and resumable but does neither."""
    for i in range(params.stop):
        yield i
        await anyio.sleep(params.pause)


class NeedsParams(BaseModel):
    path: str


@headwater.action("needs.params", params=NeedsParams)
def needs_params(params: NeedsParams, ctx: headwater.StreamContext) -> str:
    """One chunk."""
    return params.path


class AckSink:
    committed: list[Any] = []

    def __init__(self, ctx: headwater.StreamContext) -> None:
        self.items: list[Any] = []

    def write(self, batch: list[Any]) -> None:
        self.items.extend(batch)

    def commit_checkpoint(self, checkpoint: Any) -> None:
        AckSink.committed.append(checkpoint)

    def load_checkpoint(self) -> Any:
        return AckSink.committed[-1] if AckSink.committed else None


class ForgetfulSink(AckSink):
    def load_checkpoint(self) -> Any:
        return AckSink.committed[0] if AckSink.committed else None


ack_sink = headwater.sink("ack", delivery="transactional")(AckSink)
forgetful_sink = headwater.sink("forgetful", delivery="transactional")(ForgetfulSink)


@headwater.sink("fake.transactional", delivery="transactional")
def fake_transactional(batch: list[Any], ctx: headwater.StreamContext) -> None:
    """Claims transactional delivery with no commit_checkpoint."""


def by_check(results: list[CheckResult]) -> dict[str, tuple[str, str]]:
    return {r.check: (r.status, r.detail) for r in results}


def test_a_conforming_action_passes() -> None:
    closed.clear()
    results = assert_conforms(good_ticks, params={"stop": 1000, "pause": 0.001})
    checks = by_check(results)
    assert list(checks) == ["params_schema", "cancellation", "progress", "timeout", "resume"]
    assert checks["resume"][0] == "skip"  # the stream is too long to compare
    del checks["resume"]
    assert {status for status, _ in checks.values()} == {"pass"}, checks
    assert "PipelineTimeout" in checks["timeout"][1]
    assert closed  # the generator's finally ran
    fast = by_check(check_component(good_ticks))
    assert fast["timeout"][0] == "skip"  # 20 items end before the timeout
    assert fast["resume"][0] == "pass", fast
    assert "none lost" in fast["resume"][1]


def test_false_claims_fail() -> None:
    checks = by_check(check_component("bad.ticks", plugins=[make_plugin(bad_ticks)]))
    assert checks["progress"][0] == "fail"
    assert checks["resume"] == (
        "fail",
        "claims resumable but committed no position (ctx.checkpoint)",
    )
    assert checks["cancellation"][0] == "pass"
    with pytest.raises(ConformanceError, match=r"bad\.ticks: progress fail"):
        assert_conforms(bad_ticks)


def test_needs_params_and_shapes() -> None:
    checks = by_check(check_component(needs_params))
    assert checks["params_schema"][0] == "pass"
    assert checks["cancellation"] == ("skip", "needs params: path")
    with pytest.raises(ConformanceError):
        assert_conforms(needs_params, allow_skips=False)
    checks = by_check(check_component(needs_params, params={"path": "x"}))
    assert checks["cancellation"][0] == "n/a"
    assert checks["timeout"][0] == "skip"
    invalid = by_check(check_component(needs_params, params={"nope": 1}))
    assert invalid["cancellation"] == invalid["timeout"]
    assert invalid["cancellation"][0] == "fail"
    assert invalid["cancellation"][1].startswith("invalid params: path: Field required")


def test_sinks_acknowledge_their_commits() -> None:
    AckSink.committed.clear()
    checks = by_check(check_component(ack_sink))
    assert checks["checkpoint_ack"][0] == "pass", checks
    assert AckSink.committed
    AckSink.committed.clear()
    checks = by_check(check_component(forgetful_sink))
    assert checks["checkpoint_ack"][0] == "fail"
    assert "the last committed is" in checks["checkpoint_ack"][1]
    assert by_check(check_component(fake_transactional))["checkpoint_ack"][0] == "fail"
    assert by_check(check_component("collect", plugins=make_plugins()))["checkpoint_ack"] == (
        "n/a",
        "no commit_checkpoint",
    )


def test_params_schema_structural_checks() -> None:
    problems = _structural_problems(
        {
            "type": "object",
            "properties": {"a": {"type": "strnig"}, "b": {"$ref": "#/$defs/Missing"}},
            "required": ["c"],
        }
    )
    assert any("unknown type 'strnig'" in p for p in problems)
    assert any("does not resolve" in p for p in problems)
    assert any("unknown properties ['c']" in p for p in problems)
    assert _structural_problems({"type": "array"}) == ["top-level type is 'array', not 'object'"]
    assert _structural_problems(TickParams.model_json_schema()) == []


def test_builtin_components_conform(tmp_path: Path) -> None:
    manager = make_plugins()
    for name, params in [
        ("range", {"stop": 50, "chunk": 1}),
        ("iterable", {"items": [1, 2, 3]}),
        ("action:file.lines", {"path": __file__}),
    ]:
        assert_conforms(name, params=params, plugins=manager)
    db = str(tmp_path / "x.db")
    assert_conforms("sink:sqlite", params={"path": db, "table": "t"}, plugins=manager)


def make_plugin(*components: headwater.Component) -> object:
    class Plugin:
        @headwater.hookimpl
        def register_actions(self, register: Register) -> None:
            for component in components:
                register(component)

    return Plugin()


def test_plugins_check_command(capsys: pytest.CaptureFixture[str]) -> None:
    from headwater.cli import main

    assert main(["plugins", "--check", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["failed"] == 0
    rows = {(r["kind"], r["component"], r["check"]): r["status"] for r in data["results"]}
    assert rows[("action", "range", "cancellation")] == "pass"  # run with its sample params
    assert rows[("action", "file.lines", "cancellation")] == "skip"
    assert rows[("sink", "collect", "checkpoint_ack")] == "n/a"
    assert main(["plugins", "--check", "-v"]) == 0
    out = capsys.readouterr().out
    assert "checkpoint_ack" in out
    assert "params_schema" in out


def test_plugins_check_command_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from headwater import cli
    from headwater.cli import plugins as cli_plugins

    real = cli_plugins._plugin_manager

    def with_bad(*args: Any, **kwargs: Any) -> headwater.PluginManager:
        manager = real(*args, **kwargs)
        manager.register(make_plugin(bad_ticks), "bad")
        return manager

    monkeypatch.setattr(cli_plugins, "_plugin_manager", with_bad)
    assert cli.main(["plugins", "--check"]) == 1
    captured = capsys.readouterr()
    assert "bad.ticks" in captured.out
    assert "conformance check" in captured.err
