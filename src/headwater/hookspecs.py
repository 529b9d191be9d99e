"""Every hook a headwater plugin can implement: the plugin contract.

A plugin is a module (or object) whose functions carry the ``@headwater.hookimpl``
marker and whose names match the specifications below. Declare it in your
``pyproject.toml`` so headwater discovers it::

    [project.entry-points.headwater]
    myplugin = "my_package.plugin"

Only marked functions are hooks. A function whose name matches no specification here is
reported as a load error of its plugin (typos like ``register_actoins`` do not pass
silently), and the plugin is skipped.

Hooks are called synchronously by pluggy; the lifecycle hooks may also be ``async def``,
in which case headwater awaits them on the running event loop. Each plugin's hook call is
isolated: an exception raised by one plugin is recorded against it and never reaches
other plugins or the pipeline.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .markers import hookspec

if TYPE_CHECKING:
    from .types import AuthRequest, PipelineSpec, Register, RouteRegister, StageError

# ---------------------------------------------------------------------------------------
# Collection hooks: contribute components
# ---------------------------------------------------------------------------------------


@hookspec
def register_actions(register: Register) -> None:
    """Contribute stream actions (sources).

    Called once, when headwater first loads its plugins. Call ``register`` with each
    component made by ``@headwater.action``::

        @headwater.hookimpl
        def register_actions(register):
            register(count)

    :param register: Adds one action. Its name must be unique across all plugins: a
        duplicate name makes the *later* plugin fail to load, with an error naming both
        plugins, while the first keeps working.

    Registering a component of another kind (say a sink) here is an error of the plugin.

    .. versionadded:: 0.1
    """


@hookspec
def register_transformers(register: Register) -> None:
    """Contribute transformers (pipeline steps).

    Called once at plugin load. Call ``register`` with each component made by
    ``@headwater.transformer``. Item-wise transformers (``map``, ``filter``,
    ``flat_map``, ``batch``) that follow each other in a pipeline are fused into a single
    loop over each batch; ``stream`` transformers run as their own stage.

    :param register: Adds one transformer; names are unique across plugins.

    .. versionadded:: 0.1
    """


@hookspec
def register_sinks(register: Register) -> None:
    """Contribute sinks (where pipeline output goes).

    Called once at plugin load. Call ``register`` with each component made by
    ``@headwater.sink``. A sink declares its delivery guarantee (``at_least_once`` or
    ``transactional``).

    :param register: Adds one sink; names are unique across plugins.

    .. versionadded:: 0.1
    """


@hookspec
def register_metrics_exporters(register: Register) -> None:
    """Contribute metrics exporters.

    Called once at plugin load. Call ``register`` with each component made by
    ``@headwater.exporter``. Exporters receive metric snapshots or expose an endpoint.

    :param register: Adds one exporter; names are unique across plugins.

    .. versionadded:: 0.1
    """


@hookspec
def register_checkpoint_stores(register: Register) -> None:
    """Contribute checkpoint stores (where resumable runs keep their progress).

    Called once at plugin load. Call ``register`` with each component made by
    ``@headwater.checkpoint_store``: a class instantiated with its params whose instances
    implement ``load``, ``save``, ``list``, ``reset`` and ``close`` (see
    :class:`headwater.core.checkpoints.CheckpointStore`). A pipeline picks one with
    ``checkpoint: {store: NAME, params: {...}}``; the built-in store is ``sqlite``.

    :param register: Adds one checkpoint store; names are unique across plugins.

    .. versionadded:: 0.1
    """


@hookspec
def register_run_stores(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Contribute run stores (where ``headwater serve`` keeps the history of its runs).

    Called each time a server starts (``headwater serve``'s server or the ASGI app), which
    then opens the one its configuration names (``history.store``, with the keyword
    arguments ``history.params``; the built-in stores are ``sqlite``, the default, and
    ``memory``). Call ``register`` with a name and a factory::

        @headwater.hookimpl
        def register_run_stores(register):
            register("postgres", PostgresRunStore)

    The factory is called once, in a worker thread, with ``history.params`` as keyword
    arguments; it returns an object with the methods of
    :class:`headwater.server.history.RunStore` (``save``, ``get``, ``by_stream``,
    ``query``, ``chunks``, ``prune``, ``interrupt``, ``close``), which the server calls
    from worker threads. A factory that raises ``TypeError`` or ``OSError`` stops the
    server with a configuration error naming ``history.params``.

    :param register: ``register(name, factory)`` adds one store. A name that is taken
        (``sqlite``, ``memory`` or an earlier plugin's) is refused: the store is skipped
        and reported in the server's log, the plugin's other stores still count. A
        plugin that raises here is reported the same way.

    .. versionadded:: 0.3
    """


