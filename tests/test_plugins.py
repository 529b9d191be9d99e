"""The plugin system: discovery, attribution, isolation of broken plugins, lifecycle hooks.

Every test builds its own :class:`headwater.PluginManager` (no entry points unless the
test is about them) and registers throwaway plugin objects with ``pm.register``.

The last tests are meta-tests in the style of datasette's: every hook specification in
:mod:`headwater.hookspecs` must be documented and exercised by a test in this module.
"""

from __future__ import annotations

import inspect
import logging
import sys
import types
from collections.abc import AsyncIterator, Callable, Iterator
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, Literal

import anyio.lowlevel
import pluggy
import pytest
from pydantic import BaseModel, ConfigDict

import headwater
from headwater import hookspecs
from headwater.builtin_plugins import catalogue
from headwater.builtin_plugins import sinks as builtin_sinks
from headwater.builtin_plugins.catalogue import sources as builtin_sources
from headwater.builtin_plugins.catalogue import transformers as builtin_transformers
from headwater.core import engine as engine_module
from headwater.core import plugins as plugins_module
from headwater.core.api import prepare
from headwater.core.components import Component, ComponentKind
from headwater.core.plugins import get_plugin_manager
from headwater.hookspecs import Register

# ---------------------------------------------------------------------------------------
# Components used by the throwaway plugins below
# ---------------------------------------------------------------------------------------


class CountParams(BaseModel):
    """Params of ``demo.count``."""

    model_config = ConfigDict(extra="forbid")

    stop: int


@headwater.action("demo.count", params=CountParams, capabilities=("progress",))
async def count(params: CountParams, ctx: headwater.StreamContext) -> AsyncIterator[int]:
    """Count from zero to ``stop``."""
    for i in range(params.stop):
        ctx.progress(i + 1, params.stop)
        yield i


@headwater.action("demo.other")
async def other(ctx: headwater.StreamContext) -> AsyncIterator[int]:
    """Yield one item."""
    yield 1


@headwater.transformer("demo.double")
def double(item: int) -> int:
    """Double each item."""
    return item * 2


