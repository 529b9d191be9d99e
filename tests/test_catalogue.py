"""Components registered by name (``LazyComponent``): the built-in catalogue, and what a
plugin author gets when a lazily registered component is broken."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import headwater
from headwater.builtin_plugins import catalogue
from headwater.core.components import ComponentKind, LazyComponent
from headwater.core.errors import ComponentNotFound, ComponentUnavailable, PipelineValidationError
from headwater.core.pipeline import PipelineSpec, resolve

BUILTINS = [
    (plugin_name, kind, lazy)
    for plugin_name, plugin in vars(catalogue).items()
    if isinstance(plugin, catalogue.BuiltinPlugin)
    for kind, lazy in plugin.components
]


@pytest.mark.parametrize(
    ("plugin", "kind", "lazy"), BUILTINS, ids=[f"{k}:{lz.name}" for _, k, lz in BUILTINS]
)
def test_every_builtin_target_loads_as_the_component_it_is_registered_as(
    plugin: str, kind: ComponentKind, lazy: LazyComponent
) -> None:
    component = lazy.load()
    assert component.name == lazy.name
    assert component.kind is kind


def test_the_catalogue_lists_every_builtin_entry_point() -> None:
    pm = headwater.PluginManager().load()
    builtin = {n: i for n, i in pm.plugins.items() if i.distribution == "headwater"}
    listed = {f"headwater.{name}" for name, *_ in BUILTINS}
    assert listed <= set(builtin)
    for name in listed:
        assert builtin[name].components, name


def test_a_plugin_module_is_imported_only_when_its_component_is_used(tmp_path: Path) -> None:
    package = tmp_path / "lazydemo"
    package.mkdir()
    (package / "__init__.py").write_text(
        textwrap.dedent(
            """
            import headwater

            @headwater.hookimpl
            def register_transformers(register):
                register(headwater.LazyComponent("demo.twice", "lazydemo.heavy:twice"))
            """
        )
    )
    (package / "heavy.py").write_text(
        textwrap.dedent(
            """
            import headwater

            @headwater.transformer("demo.twice")
            def twice(item):
                return item * 2
            """
        )
    )
    sys.path.insert(0, str(tmp_path))
    try:
        import lazydemo  # type: ignore[import-not-found]

        pm = headwater.PluginManager(entry_points=[], load_entry_points=False)
        assert pm.register(lazydemo, "lazydemo"), pm.failures
        assert "lazydemo.heavy" not in sys.modules
        assert pm.plugins["lazydemo"].components == ["transformer:demo.twice"]
        component = pm.get("transformer", "demo.twice")
        assert "lazydemo.heavy" in sys.modules
        assert component.plugin == "lazydemo"
        assert component.obj(21) == 42
        assert pm.get("transformer", "demo.twice") is component
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.split(".")[0] == "lazydemo"]:
            del sys.modules[name]


class _Plugin:
    def __init__(self, *components: Any) -> None:
        self.components = components

    @headwater.hookimpl
    def register_sinks(self, register: Any) -> None:
        for component in self.components:
            register(component)


def _manager(*components: Any) -> headwater.PluginManager:
    pm = headwater.PluginManager(entry_points=[], load_entry_points=False)
    pm.register(catalogue.sources, "headwater.sources")
    pm.register(_Plugin(*components), "broken")
    return pm


@pytest.mark.parametrize(
    ("name", "target", "message"),
    [
        ("mine", "no_such_module_anywhere:thing", "ModuleNotFoundError: No module named"),
        ("mine", "headwater.builtin_plugins.sinks:NoSuchSink", "AttributeError"),
        ("mine", "headwater.builtin_plugins.sinks:json", "is module, not a component"),
        ("mine", "headwater.builtin_plugins.sinks:NullSink", "is the component 'null', not 'mine'"),
        (
            "range",
            "headwater.builtin_plugins.sources:range_source",
            "is the action 'range', registered as a sink",
        ),
        ("mine", "not-a-target", "is not 'module:attribute'"),
    ],
)
def test_a_broken_lazy_component_is_a_clear_validation_problem(
    name: str, target: str, message: str
) -> None:
    pm = _manager(LazyComponent(name, target))
    spec = PipelineSpec.model_validate(
        {
            "name": "p",
            "sources": {"n": {"action": "range", "params": {"stop": 2}}},
            "sinks": [{"sink": name}],
        }
    )
    with pytest.raises(PipelineValidationError) as caught:
        resolve(spec, pm.registry)
    text = str(caught.value)
    assert f"sink {name!r} of plugin 'broken' could not be loaded" in text
    assert message in text
    assert "Traceback" not in text
    # reported once as a failure of the plugin, with the traceback kept for --verbose
    failures = [f for f in pm.failures if f.plugin == "broken"]
    assert len(failures) == 1
    assert failures[0].stage == "import"
    with pytest.raises(ComponentUnavailable):
        pm.registry.get("sink", name)
    assert len([f for f in pm.failures if f.plugin == "broken"]) == 1
    # listings skip it instead of failing
    assert name not in {c.name for c in pm.registry if c.kind == "sink"}
    assert pm.registry.names("sink") == [name]


def test_a_lazy_name_clashing_with_a_registered_one_is_a_duplicate() -> None:
    pm = headwater.PluginManager(entry_points=[], load_entry_points=False)
    assert pm.register(catalogue.sinks, "headwater.sinks")
    assert not pm.register(_Plugin(LazyComponent("null", "x:y")), "other")
    assert pm.failures[-1].stage == "duplicate"
    assert "sink 'null' is already registered by plugin 'headwater.sinks'" in pm.failures[-1].error
    assert not pm.register(
        _Plugin(LazyComponent("twin", "x:y"), LazyComponent("twin", "x:z")), "twins"
    )
    assert "already registered by plugin 'twins'" in pm.failures[-1].error
    with pytest.raises(ComponentNotFound):
        pm.registry.get("sink", "twin")


def test_unregistering_a_plugin_removes_its_lazy_components() -> None:
    pm = headwater.PluginManager(entry_points=[], load_entry_points=False)
    assert pm.register(catalogue.sinks, "headwater.sinks")
    pm.get("sink", "null")
    assert pm.unregister("headwater.sinks")
    assert pm.registry.names("sink") == []
