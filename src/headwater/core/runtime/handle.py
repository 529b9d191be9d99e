"""What callers of the runtime hold: a run's handle, its result and its per-stage counters."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import PipelineCancelled, PipelineFailed, PipelineTimeout
from ..events import Event, RunState
from ..metrics import Histogram

if TYPE_CHECKING:
    from .run import _Run

__all__ = ["RunHandle", "RunResult", "StageStats"]


@dataclass(slots=True)
class StageStats:
    """Counters of one stage (updated per batch, never per item)."""

    items_in: int = 0
    items_out: int = 0
    errors: int = 0
    skipped: int = 0
    late: int = 0
    """Items an event-time step found late (also counted in ``skipped``)."""
    evicted: int = 0
    """Keys a keyed step forgot (time to live, or the key limit)."""
    batches_in: int = 0
    batches_out: int = 0
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    latency: Histogram = field(default_factory=Histogram)
    """Seconds spent processing (or, for a sink, writing) each batch."""

    def to_dict(self) -> dict[str, int]:
        """JSON-serialisable form."""
        return {
            "items_in": self.items_in,
            "items_out": self.items_out,
            "errors": self.errors,
            "skipped": self.skipped,
            "late": self.late,
            "evicted": self.evicted,
            "batches_in": self.batches_in,
            "batches_out": self.batches_out,
        }

    def error(self, exc: BaseException) -> None:
        """Count one error of the exception's type."""
        self.errors += 1
        kind = type(exc).__name__
        self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1

    def metrics(self) -> dict[str, Any]:
        """Counters plus error kinds and the latency histogram (for the metrics registry)."""
        return {
            "items_in": self.items_in,
            "items_out": self.items_out,
            "batches_in": self.batches_in,
            "batches_out": self.batches_out,
            "skipped": self.skipped,
            "late": self.late,
            "evicted": self.evicted,
            "errors_by_kind": dict(self.errors_by_kind),
            "latency": self.latency,
        }


@dataclass(slots=True)
class RunResult:
    """What a finished run produced."""

    pipeline: str
    run_id: str
    state: RunState
    outputs: dict[str, Any]
    """Each sink's result (what its ``close`` returned), keyed by sink name."""
    summary: dict[str, Any]
    errors: list[BaseException] = field(default_factory=list)

    @property
    def output(self) -> Any:
        """The result of the only sink (or of the first one)."""
        return next(iter(self.outputs.values()), None)

    @property
    def fallbacks(self) -> dict[str, dict[str, Any]]:
        """Sources that ran their fallback action, by stage: ``{"action": ...,
        "fallback": ..., "reason": ...}`` (empty when none did)."""
        found: dict[str, dict[str, Any]] = self.summary.get("fallbacks") or {}
        return found

    def raise_for_state(self) -> RunResult:
        """Raise the matching error unless the run succeeded; returns self otherwise."""
        if self.state == "succeeded":
            return self
        if self.state == "cancelled":
            timeout = next((e for e in self.errors if isinstance(e, PipelineTimeout)), None)
            if timeout is not None:
                raise timeout
            reason = self.summary.get("cancel_reason")
            why = f": {reason}" if reason else ""
            raise PipelineCancelled(f"pipeline {self.pipeline!r} was cancelled{why}")
        raise PipelineFailed(self.pipeline, self.errors)


class RunHandle:
    """A run in progress: iterate its events, cancel it, await its result.

    Obtained from :func:`headwater.open_run`. ``events()`` may be iterated by one
    consumer; it ends with the :class:`~headwater.Complete` event.
    """

    def __init__(self, run: _Run) -> None:
        self._run = run

    @property
    def run_id(self) -> str:
        """Unique id of the run."""
        return self._run.identity.run_id

    @property
    def pipeline(self) -> str:
        """Name of the pipeline."""
        return self._run.identity.pipeline

    @property
    def state(self) -> RunState:
        """``pending``, ``running``, ``succeeded``, ``failed`` or ``cancelled``."""
        return self._run.state

    @property
    def done(self) -> bool:
        """True once the run finished, whatever the outcome."""
        return self._run.finished.is_set()

    def cancel(self, reason: str = "cancelled", *, immediate: bool = False) -> None:
        """Stop the run: every stage stops and cleans up. Safe to call more than once.

        A checkpointed run stops cleanly: its sources stop, what they produced goes
        through the steps to the sinks, and once every sink acknowledged it a final
        checkpoint is committed (with the steps' states), so that a resumed run goes on
        from there; then the run ends ``cancelled``. A run still stopping after
        ``CLEANUP_GRACE`` seconds is cancelled as below. With ``immediate`` (or without
        checkpoints) every stage is cancelled at once: what happened since the last
        checkpoint is done again after a resume.
        """
        self._run.cancel(reason, immediate=immediate)

    def drain(self) -> None:
        """Ask the run's broker sources to stop taking messages and return: what they
        handed on is committed and acknowledged, and the run ends normally."""
        self._run.services.drain.request(self.run_id)

    def events(self) -> AsyncIterator[Event]:
        """The run's control events, ending with :class:`~headwater.Complete`."""
        return self._run.events.__aiter__()

    async def start(self) -> RunResult:
        """Execute the run in the calling task (used by :func:`headwater.open_run`)."""
        return await self._run.execute()

    async def wait(self) -> RunResult:
        """Wait for the end of the run and return its result (never raises on failure)."""
        await self._run.finished.wait()
        assert self._run.result is not None
        return self._run.result

    @property
    def stats(self) -> dict[str, StageStats]:
        """Live per-stage counters."""
        return self._run.stats
