"""The scheduling policy as plain synchronous code: no event loop, no I/O, no anyio.

- :func:`check_settings` and :func:`check_request`: what a scheduler and a submission
  must satisfy (capacities, names, dependencies, resource needs);
- :func:`order_batch`: the dependency DAG of a batch of submissions in topological
  order, or its cycles as problems;
- :func:`link_dependencies`, :func:`released_by`, :func:`dependents_to_settle`,
  :func:`root_cause` and :func:`skip_reason`: how the end of a run settles the runs that
  depend on it (started once all succeeded; skipped or cancelled, transitively, when
  one did not);
- :class:`Slots`: the concurrency limit and the named resource units in use;
- :class:`RunQueue`: the waiting runs by priority with aging, and the choice of which to
  start given the free slots and resources (with backfill that never takes a resource a
  higher-priority run waits for).

Runs are :class:`~.model.ScheduledRun` objects; the functions read and update their
scheduling fields (``_state``, ``_blockers``, ``_dependents``, ``_entry``...).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Literal

from ..errors import PipelineCancelled, ValidationIssue
from .model import QueueEntry, RunRequest, RunSkipped, ScheduledRun, ScheduledState, SchedulerError

__all__ = [
    "RunQueue",
    "Slots",
    "check_request",
    "check_settings",
    "dependents_to_settle",
    "is_int",
    "link_dependencies",
    "order_batch",
    "released_by",
    "root_cause",
    "skip_reason",
]


def is_int(value: object) -> bool:
    """True for an ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


# -- submissions --------------------------------------------------------------------------


def check_settings(
    concurrency: int, resources: Mapping[str, int] | None, aging: int | None
) -> dict[str, int]:
    """Check a scheduler's settings; return its resource capacities.

    Raises :class:`SchedulerError` for the first setting that is not valid.
    """
    if not is_int(concurrency) or concurrency < 1:
        raise SchedulerError(f"concurrency must be a positive integer, got {concurrency!r}")
    if aging is not None and (not is_int(aging) or aging < 1):
        raise SchedulerError(f"aging must be a positive integer or None, got {aging!r}")
    capacity = dict(resources or {})
    for key, value in capacity.items():
        if not isinstance(key, str) or not key:
            raise SchedulerError(f"resource names must be non-empty strings, got {key!r}")
        if not is_int(value) or value < 1:
            raise SchedulerError(
                f"capacity of resource {key!r} must be a positive integer, got {value!r}"
            )
    return capacity


def check_request(
    req: RunRequest,
    *,
    known: Collection[str],
    batch: Mapping[str, RunRequest],
    capacity: Mapping[str, int],
) -> list[ValidationIssue]:
    """The problems of one request's priority, dependencies and resource needs.

    ``known`` holds the runs submitted before, ``batch`` the requests submitted with it
    (by name) and ``capacity`` the scheduler's resources. Cycles are looked for
    separately (:func:`order_batch`), once every dependency is known to exist.
    """
    name = req.name
    issues: list[ValidationIssue] = []
    if not is_int(req.priority):
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
                issues.append(ValidationIssue(path, f"dependency cycle: {name} -> {name} (itself)"))
            elif not isinstance(dep, str) or (dep not in known and dep not in batch):
                choices = sorted({*known, *batch} - {name})
                hint = f"; known runs: {', '.join(choices)}" if choices else ""
                issues.append(ValidationIssue(path, f"unknown run {dep!r}{hint}"))
    needs = req.resources or {}
    if not isinstance(needs, Mapping):
        issues.append(ValidationIssue(f"{name}.resources", f"must be a mapping, got {needs!r}"))
        return issues
    for key, amount in needs.items():
        path = f"{name}.resources.{key}"
        if key not in capacity:
            have = ", ".join(sorted(capacity)) or "none"
            issues.append(
                ValidationIssue(path, f"unknown resource {key!r} (the scheduler has: {have})")
            )
        elif not is_int(amount) or amount < 0:
            issues.append(ValidationIssue(path, f"must be a non-negative integer, got {amount!r}"))
        elif amount > capacity[key]:
            issues.append(
                ValidationIssue(
                    path,
                    f"needs {amount} {key!r} but the scheduler has only "
                    f"{capacity[key]}: it could never start",
                )
            )
    return issues


