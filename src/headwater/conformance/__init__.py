"""The conformance kit: standard checks any registered component should pass.

:func:`check_component` runs, on one component, the checks that apply to its kind and the
capabilities it claims, each in a private plugin manager (the component under test plus
small probe components), and returns one :class:`CheckResult` per check:

``params_schema`` (every kind)
    The JSON Schema of the params model is a valid schema: checked against its
    metaschema when the optional ``jsonschema`` package is installed, else structurally
    (an object schema, well-formed ``properties`` / ``required`` / ``$defs``, known
    ``type`` names, resolvable local ``$ref`` s). headwater does not depend on
    ``jsonschema``.
``cancellation`` (actions)
    Cancelled after its first item (or after a short wait when none comes), the run ends
    promptly and the action's generator is closed, so its ``finally`` blocks ran. n/a for
    actions that are plain functions or coroutines (one chunk, nothing to close).
``progress`` (actions claiming ``progress``)
    The action reports at least one progress event.
``timeout`` (actions)
    A run with ``timeouts: {total: ...}`` ends with :class:`~headwater.PipelineTimeout`
    promptly (skipped when the stream ends before the timeout).
``resume`` (actions claiming ``resumable``)
    With ``checkpoint: {store: memory, every_items: 1}``, a run stopped after a few items
    and then resumed loses no item of the full stream, and commits a position.
``checkpoint_ack`` (sinks with ``commit_checkpoint`` or declaring transactional delivery)
    The sink's ``commit_checkpoint`` is called with the checkpoints of a checkpointed run,
    and its ``load_checkpoint`` (if it has one) returns the last committed checkpoint.

Checks that need to run the component use the ``params`` given, or else the defaults of
its params model; they are skipped ("needs params") when a required param has no default.
Every run is bounded in items and time.

Modules: :mod:`.results` (:class:`CheckResult`, :data:`CHECKS`), :mod:`.params` (params
defaults and the ``params_schema`` check), :mod:`.probes` (running a component among probe
components), :mod:`.checks` (the checks that run it) and :mod:`.api` (the entry points
re-exported here).
"""

from __future__ import annotations

from .api import assert_conforms, check_all, check_component, check_component_async
from .checks import FIRST_ITEM_WAIT as FIRST_ITEM_WAIT
from .checks import OBSERVE_ITEMS as OBSERVE_ITEMS
from .checks import OBSERVE_SECONDS as OBSERVE_SECONDS
from .checks import RESUME_AFTER as RESUME_AFTER
from .checks import TIMEOUT_TOTAL as TIMEOUT_TOTAL
from .params import _structural_problems as _structural_problems
from .probes import PROBE_ITEMS as PROBE_ITEMS
from .probes import STOP_GRACE as STOP_GRACE
from .results import CHECKS, CheckResult, ConformanceError
from .results import Status as Status

__all__ = [
    "CHECKS",
    "CheckResult",
    "ConformanceError",
    "assert_conforms",
    "check_all",
    "check_component",
    "check_component_async",
]
