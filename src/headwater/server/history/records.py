"""What a run store keeps, the interface of a store, and the in-memory store.

A :class:`RunRecord` is one run: its pipeline, the params its client set (secrets
masked), who started it, when, how it ended, a summary per stage, the fatal error with
its traceback, the handled errors counted by stage and type, and the graph of the
pipeline. Alongside, a store keeps the last chunks of the run's stream (``(seq, data)``,
``data`` being the chunk's JSON as published), so that the stream can be replayed after
the run ended.

A store is any object with the methods of :class:`RunStore`. They are synchronous and
called from worker threads (one at a time per store is not guaranteed: a store locks
what it shares). Stores are contributed by plugins through ``register_run_stores``; the
built-in ones are ``sqlite`` (:mod:`headwater.server.history.sqlite`) and ``memory``
(:class:`MemoryRunStore`).
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Protocol, runtime_checkable

__all__ = [
    "LIVE_STATES",
    "MAX_PAGE",
    "MemoryRunStore",
    "Retention",
    "RunPage",
    "RunQuery",
    "RunRecord",
    "RunStore",
    "process_alive",
    "process_identity",
]

LIVE_STATES: Final = frozenset({"pending", "running"})
"""States of a run that has not ended."""

MAX_PAGE: Final = 200
"""The most runs one query returns."""


@dataclass(slots=True)
class RunRecord:
    """One run, as a run store keeps it."""

    run_id: str
    pipeline: str
    stream: str
    state: str
    """``running``, then ``succeeded``, ``failed``, ``cancelled``; ``interrupted`` when
    the server stopped without recording the end (killed)."""
    started_at: float
    owner: str | None = None
    """The name of the principal that started the run (None: anonymous)."""
    ended_at: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    """The params the client set, secrets masked."""
    graph: dict[str, Any] = field(default_factory=dict)
    """``{"sources": [...], "compose": MODE|None, "steps": [...], "sinks": [...],
    "dead_letter": STAGE|None}``; each stage ``{"stage", "component", ...}``."""
    stages: dict[str, dict[str, int]] = field(default_factory=dict)
    """Counters per stage (``items_in``, ``items_out``, ``errors``, ``skipped``...)."""
    items_in: int | None = None
    elapsed_seconds: float | None = None
    fatal: dict[str, Any] | None = None
    """The error that failed the run: ``stage``, ``error`` (type), ``message``,
    ``plugin``, ``position``, ``traceback`` (text)."""
    handled: list[dict[str, Any]] = field(default_factory=list)
    """Handled errors: ``[{"stage", "error", "count", "message"}]`` (the last message)."""
    cancel_reason: str | None = None
    job: str | None = None
    """The job's name when the run is a job of a jobs file (``headwater run JOBS.yaml``)."""
    origin: str | None = None
    """What started the run: ``client`` (a client of ``headwater serve``), ``run``
    (``headwater run --history``), ``run --serve`` or ``jobs`` (a jobs file)."""
    process: str | None = None
    """``HOST:PID:START`` of the process recording the run (see :func:`process_alive`)."""
    epoch: str | None = None
    """The epoch of the run's stream (``subscribed``), for replays."""
    last_seq: int = 0
    """The seq of the stream's last chunk."""
    chunks_kept: int = 0
    size: int = 0
    """Bytes the record and its chunks take (what ``max_bytes`` counts)."""

    @property
    def live(self) -> bool:
        """True while the run has not ended."""
        return self.state in LIVE_STATES

    @property
    def handled_total(self) -> int:
        """Handled errors of every stage and type."""
        return sum(int(h.get("count", 0)) for h in self.handled)

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-serialisable (the body of ``GET /api/runs/{id}``)."""
        out = asdict(self)
        out["handled_total"] = self.handled_total
        return out

    def row(self) -> dict[str, Any]:
        """The short form listed by ``GET /api/runs``."""
        fatal = self.fatal or {}
        return {
            "run_id": self.run_id,
            "pipeline": self.pipeline,
            "stream": self.stream,
            "owner": self.owner,
            "state": self.state,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "items_in": self.items_in,
            "error": fatal.get("error"),
            "error_stage": fatal.get("stage"),
            "error_message": fatal.get("message"),
            "handled_total": self.handled_total,
            "job": self.job,
            "origin": self.origin,
        }

    def measure(self, chunk_bytes: int) -> int:
        """Set and return :attr:`size`: the JSON of the record plus ``chunk_bytes``."""
        self.size = 0
        self.size = len(json.dumps(asdict(self), default=str)) + chunk_bytes
        return self.size


def _start_ticks(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot, Linux), or "" if unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return fields[19]
    except (OSError, IndexError):
        return ""


def process_identity() -> str:
    """``HOST:PID:START`` of this process: what a record's :attr:`RunRecord.process`
    holds while the run goes on (START tells a reused PID from the process)."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid)}"


def process_alive(identity: str | None) -> bool:
    """Is the process that recorded a live run still running?

    Several processes record into one store (``headwater serve``, ``headwater run
    --history`` and ``--serve`` in the same folder): a store marks ``interrupted`` only
    the runs of processes that are gone. False without an identity (a record of an older
    version); True for a process of another host (it cannot be checked from here).
    """
    if not identity:
        return False
    parts = identity.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return False
    host, pid_text, start = parts
    if host != socket.gethostname():
        return True
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    except OSError:
        return False
    return not start or _start_ticks(pid) in ("", start)


