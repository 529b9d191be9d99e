"""Built-in transformers.

Item-wise steps (``map``, ``filter``, ``select``, ``json.*``, ``regex``, ``flatten``,
``dedupe``, ``reduce``, ``aggregate``) are factories returning a per-item function, so the
runtime fuses them into one loop per batch and an error names the failing item's position.
``reduce`` and ``aggregate`` are ``flat_map`` steps whose per-item function also has a
``flush()``: each item is folded individually (exact positions, and ``on_error: skip``
skips just the bad item), the result is emitted at the end of the stream.

``batch``, ``window``, ``take`` and ``skip`` are ``batch`` steps working on whole lists:
slicing instead of per-item calls. The time-driven ones (``batch`` with ``seconds``,
``window`` with ``seconds``) expose ``tick_interval`` and ``tick()`` so that the runtime
emits due lists even while no input arrives. ``throttle`` is a ``stream`` step, since it
has to sleep.

The stateful steps (``batch``, ``window``, ``reduce``, ``aggregate``, ``dedupe``, ``take``,
``skip``) have ``snapshot()`` and ``restore(state)``: in a checkpointed run their state
goes into every checkpoint as a JSON value (items encoded faithfully, times as ages) and
comes back when the run resumes.

Fields of dict items are named by a *path*: a key, or a dotted path such as ``user.id``
reaching into nested mappings (an integer part indexes a list: ``tags.0``). A key that
itself contains dots is matched first.

This package is the ``headwater.transformers`` plugin; the steps live in one module per
family:

- :mod:`.itemwise`: ``map``, ``filter``, ``select``, ``flatten``;
- :mod:`.parsing`: ``json.decode``, ``json.encode``, ``regex``;
- :mod:`.batching`: ``batch``, ``window`` (count and arrival-time windows);
- :mod:`.windows` and :mod:`.window_aggs`: keyed and event-time windows (``window`` with
  ``time: event``, ``by``, ``agg`` or ``type: session``), their watermark and aggregates;
- :mod:`.aggregation`: ``reduce``, ``aggregate``;
- :mod:`.streamwise`: ``take``, ``skip``, ``dedupe``, ``throttle``;
- :mod:`.keyed`: ``stateful_map`` (a state per key, bounded by ttl and max_keys);

with :mod:`.fields` (field paths) and :mod:`.snapshots` (state as JSON values) shared.
"""

from __future__ import annotations

from typing import Any

import headwater

from .aggregation import AggregateOp as AggregateOp
from .aggregation import AggregateParams, ReduceParams, aggregate_transformer, reduce_transformer
from .batching import BatchParams, WindowParams, batch_transformer, window_transformer
from .fields import FieldPath as FieldPath
from .fields import MissingField, field_getter
from .itemwise import (
    CallableParams,
    FlattenParams,
    SelectParams,
    filter_transformer,
    flatten_transformer,
    map_transformer,
    select_transformer,
)
from .keyed import StatefulMapParams, stateful_map_transformer
from .parsing import (
    JsonEncodeParams,
    RegexParams,
    json_decode_transformer,
    json_encode_transformer,
    regex_transformer,
)
from .snapshots import _decode_state as _decode_state
from .snapshots import _encode_state as _encode_state
from .streamwise import (
    DedupeParams,
    SkipParams,
    TakeParams,
    ThrottleParams,
    dedupe_transformer,
    skip_transformer,
    take_transformer,
    throttle_transformer,
)

__all__ = [
    "AggregateParams",
    "BatchParams",
    "CallableParams",
    "DedupeParams",
    "FlattenParams",
    "JsonEncodeParams",
    "MissingField",
    "ReduceParams",
    "RegexParams",
    "SelectParams",
    "SkipParams",
    "StatefulMapParams",
    "TakeParams",
    "ThrottleParams",
    "WindowParams",
    "field_getter",
    "register_transformers",
]

_ALL = (
    map_transformer,
    filter_transformer,
    select_transformer,
    json_decode_transformer,
    json_encode_transformer,
    regex_transformer,
    batch_transformer,
    window_transformer,
    reduce_transformer,
    aggregate_transformer,
    take_transformer,
    skip_transformer,
    dedupe_transformer,
    throttle_transformer,
    flatten_transformer,
    stateful_map_transformer,
)


@headwater.hookimpl
def register_transformers(register: Any) -> None:
    """Register the built-in transformers."""
    for component in _ALL:
        register(component)
