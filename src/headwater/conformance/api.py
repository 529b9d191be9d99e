"""The entry points of the conformance kit: :func:`check_component` (and its async
variant), :func:`assert_conforms` and :func:`check_all`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .checks import (
    _check_cancellation,
    _check_checkpoint_ack,
    _check_progress,
    _check_resume,
    _check_timeout,
)
from .params import _check_params_schema, _default_params, _invalid_params
from .results import CheckResult, ConformanceError

if TYPE_CHECKING:
    from ..core.components import Component
    from ..core.plugins import PluginManager


def _lookup(component: Component | str, plugins: Any) -> list[Component]:
    from ..core.components import Component

    if isinstance(component, Component):
        return [component]
    from ..core.plugins import PluginManager, get_plugin_manager

    if plugins is None:
        manager = get_plugin_manager()
    elif isinstance(plugins, PluginManager):
        manager = plugins
    else:
        from ..testing import make_plugins

        manager = make_plugins(*plugins)
    kind, sep, name = component.partition(":")
    if sep:
        return [manager.registry.get(kind, name)]
    found = manager.load().registry.find(component)
    if not found:
        from ..core.errors import ComponentNotFound

        raise ComponentNotFound("component", component, [])
    return found


async def check_component_async(
    component: Component | str,
    *,
    params: Mapping[str, Any] | None = None,
    plugins: PluginManager | Iterable[object] | None = None,
) -> list[CheckResult]:
    """:func:`check_component` for async code (tests running on an event loop)."""
    from ..core.components import ComponentKind

    results: list[CheckResult] = []
    for comp in _lookup(component, plugins):
        kind = str(comp.kind)
        status, detail = _check_params_schema(comp)
        results.append(CheckResult(comp.name, kind, "params_schema", status, detail))
        if comp.kind not in (ComponentKind.ACTION, ComponentKind.SINK):
            continue
        names = (
            ("cancellation", "progress", "timeout", "resume")
            if comp.kind is ComponentKind.ACTION
            else ("checkpoint_ack",)
        )
        given: dict[str, Any] | None
        if params is not None:
            given = dict(params)
            why = _invalid_params(comp, given)
            if why:
                results.extend(CheckResult(comp.name, kind, n, "fail", why) for n in names)
                continue
        else:
            given, why = _default_params(comp)
        if given is None:
            results.extend(CheckResult(comp.name, kind, n, "skip", why) for n in names)
            continue
        if comp.kind is ComponentKind.ACTION:
            for check in (_check_cancellation, _check_progress, _check_timeout, _check_resume):
                results.append(await _guarded(check, comp, given))
        else:
            results.append(await _guarded(_check_checkpoint_ack, comp, given))
    return results


async def _guarded(check: Any, component: Component, params: dict[str, Any]) -> CheckResult:
    """Run one check; an unexpected error (invalid params, ...) fails that check only."""
    name = check.__name__.removeprefix("_check_")
    try:
        result: CheckResult = await check(component, params)
    except Exception as exc:
        return CheckResult(
            component.name, str(component.kind), name, "fail", f"{type(exc).__name__}: {exc}"
        )
    return result


def check_component(
    component: Component | str,
    *,
    params: Mapping[str, Any] | None = None,
    plugins: PluginManager | Iterable[object] | None = None,
) -> list[CheckResult]:
    """Run the standard checks on a component and return one result per check.

    :param component: A :class:`~headwater.Component`, or the name of a registered one
        (``kind:name`` when several kinds share the name; a bare shared name checks each).
    :param params: Params to run it with; default: its params model's defaults (checks
        that run it are skipped when a required param has no default).
    :param plugins: Where to look a name up: a plugin manager, plugin objects to register
        with the built-ins, or None for the process-wide manager.

    Starts its own event loop (asyncio); in async code use :func:`check_component_async`.
    """
    import anyio

    async def main() -> list[CheckResult]:
        return await check_component_async(component, params=params, plugins=plugins)

    return anyio.run(main)


def assert_conforms(
    component: Component | str,
    *,
    params: Mapping[str, Any] | None = None,
    plugins: PluginManager | Iterable[object] | None = None,
    allow_skips: bool = True,
) -> list[CheckResult]:
    """Run :func:`check_component` and raise :class:`ConformanceError` if a check fails.

    :param allow_skips: When False, a skipped check (e.g. "needs params") fails too.
    :returns: The results, for further assertions.
    """
    results = check_component(component, params=params, plugins=plugins)
    bad = [r for r in results if r.status == "fail" or (not allow_skips and r.status == "skip")]
    if bad:
        lines = "\n".join(
            f"  {r.kind} {r.component}: {r.check} {r.status}: {r.detail}" for r in bad
        )
        raise ConformanceError(f"{len(bad)} conformance check(s) failed:\n{lines}")
    return results


def check_all(manager: PluginManager) -> list[CheckResult]:
    """Check every component registered in ``manager`` with its default params.

    Components run with an empty standard input, so that a source reading stdin never
    consumes (or waits for) the caller's.
    """
    import io
    import sys

    import anyio

    async def main() -> list[CheckResult]:
        results: list[CheckResult] = []
        for component in list(manager.load().registry):
            results.extend(await check_component_async(component))
        return results

    saved = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(b""), encoding="utf-8")
    try:
        return anyio.run(main)
    finally:
        sys.stdin = saved