class _ListSink:
    """Keep items in a list."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def write(self, batch: list[Any]) -> None:
        self.items.extend(batch)

    def close(self, error: BaseException | None) -> list[Any]:
        return self.items


class _DemoExporter:
    """Receive metric snapshots and drop them."""

    def export(self, snapshot: dict[str, Any]) -> None:
        pass


# Class components are declared with a call rather than the decorator syntax so that mypy
# (which ignores what a class decorator returns) sees Components.
ListSink = headwater.sink("demo.list")(_ListSink)
DemoExporter = headwater.exporter("demo.exporter")(_DemoExporter)


def undecorated(item: int) -> int:
    return item


# ---------------------------------------------------------------------------------------
# Throwaway plugins
# ---------------------------------------------------------------------------------------


class GoodPlugin:
    """Contributes one component of every kind."""

    @headwater.hookimpl
    def register_actions(self, register: Register) -> None:
        register(count)

    @headwater.hookimpl
    def register_transformers(self, register: Register) -> None:
        register(double)

    @headwater.hookimpl
    def register_sinks(self, register: Register) -> None:
        register(ListSink)

    @headwater.hookimpl
    def register_metrics_exporters(self, register: Register) -> None:
        register(DemoExporter)


class OtherPlugin:
    """A second, independent, healthy plugin."""

    @headwater.hookimpl
    def register_actions(self, register: Register) -> None:
        register(other)


class RaisingPlugin:
    """Registers an action, then blows up in another collection hook."""

    @headwater.hookimpl
    def register_actions(self, register: Register) -> None:
        register(other)

    @headwater.hookimpl
    def register_sinks(self, register: Register) -> None:
        raise RuntimeError("sink backend unavailable")


class DuplicatePlugin:
    """Registers a fresh sink and an action whose name GoodPlugin already took."""

    @headwater.hookimpl
    def register_sinks(self, register: Register) -> None:
        register(builtin_sinks.NullSink)  # type: ignore[arg-type]  # a decorated class

    @headwater.hookimpl
    def register_actions(self, register: Register) -> None:
        register(count)


class TypoPlugin:
    """Implements ``register_actoins``: a typo that must not pass silently."""

    @headwater.hookimpl
    def register_actoins(self, register: Register) -> None:  # pragma: no cover - never called
        register(count)


class WrongKindPlugin:
    """Registers a sink from the actions hook."""

    @headwater.hookimpl
    def register_actions(self, register: Register) -> None:
        register(ListSink)


class NotAComponentPlugin:
    """Registers a plain function that is not decorated."""

    @headwater.hookimpl
    def register_transformers(self, register: Register) -> None:
        register(undecorated)  # type: ignore[arg-type]  # the mistake under test


class WrongArgumentPlugin:
    """Its hook implementation names an argument the specification does not have."""

    @headwater.hookimpl
    def register_actions(self, regster: Register) -> None:  # pragma: no cover - never called
        regster(count)


@pytest.fixture
def pm() -> headwater.PluginManager:
    """A fresh manager that loads no entry points."""
    return headwater.PluginManager(load_entry_points=False, strict=False)


@pytest.fixture
def builtins_pm(pm: headwater.PluginManager) -> headwater.PluginManager:
    """A fresh manager holding only the built-in plugins, registered by hand."""
    for name, module in (
        ("headwater.sources", builtin_sources),
        ("headwater.transformers", builtin_transformers),
        ("headwater.sinks", catalogue.sinks),
    ):
        assert pm.register(module, name, distribution="headwater", version="0.1.0")
    return pm


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(plugins_module.DISABLE_ENV, raising=False)
    monkeypatch.delenv(plugins_module.STRICT_ENV, raising=False)


def only_failure(pm: headwater.PluginManager) -> headwater.LoadFailure:
    assert len(pm.failures) == 1, pm.failures
    return pm.failures[0]


def snapshot(pm: headwater.PluginManager) -> list[tuple[str, str, str | None]]:
    return [(str(c.kind), c.name, c.plugin) for c in pm.registry]


# ---------------------------------------------------------------------------------------
# Collection hooks
# ---------------------------------------------------------------------------------------


def test_hook_register_actions_attributes_plugin_distribution_and_version(
    pm: headwater.PluginManager,
) -> None:
    assert pm.register(GoodPlugin(), "good", distribution="hw-good", version="1.2.3")

    action = pm.get("action", "demo.count")
    assert action.obj is count.obj
    assert (action.plugin, action.distribution, action.version) == ("good", "hw-good", "1.2.3")
    assert action.qualified_name == "good:demo.count"
    # the decorated object itself is left untouched: attribution is a copy
    assert count.plugin is None
    meta = action.metadata()
    assert meta["plugin"] == "good"
    assert meta["distribution"] == "hw-good"
    assert meta["version"] == "1.2.3"
    assert meta["params_schema"]["required"] == ["stop"]


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        (ComponentKind.TRANSFORMER, "demo.double"),
        (ComponentKind.SINK, "demo.list"),
        (ComponentKind.EXPORTER, "demo.exporter"),
    ],
)
def test_hook_register_transformers_register_sinks_register_metrics_exporters(
    pm: headwater.PluginManager, kind: ComponentKind, name: str
) -> None:
    assert pm.register(GoodPlugin(), "good", distribution="hw-good", version="1.2.3")
    component = pm.get(kind, name)
    assert component.kind is kind
    assert (component.plugin, component.distribution, component.version) == (
        "good",
        "hw-good",
        "1.2.3",
    )


def test_plugin_info_lists_every_contributed_component(pm: headwater.PluginManager) -> None:
    assert pm.register(GoodPlugin(), "good", distribution="hw-good", version="1.2.3")
    info = pm.plugins["good"]
    assert info.distribution == "hw-good"
    assert info.version == "1.2.3"
    assert info.module == __name__
    assert not info.disabled
    assert sorted(info.components) == [
        "action:demo.count",
        "exporter:demo.exporter",
        "sink:demo.list",
        "transformer:demo.double",
    ]
    assert pm.failures == []


def test_hook_register_metrics_exporters_from_a_module_plugin(pm: headwater.PluginManager) -> None:
    """A module is the usual plugin object; its marked functions are the hooks."""
    module = types.ModuleType("hw_fake_exporters")

    @headwater.hookimpl
    def register_metrics_exporters(register: Register) -> None:
        register(DemoExporter)

    def register_sinks(register: Register) -> None:  # pragma: no cover - never called
        raise AssertionError("functions without the marker are not hooks")

    module.register_metrics_exporters = register_metrics_exporters  # type: ignore[attr-defined]
    module.register_sinks = register_sinks  # type: ignore[attr-defined]

    assert pm.register(module)
    assert pm.plugins["hw_fake_exporters"].module == "hw_fake_exporters"
    assert pm.registry.names("exporter") == ["demo.exporter"]
    assert pm.registry.names("sink") == []


def test_same_name_in_different_kinds_is_allowed(pm: headwater.PluginManager) -> None:
    @headwater.sink("demo.count")
    def count_sink(batch: list[Any], ctx: headwater.StreamContext) -> None:
        pass

    class SinkNamedLikeAnAction:
        @headwater.hookimpl
        def register_sinks(self, register: Register) -> None:
            register(count_sink)

    assert pm.register(GoodPlugin(), "good")
    assert pm.register(SinkNamedLikeAnAction(), "sinky")
    assert [c.kind for c in pm.registry.find("demo.count")] == ["action", "sink"]


def test_hook_that_raises_is_recorded_and_leaves_registry_unchanged(
    pm: headwater.PluginManager,
) -> None:
    assert pm.register(GoodPlugin(), "good")
    before = snapshot(pm)

    assert not pm.register(RaisingPlugin(), "raising", distribution="hw-raising", version="0.1")
    assert pm.register(OtherPlugin(), "other")

    failure = only_failure(pm)
    assert failure.plugin == "raising"
    assert (failure.distribution, failure.version) == ("hw-raising", "0.1")
    assert failure.stage == "hook"
    assert failure.error == "register_sinks raised RuntimeError: sink backend unavailable"
    assert "RuntimeError: sink backend unavailable" in failure.traceback
    assert "hw-raising" in str(failure)
    assert failure.to_dict() == {
        "plugin": "raising",
        "distribution": "hw-raising",
        "version": "0.1",
        "stage": "hook",
        "error": "register_sinks raised RuntimeError: sink backend unavailable",
    }
    # the action RaisingPlugin registered before failing was rolled back...
    assert set(snapshot(pm)) == {*before, ("action", "demo.other", "other")}
    assert "raising" not in pm.plugins
    # ...and the broken plugin no longer takes part in any hook
    assert all(
        impl.plugin_name != "raising"
        for impl in pm._pm.hook.register_actions.get_hookimpls()  # white-box check
    )


def test_duplicate_component_name_skips_later_plugin_and_names_both(
    pm: headwater.PluginManager,
) -> None:
    assert pm.register(GoodPlugin(), "good", distribution="hw-good", version="1.0")
    assert not pm.register(DuplicatePlugin(), "dupe", distribution="hw-duplicate", version="2.0")

    failure = only_failure(pm)
    assert failure.stage == "duplicate"
    assert failure.plugin == "dupe"
    assert failure.distribution == "hw-duplicate"
    assert "'demo.count'" in failure.error
    assert "'good'" in failure.error
    assert "'dupe'" in str(failure)
    # the first plugin keeps working; nothing of the later one is registered
    assert pm.get("action", "demo.count").plugin == "good"
    assert "null" not in pm.registry.names("sink")
    assert "dupe" not in pm.plugins


def test_duplicate_name_within_one_plugin(pm: headwater.PluginManager) -> None:
    class Twice:
        @headwater.hookimpl
        def register_actions(self, register: Register) -> None:
            register(count)
            register(count)

    assert not pm.register(Twice(), "twice")
    failure = only_failure(pm)
    assert failure.stage == "duplicate"
    assert "already registered by plugin 'twice'" in failure.error
    assert len(pm.registry) == 0


def test_unknown_hook_is_reported_with_a_suggestion(pm: headwater.PluginManager) -> None:
    assert not pm.register(TypoPlugin(), "typo", distribution="hw-typo", version="0.1")
    failure = only_failure(pm)
    assert failure.stage == "unknown-hook"
    assert "'register_actoins'" in failure.error
    assert "did you mean 'register_actions'?" in failure.error
    assert len(pm.registry) == 0
    assert "typo" not in pm.plugins
    # the rejected plugin was fully unregistered: its name can be used again
    assert pm.register(GoodPlugin(), "typo")


@pytest.mark.parametrize("declared", [">=1,<2", "==1", "~=1.0", ">=0.5"])
def test_a_plugin_targeting_this_plugin_api_loads(
    pm: headwater.PluginManager, declared: str
) -> None:
    plugin = types.SimpleNamespace(HEADWATER_PLUGIN_API=declared, **_good_hooks())
    assert pm.register(plugin, "fits", distribution="hw-fits", version="1.0")
    assert "fits" in pm.plugins


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        (">=2", "targets headwater plugin API >=2 but headwater"),
        ("<1", "targets headwater plugin API <1"),
        ("two please", "is not a plugin API version range"),
    ],
)
def test_a_plugin_targeting_another_plugin_api_fails_to_load_clearly(
    pm: headwater.PluginManager, declared: str, message: str
) -> None:
    plugin = types.SimpleNamespace(HEADWATER_PLUGIN_API=declared, **_good_hooks())
    assert not pm.register(plugin, "future", distribution="hw-future", version="9.0")
    failure = only_failure(pm)
    assert failure.stage == "plugin-api"
    assert message in failure.error
    assert "hw-future" in str(failure)
    assert len(pm.registry) == 0
    assert "future" not in pm.plugins
    strict = headwater.PluginManager(load_entry_points=False, strict=True)
    with pytest.raises(headwater.PluginLoadError, match="plugin API"):
        strict.register(plugin, "future")


def _good_hooks() -> dict[str, Any]:
    """The hooks of a small valid plugin, as attributes of a namespace plugin."""
    return {"register_actions": GoodPlugin().register_actions}


def test_unknown_hook_far_from_any_name_has_no_suggestion(pm: headwater.PluginManager) -> None:
    class Weird:
        @headwater.hookimpl
        def frobnicate(self) -> None:  # pragma: no cover - never called
            pass

    assert not pm.register(Weird(), "weird")
    failure = only_failure(pm)
    assert failure.error == "implements unknown hook 'frobnicate'"


def test_component_of_the_wrong_kind_is_rejected(pm: headwater.PluginManager) -> None:
    assert not pm.register(WrongKindPlugin(), "wrongkind")
    failure = only_failure(pm)
    assert failure.stage == "hook"
    assert "register_actions registered sink 'demo.list'" in failure.error
    assert "matching hook" in failure.error
    assert len(pm.registry) == 0


def test_registering_a_non_component_is_rejected(pm: headwater.PluginManager) -> None:
    assert not pm.register(NotAComponentPlugin(), "plain")
    failure = only_failure(pm)
    assert failure.stage == "hook"
    assert "is not a component" in failure.error
    assert "@headwater.transformer" in failure.error
    assert len(pm.registry) == 0


def test_async_collection_hook_is_rejected(pm: headwater.PluginManager) -> None:
    class AsyncRegister:
        @headwater.hookimpl
        async def register_actions(self, register: Register) -> None:
            register(count)  # pragma: no cover - never awaited

    assert not pm.register(AsyncRegister(), "async")
    failure = only_failure(pm)
    assert failure.stage == "hook"
    assert failure.error == "register_actions must be a plain function, not async def"
    assert len(pm.registry) == 0


def test_collection_hook_returning_components_is_rejected(pm: headwater.PluginManager) -> None:
    class Returns:
        @headwater.hookimpl
        def register_actions(self, register: Register) -> list[Component]:
            return [count]

    assert not pm.register(Returns(), "returns")
    failure = only_failure(pm)
    assert failure.stage == "hook"
    assert "register_actions returned list; call register(component)" in failure.error


def test_hookimpl_with_wrong_argument_name(pm: headwater.PluginManager) -> None:
    assert not pm.register(WrongArgumentPlugin(), "wrongarg", distribution="hw-x", version="1")
    failure = only_failure(pm)
    assert failure.stage == "register"
    assert "'regster'" in failure.error
    assert "PluginValidationError" in failure.error
    assert "wrongarg" not in pm.plugins
    assert len(pm.registry) == 0


def test_half_registered_plugin_is_rolled_back(
    pm: headwater.PluginManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pluggy < 1.7 keeps a plugin whose later hookimpl fails validation half-registered."""
    real = pm._pm.register  # white-box: simulate the old pluggy behaviour

    def half_register(plugin: object, name: str | None = None) -> str | None:
        real(plugin, name=name)
        raise pluggy.PluginValidationError(plugin, "simulated late validation failure")

    monkeypatch.setattr(pm._pm, "register", half_register)
    recorder = Recorder()
    assert not pm.register(recorder, "half")
    assert only_failure(pm).stage == "register"
    assert not pm._pm.is_registered(recorder)
    assert not pm.has_listeners("pipeline_started")

    monkeypatch.undo()
    assert pm.register(recorder, "half")


