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

The ``headwater.transformers`` plugin registers these steps by name
(:mod:`headwater.builtin_plugins.catalogue`); they live in one module per family, each
imported when a pipeline first uses one of its steps:

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

import importlib
from typing import Any

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
]

_MODULE_OF: dict[str, str] = {
    **dict.fromkeys(
        (
            "AggregateOp",
            "AggregateParams",
            "ReduceParams",
            "aggregate_transformer",
            "reduce_transformer",
        ),
        "aggregation",
    ),
    **dict.fromkeys(
        ("BatchParams", "WindowParams", "batch_transformer", "window_transformer"), "batching"
    ),
    **dict.fromkeys(("FieldPath", "MissingField", "field_getter"), "fields"),
    **dict.fromkeys(
        (
            "CallableParams",
            "FlattenParams",
            "SelectParams",
            "filter_transformer",
            "flatten_transformer",
            "map_transformer",
            "select_transformer",
        ),
        "itemwise",
    ),
    **dict.fromkeys(("StatefulMapParams", "stateful_map_transformer"), "keyed"),
    **dict.fromkeys(
        (
            "JsonEncodeParams",
            "RegexParams",
            "json_decode_transformer",
            "json_encode_transformer",
            "regex_transformer",
        ),
        "parsing",
    ),
    **dict.fromkeys(("_decode_state", "_encode_state"), "snapshots"),
    **dict.fromkeys(
        (
            "DedupeParams",
            "SkipParams",
            "TakeParams",
            "ThrottleParams",
            "dedupe_transformer",
            "skip_transformer",
            "take_transformer",
            "throttle_transformer",
        ),
        "streamwise",
    ),
}
"""Name -> the family module defining it: the package re-exports on first access, so
that using one step never imports the others."""


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULE_OF})
