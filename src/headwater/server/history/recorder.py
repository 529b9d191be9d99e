"""Recording the runs of a server: :class:`RunHistory`.

The server's :class:`~headwater.server.runs.ClientRuns` tells the history when a run
starts (:meth:`RunHistory.started`: the record is written with state ``running``) and
when it ended (:meth:`RunHistory.finished`: its final state, stage counters, fatal error
with traceback, and the last chunks of its stream). In between, the history watches the
streaming manager (a :class:`~headwater.core.streaming.StreamObserver`): it keeps the
last chunks of each run's stream in a bounded ring (``chunks_per_run`` chunks,
``chunk_bytes_per_run`` bytes) and counts the handled errors by stage and type. Writes
go to the store in worker threads; the hot path (a chunk) costs a dict look-up and a
deque append.

The store is chosen by name (``history.store``): ``sqlite`` and ``memory`` are built in,
plugins add others with ``register_run_stores``. At start the store marks the runs a
process that is gone left ``running`` as ``interrupted`` and applies the retention, which
it applies again after each finished run.

A history needs a *host* (:class:`HistoryHost`): the server, or, for runs of a process
that serves nothing (``headwater run --history``, jobs files), a
:class:`~headwater.server.history.local.LocalRecorder`.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

import anyio

from headwater.core.errors import StageError, ValidationIssue
from headwater.core.plugins import LoadFailure
from headwater.core.streaming import Frame, wire

from ..auth import principal_name
from .config import HistoryConfig
from .records import (
    MemoryRunStore,
    Retention,
    RunPage,
    RunQuery,
    RunRecord,
    RunStore,
    process_identity,
)
from .sqlite import SQLiteRunStore

if TYPE_CHECKING:
    from headwater.core.engine import Engine
    from headwater.core.pipeline import ResolvedPipeline
    from headwater.core.plugins import PluginManager
    from headwater.core.runtime import RunResult

    from ..runs import RunInfo

__all__ = ["BUILTIN_STORES", "HistoryHost", "RunHistory"]

log = logging.getLogger("headwater.server.history")

BUILTIN_STORES: Final[dict[str, Callable[..., Any]]] = {
    "sqlite": SQLiteRunStore,
    "memory": MemoryRunStore,
}
"""The run stores every server has (a plugin cannot take these names)."""

TRACEBACK_LIMIT: Final = 20_000
"""Characters of a fatal error's traceback kept."""

MESSAGE_LIMIT: Final = 2_000
"""Characters of an error message kept."""


@dataclass(slots=True, eq=False)
class _Live:
    """A run going on: its record and the ring of its stream's last chunks."""

    record: RunRecord
    chunks: deque[tuple[int, bytes]] = field(default_factory=deque)
    chunk_bytes: int = 0
    handled: dict[tuple[str, str], list[Any]] = field(default_factory=dict)


class HistoryHost(Protocol):
    """What a :class:`RunHistory` needs of what hosts it: a server, or a
    :class:`~headwater.server.history.local.LocalRecorder`."""

    @property
    def config(self) -> Any:
        """A configuration whose ``history`` is a :class:`HistoryConfig` (or absent)."""

    @property
    def engine(self) -> Engine:
        """The engine of the runs (its secrets are masked in what is recorded)."""

    @property
    def plugins(self) -> PluginManager:
        """The plugins that may contribute run stores."""

    @property
    def runs(self) -> Iterable[RunInfo]:
        """The runs going on."""


