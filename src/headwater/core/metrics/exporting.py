"""Exporters: creating them from their components, starting and stopping them.

An *exporter* (see :class:`MetricsExporter`) is a class instantiated as
``cls(params, snapshot)`` (``cls(snapshot)`` without a params model) with ``start()``
and ``stop()``, each sync or async. :func:`create_exporter` builds one from its
component, :func:`build_exporters` builds several by name from a plugin manager (the
``metrics.exporters`` entries of a configuration) and :func:`running_exporters` starts
and stops several around a block.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from .registry import snapshot

if TYPE_CHECKING:
    from ..components import Component
    from ..plugins import PluginManager
    from .config import ExporterEntry

__all__ = [
    "MetricsExporter",
    "SnapshotFn",
    "build_exporters",
    "create_exporter",
    "running_exporters",
    "start_exporter",
    "stop_exporter",
]

log = logging.getLogger("headwater.metrics")

SnapshotFn = Callable[[], dict[str, Any]]
"""What an exporter receives: a function returning a fresh registry snapshot."""


class MetricsExporter(Protocol):
    """What an exporter instance provides (both methods may also be ``async def``).

    An exporter is declared with ``@headwater.exporter(name, params=Model)`` on a class
    instantiated as ``cls(params, snapshot)`` (``cls(snapshot)`` without a params
    model), where ``snapshot()`` returns the current figures (see
    :meth:`~headwater.core.metrics.MetricsRegistry.snapshot`).
    ``start()`` begins exporting (listen on a port, start a timer thread) and must not
    block; ``stop()`` ends it and may export a last time, so a batch run's final counts
    are never lost. Work that reads ``snapshot()`` may run in any thread.
    """

    def start(self) -> Any:
        """Begin exporting."""

    def stop(self) -> Any:
        """Stop exporting (a last export of the final figures is welcome)."""


def create_exporter(
    component: Component,
    params: Mapping[str, Any] | Any | None = None,
    snapshot_fn: SnapshotFn | None = None,
) -> Any:
    """Instantiate an exporter component with validated params and a snapshot function.

    ``params`` is a mapping (validated with the component's params model), an instance
    of that model, or None (the model's defaults). ``snapshot_fn`` defaults to the
    default engine's :func:`~headwater.core.metrics.snapshot` (a convenience for
    scripts: an embedder passes ``engine.metrics.snapshot``). Raises
    ``pydantic.ValidationError`` for bad params and ``TypeError`` for params given to an
    exporter without a params model.
    """
    from ..components import ComponentKind

    if component.kind is not ComponentKind.EXPORTER:
        raise TypeError(f"{component.kind} {component.name!r} is not a metrics exporter")
    fn = snapshot_fn if snapshot_fn is not None else snapshot
    model = component.params
    if model is None:
        if params:
            raise TypeError(f"exporter {component.name!r} takes no params, got {params!r}")
        return component.obj(fn)
    value = params if isinstance(params, model) else model.model_validate(params or {})
    return component.obj(value, fn)


def build_exporters(
    entries: Sequence[ExporterEntry | Mapping[str, Any]],
    plugins: PluginManager,
    snapshot_fn: SnapshotFn,
    *,
    fallback: Mapping[str, Component] | None = None,
) -> list[Any]:
    """Instantiate exporters by name (not started: see :func:`running_exporters`).

    ``entries`` are :class:`~headwater.core.metrics.config.ExporterEntry` models or
    mappings in their shape (``{"exporter": NAME, "params": {...}}``). Names are looked
    up among the registered exporters of ``plugins`` (loaded first), then in
    ``fallback``; every exporter reads ``snapshot_fn`` (an engine's
    ``engine.metrics.snapshot``). Raises ``ComponentNotFound``,
    ``pydantic.ValidationError`` or ``ImportError`` (a missing optional dependency).
    """
    from ..components import ComponentKind
    from ..errors import ComponentNotFound
    from .config import ExporterEntry

    manager = plugins.load()
    out: list[Any] = []
    for raw in entries:
        entry = raw if isinstance(raw, ExporterEntry) else ExporterEntry.model_validate(raw)
        try:
            component = manager.registry.get(ComponentKind.EXPORTER, entry.exporter)
        except ComponentNotFound:
            found = (fallback or {}).get(entry.exporter)
            if found is None:
                raise
            component = found
        out.append(create_exporter(component, entry.params, snapshot_fn))
    return out


async def _call(method: Callable[[], Any] | None) -> None:
    if method is None:
        return
    result = method()
    if inspect.isawaitable(result):
        await result


async def start_exporter(exporter: Any) -> None:
    """Call ``exporter.start()`` and await it if it is a coroutine."""
    await _call(getattr(exporter, "start", None))


async def stop_exporter(exporter: Any) -> None:
    """Call ``exporter.stop()`` and await it if it is a coroutine."""
    await _call(getattr(exporter, "stop", None))


@contextlib.asynccontextmanager
async def running_exporters(exporters: Sequence[Any]) -> AsyncIterator[list[Any]]:
    """Start every exporter (in order), yield them, stop them (in reverse order).

    If one fails to start, those already started are stopped and the error propagates.
    Stopping is shielded from cancellation; an exporter that fails to stop is logged and
    the others are still stopped.
    """
    import anyio

    started: list[Any] = []
    try:
        for exporter in exporters:
            await start_exporter(exporter)
            started.append(exporter)
        yield started
    finally:
        with anyio.CancelScope(shield=True):
            for exporter in reversed(started):
                try:
                    await stop_exporter(exporter)
                except Exception:
                    log.exception("metrics exporter %r failed to stop", exporter)