def test_registering_the_same_name_twice_is_a_failure(pm: headwater.PluginManager) -> None:
    good = GoodPlugin()
    assert pm.register(good, "good")
    assert not pm.register(OtherPlugin(), "good")
    assert not pm.register(good, "good")
    assert not pm.register(good, "good-again")
    assert [f.stage for f in pm.failures] == ["register"] * 3
    # none of the failed attempts disturbed the first registration
    assert pm._pm.get_plugin("good") is good
    assert pm.get("action", "demo.count").plugin == "good"
    assert "demo.other" not in pm.registry.names("action")


# ---------------------------------------------------------------------------------------
# Disabling plugins
# ---------------------------------------------------------------------------------------


def test_disabled_by_plugin_name() -> None:
    pm = headwater.PluginManager(load_entry_points=False, disable=["good"])
    assert pm.disabled == frozenset({"good"})
    assert not pm.register(GoodPlugin(), "good", distribution="hw-good", version="1.0")
    assert pm.register(OtherPlugin(), "other")
    assert pm.failures == []
    assert pm.plugins["good"].disabled
    assert pm.plugins["good"].components == []
    assert pm.registry.names("action") == ["demo.other"]


def test_disabled_by_distribution_name() -> None:
    pm = headwater.PluginManager(load_entry_points=False, disable=["hw-good"])
    assert not pm.register(GoodPlugin(), "good", distribution="hw-good", version="1.0")
    assert pm.plugins["good"].disabled
    assert len(pm.registry) == 0


