"""A priority scheduler for many pipeline runs: dependencies, resource slots and aging.

:class:`Scheduler` runs pipelines inside an anyio task group (asyncio or trio)::

    async with headwater.Scheduler(concurrency=4, resources={"db": 1}) as scheduler:
        extract = scheduler.submit("extract", extract_spec, priority=5)
        load = scheduler.submit("load", load_spec, depends_on=["extract"], resources={"db": 1})
    # leaving the block waited for every run
    assert load.state == "succeeded"

How a run moves (the :data:`ScheduledState` values)::

    pending --(dependencies succeeded)--> waiting --(slot and resources)--> running
       |                                     |                                 |
       +--> skipped (a dependency did not succeed)                             +--> succeeded
       +--> cancelled (cancel(), or a cancelled dependency) <------------------+--> failed
                                                                               +--> cancelled

Scheduling decisions are synchronous and happen exactly when something changes (a
submission, the end of a run, a cancellation): there is no polling loop and no timer,
so the order of decisions is deterministic.

**Order.** Among *waiting* runs, the highest effective priority starts first (ties: the
run that became ready first). **Aging**: a waiting run gains one priority point per
``aging`` runs started while it waits, so a steady stream of higher-priority work delays
it by a bounded number of starts. Because every waiting run ages at the same rate, the
effective priority ``priority + started_since / aging`` orders waiting runs exactly like
the constant ``priority * aging - started_before``; the queue is therefore a plain heap
and a decision costs ``O(log n)``.

**Resources.** Each run may claim named resource units (``{"db": 1}``) against the
scheduler's capacities, plus one of ``concurrency`` slots. A lower-priority run may start
ahead of a blocked higher-priority one ("backfill") only with what is left after the
claims of every higher-priority waiting run, so it can never take a resource that a
higher-priority run is waiting for. Slots and resources are released when a run ends,
whatever the outcome.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeAlias

import anyio
from anyio.abc import TaskGroup

from .api import PipelineLike, prepare
from .errors import HeadwaterError, PipelineCancelled, ValidationIssue
from .events import Event, Progress
from .metrics import metrics_registry
from .pipeline import ResolvedPipeline
from .plugins import PluginManager
from .runtime import RunHandle, RunResult, create_run

__all__ = [
    "DEFAULT_AGING",
    "FINAL_STATES",
    "ChangeObserver",
    "RunEvent",
    "RunRejected",
    "RunRequest",
    "RunSkipped",
    "RunStateChanged",
    "ScheduledRun",
    "ScheduledState",
    "Scheduler",
    "SchedulerError",
]

log = logging.getLogger("headwater.scheduler")

ScheduledState = Literal[
    "pending", "waiting", "running", "succeeded", "failed", "cancelled", "skipped"
]
"""The state of a scheduled run (see the module docstring for the transitions)."""

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

_METRICS_IDS = itertools.count(1)
"""Ids of schedulers in metrics snapshots (the ``scheduler`` label): 1, 2, ..."""

_PLACEHOLDER_INPUT: dict[str, Any] = {"action": "iterable", "params": {"items": []}}
"""Stands in for a ``{from_run: NAME}`` source while the pipeline is validated."""


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


_Entry: TypeAlias = "tuple[int, int, ScheduledRun]"
"""A queue entry: ``(-score, order in which runs became ready, run)``."""


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
        scheduler: Scheduler,
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
        self._entry: _Entry | None = None
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


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_yaml(path: Path) -> tuple[Any, str | None]:
    """Parse a YAML file; return ``(data, problem)``."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror or exc}"
    try:
        return yaml.safe_load(text), None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        return None, f"{path} is not valid YAML: {where}{problem}"