class RunHistory:
    """The run history of one server (``server.history``) or of a
    :class:`~headwater.server.history.local.LocalRecorder`."""

    def __init__(self, server: HistoryHost, config: HistoryConfig | None = None) -> None:
        self.server = server
        self.config: HistoryConfig = (
            config or getattr(server.config, "history", None) or HistoryConfig()
        )
        self.process = process_identity()
        """What the records of the runs going on say of the process recording them."""
        self.store: RunStore | None = None
        self.failures: list[LoadFailure] = []
        """Run stores of plugins refused (a duplicate name) or plugins that raised."""
        self._live: dict[str, _Live] = {}
        self._by_stream: dict[str, _Live] = {}
        self._epochs: dict[str, str] = {}

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """True when runs are recorded (a store is open)."""
        return self.store is not None

    @property
    def retention(self) -> Retention:
        """The limits of the configuration."""
        c = self.config
        return Retention(c.max_runs, c.max_bytes, c.max_age)

    def factories(self) -> dict[str, Callable[..., Any]]:
        """Every run store by name: the built-in ones, then the plugins' (a plugin's
        name that is taken is refused and reported in :attr:`failures`)."""
        found: dict[str, Callable[..., Any]] = dict(BUILTIN_STORES)
        owners: dict[str, str] = {name: "headwater" for name in found}

        def add(name: str, factory: Callable[..., Any], plugin: str) -> None:
            if name in found:
                failure = LoadFailure(
                    plugin,
                    None,
                    None,
                    "run-stores",
                    f"run store {name!r} skipped: plugin {owners[name]!r} has that name",
                )
                log.warning("%s", failure)
                self.failures.append(failure)
                return
            found[name] = factory
            owners[name] = plugin

        self.failures = []
        self.failures.extend(self.server.plugins.register_run_stores(add))
        return found

    async def open(self) -> None:
        """Open the configured store, mark runs a previous process left going as
        ``interrupted`` and apply the retention. Raises
        :class:`~headwater.server.config.ServerConfigError` for an unknown store or
        params it refuses."""
        from ..config import ServerConfigError

        config = self.config
        if not config.enabled:
            return
        factories = self.factories()
        factory = factories.get(config.store)
        if factory is None:
            known = ", ".join(sorted(factories))
            raise ServerConfigError(
                [
                    ValidationIssue(
                        "history.store", f"no run store {config.store!r} (known: {known})"
                    )
                ]
            )
        params = dict(config.params)
        try:
            store = await anyio.to_thread.run_sync(lambda: factory(**params))
        except TypeError as exc:
            raise ServerConfigError([ValidationIssue("history.params", str(exc))]) from None
        except OSError as exc:
            raise ServerConfigError(
                [ValidationIssue("history.params", f"cannot open the run store: {exc}")]
            ) from None
        now = time.time()
        interrupted = await anyio.to_thread.run_sync(store.interrupt, now)
        if interrupted:
            log.warning(
                "%d run(s) of a previous server did not end: marked interrupted", interrupted
            )
        await anyio.to_thread.run_sync(store.prune, self.retention, now)
        self.store = store

    async def close(self) -> None:
        """Close the store (runs still going are recorded by :meth:`finished` first)."""
        store, self.store = self.store, None
        if store is not None:
            await anyio.to_thread.run_sync(store.close)

    async def _write(self, record: RunRecord, chunks: list[tuple[int, bytes]] | None) -> None:
        store = self.store
        if store is None:
            return
        try:
            await anyio.to_thread.run_sync(store.save, record, chunks)
            if chunks is not None:
                await anyio.to_thread.run_sync(store.prune, self.retention, time.time())
        except Exception:  # a full disk must not take runs down
            log.exception("run %s could not be recorded", record.run_id)

    # -- runs ---------------------------------------------------------------------------

    async def started(
        self,
        run: RunInfo,
        params: Mapping[str, Any],
        resolved: ResolvedPipeline,
        *,
        job: str | None = None,
        origin: str = "client",
    ) -> None:
        """Record a run that starts (state ``running``); ``job`` names the job of a jobs
        file, ``origin`` what started it (see :attr:`RunRecord.origin`)."""
        if self.store is None:
            return
        secrets = self.server.engine.services.secrets
        record = RunRecord(
            run_id=run.run_id,
            pipeline=run.pipeline,
            stream=run.stream,
            state="running",
            started_at=run.started_at,
            owner=principal_name(run.owner),
            params=secrets.mask_data(dict(params)),
            graph=secrets.mask_data(pipeline_graph(resolved)),
            epoch=self._epochs.pop(run.stream, None),
            job=job,
            origin=origin,
            process=self.process,
        )
        live = _Live(record)
        self._live[run.run_id] = live
        self._by_stream[run.stream] = live
        await self._write(record, None)

    def annotate(self, run_id: str, *, origin: str | None = None, job: str | None = None) -> None:
        """Set what started a run going on (recorded with its end)."""
        live = self._live.get(run_id)
        if live is not None:
            if origin is not None:
                live.record.origin = origin
            if job is not None:
                live.record.job = job

    async def finished(self, run: RunInfo, result: RunResult | None) -> None:
        """Record how a run ended, with the last chunks of its stream."""
        live = self._live.pop(run.run_id, None)
        if live is not None and self._by_stream.get(run.stream) is live:
            del self._by_stream[run.stream]
        if live is None or self.store is None:
            return
        secrets = self.server.engine.services.secrets
        record = live.record
        record.state = str(result.state if result is not None else run.handle.state)
        if record.state in ("pending", "running"):
            record.state = "failed"  # the runtime crashed: never left looking alive
        record.ended_at = time.time()
        summary = result.summary if result is not None else {}
        record.stages = {
            name: dict(stats) for name, stats in (summary.get("stages") or {}).items()
        } or {name: s.to_dict() for name, s in run.handle.stats.items()}
        items = summary.get("items_in")
        record.items_in = int(items) if isinstance(items, int) else None
        elapsed = summary.get("elapsed_seconds")
        record.elapsed_seconds = float(elapsed) if isinstance(elapsed, int | float) else None
        reason = summary.get("cancel_reason")
        cancelled = reason and record.state == "cancelled"
        record.cancel_reason = secrets.mask(str(reason)) if cancelled else None
        if result is not None and result.errors and record.state == "failed":
            record.fatal = fatal_error(result.errors[0], secrets.mask)
        record.handled = [
            {"stage": stage, "error": kind, "count": count, "message": message}
            for (stage, kind), (count, message) in sorted(live.handled.items())
        ]
        record.stages = secrets.mask_data(record.stages)
        chunks = list(live.chunks)
        record.chunks_kept = len(chunks)
        record.measure(live.chunk_bytes)
        await self._write(record, chunks)

    # -- the StreamObserver -------------------------------------------------------------

    def stream_opened(self, stream_id: str, epoch: str, metadata: Mapping[str, Any]) -> None:
        """Remember the epoch of a run's stream (for replays after its end)."""
        if metadata.get("run"):
            live = self._by_stream.get(stream_id)
            if live is not None:
                live.record.epoch = epoch
            else:  # the stream is created before the run is recorded
                self._epochs[stream_id] = epoch

    def chunk_published(self, stream_id: str, epoch: str, seq: int, payload: bytes) -> None:
        """Keep the chunk in the run's ring (the oldest go when it is full)."""
        live = self._by_stream.get(stream_id)
        if live is None:
            return
        record = live.record
        record.last_seq = seq
        config = self.config
        size = len(payload)
        if config.chunks_per_run <= 0 or size > config.chunk_bytes_per_run:
            return
        ring = live.chunks
        ring.append((seq, bytes(payload)))
        live.chunk_bytes += size
        while len(ring) > config.chunks_per_run or live.chunk_bytes > config.chunk_bytes_per_run:
            live.chunk_bytes -= len(ring.popleft()[1])

    def message_broadcast(self, stream_id: str, frame: Frame) -> None:
        """Count a run's handled errors by stage and type."""
        live = self._by_stream.get(stream_id)
        if live is None or b'"stream_error"' not in bytes(frame[:40]):
            return
        error = json.loads(frame).get("error") or {}
        if not isinstance(error, Mapping) or not error.get("handled"):
            return
        key = (str(error.get("stage")), str(error.get("error", "Error")))
        entry = live.handled.setdefault(key, [0, ""])
        entry[0] += 1
        entry[1] = str(error.get("message", ""))[:MESSAGE_LIMIT]

    def stream_closed(
        self,
        stream_id: str,
        reason: str,
        summary: Mapping[str, Any] | None,
        error: Frame | None,
    ) -> None:
        """Nothing to do: :meth:`finished` records the end."""
        self._epochs.pop(stream_id, None)

    # -- reading ------------------------------------------------------------------------

    def live_record(self, run_id: str) -> RunRecord | None:
        """The record of a run going on (with its counters so far), or None."""
        live = self._live.get(run_id)
        if live is None:
            return None
        record = RunRecord(**{k: getattr(live.record, k) for k in RunRecord.__dataclass_fields__})
        run = next((r for r in self.server.runs if r.run_id == run_id), None)
        if run is not None:
            record.state = str(run.handle.state)
            record.stages = {name: s.to_dict() for name, s in run.handle.stats.items()}
            record.items_in = sum(
                s.items_out for name, s in run.handle.stats.items() if name.startswith("sources.")
            )
        record.handled = [
            {"stage": stage, "error": kind, "count": count, "message": message}
            for (stage, kind), (count, message) in sorted(live.handled.items())
        ]
        record.chunks_kept = len(live.chunks)
        return record

    async def get(self, run_id: str) -> RunRecord | None:
        """A run, going on or recorded."""
        found = self.live_record(run_id)
        if found is not None or self.store is None:
            return found
        return await anyio.to_thread.run_sync(self.store.get, run_id)

    async def query(self, query: RunQuery) -> RunPage:
        """Recorded runs (those going on have state ``running``), newest first."""
        if self.store is None:
            return RunPage([])
        page = await anyio.to_thread.run_sync(self.store.query, query)
        for i, record in enumerate(page.runs):
            if record.live:
                page.runs[i] = self.live_record(record.run_id) or record
        return page

    async def finished_stream(self, stream: str) -> RunRecord | None:
        """The recorded, finished run whose output went to ``stream``, or None."""
        if self.store is None or stream in self._by_stream:
            return None
        record = await anyio.to_thread.run_sync(self.store.by_stream, stream)
        return record if record is not None and not record.live else None

    async def replay(
        self, stream: str, since: int | None, epoch: str | None, ref: str | int | None
    ) -> list[Frame] | None:
        """The messages of a ``subscribe`` to the stream of a finished, recorded run:
        ``subscribed``, ``replay_gap`` when chunks after ``since`` are no longer kept,
        the kept chunks after ``since`` (``since`` None: none), ``stream_complete``.
        None when no finished run of that stream is recorded."""
        record = await self.finished_stream(stream)
        if record is None or self.store is None:
            return None
        own_epoch = record.epoch or f"history-{record.run_id}"
        chunks: list[tuple[int, bytes]] = []
        gap: bytes | None = None
        if since is not None:
            after = since
            reason = None
            if epoch is not None and epoch != own_epoch:
                reason, after = "epoch_changed", 0
            elif since > record.last_seq:
                reason, after = "ahead", 0
            chunks = await anyio.to_thread.run_sync(self.store.chunks, record.run_id, after)
            first = chunks[0][0] if chunks else record.last_seq + 1
            if reason is None and after + 1 < first and after < record.last_seq:
                reason = "evicted"
            if reason is not None:
                gap = wire.replay_gap(stream, since, first, reason, own_epoch)
        frames = [wire.subscribed(stream, own_epoch, record.last_seq, len(chunks), ref)]
        if gap is not None:
            frames.append(gap)
        name = wire.encode_json(stream)
        frames.extend(wire.stream_update_encoded(name, seq, data) for seq, data in chunks)
        summary = {
            "state": record.state,
            "items_in": record.items_in,
            "elapsed_seconds": record.elapsed_seconds,
            "stages": record.stages,
            "run_id": record.run_id,
            "pipeline": record.pipeline,
            "history": True,
        }
        frames.append(
            wire.stream_complete(stream, record.state, record.last_seq, summary, lenient=True)
        )
        return frames

    async def owned_by(self, stream: str, principal: Any) -> bool:
        """True when ``principal`` started the recorded run of ``stream`` (who started a
        run may always follow its stream, also after its end)."""
        name = principal_name(principal)
        if name is None:
            return False
        record = await self.finished_stream(stream)
        return record is not None and record.owner == name