def test_disabled_via_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADWATER_DISABLE_PLUGINS", " good , hw-other,, ")
    pm = headwater.PluginManager(load_entry_points=False, disable=["third"])
    assert pm.disabled == frozenset({"good", "hw-other", "third"})
    assert not pm.register(GoodPlugin(), "good")
    assert not pm.register(OtherPlugin(), "other", distribution="hw-other")
    assert len(pm.registry) == 0
    assert pm.failures == []


def test_disabled_entry_point_is_not_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADWATER_DISABLE_PLUGINS", "broken")
    ep = EntryPoint("broken", "hw_module_that_does_not_exist", "headwater")
    pm = headwater.PluginManager(entry_points=[ep]).load()
    assert pm.failures == []
    assert pm.plugins["broken"].disabled


def test_disabled_via_pipeline_yaml_key(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        "name: evens\n"
        "plugins: {disable: [headwater.transformers]}\n"
        "sources: {nums: {action: range, params: {stop: 4}}}\n"
        "steps: [{transformer: map, params: {fn: builtins:abs}}]\n"
        "sinks: [{sink: collect}]\n",
        encoding="utf-8",
    )
    spec = headwater.load_pipeline(path)
    assert spec.plugins.disable == ["headwater.transformers"]

    with pytest.raises(headwater.PipelineValidationError) as info:
        prepare(spec)
    [issue] = info.value.issues
    assert issue.path == "steps[0].transformer"
    assert "no transformer 'map'" in issue.message

    # the same pipeline without the key resolves against the built-ins
    enabled = spec.model_copy(update={"plugins": type(spec.plugins)()})
    resolved, _ = prepare(enabled)
    assert resolved.steps[0].component.plugin == "headwater.transformers"


# ---------------------------------------------------------------------------------------
# Strict mode
# ---------------------------------------------------------------------------------------


def test_strict_mode_raises_chaining_the_original_exception() -> None:
    pm = headwater.PluginManager(load_entry_points=False, strict=True)
    with pytest.raises(headwater.PluginLoadError, match="sink backend unavailable") as info:
        pm.register(RaisingPlugin(), "raising", distribution="hw-raising", version="0.1")
    assert isinstance(info.value.__cause__, RuntimeError)
    assert str(info.value.__cause__) == "sink backend unavailable"
    assert "hw-raising" in str(info.value)
    # the failure is recorded and nothing of the plugin stays registered
    assert [f.plugin for f in pm.failures] == ["raising"]
    assert len(pm.registry) == 0


def test_strict_mode_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADWATER_STRICT_PLUGINS", "1")
    pm = headwater.PluginManager(load_entry_points=False)
    with pytest.raises(headwater.PluginLoadError, match="did you mean 'register_actions'"):
        pm.register(TypoPlugin(), "typo")


def test_strict_import_error_chains_the_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADWATER_STRICT_PLUGINS", "yes")
    ep = EntryPoint("broken", "hw_module_that_does_not_exist", "headwater")
    pm = headwater.PluginManager(entry_points=[ep])
    with pytest.raises(headwater.PluginLoadError, match="import") as info:
        pm.load()
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


def test_explicit_strict_false_overrides_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADWATER_STRICT_PLUGINS", "1")
    pm = headwater.PluginManager(load_entry_points=False, strict=False)
    assert not pm.register(RaisingPlugin(), "raising")
    assert only_failure(pm).stage == "hook"


def test_load_failure_message_without_version() -> None:
    failure = headwater.LoadFailure("p", "hw-p", None, "import", "ImportError: no")
    assert str(failure) == "plugin 'p' from hw-p failed to load (import): ImportError: no"
    bare = headwater.LoadFailure("p", None, None, "hook", "boom")
    assert str(bare) == "plugin 'p' failed to load (hook): boom"


def test_non_strict_failures_are_logged(
    pm: headwater.PluginManager, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="headwater.plugins"):
        pm.register(RaisingPlugin(), "raising", distribution="hw-raising", version="0.1")
    assert "plugin 'raising' from hw-raising 0.1 failed to load (hook)" in caplog.text


# ---------------------------------------------------------------------------------------
# Entry points: discovery, built-ins, laziness
# ---------------------------------------------------------------------------------------


def test_entry_point_that_fails_to_import_is_recorded_and_skipped() -> None:
    eps = [
        EntryPoint("broken", "hw_module_that_does_not_exist", "headwater"),
        EntryPoint("sinks", "headwater.builtin_plugins.catalogue:sinks", "headwater"),
    ]
    pm = headwater.PluginManager(entry_points=eps).load()
    failure = only_failure(pm)
    assert failure.plugin == "broken"
    assert failure.stage == "import"
    assert failure.error.startswith("ModuleNotFoundError: No module named")
    assert "hw_module_that_does_not_exist" in failure.error
    assert {"collect", "null"} <= set(pm.registry.names("sink"))


