"""A fluent Python builder producing the same :class:`PipelineSpec` as a YAML file."""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any, Literal

from .pipeline import ErrorPolicy, PipelineSpec, RetryPolicy, parse_pipeline
from .runtime import RunResult

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["Pipeline"]


class Pipeline:
    """Build a pipeline in Python::

        spec = (
            headwater.Pipeline("evens")
            .source("range", stop=10)
            .map(lambda x: x * 2)
            .sink("collect")
        )
        result = spec.run_sync()

    Each method returns the builder; :meth:`build` validates and returns the model.
    A pipeline that is only iterated (:meth:`iter_sync`, ``engine.stream(builder)``)
    needs no sink.
    """

    def __init__(
        self, name: str, *, description: str = "", batch_size: int = 256, buffer: int = 4
    ) -> None:
        self._data: dict[str, Any] = {
            "name": name,
            "description": description,
            "batch_size": batch_size,
            "buffer": buffer,
            "sources": {},
            "steps": [],
            "sinks": [],
        }

    def source(
        self, action: str, *, name: str | None = None, fallback: str | None = None, **params: Any
    ) -> Pipeline:
        """Add a source running ``action``; ``name`` defaults to the action name.
        ``fallback`` names the action run with the same params when ``action`` fails
        before its first item or is not available."""
        source: dict[str, Any] = {"action": action, "params": params}
        if fallback is not None:
            source["fallback"] = fallback
        self._data["sources"][name or action] = source
        return self

    def compose(self, mode: Literal["merge", "zip", "concat"], *names: str) -> Pipeline:
        """Combine the named sources (all of them, in declaration order, when none given)."""
        self._data["compose"] = {mode: list(names) or list(self._data["sources"])}
        return self

    def merge(self, *names: str) -> Pipeline:
        """Interleave the sources' items as they arrive."""
        return self.compose("merge", *names)

    def zip(self, *names: str) -> Pipeline:
        """Emit tuples with one item of each source; stops at the shortest."""
        return self.compose("zip", *names)

    def concat(self, *names: str) -> Pipeline:
        """Emit each source's items in turn."""
        return self.compose("concat", *names)

    def step(
        self,
        transformer: str,
        *,
        on_error: ErrorPolicy = "fail",
        retry: RetryPolicy | dict[str, Any] | None = None,
        name: str | None = None,
        **params: Any,
    ) -> Pipeline:
        """Append a transformer step."""
        step: dict[str, Any] = {"transformer": transformer, "params": params, "on_error": on_error}
        if retry is not None:
            step["retry"] = retry
        if name is not None:
            step["name"] = name
        self._data["steps"].append(step)
        return self

    def map(self, fn: Callable[[Any], Any] | str, **kw: Any) -> Pipeline:
        """Append ``map``: replace each item with ``fn(item)``."""
        return self.step("map", fn=fn, **kw)

    def filter(self, fn: Callable[[Any], Any] | str, **kw: Any) -> Pipeline:
        """Append ``filter``: keep items for which ``fn(item)`` is true."""
        return self.step("filter", fn=fn, **kw)

    def sink(
        self,
        sink: str,
        *,
        name: str | None = None,
        on_error: ErrorPolicy = "fail",
        retry: RetryPolicy | dict[str, Any] | None = None,
        **params: Any,
    ) -> Pipeline:
        """Add a sink (several sinks each receive every item)."""
        entry: dict[str, Any] = {"sink": sink, "params": params, "on_error": on_error}
        if name is not None:
            entry["name"] = name
        if retry is not None:
            entry["retry"] = retry
        self._data["sinks"].append(entry)
        return self

    def dead_letter(self, sink: str, **params: Any) -> Pipeline:
        """Send items dropped by ``skip`` / ``retry`` policies to this sink."""
        self._data["dead_letter"] = {"sink": sink, "params": params}
        return self

    def timeouts(
        self,
        *,
        first_item: float | None = None,
        idle: float | None = None,
        total: float | None = None,
    ) -> Pipeline:
        """Set run timeouts in seconds."""
        self._data["timeouts"] = {"first_item": first_item, "idle": idle, "total": total}
        return self

    def build(self) -> PipelineSpec:
        """Validate the shape and return the pipeline model."""
        return parse_pipeline(self._data)

    def as_dict(self) -> dict[str, Any]:
        """The pipeline in the YAML shape, not validated: a copy of its mappings and
        lists (changing it does not change the builder); other values are shared."""
        from .embedding import copy_tree

        data: dict[str, Any] = copy_tree(self._data)
        return data

    def iter_sync(
        self, engine: Engine | None = None, overrides: Mapping[str, Any] | None = None
    ) -> Generator[Any, None, None]:
        """Build and iterate the items leaving the steps from synchronous code (see
        :meth:`Engine.iter_sync <headwater.Engine.iter_sync>`; default: the default
        engine)::

            for item in headwater.Pipeline("p").source("range", stop=3).iter_sync():
                ...
        """
        from .engine import default_engine

        target = engine if engine is not None else default_engine()
        return target.iter_sync(self, overrides=overrides)

    async def run(self, **kwargs: Any) -> RunResult:
        """Build and run (see :func:`headwater.run`)."""
        from .api import run

        return await run(self.build(), **kwargs)

    def run_sync(self, **kwargs: Any) -> RunResult:
        """Build and run on a fresh event loop (see :func:`headwater.run_sync`)."""
        from .api import run_sync

        return run_sync(self.build(), **kwargs)
