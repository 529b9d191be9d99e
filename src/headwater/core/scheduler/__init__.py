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

The package has four layers:

- :mod:`.model`: states, requests, scheduled runs, events and errors;
- :mod:`.policy`: the decisions as plain synchronous functions and classes (request
  checks, the dependency DAG and its cycles, the settling of dependents, slots and
  resources, the queue with aging), testable without an event loop;
- :mod:`.core` (with :mod:`.pipelines`, a run's pipeline): the synchronous state machine
  that applies the policy to the runs;
- :mod:`.executor`: :class:`Scheduler`, which runs them in an anyio task group.
"""

from __future__ import annotations

from .executor import Scheduler
from .model import (
    DEFAULT_AGING,
    FINAL_STATES,
    STATES,
    ChangeObserver,
    RunCreator,
    RunEvent,
    RunRejected,
    RunRequest,
    RunSkipped,
    RunStateChanged,
    ScheduledRun,
    ScheduledState,
    SchedulerError,
)

__all__ = [
    "DEFAULT_AGING",
    "FINAL_STATES",
    "STATES",
    "ChangeObserver",
    "RunCreator",
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
