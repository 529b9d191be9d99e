"""What the scheduler works with: run states, requests, scheduled runs, events and errors.

Nothing here decides anything (see :mod:`.policy` and :mod:`.core`) or runs anything
(see :mod:`.executor`); anyio is imported only by the methods that wait.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from ..errors import HeadwaterError, ValidationIssue
from ..events import Event, Progress

if TYPE_CHECKING:
    import anyio

    from ..api import PipelineLike
    from ..pipeline import ResolvedPipeline
    from ..runtime import RunHandle, RunResult
    from .core import SchedulerCore

__all__ = [
    "DEFAULT_AGING",
    "FINAL_STATES",
    "STATES",
    "ChangeObserver",
    "QueueEntry",
    "RunCreator",
    "RunEvent",
    "RunRejected",
    "RunRequest",
    "RunSkipped",
    "RunStateChanged",
    "ScheduledRun",
    "ScheduledState",
    "SchedulerError",
]

ScheduledState = Literal[
    "pending", "waiting", "running", "succeeded", "failed", "cancelled", "skipped"
]
"""The state of a scheduled run (see :mod:`headwater.core.scheduler` for the transitions)."""

STATES: tuple[ScheduledState, ...] = (
    "pending",
    "waiting",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "skipped",
)
FINAL_STATES: frozenset[ScheduledState] = frozenset({"succeeded", "failed", "cancelled", "skipped"})
"""States a run never leaves."""

DEFAULT_AGING = 10
"""A waiting run gains one priority point per this many runs started while it waits."""

_MAX_EVENTS = 10_000
"""Non-progress events buffered per ``events()`` subscriber before the oldest are dropped."""


class SchedulerError(HeadwaterError):
    """Something the scheduler refused or could not do."""


class RunRejected(SchedulerError):
    """A submission was refused; nothing of it was scheduled.

    ``issues`` lists every problem, each with a path that starts with the run's name,
    e.g. ``load.depends_on[0]`` or ``load.pipeline.sources.db.action``.
    """

    def __init__(self, issues: list[ValidationIssue]) -> None:
        self.issues = issues
        runs = sorted({issue.path.split(".", 1)[0].split("[", 1)[0] for issue in issues})
        which = ", ".join(repr(r) for r in runs)
        count = f"{len(issues)} problem{'s' if len(issues) != 1 else ''}"
        lines = "\n".join(f"  {issue}" for issue in issues)
        super().__init__(f"cannot submit run {which} ({count}):\n{lines}")


class RunSkipped(SchedulerError):
    """A run never started because a dependency did not succeed (its ``error``)."""


@dataclass(frozen=True, slots=True)
class RunStateChanged:
    """A scheduled run moved from ``old`` to ``new`` (``old`` is None on submission)."""

    run: str
    old: ScheduledState | None
    new: ScheduledState
    reason: str | None = None
    type: Literal["run_state"] = field(default="run_state", init=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)


RunEvent: TypeAlias = RunStateChanged | Event
"""What :meth:`ScheduledRun.events` yields: state changes and the run's pipeline events."""

ChangeObserver: TypeAlias = Callable[
    ["ScheduledRun", "ScheduledState | None", ScheduledState], None
]
"""Called as ``observer(run, old_state, new_state)`` on every state change."""


RunCreator: TypeAlias = Callable[["ScheduledRun", "ResolvedPipeline", Any], "Awaitable[RunHandle]"]
"""Called as ``await create_run(run, resolved, plugins)`` when a scheduled run starts,
instead of ``engine.create_run(resolved, plugins)``: it returns the handle of a run that
has not started (the scheduler starts it). What records runs gives each one a publisher
and a sink of its own that way."""


@dataclass(slots=True)
class RunRequest:
    """One run to submit with :meth:`Scheduler.submit_many`."""

    name: str
    pipeline: PipelineLike
    priority: int = 0
    depends_on: Sequence[str] = ()
    resources: Mapping[str, int] | None = None
    source: str | None = None
    """Where the pipeline comes from (a file name), shown in validation errors."""


QueueEntry: TypeAlias = "tuple[int, int, ScheduledRun]"
"""An entry of the waiting queue: ``(-score, order in which runs became ready, run)``."""


class _Subscriber:
    """The buffer of one ``events()`` consumer; progress is coalesced per stage."""

    __slots__ = ("finished", "progress", "queue", "waiter")

    def __init__(self, history: Iterable[RunStateChanged], finished: bool) -> None:
        self.queue: deque[RunEvent] = deque(history)
        self.progress: dict[str, Progress] = {}
        self.finished = finished
        self.waiter: anyio.Event | None = None

    def push(self, event: RunEvent) -> None:
        if isinstance(event, Progress):
            self.progress[event.stage] = event
        else:
            if len(self.queue) >= _MAX_EVENTS:
                self.queue.popleft()
            self.queue.append(event)
            if isinstance(event, RunStateChanged) and event.new in FINAL_STATES:
                self.finished = True
        if self.waiter is not None:
            self.waiter.set()
            self.waiter = None