# ---------------------------------------------------------------------------------------
# Lifecycle hooks: observe runs
# ---------------------------------------------------------------------------------------


@hookspec
def pipeline_started(pipeline: PipelineSpec, run_id: str) -> Awaitable[None] | None:
    """Called when a run starts, before its first stage runs.

    :param pipeline: The validated pipeline definition being run.
    :param run_id: The unique id of this run (also on every event and context).

    May be ``async def``. Exceptions are logged against the plugin and do not affect the
    run.

    .. versionadded:: 0.1
    """


@hookspec
def pipeline_finished(
    pipeline: PipelineSpec, run_id: str, state: str, summary: dict[str, Any]
) -> Awaitable[None] | None:
    """Called once when a run ends, whatever the outcome, after every stage stopped.

    :param pipeline: The pipeline definition that ran.
    :param run_id: The run's id.
    :param state: ``succeeded``, ``failed`` or ``cancelled``.
    :param summary: Items in/out per stage, errors, elapsed seconds (the same dict as
        ``RunResult.summary``).

    May be ``async def``. Exceptions are logged against the plugin and ignored.

    .. versionadded:: 0.1
    """


@hookspec
def stream_error(
    pipeline: PipelineSpec, run_id: str, error: StageError, handled: bool
) -> Awaitable[None] | None:
    """Called for every error raised inside a stage.

    :param pipeline: The pipeline definition being run.
    :param run_id: The run's id.
    :param error: The error, with ``stage``, ``plugin``, ``position`` (item index, when
        known) and the original exception as ``cause``.
    :param handled: True when the stage's error policy (``skip`` / ``retry``) absorbed the
        error and the run goes on; False when the error fails the run.

    May be ``async def``. Exceptions are logged against the plugin and ignored.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------------------
# Security hooks: who is connecting, and what may they do (used by ``headwater serve``)
# ---------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def authenticate(token: str | None, request: AuthRequest) -> Any:
    """Map the credentials of a connection to a principal, or reject it.

    Called by the server for every WebSocket upgrade, every ``/api`` request (event
    streams included) and every plugin route, *before* the upgrade or the answer: a
    rejected connection gets HTTP 401 and never becomes a WebSocket.
    Implementations are called one after the other (the last registered first, as in
    pluggy; ``tryfirst`` / ``trylast`` are honoured) and **the first non-None result
    wins**; the rest are not called.

    Return a *principal* (any object other than None and False: a user name, or a richer
    object that your ``authorize`` implementation understands) to accept the connection,
    ``False`` to reject it, or ``None`` to leave the decision to other plugins. When every
    implementation returns None, the connection is anonymous: accepted when the server
    runs without authentication (``auth.required`` false, bound to localhost), rejected
    otherwise. An implementation that raises rejects the connection (an error in an
    authentication plugin never lets anybody in); the error is logged.

    May be ``async def`` (it is awaited on the server's event loop).

    :param token: The bearer token of the request: the ``Authorization: Bearer TOKEN``
        header, else the ``token`` query parameter (``ws://host:port/?token=TOKEN``), else
        (on GET requests other than WebSocket upgrades, for clients that cannot send
        headers such as ``EventSource``) the ``headwater_token`` cookie the dashboard
        sets, else None.
    :param request: What else is known about the request: ``path``, ``headers``,
        ``remote`` address, ``origin`` and ``auth`` (the server's ``auth`` settings, so a
        plugin configured from the server configuration can read its section).

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def authorize(principal: Any, action: str, target: str) -> bool | Awaitable[bool | None] | None:
    """Decide whether a principal may subscribe to a stream, run a pipeline, or cancel a run.

    Called by the server before it acts on a ``subscribe``, ``unsubscribe``, ``run`` or
    ``cancel`` request, before it streams a stream's events (Server-Sent Events), before
    it answers ``/metrics`` and ``/api/dashboard``, and to filter what ``/api/streams``
    and ``/api/pipelines`` list, so that a principal never learns the names of streams,
    runs and pipelines it may not reach. Implementations are called one after the other
    (the last registered first) and **the first non-None result wins**: ``True``
    allows, ``False`` denies (the client gets an ``unauthorized`` error, or HTTP 403,
    the same whether the stream exists or not), ``None`` leaves the decision to other
    plugins. When every implementation returns None, the request is allowed if the
    server runs without authentication and denied otherwise. The principal that started
    a run may always subscribe to its stream and cancel it. An implementation that
    raises (or returns something other than a bool or None) denies the request; the
    error is logged.

    May be ``async def`` (it is awaited on the server's event loop).

    :param principal: What ``authenticate`` returned for the connection (None for an
        anonymous connection to a server without authentication).
    :param action: One of

        * ``subscribe``: target a stream id (also asked for ``unsubscribe`` from a
          stream the connection does not follow, for a stream's event stream, for the
          dashboard feed, ``$dashboard``, and for each stream and run ``/api/streams``
          lists);
        * ``run``: target a pipeline name from the server configuration (also asked
          for each name ``/api/pipelines`` and ``/api/streams`` list);
        * ``cancel``: target the stream id of a run;
        * ``create``: target the stream id a ``run`` request names for its output
          (asked before the server looks whether the stream exists, so that a denied
          principal can neither squat a name nor learn that it is taken; a run whose
          client names no stream writes to ``PIPELINE-RUNID``, not asked);
        * ``metrics``: target ``$metrics``, for ``/metrics`` (whose series name every
          stream, pipeline and stage).

        The built-in static tokens match ``run`` against a token's ``pipelines``
        patterns and every other action against its ``streams`` patterns. A plugin
        should answer None, not False, for an action it does not know.
    :param target: The stream id, pipeline name or reserved name the request is about.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
        Actions ``create`` and ``metrics``; asked for ``unsubscribe``, event streams and
        the names the HTTP API lists.
    """


# ---------------------------------------------------------------------------------------
# Server hooks: what the server answers over HTTP
# ---------------------------------------------------------------------------------------


@hookspec
def register_routes(register: RouteRegister) -> None:
    """Contribute HTTP routes: API endpoints, pages and static folders.

    Called once each time a server starts (``headwater serve``'s server or the ASGI app of
    :func:`headwater.server.asgi_app`; both answer the same routes). Call ``register``
    with each :class:`~headwater.HttpRoute`::

        async def report(request: headwater.HttpRequest) -> headwater.HttpResponse:
            return headwater.HttpResponse.json({"name": request.path_params["name"]})

        @headwater.hookimpl
        def register_routes(register):
            register(headwater.HttpRoute.get("/plugins/reports/{name}", report))
            register(headwater.HttpRoute.static("/plugins/reports/files", FILES_DIR))

    A handler is ``async def handler(request: HttpRequest) -> HttpResponse``; the request
    carries its ``principal``, path parameters, query, headers and body. Routes are
    authenticated like ``/api/*``: a request that does not authenticate gets 401 before
    the handler runs (browsers may send the token as ``?token=`` or in the dashboard's
    cookie); deciding what the principal may see is the handler's job (the ``authorize``
    hook is there to ask). A handler that raises answers 500 (and is logged against the
    plugin).

    Built-in routes come first and cannot be shadowed: a route that could answer a path
    a built-in route answers (``/``, ``/api/...``, ``/static/...``, ``/metrics``...), or
    a path an earlier plugin's route answers, is skipped and reported (in the log and in
    the ``failures`` of ``/api/components``); the plugin's other routes still work. A
    plugin that raises here is reported the same way. Prefixing paths with
    ``/plugins/NAME/`` avoids every clash.

    :param register: Adds one route; an invalid route (a bad method or pattern) raises
        ``ValueError`` when it is built.

    .. versionadded:: 0.2
    """


def __getattr__(name: str) -> Any:
    """``Register``, ``RouteRegister`` and ``AuthRequest`` (the hooks' argument types) are
    importable from here too, without :mod:`headwater.types` being imported by every
    plugin load."""
    if name in {"AuthRequest", "Register", "RouteRegister"}:
        from . import types

        return getattr(types, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
