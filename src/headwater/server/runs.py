"""Runs started by clients: a named pipeline, its own stream, and who started it.

A client's ``run`` request starts one of the server's named pipelines with the client's
params (:meth:`ClientRuns.start`); the run's output (``websocket`` sink), progress,
errors and final state go to a stream of its own, which ends with the run. ``cancel``
stops it (:meth:`ClientRuns.cancel`). :class:`ClientRuns` keeps the runs going on, by run
id and by stream, and forgets each one when it ends.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

from headwater.core.errors import PipelineValidationError
from headwater.core.events import Complete, ErrorEvent, Event, Progress, Status
from headwater.core.runtime import RunHandle, RunResult
from headwater.core.streaming import StreamError

from .auth import principal_name
from .protocol import ProtocolError

if TYPE_CHECKING:
    from headwater.core.secrets import Secrets

    from .base import BaseServer as Server
    from .config import NamedPipeline

__all__ = ["ClientRuns", "RunInfo", "with_stream_sink"]

log = logging.getLogger("headwater.server")


@dataclass(slots=True, eq=False)
class RunInfo:
    """A run started by a client: its ids, its stream and who started it."""

    run_id: str
    pipeline: str
    stream: str
    owner: Any
    handle: RunHandle
    forward: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    started_at: float = field(default_factory=time.time)


def with_stream_sink(data: Mapping[str, Any]) -> dict[str, Any]:
    """The pipeline mapping, with a ``websocket`` sink appended if it has none."""
    out = dict(data)
    sinks = list(out.get("sinks") or [])
    if not any(isinstance(s, Mapping) and s.get("sink") == "websocket" for s in sinks):
        sinks.append({"sink": "websocket"})
    out["sinks"] = sinks
    return out


class ClientRuns:
    """The named pipelines clients may run on one server, and the runs going on.

    Runs are created on the server's engine with the server as their publisher (their
    ``websocket`` sinks publish to it) and run in the task group given to
    :meth:`attach`; each one's events are forwarded to its stream.
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self.pipelines: dict[str, NamedPipeline] = {}
        """The named pipelines clients may run (set once validated)."""
        self._tg: TaskGroup | None = None
        self._by_id: dict[str, RunInfo] = {}
        self._by_stream: dict[str, RunInfo] = {}

    def attach(self, tg: TaskGroup) -> None:
        """Start runs in ``tg`` (the server's task group) from now on."""
        self._tg = tg

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[RunInfo]:
        """The runs going on, oldest first."""
        return iter(list(self._by_id.values()))

    def of_stream(self, stream_id: str) -> RunInfo | None:
        """The run feeding ``stream_id``, if it is the stream of a run started by a client."""
        return self._by_stream.get(stream_id)

    def get(self, run_id: str) -> RunInfo | None:
        """The run ``run_id``, if it is going on."""
        return self._by_id.get(run_id)

    async def start(
        self,
        pipeline: str,
        params: Mapping[str, Any] | None = None,
        *,
        stream: str | None = None,
        owner: Any = None,
        before_start: Callable[[RunInfo], Awaitable[None]] | None = None,
    ) -> RunInfo:
        """Start a named pipeline with a client's ``params``; its output goes to a stream.

        The stream is ``stream`` or ``PIPELINE-RUNID``; it has no inactivity timeout and
        ends with the run (``stream_complete`` with the run's final state and summary).
        ``before_start`` is awaited once the stream exists and before the run starts (the
        server subscribes the requester there, so it misses nothing); if it raises, the
        run is not started and its stream is closed.

        Raises :class:`~headwater.server.protocol.ProtocolError`: ``unknown_pipeline``,
        ``invalid_params``, ``limit_reached``, ``stream_exists``, ``unavailable``.
        """
        server = self.server
        if not server.running:
            raise ProtocolError("unavailable", "the server is shutting down")
        named = self.pipelines.get(pipeline)
        if named is None:
            # only the names the requester may run: the others are not its business
            names = [n for n in sorted(self.pipelines) if await server.allowed(owner, "run", n)]
            known = ", ".join(names) or "none"
            raise ProtocolError("unknown_pipeline", f"no pipeline {pipeline!r} (known: {known})")
        limit = server.config.limits.max_runs
        if len(self._by_id) >= limit:
            raise ProtocolError(
                "limit_reached", f"the limit of {limit} runs going at once is reached"
            )
        try:
            data = named.with_params(params or {})
            resolved, plugins = server.engine.prepare(with_stream_sink(data))
        except PipelineValidationError as exc:
            problems = "; ".join(str(issue) for issue in exc.issues[:5])
            raise ProtocolError("invalid_params", f"pipeline {pipeline!r}: {problems}") from None
        run_id = uuid.uuid4().hex[:12]
        stream_id = stream if stream is not None else f"{pipeline}-{run_id}"
        metadata = {"pipeline": pipeline, "run": run_id, "owner": principal_name(owner)}
        manager = server.manager
        try:
            await manager.create_stream(stream_id, metadata=metadata, inactivity_timeout=None)
        except StreamError as exc:
            raise ProtocolError.from_stream_error(exc) from None
        handle = server.engine.create_run(resolved, plugins, run_id=run_id, publisher=server)
        run = RunInfo(run_id, pipeline, stream_id, owner, handle)
        self._by_id[run_id] = run
        self._by_stream[stream_id] = run
        try:
            await server.history.started(run, params or {}, resolved)
            if before_start is not None:
                await before_start(run)
        except BaseException:
            self._forget(run)
            with anyio.CancelScope(shield=True):
                await server.history.finished(run, None)
            with anyio.CancelScope(shield=True):
                if manager.has_stream(stream_id):
                    await manager.close_stream(stream_id, "cancelled")
            raise
        assert self._tg is not None
        self._tg.start_soon(self._execute, run)
        log.info("run %s of pipeline %r started (stream %r)", run_id, pipeline, stream_id)
        return run

    async def cancel(
        self, *, stream: str | None = None, run: str | None = None, principal: Any = None
    ) -> RunInfo:
        """Cancel a run, named by its stream or run id.

        The principal that started it may always cancel it; anybody else needs
        ``authorize(principal, "cancel", stream)``. Raises
        :class:`~headwater.server.protocol.ProtocolError` ``unknown_run`` or
        ``unauthorized``. A run named by a stream the principal may not cancel gets
        ``unauthorized`` whether a run goes on there or not, naming only what the client
        named (never the run id).
        """
        info = self._by_id.get(run) if run is not None else None
        named_stream = stream if info is None else None
        if info is None and stream is not None:
            info = self._by_stream.get(stream)
        what = f"run {run!r}" if run is not None else f"the run on stream {stream!r}"
        if (
            info is None
            and named_stream is not None
            and not await self.server.allowed(principal, "cancel", named_stream)
        ):
            raise ProtocolError("unauthorized", f"not allowed to cancel {what}")
        if info is None:
            raise ProtocolError("unknown_run", f"no {what.removeprefix('the ')} is going on")
        if not await self.server.allowed(principal, "cancel", info.stream, owner=info.owner):
            raise ProtocolError("unauthorized", f"not allowed to cancel {what}")
        info.handle.cancel("cancelled by client")
        return info

    def cancel_all(self, reason: str) -> None:
        """Stop forwarding and cancel every run (at shutdown; their clean-up goes on)."""
        for run in list(self._by_id.values()):
            run.forward.cancel()
            run.handle.cancel(reason)

    async def _execute(self, run: RunInfo) -> None:
        result: RunResult | None = None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._forward, run)
                result = await run.handle.start()
        except Exception:
            log.exception("run %s of pipeline %r crashed", run.run_id, run.pipeline)
        finally:
            self._forget(run)
            with anyio.CancelScope(shield=True):
                await self.server.history.finished(run, result)
            log.info("run %s of pipeline %r ended: %s", run.run_id, run.pipeline, run.handle.state)

    async def _forward(self, run: RunInfo) -> None:
        events = masked_events(run.handle.events(), self.server.engine.services.secrets)
        with run.forward:
            try:
                await self.server.manager.forward_events(run.stream, events)
            except StreamError as exc:
                log.warning("events of run %s not forwarded: %s", run.run_id, exc)

    def _forget(self, run: RunInfo) -> None:
        if self._by_id.get(run.run_id) is run:
            del self._by_id[run.run_id]
        if self._by_stream.get(run.stream) is run:
            del self._by_stream[run.stream]


async def masked_events(events: AsyncIterable[Event], secrets: Secrets) -> AsyncIterator[Event]:
    """``events`` with the engine's secrets masked in what clients are shown: stage
    names (a step may be named after a substituted value), progress and status
    messages (a component may report the address it reads), error details."""
    async for event in events:
        if len(secrets) and not isinstance(event, Complete):  # the summary is masked
            event = _masked_event(event, secrets)
        yield event


def _masked_event(event: Event, secrets: Secrets) -> Event:
    if isinstance(event, Progress | Status):
        stage = secrets.mask(event.stage) if event.stage is not None else None
        message = secrets.mask(event.message) if event.message is not None else None
        if stage != event.stage or message != event.message:
            event = replace(event, stage=stage, message=message)  # type: ignore[arg-type]
        if isinstance(event, Status) and secrets.mask(event.state) != event.state:
            event = replace(event, state=secrets.mask(event.state))
    elif isinstance(event, ErrorEvent):
        stage = secrets.mask(event.stage)
        error = secrets.mask_data(event.error)
        if stage != event.stage or error is not event.error:
            return replace(event, stage=stage, error=error)
    return event
