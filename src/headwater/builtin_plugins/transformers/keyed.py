"""Keyed state: ``stateful_map``.

``fn(state, item) -> (state, output)`` runs with the state of the item's key (``by``),
starting from a copy of ``initial``; the new state is kept for the key's next item and
``output`` is emitted (None emits nothing). State is bounded: a key unseen for ``ttl``
seconds is forgotten, and beyond ``max_keys`` the least recently used key is (both
counted in the stage's ``evicted`` figure). In a checkpointed run every key's state goes
into the checkpoint as JSON (see :mod:`.snapshots`; never pickle): a state that cannot
be is refused with an error naming the key and the type.
"""

from __future__ import annotations

import copy
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

import headwater
from headwater.core.types import CallableRef

from .fields import FieldPath, field_getter
from .snapshots import _decode_state, _encode_state, _state_dict

__all__ = ["StatefulMapParams", "stateful_map_transformer"]

_MISSING = object()


class StatefulMapParams(BaseModel):
    """Params of ``stateful_map``."""

    model_config = ConfigDict(extra="forbid", defer_build=True, arbitrary_types_allowed=True)

    fn: CallableRef = Field(
        description="Function fn(state, item) -> (new state, output), 'module:function' (or "
        "a callable when building the pipeline in Python); output None emits nothing. A "
        "name must be allowed by the operator's sandbox policy, as for map's fn."
    )
    by: FieldPath | None = Field(
        None, description="Keep one state per value of this field (without it: one state)."
    )
    initial: Any = Field(
        None, description="The state of a key's first item (copied for every key)."
    )
    ttl: float | None = Field(
        None,
        gt=0,
        description="Forget a key whose last item came this many seconds ago (processing "
        "time); its next item starts from initial again.",
    )
    max_keys: int | None = Field(
        None,
        ge=1,
        le=100_000_000,
        description="Keep at most this many keys: beyond it the least recently used one is "
        "forgotten.",
    )


class _KeyedMap:
    """The per-item function of ``stateful_map``: states in least recently used order."""

    def __init__(self, params: StatefulMapParams) -> None:
        self.fn: Callable[[Any, Any], Any] = params.fn
        self.get_key = field_getter(params.by) if params.by is not None else None
        self.initial = params.initial
        self.ttl = params.ttl
        self.max_keys = params.max_keys
        self.states: OrderedDict[Any, Any] = OrderedDict()
        """key -> state (with ``ttl``: ``(state, last seen)``), least recently used first."""
        self.evicted = 0

    def __call__(self, item: Any) -> tuple[Any, ...]:
        """Run ``fn`` with the state of the item's key; keep the new state."""
        key = None if self.get_key is None else self.get_key(item)
        states = self.states
        ttl = self.ttl
        now = 0.0
        if ttl is not None:
            now = time.monotonic()
            self._expire(now - ttl)
        entry = states.get(key, _MISSING)
        if entry is _MISSING:
            state = copy.deepcopy(self.initial)
        else:
            state = entry if ttl is None else entry[0]
        result = self.fn(state, item)
        if type(result) is not tuple or len(result) != 2:
            raise TypeError(
                f"stateful_map: fn must return a pair (new state, output), got {result!r}"
            )
        states[key] = result[0] if ttl is None else (result[0], now)
        states.move_to_end(key)
        if self.max_keys is not None and len(states) > self.max_keys:
            states.popitem(last=False)
            self.evicted += 1
        return () if result[1] is None else (result[1],)

    def _expire(self, cutoff: float) -> None:
        """Forget the keys last seen before ``cutoff`` (the oldest come first)."""
        states = self.states
        while states:
            _, seen = next(iter(states.values()))
            if seen >= cutoff:
                return
            states.popitem(last=False)
            self.evicted += 1

    def take_evicted(self) -> int:
        """Keys forgotten since the last call."""
        n, self.evicted = self.evicted, 0
        return n

    def snapshot(self) -> dict[str, Any]:
        """Every key's state (JSON), least recently used first, with ``ttl`` the seconds
        since its last item."""
        now = time.monotonic()
        keys = []
        for key, entry in self.states.items():
            state, age = (entry, None) if self.ttl is None else (entry[0], now - entry[1])
            try:
                keys.append([_encode_state(key), _encode_state(state), age])
            except TypeError as exc:
                raise TypeError(
                    f"stateful_map: the state of key {key!r} cannot be checkpointed: {exc}"
                ) from None
        return {"keys": keys}

    def restore(self, state: Any) -> None:
        """Continue from :meth:`snapshot`."""
        now = time.monotonic()
        self.states = OrderedDict()
        for raw_key, raw_state, age in _state_dict(state, "stateful_map", "keys")["keys"]:
            value = _decode_state(raw_state)
            key = _decode_state(raw_key)
            if self.ttl is None:
                self.states[key] = value
            else:
                self.states[key] = (value, now - float(age or 0.0))


@headwater.transformer(
    "stateful_map",
    kind="flat_map",
    params=StatefulMapParams,
    factory=True,
    output="what fn returns as output for each item (nothing for None)",
    capabilities=("stateful",),
)
def stateful_map_transformer(params: StatefulMapParams) -> _KeyedMap:
    """Map items with a state per key: ``fn(state, item) -> (new state, output)``.

    Each key (the ``by`` field; one state without it) starts from a copy of ``initial``.
    ``output`` is emitted, None emits nothing. ``ttl`` forgets keys gone quiet and
    ``max_keys`` the least recently used keys beyond the limit (counted as ``evicted``).
    In a checkpointed run the states are checkpointed as JSON values; a state that is not
    one (nor a tuple, set, bytes, Decimal or datetime) fails the run, naming its key.
    """
    return _KeyedMap(params)
