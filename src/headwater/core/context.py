"""The context object every component receives: identity, progress, cancellation, logs."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .events import Event, Progress, Status
from .policy import SandboxPolicy
from .services import EngineServices, StreamPublisher

__all__ = ["RunIdentity", "StreamContext"]


@dataclass(frozen=True, slots=True)
class RunIdentity:
    """Who is running: the pipeline name and a unique run id."""

    pipeline: str
    run_id: str


@dataclass(slots=True, eq=False)
class StreamContext:
    """Handed to every action, transformer factory and sink of a run.

    It reports progress and status as control events, tells whether the run has been
    cancelled, and carries a logger named after the pipeline and stage.
    """

    identity: RunIdentity
    stage: str
    plugin: str | None = None
    _emit: Callable[[Event], None] = field(default=lambda event: None, repr=False)
    _cancelled: Callable[[], bool] = field(default=lambda: False, repr=False)
    resume_position: Any = None
    """For a resumable source: the committed position to continue from (None: start)."""
    checkpointing: bool = False
    """True when the run commits checkpoints (transactional sinks then defer commits to
    ``commit_checkpoint``)."""
    resuming: bool = False
    """True when the run continues from a checkpoint (e.g. a file sink appends)."""
    _position: Callable[[Any], None] = field(default=lambda position: None, repr=False)
    _on_commit: Callable[[Callable[[Any], Any]], None] = field(
        default=lambda callback: None, repr=False
    )
    services: EngineServices = field(default_factory=EngineServices, repr=False)
    """The services of the engine running this stage (see :attr:`publisher`,
    :attr:`draining`, :attr:`metrics`)."""
    _reject: Callable[[list[Any], BaseException, int | None], Awaitable[None]] | None = field(
        default=None, repr=False
    )
    _spawn: Callable[..., object] | None = field(default=None, repr=False)
    _settled: list[Callable[[], Awaitable[None]]] = field(default_factory=list, repr=False)
    logger: logging.LoggerAdapter[logging.Logger] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        base = logging.getLogger(f"headwater.run.{self.identity.pipeline}")
        self.logger = logging.LoggerAdapter(
            base,
            {
                "pipeline": self.identity.pipeline,
                "stage": self.stage,
                "run_id": self.identity.run_id,
            },
        )

    @property
    def policy(self) -> SandboxPolicy:
        """The operator's sandbox policy for this run (file roots, programs, callables)."""
        return self.services.policy

    @property
    def pipeline(self) -> str:
        """Name of the running pipeline."""
        return self.identity.pipeline

    @property
    def run_id(self) -> str:
        """Unique id of this run."""
        return self.identity.run_id

    @property
    def cancelled(self) -> bool:
        """True once the run has been asked to stop; long loops should check it."""
        return self._cancelled()

    def progress(self, done: float, total: float | None = None, message: str | None = None) -> None:
        """Report progress of this stage: ``done`` of ``total`` units (total optional).

        Cheap to call often: consumers coalesce progress events, keeping the latest.
        """
        self._emit(Progress(self.stage, done, total, message))

    def checkpoint(self, position: Any) -> None:
        """Report, from a resumable source, the position *after* the items yielded so far.

        Call it whenever the source is at a clean point (after each chunk or item) and
        after its last item; the runtime decides when to commit, and on resume the source
        receives the last committed value as ``ctx.resume_position``. The position must
        be JSON-serialisable (an offset, a line number, a cursor string, ...).
        """
        self._position(position)

    def on_commit(self, callback: Callable[[Any], Any]) -> None:
        """Call ``callback(position)`` (awaited if async) each time a checkpoint covering
        this source is committed, i.e. every sink durably has every item up to
        ``position``. Sources reading from a broker acknowledge upstream here."""
        self._on_commit(callback)

    # -- stream transformers ------------------------------------------------------------

    async def reject(
        self, items: list[Any], error: BaseException, position: int | None = None
    ) -> None:
        """From a ``stream`` transformer: hand ``items`` it could not process to the
        step's ``on_error`` policy. Under ``skip`` (or ``retry`` with ``then: skip``)
        they are counted as skipped and sent to the dead-letter sink with ``error``, and
        the transformer goes on; otherwise ``error`` is raised here and fails the run.
        ``position`` is the first item's position in the step's input, when known."""
        if self._reject is None:
            raise error
        await self._reject(items, error, position)

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """From a ``stream`` transformer: run ``fn(*args)`` as a task of its stage, beside
        the transformer (e.g. requests in flight while it yields earlier results). The
        tasks are cancelled when the transformer returns or fails; one that raises fails
        the stage. A generator must not open a task group around a ``yield`` (the cancel
        scope would span the consumer's code), hence this."""
        if self._spawn is None:
            raise RuntimeError("start_soon is only available to stream transformers")
        self._spawn(fn, *args)

    def hold_markers(self, settled: Callable[[], Awaitable[None]]) -> None:
        """From a ``stream`` transformer that works on several items at once: before a
        checkpoint marker is forwarded (when the next item after it is asked for),
        ``await settled()``, which returns once the output of every item taken so far
        has been yielded (or rejected). Without it a marker passes as soon as the next
        item is asked for, and a checkpoint could cover an item still in flight."""
        self._settled.append(settled)

    @property
    def draining(self) -> bool:
        """True once the engine asked this run to drain (a worker got SIGTERM): a source
        reading from a broker stops taking new messages and returns, so that what it
        already handed on is committed and acknowledged."""
        return self.services.drain.draining(self.identity.run_id)

    @property
    def publisher(self) -> StreamPublisher:
        """The server this run publishes streams to (the one that started it, else the
        newest running on the engine); raises :class:`~headwater.core.services.NoServerRunning`
        when the engine runs no server."""
        return self.services.publisher

    @property
    def metrics(self) -> Any:
        """The engine's :class:`~headwater.core.metrics.MetricsRegistry`."""
        return self.services.metrics

    def status(self, message: str, state: str = "running") -> None:
        """Report a human-readable status message for this stage."""
        self._emit(Status(state, self.stage, message))

    def child(self, stage: str, plugin: str | None = None) -> StreamContext:
        """A context for another stage of the same run."""
        return StreamContext(
            self.identity,
            stage,
            plugin,
            self._emit,
            self._cancelled,
            checkpointing=self.checkpointing,
            resuming=self.resuming,
            services=self.services,
        )

    def __reduce__(self) -> Any:  # pragma: no cover - contexts are never pickled
        raise TypeError("StreamContext cannot be pickled")
