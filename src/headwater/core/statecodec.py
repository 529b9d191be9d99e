"""Values as JSON for checkpoints: the encoding of state snapshots.

Stateful steps (and a join) keep Python values, so their snapshots encode them
faithfully: JSON scalars, lists and dicts with sorted string keys stay as they are;
anything else becomes a tagged object ``{"$hw": TYPE, "v": ...}`` (a tuple, a set, a
dict with other keys or another key order, bytes, a date...) that :func:`decode_state`
turns back into an equal value. Never pickle: a value of another type is refused by
:func:`encode_state` with a ``TypeError`` naming it.
"""

from __future__ import annotations

import base64
import datetime
import decimal
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

__all__ = ["decode_state", "encode_state"]

_STATE_TAG = "$hw"
_SCALARS = frozenset({str, int, float, bool, type(None)})


def encode_state(value: Any) -> Any:
    """A JSON value standing for ``value`` (a fresh copy: later mutations do not leak in).

    Raises ``TypeError`` naming the type of a value that cannot be checkpointed.
    """
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is list:
        return [encode_state(v) for v in value]
    if kind is dict:
        keys = list(value)
        if _STATE_TAG not in value and all(type(k) is str for k in keys) and keys == sorted(keys):
            return {k: encode_state(v) for k, v in value.items()}
        return {
            _STATE_TAG: "dict",
            "v": [[encode_state(k), encode_state(v)] for k, v in value.items()],
        }
    if kind is tuple:
        return {_STATE_TAG: "tuple", "v": [encode_state(v) for v in value]}
    if kind is set or kind is frozenset:
        return {_STATE_TAG: kind.__name__, "v": [encode_state(v) for v in value]}
    if kind is bytes:
        return {_STATE_TAG: "bytes", "v": base64.b64encode(value).decode("ascii")}
    if kind is OrderedDict or kind is Counter:
        pairs = [[encode_state(k), encode_state(v)] for k, v in value.items()]
        return {_STATE_TAG: kind.__name__, "v": pairs}
    if kind is decimal.Decimal:
        return {_STATE_TAG: "Decimal", "v": str(value)}
    if kind is datetime.datetime or kind is datetime.date or kind is datetime.time:
        return {_STATE_TAG: kind.__name__, "v": value.isoformat()}
    if kind is datetime.timedelta:
        return {_STATE_TAG: "timedelta", "v": [value.days, value.seconds, value.microseconds]}
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    raise TypeError(
        f"a value of type {name} cannot be checkpointed (state snapshots hold JSON values, "
        "tuples, sets, bytes, dicts with any keys, Decimal and datetime values)"
    )


def _decode_pairs(pairs: list[Any]) -> list[tuple[Any, Any]]:
    return [(decode_state(k), decode_state(v)) for k, v in pairs]


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "dict": lambda v: dict(_decode_pairs(v)),
    "tuple": lambda v: tuple(decode_state(x) for x in v),
    "set": lambda v: {decode_state(x) for x in v},
    "frozenset": lambda v: frozenset(decode_state(x) for x in v),
    "bytes": lambda v: base64.b64decode(v),
    "OrderedDict": lambda v: OrderedDict(_decode_pairs(v)),
    "Counter": lambda v: Counter(dict(_decode_pairs(v))),
    "Decimal": decimal.Decimal,
    "datetime": datetime.datetime.fromisoformat,
    "date": datetime.date.fromisoformat,
    "time": datetime.time.fromisoformat,
    "timedelta": lambda v: datetime.timedelta(days=v[0], seconds=v[1], microseconds=v[2]),
}


def decode_state(value: Any) -> Any:
    """The value :func:`encode_state` encoded (after a round trip through JSON)."""
    kind = type(value)
    if kind is list:
        return [decode_state(v) for v in value]
    if kind is dict:
        tag = value.get(_STATE_TAG)
        if tag is None:
            return {k: decode_state(v) for k, v in value.items()}
        decoder = _DECODERS.get(tag)
        if decoder is None:
            raise ValueError(f"unknown value type {tag!r} in a state snapshot")
        return decoder(value["v"])
    return value
