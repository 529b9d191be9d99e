"""Built-in transformers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ImportString

import headwater


class CallableParams(BaseModel):
    """A function given as an importable path ``pkg.mod:fn`` or, from Python, a callable."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    fn: ImportString[Callable[..., Any]] = Field(
        description="Importable callable, e.g. 'mypkg.transforms:clean' (or a callable "
        "when building the pipeline in Python)."
    )


@headwater.transformer("map", kind="map", params=CallableParams, factory=True,
                       output="fn(item) for each item")
def map_transformer(params: CallableParams) -> Callable[[Any], Any]:
    """Replace each item with ``fn(item)``."""
    return params.fn


@headwater.transformer("filter", kind="filter", params=CallableParams, factory=True,
                       output="the items for which fn(item) is true")
def filter_transformer(params: CallableParams) -> Callable[[Any], Any]:
    """Keep the items for which ``fn(item)`` is true."""
    return params.fn


@headwater.hookimpl
def register_transformers(register: Any) -> None:
    """Register the built-in transformers."""
    register(map_transformer)
    register(filter_transformer)
