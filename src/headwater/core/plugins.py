"""Plugin discovery and loading on pluggy, robust to broken plugins.

Recipe: create a pluggy manager, add the hook specifications, then load every entry
point of the ``headwater`` group (built-ins included: they are entry points of the
headwater distribution). Each plugin is loaded in isolation: a plugin that fails to
import, implements an unknown hook, raises in a hook or registers a duplicate name is
recorded as a :class:`LoadFailure` and skipped, and the rest keep working.
"""

from __future__ import annotations

import inspect
import logging
import os
import traceback
from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

import pluggy

from .. import hookspecs
from ..markers import PROJECT_NAME
from .components import Component, ComponentKind, LazyComponent
from .errors import PluginLoadError
from .plugin_records import (
    LoadFailure,
    PluginInfo,
    discovered,
    module_name,
    plugin_api_mismatch,
)
from .registry import Registry

if TYPE_CHECKING:
    from ..types import AuthRequest, HttpRoute, RouteRegister
    from .errors import StageError
    from .pipeline import PipelineSpec

__all__ = [
    "ENTRY_POINT_GROUP",
    "LoadFailure",
    "PluginInfo",
    "PluginManager",
    "get_plugin_manager",
    "reset_plugin_manager",
]

ENTRY_POINT_GROUP = PROJECT_NAME
DISABLE_ENV = "HEADWATER_DISABLE_PLUGINS"
STRICT_ENV = "HEADWATER_STRICT_PLUGINS"

log = logging.getLogger("headwater.plugins")

_COLLECTION_HOOKS: dict[str, ComponentKind] = {kind.hook: kind for kind in ComponentKind}


def _env_list(name: str) -> list[str]:
    return [part.strip() for part in os.environ.get(name, "").split(",") if part.strip()]