class ScheduledRun:
    """A run submitted to a :class:`Scheduler`: its state, its result, and control.

    ``state`` is one of :data:`ScheduledState`. Once final, ``result`` holds the
    :class:`~headwater.RunResult` (None if the pipeline never started), ``error`` the
    reason as an exception (None on success) and ``reason`` a one-line explanation.
    """

    def __init__(
        self,
        scheduler: SchedulerCore,
        request: RunRequest,
        seq: int,
        prepared: tuple[ResolvedPipeline, Any] | None,
        data: dict[str, Any] | None,
        inputs: dict[str, str],
        first_sink: str,
    ) -> None:
        self._scheduler = scheduler
        self.name: str = request.name
        """Unique name of the run within its scheduler."""
        self.priority: int = request.priority
        """Base priority: higher starts first."""
        self.depends_on: tuple[str, ...] = tuple(dict.fromkeys(request.depends_on))
        """Runs that must succeed before this one starts."""
        self.resources: dict[str, int] = {k: v for k, v in (request.resources or {}).items() if v}
        """Resource units held while running."""
        self.seq = seq
        """Submission order (0-based)."""
        self.result: RunResult | None = None
        """The pipeline's result once it ran (None while running and if it never started)."""
        self.error: BaseException | None = None
        """Why the run did not succeed (None while unfinished and on success)."""
        self.reason: str | None = None
        """One-line explanation of the last state change (why skipped, failed, cancelled)."""
        self.submitted_at = time.monotonic()
        """``time.monotonic()`` at submission."""
        self.started_at: float | None = None
        """``time.monotonic()`` when it started running."""
        self.finished_at: float | None = None
        """``time.monotonic()`` when it reached a final state."""
        self.progress: dict[str, Progress] = {}
        """The latest :class:`~headwater.Progress` of each stage of the running pipeline."""
        self.last_progress: Progress | None = None
        """The most recent progress event of any stage."""
        self.first_sink = first_sink
        """Result key of the pipeline's first declared sink (what :attr:`output` reads)."""
        self._state: ScheduledState = "pending"
        self._prepared = prepared
        self._data = data
        self._inputs = inputs
        self._handle: RunHandle | None = None
        self._run_id: str | None = None
        self._history: list[RunStateChanged] = []
        self._subscribers: list[_Subscriber] = []
        self._done: anyio.Event | None = None
        self._blockers: set[str] = set()
        self._dependents: list[ScheduledRun] = []
        self._entered = 0
        self._entry: QueueEntry | None = None
        self._cancel_reason: str | None = None
        self._root_cause: str | None = None

    def __repr__(self) -> str:
        return f"<ScheduledRun {self.name!r} {self._state} priority={self.priority}>"

    @property
    def state(self) -> ScheduledState:
        """``pending``, ``waiting``, ``running``, ``succeeded``, ``failed``,
        ``cancelled`` or ``skipped``."""
        return self._state

    @property
    def done(self) -> bool:
        """True once the run reached a final state."""
        return self._state in FINAL_STATES

    @property
    def handle(self) -> RunHandle | None:
        """The underlying :class:`~headwater.RunHandle` while the pipeline runs.

        Released when the run ends (``result`` keeps what it produced), so that many
        finished runs cost little memory.
        """
        return self._handle

    @property
    def output(self) -> Any:
        """The result of the pipeline's first declared sink (None until it succeeded).

        This is what a ``{from_run: NAME}`` source of a dependent run reads.
        """
        if self.result is None:
            return None
        return self.result.outputs.get(self.first_sink)

    @property
    def run_id(self) -> str | None:
        """The pipeline run's id (as in events and hooks) once it started."""
        return self.result.run_id if self.result is not None else self._run_id

    @property
    def effective_priority(self) -> float:
        """The priority used to order waiting runs: the base priority plus aging."""
        aging = self._scheduler.aging
        if self._state != "waiting" or not aging:
            return float(self.priority)
        return self.priority + (self._scheduler.decisions - self._entered) / aging

    @property
    def elapsed(self) -> float | None:
        """Seconds spent running (so far), or None if it never started."""
        if self.started_at is None:
            return None
        end = self.finished_at if self.finished_at is not None else time.monotonic()
        return end - self.started_at

    def cancel(self, reason: str = "cancelled") -> bool:
        """Cancel the run and every unfinished run that (transitively) depends on it.

        A waiting or pending run ends ``cancelled`` at once; a running pipeline is asked to
        stop and ends ``cancelled`` after its cleanup. Returns False if the run had
        already finished (nothing is done then).
        """
        return self._scheduler._cancel(self, reason)

    async def wait(self) -> ScheduledState:
        """Wait until the run reaches a final state and return that state."""
        import anyio

        if not self.done:
            if self._done is None:
                self._done = anyio.Event()
            await self._done.wait()
        return self._state

    def raise_for_state(self) -> ScheduledRun:
        """Raise :attr:`error` unless the run succeeded; returns self otherwise."""
        if self._state != "succeeded":
            if self.error is not None:
                raise self.error
            raise SchedulerError(f"run {self.name!r} is {self._state}")
        return self

    async def events(self) -> AsyncIterator[RunEvent]:
        """Yield the run's state changes (from its submission on) and, while it runs, the
        events of its pipeline (:class:`~headwater.Progress`, ``Status``, ``ErrorEvent``,
        ``Complete``); end after the final :class:`RunStateChanged`.

        Any number of consumers may iterate at once. Progress is coalesced per stage for
        a consumer that reads slowly, so memory stays bounded.
        """
        import anyio

        sub = _Subscriber(self._history, self.done)
        if not sub.finished:
            self._subscribers.append(sub)
        try:
            while sub.queue or sub.progress or not sub.finished:
                if sub.progress:
                    pending = list(sub.progress.values())
                    sub.progress.clear()
                    for progress in pending:
                        yield progress
                if sub.queue:
                    yield sub.queue.popleft()
                    continue
                if not sub.finished and not sub.progress:
                    waiter = sub.waiter = anyio.Event()
                    await waiter.wait()
        finally:
            if sub in self._subscribers:
                self._subscribers.remove(sub)

    # -- used by the scheduler ------------------------------------------------------------

    def _publish(self, event: RunEvent) -> None:
        if isinstance(event, Progress):
            self.progress[event.stage] = event
            self.last_progress = event
        for sub in self._subscribers:
            sub.push(event)