def test_two_entry_points_with_the_same_name() -> None:
    eps = [
        EntryPoint("sinks", "headwater.builtin_plugins.catalogue:sinks", "headwater"),
        EntryPoint("sinks", "headwater.builtin_plugins.catalogue:sources", "headwater"),
    ]
    pm = headwater.PluginManager(entry_points=eps).load()
    assert only_failure(pm).stage == "duplicate"
    assert pm.registry.names("action") == []


def test_builtins_are_discovered_through_the_entry_point_group() -> None:
    declared = {
        ep.name: ep.value
        for ep in entry_points(group="headwater")
        if ep.dist is not None and ep.dist.name == "headwater"
    }
    assert {
        "headwater.sources": "headwater.builtin_plugins.catalogue:sources",
        "headwater.transformers": "headwater.builtin_plugins.catalogue:transformers",
        "headwater.sinks": "headwater.builtin_plugins.catalogue:sinks",
        "headwater.stores": "headwater.builtin_plugins.catalogue:stores",
    }.items() <= declared.items()
    assert all(value.startswith("headwater.builtin_plugins.") for value in declared.values())

    pm = headwater.PluginManager().load()
    for name, value in declared.items():
        info = pm.plugins[name]
        assert info.distribution == "headwater"
        assert info.version == headwater.__version__
        assert info.module is not None
        assert info.module.startswith("headwater.builtin_plugins.")
        assert info.module == value.partition(":")[0] or ":" in value
        assert not info.disabled
    components = {c for name in declared for c in pm.plugins[name].components}
    assert {
        "action:range",
        "action:iterable",
        "transformer:map",
        "transformer:filter",
        "sink:collect",
        "sink:null",
    } <= components
    assert pm.get("action", "range").distribution == "headwater"
    assert not [f for f in pm.failures if f.distribution == "headwater"]


def test_builtins_can_be_disabled_like_any_plugin() -> None:
    pm = headwater.PluginManager(disable=["headwater.sinks"]).load()
    assert pm.plugins["headwater.sinks"].disabled
    assert "collect" not in pm.registry.names("sink")
    assert "range" in pm.registry.names("action")


def test_loading_is_lazy_and_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = entry_points

    def counting(*, group: str) -> Any:
        calls.append(group)
        return real(group=group)

    monkeypatch.setattr(plugins_module, "entry_points", counting)
    pm = headwater.PluginManager()
    assert calls == []
    assert pm.plugins == {}
    assert len(pm.registry) == 0

    assert pm.load() is pm
    loaded = dict(pm.plugins)
    count_before = len(pm.registry)
    assert pm.load() is pm
    assert pm.get("action", "range").name == "range"
    assert calls == ["headwater"]
    assert pm.plugins == loaded
    assert len(pm.registry) == count_before


def test_get_triggers_loading() -> None:
    pm = headwater.PluginManager()
    assert pm.get("sink", "collect").plugin == "headwater.sinks"


def test_unknown_component_lookup_suggests_names(builtins_pm: headwater.PluginManager) -> None:
    with pytest.raises(headwater.ComponentNotFound, match="did you mean 'range'") as info:
        builtins_pm.get("action", "rnage")
    assert info.value.suggestions == ["range"]
    assert isinstance(info.value, LookupError)


def test_default_engine_manager_is_created_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "_default", None)
    first = get_plugin_manager()
    assert first is get_plugin_manager()
    assert "headwater.sources" in first.plugins  # loaded on first use

    mine = headwater.PluginManager(load_entry_points=False)
    plugins_module.reset_plugin_manager(mine)
    assert get_plugin_manager() is mine
    plugins_module.reset_plugin_manager()
    assert get_plugin_manager() not in (first, mine)


# ---------------------------------------------------------------------------------------
# Lifecycle hooks
# ---------------------------------------------------------------------------------------


class Recorder:
    """Records lifecycle calls; sync implementations."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    @headwater.hookimpl
    def pipeline_started(self, pipeline: headwater.PipelineSpec, run_id: str) -> None:
        self.calls.append(("started", {"pipeline": pipeline, "run_id": run_id}))

    @headwater.hookimpl
    def pipeline_finished(
        self, pipeline: headwater.PipelineSpec, run_id: str, state: str, summary: dict[str, Any]
    ) -> None:
        self.calls.append(
            (
                "finished",
                {"pipeline": pipeline, "run_id": run_id, "state": state, "summary": summary},
            )
        )

    @headwater.hookimpl
    def stream_error(
        self,
        pipeline: headwater.PipelineSpec,
        run_id: str,
        error: headwater.StageError,
        handled: bool,
    ) -> None:
        self.calls.append(
            ("error", {"pipeline": pipeline, "run_id": run_id, "error": error, "handled": handled})
        )

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


class AsyncRecorder:
    """Records lifecycle calls; ``async def`` implementations taking a subset of args."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    @headwater.hookimpl
    async def pipeline_started(self, run_id: str) -> None:
        await headwater_sleep0()
        self.calls.append(("started", run_id))

    @headwater.hookimpl
    async def pipeline_finished(self, state: str) -> None:
        await headwater_sleep0()
        self.calls.append(("finished", state))

    @headwater.hookimpl
    async def stream_error(self, error: headwater.StageError, handled: bool) -> None:
        await headwater_sleep0()
        self.calls.append(("error", (error.position, handled)))


async def headwater_sleep0() -> None:
    await anyio.lowlevel.checkpoint()


class Exploding:
    """Every lifecycle hook raises; the run must not notice."""

    @headwater.hookimpl
    def pipeline_started(self) -> None:
        raise RuntimeError("started exploded")

    @headwater.hookimpl
    async def pipeline_finished(self) -> None:
        raise RuntimeError("finished exploded")

    @headwater.hookimpl
    def stream_error(self) -> None:
        raise RuntimeError("stream_error exploded")


def fail_on_three(item: int) -> int:
    if item == 3:
        raise ValueError("three is not allowed")
    return item


def evens_pipeline(on_error: Literal["fail", "skip"] = "fail") -> headwater.PipelineSpec:
    return (
        headwater.Pipeline("lifecycle")
        .source("range", stop=6)
        .map(fail_on_three, on_error=on_error)
        .sink("collect")
        .build()
    )


