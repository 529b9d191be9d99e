"""Item-wise transformers compiled to per-batch functions, fused into one stage.

Consecutive ``map`` / ``filter`` / ``flat_map`` / ``batch`` steps run one after another
on each batch inside a single task: no channel hop and no await between them. Each step
becomes a function ``list -> list`` built from C-level iteration (``map``, ``filter``,
comprehensions), so the per-item cost is the author's function call and little else.

When an item raises, the position of the failing item is recovered from the batch
iterator's remaining length, so the fast path pays nothing for error attribution.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from .components import Component
from .context import StreamContext
from .invoke import call_flexible, params_and_ctx
from .pipeline import ResolvedStage

__all__ = ["FusedStep", "ItemFailure", "build_step"]


class ItemFailure(Exception):
    """Raised by a fast-path step: item ``index`` of the batch (None if unknown) failed."""

    def __init__(self, index: int | None, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.index = index
        self.cause = cause


class OnItemError(Protocol):
    """Runtime callback deciding what happens to a failed item: returns True to retry."""

    def __call__(
        self,
        step: FusedStep,
        position: int | None,
        items: list[Any],
        exc: BaseException,
        attempt: int,
    ) -> Awaitable[bool]: ...


def _failing_index(batch_len: int, it: Any) -> int:
    remaining: int = it.__length_hint__()
    return batch_len - remaining - 1


class FusedStep:
    """One item-wise step inside a fused stage."""

    __slots__ = (
        "component",
        "fast",
        "flush",
        "item_fn",
        "kind",
        "n_in",
        "n_out",
        "policy",
        "spec",
        "stage",
        "state",
        "tick",
    )

    def __init__(self, spec: ResolvedStage, ctx: StreamContext) -> None:
        self.spec = spec
        self.stage = spec.stage
        self.component: Component = spec.component
        self.policy = spec.on_error
        self.kind = spec.component.transformer_kind or "map"
        self.n_in = 0
        self.n_out = 0
        comp = spec.component
        if comp.factory:
            fn = call_flexible(comp.obj, *params_and_ctx(spec.params, ctx))
            if not callable(fn):
                raise TypeError(
                    f"factory of transformer {comp.name!r} returned {fn!r}, not a callable"
                )
        elif spec.params is not None:
            raw, params = comp.obj, spec.params

            def fn(item: Any) -> Any:
                return raw(item, params)
        else:
            fn = comp.obj
        self.item_fn: Callable[..., Any] = fn
        self.state = fn
        self.flush: Callable[[], list[Any]] | None = getattr(fn, "flush", None)
        self.tick: Callable[[], list[Any]] | None = getattr(fn, "tick", None)
        self.fast = self._compile(fn)

    @property
    def tick_interval(self) -> float | None:
        """Seconds between calls of ``tick()`` for time-driven ``batch`` steps, else None."""
        if self.tick is None:
            return None
        value = getattr(self.state, "tick_interval", None)
        return float(value) if value else None

    @property
    def exhausted(self) -> bool:
        """True when a ``batch`` step (e.g. ``take``) will accept no more items."""
        return bool(getattr(self.state, "exhausted", False))

    def _compile(self, f: Callable[..., Any]) -> Callable[[list[Any]], list[Any]]:
        kind = self.kind
        if kind == "map":

            def run(batch: list[Any]) -> list[Any]:
                it = iter(batch)
                try:
                    return list(map(f, it))
                except Exception as exc:
                    raise ItemFailure(_failing_index(len(batch), it), exc) from exc

        elif kind == "filter":

            def run(batch: list[Any]) -> list[Any]:
                it = iter(batch)
                try:
                    return list(filter(f, it))
                except Exception as exc:
                    raise ItemFailure(_failing_index(len(batch), it), exc) from exc

        elif kind == "flat_map":

            def run(batch: list[Any]) -> list[Any]:
                it = iter(batch)
                try:
                    return [y for x in it for y in f(x)]
                except Exception as exc:
                    raise ItemFailure(_failing_index(len(batch), it), exc) from exc

        elif kind == "batch":

            def run(batch: list[Any]) -> list[Any]:
                try:
                    out = f(batch)
                except Exception as exc:
                    raise ItemFailure(None, exc) from exc
                return out if isinstance(out, list) else list(out)

        else:  # pragma: no cover - resolve() only fuses item-wise kinds
            raise ValueError(f"not an item-wise transformer kind: {kind}")
        return run

    async def guarded(self, batch: list[Any], on_error: OnItemError) -> list[Any]:
        """Process ``batch`` item by item, asking ``on_error`` about each failure."""
        base = self.n_in
        if self.kind == "batch":
            attempt = 1
            while True:
                try:
                    return self.fast(batch)
                except ItemFailure as failure:
                    if not await on_error(self, None, batch, failure.cause, attempt):
                        return []
                    attempt += 1
        f = self.item_fn
        kind = self.kind
        out: list[Any] = []
        for i, item in enumerate(batch):
            attempt = 1
            while True:
                try:
                    if kind == "map":
                        out.append(f(item))
                    elif kind == "filter":
                        if f(item):
                            out.append(item)
                    else:
                        out.extend(f(item))
                    break
                except Exception as exc:
                    if not await on_error(self, base + i, [item], exc, attempt):
                        break
                    attempt += 1
        return out


def build_step(spec: ResolvedStage, ctx: StreamContext) -> FusedStep:
    """Instantiate one item-wise step for a run."""
    return FusedStep(spec, ctx)
