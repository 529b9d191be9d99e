"""What a run would refuse when it starts, validation refuses first.

Pipelines that resolved and then failed the moment a run set up: a sink class with no
``write`` method; a resumable action written as a sync generator in a checkpointed
pipeline (a worker thread cannot report positions). And a sink that cannot even be
built fails its run as that sink's error, like one that cannot open, not as an
unexpected error of the runtime.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

import headwater
from headwater.builtin_plugins.catalogue import sinks as builtin_sinks
from headwater.builtin_plugins.catalogue import sources as builtin_sources
from headwater.builtin_plugins.catalogue import stores as builtin_stores
from headwater.types import Register


class NoWrite:
    """A sink class that forgot its write method."""

    def close(self) -> None:
        pass


class BrokenParams(BaseModel):
    fail: bool = True


class Broken:
    """A sink whose constructor refuses its params."""

    def __init__(self, params: BrokenParams) -> None:
        if params.fail:
            raise ValueError("this sink refuses to start")

    def write(self, batch: list[Any]) -> None:
        pass


def counting(ctx: headwater.StreamContext) -> Iterator[int]:
    """A resumable action written as a sync generator."""
    for i in range(3):
        yield i
        ctx.checkpoint(i + 1)


class ParityPlugin:
    @headwater.hookimpl
    def register_sinks(self, register: Register) -> None:
        register(headwater.sink("parity.nowrite")(NoWrite))
        register(headwater.sink("parity.broken", params=BrokenParams)(Broken))

    @headwater.hookimpl
    def register_actions(self, register: Register) -> None:
        register(headwater.action("parity.counting", capabilities=("resumable",))(counting))


@pytest.fixture
def engine() -> headwater.Engine:
    return headwater.Engine(
        plugins=[builtin_sources, builtin_sinks, builtin_stores, ParityPlugin()]
    )


def problems(engine: headwater.Engine, pipeline: dict[str, Any]) -> list[str]:
    with pytest.raises(headwater.PipelineValidationError) as info:
        engine.prepare(pipeline)
    return [str(issue) for issue in info.value.issues]


RANGE = {"n": {"action": "range", "params": {"stop": 3}}}


def test_a_sink_class_without_write_is_refused_by_validation(engine: headwater.Engine) -> None:
    found = problems(
        engine,
        {
            "name": "p",
            "sources": RANGE,
            "sinks": [{"sink": "collect"}, {"sink": "parity.nowrite"}],
            "dead_letter": {"sink": "parity.nowrite"},
        },
    )
    message = "sink 'parity.nowrite' has no write(batch) method, so it cannot take items"
    assert found == [f"sinks[1].sink: {message}", f"dead_letter.sink: {message}"]


def test_a_sync_generator_cannot_be_checkpointed(engine: headwater.Engine) -> None:
    pipeline: dict[str, Any] = {
        "name": "p",
        "sources": {"n": {"action": "parity.counting"}},
        "sinks": [{"sink": "collect"}],
    }
    assert headwater.run_sync(pipeline, engine=engine).output == [0, 1, 2]  # unchecked: fine
    found = problems(engine, {**pipeline, "checkpoint": {"store": "memory"}})
    assert found == [
        "sources.n.action: action 'parity.counting' is a sync generator: it runs in a worker "
        "thread, which cannot report checkpoint positions, so the pipeline cannot be "
        "checkpointed; write it as an async generator"
    ]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_sink_that_cannot_be_built_fails_as_its_stage(
    engine: headwater.Engine, anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline = {
        "name": "p",
        "sources": RANGE,
        "sinks": [{"sink": "collect"}, {"sink": "parity.broken"}],
        "checkpoint": {"store": "memory"},
    }
    with caplog.at_level(logging.ERROR):
        result = await engine.run(pipeline, raise_on_error=False)
    assert result.state == "failed"
    [error] = result.errors
    assert isinstance(error, headwater.StageError)
    assert (error.stage, str(error.cause)) == ("sinks.parity.broken", "this sink refuses to start")
    assert result.summary["stages"]["sinks.parity.broken"]["errors"] == 1
    assert "unexpected error" not in caplog.text
