"""The pipeline runtime: stages as anyio tasks joined by bounded batching channels.

Topology of a run::

    source(s) --> [compose] --> ch --> stage --> ch --> ... --> fan-out --> sink tasks

* A *stage* is either a fused run of item-wise steps (one loop per batch, see
  :mod:`headwater.core.fusion`) or one ``stream`` transformer.
* Every channel is a :class:`~headwater.core.channels.BatchChannel` with a bound in
  items, so memory stays flat however long the stream and a slow sink slows the source.
* A stage that stops reading (``take`` satisfied, ``zip`` shortest input ended) closes
  its input: the producers upstream are cancelled and clean up, and the run goes on.
* Any failure (with policy ``fail``), a timeout, or :meth:`RunHandle.cancel` cancels the
  run's scope; every generator is ``aclose``-d and every sink ``close``-d (shielded).

Modules:

* :mod:`.handle`: what callers hold: :class:`RunHandle`, :class:`RunResult`,
  :class:`StageStats`;
* :mod:`.run`: the run itself (:class:`_Run`), :func:`create_run`, :func:`execute`;
* :mod:`.sources`: sources and their composition (merge, concat, zip);
* :mod:`.pumps`: generators' output moved into channels (async, and sync in a thread);
* :mod:`.stages`: fused item-wise steps and ``stream`` transformers;
* :mod:`.sinks`: sink instances and tasks, the fan-out, the dead-letter sink;
* :mod:`.checkpointing`: checkpoint and resume wiring (load, markers, states, commit);
* :mod:`.timeouts`: the watchdog of the ``first_item``, ``idle`` and ``total`` timeouts;
* :mod:`.run_metrics`: the run's clock and latency probes, its summary, live figures;
* :mod:`.tasks`: how the tasks end (the internal stop signal, the producer wrapper).
"""

from __future__ import annotations

from .handle import RunHandle, RunResult, StageStats
from .run import create_run, execute
from .run_metrics import PROBE_INTERVAL as PROBE_INTERVAL
from .tasks import CLEANUP_GRACE as CLEANUP_GRACE

__all__ = ["RunHandle", "RunResult", "StageStats", "create_run", "execute"]
