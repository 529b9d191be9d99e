"""Folding transformers: ``reduce`` and ``aggregate``.

``flat_map`` steps whose per-item function also has a ``flush()``: each item is folded
individually (exact positions, and ``on_error: skip`` skips just the bad item), the
result is emitted at the end of the stream (or after every item with ``emit: running``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

import headwater
from headwater.core.types import CallableRef

from .fields import _STRICT, FieldPath, MissingField, field_getter
from .snapshots import _decode_state, _encode_state, _state_dict


class ReduceParams(BaseModel):
    """Params of ``reduce``."""

    model_config = ConfigDict(extra="forbid", defer_build=True, arbitrary_types_allowed=True)

    fn: CallableRef = Field(
        description="Function fn(accumulator, item) -> new accumulator, e.g. 'operator:add' "
        "(or a callable when building the pipeline in Python). A name must be allowed by the "
        "operator's sandbox policy, as for map's fn."
    )
    initial: Any = Field(
        None,
        description="Starting accumulator (copied for every run). Without it the first "
        "item is the starting accumulator, and an empty stream emits nothing.",
    )
    emit: Literal["end", "running"] = Field(
        "end",
        description="end: emit the result once, at the end of the stream; running: emit "
        "the accumulator after every item.",
    )


class _Fold:
    """Per-item fold for ``reduce``; the result comes out of ``flush()``."""

    def __init__(
        self, fn: Callable[[Any, Any], Any], initial: Any, has_initial: bool, running: bool
    ) -> None:
        self.fn = fn
        self.acc = initial
        self.empty = not has_initial
        self.running = running
        self.flushed = False

    def __call__(self, item: Any) -> tuple[Any, ...]:
        """Fold ``item`` in; in running mode return the new accumulator."""
        if self.empty:
            self.acc = item
            self.empty = False
        else:
            self.acc = self.fn(self.acc, item)
        return (self.acc,) if self.running else ()

    def flush(self) -> list[Any]:
        """End of stream: the result (end mode, unless nothing was folded)."""
        if self.flushed:
            return []
        self.flushed = True
        return [] if self.running or self.empty else [self.acc]

    def snapshot(self) -> dict[str, Any]:
        """The accumulator, for a checkpoint (``flushed``: the result was emitted)."""
        return {"acc": _encode_state(self.acc), "empty": self.empty, "flushed": self.flushed}

    def restore(self, state: Any) -> None:
        """Continue from :meth:`snapshot`."""
        state = _state_dict(state, "reduce", "acc", "empty")
        self.acc = _decode_state(state["acc"])
        self.empty = bool(state["empty"])
        self.flushed = bool(state.get("flushed", False))


@headwater.transformer(
    "reduce",
    kind="flat_map",
    params=ReduceParams,
    factory=True,
    output="the folded value, once at the end of the stream (or after every item)",
    capabilities=("stateful",),
)
def reduce_transformer(params: ReduceParams) -> _Fold:
    """Fold the stream with ``fn(accumulator, item)``, like ``functools.reduce``.

    The result is emitted at the end of the stream (``emit: running`` emits the
    accumulator after every item instead). An item on which ``fn`` raises fails with its
    position; with ``on_error: skip`` it is left out of the fold.
    """
    has_initial = "initial" in params.model_fields_set
    return _Fold(params.fn, copy.deepcopy(params.initial), has_initial, params.emit == "running")


AggregateOp = Literal["count", "sum", "min", "max", "mean"]


class AggregateParams(BaseModel):
    """Params of ``aggregate``."""

    model_config = _STRICT

    op: AggregateOp = Field(description="count | sum | min | max | mean")
    field: FieldPath | None = Field(
        None, description="Aggregate this field of dict items instead of the items themselves."
    )
    by: FieldPath | None = Field(
        None, description="Group by this field: the result is a dict group -> value."
    )
    missing: Literal["error", "skip"] = Field(
        "error",
        description="When an item lacks field or by (or its value is None): fail the item "
        "(error) or leave it out (skip).",
    )
    per_item: bool = Field(
        False,
        description="Aggregate inside each item (a list, e.g. from window) and emit one "
        "result per item, instead of over the whole stream.",
    )
    emit: Literal["end", "running"] = Field(
        "end",
        description="Whole-stream aggregation: emit the result at the end (end), or after "
        "every item (running; with by, only the updated group: {group: value}).",
    )

    @field_validator("emit")
    @classmethod
    def _emit_fits(cls, emit: str, info: ValidationInfo) -> str:
        if emit == "running" and info.data.get("per_item"):
            raise ValueError(
                "emit applies to whole-stream aggregation; per_item already emits one "
                "result per item"
            )
        return emit


_NONE = object()


def _add_min(state: Any, value: Any) -> Any:
    return value if state is _NONE or value < state else state


def _add_max(state: Any, value: Any) -> Any:
    return value if state is _NONE or value > state else state


def _extreme(state: Any) -> Any:
    return None if state is _NONE else state


def _mean(state: tuple[Any, int]) -> Any:
    return state[0] / state[1] if state[1] else None


def _fold_ops(op: AggregateOp) -> tuple[Any, Callable[[Any, Any], Any], Callable[[Any], Any]]:
    """(initial state, add(state, value) -> state, result(state)) of one operation."""
    if op == "count":
        return 0, lambda s, v: s + 1, lambda s: s
    if op == "sum":
        return 0, lambda s, v: s + v, lambda s: s
    if op == "min":
        return _NONE, _add_min, _extreme
    if op == "max":
        return _NONE, _add_max, _extreme
    return (0, 0), lambda s, v: (s[0] + v, s[1] + 1), _mean


def _whole(op: AggregateOp, values: list[Any]) -> Any:
    """Aggregate a list of values at once."""
    if op == "count":
        return len(values)
    if op == "sum":
        return sum(values)
    if op == "min":
        return min(values, default=None)
    if op == "max":
        return max(values, default=None)
    return sum(values) / len(values) if values else None


class _Aggregator:
    """Whole-stream ``aggregate``: per-item folding, result out of ``flush()``."""

    def __init__(self, params: AggregateParams) -> None:
        self.initial, self.add, self.result = _fold_ops(params.op)
        self.state = self.initial
        self.groups: dict[Any, Any] = {}
        self.get_value = _value_reader(params.field, params.missing)
        self.get_group = _value_reader(params.by, params.missing) if params.by else None
        self.running = params.emit == "running"
        self.flushed = False

    def __call__(self, item: Any) -> tuple[Any, ...]:
        """Fold ``item`` in; in running mode return the updated value."""
        value = self.get_value(item)
        if value is _NONE:
            return ()
        if self.get_group is None:
            self.state = self.add(self.state, value)
            return (self.result(self.state),) if self.running else ()
        key = self.get_group(item)
        if key is _NONE:
            return ()
        groups = self.groups
        state = groups.get(key, self.initial)
        groups[key] = state = self.add(state, value)
        return ({key: self.result(state)},) if self.running else ()

    def flush(self) -> list[Any]:
        """End of stream: the result (a value, or a dict group -> value with ``by``)."""
        if self.running or self.flushed:
            return []
        self.flushed = True
        if self.get_group is None:
            return [self.result(self.state)]
        return [{k: self.result(s) for k, s in self.groups.items()}]

    def snapshot(self) -> dict[str, Any]:
        """The fold state and the groups in first-seen order, for a checkpoint."""
        unset = self.state is _NONE
        return {
            "state": None if unset else _encode_state(self.state),
            "unset": unset,
            "groups": [[_encode_state(k), _encode_state(s)] for k, s in self.groups.items()],
            "flushed": self.flushed,
        }

    def restore(self, state: Any) -> None:
        """Continue from :meth:`snapshot`."""
        state = _state_dict(state, "aggregate", "state", "groups")
        self.state = _NONE if state.get("unset") else _decode_state(state["state"])
        self.groups = {_decode_state(k): _decode_state(s) for k, s in state["groups"]}
        self.flushed = bool(state.get("flushed", False))


def _value_reader(path: str | None, missing: str) -> Callable[[Any], Any]:
    """Read ``path`` of an item; a missing or None value raises, or gives ``_NONE``."""
    if path is None:
        return lambda item: item
    get = field_getter(path)

    def read(item: Any) -> Any:
        try:
            value = get(item)
        except MissingField:
            if missing == "skip":
                return _NONE
            raise
        if value is None:
            if missing == "skip":
                return _NONE
            raise MissingField(path, "has None for field")
        return value

    return read


class _Stateless:
    """Wraps the per-item function of a ``stateful`` component's stateless variant, so that
    a checkpointed run accepts it (its snapshot is empty)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Any], tuple[Any, ...]]) -> None:
        self.fn = fn

    def __call__(self, item: Any) -> tuple[Any, ...]:
        """Apply the function."""
        return self.fn(item)

    def snapshot(self) -> None:
        """Nothing to keep."""
        return None

    def restore(self, state: Any) -> None:
        """Nothing to restore."""


