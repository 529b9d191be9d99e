"""The pytest plugin shipped for plugin authors (``headwater.testing``)."""

from __future__ import annotations

import types
from collections.abc import AsyncIterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import headwater
from headwater.core import plugins as plugins_module
from headwater.hookspecs import Register
from headwater.testing import RegisterPlugin, builtin_plugin_manager, run_pipeline

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
    assert headwater.get_plugin_manager() is headwater_plugins
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
    component = headwater.get_plugin_manager().get("action", "demo.count")
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
    """The in-process pytester runs below replace the process-wide manager: restore it."""
    monkeypatch.setattr(plugins_module, "_default", plugins_module._default)


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
            assert plugins._default is SENTINEL
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
            assert headwater.get_plugin_manager() is headwater_plugins is not SENTINEL

        def test_restored():
            assert headwater.get_plugin_manager() is SENTINEL
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)