@pytest.fixture
def recorders(builtins_pm: headwater.PluginManager) -> tuple[Recorder, AsyncRecorder]:
    sync_rec, async_rec = Recorder(), AsyncRecorder()
    assert builtins_pm.register(sync_rec, "recorder")
    assert builtins_pm.register(async_rec, "async-recorder")
    assert builtins_pm.has_listeners("pipeline_started")
    return sync_rec, async_rec


@pytest.mark.anyio
async def test_hook_pipeline_started_and_pipeline_finished_on_success(
    builtins_pm: headwater.PluginManager, recorders: tuple[Recorder, AsyncRecorder]
) -> None:
    sync_rec, async_rec = recorders
    spec = headwater.Pipeline("ok").source("range", stop=5).sink("collect").build()

    result = await headwater.run(spec, plugins=builtins_pm)

    assert result.output == [0, 1, 2, 3, 4]
    assert sync_rec.names() == ["started", "finished"]
    started, finished = (args for _, args in sync_rec.calls)
    assert started == {"pipeline": spec, "run_id": result.run_id}
    assert finished["pipeline"] == spec
    assert finished["run_id"] == result.run_id
    assert finished["state"] == "succeeded"
    assert finished["summary"] == result.summary
    assert async_rec.calls == [("started", result.run_id), ("finished", "succeeded")]


@pytest.mark.anyio
async def test_hook_stream_error_unhandled_fails_the_run(
    builtins_pm: headwater.PluginManager, recorders: tuple[Recorder, AsyncRecorder]
) -> None:
    sync_rec, async_rec = recorders

    result = await headwater.run(evens_pipeline(), plugins=builtins_pm, raise_on_error=False)

    assert result.state == "failed"
    assert sync_rec.names() == ["started", "error", "finished"]
    error_args = sync_rec.calls[1][1]
    error = error_args["error"]
    assert isinstance(error, headwater.StageError)
    assert error_args["handled"] is False
    assert error_args["run_id"] == result.run_id
    assert error.pipeline == "lifecycle"
    assert error.stage == "steps[0].map"
    assert error.plugin == "headwater.transformers"
    assert error.position == 3
    assert isinstance(error.cause, ValueError)
    assert sync_rec.calls[2][1]["state"] == "failed"
    assert async_rec.calls == [
        ("started", result.run_id),
        ("error", (3, False)),
        ("finished", "failed"),
    ]


@pytest.mark.anyio
async def test_hook_stream_error_handled_by_skip_policy(
    builtins_pm: headwater.PluginManager, recorders: tuple[Recorder, AsyncRecorder]
) -> None:
    sync_rec, async_rec = recorders

    result = await headwater.run(evens_pipeline("skip"), plugins=builtins_pm)

    assert result.state == "succeeded"
    assert result.output == [0, 1, 2, 4, 5]
    assert sync_rec.names() == ["started", "error", "finished"]
    assert sync_rec.calls[1][1]["handled"] is True
    assert sync_rec.calls[1][1]["error"].position == 3
    assert async_rec.calls[1] == ("error", (3, True))


