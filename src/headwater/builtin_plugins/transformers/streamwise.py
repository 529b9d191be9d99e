"""Transformers acting on the stream rather than on each item by itself: ``take`` and
``skip`` (the position in the stream), ``dedupe`` (the items seen before) and
``throttle`` (time).

``take`` and ``skip`` are ``batch`` steps slicing whole lists; ``dedupe`` is a filter
remembering recent keys; ``throttle`` is a ``stream`` step, since it has to sleep.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import anyio
from pydantic import BaseModel, Field

import headwater
from headwater.core.context import StreamContext

from .fields import _STRICT, FieldPath, field_getter
from .snapshots import _decode_state, _encode_state, _state_dict

# ---------------------------------------------------------------------------------------
# take / skip
# ---------------------------------------------------------------------------------------


class TakeParams(BaseModel):
    """Params of ``take``."""

    model_config = _STRICT

    count: int = Field(ge=0, description="How many items to pass on before stopping.")


class _Take:
    """Passes the first ``count`` items, then reports ``exhausted`` to stop upstream."""

    def __init__(self, count: int) -> None:
        self.left = count
        self.exhausted = count <= 0

    def __call__(self, batch: list[Any]) -> list[Any]:
        """The part of ``batch`` still wanted."""
        left = self.left
        if len(batch) < left:
            self.left = left - len(batch)
            return batch
        self.left = 0
        self.exhausted = True
        return batch[:left]

    def snapshot(self) -> dict[str, int]:
        """How many items are still wanted, for a checkpoint."""
        return {"left": self.left}

    def restore(self, state: Any) -> None:
        """Continue from :meth:`snapshot`."""
        self.left = int(_state_dict(state, "take", "left")["left"])
        self.exhausted = self.left <= 0


@headwater.transformer(
    "take",
    kind="batch",
    params=TakeParams,
    output="the first count items",
    capabilities=("stateful",),
    sample_params={"count": 2},
    sample_input=[1, 2, 3],
)
def take_transformer(params: TakeParams) -> _Take:
    """Pass the first ``count`` items on, then stop the stages upstream (even endless ones)."""
    return _Take(params.count)


class SkipParams(BaseModel):
    """Params of ``skip``."""

    model_config = _STRICT

    count: int = Field(ge=0, description="How many leading items to drop.")


class _Skip:
    """Drops the first ``count`` items."""

    def __init__(self, count: int) -> None:
        self.left = count

    def __call__(self, batch: list[Any]) -> list[Any]:
        """``batch`` without the items still to be skipped."""
        left = self.left
        if not left:
            return batch
        if len(batch) <= left:
            self.left = left - len(batch)
            return []
        self.left = 0
        return batch[left:]

    def snapshot(self) -> dict[str, int]:
        """How many items are still to be dropped, for a checkpoint."""
        return {"left": self.left}

    def restore(self, state: Any) -> None:
        """Continue from :meth:`snapshot`."""
        self.left = int(_state_dict(state, "skip", "left")["left"])


@headwater.transformer(
    "skip",
    kind="batch",
    params=SkipParams,
    output="every item after the first count",
    capabilities=("stateful",),
    sample_params={"count": 1},
    sample_input=[1, 2, 3],
)
def skip_transformer(params: SkipParams) -> _Skip:
    """Drop the first ``count`` items and pass the rest on."""
    return _Skip(params.count)


# ---------------------------------------------------------------------------------------
# dedupe
# ---------------------------------------------------------------------------------------


_MAP_TAG = object()
_LIST_TAG = object()
_TUPLE_TAG = object()


def _freeze(value: Any) -> Any:
    """A hashable stand-in for ``value`` (dicts and lists become tagged tuples)."""
    try:
        hash(value)
    except TypeError:
        pass
    else:
        return value
    if isinstance(value, Mapping):
        return (_MAP_TAG, frozenset((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return (_LIST_TAG, tuple(_freeze(v) for v in value))
    if isinstance(value, tuple):
        return (_TUPLE_TAG, tuple(_freeze(v) for v in value))
    if isinstance(value, set | frozenset):
        return frozenset(_freeze(v) for v in value)
    raise TypeError(f"cannot compare items of type {type(value).__name__}: not hashable")


def _thaw(key: Any) -> Any:
    """The value :func:`_freeze` made ``key`` from (``_freeze(_thaw(k)) == k``)."""
    if type(key) is tuple and len(key) == 2:
        tag, inner = key
        if tag is _MAP_TAG:
            return {k: _thaw(v) for k, v in inner}
        if tag is _LIST_TAG:
            return [_thaw(v) for v in inner]
        if tag is _TUPLE_TAG:
            return tuple(_thaw(v) for v in inner)
    return key


class DedupeParams(BaseModel):
    """Params of ``dedupe``."""

    model_config = _STRICT

    key: FieldPath | None = Field(
        None, description="Compare items by this field; by default the whole item is compared."
    )
    max_keys: int = Field(
        100_000,
        ge=1,
        le=100_000_000,
        description="How many keys to remember; beyond it the least recently seen is "
        "forgotten (so it may pass again). Bounds memory.",
    )


class _Dedupe:
    """Filter remembering the ``max_keys`` most recently seen keys (LRU)."""

    def __init__(self, get: Callable[[Any], Any] | None, max_keys: int) -> None:
        self.get = get
        self.max_keys = max_keys
        self.seen: OrderedDict[Any, None] = OrderedDict()

    def __call__(self, item: Any) -> bool:
        """True the first time a key is seen (or once it was forgotten)."""
        key = item if self.get is None else self.get(item)
        try:
            hash(key)
        except TypeError:
            key = _freeze(key)
        seen = self.seen
        if key in seen:
            seen.move_to_end(key)
            return False
        seen[key] = None
        if len(seen) > self.max_keys:
            seen.popitem(last=False)
        return True

    def snapshot(self) -> dict[str, Any]:
        """The remembered keys, least recently seen first, for a checkpoint."""
        return {"keys": [_encode_state(_thaw(key)) for key in self.seen]}

    def restore(self, state: Any) -> None:
        """Continue from :meth:`snapshot` (keys beyond ``max_keys`` are forgotten)."""
        keys = _state_dict(state, "dedupe", "keys")["keys"]
        seen: OrderedDict[Any, None] = OrderedDict()
        for encoded in keys[-self.max_keys :]:
            seen[_freeze(_decode_state(encoded))] = None
        self.seen = seen


@headwater.transformer(
    "dedupe",
    kind="filter",
    params=DedupeParams,
    factory=True,
    output="items whose key was not seen recently",
    capabilities=("stateful",),
)
def dedupe_transformer(params: DedupeParams) -> _Dedupe:
    """Drop items whose key (a field, or the whole item) was already seen.

    Memory is bounded: only the ``max_keys`` most recently seen keys are remembered
    (seeing a key again refreshes it); a forgotten key passes again. Dicts and lists are
    compared by value.
    """
    return _Dedupe(field_getter(params.key) if params.key else None, params.max_keys)


# ---------------------------------------------------------------------------------------
# throttle
# ---------------------------------------------------------------------------------------


class ThrottleParams(BaseModel):
    """Params of ``throttle``."""

    model_config = _STRICT

    rate: float = Field(gt=0, description="Items per second, on average.")
    burst: int = Field(
        1,
        ge=1,
        le=1_000_000,
        description="How many items may pass at once after a quiet period (bucket size).",
    )


@headwater.transformer(
    "throttle",
    kind="stream",
    params=ThrottleParams,
    output="the same items, at most rate per second",
)
async def throttle_transformer(
    items: AsyncIterator[Any], params: ThrottleParams, ctx: StreamContext
) -> AsyncIterator[Any]:
    """Pass items on at most ``rate`` per second (a token bucket of ``burst`` items).

    Waiting applies backpressure upstream: nothing is dropped.
    """
    interval = 1.0 / params.rate
    allowance = (params.burst - 1) * interval
    due = -math.inf  # theoretical time of the next item (GCRA)
    async for item in items:
        now = anyio.current_time()
        if due < now:
            due = now
        wait = due - allowance - now
        if wait > 0:
            await anyio.sleep(wait)
        due += interval
        yield item