def order_batch(batch: Mapping[str, RunRequest]) -> tuple[list[str], list[ValidationIssue]]:
    """Topological order of a batch (dependencies first), or the cycles in it.

    Dependencies outside the batch are ignored (they were submitted before). Each cycle
    is reported once, at the ``depends_on`` entry of its first run that closes it.
    """
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
            dep_index = list(batch[first].depends_on).index(cycle[1] if len(cycle) > 1 else first)
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


# -- dependencies -------------------------------------------------------------------------


def link_dependencies(run: ScheduledRun, runs: Mapping[str, ScheduledRun]) -> ScheduledRun | None:
    """Record what a new run waits for: its unfinished dependencies become its blockers
    (and it one of their dependents).

    Returns the first dependency that already ended without success (the run is to be
    skipped then), or None.
    """
    failed: ScheduledRun | None = None
    for dep_name in run.depends_on:
        dep = runs[dep_name]
        if dep._state == "succeeded":
            continue
        if dep.done:
            failed = failed or dep
            continue
        run._blockers.add(dep_name)
        dep._dependents.append(run)
    return failed


def released_by(run: ScheduledRun) -> Iterator[ScheduledRun]:
    """The dependents of ``run`` (which succeeded) that wait for nothing else any more.

    Lazy: each dependent is looked at once the previous one was dealt with.
    """
    for dep in run._dependents:
        dep._blockers.discard(run.name)
        if not dep._blockers and dep._state == "pending":
            yield dep


def skip_reason(dep: ScheduledRun) -> str:
    """Why the dependents of ``dep`` (which did not succeed) are skipped."""
    if dep._state == "skipped":
        return f"dependency {dep.name!r} was skipped because {dep._root_cause}"
    verb = "failed" if dep._state == "failed" else "was cancelled"
    return f"dependency {dep.name!r} {verb}"


def root_cause(
    run: ScheduledRun, state: ScheduledState, runs: Mapping[str, ScheduledRun]
) -> str | None:
    """What made ``run`` end in ``state`` without succeeding, as its dependents will say
    it: the run itself (``'a' failed``) or the root cause of a dependency."""
    if state == "failed":
        return f"{run.name!r} failed"
    if state == "cancelled":
        return f"{run.name!r} was cancelled"
    return next(
        (cause for d in run.depends_on if (cause := runs[d]._root_cause) is not None),
        None,
    )


Settlement = tuple[ScheduledRun, ScheduledState, str, BaseException]
"""A dependent to end: ``(run, final state, reason, error)``."""


def dependents_to_settle(
    run: ScheduledRun, cascade: Literal["skipped", "cancelled"], queued: set[str]
) -> list[Settlement]:
    """How the unfinished dependents of ``run`` (which did not succeed) end: ``cascade``
    (skipped, or cancelled after an explicit cancel), each once (``queued`` records
    them)."""
    out: list[Settlement] = []
    for dep in run._dependents:
        if dep.done or dep.name in queued:
            continue
        queued.add(dep.name)
        if cascade == "cancelled":
            because = f"dependency {run.name!r} was cancelled"
            out.append((dep, "cancelled", because, PipelineCancelled(because)))
        else:
            because = skip_reason(run)
            out.append((dep, "skipped", because, RunSkipped(f"{dep.name!r}: {because}")))
    return out


# -- slots and the queue ------------------------------------------------------------------