@pytest.mark.anyio
async def test_raising_lifecycle_hooks_do_not_affect_the_run(
    builtins_pm: headwater.PluginManager,
    recorders: tuple[Recorder, AsyncRecorder],
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert builtins_pm.register(Exploding(), "exploding")
    sync_rec, _ = recorders

    with caplog.at_level(logging.ERROR, logger="headwater.plugins"):
        result = await headwater.run(evens_pipeline("skip"), plugins=builtins_pm)

    assert result.state == "succeeded"
    assert result.output == [0, 1, 2, 4, 5]
    # the other plugins were still notified of everything
    assert sync_rec.names() == ["started", "error", "finished"]
    for hook in ("pipeline_started", "pipeline_finished", "stream_error"):
        assert f"plugin 'exploding' raised in {hook}; ignored" in caplog.text
    assert "finished exploded" in caplog.text


def test_lifecycle_hooks_also_run_under_run_sync(builtins_pm: headwater.PluginManager) -> None:
    rec = Recorder()
    builtins_pm.register(rec, "recorder")
    spec = headwater.Pipeline("sync").source("range", stop=2).sink("null").build()
    result = headwater.run_sync(spec, plugins=builtins_pm, backend="trio")
    assert result.output == 2
    assert rec.names() == ["started", "finished"]


# ---------------------------------------------------------------------------------------
# Security hooks: authenticate / authorize (firstresult, async-aware, errors deny)
# ---------------------------------------------------------------------------------------


def auth_request(**tokens: str) -> Any:
    from headwater.server.auth import AuthRequest, AuthSettings, TokenGrant

    grants = {token: TokenGrant(name) for token, name in tokens.items()}
    return AuthRequest("/", {}, auth=AuthSettings(required=bool(grants), tokens=grants))


class NoOpinion:
    """Answers None to both security hooks, and records that it was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    @headwater.hookimpl
    def authenticate(self, token: str | None) -> None:
        self.asked.append(f"authenticate {token}")

    @headwater.hookimpl
    def authorize(self, principal: Any, action: str, target: str) -> None:
        self.asked.append(f"authorize {principal} {action} {target}")


class Accepts:
    """Authenticates every token as its upper-case self; allows everything (async)."""

    @headwater.hookimpl
    async def authenticate(self, token: str | None, request: Any) -> str | None:
        await anyio.lowlevel.checkpoint()
        return token.upper() if token else None

    @headwater.hookimpl
    async def authorize(self, principal: Any, action: str, target: str) -> bool:
        await anyio.lowlevel.checkpoint()
        return True


class Denies:
    """Rejects every connection; denies everything."""

    @headwater.hookimpl
    def authenticate(self) -> bool:
        return False

    @headwater.hookimpl
    def authorize(self) -> bool:
        return False


class Broken:
    """Raises in both hooks, or answers nonsense."""

    @headwater.hookimpl
    def authenticate(self, token: str | None) -> str:
        raise RuntimeError("auth backend down")

    @headwater.hookimpl
    def authorize(self, target: str) -> Any:
        if target == "nonsense":
            return "yes"
        raise RuntimeError("policy backend down")


@pytest.mark.anyio
async def test_hook_authenticate_first_non_none_wins_last_registered_first(
    pm: headwater.PluginManager,
) -> None:
    request = auth_request()
    assert await pm.authenticate("t", request) is None  # nobody implements it
    quiet = NoOpinion()
    assert pm.register(Denies(), "denies")
    assert pm.register(Accepts(), "accepts")
    assert pm.register(quiet, "quiet")
    # pluggy's order: quiet (no opinion), then accepts (answers: denies is never asked)
    assert await pm.authenticate("alice", request) == "ALICE"
    assert quiet.asked == ["authenticate alice"]
    # no token: accepts has no opinion either, so the older plugin decides
    assert await pm.authenticate(None, request) is False
    pm.unregister("denies")
    assert await pm.authenticate(None, request) is None


@pytest.mark.anyio
async def test_hook_authenticate_error_rejects_even_if_another_plugin_accepts(
    pm: headwater.PluginManager, caplog: pytest.LogCaptureFixture
) -> None:
    assert pm.register(Accepts(), "accepts")
    assert pm.register(Broken(), "broken")
    with caplog.at_level(logging.ERROR, logger="headwater.plugins"):
        assert await pm.authenticate("alice", auth_request()) is False
    assert "plugin 'broken' raised in authenticate: connection rejected" in caplog.text
    assert "auth backend down" in caplog.text


@pytest.mark.anyio
async def test_hook_authorize_first_non_none_wins_and_errors_deny(
    pm: headwater.PluginManager, caplog: pytest.LogCaptureFixture
) -> None:
    assert await pm.authorize("alice", "subscribe", "errors") is None
    quiet = NoOpinion()
    assert pm.register(Denies(), "denies")
    assert pm.register(quiet, "quiet")
    assert await pm.authorize("alice", "subscribe", "errors") is False
    assert quiet.asked == ["authorize alice subscribe errors"]
    assert pm.register(Accepts(), "accepts")
    assert await pm.authorize("alice", "run", "count") is True
    assert pm.register(Broken(), "broken")
    with caplog.at_level(logging.ERROR, logger="headwater.plugins"):
        assert await pm.authorize("alice", "subscribe", "errors") is False
        assert await pm.authorize("alice", "subscribe", "nonsense") is False
    assert "raised in authorize(subscribe 'errors'): denied" in caplog.text
    assert "returned 'yes' from authorize, not True, False or None: denied" in caplog.text


@pytest.mark.anyio
async def test_hook_authenticate_and_authorize_of_the_builtin_static_tokens(
    pm: headwater.PluginManager,
) -> None:
    from headwater.builtin_plugins import auth as builtin_auth
    from headwater.server.auth import AuthRequest, AuthSettings, TokenGrant, TokenPrincipal

    assert pm.register(builtin_auth, "headwater.auth", distribution="headwater")
    grants = {
        "s3cret": TokenGrant("alice"),
        "t0ken": TokenGrant("bob", streams=("errors-*",), pipelines=("count",)),
    }
    request = AuthRequest("/?token=x", {}, auth=AuthSettings(required=True, tokens=grants))
    assert await pm.authenticate(None, request) is None  # the server then rejects
    assert await pm.authenticate("wrong", request) is False
    assert await pm.authenticate("s3cret", request) == TokenPrincipal("alice")
    bob = await pm.authenticate("t0ken", request)
    assert isinstance(bob, TokenPrincipal)
    assert bob.name == "bob"
    assert await pm.authorize(bob, "subscribe", "errors-app") is True
    assert await pm.authorize(bob, "subscribe", "audit") is False
    assert await pm.authorize(bob, "run", "count") is True
    assert await pm.authorize(bob, "run", "other") is False
    assert await pm.authorize("not-a-token-principal", "run", "count") is None
    # without tokens the plugin has no opinion at all
    assert await pm.authenticate("s3cret", AuthRequest("/", {})) is None


# ---------------------------------------------------------------------------------------
# Meta-tests: the plugin contract is documented and tested
# ---------------------------------------------------------------------------------------


def hookspec_functions() -> Iterator[tuple[str, Callable[..., Any]]]:
    for name, obj in inspect.getmembers(hookspecs, inspect.isfunction):
        if getattr(obj, "headwater_spec", None) is not None:
            yield name, obj


def test_hookspecs_are_found() -> None:
    names = {name for name, _ in hookspec_functions()}
    assert {"register_actions", "pipeline_started", "stream_error"} <= names


@pytest.mark.parametrize("name", [name for name, _ in hookspec_functions()])
def test_every_hookspec_is_documented(name: str) -> None:
    spec = getattr(hookspecs, name)
    doc = inspect.getdoc(spec)
    assert doc, f"hookspec {name} has no docstring"
    for arg in inspect.signature(spec).parameters:
        assert f":param {arg}:" in doc, f"hookspec {name} does not document {arg!r}"
    assert ".. versionadded::" in doc, f"hookspec {name} does not say when it was added"


@pytest.mark.parametrize("name", [name for name, _ in hookspec_functions()])
def test_every_hookspec_has_a_test(name: str) -> None:
    tests = [
        test_name
        for test_name, fn in inspect.getmembers(sys.modules[__name__], inspect.isfunction)
        if test_name.startswith("test_") and name in test_name
    ]
    assert tests, (
        f"hook {name!r} is not exercised by any test in {Path(__file__).name}: add a test "
        f"whose name contains {name!r}"
    )


def test_every_hookspec_is_known_to_the_manager() -> None:
    """Every specification is added, so implementations of it are validated."""
    pm = headwater.PluginManager(load_entry_points=False)
    for name, _ in hookspec_functions():
        assert pm._pm.hook.__dict__[name].has_spec()  # white-box: pluggy's hook relay


@pytest.mark.parametrize("name", [name for name, _ in hookspec_functions()])
def test_every_hookspec_is_reachable_through_the_typed_facade(name: str) -> None:
    """Core code never calls ``pm.hook.x(...)`` untyped (tox's facade, one method per hook).

    Collection hooks are called by the manager itself when a plugin registers; every other
    hook needs a :class:`headwater.PluginManager` method with the specification's arguments.
    """
    if name in plugins_module._COLLECTION_HOOKS:
        return
    method = getattr(headwater.PluginManager, name, None)
    assert callable(method), f"PluginManager has no method for hook {name!r}"
    spec_args = list(inspect.signature(getattr(hookspecs, name)).parameters)
    assert list(inspect.signature(method).parameters)[1:] == spec_args


@pytest.mark.parametrize("name", [name for name, _ in hookspec_functions()])
def test_a_typo_of_every_hookspec_is_suggested(name: str) -> None:
    typo = name[:-2] + name[-1] + name[-2]  # swap the last two letters

    def impl() -> None:  # pragma: no cover - never called
        pass

    plugin = types.SimpleNamespace(**{typo: headwater.hookimpl(impl)})
    pm = headwater.PluginManager(load_entry_points=False, strict=False)
    assert not pm.register(plugin, "typo")
    assert f"did you mean {name!r}?" in only_failure(pm).error


def test_collection_hook_kinds_match_components() -> None:
    assert set(plugins_module._COLLECTION_HOOKS.values()) == set(ComponentKind)
    assert isinstance(count, Component)


def test_register_checkpoint_stores_contributes_a_store(
    pm: headwater.PluginManager, tmp_path: Path
) -> None:
    from headwater.core.checkpoints import Checkpoint

    saved: list[Checkpoint] = []

    @headwater.checkpoint_store("memory")
    class MemoryStore:
        """Keeps checkpoints in a dict."""

        def __init__(self) -> None:
            self.data: dict[str, Checkpoint] = {}

        def load(self, pipeline: str) -> Checkpoint | None:
            return self.data.get(pipeline)

        def save(self, checkpoint: Checkpoint) -> None:
            saved.append(checkpoint)
            self.data[checkpoint.pipeline] = checkpoint

        def list(self) -> list[Checkpoint]:
            return list(self.data.values())

        def reset(self, pipeline: str) -> bool:
            return self.data.pop(pipeline, None) is not None

        def close(self) -> None:
            pass

    class StorePlugin:
        @staticmethod
        @headwater.hookimpl
        def register_checkpoint_stores(register: Any) -> None:
            register(MemoryStore)

    for name, module in (
        ("headwater.sources", builtin_sources),
        ("headwater.transformers", builtin_transformers),
        ("headwater.sinks", catalogue.sinks),
    ):
        assert pm.register(module, name)
    assert pm.register(StorePlugin, "memstore", distribution="hw-mem", version="1.0")
    store = pm.registry.get("checkpoint_store", "memory")
    assert (store.plugin, store.distribution, store.kind) == (
        "memstore",
        "hw-mem",
        "checkpoint_store",
    )
    result = headwater.run_sync(
        {
            "name": "ck",
            "sources": {"n": {"action": "range", "params": {"stop": 50, "chunk": 10}}},
            "sinks": [{"sink": "collect"}],
            "checkpoint": {"store": "memory", "every_items": 20},
        },
        plugins=pm,
    )
    assert result.output == list(range(50))
    # a run that starts over first saves its empty checkpoint (items 0), then one per marker
    assert [c.items for c in saved] == [0, 20, 40, 50]
    assert saved[-1].completed
    assert saved[-1].positions == {"n": 50}


def test_register_routes_collects_each_plugins_routes_and_reports_a_broken_one() -> None:
    async def hello(request: headwater.HttpRequest) -> headwater.HttpResponse:
        return headwater.HttpResponse.text("hello")  # pragma: no cover - not served here

    class Pages:
        @headwater.hookimpl
        def register_routes(self, register: Any) -> None:
            register(headwater.HttpRoute.get("/plugins/pages/hello", hello))
            register(headwater.HttpRoute.page("/plugins/pages/about", "<p>about</p>"))

    class Broken:
        @headwater.hookimpl
        def register_routes(self, register: Any) -> None:
            register(headwater.HttpRoute.page("/plugins/broken/kept", "never"))
            raise RuntimeError("no routes today")

    pm = headwater.PluginManager(load_entry_points=False)
    assert pm.register(Pages(), "pages")
    assert pm.register(Broken(), "broken")
    seen: list[headwater.HttpRoute] = []
    failures = pm.register_routes(seen.append)
    assert [(r.plugin, r.path) for r in seen] == [
        ("pages", "/plugins/pages/hello"),
        ("pages", "/plugins/pages/about"),
    ]
    assert [(f.plugin, f.stage) for f in failures] == [("broken", "routes")]
    assert "no routes today" in failures[0].error
    with pytest.raises(ValueError, match="method 'FETCH'"):
        headwater.HttpRoute("FETCH", "/x", hello)


def test_register_run_stores_collects_each_plugins_stores_and_reports_a_broken_one() -> None:
    from headwater.server.history import MemoryRunStore

    class Stores:
        @headwater.hookimpl
        def register_run_stores(self, register: Any) -> None:
            register("mem2", MemoryRunStore)

    class Broken:
        @headwater.hookimpl
        def register_run_stores(self, register: Any) -> None:
            register("never", MemoryRunStore)
            raise RuntimeError("no stores today")

    pm = headwater.PluginManager(load_entry_points=False)
    assert pm.register(Stores(), "stores")
    assert pm.register(Broken(), "broken")
    seen: list[tuple[str, Any, str]] = []
    failures = pm.register_run_stores(
        lambda name, factory, plugin: seen.append((name, factory, plugin))
    )
    assert seen == [("mem2", MemoryRunStore, "stores")]
    assert [(f.plugin, f.stage) for f in failures] == [("broken", "run-stores")]
    assert "no stores today" in failures[0].error