def _strict_default() -> bool:
    return os.environ.get(STRICT_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


class PluginManager:
    """headwater's typed facade over a pluggy manager.

    Loading is lazy and idempotent: nothing happens until :meth:`load` (or the first
    access to :attr:`registry`). Use one manager per process; tests and embedders may
    create their own with their own ``entry_points`` and ``disable`` lists.
    """

    def __init__(
        self,
        *,
        disable: Iterable[str] = (),
        strict: bool | None = None,
        entry_points: Sequence[EntryPoint] | None = None,
        load_entry_points: bool = True,
    ) -> None:
        self._pm = pluggy.PluginManager(PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        self._disabled = {*_env_list(DISABLE_ENV), *disable}
        self._strict = _strict_default() if strict is None else strict
        self._explicit_eps = entry_points
        self._load_eps = load_entry_points
        self._loaded = False
        self.registry = Registry(on_unavailable=self._component_unavailable)
        self.plugins: dict[str, PluginInfo] = {}
        self.failures: list[LoadFailure] = []

    # -- loading --------------------------------------------------------------------

    def load(self) -> PluginManager:
        """Discover and load every plugin once; later calls do nothing."""
        if self._loaded:
            return self
        self._loaded = True
        if self._load_eps:
            eps = self._explicit_eps
            if eps is None:
                eps = entry_points(group=ENTRY_POINT_GROUP)
            for ep, dist, version in discovered(eps):
                self._load_entry_point(ep, dist, version)
        if self._strict:
            # strict mode refuses a broken plugin when plugins load, not when a pipeline
            # first names one of its components: every component is imported now
            for _ in self.registry:
                pass
        return self

    @property
    def loads_entry_points(self) -> bool:
        """True when :meth:`load` discovers the ``headwater`` entry points."""
        return self._load_eps

    @property
    def strict(self) -> bool:
        """True when a plugin that fails to load raises :class:`PluginLoadError`."""
        return self._strict

    @property
    def disabled(self) -> frozenset[str]:
        """Plugin or distribution names that are not loaded."""
        return frozenset(self._disabled)

    def _load_entry_point(self, ep: EntryPoint, dist: str | None, version: str | None) -> None:
        if ep.name in self._disabled or (dist is not None and dist in self._disabled):
            self.plugins[ep.name] = PluginInfo(ep.name, dist, version, ep.value, disabled=True)
            return
        if ep.name in self.plugins:
            self._fail(
                LoadFailure(
                    ep.name,
                    dist,
                    version,
                    "duplicate",
                    f"a plugin named {ep.name!r} is already loaded from "
                    f"{self.plugins[ep.name].distribution}",
                ),
                None,
            )
            return
        try:
            obj = ep.load()
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            self._fail(self._failure(ep.name, dist, version, "import", exc), exc)
            return
        self.register(obj, ep.name, distribution=dist, version=version)

    def register(
        self,
        plugin: object,
        name: str | None = None,
        *,
        distribution: str | None = None,
        version: str | None = None,
    ) -> bool:
        """Register one plugin object (a module, class or instance) and its components.

        Returns False, recording a :class:`LoadFailure`, when the plugin is broken; the
        registry is then left exactly as it was.
        """
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        if name in self._disabled or (distribution is not None and distribution in self._disabled):
            self.plugins[name] = PluginInfo(
                name, distribution, version, module_name(plugin), disabled=True
            )
            return False
        mismatch = plugin_api_mismatch(plugin)
        if mismatch is not None:
            self._fail(LoadFailure(name, distribution, version, "plugin-api", mismatch), None)
            return False
        known_before = self._pm.has_plugin(name) or self._pm.is_registered(plugin)
        try:
            self._pm.register(plugin, name=name)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            if not known_before and self._pm.is_registered(plugin):
                # pluggy < 1.7 leaves a plugin half-registered when a hookimpl fails validation
                self._pm.unregister(plugin)
            self._fail(self._failure(name, distribution, version, "register", exc), exc)
            return False

        unknown = sorted(
            hc.name for hc in (self._pm.get_hookcallers(plugin) or []) if not hc.has_spec()
        )
        if unknown:
            self._pm.unregister(plugin)
            known = sorted(n for n, hc in vars(self._pm.hook).items() if hc.has_spec())
            import difflib

            hints = []
            for hook in unknown:
                close = difflib.get_close_matches(hook, known, n=1)
                hints.append(f"{hook!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            err = f"implements unknown hook {', '.join(hints)}"
            self._fail(LoadFailure(name, distribution, version, "unknown-hook", err), None)
            return False

        staged: list[Component | tuple[ComponentKind, LazyComponent]] = []
        for hook_name, kind in _COLLECTION_HOOKS.items():
            caller = getattr(self._pm.hook, hook_name)
            for impl in caller.get_hookimpls():
                if impl.plugin is not plugin:
                    continue
                problem = self._collect(
                    impl.function, hook_name, kind, name, distribution, version, staged
                )
                if problem is not None:
                    self._pm.unregister(plugin)
                    self._fail(problem[0], problem[1])
                    return False

        contributed: list[str] = []
        for entry in staged:
            if isinstance(entry, Component):
                self.registry.add(entry)
                contributed.append(f"{entry.kind}:{entry.name}")
            else:
                kind, lazy = entry
                self.registry.add_lazy(kind, lazy, name, distribution, version)
                contributed.append(f"{kind}:{lazy.name}")
        self.plugins[name] = PluginInfo(
            name, distribution, version, module_name(plugin), components=contributed
        )
        return True

    def unregister(self, name: str) -> bool:
        """Remove a plugin and every component it contributed; False if it was not loaded."""
        info = self.plugins.pop(name, None)
        if self._pm.get_plugin(name) is not None:
            self._pm.unregister(name=name)
        if info is None:
            return False
        for entry in info.components:
            kind, _, component = entry.partition(":")
            if self.registry.owner_of(ComponentKind(kind), component) == name:
                self.registry.remove(kind, component)
        return True

    def _collect(
        self,
        function: Any,
        hook_name: str,
        kind: ComponentKind,
        plugin: str,
        dist: str | None,
        version: str | None,
        staged: list[Component | tuple[ComponentKind, LazyComponent]],
    ) -> tuple[LoadFailure, BaseException | None] | None:
        problems: list[str] = []
        staged_names = {
            (e.kind, e.name) if isinstance(e, Component) else (e[0], e[1].name) for e in staged
        }

        def register(component: Component | LazyComponent) -> None:
            if isinstance(component, LazyComponent):
                entry_name = component.name
            elif isinstance(component, Component):
                if component.kind is not kind:
                    problems.append(
                        f"{hook_name} registered {component.kind} {component.name!r}; "
                        f"register it from the matching hook instead"
                    )
                    return
                entry_name = component.name
            else:
                problems.append(
                    f"{hook_name} registered {component!r}, which is not a component; "
                    f"decorate it with @headwater.{kind.value}"
                )
                return
            owner = self.registry.owner_of(kind, entry_name)
            if owner is None and (kind, entry_name) in staged_names:
                owner = plugin
            if owner is not None:
                problems.append(f"{kind} {entry_name!r} is already registered by plugin {owner!r}")
                return
            staged_names.add((kind, entry_name))
            if isinstance(component, LazyComponent):
                staged.append((kind, component))
            else:
                staged.append(component.with_origin(plugin, dist, version))

        try:
            returned = function(register=register)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            return self._failure(plugin, dist, version, "hook", exc, f"{hook_name} raised "), exc
        if inspect.iscoroutine(returned):
            returned.close()  # never awaited: close it rather than leak a RuntimeWarning
            problems.append(f"{hook_name} must be a plain function, not async def")
        elif returned is not None:
            problems.append(
                f"{hook_name} returned {type(returned).__name__}; call register(component) "
                "for each component instead of returning them"
            )
        if problems:
            stage = "duplicate" if "already registered" in problems[0] else "hook"
            return LoadFailure(plugin, dist, version, stage, "; ".join(problems)), None
        return None

    def _failure(
        self,
        plugin: str,
        dist: str | None,
        version: str | None,
        stage: str,
        exc: BaseException,
        prefix: str = "",
    ) -> LoadFailure:
        tb = "".join(traceback.format_exception(exc))
        return LoadFailure(plugin, dist, version, stage, f"{prefix}{type(exc).__name__}: {exc}", tb)

    def _component_unavailable(self, plugin: str, stage: str, error: str, details: str) -> None:
        """A lazily registered component failed to load: recorded like a plugin that
        failed to load (raised as :class:`PluginLoadError` in strict mode)."""
        info = self.plugins.get(plugin)
        dist, version = (info.distribution, info.version) if info else (None, None)
        self._fail(LoadFailure(plugin, dist, version, stage, error, details), None)

    def _fail(self, failure: LoadFailure, exc: BaseException | None) -> None:
        self.failures.append(failure)
        if self._strict:
            raise PluginLoadError(str(failure)) from exc
        log.warning("%s", failure)

    # -- lookups ----------------------------------------------------------------------

    def get(self, kind: ComponentKind | str, name: str) -> Component:
        """Look up a component, loading plugins first if needed."""
        return self.load().registry.get(kind, name)

    # -- lifecycle notifications (isolated per plugin, async-aware) ----------------------

    async def pipeline_started(self, pipeline: PipelineSpec, run_id: str) -> None:
        """Call every ``pipeline_started`` implementation."""
        await self._notify("pipeline_started", pipeline=pipeline, run_id=run_id)

    async def pipeline_finished(
        self, pipeline: PipelineSpec, run_id: str, state: str, summary: dict[str, Any]
    ) -> None:
        """Call every ``pipeline_finished`` implementation."""
        await self._notify(
            "pipeline_finished", pipeline=pipeline, run_id=run_id, state=state, summary=summary
        )

    async def stream_error(
        self, pipeline: PipelineSpec, run_id: str, error: StageError, handled: bool
    ) -> None:
        """Call every ``stream_error`` implementation."""
        await self._notify(
            "stream_error", pipeline=pipeline, run_id=run_id, error=error, handled=handled
        )

    # -- security decisions (first non-None result wins; an error denies) ---------------

    async def authenticate(self, token: str | None, request: AuthRequest) -> Any:
        """The principal of a connection: the first non-None ``authenticate`` result.

        Implementations are called in pluggy's order (the last registered first). Returns
        None when no implementation had an opinion, ``False`` when the connection is
        rejected. An implementation that raises rejects the connection (``False``): a
        broken authentication plugin never lets anybody in.
        """
        for impl in self._call_order("authenticate"):
            args = {"token": token, "request": request}
            try:
                result = impl.function(**{k: args[k] for k in impl.argnames})
                if inspect.isawaitable(result):
                    result = await result
            except Exception:
                log.exception(
                    "plugin %r raised in authenticate: connection rejected", impl.plugin_name
                )
                return False
            if result is not None:
                return result
        return None

    async def authorize(self, principal: Any, action: str, target: str) -> bool | None:
        """May ``principal`` do ``action`` on ``target``? The first non-None answer wins.

        Implementations are called in pluggy's order (the last registered first). Returns
        None when no implementation had an opinion. An implementation that raises, or
        answers something other than a bool or None, denies (``False``).
        """
        args = {"principal": principal, "action": action, "target": target}
        for impl in self._call_order("authorize"):
            try:
                result = impl.function(**{k: args[k] for k in impl.argnames})
                if inspect.isawaitable(result):
                    result = await result
            except Exception:
                log.exception(
                    "plugin %r raised in authorize(%s %r): denied",
                    impl.plugin_name,
                    action,
                    target,
                )
                return False
            if result is None:
                continue
            if not isinstance(result, bool):
                log.error(
                    "plugin %r returned %r from authorize, not True, False or None: denied",
                    impl.plugin_name,
                    result,
                )
                return False
            return result
        return None

    # -- server contributions -----------------------------------------------------------

    def register_routes(self, register: RouteRegister) -> list[LoadFailure]:
        """Hand every plugin's HTTP routes to ``register``, each with its ``plugin`` set.

        A plugin whose implementation raises contributes no route; it is logged and
        returned as a :class:`LoadFailure` (stage ``routes``). What ``register`` does with
        a route (e.g. refuse one that clashes) is the caller's business.
        """
        from dataclasses import replace

        failures: list[LoadFailure] = []
        for impl in self._call_order("register_routes"):
            routes: list[HttpRoute] = []
            try:
                impl.function(register=routes.append)
            except Exception as exc:
                info = self.plugins.get(impl.plugin_name)
                dist, version = (info.distribution, info.version) if info else (None, None)
                failure = self._failure(impl.plugin_name, dist, version, "routes", exc)
                log.warning("%s", failure)
                failures.append(failure)
                continue
            for route in routes:
                register(replace(route, plugin=impl.plugin_name))
        return failures

    def register_run_stores(
        self, register: Callable[[str, Callable[..., Any], str], None]
    ) -> list[LoadFailure]:
        """Hand every plugin's run stores to ``register(name, factory, plugin)``.

        A plugin whose implementation raises contributes no store; it is logged and
        returned as a :class:`LoadFailure` (stage ``run-stores``). What ``register`` does
        with a store (e.g. refuse a name that is taken) is the caller's business.
        """
        failures: list[LoadFailure] = []
        for impl in self._call_order("register_run_stores"):
            stores: list[tuple[str, Callable[..., Any]]] = []

            def add(name: str, factory: Callable[..., Any], into: list[Any] = stores) -> None:
                into.append((name, factory))

            try:
                impl.function(register=add)
            except Exception as exc:
                info = self.plugins.get(impl.plugin_name)
                dist, version = (info.distribution, info.version) if info else (None, None)
                failure = self._failure(impl.plugin_name, dist, version, "run-stores", exc)
                log.warning("%s", failure)
                failures.append(failure)
                continue
            for name, factory in stores:
                register(str(name), factory, impl.plugin_name)
        return failures

    def _call_order(self, hook_name: str) -> list[pluggy.HookImpl]:
        """Implementations of a hook in the order pluggy would call them."""
        return list(reversed(getattr(self._pm.hook, hook_name).get_hookimpls()))

    def has_listeners(self, hook_name: str) -> bool:
        """True when at least one plugin implements the lifecycle hook."""
        return bool(getattr(self._pm.hook, hook_name).get_hookimpls())

    async def _notify(self, hook_name: str, **kwargs: Any) -> None:
        for impl in getattr(self._pm.hook, hook_name).get_hookimpls():
            args = {k: kwargs[k] for k in impl.argnames}
            try:
                result = impl.function(**args)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("plugin %r raised in %s; ignored", impl.plugin_name, hook_name)


def get_plugin_manager() -> PluginManager:
    """The default engine's plugin manager, loaded (a convenience for scripts; an
    embedder uses ``engine.plugins``)."""
    from .engine import default_engine

    return default_engine().load()


def reset_plugin_manager(manager: PluginManager | None = None) -> None:
    """Make the default engine one that uses ``manager`` (``None``: a fresh default
    engine on next use); for tests."""
    from .engine import Engine, set_default_engine

    set_default_engine(Engine(plugin_manager=manager) if manager is not None else None)
