"""``import headwater`` stays cheap: behaviour, not wall-clock.

Each check runs in a fresh interpreter (``python -X importtime``) and asserts which
modules got imported: importing headwater must not pull in pydantic, anyio, PyYAML, rich,
the entry-point machinery (``importlib.metadata``) or any plugin.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import headwater

HEAVY = (
    "pydantic",
    "pydantic_core",
    "anyio",
    "sniffio",
    "trio",
    "yaml",
    "rich",
    "importlib.metadata",
    "headwater.core.plugins",
    "headwater.core.runtime",
    "headwater.builtin_plugins",
)


def imported_after(code: str) -> tuple[set[str], set[str]]:
    """Run ``code`` in a fresh interpreter.

    Returns the modules in ``sys.modules`` afterwards and the modules ``-X importtime``
    reported as imported (the two views should agree).
    """
    script = textwrap.dedent(code) + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", script],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    modules = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    timed = {
        line.rsplit("|", 1)[1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }
    return modules, timed


def heavy_in(modules: set[str]) -> list[str]:
    return sorted(
        m for m in modules if any(m == heavy or m.startswith(heavy + ".") for heavy in HEAVY)
    )


def test_import_headwater_imports_nothing_heavy() -> None:
    modules, timed = imported_after("import headwater")
    assert "headwater" in timed
    assert heavy_in(modules) == []
    assert heavy_in(timed) == []
    # at most the marker module is loaded eagerly; everything else is resolved on demand
    assert {m for m in modules if m.startswith("headwater")} <= {"headwater", "headwater.markers"}


def test_hookimpl_marker_is_available_without_loading_the_core() -> None:
    modules, _ = imported_after(
        """
        import headwater

        @headwater.hookimpl
        def register_actions(register):
            pass
        """
    )
    assert heavy_in(modules) == []


def test_declaring_a_component_without_params_stays_light() -> None:
    modules, _ = imported_after(
        """
        import headwater

        @headwater.transformer("demo.double")
        def double(item):
            return item * 2
        """
    )
    assert "headwater.core.components" in modules
    assert heavy_in(modules) == []


def test_creating_a_plugin_manager_does_no_discovery() -> None:
    modules, _ = imported_after(
        """
        import headwater

        pm = headwater.PluginManager()
        assert pm.plugins == {} and len(pm.registry) == 0
        """
    )
    assert "headwater.core.plugins" in modules
    assert not [m for m in modules if m.startswith("headwater.builtin_plugins")]
    assert not [m for m in modules if m.split(".")[0] in {"pydantic", "anyio", "yaml"}]


def test_loading_plugins_registers_the_builtins_by_name_only() -> None:
    """The counterpart of the test above: discovery does happen on ``load()``, but the
    built-in components' modules are imported only when a component is used."""
    modules, _ = imported_after(
        """
        import headwater

        pm = headwater.PluginManager().load()
        assert "range" in pm.registry.names("action")
        assert "http.request" in pm.registry.names("transformer")
        """
    )
    assert "importlib.metadata" in modules
    assert "headwater.builtin_plugins.catalogue" in modules
    components = {
        m for m in modules if m.startswith("headwater.builtin_plugins.") and not m.endswith("auth")
    }
    assert components == {"headwater.builtin_plugins.catalogue"}


def test_using_a_builtin_imports_its_module_and_no_other() -> None:
    modules, _ = imported_after(
        """
        import headwater

        pm = headwater.PluginManager().load()
        assert pm.get("action", "range").name == "range"
        assert pm.get("transformer", "map").name == "map"
        """
    )
    assert "headwater.builtin_plugins.sources" in modules
    assert "headwater.builtin_plugins.transformers.itemwise" in modules
    for unused in ("http", "files", "redis_streams", "postgres", "amqp", "mqtt", "sinks"):
        assert not [m for m in modules if m.startswith(f"headwater.builtin_plugins.{unused}")]
    assert "headwater.builtin_plugins.transformers.batching" not in modules


def test_pytest_plugin_is_cheap_to_load() -> None:
    """``headwater.testing`` is loaded by every pytest run where headwater is installed."""
    baseline, _ = imported_after("import pytest")
    modules, _ = imported_after("import pytest, headwater.testing")
    assert heavy_in(modules - baseline) == []


@pytest.mark.parametrize("name", sorted(headwater.__all__))
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(headwater, name) is not None
    assert name in dir(headwater)


def test_unknown_attribute_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        headwater.nope  # noqa: B018  # the attribute access is the test