class Slots:
    """The concurrency limit and the units of named resources held by running runs."""

    def __init__(self, concurrency: int, capacity: dict[str, int]) -> None:
        self.concurrency = concurrency
        """How many runs may be running at once."""
        self.capacity = capacity
        """Units of each named resource."""
        self.in_use: dict[str, int] = dict.fromkeys(capacity, 0)
        """Units of each resource held by running runs."""
        self.running = 0
        """How many runs are running."""

    @property
    def free(self) -> int:
        """Runs that may start now as far as the concurrency limit goes."""
        return self.concurrency - self.running

    def acquire(self, run: ScheduledRun) -> None:
        """``run`` starts: it takes a slot and its resources."""
        self.running += 1
        for key, amount in run.resources.items():
            self.in_use[key] += amount

    def release(self, run: ScheduledRun) -> None:
        """``run`` (which was running) ended: it gives back its slot and resources."""
        self.running -= 1
        for key, amount in run.resources.items():
            self.in_use[key] -= amount


class RunQueue:
    """The waiting runs, best first: priority with aging, then readiness order.

    A waiting run gains one priority point per ``aging`` runs started while it waits.
    Since every waiting run ages at the same rate, ordering by the effective priority
    ``priority + started_since / aging`` is ordering by the constant
    ``priority * aging - started_before``, so the queue is a plain heap. Runs that need
    resources wait in a heap of their own, so that a run that cannot start does not hide
    those behind it.

    A run's entry is live while ``run._entry`` is that entry; clearing ``run._entry``
    removes the run (the stale entry is dropped when it reaches the top).
    """

    def __init__(self, aging: int | None) -> None:
        self.aging = aging
        self._plain: list[QueueEntry] = []
        self._needy: list[QueueEntry] = []
        self._readied = 0

    def push(self, run: ScheduledRun, clock: int) -> None:
        """Queue ``run``, which became ready when ``clock`` runs had been started."""
        run._entered = clock
        score = run.priority * self.aging - clock if self.aging else run.priority
        self._readied += 1
        entry = (-score, self._readied, run)
        run._entry = entry
        heapq.heappush(self._needy if run.resources else self._plain, entry)

    @staticmethod
    def _top(heap: list[QueueEntry]) -> QueueEntry | None:
        """The best live entry of ``heap`` (stale entries are dropped)."""
        while heap:
            entry = heap[0]
            if entry[2]._entry is entry:
                return entry
            heapq.heappop(heap)
        return None

    def dispatch(
        self,
        slots: Slots,
        start: Callable[[ScheduledRun], None],
        stopped: Callable[[], bool],
    ) -> None:
        """Call ``start(run)`` for the best waiting runs that the free slots and
        resources allow, best first, until ``stopped()``.

        A run that needs resources may start ahead of a blocked higher-priority one
        ("backfill") only with what is left after the claims of every higher-priority
        waiting run, so it never takes a resource that a better run is waiting for.
        ``start`` must take the run's slot and resources (:meth:`Slots.acquire`) and
        clear its entry.
        """
        free = slots.free
        if free <= 0:
            return
        plain, needy = self._plain, self._needy
        claimed = dict(slots.in_use)
        capacity = slots.capacity
        deferred: list[QueueEntry] = []
        saturated = False
        for _ in range(len(plain) + len(needy)):
            if free <= 0 or stopped():
                break
            a = self._top(plain)
            b = None if saturated else self._top(needy)
            if a is None and b is None:
                break
            if b is None or (a is not None and a[:2] < b[:2]):
                assert a is not None
                heapq.heappop(plain)
                start(a[2])
                free -= 1
                continue
            heapq.heappop(needy)
            run = b[2]
            fits = all(claimed[k] + n <= capacity[k] for k, n in run.resources.items())
            for k, n in run.resources.items():
                claimed[k] += n  # held if it starts; reserved for it if it cannot
            if fits:
                start(run)
                free -= 1
            else:
                deferred.append(b)
                saturated = all(claimed[k] >= capacity[k] for k in capacity)
        for entry in deferred:
            if entry[2]._entry is entry:
                heapq.heappush(needy, entry)
