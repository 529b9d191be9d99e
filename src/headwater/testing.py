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

``live_server`` (async, asyncio only)
    A started :class:`~headwater.Server` on ``127.0.0.1``, a free port, using the
    ``headwater_plugins`` manager, and a :class:`~headwater.client.Client` connected to
    it: the fixture yields ``(server, client)``. Use it from ``@pytest.mark.anyio`` tests;
    override the ``live_server_config`` fixture to configure pipelines, auth, ...

Helpers:

:func:`run_pipeline`
    Run a pipeline synchronously and return its :class:`~headwater.RunResult`.

:func:`collect_run`
    Run an action or a pipeline and return its result (``result.output``: the chunks)
    and every control event it emitted.

:func:`make_plugins`
    A fresh strict plugin manager holding only the plugins you pass (and the built-ins).

:func:`check_component` / :func:`assert_conforms`
    The conformance kit (:mod:`headwater.conformance`): the standard checks every
    component should pass (params schema, cancellation, progress, timeout, resume,
    checkpoint acknowledgement)::

        def test_conforms():
            assert_conforms("my.action", params={"stop": 10}, plugins=[my_plugin])

This module is imported by every pytest session in an environment where headwater is
installed, so it imports nothing heavy at module level.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol

import pytest

from .conformance import (
    CheckResult,
    ConformanceError,
    assert_conforms,
    check_component,
    check_component_async,
)

if TYPE_CHECKING:
    from .client import Client
    from .core.api import PipelineLike
    from .core.components import Component
    from .core.events import Event
    from .core.plugins import PluginInfo, PluginManager
    from .core.runtime import RunResult
    from .server.app import Server
    from .server.config import ServerConfig

