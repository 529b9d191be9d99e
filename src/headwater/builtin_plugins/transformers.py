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
"""

from __future__ import annotations

import base64
import copy
import datetime
import decimal
import json
import math
import re
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Annotated, Any, Literal

import anyio
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

import headwater
from headwater.core.context import StreamContext
from headwater.core.types import CallableRef

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
    "TakeParams",
    "ThrottleParams",
    "WindowParams",
    "field_getter",
    "register_transformers",
]

FieldPath = Annotated[
    str,
    Field(
        min_length=1,
        description="A key of dict items, or a dotted path into nested mappings (user.id).",
    ),
]
"""A field of dict items: a key, or a dotted path such as ``user.id``."""

_STRICT = ConfigDict(extra="forbid", defer_build=True)


# ---------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------


class MissingField(KeyError):
    """An item lacks a field that a step needs (or, where documented, the field is None)."""

    def __init__(self, path: str, reason: str = "has no field") -> None:
        super().__init__(path)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"item {self.reason} {self.path!r}"


def _not_a_mapping(path: str, item: object) -> TypeError:
    return TypeError(
        f"cannot read field {path!r} of a {type(item).__name__} item; expected a mapping"
    )


def _is_index(part: str) -> bool:
    return part.lstrip("-").isdigit()


def field_getter(path: str) -> Callable[[Any], Any]:
    """A function reading ``path`` from an item; raises :class:`MissingField` if absent.

    ``path`` is a key, or a dotted path through nested mappings (an integer part indexes
    a list or tuple). A key that itself contains the dots is tried first. An item that is
    not a mapping raises ``TypeError``.
    """
    parts = path.split(".")
    if len(parts) == 1:

        def get(item: Any) -> Any:
            try:
                return item[path]
            except KeyError:
                raise MissingField(path) from None
            except (TypeError, IndexError):
                raise _not_a_mapping(path, item) from None

        return get

    steps = [(part, int(part) if _is_index(part) else None) for part in parts]

    def get_nested(item: Any) -> Any:
        if not isinstance(item, Mapping):
            raise _not_a_mapping(path, item)
        if path in item:
            return item[path]
        node: Any = item
        for key, index in steps:
            if isinstance(node, Mapping):
                if key not in node:
                    raise MissingField(path)
                node = node[key]
            elif index is not None and isinstance(node, list | tuple):
                try:
                    node = node[index]
                except IndexError:
                    raise MissingField(path) from None
            else:
                raise MissingField(path)
        return node

    return get_nested


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


def _tick_interval(period: float) -> float:
    """How often to look for due output: a tenth of ``period``, between 1 ms and 250 ms."""
    return min(max(period / 10.0, 0.001), 0.25)


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


# -- state snapshots ---------------------------------------------------------------------
#
# Stateful steps snapshot their state into JSON values when a checkpoint marker passes
# (``snapshot()``) and get it back when a run resumes (``restore(state)``). Items and
# accumulators are Python values, so they are encoded faithfully: JSON scalars, lists and
# dicts with sorted string keys stay as they are; anything else becomes a tagged object
# ``{"$hw": TYPE, "v": ...}`` (a tuple, a set, a dict with other keys or another key
# order, bytes, a date...) that :func:`_decode_state` turns back into an equal value.

_STATE_TAG = "$hw"
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _encode_state(value: Any) -> Any:
    """A JSON value standing for ``value`` (a fresh copy: later mutations do not leak in).

    Raises ``TypeError`` naming the type of a value that cannot be checkpointed.
    """
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is list:
        return [_encode_state(v) for v in value]
    if kind is dict:
        keys = list(value)
        if _STATE_TAG not in value and all(type(k) is str for k in keys) and keys == sorted(keys):
            return {k: _encode_state(v) for k, v in value.items()}
        return {
            _STATE_TAG: "dict",
            "v": [[_encode_state(k), _encode_state(v)] for k, v in value.items()],
        }
    if kind is tuple:
        return {_STATE_TAG: "tuple", "v": [_encode_state(v) for v in value]}
    if kind is set or kind is frozenset:
        return {_STATE_TAG: kind.__name__, "v": [_encode_state(v) for v in value]}
    if kind is bytes:
        return {_STATE_TAG: "bytes", "v": base64.b64encode(value).decode("ascii")}
    if kind is OrderedDict or kind is Counter:
        pairs = [[_encode_state(k), _encode_state(v)] for k, v in value.items()]
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
    return [(_decode_state(k), _decode_state(v)) for k, v in pairs]


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "dict": lambda v: dict(_decode_pairs(v)),
    "tuple": lambda v: tuple(_decode_state(x) for x in v),
    "set": lambda v: {_decode_state(x) for x in v},
    "frozenset": lambda v: frozenset(_decode_state(x) for x in v),
    "bytes": lambda v: base64.b64decode(v),
    "OrderedDict": lambda v: OrderedDict(_decode_pairs(v)),
    "Counter": lambda v: Counter(dict(_decode_pairs(v))),
    "Decimal": decimal.Decimal,
    "datetime": datetime.datetime.fromisoformat,
    "date": datetime.date.fromisoformat,
    "time": datetime.time.fromisoformat,
    "timedelta": lambda v: datetime.timedelta(days=v[0], seconds=v[1], microseconds=v[2]),
}


def _decode_state(value: Any) -> Any:
    """The value :func:`_encode_state` encoded (after a round trip through JSON)."""
    kind = type(value)
    if kind is list:
        return [_decode_state(v) for v in value]
    if kind is dict:
        tag = value.get(_STATE_TAG)
        if tag is None:
            return {k: _decode_state(v) for k, v in value.items()}
        decoder = _DECODERS.get(tag)
        if decoder is None:
            raise ValueError(f"unknown value type {tag!r} in a state snapshot")
        return decoder(value["v"])
    return value


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


# ---------------------------------------------------------------------------------------
# map / filter
# ---------------------------------------------------------------------------------------


class CallableParams(BaseModel):
    """A function given as an importable path ``pkg.mod:fn`` or, from Python, a callable."""

    model_config = ConfigDict(extra="forbid", defer_build=True, arbitrary_types_allowed=True)

    fn: CallableRef = Field(
        description="Importable callable, e.g. 'mypkg.transforms:clean' (or a callable "
        "when building the pipeline in Python)."
    )


@headwater.transformer(
    "map", kind="map", params=CallableParams, factory=True, output="fn(item) for each item"
)
def map_transformer(params: CallableParams) -> Callable[[Any], Any]:
    """Replace each item with ``fn(item)``."""
    return params.fn


@headwater.transformer(
    "filter",
    kind="filter",
    params=CallableParams,
    factory=True,
    output="the items for which fn(item) is true",
)
def filter_transformer(params: CallableParams) -> Callable[[Any], Any]:
    """Keep the items for which ``fn(item)`` is true."""
    return params.fn


# ---------------------------------------------------------------------------------------
# select
# ---------------------------------------------------------------------------------------


class SelectParams(BaseModel):
    """Params of ``select``."""

    model_config = _STRICT

    fields: list[FieldPath] = Field(
        default_factory=list,
        description="Fields to keep, in output order; a dotted path keeps its path as key.",
    )
    rename: dict[str, FieldPath] = Field(
        default_factory=dict,
        description="Further fields to keep under a new name: mapping new name -> field.",
    )
    missing: Literal["error", "null", "omit"] = Field(
        "error",
        description="When an item lacks a field: fail the item (error), output None "
        "(null) or leave the key out (omit).",
    )

    @field_validator("fields")
    @classmethod
    def _unique_fields(cls, fields: list[str]) -> list[str]:
        seen: set[str] = set()
        for name in fields:
            if name in seen:
                raise ValueError(f"field {name!r} is listed more than once")
            seen.add(name)
        return fields

    @field_validator("rename")
    @classmethod
    def _no_clash(cls, rename: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        fields = info.data.get("fields") or []
        clash = [new for new in rename if new in fields]
        if clash:
            raise ValueError(
                f"new name {clash[0]!r} is also listed in fields; rename would overwrite it"
            )
        empty = [new for new in rename if not new]
        if empty:
            raise ValueError("a new name must not be empty")
        return rename

    @model_validator(mode="after")
    def _something_selected(self) -> SelectParams:
        if not self.fields and not self.rename:
            raise ValueError("select needs fields, rename or both")
        return self


@headwater.transformer(
    "select",
    kind="map",
    params=SelectParams,
    factory=True,
    output="a new dict holding only the selected (and renamed) fields",
)
def select_transformer(params: SelectParams) -> Callable[[Any], dict[str, Any]]:
    """Keep only some fields of dict items, optionally renaming them.

    ``fields`` are kept under their own name, ``rename`` maps a new name to the field it
    reads. ``missing`` says what happens when an item lacks one: ``error`` fails the item,
    ``null`` outputs None, ``omit`` leaves the key out.
    """
    pairs = [(name, name) for name in params.fields] + list(params.rename.items())
    getters = [(out, field_getter(path)) for out, path in pairs]
    missing = params.missing

    def pick(item: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, get in getters:
            try:
                out[key] = get(item)
            except MissingField:
                if missing == "error":
                    raise
                if missing == "null":
                    out[key] = None
        return out

    if missing != "error" or any("." in path for _, path in pairs):
        return pick

    simple = tuple(pairs)

    def pick_fast(item: Any) -> dict[str, Any]:
        try:
            return {out: item[path] for out, path in simple}
        except (KeyError, TypeError, IndexError):
            return pick(item)  # raises the detailed error

    return pick_fast


# ---------------------------------------------------------------------------------------
# json.decode / json.encode
# ---------------------------------------------------------------------------------------


@headwater.transformer(
    "json.decode",
    kind="map",
    factory=True,
    output="the object parsed from each str / bytes item",
)
def json_decode_transformer() -> Callable[[Any], Any]:
    """Parse each item (a str, bytes or bytearray holding JSON) into a Python object."""
    return json.loads


class JsonEncodeParams(BaseModel):
    """Params of ``json.encode``."""

    model_config = _STRICT

    sort_keys: bool = Field(False, description="Write the keys of objects in sorted order.")
    ensure_ascii: bool = Field(
        False, description="Escape non-ASCII characters (\\u00e9) instead of writing them."
    )
    allow_nan: bool = Field(
        False,
        description="Write NaN and Infinity (not valid JSON) instead of failing the item.",
    )
    default: Literal["error", "str"] = Field(
        "error",
        description="Values JSON cannot represent (datetime, Decimal, ...): fail the item "
        "(error) or write str(value) (str).",
    )


@headwater.transformer(
    "json.encode",
    kind="map",
    params=JsonEncodeParams,
    factory=True,
    output="each item as a compact JSON string",
)
def json_encode_transformer(params: JsonEncodeParams) -> Callable[[Any], str]:
    """Serialise each item to a compact JSON string (no spaces)."""
    encoder = json.JSONEncoder(
        separators=(",", ":"),
        sort_keys=params.sort_keys,
        ensure_ascii=params.ensure_ascii,
        allow_nan=params.allow_nan,
        default=str if params.default == "str" else None,
    )
    return encoder.encode


# ---------------------------------------------------------------------------------------
# regex
# ---------------------------------------------------------------------------------------


class RegexParams(BaseModel):
    """Params of ``regex``."""

    model_config = _STRICT

    pattern: str = Field(
        description="Regular expression (Python syntax); named groups "
        "(?P<name>...) become the keys of the output."
    )
    ignore_case: bool = Field(False, description="Match letters regardless of case.")
    field: FieldPath | None = Field(
        None, description="Apply the pattern to this field of dict items instead of the item."
    )
    mode: Literal["search", "match", "fullmatch"] = Field(
        "search",
        description="search: anywhere in the text; match: at its start; fullmatch: all of it.",
    )
    output: Literal["groups", "item", "match", "merge"] | None = Field(
        None,
        description="What a matching item becomes: groups (dict of named groups; the "
        "default when the pattern has some), match (the matched text; the default "
        "otherwise), item (the item unchanged) or merge (the dict item with the named "
        "groups added; needs field).",
    )
    keep_unmatched: bool = Field(
        False, description="Pass items that do not match through unchanged instead of dropping."
    )

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            where = f" at position {exc.pos}" if exc.pos is not None else ""
            raise ValueError(f"invalid regular expression: {exc.msg}{where}") from None
        return pattern

    @field_validator("output")
    @classmethod
    def _output_fits(cls, output: str | None, info: ValidationInfo) -> str | None:
        pattern = info.data.get("pattern")
        named = pattern is not None and bool(re.compile(pattern).groupindex)
        if output in ("groups", "merge") and pattern is not None and not named:
            raise ValueError(
                f"output {output!r} needs named groups like (?P<name>...) in the pattern"
            )
        if output == "merge" and info.data.get("field") is None:
            raise ValueError("output 'merge' needs field: the items must be mappings")
        return output


@headwater.transformer(
    "regex",
    kind="flat_map",
    params=RegexParams,
    factory=True,
    output="for each matching item: its named groups, the matched text, the item, or the "
    "item merged with the groups (see output); non-matching items are dropped",
)
def regex_transformer(params: RegexParams) -> Callable[[Any], tuple[Any, ...]]:
    """Match a regular expression against each item (or one field of it).

    Matching items become a dict of the named groups (the default when the pattern has
    named groups), the matched text, the unchanged item, or the item with the groups
    merged in. Items that do not match are dropped, or passed on unchanged with
    ``keep_unmatched``.
    """
    rx = re.compile(params.pattern, re.IGNORECASE if params.ignore_case else 0)
    op = getattr(rx, params.mode)
    output = params.output or ("groups" if rx.groupindex else "match")
    get = field_getter(params.field) if params.field is not None else None
    keep = params.keep_unmatched
    nothing: tuple[Any, ...] = ()

    def apply(item: Any) -> tuple[Any, ...]:
        m = op(item if get is None else get(item))
        if m is None:
            return (item,) if keep else nothing
        if output == "groups":
            return (m.groupdict(),)
        if output == "match":
            return (m.group(0),)
        if output == "item":
            return (item,)
        return ({**item, **m.groupdict()},)

    return apply


# ---------------------------------------------------------------------------------------
# batch
# ---------------------------------------------------------------------------------------


class BatchParams(BaseModel):
    """Params of ``batch``."""

    model_config = _STRICT

    size: int | None = Field(
        None, ge=1, le=10_000_000, description="Emit a list as soon as it holds this many items."
    )
    seconds: float | None = Field(
        None,
        gt=0,
        description="Emit a list once its first item has waited this long (even if the "
        "input goes quiet).",
    )

    @model_validator(mode="after")
    def _one_bound(self) -> BatchParams:
        if self.size is None and self.seconds is None:
            raise ValueError("batch needs size, seconds or both")
        return self


class _Batcher:
    """Groups items into lists of ``size`` (``batch`` without ``seconds``)."""

    def __init__(self, size: int | None) -> None:
        self.size = size
        self.pending: list[Any] = []

    def _cut(self, out: list[list[Any]]) -> bool:
        """Move full lists from ``pending`` into ``out``; True if any was cut."""
        size = self.size
        pending = self.pending
        if size is None or len(pending) < size:
            return False
        full = len(pending) - len(pending) % size
        out.extend(pending[i : i + size] for i in range(0, full, size))
        self.pending = pending[full:]
        return True

    def __call__(self, batch: list[Any]) -> list[list[Any]]:
        """Add ``batch``; return the lists completed by it."""
        out: list[list[Any]] = []
        self.pending.extend(batch)
        self._cut(out)
        return out

    def flush(self) -> list[list[Any]]:
        """End of stream: the last, partial list."""
        pending, self.pending = self.pending, []
        return [pending] if pending else []

    def snapshot(self) -> dict[str, Any]:
        """The pending items, for a checkpoint."""
        return {"pending": _encode_state(self.pending)}

    def restore(self, state: Any) -> None:
        """Continue from :meth:`snapshot`."""
        self.pending = _decode_state(_state_dict(state, "batch", "pending")["pending"])


class _TimedBatcher(_Batcher):
    """``batch`` with ``seconds``: also emits a list once its first item is old enough."""

    def __init__(self, size: int | None, seconds: float) -> None:
        super().__init__(size)
        self.seconds = seconds
        self.deadline = math.inf
        self.tick_interval = _tick_interval(seconds)

    def __call__(self, batch: list[Any]) -> list[list[Any]]:
        """Add ``batch``; return the lists completed by it or due by time."""
        now = time.monotonic()
        out = self.tick(now)
        if not batch:
            return out
        if not self.pending:
            self.deadline = now + self.seconds
        self.pending.extend(batch)
        if self._cut(out):
            # what is left arrived in this batch (a list is cut before older items pile up)
            self.deadline = now + self.seconds if self.pending else math.inf
        return out

    def tick(self, now: float | None = None) -> list[list[Any]]:
        """The pending list if its first item has waited ``seconds``, else nothing."""
        if self.pending and (time.monotonic() if now is None else now) >= self.deadline:
            pending, self.pending = self.pending, []
            self.deadline = math.inf
            return [pending]
        return []

    def snapshot(self) -> dict[str, Any]:
        """The pending items and how long the pending list has left, for a checkpoint."""
        state = super().snapshot()
        now = time.monotonic()
        state["left"] = None if math.isinf(self.deadline) else max(0.0, self.deadline - now)
        return state

    def restore(self, state: Any) -> None:
        """Continue from :meth:`snapshot`: the clock resumes where it stopped (the pending
        list has the time it had left at the checkpoint)."""
        super().restore(state)
        left = state.get("left")
        if not self.pending:
            self.deadline = math.inf
        else:
            self.deadline = time.monotonic() + (self.seconds if left is None else float(left))


@headwater.transformer(
    "batch",
    kind="batch",
    params=BatchParams,
    output="lists of consecutive items",
    capabilities=("stateful",),
)
def batch_transformer(params: BatchParams) -> _Batcher:
    """Group consecutive items into lists.

    A list is emitted when it holds ``size`` items, or when its first item has waited
    ``seconds`` (checked even while no input arrives), whichever comes first. The last,
    partial list is emitted at the end of the stream. Concatenating the lists gives back
    the input.
    """
    if params.seconds is None:
        return _Batcher(params.size)
    return _TimedBatcher(params.size, params.seconds)


# ---------------------------------------------------------------------------------------
# window
# ---------------------------------------------------------------------------------------


class WindowParams(BaseModel):
    """Params of ``window``."""

    model_config = _STRICT

    type: Literal["tumbling", "sliding"] = Field(
        "tumbling",
        description="tumbling: back-to-back windows, each item in exactly one; sliding: a "
        "window starts every step and lasts size (or seconds), so windows may overlap.",
    )
    size: int | None = Field(
        None, ge=1, le=10_000_000, description="Window length as a count of items."
    )
    seconds: float | None = Field(
        None, gt=0, description="Window length as a duration in seconds (arrival time)."
    )
    step: float | None = Field(
        None,
        gt=0,
        description="Sliding windows only: distance between window starts, in items (with "
        "size) or seconds (with seconds). A step larger than the window leaves gaps.",
    )
    partial: bool = Field(
        True,
        description="At the end of the stream, emit the last incomplete window if it holds "
        "items no emitted window held.",
    )

    @field_validator("seconds")
    @classmethod
    def _not_both(cls, seconds: float | None, info: ValidationInfo) -> float | None:
        if seconds is not None and info.data.get("size") is not None:
            raise ValueError("give size (a count of items) or seconds (a duration), not both")
        return seconds

    @field_validator("step")
    @classmethod
    def _step_fits(cls, step: float | None, info: ValidationInfo) -> float | None:
        if step is None:
            return None
        if info.data.get("type") == "tumbling":
            raise ValueError("step applies to sliding windows only")
        if info.data.get("size") is not None and not float(step).is_integer():
            raise ValueError("step must be a whole number of items when the window has a size")
        return step

    @model_validator(mode="after")
    def _complete(self) -> WindowParams:
        if self.size is None and self.seconds is None:
            raise ValueError("window needs size (a count of items) or seconds (a duration)")
        if self.type == "sliding" and self.step is None:
            raise ValueError("a sliding window needs step (how far each window start moves)")
        return self


class _CountWindows:
    """Windows of ``size`` items starting every ``step`` items (tumbling: step == size)."""

    def __init__(self, size: int, step: int, partial: bool) -> None:
        self.size = size
        self.step = step
        self.partial = partial
        self.buf: list[Any] = []
        self.base = 0
        """Stream index of ``buf[0]``."""
        self.start = 0
        """Stream index where the next window starts."""
        self.covered = 0
        """Stream index up to which items were in an emitted window."""

    def __call__(self, batch: list[Any]) -> list[list[Any]]:
        """Add ``batch``; return the windows it completed."""
        buf = self.buf
        if not buf and self.start > self.base:
            # items in the gap between two windows (step > size) belong to none
            gap = min(self.start - self.base, len(batch))
            self.base += gap
            batch = batch[gap:]
        buf.extend(batch)
        base, size, step, start = self.base, self.size, self.step, self.start
        end = base + len(buf)
        out: list[list[Any]] = []
        while start + size <= end:
            i = start - base
            out.append(buf[i : i + size])
            self.covered = start + size
            start += step
        self.start = start
        drop = min(start - base, len(buf))
        if drop > 0:
            del buf[:drop]
            self.base = base + drop
        return out

    def flush(self) -> list[list[Any]]:
        """End of stream: the incomplete window, if it holds items not yet emitted."""
        buf, self.buf = self.buf, []
        if self.partial and buf and self.base + len(buf) > self.covered:
            return [buf]
        return []

    def snapshot(self) -> dict[str, Any]:
        """The buffered items and stream indexes, for a checkpoint."""
        return {
            "buf": _encode_state(self.buf),
            "base": self.base,
            "start": self.start,
            "covered": self.covered,
        }

    def restore(self, state: Any) -> None:
        """Continue from :meth:`snapshot`."""
        state = _state_dict(state, "window", "buf", "base", "start", "covered")
        self.buf = _decode_state(state["buf"])
        self.base = int(state["base"])
        self.start = int(state["start"])
        self.covered = int(state["covered"])


class _TimeWindows:
    """Windows lasting ``size`` seconds, one starting every ``step`` seconds.

    The first window starts when the first item arrives; later ones follow on that grid.
    Items carry their arrival time; windows without items are not emitted.
    """

    def __init__(self, size: float, step: float, partial: bool) -> None:
        self.size = size
        self.step = step
        self.partial = partial
        self.tick_interval = _tick_interval(min(size, step))
        self.chunks: list[tuple[float, list[Any]]] = []
        """(arrival time, items) in arrival order, all within not-yet-emitted windows."""
        self.start: float | None = None
        """Start time of the next window to emit."""
        self.covered = -math.inf
        """End time of the last emitted window."""

    def _due(self, now: float, out: list[list[Any]]) -> None:
        start = self.start
        if start is None:
            return
        size, step = self.size, self.step
        while start + size <= now:
            chunks = self.chunks
            if not chunks:
                # skip the empty windows at once: next start whose window is still open
                start += (math.floor((now - size - start) / step) + 1) * step
                break
            end = start + size
            window = [x for t, items in chunks if t < end for x in items]
            if window:
                out.append(window)
                self.covered = end
            start += step
            if chunks[0][0] < start:
                self.chunks = [c for c in chunks if c[0] >= start]
        self.start = start

    def __call__(self, batch: list[Any]) -> list[list[Any]]:
        """Add ``batch`` (arriving now); return the windows that ended."""
        now = time.monotonic()
        out: list[list[Any]] = []
        if self.start is None:
            self.start = now
        else:
            self._due(now, out)
        if batch and now >= self.start:  # else: in a gap between windows (step > size)
            self.chunks.append((now, list(batch)))
        return out

    def tick(self) -> list[list[Any]]:
        """The windows that ended since the last call."""
        out: list[list[Any]] = []
        self._due(time.monotonic(), out)
        return out

    def flush(self) -> list[list[Any]]:
        """End of stream: ended windows, then the open one if it holds unemitted items."""
        out = self.tick()
        chunks, self.chunks = self.chunks, []
        if self.partial and chunks and chunks[-1][0] >= self.covered:
            out.append([x for _, items in chunks for x in items])
        return out

    def snapshot(self) -> dict[str, Any]:
        """Pending items with their ages, and the window grid, for a checkpoint.

        Times are kept as ages (seconds before the snapshot): monotonic clocks of two
        processes have nothing in common.
        """
        now = time.monotonic()
        return {
            "chunks": [[now - t, _encode_state(items)] for t, items in self.chunks],
            "start": None if self.start is None else now - self.start,
            "covered": _age(now, self.covered),
        }

    def restore(self, state: Any) -> None:
        """Continue from :meth:`snapshot`: the clock resumes where it stopped, so every
        pending item falls into the same windows as without the interruption."""
        state = _state_dict(state, "window", "chunks", "start", "covered")
        now = time.monotonic()
        self.chunks = [(now - float(age), _decode_state(items)) for age, items in state["chunks"]]
        start = state["start"]
        self.start = None if start is None else now - float(start)
        self.covered = _at(now, state["covered"], -math.inf)


@headwater.transformer(
    "window",
    kind="batch",
    params=WindowParams,
    output="lists of items, one per window",
    capabilities=("stateful",),
)
def window_transformer(params: WindowParams) -> _CountWindows | _TimeWindows:
    """Group items into count or time windows (tumbling or sliding); emits lists.

    A count window holds ``size`` items; a time window holds the items that arrived
    during ``seconds``. Tumbling windows follow each other; sliding windows start every
    ``step`` (items or seconds) and may overlap. Time windows are emitted when they end,
    even while no input arrives; empty time windows are not emitted. At the end of the
    stream the incomplete window is emitted when ``partial`` is true and it holds items
    that no emitted window held.
    """
    if params.size is not None:
        step = params.size if params.step is None else int(params.step)
        return _CountWindows(params.size, step, params.partial)
    assert params.seconds is not None
    step_s = params.seconds if params.step is None else float(params.step)
    return _TimeWindows(params.seconds, step_s, params.partial)


# ---------------------------------------------------------------------------------------
# reduce / aggregate
# ---------------------------------------------------------------------------------------


class ReduceParams(BaseModel):
    """Params of ``reduce``."""

    model_config = ConfigDict(extra="forbid", defer_build=True, arbitrary_types_allowed=True)

    fn: CallableRef = Field(
        description="Importable function fn(accumulator, item) -> new accumulator, e.g. "
        "'operator:add' (or a callable when building the pipeline in Python)."
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
)
def skip_transformer(params: SkipParams) -> _Skip:
    """Drop the first ``count`` items and pass the rest on."""
    return _Skip(params.count)


# ---------------------------------------------------------------------------------------
# dedupe
# ---------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------
# flatten
# ---------------------------------------------------------------------------------------


class FlattenParams(BaseModel):
    """Params of ``flatten``."""

    model_config = _STRICT

    depth: int | None = Field(
        1, ge=1, description="How many levels of nesting to open; null opens all of them."
    )


_ATOMS = (str, bytes, bytearray, Mapping)


def _opens(value: Any) -> bool:
    return isinstance(value, Iterable) and not isinstance(value, _ATOMS)


@headwater.transformer(
    "flatten",
    kind="flat_map",
    params=FlattenParams,
    factory=True,
    output="the elements of each iterable item (other items unchanged)",
)
def flatten_transformer(params: FlattenParams) -> Callable[[Any], Iterable[Any]]:
    """Replace each iterable item by its elements, ``depth`` levels deep.

    Strings, bytes and mappings are not opened (a dict is one record); items that are
    not iterable pass through unchanged.
    """
    depth = params.depth

    def one_level(item: Any) -> Iterable[Any]:
        if type(item) is list or type(item) is tuple:
            return item
        return item if _opens(item) else (item,)

    if depth == 1:
        return one_level

    def walk(value: Any, left: int | None) -> Iterable[Any]:
        for element in value:
            if (left is None or left > 0) and _opens(element):
                yield from walk(element, None if left is None else left - 1)
            else:
                yield element

    def deep(item: Any) -> Iterable[Any]:
        if not _opens(item):
            return (item,)
        return walk(item, None if depth is None else depth - 1)

    return deep


# ---------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------

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
)


@headwater.hookimpl
def register_transformers(register: Any) -> None:
    """Register the built-in transformers."""
    for component in _ALL:
        register(component)
