"""pytest fixtures for headwater plugin authors.

Installed with headwater and loaded by pytest automatically (through the ``pytest11``
entry point), so a plugin's test suite can use them without any set-up::

    import headwater
    from headwater.testing import run_pipeline

    import my_plugin


    def test_count(register_plugin):
        register_plugin(my_plugin)
        result = run_pipeline(
            headwater.Pipeline("t").source("demo.count", stop=3).sink("collect")
        )
        assert result.output == [0, 1, 2]

Fixtures:

``headwater_plugins``
    A fresh :class:`~headwater.PluginManager` holding headwater's built-in plugins only
    (your installed plugin is *not* loaded from its entry point: register it explicitly),
    in strict mode, and installed as the process-wide manager for the duration of the
    test, so ``headwater.run`` and friends use it. The previous manager is restored after.

``register_plugin``
    A function registering a plugin (a module, an object with ``@headwater.hookimpl``
    methods, or a class whose hooks are static methods) into ``headwater_plugins``; every
    plugin it registered is unregistered after the test.

Helper:

:func:`run_pipeline`
    Run a pipeline synchronously and return its :class:`~headwater.RunResult`.

This module is imported by every pytest session in an environment where headwater is
installed, so it imports nothing heavy at module level.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Literal, Protocol

import pytest

if TYPE_CHECKING:
    from .core.api import PipelineLike
    from .core.plugins import PluginInfo, PluginManager
    from .core.runtime import RunResult

__all__ = [
    "RegisterPlugin",
    "builtin_plugin_manager",
    "headwater_plugins",
    "register_plugin",
    "run_pipeline",
]


class RegisterPlugin(Protocol):
    """The callable the ``register_plugin`` fixture returns."""

    def __call__(
        self,
        plugin: object,
        name: str | None = None,
        *,
        distribution: str | None = None,
        version: str | None = None,
    ) -> PluginInfo:
        """Register ``plugin`` and return its :class:`~headwater.PluginInfo`.

        :param plugin: A module, an instance with ``@headwater.hookimpl`` methods, or a
            class whose hook implementations are static methods.
        :param name: The plugin name; defaults to the module or class name.
        :param distribution: Distribution to attribute the components to (as an installed
            plugin's would be).
        :param version: That distribution's version.
        :raises headwater.PluginLoadError: When the plugin is broken (it implements an
            unknown hook, a hook raises, a component name is taken, ...), chaining the
            original exception. The failure is also in ``headwater_plugins.failures``.
        """
        ...


def builtin_plugin_manager(*, strict: bool = True, disable: Iterable[str] = ()) -> PluginManager:
    """A fresh, loaded plugin manager holding only headwater's built-in plugins.

    Other installed plugins (including the one under test, if it is installed) are not
    loaded, so tests do not depend on what else is in the environment.

    :param strict: Raise :class:`~headwater.PluginLoadError` on any plugin failure
        instead of recording it (the default here: tests should fail loudly).
    :param disable: Plugin or distribution names not to load.
    """
    from importlib.metadata import entry_points

    from .core.plugins import ENTRY_POINT_GROUP, PluginManager
    from .markers import PROJECT_NAME

    builtins = [
        ep
        for ep in entry_points(group=ENTRY_POINT_GROUP)
        if ep.dist is not None and ep.dist.name == PROJECT_NAME
    ]
    return PluginManager(entry_points=builtins, strict=strict, disable=disable).load()


def _unregister(manager: PluginManager, name: str) -> None:
    """Remove a plugin and every component it contributed from ``manager``."""
    manager.unregister(name)


@pytest.fixture
def headwater_plugins() -> Iterator[PluginManager]:
    """A fresh plugin manager with the built-ins loaded, installed process-wide.

    While the test runs, :func:`headwater.get_plugin_manager` (and so ``headwater.run``,
    ``headwater.run_sync`` and :func:`run_pipeline` without ``plugins=``) returns this
    manager. The manager is strict: a broken plugin raises
    :class:`~headwater.PluginLoadError`. The previous process-wide manager is restored
    after the test.
    """
    from .core import plugins

    previous = plugins._default
    manager = builtin_plugin_manager()
    plugins.reset_plugin_manager(manager)
    try:
        yield manager
    finally:
        plugins.reset_plugin_manager(previous)


@pytest.fixture
def register_plugin(headwater_plugins: PluginManager) -> Iterator[RegisterPlugin]:
    """Register plugins into ``headwater_plugins``; they are unregistered after the test.

    Returns a callable ``register_plugin(plugin, name=None, *, distribution=None,
    version=None) -> PluginInfo`` (see :class:`RegisterPlugin`). A broken plugin raises
    :class:`~headwater.PluginLoadError` chaining the original error.
    """
    registered: list[str] = []

    def register(
        plugin: object,
        name: str | None = None,
        *,
        distribution: str | None = None,
        version: str | None = None,
    ) -> PluginInfo:
        plugin_name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        if not headwater_plugins.register(
            plugin, plugin_name, distribution=distribution, version=version
        ):
            # A strict manager has raised already; a non-strict one (an overridden
            # ``headwater_plugins``) records the failure, or the plugin is disabled.
            from .core.errors import PluginLoadError

            info = headwater_plugins.plugins.get(plugin_name)
            if info is not None and info.disabled:
                raise PluginLoadError(f"plugin {plugin_name!r} is disabled")
            raise PluginLoadError(str(headwater_plugins.failures[-1]))
        registered.append(plugin_name)
        return headwater_plugins.plugins[plugin_name]

    try:
        yield register
    finally:
        for plugin_name in reversed(registered):
            _unregister(headwater_plugins, plugin_name)


def run_pipeline(
    pipeline: PipelineLike,
    plugins: PluginManager | Iterable[object] | None = None,
    *,
    raise_on_error: bool = True,
    backend: Literal["asyncio", "trio"] = "asyncio",
) -> RunResult:
    """Run a pipeline to completion, synchronously, and return its result.

    :param pipeline: A :class:`~headwater.PipelineSpec`, a :class:`~headwater.Pipeline`
        builder, a mapping in the YAML shape, or a path to a YAML file.
    :param plugins: The plugin manager to resolve components with; or an iterable of
        plugin objects (modules, instances) to register, with the built-ins, into a
        fresh strict manager; or None for the process-wide manager (the
        ``headwater_plugins`` fixture's manager, when the test uses it).
    :param raise_on_error: Raise :class:`~headwater.PipelineFailed` (or
        ``PipelineCancelled`` / ``PipelineTimeout``) when the run does not succeed;
        when False, inspect the returned result's ``state`` and ``errors`` instead.
    :param backend: The event loop to run on, ``asyncio`` or ``trio``.
    :raises headwater.PipelineValidationError: When the pipeline is invalid.

    Starts its own event loop, so call it from synchronous tests only; in an async test
    ``await headwater.run(...)`` instead.
    """
    from .core.api import run_sync
    from .core.plugins import PluginManager

    manager: PluginManager | None
    if plugins is None or isinstance(plugins, PluginManager):
        manager = plugins
    else:
        manager = builtin_plugin_manager()
        for plugin in plugins:
            manager.register(plugin)
    return run_sync(pipeline, plugins=manager, raise_on_error=raise_on_error, backend=backend)
