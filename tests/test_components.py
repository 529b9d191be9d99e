"""Component declarations: what the decorators detect, check and expose as metadata."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

import headwater
from headwater import Capability, Component, ComponentKind


class Params(BaseModel):
    """Params with a described field."""

    model_config = ConfigDict(extra="forbid")

    pattern: str = Field(description="A regular expression.")
    limit: int = 10


# ---------------------------------------------------------------------------------------
# Shapes and capabilities
# ---------------------------------------------------------------------------------------


def test_action_async_generator_is_streaming() -> None:
    @headwater.action("t.agen", params=Params, capabilities=("progress", "resumable"))
    async def agen(params: Params, ctx: headwater.StreamContext) -> AsyncIterator[int]:
        yield 1

    assert isinstance(agen, Component)
    assert agen.kind is ComponentKind.ACTION
    assert agen.shape == "async_gen"
    assert agen.capabilities == {
        Capability.STREAMING,
        Capability.PROGRESS,
        Capability.RESUMABLE,
    }
    assert agen.params is Params
    assert not agen.batched
    assert (agen.plugin, agen.distribution, agen.version) == (None, None, None)
    assert agen.qualified_name == "t.agen"


def test_action_sync_generator_is_streaming() -> None:
    @headwater.action("t.gen", batched=True)
    def gen(ctx: headwater.StreamContext) -> Iterator[list[int]]:
        yield [1, 2]

    assert gen.shape == "sync_gen"
    assert Capability.STREAMING in gen.capabilities
    assert gen.batched


async def fetch_async(ctx: headwater.StreamContext) -> int:
    return 1


def fetch_sync(ctx: headwater.StreamContext) -> int:
    return 1


@pytest.mark.parametrize(("fn", "shape"), [(fetch_async, "coroutine"), (fetch_sync, "function")])
def test_action_returning_a_value_is_not_streaming(fn: Callable[..., Any], shape: str) -> None:
    component = headwater.action("t.fetch")(fn)
    assert component.shape == shape
    assert Capability.STREAMING not in component.capabilities


def test_action_must_be_a_function() -> None:
    with pytest.raises(TypeError, match=r"action 't\.cls' must be a function, not a class"):

        @headwater.action("t.cls")
        class NotAFunction:
            pass


def test_non_callable_is_rejected() -> None:
    with pytest.raises(TypeError, match="must be a function or a class, not int"):
        headwater.sink("t.int")(42)  # type: ignore[arg-type]  # the mistake under test


@pytest.mark.parametrize("kind", ["map", "filter", "flat_map"])
def test_itemwise_transformers(kind: Any) -> None:
    @headwater.transformer(f"t.{kind}", kind=kind)
    def fn(item: int) -> int:
        return item

    assert fn.kind is ComponentKind.TRANSFORMER
    assert fn.transformer_kind == kind
    assert fn.shape == "function"
    assert fn.itemwise
    assert not fn.factory


def test_transformer_default_kind_is_map() -> None:
    component = headwater.transformer("t.default")(lambda item: item)
    assert component.transformer_kind == "map"


def test_batch_transformer_is_always_a_factory() -> None:
    @headwater.transformer("t.batch", kind="batch", capabilities=["stateful"])
    def batcher(ctx: headwater.StreamContext) -> Callable[[list[Any]], list[Any]]:
        return lambda items: items

    assert batcher.factory
    assert batcher.itemwise
    assert batcher.capabilities == {Capability.STATEFUL}


def test_factory_map_transformer() -> None:
    @headwater.transformer("t.factory", params=Params, factory=True)
    def make(params: Params) -> Callable[[str], str]:
        return str.upper

    assert make.factory
    assert make.itemwise


def test_stream_transformer() -> None:
    @headwater.transformer("t.stream", kind="stream")
    async def window(items: AsyncIterator[int], ctx: headwater.StreamContext) -> AsyncIterator[int]:
        async for item in items:
            yield item

    assert window.shape == "async_gen"
    assert window.transformer_kind == "stream"
    assert not window.itemwise


def test_stream_transformer_must_be_an_async_generator() -> None:
    with pytest.raises(TypeError, match=r"stream transformer 't\.bad' must be an async generator"):

        @headwater.transformer("t.bad", kind="stream")
        def not_async(items: Any) -> Any:
            return items


@pytest.mark.parametrize("kind", ["map", "filter", "flat_map", "batch"])
def test_itemwise_transformer_must_not_be_an_async_generator(kind: Any) -> None:
    with pytest.raises(TypeError, match="use kind='stream' for async generators"):

        @headwater.transformer("t.bad", kind=kind)
        async def agen(item: Any) -> AsyncIterator[Any]:
            yield item


def test_itemwise_transformer_must_not_be_a_class() -> None:
    with pytest.raises(TypeError, match="must be a plain function"):

        @headwater.transformer("t.cls")
        class Mapper:
            pass


# Class components below are declared with a call rather than the decorator syntax so that
# mypy (which ignores what a class decorator returns) sees Components.


def test_sink_class_and_function() -> None:
    class _Sink:
        def write(self, batch: list[Any]) -> None:
            pass

    Sink = headwater.sink("t.cls")(_Sink)

    @headwater.sink("t.fn", params=Params)
    def write(batch: list[Any], params: Params, ctx: headwater.StreamContext) -> None:
        pass

    assert Sink.kind is ComponentKind.SINK
    assert Sink.shape == "class"
    assert Sink.delivery == "at_least_once"
    assert Capability.TRANSACTIONAL not in Sink.capabilities
    assert write.shape == "function"


def test_transactional_sink_declares_the_capability() -> None:
    class _TxSink:
        def write(self, batch: list[Any]) -> None:
            pass

    TxSink = headwater.sink("t.tx", delivery="transactional")(_TxSink)

    assert TxSink.delivery == "transactional"
    assert Capability.TRANSACTIONAL in TxSink.capabilities


def test_exporter() -> None:
    class _Exporter:
        """Exports snapshots."""

    Exporter = headwater.exporter("t.exp", params=Params)(_Exporter)

    assert Exporter.kind is ComponentKind.EXPORTER
    assert Exporter.shape == "class"
    assert Exporter.description == "Exports snapshots."


def test_unknown_capability_is_rejected() -> None:
    with pytest.raises(ValueError, match="'teleport' is not a valid Capability"):
        headwater.action("t.cap", capabilities=("teleport",))(lambda ctx: None)


# ---------------------------------------------------------------------------------------
# Names and params
# ---------------------------------------------------------------------------------------

DECORATORS: list[Callable[..., Any]] = [
    headwater.action,
    headwater.transformer,
    headwater.sink,
    headwater.exporter,
]


@pytest.mark.parametrize("decorator", DECORATORS)
@pytest.mark.parametrize("name", ["", "   ", "has space", "tab\there", "new\nline", 3, None])
def test_bad_names_are_rejected(decorator: Callable[..., Any], name: Any) -> None:
    with pytest.raises(ValueError, match="component name must be a non-empty string"):
        decorator(name)


@pytest.mark.parametrize("name", ["range", "file.lines", "my-plugin.count_2", "Ünïcode"])
def test_good_names(name: str) -> None:
    assert headwater.action(name)(lambda ctx: None).name == name


@dataclasses.dataclass
class NotAModel:
    x: int


@pytest.mark.parametrize("decorator", DECORATORS)
@pytest.mark.parametrize("params", [dict, NotAModel, Params(pattern="x"), "Params", 1])
def test_params_must_be_a_pydantic_model_class(decorator: Callable[..., Any], params: Any) -> None:
    with pytest.raises(TypeError, match="params must be a pydantic BaseModel subclass"):
        decorator("t.params", params=params)


# ---------------------------------------------------------------------------------------
# Descriptions and metadata
# ---------------------------------------------------------------------------------------


def test_description_is_the_first_docstring_paragraph() -> None:
    @headwater.action("t.doc")
    async def documented(ctx: headwater.StreamContext) -> AsyncIterator[int]:
        """Count sheep,
        one by one.

        Further details that are not part of the summary.
        """
        yield 1

    assert documented.description == "Count sheep, one by one."


def test_explicit_description_wins_and_missing_docstring_is_empty() -> None:
    @headwater.transformer("t.doc", description="Explicit.")
    def documented(item: int) -> int:
        """Docstring."""
        return item

    assert documented.description == "Explicit."
    assert headwater.transformer("t.nodoc")(lambda item: item).description == ""


def test_metadata_is_json_serialisable_with_a_params_schema() -> None:
    @headwater.transformer(
        "t.meta", kind="filter", params=Params, output="matching lines", capabilities=["stateful"]
    )
    def keep(item: str, params: Params) -> bool:
        """Keep matching lines."""
        return params.pattern in item

    attributed = keep.with_origin("demo", "hw-demo", "1.0")
    meta = attributed.metadata()
    assert json.loads(json.dumps(meta)) == meta
    assert meta["name"] == "t.meta"
    assert meta["kind"] == "transformer"
    assert (meta["plugin"], meta["distribution"], meta["version"]) == ("demo", "hw-demo", "1.0")
    assert meta["description"] == "Keep matching lines."
    assert meta["output"] == "matching lines"
    assert meta["capabilities"] == ["stateful"]
    assert meta["transformer_kind"] == "filter"
    assert "delivery" not in meta
    schema = meta["params_schema"]
    assert schema["required"] == ["pattern"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["pattern"]["description"] == "A regular expression."
    assert schema["properties"]["limit"]["default"] == 10


def test_metadata_without_params() -> None:
    class _Sink:
        """Store batches."""

    Sink = headwater.sink("t.meta", delivery="transactional")(_Sink)

    meta = Sink.metadata()
    assert json.loads(json.dumps(meta)) == meta
    assert meta["params_schema"] == {
        "type": "object",
        "properties": {},
        "additionalProperties": False,
    }
    assert meta["delivery"] == "transactional"
    assert meta["capabilities"] == ["transactional"]
    assert "transformer_kind" not in meta
    assert (meta["plugin"], meta["distribution"], meta["version"]) == (None, None, None)


def test_metadata_capabilities_are_sorted() -> None:
    @headwater.action("t.caps", capabilities=("resumable", "progress"))
    async def caps(ctx: headwater.StreamContext) -> AsyncIterator[int]:
        yield 1

    assert caps.metadata()["capabilities"] == ["progress", "resumable", "streaming"]


# ---------------------------------------------------------------------------------------
# The Component object
# ---------------------------------------------------------------------------------------


def test_component_is_callable_like_the_wrapped_function() -> None:
    @headwater.transformer("t.call")
    def double(item: int) -> int:
        return item * 2

    assert double(21) == 42
    assert double.obj(21) == 42


def test_with_origin_returns_an_attributed_copy() -> None:
    component = headwater.transformer("t.origin")(lambda item: item)
    copy = component.with_origin("plug", "dist", "2.0")
    assert copy is not component
    assert copy.qualified_name == "plug:t.origin"
    assert component.plugin is None
    assert copy.obj is component.obj


def test_components_are_immutable() -> None:
    component = headwater.transformer("t.frozen")(lambda item: item)
    with pytest.raises(dataclasses.FrozenInstanceError):
        component.name = "other"  # type: ignore[misc]  # the mistake under test
