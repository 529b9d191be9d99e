"""The bodies of the server's read-only API: ``/api/streams``, ``/api/pipelines`` and
``/api/components``, as the principal asking may see them.

:class:`~headwater.server.routes.HttpEndpoints` answers the HTTP requests with them and
:class:`~headwater.server.base.BaseServer` hands them to its callers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from headwater.core.plugins import LoadFailure
from headwater.core.streaming import StreamError

from .dashboard import pipelines_listing

if TYPE_CHECKING:
    from .base import BaseServer

__all__ = ["components_snapshot", "pipelines_snapshot", "streams_snapshot"]


async def streams_snapshot(server: BaseServer, principal: Any = None) -> dict[str, Any]:
    """The body of ``/api/streams``: streams the principal may subscribe to."""
    manager = server.manager
    streams = []
    for stream_id in manager.active_streams():
        run = server.run_of_stream(stream_id)
        owner = run.owner if run is not None else None
        if not await server.allowed(principal, "subscribe", stream_id, owner=owner):
            continue
        try:
            info = manager.info(stream_id)
        except StreamError:  # closed meanwhile
            continue
        streams.append(
            {
                "stream": info.stream_id,
                "epoch": info.epoch,
                "seq": info.seq,
                "first_buffered": info.first_buffered,
                "clients": info.clients,
                "state": run.handle.state if run is not None else "open",
                "pipeline": info.metadata.get("pipeline"),
                "run": info.metadata.get("run"),
                "created_at": info.created_at,
                "idle_seconds": info.idle_seconds,
                "metadata": dict(info.metadata),
            }
        )
    # only the names the principal may know of: pipelines it may run, runs whose
    # streams it may follow
    pipelines = [p for p in sorted(server.pipelines) if await server.allowed(principal, "run", p)]
    runs = 0
    for run_info in server.runs:
        if await server.allowed(principal, "subscribe", run_info.stream, owner=run_info.owner):
            runs += 1
    return {
        "streams": streams,
        "clients": server.connections,
        "pipelines": pipelines,
        "runs": runs,
    }


async def pipelines_snapshot(server: BaseServer, principal: Any = None) -> dict[str, Any]:
    """The body of ``/api/pipelines``: the named pipelines the principal may run, each
    with the JSON Schema of its params (see
    :func:`~headwater.server.dashboard.pipelines_listing`)."""
    allowed = {
        name: named
        for name, named in server.pipelines.items()
        if await server.allowed(principal, "run", name)
    }
    return {"pipelines": pipelines_listing(allowed, server.plugins)}


def components_snapshot(
    server: BaseServer, route_failures: Iterable[LoadFailure] = ()
) -> dict[str, Any]:
    """The body of ``/api/components``: every registered component's metadata, and the
    plugins that failed to load (``route_failures``: plugin routes that were refused)."""
    plugins = server.plugins
    components = []
    for component in plugins.registry:
        try:
            components.append(component.metadata())
        except Exception as exc:  # a params model without a JSON Schema
            components.append(
                {
                    "name": component.name,
                    "kind": str(component.kind),
                    "plugin": component.plugin,
                    "metadata_error": f"{type(exc).__name__}: {exc}",
                }
            )
    failures = [*plugins.failures, *route_failures]
    return {"components": components, "failures": [f.to_dict() for f in failures]}
