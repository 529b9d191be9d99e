"""Running aggregates of keyed windows (``window``'s ``agg``).

``agg: {total: "sum:amount", n: count}`` names each result and says how it is computed:
``count``, or ``sum``, ``min``, ``max``, ``mean`` of a field. A window's state is one flat
list, its *accumulator*: slot 0 holds the window's items (None with ``keep_items:
false``), the next slots the running figures (``mean`` takes two: sum and count). The
per-item update is compiled once into one plain function of the accumulator and the
item, so a keyed aggregation costs a dict lookup and a few additions per item.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .fields import field_getter, quick_getter

__all__ = ["RESERVED", "WindowAggs", "check_agg"]

_OPS = ("count", "sum", "min", "max", "mean")
_SPEC = re.compile(r"^(count)$|^(sum|min|max|mean):(.+)$")
RESERVED = frozenset({"key", "start", "end", "items"})
"""Names the window dict uses itself."""


def check_agg(agg: dict[str, str]) -> dict[str, str]:
    """Validate ``agg`` (params validator): names and ``OP`` or ``OP:FIELD`` values."""
    for name, spec in agg.items():
        if name in RESERVED:
            raise ValueError(
                f"agg name {name!r} is taken by the window itself (key, start, end, items)"
            )
        if not isinstance(spec, str) or not _SPEC.match(spec):
            raise ValueError(
                f"agg {name!r}: {spec!r} is not count or OP:FIELD with OP one of sum, min, "
                "max, mean (e.g. 'sum:amount')"
            )
    return agg


class WindowAggs:
    """The compiled ``agg`` of a window: new accumulators, updates, merges, results."""

    def __init__(self, agg: dict[str, str], keep_items: bool) -> None:
        self.keep_items = keep_items
        self.names: list[str] = []
        self.layout: list[tuple[str, int]] = []
        """(op, first slot) of each result, in order."""
        getters: dict[str, Callable[[Any], Any]] = {}
        self.checked: list[Callable[[Any], Any]] = []
        """The fields' checked getters, to explain an item the update failed on."""
        slot = 1
        lines = ["def update(acc, item):"]
        if keep_items:
            lines.append("    acc[0].append(item)")
        initial: list[Any] = []
        for i, (name, spec) in enumerate(agg.items()):
            m = _SPEC.match(spec)
            assert m is not None  # checked by check_agg
            op = m.group(1) or m.group(2)
            self.names.append(name)
            self.layout.append((op, slot))
            if op == "count":
                lines.append(f"    acc[{slot}] += 1")
                initial.append(0)
                slot += 1
                continue
            getter = f"g{i}"
            getters[getter] = quick_getter(m.group(3))
            self.checked.append(field_getter(m.group(3)))
            lines.append(f"    v = {getter}(item)")
            if op == "sum":
                lines.append(f"    acc[{slot}] += v")
                initial.append(0)
            elif op == "mean":
                lines.append(f"    acc[{slot}] += v")
                lines.append(f"    acc[{slot + 1}] += 1")
                initial.extend((0, 0))
                slot += 1
            else:
                cmp = "<" if op == "min" else ">"
                lines.append(f"    if acc[{slot}] is None or v {cmp} acc[{slot}]:")
                lines.append(f"        acc[{slot}] = v")
                initial.append(None)
            slot += 1
        if len(lines) == 1:
            lines.append("    pass")
        self.initial = initial
        # The source is built only from fixed op names and slot numbers (never from the
        # pipeline's text), so compiling it runs nothing a pipeline wrote.
        namespace: dict[str, Any] = dict(getters)
        exec("\n".join(lines), namespace)  # see above
        self.update: Callable[[list[Any], Any], None] = namespace["update"]

    def new(self) -> list[Any]:
        """A fresh accumulator."""
        return [[] if self.keep_items else None, *self.initial]

    def merge(self, into: list[Any], other: list[Any]) -> None:
        """Fold accumulator ``other`` into ``into`` (sessions that grew together); the
        items are not touched (the caller merges them in arrival order)."""
        for op, slot in self.layout:
            if op in ("count", "sum"):
                into[slot] += other[slot]
            elif op == "mean":
                into[slot] += other[slot]
                into[slot + 1] += other[slot + 1]
            else:
                v = other[slot]
                if v is not None and (
                    into[slot] is None or (v < into[slot] if op == "min" else v > into[slot])
                ):
                    into[slot] = v

    def results(self, acc: list[Any], out: dict[str, Any]) -> None:
        """Add the results of ``acc`` to the window dict ``out``."""
        for name, (op, slot) in zip(self.names, self.layout, strict=True):
            if op == "mean":
                n = acc[slot + 1]
                out[name] = acc[slot] / n if n else None
            else:
                out[name] = acc[slot]
