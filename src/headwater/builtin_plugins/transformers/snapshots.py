"""State snapshots of the stateful transformers: their state as JSON values.

Stateful steps snapshot their state into JSON values when a checkpoint marker passes
(``snapshot()``) and get it back when a run resumes (``restore(state)``). Items and
accumulators are Python values, so they are encoded faithfully: JSON scalars, lists and
dicts with sorted string keys stay as they are; anything else becomes a tagged object
``{"$hw": TYPE, "v": ...}`` (a tuple, a set, a dict with other keys or another key
order, bytes, a date...) that :func:`_decode_state` turns back into an equal value.
Times are kept as ages (:func:`_age`, :func:`_at`): monotonic clocks of two processes
have nothing in common.
"""

from __future__ import annotations

import math
from typing import Any

from headwater.core.statecodec import decode_state as _decode_state
from headwater.core.statecodec import encode_state as _encode_state

__all__ = ["_age", "_at", "_decode_state", "_encode_state", "_state_dict"]


def _state_dict(state: Any, step: str, *keys: str) -> dict[str, Any]:
    """Check that a snapshot given to ``restore`` is a dict with ``keys``."""
    if not isinstance(state, dict) or any(k not in state for k in keys):
        raise ValueError(
            f"{step}: cannot restore from the checkpointed state {state!r}: expected an "
            f"object with {', '.join(keys)}"
        )
    return state


def _age(now: float, when: float) -> float | None:
    """Seconds from ``when`` to ``now`` (None for infinities, which JSON cannot hold)."""
    return None if math.isinf(when) else now - when


def _at(now: float, age: float | None, default: float) -> float:
    """The inverse of :func:`_age` on the clock of this process."""
    return default if age is None else now - float(age)