@dataclass(frozen=True, slots=True)
class RunQuery:
    """A filter of :meth:`RunStore.query`, newest runs first."""

    pipeline: str | None = None
    state: str | None = None
    since: float | None = None
    """Runs started at or after (seconds since the epoch)."""
    until: float | None = None
    """Runs started before."""
    before: tuple[float, str] | None = None
    """Keyset cursor: runs strictly older than ``(started_at, run_id)``."""
    limit: int = 50


@dataclass(slots=True)
class RunPage:
    """One page of runs, newest first; ``next`` is the cursor of the following page."""

    runs: list[RunRecord]
    next: tuple[float, str] | None = None


@dataclass(frozen=True, slots=True)
class Retention:
    """How much history a store keeps (see :class:`~.config.HistoryConfig`)."""

    max_runs: int
    max_bytes: int
    max_age: float | None


@runtime_checkable
class RunStore(Protocol):
    """Where runs are recorded. Methods are called from worker threads."""

    def save(self, record: RunRecord, chunks: Sequence[tuple[int, bytes]] | None = None) -> None:
        """Insert or replace ``record``; with ``chunks``, replace its kept chunks too."""
        ...

    def get(self, run_id: str) -> RunRecord | None:
        """The run ``run_id``, or None."""
        ...

    def by_stream(self, stream: str) -> RunRecord | None:
        """The newest run whose output went to ``stream``, or None."""
        ...

    def query(self, query: RunQuery) -> RunPage:
        """Runs matching ``query``, newest first, at most ``query.limit``."""
        ...

    def chunks(self, run_id: str, since: int = 0) -> list[tuple[int, bytes]]:
        """The kept chunks of ``run_id`` whose seq is greater than ``since``, in order."""
        ...

    def prune(self, retention: Retention, now: float) -> int:
        """Forget finished runs beyond ``retention``; returns how many were removed."""
        ...

    def interrupt(self, now: float) -> int:
        """Mark runs still ``running`` or ``pending`` whose process is gone
        (:func:`process_alive`) as ``interrupted`` (called at start); returns how many."""
        ...

    def close(self) -> None:
        """Release the store's resources."""
        ...


class MemoryRunStore:
    """Runs in process memory, lost at exit (for tests and servers without a disk)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, RunRecord] = {}
        self._chunks: dict[str, list[tuple[int, bytes]]] = {}

    def save(self, record: RunRecord, chunks: Sequence[tuple[int, bytes]] | None = None) -> None:
        """Keep ``record`` (a copy) and, when given, its chunks."""
        with self._lock:
            self._runs[record.run_id] = RunRecord(**asdict(record))
            if chunks is not None:
                self._chunks[record.run_id] = list(chunks)

    def get(self, run_id: str) -> RunRecord | None:
        """The run, or None."""
        with self._lock:
            found = self._runs.get(run_id)
            return RunRecord(**asdict(found)) if found is not None else None

    def by_stream(self, stream: str) -> RunRecord | None:
        """The newest run of ``stream``."""
        with self._lock:
            found = [r for r in self._runs.values() if r.stream == stream]
        return max(found, key=lambda r: (r.started_at, r.run_id)) if found else None

    def query(self, query: RunQuery) -> RunPage:
        """Runs matching ``query``, newest first."""
        with self._lock:
            runs = list(self._runs.values())
        runs.sort(key=lambda r: (r.started_at, r.run_id), reverse=True)
        out = []
        for r in runs:
            if query.pipeline is not None and r.pipeline != query.pipeline:
                continue
            if query.state is not None and r.state != query.state:
                continue
            if query.since is not None and r.started_at < query.since:
                continue
            if query.until is not None and r.started_at >= query.until:
                continue
            if query.before is not None and (r.started_at, r.run_id) >= query.before:
                continue
            out.append(r)
            if len(out) > query.limit:
                break
        more = len(out) > query.limit
        out = out[: query.limit]
        cursor = (out[-1].started_at, out[-1].run_id) if more and out else None
        return RunPage(out, cursor)

    def chunks(self, run_id: str, since: int = 0) -> list[tuple[int, bytes]]:
        """Kept chunks after ``since``."""
        with self._lock:
            return [c for c in self._chunks.get(run_id, ()) if c[0] > since]

    def prune(self, retention: Retention, now: float) -> int:
        """Forget the oldest finished runs beyond ``retention``."""
        with self._lock:
            ended = sorted(
                (r for r in self._runs.values() if not r.live),
                key=lambda r: (r.started_at, r.run_id),
                reverse=True,
            )
            drop: list[str] = []
            total = 0
            for i, r in enumerate(ended):
                total += r.size
                old = retention.max_age is not None and (r.ended_at or r.started_at) < (
                    now - retention.max_age
                )
                if i >= retention.max_runs or total > retention.max_bytes or old:
                    drop.append(r.run_id)
            for run_id in drop:
                self._runs.pop(run_id, None)
                self._chunks.pop(run_id, None)
            return len(drop)

    def interrupt(self, now: float) -> int:
        """Mark live runs of processes that are gone ``interrupted``."""
        with self._lock:
            live = [r for r in self._runs.values() if r.live and not process_alive(r.process)]
            for r in live:
                r.state = "interrupted"
                r.ended_at = now
            return len(live)

    def close(self) -> None:
        """Nothing to release."""
