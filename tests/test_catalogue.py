"""Components registered by name (``LazyComponent``): the built-in catalogue, and what a
plugin author gets when a lazily registered component is broken."""

from __future__ import annotations

import subprocess
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
            "is the action 'range', registered from register_sinks",
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
    imported = "ModuleNotFoundError" in message or message == "AttributeError"
    assert failures[0].stage == ("import" if imported else "register")
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


def test_strict_mode_refuses_a_broken_lazy_component_when_plugins_load() -> None:
    pm = headwater.PluginManager(entry_points=[], load_entry_points=False, strict=True)
    assert pm.register(_Plugin(LazyComponent("mine", "no_such_module_anywhere:thing")), "bad")
    with pytest.raises(headwater.PluginLoadError, match=r"sink 'mine'.*ModuleNotFoundError"):
        pm.load()


def test_threads_asking_for_one_lazy_component_get_one_object() -> None:
    import threading

    pm = headwater.PluginManager(entry_points=[], load_entry_points=False)
    pm.register(catalogue.sinks, "headwater.sinks")
    pm.register(_Plugin(LazyComponent("broken", "no_such_module_anywhere:thing")), "bad")
    start = threading.Barrier(6)
    found: list[object] = []
    errors: list[BaseException] = []

    def ask() -> None:
        start.wait()
        found.append(pm.registry.get("sink", "jsonl"))
        try:
            pm.registry.get("sink", "broken")
        except ComponentUnavailable as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(found) == 6
    assert len({id(c) for c in found}) == 1
    assert len(errors) == 6
    assert len([f for f in pm.failures if f.plugin == "bad"]) == 1


BROKEN_PLUGIN = """
import headwater

@headwater.action("acme.ok", output="one item")
def ok(ctx):
    return 1

@headwater.hookimpl
def register_actions(register):
    register(headwater.LazyComponent("acme.ok", "acme_bad:ok"))
    register(headwater.LazyComponent("acme.missing", "acme_gone:thing"))
"""


@pytest.fixture
def broken_site(tmp_path: Path) -> dict[str, str]:
    """An installed distribution ``acme-bad`` whose plugin registers a working and a
    broken lazy component; the environment that sees it."""
    import os

    site = tmp_path / "site"
    info = site / "acme_bad-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-bad\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[headwater]\nacme = acme_bad\n")
    (site / "acme_bad.py").write_text(BROKEN_PLUGIN)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    env.pop("HEADWATER_STRICT_PLUGINS", None)
    env["COLUMNS"] = "240"  # rich tables: one line per row
    return env


def _headwater(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headwater", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_cli_reports_a_broken_lazy_component(broken_site: dict[str, str]) -> None:
    check = _headwater(broken_site, "plugins", "--check", "acme")
    assert check.returncode == 1, check.stdout + check.stderr
    assert "plugin acme" in check.stdout
    assert "action 'acme.missing': ModuleNotFoundError" in check.stdout
    assert "failed 1" in check.stdout

    listing = _headwater(broken_site, "plugins")
    assert listing.returncode == 0, listing.stderr
    assert "1 failed to load" in listing.stdout  # the header counts it
    assert "could not be loaded (see LOAD ERRORS)" in listing.stdout

    described = _headwater(broken_site, "describe", "acme.missing")
    assert described.returncode == 2
    assert "action 'acme.missing' of plugin 'acme' could not be loaded" in described.stderr
    assert "did you mean" not in described.stderr

    strict = _headwater(broken_site, "--strict-plugins", "describe", "acme.ok")
    assert strict.returncode == 2
    assert "failed to load (import): action 'acme.missing'" in strict.stderr
    assert "Traceback" not in strict.stderr