class Scheduler:
    """Runs many pipelines by priority, with dependencies, resource slots and aging.

    Use it as ``async with Scheduler(...) as scheduler:``; runs execute in the
    scheduler's task group. Leaving the block normally waits for every run (like a task
    group); leaving it with an exception, or being cancelled, cancels every unfinished
    run and waits for their cleanup. Runs may be submitted before entering the block;
    they start on entry. A scheduler is not thread-safe: use it from its event loop's
    thread.

    Args:
        concurrency: How many runs may be running at once.
        resources: Named resource capacities, e.g. ``{"cpu": 2, "db": 1}``.
        aging: A waiting run gains one priority point per ``aging`` runs started while it
            waits (None disables aging).
        plugins: The plugin manager to validate and run pipelines with (default: the
            process-wide one).
        on_change: An observer called as ``on_change(run, old_state, new_state)`` on
            every state change (more with :meth:`add_observer`). Observers run
            synchronously inside scheduling decisions: keep them quick.
    """

    def __init__(
        self,
        concurrency: int = 4,
        resources: Mapping[str, int] | None = None,
        *,
        aging: int | None = DEFAULT_AGING,
        plugins: PluginManager | None = None,
        on_change: ChangeObserver | None = None,
    ) -> None:
        if not _is_int(concurrency) or concurrency < 1:
            raise SchedulerError(f"concurrency must be a positive integer, got {concurrency!r}")
        if aging is not None and (not _is_int(aging) or aging < 1):
            raise SchedulerError(f"aging must be a positive integer or None, got {aging!r}")
        capacity = dict(resources or {})
        for key, value in capacity.items():
            if not isinstance(key, str) or not key:
                raise SchedulerError(f"resource names must be non-empty strings, got {key!r}")
            if not _is_int(value) or value < 1:
                raise SchedulerError(
                    f"capacity of resource {key!r} must be a positive integer, got {value!r}"
                )
        self.concurrency = concurrency
        """How many runs may be running at once."""
        self.capacity: dict[str, int] = capacity
        """Units of each named resource."""
        self.aging = aging
        """Runs started per priority point gained while waiting (None: no aging)."""
        self.plugins = plugins
        """The plugin manager pipelines are validated and run with (None: the default)."""
        self.decisions = 0
        """How many runs this scheduler has started (the clock of aging)."""
        self._observers: list[ChangeObserver] = [on_change] if on_change is not None else []
        self._runs: dict[str, ScheduledRun] = {}
        self._plain: list[_Entry] = []
        self._needy: list[_Entry] = []
        self._in_use: dict[str, int] = dict.fromkeys(capacity, 0)
        self._running = 0
        self._readied = 0
        self._unfinished = 0
        self._counts: dict[ScheduledState, int] = dict.fromkeys(STATES, 0)
        self._tg: TaskGroup | None = None
        self._entered = False
        self._closed = False
        self._paused = False
        self._dispatching = False
        self._redispatch = False
        self._idle: anyio.Event | None = None
        self.metrics_id = str(next(_METRICS_IDS))
        """This scheduler's id in metrics snapshots (reported while it is entered)."""

    # -- context manager ------------------------------------------------------------------

    async def __aenter__(self) -> Scheduler:
        if self._entered:
            raise SchedulerError("a Scheduler can be entered only once")
        self._entered = True
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        metrics_registry().add_member("schedulers", self.metrics_id, self.metrics)
        self._dispatch()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg = self._tg
        assert tg is not None, "__aexit__ without __aenter__"
        caught: BaseException | None = None
        if exc is None:
            try:
                await self.join()
            except BaseException as error:  # cancelled while joining: clean up, re-raise
                caught = error
                exc_type, exc, tb = type(error), error, error.__traceback__
        if exc is not None:
            self._shutdown(f"scheduler closed ({type(exc).__name__})")
        self._closed = True
        unwrap = False
        try:
            suppress = await tg.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            # the task group wraps the body's own exception: hand it back as it was
            if exc is None or len(group.exceptions) != 1 or group.exceptions[0] is not exc:
                raise
            unwrap = True
        finally:
            self._tg = None
            # A task cancelled before it ever ran (asyncio) never settled its run.
            for run in self._runs.values():
                if not run.done:
                    why = run._cancel_reason or "scheduler closed"
                    self._finish(run, "cancelled", reason=why, error=PipelineCancelled(why))
            metrics_registry().remove_member("schedulers", self.metrics_id)
        if unwrap:
            assert exc is not None
            raise exc
        if caught is not None and not suppress:
            raise caught
        return suppress

    # -- submission -----------------------------------------------------------------------

    def submit(
        self,
        name: str,
        pipeline: PipelineLike,
        *,
        priority: int = 0,
        depends_on: Sequence[str] = (),
        resources: Mapping[str, int] | None = None,
    ) -> ScheduledRun:
        """Submit one run and return its :class:`ScheduledRun`.

        ``pipeline`` is anything :func:`headwater.run` accepts (a spec, a mapping in the
        YAML shape, a path to a YAML file, a builder). In a mapping or a file, a source
        written ``{from_run: NAME}`` reads the output of the run ``NAME`` (which must be
        in ``depends_on``): when this run starts, it becomes an ``iterable`` source over
        the result of that run's first sink.

        Raises :class:`RunRejected` (nothing is scheduled) for a duplicate name, an
        unknown dependency, a dependency cycle, an unknown resource, a resource need above
        capacity or an invalid pipeline. A run depending on a run that already failed or
        was cancelled is accepted and ends ``skipped`` at once.
        """
        request = RunRequest(name, pipeline, priority, depends_on, resources)
        return self.submit_many([request])[0]

    def submit_many(self, requests: Iterable[RunRequest]) -> list[ScheduledRun]:
        """Submit several runs at once, all or none; returns them in the given order.

        Dependencies may refer to runs of the same batch in any order (a cycle among
        them is rejected) as well as to runs submitted earlier.
        """
        if self._closed:
            raise SchedulerError("the scheduler is closed; no more runs can be submitted")
        batch = list(requests)
        issues: list[ValidationIssue] = []
        names: dict[str, RunRequest] = {}
        for i, req in enumerate(batch):
            if not isinstance(req.name, str) or not req.name:
                issues.append(ValidationIssue(f"[{i}].name", "a run needs a non-empty name"))
                continue
            if req.name in self._runs or req.name in names:
                issues.append(
                    ValidationIssue(f"{req.name}.name", f"a run named {req.name!r} already exists")
                )
                continue
            names[req.name] = req
        order: list[str] = []
        prepared: dict[str, tuple[Any, Any, Any, dict[str, str], str]] = {}
        if not issues:
            graph_ok = True
            for req in batch:
                problems = self._check_request(req, names)
                graph_ok = graph_ok and not problems
                entry, pipeline_problems = self._prepare(req)
                issues.extend([*problems, *pipeline_problems])
                if entry is not None:
                    prepared[req.name] = entry
            if graph_ok:  # cycles are looked for once every dependency is known
                order, cycle_issues = self._order(names)
                issues.extend(cycle_issues)
        if issues:
            raise RunRejected(issues)

        created: dict[str, ScheduledRun] = {}
        paused, self._paused = self._paused, True
        try:
            for name in order:
                req = names[name]
                resolved, pm, data, inputs, first_sink = prepared[name]
                run = ScheduledRun(
                    self,
                    req,
                    len(self._runs),
                    (resolved, pm) if resolved is not None else None,
                    data,
                    inputs,
                    first_sink,
                )
                self._register(run)
                created[name] = run
        finally:
            self._paused = paused
        self._dispatch()
        return [created[req.name] for req in batch]

    def _check_request(
        self, req: RunRequest, batch: Mapping[str, RunRequest]
    ) -> list[ValidationIssue]:
        name = req.name
        issues: list[ValidationIssue] = []
        if not _is_int(req.priority):
            issues.append(
                ValidationIssue(f"{name}.priority", f"must be an integer, got {req.priority!r}")
            )
        deps = req.depends_on
        if isinstance(deps, str | bytes) or not isinstance(deps, Sequence):
            issues.append(
                ValidationIssue(f"{name}.depends_on", f"must be a list of run names, got {deps!r}")
            )
        else:
            for i, dep in enumerate(deps):
                path = f"{name}.depends_on[{i}]"
                if dep == name:
                    issues.append(
                        ValidationIssue(path, f"dependency cycle: {name} -> {name} (itself)")
                    )
                elif not isinstance(dep, str) or (dep not in self._runs and dep not in batch):
                    known = sorted({*self._runs, *batch} - {name})
                    hint = f"; known runs: {', '.join(known)}" if known else ""
                    issues.append(ValidationIssue(path, f"unknown run {dep!r}{hint}"))
        needs = req.resources or {}
        if not isinstance(needs, Mapping):
            issues.append(ValidationIssue(f"{name}.resources", f"must be a mapping, got {needs!r}"))
            return issues
        for key, amount in needs.items():
            path = f"{name}.resources.{key}"
            if key not in self.capacity:
                have = ", ".join(sorted(self.capacity)) or "none"
                issues.append(
                    ValidationIssue(path, f"unknown resource {key!r} (the scheduler has: {have})")
                )
            elif not _is_int(amount) or amount < 0:
                issues.append(
                    ValidationIssue(path, f"must be a non-negative integer, got {amount!r}")
                )
            elif amount > self.capacity[key]:
                issues.append(
                    ValidationIssue(
                        path,
                        f"needs {amount} {key!r} but the scheduler has only "
                        f"{self.capacity[key]}: it could never start",
                    )
                )
        return issues

    def _order(self, batch: Mapping[str, RunRequest]) -> tuple[list[str], list[ValidationIssue]]:
        """Topological order of a batch (dependencies first), or the cycles in it."""
        indegree = {name: 0 for name in batch}
        children: dict[str, list[str]] = {name: [] for name in batch}
        for name, req in batch.items():
            for dep in dict.fromkeys(req.depends_on):
                if dep in batch:
                    indegree[name] += 1
                    children[dep].append(name)
        ready = deque(name for name, n in indegree.items() if n == 0)
        order: list[str] = []
        while ready:
            name = ready.popleft()
            order.append(name)
            for child in children[name]:
                indegree[child] -= 1
                if indegree[child] == 0:
                    ready.append(child)
        if len(order) == len(batch):
            return order, []
        # Every remaining run is on a cycle or downstream of one: report each cycle once.
        remaining = {name for name, n in indegree.items() if n > 0}
        issues: list[ValidationIssue] = []
        reported: set[str] = set()
        for start in batch:
            if start not in remaining or start in reported:
                continue
            path = [start]
            seen = {start: 0}
            node = start
            for _ in range(len(remaining) + 1):
                node = next(d for d in batch[node].depends_on if d in remaining)
                if node in seen:
                    cycle = path[seen[node] :]
                    break
                seen[node] = len(path)
                path.append(node)
            else:  # pragma: no cover - a walk inside `remaining` always closes a cycle
                continue
            if reported.isdisjoint(cycle):
                first = cycle[0]
                dep_index = list(batch[first].depends_on).index(
                    cycle[1] if len(cycle) > 1 else first
                )
                # the walk follows depends_on edges, so the cycle reads "a depends on b"
                text = " -> ".join([*cycle, first])
                issues.append(
                    ValidationIssue(
                        f"{first}.depends_on[{dep_index}]",
                        f"dependency cycle: {text} (each run depends on the next)",
                    )
                )
            reported.update(cycle)
        return [], issues

    def _prepare(
        self, req: RunRequest
    ) -> tuple[tuple[Any, Any, Any, dict[str, str], str] | None, list[ValidationIssue]]:
        """Validate the pipeline; returns ``(resolved, pm, data, inputs, first_sink)``.

        A pipeline without ``from_run`` sources is resolved once, here. One with
        ``from_run`` sources is validated with a placeholder and resolved again, with the
        upstream output, when the run starts.
        """
        name = req.name
        pipeline: Any = req.pipeline
        source = req.source
        issues: list[ValidationIssue] = []
        deps = req.depends_on
        if isinstance(deps, str | bytes) or not isinstance(deps, Sequence):
            deps = ()
        if isinstance(pipeline, str | Path):
            source = source or str(pipeline)
            data, problem = _read_yaml(Path(pipeline))
            if problem is not None:
                return None, [ValidationIssue(f"{name}.pipeline", problem)]
            pipeline = data
        inputs: dict[str, str] = {}
        data_for_start: dict[str, Any] | None = None
        if isinstance(pipeline, Mapping):
            sources = pipeline.get("sources")
            if isinstance(sources, Mapping) and any(
                isinstance(s, Mapping) and "from_run" in s for s in sources.values()
            ):
                checked: dict[str, Any] = {}
                for sname, src in sources.items():
                    if not (isinstance(src, Mapping) and "from_run" in src):
                        checked[sname] = src
                        continue
                    path = f"{name}.pipeline.sources.{sname}"
                    extra = sorted(k for k in src if k != "from_run")
                    upstream = src["from_run"]
                    if extra:
                        issues.append(
                            ValidationIssue(
                                path,
                                "a from_run source takes no other keys, got "
                                + ", ".join(map(str, extra)),
                            )
                        )
                    if not isinstance(upstream, str) or upstream not in deps:
                        listed = ", ".join(map(str, deps)) or "none"
                        issues.append(
                            ValidationIssue(
                                f"{path}.from_run",
                                f"{upstream!r} is not among this run's depends_on ({listed}); "
                                "a run can only read the output of a run it depends on",
                            )
                        )
                    else:
                        inputs[sname] = upstream
                    checked[sname] = _PLACEHOLDER_INPUT
                data_for_start = {**pipeline, "sources": dict(sources)}
                pipeline = {**pipeline, "sources": checked}
        try:
            resolved, pm = prepare(pipeline, self.plugins)
        except HeadwaterError as exc:
            found = getattr(exc, "issues", None)
            where = f" (in {source})" if source else ""
            if found:
                for issue in found:
                    sub = f".{issue.path}" if issue.path and not issue.path.startswith("[") else ""
                    issues.append(
                        ValidationIssue(f"{name}.pipeline{sub}", f"{issue.message}{where}")
                    )
            else:
                issues.append(ValidationIssue(f"{name}.pipeline", f"{exc}{where}"))
            return None, issues
        except TypeError as exc:
            return None, [ValidationIssue(f"{name}.pipeline", str(exc))]
        if issues:
            return None, issues
        first_sink = resolved.sinks[0].stage.removeprefix("sinks.")
        if inputs:
            return (None, pm, data_for_start, inputs, first_sink), []
        return (resolved, pm, None, inputs, first_sink), []

    def _register(self, run: ScheduledRun) -> None:
        self._runs[run.name] = run
        self._unfinished += 1
        self._set_state(run, None, "pending", None)
        failed: ScheduledRun | None = None
        for dep_name in run.depends_on:
            dep = self._runs[dep_name]
            if dep._state == "succeeded":
                continue
            if dep.done:
                failed = failed or dep
                continue
            run._blockers.add(dep_name)
            dep._dependents.append(run)
        if failed is not None:
            self._finish(run, "skipped", reason=self._skip_reason(failed))
        elif not run._blockers:
            self._enqueue(run)

    # -- queries --------------------------------------------------------------------------

    def __getitem__(self, name: str) -> ScheduledRun:
        return self._runs[name]

    def __contains__(self, name: object) -> bool:
        return name in self._runs

    def get(self, name: str) -> ScheduledRun | None:
        """The run named ``name``, or None."""
        return self._runs.get(name)

    @property
    def runs(self) -> list[ScheduledRun]:
        """Every submitted run, in submission order."""
        return list(self._runs.values())

    @property
    def queue_depth(self) -> int:
        """How many runs are ready and waiting for a slot or resources."""
        return self._counts["waiting"]

    @property
    def running(self) -> int:
        """How many runs are running."""
        return self._running

    @property
    def unfinished(self) -> int:
        """How many runs have not reached a final state."""
        return self._unfinished

    def counts_by_state(self) -> dict[ScheduledState, int]:
        """How many runs are in each state (every state is a key)."""
        return dict(self._counts)

    def resources_in_use(self) -> dict[str, int]:
        """Units of each resource held by running runs."""
        return dict(self._in_use)

    def metrics(self) -> dict[str, Any]:
        """Figures for metrics snapshots (the ``schedulers`` entry; any thread may ask).

        ``queue_depth`` (runs ready and waiting), ``running``, ``runs_by_state`` (every
        state), ``concurrency``, ``resources_in_use`` and ``capacity``.
        """
        return {
            "queue_depth": self._counts["waiting"],
            "running": self._running,
            "runs_by_state": dict(self._counts),
            "concurrency": self.concurrency,
            "resources_in_use": dict(self._in_use),
            "capacity": dict(self.capacity),
        }

    def add_observer(self, observer: ChangeObserver) -> None:
        """Call ``observer(run, old_state, new_state)`` on every state change from now on."""
        self._observers.append(observer)

    def remove_observer(self, observer: ChangeObserver) -> None:
        """Stop calling ``observer``."""
        self._observers.remove(observer)

    # -- control --------------------------------------------------------------------------

    async def join(self) -> None:
        """Wait until every submitted run (including ones submitted meanwhile) is final."""
        if self._unfinished and self._tg is None:
            raise SchedulerError(
                "the scheduler is not running; use `async with Scheduler(...)` to run it"
            )
        while self._unfinished:
            if self._idle is None:
                self._idle = anyio.Event()
            await self._idle.wait()

    def cancel_all(self, reason: str = "cancelled") -> int:
        """Cancel every unfinished run; returns how many were cancelled."""
        paused, self._paused = self._paused, True
        try:
            count = self._cancel_every(reason)
        finally:
            self._paused = paused
        self._dispatch()
        return count

    def _cancel_every(self, reason: str) -> int:
        # newest first: dependents (always submitted after their dependencies) are
        # cancelled with ``reason`` before their dependencies could skip them
        count = 0
        for run in reversed(list(self._runs.values())):
            if not run.done:
                self._cancel_one(run, reason)
                count += 1
        return count

    def _shutdown(self, reason: str) -> None:
        """Stop starting runs and cancel every unfinished one."""
        self._closed = True
        self._paused = True
        self._cancel_every(reason)

    def _cancel(self, run: ScheduledRun, reason: str) -> bool:
        if run.done:
            return False
        paused, self._paused = self._paused, True
        try:
            self._cancel_one(run, reason)
            if run._state == "running":
                # the pipeline is stopping; what depends on it is cancelled now
                because = f"dependency {run.name!r} was cancelled"
                for dep in list(run._dependents):
                    if not dep.done:
                        self._finish(
                            dep,
                            "cancelled",
                            reason=because,
                            error=PipelineCancelled(because),
                            cascade="cancelled",
                        )
        finally:
            self._paused = paused
        self._dispatch()
        return True

    def _cancel_one(self, run: ScheduledRun, reason: str) -> None:
        if run._cancel_reason is None:
            run._cancel_reason = reason
        if run._state == "running":
            if run._handle is not None:
                run._handle.cancel(reason)
            # else: its task has not begun; it sees _cancel_reason when it does
        else:
            self._finish(
                run,
                "cancelled",
                reason=reason,
                error=PipelineCancelled(reason),
                cascade="cancelled",
            )

    # -- state machine --------------------------------------------------------------------

    def _set_state(
        self,
        run: ScheduledRun,
        old: ScheduledState | None,
        new: ScheduledState,
        reason: str | None,
    ) -> None:
        run._state = new
        if old is not None:
            self._counts[old] -= 1
        self._counts[new] += 1
        change = RunStateChanged(run.name, old, new, reason)
        run._history.append(change)
        run._publish(change)
        for observer in list(self._observers):
            try:
                observer(run, old, new)
            except Exception:
                log.exception("scheduler observer %r raised; ignored", observer)

    def _enqueue(self, run: ScheduledRun) -> None:
        run._entered = self.decisions
        score = run.priority * self.aging - run._entered if self.aging else run.priority
        self._readied += 1
        entry = (-score, self._readied, run)
        run._entry = entry
        heapq.heappush(self._needy if run.resources else self._plain, entry)
        self._set_state(run, run._state, "waiting", None)

    def _skip_reason(self, dep: ScheduledRun) -> str:
        if dep._state == "skipped":
            return f"dependency {dep.name!r} was skipped because {dep._root_cause}"
        verb = "failed" if dep._state == "failed" else "was cancelled"
        return f"dependency {dep.name!r} {verb}"

    def _finish(
        self,
        run: ScheduledRun,
        state: ScheduledState,
        *,
        reason: str | None = None,
        error: BaseException | None = None,
        result: RunResult | None = None,
        cascade: Literal["skipped", "cancelled"] = "skipped",
    ) -> None:
        """Put ``run`` in a final state, release what it held, and settle its dependents.

        Dependents of a run that did not succeed end ``cascade``: ``skipped`` (a failure,
        or a cancellation from inside the pipeline) or ``cancelled`` (an explicit
        :meth:`ScheduledRun.cancel`), transitively.
        """
        work: list[tuple[ScheduledRun, ScheduledState, str | None, BaseException | None]] = [
            (run, state, reason, error)
        ]
        queued = {run.name}
        for _ in range(len(self._runs) + 1):
            if not work:
                break
            current, new, why, err = work.pop()
            if current.done:
                continue
            old = current._state
            if old == "running":
                self._running -= 1
                for key, amount in current.resources.items():
                    self._in_use[key] -= amount
            if current is run:
                current.result = result
            current.error = err
            current.reason = why
            current.finished_at = time.monotonic()
            current._entry = None
            current._handle = current._prepared = current._data = None
            if new == "failed":
                current._root_cause = f"{current.name!r} failed"
            elif new == "cancelled":
                current._root_cause = f"{current.name!r} was cancelled"
            else:
                current._root_cause = next(
                    (
                        cause
                        for d in current.depends_on
                        if (cause := self._runs[d]._root_cause) is not None
                    ),
                    None,
                )
            self._set_state(current, old, new, why)
            self._unfinished -= 1
            for sub in current._subscribers:
                sub.finished = True
            current._subscribers.clear()
            if current._done is not None:
                current._done.set()
            if new == "succeeded":
                for dep in current._dependents:
                    dep._blockers.discard(current.name)
                    if not dep._blockers and dep._state == "pending":
                        self._enqueue(dep)
                continue
            for dep in current._dependents:
                if dep.done or dep.name in queued:
                    continue
                queued.add(dep.name)
                if cascade == "cancelled":
                    because = f"dependency {current.name!r} was cancelled"
                    work.append((dep, "cancelled", because, PipelineCancelled(because)))
                else:
                    because = self._skip_reason(current)
                    work.append((dep, "skipped", because, RunSkipped(f"{dep.name!r}: {because}")))
        if self._unfinished == 0 and self._idle is not None:
            self._idle.set()
            self._idle = None
        self._dispatch()

    # -- dispatching ----------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Start as many waiting runs as slots and resources allow, best first."""
        if self._tg is None or self._paused:
            return
        if self._dispatching:
            self._redispatch = True  # an observer submitted or cancelled: go round again
            return
        self._dispatching = True
        try:
            for _ in range(len(self._runs) + 1):
                self._redispatch = False
                self._dispatch_once()
                if not self._redispatch:
                    break
        finally:
            self._dispatching = False

    def _top(self, heap: list[_Entry]) -> _Entry | None:
        """The best live entry of ``heap`` (stale entries are dropped)."""
        while heap:
            entry = heap[0]
            if entry[2]._entry is entry:
                return entry
            heapq.heappop(heap)
        return None

    def _dispatch_once(self) -> None:
        free = self.concurrency - self._running
        if free <= 0:
            return
        plain, needy = self._plain, self._needy
        claimed = dict(self._in_use)
        capacity = self.capacity
        deferred: list[_Entry] = []
        saturated = False
        for _ in range(len(plain) + len(needy)):
            if free <= 0 or self._paused:
                break
            a = self._top(plain)
            b = None if saturated else self._top(needy)
            if a is None and b is None:
                break
            if b is None or (a is not None and a[:2] < b[:2]):
                assert a is not None
                heapq.heappop(plain)
                self._start(a[2])
                free -= 1
                continue
            heapq.heappop(needy)
            run = b[2]
            fits = all(claimed[k] + n <= capacity[k] for k, n in run.resources.items())
            for k, n in run.resources.items():
                claimed[k] += n  # held if it starts; reserved for it if it cannot
            if fits:
                self._start(run)
                free -= 1
            else:
                deferred.append(b)
                saturated = all(claimed[k] >= capacity[k] for k in capacity)
        for entry in deferred:
            if entry[2]._entry is entry:
                heapq.heappush(needy, entry)

    def _start(self, run: ScheduledRun) -> None:
        assert self._tg is not None
        self.decisions += 1
        self._running += 1
        for key, amount in run.resources.items():
            self._in_use[key] += amount
        run._entry = None
        run.started_at = time.monotonic()
        self._set_state(run, "waiting", "running", None)
        self._tg.start_soon(self._execute, run, name=f"headwater scheduled run {run.name}")

    # -- running --------------------------------------------------------------------------

    def _resolve(self, run: ScheduledRun) -> tuple[ResolvedPipeline, Any]:
        """The resolved pipeline of ``run``, with upstream outputs fed to from_run sources."""
        if run._prepared is not None:
            return run._prepared
        assert run._data is not None
        sources = dict(run._data["sources"])
        for sname, upstream in run._inputs.items():
            up = self._runs[upstream]
            output = up.output
            if isinstance(output, str | bytes | Mapping) or not isinstance(output, Iterable):
                shown = type(output).__name__ if output is not None else "nothing"
                raise SchedulerError(
                    f"run {run.name!r} reads the output of {upstream!r} "
                    f"(sources.{sname}.from_run), but the first sink of {upstream!r} returned "
                    f"{shown}, not a list of items; give {upstream!r} a sink such as 'collect'"
                )
            sources[sname] = {"action": "iterable", "params": {"items": output}}
        resolved, pm = prepare({**run._data, "sources": sources}, self.plugins)
        return resolved, pm

    async def _execute(self, run: ScheduledRun) -> None:
        """The task of one running run: start the pipeline, forward its events, settle."""
        if run._cancel_reason is not None:  # cancelled between the decision and now
            why = run._cancel_reason
            self._finish(run, "cancelled", reason=why, error=PipelineCancelled(why))
            return
        handle: RunHandle | None = None
        try:
            resolved, pm = self._resolve(run)
            handle = create_run(resolved, pm)
            run._handle = handle
            run._run_id = handle.run_id
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._forward, run, handle)
                result = await handle.start()
        except anyio.get_cancelled_exc_class():
            # Cancelled from outside (the scheduler's task group): the whole scheduler is
            # going down. Record the truth, whatever state the pipeline reported.
            self._shutdown("scheduler cancelled")
            why = run._cancel_reason or "scheduler cancelled"
            partial = None
            if handle is not None and handle.done:
                with anyio.CancelScope(shield=True):
                    partial = await handle.wait()
            self._finish(run, "cancelled", reason=why, error=PipelineCancelled(why), result=partial)
            raise
        except Exception as exc:
            self._finish(run, "failed", reason=f"could not start: {exc}", error=exc)
            return
        state: ScheduledState = result.state
        error: BaseException | None = None
        reason: str | None = None
        if state != "succeeded":
            try:
                result.raise_for_state()
            except HeadwaterError as exc:
                error = exc
            if state == "cancelled":
                reason = str(result.summary.get("cancel_reason") or error or "cancelled")
            else:
                reason = str(error).splitlines()[0] if error is not None else "failed"
        self._finish(run, state, reason=reason, error=error, result=result)

    async def _forward(self, run: ScheduledRun, handle: RunHandle) -> None:
        """Relay the pipeline's events to the run's subscribers (ends with Complete)."""
        async for event in handle.events():
            run._publish(event)