def _per_item(params: AggregateParams) -> Callable[[Any], tuple[Any, ...]]:
    op = params.op
    get_value = _value_reader(params.field, params.missing)
    get_group = _value_reader(params.by, params.missing) if params.by else None
    initial, add, result = _fold_ops(op)

    def aggregate_one(item: Any) -> tuple[Any, ...]:
        if get_group is None:
            if params.field is None:
                values = item if isinstance(item, list) else list(item)
            else:
                values = [v for v in map(get_value, item) if v is not _NONE]
            return (_whole(op, values),)
        groups: dict[Any, Any] = {}
        for element in item:
            value = get_value(element)
            if value is _NONE:
                continue
            key = get_group(element)
            if key is _NONE:
                continue
            groups[key] = add(groups.get(key, initial), value)
        return ({k: result(s) for k, s in groups.items()},)

    return aggregate_one


@headwater.transformer(
    "aggregate",
    kind="flat_map",
    params=AggregateParams,
    factory=True,
    output="one number (or dict group -> number with by) at the end of the stream; "
    "per_item: one per item; emit running: one per item, the value so far",
    capabilities=("stateful",),
)
def aggregate_transformer(params: AggregateParams) -> Callable[[Any], tuple[Any, ...]]:
    """Count, sum, min, max or average items (or a field of them), optionally by group.

    By default the whole stream is aggregated and one result is emitted at its end: a
    number (None for min/max/mean of nothing), or with ``by`` a dict group -> number in
    first-seen order. ``emit: running`` emits the value so far after every item instead.
    ``per_item`` aggregates inside each item (a list, such as a ``window``) and emits one
    result per item.
    """
    if params.per_item:
        return _Stateless(_per_item(params))
    return _Aggregator(params)