__all__ = [
    "CheckResult",
    "ConformanceError",
    "RegisterPlugin",
    "assert_conforms",
    "builtin_plugin_manager",
    "check_component",
    "check_component_async",
    "collect_run",
    "headwater_plugins",
    "live_server",
    "live_server_config",
    "make_plugins",
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
    from .core.engine import Engine, set_default_engine

    manager = builtin_plugin_manager()
    previous = set_default_engine(Engine(plugin_manager=manager))
    try:
        yield manager
    finally:
        set_default_engine(previous)


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


class _Components:
    """A plugin made of bare components (what :func:`make_plugins` wraps them in)."""

    def __init__(self, components: list[Component]) -> None:
        self.components = components


def _components_plugin(components: list[Component]) -> object:
    """A plugin implementing, for each kind of the given components, its collection hook."""
    from .core.components import ComponentKind
    from .markers import hookimpl

    plugin = _Components(components)
    for kind in {component.kind for component in components}:

        def collect(register: Any, kind: ComponentKind = kind) -> None:
            for component in components:
                if component.kind is kind:
                    register(component)

        collect.__name__ = kind.hook
        setattr(plugin, kind.hook, hookimpl(collect))
    return plugin


def make_plugins(*plugin_objects: object, builtins: bool = True) -> PluginManager:
    """A fresh, strict plugin manager holding only the plugins given.

    :param plugin_objects: Plugins to register (modules, objects with
        ``@headwater.hookimpl`` methods, classes with static hooks), in order; bare
        components (made by ``@headwater.action`` & co) are registered together as one
        plugin named ``components``.
    :param builtins: Also load headwater's built-in plugins (``range``, ``collect``, ...);
        other installed plugins are never loaded.
    :raises headwater.PluginLoadError: When a plugin is broken.

    Unlike the ``headwater_plugins`` fixture it is not installed process-wide: pass it
    as ``plugins=`` (to :func:`run_pipeline`, :func:`collect_run`, ``headwater.run``).
    """
    from .core.components import Component
    from .core.plugins import PluginManager

    if builtins:
        manager = builtin_plugin_manager()
    else:
        manager = PluginManager(load_entry_points=False, strict=True).load()
    bare = [p for p in plugin_objects if isinstance(p, Component)]
    for plugin in plugin_objects:
        if not isinstance(plugin, Component):
            manager.register(plugin)
    if bare:
        manager.register(_components_plugin(bare), "components")
    return manager


def _as_pipeline(target: PipelineLike | Component | str, params: Mapping[str, Any] | None) -> Any:
    """``target`` as a pipeline: an action (component or name) goes to ``collect``."""
    from pathlib import Path

    from .core.components import Component, ComponentKind

    name: str | None = None
    if isinstance(target, Component):
        if target.kind is not ComponentKind.ACTION:
            raise TypeError(f"collect_run runs actions or pipelines, not a {target.kind}")
        name = target.name
    elif (
        isinstance(target, str)
        and not target.endswith((".yaml", ".yml"))
        and not Path(target).exists()
    ):
        name = target
    if name is None:
        if params is not None:
            raise TypeError("params= is for running an action; put a pipeline's params in it")
        return target
    return {
        "name": name,
        "sources": {"source": {"action": name, "params": dict(params or {})}},
        "sinks": [{"sink": "collect"}],
    }


def collect_run(
    target: PipelineLike | Component | str,
    plugins: PluginManager | Iterable[object] | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    raise_on_error: bool = True,
    backend: Literal["asyncio", "trio"] = "asyncio",
) -> tuple[RunResult, list[Event]]:
    """Run an action or a pipeline; return its result and every event it emitted.

    :param target: A pipeline (anything :func:`run_pipeline` takes) or an action: a
        component, or the name of a registered action, run with ``params`` into the
        ``collect`` sink, so that ``result.output`` is the list of its chunks.
    :param plugins: As for :func:`run_pipeline`.
    :param params: The action's params (only when ``target`` is an action).
    :param raise_on_error: Raise when the run does not succeed (after collecting).
    :param backend: ``asyncio`` or ``trio``.
    :returns: ``(result, events)``: the :class:`~headwater.RunResult` and the control
        events (:class:`~headwater.Progress`, :class:`~headwater.Status`,
        :class:`~headwater.ErrorEvent`, ending with :class:`~headwater.Complete`).
    """
    import anyio

    from .core.api import open_run
    from .core.plugins import PluginManager

    manager: PluginManager | None
    if plugins is None or isinstance(plugins, PluginManager):
        manager = plugins
    else:
        manager = make_plugins(*plugins)
    pipeline = _as_pipeline(target, params)

    async def main() -> tuple[RunResult, list[Event]]:
        events: list[Event] = []
        async with open_run(pipeline, plugins=manager) as handle:
            async for event in handle.events():
                events.append(event)
            result = await handle.wait()
        return result, events

    result, events = anyio.run(main, backend=backend)
    if raise_on_error:
        result.raise_for_state()
    return result, events


@pytest.fixture
def live_server_config() -> ServerConfig:
    """The configuration of ``live_server``: 127.0.0.1, a free port, no pipelines.

    Override this fixture in your ``conftest.py`` (or test module) to serve pipelines or
    enable authentication; keep ``port=0``.
    """
    from .server.config import ServerConfig

    return ServerConfig(host="127.0.0.1", port=0)


@pytest.fixture
async def live_server(
    anyio_backend: Any,
    headwater_plugins: PluginManager,
    live_server_config: ServerConfig,
) -> AsyncIterator[tuple[Server, Client]]:
    """A started server and a client connected to it, for ``@pytest.mark.anyio`` tests.

    Yields ``(server, client)``. The server uses the ``headwater_plugins`` manager (so
    plugins registered with ``register_plugin`` are available) and ``live_server_config``
    (override it to add pipelines). Both are closed after the test. The server runs on
    asyncio only: with another ``anyio_backend`` the test is skipped.
    """
    backend = anyio_backend if isinstance(anyio_backend, str) else anyio_backend[0]
    if backend != "asyncio":
        pytest.skip("headwater's server runs on asyncio")
    from .client import connect
    from .server.app import Server

    async with (
        Server(live_server_config, plugins=headwater_plugins, environ={}) as server,
        connect(server.url) as client,
    ):
        yield server, client