def pipeline_graph(resolved: ResolvedPipeline) -> dict[str, Any]:
    """The shape of a pipeline for its drawing: sources, composition, steps, sinks."""

    def stage(s: Any) -> dict[str, Any]:
        return {
            "stage": s.stage,
            "component": s.component.name,
            "on_error": getattr(s, "on_error", "fail"),
        }

    compose = resolved.spec.compose
    return {
        "sources": [stage(s) for s in resolved.sources.values()],
        "compose": compose.mode if compose is not None else None,
        "steps": [stage(s) for s in resolved.steps],
        "sinks": [stage(s) for s in resolved.sinks],
        "dead_letter": resolved.dead_letter.stage if resolved.dead_letter is not None else None,
    }


def fatal_error(error: BaseException, mask: Callable[[str], str]) -> dict[str, Any]:
    """The fatal error of a run as recorded: where, what, and the traceback's text."""
    cause = error.cause if isinstance(error, StageError) else error
    text = "".join(traceback.format_exception(cause))
    if len(text) > TRACEBACK_LIMIT:
        text = "…" + text[-TRACEBACK_LIMIT:]
    if isinstance(error, StageError):
        details: dict[str, Any] = dict(error.to_dict())
    else:
        details = {"error": type(error).__name__, "message": str(error)}
    details["message"] = mask(str(details.get("message", "")))[:MESSAGE_LIMIT]
    details["traceback"] = mask(text)
    return details
