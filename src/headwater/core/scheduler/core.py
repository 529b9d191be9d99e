"""The synchronous half of :class:`~headwater.Scheduler`: submissions, states, decisions.

:class:`SchedulerCore` keeps the runs and moves them between states: it accepts
submissions (all or none), starts waiting runs when slots and resources allow, settles
the dependents of every run that ends and cancels. It never awaits anything and imports
no anyio: starting a run means calling ``launch(run)``, which the async executor sets
(:class:`~.executor.Scheduler`) and a test may set to anything.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from ..errors import PipelineCancelled, ValidationIssue
from . import policy
from .model import (
    DEFAULT_AGING,
    STATES,
    ChangeObserver,
    RunRejected,
    RunRequest,
    RunStateChanged,
    ScheduledRun,
    ScheduledState,
    SchedulerError,
)
from .pipelines import Prepared, prepare_request

if TYPE_CHECKING:
    from ..api import PipelineLike
    from ..plugins import PluginManager
    from ..runtime import RunResult

__all__ = ["SchedulerCore"]

log = logging.getLogger("headwater.scheduler")


class SchedulerCore:
    """Runs by priority, with dependencies, resource slots and aging: the decisions.

    See :class:`~headwater.Scheduler` for the arguments. Runs start through
    ``self._launch`` (None: nothing starts yet).
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
        capacity = policy.check_settings(concurrency, resources, aging)
        self._slots = policy.Slots(concurrency, capacity)
        self._queue = policy.RunQueue(aging)
        self.plugins = plugins
        """The plugin manager pipelines are validated and run with (None: the default)."""
        self.decisions = 0
        """How many runs this scheduler has started (the clock of aging)."""
        self._observers: list[ChangeObserver] = [on_change] if on_change is not None else []
        self._runs: dict[str, ScheduledRun] = {}
        self._unfinished = 0
        self._counts: dict[ScheduledState, int] = dict.fromkeys(STATES, 0)
        self._launch: Callable[[ScheduledRun], None] | None = None
        self._closed = False
        self._paused = False
        self._dispatching = False
        self._redispatch = False

    @property
    def concurrency(self) -> int:
        """How many runs may be running at once."""
        return self._slots.concurrency

    @concurrency.setter
    def concurrency(self, value: int) -> None:
        self._slots.concurrency = value

    @property
    def capacity(self) -> dict[str, int]:
        """Units of each named resource."""
        return self._slots.capacity

    @property
    def aging(self) -> int | None:
        """Runs started per priority point gained while waiting (None: no aging)."""
        return self._queue.aging

    @aging.setter
    def aging(self, value: int | None) -> None:
        self._queue.aging = value

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
        prepared: dict[str, Prepared] = {}
        if not issues:
            graph_ok = True
            for req in batch:
                problems = policy.check_request(
                    req, known=self._runs, batch=names, capacity=self.capacity
                )
                graph_ok = graph_ok and not problems
                entry, pipeline_problems = prepare_request(req, self.plugins)
                issues.extend([*problems, *pipeline_problems])
                if entry is not None:
                    prepared[req.name] = entry
            if graph_ok:  # cycles are looked for once every dependency is known
                order, cycle_issues = policy.order_batch(names)
                issues.extend(cycle_issues)
        if issues:
            raise RunRejected(issues)

        created: dict[str, ScheduledRun] = {}
        paused, self._paused = self._paused, True
        try:
            for name in order:
                resolved, pm, data, inputs, first_sink = prepared[name]
                run = ScheduledRun(
                    self,
                    names[name],
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

    def _register(self, run: ScheduledRun) -> None:
        self._runs[run.name] = run
        self._unfinished += 1
        self._set_state(run, None, "pending", None)
        failed = policy.link_dependencies(run, self._runs)
        if failed is not None:
            self._finish(run, "skipped", reason=policy.skip_reason(failed))
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
        return self._slots.running

    @property
    def unfinished(self) -> int:
        """How many runs have not reached a final state."""
        return self._unfinished

    def counts_by_state(self) -> dict[ScheduledState, int]:
        """How many runs are in each state (every state is a key)."""
        return dict(self._counts)

    def resources_in_use(self) -> dict[str, int]:
        """Units of each resource held by running runs."""
        return dict(self._slots.in_use)

    def metrics(self) -> dict[str, Any]:
        """Figures for metrics snapshots (the ``schedulers`` entry; any thread may ask).

        ``queue_depth`` (runs ready and waiting), ``running``, ``runs_by_state`` (every
        state), ``concurrency``, ``resources_in_use`` and ``capacity``.
        """
        return {
            "queue_depth": self._counts["waiting"],
            "running": self._slots.running,
            "runs_by_state": dict(self._counts),
            "concurrency": self.concurrency,
            "resources_in_use": dict(self._slots.in_use),
            "capacity": dict(self.capacity),
        }

    def add_observer(self, observer: ChangeObserver) -> None:
        """Call ``observer(run, old_state, new_state)`` on every state change from now on."""
        self._observers.append(observer)

    def remove_observer(self, observer: ChangeObserver) -> None:
        """Stop calling ``observer``."""
        self._observers.remove(observer)

    # -- cancellation ---------------------------------------------------------------------

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
        self._queue.push(run, self.decisions)
        self._set_state(run, run._state, "waiting", None)

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
                self._slots.release(current)
            if current is run:
                current.result = result
            current.error = err
            current.reason = why
            current.finished_at = time.monotonic()
            current._entry = None
            current._handle = current._prepared = current._data = None
            current._root_cause = policy.root_cause(current, new, self._runs)
            self._set_state(current, old, new, why)
            self._unfinished -= 1
            for sub in current._subscribers:
                sub.finished = True
            current._subscribers.clear()
            if current._done is not None:
                current._done.set()
            if new == "succeeded":
                for dep in policy.released_by(current):
                    self._enqueue(dep)
                continue
            work.extend(policy.dependents_to_settle(current, cascade, queued))
        if self._unfinished == 0:
            self._on_idle()
        self._dispatch()

    def _on_idle(self) -> None:
        """Every run reached a final state."""

    # -- dispatching ----------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Start as many waiting runs as slots and resources allow, best first."""
        if self._launch is None or self._paused:
            return
        if self._dispatching:
            self._redispatch = True  # an observer submitted or cancelled: go round again
            return
        self._dispatching = True
        try:
            for _ in range(len(self._runs) + 1):
                self._redispatch = False
                self._queue.dispatch(self._slots, self._start, lambda: self._paused)
                if not self._redispatch:
                    break
        finally:
            self._dispatching = False

    def _start(self, run: ScheduledRun) -> None:
        launch = self._launch
        assert launch is not None
        self.decisions += 1
        self._slots.acquire(run)
        run._entry = None
        run.started_at = time.monotonic()
        self._set_state(run, "waiting", "running", None)
        launch(run)
